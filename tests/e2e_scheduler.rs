//! The real kube-scheduler places the GPU pods of three workloads that share one GPUPool,
//! and agrees with the operator's arbiter.
//!
//! The stack: etcd, kube-apiserver, kube-controller-manager (Deployments → ReplicaSets →
//! Pods) and kube-scheduler 1.20 on loopback (`scripts/k8s/start.sh` with
//! `WITH_SCHEDULER=1`), two Nodes of 4 GPUs each (`nvidia.com/gpu` advertised in their
//! status, as a device plugin would; no kubelet runs, so the test lifts the not-ready
//! taint the API server puts on a new Node), PriorityClasses for the workloads,
//! and the controller (in this process, as the operator's ServiceAccount with the shipped
//! RBAC) deciding with a policy that asks what the test wants. The test plays the kubelet
//! only where one is needed: a Pod being deleted is removed once the controller-manager
//! has marked it (a kubelet would confirm its end after the drain).
//!
//! What it shows:
//! - every Pod of every workload is bound by kube-scheduler to a Node of the pool, and no
//!   Node gets more GPUs than it has;
//! - when the high-priority workload preempts the low one through the arbiter, the victim's
//!   Pods go first and the preemptor's new Pods are bound once their GPUs are free: no Pod
//!   stays unschedulable, and kube-scheduler preempts nothing itself (the arbiter never
//!   asks for more than the Nodes have);
//! - the GPUPool's status counts the Nodes and their GPUs;
//! - the operator's identity was refused nothing (Nodes listed, GPUPool status patched).
//!
//! Needs `scripts/k8s/build.sh` (kube-scheduler included); `LLMOS_SKIP_E2E=1` skips.

mod e2e_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::ResourceExt;

use e2e_support::{apply_operator_rbac, audited_requests, operator_kubeconfig, Stack};
use llmos::controller::{run_controller, Context, ControllerConfig};
use llmos::crd::{GPUPool, LLMWorkload};
use llmos::metrics::{MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource};
use llmos::policy::{Decision, Observation, Policy};

const NS: &str = "shared";

/// A policy that asks, for every slot, the replicas the test wants for its variant now.
struct Wants(Arc<Mutex<BTreeMap<String, u32>>>);

impl Policy for Wants {
    fn name(&self) -> &str {
        "wants"
    }
    fn decide(&mut self, obs: &Observation) -> Decision {
        let wants = self.0.lock().unwrap().clone();
        let mut d = Decision::new("what the test wants");
        for s in &obs.slots {
            d.set(&s.variant, &s.pool, wants.get(&s.variant).copied().unwrap_or(s.desired_replicas));
        }
        d
    }
}

/// Complete metrics: 5 requests/s, every slot quiet.
struct Steady;

impl MetricsSource for Steady {
    fn name(&self) -> &str {
        "steady"
    }
    fn observe<'a>(
        &'a self,
        _q: &'a MetricsQuery<'a>,
    ) -> futures::future::BoxFuture<'a, Result<MetricsSnapshot, MetricsError>> {
        Box::pin(async {
            Ok(MetricsSnapshot {
                arrival_rate_rps: Some(5.0),
                arrival_rate_trend_rps_per_s: Some(0.0),
                slo_attainment: Some(0.99),
                ..Default::default()
            })
        })
    }
}

/// Where the Pods of the workloads are: per workload (bound, unbound), and GPUs per Node.
#[derive(Debug, Default, PartialEq)]
struct Placement {
    bound: BTreeMap<String, (u32, u32)>,
    gpus_per_node: BTreeMap<String, u32>,
}

async fn placement(pods: &Api<Pod>) -> Placement {
    let mut p = Placement::default();
    for pod in pods.list(&ListParams::default()).await.expect("list pods").items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let wl = pod.labels().get("llmos.dev/workload").cloned().unwrap_or_default();
        let gpus: u32 = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|c| {
                        c.resources.as_ref()?.requests.as_ref()?.get("nvidia.com/gpu")?.0.parse::<u32>().ok()
                    })
                    .sum()
            })
            .unwrap_or(0);
        let e = p.bound.entry(wl).or_default();
        match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => {
                e.0 += 1;
                *p.gpus_per_node.entry(node).or_default() += gpus;
            }
            None => e.1 += 1,
        }
    }
    p
}

fn workload(name: &str, priority: i32, class: &str) -> LLMWorkload {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "variants": [{"name": name, "model": "meta-llama/Llama-3.1-8B-Instruct",
                          "image": "vllm/vllm-openai:v0.6.3", "gpusPerReplica": 2, "minReplicas": 1,
                          "maxReplicas": 4, "pools": ["a100"]}],
            "poolRefs": [{"name": "a100", "pool": "a100"}],
            "scheduling": {"priority": priority, "priorityClassName": class},
            "limits": {"maxStepChange": 4, "scaleDownCooldownSeconds": 0, "maxTotalReplicas": 4},
            "policy": {"kind": "static", "intervalSeconds": 2}
        }
    }))
    .expect("workload parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_scheduler_places_the_shared_pool_as_the_arbiter_grants() {
    if !e2e_support::e2e_wanted(true) {
        return;
    }
    let t_all = Instant::now();
    let (stack, client) = Stack::start_with(true, true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);
    stack.kubectl(&["create", "namespace", NS], None);
    let classes =
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: llm-high}\nvalue: 1000\n---\n\
                   apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: llm-low}\nvalue: 0\n";
    stack.kubectl(&["apply", "-f", "-"], Some(classes));

    // Two Nodes of 4 GPUs each, as their kubelet and device plugin would register them.
    e2e_support::gpu_nodes_and_pool(&client, &["gpu-a", "gpu-b"], 4, 2.5).await;

    // The controller as the operator's ServiceAccount.
    let kc = kube::config::Kubeconfig::read_from(operator_kubeconfig(&stack)).expect("operator kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
    let op_client = kube::Client::try_from(cfg).expect("operator client");
    let wants = Arc::new(Mutex::new(BTreeMap::from([
        ("chat".to_string(), 1u32),
        ("code".to_string(), 1),
        ("batch".to_string(), 4),
    ])));
    let w = wants.clone();
    let builder: llmos::controller::PolicyBuilder =
        Arc::new(move |_spec| Ok(Box::new(Wants(w.clone())) as Box<dyn Policy>));
    let ctx = Arc::new(Context::new(
        op_client,
        Arc::new(Steady),
        builder,
        ControllerConfig { instance: "e2e-scheduler".into(), ..Default::default() },
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run_controller(ctx, None, async move {
        let _ = stop_rx.await;
    }));
    let wls: Api<LLMWorkload> = Api::namespaced(client.clone(), NS);
    for (name, prio, class) in [("chat", 1000, "llm-high"), ("code", 1000, "llm-high"), ("batch", 0, "llm-low")] {
        wls.create(&PostParams::default(), &workload(name, prio, class)).await.expect("create workload");
    }

    // The kubelet's part: a Pod marked for deletion is gone once its drain would be over.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let removed = Arc::new(Mutex::new(0u32));
    let kubelet = {
        let (pods, removed) = (pods.clone(), removed.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for p in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_some()) {
                        if pods
                            .delete(
                                &p.name_any(),
                                &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
                            )
                            .await
                            .is_ok()
                        {
                            *removed.lock().unwrap() += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // Waits until every workload has `expect` Pods, all bound, and checks the Nodes' GPUs.
    let scheduler_log = stack.path("k8s/scheduler.log");
    let settle = |expect: [(&'static str, u32); 3], what: &'static str| {
        let pods = pods.clone();
        let log = scheduler_log.clone();
        async move {
            let t0 = Instant::now();
            loop {
                let p = placement(&pods).await;
                assert!(p.gpus_per_node.values().all(|g| *g <= 4), "{what}: a Node got more GPUs than it has: {p:?}");
                let done = expect.iter().all(|(w, n)| p.bound.get(*w).copied().unwrap_or_default() == (*n, 0));
                let extra = p.bound.keys().any(|k| !expect.iter().any(|(w, _)| w == k));
                if done && !extra {
                    eprintln!("{what}: settled after {:.1}s: {p:?}", t0.elapsed().as_secs_f64());
                    return t0.elapsed();
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(90),
                    "{what}: {p:?}, expected {expect:?} all bound; kube-scheduler's log ends:\n{}",
                    e2e_support::tail(&std::fs::read_to_string(&log).unwrap_or_default())
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // batch takes what chat and code leave: 2 replicas (4 GPUs).
    settle([("chat", 1), ("code", 1), ("batch", 2)], "batch fills the pool").await;
    // chat wants 3 replicas: the arbiter takes batch's GPUs, batch's Pods go first.
    wants.lock().unwrap().insert("chat".into(), 3);
    let took = settle([("chat", 3), ("code", 1), ("batch", 0)], "chat preempts batch").await;
    // chat steps back to 1: batch gets its GPUs again.
    wants.lock().unwrap().insert("chat".into(), 1);
    settle([("chat", 1), ("code", 1), ("batch", 2)], "batch again").await;

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
    kubelet.abort();

    // kube-scheduler preempted nothing of its own: every Pod deletion was a scale-down.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
    let evs = events.list(&ListParams::default()).await.expect("events").items;
    let by_scheduler: Vec<String> = evs
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Preempted"))
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("default-scheduler"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(by_scheduler.is_empty(), "kube-scheduler preempted Pods itself: {by_scheduler:?}");
    let unschedulable = evs.iter().filter(|e| e.reason.as_deref() == Some("FailedScheduling")).count();
    let scheduled = evs.iter().filter(|e| e.reason.as_deref() == Some("Scheduled")).count();
    assert!(scheduled >= 8, "kube-scheduler bound the Pods ({scheduled} Scheduled events)");
    let llmos_preempted: Vec<_> = {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
        api.list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Preempted"))
            .filter(|e| e.regarding.as_ref().and_then(|o| o.name.as_deref()) == Some("batch"))
            .collect()
    };
    assert!(!llmos_preempted.is_empty(), "the arbiter's Preempted Event on batch");

    let pools: Api<GPUPool> = Api::all(client.clone());
    let st = pools.get("a100").await.expect("pool").status.expect("GPUPool status");
    assert_eq!((st.nodes, st.allocatable_gpus, st.capacity_gpus, st.workloads), (2, 8, 8, 3), "{st:?}");
    assert_eq!(st.allocated_gpus, 8, "{st:?}");

    // The operator's identity was refused nothing and used its Node and GPUPool rights.
    let used = audited_requests(&stack);
    let refused: Vec<_> = used.iter().filter(|(_, (_, r))| *r > 0).collect();
    assert!(refused.is_empty(), "requests of the operator refused by RBAC: {refused:?}");
    for (g, r, v) in
        [("", "nodes", "list"), ("llmos.dev", "gpupools/status", "patch"), ("llmos.dev", "gpupools", "list")]
    {
        assert!(used.contains_key(&(g.to_string(), r.to_string(), v.to_string())), "{v} {g}/{r} not used: {used:?}");
    }
    eprintln!(
        "e2e scheduler: {:.0}s in all; chat's preemption of batch settled (victims removed, new Pods bound) in {:.1}s; \
         {scheduled} Pods bound by kube-scheduler, {unschedulable} FailedScheduling events while GPUs were freed, \
         {} Pods removed after deletion",
        t_all.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        removed.lock().unwrap()
    );
}
