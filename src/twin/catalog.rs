//! Hardware and model catalogs: what the twin knows about GPUs and model architectures.
//!
//! GPU figures are vendor datasheet numbers (dense bf16 tensor TFLOP/s without sparsity,
//! HBM bandwidth, usable memory as `nvidia-smi` reports it, per-direction NVLink or PCIe
//! bandwidth). The default price is a mid-market on-demand estimate per GPU-hour; a pool's
//! `pricePerGpuHour` in the LLMWorkload spec always takes precedence. Model figures are
//! from each model's published `config.json`. KV-cache bytes per token are derived
//! (`2 × layers × kv_heads × head_dim × dtype_bytes`), never typed in.
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
}

impl ModelSpec {
    /// KV-cache bytes per token over all layers (whole model, before tensor-parallel sharding).
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.layers as u64 * self.kv_heads as u64 * self.head_dim as u64 * self.dtype_bytes as u64
    }
    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> f64 {
        self.params * self.dtype_bytes as f64
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
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { gpus: default_gpus(), models: default_models() }
    }
}

/// The built-in GPUs (peak dense TFLOP/s, HBM GB/s, memory GB, interconnect GB/s, price
/// per hour; see `gpu`).
fn default_gpus() -> Vec<GpuSpec> {
    vec![
        gpu("A100-40GB", &["A100-SXM4-40GB", "a100-40g"], 312.0, 1555.0, 40.0, 300.0, 2.50),
        gpu("A100-80GB", &["A100-SXM4-80GB", "a100-80g"], 312.0, 2039.0, 80.0, 300.0, 3.00),
        gpu("H100-SXM", &["H100", "H100-80GB", "H100-SXM5-80GB", "H100-80GB-HBM3"], 989.0, 3350.0, 79.6, 450.0, 4.50),
        gpu("H200", &["H200-141GB", "H200-SXM-141GB"], 989.0, 4800.0, 140.4, 450.0, 5.50),
        gpu("L4", &["L4-24GB"], 121.0, 300.0, 22.5, 32.0, 0.80),
        gpu("A10G", &["A10G-24GB"], 70.0, 600.0, 22.5, 32.0, 1.20),
    ]
}

/// The built-in models (layers, hidden size, attention heads, KV heads, FFN width,
/// vocabulary, parameters, context length).
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
        model("Qwen2-7B", &["Qwen/Qwen2-7B", "Qwen/Qwen2-7B-Instruct"], 28, 3584, 28, 4, 18944, 152064, 7.616e9, 32768),
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
}
