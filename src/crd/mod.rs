//! The custom resources: the namespaced `LLMWorkload`, what a cluster operator applies
//! and what the twin simulates, and the cluster-scoped [`GPUPool`] ([`pool`]) that many
//! workloads share.
//!
//! A workload has model `variants` (e.g. a 7B and a 70B model behind one endpoint), the
//! GPU pools they may run on (its own inline `gpuPools`, and `poolRefs` to shared
//! GPUPools), an `slo`, hard `limits`, where to read `metrics`, its `scheduling` priority
//! on shared pools, and the `policy` that decides replicas per (variant, pool).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod policy;
pub mod pool;
pub mod promotion;
pub mod retrain;
pub mod training;

use policy::PolicySpec;
pub use pool::{GPUPool, GPUPoolSpec, GPUPoolStatus};
pub use promotion::{LearningStatus, PromotionSpec};
pub use retrain::RetrainSpec;

/// Desired state of an LLM inference workload.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmos.dev",
    version = "v1alpha1",
    kind = "LLMWorkload",
    plural = "llmworkloads",
    shortname = "llmw",
    namespaced,
    status = "LLMWorkloadStatus",
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".status.summary.policy"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.policy.mode"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"RPS","type":"string","jsonPath":".status.summary.rps"}"#,
    printcolumn = r#"{"name":"SLO","type":"string","jsonPath":".status.summary.slo"}"#,
    printcolumn = r#"{"name":"$/h","type":"string","jsonPath":".status.summary.costPerHour"}"#,
    printcolumn = r#"{"name":"Slots","type":"string","priority":1,"jsonPath":".status.summary.slots"}"#,
    printcolumn = r#"{"name":"Last decision","type":"string","priority":1,"jsonPath":".status.summary.lastDecision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LLMWorkloadSpec {
    /// Model variants that can serve this workload's traffic.
    #[schemars(length(min = 1, max = 16))]
    pub variants: Vec<VariantSpec>,
    /// GPU node pools of this workload alone that replicas may be placed on. With
    /// `poolRefs` there must be at least one pool over both lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 0, max = 16))]
    pub gpu_pools: Vec<GpuPoolSpec>,
    /// Shared, cluster-scoped GPUPools replicas may be placed on, besides `gpuPools`.
    /// Each becomes one more pool slot (see `crd::pool::resolve_pools`); slot names are
    /// unique over `gpuPools` and `poolRefs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub pool_refs: Vec<PoolRefSpec>,
    /// This workload's claim on shared pools against the other workloads in them.
    #[serde(default, skip_serializing_if = "SchedulingSpec::is_default")]
    pub scheduling: SchedulingSpec,
    /// Latency objectives.
    #[serde(default)]
    pub slo: SloSpec,
    /// Hard limits the shield enforces on every decision.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Where live metrics are read from.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Which policy decides, and how.
    #[serde(default)]
    pub policy: PolicySpec,
    /// What the operator keeps of this workload's traffic for retraining its policy
    /// (`learning.record`); off unless enabled.
    #[serde(default, skip_serializing_if = "LearningSpec::is_default")]
    pub learning: LearningSpec,
}

/// Learning in the cluster: what the operator records of a workload's traffic
/// (`record`), how a policy retrained on it is judged and promoted (`promotion`), and
/// when it is retrained (`retrain`): one place for everything the operator learns from a
/// workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LearningSpec {
    /// The traffic record: one window of arrivals and token distributions per
    /// `windowSeconds`, written by the operator under its `--record-dir`.
    #[serde(skip_serializing_if = "RecordSpec::is_default")]
    pub record: RecordSpec,
    /// How a retrained policy (an `LLMPolicyTraining`'s evaluated candidate) is judged in
    /// shadow, promoted and rolled back; off unless enabled.
    #[serde(skip_serializing_if = "PromotionSpec::is_default")]
    pub promotion: PromotionSpec,
    /// Retraining on a schedule: a copy of a template `LLMPolicyTraining` every
    /// `intervalSeconds` once enough new traffic is recorded; off unless enabled.
    #[serde(skip_serializing_if = "RetrainSpec::is_default")]
    pub retrain: RetrainSpec,
}

impl LearningSpec {
    /// Whether every field has its default (the section is then left out when written).
    pub fn is_default(&self) -> bool {
        *self == LearningSpec::default()
    }
}

/// Shortest record window, seconds.
pub const RECORD_WINDOW_MIN_S: u32 = 5;
/// Longest record window, seconds (one day).
pub const RECORD_WINDOW_MAX_S: u32 = 86_400;
/// Smallest record size limit, bytes (64 KiB: eight segments of 8 KiB).
pub const RECORD_MAX_BYTES_MIN: u64 = 65_536;
/// Shortest retention, seconds (one hour).
pub const RECORD_RETENTION_MIN_S: u64 = 3_600;

/// What the operator records of a workload's traffic (`spec.learning.record`): per
/// window, the arrivals and the prompt and output token distributions read from vLLM's
/// metrics, with the SLO and fleet in force, appended to a crash-safe store in the
/// operator's `--record-dir` (`<dir>/<namespace>_<name>/`). Recording never delays a
/// reconcile: a window the writer cannot take is dropped and counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RecordSpec {
    /// Record this workload's traffic (default false). The operator must run with
    /// `--record-dir`; without it nothing is written and the operator says so in its log.
    pub enabled: bool,
    /// Length of one window, seconds (5 .. 86400, default 60). A window closes at the
    /// first control tick at or after its end, so it is at least one
    /// `policy.intervalSeconds` long.
    #[schemars(range(min = 5, max = 86400))]
    pub window_seconds: u32,
    /// Most bytes this workload's record may hold (at least 65536, default 134217728 =
    /// 128 MiB; one window is about 800 bytes). The oldest segments are deleted first.
    #[schemars(range(min = 65536))]
    pub max_bytes: u64,
    /// Windows older than this are deleted, seconds (at least 3600, default 1209600 = 14
    /// days), by whole segments.
    #[schemars(range(min = 3600))]
    pub retention_seconds: u64,
}

impl Default for RecordSpec {
    fn default() -> Self {
        RecordSpec { enabled: false, window_seconds: 60, max_bytes: 128 << 20, retention_seconds: 14 * 86_400 }
    }
}

impl RecordSpec {
    /// Whether every field has its default (the section is then left out when written).
    pub fn is_default(&self) -> bool {
        *self == RecordSpec::default()
    }

    /// What is wrong with the section, as `(field under spec.learning.record, message)`
    /// pairs: the bounds the schema states, checked again for specs that do not pass an
    /// API server (files, the twin, an old server that ignores the schema).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(RECORD_WINDOW_MIN_S..=RECORD_WINDOW_MAX_S).contains(&self.window_seconds) {
            out.push((
                "windowSeconds",
                format!(
                    "{} is outside {RECORD_WINDOW_MIN_S}..={RECORD_WINDOW_MAX_S} seconds; use e.g. 60",
                    self.window_seconds
                ),
            ));
        }
        if self.max_bytes < RECORD_MAX_BYTES_MIN {
            out.push(("maxBytes", format!("{} is less than {RECORD_MAX_BYTES_MIN} bytes", self.max_bytes)));
        }
        if self.retention_seconds < RECORD_RETENTION_MIN_S {
            out.push((
                "retentionSeconds",
                format!("{} is less than {RECORD_RETENTION_MIN_S} seconds (one hour)", self.retention_seconds),
            ));
        } else if self.retention_seconds < u64::from(self.window_seconds) {
            out.push((
                "retentionSeconds",
                format!("{} is shorter than one window ({} s)", self.retention_seconds, self.window_seconds),
            ));
        }
        out
    }
}

/// One model variant (a model served by one container image and arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantSpec {
    /// Name, unique in the workload; a DNS label (used in Deployment names).
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Model id (e.g. `meta-llama/Meta-Llama-3-8B-Instruct`); the twin maps it to its catalog.
    #[schemars(length(min = 1))]
    pub model: String,
    /// Container image of the inference server (e.g. `vllm/vllm-openai:v0.6.3`).
    #[schemars(length(min = 1))]
    pub image: String,
    /// Container arguments (e.g. `["--model", "...", "--tensor-parallel-size", "1"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Port the server listens on (HTTP API and `/metrics`).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// GPUs per replica; equals the tensor-parallel degree.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 16))]
    pub gpus_per_replica: u32,
    /// Answer quality of this variant, 0..1 (e.g. measured accuracy); used to trade quality for cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quality: Option<f64>,
    /// Pools this variant may run on, by slot name (of `gpuPools` or `poolRefs`); empty
    /// means every pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// Fewest replicas of this variant over all its pools.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: u32,
    /// Most replicas of this variant over all its pools.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_replicas: u32,
    /// Seconds a replica takes from scheduling to ready, if known (the twin measures it otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cold_start_seconds: Option<f64>,
}

/// A Kubernetes toleration of a GPU pool's taint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TolerationSpec {
    /// Taint key.
    #[schemars(length(min = 1, max = 316))]
    pub key: String,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Exists|Equal)$"))]
    pub operator: Option<String>,
    /// Taint value (with `Equal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(NoSchedule|PreferNoSchedule|NoExecute)?$"))]
    pub effect: Option<String>,
}

/// A pool of GPU nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuPoolSpec {
    /// Name, unique in the workload; a DNS label (used in Deployment names).
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// GPU type (e.g. `A100-80GB`, `H100-SXM`, `L4`); the twin maps it to its catalog.
    #[schemars(length(min = 1))]
    pub gpu_type: String,
    /// Node labels that select this pool (e.g. `nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the pool's taints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<TolerationSpec>,
    /// Price of one GPU of this pool per hour, in USD.
    #[schemars(range(min = 0.0))]
    pub price_per_gpu_hour: f64,
    /// GPUs this workload may use in the pool; absent means no limit known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub capacity_gpus: Option<u32>,
}

/// A reference to a shared, cluster-scoped GPUPool: the workload gets one pool slot
/// with the GPUPool's GPU type, price, node selector and tolerations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolRefSpec {
    /// Slot name, unique over `gpuPools` and `poolRefs`; a DNS label (used in Deployment
    /// names and named by variants' `pools`). Absent: the GPUPool's name, which must then
    /// be a DNS label of at most 20 characters too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Name of the GPUPool.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub pool: String,
    /// Most GPUs this workload may hold in the pool; absent means up to the pool's
    /// `capacityGpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_gpus: Option<u32>,
}

impl PoolRefSpec {
    /// The slot name: `name`, else the GPUPool's name.
    pub fn slot_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.pool)
    }
}

/// How a workload competes for GPUs of shared pools (`poolRefs`).
///
/// When the workloads in a shared GPUPool want more GPUs than it has, the arbiter grants
/// them by `priority`, highest first; within one priority, each workload's
/// `guaranteedGpus` are served first, and what is left is shared max-min fair (every
/// workload gets an equal share, or what it wants when that is less, the rest going to
/// those that want more). A workload may preempt (take GPUs already granted) only from
/// workloads of strictly lower priority, and never a lower-priority workload's guaranteed
/// GPUs for demand beyond its own guarantee: guaranteed GPUs are safe from everything but
/// the guarantees of higher priorities. Inline `gpuPools` belong to one workload and are
/// not arbitrated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SchedulingSpec {
    /// Higher wins GPUs of a shared pool from lower when the pool is short (default 0;
    /// negative is allowed). Set it to the `value` of the `priorityClassName` class so
    /// that llmos and kube-scheduler order workloads the same way.
    pub priority: i32,
    /// A Kubernetes PriorityClass put on every pod the operator creates for this
    /// workload, so that kube-scheduler's own preemption (of pods that cannot be
    /// scheduled) follows the same order as llmos's grants; `priority` should equal its
    /// value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub priority_class_name: Option<String>,
    /// GPUs over this workload's shared pools that workloads of lower priority cannot
    /// keep from it while it has traffic (default 0): they are served first within its
    /// priority and are not preempted by higher priorities' demand beyond their own
    /// guarantees. Keep the sum of guarantees within the pools' capacity and within the
    /// namespace's GPU ResourceQuota.
    #[schemars(range(min = 0, max = 100000))]
    pub guaranteed_gpus: u32,
}

impl SchedulingSpec {
    /// Whether every field has its default (the section is then left out when written).
    pub fn is_default(&self) -> bool {
        *self == SchedulingSpec::default()
    }
}

/// Latency objectives: a request meets the SLO when both its TTFT and its mean TPOT do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SloSpec {
    /// Time-to-first-token target, in milliseconds.
    #[schemars(range(min = 1.0))]
    pub ttft_ms: f64,
    /// Time-per-output-token target, in milliseconds.
    #[schemars(range(min = 0.1))]
    pub tpot_ms: f64,
    /// Percentile the targets are judged at (e.g. 90 for p90).
    #[schemars(range(min = 1.0, max = 100.0))]
    pub percentile: f64,
    /// Fraction of requests that must meet the SLO, 0..1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub target_attainment: f64,
}

impl LLMWorkloadSpec {
    /// The inline pools a variant may run on: its `pools`, or every pool when empty (spec
    /// order). A spec with `poolRefs` gets its shared pools here only once
    /// [`pool::resolve_pools`] has made them inline.
    pub fn pools_of<'a>(&'a self, variant: &'a VariantSpec) -> Vec<&'a GpuPoolSpec> {
        self.gpu_pools
            .iter()
            .filter(|p| variant.pools.is_empty() || variant.pools.iter().any(|n| n == &p.name))
            .collect()
    }

    /// Every pool slot name: the inline pools' names, then the poolRefs' slot names (spec
    /// order).
    pub fn pool_names(&self) -> Vec<&str> {
        self.gpu_pools
            .iter()
            .map(|p| p.name.as_str())
            .chain(self.pool_refs.iter().map(PoolRefSpec::slot_name))
            .collect()
    }

    /// The pool slot names a variant may run on, over inline pools and poolRefs: its
    /// `pools`, or every slot when empty (spec order, as [`Self::pool_names`]).
    pub fn pool_names_of<'a>(&'a self, variant: &VariantSpec) -> Vec<&'a str> {
        self.pool_names()
            .into_iter()
            .filter(|n| variant.pools.is_empty() || variant.pools.iter().any(|p| p == n))
            .collect()
    }
}

impl Default for SloSpec {
    fn default() -> Self {
        SloSpec { ttft_ms: 2000.0, tpot_ms: 100.0, percentile: 90.0, target_attainment: 0.95 }
    }
}

/// Hard limits, enforced by the shield after any policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Fewest replicas over all variants and pools.
    #[schemars(range(min = 0, max = 10000))]
    pub min_total_replicas: u32,
    /// Most replicas over all variants and pools.
    #[schemars(range(min = 0, max = 10000))]
    pub max_total_replicas: u32,
    /// Most the fleet may cost, in USD per hour; absent means no budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost_per_hour: Option<f64>,
    /// Most replicas a slot may change by in one control tick.
    #[schemars(range(min = 1, max = 1000))]
    pub max_step_change: u32,
    /// After a scale-down, no further scale-down of that slot for this long.
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_cooldown_seconds: u32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            min_total_replicas: 1,
            max_total_replicas: 64,
            max_cost_per_hour: None,
            max_step_change: 8,
            scale_down_cooldown_seconds: 60,
        }
    }
}

/// Where metrics come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricsSourceKind {
    /// Query a Prometheus server that scrapes the serving pods.
    #[default]
    Prometheus,
    /// Scrape the serving pods' `/metrics` directly.
    Scrape,
}

/// Where and how live metrics are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsSpec {
    /// Prometheus or direct scraping.
    pub source: MetricsSourceKind,
    /// Prometheus base URL (e.g. `http://prometheus.monitoring:9090`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
    /// Extra label matchers added to every query (e.g. `{cluster: prod}`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub label_selector: BTreeMap<String, String>,
    /// Window for rates and percentiles, in seconds.
    #[schemars(range(min = 5, max = 3600))]
    pub window_seconds: u32,
    /// Samples older than this are stale and treated as missing.
    #[schemars(range(min = 1, max = 3600))]
    pub stale_after_seconds: u32,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec {
            source: MetricsSourceKind::Prometheus,
            prometheus_url: None,
            label_selector: BTreeMap::new(),
            window_seconds: 60,
            stale_after_seconds: 120,
        }
    }
}

fn default_port() -> u16 {
    8000
}
fn default_one() -> u32 {
    1
}
fn default_max_replicas() -> u32 {
    16
}

/// Observed state, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMWorkloadStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Desired replicas over all slots.
    #[serde(default)]
    pub desired_replicas: u32,
    /// Ready replicas over all slots.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Per (variant, pool) slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotStatus>,
    /// The last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<DecisionStatus>,
    /// What a shadow policy would have done at the last tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<DecisionStatus>,
    /// Requests per second observed over the last window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_arrival_rate_rps: Option<f64>,
    /// SLO attainment observed over the last window, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
    /// Cost of the fleet now, USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_rate_usd_per_hour: Option<f64>,
    /// How often the shield changed a policy's decision, since the operator started managing this workload.
    #[serde(default)]
    pub shield_overrides: u64,
    /// Time of the last applied change of replicas (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_time: Option<String>,
    /// Time of the last applied scale-down per slot (RFC 3339), for the cooldown across restarts.
    /// Keys are `<variant>/<pool>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub last_scale_down: BTreeMap<String, String>,
    /// What the arbiter of the shared GPU pools granted at the last reconcile (absent for a
    /// workload without `poolRefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbitration: Option<ArbitrationStatus>,
    /// Where the promotion of retrained policies stands (`spec.learning.promotion`): the
    /// phase, the learned policy acting instead of the spec's, the policy history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<LearningStatus>,
    /// The figures above formatted for people, for `kubectl get` (written with every status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<StatusSummary>,
    /// Conditions: Ready, Progressing, Degraded, MetricsAvailable, PolicyReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The status figures formatted for `kubectl get llmw` (printer columns cannot format
/// numbers): rate with one decimal, SLO attainment in per cent, cost with two decimals,
/// and `-o wide`'s slots and last decision. `-` where the figure is not known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusSummary {
    /// The deciding policy, and the policy in shadow when the mode is `shadow`
    /// (e.g. `hpa`, `dqn (shadow)`).
    pub policy: String,
    /// Observed requests per second, one decimal (e.g. `176.0`).
    pub rps: String,
    /// Observed SLO attainment in per cent, one decimal (e.g. `95.2%`).
    pub slo: String,
    /// Cost of the fleet now, USD per hour, two decimals (e.g. `$12.34`).
    pub cost_per_hour: String,
    /// Every slot as `variant/pool ready/desired`, comma-separated.
    pub slots: String,
    /// The last decision's kind and reason, shortened.
    pub last_decision: String,
}

/// Status of one (variant, pool) slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// Desired replicas.
    pub desired_replicas: u32,
    /// Ready replicas.
    pub ready_replicas: u32,
}

/// A recorded decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionStatus {
    /// When (RFC 3339).
    pub time: String,
    /// Which policy made it.
    pub policy: String,
    /// Why.
    pub reason: String,
    /// Replicas per slot after the shield.
    pub targets: Vec<TargetStatus>,
    /// Whether the shield changed the policy's answer.
    #[serde(default)]
    pub shielded: bool,
    /// The shield rules that changed the policy's answer at this tick (e.g. `maxStep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shield_rules: Vec<String>,
}

/// Desired replicas of one (variant, pool) slot, as recorded in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// Desired replica count.
    pub replicas: u32,
}

/// What the arbiter of the shared GPU pools decided for a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArbitrationStatus {
    /// When (RFC 3339).
    pub time: String,
    /// The workload's shared slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<ArbitratedSlot>,
    /// What was refused, preempted or substituted, in words (empty when every proposal
    /// was granted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The last time a workload of higher priority took replicas of this one: who, when
    /// and how many (kept until the next preemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_preempted: Option<PreemptionStatus>,
}

/// One shared slot in [`ArbitrationStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArbitratedSlot {
    /// Variant name.
    pub variant: String,
    /// Pool slot name (the poolRef's name).
    pub pool: String,
    /// The GPUPool the slot is shared through.
    pub gpu_pool: String,
    /// Replicas held before the arbitration.
    pub held: u32,
    /// Replicas the workload asked for (after its shield).
    pub proposed: u32,
    /// Replicas granted.
    pub granted: u32,
}

/// A preemption of a workload's replicas by a workload of higher priority.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreemptionStatus {
    /// When (RFC 3339).
    pub time: String,
    /// The workload the GPUs went to (`namespace/name`), or empty when the pool's
    /// capacity fell below what its workloads held.
    pub by: String,
    /// GPUs taken.
    pub gpus: u32,
}

/// A status condition, as Kubernetes conventions describe it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type (an LLMWorkload's are Ready, Progressing, Degraded,
    /// MetricsAvailable and PolicyReady).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason a human can grep.
    pub reason: String,
    /// What happened and, when something is wrong, what to fix.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
