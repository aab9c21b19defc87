//! The traffic record end to end: etcd + kube-apiserver + kube-controller-manager on
//! loopback, `llmos twin-serve` as the data plane (two replicas at a known synthetic
//! rate), and `llmos run --record-dir`, the operator, reading the pods' metrics by direct
//! scraping with `spec.learning.record.enabled`.
//!
//! 1. The operator writes windows; they are read back with `learning::store::read_dir`.
//! 2. The operator is killed (SIGKILL) mid-run: every window read before the kill is still
//!    there, the store reads without error (at most a torn last line of the open segment
//!    is skipped), and a restarted operator recovers the open segment and goes on
//!    appending, its windows after the old ones without overlap.
//! 3. The recorded arrival rate over the windows served by both replicas is the
//!    scenario's rate within 12 % (aggregate; about 3 standard errors of a Poisson count
//!    of that size) and within 50 % in every window; both token histograms are present,
//!    with means within 20 % of the scenario's length distributions.
//! 4. The recording's cost per control tick is read from the operator's
//!    `llmos_record_duration_seconds` and printed (docs/learning.md quotes it).
//!
//! Needs what tests/e2e_operator.rs needs, without Prometheus. `LLMOS_SKIP_E2E=1` skips.

mod e2e_support;

use std::path::Path;
use std::time::{Duration, Instant};

use llmos::learning::sink::workload_dir;
use llmos::learning::store::{read_dir, segments};

use e2e_support::{e2e_wanted, free_port, sample_value, tail, Stack};

const NS: &str = "default";
const WORKLOAD: &str = "rec";
/// Arrivals of the scenario, requests per second. twin-serve runs at `--speed 1`: at a
/// higher speed it divides its counters by the speed but not its gauges, so the growth of
/// requests in flight (part of the arrival estimate) would weigh `speed` times too much.
const RATE_RPS: f64 = 10.0;
const WINDOW_S: u32 = 6;

fn workload_yaml() -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata:
  name: {WORKLOAD}
  namespace: {NS}
spec:
  variants:
    - name: llama3-8b
      model: llama-3-8b
      image: vllm/vllm-openai:v0.6.3
      minReplicas: 2
      maxReplicas: 2
  gpuPools:
    - name: a100
      gpuType: A100-80GB
      pricePerGpuHour: 3.0
      capacityGpus: 8
  limits: {{minTotalReplicas: 2, maxTotalReplicas: 2}}
  metrics: {{source: scrape, windowSeconds: 10, staleAfterSeconds: 15}}
  policy: {{kind: hpa, intervalSeconds: 2}}
  learning:
    record: {{enabled: true, windowSeconds: {WINDOW_S}, maxBytes: 1048576, retentionSeconds: 3600}}
"#
    )
}

/// Windows in the store now (panics on an unreadable store).
fn windows(dir: &Path) -> Vec<llmos::learning::record::TrafficWindow> {
    match read_dir(dir) {
        Ok(o) => o.windows,
        Err(e) if !dir.exists() => panic!("no record directory {}: {e}", dir.display()),
        Err(e) => panic!("the record is unreadable: {e}"),
    }
}

async fn wait_windows(dir: &Path, n: usize, deadline: Duration, stack: &Stack, op: &str) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if dir.exists() && read_dir(dir).map(|o| o.windows.len()).unwrap_or(0) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("fewer than {n} windows in {} after {deadline:?}\n{}", dir.display(), tail(&stack.log(op)));
}

fn spawn_operator(stack: &mut Stack, name: &str, addr: &str, record_dir: &str) {
    stack.spawn(name, &["run", "--no-leader-election", "--metrics-addr", addr, "--record-dir", record_dir], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_records_traffic_and_survives_sigkill() {
    if !e2e_wanted(true) {
        return;
    }
    let t_all = Instant::now();
    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    let scenario = e2e_support::step_scenario("record", 4000.0, &[0.0], &[RATE_RPS], 2.0, "");
    std::fs::write(stack.path("scenario.toml"), scenario).expect("scenario file");
    let (scenario, targets) = (stack.path("scenario.toml"), stack.path("targets.json"));
    let (scenario, targets) = (scenario.display().to_string(), targets.display().to_string());
    let args = ["twin-serve", "--scenario", &scenario, "--namespace", NS, "--speed", "1"];
    let args: Vec<&str> = args.into_iter().chain(["--targets-file", &targets, "--ip-base", "127.38.0.0"]).collect();
    stack.spawn("twin", &args, &[]);
    let record_root = stack.path("records");
    let root = record_root.display().to_string();
    let addr = format!("127.0.0.1:{}", free_port());
    spawn_operator(&mut stack, "operator", &addr, &root);
    stack.kubectl(&["apply", "-f", "-"], Some(&workload_yaml()));
    let dir = workload_dir(&record_root, &format!("{NS}/{WORKLOAD}"));

    // Both replicas serve; windows after that (and one more) measure the full rate.
    let ready_deadline = Instant::now() + Duration::from_secs(90);
    while e2e_support::ready_total(&client, NS, WORKLOAD).await < 2 {
        assert!(Instant::now() < ready_deadline, "replicas not ready\n{}", tail(&stack.log("operator")));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_windows(&dir, 1, Duration::from_secs(60), &stack, "operator").await;
    let first_full = windows(&dir).len() + 1;
    wait_windows(&dir, first_full + 3, Duration::from_secs(60), &stack, "operator").await;

    // The recording's cost per tick, from the operator's own metrics.
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("operator /metrics").text().await.unwrap();
    let rec_sum = sample_value(&text, "llmos_record_duration_seconds_sum").unwrap_or(f64::NAN);
    let rec_n = sample_value(&text, "llmos_record_duration_seconds_count").unwrap_or(0.0);
    let rec_sum_reconcile = sample_value(&text, "llmos_reconcile_duration_seconds_sum").unwrap_or(f64::NAN);
    let rec_n_reconcile = sample_value(&text, "llmos_reconcile_duration_seconds_count").unwrap_or(0.0);
    let handed =
        text.lines().find(|l| l.starts_with("llmos_record_windows_total{result=\"handed\"}")).map(str::to_string);
    assert!(handed.is_some(), "no llmos_record_windows_total{{result=\"handed\"}} in /metrics");
    assert!(rec_n > 0.0, "llmos_record_duration_seconds was never observed");

    // SIGKILL mid-run, just after reading: nothing read before is lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = windows(&dir);
    stack.kill("operator");
    let after = read_dir(&dir).expect("the store reads after SIGKILL");
    assert!(
        after.windows.len() >= before.len(),
        "windows lost: {} before the kill, {} after",
        before.len(),
        after.windows.len()
    );
    assert_eq!(&after.windows[..before.len()], &before[..], "windows changed by the kill");
    assert!(
        after.warnings.len() <= 1 && after.warnings.iter().all(|w| w.contains("torn last line")),
        "{:?}",
        after.warnings
    );

    // A restarted operator recovers the open segment and appends after it.
    spawn_operator(&mut stack, "operator2", &addr, &root);
    wait_windows(&dir, after.windows.len() + 2, Duration::from_secs(60), &stack, "operator2").await;
    let all = read_dir(&dir).expect("the store reads after the restart");
    assert!(all.warnings.is_empty(), "{:?}", all.warnings);
    assert!(segments(&dir).expect("segments").iter().any(|s| s.sealed), "the killed writer's segment was not sealed");
    for w in all.windows.windows(2) {
        assert!(w[1].start_unix_s >= w[0].end_unix_s() - 1e-6, "overlapping windows {:?} and {:?}", w[0], w[1]);
    }
    let rec_log = stack.log("operator2");
    stack.kill("operator2");
    check_rates(&all.windows, &rec_log);
    let summary = format!(
        "e2e_record: {} windows; recording {:.1} us per tick ({rec_n} ticks), reconcile {:.2} ms mean ({rec_n_reconcile}); {}; wall {:.0} s",
        all.windows.len(),
        rec_sum / rec_n * 1e6,
        rec_sum_reconcile / rec_n_reconcile * 1e3,
        handed.unwrap_or_default(),
        t_all.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_record_summary.txt"), summary);
}

/// The windows recorded while both replicas served, the first of them left out (it may
/// have started before the second replica's first request), against the scenario.
fn check_rates(all: &[llmos::learning::record::TrafficWindow], log: &str) {
    let ready = |w: &llmos::learning::record::TrafficWindow| w.fleet.iter().map(|s| s.ready).sum::<u32>();
    let first = all.iter().position(|w| ready(w) == 2).expect("a window with both replicas ready");
    let full: Vec<_> = all[first + 1..].iter().filter(|w| ready(w) == 2).collect();
    assert!(full.len() >= 4, "only {} windows after both replicas served: {all:?}", full.len());
    let (n, t): (f64, f64) = full.iter().fold((0.0, 0.0), |(n, t), w| (n + w.arrivals, t + w.duration_s));
    let rate = n / t;
    eprintln!(
        "recorded {n} arrivals over {t:.1} s: {rate:.2} rps (scenario {RATE_RPS}); per window {:?}",
        full.iter().map(|w| (w.arrival_rate_rps * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    assert!((rate / RATE_RPS - 1.0).abs() <= 0.12, "recorded rate {rate:.2} rps vs {RATE_RPS}\n{}", tail(log));
    for w in &full {
        assert!((w.arrival_rate_rps / RATE_RPS - 1.0).abs() <= 0.5, "window rate {:.2} rps: {w:?}", w.arrival_rate_rps);
    }
    let mut prompt = llmos::learning::record::TokenHistogram::default();
    let mut generation = llmos::learning::record::TokenHistogram::default();
    for w in &full {
        assert!(
            w.prompt_tokens.total() > 0.0 && w.generation_tokens.total() > 0.0,
            "a window without token histograms: {w:?}"
        );
        prompt.merge(&w.prompt_tokens).expect("same buckets");
        generation.merge(&w.generation_tokens).expect("same buckets");
    }
    let (pm, gm) = (prompt.mean().unwrap_or(0.0), generation.mean().unwrap_or(0.0));
    eprintln!("token means: prompt {pm:.0} (scenario 1024), output {gm:.0} (scenario 256)");
    assert!((pm / 1024.0 - 1.0).abs() <= 0.2, "prompt mean {pm}");
    assert!((gm / 256.0 - 1.0).abs() <= 0.2, "output mean {gm}");
}
