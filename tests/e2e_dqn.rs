//! The operator end to end with `policy: dqn`: the same real components as
//! `tests/e2e_operator.rs` (etcd + kube-apiserver 1.20 + kube-controller-manager,
//! Prometheus, `llmos twin-serve` as the data plane, `llmos run`), with a small DQN
//! checkpoint trained by the test itself.
//!
//! 1. A DQN is trained in the twin with the library (`llmos::rl::train`, a few hundred
//!    control ticks, seconds) on the same scenario file twin-serve replays, whose `[spec]`
//!    has the applied workload's layout (one variant on one pool), and written to a temp
//!    directory.
//! 2. Three LLMWorkloads reference that checkpoint:
//!    - `chat-dqn` (active): the operator loads it (`PolicyReady=True`), decides with it
//!      (`status.lastDecision.policy == "dqn"`, a reason starting `dqn:`), keeps every
//!      decision and Deployment within the workload's limits (the shield), and keeps
//!      deciding through the tenfold load step. Whether it scales up on the step is
//!      printed, not asserted: a DQN trained for seconds is not expected to be good.
//!    - `chat-shadow` (shadow mode): decisions are recorded in `status.shadowDecision`
//!      with policy `dqn` and never applied (its Deployment stays at its initial size).
//!    - `chat-mismatch`: a variant name the checkpoint was not trained for: the layout
//!      check refuses it, `PolicyReady=False` with a message naming the mismatch, and the
//!      replicas are held.
//! 3. The decision pages (`/decisions` on the metrics port) show every workload's ticks:
//!    the DQN's Q-values per branch, the shadow policy's would-be decisions, the held
//!    workload never asked; the page renders in headless Chromium (Debian's package) and
//!    its screenshot is what docs/operator.md shows. Every Warning Event not raised by
//!    llmos is one docs/e2e.md explains.
//!
//! twin-serve runs at `--speed 1` here (the tick of the trained DQN is the live tick, and
//! the rates Prometheus computes are the simulated ones), with a short cold start.
//! Needs what `e2e_operator` needs; `LLMOS_SKIP_E2E=1` skips. Deadlines are generous and
//! polled; nothing asserts on wall-clock speed.

mod e2e_support;

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::Api;
use llmos::crd::{LLMWorkload, LLMWorkloadStatus};

use e2e_support::{
    check_event_noise, chromium, desired_total, docs_figure, dqn_scenario, free_port, headless_chromium,
    missing_prerequisites, skip_requested, tail, train_tiny_dqn, wait_until, Stack,
};

const NS: &str = "default";
const ACTIVE: &str = "chat-dqn";
const SHADOW: &str = "chat-shadow";
const MISMATCH: &str = "chat-mismatch";
const INTERVAL_S: u64 = 2;
const MIN_TOTAL: i32 = 1;
const MAX_TOTAL: i32 = 6;
/// Simulated (= wall, at --speed 1) second of the tenfold load step.
const STEP_AT_S: f64 = 20.0;

fn workload_yaml(name: &str, variant: &str, mode: &str, checkpoint: &Path, prom_url: &str) -> String {
    assert_eq!((MIN_TOTAL, MAX_TOTAL), (1, 6), "the shared workload has 1..=6 replicas");
    e2e_support::StepWorkload {
        name,
        namespace: NS,
        variant,
        cold_start_s: Some(10),
        scale_down_cooldown_s: 4,
        prom_url,
        policy_block: format!(
            "    kind: dqn\n    mode: {mode}\n    intervalSeconds: {INTERVAL_S}\n    dqn: {{checkpoint: \"{}\"}}\n",
            checkpoint.display()
        ),
    }
    .yaml()
}

async fn status(api: &Api<LLMWorkload>, name: &str) -> LLMWorkloadStatus {
    api.get(name).await.ok().and_then(|w| w.status).unwrap_or_default()
}

fn condition<'a>(st: &'a LLMWorkloadStatus, type_: &str) -> Option<&'a llmos::crd::Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_end_to_end_with_a_trained_dqn() {
    if skip_requested() {
        eprintln!("LLMOS_SKIP_E2E=1: skipping the end-to-end DQN test");
        return;
    }
    let mut missing = missing_prerequisites(true);
    if chromium().is_none() {
        missing.push("chromium (apt-get install chromium)".into());
    }
    assert!(missing.is_empty(), "end-to-end prerequisites missing (set LLMOS_SKIP_E2E=1 to skip): {missing:?}");
    let t_all = Instant::now();

    // --- control plane, CRD, Prometheus ---
    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    stack.start_prometheus();
    let prom_url = format!("http://127.0.0.1:{}", stack.prom_port);

    // --- 1. train the checkpoint on the scenario twin-serve will replay ---
    std::fs::write(stack.path("scenario.toml"), dqn_scenario()).expect("scenario file");
    let scenario = stack.path("scenario.toml");
    let ckpt = stack.path("ckpt");
    let (sc, ck) = (scenario.clone(), ckpt.clone());
    let summary = tokio::task::spawn_blocking(move || train_tiny_dqn(&sc, &ck)).await.expect("training task");
    eprintln!(
        "trained {} env steps, {} updates, {} episodes in {:.1} s",
        summary.env_steps, summary.updates, summary.episodes, summary.wall_s
    );
    assert!(ckpt.join("model.safetensors").exists() && ckpt.join("checkpoint.json").exists(), "no checkpoint written");

    // --- twin and operator ---
    let targets = stack.path("targets.json").display().to_string();
    let scenario_s = scenario.display().to_string();
    stack.spawn(
        "twin",
        &[
            "twin-serve",
            "--scenario",
            &scenario_s,
            "--namespace",
            NS,
            "--speed",
            "1",
            "--targets-file",
            &targets,
            "--ip-base",
            "127.35.0.0",
        ],
        &[],
    );
    let op_addr = format!("127.0.0.1:{}", free_port());
    stack.spawn(
        "operator",
        &["run", "--metrics-addr", &op_addr, "--no-leader-election"],
        &[("LLMOS_PROMETHEUS_URL", &prom_url)],
    );
    let logs = ["operator", "twin"];

    // --- 2. apply the three workloads ---
    let mut yaml = workload_yaml(ACTIVE, "llama3-8b", "active", &ckpt, &prom_url);
    yaml.push_str("---\n");
    yaml.push_str(&workload_yaml(SHADOW, "llama3-8b", "shadow", &ckpt, &prom_url));
    yaml.push_str("---\n");
    yaml.push_str(&workload_yaml(MISMATCH, "llama3-8b-v2", "active", &ckpt, &prom_url));
    stack.kubectl(&["apply", "-f", "-"], Some(&yaml));
    let t0 = Instant::now();
    let wl: Api<LLMWorkload> = Api::namespaced(client.clone(), NS);

    // The checkpoint loads for the matching layout.
    wait_until(
        "PolicyReady=True on the dqn workload",
        Duration::from_secs(60),
        || async { condition(&status(&wl, ACTIVE).await, "PolicyReady").is_some_and(|c| c.status == "True") },
        &stack,
        &logs,
    )
    .await;
    let ready = status(&wl, ACTIVE).await;
    let msg = condition(&ready, "PolicyReady").map(|c| c.message.clone()).unwrap_or_default();
    assert!(msg.contains("dqn"), "PolicyReady message does not name the policy: {msg}");

    // A checkpoint for another layout is refused, naming the difference.
    wait_until(
        "PolicyReady=False on the mismatched workload",
        Duration::from_secs(60),
        || async { condition(&status(&wl, MISMATCH).await, "PolicyReady").is_some_and(|c| c.status == "False") },
        &stack,
        &logs,
    )
    .await;
    let st = status(&wl, MISMATCH).await;
    let c = condition(&st, "PolicyReady").expect("condition");
    eprintln!("mismatch: {}: {}", c.reason, c.message);
    assert_eq!(c.reason, "PolicyBuildFailed");
    assert!(c.message.contains(&ckpt.display().to_string()), "message does not name the checkpoint: {}", c.message);
    assert!(
        c.message.contains("does not match the workload")
            && c.message.contains("slot[llama3-8b/a100]")
            && c.message.contains("slot[llama3-8b-v2/a100]"),
        "message does not name the layout mismatch: {}",
        c.message
    );

    // --- 3. decisions through the load step ---
    wait_until(
        "a dqn decision in status.lastDecision",
        Duration::from_secs(90),
        || async { status(&wl, ACTIVE).await.last_decision.is_some_and(|d| d.policy == "dqn") },
        &stack,
        &logs,
    )
    .await;
    let mut series: Vec<(f64, i32)> = Vec::new();
    let mut decisions: Vec<(String, String, i32)> = Vec::new(); // (time, reason, total)
    let observe_until = Duration::from_secs_f64(STEP_AT_S + 50.0);
    while t0.elapsed() < observe_until {
        let total = desired_total(&client, NS, ACTIVE).await;
        if total >= 0 {
            assert!(
                (MIN_TOTAL..=MAX_TOTAL).contains(&total),
                "Deployments outside the limits [{MIN_TOTAL}, {MAX_TOTAL}]: {total}"
            );
            series.push((t0.elapsed().as_secs_f64(), total));
        }
        if let Some(d) = status(&wl, ACTIVE).await.last_decision {
            assert_eq!(d.policy, "dqn", "decision by another policy: {d:?}");
            assert!(d.reason.starts_with("dqn:"), "reason does not come from the dqn: {:?}", d.reason);
            let t: i32 = d.targets.iter().map(|x| x.replicas as i32).sum();
            assert!((MIN_TOTAL..=MAX_TOTAL).contains(&t), "decision outside the limits: {d:?}");
            assert!(
                d.targets.iter().all(|x| x.replicas <= 6 && x.variant == "llama3-8b" && x.pool == "a100"),
                "bad targets: {d:?}"
            );
            if decisions.last().is_none_or(|l| l.0 != d.time) {
                decisions.push((d.time.clone(), d.reason.clone(), t));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(decisions.len() >= 5, "too few dqn decisions recorded: {decisions:?}\n{}", tail(&stack.log("operator")));
    let ready_after = condition(&status(&wl, ACTIVE).await, "PolicyReady").map(|c| c.status.clone());
    assert_eq!(ready_after.as_deref(), Some("True"));

    // The mismatched workload holds its initial replica; the shadow one records and never applies.
    assert_eq!(desired_total(&client, NS, MISMATCH).await, 1, "the workload without a usable policy must hold");
    let sh = status(&wl, SHADOW).await;
    let shadow = sh.shadow_decision.clone().unwrap_or_else(|| panic!("no shadow decision: {sh:?}"));
    assert_eq!(shadow.policy, "dqn");
    assert!(sh.last_decision.is_none(), "shadow mode applied a decision: {:?}", sh.last_decision);
    assert_eq!(desired_total(&client, NS, SHADOW).await, 1, "shadow mode changed replicas");

    // The operator's own metrics count the DQN's decisions.
    let text =
        reqwest::get(format!("http://{op_addr}/metrics")).await.expect("operator /metrics").text().await.expect("body");
    let n = e2e_support::sample_value(&text, "llmos_policy_decision_duration_seconds_count").unwrap_or(0.0);
    assert!(n >= 5.0, "llmos_policy_decision_duration_seconds_count = {n}");
    let overrides: Vec<&str> = text.lines().filter(|l| l.starts_with("llmos_shield_overrides_total")).collect();

    // --- 4. the decision pages, read as JSON and rendered in headless Chromium ---
    let pages = decision_pages(&op_addr, &stack).await;
    let noise = check_event_noise(&client, NS).await;
    eprintln!("{pages}; {noise}");

    let before: Vec<i32> = series.iter().filter(|s| s.0 < STEP_AT_S).map(|s| s.1).collect();
    let after_peak = series.iter().filter(|s| s.0 >= STEP_AT_S).map(|s| s.1).max().unwrap_or(0);
    let start = before.first().copied().unwrap_or(1);
    let summary = format!(
        "e2e dqn: {} decisions ({} policy evaluations in the operator); replicas before the step {before:?}, peak after the step {after_peak} ({}); shield overrides {overrides:?}; {pages}; {noise}; total wall time {:.0}s\ndecisions {decisions:?}\nseries {series:?}",
        decisions.len(),
        n,
        if after_peak > start { "scaled up on the step" } else { "did not scale up" },
        t_all.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_dqn_summary.txt"), summary);
}

/// The operator's decision pages: the index links the workloads; the active workload's
/// ticks carry the DQN's Q-values per branch with an allowed chosen option, and what
/// followed each tick but the last; the shadow workload's ticks say what it would have
/// done and applied nothing; the workload without a usable policy was never asked. The
/// active page renders in headless Chromium (its DOM has the plot and the table) and is
/// screenshotted (docs/operator.md shows the picture). Returns a summary line.
async fn decision_pages(op_addr: &str, stack: &Stack) -> String {
    let get = |path: String| async move {
        let r = reqwest::get(format!("http://{op_addr}{path}")).await.expect("operator HTTP");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.text().await.expect("body")
    };
    let index = get("/decisions".into()).await;
    for w in [ACTIVE, SHADOW, MISMATCH] {
        assert!(index.contains(&format!("href=\"/decisions/{NS}/{w}\"")), "index does not link {w}:\n{index}");
    }
    let entries = |w: &'static str| async move {
        let body = get(format!("/decisions/{NS}/{w}/json")).await;
        serde_json::from_str::<Vec<serde_json::Value>>(&body).expect("decision JSON")
    };
    let active = entries(ACTIVE).await;
    let asked: Vec<&serde_json::Value> = active.iter().filter(|e| !e["proposal"].is_null()).collect();
    assert!(asked.len() >= 5, "too few ticks with a proposal: {}", active.len());
    for e in &asked {
        let p = &e["proposal"];
        assert_eq!(p["policy"], "dqn", "{e}");
        let x = &p["explanation"];
        assert_eq!(x["score"], "q-value", "no Q-values: {e}");
        let b = &x["branches"][0];
        assert_eq!(b["name"], "replicas[llama3-8b/a100]", "{e}");
        let n = b["options"].as_array().map_or(0, |o| o.len());
        assert!(n >= 2 && b["scores"].as_array().map_or(0, |s| s.len()) == n, "{e}");
        let chosen = b["chosen"].as_u64().expect("chosen") as usize;
        assert_eq!(b["allowed"][chosen], true, "the chosen option was masked: {e}");
    }
    let followed = active.iter().filter(|e| !e["followed"].is_null()).count();
    assert_eq!(followed, active.len() - 1, "every tick but the last knows what followed");
    let shadow = entries(SHADOW).await;
    assert!(shadow.iter().any(|e| e["kind"] == "shadow"), "no shadow tick");
    for e in &shadow {
        assert_eq!(e["mode"], "shadow");
        let applied: u64 = e["applied"].as_array().map_or(0, |a| a.iter().filter_map(|t| t["replicas"].as_u64()).sum());
        assert_eq!(applied, 1, "shadow mode applied something: {e}");
    }
    let mismatch = entries(MISMATCH).await;
    assert!(mismatch.iter().all(|e| e["proposal"].is_null()), "a policy that cannot be built was asked");
    assert!(
        mismatch.iter().all(|e| e["heldBecause"].as_str().is_some_and(|w| w.contains("cannot be built"))),
        "the held ticks do not say why: {mismatch:?}"
    );

    let url = format!("http://{op_addr}/decisions/{NS}/{ACTIVE}");
    let dom = headless_chromium(&stack.path(""), &url, &["--dump-dom"]);
    assert!(
        dom.contains("<svg") && dom.contains("q-value") && dom.contains("class=\"chosen\""),
        "rendered page:\n{dom}"
    );
    let png = stack.path("decisions.png");
    let shot = format!("--screenshot={}", png.display());
    headless_chromium(&stack.path(""), &url, &[&shot, "--window-size=1280,1400"]);
    assert!(std::fs::metadata(&png).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot");
    docs_figure(&png, "decisions.png");
    format!(
        "decision pages: {} active ticks ({} asked), {} shadow, {} held",
        active.len(),
        asked.len(),
        shadow.len(),
        mismatch.len()
    )
}
