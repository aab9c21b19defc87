//! An accelerated soak (`#[ignore]`, run by hand): one simulated day of recorded traffic
//! with the twin as the data plane of a real API server, checking for leaks and drift.
//!
//! ```bash
//! source scripts/env.sh
//! cargo test --test soak_day -- --ignored --nocapture
//! # knobs: LLMOS_SOAK_SPEED=60 (simulated s per wall s; a day takes 86,400 / speed wall s)
//! #        LLMOS_SOAK_HOURS=24 (simulated hours replayed) LLMOS_SOAK_WORKLOADS=1
//! #        LLMOS_SOAK_POLICY=hpa LLMOS_SOAK_DAY=12 (ServeGen day, 1..=14) LLMOS_SOAK_LOAD=0.025
//! #        LLMOS_BENCH_BIN=target/release/llmos (the operator and twin-serve binary; default: the test build)
//! ```
//!
//! Set-up: etcd + kube-apiserver 1.20 + kube-controller-manager on loopback, the CRD and
//! the RBAC of `manifests/02-rbac.yaml` (the operator runs as its ServiceAccount, so the
//! API server's audit log holds its requests only), a real Prometheus scraping every
//! second the replicas `llmos twin-serve` lists in its file_sd targets file, `llmos
//! twin-serve --speed S` replaying one ServeGen day (m-small at 2.5 % on Llama-3-70B / 4 ×
//! A100-80GB, `scenarios/servegen-m-small-70b-test.toml`'s setting; the quiet hours need
//! one replica, the peaks several) and `llmos run`, the operator, reading Prometheus.
//!
//! Time: the operator knows nothing of the speed. Its spec is in wall seconds, so each
//! is the simulated setting divided by S: the CRD's smallest `policy.intervalSeconds` is
//! 1, so a tick is S simulated seconds (60 at the default speed); `metrics.windowSeconds`
//! is at least 5 (300 simulated s at S = 60); the HPA's scale-down stabilisation is 300
//! simulated s, the scale-down cooldown 120 s, the scale-up period one tick.
//!
//! Every simulated hour (3600 / S wall seconds after the Deployments appeared; twin-serve
//! starts a workload's clock then) it samples: VmRSS of the operator, twin-serve and
//! Prometheus (`/proc/<pid>/status`), the operator's open fds, its decision journal
//! (entries and bytes of `/decisions/<ns>/<name>/json`), control ticks done against those
//! due, reconcile p50/p99 over the hour from the operator's `/metrics` histogram, the
//! operator's API requests (audit log lines), the Events in the namespace, the replicas
//! the operator asked for (sampled every wall second: mean, min, max) and the hour's
//! completed requests per simulated second (Prometheus, `vllm:request_success_total`).
//!
//! Asserts (generous: a slow machine must not fail them, real growth must): no leak, the
//! operator's and twin-serve's VmRSS grow less than [`LEAK_BOUND_MIB`] over the second
//! half of the day; no drift, every hour after the first has between half and 1.5 times
//! the ticks due; replicas follow the traffic (correlation of the hour's mean replicas
//! with its request rate above [`MIN_CORRELATION`] over a day of at least 6 hours); no
//! Deployment ever below `minReplicas`. At the end twin-serve is stopped with SIGTERM
//! and logs its report; the same day, spec (in simulated seconds) and policy run offline
//! in the twin (`llmos::eval::compare`), and GPU-hours and SLO attainment of both are
//! set side by side (not asserted: wall-clock timing differs).
//!
//! The figures go to stderr and to `$CARGO_TARGET_TMPDIR/soak_day.txt`.

mod e2e_support;

use std::time::{Duration, Instant};

use kube::Client;

use e2e_support::{
    apply_operator_rbac, bucket_quantile, free_port, histogram_buckets, operator_kubeconfig, repo, sample_value,
    wait_until, Stack,
};

const NS: &str = "default";
/// Most a process's VmRSS may grow over the second half of the day, MiB.
const LEAK_BOUND_MIB: f64 = 64.0;
/// Least correlation of the hourly mean replicas with the hourly request rate.
const MIN_CORRELATION: f64 = 0.3;

fn env_f64(k: &str, default: f64) -> f64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The run's settings (see the module docs for the knobs).
struct Knobs {
    speed: f64,
    hours: u32,
    workloads: usize,
    policy: String,
    day: u32,
    load: f64,
    bin: String,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            speed: env_f64("LLMOS_SOAK_SPEED", 60.0),
            hours: env_f64("LLMOS_SOAK_HOURS", 24.0) as u32,
            workloads: env_f64("LLMOS_SOAK_WORKLOADS", 1.0) as usize,
            policy: std::env::var("LLMOS_SOAK_POLICY").unwrap_or_else(|_| "hpa".into()),
            day: env_f64("LLMOS_SOAK_DAY", 12.0) as u32,
            load: env_f64("LLMOS_SOAK_LOAD", 0.025),
            bin: std::env::var("LLMOS_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_llmos").to_string()),
        }
    }

    /// Wall seconds of one simulated hour.
    fn hour_wall_s(&self) -> f64 {
        3600.0 / self.speed
    }

    /// A simulated duration as whole wall seconds, at least `min`.
    fn wall(&self, sim_s: f64, min: u32) -> u32 {
        ((sim_s / self.speed).round() as u32).max(min)
    }
}

/// The spec's times in wall seconds: (interval, window, stale after, cooldown, HPA
/// scale-down stabilisation, HPA scale-up period).
fn wall_times(k: &Knobs) -> [u32; 6] {
    [1, k.wall(300.0, 5), 2 * k.wall(300.0, 5), k.wall(120.0, 1), k.wall(300.0, 1), 1]
}

/// The scenario twin-serve replays (its spec is replaced by the cluster's) and the
/// offline run uses: the ServeGen day, and a `[spec]` whose times are the cluster's wall
/// seconds times the speed.
fn scenario_toml(k: &Knobs) -> String {
    let [interval, window, stale, cooldown, stab, up] = wall_times(k).map(|w| (f64::from(w) * k.speed).round());
    let dir = repo().join("data/traces/servegen/language/m-small");
    let policy = match k.policy.as_str() {
        "hpa" => format!(
            "{{ kind = \"hpa\", intervalSeconds = {interval}, hpa = {{ scaleDownStabilizationSeconds = {stab}, scaleUpPeriodSeconds = {up} }} }}"
        ),
        p => format!("{{ kind = \"{p}\", intervalSeconds = {interval} }}"),
    };
    format!(
        r#"name = "soak-servegen-m-small-70b-day{day}"
description = "ServeGen m-small x{load}, day {day}, on Llama-3-70B / 4 x A100-80GB"
max_duration_s = {max_s}
initial_replicas = [{{ variant = "llama3-70b", pool = "a100", replicas = 1 }}]

[workload.servegen]
dir = "{dir}"
clients = []
load = {load}
window_days = [{d0}, {day}]

[engine]
max_num_batched_tokens = 2048
max_num_seqs = 256
block_size = 16
gpu_memory_utilization = 0.9
enable_chunked_prefill = true

[cluster]
pod_startup_s = 30.0
weight_load_gb_s = 2.0
load_balancer = "least-outstanding"

[spec]
variants = [{{ name = "llama3-70b", model = "meta-llama/Meta-Llama-3-70B-Instruct", image = "vllm/vllm-openai:v0.6.3", gpusPerReplica = 4, minReplicas = 1, maxReplicas = 16 }}]
gpuPools = [{{ name = "a100", gpuType = "A100-80GB", pricePerGpuHour = 3.0, capacityGpus = 64 }}]
slo = {{ ttftMs = 2000.0, tpotMs = 100.0, percentile = 90.0, targetAttainment = 0.95 }}
limits = {{ minTotalReplicas = 1, maxTotalReplicas = 16, maxStepChange = 4, scaleDownCooldownSeconds = {cooldown} }}
metrics = {{ windowSeconds = {window}, staleAfterSeconds = {stale} }}
policy = {policy}
"#,
        day = k.day,
        d0 = k.day.saturating_sub(1),
        load = k.load,
        max_s = f64::from(k.hours) * 3600.0,
        dir = dir.display(),
    )
}

/// The LLMWorkload of the cluster: the scenario's spec in wall seconds.
fn workload_yaml(k: &Knobs, name: &str, prom_url: &str) -> String {
    let [interval, window, stale, cooldown, stab, up] = wall_times(k);
    let policy = match k.policy.as_str() {
        "hpa" => format!(
            "    kind: hpa\n    intervalSeconds: {interval}\n    hpa: {{scaleDownStabilizationSeconds: {stab}, scaleUpPeriodSeconds: {up}}}\n"
        ),
        p => format!("    kind: {p}\n    intervalSeconds: {interval}\n"),
    };
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata:
  name: {name}
  namespace: {NS}
spec:
  variants:
    - {{name: llama3-70b, model: meta-llama/Meta-Llama-3-70B-Instruct, image: "vllm/vllm-openai:v0.6.3", gpusPerReplica: 4, minReplicas: 1, maxReplicas: 16}}
  gpuPools:
    - {{name: a100, gpuType: A100-80GB, pricePerGpuHour: 3.0, capacityGpus: 64}}
  slo: {{ttftMs: 2000, tpotMs: 100, percentile: 90, targetAttainment: 0.95}}
  limits: {{minTotalReplicas: 1, maxTotalReplicas: 16, maxStepChange: 4, scaleDownCooldownSeconds: {cooldown}}}
  metrics: {{source: prometheus, prometheusUrl: "{prom_url}", windowSeconds: {window}, staleAfterSeconds: {stale}}}
  policy:
{policy}"#
    )
}

/// VmRSS of `pid` in MiB (0 when it is gone).
fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// One simulated hour's figures.
#[derive(Clone, Debug, Default)]
struct Hour {
    hour: u32,
    wall_s: f64,
    rss: [f64; 3],
    fds: usize,
    journal: (usize, usize),
    ticks: f64,
    ticks_due: f64,
    reconcile_ms: (f64, f64),
    api_requests: usize,
    events: (usize, i64),
    replicas: (f64, i32, i32),
    rps: f64,
}

impl Hour {
    fn line(&self) -> String {
        let (mean, lo, hi) = self.replicas;
        format!(
            "| {:>2} | {:>6.0} | {:>6.1} | {:>6.1} | {:>6.1} | {:>3} | {} / {:.0} KiB | {:.0} / {:.0} | {:.1} / {:.1} | {} | {} ({}) | {:.2} ({lo}..{hi}) | {:.1} |",
            self.hour,
            self.wall_s,
            self.rss[0],
            self.rss[1],
            self.rss[2],
            self.fds,
            self.journal.0,
            self.journal.1 as f64 / 1024.0,
            self.ticks,
            self.ticks_due,
            self.reconcile_ms.0,
            self.reconcile_ms.1,
            self.api_requests,
            self.events.0,
            self.events.1,
            mean,
            self.rps,
        )
    }
}

const TABLE_HEAD: &str = "| sim h | wall s | operator MiB | twin-serve MiB | Prometheus MiB | fds | journal | ticks done / due | reconcile p50 / p99 ms | API requests | Events (count) | replicas mean (min..max) | completed req/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

/// What the sampler reads from the running stack.
struct Probe<'a> {
    stack: &'a Stack,
    client: Client,
    http: reqwest::Client,
    op_addr: String,
    prom_url: String,
    pids: [u32; 3],
    names: Vec<String>,
}

impl Probe<'_> {
    async fn operator_metrics(&self) -> String {
        let r = self.http.get(format!("http://{}/metrics", self.op_addr)).send().await;
        match r {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// (entries, bytes) of the decision journal over the workloads.
    async fn journal(&self) -> (usize, usize) {
        let mut out = (0, 0);
        for n in &self.names {
            let url = format!("http://{}/decisions/{NS}/{n}/json", self.op_addr);
            let Ok(r) = self.http.get(url).send().await else { continue };
            let body = r.text().await.unwrap_or_default();
            out.1 += body.len();
            out.0 += serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0);
        }
        out
    }

    /// The operator's requests so far (its identity is the only one audited).
    fn api_requests(&self) -> usize {
        let text = std::fs::read_to_string(self.stack.path("k8s/audit.log")).unwrap_or_default();
        text.lines().filter(|l| l.contains("\"ResponseComplete\"")).count()
    }

    /// Event objects in the namespace and the sum of their counts.
    async fn events(&self) -> (usize, i64) {
        use k8s_openapi::api::core::v1::Event;
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), NS);
        let list = api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        (list.len(), list.iter().map(|e| i64::from(e.count.unwrap_or(1).max(1))).sum())
    }

    /// Completed requests per simulated second over the last `window_wall_s` (counters
    /// are divided by the speed, so an increase over wall time times the speed is the
    /// simulated count).
    async fn completed_rps(&self, window_wall_s: f64, speed: f64) -> f64 {
        // One simulated hour is `window_wall_s` wall seconds: the increase times the
        // speed is the hour's count.
        let q = format!("sum(increase(vllm:request_success_total[{}s]))", window_wall_s.round() as u64);
        let r = self.http.get(format!("{}/api/v1/query", self.prom_url)).query(&[("query", q)]).send().await;
        let Ok(r) = r else { return f64::NAN };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        let x = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        x * speed / 3600.0
    }

    /// Sum of the Deployments' replicas per workload.
    async fn desired(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for n in &self.names {
            out.push(e2e_support::desired_total(&self.client, NS, n).await);
        }
        out
    }
}

/// Runs the day: samples replicas every wall second and the figures every simulated
/// hour. Returns the hours and the lowest replica count any workload had.
async fn run_day(k: &Knobs, p: &Probe<'_>, t0: Instant) -> (Vec<Hour>, i32) {
    let mut hours = Vec::new();
    let mut min_seen = i32::MAX;
    let mut prev_metrics = p.operator_metrics().await;
    let mut prev_api = p.api_requests();
    for h in 1..=k.hours {
        let end = Duration::from_secs_f64(f64::from(h) * k.hour_wall_s());
        let mut samples: Vec<i32> = Vec::new();
        while t0.elapsed() < end {
            let d = p.desired().await;
            if d.iter().all(|x| *x >= 0) {
                min_seen = min_seen.min(d.iter().copied().min().unwrap_or(i32::MAX));
                samples.push(d.iter().sum());
            }
            tokio::time::sleep(Duration::from_secs(1).min(end.saturating_sub(t0.elapsed()))).await;
        }
        let metrics = p.operator_metrics().await;
        let api = p.api_requests();
        let name = "llmos_reconcile_duration_seconds";
        let (a, b) = (histogram_buckets(&prev_metrics, name), histogram_buckets(&metrics, name));
        let rec: Vec<(f64, f64)> =
            b.iter().map(|(le, c)| (*le, c - a.iter().find(|x| x.0 == *le).map_or(0.0, |x| x.1))).collect();
        let ticks = |t: &str| sample_value(t, "llmos_control_ticks_total").unwrap_or(0.0);
        let mean = samples.iter().map(|x| f64::from(*x)).sum::<f64>() / samples.len().max(1) as f64;
        let hour = Hour {
            hour: h,
            wall_s: t0.elapsed().as_secs_f64(),
            rss: p.pids.map(rss_mib),
            fds: open_fds(p.pids[0]),
            journal: p.journal().await,
            ticks: ticks(&metrics) - ticks(&prev_metrics),
            ticks_due: k.workloads as f64 * k.hour_wall_s() / f64::from(wall_times(k)[0]),
            reconcile_ms: (
                bucket_quantile(&rec, 0.5).unwrap_or(f64::NAN) * 1000.0,
                bucket_quantile(&rec, 0.99).unwrap_or(f64::NAN) * 1000.0,
            ),
            api_requests: api.saturating_sub(prev_api),
            events: p.events().await,
            replicas: (mean, samples.iter().copied().min().unwrap_or(0), samples.iter().copied().max().unwrap_or(0)),
            rps: p.completed_rps(k.hour_wall_s(), k.speed).await,
        };
        eprintln!("soak_day: {}", hour.line());
        hours.push(hour);
        (prev_metrics, prev_api) = (metrics, api);
    }
    (hours, min_seen)
}

/// Pearson correlation of two equally long series (NaN when one is constant).
fn correlation(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// The reports twin-serve logged when it stopped (one JSON object per workload).
fn twin_reports(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.contains("twin report"))
        .filter_map(|l| {
            let from = l.find("report")?;
            let rest = &l[from..];
            let (a, b) = (rest.find('{')?, rest.rfind('}')?);
            serde_json::from_str(&rest[a..=b]).ok()
        })
        .collect()
}

/// What the offline twin did on the same day.
struct Offline {
    gpu_hours: f64,
    slo_attainment: Option<f64>,
    simulated_s: f64,
    /// Mean desired replicas per simulated hour.
    hourly_replicas: Vec<f64>,
}

/// The same day, spec and policy in the offline twin.
fn offline_run(policies: String, scenario: std::path::PathBuf) -> Offline {
    let cfg = llmos::eval::CompareConfig {
        scenario,
        policies,
        seeds: 1,
        window: llmos::eval::Window::All,
        loads: vec![1.0],
        replica_capacity_rps: None,
        max_duration_s: None,
        clairvoyant_sweep: Vec::new(),
        reward: Default::default(),
        timeline: false,
    };
    let report = llmos::eval::compare(&cfg).unwrap_or_else(|e| panic!("the offline run: {e}"));
    let e = &report.episodes[0];
    let mut sums: Vec<(f64, f64)> = Vec::new();
    for p in &e.series {
        let h = (p.time_s / 3600.0) as usize;
        if sums.len() <= h {
            sums.resize(h + 1, (0.0, 0.0));
        }
        sums[h] = (sums[h].0 + f64::from(p.desired_replicas), sums[h].1 + 1.0);
    }
    Offline {
        gpu_hours: e.report.gpu_hours,
        slo_attainment: e.report.slo_attainment,
        simulated_s: e.report.simulated_s,
        hourly_replicas: sums.iter().map(|(s, n)| s / n.max(1.0)).collect(),
    }
}

/// Stops twin-serve with SIGTERM (it logs its report then) and waits for it.
fn stop_twin(stack: &mut Stack) {
    if let Some(mut child) = stack.children.remove("twin") {
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

/// Starts the stack, Prometheus, twin-serve and the operator; applies the workloads and
/// waits for their Deployments. Returns the probe's parts and when the day began.
async fn start(k: &Knobs, stack: &mut Stack, client: &Client) -> (String, String, [u32; 3], Instant) {
    stack.install_crd();
    apply_operator_rbac(stack);
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    stack.start_prometheus();
    let prom_url = format!("http://127.0.0.1:{}", stack.prom_port);
    let prom_pid: u32 = std::fs::read_to_string(stack.path("prom/prometheus.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("Prometheus pid file");
    std::fs::write(stack.path("scenario.toml"), scenario_toml(k)).expect("scenario file");
    let (scenario, targets) = (stack.path("scenario.toml"), stack.path("targets.json"));
    let (scenario, targets, speed) =
        (scenario.display().to_string(), targets.display().to_string(), k.speed.to_string());
    let bin = std::path::PathBuf::from(&k.bin);
    // Seed 0: the offline run's first seed (ServeGen's arrivals are drawn from it).
    let mut twin_args = vec!["twin-serve", "--scenario", &scenario, "--targets-file", &targets];
    twin_args.extend(["--speed", &speed, "--seed", "0", "--namespace", NS, "--ip-base", "127.41.0.0"]);
    let twin_pid = stack.spawn_bin(&bin, "twin", &twin_args, &[("MALLOC_ARENA_MAX", "2")]);
    let op_addr = format!("127.0.0.1:{}", free_port());
    let kc = operator_kubeconfig(stack);
    let op_args = ["run", "--metrics-addr", &op_addr, "--no-leader-election"];
    let env = [("KUBECONFIG", kc.as_str()), ("MALLOC_ARENA_MAX", "2"), ("RUST_LOG", "warn")];
    let op_pid = stack.spawn_bin(&bin, "operator", &op_args, &env);
    let yaml: Vec<String> = (0..k.workloads).map(|i| workload_yaml(k, &format!("soak-{i}"), &prom_url)).collect();
    stack.kubectl(&["apply", "-f", "-"], Some(&yaml.join("---\n")));
    let names: Vec<String> = (0..k.workloads).map(|i| format!("soak-{i}")).collect();
    wait_until(
        "a Deployment for every workload",
        Duration::from_secs(120),
        || async {
            let mut all = true;
            for n in &names {
                all &= e2e_support::desired_total(client, NS, n).await >= 1;
            }
            all
        },
        stack,
        &["operator", "twin"],
    )
    .await;
    (op_addr, prom_url, [op_pid, twin_pid, prom_pid], Instant::now())
}

/// Checks the day (see the module docs): the verdict lines, and what failed.
fn judge(k: &Knobs, hours: &[Hour], min_seen: i32) -> (Vec<String>, Vec<String>) {
    let (mut out, mut failed) = (Vec::new(), Vec::new());
    if min_seen < 1 {
        failed.push(format!("a Deployment went below minReplicas (1): {min_seen}"));
    }
    out.push(format!("lowest replica count of any workload, sampled every wall second: {min_seen} (minReplicas 1)"));
    for h in hours.iter().skip(1) {
        if h.ticks < 0.5 * h.ticks_due || h.ticks > 1.5 * h.ticks_due {
            failed.push(format!("tick drift in simulated hour {}: {} ticks, {} due", h.hour, h.ticks, h.ticks_due));
        }
    }
    let (done, due) = hours.iter().skip(1).fold((0.0, 0.0), |a, h| (a.0 + h.ticks, a.1 + h.ticks_due));
    let period = f64::from(wall_times(k)[0]) * due / f64::max(done, 1.0);
    out.push(format!(
        "ticks after the first hour: {done:.0} of {due:.0} due ({:+.2} %); mean tick period {period:.3} wall s = {:.1} simulated s (spec: 1 wall s = {} simulated s)",
        100.0 * (done / due - 1.0),
        period * k.speed,
        k.speed
    ));
    if hours.len() >= 4 {
        let from = &hours[(hours.len() / 2).max(2) - 1];
        let last = &hours[hours.len() - 1];
        for (i, what) in ["operator", "twin-serve", "Prometheus"].iter().enumerate() {
            let grew = last.rss[i] - from.rss[i];
            out.push(format!(
                "{what}: VmRSS {:.1} MiB at hour {} -> {:.1} MiB at hour {} ({grew:+.1} MiB)",
                from.rss[i], from.hour, last.rss[i], last.hour
            ));
            if i < 2 && grew >= LEAK_BOUND_MIB {
                failed.push(format!("{what} grew {grew:.1} MiB over the second half (bound {LEAK_BOUND_MIB} MiB)"));
            }
        }
    }
    let (x, y): (Vec<f64>, Vec<f64>) = hours.iter().map(|h| (h.replicas.0, h.rps)).unzip();
    let r = correlation(&x, &y);
    out.push(format!("correlation of the hourly mean replicas with the hourly completed requests/s: {r:.3}"));
    if hours.len() >= 6 && (r.is_nan() || r <= MIN_CORRELATION) {
        failed.push(format!("replicas do not follow the traffic: correlation {r:.3} (bound {MIN_CORRELATION})"));
    }
    (out, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak, run by hand: cargo test --test soak_day -- --ignored --nocapture"]
async fn a_simulated_day_with_the_twin_as_data_plane() {
    if !e2e_support::e2e_wanted(true) {
        return;
    }
    let k = Knobs::from_env();
    let (mut stack, client) = Stack::start(true).await;
    let (op_addr, prom_url, pids, t0) = start(&k, &mut stack, &client).await;
    let probe = Probe {
        stack: &stack,
        client: client.clone(),
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client"),
        op_addr,
        prom_url,
        pids,
        names: (0..k.workloads).map(|i| format!("soak-{i}")).collect(),
    };
    eprintln!(
        "soak_day: {} simulated h at x{} ({:.0} wall s per simulated hour), {} workload(s), policy {}\n{TABLE_HEAD}",
        k.hours,
        k.speed,
        k.hour_wall_s(),
        k.workloads,
        k.policy
    );
    let (hours, min_seen) = run_day(&k, &probe, t0).await;
    let wall = t0.elapsed().as_secs_f64();
    let (ours, others) = e2e_support::warning_events(&client, NS).await;
    let hwm = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap_or_default();
    let hwm = hwm.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: ?").to_string();
    drop(probe);
    stop_twin(&mut stack);
    let reports = twin_reports(&stack.log("twin"));
    let scenario = stack.path("scenario.toml");
    let policy = k.policy.clone();
    let offline = tokio::task::spawn_blocking(move || offline_run(policy, scenario)).await.expect("offline run");
    let mut lines = vec![format!(
        "soak_day: {} simulated h of ServeGen m-small day {} at x{} load, {} workload(s), policy {}, speed {} ({wall:.0} wall s); operator {hwm}",
        k.hours, k.day, k.load, k.workloads, k.policy, k.speed
    )];
    lines.push(format!("Warning Events (with their counts): {ours} from llmos, others {others:?}"));
    let (head, rule) = TABLE_HEAD.split_once('\n').unwrap_or((TABLE_HEAD, ""));
    lines.push(format!("{head} offline twin's replicas mean |\n{rule}---:|"));
    for h in &hours {
        let off = offline.hourly_replicas.get(h.hour as usize - 1).copied().unwrap_or(f64::NAN);
        lines.push(format!("{} {off:.2} |", h.line()));
    }
    for r in &reports {
        lines.push(format!(
            "cluster (twin-serve's report): {:.0} simulated s ({:+.2} % against wall × speed), {} requests, GPU-hours {:.2}, SLO attainment {:?}, TTFT p99 {:?} s",
            r["simulated_s"].as_f64().unwrap_or(0.0),
            100.0 * (r["simulated_s"].as_f64().unwrap_or(0.0) / (wall * k.speed) - 1.0),
            r["arrived"],
            r["gpu_hours"].as_f64().unwrap_or(0.0),
            r["slo_attainment"].as_f64(),
            r["ttft_s"]["p99"].as_f64(),
        ));
    }
    lines.push(format!(
        "offline twin (same day, spec in simulated seconds, policy {}): {:.0} simulated s, GPU-hours {:.2}, SLO attainment {:?}",
        k.policy, offline.simulated_s, offline.gpu_hours, offline.slo_attainment
    ));
    let (verdicts, mut failed) = judge(&k, &hours, min_seen);
    lines.extend(verdicts);
    if reports.is_empty() {
        failed.push(format!("twin-serve logged no report:\n{}", e2e_support::tail(&stack.log("twin"))));
    }
    let report = lines.join("\n");
    eprintln!("{report}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak_day.txt"), &report);
    assert!(failed.is_empty(), "the soak failed:\n{}", failed.join("\n"));
}
