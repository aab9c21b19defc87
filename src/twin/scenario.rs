//! Scenarios: an LLMWorkload spec plus the cluster and traffic it meets, as a TOML file.
//!
//! ```toml
//! name = "azure-conv-llama3-8b-a100"
//! spec_file = "../manifests/examples/llama3-8b.yaml"   # or an inline [spec] table
//! initial_replicas = [{ variant = "llama3-8b", pool = "a100", replicas = 4 }]
//! [workload]
//! trace = "../data/traces/AzureLLMInferenceTrace_conv.csv"
//! [engine]
//! max_num_batched_tokens = 8192
//! [cluster]
//! pod_startup_s = 30.0
//! ```
//!
//! Relative paths resolve against the scenario file's directory. The spec is the same
//! `LLMWorkload` spec (camelCase keys) a user applies to the cluster, either inline as a
//! `[spec]` table or as a YAML file (a whole `LLMWorkload` resource or just its spec).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, GpuSpec, ModelSpec};
use super::engine::EngineConfig;
use super::traces::servegen::ServegenData;
use super::traces::{ArrivalProcess, LengthDist, Trace, TraceFormat};
use super::TwinError;
use crate::crd::{LLMWorkload, LLMWorkloadSpec};

/// Where the traffic comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// A trace file to replay (Azure CSV, Mooncake JSONL, BurstGPT CSV).
    pub trace: Option<PathBuf>,
    /// Its format, if it cannot be guessed from the name and header.
    pub format: Option<TraceFormat>,
    /// Synthetic arrivals instead of a trace.
    pub synthetic: Option<SyntheticConfig>,
    /// ServeGen per-client traffic instead of a trace (`[workload.servegen]`).
    pub servegen: Option<ServegenConfig>,
    /// Load factor: trace times are divided by it (2 = twice the rate); synthetic rates are
    /// multiplied; ServeGen request counts are multiplied (on top of `servegen.load`).
    pub load: f64,
    /// Start of the trace window as a fraction of its span (ServeGen: of its slice).
    pub start_frac: f64,
    /// End of the trace window as a fraction of its span (ServeGen: of its slice).
    pub end_frac: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            trace: None,
            format: None,
            synthetic: None,
            servegen: None,
            load: 1.0,
            start_frac: 0.0,
            end_frac: 1.0,
        }
    }
}

/// ServeGen traffic: a service folder of per-client 10-minute fits, turned into arrivals by
/// [`super::traces::servegen::ServegenStream`] (seeded by the run's seed).
///
/// ```toml
/// [workload.servegen]
/// dir = "../data/traces/servegen/language/m-small"
/// clients = []            # client ids; empty = every client of the folder
/// load = 0.01             # 1 % of the recorded requests
/// window_days = [1, 2]    # the second day of the recording
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServegenConfig {
    /// The service folder (`chunk-<id>-trace.csv`, optional `chunk-<id>-dataset.json`).
    pub dir: PathBuf,
    /// Client ids to replay; empty means every client of the folder.
    #[serde(default)]
    pub clients: Vec<u32>,
    /// Scale of the request counts (each window holds `round(rate × 600 × load)` requests);
    /// multiplied by `workload.load`.
    #[serde(default = "one")]
    pub load: f64,
    /// Slice of the recording `[start, end)` in days from its start (default: all of it).
    #[serde(default)]
    pub window_days: Option<[f64; 2]>,
    /// Slice of the recording `[start, end)` in seconds, instead of `window_days`.
    #[serde(default)]
    pub window_s: Option<[f64; 2]>,
}

fn one() -> f64 {
    1.0
}

impl ServegenConfig {
    /// The slice `[start, end)` in seconds of a recording `span_s` long.
    pub fn slice_s(&self, span_s: f64) -> (f64, f64) {
        match (self.window_s, self.window_days) {
            (Some([a, b]), _) => (a, b),
            (None, Some([a, b])) => (a * 86_400.0, b * 86_400.0),
            (None, None) => (0.0, span_s),
        }
    }

    /// Loads the folder (relative to `base`) and checks the fields; errors name them.
    pub fn load_data(&self, base: &Path, origin: &str) -> Result<ServegenData, TwinError> {
        let f = |n: &str| format!("workload.servegen.{n}");
        if !(self.load.is_finite() && self.load > 0.0) {
            return Err(cfg_err(origin, &f("load"), format!("must be > 0, got {}", self.load)));
        }
        let dir = base.join(&self.dir);
        if !dir.is_dir() {
            return Err(cfg_err(
                origin,
                &f("dir"),
                format!("{} is not a folder (ServeGen data: see data/traces/SOURCES.md)", dir.display()),
            ));
        }
        let data = ServegenData::load(&dir, &self.clients).map_err(|e| match e {
            TwinError::Config { field, message } if field == "clients" => cfg_err(origin, &f("clients"), message),
            e => e,
        })?;
        let field = match (self.window_s, self.window_days) {
            (Some(_), Some(_)) => {
                return Err(cfg_err(origin, &f("window_days"), "give window_days or window_s, not both"));
            }
            (Some(_), None) => f("window_s"),
            _ => f("window_days"),
        };
        let span = data.span_s();
        let (a, b) = self.slice_s(span);
        if !(a.is_finite() && b.is_finite() && a >= 0.0 && b > a && b <= span + 1e-6) {
            return Err(cfg_err(
                origin,
                &field,
                format!(
                    "need 0 <= start < end <= the recording's end ({span} s = {} days), got [{a} s, {b} s)",
                    span / 86_400.0
                ),
            ));
        }
        Ok(data)
    }
}

/// Synthetic traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Arrival process.
    pub arrival: ArrivalProcess,
    /// Request lengths.
    pub lengths: LengthDist,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Stop after this many requests.
    #[serde(default)]
    pub max_requests: Option<u64>,
}

/// How requests are spread over ready replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Each request to the next ready replica in turn (a Kubernetes Service).
    RoundRobin,
    /// The ready replica with the fewest running + waiting requests.
    #[default]
    LeastOutstanding,
}

/// The cluster around the workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Pod scheduling, image pull and server start-up before weights load, seconds.
    pub pod_startup_s: f64,
    /// Weight loading bandwidth per replica, GB/s (cold start = start-up + weight bytes / this).
    pub weight_load_gb_s: f64,
    /// Load balancer.
    pub load_balancer: LoadBalancer,
    /// Requests held at the gateway while no replica is ready; more are rejected.
    pub gateway_queue_limit: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            pod_startup_s: 30.0,
            weight_load_gb_s: 2.0,
            load_balancer: LoadBalancer::LeastOutstanding,
            gateway_queue_limit: 100_000,
        }
    }
}

/// Replicas of one slot at the start of a run (ready at time zero).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialReplicas {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// Replicas.
    pub replicas: u32,
}

/// The scenario file as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Name for reports.
    #[serde(default)]
    pub name: Option<String>,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Inline LLMWorkload spec.
    #[serde(default)]
    pub spec: Option<LLMWorkloadSpec>,
    /// Path of an LLMWorkload YAML (resource or bare spec).
    #[serde(default)]
    pub spec_file: Option<PathBuf>,
    /// Traffic.
    #[serde(default)]
    pub workload: WorkloadConfig,
    /// Engine knobs (every replica).
    #[serde(default)]
    pub engine: EngineConfig,
    /// Cluster.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Fleet at time zero; empty means one replica of each variant on its first pool.
    #[serde(default)]
    pub initial_replicas: Vec<InitialReplicas>,
    /// Stop the run at this simulated time, seconds.
    #[serde(default)]
    pub max_duration_s: Option<f64>,
    /// Extra or overriding GPU catalog entries.
    #[serde(default)]
    pub gpus: Vec<GpuSpec>,
    /// Extra or overriding model catalog entries.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
    /// Overrides of the perf model's efficiency factors and overheads (e.g. to match a
    /// measured vLLM deployment); absent fields keep the fitted defaults.
    #[serde(default)]
    pub perf: PerfOverrides,
}

/// Optional overrides of [`super::perf::Efficiency`] fields, applied to every GPU type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerfOverrides {
    /// Fraction of peak FLOP/s GEMMs reach.
    pub gemm_compute: Option<f64>,
    /// Fraction of HBM bandwidth memory-bound kernels reach.
    pub memory: Option<f64>,
    /// Fraction of peak FLOP/s prefill attention reaches.
    pub attention_compute: Option<f64>,
    /// Engine CPU time per iteration, seconds.
    pub iter_overhead_s: Option<f64>,
    /// Engine CPU time per sequence per iteration, seconds.
    pub per_seq_overhead_s: Option<f64>,
}

impl PerfOverrides {
    /// Applies the overrides to `e`.
    pub fn apply(&self, e: &mut super::perf::Efficiency) {
        if let Some(v) = self.gemm_compute {
            e.gemm_compute = v;
        }
        if let Some(v) = self.memory {
            e.memory = v;
        }
        if let Some(v) = self.attention_compute {
            e.attention_compute = v;
        }
        if let Some(v) = self.iter_overhead_s {
            e.iter_overhead_s = v;
        }
        if let Some(v) = self.per_seq_overhead_s {
            e.per_seq_overhead_s = v;
        }
    }
    fn validate(&self, origin: &str) -> Result<(), TwinError> {
        for (n, v, lo, hi) in [
            ("perf.gemm_compute", self.gemm_compute, 1e-3, 1.0),
            ("perf.memory", self.memory, 1e-3, 1.0),
            ("perf.attention_compute", self.attention_compute, 1e-3, 1.0),
            ("perf.iter_overhead_s", self.iter_overhead_s, 0.0, 10.0),
            ("perf.per_seq_overhead_s", self.per_seq_overhead_s, 0.0, 1.0),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= lo && v <= hi) {
                    return Err(cfg_err(origin, n, format!("must be in [{lo}, {hi}], got {v}")));
                }
            }
        }
        Ok(())
    }
}

/// A loaded, validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file as written.
    pub file: ScenarioFile,
    /// Name for reports.
    pub name: String,
    /// Directory paths resolve against.
    pub base_dir: PathBuf,
    /// The workload spec.
    pub spec: LLMWorkloadSpec,
    /// Catalogs (defaults plus the scenario's entries).
    pub catalog: Catalog,
    /// The replayed trace, loaded once and shared by every twin of this scenario.
    pub trace: Option<Arc<Trace>>,
    /// The ServeGen folder of a `[workload.servegen]` scenario, loaded once and shared.
    pub servegen: Option<Arc<ServegenData>>,
}

fn cfg_err(origin: &str, field: &str, message: impl Into<String>) -> TwinError {
    TwinError::Config { field: format!("{origin}: {field}"), message: message.into() }
}

impl Scenario {
    /// Loads a scenario TOML file.
    pub fn load(path: &Path) -> Result<Scenario, TwinError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TwinError::Io { path: path.display().to_string(), message: e.to_string() })?;
        let mut s = Self::parse(&text, &path.display().to_string(), path.parent().unwrap_or(Path::new(".")))?;
        if s.name.is_empty() {
            s.name = path.file_stem().and_then(|x| x.to_str()).unwrap_or("scenario").to_string();
        }
        Ok(s)
    }

    /// Parses a scenario from TOML text; `origin` names it in errors and relative paths
    /// resolve against the current directory.
    pub fn from_toml_str(s: &str, origin: &str) -> Result<Scenario, TwinError> {
        Self::parse(s, origin, Path::new("."))
    }

    /// Parses a scenario from TOML text whose relative file names resolve against `base`.
    pub fn from_toml_str_in(s: &str, origin: &str, base: &Path) -> Result<Scenario, TwinError> {
        Self::parse(s, origin, base)
    }

    fn parse(text: &str, origin: &str, base: &Path) -> Result<Scenario, TwinError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
            TwinError::Parse { file: origin.to_string(), line, message: e.message().to_string() }
        })?;
        let spec = match (&file.spec, &file.spec_file) {
            (Some(s), None) => s.clone(),
            (None, Some(p)) => load_spec_yaml(&base.join(p))?,
            (Some(_), Some(_)) => return Err(cfg_err(origin, "spec", "give either [spec] or spec_file, not both")),
            (None, None) => return Err(cfg_err(origin, "spec", "missing: give an inline [spec] table or spec_file")),
        };
        let mut catalog = Catalog::default();
        catalog.extend(&file.gpus, &file.models);
        if file.workload.servegen.is_some() && (file.workload.trace.is_some() || file.workload.synthetic.is_some()) {
            return Err(cfg_err(
                origin,
                "workload",
                "give one of workload.trace, [workload.synthetic] or [workload.servegen], not several",
            ));
        }
        let servegen = match &file.workload.servegen {
            Some(sg) => Some(Arc::new(sg.load_data(base, origin)?)),
            None => None,
        };
        let trace = match (&file.workload.trace, &file.workload.synthetic) {
            (Some(t), None) => Some(Arc::new(Trace::load(&base.join(t), file.workload.format)?)),
            (None, Some(syn)) => {
                syn.arrival.validate(&format!("{origin}: workload.synthetic.arrival"))?;
                if !(syn.duration_s.is_finite() && syn.duration_s > 0.0) {
                    return Err(cfg_err(
                        origin,
                        "workload.synthetic.duration_s",
                        format!("must be > 0, got {}", syn.duration_s),
                    ));
                }
                None
            }
            (Some(_), Some(_)) => return Err(cfg_err(origin, "workload", "give either trace or synthetic, not both")),
            (None, None) if servegen.is_some() => None,
            (None, None) => {
                return Err(cfg_err(
                    origin,
                    "workload",
                    "missing: give workload.trace, [workload.synthetic] or [workload.servegen]",
                ))
            }
        };
        let w = &file.workload;
        if !(w.load.is_finite() && w.load > 0.0) {
            return Err(cfg_err(origin, "workload.load", format!("must be > 0, got {}", w.load)));
        }
        if !(0.0..1.0).contains(&w.start_frac) || !(w.end_frac > w.start_frac && w.end_frac <= 1.0) {
            return Err(cfg_err(origin, "workload.start_frac/end_frac", "need 0 <= start_frac < end_frac <= 1"));
        }
        let c = &file.cluster;
        if !(c.pod_startup_s.is_finite() && c.pod_startup_s >= 0.0) {
            return Err(cfg_err(origin, "cluster.pod_startup_s", "must be >= 0"));
        }
        if !(c.weight_load_gb_s.is_finite() && c.weight_load_gb_s > 0.0) {
            return Err(cfg_err(origin, "cluster.weight_load_gb_s", "must be > 0"));
        }
        validate_engine(&file.engine, origin)?;
        file.perf.validate(origin)?;
        if let Some(m) = file.max_duration_s {
            if !(m.is_finite() && m > 0.0) {
                return Err(cfg_err(origin, "max_duration_s", "must be > 0"));
            }
        }
        let mut spec = spec;
        derive_quantized_quality(&mut spec, &catalog);
        let s = Scenario {
            name: file.name.clone().unwrap_or_default(),
            file,
            base_dir: base.to_path_buf(),
            spec,
            catalog,
            trace,
            servegen,
        };
        s.validate(origin)?;
        Ok(s)
    }

    /// The workload spec.
    pub fn spec(&self) -> &LLMWorkloadSpec {
        &self.spec
    }

    /// Replaces the replayed trace (the `--trace` option of `simulate`).
    pub fn set_trace(&mut self, path: &Path) -> Result<(), TwinError> {
        self.trace = Some(Arc::new(Trace::load(path, None)?));
        self.file.workload.synthetic = None;
        self.file.workload.servegen = None;
        self.servegen = None;
        Ok(())
    }

    /// Seconds a replica of variant `v` takes from placement to ready: the variant's
    /// `coldStartSeconds`, else pod startup plus loading the weights.
    pub fn cold_start_s(&self, v: usize) -> Result<f64, TwinError> {
        let var = &self.spec.variants[v];
        if let Some(c) = var.cold_start_seconds {
            return Ok(c);
        }
        let model = self.catalog.model(&var.model, &format!("spec.variants[{v}].model"))?;
        Ok(self.file.cluster.pod_startup_s + model.weight_bytes() / (self.file.cluster.weight_load_gb_s * 1e9))
    }

    /// Pools a variant may use (indices into the spec's pools).
    pub fn allowed_pools(&self, v: usize) -> Vec<usize> {
        let var = &self.spec.variants[v];
        self.spec
            .gpu_pools
            .iter()
            .enumerate()
            .filter(|(_, p)| var.pools.is_empty() || var.pools.contains(&p.name))
            .map(|(i, _)| i)
            .collect()
    }

    /// KV blocks per replica of variant `v` on pool `p`, or an error naming the field when
    /// the model does not fit.
    pub fn kv_blocks(&self, v: usize, p: usize) -> Result<u32, TwinError> {
        let var = &self.spec.variants[v];
        let pool = &self.spec.gpu_pools[p];
        let model = self.catalog.model(&var.model, &format!("spec.variants[{v}].model"))?;
        let gpu = self.catalog.gpu(&pool.gpu_type, &format!("spec.gpuPools[{p}].gpuType"))?;
        let gib = 1024f64.powi(3);
        let (usable, blocks) = kv_blocks_for(model, gpu, var.gpus_per_replica, &self.file.engine);
        let min_blocks =
            (self.file.engine.max_num_batched_tokens.min(2048) as f64 / self.file.engine.block_size as f64).ceil();
        if blocks < min_blocks {
            return Err(TwinError::Config {
                field: format!("spec.variants[{v}] ({}) on spec.gpuPools[{p}] ({})", var.name, pool.name),
                message: format!(
                    "model {} ({:.1} GiB of weights) does not fit on {} × {} ({:.1} GiB usable after the {:.0}% memory limit and activation reserve): raise gpusPerReplica or restrict the variant's pools",
                    model.name,
                    model.weight_bytes() / gib,
                    var.gpus_per_replica,
                    gpu.name,
                    usable / gib,
                    self.file.engine.gpu_memory_utilization * 100.0
                ),
            });
        }
        Ok(blocks.min(u32::MAX as f64) as u32)
    }

    fn validate(&self, origin: &str) -> Result<(), TwinError> {
        let spec = &self.spec;
        if spec.variants.is_empty() || spec.gpu_pools.is_empty() {
            return Err(cfg_err(origin, "spec", "needs at least one variant and one gpu pool"));
        }
        for (i, p) in spec.gpu_pools.iter().enumerate() {
            if !(p.price_per_gpu_hour.is_finite() && p.price_per_gpu_hour >= 0.0) {
                return Err(cfg_err(
                    origin,
                    &format!("spec.gpuPools[{i}].pricePerGpuHour"),
                    format!("must be >= 0, got {}", p.price_per_gpu_hour),
                ));
            }
            self.catalog.gpu(&p.gpu_type, &format!("{origin}: spec.gpuPools[{i}].gpuType"))?;
        }
        for (v, var) in spec.variants.iter().enumerate() {
            self.catalog.model(&var.model, &format!("{origin}: spec.variants[{v}].model"))?;
            for p in &var.pools {
                if !spec.gpu_pools.iter().any(|x| &x.name == p) {
                    return Err(cfg_err(origin, &format!("spec.variants[{v}].pools"), format!("unknown pool `{p}`")));
                }
            }
            if let Some(c) = var.cold_start_seconds {
                if !(c.is_finite() && c >= 0.0) {
                    return Err(cfg_err(origin, &format!("spec.variants[{v}].coldStartSeconds"), "must be >= 0"));
                }
            }
            if let Some(q) = var.quality {
                if !(0.0..=1.0).contains(&q) {
                    return Err(cfg_err(origin, &format!("spec.variants[{v}].quality"), "must be in 0..=1"));
                }
            }
            for p in self.allowed_pools(v) {
                self.kv_blocks(v, p)?;
            }
        }
        if spec.policy.interval_seconds == 0 {
            return Err(cfg_err(origin, "spec.policy.intervalSeconds", "must be >= 1"));
        }
        self.validate_initial(origin)
    }

    /// Replaces the fleet at time zero (e.g. `llmos simulate --replicas`); errors name the
    /// entry and the unknown variant or pool.
    pub fn set_initial_replicas(&mut self, fleet: Vec<InitialReplicas>, origin: &str) -> Result<(), TwinError> {
        let old = std::mem::replace(&mut self.file.initial_replicas, fleet);
        if let Err(e) = self.validate_initial(origin) {
            self.file.initial_replicas = old;
            return Err(e);
        }
        Ok(())
    }

    fn validate_initial(&self, origin: &str) -> Result<(), TwinError> {
        let spec = &self.spec;
        for (i, r) in self.file.initial_replicas.iter().enumerate() {
            let Some(v) = spec.variants.iter().position(|x| x.name == r.variant) else {
                return Err(cfg_err(
                    origin,
                    &format!("initial_replicas[{i}].variant"),
                    format!("unknown variant `{}`", r.variant),
                ));
            };
            let Some(p) = spec.gpu_pools.iter().position(|x| x.name == r.pool) else {
                return Err(cfg_err(
                    origin,
                    &format!("initial_replicas[{i}].pool"),
                    format!("unknown pool `{}`", r.pool),
                ));
            };
            if !self.allowed_pools(v).contains(&p) {
                return Err(cfg_err(
                    origin,
                    &format!("initial_replicas[{i}]"),
                    format!("variant `{}` may not run on pool `{}`", r.variant, r.pool),
                ));
            }
        }
        Ok(())
    }
}

/// Checks the `[engine]` table; errors name the field.
fn validate_engine(e: &EngineConfig, origin: &str) -> Result<(), TwinError> {
    if e.block_size == 0 || e.max_num_seqs == 0 || e.max_num_batched_tokens == 0 {
        return Err(cfg_err(origin, "engine", "block_size, max_num_seqs and max_num_batched_tokens must be > 0"));
    }
    if e.enable_prefix_caching && (e.prefix_block_tokens == 0 || e.prefix_block_tokens % e.block_size != 0) {
        return Err(cfg_err(origin, "engine.prefix_block_tokens", "must be a positive multiple of block_size"));
    }
    if !(e.gpu_memory_utilization > 0.0 && e.gpu_memory_utilization <= 1.0) {
        return Err(cfg_err(origin, "engine.gpu_memory_utilization", "must be in (0, 1]"));
    }
    if e.num_scheduler_steps == 0 || (e.num_scheduler_steps > 1 && e.scheduler != super::engine::Scheduler::V0) {
        return Err(cfg_err(
            origin,
            "engine.num_scheduler_steps",
            "must be >= 1, and above 1 only with scheduler = \"v0\" (multi-step scheduling is a V0 feature)",
        ));
    }
    if let Some(r) = e.request_overhead_s {
        if !(r.is_finite() && (0.0..=10.0).contains(&r)) {
            return Err(cfg_err(origin, "engine.request_overhead_s", format!("must be in [0, 10], got {r}")));
        }
    }
    Ok(())
}

/// Memory an engine of `model` on `tp` × `gpu` may use (bytes) and the whole KV blocks
/// left after the weights: `gpu_memory_utilization × memory × tp − activation reserve × tp
/// − weights`, over the KV bytes of one block. Negative when the weights do not fit.
pub fn kv_blocks_for(model: &ModelSpec, gpu: &GpuSpec, tp: u32, engine: &EngineConfig) -> (f64, f64) {
    let tp = tp.max(1) as f64;
    let gib = 1024f64.powi(3);
    let usable = engine.gpu_memory_utilization * gpu.memory_gib * gib * tp - engine.activation_reserve_gib * gib * tp;
    let kv = usable - model.weight_bytes();
    let block_bytes = model.kv_bytes_per_token() as f64 * engine.block_size as f64;
    (usable, (kv / block_bytes).floor())
}

/// Gives a variant that names a quantized model and states no quality the quality of a
/// variant of its base model in the same spec, scaled by the published ratio
/// ([`super::catalog::ModelSpec::quality_vs_base`]). Without a base variant with a quality,
/// or without a published ratio, the variant is left without one.
pub fn derive_quantized_quality(spec: &mut LLMWorkloadSpec, catalog: &Catalog) {
    let base_quality: Vec<(String, f64)> = spec
        .variants
        .iter()
        .filter_map(|v| Some((catalog.model(&v.model, "").ok()?.name.clone(), v.quality?)))
        .collect();
    for v in spec.variants.iter_mut().filter(|v| v.quality.is_none()) {
        let Ok(m) = catalog.model(&v.model, "") else { continue };
        let (Some(base), Some(ratio)) = (&m.base, m.quality_vs_base) else { continue };
        if let Some((_, q)) = base_quality.iter().find(|(n, _)| n == base) {
            v.quality = Some(q * ratio);
        }
    }
}

fn load_spec_yaml(path: &Path) -> Result<LLMWorkloadSpec, TwinError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TwinError::Io { path: path.display().to_string(), message: e.to_string() })?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| yaml_err(path, e))?;
    if value.get("kind").is_some() {
        let w: LLMWorkload = serde_yaml::from_value(value).map_err(|e| yaml_err(path, e))?;
        Ok(w.spec)
    } else {
        serde_yaml::from_str(&text).map_err(|e| yaml_err(path, e))
    }
}

fn yaml_err(path: &Path, e: serde_yaml::Error) -> TwinError {
    TwinError::Parse {
        file: path.display().to_string(),
        line: e.location().map(|l| l.line()).unwrap_or(0),
        message: e.to_string(),
    }
}

/// Fraction of a trace's span in the training window; the test window is the rest. The
/// split of a trace into training and test traffic lives with the scenario: training
/// ([`crate::rl`]) and judging ([`crate::eval`]) both read it from here.
pub const TRAIN_FRACTION: f64 = 0.6;

/// Which part of the trace to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// The first [`TRAIN_FRACTION`] of the trace.
    Train,
    /// The rest of the trace (what learned policies are judged on).
    Test,
    /// The whole trace.
    All,
}

/// What one run replays: the traffic seed, the part of the scenario's traffic (fractions
/// of the trace's span, of the synthetic duration, or of the ServeGen slice) and the load
/// factor (1.0 = as recorded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunWindow {
    /// Seed of the run's randomness (trace resampling, synthetic arrivals).
    pub seed: u64,
    /// Start of the window, a fraction in 0..=1.
    pub start_frac: f64,
    /// End of the window, a fraction in 0..=1.
    pub end_frac: f64,
    /// Load factor: trace times are divided by it, rates and counts multiplied.
    pub load: f64,
}

impl RunWindow {
    /// The window `(start_frac, end_frac)` with this seed and load.
    pub fn new(seed: u64, (start_frac, end_frac): (f64, f64), load: f64) -> RunWindow {
        RunWindow { seed, start_frac, end_frac, load }
    }

    /// One of the named windows with this seed and load.
    pub fn named(seed: u64, window: Window, load: f64) -> RunWindow {
        RunWindow::new(seed, window.fractions(), load)
    }
}

impl Window {
    /// `(start_frac, end_frac)` of the trace span.
    pub fn fractions(self) -> (f64, f64) {
        match self {
            Window::Train => (0.0, TRAIN_FRACTION),
            Window::Test => (TRAIN_FRACTION, 1.0),
            Window::All => (0.0, 1.0),
        }
    }
}
