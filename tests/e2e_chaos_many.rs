//! Chaos with many workloads: what `tests/e2e_chaos.rs` shows for one LLMWorkload, here
//! for twenty at once (`LLMOS_E2E_MANY_WORKLOADS`, default 20) on one stack: a real
//! control plane (etcd, kube-apiserver 1.20, kube-controller-manager), a real Prometheus
//! behind a proxy that injects faults, `llmos twin-serve` as the data plane of every
//! workload, and two operator replicas under leader election, as the ServiceAccount of
//! `manifests/02-rbac.yaml`; one that exits is started again with the same identity, as
//! a Pod's container with `restartPolicy: Always` would be.
//!
//! The workloads differ in their limits (1..=3 up to 1..=6 replicas) and share one
//! scenario: 2 requests/s and 20 requests/s in turn, 500 simulated seconds each (50 s of
//! wall time at speed 10), so they keep scaling up and down. One run, in order:
//! 1. **Apply** every workload; each makes a first decision on complete metrics.
//! 2. **Prometheus faults** (through the proxy): HTTP 503 errors, then NaN in every
//!    series. For every workload: `MetricsAvailable=False`, no decision and no replica
//!    change while blind, and a decision again after the fault ends (the time from the
//!    fault's end to each workload's next decision).
//! 3. **kube-apiserver restarted** (down 5 s): every workload decides again (the time
//!    from the API server answering to each workload's next decision).
//! 4. **SIGKILL of the leader while the workloads scale up** at a load step: the standby
//!    takes the Lease; no workload's replicas drop before the new leader decides for it;
//!    then every workload decides again and reaches its maximum under the new leader.
//!
//! Throughout, every Deployment of every workload is sampled and its replicas stay within
//! its workload's limits; after each recovery each workload's Deployments hold what its
//! last recorded decision says (no decision lost or applied twice), and no workload's
//! recorded decision ever goes back to an older one. The figures (p50 and max over the
//! workloads) go to stderr and to `$CARGO_TARGET_TMPDIR/e2e_chaos_many_summary.txt`,
//! with one more that is counted, not asserted: how long each workload's Deployments
//! differed from its recorded decision. The operators'
//! logs and their writes as the API server audited them go next to it
//! (`e2e_chaos_many_operators.log`, `e2e_chaos_many_writes.txt`).
//!
//! Needs what `tests/e2e_operator.rs` needs; `LLMOS_SKIP_E2E=1` skips. Deadlines are
//! generous and polled; nothing asserts on wall-clock speed.

mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use kube::Client;
use llmos::crd::{LLMWorkload, LLMWorkloadStatus};

use e2e_support::chaos::{lease_holder, start_fault_proxy, Fault, FaultProxy, Operators, StatusView};
use e2e_support::{apply_operator_rbac, operator_kubeconfig, repo, Stack};

const NS: &str = "default";
const SPEED: f64 = 10.0;
const LEASE: &str = "llmos-operator-leader";
/// Simulated seconds of each load level (low, then high, then low...).
const HALF_PERIOD_S: f64 = 500.0;

/// The number in environment variable `k`, or `default`.
fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The control interval of every workload, seconds (`LLMOS_E2E_MANY_INTERVAL_S`, default
/// 4: twenty workloads at 2 s would ask Prometheus 160 queries a second).
fn interval_s() -> u64 {
    env_u64("LLMOS_E2E_MANY_INTERVAL_S", 4).max(1)
}

/// One workload as one sample saw it.
#[derive(Clone, Debug, Default)]
struct Wl {
    /// Sum of `spec.replicas` over its Deployments.
    desired: i32,
    status: Option<LLMWorkloadStatus>,
}

impl StatusView for Wl {
    fn status(&self) -> Option<&LLMWorkloadStatus> {
        self.status.as_ref()
    }
}

impl Wl {
    /// A decision other than `before`, made at `since` or later (when given).
    fn decided_since(&self, before: &Option<String>, since: Option<DateTime<Utc>>) -> bool {
        let Some(t) = self.decision_time() else { return false };
        if Some(&t) == before.as_ref() {
            return false;
        }
        match (since, DateTime::parse_from_rfc3339(&t)) {
            (Some(since), Ok(at)) => at >= since,
            _ => true,
        }
    }

    /// The Deployments hold what the recorded decision says.
    fn holds_decision(&self) -> bool {
        self.decided_total().is_some_and(|d| d as i32 == self.desired)
    }
}

/// One sample of what the cluster holds; `ok` when the API server answered every read.
#[derive(Clone, Debug, Default)]
struct Sample {
    ok: bool,
    wls: BTreeMap<String, Wl>,
    holder: Option<String>,
}

impl Sample {
    /// How many workloads `f` holds for.
    fn count(&self, f: impl Fn(&Wl) -> bool) -> usize {
        self.wls.values().filter(|w| f(w)).count()
    }

    /// One line per workload: replicas, MetricsAvailable, last decision (time, total).
    fn describe(&self) -> String {
        let mut out = format!("lease holder {:?}", self.holder);
        for (name, w) in &self.wls {
            out.push_str(&format!(
                "\n  {name}: desired {} metrics {:?} decision {:?} = {:?}",
                w.desired,
                w.metrics_available(),
                w.decision_time(),
                w.decided_total()
            ));
        }
        out
    }
}

/// p50 and max of `v` (nearest rank), as "p50 X s, max Y s".
fn p50_max(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return "no samples".into();
    }
    format!("p50 {:.1}s, max {:.1}s", v[(v.len() - 1) / 2], v[v.len() - 1])
}

/// The run's state: clients, the operators, the workloads' limits and what was seen.
struct Run {
    stack: Stack,
    client: Client,
    ops: Operators,
    t0: Instant,
    /// Workload → its maximum replicas (the minimum is 1 for all).
    max: BTreeMap<String, i32>,
    /// Workloads whose replicas have been at least 1 once: from then on within limits.
    started: BTreeSet<String>,
    /// Per workload, (seconds, desired replicas) whenever a sample saw it change.
    series: BTreeMap<String, Vec<(f64, i32)>>,
    /// Per workload, since when (seconds) its Deployments differ from its recorded decision.
    apart_since: BTreeMap<String, (f64, String)>,
    /// (seconds, workload, from, what was seen first) of every time a workload's Deployments differed from its
    /// recorded decision, from the first sample that saw it to the first that did not.
    apart_spans: Vec<(f64, String, f64, String)>,
    /// Per workload, the newest decision seen: (when it was made, as written).
    newest: BTreeMap<String, (DateTime<chrono::FixedOffset>, String)>,
    /// (seconds, workload, newest decision seen before, the older one seen now, replicas)
    /// of every sample whose recorded decision was older than one seen before.
    regressions: Vec<(f64, String, String, String, i32)>,
    /// Samples answered, and Deployments checked against their limits.
    samples: usize,
    deployments_checked: usize,
    /// Lines for the summary.
    notes: Vec<String>,
}

impl Run {
    /// One sample of every workload's Deployments and status and the Lease; each read
    /// gives up after 3 s. Panics when a replica count is outside its workload's limits.
    async fn look(&mut self) -> Sample {
        let limit = Duration::from_secs(3);
        let deps: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        let lp = ListParams::default().labels("llmos.dev/workload");
        let deps = tokio::time::timeout(limit, deps.list(&lp)).await.ok().and_then(|r| r.ok());
        let wls: Api<LLMWorkload> = Api::namespaced(self.client.clone(), NS);
        let wls = tokio::time::timeout(limit, wls.list(&ListParams::default())).await.ok().and_then(|r| r.ok());
        let holder = lease_holder(&self.client, LEASE, limit).await;
        self.ops.supervise(&mut self.stack, self.t0);
        let (Some(deps), Some(wls)) = (deps, wls) else { return Sample { holder, ..Default::default() } };
        let mut out = Sample { ok: true, holder, wls: BTreeMap::new() };
        for w in wls.items {
            let name = w.metadata.name.clone().unwrap_or_default();
            out.wls.insert(name, Wl { desired: 0, status: w.status });
        }
        for d in &deps.items {
            let Some(wl) = d.metadata.labels.as_ref().and_then(|l| l.get("llmos.dev/workload")) else { continue };
            let r = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let max = self.max.get(wl).copied().unwrap_or(i32::MAX);
            self.deployments_checked += 1;
            self.check(r <= max && r >= 0, || {
                format!("Deployment {:?} of {wl} asks for {r} replicas, outside 0..={max}", d.metadata.name)
            });
            out.wls.entry(wl.clone()).or_default().desired += r;
        }
        self.samples += 1;
        self.record(&out);
        out
    }

    /// Records each workload's total and checks it against its limits (1..=max once it
    /// has been at least 1).
    fn record(&mut self, s: &Sample) {
        let t = self.t0.elapsed().as_secs_f64();
        for (name, w) in &s.wls {
            let Some(&max) = self.max.get(name) else { continue };
            if w.desired >= 1 {
                self.started.insert(name.clone());
            }
            if !self.started.contains(name) {
                continue;
            }
            let series = self.series.entry(name.clone()).or_default();
            if series.last().is_none_or(|l| l.1 != w.desired) {
                series.push((t, w.desired));
            }
            self.newer_decision(t, name, w);
            if w.decided_total().is_some_and(|x| x as i32 != w.desired) {
                let seen = format!(
                    "Deployments {} vs decision {:?} of {:?}, metrics {:?}",
                    w.desired,
                    w.decided_total(),
                    w.decision_time(),
                    w.metrics_available()
                );
                self.apart_since.entry(name.clone()).or_insert((t, seen));
            } else if let Some((from, seen)) = self.apart_since.remove(name) {
                self.apart_spans.push((t - from, name.clone(), from, seen));
            }
            let d = w.desired;
            self.check((1..=max).contains(&d), || format!("{name}: desired replicas {d} outside the limits 1..={max}"));
        }
    }

    /// Keeps the newest decision seen of `name`; notes a sample whose decision is older.
    fn newer_decision(&mut self, t: f64, name: &str, w: &Wl) {
        let Some(d) = w.decision_time() else { return };
        let Ok(at) = DateTime::parse_from_rfc3339(&d) else { return };
        match self.newest.get(name) {
            Some((prev, text)) if at < *prev => {
                self.regressions.push((t, name.to_string(), text.clone(), d, w.desired));
            }
            Some((prev, _)) if at == *prev => {}
            _ => {
                self.newest.insert(name.to_string(), (at, d));
            }
        }
    }

    /// Panics with `what`, the workloads' replica series and the operators' logs unless `ok`.
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            panic!("{}\nseries {:?}{}", what(), self.series, self.ops.logs(&self.stack));
        }
    }

    /// Samples every 500 ms until `done` holds for an answered sample; panics with the
    /// last sample and the operators' logs after `deadline`.
    async fn until(&mut self, what: &str, deadline: Duration, mut done: impl FnMut(&Sample) -> bool) -> Sample {
        let start = Instant::now();
        let mut last = Sample::default();
        while start.elapsed() < deadline {
            let seen = self.look().await;
            if seen.ok && done(&seen) {
                return seen;
            }
            if seen.ok {
                last = seen;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "timed out after {deadline:?} waiting for: {what}\nlast sample: {}\nseries {:?}{}",
            last.describe(),
            self.series,
            self.ops.logs(&self.stack)
        );
    }

    /// Waits until every workload has made a decision other than its `before` one (made at
    /// `since` or later when given), then until each has been seen with its Deployments
    /// holding its recorded decision. Returns, per workload, the seconds from `from` to
    /// when its new decision was first seen.
    async fn all_decide_again(
        &mut self,
        what: &str,
        before: &BTreeMap<String, Option<String>>,
        since: Option<DateTime<Utc>>,
        from: Instant,
        deadline: Duration,
    ) -> BTreeMap<String, f64> {
        let mut took: BTreeMap<String, f64> = BTreeMap::new();
        self.until(what, deadline, |s| {
            for (name, w) in &s.wls {
                let b = before.get(name).cloned().flatten();
                if before.contains_key(name) && !took.contains_key(name) && w.decided_since(&b, since) {
                    took.insert(name.clone(), from.elapsed().as_secs_f64());
                }
            }
            took.len() == before.len()
        })
        .await;
        // The decision each status records is what its Deployments hold; a sample can fall
        // between a tick's Deployment write and its status write, so each workload needs
        // one sample where they agree.
        let mut agreed: BTreeSet<String> = BTreeSet::new();
        let hold = Duration::from_secs(6 * interval_s() + 30);
        self.until(&format!("{what}: every workload's Deployments hold its recorded decision"), hold, |s| {
            agreed.extend(
                s.wls.iter().filter(|(n, w)| before.contains_key(*n) && w.holds_decision()).map(|x| x.0.clone()),
            );
            agreed.len() == before.len()
        })
        .await;
        took
    }

    /// Each workload's last decision time in `s`.
    fn decisions(&self, s: &Sample) -> BTreeMap<String, Option<String>> {
        self.max.keys().map(|n| (n.clone(), s.wls.get(n).and_then(|w| w.decision_time()))).collect()
    }
}

/// The workloads: `many-00`, `many-01`, ..., each with its own maximum (3, 4, 5, 6 in turn).
fn workloads(n: usize, prom_url: &str) -> (BTreeMap<String, i32>, String) {
    let interval = interval_s();
    let mut max = BTreeMap::new();
    let mut yaml = String::new();
    for i in 0..n {
        let name = format!("many-{i:02}");
        let m = 3 + (i % 4) as i32;
        let w = e2e_support::StepWorkload {
            name: &name,
            namespace: NS,
            variant: "llama3-8b",
            cold_start_s: None,
            scale_down_cooldown_s: 4,
            prom_url,
            policy_block: format!(
                "    kind: hpa\n    intervalSeconds: {interval}\n    hpa:\n      targets: [{{metric: ongoingRequests, target: 16}}]\n      scaleDownStabilizationSeconds: 16\n      scaleUpPeriodSeconds: 4\n"
            ),
        }
        .yaml();
        assert!(w.contains("maxReplicas: 6") && w.contains("maxTotalReplicas: 6"), "StepWorkload's limits moved");
        let w = w.replace("maxReplicas: 6", &format!("maxReplicas: {m}"));
        let w = w.replace("maxTotalReplicas: 6", &format!("maxTotalReplicas: {m}"));
        yaml.push_str(&format!("---\n{w}"));
        max.insert(name, m);
    }
    (max, yaml)
}

/// Starts the stack, Prometheus behind the proxy, twin-serve and operator `operator-a`.
async fn start(n: usize) -> (Run, FaultProxy, String) {
    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    std::fs::write(stack.path("operator-targets.json"), "[]\n").expect("operator targets file");
    stack.start_prometheus();
    let proxy = start_fault_proxy(format!("http://127.0.0.1:{}", stack.prom_port)).await;
    // 2 and 20 requests/s in turn, HALF_PERIOD_S simulated seconds each.
    let at: Vec<f64> = (0..60).map(|i| i as f64 * HALF_PERIOD_S).collect();
    let rates: Vec<f64> = (0..60).map(|i| if i % 2 == 0 { 2.0 } else { 20.0 }).collect();
    let scenario = e2e_support::step_scenario("e2e-chaos-many", 60.0 * HALF_PERIOD_S, &at, &rates, 45.0, "");
    std::fs::write(stack.path("scenario.toml"), scenario).expect("scenario file");
    let (scenario, targets) = (stack.path("scenario.toml").display().to_string(), stack.path("targets.json"));
    let speed = SPEED.to_string();
    let targets = targets.display().to_string();
    let twin = ["twin-serve", "--scenario", &scenario, "--namespace", NS, "--speed", &speed];
    let twin: Vec<&str> = twin.into_iter().chain(["--targets-file", &targets, "--ip-base", "127.42.0.0"]).collect();
    stack.spawn("twin", &twin, &[]);
    let ops = Operators::new(operator_kubeconfig(&stack), proxy.url.clone(), LEASE);
    let (max, yaml) = workloads(n, &proxy.url);
    let mut run = Run {
        stack,
        client,
        ops,
        t0: Instant::now(),
        max,
        started: BTreeSet::new(),
        series: BTreeMap::new(),
        apart_since: BTreeMap::new(),
        apart_spans: Vec::new(),
        newest: BTreeMap::new(),
        regressions: Vec::new(),
        samples: 0,
        deployments_checked: 0,
        notes: Vec::new(),
    };
    run.ops.start(&mut run.stack, "operator-a");
    (run, proxy, yaml)
}

/// Phase 1: applies every workload; each gets its Deployment and a first decision on
/// complete metrics; then the standby starts.
async fn apply_all(run: &mut Run, yaml: &str) {
    let n = run.max.len();
    let t_apply = Instant::now();
    run.stack.kubectl(&["apply", "-f", "-"], Some(yaml));
    let mut first: BTreeMap<String, f64> = BTreeMap::new();
    run.until("operator-a leads and every workload has its Deployment", Duration::from_secs(180), |s| {
        s.holder.as_deref() == Some("operator-a") && s.count(|w| w.desired >= 1) == n
    })
    .await;
    run.ops.start(&mut run.stack, "operator-b");
    run.until("every workload's first decision on complete metrics", Duration::from_secs(240), |s| {
        for (name, w) in &s.wls {
            if w.metrics_available() == Some(true) && w.decision_time().is_some() && !first.contains_key(name) {
                first.insert(name.clone(), t_apply.elapsed().as_secs_f64());
            }
        }
        first.len() == n
    })
    .await;
    let v: Vec<f64> = first.values().copied().collect();
    run.notes.push(format!("{n} workloads applied: first decision on complete metrics after {}", p50_max(&v)));
}

/// Phase 2, one fault: every workload goes blind (`MetricsAvailable=False`), holds its
/// replicas and records no decision while the fault lasts (until all are blind, then 4
/// control intervals), and decides again after it ends.
async fn prometheus_fault(run: &mut Run, proxy: &FaultProxy, f: Fault) {
    let n = run.max.len();
    let what = format!("MetricsAvailable=True on every workload before {f:?}");
    run.until(&what, Duration::from_secs(180), |s| s.count(|w| w.metrics_available() == Some(true)) == n).await;
    let q0 = proxy.queries.load(Ordering::Relaxed);
    proxy.mode.store(f as u8, Ordering::SeqCst);
    let t_fault = Instant::now();
    // workload → (replicas held, decision held, seconds to MetricsAvailable=False).
    let mut blind: BTreeMap<String, (i32, Option<String>, f64)> = BTreeMap::new();
    let mut all_blind: Option<Instant> = None;
    let hold = Duration::from_secs(4 * interval_s());
    while all_blind.is_none_or(|t| t.elapsed() < hold) {
        let s = run.look().await;
        for (name, w) in s.wls.iter().filter(|_| s.ok) {
            if let Some((held, at, _)) = blind.get(name) {
                let (d, t, m) = (w.desired, w.decision_time(), w.metrics_available());
                run.check(d == *held && t == *at && m == Some(false), || {
                    format!("{name} under {f:?}: replicas {held} -> {d}, decision {at:?} -> {t:?}, MetricsAvailable {m:?} while blind\n{}", s.describe())
                });
            } else if w.metrics_available() == Some(false) && run.max.contains_key(name) {
                blind.insert(name.clone(), (w.desired, w.decision_time(), t_fault.elapsed().as_secs_f64()));
            }
        }
        if blind.len() == n && all_blind.is_none() {
            all_blind = Some(Instant::now());
        }
        run.check(all_blind.is_some() || t_fault.elapsed() < Duration::from_secs(120), || {
            format!("not every workload saw MetricsAvailable=False under {f:?} in 120 s\n{}", s.describe())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let blind_s = t_fault.elapsed().as_secs_f64();
    proxy.mode.store(Fault::Pass as u8, Ordering::SeqCst);
    let queries = proxy.queries.load(Ordering::Relaxed) - q0;
    let t_end = Instant::now();
    let before: BTreeMap<String, Option<String>> = blind.iter().map(|(k, v)| (k.clone(), v.1.clone())).collect();
    let what = format!("every workload decides after {f:?} ended");
    let rec = run.all_decide_again(&what, &before, None, t_end, Duration::from_secs(180)).await;
    let detect: Vec<f64> = blind.values().map(|v| v.2).collect();
    let rec: Vec<f64> = rec.values().copied().collect();
    run.notes.push(format!(
        "Prometheus {f:?} ({blind_s:.0}s, {queries} queries answered by the proxy): MetricsAvailable=False after {} (n={}); nothing changed while blind; next decision after the fault ended {}",
        p50_max(&detect),
        detect.len(),
        p50_max(&rec)
    ));
}

/// Runs `scripts/k8s/chaos.sh ACTION WHAT` on the stack's control plane.
fn chaos(run: &Run, action: &str, what: &str) {
    let st = std::process::Command::new("bash")
        .arg(repo().join("scripts/k8s/chaos.sh"))
        .arg(run.stack.path("k8s"))
        .args([action, what])
        .status()
        .expect("scripts/k8s/chaos.sh");
    assert!(st.success(), "chaos.sh {action} {what} failed");
}

/// Phase 3: kube-apiserver stopped (SIGTERM), 5 s down, started again; every workload
/// decides again.
async fn apiserver_restart(run: &mut Run) {
    let n = run.max.len();
    let seen = run
        .until("every workload has decided", Duration::from_secs(60), |s| s.count(|w| w.decision_time().is_some()) == n)
        .await;
    let (before, leader_before) = (run.decisions(&seen), seen.holder.clone());
    let restarts_before = run.ops.restarts.len();
    let t_stop = Instant::now();
    chaos(run, "stop", "apiserver");
    let stopping = t_stop.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A decision counts once it is stamped after the new API server process started.
    let since = Utc::now();
    chaos(run, "start", "apiserver");
    let t_start = Instant::now();
    run.until("the API server answers again", Duration::from_secs(120), |_| true).await;
    let answered = t_start.elapsed().as_secs_f64();
    let t_answer = Instant::now();
    let what = "every workload decides after the API server restart";
    let rec = run.all_decide_again(what, &before, Some(since), t_answer, Duration::from_secs(240)).await;
    let seen = run.look().await;
    let rec: Vec<f64> = rec.values().copied().collect();
    run.notes.push(format!(
        "kube-apiserver restarted ({stopping:.1}s to exit, 5 s down, answering {answered:.1}s after the start): next decision after it answered {}; leader {} -> {}; {} operator restarts",
        p50_max(&rec),
        leader_before.as_deref().unwrap_or("?"),
        seen.holder.as_deref().unwrap_or("?"),
        run.ops.restarts.len() - restarts_before
    ));
}

/// Phase 4: the leader SIGKILLed while the workloads scale up at a load step, and not
/// started again until the standby leads. No workload's replicas drop before the new
/// leader's first decision for it; every workload decides again and goes on scaling up.
/// Returns the new leader.
async fn kill_leader_during_scale_up(run: &mut Run) -> String {
    let n = run.max.len();
    let low = run
        .until("the low load (three quarters of the workloads at 1 replica)", Duration::from_secs(240), |s| {
            4 * s.count(|w| w.desired == 1) >= 3 * n
        })
        .await;
    // The workloads at 1 replica in the low load; those above 1 later have scaled up.
    let low: BTreeSet<String> = low.wls.iter().filter(|(_, w)| w.desired == 1).map(|x| x.0.clone()).collect();
    let rising = |s: &Sample| s.wls.iter().filter(|(k, w)| low.contains(*k) && w.desired > 1).count();
    let up = run
        .until("a quarter of the workloads scale up at the load step", Duration::from_secs(240), |s| {
            4 * rising(s) >= n.max(4)
        })
        .await;
    let leader = up.holder.clone().expect("a lease holder");
    let scaled = rising(&up);
    let (before, at_kill): (_, BTreeMap<String, i32>) =
        (run.decisions(&up), up.wls.iter().map(|(k, w)| (k.clone(), w.desired)).collect());
    let t_kill = Instant::now();
    let (kill_s, since) = (run.t0.elapsed().as_secs_f64(), Utc::now());
    let child = run.ops.child(&leader);
    run.ops.held_down.insert(leader.clone());
    run.stack.kill(&child);
    let l = leader.clone();
    let took = run.until("the standby takes the Lease", Duration::from_secs(90), |s| {
        s.holder.is_some() && s.holder.as_deref() != Some(l.as_str())
    });
    let new_leader = took.await.holder;
    let handover = t_kill.elapsed().as_secs_f64();
    let what = "every workload decides under the new leader";
    let rec = run.all_decide_again(what, &before, Some(since), t_kill, Duration::from_secs(180)).await;
    run.ops.held_down.clear();
    // Between the kill and the new leader's first decision for it, nobody may lower a
    // workload's replicas (the load is high; the killed leader's last writes only raise).
    for (name, first) in &rec {
        let held = at_kill.get(name).copied().unwrap_or(0);
        let dropped: Vec<&(f64, i32)> =
            run.series[name].iter().filter(|(t, d)| *t >= kill_s && *t <= kill_s + first && *d < held).collect();
        run.check(dropped.is_empty(), || {
            format!("{name}: replicas fell below {held} between the kill and the new leader's decision: {dropped:?}")
        });
    }
    // The scale-up goes on under the new leader: the load asks more than any workload's
    // maximum, so every workload reaches its maximum.
    let mut topped: BTreeSet<String> = BTreeSet::new();
    let max = run.max.clone();
    run.until("every workload at its maximum under the new leader", Duration::from_secs(180), |s| {
        topped.extend(s.wls.iter().filter(|(k, w)| max.get(*k) == Some(&w.desired)).map(|x| x.0.clone()));
        topped.len() == n
    })
    .await;
    let rec: Vec<f64> = rec.values().copied().collect();
    run.notes.push(format!(
        "SIGKILL of leader {leader} at {kill_s:.0}s with {scaled} of {n} workloads scaled up: {} took the Lease {handover:.1}s after the kill; each workload's next decision after the kill {}; every workload then reached its maximum under it",
        new_leader.as_deref().unwrap_or("?"),
        p50_max(&rec)
    ));
    new_leader.unwrap_or_default()
}

/// Every operator log of the run (every start of every replica), joined.
fn operator_logs(run: &Run) -> String {
    let mut out = String::new();
    for (id, (_, starts)) in &run.ops.replicas {
        for k in 1..=*starts {
            out.push_str(&run.stack.log(&format!("{id}.{k}")));
        }
    }
    out
}

/// The operator's writes as the API server's audit log has them, one line each: when
/// received, when answered, verb, resource, name, status code (for the run's evidence).
fn write_timeline(run: &Run) -> String {
    let text = std::fs::read_to_string(run.stack.path("k8s/audit.log")).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let verb = v["verb"].as_str().unwrap_or("");
        if v["stage"] != "ResponseComplete" || matches!(verb, "get" | "list" | "watch") {
            continue;
        }
        let o = &v["objectRef"];
        let res = match o["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", o["resource"].as_str().unwrap_or("")),
            None => o["resource"].as_str().unwrap_or("").to_string(),
        };
        out.push_str(&format!(
            "{} {} {verb} {res} {} {}\n",
            v["requestReceivedTimestamp"].as_str().unwrap_or(""),
            v["stageTimestamp"].as_str().unwrap_or(""),
            o["name"].as_str().unwrap_or(""),
            v["responseStatus"]["code"]
        ));
    }
    out
}

/// What `leader`'s own `/metrics` says of its reconciles and ticks since it started.
async fn leader_figures(run: &Run, leader: &str) -> String {
    let Some((addr, _)) = run.ops.replicas.get(leader) else { return format!("no metrics of {leader:?}") };
    let text = match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return format!("{leader}'s metrics unreadable: {e}"),
    };
    let q = |name: &str, p: f64| {
        let b = e2e_support::histogram_buckets(&text, name);
        e2e_support::bucket_quantile(&b, p).map_or("-".to_string(), |v| format!("{:.0} ms", 1000.0 * v))
    };
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum::<f64>()
            + 0.0
    };
    format!(
        "{leader} (leader at the end): {:.0} control ticks, reconcile p50 {} p99 {}, tick lag p50 {} p99 {}, {:.0} reconcile errors",
        sum("llmos_control_ticks_total"),
        q("llmos_reconcile_duration_seconds", 0.5),
        q("llmos_reconcile_duration_seconds", 0.99),
        q("llmos_control_tick_lag_seconds", 0.5),
        q("llmos_control_tick_lag_seconds", 0.99),
        sum("llmos_reconcile_errors_total")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workloads_survive_chaos() {
    if !e2e_support::e2e_wanted(true) {
        return;
    }
    let n = env_u64("LLMOS_E2E_MANY_WORKLOADS", 20).max(1) as usize;
    let t_all = Instant::now();
    let (mut run, proxy, yaml) = start(n).await;
    let t0_wall = Utc::now();
    apply_all(&mut run, &yaml).await;
    for f in [Fault::Error, Fault::NaN] {
        prometheus_fault(&mut run, &proxy, f).await;
    }
    apiserver_restart(&mut run).await;
    let leader = kill_leader_during_scale_up(&mut run).await;
    let logs = operator_logs(&run);
    let panics: Vec<&str> = logs.lines().filter(|l| l.contains("panicked at")).collect();
    assert!(panics.is_empty(), "an operator panicked: {panics:?}");
    let (errors, warnings) = (logs.matches("ERROR").count(), logs.matches("WARN").count());
    let figures = leader_figures(&run, &leader).await;
    let changes: usize = run.series.values().map(|s| s.len().saturating_sub(1)).sum();
    let at_max = run.series.iter().filter(|(k, s)| s.iter().any(|x| Some(&x.1) == run.max.get(*k))).count();
    let mut spans = run.apart_spans.clone();
    spans.sort_by(|a, b| b.0.total_cmp(&a.0));
    let long = spans.iter().filter(|x| x.0 > 2.0 * interval_s() as f64).count();
    let longest: Vec<String> =
        spans.iter().take(6).map(|(d, w, t, seen)| format!("{w} {d:.1}s from {t:.1}s ({seen})")).collect();
    let apart = format!(
        "Deployments apart from the recorded decision: {} times, {long} longer than 2 intervals; longest:\n    {}",
        spans.len(),
        longest.join("\n    ")
    );
    let back: Vec<String> = run
        .regressions
        .iter()
        .take(8)
        .map(|(t, w, newer, older, d)| format!("{w} at {t:.1}s: {older} after {newer} (Deployments {d})"))
        .collect();
    let back = format!(
        "recorded decision older than one seen before: {} samples, {} workloads{}{}",
        run.regressions.len(),
        run.regressions.iter().map(|r| &r.1).collect::<BTreeSet<_>>().len(),
        if back.is_empty() { "" } else { "; first:\n    " },
        back.join("\n    ")
    );
    let summary = format!(
        "e2e chaos with {n} workloads (interval {}s), {:.0}s in all; {} samples, {} Deployment replica counts checked, 0 outside the limits; {changes} replica changes seen, {at_max} of {n} workloads at their maximum at some point; operator restarts {:?}; operator logs: {errors} ERROR, {warnings} WARN, no panic:\n  {}\n  {figures}\n  {apart}\n  {back}",
        interval_s(),
        t_all.elapsed().as_secs_f64(),
        run.samples,
        run.deployments_checked,
        run.ops.restarts,
        run.notes.join("\n  ")
    );
    eprintln!("{summary}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::write(dir.join("e2e_chaos_many_operators.log"), &logs);
    let _ = std::fs::write(dir.join("e2e_chaos_many_writes.txt"), write_timeline(&run));
    let path = dir.join("e2e_chaos_many_summary.txt");
    let flagged: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).take(300).collect();
    let _ = std::fs::write(
        path,
        format!(
            "{summary}\nrun started (t = 0) at {t0_wall}; operator logs in e2e_chaos_many_operators.log, its writes in e2e_chaos_many_writes.txt\nreplicas over time per workload: {:?}\noperator log lines at WARN or ERROR (first 300):\n{}\n",
            run.series,
            flagged.join("\n")
        ),
    );
    // A status never goes back to an older decision (a stale reconcile's status write,
    // refused by its resourceVersion, sends only its own changes again).
    assert!(run.regressions.is_empty(), "{back}");
}
