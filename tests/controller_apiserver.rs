//! The reconciler against a real kube-apiserver 1.20 (etcd + apiserver on loopback, one
//! per test binary; each test in its own namespace). Reconcile is called step by step
//! with a manual clock, a fake metrics source and a scripted policy, so every scenario is
//! deterministic; pod readiness (there is no kubelet) is written into the Deployment's
//! status by the test.
//!
//! Needs the binaries of `scripts/k8s/build.sh`; `LLMOS_SKIP_K8S=1` skips.

mod controller_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use controller_support::{cluster, events, namespace, FakeSource, Script};
use llmos::controller::leader::{LeaderElector, LeaseConfig};
use llmos::controller::{reconcile, Context, ControllerConfig, ManualClock};
use llmos::crd::LLMWorkload;

/// A workload with a small variant (1 GPU, L4 or A100) and a large one (4 GPUs, A100 only).
fn two_variant_workload(name: &str, extra: serde_json::Value) -> LLMWorkload {
    let mut spec = serde_json::json!({
        "variants": [
            {"name": "small", "model": "meta-llama/Llama-3.1-8B-Instruct", "image": "vllm/vllm-openai:v0.6.3",
             "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct"], "minReplicas": 1, "pools": ["l4", "a100"]},
            {"name": "large", "model": "meta-llama/Llama-3.1-70B-Instruct", "image": "vllm/vllm-openai:v0.6.3",
             "gpusPerReplica": 4, "pools": ["a100"]}
        ],
        "gpuPools": [
            {"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 3.0, "capacityGpus": 16,
             "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            {"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8,
             "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}
        ],
        "policy": {"kind": "static", "intervalSeconds": 10}
    });
    merge(&mut spec, extra);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("test workload parses")
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

struct Harness {
    client: Client,
    ns: String,
    ctx: Arc<Context>,
    clock: ManualClock,
    source: FakeSource,
    script: Script,
}

impl Harness {
    async fn new(ns: &str) -> Option<Harness> {
        let cluster = cluster()?;
        let client = cluster.client().await;
        let ns = namespace(&client, ns).await;
        let clock = ManualClock::new(Timestamp::now());
        let source = FakeSource::healthy(5.0);
        let script = Script::default();
        let ctx = Context::new(
            client.clone(),
            Arc::new(source.clone()),
            script.builder(),
            ControllerConfig { instance: "test".into(), ..Default::default() },
        )
        .with_clock(Arc::new(clock.clone()));
        Some(Harness { client, ns, ctx: Arc::new(ctx), clock, source, script })
    }

    fn wls(&self) -> Api<LLMWorkload> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    fn deps(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create(&self, wl: &LLMWorkload) {
        self.wls().create(&PostParams::default(), wl).await.expect("create workload");
    }

    /// One reconcile of the latest object (a second one when the first only added the finalizer).
    async fn reconcile(&self, name: &str) {
        for _ in 0..2 {
            let wl = self.wls().get(name).await.expect("get workload");
            let had_finalizer = wl.finalizers().iter().any(|f| f == llmos::controller::FINALIZER);
            reconcile(Arc::new(wl), self.ctx.clone()).await.expect("reconcile succeeds");
            if had_finalizer {
                return;
            }
        }
    }

    /// Advances the clock past the workload's next tick and reconciles. Ticks keep to the
    /// workload's phase of its 10 s interval, so the next one is at most one and a half
    /// intervals after the last (`plan::next_tick`).
    async fn tick(&self, name: &str) {
        self.clock.advance(Duration::from_secs(16));
        self.reconcile(name).await;
    }

    async fn replicas(&self) -> BTreeMap<String, i32> {
        self.deps()
            .list(&ListParams::default())
            .await
            .expect("list deployments")
            .items
            .into_iter()
            .map(|d| (d.name_any(), d.spec.and_then(|s| s.replicas).unwrap_or(-1)))
            .collect()
    }

    /// Plays the kubelet: marks `n` replicas of a Deployment ready.
    async fn set_ready(&self, deployment: &str, n: i32) {
        let patch = serde_json::json!({"status": {"replicas": n, "readyReplicas": n, "availableReplicas": n}});
        self.deps()
            .patch_status(deployment, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch deployment status");
    }

    async fn workload(&self, name: &str) -> LLMWorkload {
        self.wls().get(name).await.expect("get workload")
    }
}

fn condition<'a>(wl: &'a LLMWorkload, t: &str) -> &'a llmos::crd::Condition {
    wl.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
        .unwrap_or_else(|| panic!("no {t} condition in {:?}", wl.status))
}

#[tokio::test]
async fn first_reconcile_creates_deployments_and_service() {
    let Some(h) = Harness::new("first-reconcile").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({}))).await;
    h.reconcile("chat").await;

    let wl = h.workload("chat").await;
    assert!(wl.finalizers().iter().any(|f| f == llmos::controller::FINALIZER), "finalizer set");
    let uid = wl.uid().expect("uid");
    // One Deployment per (variant, pool); the variant's minimum goes to the cheapest pool.
    let r = h.replicas().await;
    assert_eq!(
        r,
        BTreeMap::from([
            ("chat-large-a100".to_string(), 0),
            ("chat-small-a100".to_string(), 0),
            ("chat-small-l4".to_string(), 1)
        ])
    );
    let d = h.deps().get("chat-large-a100").await.expect("deployment");
    let labels = d.labels();
    assert_eq!(labels.get("llmos.dev/workload").map(String::as_str), Some("chat"));
    assert_eq!(labels.get("llmos.dev/variant").map(String::as_str), Some("large"));
    assert_eq!(labels.get("llmos.dev/pool").map(String::as_str), Some("a100"));
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("llmos"));
    let owner = &d.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("LLMWorkload", uid.as_str(), Some(true)));
    let pod = d.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod spec");
    assert_eq!(
        pod.node_selector.unwrap().get("nvidia.com/gpu.product").map(String::as_str),
        Some("NVIDIA-A100-SXM4-80GB")
    );
    let tol = &pod.tolerations.expect("tolerations")[0];
    assert_eq!(
        (tol.key.as_deref(), tol.operator.as_deref(), tol.effect.as_deref()),
        (Some("nvidia.com/gpu"), Some("Exists"), Some("NoSchedule"))
    );
    let c = &pod.containers[0];
    let res = c.resources.as_ref().expect("resources");
    assert_eq!(res.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "4");
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "4");
    assert_eq!(c.image.as_deref(), Some("vllm/vllm-openai:v0.6.3"));
    let probe = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("readiness probe");
    assert_eq!(probe.path.as_deref(), Some("/health"));
    // The L4 pool has no taints: no tolerations there.
    let l4 = h.deps().get("chat-small-l4").await.unwrap();
    assert!(l4.spec.unwrap().template.spec.unwrap().tolerations.is_none());
    // Fields are owned by the `llmos` field manager (server-side apply).
    assert!(d
        .managed_fields()
        .iter()
        .any(|m| m.manager.as_deref() == Some("llmos") && m.operation.as_deref() == Some("Apply")));

    let svc: Service = Api::namespaced(h.client.clone(), &h.ns).get("chat").await.expect("service");
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap(),
        BTreeMap::from([("llmos.dev/workload".to_string(), "chat".to_string())])
    );
    assert_eq!(svc.owner_references()[0].uid, uid);

    let st = wl.status.as_ref().expect("status");
    assert_eq!(st.observed_generation, wl.metadata.generation);
    assert_eq!(st.desired_replicas, 1);
    assert_eq!(st.slots.len(), 3);
    assert_eq!(condition(&wl, "Degraded").status, "False");
    assert_eq!(condition(&wl, "Ready").reason, "ReplicasNotReady");
    assert_eq!(condition(&wl, "PolicyReady").status, "True");
    assert!(!events(&h.client, &h.ns, "Placed").await.is_empty(), "a Placed event");

    // Idempotent: reconciling again (between ticks) changes no Deployment.
    let before: Vec<String> = h
        .deps()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.resource_version().unwrap())
        .collect();
    h.reconcile("chat").await;
    let after: Vec<String> = h
        .deps()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.resource_version().unwrap())
        .collect();
    assert_eq!(before, after, "a second reconcile rewrote a Deployment");
}

#[tokio::test]
async fn a_decision_scales_the_right_deployment() {
    let Some(h) = Harness::new("scale").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({"limits": {"scaleDownCooldownSeconds": 30}}))).await;
    h.reconcile("chat").await;
    h.set_ready("chat-small-l4", 1).await;

    h.script.set(&[("small", "l4", 3)]);
    h.tick("chat").await;
    let r = h.replicas().await;
    assert_eq!((r["chat-small-l4"], r["chat-small-a100"], r["chat-large-a100"]), (3, 0, 0));
    let wl = h.workload("chat").await;
    let last = wl.status.as_ref().and_then(|s| s.last_decision.clone()).expect("lastDecision");
    assert_eq!(last.policy, "scripted");
    assert!(!events(&h.client, &h.ns, "ScaledUp").await.is_empty(), "a ScaledUp event");
    // The policy saw the cluster part of the observation.
    let obs = h.script.seen.lock().unwrap().last().cloned().expect("policy asked");
    assert_eq!(obs.slot("small", "l4").map(|s| (s.desired_replicas, s.ready_replicas)), Some((1, 1)));
    assert!((obs.arrival_rate_rps - 5.0).abs() < 1e-9);

    h.set_ready("chat-small-l4", 3).await;
    h.script.set(&[("small", "l4", 2)]);
    h.tick("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 2);
    assert!(!events(&h.client, &h.ns, "ScaledDown").await.is_empty(), "a ScaledDown event");
    let wl = h.workload("chat").await;
    assert!(wl.status.as_ref().unwrap().last_scale_down.contains_key("small/l4"), "cooldown recorded in status");

    // Within the cooldown the shield refuses a further scale-down, and says so.
    h.script.set(&[("small", "l4", 1)]);
    h.tick("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 2);
    let wl = h.workload("chat").await;
    let last = wl.status.as_ref().and_then(|s| s.last_decision.clone()).unwrap();
    assert!(last.shielded && last.shield_rules.contains(&"ScaleDownCooldown".to_string()), "{last:?}");
    assert!(!events(&h.client, &h.ns, "ShieldOverride").await.is_empty());
}

#[tokio::test]
async fn a_variant_switch_starts_the_new_variant_before_draining_the_old() {
    let Some(h) = Harness::new("switch").await else { return };
    let wl = two_variant_workload("chat", serde_json::json!({}));
    let mut wl = wl;
    wl.spec.variants[0].min_replicas = 0; // the small variant may go away entirely
    h.create(&wl).await;
    h.reconcile("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 1, "total minimum placed on the cheapest slot");
    h.set_ready("chat-small-l4", 1).await;

    h.script.set(&[("small", "l4", 0), ("large", "a100", 1)]);
    h.tick("chat").await;
    let r = h.replicas().await;
    assert_eq!((r["chat-large-a100"], r["chat-small-l4"]), (1, 1), "new variant started, old one kept");
    assert!(!events(&h.client, &h.ns, "VariantSwitched").await.is_empty());

    // Still not ready: the old variant keeps serving.
    h.tick("chat").await;
    let r = h.replicas().await;
    assert_eq!((r["chat-large-a100"], r["chat-small-l4"]), (1, 1));

    h.set_ready("chat-large-a100", 1).await;
    h.tick("chat").await;
    let r = h.replicas().await;
    assert_eq!((r["chat-large-a100"], r["chat-small-l4"]), (1, 0), "old variant drained once the new one is ready");
    let notes: Vec<String> =
        events(&h.client, &h.ns, "VariantSwitched").await.into_iter().filter_map(|e| e.note).collect();
    assert!(notes.iter().any(|n| n.contains("drained small")), "{notes:?}");
}

/// A status write carries the resourceVersion its workload was read at: one that a
/// former leader sent before a partition and that arrives after its successor wrote is
/// refused by the API server (409), and the status stays the successor's. The operator
/// itself, reconciling a stale copy, sends its changes again at the new version, and
/// only those: the successor's recorded decision is not put back to the older one.
#[tokio::test]
async fn a_status_write_read_at_an_old_version_is_refused() {
    let Some(h) = Harness::new("fence").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({}))).await;
    h.reconcile("chat").await;
    let read_by_former = h.workload("chat").await;
    // The successor's tick writes the status.
    h.set_ready("chat-small-l4", 1).await;
    h.tick("chat").await;
    let successor = h.workload("chat").await;
    assert_ne!(successor.resource_version(), read_by_former.resource_version(), "the tick wrote status");
    let decided = successor.status.as_ref().and_then(|s| s.last_decision.clone());
    assert!(decided.is_some(), "the tick recorded its decision");

    // The former leader's late write, made from what it had read.
    let mut late_status = read_by_former.status.clone().expect("status");
    late_status.desired_replicas = 7;
    let base = read_by_former.status.clone();
    let late = llmos::controller::execute::status_patch(read_by_former.resource_version(), base.as_ref(), &late_status)
        .expect("patch body");
    let refused = h.wls().patch_status("chat", &PatchParams::default(), &Patch::Merge(&late)).await;
    match refused {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("a write read at an old resourceVersion was not refused: {other:?}"),
    }
    let now = h.workload("chat").await;
    assert_eq!(now.resource_version(), successor.resource_version(), "nothing was written");
    assert_eq!(now.status, successor.status);

    // The operator reconciling the stale copy between ticks: refused once, then its own
    // changes (not the stale decision) written at the new version.
    let conflicts = || {
        h.ctx
            .metrics
            .status_writes
            .get_or_create(&llmos::controller::telemetry::OutcomeLabel { outcome: "conflict".into() })
            .get()
    };
    let before = conflicts();
    reconcile(Arc::new(read_by_former), h.ctx.clone()).await.expect("a stale copy reconciles");
    assert_eq!(conflicts(), before + 1, "the stale write was refused once");
    let after = h.workload("chat").await.status.expect("status");
    assert_eq!(after.last_decision, decided, "the successor's decision stays recorded");

    // Without the precondition a late write goes through: what the fence prevents.
    let unfenced = llmos::controller::execute::status_patch(None, base.as_ref(), &late_status).expect("patch body");
    h.wls().patch_status("chat", &PatchParams::default(), &Patch::Merge(&unfenced)).await.expect("unconditional");
    assert_eq!(h.workload("chat").await.status.map(|s| s.desired_replicas), Some(7));
}

/// A Deployment apply carries the `resourceVersion` its plan read: one that a former
/// leader sent and that arrives after its successor changed the Deployment is refused, a
/// change of the Deployment's status alone is not a reason to refuse, and without the
/// fence the late apply would go through.
#[tokio::test]
async fn a_deployment_apply_read_before_someone_else_changed_it_is_refused() {
    use llmos::controller::execute::apply_fenced;
    use llmos::controller::plan::ObservedDeployment;
    let Some(h) = Harness::new("fence-deploy").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({}))).await;
    h.reconcile("chat").await;
    let name = "chat-small-l4";
    let read = h.deps().get(name).await.expect("the plan's Deployment");
    let seen = |d: &Deployment| ObservedDeployment {
        generation: d.metadata.generation.expect("generation"),
        uid: d.metadata.uid.clone().expect("uid"),
        resource_version: d.metadata.resource_version.clone(),
    };
    // What the operator applies: its own fields only (as the plan builds them).
    let mut late = read.clone();
    late.metadata.managed_fields = None;
    late.metadata.resource_version = None;
    late.metadata.generation = None;
    late.metadata.creation_timestamp = None;
    late.metadata.uid = None;
    late.status = None;
    late.spec.as_mut().expect("spec").replicas = Some(5);

    // Only the status moved (the kubelet's readiness): the apply goes through.
    h.set_ready(name, 1).await;
    let out = apply_fenced(&h.deps(), &late, Some(&seen(&read))).await.expect("apply");
    assert!(out.is_some(), "a status change alone refused the apply");
    assert_eq!(h.replicas().await[name], 5);

    // Someone else changed the spec since the plan read it (a successor leader's tick):
    // the late apply is refused and the successor's replicas stay.
    let read = h.deps().get(name).await.expect("read again");
    let by_successor = serde_json::json!({"spec": {"replicas": 2}});
    h.deps().patch(name, &PatchParams::default(), &Patch::Merge(&by_successor)).await.expect("successor's write");
    let mut later = late.clone();
    later.spec.as_mut().expect("spec").replicas = Some(7);
    let out = apply_fenced(&h.deps(), &later, Some(&seen(&read))).await.expect("no error");
    assert!(out.is_none(), "an apply read before the successor's write went through");
    assert_eq!(h.replicas().await[name], 2, "the successor's replicas stay");

    // Without the fence the late apply overwrites the successor: what the fence prevents.
    h.deps().patch(name, &PatchParams::apply("llmos").force(), &Patch::Apply(&later)).await.expect("unfenced apply");
    assert_eq!(h.replicas().await[name], 7);
}

/// The webhook's self-made certificate in its Secret on the real API server: an empty
/// Secret is filled once by two replicas racing, a certificate from before the CA's key
/// was kept is renewed under a new CA kept next to the old one, and a year later the
/// serving certificate is renewed by the same CA with the old CA dropped.
#[tokio::test]
async fn the_webhook_certificate_in_its_secret_is_made_once_and_renewed_before_it_ends() {
    use k8s_openapi::api::core::v1::Secret;
    use llmos::controller::webhook_cert::{ensure_secret_at, generate_at, not_after};
    let Some(h) = Harness::new("webhook-cert").await else { return };
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let empty = |name: &str| Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &empty("tls")).await.expect("empty Secret");
    let names = vec!["127.0.0.1".to_string()];
    let now = time::OffsetDateTime::now_utc();
    let (a, b) = tokio::join!(
        ensure_secret_at(&h.client, &h.ns, "tls", &names, now),
        ensure_secret_at(&h.client, &h.ns, "tls", &names, now)
    );
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    assert_eq!(a, b, "two replicas racing agree on one certificate");
    let stored = secrets.get("tls").await.expect("Secret");
    let data = stored.data.clone().expect("filled");
    assert!(data.contains_key("ca.key"), "the CA's key is kept to renew");
    assert_eq!(ensure_secret_at(&h.client, &h.ns, "tls", &names, now).await.expect("again"), a, "nothing due");

    // A Secret filled 300 days ago by a version that did not keep the CA's key.
    let mut old = generate_at(&names, now - time::Duration::days(300)).expect("old bundle");
    old.ca_key_pem = None;
    let mut s = secrets.get("tls").await.expect("Secret");
    let d = s.data.get_or_insert_with(Default::default);
    d.remove("ca.key");
    for (k, v) in [("ca.crt", &old.ca_pem), ("tls.crt", &old.cert_pem), ("tls.key", &old.key_pem)] {
        d.insert(k.into(), k8s_openapi::ByteString(v.clone().into_bytes()));
    }
    secrets.replace("tls", &PostParams::default(), &s).await.expect("old Secret");
    let renewed = ensure_secret_at(&h.client, &h.ns, "tls", &names, now).await.expect("renewed");
    assert_ne!(renewed.cert_pem, old.cert_pem);
    assert!(renewed.ca_pem.ends_with(&old.ca_pem), "the old CA stays trusted after the new: {}", renewed.ca_pem);
    assert!(not_after(&renewed.cert_pem).expect("readable") > now + time::Duration::days(360));
    let a_year_on = now + time::Duration::days(250);
    let again = ensure_secret_at(&h.client, &h.ns, "tls", &names, a_year_on).await.expect("renewed again");
    assert_ne!(again.cert_pem, renewed.cert_pem);
    assert_eq!(again.ca_key_pem, renewed.ca_key_pem, "the same CA signed it");
    assert_eq!(again.ca_pem.matches("BEGIN CERTIFICATE").count(), 1, "the old CA dropped");
    let held = secrets.get("tls").await.expect("Secret").data.expect("data");
    assert_eq!(held["tls.crt"].0, again.cert_pem.as_bytes(), "what was returned is what is stored");
}

#[tokio::test]
async fn deleting_the_workload_cleans_up() {
    let Some(h) = Harness::new("delete").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({}))).await;
    h.reconcile("chat").await;
    assert_eq!(h.replicas().await.len(), 3);

    h.wls().delete("chat", &DeleteParams::default()).await.expect("delete");
    let wl = h.workload("chat").await;
    assert!(wl.metadata.deletion_timestamp.is_some(), "the finalizer holds the object");
    reconcile(Arc::new(wl), h.ctx.clone()).await.expect("cleanup");
    assert!(h.replicas().await.is_empty(), "Deployments deleted");
    let svcs: Api<Service> = Api::namespaced(h.client.clone(), &h.ns);
    assert!(svcs.get_opt("chat").await.unwrap().is_none(), "Service deleted");
    assert!(h.wls().get_opt("chat").await.unwrap().is_none(), "finalizer removed, workload gone");
}

#[tokio::test]
async fn an_invalid_spec_degrades_with_a_warning_and_touches_nothing() {
    let Some(h) = Harness::new("invalid").await else { return };
    let mut wl = two_variant_workload("chat", serde_json::json!({}));
    wl.spec.variants[1].pools = vec!["h100".into()];
    h.create(&wl).await;
    h.reconcile("chat").await;

    let wl = h.workload("chat").await;
    let degraded = condition(&wl, "Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        degraded.message.contains("h100") && degraded.message.contains("spec.variants[1].pools[0]"),
        "{}",
        degraded.message
    );
    assert!(h.replicas().await.is_empty(), "no Deployment for an invalid spec");
    let warn = events(&h.client, &h.ns, "InvalidSpec").await;
    assert_eq!(warn.first().and_then(|e| e.type_.as_deref()), Some("Warning"));
    assert!(warn[0].note.as_deref().unwrap_or("").contains("h100"));
}

#[tokio::test]
async fn pool_refs_resolve_to_gpupools_and_a_missing_one_degrades() {
    let Some(h) = Harness::new("pool-refs").await else { return };
    // GPUPools are cluster-scoped: one per test namespace, so parallel tests do not meet.
    let pool_name = format!("shared-{}", h.ns);
    let pools: Api<llmos::crd::GPUPool> = Api::all(h.client.clone());
    let gp: llmos::crd::GPUPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": pool_name},
        "spec": {"gpuType": "A100-80GB", "pricePerGpuHour": 2.5, "capacityGpus": 16,
                 "nodeSelector": {"llmos.dev/test-pool": "shared-a100"}}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &gp).await.expect("GPUPool created");
    // The a100 slot comes from the GPUPool; l4 stays inline.
    let mut wl = two_variant_workload(
        "shared",
        serde_json::json!({"poolRefs": [{"name": "a100", "pool": pool_name}],
                           "scheduling": {"priority": 5, "priorityClassName": "llm-test"}}),
    );
    wl.spec.gpu_pools.retain(|p| p.name == "l4");
    h.create(&wl).await;
    h.reconcile("shared").await;
    let wl = h.workload("shared").await;
    assert_eq!(condition(&wl, "Degraded").status, "False", "{:?}", wl.status);
    let r = h.replicas().await;
    assert!(r.contains_key("shared-large-a100") && r.contains_key("shared-small-l4"), "{r:?}");
    let d = h.deps().get("shared-large-a100").await.expect("deployment on the shared pool");
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod spec");
    assert_eq!(
        pod.node_selector.unwrap_or_default().get("llmos.dev/test-pool").map(String::as_str),
        Some("shared-a100"),
        "the GPUPool's node selector"
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("llm-test"));

    // A poolRef to a GPUPool that does not exist: Degraded naming the field, nothing created.
    let mut orphan =
        two_variant_workload("orphan", serde_json::json!({"poolRefs": [{"name": "a100", "pool": "no-such-pool"}]}));
    orphan.spec.gpu_pools.retain(|p| p.name == "l4");
    h.create(&orphan).await;
    h.reconcile("orphan").await;
    let orphan = h.workload("orphan").await;
    let degraded = condition(&orphan, "Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        degraded.message.contains("spec.poolRefs[0].pool") && degraded.message.contains("no-such-pool"),
        "{}",
        degraded.message
    );
    assert!(!h.replicas().await.keys().any(|k| k.starts_with("orphan-")), "no Deployment for an unresolved poolRef");
    let _ = pools.delete(&pool_name, &Default::default()).await;
}

/// A workload of one 2-GPU variant `small` that may run only on the shared slot `shared`
/// (a poolRef to `pool`), with the given scheduling.
fn shared_workload(name: &str, pool: &str, scheduling: serde_json::Value) -> LLMWorkload {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload", "metadata": {"name": name},
        "spec": {
            "variants": [{"name": "small", "model": "meta-llama/Llama-3.1-8B-Instruct",
                          "image": "vllm/vllm-openai:v0.6.3", "gpusPerReplica": 2, "minReplicas": 1,
                          "maxReplicas": 8, "pools": ["shared"]}],
            "poolRefs": [{"name": "shared", "pool": pool}],
            "scheduling": scheduling,
            "limits": {"maxStepChange": 8, "scaleDownCooldownSeconds": 0, "maxTotalReplicas": 8},
            "policy": {"kind": "static", "intervalSeconds": 10}
        }
    }))
    .expect("shared test workload parses")
}

#[tokio::test]
async fn the_arbiter_grants_a_shared_pool_by_priority_and_preempts_victims_first() {
    use k8s_openapi::api::core::v1::Node;
    let Some(h) = Harness::new("arbiter").await else { return };
    // One Node of 8 GPUs selected by a label of this test only, and its pool (capped at 8).
    let label = format!("arbiter-{}", h.ns);
    let nodes: Api<Node> = Api::all(h.client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("gpu-node-{}", h.ns), "labels": {"llmos.dev/test-pool": label}},
        "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}
    }))
    .unwrap();
    let node = nodes.create(&PostParams::default(), &node).await.expect("Node created");
    if node.status.as_ref().and_then(|s| s.allocatable.as_ref()).is_none() {
        let patch = serde_json::json!({"status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}});
        nodes
            .patch_status(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("Node status");
    }
    let pool_name = format!("arb-{}", h.ns);
    let pools: Api<llmos::crd::GPUPool> = Api::all(h.client.clone());
    let gp: llmos::crd::GPUPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": pool_name},
        "spec": {"gpuType": "A100-80GB", "pricePerGpuHour": 2.5, "nodeSelector": {"llmos.dev/test-pool": label}}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &gp).await.expect("GPUPool created");
    let total_gpus = |r: &BTreeMap<String, i32>| -> i32 { r.values().map(|n| (*n).max(0) * 2).sum() };

    h.create(&shared_workload("batch", &pool_name, serde_json::json!({"priority": 0}))).await;
    h.create(&shared_workload("chat", &pool_name, serde_json::json!({"priority": 100}))).await;
    h.reconcile("batch").await;
    h.reconcile("chat").await;
    let r = h.replicas().await;
    assert_eq!((r["batch-small-shared"], r["chat-small-shared"]), (1, 1), "first placements: {r:?}");

    // batch grows into the free GPUs.
    h.script.set(&[("small", "shared", 3)]);
    h.tick("batch").await;
    let r = h.replicas().await;
    assert_eq!(r["batch-small-shared"], 3, "{r:?}");
    assert!(total_gpus(&r) <= 8, "{r:?}");

    // chat (priority 100) wants the whole pool: batch is scaled down first, chat gets it.
    h.script.set(&[("small", "shared", 4)]);
    h.tick("chat").await;
    let r = h.replicas().await;
    assert_eq!((r["batch-small-shared"], r["chat-small-shared"]), (0, 4), "{r:?}");
    let pre = events(&h.client, &h.ns, "Preempted").await;
    let note = pre.first().and_then(|e| e.note.clone()).unwrap_or_default();
    assert!(
        pre.iter().all(|e| e.regarding.as_ref().and_then(|o| o.name.as_deref()) == Some("batch"))
            && note.contains(&format!("{}/chat", h.ns))
            && note.contains("6 GPUs"),
        "a Preempted Warning on batch naming chat: {note}"
    );
    assert_eq!(pre.first().and_then(|e| e.type_.as_deref()), Some("Warning"));
    assert!(!events(&h.client, &h.ns, "Preempting").await.is_empty(), "chat says whom it took from");

    // batch asks again: refused while chat holds the pool, and says why.
    h.script.set(&[("small", "shared", 3)]);
    h.tick("batch").await;
    let r = h.replicas().await;
    assert_eq!((r["batch-small-shared"], r["chat-small-shared"]), (0, 4), "{r:?}");
    let refused = events(&h.client, &h.ns, "GpusRefused").await;
    let note = refused.first().and_then(|e| e.note.clone()).unwrap_or_default();
    assert!(note.contains("granted 0") && note.contains(&pool_name), "{note}");
    let batch = h.workload("batch").await;
    let arb = batch.status.as_ref().and_then(|s| s.arbitration.clone()).expect("status.arbitration");
    assert_eq!(
        (arb.slots[0].proposed, arb.slots[0].granted, arb.slots[0].gpu_pool.as_str()),
        (3, 0, pool_name.as_str())
    );
    let last = arb.last_preempted.expect("lastPreempted");
    assert_eq!((last.by.as_str(), last.gpus), (format!("{}/chat", h.ns).as_str(), 6));

    // chat gives half back; batch gets it at its next tick.
    h.script.set(&[("small", "shared", 2)]);
    h.tick("chat").await;
    h.script.set(&[("small", "shared", 3)]);
    h.tick("batch").await;
    let r = h.replicas().await;
    assert_eq!((r["batch-small-shared"], r["chat-small-shared"]), (2, 2), "{r:?}");

    // The GPUPool's status counts its Node, capacity and what is allocated.
    let st = pools.get(&pool_name).await.expect("pool").status.expect("GPUPool status");
    assert_eq!(
        (st.nodes, st.allocatable_gpus, st.capacity_gpus, st.allocated_gpus, st.workloads),
        (1, 8, 8, 8, 2),
        "{st:?}"
    );
    assert_eq!(st.pending_gpus, 8, "no replica is ready: every allocated GPU is pending");
    let _ = pools.delete(&pool_name, &Default::default()).await;
    let _ = nodes.delete(&node.name_any(), &Default::default()).await;
}

/// A policy that asks, for every slot, the replicas the test wants for its variant now.
struct Wants(Arc<std::sync::Mutex<BTreeMap<String, u32>>>);

impl llmos::policy::Policy for Wants {
    fn name(&self) -> &str {
        "wants"
    }
    fn decide(&mut self, obs: &llmos::policy::Observation) -> llmos::policy::Decision {
        let wants = self.0.lock().unwrap().clone();
        let mut d = llmos::policy::Decision::new("what the test wants");
        for s in &obs.slots {
            d.set(&s.variant, &s.pool, wants.get(&s.variant).copied().unwrap_or(s.desired_replicas));
        }
        d
    }
}

/// Three workloads (priorities 100, 50, 0) tick every second, each in its own task of the
/// real controller (watch caches, concurrent reconciles), on one GPUPool of 8 GPUs that
/// they want three times over. A watch on their Deployments checks that the GPUs desired
/// over all three never exceed the pool at any point of the history the API server
/// records, and the grants settle where the priorities say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ticks_never_over_commit_a_shared_pool() {
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "arbiter-concurrent").await;
    let pool_name = format!("conc-{ns}");
    let pools: Api<llmos::crd::GPUPool> = Api::all(client.clone());
    let gp: llmos::crd::GPUPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": pool_name},
        "spec": {"gpuType": "A100-80GB", "pricePerGpuHour": 2.5, "capacityGpus": 8}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &gp).await.expect("GPUPool created");
    let wants = Arc::new(std::sync::Mutex::new(BTreeMap::from([
        ("gold".to_string(), 4u32),
        ("silver".to_string(), 4),
        ("bronze".to_string(), 4),
    ])));
    let w = wants.clone();
    let builder: llmos::controller::PolicyBuilder =
        Arc::new(move |_spec| Ok(Box::new(Wants(w.clone())) as Box<dyn llmos::policy::Policy>));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(FakeSource::healthy(5.0)),
        builder,
        ControllerConfig { instance: "test".into(), ..Default::default() },
    ));
    // The watch of every desired-replica change, in the API server's order.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let history = Arc::new(std::sync::Mutex::new((BTreeMap::<String, i32>::new(), 0i32, 0usize)));
    let h2 = history.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(deps, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(d)) = stream.next().await {
            let mut h = h2.lock().unwrap();
            h.0.insert(d.name_any(), d.spec.and_then(|s| s.replicas).unwrap_or(0));
            let gpus: i32 = h.0.values().map(|r| r * 2).sum();
            h.1 = h.1.max(gpus);
            h.2 += 1;
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(llmos::controller::run_controller(ctx, Some(ns.clone()), async move {
        let _ = stop_rx.await;
    }));
    let wls: Api<LLMWorkload> = Api::namespaced(client.clone(), &ns);
    for (name, priority) in [("gold", 100), ("silver", 50), ("bronze", 0)] {
        let mut wl = shared_workload(name, &pool_name, serde_json::json!({"priority": priority}));
        wl.spec.variants[0].name = name.to_string();
        wl.spec.policy.interval_seconds = 1;
        wls.create(&PostParams::default(), &wl).await.expect("create workload");
    }
    let replicas = || async {
        let r: BTreeMap<String, i32> = Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|d| (d.name_any(), d.spec.and_then(|s| s.replicas).unwrap_or(0)))
            .collect();
        [
            r.get("gold-gold-shared").copied().unwrap_or(-1),
            r.get("silver-silver-shared").copied().unwrap_or(-1),
            r.get("bronze-bronze-shared").copied().unwrap_or(-1),
        ]
    };
    let settle = |expect: [i32; 3], what: &'static str| {
        let replicas = &replicas;
        async move {
            let t0 = std::time::Instant::now();
            loop {
                let r = replicas().await;
                if r == expect {
                    return;
                }
                assert!(t0.elapsed() < Duration::from_secs(60), "{what}: {r:?}, expected {expect:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // Everyone wants 8 GPUs: gold gets the pool.
    settle([4, 0, 0], "gold first").await;
    // gold steps back to one replica: silver takes the rest, bronze still has nothing.
    *wants.lock().unwrap() = BTreeMap::from([("gold".into(), 1), ("silver".into(), 4), ("bronze".into(), 4)]);
    settle([1, 3, 0], "silver next").await;
    // gold wants it all again: silver is preempted.
    wants.lock().unwrap().insert("gold".into(), 4);
    settle([4, 0, 0], "gold again").await;
    // Everyone wants 2 GPUs: one replica each fits (6 of 8 GPUs).
    *wants.lock().unwrap() = BTreeMap::from([("gold".into(), 1), ("silver".into(), 1), ("bronze".into(), 1)]);
    settle([1, 1, 1], "one each").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
    watch.abort();
    let (last, peak, changes) = history.lock().unwrap().clone();
    eprintln!("shared pool of 8 GPUs: {changes} Deployment changes watched, peak {peak} GPUs desired, last {last:?}");
    assert!(changes >= 9, "the watch saw the scale-ups and preemptions ({changes} changes)");
    assert!(peak <= 8, "the desired GPUs over the three workloads reached {peak} of the pool's 8");
    let preempted = events(&client, &ns, "Preempted").await;
    assert!(preempted.iter().any(|e| e.regarding.as_ref().and_then(|o| o.name.as_deref()) == Some("silver")));
    let _ = pools.delete(&pool_name, &Default::default()).await;
}

#[tokio::test]
async fn missing_metrics_hold_the_replicas() {
    let Some(h) = Harness::new("missing-metrics").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({}))).await;
    h.reconcile("chat").await;
    h.set_ready("chat-small-l4", 1).await;
    h.script.set(&[("small", "l4", 4)]);

    h.source.set_missing("vllm:num_requests_waiting (stale)");
    h.tick("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 1, "held while metrics are missing");
    let wl = h.workload("chat").await;
    let c = condition(&wl, "MetricsAvailable");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "MetricsMissing"));
    assert!(c.message.contains("vllm:num_requests_waiting"), "{}", c.message);
    let warn = events(&h.client, &h.ns, "MetricsUnavailable").await;
    assert_eq!(warn.first().and_then(|e| e.type_.as_deref()), Some("Warning"));

    h.source.set_unreachable("connection refused");
    h.tick("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 1, "held while the source is down");
    let wl = h.workload("chat").await;
    assert_eq!(condition(&wl, "MetricsAvailable").reason, "MetricsSourceError");

    h.source.set_healthy(5.0);
    h.tick("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 4, "acts again once metrics are back");
    assert_eq!(condition(&h.workload("chat").await, "MetricsAvailable").status, "True");
}

#[tokio::test]
async fn shadow_mode_records_without_applying() {
    let Some(h) = Harness::new("shadow").await else { return };
    h.create(&two_variant_workload("chat", serde_json::json!({"policy": {"mode": "shadow"}}))).await;
    h.reconcile("chat").await;
    h.script.set(&[("small", "l4", 3)]);
    h.tick("chat").await;
    assert_eq!(h.replicas().await["chat-small-l4"], 1, "shadow decisions are not applied");
    let wl = h.workload("chat").await;
    let shadow = wl.status.as_ref().and_then(|s| s.shadow_decision.clone()).expect("shadowDecision");
    assert!(shadow.targets.iter().any(|t| t.variant == "small" && t.pool == "l4" && t.replicas == 3), "{shadow:?}");
    assert!(!events(&h.client, &h.ns, "ShadowDecision").await.is_empty());
}

#[tokio::test]
async fn leader_election_keeps_the_second_instance_passive() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "leader").await;
    let a = LeaderElector::new(client.clone(), LeaseConfig::new("llmos-leader", &ns, "operator-a"));
    let b = LeaderElector::new(client.clone(), LeaseConfig::new("llmos-leader", &ns, "operator-b"));
    let t0 = Timestamp::now();
    assert!(a.try_acquire_or_renew_at(t0).await.unwrap(), "first candidate takes the free lease");
    assert!(!b.try_acquire_or_renew_at(t0).await.unwrap(), "second candidate stays passive");
    let later = t0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5)).unwrap();
    assert!(a.try_acquire_or_renew_at(later).await.unwrap(), "leader renews");
    assert!(!b.try_acquire_or_renew_at(later).await.unwrap(), "still passive while the lease is fresh");
    assert_eq!(b.holder().await.unwrap().as_deref(), Some("operator-a"));
    // A leader that stops renewing loses the lease once it expires (15 s after the renewal).
    let expired = later.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(16)).unwrap();
    assert!(b.try_acquire_or_renew_at(expired).await.unwrap(), "standby takes over an expired lease");
    assert!(!a.try_acquire_or_renew_at(expired).await.unwrap(), "the old leader is now passive");
    // Release hands over at once.
    b.release().await.unwrap();
    assert_eq!(a.holder().await.unwrap(), None);
    assert!(a.try_acquire_or_renew().await.unwrap(), "released lease is free");
}

/// Clock skew between operator replicas (each against the API server): the standby's
/// clock runs an hour ahead of the leader's. Comparing the leader's `renewTime` with the
/// standby's clock would hand the Lease over at every try although the leader renews on
/// time; expiry is judged on the standby's own observations instead.
#[tokio::test]
async fn leader_election_is_immune_to_clock_skew() {
    use k8s_openapi::jiff::SignedDuration;
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "skew").await;
    let a = LeaderElector::new(client.clone(), LeaseConfig::new("llmos-leader", &ns, "operator-a"));
    let b = LeaderElector::new(client.clone(), LeaseConfig::new("llmos-leader", &ns, "operator-b"));
    let at = |t: Timestamp, secs: i64| t.checked_add(SignedDuration::from_secs(secs)).unwrap();
    let t0 = Timestamp::now();
    let skew = 3600;
    assert!(a.try_acquire_or_renew_at(t0).await.unwrap(), "first candidate takes the free lease");
    for k in 0..12 {
        // The leader renews every 2 s on its clock; the standby tries at the same moments.
        let ta = at(t0, 2 * k);
        assert!(a.try_acquire_or_renew_at(ta).await.unwrap(), "the leader renews (step {k})");
        assert!(
            !b.try_acquire_or_renew_at(at(ta, skew)).await.unwrap(),
            "a standby whose clock is {skew} s ahead took the lease from a leader that renews (step {k})"
        );
    }
    // The leader stops renewing: the standby takes over one lease duration (15 s) after
    // the last change it saw, on its own clock.
    let last_seen = at(at(t0, 22), skew);
    assert!(!b.try_acquire_or_renew_at(at(last_seen, 14)).await.unwrap(), "taken before the lease duration");
    assert!(b.try_acquire_or_renew_at(at(last_seen, 16)).await.unwrap(), "not taken after the lease duration");
    assert!(!a.try_acquire_or_renew_at(at(t0, 40)).await.unwrap(), "the old leader, its clock behind, is passive");
    assert_eq!(a.holder().await.unwrap().as_deref(), Some("operator-b"));
}

#[tokio::test]
async fn crd_rejects_invalid_instances_at_admission() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "admission").await;
    let dry = PostParams { dry_run: true, ..Default::default() };
    let base = serde_json::to_value(two_variant_workload("ok", serde_json::json!({}))).unwrap();
    let mut ok = base.clone();
    ok["metadata"]["namespace"] = ns.clone().into();
    let dyn_api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::erase::<LLMWorkload>(&()));
    let as_dyn = |v: serde_json::Value| -> kube::api::DynamicObject { serde_json::from_value(v).unwrap() };
    dyn_api.create(&dry, &as_dyn(ok.clone())).await.expect("a valid instance is accepted");

    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("gpusPerReplica", Box::new(|v| v["spec"]["variants"][1]["gpusPerReplica"] = 0.into())),
        ("name", Box::new(|v| v["spec"]["variants"][0]["name"] = "Bad_Name".into())),
        ("variants", Box::new(|v| v["spec"]["variants"] = serde_json::json!([]))),
        ("pricePerGpuHour", Box::new(|v| v["spec"]["gpuPools"][0]["pricePerGpuHour"] = (-1.0).into())),
        ("kind", Box::new(|v| v["spec"]["policy"]["kind"] = "magic".into())),
        ("targetAttainment", Box::new(|v| v["spec"]["slo"] = serde_json::json!({"targetAttainment": 1.5}))),
        (
            "image",
            Box::new(|v| {
                v["spec"]["variants"][0].as_object_mut().unwrap().remove("image");
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut bad = ok.clone();
        mutate(&mut bad);
        match dyn_api.create(&dry, &as_dyn(bad)).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{field}: {s:?}");
                assert!(s.message.contains(field), "{field}: message does not name the field: {}", s.message);
            }
            other => panic!("{field}: an invalid instance was not rejected: {other:?}"),
        }
    }
}

#[tokio::test]
async fn plain_manifests_and_examples_pass_server_side_dry_run() {
    let Some(cluster) = cluster() else { return };
    // The namespace must exist for namespaced objects to dry-run; create it for real.
    cluster.kubectl(&["apply", "-f", "manifests/01-namespace.yaml"]).expect("namespace applies");
    let out = cluster
        .kubectl(&["apply", "--dry-run=server", "-f", "manifests/"])
        .expect("manifests pass server-side dry-run");
    assert!(out.contains("deployment.apps/llmos-operator"), "{out}");
    let client = cluster.client().await;
    namespace(&client, "examples").await;
    let out = cluster
        .kubectl(&["apply", "--dry-run=server", "-n", "examples", "-f", "manifests/examples/"])
        .expect("examples pass server-side dry-run");
    assert!(out.contains("llmworkload.llmos.dev"), "{out}");
    let out = cluster
        .kubectl(&["apply", "--dry-run=server", "-n", "examples", "-f", "manifests/examples/shared-pools/"])
        .expect("shared-pool examples pass server-side dry-run");
    for want in ["gpupool.llmos.dev/a100", "gpupool.llmos.dev/shared-l4", "llmworkload.llmos.dev/chat-prod"] {
        assert!(out.contains(want), "{want}: {out}");
    }
}

#[tokio::test]
async fn gpupools_and_pool_refs_are_validated_at_admission() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "admission-pools").await;
    let dry = PostParams { dry_run: true, ..Default::default() };
    let pools: Api<llmos::crd::GPUPool> = Api::all(client.clone());
    let pool = |spec: serde_json::Value| -> llmos::crd::GPUPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "llmos.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": "a100"}, "spec": spec
        }))
        .expect("test pool parses")
    };
    let created = pools
        .create(&dry, &pool(serde_json::json!({"gpuType": "A100-80GB", "pricePerGpuHour": 3.0})))
        .await
        .expect("a valid GPUPool is accepted");
    assert_eq!(created.spec.gpu_resource, "nvidia.com/gpu", "the default is applied");
    assert!(created.metadata.namespace.is_none(), "GPUPools are cluster-scoped");
    let dyn_pools: Api<kube::api::DynamicObject> =
        Api::all_with(client.clone(), &kube::api::ApiResource::erase::<llmos::crd::GPUPool>(&()));
    let as_dyn = |v: serde_json::Value| -> kube::api::DynamicObject { serde_json::from_value(v).unwrap() };
    for (field, spec) in [
        ("pricePerGpuHour", serde_json::json!({"gpuType": "L4", "pricePerGpuHour": -1.0})),
        ("gpuType", serde_json::json!({"pricePerGpuHour": 1.0})),
        ("gpuResource", serde_json::json!({"gpuType": "L4", "pricePerGpuHour": 1.0, "gpuResource": "not a resource"})),
    ] {
        let obj = serde_json::json!({"apiVersion": "llmos.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": "bad"}, "spec": spec});
        match dyn_pools.create(&dry, &as_dyn(obj)).await {
            Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains(field), "{field}: {s:?}"),
            other => panic!("{field}: an invalid GPUPool was not rejected: {other:?}"),
        }
    }
    // A workload with poolRefs only (no inline gpuPools) and scheduling is accepted.
    let wls: Api<LLMWorkload> = Api::namespaced(client.clone(), &ns);
    let mut refs_only = two_variant_workload(
        "refs",
        serde_json::json!({
            "poolRefs": [{"pool": "a100", "maxGpus": 8}, {"name": "l4", "pool": "shared.l4"}],
            "scheduling": {"priority": 100, "priorityClassName": "llm-high", "guaranteedGpus": 2}
        }),
    );
    refs_only.spec.gpu_pools.clear();
    wls.create(&dry, &refs_only).await.expect("a workload on poolRefs only is accepted");
    let dyn_wls: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::erase::<LLMWorkload>(&()));
    for (field, extra) in [
        ("name", serde_json::json!({"poolRefs": [{"name": "Bad_Slot", "pool": "a100"}]})),
        ("maxGpus", serde_json::json!({"poolRefs": [{"pool": "a100", "maxGpus": -1}]})),
        ("priorityClassName", serde_json::json!({"scheduling": {"priorityClassName": "Not_A_Class"}})),
        ("guaranteedGpus", serde_json::json!({"scheduling": {"guaranteedGpus": -1}})),
    ] {
        let mut v = serde_json::to_value(two_variant_workload("bad", serde_json::json!({}))).unwrap();
        merge(&mut v["spec"], extra);
        match dyn_wls.create(&dry, &as_dyn(v)).await {
            Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains(field), "{field}: {s:?}"),
            other => panic!("{field}: an invalid workload was not rejected: {other:?}"),
        }
    }
}

/// Stops a child process with SIGTERM (the operator's graceful shutdown path).
fn sigterm(child: &std::process::Child) {
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `limit` (a deadline against
/// hanging, not a speed assertion).
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_operator_binary_reconciles_with_leader_election_and_hands_over_on_sigterm() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "binary").await;
    let wls: Api<LLMWorkload> = Api::namespaced(client.clone(), &ns);
    wls.create(&PostParams::default(), &two_variant_workload("chat", serde_json::json!({}))).await.expect("create");
    let leases = LeaderElector::new(client.clone(), LeaseConfig::new("llmos-test-leader", &ns, "observer"));

    let start = |identity: &str, port: u16| {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_llmos"))
            .args([
                "run",
                "--namespace",
                &ns,
                "--lease-name",
                "llmos-test-leader",
                "--lease-namespace",
                &ns,
                "--log-level",
                "info",
            ])
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("POD_NAME", identity)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(cluster.run_dir.join(format!("{identity}.log"))).expect("log file"))
            .spawn()
            .expect("llmos run starts");
        KillOnDrop(child)
    };
    let port_a = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_b = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut a = start("operator-a", port_a);

    // The leader creates the Deployments through the watch-driven controller.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "operator-a creates the Deployments", || async {
        let n = deps.list(&ListParams::default()).await.ok()?.items.len();
        (n == 3).then_some(())
    })
    .await;
    assert_eq!(leases.holder().await.unwrap().as_deref(), Some("operator-a"));
    let metrics = reqwest::get(format!("http://127.0.0.1:{port_a}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("llmos_reconciles_total"), "{metrics}");
    let ready = reqwest::get(format!("http://127.0.0.1:{port_a}/readyz")).await.unwrap().status();
    assert_eq!(ready.as_u16(), 200);

    // A second instance comes up, is healthy, and stays passive.
    let mut b = start("operator-b", port_b);
    eventually(Duration::from_secs(60), "operator-b answers /readyz", || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port_b}/readyz")).await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // more than one retry period of operator-b
    assert_eq!(leases.holder().await.unwrap().as_deref(), Some("operator-a"), "the second instance took the lease");

    // SIGTERM: the leader stops, releases the lease, exits 0; the standby takes over.
    sigterm(&a.0);
    let status = eventually(Duration::from_secs(30), "operator-a exits after SIGTERM", || {
        let s = a.0.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "operator-a exited with {status:?}");
    eventually(Duration::from_secs(30), "operator-b takes over the released lease", || async {
        (leases.holder().await.ok()?.as_deref() == Some("operator-b")).then_some(())
    })
    .await;
    // The new leader reconciles: scale a slot by editing the spec's minimum, see it applied.
    let patch = serde_json::json!({"spec": {"limits": {"minTotalReplicas": 2}}});
    wls.patch("chat", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch spec");
    eventually(Duration::from_secs(60), "operator-b reconciles the edited spec", || async {
        let wl = wls.get("chat").await.ok()?;
        let st = wl.status?;
        (st.observed_generation == wl.metadata.generation).then_some(())
    })
    .await;
    sigterm(&b.0);
    let status = eventually(Duration::from_secs(30), "operator-b exits after SIGTERM", || {
        let s = b.0.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "operator-b exited with {status:?}");
}

/// A policy that blocks in `decide` until the test releases it, recording whether it was
/// released (true) or gave up waiting (false).
struct Blocking {
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
    released: Arc<std::sync::Mutex<Option<bool>>>,
}

impl llmos::policy::Policy for Blocking {
    fn name(&self) -> &str {
        "blocking"
    }
    fn decide(&mut self, obs: &llmos::policy::Observation) -> llmos::policy::Decision {
        let _ = self.entered.send(());
        let ok = self.release.lock().unwrap().recv_timeout(Duration::from_secs(60)).is_ok();
        *self.released.lock().unwrap() = Some(ok);
        llmos::policy::Decision::hold(obs, "blocking: hold")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_decision_does_not_hold_up_another_workload() {
    let Some(cluster) = cluster() else { return };
    let client = cluster.client().await;
    let ns = namespace(&client, "slow-decision").await;
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let released = Arc::new(std::sync::Mutex::new(None));
    let blocking = std::sync::Mutex::new(Some(Blocking {
        release: std::sync::Mutex::new(release_rx),
        entered: entered_tx,
        released: released.clone(),
    }));
    let script = Script::default();
    let scripted = script.builder();
    // The workload with a 13 s interval gets the blocking policy, the other the scripted one.
    let builder: llmos::controller::PolicyBuilder = Arc::new(move |spec: &llmos::crd::LLMWorkloadSpec| {
        if spec.policy.interval_seconds == 13 {
            if let Some(b) = blocking.lock().unwrap().take() {
                return Ok(Box::new(b) as Box<dyn llmos::policy::Policy>);
            }
        }
        scripted(spec)
    });
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(FakeSource::healthy(5.0)),
        builder,
        ControllerConfig { instance: "test".into(), ..Default::default() },
    ));
    let wls: Api<LLMWorkload> = Api::namespaced(client.clone(), &ns);
    for (name, interval) in [("slow", 13), ("fast", 15)] {
        let wl =
            two_variant_workload(name, serde_json::json!({"policy": {"kind": "hpa", "intervalSeconds": interval}}));
        wls.create(&PostParams::default(), &wl).await.expect("create workload");
        // The first reconcile adds the finalizer (no control tick yet).
        reconcile(Arc::new(wls.get(name).await.unwrap()), ctx.clone()).await.expect("finalizer");
    }
    // Workload "slow" reaches its decision and blocks there...
    let slow = {
        let (ctx, wl) = (ctx.clone(), wls.get("slow").await.unwrap());
        tokio::spawn(async move { reconcile(Arc::new(wl), ctx).await.map(|_| ()) })
    };
    entered_rx.recv().await.expect("the slow policy was asked");
    // ...while "fast" reconciles, decides and applies all the way through.
    reconcile(Arc::new(wls.get("fast").await.unwrap()), ctx.clone()).await.expect("fast reconcile");
    assert!(!script.seen.lock().unwrap().is_empty(), "the fast workload's policy decided");
    release_tx.send(()).expect("release");
    slow.await.expect("join").expect("slow reconcile");
    assert_eq!(
        *released.lock().unwrap(),
        Some(true),
        "the fast workload's reconcile had to wait for the slow decision"
    );
}

/// The forecast planner's learned state is written to a ConfigMap owned by the workload,
/// put back after a restart (a new controller context), and a broken one is refused with a
/// Warning naming the ConfigMap and the key, after which the planner starts afresh and the
/// next save replaces it.
#[tokio::test]
async fn the_forecast_planners_state_survives_a_restart() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let Some(mut h) = Harness::new("forecast-state").await else { return };
    let restart = |h: &Harness| {
        let config =
            ControllerConfig { instance: "test".into(), policy_state_interval: Duration::ZERO, ..Default::default() };
        let builder = llmos::controller::cli::default_policy_builder();
        let ctx = Context::new(h.client.clone(), Arc::new(h.source.clone()), builder, config)
            .with_clock(Arc::new(h.clock.clone()));
        Arc::new(ctx)
    };
    h.ctx = restart(&h);
    let spec =
        serde_json::json!({"policy": {"kind": "forecast", "intervalSeconds": 10, "forecast": {"capacityRps": 2.0}}});
    h.create(&two_variant_workload("chat", spec)).await;
    h.reconcile("chat").await;
    for _ in 0..4 {
        h.tick("chat").await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let first_t = |cm: &ConfigMap| {
        let data = cm.data.clone().expect("data");
        assert_eq!(data["policy"], "forecast");
        let state: serde_json::Value = serde_json::from_str(&data["state.json"]).expect("state.json is JSON");
        state["units"]["small"]["forecaster"]["first_t"].as_f64().expect("the small variant's forecaster has data")
    };
    let saved = cms.get("chat-policy-state").await.expect("the state was saved");
    let wl = h.workload("chat").await;
    assert_eq!(saved.owner_references().first().map(|o| o.uid.clone()), wl.metadata.uid, "owned by the workload");
    let t0 = first_t(&saved);

    // A restart: the new context reads the state back and goes on from it.
    h.ctx = restart(&h);
    h.tick("chat").await;
    assert_eq!(events(&h.client, &h.ns, "PolicyStateRestored").await.len(), 1, "one PolicyStateRestored event");
    assert_eq!(first_t(&cms.get("chat-policy-state").await.unwrap()), t0, "the restored history goes on");

    // A broken state: refused with a Warning naming the ConfigMap and the key; the
    // planner starts afresh and its next save replaces it.
    let broken = serde_json::json!({"data": {"state.json": "{\"units\": {\"small\": "}});
    cms.patch("chat-policy-state", &PatchParams::default(), &Patch::Merge(&broken)).await.expect("break the state");
    h.ctx = restart(&h);
    h.tick("chat").await;
    let rejected = events(&h.client, &h.ns, "PolicyStateRejected").await;
    let note = rejected.first().and_then(|e| e.note.clone()).expect("a PolicyStateRejected event");
    assert!(note.contains("chat-policy-state") && note.contains("state.json"), "{note}");
    assert_eq!(rejected[0].type_.as_deref(), Some("Warning"));
    assert!(first_t(&cms.get("chat-policy-state").await.unwrap()) > t0, "a fresh state replaced the broken one");
}
