//! `llmos vllm-sim`, the simulated vLLM replica of the simulated-vLLM image, as a process:
//! readiness only after the simulated weights load, OpenAI-style completions answered
//! when the twin's engine finishes them, vLLM's metrics consistent with what was served,
//! vLLM's errors for bad requests, and a SIGTERM drain that finishes the requests in
//! flight and refuses new ones. Nothing here asserts on wall-clock speed: the engine's
//! simulated latencies are checked against each other, never against a timer.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmos::metrics::scrape::parse_exposition;
use llmos::metrics::vllm::Field;

struct Sim {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start(extra: &[&str]) -> Sim {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let log = dir.join("vllm-sim.log");
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_llmos"))
        .args(["vllm-sim", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting llmos vllm-sim");
    Sim { child, base: format!("http://127.0.0.1:{port}"), log }
}

async fn status_of(c: &reqwest::Client, url: &str) -> Option<u16> {
    c.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// Polls `/health` until it answers `code` (or panics after 60 s with the log).
async fn wait_health(c: &reqwest::Client, sim: &Sim, code: u16) -> Vec<Option<u16>> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let s = status_of(c, &format!("{}/health", sim.base)).await;
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        if s == Some(code) {
            return seen;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "/health never answered {code}: {seen:?}\n{}", sim.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn complete(c: &reqwest::Client, base: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = c.post(format!("{base}/v1/completions")).json(&body).send().await.expect("completion request");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_replica_loads_serves_counts_and_refuses_like_vllm() {
    let sim = start(&["--load-seconds", "1.5", "--max-num-seqs", "64"]);
    let c = reqwest::Client::new();
    // Not Ready until the simulated weights are loaded (503), then Ready (200).
    let seen = wait_health(&c, &sim, 200).await;
    assert!(seen.contains(&Some(503)), "/health must say 503 while loading: {seen:?}");
    let models: serde_json::Value =
        c.get(format!("{}/v1/models", sim.base)).send().await.expect("models").json().await.expect("models JSON");
    assert_eq!(models["data"][0]["id"], "llama-3-8b");

    // 12 concurrent completions of 100 prompt tokens and 32 output tokens.
    let prompt = "x".repeat(400);
    let reqs = (0..12).map(|_| {
        let c = c.clone();
        let base = sim.base.clone();
        let body = serde_json::json!({"model": "llama-3-8b", "prompt": prompt, "max_tokens": 32});
        tokio::spawn(async move { complete(&c, &base, body).await })
    });
    let mut done = Vec::new();
    for r in reqs {
        done.push(r.await.expect("request task"));
    }
    for (code, v) in &done {
        assert_eq!(*code, 200, "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], 100);
        assert_eq!(v["usage"]["completion_tokens"], 32);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let (q, ttft, e2e) =
            (v["llmos_sim"]["queue_s"].as_f64(), v["llmos_sim"]["ttft_s"].as_f64(), v["llmos_sim"]["e2e_s"].as_f64());
        let (q, ttft, e2e) = (q.expect("queue_s"), ttft.expect("ttft_s"), e2e.expect("e2e_s"));
        assert!(0.0 <= q && q <= ttft && ttft < e2e, "simulated timings out of order: {v}");
        // 31 decode steps after the first token: each takes at least a millisecond on an A100.
        assert!(e2e - ttft > 31.0 * 1e-3, "decode of 32 tokens too fast to be a model: {v}");
    }

    // vLLM's metrics say what was served.
    let text = c.get(format!("{}/metrics", sim.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(text.contains("vllm:num_requests_running{model_name=\"llama-3-8b\"}"), "{text}");
    let s = parse_exposition(&text);
    assert_eq!(s.counters.get(&Field::RequestSuccess), Some(&12.0), "{text}");
    assert_eq!(s.counters.get(&Field::PromptTokens), Some(&1200.0));
    assert_eq!(s.counters.get(&Field::GenerationTokens), Some(&384.0));
    assert_eq!(s.gauges.get(&Field::RunningRequests), Some(&0.0));
    let ttft = s.histograms.get(&Field::TimeToFirstToken).expect("TTFT histogram");
    assert_eq!(ttft.total(), 12.0);

    // vLLM's 400s, naming what is wrong.
    for (body, says) in [
        (serde_json::json!({"prompt": "hi", "max_tokens": 0}), "max_tokens"),
        (serde_json::json!({"model": "gpt-4", "prompt": "hi"}), "model"),
        (serde_json::json!({"max_tokens": 4}), "prompt"),
        (serde_json::json!({"prompt": [1, 2, 3], "max_tokens": 1_000_000}), "maximum context length"),
    ] {
        let (code, v) = complete(&c, &sim.base, body.clone()).await;
        assert_eq!(code, 400, "{body} -> {v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains(says)), "{body} -> {v}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_requests_in_flight_refuses_new_ones_and_exits_0() {
    let mut sim = start(&["--load-seconds", "0", "--drain-timeout-seconds", "60"]);
    let c = reqwest::Client::new();
    wait_health(&c, &sim, 200).await;
    // Five long requests (about 2-3 s of decoding each on the simulated A100).
    let long = (0..5)
        .map(|_| {
            let c = c.clone();
            let base = sim.base.clone();
            tokio::spawn(async move {
                complete(&c, &base, serde_json::json!({"prompt": "y".repeat(800), "max_tokens": 200})).await
            })
        })
        .collect::<Vec<_>>();
    // Until the engine runs all five.
    let t0 = Instant::now();
    loop {
        let text = c.get(format!("{}/metrics", sim.base)).send().await.expect("metrics").text().await.expect("text");
        if parse_exposition(&text).gauges.get(&Field::RunningRequests) == Some(&5.0) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the five requests never ran together:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = sim.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    // Draining: not Ready, and a new request is refused (503) or finds the port closed.
    wait_health(&c, &sim, 503).await;
    let refused = c
        .post(format!("{}/v1/completions", sim.base))
        .json(&serde_json::json!({"prompt": "z", "max_tokens": 4}))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(refused, Ok(503) | Err(_)), "a request during the drain: {refused:?}");
    for r in long {
        let (code, v) = r.await.expect("request task");
        assert_eq!(code, 200, "a request in flight at SIGTERM must finish: {v}\n{}", sim.log());
        assert_eq!(v["usage"]["completion_tokens"], 200);
    }
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = sim.child.try_wait().expect("wait") {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "vllm-sim did not exit after draining:\n{}", sim.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}\n{}", sim.log());
    assert!(sim.log().contains("drained; exiting"), "{}", sim.log());
}
