//! The cluster-scoped `GPUPool` custom resource: a pool of GPU nodes that many
//! `LLMWorkload`s share through their `spec.poolRefs`, and the pure functions around it.
//!
//! - [`resolve_pools`] turns a workload's poolRefs into inline pools, so that everything
//!   downstream of the spec (shield, observation, twin, Deployments) sees concrete pools;
//!   [`shared_slots`] and [`shared_pool_of`] tell which slots came from a GPUPool.
//! - [`pool_status_from_nodes`] counts the Nodes a pool selects and their allocatable
//!   GPUs, for the pool's status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, GpuPoolSpec, LLMWorkloadSpec, PoolRefSpec, TolerationSpec};

/// The extended resource GPUs are counted by when a pool names none.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Most characters of a pool slot name (it is part of Deployment names).
pub const SLOT_NAME_MAX: usize = 20;

/// Desired state of a shared pool of GPU nodes.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmos.dev",
    version = "v1alpha1",
    kind = "GPUPool",
    doc = "A cluster-scoped pool of GPU nodes that LLMWorkloads share through their `spec.poolRefs`.",
    plural = "gpupools",
    shortname = "gpup",
    status = "GPUPoolStatus",
    printcolumn = r#"{"name":"GPU","type":"string","jsonPath":".spec.gpuType"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".status.capacityGpus"}"#,
    printcolumn = r#"{"name":"Allocated","type":"integer","jsonPath":".status.allocatedGpus"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pendingGpus"}"#,
    printcolumn = r#"{"name":"$/GPU-h","type":"string","jsonPath":".status.summary.pricePerGpuHour"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GPUPoolSpec {
    /// GPU type (e.g. `A100-80GB`, `H100-SXM`, `L4`); the twin maps it to its catalog.
    #[schemars(length(min = 1))]
    pub gpu_type: String,
    /// Node labels that select the pool's Nodes (e.g. `nvidia.com/gpu.product:
    /// NVIDIA-A100-SXM4-80GB`); copied into every pod placed in the pool. Empty selects
    /// every Node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the pool's taints, copied into every pod placed in the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<TolerationSpec>,
    /// Price of one GPU of this pool per hour, in USD.
    #[schemars(range(min = 0.0))]
    pub price_per_gpu_hour: f64,
    /// Most GPUs llmos may allocate in this pool over all workloads, even when the Nodes
    /// have more; absent means the Nodes' allocatable GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub capacity_gpus: Option<u32>,
    /// The extended resource counted on Nodes (`status.allocatable`) as GPUs.
    #[serde(default = "default_gpu_resource")]
    #[schemars(
        length(min = 1, max = 316),
        regex(pattern = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub gpu_resource: String,
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

impl GPUPoolSpec {
    /// The GPUs llmos may allocate in the pool when its Nodes have `allocatable`: the
    /// smaller of `capacityGpus` and `allocatable`.
    pub fn effective_capacity(&self, allocatable: u32) -> u32 {
        self.capacity_gpus.map_or(allocatable, |c| c.min(allocatable))
    }
}

/// Observed state of a GPUPool, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GPUPoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes the pool's `nodeSelector` matches.
    #[serde(default)]
    pub nodes: u32,
    /// GPUs the matched Nodes can allocate: the sum of their
    /// `status.allocatable[gpuResource]`.
    #[serde(default)]
    pub allocatable_gpus: u32,
    /// GPUs llmos may allocate in the pool: the smaller of `spec.capacityGpus` and
    /// `allocatableGpus`.
    #[serde(default)]
    pub capacity_gpus: u32,
    /// GPUs the llmos workloads in this pool desire (granted replicas × GPUs per replica).
    #[serde(default)]
    pub allocated_gpus: u32,
    /// Allocated GPUs whose replicas are not ready yet.
    #[serde(default)]
    pub pending_gpus: u32,
    /// Workloads that reference this pool.
    #[serde(default)]
    pub workloads: u32,
    /// The figures above formatted for people, for `kubectl get gpupools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<GPUPoolSummary>,
    /// Conditions of the pool, as Kubernetes conventions describe them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The figures of `kubectl get gpupools` that printer columns cannot format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GPUPoolSummary {
    /// Price of one GPU per hour, USD with two decimals (e.g. `$3.00`).
    pub price_per_gpu_hour: String,
}

impl GPUPoolSummary {
    /// The summary of a pool's spec.
    pub fn of(spec: &GPUPoolSpec) -> Self {
        let p = spec.price_per_gpu_hour;
        GPUPoolSummary { price_per_gpu_hour: if p.is_finite() { format!("${p:.2}") } else { "-".into() } }
    }
}

/// What is wrong with one of a workload's `poolRefs`, and which field it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolRefError {
    /// The referenced GPUPool does not exist.
    #[error("{field}: no GPUPool named `{pool}` (known: {known}); create it or fix the name")]
    NoSuchPool {
        /// The field, e.g. `spec.poolRefs[1].pool`.
        field: String,
        /// The name referenced.
        pool: String,
        /// The GPUPools that exist, comma-separated (`none` when there are none).
        known: String,
    },
    /// The slot name is already used by an inline pool or an earlier poolRef.
    #[error("{field}: slot name `{name}` is already used by {other}; give this poolRef a unique `name`")]
    NameClash {
        /// The field that gives the name (`spec.poolRefs[i].name`, or `.pool` when the name is the pool's).
        field: String,
        /// The slot name.
        name: String,
        /// The field that took the name first.
        other: String,
    },
    /// The slot name cannot name Deployments.
    #[error("{field}: `{name}` cannot be a pool slot name: {why}")]
    BadName {
        /// The field that gives the name.
        field: String,
        /// The slot name.
        name: String,
        /// What is wrong and what to do.
        why: String,
    },
}

impl PoolRefError {
    /// The field the problem is in (e.g. `spec.poolRefs[1].pool`).
    pub fn field(&self) -> &str {
        match self {
            PoolRefError::NoSuchPool { field, .. }
            | PoolRefError::NameClash { field, .. }
            | PoolRefError::BadName { field, .. } => field,
        }
    }
}

/// Why `name` cannot be a pool slot name (a DNS label of at most [`SLOT_NAME_MAX`]
/// characters), or `Ok` when it can.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    let label = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label {
        return Err("a slot name must be a DNS label (lower-case letters, digits and `-`, starting and ending with a letter or digit); set poolRefs[].name".into());
    }
    if name.len() > SLOT_NAME_MAX {
        return Err(format!(
            "{} characters, more than {SLOT_NAME_MAX} (it is part of Deployment names); set a shorter poolRefs[].name",
            name.len()
        ));
    }
    Ok(())
}

/// The field of poolRef `i` that gives its slot name: `name`, or `pool` when the name is the pool's.
pub fn slot_name_field(i: usize, r: &PoolRefSpec) -> String {
    if r.name.is_some() {
        format!("spec.poolRefs[{i}].name")
    } else {
        format!("spec.poolRefs[{i}].pool")
    }
}

/// `spec` with its poolRefs made concrete: `gpuPools` holds the inline pools followed by
/// one pool per poolRef (named by its slot name, with the GPUPool's GPU type, price, node
/// selector and tolerations, and a capacity of the ref's `maxGpus` or the pool's
/// `capacityGpus`, the smaller when both are set), and `poolRefs` is empty. `pools` maps
/// GPUPool names to their specs. Everything after this (shield, observation, twin,
/// Deployments) works on inline pools only.
///
/// Fails on the first poolRef whose slot name is not a DNS label of at most 20
/// characters, repeats an inline pool's or an earlier poolRef's slot name, or names a
/// GPUPool not in `pools`. Duplicates among the inline pools are left to
/// [`crate::policy::shield::validate_spec`].
pub fn resolve_pools(
    spec: &LLMWorkloadSpec,
    pools: &BTreeMap<String, GPUPoolSpec>,
) -> Result<LLMWorkloadSpec, PoolRefError> {
    let mut taken: BTreeMap<&str, String> = BTreeMap::new();
    for (i, p) in spec.gpu_pools.iter().enumerate() {
        taken.entry(p.name.as_str()).or_insert_with(|| format!("spec.gpuPools[{i}].name"));
    }
    let mut out = spec.clone();
    out.pool_refs.clear();
    for (i, r) in spec.pool_refs.iter().enumerate() {
        let slot = r.slot_name();
        let field = slot_name_field(i, r);
        check_slot_name(slot).map_err(|why| PoolRefError::BadName {
            field: field.clone(),
            name: slot.to_string(),
            why,
        })?;
        if let Some(other) = taken.get(slot) {
            return Err(PoolRefError::NameClash { field, name: slot.to_string(), other: other.clone() });
        }
        let Some(pool) = pools.get(&r.pool) else {
            let known =
                if pools.is_empty() { "none".into() } else { pools.keys().cloned().collect::<Vec<_>>().join(", ") };
            return Err(PoolRefError::NoSuchPool {
                field: format!("spec.poolRefs[{i}].pool"),
                pool: r.pool.clone(),
                known,
            });
        };
        taken.insert(slot, field);
        let capacity_gpus = match (r.max_gpus, pool.capacity_gpus) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        out.gpu_pools.push(GpuPoolSpec {
            name: slot.to_string(),
            gpu_type: pool.gpu_type.clone(),
            node_selector: pool.node_selector.clone(),
            tolerations: pool.tolerations.clone(),
            price_per_gpu_hour: pool.price_per_gpu_hour,
            capacity_gpus,
        });
    }
    Ok(out)
}

/// Slot name → GPUPool name of every poolRef of `spec` as written (before
/// [`resolve_pools`], which empties `poolRefs`). The slots of inline pools are not shared
/// and are absent. On a spec whose slot names clash (which `resolve_pools` rejects) the
/// last poolRef of a name wins.
pub fn shared_slots(spec: &LLMWorkloadSpec) -> BTreeMap<&str, &str> {
    spec.pool_refs.iter().map(|r| (r.slot_name(), r.pool.as_str())).collect()
}

/// The GPUPool a slot of `spec` (as written, before [`resolve_pools`]) is shared through,
/// or `None` for an inline pool or an unknown slot.
pub fn shared_pool_of<'a>(spec: &'a LLMWorkloadSpec, slot: &str) -> Option<&'a str> {
    spec.pool_refs.iter().find(|r| r.slot_name() == slot).map(|r| r.pool.as_str())
}

/// A Node's allocatable GPU count that is not a whole number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node `{node}`: status.allocatable[\"{resource}\"] is `{value}`, not a whole number of GPUs")]
pub struct NodeGpuError {
    /// The Node's name.
    pub node: String,
    /// The extended resource (the pool's `gpuResource`).
    pub resource: String,
    /// The quantity as the Node reports it.
    pub value: String,
}

/// Whether a Node carries every label of `selector` (an empty selector selects every Node).
pub fn node_selected(selector: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The Nodes of `nodes` the pool's `nodeSelector` matches, and the sum of their
/// allocatable GPUs (`status.allocatable[gpuResource]`; a Node without it has none),
/// saturating at `u32::MAX`. Taints, cordons and readiness are not looked at: the count
/// is what the selector matches. A quantity that is not a plain whole number (GPUs are
/// integer resources) is an error naming the Node and the resource.
pub fn pool_status_from_nodes(pool: &GPUPoolSpec, nodes: &[Node]) -> Result<(u32, u32), NodeGpuError> {
    let mut count: u32 = 0;
    let mut gpus: u64 = 0;
    for node in nodes.iter().filter(|n| node_selected(&pool.node_selector, n)) {
        count = count.saturating_add(1);
        let quantity =
            node.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get(&pool.gpu_resource));
        let Some(q) = quantity else { continue };
        let whole = !q.0.is_empty() && q.0.bytes().all(|b| b.is_ascii_digit());
        let n = whole.then(|| q.0.parse::<u64>().ok()).flatten().ok_or_else(|| NodeGpuError {
            node: node.metadata.name.clone().unwrap_or_default(),
            resource: pool.gpu_resource.clone(),
            value: q.0.clone(),
        })?;
        gpus = gpus.saturating_add(n);
    }
    Ok((count, u32::try_from(gpus).unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn a100() -> GPUPoolSpec {
        serde_json::from_value(serde_json::json!({
            "gpuType": "A100-80GB",
            "pricePerGpuHour": 3.0,
            "capacityGpus": 16,
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }))
        .expect("pool parses")
    }

    fn spec(refs: serde_json::Value) -> LLMWorkloadSpec {
        serde_json::from_value(serde_json::json!({
            "variants": [{"name": "small", "model": "m", "image": "i"}],
            "gpuPools": [{"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8}],
            "poolRefs": refs,
        }))
        .expect("spec parses")
    }

    fn pools() -> BTreeMap<String, GPUPoolSpec> {
        BTreeMap::from([("shared-a100".to_string(), a100())])
    }

    #[test]
    fn a_pool_spec_defaults_its_gpu_resource_and_rejects_unknown_fields() {
        let p = a100();
        assert_eq!(p.gpu_resource, "nvidia.com/gpu");
        assert_eq!((p.effective_capacity(8), p.effective_capacity(40)), (8, 16));
        assert_eq!(GPUPoolSummary::of(&p).price_per_gpu_hour, "$3.00");
        let bad = serde_json::from_value::<GPUPoolSpec>(serde_json::json!({
            "gpuType": "L4", "pricePerGpuHour": 1.0, "capacity": 3,
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn refs_become_inline_pools_after_the_inline_ones() {
        let s = spec(
            serde_json::json!([{"pool": "shared-a100"}, {"name": "a100-small", "pool": "shared-a100", "maxGpus": 4}]),
        );
        let r = resolve_pools(&s, &pools()).expect("resolves");
        assert!(r.pool_refs.is_empty());
        let names: Vec<&str> = r.gpu_pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["l4", "shared-a100", "a100-small"]);
        let p = &r.gpu_pools[1];
        assert_eq!((p.gpu_type.as_str(), p.price_per_gpu_hour, p.capacity_gpus), ("A100-80GB", 3.0, Some(16)));
        assert_eq!(p.node_selector["gpu"], "a100");
        assert_eq!(p.tolerations[0].key, "nvidia.com/gpu");
        assert_eq!(r.gpu_pools[2].capacity_gpus, Some(4));
        assert_eq!(r.gpu_pools[0], s.gpu_pools[0]);
        assert_eq!((r.variants.clone(), r.limits.clone()), (s.variants.clone(), s.limits.clone()));
        // The resolved spec resolves to itself.
        assert_eq!(resolve_pools(&r, &BTreeMap::new()).expect("no refs"), r);
    }

    #[test]
    fn max_gpus_is_capped_by_the_pool_and_absent_caps_stay_absent() {
        let mut open = a100();
        open.capacity_gpus = None;
        let pools = BTreeMap::from([("big".to_string(), a100()), ("open".to_string(), open)]);
        let s = spec(serde_json::json!([{"pool": "big", "maxGpus": 40}, {"pool": "open"}]));
        let r = resolve_pools(&s, &pools).expect("resolves");
        assert_eq!((r.gpu_pools[1].capacity_gpus, r.gpu_pools[2].capacity_gpus), (Some(16), None));
    }

    #[test]
    fn a_missing_pool_is_named_with_its_field() {
        let s = spec(serde_json::json!([{"pool": "shared-a100"}, {"pool": "h100"}]));
        let e = resolve_pools(&s, &pools()).expect_err("h100 does not exist");
        assert_eq!(e.field(), "spec.poolRefs[1].pool");
        assert!(matches!(&e, PoolRefError::NoSuchPool { pool, .. } if pool == "h100"), "{e}");
        assert!(e.to_string().contains("shared-a100"), "{e}");
        let e = resolve_pools(&s, &BTreeMap::new()).expect_err("no pools at all");
        assert!(e.to_string().contains("known: none"), "{e}");
    }

    #[test]
    fn slot_name_clashes_are_named() {
        let s = spec(serde_json::json!([{"name": "l4", "pool": "shared-a100"}]));
        let e = resolve_pools(&s, &pools()).expect_err("clashes with the inline pool");
        assert_eq!(
            e,
            PoolRefError::NameClash {
                field: "spec.poolRefs[0].name".into(),
                name: "l4".into(),
                other: "spec.gpuPools[0].name".into()
            }
        );
        let s = spec(serde_json::json!([{"pool": "shared-a100"}, {"pool": "shared-a100"}]));
        let e = resolve_pools(&s, &pools()).expect_err("the same pool twice without names");
        assert_eq!(e.field(), "spec.poolRefs[1].pool");
        assert!(e.to_string().contains("spec.poolRefs[0].pool"), "{e}");
    }

    #[test]
    fn pool_names_that_cannot_be_slot_names_need_a_name() {
        let long = "a-very-long-shared-pool-name";
        let pools = BTreeMap::from([(long.to_string(), a100()), ("gpu.a100".to_string(), a100())]);
        let e = resolve_pools(&spec(serde_json::json!([{"pool": long}])), &pools).expect_err("too long");
        assert!(matches!(&e, PoolRefError::BadName { field, .. } if field == "spec.poolRefs[0].pool"), "{e}");
        assert!(e.to_string().contains("more than 20"), "{e}");
        let e = resolve_pools(&spec(serde_json::json!([{"pool": "gpu.a100"}])), &pools).expect_err("a dot");
        assert!(e.to_string().contains("DNS label"), "{e}");
        let ok = spec(serde_json::json!([{"name": "a100", "pool": long}, {"name": "b", "pool": "gpu.a100"}]));
        assert_eq!(resolve_pools(&ok, &pools).expect("named").gpu_pools.len(), 3);
        assert!(check_slot_name("-a").is_err() && check_slot_name("A").is_err() && check_slot_name("").is_err());
    }

    #[test]
    fn shared_slots_name_their_gpu_pools() {
        let s = spec(serde_json::json!([{"pool": "shared-a100"}, {"name": "x", "pool": "other"}]));
        assert_eq!(shared_slots(&s), BTreeMap::from([("shared-a100", "shared-a100"), ("x", "other")]));
        assert_eq!(shared_pool_of(&s, "x"), Some("other"));
        assert_eq!(shared_pool_of(&s, "l4"), None);
        assert_eq!(s.pool_names(), ["l4", "shared-a100", "x"]);
    }

    fn node(name: &str, labels: &[(&str, &str)], allocatable: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                allocatable: Some(allocatable.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn nodes_are_matched_by_every_selector_label_and_their_gpus_summed() {
        let nodes = [
            node("n1", &[("gpu", "a100"), ("zone", "a")], &[("nvidia.com/gpu", "8"), ("cpu", "96")]),
            node("n2", &[("gpu", "a100")], &[("nvidia.com/gpu", "4")]),
            node("n3", &[("gpu", "l4")], &[("nvidia.com/gpu", "8")]),
            node("n4", &[("gpu", "a100")], &[("cpu", "16")]),
            node("n5", &[], &[("nvidia.com/gpu", "2")]),
        ];
        assert_eq!(pool_status_from_nodes(&a100(), &nodes), Ok((3, 12)));
        let mut amd = a100();
        amd.node_selector.clear();
        amd.gpu_resource = "amd.com/gpu".into();
        assert_eq!(pool_status_from_nodes(&amd, &nodes), Ok((5, 0)));
        amd.gpu_resource = "nvidia.com/gpu".into();
        assert_eq!(pool_status_from_nodes(&amd, &nodes), Ok((5, 22)));
        assert_eq!(pool_status_from_nodes(&a100(), &[]), Ok((0, 0)));
    }

    #[test]
    fn garbage_quantities_are_errors_naming_node_and_resource() {
        for bad in ["", "abc", "1.5", "-1", "2k", "99999999999999999999999"] {
            let nodes = [
                node("ok", &[("gpu", "a100")], &[("nvidia.com/gpu", "8")]),
                node("bad-node", &[("gpu", "a100")], &[("nvidia.com/gpu", bad)]),
            ];
            let e = pool_status_from_nodes(&a100(), &nodes).expect_err(bad);
            assert_eq!((e.node.as_str(), e.resource.as_str(), e.value.as_str()), ("bad-node", "nvidia.com/gpu", bad));
            assert!(e.to_string().contains("bad-node") && e.to_string().contains("nvidia.com/gpu"), "{e}");
        }
        // Garbage on a Node the pool does not select is not the pool's concern.
        let other = [node("l4-node", &[("gpu", "l4")], &[("nvidia.com/gpu", "junk")])];
        assert_eq!(pool_status_from_nodes(&a100(), &other), Ok((0, 0)));
        let many = [node("big", &[("gpu", "a100")], &[("nvidia.com/gpu", "9999999999")])];
        assert_eq!(pool_status_from_nodes(&a100(), &many), Ok((1, u32::MAX)));
    }
}
