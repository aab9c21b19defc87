//! The control loop's own cost, measured by hand (`#[ignore]`): reconcile and decision
//! latency (p50/p99) of `llmos run` under N LLMWorkloads (default 100), and the
//! operator's memory.
//!
//! ```bash
//! source scripts/env.sh
//! cargo test --test bench_control_loop -- --ignored --nocapture
//! # knobs: LLMOS_BENCH_WORKLOADS=100 LLMOS_BENCH_INTERVAL_S=5 LLMOS_BENCH_POLICY=hpa|dqn
//! #        LLMOS_BENCH_WARMUP_S=20 LLMOS_BENCH_MEASURE_S=60
//! #        LLMOS_BENCH_BIN=target/release/llmos (the operator binary measured; default: the test build)
//! #        LLMOS_BENCH_DECISIONS_KEPT=N (llmos run --decisions-kept; default: the operator's)
//! ```
//!
//! Set-up: etcd + kube-apiserver 1.20 on loopback (no controller-manager: Deployments
//! are written but no Pods run), the CRD, and the real operator binary (`llmos run
//! --no-leader-election`) whose Prometheus source queries **a stub Prometheus query API**
//! served by this test: it answers each of the 16 PromQL queries of one observation at
//! once with fixed-shape, plausible values (per-slot gauges and rates, TTFT/TPOT buckets
//! and quantiles, fresh samples, no target down), and the load of each workload flips
//! between two levels every 30 s so policies scale up and down and Deployments get
//! patched. This isolates the control loop (watch, reconcile, status and Deployment
//! writes to a real API server, 16 HTTP queries per tick, policy, shield) from the cost
//! of a real Prometheus evaluating PromQL.
//!
//! After all workloads have their Deployment and a warm-up, the operator's own
//! `/metrics` is read twice, `measure` seconds apart; latencies are quantiles of the
//! difference of the histograms `llmos_reconcile_duration_seconds` and
//! `llmos_policy_decision_duration_seconds` (linear inside a bucket, as
//! `histogram_quantile` does; buckets double, so a figure is good to within its bucket).
//! The same for each phase of a reconcile (`llmos_reconcile_phase_duration_seconds`:
//! read, observe, decide, plan, write, save_state) and for the tick lag
//! (`llmos_control_tick_lag_seconds`). The operator's open sockets, threads and CPU are
//! printed once a minute with its memory.
//! Memory is VmRSS (sampled every second, max and end, printed once a minute) and VmHWM from
//! `/proc/<pid>/status`. The figures go to stderr and to
//! `$CARGO_TARGET_TMPDIR/bench_control_loop.txt`. Also: control ticks, reconciles and
//! status writes per tick (`llmos_control_ticks_total`, `llmos_status_writes_total`), the
//! API requests per tick by verb and resource from the kube-apiserver's own
//! `apiserver_request_total` (the operator is its only client besides this test's
//! few reads), and the operator's CPU time from `/proc/<pid>/stat`.

mod e2e_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::routing::get;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};

use e2e_support::{
    bucket_quantile, free_port, histogram_buckets, missing_prerequisites, sample_value, wait_until, Stack,
};

const NS: &str = "default";

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The stub's answer to one PromQL query (see the module docs).
fn answer(promql: &str, now_s: f64) -> serde_json::Value {
    let label = |key: &str| -> Option<String> {
        let i = promql.find(&format!("{key}=\""))? + key.len() + 2;
        Some(promql[i..].split('"').next()?.to_string())
    };
    let idx: u64 = label("llmos_workload").and_then(|w| w.trim_start_matches('w').parse().ok()).unwrap_or(0);
    // High or low load, flipping every 30 s, half the workloads out of phase.
    let high = ((now_s / 30.0) as u64 + idx) % 2 == 0;
    let slot = serde_json::json!({"llmos_variant": "llama3-8b", "llmos_pool": "a100"});
    let sample =
        |metric: serde_json::Value, v: f64| serde_json::json!({"metric": metric, "value": [now_s, format!("{v}")]});
    let result: Vec<serde_json::Value> = if promql.contains("== 0") {
        Vec::new()
    } else if promql.starts_with("histogram_quantile") {
        let v = if promql.contains("time_to_first_token") {
            if high {
                1.5
            } else {
                0.3
            }
        } else if high {
            0.08
        } else {
            0.03
        };
        vec![sample(serde_json::json!({}), v)]
    } else if promql.starts_with("sum by (le)") {
        [(0.05, 4.0), (0.1, 8.0), (0.5, 9.0), (1.0, 9.5), (2.5, 10.0), (f64::INFINITY, 10.0)]
            .iter()
            .map(|(le, c)| {
                sample(
                    serde_json::json!({"le": if le.is_infinite() { "+Inf".to_string() } else { le.to_string() }}),
                    *c,
                )
            })
            .collect()
    } else if promql.starts_with("(sum(rate") {
        vec![sample(serde_json::json!({}), 0.0)]
    } else if promql.starts_with("time()") {
        vec![sample(slot, 1.0)]
    } else if promql.starts_with("avg by") {
        vec![sample(slot, if high { 0.7 } else { 0.2 })]
    } else if promql.contains("delta(") {
        vec![sample(slot, 0.0)]
    } else if promql.contains("request_success_total") {
        vec![sample(slot, if high { 20.0 } else { 2.0 })]
    } else if promql.contains("num_requests_waiting") {
        vec![sample(slot, if high { 30.0 } else { 0.0 })]
    } else if promql.contains("num_requests_running") {
        vec![sample(slot, if high { 80.0 } else { 10.0 })]
    } else {
        Vec::new()
    };
    serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
}

async fn start_stub_prometheus(port: u16) {
    let app = axum::Router::new().route(
        "/api/v1/query",
        get(|RawQuery(q): RawQuery| async move {
            let params: HashMap<String, String> = q
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| {
                    kv.split_once('=').map(|(k, v)| (e2e_support::form_decode(k), e2e_support::form_decode(v)))
                })
                .collect();
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                answer(params.get("query").map(String::as_str).unwrap_or(""), now_s).to_string(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("stub Prometheus port");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

fn workload_yaml(i: usize, interval_s: u64, prom_url: &str, policy: &str, ckpt: &std::path::Path) -> String {
    let policy_block = match policy {
        "dqn" => format!("    kind: dqn\n    intervalSeconds: {interval_s}\n    dqn: {{checkpoint: \"{}\"}}\n", ckpt.display()),
        _ => format!(
            "    kind: hpa\n    intervalSeconds: {interval_s}\n    hpa:\n      targets: [{{metric: ongoingRequests, target: 16}}]\n      scaleDownStabilizationSeconds: 30\n"
        ),
    };
    let name = format!("w{i:03}");
    e2e_support::StepWorkload {
        name: &name,
        namespace: NS,
        variant: "llama3-8b",
        cold_start_s: None,
        scale_down_cooldown_s: 10,
        prom_url,
        policy_block,
    }
    .yaml()
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of process `pid` (`/proc/<pid>/stat`, 100 ticks per second).
fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// The API server's request counters by `VERB resource[/subresource]`, from its own
/// The open sockets of process `pid` (its connections to the API server and Prometheus,
/// its listeners).
fn sockets(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// `/metrics` (`apiserver_request_total`, summed over codes and scopes).
async fn apiserver_requests(client: &kube::Client) -> HashMap<String, f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(req).await.unwrap_or_default();
    let label = |l: &str, k: &str| -> String {
        l.split_once(&format!("{k}=\""))
            .and_then(|(_, r)| r.split_once('"'))
            .map_or(String::new(), |(v, _)| v.to_string())
    };
    let mut out = HashMap::new();
    for l in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let (res, sub) = (label(l, "resource"), label(l, "subresource"));
        let key =
            format!("{} {res}{}", label(l, "verb"), if sub.is_empty() { String::new() } else { format!("/{sub}") });
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

fn diff(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    b.iter().map(|(le, c)| (*le, c - a.iter().find(|x| x.0 == *le).map_or(0.0, |x| x.1))).collect()
}

/// Cumulative buckets of phase `phase` of `llmos_reconcile_phase_duration_seconds`.
fn phase_buckets(text: &str, phase: &str) -> Vec<(f64, f64)> {
    let labels = format!("\",phase=\"{phase}\"}}");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("llmos_reconcile_phase_duration_seconds_bucket{le=\"")?;
            let (le, tail) = rest.split_once(&labels)?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, tail.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// p50 / p99 / count of each reconcile phase and of the tick lag between two scrapes.
fn phase_report(a: &str, b: &str) -> String {
    let quantiles = |h: &[(f64, f64)]| {
        let n = h.last().map_or(0.0, |x| x.1);
        format!("{} / {} ms ({n:.0})", ms(bucket_quantile(h, 0.5)), ms(bucket_quantile(h, 0.99)))
    };
    let mut parts: Vec<String> = ["read", "observe", "decide", "plan", "write", "save_state"]
        .iter()
        .map(|p| format!("{p} {}", quantiles(&diff(&phase_buckets(a, p), &phase_buckets(b, p)))))
        .collect();
    let lag = diff(
        &histogram_buckets(a, "llmos_control_tick_lag_seconds"),
        &histogram_buckets(b, "llmos_control_tick_lag_seconds"),
    );
    parts.push(format!("tick lag {}", quantiles(&lag)));
    parts.join("; ")
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.3}", x * 1000.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, run by hand: cargo test --test bench_control_loop -- --ignored --nocapture"]
async fn control_loop_cost_under_many_workloads() {
    let missing = missing_prerequisites(false);
    assert!(missing.is_empty(), "prerequisites missing: {missing:?}");
    let n = env_u64("LLMOS_BENCH_WORKLOADS", 100) as usize;
    let interval_s = env_u64("LLMOS_BENCH_INTERVAL_S", 5);
    let warmup = env_u64("LLMOS_BENCH_WARMUP_S", 20);
    let measure = env_u64("LLMOS_BENCH_MEASURE_S", 60);
    let policy = std::env::var("LLMOS_BENCH_POLICY").unwrap_or_else(|_| "hpa".into());

    let (mut stack, client) = Stack::start(false).await;
    stack.install_crd();
    let prom_port = free_port();
    start_stub_prometheus(prom_port).await;
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let ckpt = stack.path("ckpt");
    if policy == "dqn" {
        std::fs::write(stack.path("scenario.toml"), e2e_support::dqn_scenario()).expect("scenario");
        let (sc, ck) = (stack.path("scenario.toml"), ckpt.clone());
        tokio::task::spawn_blocking(move || e2e_support::train_tiny_dqn(&sc, &ck)).await.expect("training");
    }
    let op_addr = format!("127.0.0.1:{}", free_port());
    // LLMOS_BENCH_BIN: the operator binary to measure (e.g. target/release/llmos).
    let bin = std::env::var("LLMOS_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_llmos").to_string());
    // LLMOS_BENCH_DECISIONS_KEPT: ticks kept per workload for the decision pages (the
    // operator's default when unset).
    let kept = std::env::var("LLMOS_BENCH_DECISIONS_KEPT").ok();
    let mut args = vec!["run", "--metrics-addr", &op_addr, "--no-leader-election"];
    if let Some(k) = &kept {
        args.extend(["--decisions-kept", k.as_str()]);
    }
    let pid = stack.spawn_bin(std::path::Path::new(&bin), "operator", &args, &[("RUST_LOG", "warn")]);

    let yaml: Vec<String> = (0..n).map(|i| workload_yaml(i, interval_s, &prom_url, &policy, &ckpt)).collect();
    let t_apply = Instant::now();
    stack.kubectl(&["apply", "-f", "-"], Some(&yaml.join("---\n")));
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_until(
        "a Deployment for every workload",
        Duration::from_secs(300),
        || async {
            deps.list(&ListParams::default().labels("llmos.dev/workload"))
                .await
                .map(|l| l.items.len() >= n)
                .unwrap_or(false)
        },
        &stack,
        &["operator"],
    )
    .await;
    let all_placed_s = t_apply.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(warmup)).await;

    let scrape = || async {
        reqwest::get(format!("http://{op_addr}/metrics")).await.expect("operator /metrics").text().await.expect("body")
    };
    let a = scrape().await;
    let api_a = apiserver_requests(&client).await;
    let cpu_a = proc_cpu_s(pid);
    let rss_start = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let mut rss_max = 0;
    let t = Instant::now();
    let mut next_trace = 60;
    while t.elapsed() < Duration::from_secs(measure) {
        let now = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
        rss_max = rss_max.max(now);
        // The memory's course, once a minute: a plateau or a leak shows over long runs.
        if t.elapsed().as_secs() >= next_trace {
            eprintln!(
                "bench_control_loop: {next_trace} s into the measurement, VmRSS {:.1} MiB, {} sockets, {} threads, CPU {:.1} s",
                now as f64 / 1024.0,
                sockets(pid),
                proc_status_kib(pid, "Threads:").unwrap_or(0),
                proc_cpu_s(pid) - cpu_a,
            );
            next_trace += 60;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let b = scrape().await;
    let api_b = apiserver_requests(&client).await;
    let cpu_b = proc_cpu_s(pid);
    let secs = t.elapsed().as_secs_f64();
    let (rss, hwm) = (proc_status_kib(pid, "VmRSS:").unwrap_or(0), proc_status_kib(pid, "VmHWM:").unwrap_or(0));

    let rec = diff(
        &histogram_buckets(&a, "llmos_reconcile_duration_seconds"),
        &histogram_buckets(&b, "llmos_reconcile_duration_seconds"),
    );
    let dec = diff(
        &histogram_buckets(&a, "llmos_policy_decision_duration_seconds"),
        &histogram_buckets(&b, "llmos_policy_decision_duration_seconds"),
    );
    let count = |h: &[(f64, f64)]| h.last().map_or(0.0, |x| x.1);
    let errs = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("llmos_reconcile_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let decisions: Vec<&str> = b.lines().filter(|l| l.starts_with("llmos_decisions_total")).collect();
    let error_reasons: Vec<&str> = b.lines().filter(|l| l.starts_with("llmos_reconcile_errors_total{")).collect();
    let log = stack.log("operator");
    let first_errors: Vec<&str> = log.lines().filter(|l| l.contains("reconcile failed")).take(3).collect();
    let delta = |name: &str| sample_value(&b, name).unwrap_or(0.0) - sample_value(&a, name).unwrap_or(0.0);
    let ticks = delta("llmos_control_ticks_total");
    let writes = delta("llmos_status_writes_total{outcome=\"written\"}");
    let unchanged = delta("llmos_status_writes_total{outcome=\"unchanged\"}");
    let applies = delta("llmos_object_writes_total{object=\"deployment\",outcome=\"written\"}")
        + delta("llmos_object_writes_total{object=\"service\",outcome=\"written\"}");
    let applies_skipped = delta("llmos_object_writes_total{object=\"deployment\",outcome=\"unchanged\"}")
        + delta("llmos_object_writes_total{object=\"service\",outcome=\"unchanged\"}");
    let mut api: Vec<(String, f64)> = api_b
        .iter()
        .map(|(k, v)| (k.clone(), v - api_a.get(k).copied().unwrap_or(0.0)))
        .filter(|x| x.1 > 0.0)
        .collect();
    api.sort_by(|x, y| y.1.total_cmp(&x.1));
    let api_total: f64 = api.iter().map(|x| x.1).sum();
    let per_tick = |x: f64| if ticks > 0.0 { x / ticks } else { f64::NAN };
    let api_lines: Vec<String> = api.iter().map(|(k, v)| format!("{k} {:.2}", per_tick(*v))).collect();
    let report = format!(
        "control loop: {n} LLMWorkloads, policy {policy}, interval {interval_s} s, stub Prometheus; all Deployments after {all_placed_s:.1} s; measured {secs:.0} s after {warmup} s warm-up\n\
         reconciles: {:.0} ({:.1}/s), p50 {} ms, p99 {} ms; errors {:.0} {error_reasons:?} {first_errors:?}\n\
         phases p50 / p99 (count): {}\n\
         decisions: {:.0} ({:.1}/s), p50 {} ms, p99 {} ms; {decisions:?}\n\
         memory: VmRSS {:.1} MiB at the start of the measurement, {:.1} MiB at the end, max sampled {:.1} MiB, VmHWM {:.1} MiB; reconciles total {}\n\
         control ticks: {ticks:.0} ({:.1}/s); reconciles per tick {:.2}; status writes per tick {:.2} (and {:.2} skipped as unchanged); Deployment and Service applies per tick {:.2} (and {:.2} skipped)\n\
         API requests (kube-apiserver's apiserver_request_total): {api_total:.0} ({:.2} per tick): {}\n\
         operator CPU: {:.1} s in {secs:.0} s ({:.0} % of one core), {:.2} ms per tick",
        count(&rec),
        count(&rec) / secs,
        ms(bucket_quantile(&rec, 0.5)),
        ms(bucket_quantile(&rec, 0.99)),
        errs(&b) - errs(&a),
        phase_report(&a, &b),
        count(&dec),
        count(&dec) / secs,
        ms(bucket_quantile(&dec, 0.5)),
        ms(bucket_quantile(&dec, 0.99)),
        rss_start as f64 / 1024.0,
        rss as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        hwm as f64 / 1024.0,
        sample_value(&b, "llmos_reconciles_total").unwrap_or(0.0),
        ticks / secs,
        per_tick(count(&rec)),
        per_tick(writes),
        per_tick(unchanged),
        per_tick(applies),
        per_tick(applies_skipped),
        per_tick(api_total),
        api_lines.join(", "),
        cpu_b - cpu_a,
        100.0 * (cpu_b - cpu_a) / secs,
        1000.0 * per_tick(cpu_b - cpu_a),
    );
    eprintln!("{report}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench_control_loop.txt"), &report);
    assert!(
        count(&rec) > 0.0 && count(&dec) > 0.0,
        "no reconciles or decisions measured:\n{report}\n{}",
        e2e_support::tail(&stack.log("operator"))
    );
    stack.kill("operator");
}
