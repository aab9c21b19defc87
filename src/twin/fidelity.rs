//! The twin against published vLLM measurements.
//!
//! [`run_bench`] drives one engine the way vLLM's benchmark tools drive a server or the
//! offline `LLM` class: every request at once (`--request-rate inf`, `benchmark_throughput`),
//! one batch run to completion (`benchmark_latency`), Poisson arrivals (`--request-rate r`)
//! or `c` clients that each send their next request when the previous one returns
//! (`--max-concurrency c`). A server request is counted from the moment the client sends
//! it, so the engine's per-request cost ([`super::engine::Engine::front_s`]) is in its
//! TTFT; offline figures are measured from time zero, as the offline tools do.
//!
//! [`read_points`] loads `data/fidelity/points.csv`: published measurements with their
//! full configuration, each marked `fit` (used to choose the engine CPU costs, the
//! all-reduce and quantized GEMM constants) or `check` (only compared). [`evaluate`] runs
//! them and [`markdown`] writes the table of `docs/fidelity.md`.
//!
//! ShareGPT prompts are not shipped; their lengths are drawn from log-normal laws whose
//! means, after vLLM's filter (prompt 4..=1024 tokens, prompt + output ≤ 2048), are those of
//! a published 1,000-prompt run (229.7 prompt and 203.1 output tokens per request); see
//! [`sharegpt_lengths`]. Points that use them say `sharegpt` in their `lengths` column.

use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};

use super::catalog::Catalog;
use super::engine::{Engine, EngineConfig, Finished, Scheduler, Seq};
use super::perf::RooflinePerf;
use super::scenario::kv_blocks_for;
use super::time::Nanos;
use super::TwinError;

/// How requests reach the engine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Every request sent at time zero to a server (`--request-rate inf`).
    Burst,
    /// Every request given at time zero to the offline engine (`benchmark_throughput`,
    /// `benchmark_latency`); no HTTP or per-request cost.
    Offline,
    /// Poisson arrivals at this many requests per second.
    Poisson(f64),
    /// This many clients, each sending its next request when the previous one returned.
    Closed(u32),
}

/// Request lengths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lengths {
    /// Every request has this many prompt and output tokens.
    Fixed(u32, u32),
    /// ShareGPT-like lengths ([`sharegpt_lengths`]).
    ShareGpt,
}

/// One benchmark run of one engine.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Catalog model (quantized variants by suffix).
    pub model: String,
    /// Catalog GPU.
    pub gpu: String,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Engine knobs.
    pub engine: EngineConfig,
    /// How requests arrive.
    pub load: Load,
    /// Request lengths.
    pub lengths: Lengths,
    /// Requests.
    pub n: u32,
    /// Seed of lengths and arrivals.
    pub seed: u64,
}

/// What a benchmark run produced.
#[derive(Clone, Debug)]
pub struct BenchOutcome {
    /// Finished requests (latencies counted from the client's send time).
    pub finished: Vec<Finished>,
    /// Time of the last completion, seconds from the start.
    pub duration_s: f64,
    /// Prompt tokens over all requests.
    pub prompt_tokens: u64,
    /// Output tokens over all requests.
    pub output_tokens: u64,
}

/// A figure a benchmark reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Median time to first token, ms.
    TtftMedian,
    /// Mean time to first token, ms.
    TtftMean,
    /// Median time per output token after the first, ms.
    TpotMedian,
    /// Mean time per output token after the first, ms.
    TpotMean,
    /// Median end-to-end latency, ms.
    E2eMedian,
    /// Mean end-to-end latency, ms.
    E2eMean,
    /// Completed requests per second.
    ReqThroughput,
    /// Output tokens per second.
    OutThroughput,
    /// Prompt plus output tokens per second.
    TotalThroughput,
    /// Time to finish the whole batch, ms (`benchmark_latency`).
    BatchLatency,
    /// Output tokens per second of the whole run (batch-1 generation speed).
    StreamSpeed,
}

impl Metric {
    /// The name used in `points.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::TtftMedian => "ttft_median",
            Metric::TtftMean => "ttft_mean",
            Metric::TpotMedian => "tpot_median",
            Metric::TpotMean => "tpot_mean",
            Metric::E2eMedian => "e2e_median",
            Metric::E2eMean => "e2e_mean",
            Metric::ReqThroughput => "req_tput",
            Metric::OutThroughput => "out_tput",
            Metric::TotalThroughput => "total_tput",
            Metric::BatchLatency => "batch_latency",
            Metric::StreamSpeed => "stream_speed",
        }
    }
    fn parse(s: &str) -> Option<Metric> {
        [
            Metric::TtftMedian,
            Metric::TtftMean,
            Metric::TpotMedian,
            Metric::TpotMean,
            Metric::E2eMedian,
            Metric::E2eMean,
            Metric::ReqThroughput,
            Metric::OutThroughput,
            Metric::TotalThroughput,
            Metric::BatchLatency,
            Metric::StreamSpeed,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
    /// The kind of figure: `ttft`, `tpot`, `e2e` or `throughput`.
    pub fn family(self) -> &'static str {
        match self {
            Metric::TtftMedian | Metric::TtftMean => "ttft",
            Metric::TpotMedian | Metric::TpotMean => "tpot",
            Metric::E2eMedian | Metric::E2eMean | Metric::BatchLatency => "e2e",
            _ => "throughput",
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl BenchOutcome {
    /// The value of `m` (ms for latencies, per second for throughputs).
    pub fn metric(&self, m: Metric) -> f64 {
        let ms = |a: Nanos, b: Nanos| b.since(a).as_secs_f64() * 1e3;
        let ttft: Vec<f64> = self.finished.iter().map(|f| ms(f.arrival, f.first_token)).collect();
        let e2e: Vec<f64> = self.finished.iter().map(|f| ms(f.arrival, f.finish)).collect();
        let tpot: Vec<f64> = self
            .finished
            .iter()
            .filter(|f| f.output > 1)
            .map(|f| ms(f.first_token, f.finish) / (f.output - 1) as f64)
            .collect();
        let d = self.duration_s.max(1e-12);
        match m {
            Metric::TtftMedian => median(ttft),
            Metric::TtftMean => mean(&ttft),
            Metric::TpotMedian => median(tpot),
            Metric::TpotMean => mean(&tpot),
            Metric::E2eMedian => median(e2e),
            Metric::E2eMean => mean(&e2e),
            Metric::ReqThroughput => self.finished.len() as f64 / d,
            Metric::OutThroughput => self.output_tokens as f64 / d,
            Metric::TotalThroughput => (self.prompt_tokens + self.output_tokens) as f64 / d,
            Metric::BatchLatency => d * 1e3,
            Metric::StreamSpeed => self.output_tokens as f64 / d,
        }
    }
}

/// One line on a run: its length and the p10/p50/p90 of queueing, TTFT, TPOT and
/// end-to-end latency over its requests, in ms.
pub fn spread(o: &BenchOutcome) -> String {
    let q = |mut v: Vec<f64>| -> String {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return "-".into();
        }
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        format!("{:.1}/{:.1}/{:.1}", at(0.1), at(0.5), at(0.9))
    };
    let ms = |a: Nanos, b: Nanos| b.since(a).as_secs_f64() * 1e3;
    let f = &o.finished;
    format!(
        "{} requests in {:.2} s, {} prompt + {} output tokens; queue {} ttft {} tpot {} e2e {}",
        f.len(),
        o.duration_s,
        o.prompt_tokens,
        o.output_tokens,
        q(f.iter().map(|r| ms(r.arrival, r.first_sched)).collect()),
        q(f.iter().map(|r| ms(r.arrival, r.first_token)).collect()),
        q(f.iter().filter(|r| r.output > 1).map(|r| ms(r.first_token, r.finish) / (r.output - 1) as f64).collect()),
        q(f.iter().map(|r| ms(r.arrival, r.finish)).collect()),
    )
}

/// Log-normal location of ShareGPT prompt lengths (σ = 1.0), chosen so that the filtered
/// mean is 229.7 tokens.
pub const SHAREGPT_PROMPT_MU: f64 = 5.002;
/// Log-normal location of ShareGPT output lengths (σ = 0.9), chosen so that the filtered
/// mean is 203.1 tokens.
pub const SHAREGPT_OUTPUT_MU: f64 = 4.917;

/// `n` ShareGPT-like (prompt, output) lengths: prompt ~ LogNormal(5.002, 1.0) clipped to
/// 4..=1024, output ~ LogNormal(4.917, 0.9) clipped to 4..=2048 − prompt (vLLM's filter).
/// The means match the 229,711 prompt and 203,068 output tokens of 1,000 ShareGPT
/// requests in vLLM pull request 18566 (Llama 3.1 tokenizer); the spread is assumed.
pub fn sharegpt_lengths(n: u32, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ba2_e6f7);
    let (Ok(pi), Ok(po)) = (LogNormal::new(SHAREGPT_PROMPT_MU, 1.0), LogNormal::new(SHAREGPT_OUTPUT_MU, 0.9)) else {
        return Vec::new();
    };
    (0..n)
        .map(|_| {
            let i = (pi.sample(&mut rng).round() as u32).clamp(4, 1024);
            let o = (po.sample(&mut rng).round() as u32).clamp(4, 2048 - i);
            (i, o)
        })
        .collect()
}

/// Runs one benchmark. Errors name the model or GPU, or say that the model does not fit.
pub fn run_bench(spec: &BenchSpec, catalog: &Catalog) -> Result<BenchOutcome, TwinError> {
    run_bench_with(spec, catalog, true)
}

/// [`run_bench`] with the twin's constants as they were before this calibration when
/// `calibrated` is false: 2 ms + 15 µs per sequence of engine CPU time per step whatever
/// the scheduler, no per-request cost, no streaming limit, and the NCCL all-reduce latency
/// of the network profiles ([`super::perf::NCCL_AR`]). The scheduling itself (V1/V0, multi-step) is the
/// same in both.
pub fn run_bench_with(spec: &BenchSpec, catalog: &Catalog, calibrated: bool) -> Result<BenchOutcome, TwinError> {
    let mut spec = spec.clone();
    if !calibrated {
        spec.engine.request_overhead_s = Some(0.0);
        spec.engine.stream_tokens_per_s = Some(0.0);
    }
    let spec = &spec;
    let model = catalog.model(&spec.model, "model")?;
    let gpu = catalog.gpu(&spec.gpu, "gpu")?;
    let (_, blocks) = kv_blocks_for(model, gpu, spec.tp, &spec.engine);
    if blocks < 1.0 {
        return Err(TwinError::Config {
            field: "model".into(),
            message: format!("{} does not fit on {} × {}", model.name, spec.tp, gpu.name),
        });
    }
    let cap = (blocks as u64 * spec.engine.block_size as u64)
        .min(spec.engine.max_model_len.unwrap_or(model.max_context) as u64)
        .min(u32::MAX as u64) as u32;
    let mut perf = RooflinePerf::new(model, gpu, spec.tp).with_cpu(spec.engine.cpu_costs());
    if !calibrated {
        perf.eff.iter_overhead_s = 2e-3;
        perf.eff.per_seq_overhead_s = 15e-6;
        perf.eff.allreduce_latency_s = super::perf::nccl_allreduce_latency_s(gpu);
    }
    let mut eng = Engine::new(spec.engine.clone(), Arc::new(perf), blocks.min(u32::MAX as f64) as u32);
    let mut lens = match spec.lengths {
        Lengths::Fixed(i, o) => vec![(i.max(1), o.max(1)); spec.n as usize],
        Lengths::ShareGpt => sharegpt_lengths(spec.n, spec.seed),
    };
    for l in lens.iter_mut() {
        // Longer than the engine takes: cut the output, as a server would refuse it.
        l.0 = l.0.min(cap.saturating_sub(1).max(1));
        l.1 = l.1.min(cap.saturating_sub(l.0).max(1));
    }
    let server = !matches!(spec.load, Load::Offline);
    let mut finished = drive(&mut eng, spec, &lens, server)?;
    if !server {
        // Offline tools time from zero, not from a send time.
        for f in finished.iter_mut() {
            f.arrival = Nanos::ZERO;
        }
    }
    let duration_s = finished.iter().map(|f| f.finish).max().unwrap_or(Nanos::ZERO).as_secs_f64();
    Ok(BenchOutcome {
        prompt_tokens: finished.iter().map(|f| f.input as u64).sum(),
        output_tokens: finished.iter().map(|f| f.output as u64).sum(),
        finished,
        duration_s,
    })
}

/// The way from a client to the engine: the per-request cost in parallel, then the
/// API server's one tokeniser thread, first come first served (see
/// [`Engine::tokenize_s`]). Offline runs have neither.
struct FrontEnd {
    server: bool,
    /// When the tokeniser has finished every prompt sent so far.
    tokenizer_free: Nanos,
}

impl FrontEnd {
    /// When a prompt of `input` tokens sent at `send` reaches the engine.
    fn receive(&mut self, eng: &Engine, send: Nanos, input: u32) -> Nanos {
        if !self.server {
            return send;
        }
        let ready = send.plus(Nanos::from_secs_f64(eng.request_s()));
        let done = ready.max(self.tokenizer_free).plus(Nanos::from_secs_f64(eng.tokenize_s(input)));
        self.tokenizer_free = done;
        done
    }
}

/// A request on its way to the engine: (engine receive time, request index, send time).
type InFlight = std::cmp::Reverse<(Nanos, u32, Nanos)>;

/// Sends the requests of `lens` to `eng` as `spec.load` says and runs the engine until
/// every request has finished; returns them in the order they finished.
fn drive(eng: &mut Engine, spec: &BenchSpec, lens: &[(u32, u32)], server: bool) -> Result<Vec<Finished>, TwinError> {
    let mut front = FrontEnd { server, tokenizer_free: Nanos::ZERO };
    // Earliest receive time first.
    let mut pending: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut send = |pending: &mut BinaryHeap<InFlight>, e: &Engine, t: Nanos, k: u32| {
        pending.push(std::cmp::Reverse((front.receive(e, t, lens[k as usize].0), k, t)));
    };
    let mut next = 0u32;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x0a11_7e5e);
    match spec.load {
        Load::Burst | Load::Offline => {
            for k in 0..spec.n {
                send(&mut pending, &*eng, Nanos::ZERO, k);
            }
            next = spec.n;
        }
        Load::Poisson(rate) => {
            let exp = Exp::new(rate.max(1e-9))
                .map_err(|e| TwinError::Config { field: "load".into(), message: format!("rate {rate}: {e}") })?;
            let mut t = 0.0;
            for k in 0..spec.n {
                send(&mut pending, &*eng, Nanos::from_secs_f64(t), k);
                t += exp.sample(&mut rng);
            }
            next = spec.n;
        }
        Load::Closed(c) => {
            while next < c.min(spec.n) {
                send(&mut pending, &*eng, Nanos::ZERO, next);
                next += 1;
            }
        }
    }
    let mut finished = Vec::with_capacity(spec.n as usize);
    let mut batch = Vec::new();
    let mut now = Nanos::ZERO;
    loop {
        let arrival = pending.peek().map(|r| r.0 .0);
        match eng.iteration_end() {
            Some(end) if arrival.is_none_or(|t| t >= end) => {
                now = end;
                batch.clear();
                eng.finish_iteration(now, &mut batch);
                for f in batch.drain(..) {
                    if let Load::Closed(_) = spec.load {
                        if next < spec.n {
                            // The client sends its next request when it has the last token.
                            send(&mut pending, &*eng, f.finish, next);
                            next += 1;
                        }
                    }
                    finished.push(f);
                }
                eng.start_iteration(now);
            }
            _ => {
                let Some(t) = arrival else { break };
                now = now.max(t);
                while let Some(std::cmp::Reverse((t2, k, sent))) = pending.peek().copied() {
                    if t2 > now {
                        break;
                    }
                    pending.pop();
                    let (i, o) = lens[k as usize];
                    eng.enqueue_sent(Seq::new(k as u64, sent, i, o, Vec::new()));
                }
                if eng.is_busy() {
                    eng.interrupt(now);
                } else {
                    eng.start_iteration(now);
                }
            }
        }
    }
    Ok(finished)
}

/// Whether a point was used to choose constants or is only compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Used to fit.
    Fit,
    /// Only checked.
    Check,
}

/// One published measurement with its configuration.
#[derive(Clone, Debug)]
pub struct Point {
    /// Row id in `data/fidelity/published.csv`.
    pub id: String,
    /// Source id in `data/fidelity/SOURCES.md`.
    pub source: String,
    /// Fit or check.
    pub role: Role,
    /// The run.
    pub bench: BenchSpec,
    /// The engine column as written (for the report).
    pub engine_text: String,
    /// The load column as written.
    pub load_text: String,
    /// The lengths column as written.
    pub lengths_text: String,
    /// The figure.
    pub metric: Metric,
    /// The published value.
    pub published: f64,
}

fn parse_engine(text: &str) -> Result<EngineConfig, String> {
    let mut words = text.split_whitespace();
    let mut e = EngineConfig {
        scheduler: match words.next() {
            Some("v1") => Scheduler::V1,
            Some("v0") => Scheduler::V0,
            other => return Err(format!("scheduler must be v1 or v0, got {other:?}")),
        },
        async_scheduling: false,
        ..EngineConfig::default()
    };
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| format!("`{w}` is not key=value"))?;
        let num = |v: &str| v.parse::<u32>().map_err(|_| format!("`{k}` needs a whole number, got `{v}`"));
        let on = |v: &str| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("`{k}` is on or off, got `{v}`")),
        };
        match k {
            "steps" => e.num_scheduler_steps = num(v)?.max(1),
            "chunked" => e.enable_chunked_prefill = on(v)?,
            "async" => e.async_scheduling = on(v)?,
            "budget" => e.max_num_batched_tokens = num(v)?.max(1),
            "seqs" => e.max_num_seqs = num(v)?.max(1),
            "max_model_len" => e.max_model_len = Some(num(v)?),
            "stream" => e.stream_tokens_per_s = Some(num(v)? as f64),
            "util" => {
                e.gpu_memory_utilization =
                    v.parse::<f64>().ok().filter(|x| *x > 0.0 && *x <= 1.0).ok_or(format!("bad util `{v}`"))?
            }
            _ => return Err(format!("unknown key `{k}`")),
        }
    }
    if e.scheduler == Scheduler::V0 && !e.enable_chunked_prefill {
        // V0 without chunking takes a whole prompt per step: the budget is at least the
        // longest sequence (vLLM: max(max_model_len, 2048)).
        e.max_num_batched_tokens = e.max_num_batched_tokens.max(e.max_model_len.unwrap_or(0)).max(2048);
    }
    Ok(e)
}

fn parse_load(text: &str) -> Result<Load, String> {
    let (k, v) = text.split_once(':').unwrap_or((text, ""));
    match k {
        "burst" => Ok(Load::Burst),
        "offline" => Ok(Load::Offline),
        "poisson" => v.parse::<f64>().ok().filter(|r| *r > 0.0).map(Load::Poisson).ok_or(format!("bad rate `{v}`")),
        "closed" => v.parse::<u32>().ok().filter(|c| *c > 0).map(Load::Closed).ok_or(format!("bad concurrency `{v}`")),
        _ => Err(format!("load is burst, offline, poisson:RATE or closed:CLIENTS, got `{text}`")),
    }
}

fn parse_lengths(text: &str) -> Result<Lengths, String> {
    if text == "sharegpt" {
        return Ok(Lengths::ShareGpt);
    }
    let (i, o) = text.split_once('x').ok_or(format!("lengths is sharegpt or INPUTxOUTPUT, got `{text}`"))?;
    match (i.parse::<u32>(), o.parse::<u32>()) {
        (Ok(i), Ok(o)) if i > 0 && o > 0 => Ok(Lengths::Fixed(i, o)),
        _ => Err(format!("lengths is sharegpt or INPUTxOUTPUT, got `{text}`")),
    }
}

/// The columns of `points.csv`, in order.
pub const POINT_COLUMNS: [&str; 12] =
    ["id", "source", "role", "model", "gpu", "tp", "engine", "load", "n", "lengths", "metric", "published"];

/// Reads a points file; errors name the line and column.
pub fn read_points(path: &Path) -> Result<Vec<Point>, TwinError> {
    let name = path.display().to_string();
    let err = |line: usize, m: String| TwinError::Trace { file: name.clone(), line, message: m };
    let mut rdr = csv::ReaderBuilder::new().comment(Some(b'#')).from_path(path).map_err(|e| err(0, e.to_string()))?;
    let headers = rdr.headers().map_err(|e| err(1, e.to_string()))?.clone();
    let cols: Vec<usize> = POINT_COLUMNS
        .iter()
        .map(|c| headers.iter().position(|h| h == *c).ok_or_else(|| err(1, format!("missing column `{c}`"))))
        .collect::<Result<_, _>>()?;
    let catalog = Catalog::default();
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| err(0, e.to_string()))?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let get = |i: usize| rec.get(cols[i]).unwrap_or("").trim().to_string();
        let bad = |i: usize, m: String| err(line, format!("column `{}`: {m}", POINT_COLUMNS[i]));
        let role = match get(2).as_str() {
            "fit" => Role::Fit,
            "check" => Role::Check,
            o => return Err(bad(2, format!("fit or check, got `{o}`"))),
        };
        let tp = get(5).parse::<u32>().ok().filter(|t| *t > 0).ok_or_else(|| bad(5, "a positive number".into()))?;
        let engine = parse_engine(&get(6)).map_err(|m| bad(6, m))?;
        let load = parse_load(&get(7)).map_err(|m| bad(7, m))?;
        let n = get(8).parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| bad(8, "a positive number".into()))?;
        let lengths = parse_lengths(&get(9)).map_err(|m| bad(9, m))?;
        let metric = Metric::parse(&get(10)).ok_or_else(|| bad(10, format!("unknown metric `{}`", get(10))))?;
        let published = get(11)
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| bad(11, "a positive number".into()))?;
        let model = get(3);
        catalog.model(&model, "model").map_err(|e| bad(3, e.to_string()))?;
        catalog.gpu(&get(4), "gpu").map_err(|e| bad(4, e.to_string()))?;
        out.push(Point {
            id: get(0),
            source: get(1),
            role,
            bench: BenchSpec { model, gpu: get(4), tp, engine, load, lengths, n, seed: 0 },
            engine_text: get(6),
            load_text: get(7),
            lengths_text: get(9),
            metric,
            published,
        });
    }
    Ok(out)
}

/// A point and what the twin says.
#[derive(Clone, Debug)]
pub struct PointResult {
    /// The point.
    pub point: Point,
    /// The twin's value.
    pub twin: f64,
    /// The run it came from (for [`spread`]).
    pub outcome: BenchOutcome,
}

impl PointResult {
    /// Signed relative error (twin − published) / published.
    pub fn error(&self) -> f64 {
        (self.twin - self.point.published) / self.point.published
    }
}

/// Runs every point.
pub fn evaluate(points: &[Point], catalog: &Catalog) -> Result<Vec<PointResult>, TwinError> {
    evaluate_with(points, catalog, true)
}

/// Runs every point, with the constants from before the calibration when `calibrated` is
/// false (see [`run_bench_with`]).
pub fn evaluate_with(points: &[Point], catalog: &Catalog, calibrated: bool) -> Result<Vec<PointResult>, TwinError> {
    points
        .iter()
        .map(|p| {
            let o = run_bench_with(&p.bench, catalog, calibrated)
                .map_err(|e| TwinError::Config { field: format!("point {}", p.id), message: e.to_string() })?;
            Ok(PointResult { point: p.clone(), twin: o.metric(p.metric), outcome: o })
        })
        .collect()
}

/// (points, median |error|, largest |error|) over the results with role `role`.
pub fn summary(results: &[PointResult], role: Role) -> (usize, f64, f64) {
    let errs: Vec<f64> = results.iter().filter(|r| r.point.role == role).map(|r| r.error().abs()).collect();
    let worst = errs.iter().cloned().fold(0.0, f64::max);
    (errs.len(), median(errs), worst)
}

/// The results as a Markdown table, then the fit and check summaries.
pub fn markdown(results: &[PointResult]) -> String {
    let mut s = String::from(
        "| point | source | role | model | GPU × TP | engine | load | n | lengths | metric | published | twin | error |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let p = &r.point;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} × {} | {} | {} | {} | {} | {} | {} | {} | {:+.1} % |\n",
            p.id,
            p.source,
            if p.role == Role::Fit { "fit" } else { "check" },
            p.bench.model,
            p.bench.gpu,
            p.bench.tp,
            p.engine_text,
            p.load_text,
            p.bench.n,
            p.lengths_text,
            p.metric.name(),
            sig(p.published),
            sig(r.twin),
            100.0 * r.error()
        ));
    }
    for (role, name) in [(Role::Fit, "fit"), (Role::Check, "check")] {
        let (n, med, worst) = summary(results, role);
        s.push_str(&format!("\n{name}: {n} points, median |error| {:.1} %, worst {:.1} %", 100.0 * med, 100.0 * worst));
    }
    s.push('\n');
    s
}

/// A number with four significant digits, as a plain string.
fn sig(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().max(1e-12).log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharegpt_lengths_have_the_published_means() {
        let l = sharegpt_lengths(100_000, 7);
        let mi = l.iter().map(|x| x.0 as f64).sum::<f64>() / l.len() as f64;
        let mo = l.iter().map(|x| x.1 as f64).sum::<f64>() / l.len() as f64;
        assert!((mi - 229.7).abs() < 3.0, "{mi}");
        assert!((mo - 203.1).abs() < 3.0, "{mo}");
        assert!(l.iter().all(|(i, o)| (4..=1024).contains(i) && *o >= 4 && i + o <= 2048));
    }

    fn spec(engine: &str, load: Load, lengths: Lengths, n: u32) -> BenchSpec {
        BenchSpec {
            model: "Llama-3.1-8B".into(),
            gpu: "A100-80GB".into(),
            tp: 1,
            engine: parse_engine(engine).unwrap(),
            load,
            lengths,
            n,
            seed: 1,
        }
    }

    #[test]
    fn closed_loop_keeps_its_clients_busy() {
        let c = Catalog::default();
        let o = run_bench(&spec("v1", Load::Closed(4), Lengths::Fixed(100, 50), 40), &c).unwrap();
        assert_eq!(o.finished.len(), 40);
        // Four clients: at most four requests in flight, so e2e ≈ 4 × duration / n.
        let e2e = o.metric(Metric::E2eMean) / 1e3;
        let expect = 4.0 * o.duration_s / 40.0;
        assert!((e2e - expect).abs() < 0.15 * expect, "{e2e} vs {expect}");
    }

    #[test]
    fn server_latency_includes_the_request_cost_and_offline_does_not() {
        let c = Catalog::default();
        let server = run_bench(&spec("v1", Load::Burst, Lengths::Fixed(100, 20), 1), &c).unwrap();
        let offline = run_bench(&spec("v1", Load::Offline, Lengths::Fixed(100, 20), 1), &c).unwrap();
        let d = server.metric(Metric::TtftMean) - offline.metric(Metric::TtftMean);
        let front = Engine::new(parse_engine("v1").unwrap(), Arc::new(perf_any()), 100).front_s(100) * 1e3;
        assert!((d - front).abs() < 1e-3, "{d} vs {front}");
    }

    fn perf_any() -> RooflinePerf {
        let c = Catalog::default();
        RooflinePerf::new(c.model("Llama-3.1-8B", "").unwrap(), c.gpu("A100-80GB", "").unwrap(), 1)
    }

    #[test]
    fn a_burst_reaches_the_engine_in_the_order_it_was_sent() {
        let c = Catalog::default();
        // One tokeniser thread takes the prompts in turn: a short prompt sent after a long
        // one is not scheduled before it (first come, first served, not shortest first).
        let o = run_bench(&spec("v1", Load::Burst, Lengths::ShareGpt, 300), &c).unwrap();
        let mut f = o.finished.clone();
        f.sort_by_key(|r| r.id);
        assert!(f.windows(2).all(|w| w[0].first_sched <= w[1].first_sched), "admitted out of send order");
        let lens = sharegpt_lengths(300, 1);
        let last = f.last().unwrap();
        let engine = Engine::new(parse_engine("v1").unwrap(), Arc::new(perf_any()), 100);
        let tokenized: f64 = lens.iter().map(|l| engine.tokenize_s(l.0)).sum();
        let reach = (last.first_sched.as_secs_f64() - last.arrival.as_secs_f64()) - engine.request_s();
        assert!(reach >= tokenized - 1e-6, "the last prompt waits for every prompt before it: {reach} < {tokenized}");
    }

    #[test]
    fn v0_prefill_first_stalls_decodes_and_multi_step_batches_them() {
        let c = Catalog::default();
        // A long decode running while short prompts keep arriving: V0 without chunking
        // stops it for every prefill, V1 mixes them into its steps.
        let mut tpot = Vec::new();
        for e in ["v1", "v0 chunked=off"] {
            let o = run_bench(&spec(e, Load::Poisson(4.0), Lengths::Fixed(2000, 100), 200), &c).unwrap();
            tpot.push(o.metric(Metric::TpotMedian));
        }
        assert!(tpot[1] > tpot[0] * 1.1, "V0 prefill-first should slow decodes: {tpot:?}");
        let single = run_bench(&spec("v0 chunked=off", Load::Offline, Lengths::Fixed(32, 128), 8), &c).unwrap();
        let multi = run_bench(&spec("v0 chunked=off steps=8", Load::Offline, Lengths::Fixed(32, 128), 8), &c).unwrap();
        assert!(multi.duration_s < single.duration_s, "multi-step spreads the CPU cost");
    }

    #[test]
    fn the_api_server_caps_streamed_tokens() {
        let c = Catalog::default();
        // 8B on H100 with a thousand requests at once produces far more than 2,000 tokens/s.
        let mut s = spec("v1 seqs=1024 stream=2000", Load::Burst, Lengths::Fixed(100, 100), 1000);
        s.gpu = "H100-SXM".into();
        let capped = run_bench(&s, &c).unwrap();
        let out = capped.metric(Metric::OutThroughput);
        assert!(out <= 2000.0 * 1.001 && out > 1800.0, "{out} tokens/s");
        s.engine.stream_tokens_per_s = Some(0.0);
        let free = run_bench(&s, &c).unwrap();
        assert!(free.metric(Metric::OutThroughput) > 3.0 * out, "unlimited streaming is faster");
    }

    #[test]
    fn points_file_errors_name_line_and_column() {
        let dir = std::env::temp_dir().join(format!("llmos-points-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.csv");
        std::fs::write(
            &f,
            format!(
                "{}\np1,S1,fit,Llama-3-8B,A100-80GB,1,v1,burst,10,sharegpt,ttft_mean,5\np2,S1,check,Llama-3-8B,A100-80GB,1,v2,burst,10,sharegpt,ttft_mean,5\n",
                POINT_COLUMNS.join(",")
            ),
        )
        .unwrap();
        let e = read_points(&f).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("`engine`") && e.contains("v1 or v0"), "{e}");
        std::fs::write(
            &f,
            format!("{}\np1,S1,fit,gpt-9,A100-80GB,1,v1,burst,10,sharegpt,ttft_mean,5\n", POINT_COLUMNS.join(",")),
        )
        .unwrap();
        let e = read_points(&f).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("gpt-9"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
