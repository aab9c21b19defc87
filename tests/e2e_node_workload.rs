//! The users' path on a real node: an LLMWorkload applied with kubectl becomes simulated
//! vLLM Pods that kube-scheduler binds, the kubelet starts from the local image store and
//! reports Ready after their simulated weights load, Prometheus scrapes as discovered from
//! the API server, and the operator, itself two Pods of the image under
//! leader election, scales with the load.
//!
//! The stack: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
//! loopback, one node (`scripts/node/start.sh`: containerd, runc, the kubelet, a bridge
//! pod network, 8 `nvidia.com/gpu` advertised), Prometheus on the host scraping the Pods
//! the API server lists (a `file_sd` file the test writes from the Pods every 500 ms, with
//! the labels the relabelling of docs/e2e.md gives: Debian's Prometheus is built without
//! `kubernetes_sd_configs`), and the image built from the binary under test
//! (`images/build.sh`). The workload's variant
//! runs that image as `llmos vllm-sim` (Llama-3-8B on an A100, simulated in real time).
//!
//! The load is injected per Pod: the test sends OpenAI-style completions from the host to
//! the Ready, not-terminating Pods' bridge addresses in turn (no kube-proxy runs, so the
//! Service's cluster IP carries nothing here).
//!
//! What it shows, in order:
//! 1. the operator Pods start; one holds the Lease, the other stands by;
//! 2. the workload's first Pod is bound to the node, started from the local store, not
//!    Ready while it loads, then Ready, and Prometheus scrapes it with the workload's labels;
//! 3. a load step (2 → 24 requests/s) scales the workload up (HPA on ongoing requests):
//!    new Pods start and become Ready;
//! 4. the leading operator Pod is deleted at once (grace 0: the kubelet stops its
//!    container, and the operator gives up the Lease on its way out); the other takes the
//!    Lease and carries on (a SIGKILLed leader's Lease expiring is tests/e2e_operator.rs);
//! 5. the load drops to 1 request/s: the new leader scales down, and the removed Pods
//!    drain and exit 0 (their exit codes from containerd's task exit events, which the
//!    kubelet's terminated statuses, where it wrote them, must match);
//! 6. nearly every request was answered (the refusals are the drain's 503s, counted);
//! 7. the operators' identity was refused nothing by RBAC (the API server's audit log).
//!
//! Skipped, naming what refused, where the machine cannot run a node (as
//! tests/e2e_node.rs); `LLMOS_SKIP_E2E=1` skips. Waits are generous.

mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use e2e_support::node::{
    build_image, first_container_id, node_test_runs, operator_config, pod_ready, start_node, wait_for,
    watch_exit_codes, ContainerExits, GPU_PRODUCT, NODE,
};
use e2e_support::{apply_operator_rbac, audited_requests, free_port, Stack, OPERATOR_NS};

const NS: &str = "default";
const WORKLOAD: &str = "sim";
const OPERATORS: [&str; 2] = ["llmos-operator-a", "llmos-operator-b"];

fn workload_yaml(prom: &str) -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata: {{name: {WORKLOAD}, namespace: {NS}}}
spec:
  variants:
    - name: llama3-8b
      model: llama-3-8b
      image: llmos.local/llmos:dev
      args: ["vllm-sim", "--model", "llama-3-8b", "--gpu", "A100-80GB", "--port", "8000", "--load-seconds", "3"]
      port: 8000
      minReplicas: 1
      maxReplicas: 4
  gpuPools:
    - {{name: a100, gpuType: A100-80GB, pricePerGpuHour: 3.0, capacityGpus: 8, nodeSelector: {{nvidia.com/gpu.product: {GPU_PRODUCT}}}}}
  slo: {{ttftMs: 2000, tpotMs: 100, percentile: 90, targetAttainment: 0.95}}
  limits: {{minTotalReplicas: 1, maxTotalReplicas: 4, maxStepChange: 2, scaleDownCooldownSeconds: 4}}
  metrics: {{source: prometheus, prometheusUrl: "{prom}", windowSeconds: 10, staleAfterSeconds: 20}}
  policy:
    kind: hpa
    intervalSeconds: 2
    hpa: {{targets: [{{metric: ongoingRequests, target: 6}}], scaleDownStabilizationSeconds: 10, scaleUpPeriodSeconds: 4}}
"#
    )
}

/// What Prometheus' Kubernetes pod discovery with the relabelling docs/e2e.md gives users
/// would find, written as a `file_sd` file every 500 ms from the API server's Pods: each
/// running workload Pod's bridge address on its container port named `http`, with its
/// `llmos.dev/*` labels as `llmos_*`, its namespace and name. (Debian's Prometheus is
/// built without `kubernetes_sd_configs`.)
fn pod_discovery(pods: Api<Pod>, file: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let lp = ListParams::default().labels("llmos.dev/workload");
            let mut groups = Vec::new();
            for p in pods.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
                let port = p.spec.as_ref().and_then(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|x| x.name.as_deref() == Some("http"))
                });
                let (Some(ip), Some(port)) = (ip, port) else { continue };
                let mut labels: BTreeMap<String, String> = p
                    .labels()
                    .iter()
                    .filter_map(|(k, v)| Some((format!("llmos_{}", k.strip_prefix("llmos.dev/")?), v.clone())))
                    .collect();
                labels.insert("namespace".into(), p.namespace().unwrap_or_default());
                labels.insert("pod".into(), p.name_any());
                groups
                    .push(serde_json::json!({"targets": [format!("{ip}:{}", port.container_port)], "labels": labels}));
            }
            let text = serde_json::Value::Array(groups).to_string();
            if text != last {
                let tmp = file.with_extension("tmp");
                if std::fs::write(&tmp, &text).is_ok() && std::fs::rename(&tmp, &file).is_ok() {
                    last = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

fn operator_pod(name: &str, port: u16, prom: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {OPERATOR_NS}, labels: {{app.kubernetes.io/name: llmos-operator}}}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 30
  containers:
    - name: operator
      image: llmos.local/llmos:dev
      imagePullPolicy: IfNotPresent
      args: ["run", "--metrics-addr=0.0.0.0:{port}", "--log-format=json", "--lease-namespace={OPERATOR_NS}"]
      env:
        - {{name: KUBECONFIG, value: /etc/llmos-kube/kubeconfig}}
        - {{name: LLMOS_PROMETHEUS_URL, value: "{prom}"}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
      readinessProbe:
        httpGet: {{path: /readyz, port: {port}}}
        periodSeconds: 1
      volumeMounts: [{{name: kube, mountPath: /etc/llmos-kube, readOnly: true}}]
  volumes: [{{name: kube, configMap: {{name: llmos-kube}}}}]
"#
    )
}

/// The workload's Pods: (Ready and not terminating: their addresses), all of them.
async fn workload_pods(pods: &Api<Pod>) -> (Vec<String>, Vec<Pod>) {
    let lp = ListParams::default().labels(&format!("llmos.dev/workload={WORKLOAD}"));
    let all = pods.list(&lp).await.map(|l| l.items).unwrap_or_default();
    let ready = all
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    (ready, all)
}

/// Answers by status code (0: no answer), and the rate to send at.
#[derive(Default)]
struct Load {
    codes: Mutex<BTreeMap<u16, u64>>,
    rate_milli: AtomicU64,
}

/// Sends completions at `load.rate_milli / 1000` per second to the Ready Pods in turn.
fn load_generator(pods: Api<Pod>, load: Arc<Load>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let mut targets: Vec<String> = Vec::new();
        let mut refreshed = Instant::now() - Duration::from_secs(10);
        let mut i = 0usize;
        loop {
            if refreshed.elapsed() > Duration::from_millis(500) {
                targets = workload_pods(&pods).await.0;
                refreshed = Instant::now();
            }
            let rate = load.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            if rate > 0.0 && !targets.is_empty() {
                let url = format!("http://{}:8000/v1/completions", targets[i % targets.len()]);
                i += 1;
                let (http, load) = (http.clone(), load.clone());
                tokio::spawn(async move {
                    let body = serde_json::json!({"model": "llama-3-8b", "prompt": "q".repeat(800), "max_tokens": 96});
                    let code = http.post(url).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                    *load.codes.lock().unwrap().entry(code).or_default() += 1;
                });
            }
            let gap = if rate > 0.0 { 1.0 / rate } else { 0.2 };
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
    })
}

async fn desired(client: &Client) -> i32 {
    e2e_support::desired_total(client, NS, WORKLOAD).await
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let l = leases.list(&ListParams::default()).await.ok()?;
    l.items.into_iter().find_map(|l| l.spec?.holder_identity.filter(|h| !h.is_empty()))
}

async fn prom_count(prom: &str, q: &str) -> f64 {
    let url = format!("{prom}/api/v1/query");
    let Ok(r) = reqwest::Client::new().get(url).query(&[("query", q)]).send().await else { return 0.0 };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_of_simulated_vllm_pods_scales_with_load_on_a_real_node() {
    if !node_test_runs() {
        return;
    }
    let t_all = Instant::now();
    let (stack, client) = Stack::start_with(true, true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);
    let image_dir = stack.path("images/llmos");
    build_image(&image_dir, Path::new(env!("CARGO_BIN_EXE_llmos")));
    let node_dir = stack.path("node");
    let started = match start_node(&node_dir, &stack.kubeconfig, &image_dir, 8) {
        Ok(s) => s,
        Err(refusal) => {
            eprintln!("SKIPPED: this machine cannot run a real node: {refusal}");
            return;
        }
    };
    let _node = started.node;

    // Prometheus on the host, its targets discovered from the API server's Pods.
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets");
    stack.scrape_operators(&[]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let discovery = pod_discovery(pods.clone(), stack.path("targets.json"));
    stack.start_prometheus();
    let prom = format!("http://127.0.0.1:{}", stack.prom_port);

    // 1. Two operator Pods; one leads.
    operator_config(&stack);
    for name in OPERATORS {
        stack.kubectl(&["apply", "-f", "-"], Some(&operator_pod(name, free_port(), &prom)));
    }
    let first = wait_for("an operator Pod to hold the Lease", &node_dir, || {
        let client = client.clone();
        async move { lease_holder(&client).await.filter(|h| OPERATORS.contains(&h.as_str())) }
    })
    .await;
    let pods_op: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    wait_for("both operator Pods Ready", &node_dir, || {
        let pods_op = pods_op.clone();
        async move {
            let l = pods_op.list(&ListParams::default()).await.ok()?;
            (l.items.iter().filter(|p| pod_ready(p)).count() == 2).then_some(())
        }
    })
    .await;
    eprintln!("operator Pods Ready; {first} leads");

    // 2. The workload, applied with kubectl: its first Pod loads, gets Ready, is scraped.
    stack.kubectl(&["apply", "-f", "-"], Some(&workload_yaml(&prom)));
    let t_apply = Instant::now();
    wait_for("the workload's first Pod Ready", &node_dir, || {
        let pods = pods.clone();
        async move { (!workload_pods(&pods).await.0.is_empty()).then_some(()) }
    })
    .await;
    let first_ready = t_apply.elapsed().as_secs_f64();
    let (_, all) = workload_pods(&pods).await;
    let p0 = &all[0];
    assert_eq!(p0.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(NODE), "bound to the real node");
    let q = format!("count(vllm:num_requests_running{{llmos_workload=\"{WORKLOAD}\",namespace=\"{NS}\"}})");
    wait_for("Prometheus to scrape the Pod discovered from the API server", &node_dir, || {
        let (prom, q) = (prom.clone(), q.clone());
        async move { (prom_count(&prom, &q).await >= 1.0).then_some(()) }
    })
    .await;
    eprintln!("measured: workload applied to first Pod Ready {first_ready:.1} s (3 s of it simulated weight loading)");

    // 3. The load step: 2 requests/s, then 24.
    let load = Arc::new(Load::default());
    load.rate_milli.store(2000, Ordering::Relaxed);
    let generator = load_generator(pods.clone(), load.clone());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let base = desired(&client).await;
    load.rate_milli.store(24_000, Ordering::Relaxed);
    let t_step = Instant::now();
    let scaled = wait_for("a scale-up to 3 Ready Pods after the load step", &node_dir, || {
        let pods = pods.clone();
        async move {
            let ready = workload_pods(&pods).await.0.len();
            (ready >= 3).then_some(ready)
        }
    })
    .await;
    let scale_up_s = t_step.elapsed().as_secs_f64();
    let scraped = prom_count(&prom, &q).await;
    eprintln!("measured: load step to {scaled} Ready Pods {scale_up_s:.1} s (from {base} desired); {scraped} scraped");

    // 4. The leader's Pod goes at once; the other takes over.
    let leader = lease_holder(&client).await.expect("a leader");
    pods_op
        .delete(&leader, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("delete the leader's Pod");
    let t_kill = Instant::now();
    let next = wait_for("the other operator Pod to take the Lease", &node_dir, || {
        let (client, leader) = (client.clone(), leader.clone());
        async move { lease_holder(&client).await.filter(|h| *h != leader && OPERATORS.contains(&h.as_str())) }
    })
    .await;
    let handover_s = t_kill.elapsed().as_secs_f64();

    // 5. The load drops: the new leader scales down; removed Pods drain and exit 0.
    // The removed Pods' exit codes come from containerd's task exit events (the kubelet
    // may delete a Pod's object before it writes its terminated status); the kubelet's
    // statuses, watched (a poll can miss them), must agree where it wrote them.
    let (exits, exit_watch) = watch_exit_codes(&pods, "llmos.dev/workload", false).await;
    let task_exits = ContainerExits::start(&node_dir);
    let ids = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    load.rate_milli.store(1000, Ordering::Relaxed);
    let t_drop = Instant::now();
    let kept = wait_for("a scale-down to 1 Pod after the load dropped", &node_dir, || {
        let (pods, ids) = (pods.clone(), ids.clone());
        async move {
            let (ready, all) = workload_pods(&pods).await;
            for p in &all {
                if let Some(id) = first_container_id(p) {
                    ids.lock().unwrap().insert(p.name_any(), id);
                }
            }
            (ready.len() == 1 && all.len() == 1).then(|| all[0].name_any())
        }
    })
    .await;
    let scale_down_s = t_drop.elapsed().as_secs_f64();
    generator.abort();
    discovery.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    exit_watch.abort();
    let exits = exits.lock().unwrap().clone();
    // Every removed Pod's container exit, from containerd; the kubelet's statuses agree.
    let (task_exits, ids) = (task_exits.exits(), ids.lock().unwrap().clone());
    let removed: BTreeMap<String, Option<i32>> = ids
        .iter()
        .filter(|(name, _)| **name != kept)
        .map(|(name, id)| (name.clone(), task_exits.get(id).copied()))
        .collect();
    assert!(!removed.is_empty(), "no removed Pod was seen");
    for (name, code) in &exits {
        if let Some(Some(c)) = removed.get(name) {
            assert_eq!(code, c, "{name}: the kubelet's terminated status against containerd's exit");
        }
    }
    assert!(
        removed.values().all(|c| *c == Some(0)),
        "removed Pods must drain and exit 0 (containerd's exits; None: no exit seen): {removed:?}"
    );

    // 6. The load's answers.
    let codes = load.codes.lock().unwrap().clone();
    let total: u64 = codes.values().sum();
    let ok = codes.get(&200).copied().unwrap_or(0);
    assert!(total >= 100 && ok as f64 >= 0.97 * total as f64, "answers by status code: {codes:?}");

    // 7. RBAC: nothing refused to the operators' identity.
    let used = audited_requests(&stack);
    let refused: Vec<_> = used.iter().filter(|(_, (_, r))| *r > 0).collect();
    assert!(refused.is_empty(), "requests of the operators refused by RBAC: {refused:?}");
    let restarted: BTreeSet<String> = pods_op
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(|p| p.name_any()).collect())
        .unwrap_or_default();

    let summary = format!(
        "e2e node workload: {:.0}s in all; first Pod Ready {first_ready:.1}s after apply; load step to {scaled} Ready \
         Pods in {scale_up_s:.1}s; Lease {leader} -> {next} in {handover_s:.1}s after the leader's Pod was deleted; \
         scaled down to 1 Pod in {scale_down_s:.1}s after the load dropped; removed Pods exited {removed:?}; answers \
         {codes:?}; operator Pods left {restarted:?}",
        t_all.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_node_workload_summary.txt"), summary);
}
