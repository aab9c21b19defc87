//! Three LLMWorkloads of different priorities share one GPUPool that is too small for all
//! of them at their peaks, end to end, everything real on loopback except the GPUs: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler 1.20
//! (`scripts/k8s/start.sh`), Prometheus (`scripts/prometheus/start.sh`), two operator
//! replicas (`llmos run`, as the ServiceAccount of `manifests/02-rbac.yaml`, under leader
//! election) and `llmos twin-serve --scheduled-only` as the data plane: the twin serves
//! each workload's bound Pods as simulated vLLM replicas with its own traffic, and
//! Prometheus scrapes them.
//!
//! The pool: two Nodes of 3 GPUs each (`nvidia.com/gpu` in their status, as a device
//! plugin would advertise it; no kubelet runs), selected by the GPUPool `a100`, which has
//! no capacity cap, so its capacity is what the Nodes have: 6 GPUs. The workloads (one
//! GPU per replica, PriorityClasses as their `scheduling` names, the forecast planner
//! sizing each for 5 requests/s per replica, which one A100 serves within the SLO at these
//! request lengths):
//! - `chat`, priority 1000, at least 2 replicas: 4 requests/s, a burst of 16 requests/s
//!   from simulated t = 400 s to t = 1000 s (40 s to 100 s of wall time at `--speed 10`);
//! - `code`, priority 500: 3.5 requests/s throughout (1 replica);
//! - `batch`, priority 0: 14 requests/s throughout (3 replicas): the pool is full before
//!   the burst, and chat's 4 replicas in the burst can only come from batch.
//!
//! What it shows, in order:
//! 1. before the burst, the three workloads share the pool and batch holds its replicas;
//! 2. the burst on chat takes GPUs from batch through the arbiter: batch is scaled down
//!    first (a `Preempted` Event on batch, `Preempting` on chat), chat's new Pods are bound
//!    by kube-scheduler and serve;
//! 3. the leader is killed (SIGKILL) while chat holds batch's GPUs; the other replica
//!    takes the Lease and carries on from what the API shows;
//! 4. after the burst chat scales down and batch gets its GPUs back;
//! 5. throughout, checked from the API server: the Deployments of the pool never ask for
//!    more GPUs than the pool has (every version a watch delivers, summed over the
//!    workloads), no Node has Pods bound for more GPUs than it has, and kube-scheduler
//!    preempts nothing itself;
//! 6. chat keeps its SLO in the burst, as the operator reads it from Prometheus
//!    (`status.sloAttainment`, over a 10 s window): after the burst's first seconds, when
//!    16 requests/s meet 2 replicas, its attainment is back at the 95 % target within a
//!    minute and stays there on average until the burst ends, while batch pays for it
//!    (its mean attainment over the burst is lower than chat's);
//! 7. the operators' identity was refused nothing by RBAC.
//!
//! Needs `scripts/k8s/build.sh` (kube-scheduler included), `etcd` and `prometheus`
//! (installed by the scripts when absent). `LLMOS_SKIP_E2E=1` skips. Deadlines are
//! generous and polled; nothing asserts on wall-clock speed.

mod e2e_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use e2e_support::{
    apply_operator_rbac, audited_requests, free_port, operator_kubeconfig, step_scenario, tail, Stack, OPERATOR_NS,
};
use llmos::crd::LLMWorkload;

const NS: &str = "shared";
const NODES: [&str; 2] = ["gpu-a", "gpu-b"];
const GPUS_PER_NODE: u32 = 3;
const POOL_GPUS: u32 = 6;
const SPEED: f64 = 10.0;
/// The workloads' SLO attainment target.
const TARGET: f64 = 0.95;
/// The burst on chat, in simulated seconds.
const BURST: (f64, f64) = (400.0, 1000.0);
/// (name, priority, PriorityClass, minReplicas, maxReplicas, traffic: (at_s, rates_rps)).
type Spec = (&'static str, i32, &'static str, u32, u32, &'static [f64], &'static [f64]);
const WORKLOADS: [Spec; 3] = [
    ("chat", 1000, "llm-high", 2, 5, &[0.0, BURST.0, BURST.1], &[4.0, 16.0, 4.0]),
    ("code", 500, "llm-mid", 1, 3, &[0.0], &[3.5]),
    ("batch", 0, "llm-low", 1, 4, &[0.0], &[14.0]),
];
const LOGS: [&str; 3] = ["operator-a", "operator-b", "twin"];

fn workload_yaml(s: &Spec, prom: &str) -> String {
    let (name, priority, class, min, max, _, _) = *s;
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata: {{name: {name}, namespace: {NS}}}
spec:
  variants:
    - {{name: llama3-8b, model: llama-3-8b, image: "vllm/vllm-openai:v0.6.3", minReplicas: {min}, maxReplicas: {max}, coldStartSeconds: 30}}
  poolRefs: [{{name: a100, pool: a100}}]
  scheduling: {{priority: {priority}, priorityClassName: {class}}}
  slo: {{ttftMs: 2000, tpotMs: 100, percentile: 90, targetAttainment: 0.95}}
  limits: {{minTotalReplicas: {min}, maxTotalReplicas: {max}, maxStepChange: 4, scaleDownCooldownSeconds: 4}}
  metrics: {{source: prometheus, prometheusUrl: "{prom}", windowSeconds: 10, staleAfterSeconds: 15}}
  policy:
    kind: forecast
    intervalSeconds: 2
    forecast: {{capacityRps: 5, coldStartSeconds: 3, horizonSeconds: 2, percentile: 50, alpha: 0.8, beta: 0, seasonSeconds: 0, scaleDownStabilizationSeconds: 10}}
"#
    )
}

/// What the test watched: per workload the desired replicas over time, the peak of the
/// pool's asked GPUs, and every version at which they exceeded the pool.
#[derive(Default)]
struct Watched {
    /// Deployment name → (workload, GPUs asked).
    asked: BTreeMap<String, (String, u32)>,
    peak: u32,
    over: Vec<String>,
    versions: usize,
}

/// Watches the Deployments of the namespace: every version the API server delivers,
/// the GPUs they ask for in pool `a100`, summed, must fit the pool.
fn watch_deployments(client: Client, w: Arc<Mutex<Watched>>) -> tokio::task::JoinHandle<()> {
    let deps: Api<Deployment> = Api::namespaced(client, NS);
    tokio::spawn(async move {
        let mut stream = watcher(deps, watcher::Config::default()).applied_objects().boxed();
        while let Some(ev) = stream.next().await {
            let Ok(d) = ev else { continue };
            let labels = d.labels();
            if labels.get("llmos.dev/pool").map(String::as_str) != Some("a100") {
                continue;
            }
            let wl = labels.get("llmos.dev/workload").cloned().unwrap_or_default();
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
            let gpus_each: u32 = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|p| {
                    p.containers
                        .iter()
                        .filter_map(|c| {
                            c.resources.as_ref()?.limits.as_ref()?.get("nvidia.com/gpu")?.0.parse::<u32>().ok()
                        })
                        .sum()
                })
                .unwrap_or(0);
            let mut g = w.lock().unwrap();
            let asked = if d.metadata.deletion_timestamp.is_some() { 0 } else { replicas * gpus_each };
            g.asked.insert(d.name_any(), (wl, asked));
            g.versions += 1;
            let total: u32 = g.asked.values().map(|x| x.1).sum();
            g.peak = g.peak.max(total);
            if total > POOL_GPUS {
                let snapshot = format!("{:?}", g.asked);
                g.over.push(snapshot);
            }
        }
    })
}

/// GPUs of the Pods bound to each Node (Pods being deleted included: their GPUs are held
/// until the kubelet confirms).
async fn gpus_per_node(pods: &Api<Pod>) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(list) = pods.list(&ListParams::default()).await else { return out };
    for p in list.items {
        let Some(spec) = p.spec.as_ref() else { continue };
        let Some(node) = spec.node_name.clone() else { continue };
        let gpus: u32 = spec
            .containers
            .iter()
            .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("nvidia.com/gpu")?.0.parse::<u32>().ok())
            .sum();
        *out.entry(node).or_default() += gpus;
    }
    out
}

/// One sample of the run, once a second.
#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    desired: BTreeMap<String, i32>,
    ready: BTreeMap<String, i32>,
    attainment: BTreeMap<String, Option<f64>>,
    /// False while no operator leads (its status readings are then stale).
    led: bool,
}

async fn sample(client: &Client, t0: Instant) -> Sample {
    let wls: Api<LLMWorkload> = Api::namespaced(client.clone(), NS);
    let mut s = Sample {
        t: t0.elapsed().as_secs_f64(),
        desired: BTreeMap::new(),
        ready: BTreeMap::new(),
        attainment: BTreeMap::new(),
        led: true,
    };
    for w in WORKLOADS {
        s.desired.insert(w.0.into(), e2e_support::desired_total(client, NS, w.0).await);
        s.ready.insert(w.0.into(), e2e_support::ready_total(client, NS, w.0).await);
        let att = wls.get(w.0).await.ok().and_then(|x| x.status).and_then(|st| st.slo_attainment);
        s.attainment.insert(w.0.into(), att);
    }
    s
}

/// Samples every second until `done` holds for the newest sample or `deadline` passes;
/// returns whether it held.
async fn run_until(
    client: &Client,
    t0: Instant,
    series: &mut Vec<Sample>,
    deadline: Duration,
    done: impl Fn(&Sample) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let s = sample(client, t0).await;
        let ok = done(&s);
        series.push(s);
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// Every fifth sample, one line each.
fn timeline(series: &[Sample]) -> String {
    let r = |x: Option<f64>| x.map(|x| (x * 1000.0).round() / 1000.0);
    series
        .iter()
        .step_by(5)
        .map(|s| {
            format!(
                "t={:>5.1}s desired {:?} ready {:?} attainment chat {:?} batch {:?}",
                s.t,
                s.desired,
                s.ready.values().collect::<Vec<_>>(),
                r(s.attainment.get("chat").copied().flatten()),
                r(s.attainment.get("batch").copied().flatten()),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn logs(stack: &Stack) -> String {
    LOGS.iter().map(|l| format!("\n--- {l} log (tail) ---\n{}", tail(&stack.log(l)))).collect()
}

/// The Events of the namespace's workloads (events.k8s.io), oldest first, as lines.
async fn story(client: &Client) -> (Vec<String>, BTreeMap<(String, String), usize>) {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let mut evs: Vec<_> = api
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("LLMWorkload"))
        .collect();
    evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.deprecated_first_timestamp.as_ref().map(|t| t.0)));
    let mut counts = BTreeMap::new();
    let mut lines = Vec::new();
    for e in &evs {
        let who = e.regarding.as_ref().and_then(|r| r.name.clone()).unwrap_or_default();
        let reason = e.reason.clone().unwrap_or_default();
        *counts.entry((who.clone(), reason.clone())).or_default() += 1;
        if !matches!(reason.as_str(), "ScaledUp" | "ScaledDown" | "Placed") || lines.len() < 60 {
            lines.push(format!("{who:>5} {reason}: {}", e.note.clone().unwrap_or_default()));
        }
    }
    (lines, counts)
}

async fn create_pool(client: &Client, stack: &Stack) {
    let classes = [("llm-high", 1000), ("llm-mid", 500), ("llm-low", 0)]
        .iter()
        .map(|(n, v)| {
            format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {n}}}\nvalue: {v}\n")
        })
        .collect::<Vec<_>>()
        .join("---\n");
    stack.kubectl(&["apply", "-f", "-"], Some(&classes));
    e2e_support::gpu_nodes_and_pool(&client, &NODES, GPUS_PER_NODE, 3.0).await;
}

fn start_twin(stack: &mut Stack) {
    let mut args: Vec<String> = vec!["twin-serve".into()];
    for w in WORKLOADS {
        let toml = step_scenario(&format!("e2e-shared-{}", w.0), 4000.0, w.5, w.6, 30.0, "");
        let file = stack.path(&format!("{}.toml", w.0));
        std::fs::write(&file, toml).expect("scenario file");
        if w.0 == "code" {
            args.extend(["--scenario".into(), file.display().to_string()]);
        }
        args.extend(["--workload-scenario".into(), format!("{}={}", w.0, file.display())]);
    }
    let targets = stack.path("targets.json").display().to_string();
    args.extend(
        [
            "--namespace",
            NS,
            "--speed",
            &SPEED.to_string(),
            "--targets-file",
            &targets,
            "--ip-base",
            "127.37.0.0",
            "--scheduled-only",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    stack.spawn("twin", &refs, &[]);
}

fn start_operator(stack: &mut Stack, name: &str, prom: &str) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let kc = operator_kubeconfig(stack);
    stack.spawn(
        name,
        &["run", "--metrics-addr", &addr, "--lease-namespace", OPERATOR_NS],
        &[("POD_NAME", name), ("LLMOS_PROMETHEUS_URL", prom), ("KUBECONFIG", &kc)],
    );
    addr
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let l = leases.list(&ListParams::default()).await.ok()?;
    l.items.iter().find_map(|x| x.spec.as_ref()?.holder_identity.clone())
}

fn get(s: &Sample, m: fn(&Sample) -> &BTreeMap<String, i32>, w: &str) -> i32 {
    m(s).get(w).copied().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_the_high_priority_workload_takes_gpus_from_the_low_one_and_gives_them_back() {
    if !e2e_support::e2e_wanted(true) {
        return;
    }
    let t_all = Instant::now();
    let (mut stack, client) = Stack::start_with(true, true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);
    stack.kubectl(&["create", "namespace", NS], None);
    create_pool(&client, &stack).await;

    let watched = Arc::new(Mutex::new(Watched::default()));
    let watch = watch_deployments(client.clone(), watched.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let node_peak = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let node_watch = {
        let (pods, peak) = (pods.clone(), node_peak.clone());
        tokio::spawn(async move {
            loop {
                for (n, g) in gpus_per_node(&pods).await {
                    let mut p = peak.lock().unwrap();
                    let e = p.entry(n).or_default();
                    *e = (*e).max(g);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    stack.scrape_operators(&[]);
    stack.start_prometheus();
    let prom = format!("http://127.0.0.1:{}", stack.prom_port);
    start_twin(&mut stack);
    start_operator(&mut stack, "operator-a", &prom);
    let yaml: Vec<String> = WORKLOADS.iter().map(|w| workload_yaml(w, &prom)).collect();
    stack.kubectl(&["apply", "-f", "-"], Some(&yaml.join("---\n")));
    let t0 = Instant::now();
    let mut series = Vec::new();
    // The second replica starts once the first holds the Lease, and stays passive.
    let held = run_until(&client, t0, &mut series, Duration::from_secs(60), |s| {
        WORKLOADS.iter().all(|w| get(s, |s| &s.ready, w.0) >= 1)
    })
    .await;
    assert!(held, "every workload Ready: {:?}{}", series.last(), logs(&stack));
    assert_eq!(lease_holder(&client).await.as_deref(), Some("operator-a"), "operator-a leads");
    start_operator(&mut stack, "operator-b", &prom);

    // 1. Before the burst (simulated 400 s ≈ 40 s of wall time): batch holds replicas.
    let burst_wall = BURST.0 / SPEED;
    let until = Duration::from_secs_f64((burst_wall - 2.0 - t0.elapsed().as_secs_f64()).max(1.0));
    run_until(&client, t0, &mut series, until, |_| false).await;
    let before = series.last().cloned().expect("a sample");
    let batch_before = get(&before, |s| &s.desired, "batch");
    let chat_before = get(&before, |s| &s.desired, "chat");
    assert!(batch_before >= 2, "batch holds replicas before the burst: {before:?}{}", logs(&stack));

    // 2. The burst: chat grows, batch is scaled down for it.
    let took = run_until(&client, t0, &mut series, Duration::from_secs(90), |s| {
        get(s, |s| &s.ready, "chat") > chat_before && get(s, |s| &s.desired, "batch") < batch_before
    })
    .await;
    assert!(took, "chat did not take batch's GPUs: before {before:?}\n{}{}", timeline(&series), logs(&stack));
    let t_took = t0.elapsed().as_secs_f64();
    // chat's SLO attainment (over the operator's 10 s metrics window) recovers from the
    // burst's first seconds, when 16 requests/s met 2 replicas.
    let recovered = run_until(&client, t0, &mut series, Duration::from_secs(60), |s| {
        s.attainment.get("chat").copied().flatten().is_some_and(|a| a >= TARGET)
    })
    .await;
    assert!(recovered, "chat's SLO attainment did not recover in the burst:\n{}{}", timeline(&series), logs(&stack));
    let t_recovered = t0.elapsed().as_secs_f64();

    // 3. The leader dies while chat holds batch's GPUs; the other replica takes over.
    stack.kill("operator-a");
    let t_kill = Instant::now();
    let mut took_over = false;
    while t_kill.elapsed() < Duration::from_secs(60) {
        if lease_holder(&client).await.as_deref() == Some("operator-b") {
            took_over = true;
            break;
        }
        series.push(Sample { led: false, ..sample(&client, t0).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(took_over, "operator-b did not take the Lease{}", logs(&stack));
    let handover_s = t_kill.elapsed().as_secs_f64();

    // 4. After the burst (simulated 1000 s ≈ 100 s of wall time), batch gets its GPUs back.
    let back = run_until(&client, t0, &mut series, Duration::from_secs(200), |s| {
        s.t > BURST.1 / SPEED
            && get(s, |s| &s.desired, "chat") <= chat_before
            && get(s, |s| &s.desired, "batch") >= batch_before
            && get(s, |s| &s.ready, "batch") >= batch_before
    })
    .await;
    assert!(back, "batch did not get its GPUs back after the burst:\n{}{}", timeline(&series), logs(&stack));
    let t_back = t0.elapsed().as_secs_f64();

    // 5. Never over-committed, from the API.
    watch.abort();
    node_watch.abort();
    let (peak, over, versions) = {
        let w = watched.lock().unwrap();
        (w.peak, w.over.clone(), w.versions)
    };
    assert!(over.is_empty(), "the pool's Deployments asked for more than {POOL_GPUS} GPUs: {over:?}");
    assert!(versions >= 6, "the watch saw the Deployments change ({versions} versions)");
    let per_node = node_peak.lock().unwrap().clone();
    assert!(per_node.values().all(|g| *g <= GPUS_PER_NODE), "a Node got more GPUs than it has: {per_node:?}");
    let evs: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
    let by_scheduler = evs
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Preempted"))
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("default-scheduler"))
        .count();
    assert_eq!(by_scheduler, 0, "kube-scheduler preempted Pods itself");

    // 6. The story, and chat's SLO through the burst.
    let (lines, counts) = story(&client).await;
    let n = |w: &str, r: &str| counts.get(&(w.to_string(), r.to_string())).copied().unwrap_or(0);
    assert!(n("batch", "Preempted") >= 1, "a Preempted Event on batch:\n{}", lines.join("\n"));
    assert!(n("chat", "Preempting") >= 1, "a Preempting Event on chat:\n{}", lines.join("\n"));
    // Readings while an operator leads, from `from` to the burst's end.
    let att = |w: &str, from: f64| -> Vec<f64> {
        series
            .iter()
            .filter(|s| s.led && s.t >= from && s.t <= BURST.1 / SPEED)
            .filter_map(|s| s.attainment.get(w).copied().flatten())
            .collect()
    };
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (chat_all, batch_all) = (att("chat", burst_wall), att("batch", burst_wall));
    let chat_att = att("chat", t_recovered);

    // 7. RBAC: nothing refused.
    let used = audited_requests(&stack);
    let refused: Vec<_> = used.iter().filter(|(_, (_, r))| *r > 0).collect();
    assert!(refused.is_empty(), "requests of the operators refused by RBAC: {refused:?}");

    let summary = format!(
        "e2e shared pool: {:.0}s in all; before the burst chat {chat_before} batch {batch_before} replicas; chat took \
         batch's GPUs at {t_took:.0}s, the Lease went to operator-b in {handover_s:.1}s, batch had its GPUs back at \
         {t_back:.0}s; peak {peak} of {POOL_GPUS} GPUs asked over {versions} watched Deployment versions; peak GPUs per \
         Node {per_node:?}; SLO attainment over the burst (status readings while an operator led): chat mean {:.3} \
         min {:.3} over {} readings, batch mean {:.3} min {:.3}; chat back at its target {:.0}s after the burst \
         began ({t_recovered:.0}s), then mean {:.3} min {:.3} over {} readings\n{}\nEvents:\n{}",
        t_all.elapsed().as_secs_f64(),
        mean(&chat_all),
        min(&chat_all),
        chat_all.len(),
        mean(&batch_all),
        min(&batch_all),
        t_recovered - burst_wall,
        mean(&chat_att),
        min(&chat_att),
        chat_att.len(),
        timeline(&series),
        lines.join("\n")
    );
    eprintln!("{summary}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_shared_summary.txt"), &summary);
    assert!(chat_att.len() >= 10, "too few SLO readings for chat during the burst\n{summary}");
    assert!(
        mean(&chat_att) >= TARGET,
        "chat, the high-priority workload, missed its SLO in the burst once scaled: mean attainment {:.3}\n{summary}",
        mean(&chat_att)
    );
    assert!(
        mean(&batch_all) < mean(&chat_all),
        "batch, the low-priority workload, should pay for chat's burst: batch {:.3}, chat {:.3}\n{summary}",
        mean(&batch_all),
        mean(&chat_all)
    );
}
