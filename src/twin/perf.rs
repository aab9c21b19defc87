//! Performance models: how long one engine iteration takes.
//!
//! An iteration of a vLLM-style engine runs one forward pass over every token scheduled in
//! it: the prompt chunks being prefilled and one token per decoding sequence. A
//! [`PerfModel`] maps the [`BatchShape`] of an iteration to its duration.
//!
//! ## The roofline model ([`RooflinePerf`], the default)
//!
//! Per transformer layer, on one GPU of a tensor-parallel group of `t` GPUs, with `T`
//! tokens in the batch:
//!
//! - **GEMMs** (QKV, attention output, gate+up, down; weights `K×N` sharded by `t`): the
//!   time is a smooth maximum of compute `2·T·K·N / (F·e_c)` and memory
//!   `2·(K·N + T·(K+N)) / (B·e_m)` (weights plus activations, bf16), combined as
//!   `(c^p + m^p)^(1/p)`, plus a kernel overhead `k` each. `F` is peak bf16 FLOP/s and `B`
//!   the HBM bandwidth of the catalog GPU.
//! - **Element-wise ops** (two RMSNorms, RoPE, SiLU·gate, residual add): bytes moved
//!   `/ (B·e_m)` plus `k` each.
//! - **Attention**: prefill `4·(heads/t)·head_dim·Σ chunk·(past + (chunk+1)/2)` FLOPs at
//!   `F·e_attn`, or reading the KV cache (`Σ context × kv bytes per token / t`) at `B·e_m`,
//!   whichever is longer, plus an attention kernel overhead; decode is the same with one
//!   query token per sequence, which makes a decode-only iteration exactly affine in the
//!   summed context length (the engine uses this to jump over decode stretches).
//! - **Tensor parallelism**: two ring all-reduces of `T·hidden·2` bytes per layer, each
//!   `lat + 2·(t−1)/t · bytes / bw_bus`.
//! - Once per iteration: the LM head GEMM over the sequences that emit a token, and the
//!   engine's CPU-side overhead (scheduling, sampling, detokenisation):
//!   `iter_overhead + per_seq_overhead × sequences`.
//!
//! The efficiencies `e_c`, `e_m`, `p`, `k` are fitted per GPU family to the measured
//! per-layer operator medians of Vidur's profiles (`data/profiles`, MIT licence) by
//! [`fit_layer_efficiency`]; the all-reduce `lat` and `bw_bus` by [`fit_allreduce`]. The
//! fitted constants are stored in [`Efficiency::for_gpu`], so no fitting happens at run
//! time; `docs/twin.md` records the fit and its error, and a test re-checks it against the
//! data. `e_attn` and the CPU overheads are not in those profiles; their values and
//! sources are documented on [`Efficiency`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::catalog::{GpuSpec, ModelSpec, WeightFormat};
use super::TwinError;

/// What one engine iteration computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchShape {
    /// Prompt tokens computed this iteration (all prefill chunks).
    pub prefill_tokens: u64,
    /// Σ over prefill chunks of `chunk × (past + (chunk+1)/2)`: query-key pairs of causal attention.
    pub prefill_attn_pairs: f64,
    /// Σ over prefill chunks of tokens already in the KV cache before the chunk (read by attention).
    pub prefill_past_tokens: u64,
    /// Sequences decoding one token each.
    pub decode_seqs: u64,
    /// Σ context length (tokens in KV) over the decoding sequences.
    pub decode_ctx_tokens: u64,
    /// Sequences that emit a token this iteration (decoders plus prefills that finish).
    pub logit_seqs: u64,
}

/// Maps an iteration's shape to its duration.
pub trait PerfModel: Send + Sync + std::fmt::Debug {
    /// Duration of one iteration, in seconds.
    fn iteration_s(&self, shape: &BatchShape) -> f64;

    /// For a decode-only iteration of `n` sequences: `(a, b)` such that the iteration takes
    /// `a + b × Σcontext` seconds. The default measures the model at two context sums,
    /// which is exact for models affine in the context (as the roofline is).
    fn decode_affine(&self, n: u64) -> (f64, f64) {
        let s = |c: u64| {
            self.iteration_s(&BatchShape { decode_seqs: n, decode_ctx_tokens: c, logit_seqs: n, ..Default::default() })
        };
        let big = 1u64 << 24;
        let a = s(0);
        (a, ((s(big) - a) / big as f64).max(0.0))
    }

    /// Time to prefill `tokens` prompt tokens of one request on an idle replica, seconds.
    fn prefill_s(&self, tokens: u64) -> f64 {
        let t = tokens as f64;
        self.iteration_s(&BatchShape {
            prefill_tokens: tokens,
            prefill_attn_pairs: t * (t + 1.0) / 2.0,
            logit_seqs: 1,
            ..Default::default()
        })
    }
}

/// Efficiency factors and overheads of the roofline model for one GPU family.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// Fraction of peak FLOP/s GEMMs reach (fitted).
    pub gemm_compute: f64,
    /// Fraction of HBM bandwidth memory-bound kernels reach (fitted).
    pub memory: f64,
    /// Exponent of the smooth maximum of compute and memory time (fitted; large = hard max).
    pub smooth_p: f64,
    /// Fixed time per kernel, seconds (fitted).
    pub kernel_s: f64,
    /// Fraction of peak FLOP/s prefill attention (FlashAttention) reaches. Not in the
    /// profiles: 0.45, checked against the five A100 attention rows quoted in the profiles'
    /// SOURCES.md (FlashAttention-2 reports 50–73 % on A100 at long sequences; chunks are shorter).
    pub attention_compute: f64,
    /// Fixed time of the attention kernels per layer, seconds (from the same rows: ~35 µs).
    pub attention_kernel_s: f64,
    /// All-reduce latency, seconds (fitted to the network profiles).
    pub allreduce_latency_s: f64,
    /// All-reduce bus bandwidth, GB/s (fitted to the network profiles).
    pub allreduce_bus_gb_s: f64,
    /// Engine CPU time per iteration on the critical path (scheduling, input preparation,
    /// sampling, output processing), seconds. Not in the profiles: it depends on the
    /// engine, so [`super::engine::EngineConfig::cpu_costs`] sets it per scheduler (fitted
    /// to published end-to-end measurements, `docs/fidelity.md`); [`Efficiency::for_gpu`]
    /// gives the default engine's ([`CPU_V1_ASYNC`]).
    pub iter_overhead_s: f64,
    /// Extra engine CPU time per sequence in the batch, seconds (set with `iter_overhead_s`).
    pub per_seq_overhead_s: f64,
    /// Fraction of the FP8 peak that FP8 GEMMs reach (fitted to the published FP8 points
    /// of `docs/fidelity.md`).
    #[serde(default = "default_fp8_compute")]
    pub fp8_compute: f64,
    /// Fraction of the 16-bit GEMM rate that weight-only quantized GEMMs (INT4/INT8, and
    /// FP8 on GPUs without FP8 tensor cores) reach when compute-bound: the in-kernel
    /// dequantisation (fitted to the published INT4 points of `docs/fidelity.md`).
    #[serde(default = "default_weight_only_compute")]
    pub weight_only_compute: f64,
}

fn default_fp8_compute() -> f64 {
    FP8_COMPUTE
}
fn default_weight_only_compute() -> f64 {
    WEIGHT_ONLY_COMPUTE
}

/// Fraction of the FP8 peak FP8 GEMMs reach (see [`Efficiency::fp8_compute`]).
pub const FP8_COMPUTE: f64 = 0.42;
/// Fraction of the 16-bit rate weight-only GEMMs reach (see [`Efficiency::weight_only_compute`]).
pub const WEIGHT_ONLY_COMPUTE: f64 = 0.6;

impl Efficiency {
    /// The fitted constants for a catalog GPU. A100 figures (fitted on A100-80GB) also
    /// serve the other Ampere/Ada parts (A100-40GB, A10G, L4); H100 figures serve H200.
    pub fn for_gpu(gpu: &GpuSpec) -> Efficiency {
        if hopper(gpu) {
            Efficiency {
                gemm_compute: H100_FIT[0],
                memory: H100_FIT[1],
                smooth_p: H100_FIT[2],
                kernel_s: H100_FIT[3],
                attention_compute: 0.45,
                attention_kernel_s: 30e-6,
                allreduce_latency_s: H100_AR[0],
                allreduce_bus_gb_s: H100_AR[1],
                iter_overhead_s: CPU_V1_ASYNC.iter_s,
                per_seq_overhead_s: CPU_V1_ASYNC.per_seq_s,
                fp8_compute: FP8_COMPUTE,
                weight_only_compute: WEIGHT_ONLY_COMPUTE,
            }
        } else {
            Efficiency {
                gemm_compute: A100_FIT[0],
                memory: A100_FIT[1],
                smooth_p: A100_FIT[2],
                kernel_s: A100_FIT[3],
                attention_compute: 0.45,
                attention_kernel_s: 35e-6,
                allreduce_latency_s: A100_AR[0],
                allreduce_bus_gb_s: A100_AR[1],
                iter_overhead_s: CPU_V1_ASYNC.iter_s,
                per_seq_overhead_s: CPU_V1_ASYNC.per_seq_s,
                fp8_compute: FP8_COMPUTE,
                weight_only_compute: WEIGHT_ONLY_COMPUTE,
            }
        }
    }
}

/// Engine CPU costs of one scheduler (see [`super::engine::EngineConfig::cpu_costs`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuCosts {
    /// CPU time on the critical path per engine step, seconds.
    pub iter_s: f64,
    /// CPU time per sequence in the step, seconds.
    pub per_seq_s: f64,
    /// Per request, outside the engine loop (HTTP, chat template, tokenisation start,
    /// final detokenisation), seconds.
    pub request_s: f64,
    /// Per prompt token (tokenisation), seconds.
    pub per_prompt_token_s: f64,
    /// Per output token streamed to a client by the API server, seconds (0: unlimited).
    /// V1's API server is one process apart from the engine: tokens it has not yet
    /// detokenised and sent queue behind it, and the client sees them late.
    pub stream_s_per_token: f64,
}

/// Fitted CPU costs (`docs/fidelity.md` lists the points they are fitted to):
/// V1 synchronous, V1 with async scheduling, V0.
pub const CPU_V1: CpuCosts = CpuCosts {
    iter_s: 0.25e-3,
    per_seq_s: 12e-6,
    request_s: 40e-3,
    per_prompt_token_s: 1e-6,
    stream_s_per_token: V1_STREAM_S_PER_TOKEN,
};
/// See [`CPU_V1`]. No published point measures async scheduling: its per-step costs are
/// assumed to be those of [`CPU_V1`] with half hidden behind the GPU.
pub const CPU_V1_ASYNC: CpuCosts = CpuCosts {
    iter_s: 0.125e-3,
    per_seq_s: 6e-6,
    request_s: 40e-3,
    per_prompt_token_s: 1e-6,
    stream_s_per_token: V1_STREAM_S_PER_TOKEN,
};
/// See [`CPU_V1`].
pub const CPU_V0: CpuCosts =
    CpuCosts { iter_s: 0.8e-3, per_seq_s: 15e-6, request_s: 6e-3, per_prompt_token_s: 1e-6, stream_s_per_token: 0.0 };
/// Seconds V1's API server spends per streamed output token (see
/// [`CpuCosts::stream_s_per_token`]); V0 pays its output processing in the engine loop
/// (`per_seq_s`) instead.
pub const V1_STREAM_S_PER_TOKEN: f64 = 1.0 / 8000.0;

/// Fitted (gemm_compute, memory, smooth_p, kernel_s) for A100 (see docs/twin.md).
pub const A100_FIT: [f64; 4] = [0.704, 0.794, 1.56, 4.34e-6];
/// Fitted (gemm_compute, memory, smooth_p, kernel_s) for H100 (see docs/twin.md).
pub const H100_FIT: [f64; 4] = [0.689, 0.945, 1.44, 4.27e-6];
/// All-reduce (latency s, bus GB/s) for A100 DGX. The bandwidth is fitted to the NCCL
/// rows of the network profiles (latency 56 µs there); the latency is that of vLLM's
/// custom all-reduce, which takes the small messages of decode steps over NVLink: fitted
/// to the published 72B two-GPU batch-1 speed (`docs/fidelity.md`, point p072).
pub const A100_AR: [f64; 2] = [20.0e-6, 179.0];
/// All-reduce (latency s, bus GB/s) for H100 DGX: bandwidth from the NCCL profile rows
/// (latency 30.4 µs there), latency of vLLM's custom all-reduce fitted to the published
/// 70B four-GPU batch latency on H200 (point p027).
pub const H100_AR: [f64; 2] = [12.0e-6, 352.0];
/// The NCCL fit of the network profiles, (latency s, bus GB/s): A100, H100 (checked
/// against the profiles by `tests/twin_perf_fit.rs`).
pub const NCCL_AR: [[f64; 2]; 2] = [[56.0e-6, 179.0], [30.4e-6, 352.0]];

/// Whether `gpu` takes the H100 family's fitted constants (H100, H200) rather than the
/// A100 family's.
fn hopper(gpu: &GpuSpec) -> bool {
    gpu.name.starts_with('H')
}

/// NCCL's all-reduce latency on `gpu`'s family, seconds ([`NCCL_AR`]): the twin's
/// all-reduce latency before vLLM's custom all-reduce was modelled.
pub fn nccl_allreduce_latency_s(gpu: &GpuSpec) -> f64 {
    NCCL_AR[hopper(gpu) as usize][0]
}

/// The default roofline model for one (model, GPU, tensor-parallel degree).
#[derive(Clone, Debug)]
pub struct RooflinePerf {
    /// Model architecture.
    pub model: ModelSpec,
    /// GPU.
    pub gpu: GpuSpec,
    /// Tensor-parallel degree (GPUs per replica).
    pub tp: u32,
    /// Efficiency factors.
    pub eff: Efficiency,
}

/// Per-layer shapes on one GPU.
#[derive(Clone, Copy, Debug)]
struct LayerDims {
    h: f64,
    q: f64,   // query width per GPU (heads/t × d)
    kv: f64,  // key (or value) width per GPU
    ffn: f64, // intermediate per GPU
}

fn smooth_max(a: f64, b: f64, p: f64) -> f64 {
    if a <= 0.0 {
        return b;
    }
    if b <= 0.0 {
        return a;
    }
    let m = a.max(b);
    m * ((a / m).powf(p) + (b / m).powf(p)).powf(1.0 / p)
}

/// Roofline time of the operators of one layer that the profiles measure (everything but
/// attention and communication), for `tokens` tokens. Also used by the fit.
fn layer_linear_s(d: LayerDims, tokens: f64, peak_flops: f64, bw: f64, e: &Efficiency) -> f64 {
    layer_linear_q(d, tokens, WeightPath::bf16(peak_flops * e.gemm_compute), bw, e)
}

/// How the GEMMs of a model read and multiply their weights on one GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
struct WeightPath {
    /// Bytes per weight read from HBM.
    bytes: f64,
    /// FLOP/s the GEMMs reach when compute-bound.
    flops: f64,
}

impl WeightPath {
    fn bf16(peak_flops: f64) -> WeightPath {
        WeightPath { bytes: 2.0, flops: peak_flops }
    }
    /// The path of `fmt` on `gpu` under `e`: FP8 on FP8 tensor cores runs at the FP8 peak
    /// times `fp8_compute`; weight-only formats (and FP8 on GPUs without FP8 tensor cores,
    /// which vLLM runs as weight-only FP8) dequantise in the kernel and reach
    /// `weight_only_compute` of the 16-bit rate.
    fn of(fmt: WeightFormat, gpu: &GpuSpec, e: &Efficiency) -> WeightPath {
        let bf16 = gpu.peak_bf16_tflops * 1e12 * e.gemm_compute;
        let bytes = fmt.bytes_per_weight();
        match (fmt, gpu.peak_fp8_tflops) {
            (WeightFormat::Bf16, _) => WeightPath { bytes, flops: bf16 },
            (WeightFormat::Fp8, Some(tf)) => WeightPath { bytes, flops: tf * 1e12 * e.fp8_compute },
            _ => WeightPath { bytes, flops: bf16 * e.weight_only_compute },
        }
    }
}

/// [`layer_linear_s`] with the weights read and multiplied as `w` says (`w.flops` already
/// includes the GEMM efficiency).
fn layer_linear_q(d: LayerDims, tokens: f64, w: WeightPath, bw: f64, e: &Efficiency) -> f64 {
    let gemm = |k: f64, n: f64| {
        let c = 2.0 * tokens * k * n / w.flops;
        let m = (w.bytes * k * n + 2.0 * tokens * (k + n)) / (bw * e.memory);
        smooth_max(c, m, e.smooth_p) + e.kernel_s
    };
    let g = gemm(d.h, d.q + 2.0 * d.kv) + gemm(d.q, d.h) + gemm(d.h, 2.0 * d.ffn) + gemm(d.ffn, d.h);
    // Element-wise: 2 norms (r+w of T×h), RoPE (r+w of q and k), act (r 2·ffn, w ffn), add (r 2h, w h); bf16.
    let bytes = 2.0 * tokens * (2.0 * 2.0 * d.h + 2.0 * (d.q + d.kv) + 3.0 * d.ffn + 3.0 * d.h);
    g + bytes / (bw * e.memory) + 5.0 * e.kernel_s
}

impl RooflinePerf {
    /// A roofline model with the fitted efficiencies of `gpu`.
    pub fn new(model: &ModelSpec, gpu: &GpuSpec, tp: u32) -> RooflinePerf {
        RooflinePerf { model: model.clone(), gpu: gpu.clone(), tp: tp.max(1), eff: Efficiency::for_gpu(gpu) }
    }
    /// The same model with the engine CPU costs of `cpu` (see [`super::engine::EngineConfig::cpu_costs`]).
    pub fn with_cpu(mut self, cpu: CpuCosts) -> RooflinePerf {
        self.eff.iter_overhead_s = cpu.iter_s;
        self.eff.per_seq_overhead_s = cpu.per_seq_s;
        self
    }
    fn dims(&self) -> LayerDims {
        let t = self.tp as f64;
        let m = &self.model;
        LayerDims {
            h: m.hidden as f64,
            q: (m.heads * m.head_dim) as f64 / t,
            kv: (m.kv_heads * m.head_dim) as f64 / t,
            ffn: m.intermediate as f64 / t,
        }
    }
    fn allreduce_s(&self, bytes: f64) -> f64 {
        if self.tp <= 1 {
            return 0.0;
        }
        let t = self.tp as f64;
        self.eff.allreduce_latency_s + 2.0 * (t - 1.0) / t * bytes / (self.eff.allreduce_bus_gb_s * 1e9)
    }
}

impl PerfModel for RooflinePerf {
    fn iteration_s(&self, b: &BatchShape) -> f64 {
        let tokens = (b.prefill_tokens + b.decode_seqs) as f64;
        if tokens <= 0.0 {
            return 0.0;
        }
        let e = &self.eff;
        let f = self.gpu.peak_bf16_tflops * 1e12;
        let bw = self.gpu.hbm_gb_s * 1e9;
        let d = self.dims();
        let hd = self.model.head_dim as f64;
        let q_heads = d.q / hd;
        let kv_bytes_per_tok_layer = 2.0 * d.kv * self.model.dtype_bytes as f64;
        let linear = layer_linear_q(d, tokens, WeightPath::of(self.model.weights, &self.gpu, e), bw, e);
        // Attention: prefill (compute-bound at long chunks) and decode (KV-read-bound).
        let mut attn = 0.0;
        if b.prefill_tokens > 0 {
            let c = 4.0 * q_heads * hd * b.prefill_attn_pairs / (f * e.attention_compute);
            let m = (b.prefill_past_tokens + b.prefill_tokens) as f64 * kv_bytes_per_tok_layer / (bw * e.memory);
            attn += c.max(m) + e.attention_kernel_s;
        }
        if b.decode_seqs > 0 {
            let ctx = b.decode_ctx_tokens as f64;
            let c = 4.0 * q_heads * hd * ctx / (f * e.attention_compute);
            let m = ctx * kv_bytes_per_tok_layer / (bw * e.memory);
            attn += c.max(m) + e.attention_kernel_s;
        }
        let comm = 2.0 * self.allreduce_s(tokens * d.h * 2.0);
        let per_layer = linear + attn + comm;
        // LM head over the sequences that emit a token (vocab sharded by t).
        let v = self.model.vocab as f64 / self.tp as f64;
        let nl = b.logit_seqs.max(1) as f64;
        let lm = smooth_max(
            2.0 * nl * d.h * v / (f * e.gemm_compute),
            2.0 * (d.h * v + nl * (d.h + v)) / (bw * e.memory),
            e.smooth_p,
        ) + e.kernel_s;
        let seqs = (b.decode_seqs + b.logit_seqs.saturating_sub(b.decode_seqs)).max(1) as f64;
        self.model.layers as f64 * per_layer + lm + e.iter_overhead_s + e.per_seq_overhead_s * seqs
    }
}

/// One row of a Vidur `mlp.csv` profile: measured per-layer time of the linear and
/// element-wise operators (median, ms) at a token count and tensor-parallel degree.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// Tokens in the batch.
    pub tokens: f64,
    /// Tensor-parallel degree.
    pub tp: f64,
    /// Hidden size.
    pub hidden: f64,
    /// Query heads (whole model).
    pub heads: f64,
    /// KV heads (whole model).
    pub kv_heads: f64,
    /// Intermediate size.
    pub ffn: f64,
    /// Σ of operator medians (all but `emb`), seconds.
    pub measured_s: f64,
}

/// Reads a Vidur `mlp.csv`; errors name the file and line.
pub fn read_profile(path: &Path) -> Result<Vec<ProfileRow>, TwinError> {
    let name = path.display().to_string();
    let e = |line: usize, m: String| TwinError::Trace { file: name.clone(), line, message: m };
    let mut rdr = csv::Reader::from_path(path).map_err(|x| e(0, x.to_string()))?;
    let headers = rdr.headers().map_err(|x| e(1, x.to_string()))?.clone();
    let col = |n: &str| headers.iter().position(|h| h == n).ok_or_else(|| e(1, format!("missing column `{n}`")));
    let ops = [
        "input_layernorm",
        "attn_pre_proj",
        "attn_rope",
        "attn_post_proj",
        "post_attention_layernorm",
        "mlp_up_proj",
        "mlp_act",
        "mlp_down_proj",
        "add",
    ];
    let op_cols: Vec<usize> = ops.iter().map(|o| col(&format!("time_stats.{o}.median"))).collect::<Result<_, _>>()?;
    let (ct, ctp, ch, chd, ckv, cf) = (
        col("num_tokens")?,
        col("num_tensor_parallel_workers")?,
        col("n_embd")?,
        col("n_head")?,
        col("n_kv_head")?,
        col("n_expanded_embd")?,
    );
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|x| e(line, x.to_string()))?;
        let num = |c: usize| -> Result<f64, TwinError> {
            rec.get(c)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| e(line, format!("column `{}` is not a number", headers.get(c).unwrap_or("?"))))
        };
        let mut ms = 0.0;
        for &c in &op_cols {
            ms += num(c)?;
        }
        out.push(ProfileRow {
            tokens: num(ct)?,
            tp: num(ctp)?,
            hidden: num(ch)?,
            heads: num(chd)?,
            kv_heads: num(ckv)?,
            ffn: num(cf)?,
            measured_s: ms / 1e3,
        });
    }
    Ok(out)
}

/// Predicted per-layer time of a profile row under `eff` on `gpu`.
pub fn predict_profile_row(r: &ProfileRow, gpu: &GpuSpec, eff: &Efficiency) -> f64 {
    let d = r.hidden / r.heads;
    let dims = LayerDims { h: r.hidden, q: r.heads * d / r.tp, kv: r.kv_heads * d / r.tp, ffn: r.ffn / r.tp };
    layer_linear_s(dims, r.tokens, gpu.peak_bf16_tflops * 1e12, gpu.hbm_gb_s * 1e9, eff)
}

/// Relative errors |pred − meas| / meas of `rows` under `eff`: (median, p90, max).
pub fn profile_errors(rows: &[ProfileRow], gpu: &GpuSpec, eff: &Efficiency) -> (f64, f64, f64) {
    let mut errs: Vec<f64> =
        rows.iter().map(|r| (predict_profile_row(r, gpu, eff) - r.measured_s).abs() / r.measured_s).collect();
    errs.sort_by(|a, b| a.total_cmp(b));
    if errs.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let q = |p: f64| errs[((errs.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.9), errs[errs.len() - 1])
}

/// Fits (gemm_compute, memory, smooth_p, kernel_s) to profile rows by coordinate search
/// on the mean squared log error. Deterministic; used offline (see docs/twin.md) and by tests.
pub fn fit_layer_efficiency(rows: &[ProfileRow], gpu: &GpuSpec, start: Efficiency) -> Efficiency {
    let loss = |e: &Efficiency| -> f64 {
        rows.iter().map(|r| (predict_profile_row(r, gpu, e) / r.measured_s).ln().powi(2)).sum::<f64>()
            / rows.len().max(1) as f64
    };
    let mut best = start;
    let mut best_l = loss(&best);
    let mut steps = [0.05, 0.05, 0.5, 1e-6];
    for _round in 0..40 {
        let mut improved = false;
        for k in 0..4 {
            for dir in [-1.0, 1.0] {
                let mut c = best;
                let v = match k {
                    0 => &mut c.gemm_compute,
                    1 => &mut c.memory,
                    2 => &mut c.smooth_p,
                    _ => &mut c.kernel_s,
                };
                *v += dir * steps[k];
                let ok = match k {
                    0 | 1 => (0.05..=1.0).contains(v),
                    2 => (1.0..=16.0).contains(v),
                    _ => *v >= 0.0,
                };
                if ok {
                    let l = loss(&c);
                    if l < best_l {
                        best = c;
                        best_l = l;
                        improved = true;
                    }
                }
            }
        }
        if !improved {
            for s in steps.iter_mut() {
                *s /= 2.0;
            }
        }
    }
    best
}

/// Fits all-reduce `(latency s, bus GB/s)` by least squares to a Vidur network
/// `all_reduce.csv`, over rows whose collective stays inside one node.
pub fn fit_allreduce(path: &Path) -> Result<(f64, f64, f64), TwinError> {
    let name = path.display().to_string();
    let e = |line: usize, m: String| TwinError::Trace { file: name.clone(), line, message: m };
    let mut rdr = csv::Reader::from_path(path).map_err(|x| e(0, x.to_string()))?;
    let headers = rdr.headers().map_err(|x| e(1, x.to_string()))?.clone();
    let col = |n: &str| headers.iter().position(|h| h == n).ok_or_else(|| e(1, format!("missing column `{n}`")));
    let (cm, cn, cs, cd) =
        (col("time_stats.all_reduce.median")?, col("num_workers")?, col("size")?, col("devices_per_node")?);
    let mut pts = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|x| e(i + 2, x.to_string()))?;
        let num = |c: usize| {
            rec.get(c)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .ok_or_else(|| e(i + 2, format!("column {c} is not a number")))
        };
        let (ms, n, size, dpn) = (num(cm)?, num(cn)?, num(cs)?, num(cd)?);
        if n >= 2.0 && dpn >= n {
            // x = ring bytes per GPU, y = seconds
            pts.push((2.0 * (n - 1.0) / n * size, ms / 1e3));
        }
    }
    if pts.len() < 2 {
        return Err(e(0, "fewer than two single-node all-reduce rows".into()));
    }
    let nf = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / nf, sy / nf);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let lat = my - slope * mx;
    let mut errs: Vec<f64> = pts.iter().map(|p| ((lat + slope * p.0) - p.1).abs() / p.1).collect();
    errs.sort_by(|a, b| a.total_cmp(b));
    Ok((lat, 1.0 / slope / 1e9, errs[errs.len() / 2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::catalog::Catalog;

    fn perf(model: &str, gpu: &str, tp: u32) -> RooflinePerf {
        let c = Catalog::default();
        RooflinePerf::new(c.model(model, "").unwrap(), c.gpu(gpu, "").unwrap(), tp)
    }

    #[test]
    fn llama3_8b_a100_is_in_published_range() {
        let p = perf("Llama-3-8B", "A100-80GB", 1);
        let pre = p.prefill_s(2048);
        assert!((0.10..0.20).contains(&pre), "prefill 2k = {pre}");
        let (a, b) = p.decode_affine(1);
        let tok_s = 1.0 / (a + b * 1000.0);
        assert!((50.0..110.0).contains(&tok_s), "batch-1 decode {tok_s} tok/s");
    }

    #[test]
    fn decode_is_affine_in_context() {
        let p = perf("Llama-3-70B", "H100-SXM", 4);
        let (a, b) = p.decode_affine(16);
        for ctx in [0u64, 1000, 50_000, 400_000] {
            let t = p.iteration_s(&BatchShape {
                decode_seqs: 16,
                decode_ctx_tokens: ctx,
                logit_seqs: 16,
                ..Default::default()
            });
            assert!((t - (a + b * ctx as f64)).abs() < 1e-9 * t.max(1.0), "{ctx}");
        }
    }

    #[test]
    fn attention_rows_from_profile_notes() {
        // Llama-2-7B on A100, ms per layer (quoted in data/profiles SOURCES.md).
        let p = perf("Llama-2-7B", "A100-80GB", 1);
        let e = p.eff;
        let f = p.gpu.peak_bf16_tflops * 1e12;
        let bw = p.gpu.hbm_gb_s * 1e9;
        let kvb = 2.0 * 4096.0 * 2.0;
        let dec = |n: f64, ctx: f64| {
            (4.0 * 4096.0 * n * ctx / (f * e.attention_compute)).max(n * ctx * kvb / (bw * e.memory))
                + e.attention_kernel_s
        };
        let pre = |c: f64, past: f64| {
            (4.0 * 4096.0 * c * (past + (c + 1.0) / 2.0) / (f * e.attention_compute))
                .max((past + c) * kvb / (bw * e.memory))
                + e.attention_kernel_s
        };
        for (pred, meas) in [
            (dec(64.0, 1728.0), 1.017e-3),
            (dec(128.0, 1664.0), 1.752e-3),
            (pre(288.0, 0.0), 0.042e-3),
            (pre(256.0, 3840.0), 0.189e-3),
        ] {
            let r = pred / meas;
            assert!((0.6..1.6).contains(&r), "pred {pred} meas {meas}");
        }
    }
}
