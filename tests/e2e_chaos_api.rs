//! Chaos between the operator and the API server: the operator on a real control plane
//! (etcd, kube-apiserver 1.20, kube-controller-manager), Prometheus, and `llmos
//! twin-serve` as the data plane. Two operator replicas run as the ServiceAccount of
//! `manifests/02-rbac.yaml`, each through its own proxy to the API server
//! (`tests/e2e_support/proxy.rs`); one that exits is started again with the same
//! identity, as a Pod's container with `restartPolicy: Always` would be.
//!
//! One stack, one run, in order (docs/reliability.md has the table):
//! 1. **SIGKILL of the leader during a variant switch**: the workload serves variant `old`
//!    (2 replicas); its spec moves to variant `new` (make-before-break: `new` starts, `old`
//!    keeps serving, drained as `new`'s replicas become ready). As soon as the leader has started
//!    `new`, it is killed and kept down until the standby leads. The new leader must
//!    finish the switch; `old` is never drained before `new` serves; the switch is
//!    started and finished once (Events, the decision journals of both leaders); serving
//!    replicas never fall below `minTotalReplicas`.
//! 2. **A partition between the leader and the API server** while the standby still
//!    reaches it: the leader's proxy becomes a black hole (connections accepted, nothing
//!    relayed either way). The leader must step down at its renew deadline, before the
//!    standby takes the Lease (15 s after it last saw it change); when the partition heals,
//!    what the old leader had sent into it is delivered late, and none of it may change
//!    what the new leader decided.
//! 3. **A throttling, slow API server**: both proxies answer one request in three with
//!    429 and `Retry-After: 1`, and hold another for 2 s. The operator must hold the
//!    fleet (no Deployment changed), not multiply its requests, and decide again once the
//!    throttle lifts.
//!
//! The figures go to stderr and to `$CARGO_TARGET_TMPDIR/e2e_chaos_api_summary.txt`.
//! Needs what `tests/e2e_operator.rs` needs; `LLMOS_SKIP_E2E=1` skips. Deadlines are
//! generous and polled; nothing asserts on wall-clock speed.

mod e2e_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;
use llmos::crd::{LLMWorkload, LLMWorkloadStatus};

use e2e_support::chaos::lease_holder;
use e2e_support::proxy::{kubeconfig_via, upstream_of, ApiProxy, Throttle};
use e2e_support::{apply_operator_rbac, free_port, operator_kubeconfig, tail, Stack, OPERATOR_NS};

const NS: &str = "default";
const WORKLOAD: &str = "switch";
const INTERVAL_S: u64 = 2;
const SPEED: f64 = 10.0;
const LEASE: &str = "llmos-operator-leader";
/// The Deployments of the two variants on pool `a100`.
const OLD: &str = "switch-old-a100";
const NEW: &str = "switch-new-a100";
/// `limits.minTotalReplicas`: what the shield allows at the least.
const MIN_TOTAL: i32 = 2;

/// One operator replica: its proxy, kubeconfig, metrics address and starts so far.
struct Replica {
    proxy: ApiProxy,
    kubeconfig: String,
    addr: String,
    starts: usize,
}

/// The operator replicas, started again with the same identity when they exit.
struct Operators {
    prom_url: String,
    replicas: BTreeMap<String, Replica>,
    /// Replicas not started again while listed (a Pod whose node is gone).
    held_down: std::collections::BTreeSet<String>,
    /// (seconds since the run started, identity) of every restart.
    restarts: Vec<(f64, String)>,
}

impl Operators {
    fn child(&self, id: &str) -> String {
        format!("{id}.{}", self.replicas[id].starts)
    }

    fn start(&mut self, stack: &mut Stack, id: &str) {
        let r = self.replicas.get_mut(id).expect("a known replica");
        r.starts += 1;
        let (addr, kc) = (r.addr.clone(), r.kubeconfig.clone());
        let name = self.child(id);
        stack.spawn(
            &name,
            &["run", "--metrics-addr", &addr, "--lease-namespace", OPERATOR_NS, "--lease-name", LEASE],
            &[("POD_NAME", id), ("LLMOS_PROMETHEUS_URL", &self.prom_url), ("KUBECONFIG", &kc)],
        );
    }

    /// Starts again every replica whose process exited (a container restart). A replica
    /// not started yet is left alone: starting it here too would run two processes with
    /// one identity, both leading under the same Lease holder.
    fn supervise(&mut self, stack: &mut Stack, t0: Instant) {
        let ids: Vec<String> = self
            .replicas
            .iter()
            .filter(|(id, r)| r.starts > 0 && !self.held_down.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let name = self.child(&id);
            let exited = stack.children.get_mut(&name).is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.restarts.push((t0.elapsed().as_secs_f64(), id.clone()));
                self.start(stack, &id);
            }
        }
    }

    fn logs(&self, stack: &Stack) -> String {
        let mut out = String::new();
        for id in self.replicas.keys() {
            for n in 1..=self.replicas[id].starts {
                let name = format!("{id}.{n}");
                out.push_str(&format!("\n--- {name} (tail) ---\n{}", tail(&plain_log(stack, &name))));
            }
        }
        out
    }
}

/// One sample of what the cluster holds.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Deployment name → (spec.replicas, readyReplicas, generation); `None` when the
    /// list failed.
    deps: Option<BTreeMap<String, (i32, i32, i64)>>,
    status: Option<LLMWorkloadStatus>,
    holder: Option<String>,
}

impl Seen {
    fn desired(&self, d: &str) -> i32 {
        self.deps.as_ref().and_then(|m| m.get(d)).map_or(0, |x| x.0)
    }
    fn ready(&self, d: &str) -> i32 {
        self.deps.as_ref().and_then(|m| m.get(d)).map_or(0, |x| x.1)
    }
    fn ready_total(&self) -> i32 {
        self.deps.as_ref().map_or(0, |m| m.values().map(|x| x.1).sum())
    }
    fn desired_total(&self) -> i32 {
        self.deps.as_ref().map_or(-1, |m| m.values().map(|x| x.0).sum())
    }
    fn decision_time(&self) -> Option<String> {
        self.status.as_ref()?.last_decision.as_ref().map(|d| d.time.clone())
    }
    /// The newest decision's replicas per Deployment name.
    fn decided(&self) -> Option<BTreeMap<String, i32>> {
        let d = self.status.as_ref()?.last_decision.as_ref()?;
        Some(d.targets.iter().map(|t| (format!("{WORKLOAD}-{}-{}", t.variant, t.pool), t.replicas as i32)).collect())
    }
    /// The Deployments hold the newest recorded decision.
    fn holds_decision(&self) -> bool {
        match (self.decided(), &self.deps) {
            (Some(d), Some(m)) => d.iter().all(|(k, r)| m.get(k).map_or(*r == 0, |x| x.0 == *r)),
            _ => false,
        }
    }
}

/// The log of child `name` without colours and without backtrace lines.
fn plain_log(stack: &Stack, name: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in stack.log(name).chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out.lines().filter(|l| !l.starts_with(' ')).collect::<Vec<_>>().join("\n")
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s).ok()
}

/// The run: the stack, clients, the operators, the samples and the leaders' journals.
struct Run {
    stack: Stack,
    client: Client,
    http: reqwest::Client,
    ops: Operators,
    t0: Instant,
    /// (seconds, desired total, ready total) whenever the API server answered.
    series: Vec<(f64, i32, i32)>,
    /// The newest decision journal read from each operator process (child name → entries).
    journals: BTreeMap<String, Vec<serde_json::Value>>,
    /// Checks made on every sample (phase-specific), as an error message.
    check: fn(&Seen) -> Result<(), String>,
    /// Whether serving replicas must stay at `MIN_TOTAL` or more (once first reached).
    served: bool,
    notes: Vec<String>,
}

fn no_check(_: &Seen) -> Result<(), String> {
    Ok(())
}

impl Run {
    /// One sample: the Deployments, the workload's status, the Lease holder, and the
    /// holder's decision journal. Each read gives up after 3 s.
    async fn look(&mut self) -> Seen {
        let limit = Duration::from_secs(3);
        let deps: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        let lp = ListParams::default().labels(&format!("llmos.dev/workload={WORKLOAD}"));
        let deps = tokio::time::timeout(limit, deps.list(&lp)).await.ok().and_then(|r| r.ok()).map(|l| {
            l.items
                .iter()
                .map(|d| {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
                    (name, (spec, ready, d.metadata.generation.unwrap_or(0)))
                })
                .collect::<BTreeMap<_, _>>()
        });
        let wl: Api<LLMWorkload> = Api::namespaced(self.client.clone(), NS);
        let status =
            tokio::time::timeout(limit, wl.get(WORKLOAD)).await.ok().and_then(|r| r.ok()).and_then(|w| w.status);
        let holder = lease_holder(&self.client, LEASE, limit).await;
        let seen = Seen { deps, status, holder };
        if let Some(h) = seen.holder.clone().filter(|h| self.ops.replicas.contains_key(h)) {
            let child = self.ops.child(&h);
            let url = format!("http://{}/decisions/{NS}/{WORKLOAD}/json", self.ops.replicas[&h].addr);
            let got = tokio::time::timeout(Duration::from_secs(3), async {
                self.http.get(&url).send().await.ok()?.json::<Vec<serde_json::Value>>().await.ok()
            })
            .await
            .ok()
            .flatten();
            if let Some(entries) = got {
                self.journals.insert(child, entries);
            }
        }
        if seen.deps.is_some() {
            let (d, r) = (seen.desired_total(), seen.ready_total());
            self.series.push((self.t0.elapsed().as_secs_f64(), d, r));
            self.served |= r >= MIN_TOTAL;
            let mut problems = Vec::new();
            if d > 0 && !(MIN_TOTAL..=4).contains(&d) {
                problems.push(format!("desired replicas {d} outside the limits {MIN_TOTAL}..=4"));
            }
            if self.served && r < 1 {
                problems.push(format!("no replica serving (minTotalReplicas {MIN_TOTAL})"));
            }
            if let Err(e) = (self.check)(&seen) {
                problems.push(e);
            }
            assert!(
                problems.is_empty(),
                "{}\nsample {seen:?}\nseries {:?}{}",
                problems.join("; "),
                self.series,
                self.ops.logs(&self.stack)
            );
        }
        self.ops.supervise(&mut self.stack, self.t0);
        seen
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

    /// Samples for `d`; returns every sample.
    async fn during(&mut self, d: Duration) -> Vec<Seen> {
        let start = Instant::now();
        let mut out = Vec::new();
        while start.elapsed() < d {
            out.push(self.look().await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        out
    }

    /// Waits for a decision newer than `after` and then for the Deployments to hold the
    /// newest decision; returns the seconds to the first.
    async fn next_decision(&mut self, what: &str, after: Option<String>, deadline: Duration) -> f64 {
        let start = Instant::now();
        let after_t = after.as_deref().and_then(parse_time);
        self.until(what, deadline, |s| {
            s.decision_time().as_deref().and_then(parse_time).is_some_and(|t| after_t.is_none_or(|a| t > a))
        })
        .await;
        let took = start.elapsed().as_secs_f64();
        self.until("the Deployments hold the recorded decision", Duration::from_secs(3 * INTERVAL_S + 20), |s| {
            s.holds_decision()
        })
        .await;
        took
    }

    fn summary_line(&mut self, line: String) {
        eprintln!("{line}");
        self.notes.push(line);
    }
}

/// The workload: variant `old` serving 2 replicas, variant `new` allowed none (its
/// replicas cold-start in `new_cold_s` simulated seconds), static 2 replicas per slot.
fn workload_yaml(prom_url: &str, new_cold_s: u32) -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata:
  name: {WORKLOAD}
  namespace: {NS}
spec:
  variants:
    - {{name: old, model: llama-3-8b, image: vllm/vllm-openai:v0.6.3, minReplicas: 0, maxReplicas: 2, coldStartSeconds: 20}}
    - {{name: new, model: llama-3-8b, image: vllm/vllm-openai:v0.6.3, minReplicas: 0, maxReplicas: 0, coldStartSeconds: {new_cold_s}}}
  gpuPools:
    - {{name: a100, gpuType: A100-80GB, pricePerGpuHour: 3.0, capacityGpus: 8}}
  slo: {{ttftMs: 2000, tpotMs: 100, percentile: 90, targetAttainment: 0.95}}
  limits: {{minTotalReplicas: {MIN_TOTAL}, maxTotalReplicas: 4, maxStepChange: 4, scaleDownCooldownSeconds: 0}}
  metrics: {{source: prometheus, prometheusUrl: "{prom_url}", windowSeconds: 10, staleAfterSeconds: 15}}
  policy:
    kind: static
    intervalSeconds: {INTERVAL_S}
    static: {{replicas: 2}}
"#
    )
}

/// `VariantSwitched` Events of the workload: (note, count).
async fn switch_events(client: &Client) -> Vec<(String, i32)> {
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let list = api.list(&ListParams::default()).await.expect("listing Events");
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("VariantSwitched"))
        .map(|e| {
            let note = format!("{} (by {})", e.message.unwrap_or_default(), e.reporting_instance.unwrap_or_default());
            (note, e.count.unwrap_or(1).max(1))
        })
        .collect()
}

/// Replicas of `variant` in a journal entry's `seen.slots` (`desired`, `ready`).
fn seen_slot(entry: &serde_json::Value, variant: &str) -> (u64, u64) {
    let slot = format!("{variant}/a100");
    entry["seen"]["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["slot"] == slot.as_str())
        .map_or((0, 0), |s| (s["desired"].as_u64().unwrap_or(0), s["ready"].as_u64().unwrap_or(0)))
}

/// Replicas of `variant` a journal entry applied.
fn applied(entry: &serde_json::Value, variant: &str) -> u64 {
    entry["applied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["variant"] == variant)
        .map(|t| t["replicas"].as_u64().unwrap_or(0))
        .sum()
}

/// Whether a journal entry's tick applied fewer replicas of the old variant than it saw.
fn drains_old(entry: &serde_json::Value) -> bool {
    applied(entry, "old") < seen_slot(entry, "old").0
}

/// Fails when the old variant's desired replicas and the new one's ready replicas are
/// fewer than the 2 that served before the switch (the old one drained faster than the
/// new one became ready).
fn not_drained_before_new_serves(s: &Seen) -> Result<(), String> {
    if s.deps.as_ref().is_some_and(|m| m.contains_key(OLD)) && s.desired(OLD) + s.ready(NEW) < 2 {
        return Err(format!("{OLD} drained to {} while {NEW} had {} ready replica(s)", s.desired(OLD), s.ready(NEW)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_survives_api_server_faults() {
    if !e2e_support::e2e_wanted(true) {
        return;
    }
    let t_all = Instant::now();
    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    std::fs::write(stack.path("operator-targets.json"), "[]\n").expect("operator targets file");
    stack.start_prometheus();
    let prom_url = format!("http://127.0.0.1:{}", stack.prom_port);
    let scenario = e2e_support::step_scenario("e2e-chaos-api", 8000.0, &[0.0], &[2.0], 45.0, "");
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
            "127.33.0.0",
        ],
        &[],
    );
    let op_kc = operator_kubeconfig(&stack);
    let (upstream, ca_file) = upstream_of(&op_kc);
    let ca = std::fs::read(&ca_file).expect("the API server's CA");
    let mut replicas = BTreeMap::new();
    for id in ["operator-a", "operator-b"] {
        let proxy = ApiProxy::start(&upstream, &ca).await;
        let kubeconfig = kubeconfig_via(&op_kc, &proxy, id);
        replicas.insert(
            id.to_string(),
            Replica { proxy, kubeconfig, addr: format!("127.0.0.1:{}", free_port()), starts: 0 },
        );
    }
    let ops = Operators { prom_url: prom_url.clone(), replicas, held_down: Default::default(), restarts: Vec::new() };
    let mut run = Run {
        stack,
        client,
        http: reqwest::Client::new(),
        ops,
        t0: Instant::now(),
        series: Vec::new(),
        journals: BTreeMap::new(),
        check: no_check,
        served: false,
        notes: Vec::new(),
    };
    run.ops.start(&mut run.stack, "operator-a");
    run.stack.kubectl(&["apply", "-f", "-"], Some(&workload_yaml(&prom_url, 250)));
    run.until("operator-a leads and the old variant serves 2 replicas", Duration::from_secs(120), |s| {
        s.holder.as_deref() == Some("operator-a") && s.ready(OLD) == 2
    })
    .await;
    run.ops.start(&mut run.stack, "operator-b");
    run.summary_line(format!("set-up: old variant serving after {:.1}s", run.t0.elapsed().as_secs_f64()));

    switch_under_sigkill(&mut run).await;
    partition(&mut run).await;
    throttle(&mut run).await;

    let summary = format!(
        "e2e chaos (API server faults), {:.0}s in all:\n  {}\noperator restarts (time, identity): {:?}\n(time, desired, ready): {:?}",
        t_all.elapsed().as_secs_f64(),
        run.notes.join("\n  "),
        run.ops.restarts,
        run.series
    );
    eprintln!("{summary}");
    let _ =
        std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_chaos_api_summary.txt"), summary);
}

/// Phase 1: the leader is SIGKILLed right after it started the new variant.
async fn switch_under_sigkill(run: &mut Run) {
    // The standby must have seen the Lease before it can judge it expired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.check = not_drained_before_new_serves;
    let patch = r#"[{"op":"replace","path":"/spec/variants/0/maxReplicas","value":0},{"op":"replace","path":"/spec/variants/1/maxReplicas","value":2}]"#;
    run.stack.kubectl(&["patch", "llmworkload", WORKLOAD, "-n", NS, "--type=json", "-p", patch], None);
    let t_patch = Instant::now();
    let started = run
        .until("the leader starts the new variant", Duration::from_secs(60), |s| {
            s.desired(NEW) == 2 && s.desired(OLD) == 2
        })
        .await;
    let leader = started.holder.clone().expect("a lease holder");
    let killed_child = run.ops.child(&leader);
    let t_kill = Instant::now();
    run.ops.held_down.insert(leader.clone());
    run.stack.kill(&killed_child);
    run.summary_line(format!(
        "switch: the new variant started {:.1}s after the spec change; {leader} killed then (new ready {})",
        t_kill.duration_since(t_patch).as_secs_f64(),
        started.ready(NEW)
    ));
    let l = leader.clone();
    let took = run
        .until("the standby takes the Lease", Duration::from_secs(60), |s| {
            s.holder.is_some() && s.holder.as_deref() != Some(l.as_str())
        })
        .await;
    let handover = t_kill.elapsed().as_secs_f64();
    let new_ready_at_handover = took.ready(NEW);
    run.ops.held_down.clear();
    run.until("the new leader finishes the switch", Duration::from_secs(120), |s| {
        s.desired(OLD) == 0 && s.ready(NEW) == 2 && s.holds_decision()
    })
    .await;
    let finished = t_kill.elapsed().as_secs_f64();
    // The journal records a tick after its writes, and a read of it can time out on a
    // loaded machine: sample until a journal read holds the drain (or a minute passed;
    // the assertions below then say what is missing).
    let t_read = Instant::now();
    run.during(Duration::from_secs(INTERVAL_S)).await;
    while t_read.elapsed() < Duration::from_secs(60) && !run.journals.values().flatten().any(drains_old) {
        run.during(Duration::from_secs(1)).await;
    }
    let min_ready = run.series.iter().filter(|x| x.0 >= t_kill.duration_since(run.t0).as_secs_f64()).map(|x| x.2).min();
    run.summary_line(format!(
        "SIGKILL during the switch: Lease taken {handover:.1}s after the kill (new variant ready {new_ready_at_handover} then); switch finished {finished:.1}s after the kill; fewest serving replicas since the kill {min_ready:?}"
    ));
    // Started once and drained once, over both leaders (their Events and journals).
    let events = switch_events(&run.client).await;
    let count = |needle: &str| events.iter().filter(|(n, _)| n.contains(needle)).map(|(_, c)| *c).sum::<i32>();
    // The start is announced after the Deployments are applied: a leader killed between
    // the two never announces it, and its successor, which finds the new variant already
    // asked for, does not either. The drain is announced exactly once, by whoever
    // drains (one process per identity: see `Operators::supervise`).
    let (announced, drained) = (count("switching to new"), count("drained old"));
    assert!(announced <= 1 && drained == 1, "VariantSwitched events: {events:?}{}", run.ops.logs(&run.stack));
    let old_journal = run.journals.get(&killed_child).cloned().unwrap_or_default();
    let new_child = run.ops.child(took.holder.as_deref().expect("holder"));
    let new_journal = run.journals.get(&new_child).cloned().unwrap_or_default();
    assert!(!new_journal.is_empty(), "no decision journal read from the new leader {new_child}");
    let drains: Vec<&serde_json::Value> =
        old_journal.iter().chain(new_journal.iter()).filter(|e| drains_old(e)).collect();
    assert!(!drains.is_empty(), "no tick of either journal drained the old variant");
    for d in &drains {
        assert!(
            applied(d, "old") + seen_slot(d, "new").1 >= 2,
            "drained faster than the new variant became ready: {d}"
        );
    }
    let first = &new_journal[0];
    assert_eq!(
        (seen_slot(first, "old").0, seen_slot(first, "new").0),
        (2, 2),
        "the new leader's first tick did not start from what the killed leader applied: {first}"
    );
    run.summary_line(format!(
        "events: switch start announced {announced} time(s), drain {drained}; journals: killed leader {} ticks (last applied old {} new {}), new leader {} ticks before the end of the switch; {} tick(s) drained, the first seeing new ready {}",
        old_journal.len(),
        old_journal.last().map_or(0, |e| applied(e, "old")),
        old_journal.last().map_or(0, |e| applied(e, "new")),
        new_journal.len(),
        drains.len(),
        seen_slot(drains[0], "new").1
    ));
    run.check = no_check;
}

/// Phase 2: the leader's proxy becomes a black hole; the standby still reaches the API server.
async fn partition(run: &mut Run) {
    let seen = run.until("a leader", Duration::from_secs(60), |s| s.holder.is_some() && s.holds_decision()).await;
    let leader = seen.holder.clone().expect("holder");
    let other = run.ops.replicas.keys().find(|k| **k != leader).cloned().expect("another replica");
    let proxy = run.ops.replicas[&leader].proxy.clone();
    let partitioned_child = run.ops.child(&leader);
    let restarts_before = run.ops.restarts.len();
    let t_part = Instant::now();
    let wall_part = chrono::Utc::now();
    proxy.partition();
    let o = other.clone();
    let took = run
        .until("the other replica takes the Lease", Duration::from_secs(90), |s| {
            s.holder.as_deref() == Some(o.as_str())
        })
        .await;
    let handover = t_part.elapsed().as_secs_f64();
    // The partitioned leader stepped down (its log says when) before the other took over.
    let log = plain_log(&run.stack, &partitioned_child);
    let stepped = log
        .lines()
        .find(|l| {
            l.contains("no renewal within the renew deadline") || l.contains("did not answer within the renew deadline")
        })
        .and_then(|l| l.split_whitespace().next())
        .and_then(parse_time);
    let leases: Api<Lease> = Api::namespaced(run.client.clone(), OPERATOR_NS);
    let acquired = leases.get(LEASE).await.ok().and_then(|l| l.spec?.acquire_time).map(|t| t.0);
    let stepped_s = stepped.map(|t| (t.with_timezone(&chrono::Utc) - wall_part).num_milliseconds() as f64 / 1000.0);
    let acquired_s = acquired.map(|t| (t.as_millisecond() - wall_part.timestamp_millis()) as f64 / 1000.0);
    assert!(
        matches!((stepped_s, acquired_s), (Some(s), Some(a)) if s < a),
        "the partitioned leader did not step down before the Lease was taken (stepped down at {stepped_s:?} s, Lease acquired at {acquired_s:?} s after the partition)\n--- {partitioned_child} ---\n{}{}",
        tail(&log),
        run.ops.logs(&run.stack)
    );
    let at = took.decision_time();
    let decided =
        run.next_decision("a decision by the new leader during the partition", at, Duration::from_secs(60)).await;
    let before_heal = proxy.requests().len();
    let t_heal = Instant::now();
    let heal_s = proxy.now_s();
    proxy.heal();
    // Whatever the old leader sent into the partition arrives now; the status must not go
    // back to an older decision, the Deployments must keep the new leader's, and the
    // Lease must stay with it.
    let mut newest = run.look().await.decision_time().as_deref().and_then(parse_time);
    for s in run.during(Duration::from_secs(5 * INTERVAL_S)).await {
        let t = s.decision_time().as_deref().and_then(parse_time);
        assert!(t >= newest, "the recorded decision went back from {newest:?} to {t:?} after the partition healed");
        newest = t;
        assert_eq!(s.holder.as_deref(), Some(other.as_str()), "the Lease moved after the heal");
    }
    let late: Vec<_> = proxy.requests().into_iter().skip(before_heal).collect();
    let late_writes: Vec<String> = late
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {} -> {} at +{:.1}s", r.method, r.uri, r.status, r.at_s - heal_s))
        .collect();
    // An Event the old leader posted is a record of what it did, not an act; any other
    // write that the API server accepted after the heal is one.
    let applied_late: Vec<&String> =
        late_writes.iter().filter(|w| w.contains("-> 2") && !w.contains("/events")).collect();
    run.summary_line(format!(
        "partition of {leader}: it stepped down {:.1}s after the partition began, {other} took the Lease {:.1}s after (seen by the test at {handover:.1}s), first decision {decided:.1}s later; {} operator restarts; healed after {:.1}s; {} requests delivered after the heal, writes among them: {late_writes:?}",
        stepped_s.unwrap_or(f64::NAN),
        acquired_s.unwrap_or(f64::NAN),
        run.ops.restarts.len() - restarts_before,
        t_heal.duration_since(t_part).as_secs_f64(),
        late.len()
    ));
    assert!(
        applied_late.is_empty(),
        "writes the partitioned leader had sent were applied after the heal: {applied_late:?}"
    );
    run.until("the Deployments hold the newest decision", Duration::from_secs(30), |s| s.holds_decision()).await;
}

/// Phase 3: both proxies throttle (429 with Retry-After) and delay requests.
async fn throttle(run: &mut Run) {
    let window = Duration::from_secs(8 * INTERVAL_S);
    let count = |run: &Run| -> usize { run.ops.replicas.values().map(|r| r.proxy.requests().len()).sum() };
    let n0 = count(run);
    run.during(window).await;
    let baseline = (count(run) - n0) as f64 / window.as_secs_f64();
    let seen = run.look().await;
    let (holder, gens) = (seen.holder.clone(), seen.deps.clone().expect("Deployments"));
    let t = Throttle { every: 3, retry_after_s: 1, delay: Duration::from_secs(2) };
    for r in run.ops.replicas.values() {
        r.proxy.throttle(Some(t));
    }
    let n1 = count(run);
    let starts: Vec<usize> = run.ops.replicas.values().map(|r| r.proxy.requests().len()).collect();
    let samples = run.during(Duration::from_secs(12 * INTERVAL_S)).await;
    let throttled_rate = (count(run) - n1) as f64 / (12 * INTERVAL_S) as f64;
    let (mut refused, mut delayed, mut writes) = (0, 0, 0);
    for (r, from) in run.ops.replicas.values().zip(starts) {
        let reqs = r.proxy.requests();
        let during = &reqs[from.min(reqs.len())..];
        refused += during.iter().filter(|x| x.treated == "throttled").count();
        delayed += during.iter().filter(|x| x.treated == "delayed").count();
        writes += during.iter().filter(|x| x.is_write() && !x.is_lease()).count();
    }
    for s in samples.iter().filter(|s| s.deps.is_some()) {
        assert_eq!(s.deps.as_ref(), Some(&gens), "a Deployment changed while the API server throttled");
    }
    let decisions: std::collections::BTreeSet<String> = samples.iter().filter_map(|s| s.decision_time()).collect();
    let at = run.look().await.decision_time();
    for r in run.ops.replicas.values() {
        r.proxy.throttle(None);
    }
    let recover = run.next_decision("a decision after the throttle lifted", at, Duration::from_secs(60)).await;
    let holder_after = run.look().await.holder;
    run.summary_line(format!(
        "throttle (1 in 3 answered 429 Retry-After 1 s, 1 in 3 held 2 s): {baseline:.1} requests/s before, {throttled_rate:.1} during ({refused} refused, {delayed} delayed; {writes} writes other than the Lease's); {} decisions recorded during it; Deployments unchanged; next decision {recover:.1}s after it lifted; leader {} -> {}",
        decisions.len(),
        holder.as_deref().unwrap_or("?"),
        holder_after.as_deref().unwrap_or("?")
    ));
    assert!(
        throttled_rate <= 3.0 * baseline + 1.0,
        "the operator multiplied its requests under throttling: {baseline:.1}/s before, {throttled_rate:.1}/s during"
    );
}
