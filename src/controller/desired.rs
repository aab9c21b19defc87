//! The objects a workload should own, computed from its spec alone (pure functions).
//!
//! One Deployment per (variant, pool) slot, named `<workload>-<variant>-<pool>`, and one
//! Service per workload (named like the workload) that selects every serving pod of it.
//! Replica counts are an input: the controller decides them, these functions only shape
//! the objects. Everything here is deterministic so that a server-side apply of the same
//! spec and replicas is a no-op.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service,
    ServicePort, ServiceSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{GpuPoolSpec, LLMWorkload, LLMWorkloadSpec, VariantSpec};

/// Label naming the owning workload.
pub const LABEL_WORKLOAD: &str = "llmos.dev/workload";
/// Label naming the variant a Deployment/pod serves.
pub const LABEL_VARIANT: &str = "llmos.dev/variant";
/// Label naming the GPU pool a Deployment/pod runs on.
pub const LABEL_POOL: &str = "llmos.dev/pool";
/// `app.kubernetes.io/managed-by` value.
pub const MANAGED_BY: &str = "llmos";
/// The extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Name of the serving container and of its port.
pub const CONTAINER_NAME: &str = "server";
/// Name of the container port the Service targets.
pub const PORT_NAME: &str = "http";

/// One (variant, pool) slot of a workload (the seam's one slot identity).
pub use crate::policy::observation::SlotId as Slot;

/// The pools a variant may run on: its `pools`, or every pool when empty (spec order).
pub fn variant_pools<'a>(spec: &'a LLMWorkloadSpec, variant: &'a VariantSpec) -> Vec<&'a GpuPoolSpec> {
    spec.pools_of(variant)
}

/// Every slot of the spec, in the order of its variants, then pools.
pub fn slots(spec: &LLMWorkloadSpec) -> Vec<Slot> {
    spec.variants
        .iter()
        .flat_map(|v| variant_pools(spec, v).into_iter().map(move |p| Slot::new(&v.name, &p.name)))
        .collect()
}

/// The Deployment name of a slot: `<workload>-<variant>-<pool>`.
pub fn deployment_name(workload: &str, slot: &Slot) -> String {
    format!("{workload}-{}-{}", slot.variant, slot.pool)
}

/// Labels that select every object the operator owns for a workload.
pub fn workload_selector(workload: &str) -> String {
    format!("{LABEL_WORKLOAD}={workload},app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// The selector labels of one slot's pods (immutable once the Deployment exists).
pub fn selector_labels(workload: &str, slot: &Slot) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_WORKLOAD.to_string(), workload.to_string()),
        (LABEL_VARIANT.to_string(), slot.variant.clone()),
        (LABEL_POOL.to_string(), slot.pool.clone()),
    ])
}

/// All labels of a slot's Deployment and pods.
pub fn slot_labels(workload: &str, slot: &Slot) -> BTreeMap<String, String> {
    let mut labels = selector_labels(workload, slot);
    labels.insert("app.kubernetes.io/name".into(), "llm-inference".into());
    labels.insert("app.kubernetes.io/instance".into(), workload.to_string());
    labels.insert("app.kubernetes.io/component".into(), slot.variant.clone());
    labels.insert("app.kubernetes.io/part-of".into(), workload.to_string());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

/// The owner reference that ties owned objects to the workload (garbage collection and watches).
pub fn owner_reference(wl: &LLMWorkload) -> Option<OwnerReference> {
    wl.controller_owner_ref(&())
}

fn toleration(t: &crate::crd::TolerationSpec) -> Toleration {
    Toleration {
        key: Some(t.key.clone()),
        operator: t.operator.clone(),
        value: t.value.clone(),
        effect: t.effect.clone().filter(|e| !e.is_empty()),
        toleration_seconds: None,
    }
}

/// The Deployment of one slot with `replicas` replicas. Its pods get the pool's node
/// selector and tolerations and the workload's `scheduling.priorityClassName`.
///
/// Returns `None` when the slot names a variant or pool the spec does not have; a slot of
/// a poolRef is known once the spec's poolRefs are resolved
/// ([`crate::crd::pool::resolve_pools`]).
pub fn deployment(wl: &LLMWorkload, slot: &Slot, replicas: u32) -> Option<Deployment> {
    let spec = &wl.spec;
    let variant = spec.variants.iter().find(|v| v.name == slot.variant)?;
    let pool = spec.gpu_pools.iter().find(|p| p.name == slot.pool)?;
    let name = wl.name_any();
    let labels = slot_labels(&name, slot);
    let gpus = Quantity(variant.gpus_per_replica.to_string());
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([(GPU_RESOURCE.to_string(), gpus.clone())])),
        limits: Some(BTreeMap::from([(GPU_RESOURCE.to_string(), gpus)])),
        ..Default::default()
    };
    let port = i32::from(variant.port);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(variant.image.clone()),
        args: if variant.args.is_empty() { None } else { Some(variant.args.clone()) },
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::String(PORT_NAME.into()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        ..Default::default()
    };
    let annotations = BTreeMap::from([
        ("llmos.dev/model".to_string(), variant.model.clone()),
        ("llmos.dev/gpu-type".to_string(), pool.gpu_type.clone()),
    ]);
    Some(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&name, slot)),
            namespace: wl.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            owner_references: owner_reference(wl).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector { match_labels: Some(selector_labels(&name, slot)), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    // Surge before removing: a new replica must be ready before an old one goes,
                    // so capacity never dips during an image or argument change.
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    node_selector: if pool.node_selector.is_empty() { None } else { Some(pool.node_selector.clone()) },
                    tolerations: if pool.tolerations.is_empty() {
                        None
                    } else {
                        Some(pool.tolerations.iter().map(toleration).collect())
                    },
                    priority_class_name: spec.scheduling.priority_class_name.clone(),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The workload's Service: one ClusterIP Service named like the workload, selecting all
/// its serving pods (every variant and pool) on their named `http` port.
pub fn service(wl: &LLMWorkload) -> Service {
    let name = wl.name_any();
    let mut labels = BTreeMap::from([
        (LABEL_WORKLOAD.to_string(), name.clone()),
        ("app.kubernetes.io/name".to_string(), "llm-inference".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        ("app.kubernetes.io/part-of".to_string(), name.clone()),
    ]);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: wl.namespace(),
            labels: Some(labels),
            owner_references: owner_reference(wl).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(LABEL_WORKLOAD.to_string(), name)])),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: 80,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Replicas a Deployment asks for (`spec.replicas`, 1 when unset as Kubernetes defaults it).
pub fn spec_replicas(d: &Deployment) -> u32 {
    d.spec.as_ref().and_then(|s| s.replicas).map(|r| r.max(0) as u32).unwrap_or(1)
}

/// Ready replicas of a Deployment (`status.readyReplicas`).
pub fn ready_replicas(d: &Deployment) -> u32 {
    d.status.as_ref().and_then(|s| s.ready_replicas).map(|r| r.max(0) as u32).unwrap_or(0)
}

/// Pods that exist for a Deployment (`status.replicas`).
pub fn existing_replicas(d: &Deployment) -> u32 {
    d.status.as_ref().and_then(|s| s.replicas).map(|r| r.max(0) as u32).unwrap_or(0)
}

/// Whether an object belongs to this workload (by its owner reference's uid).
pub fn is_owned_by(meta: &ObjectMeta, wl: &LLMWorkload) -> bool {
    let uid = wl.meta().uid.as_deref();
    uid.is_some()
        && meta.owner_references.iter().flatten().any(|o| Some(o.uid.as_str()) == uid && o.kind == "LLMWorkload")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> LLMWorkload {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload",
            "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1"},
            "spec": {
                "variants": [
                    {"name": "big", "model": "m70", "image": "vllm:1", "args": ["--tp", "4"], "port": 9000,
                     "gpusPerReplica": 4, "pools": ["a100"]},
                    {"name": "small", "model": "m8", "image": "vllm:1"}
                ],
                "gpuPools": [
                    {"name": "a100", "gpuType": "A100", "pricePerGpuHour": 3.0,
                     "nodeSelector": {"gpu": "a100"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
                    {"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8}
                ]
            }
        }))
        .expect("workload parses")
    }

    #[test]
    fn slots_follow_allowed_pools_in_spec_order() {
        let s = slots(&workload().spec);
        assert_eq!(s, vec![Slot::new("big", "a100"), Slot::new("small", "a100"), Slot::new("small", "l4")]);
    }

    #[test]
    fn deployment_carries_pool_placement_gpus_and_probe() {
        let wl = workload();
        let d = deployment(&wl, &Slot::new("big", "a100"), 3).expect("known slot");
        assert_eq!(d.metadata.name.as_deref(), Some("chat-big-a100"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("ml"));
        let owner = &d.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.match_labels, Some(selector_labels("chat", &Slot::new("big", "a100"))));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.node_selector.expect("selector")["gpu"], "a100");
        assert_eq!(pod.tolerations.expect("tolerations")[0].effect.as_deref(), Some("NoSchedule"));
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["--tp".to_string(), "4".to_string()][..]));
        assert_eq!(c.ports.as_ref().expect("ports")[0].container_port, 9000);
        let res = c.resources.as_ref().expect("resources");
        assert_eq!(res.requests.as_ref().expect("requests")[GPU_RESOURCE].0, "4");
        assert_eq!(res.limits.as_ref().expect("limits")[GPU_RESOURCE].0, "4");
        let probe = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("probe");
        assert_eq!(probe.path.as_deref(), Some("/health"));
        assert!(deployment(&wl, &Slot::new("big", "nope"), 1).is_none());
    }

    #[test]
    fn pods_get_the_workloads_priority_class() {
        let mut wl = workload();
        wl.spec.scheduling.priority_class_name = Some("llm-high".into());
        for slot in slots(&wl.spec) {
            let d = deployment(&wl, &slot, 1).expect("slot");
            let pod = d.spec.expect("spec").template.spec.expect("pod");
            assert_eq!(pod.priority_class_name.as_deref(), Some("llm-high"), "{slot:?}");
        }
    }

    #[test]
    fn pool_without_taints_gets_no_tolerations_and_service_spans_the_workload() {
        let wl = workload();
        let d = deployment(&wl, &Slot::new("small", "l4"), 0).expect("slot");
        let pod = d.spec.expect("spec").template.spec.expect("pod");
        assert!(pod.tolerations.is_none() && pod.node_selector.is_none() && pod.priority_class_name.is_none());
        let svc = service(&wl);
        let sel = svc.spec.expect("spec").selector.expect("selector");
        assert_eq!(sel, BTreeMap::from([(LABEL_WORKLOAD.to_string(), "chat".to_string())]));
    }
}
