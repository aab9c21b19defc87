//! `llmos vllm-sim`: one simulated vLLM replica behind vLLM's HTTP surface, the
//! entrypoint of the simulated-vLLM image that runs as a real Pod on a real node.
//!
//! `twin-serve` simulates whole fleets and plays the kubelet; this command is one pod's
//! engine and nothing else, so the kubelet, kube-scheduler, Services and Prometheus of a
//! real node see what a vLLM pod would show them:
//!
//! - **Engine**: the twin's [`Engine`] (continuous batching, KV cache, chunked prefill,
//!   the roofline iteration times of the model on the GPU) for the model and GPU given by
//!   flags (`--model`, `--gpu`, `--tensor-parallel-size`, engine limits) or by a scenario's
//!   first slot (`--scenario`), run in wall-clock time times `--speed`.
//! - **`POST /v1/completions`**: an OpenAI-style completion. The prompt's token count is
//!   its length for a token array, else its UTF-8 bytes / 4 (a stated approximation: no
//!   tokenizer ships with a simulation); `max_tokens` tokens are generated (as vLLM's
//!   benchmarks run with `ignore_eos`). The answer comes when the simulated request
//!   finishes, with `usage` and, under `llmos_sim`, its simulated queue time, TTFT and
//!   end-to-end latency. No streaming: a client measures TTFT from `/metrics` or
//!   `llmos_sim`. A request longer than the engine accepts gets vLLM's 400.
//! - **`GET /metrics`**: the engine's counters, gauges and histograms with vLLM's names
//!   (`vllm:num_requests_running`, `vllm:time_to_first_token_seconds`, ...), labelled
//!   with `model_name` as vLLM labels them. Times are simulated seconds.
//! - **`GET /health`** (the readiness probe the operator's Deployments use) answers 503
//!   until the simulated weights are loaded (`--load-seconds` of wall time, default the
//!   slot's cold start divided by `--speed`), 200 while serving, 503 again while draining;
//!   `GET /v1/models` lists the served model.
//! - **SIGTERM** (what the kubelet sends a pod being deleted): new requests get 503,
//!   requests in flight finish, then the process exits 0 (or after
//!   `--drain-timeout-seconds`, leaving the rest unanswered, and exits 1).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::exposition::render;
use crate::metrics::vllm::LABEL_MODEL_NAME;
use crate::twin::engine::{Engine, Finished, Seq};
use crate::twin::fleet::Fleet;
use crate::twin::time::Nanos;
use crate::twin::Scenario;

/// Arguments of `llmos vllm-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct VllmSimArgs {
    /// Catalog model to serve (e.g. `llama-3-8b`); ignored with `--scenario`.
    #[arg(long, default_value = "llama-3-8b")]
    pub model: String,
    /// Catalog GPU type (e.g. `A100-80GB`, `H100-SXM`); ignored with `--scenario`.
    #[arg(long, default_value = "A100-80GB")]
    pub gpu: String,
    /// GPUs per replica (tensor parallelism).
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel_size: u32,
    /// vLLM's `--max-num-seqs`.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: u32,
    /// vLLM's `--max-num-batched-tokens`.
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: u32,
    /// Take model, GPU and engine settings from this scenario's first slot instead.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// The model name clients send and `/v1/models` lists (vLLM's `--served-model-name`;
    /// default the model).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Wall seconds until the simulated weights are loaded (default: the slot's cold
    /// start divided by `--speed`).
    #[arg(long)]
    pub load_seconds: Option<f64>,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Longest wait for requests in flight after SIGTERM, wall seconds.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout_seconds: f64,
}

/// A request for the engine task: prompt and output tokens, and where to answer.
struct Job {
    input: u32,
    output: u32,
    reply: oneshot::Sender<Finished>,
}

/// What the HTTP handlers ask of the engine task.
enum Msg {
    /// A completion to run.
    Job(Job),
    /// The engine's metrics, rendered when asked (not after every iteration).
    Metrics(oneshot::Sender<String>),
}

/// What the HTTP handlers share.
struct Shared {
    model: String,
    max_len: u64,
    loaded_at: Instant,
    draining: AtomicBool,
    in_flight: AtomicU64,
    next_id: AtomicU64,
    jobs: mpsc::Sender<Msg>,
}

/// Runs `llmos vllm-sim` until SIGTERM/SIGINT.
pub fn run(args: VllmSimArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .try_init();
    anyhow::ensure!(args.speed.is_finite() && args.speed > 0.0, "--speed must be > 0, got {}", args.speed);
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p).with_context(|| format!("loading scenario {}", p.display()))?,
        None => Scenario::from_toml_str(&scenario_toml(&args), "vllm-sim flags")
            .context("--model, --gpu, --tensor-parallel-size or the engine limits")?,
    };
    let fleet = Fleet::build(&scenario)?;
    let slot = fleet.slots.first().context("the scenario has no (variant, pool) slot")?;
    anyhow::ensure!(
        slot.blocks > 0,
        "model {} does not fit {} GPU(s) of the pool: no KV cache",
        slot.model,
        slot.gpus_per_replica
    );
    let engine = Engine::new(scenario.file.engine.clone(), slot.perf.clone(), slot.blocks);
    let load_s = args.load_seconds.unwrap_or(slot.cold_start.as_secs_f64() / args.speed);
    anyhow::ensure!(load_s.is_finite() && load_s >= 0.0, "--load-seconds must be >= 0, got {load_s}");
    let model = args.served_model_name.clone().unwrap_or_else(|| slot.model.clone());
    let (tx, rx) = mpsc::channel(4096);
    let shared = Arc::new(Shared {
        model: model.clone(),
        max_len: slot.max_len,
        loaded_at: Instant::now() + Duration::from_secs_f64(load_s),
        draining: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
        jobs: tx,
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(serve(args, shared, engine, rx, model, load_s))
}

/// The scenario `--model`/`--gpu`/engine flags describe: one variant on one pool.
fn scenario_toml(a: &VllmSimArgs) -> String {
    format!(
        r#"name = "vllm-sim"
[workload.synthetic]
duration_s = 1.0
arrival = {{ kind = "steps", at_s = [0.0], rates_rps = [1.0] }}
lengths = {{ kind = "lognormal", input_mean = 512.0, input_cv = 0.5, output_mean = 128.0, output_cv = 0.5, max_tokens = 4096 }}
[engine]
max_num_seqs = {seqs}
max_num_batched_tokens = {tokens}
[spec]
variants = [{{ name = "sim", model = "{model}", image = "llmos-vllm-sim", gpusPerReplica = {tp}, minReplicas = 1, maxReplicas = 1 }}]
gpuPools = [{{ name = "pool", gpuType = "{gpu}", pricePerGpuHour = 1.0 }}]
policy = {{ kind = "static", intervalSeconds = 10 }}
"#,
        seqs = a.max_num_seqs,
        tokens = a.max_num_batched_tokens,
        model = a.model.replace('"', ""),
        tp = a.tensor_parallel_size,
        gpu = a.gpu.replace('"', ""),
    )
}

async fn serve(
    args: VllmSimArgs,
    shared: Arc<Shared>,
    engine: Engine,
    rx: mpsc::Receiver<Msg>,
    model: String,
    load_s: f64,
) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, model = %model, load_s, speed = args.speed, "vllm-sim listening; loading simulated weights");
    let engine_task = tokio::spawn(drive(engine, rx, shared.clone(), args.speed));
    let app = router(shared.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    shutdown_signal().await;
    shared.draining.store(true, Ordering::SeqCst);
    let n = shared.in_flight.load(Ordering::SeqCst);
    tracing::info!(in_flight = n, "SIGTERM: draining (new requests get 503)");
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(args.drain_timeout_seconds.max(0.0));
    while shared.in_flight.load(Ordering::SeqCst) > 0 && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.in_flight.load(Ordering::SeqCst);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    engine_task.abort();
    anyhow::ensure!(left == 0, "drain timed out with {left} requests in flight");
    tracing::info!(drain_s = t0.elapsed().as_secs_f64(), "drained; exiting");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The engine task: simulated time is wall time since start × `speed`; iterations run on
/// the simulated timeline, arrivals join it when they come.
async fn drive(mut engine: Engine, mut rx: mpsc::Receiver<Msg>, shared: Arc<Shared>, speed: f64) {
    let start = Instant::now();
    let sim_now = || Nanos::from_secs_f64(start.elapsed().as_secs_f64() * speed);
    let wall_of = |t: Nanos| start + Duration::from_secs_f64(t.as_secs_f64() / speed);
    let mut waiting: HashMap<u64, oneshot::Sender<Finished>> = HashMap::new();
    let mut iter_end: Option<Nanos> = None;
    let mut finished = Vec::new();
    let mut id = 0u64;
    loop {
        let wake = iter_end.map(|e| tokio::time::Instant::from_std(wall_of(e)));
        tokio::select! {
            msg = rx.recv() => {
                let job = match msg {
                    None => break,
                    Some(Msg::Metrics(reply)) => {
                        let _ = reply.send(render(&engine.sample(), &[(LABEL_MODEL_NAME, shared.model.as_str())]));
                        continue;
                    }
                    Some(Msg::Job(job)) => job,
                };
                let now = sim_now();
                engine.enqueue(Seq::new(id, now, job.input, job.output, Vec::new()));
                waiting.insert(id, job.reply);
                id += 1;
                iter_end = match iter_end {
                    Some(_) => engine.interrupt(now).or(iter_end),
                    None => engine.start_iteration(now),
                };
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                let Some(end) = iter_end else { continue };
                engine.finish_iteration(end, &mut finished);
                for f in finished.drain(..) {
                    if let Some(reply) = waiting.remove(&f.id) {
                        let _ = reply.send(f);
                    }
                }
                iter_end = engine.start_iteration(end);
            }
        }
    }
}

fn router(shared: Arc<Shared>) -> axum::Router {
    let (s1, s2, s3, s4) = (shared.clone(), shared.clone(), shared.clone(), shared);
    axum::Router::new()
        .route("/health", axum::routing::get(move || health(s1.clone())))
        .route("/metrics", axum::routing::get(move || metrics(s2.clone())))
        .route("/v1/models", axum::routing::get(move || models(s3.clone())))
        .route("/v1/completions", axum::routing::post(move |body: String| completion(s4.clone(), body)))
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// An OpenAI-style error body.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    json(status, serde_json::json!({"object": "error", "type": kind, "message": message, "code": status.as_u16()}))
}

async fn health(s: Arc<Shared>) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
    } else if Instant::now() < s.loaded_at {
        text(StatusCode::SERVICE_UNAVAILABLE, "loading simulated weights\n".into())
    } else {
        text(StatusCode::OK, String::new())
    }
}

async fn metrics(s: Arc<Shared>) -> Response {
    let (tx, rx) = oneshot::channel();
    let body = match s.jobs.send(Msg::Metrics(tx)).await {
        Ok(()) => rx.await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn models(s: Arc<Shared>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({"object": "list", "data": [{"id": s.model, "object": "model", "owned_by": "llmos-vllm-sim"}]}),
    )
}

/// Prompt and output tokens of a completion request, or what is wrong with it.
pub fn parse_completion(body: &str, model: &str) -> Result<(u32, u32), String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("request body is not JSON: {e}"))?;
    if let Some(m) = v.get("model").and_then(|m| m.as_str()) {
        if m != model {
            return Err(format!("model: {m:?} is not served here (serving {model:?})"));
        }
    }
    let input = match v.get("prompt") {
        Some(serde_json::Value::String(s)) => (s.len() as u32).div_ceil(4).max(1),
        Some(serde_json::Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.is_u64()) => a.len() as u32,
        Some(_) => return Err("prompt: expected a string or an array of token ids".into()),
        None => return Err("prompt: missing".into()),
    };
    let output = match v.get("max_tokens") {
        None => 16,
        Some(x) => match x.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            _ => return Err(format!("max_tokens: expected an integer from 1 to 1000000, got {x}")),
        },
    };
    if v.get("stream").and_then(|s| s.as_bool()) == Some(true) {
        return Err("stream: streaming is not simulated; send stream=false".into());
    }
    Ok((input, output))
}

async fn completion(s: Arc<Shared>, body: String) -> Response {
    if s.draining.load(Ordering::SeqCst) || Instant::now() < s.loaded_at {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "not serving (loading or draining)".into(),
        );
    }
    let (input, output) = match parse_completion(&body, &s.model) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequestError", e),
    };
    if input as u64 + output as u64 > s.max_len {
        let msg = format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens ({input} in the prompt, {output} for the completion).",
            s.max_len,
            input as u64 + output as u64
        );
        return error(StatusCode::BAD_REQUEST, "BadRequestError", msg);
    }
    let (tx, rx) = oneshot::channel();
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let sent = s.jobs.send(Msg::Job(Job { input, output, reply: tx })).await.is_ok();
    let done = if sent { rx.await.ok() } else { None };
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let Some(f) = done else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "the engine stopped".into());
    };
    let n = s.next_id.fetch_add(1, Ordering::SeqCst);
    let secs = |a: Nanos, b: Nanos| b.since(a).as_secs_f64();
    json(
        StatusCode::OK,
        serde_json::json!({
            "id": format!("cmpl-sim-{n}"),
            "object": "text_completion",
            "model": s.model,
            "choices": [{"index": 0, "text": " tok".repeat(f.output as usize), "finish_reason": "length"}],
            "usage": {"prompt_tokens": f.input, "completion_tokens": f.output, "total_tokens": f.input + f.output},
            "llmos_sim": {
                "queue_s": secs(f.arrival, f.first_sched),
                "ttft_s": secs(f.arrival, f.first_token),
                "e2e_s": secs(f.arrival, f.finish),
                "preemptions": f.preemptions,
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_requests_are_checked_field_by_field() {
        assert_eq!(parse_completion(r#"{"prompt": "abcdefgh", "max_tokens": 7}"#, "m"), Ok((2, 7)));
        assert_eq!(parse_completion(r#"{"model": "m", "prompt": [1, 2, 3]}"#, "m"), Ok((3, 16)));
        for (body, field) in [
            ("not json", "not JSON"),
            (r#"{"max_tokens": 3}"#, "prompt: missing"),
            (r#"{"prompt": 5}"#, "prompt: expected"),
            (r#"{"prompt": "x", "max_tokens": 0}"#, "max_tokens"),
            (r#"{"prompt": "x", "max_tokens": -3}"#, "max_tokens"),
            (r#"{"model": "other", "prompt": "x"}"#, "model"),
            (r#"{"prompt": "x", "stream": true}"#, "stream"),
        ] {
            let e = parse_completion(body, "m").unwrap_err();
            assert!(e.contains(field), "{body}: {e}");
        }
    }

    #[test]
    fn the_flags_make_a_scenario_with_one_slot() {
        let args = VllmSimArgs {
            model: "llama-3-8b".into(),
            gpu: "A100-80GB".into(),
            tensor_parallel_size: 1,
            max_num_seqs: 64,
            max_num_batched_tokens: 4096,
            scenario: None,
            served_model_name: None,
            host: "127.0.0.1".parse().unwrap(),
            port: 0,
            load_seconds: None,
            speed: 1.0,
            drain_timeout_seconds: 1.0,
        };
        let sc = Scenario::from_toml_str(&scenario_toml(&args), "test").expect("scenario");
        let fleet = Fleet::build(&sc).expect("fleet");
        assert_eq!(fleet.slots.len(), 1);
        assert!(fleet.slots[0].blocks > 0 && fleet.slots[0].max_len > 0);
        let bad = VllmSimArgs { gpu: "NO-SUCH-GPU".into(), ..args };
        let e = Scenario::from_toml_str(&scenario_toml(&bad), "test").and_then(|s| Fleet::build(&s).map(|_| ()));
        assert!(e.is_err_and(|e| e.to_string().contains("NO-SUCH-GPU")));
    }
}
