//! Chaos in the end-to-end stack: the operator on a real control plane (etcd,
//! kube-apiserver 1.20, kube-controller-manager), a real Prometheus behind a proxy that
//! injects faults, and `llmos twin-serve` as the data plane. Two operator replicas run as
//! the ServiceAccount of `manifests/02-rbac.yaml`; one that exits is started again with
//! the same identity, as a Pod's container with `restartPolicy: Always` would be.
//!
//! One run, in order (docs/reliability.md has the table of what each phase shows):
//! 1. **SIGKILL of the leader during a scale-up**: the load steps up tenfold; at the first
//!    scale-up the leader is killed and not started again until the standby has taken
//!    the Lease. The fleet is held until the new leader decides, the scale-up then
//!    continues, and no replica count outside the limits is ever written.
//! 2. **Prometheus faults** (through the proxy): HTTP 503 errors, answers slower than the
//!    operator's query timeout, NaN in every series, stale series (the newest sample ten
//!    minutes old). For each: `MetricsAvailable=False` with the reason, no decision and
//!    no replica change while blind, and the time from the fault's end to the next
//!    decision.
//! 3. **kube-apiserver restarted** (down 5 s): reconciles fail and are retried; the leader
//!    keeps the Lease (the outage is shorter than its renew deadline); the time to the
//!    next decision.
//! 4. **etcd stopped for 25 s** (longer than the 15 s lease): the leader's renewals hang
//!    (the API server waits for etcd); it steps down at its 10 s renew deadline and
//!    exits; after etcd returns exactly one replica leads and decides; replicas were not
//!    changed while nobody could see.
//!
//! 5. **Deleting the workload** after all that removes its Deployments.
//!
//! Throughout, the desired replicas stay within the workload's limits (1..=6), and after
//! each recovery the Deployments hold what the last recorded decision says (no decision
//! lost or applied twice). The figures go to stderr and to
//! `$CARGO_TARGET_TMPDIR/e2e_chaos_summary.txt`.
//!
//! Needs what `tests/e2e_operator.rs` needs; `LLMOS_SKIP_E2E=1` skips. Deadlines are
//! generous and polled; nothing asserts on wall-clock speed.

mod e2e_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use llmos::crd::{LLMWorkload, LLMWorkloadStatus};

use e2e_support::chaos::{lease_holder, start_fault_proxy, Fault, Operators, StatusView};
use e2e_support::{
    apply_operator_rbac, check_rbac_audit, missing_prerequisites, operator_kubeconfig, repo, skip_requested, Stack,
    OPERATOR_NS,
};

const NS: &str = "default";
const WORKLOAD: &str = "chaos";
const INTERVAL_S: u64 = 2;
const SPEED: f64 = 10.0;
const LEASE: &str = "llmos-operator-leader";

/// One sample of what the cluster holds.
#[derive(Clone, Debug, Default)]
struct Seen {
    desired: i32,
    status: Option<LLMWorkloadStatus>,
    holder: Option<String>,
}

impl StatusView for Seen {
    fn status(&self) -> Option<&LLMWorkloadStatus> {
        self.status.as_ref()
    }
}

/// The run's state: clients, the operators, and the series of samples.
struct Run {
    stack: Stack,
    client: Client,
    ops: Operators,
    t0: Instant,
    /// (seconds, desired replicas) whenever the API server answered.
    series: Vec<(f64, i32)>,
    /// Lines for the summary.
    notes: Vec<String>,
}

impl Run {
    /// One sample; each read gives up after 3 s (an API server without etcd answers
    /// only after its own 60 s timeout), and counts as not seen.
    async fn look(&mut self) -> Seen {
        let limit = Duration::from_secs(3);
        let desired =
            tokio::time::timeout(limit, e2e_support::desired_total(&self.client, NS, WORKLOAD)).await.unwrap_or(-1);
        let wl: Api<LLMWorkload> = Api::namespaced(self.client.clone(), NS);
        let status =
            tokio::time::timeout(limit, wl.get(WORKLOAD)).await.ok().and_then(|r| r.ok()).and_then(|w| w.status);
        let holder = lease_holder(&self.client, LEASE, limit).await;
        // Before the first Deployment exists the total is 0; from then on it must stay
        // within the limits.
        if desired >= 1 || (desired == 0 && !self.series.is_empty()) {
            self.series.push((self.t0.elapsed().as_secs_f64(), desired));
            assert!(
                (1..=6).contains(&desired),
                "desired replicas {desired} outside the limits 1..=6: {:?}",
                self.series
            );
        }
        self.ops.supervise(&mut self.stack, self.t0);
        Seen { desired, status, holder }
    }

    /// Samples every 500 ms until `done` holds; panics with the operators' logs after `deadline`.
    async fn until(&mut self, what: &str, deadline: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
        let start = Instant::now();
        while start.elapsed() < deadline {
            let seen = self.look().await;
            if done(&seen) {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "timed out after {deadline:?} waiting for: {what}\nseries {:?}{}",
            self.series,
            self.ops.logs(&self.stack)
        );
    }

    /// Samples for `d`, asserting `each` on every sample.
    async fn during(&mut self, d: Duration, each: impl Fn(&Seen) -> Result<(), String>) {
        let start = Instant::now();
        while start.elapsed() < d {
            let seen = self.look().await;
            if let Err(e) = each(&seen) {
                panic!("{e}\nseries {:?}{}", self.series, self.ops.logs(&self.stack));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits for a decision newer than `after` and checks that the Deployments hold it.
    async fn next_decision(&mut self, what: &str, after: Option<String>, deadline: Duration) -> f64 {
        let start = Instant::now();
        let seen = self
            .until(what, deadline, |s| s.decision_time().is_some() && s.decision_time() != after && s.desired >= 0)
            .await;
        let took = start.elapsed().as_secs_f64();
        // The decision recorded in status is what the Deployments hold (no decision lost,
        // none applied twice); a newer decision may replace it meanwhile.
        self.until("the Deployments hold the recorded decision", Duration::from_secs(3 * INTERVAL_S + 10), |s| {
            s.desired >= 0 && (s.decided_total() == Some(s.desired as u32) || s.decision_time() != seen.decision_time())
        })
        .await;
        took
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_survives_chaos() {
    if skip_requested() {
        eprintln!("LLMOS_SKIP_E2E=1: skipping the chaos test");
        return;
    }
    let missing = missing_prerequisites(true);
    assert!(missing.is_empty(), "end-to-end prerequisites missing (set LLMOS_SKIP_E2E=1 to skip): {missing:?}");
    let t_all = Instant::now();

    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    std::fs::write(stack.path("operator-targets.json"), "[]\n").expect("operator targets file");
    stack.start_prometheus();
    let proxy = start_fault_proxy(format!("http://127.0.0.1:{}", stack.prom_port)).await;
    let (proxy_url, fault) = (proxy.url.clone(), proxy.mode.clone());
    // 2 requests/s, then 20 from simulated t = 500 s (50 s of wall time at speed 10).
    let scenario = e2e_support::step_scenario("e2e-chaos", 8000.0, &[0.0, 500.0], &[2.0, 20.0], 45.0, "");
    std::fs::write(stack.path("scenario.toml"), scenario).expect("scenario file");
    let (scenario, targets) = (stack.path("scenario.toml"), stack.path("targets.json"));
    let speed = SPEED.to_string();
    stack.spawn(
        "twin",
        &[
            "twin-serve",
            "--scenario",
            &scenario.display().to_string(),
            "--namespace",
            NS,
            "--speed",
            &speed,
            "--targets-file",
            &targets.display().to_string(),
            "--ip-base",
            "127.32.0.0",
        ],
        &[],
    );
    let ops = Operators::new(operator_kubeconfig(&stack), proxy_url.clone(), LEASE);
    let mut run = Run { stack, client, ops, t0: Instant::now(), series: Vec::new(), notes: Vec::new() };
    run.ops.start(&mut run.stack, "operator-a");
    let yaml = e2e_support::StepWorkload {
        name: WORKLOAD,
        namespace: NS,
        variant: "llama3-8b",
        cold_start_s: None,
        scale_down_cooldown_s: 4,
        prom_url: &proxy_url,
        policy_block: format!(
            "    kind: hpa\n    intervalSeconds: {INTERVAL_S}\n    hpa:\n      targets: [{{metric: ongoingRequests, target: 16}}]\n      scaleDownStabilizationSeconds: 16\n      scaleUpPeriodSeconds: 4\n"
        ),
    }
    .yaml();
    run.stack.kubectl(&["apply", "-f", "-"], Some(&yaml));
    run.until("operator-a leads and the Deployment exists", Duration::from_secs(60), |s| {
        s.holder.as_deref() == Some("operator-a") && s.desired >= 1
    })
    .await;
    run.ops.start(&mut run.stack, "operator-b");
    run.until("a first decision on complete metrics", Duration::from_secs(90), |s| {
        s.metrics_available() == Some(true) && s.decision_time().is_some()
    })
    .await;

    // 1. SIGKILL of the leader at the first scale-up after the load step. The twin started
    // before t0, so the step (simulated 500 s) is behind once t0 is 50 s of wall time old;
    // a scale-up before it (a start-up transient) is not the one this part is about.
    let step_at = run.t0 + Duration::from_secs_f64(500.0 / SPEED + 1.0);
    tokio::time::sleep_until(step_at.into()).await;
    let before = run.look().await.desired;
    let up = run.until("a scale-up after the load step", Duration::from_secs(150), |s| s.desired > before).await;
    let leader = up.holder.clone().expect("a lease holder");
    let decided = up.decision_time();
    // The leader's process is killed and not started again until the standby has taken
    // over (its node is gone), so the handover itself is what is measured.
    let t_kill = Instant::now();
    let child = run.ops.child(&leader);
    run.ops.held_down.insert(leader.clone());
    run.stack.kill(&child);
    let after_kill = up.desired;
    run.notes.push(format!(
        "leader {leader} killed at {:.0}s with {after_kill} replicas desired",
        run.t0.elapsed().as_secs_f64()
    ));
    let l = leader.clone();
    run.until("the standby takes the Lease", Duration::from_secs(60), |s| {
        s.holder.is_some() && s.holder.as_deref() != Some(l.as_str())
    })
    .await;
    let handover = t_kill.elapsed().as_secs_f64();
    run.next_decision("a decision by the new leader", decided, Duration::from_secs(60)).await;
    let new_leader = run.look().await.holder;
    run.ops.held_down.clear();
    run.notes.push(format!(
        "SIGKILL of the leader during a scale-up: {} took the Lease {handover:.1}s after the kill; next decision {:.1}s after the kill",
        new_leader.as_deref().unwrap_or("?"),
        t_kill.elapsed().as_secs_f64()
    ));
    let low = run.series.iter().filter(|(t, _)| *t >= t_kill.duration_since(run.t0).as_secs_f64()).map(|s| s.1).min();
    assert!(
        low.is_none_or(|l| l >= after_kill),
        "replicas fell below {after_kill} around the handover: {:?}",
        run.series
    );
    run.until("the scale-up continues after the handover", Duration::from_secs(90), |s| s.desired >= before + 2).await;

    // 2. Prometheus faults, one at a time.
    for f in [Fault::Error, Fault::Slow, Fault::NaN, Fault::Stale] {
        run.until("metrics available before the fault", Duration::from_secs(60), |s| {
            s.metrics_available() == Some(true)
        })
        .await;
        fault.store(f as u8, Ordering::SeqCst);
        let t_fault = Instant::now();
        let blind = run
            .until(&format!("MetricsAvailable=False under {f:?}"), Duration::from_secs(60), |s| {
                s.metrics_available() == Some(false)
            })
            .await;
        let detect = t_fault.elapsed().as_secs_f64();
        let reason = blind
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "MetricsAvailable")
                    .map(|c| format!("{}: {}", c.reason, c.message))
            })
            .unwrap_or_default();
        let (held, at) = (blind.desired, blind.decision_time());
        run.during(Duration::from_secs(4 * INTERVAL_S), |s| {
            if s.desired >= 0 && s.desired != held {
                return Err(format!(
                    "replicas changed from {held} to {} while metrics were unavailable ({f:?})",
                    s.desired
                ));
            }
            if s.status.is_some() && s.decision_time() != at {
                return Err(format!("a decision was recorded while metrics were unavailable ({f:?})"));
            }
            Ok(())
        })
        .await;
        fault.store(Fault::Pass as u8, Ordering::SeqCst);
        let recover = run.next_decision(&format!("a decision after {f:?} ended"), at, Duration::from_secs(60)).await;
        run.notes.push(format!(
            "Prometheus {f:?}: MetricsAvailable=False after {detect:.1}s ({}), held {held} replicas, next decision {recover:.1}s after the fault ended",
            reason.chars().take(160).collect::<String>()
        ));
    }

    // 3. kube-apiserver restarted.
    let k8s = run.stack.path("k8s");
    let chaos = |action: &str, what: &str| {
        let st = std::process::Command::new("bash")
            .arg(repo().join("scripts/k8s/chaos.sh"))
            .arg(&k8s)
            .args([action, what])
            .status()
            .expect("scripts/k8s/chaos.sh");
        assert!(st.success(), "chaos.sh {action} {what} failed");
    };
    let seen = run.look().await;
    let (leader_before, at) = (seen.holder.clone(), seen.decision_time());
    let restarts_before = run.ops.restarts.len();
    let t_stop = Instant::now();
    chaos("stop", "apiserver");
    let stopping = t_stop.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    chaos("start", "apiserver");
    let t_start = Instant::now();
    run.until("the API server answers again", Duration::from_secs(120), |s| s.desired >= 0).await;
    let answered = t_start.elapsed().as_secs_f64();
    let recover = run.next_decision("a decision after the API server restart", at, Duration::from_secs(120)).await;
    let seen = run.look().await;
    run.notes.push(format!(
        "kube-apiserver restarted (SIGTERM, {stopping:.1}s to exit, 5 s down, answering {answered:.1}s after the start): next decision {recover:.1}s after it answered, {:.1}s after the stop began; leader {} -> {}; {} operator restarts",
        t_stop.elapsed().as_secs_f64(),
        leader_before.as_deref().unwrap_or("?"),
        seen.holder.as_deref().unwrap_or("?"),
        run.ops.restarts.len() - restarts_before
    ));

    // 4. etcd stopped for longer than a lease.
    let seen = run.look().await;
    let (held, at) = (seen.desired, seen.decision_time());
    let restarts_before = run.ops.restarts.len();
    chaos("stop", "etcd");
    let t_down = Instant::now();
    while t_down.elapsed() < Duration::from_secs(25) {
        let _ = run.look().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    chaos("start", "etcd");
    // The leader could not renew for longer than its 10 s deadline: it must have stepped
    // down (exited), even though its requests hung rather than failed.
    assert!(
        run.ops.restarts.len() > restarts_before,
        "no operator stepped down while etcd was stopped for longer than the renew deadline{}",
        run.ops.logs(&run.stack)
    );
    let recover = run.next_decision("a decision after etcd returned", at, Duration::from_secs(180)).await;
    let seen = run.look().await;
    let d_after =
        run.series.iter().filter(|(t, _)| *t >= t_down.duration_since(run.t0).as_secs_f64()).map(|s| s.1).next();
    run.notes.push(format!(
        "etcd down 25 s: next decision {:.1}s after it stopped ({recover:.1}s after it returned); {} operator restarts; leader {}; replicas {held} before, {:?} first seen after",
        t_down.elapsed().as_secs_f64(),
        run.ops.restarts.len() - restarts_before,
        seen.holder.as_deref().unwrap_or("?"),
        d_after
    ));
    let holders: Vec<String> = {
        let leases: Api<Lease> = Api::namespaced(run.client.clone(), OPERATOR_NS);
        leases
            .list(&Default::default())
            .await
            .map(|l| l.items.into_iter().filter_map(|x| x.spec?.holder_identity).collect())
            .unwrap_or_default()
    };
    assert_eq!(holders.len(), 1, "one Lease, one holder: {holders:?}");

    eprintln!("chaos notes so far:\n  {}", run.notes.join("\n  "));

    // 5. after all that, deleting the workload still cleans up.
    run.stack.kubectl(&["delete", "llmworkload", WORKLOAD, "-n", NS, "--wait=false"], None);
    let t_del = Instant::now();
    let client = run.client.clone();
    let deadline = Duration::from_secs(90);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(3), e2e_support::desired_total(&client, NS, WORKLOAD))
            .await
            .unwrap_or(-1);
        if n == 0 {
            break;
        }
        assert!(
            t_del.elapsed() < deadline,
            "Deployments not removed after deleting the workload{}",
            run.ops.logs(&run.stack)
        );
        run.ops.supervise(&mut run.stack, run.t0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run.notes.push(format!(
        "deleted after the faults: Deployments gone {:.1}s after the delete",
        t_del.elapsed().as_secs_f64()
    ));

    let rbac = check_rbac_audit(&run.stack);
    let summary = format!(
        "e2e chaos, {:.0}s in all:\n  {}\noperator restarts (time, identity): {:?}\ndesired replicas over time: {:?}\n{rbac}",
        t_all.elapsed().as_secs_f64(),
        run.notes.join("\n  "),
        run.ops.restarts,
        run.series
    );
    eprintln!("{summary}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_chaos_summary.txt"), summary);
}
