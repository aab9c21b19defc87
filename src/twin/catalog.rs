//! Hardware and model catalogs: what the twin knows about GPUs and model architectures.
//!
//! GPU figures are vendor datasheet numbers (dense bf16 tensor TFLOP/s without sparsity,
//! HBM bandwidth, usable memory as `nvidia-smi` reports it, per-direction NVLink or PCIe
//! bandwidth). The default price is a mid-market on-demand estimate per GPU-hour; a pool's
//! `pricePerGpuHour` in the LLMWorkload spec always takes precedence. Model figures are
//! from each model's published `config.json`. KV-cache bytes per token are derived
//! (`2 × layers × kv_heads × head_dim × dtype_bytes`), never typed in.
//!
//! Every base model also comes in quantized variants named by a suffix: `-FP8` (FP8
//! weights and activations on GPUs with FP8 tensor cores, FP8 weights with 16-bit compute
//! elsewhere), `-INT8` (8-bit weight-only, GPTQ style) and `-INT4` (4-bit weight-only with
//! 16-bit group scales, AWQ/GPTQ style; `-AWQ`, `-GPTQ-INT4` and `-W4A16` are aliases).
//! They share the base's architecture and KV cache (16-bit); what changes is the bytes of
//! the weights, the GEMM compute path ([`super::perf`]) and, where a published evaluation
//! exists, the quality relative to the base ([`ModelSpec::quality_vs_base`],
//! `data/fidelity/quantized-quality.csv`).
//!
//! The CRD's free-form `model` and `gpuType` strings are mapped to entries by a
//! normalised name (lowercase, punctuation and vendor prefixes and suffixes such as
//! `meta-`, `-instruct`, `-chat`, `-hf`, `nvidia-`, `-sxm4` removed); an unknown name is an
//! error that lists the known ones. Scenarios may add or override entries.

use serde::{Deserialize, Serialize};

use super::TwinError;

/// One GPU type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Canonical name (e.g. `A100-80GB`).
    pub name: String,
    /// Other names it is known by (normalised when compared).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Peak dense bf16 tensor throughput, TFLOP/s.
    pub peak_bf16_tflops: f64,
    /// HBM (or GDDR) bandwidth, GB/s.
    pub hbm_gb_s: f64,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// GPU-to-GPU bandwidth per direction (NVLink, or PCIe where there is none), GB/s.
    pub interconnect_gb_s: f64,
    /// Default price per GPU-hour, USD (a pool's price overrides it).
    pub default_usd_per_hour: f64,
    /// Peak dense FP8 tensor throughput, TFLOP/s; absent on GPUs without FP8 tensor cores
    /// (Ampere), where FP8 models run as 8-bit weight-only with 16-bit compute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_fp8_tflops: Option<f64>,
}

/// How a model's linear-layer weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// 16-bit (bf16 or fp16) weights and compute.
    #[default]
    Bf16,
    /// FP8 weights; FP8 activations and tensor cores where the GPU has them.
    Fp8,
    /// 8-bit integer weights, 16-bit activations (weight-only).
    Int8,
    /// 4-bit integer weights with a 16-bit scale per 128 weights, 16-bit activations.
    Int4,
}

impl WeightFormat {
    /// Bytes per stored weight, group scales included.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightFormat::Bf16 => 2.0,
            WeightFormat::Fp8 | WeightFormat::Int8 => 1.0 + 2.0 / 4096.0,
            WeightFormat::Int4 => 0.5 + 2.0 / 128.0,
        }
    }
    /// Whether the weights are stored in fewer than 16 bits.
    pub fn is_quantized(self) -> bool {
        self != WeightFormat::Bf16
    }
}

/// One model architecture (dense decoder-only transformer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Canonical name (e.g. `Llama-3-8B`).
    pub name: String,
    /// Other names it is known by (normalised when compared).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Transformer layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads (GQA).
    pub kv_heads: u32,
    /// Dimension of one head.
    pub head_dim: u32,
    /// MLP intermediate size (gated MLP: gate and up are each this wide).
    pub intermediate: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// Total parameters.
    pub params: f64,
    /// Bytes per weight and KV element (2 for bf16/fp16).
    pub dtype_bytes: u32,
    /// Longest context the model accepts (prompt + output), tokens.
    pub max_context: u32,
    /// Storage of the linear-layer weights (the embedding and LM head stay 16-bit).
    #[serde(default)]
    pub weights: WeightFormat,
    /// For a quantized variant: the base model's canonical name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// For a quantized variant: its published benchmark score divided by the base's (see
    /// `data/fidelity/quantized-quality.csv`); absent where no evaluation was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_vs_base: Option<f64>,
}

impl ModelSpec {
    /// KV-cache bytes per token over all layers (whole model, before tensor-parallel sharding).
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.layers as u64 * self.kv_heads as u64 * self.head_dim as u64 * self.dtype_bytes as u64
    }
    /// Parameters of the input embedding and the LM head (kept 16-bit when quantized;
    /// counted twice, as the catalog's models do not tie them).
    pub fn head_params(&self) -> f64 {
        (2.0 * self.vocab as f64 * self.hidden as f64).min(self.params)
    }
    /// Bytes of all weights: the linear layers in their [`WeightFormat`], embedding and LM
    /// head in 16 bits.
    pub fn weight_bytes(&self) -> f64 {
        if !self.weights.is_quantized() {
            return self.params * self.dtype_bytes as f64;
        }
        let head = self.head_params();
        (self.params - head) * self.weights.bytes_per_weight() + head * 2.0
    }
    /// Parameters read per forward pass: all but the input embedding table (a gather).
    pub fn streamed_params(&self) -> f64 {
        self.params - self.vocab as f64 * self.hidden as f64
    }
}

fn norm(s: &str) -> String {
    let mut n: String = s
        .rsplit('/')
        .next()
        .unwrap_or(s)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    for p in ["nvidia", "meta"] {
        if let Some(r) = n.strip_prefix(p) {
            if !r.is_empty() {
                n = r.to_string();
            }
        }
    }
    loop {
        let before = n.clone();
        for suf in ["instruct", "chat", "hf", "v01", "v02", "v03", "it", "sxm4", "sxm5", "sxm", "pcie", "hbm3e", "hbm3"]
        {
            if let Some(r) = n.strip_suffix(suf) {
                if !r.is_empty() {
                    n = r.to_string();
                }
            }
        }
        if n == before {
            return n;
        }
    }
}

/// The catalogs the twin looks names up in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// GPU types.
    pub gpus: Vec<GpuSpec>,
    /// Model architectures.
    pub models: Vec<ModelSpec>,
}

fn gpu(name: &str, aliases: &[&str], tf: f64, bw: f64, mem: f64, ic: f64, usd: f64) -> GpuSpec {
    GpuSpec {
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        peak_bf16_tflops: tf,
        hbm_gb_s: bw,
        memory_gib: mem,
        interconnect_gb_s: ic,
        default_usd_per_hour: usd,
        peak_fp8_tflops: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn model(
    name: &str,
    aliases: &[&str],
    layers: u32,
    hidden: u32,
    heads: u32,
    kv: u32,
    inter: u32,
    vocab: u32,
    params: f64,
    ctx: u32,
) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        layers,
        hidden,
        heads,
        kv_heads: kv,
        head_dim: hidden / heads,
        intermediate: inter,
        vocab,
        params,
        dtype_bytes: 2,
        max_context: ctx,
        weights: WeightFormat::Bf16,
        base: None,
        quality_vs_base: None,
    }
}

/// Published quality of quantized models relative to their base: (base, format, score
/// ratio, row ids in `data/fidelity/quantized-quality.csv`). The ratio is the quantized
/// model's average score over the base's on the same suite (Open LLM Leaderboard v1 average
/// for the Llama models, the mean of the MMLU and GSM8K ratios for Qwen3-8B); a score above
/// the base is capped at 1.
pub const QUANTIZED_QUALITY: &[(&str, WeightFormat, f64, &str)] = &[
    ("Llama-3-8B", WeightFormat::Fp8, 68.22 / 68.71, "q007"),
    ("Llama-3-8B", WeightFormat::Int8, 1.0, "q016"),
    ("Llama-3.1-8B", WeightFormat::Fp8, 73.44 / 73.79, "q008"),
    ("Llama-3.1-8B", WeightFormat::Int4, 67.57 / 69.32, "q013"),
    ("Llama-3.1-70B", WeightFormat::Fp8, 84.29 / 84.40, "q009"),
    ("Llama-3.1-70B", WeightFormat::Int4, 78.54 / 78.67, "q014"),
    ("Llama-3-70B", WeightFormat::Fp8, 79.16 / 79.51, "q012"),
    ("Llama-3-70B", WeightFormat::Int8, 77.90 / 79.18, "q019"),
    ("Qwen3-8B", WeightFormat::Fp8, (74.79 / 74.78 + 86.96 / 87.79) / 2.0, "q021,q022"),
    ("Qwen3-8B", WeightFormat::Int4, (73.59 / 74.78 + 86.96 / 87.79) / 2.0, "q027,q028"),
];

/// The quantized variants of `base`: `-FP8`, `-INT8` and `-INT4`, with every alias of the
/// base carrying the same suffixes (and `-AWQ`, `-GPTQ-INT4`, `-W4A16`, `-GPTQ-INT8`,
/// `-W8A16`, `-FP8-dynamic` for the usual checkpoint names).
pub fn quantized_variants(base: &ModelSpec) -> Vec<ModelSpec> {
    let forms: [(WeightFormat, &str, &[&str]); 3] = [
        (WeightFormat::Fp8, "FP8", &["FP8-dynamic", "FP8-static", "fp8-w8a8"]),
        (WeightFormat::Int8, "INT8", &["GPTQ-INT8", "W8A16", "quantized.w8a16"]),
        (WeightFormat::Int4, "INT4", &["AWQ", "GPTQ-INT4", "W4A16", "quantized.w4a16", "GPTQ"]),
    ];
    forms
        .iter()
        .map(|(fmt, suffix, extra)| {
            let mut names: Vec<String> = vec![base.name.clone()];
            names.extend(base.aliases.iter().cloned());
            let mut aliases = Vec::new();
            for n in &names {
                for s in std::iter::once(*suffix).chain(extra.iter().copied()) {
                    aliases.push(format!("{n}-{s}"));
                }
            }
            aliases.retain(|a| a != &format!("{}-{suffix}", base.name));
            ModelSpec {
                name: format!("{}-{suffix}", base.name),
                aliases,
                weights: *fmt,
                base: Some(base.name.clone()),
                quality_vs_base: QUANTIZED_QUALITY
                    .iter()
                    .find(|(b, f, _, _)| *b == base.name && f == fmt)
                    .map(|(_, _, r, _)| r.min(1.0)),
                ..base.clone()
            }
        })
        .collect()
}

impl Default for Catalog {
    fn default() -> Self {
        let base = default_models();
        let mut models = base.clone();
        for m in &base {
            models.extend(quantized_variants(m));
        }
        Catalog { gpus: default_gpus(), models }
    }
}

/// The built-in GPUs (peak dense TFLOP/s, HBM GB/s, memory GB, interconnect GB/s, price
/// per hour; see `gpu`).
fn default_gpus() -> Vec<GpuSpec> {
    let fp8 = |mut g: GpuSpec, tf: f64| {
        g.peak_fp8_tflops = Some(tf);
        g
    };
    vec![
        gpu("A100-40GB", &["A100-SXM4-40GB", "a100-40g"], 312.0, 1555.0, 40.0, 300.0, 2.50),
        gpu("A100-80GB", &["A100-SXM4-80GB", "a100-80g"], 312.0, 2039.0, 80.0, 300.0, 3.00),
        fp8(
            gpu(
                "H100-SXM",
                &["H100", "H100-80GB", "H100-SXM5-80GB", "H100-80GB-HBM3"],
                989.0,
                3350.0,
                79.6,
                450.0,
                4.50,
            ),
            1979.0,
        ),
        fp8(gpu("H200", &["H200-141GB", "H200-SXM-141GB"], 989.0, 4800.0, 140.4, 450.0, 5.50), 1979.0),
        fp8(gpu("L4", &["L4-24GB"], 121.0, 300.0, 22.5, 32.0, 0.80), 242.5),
        gpu("A10G", &["A10G-24GB"], 70.0, 600.0, 22.5, 32.0, 1.20),
    ]
}

/// The built-in base models (layers, hidden size, attention heads, KV heads, FFN width,
/// vocabulary, parameters, context length), from each model's `config.json`. Qwen2.5-7B
/// has Qwen2-7B's architecture and is an alias of it; Qwen3-32B's heads are 128 wide
/// (64 × 128 ≠ 5120).
fn default_models() -> Vec<ModelSpec> {
    vec![
        model(
            "Llama-2-7B",
            &["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", "llama2-7b"],
            32,
            4096,
            32,
            32,
            11008,
            32000,
            6.738e9,
            4096,
        ),
        model(
            "Llama-3-8B",
            &["meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct", "llama3-8b"],
            32,
            4096,
            32,
            8,
            14336,
            128256,
            8.030e9,
            8192,
        ),
        model(
            "Llama-3.1-8B",
            &["meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3.1-8b"],
            32,
            4096,
            32,
            8,
            14336,
            128256,
            8.030e9,
            131072,
        ),
        model(
            "Llama-3.1-70B",
            &["meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct", "llama3.1-70b"],
            80,
            8192,
            64,
            8,
            28672,
            128256,
            70.554e9,
            131072,
        ),
        model(
            "Llama-3-70B",
            &["meta-llama/Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B-Instruct", "llama3-70b"],
            80,
            8192,
            64,
            8,
            28672,
            128256,
            70.554e9,
            8192,
        ),
        model(
            "Mistral-7B",
            &["mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.2", "mistral-7b-chat"],
            32,
            4096,
            32,
            8,
            14336,
            32000,
            7.242e9,
            32768,
        ),
        model(
            "Llama-2-70B",
            &["meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b-chat-hf", "llama2-70b"],
            80,
            8192,
            64,
            8,
            28672,
            32000,
            68.977e9,
            4096,
        ),
    ]
    .into_iter()
    .chain(qwen_models())
    .collect()
}

/// The built-in Qwen models (see [`default_models`]).
fn qwen_models() -> Vec<ModelSpec> {
    vec![
        model(
            "Qwen2-7B",
            &["Qwen/Qwen2-7B", "Qwen/Qwen2-7B-Instruct", "Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"],
            28,
            3584,
            28,
            4,
            18944,
            152064,
            7.616e9,
            32768,
        ),
        model("Qwen2.5-14B", &["Qwen/Qwen2.5-14B-Instruct"], 48, 5120, 40, 8, 13824, 152064, 14.77e9, 32768),
        model("Qwen2.5-72B", &["Qwen/Qwen2.5-72B-Instruct"], 80, 8192, 64, 8, 29568, 152064, 72.71e9, 32768),
        model("Qwen3-8B", &["Qwen/Qwen3-8B"], 36, 4096, 32, 8, 12288, 151936, 8.19e9, 40960),
        ModelSpec {
            head_dim: 128,
            ..model("Qwen3-32B", &["Qwen/Qwen3-32B"], 64, 5120, 64, 8, 25600, 151936, 32.8e9, 40960)
        },
    ]
}

impl Catalog {
    /// Adds entries, replacing any of the same canonical name.
    pub fn extend(&mut self, gpus: &[GpuSpec], models: &[ModelSpec]) {
        for g in gpus {
            self.gpus.retain(|x| norm(&x.name) != norm(&g.name));
            self.gpus.push(g.clone());
        }
        for m in models {
            self.models.retain(|x| norm(&x.name) != norm(&m.name));
            self.models.push(m.clone());
        }
    }

    /// The GPU type called `name`; `field` names the spec field in the error.
    pub fn gpu(&self, name: &str, field: &str) -> Result<&GpuSpec, TwinError> {
        let n = norm(name);
        self.gpus.iter().find(|g| norm(&g.name) == n || g.aliases.iter().any(|a| norm(a) == n)).ok_or_else(|| {
            TwinError::Config {
                field: field.into(),
                message: format!(
                    "unknown GPU type `{name}`; known: {}",
                    self.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        })
    }

    /// The model called `name`; `field` names the spec field in the error.
    pub fn model(&self, name: &str, field: &str) -> Result<&ModelSpec, TwinError> {
        let n = norm(name);
        self.models.iter().find(|m| norm(&m.name) == n || m.aliases.iter().any(|a| norm(a) == n)).ok_or_else(|| {
            TwinError::Config {
                field: field.into(),
                message: format!(
                    "unknown model `{name}`; known: {}",
                    self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map() {
        let c = Catalog::default();
        for s in ["meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b", "Llama-3-8B", "llama3-8b"] {
            assert_eq!(c.model(s, "m").unwrap().name, "Llama-3-8B", "{s}");
        }
        assert_eq!(c.model("mistralai/Mistral-7B-Instruct-v0.2", "m").unwrap().name, "Mistral-7B");
        assert_eq!(c.model("meta-llama/Llama-3.1-8B-Instruct", "m").unwrap().name, "Llama-3.1-8B");
        assert_eq!(c.model("meta-llama/Llama-2-70b-chat-hf", "m").unwrap().name, "Llama-2-70B");
        for s in ["A100-80GB", "NVIDIA-A100-SXM4-80GB", "a100-80gb"] {
            assert_eq!(c.gpu(s, "g").unwrap().name, "A100-80GB", "{s}");
        }
        assert_eq!(c.gpu("H100-SXM", "g").unwrap().name, "H100-SXM");
        assert_eq!(c.gpu("NVIDIA-H100-80GB-HBM3", "g").unwrap().name, "H100-SXM");
        let e = c.model("gpt-5", "spec.variants[0].model").unwrap_err().to_string();
        assert!(e.contains("spec.variants[0].model") && e.contains("Llama-3-70B"), "{e}");
        assert!(c.gpu("A100", "g").is_err(), "ambiguous A100 must not silently pick a size");
    }

    #[test]
    fn kv_bytes_derived() {
        let c = Catalog::default();
        assert_eq!(c.model("Llama-3-8B", "").unwrap().kv_bytes_per_token(), 131_072);
        assert_eq!(c.model("Llama-2-7B", "").unwrap().kv_bytes_per_token(), 524_288);
        assert_eq!(c.model("Llama-3-70B", "").unwrap().kv_bytes_per_token(), 327_680);
    }

    #[test]
    fn quantized_variants_are_named_and_sized() {
        let c = Catalog::default();
        let base = c.model("Llama-3.1-8B", "").unwrap();
        for (name, fmt) in [
            ("meta-llama/Meta-Llama-3.1-8B-Instruct-FP8", WeightFormat::Fp8),
            ("llama3.1-8b-awq", WeightFormat::Int4),
            ("Llama-3.1-8B-GPTQ-INT4", WeightFormat::Int4),
            ("Llama-3.1-8B-W8A16", WeightFormat::Int8),
        ] {
            let m = c.model(name, "m").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.weights, fmt, "{name}");
            assert_eq!(m.base.as_deref(), Some("Llama-3.1-8B"));
            assert_eq!(m.kv_bytes_per_token(), base.kv_bytes_per_token(), "KV stays 16-bit");
        }
        let fp8 = c.model("Llama-3.1-8B-FP8", "").unwrap();
        let int4 = c.model("Llama-3.1-8B-INT4", "").unwrap();
        // 8.03 B params, 1.05 B of them embedding + head kept 16-bit.
        assert!((base.weight_bytes() / 1e9 - 16.06).abs() < 0.01, "{}", base.weight_bytes());
        assert!((fp8.weight_bytes() / 1e9 - 9.08).abs() < 0.02, "{}", fp8.weight_bytes());
        assert!((int4.weight_bytes() / 1e9 - 5.70).abs() < 0.02, "{}", int4.weight_bytes());
        assert!((fp8.quality_vs_base.unwrap() - 0.9953).abs() < 1e-3);
        assert!(c.model("Llama-2-7B-FP8", "").unwrap().quality_vs_base.is_none(), "no evaluation, no number");
        assert_eq!(c.model("Qwen/Qwen2.5-7B-Instruct", "").unwrap().name, "Qwen2-7B");
        assert_eq!(c.model("Qwen/Qwen3-32B", "").unwrap().head_dim, 128);
    }
}
