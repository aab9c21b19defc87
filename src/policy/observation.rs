//! The observation and decision types shared by the live operator and the twin.
//!
//! This is "the one seam that matters": the twin produces an [`Observation`] from its
//! simulated engines, the live operator builds the same struct from vLLM's metrics
//! (through Prometheus or by scraping pods), and every [`crate::policy::Policy`] maps
//! it to a [`Decision`]. Field names carry their unit.

use serde::{Deserialize, Serialize};

/// The identity of one (variant, GPU pool) slot of a workload: where replicas of a
/// variant may run. The one slot key of the seam: the twin, the policies, the shield,
/// the encoders and the controller (one Deployment per slot) all name slots by it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotId {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
}

impl SlotId {
    /// A slot from names.
    pub fn new(variant: impl Into<String>, pool: impl Into<String>) -> Self {
        SlotId { variant: variant.into(), pool: pool.into() }
    }
    /// The key used in status maps, series and reports: `<variant>/<pool>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.variant, self.pool)
    }
    /// The slot a [`SlotId::key`] names, or `None` if `key` has no `/` (Kubernetes names
    /// have none, so the first `/` separates the two).
    pub fn from_key(key: &str) -> Option<SlotId> {
        key.split_once('/').map(|(v, p)| SlotId::new(v, p))
    }
}

/// What is observed of one (variant, GPU pool) slot of a workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotObservation {
    /// Variant name, as in the LLMWorkload spec.
    pub variant: String,
    /// GPU pool name, as in the LLMWorkload spec.
    pub pool: String,
    /// Replicas that are ready and serving.
    pub ready_replicas: u32,
    /// Replicas that exist but are not ready yet (pending placement or cold-starting).
    pub starting_replicas: u32,
    /// The replica count currently asked for (the last applied decision).
    pub desired_replicas: u32,
    /// GPUs each replica of this variant uses (its tensor-parallel degree).
    pub gpus_per_replica: u32,
    /// Requests waiting in the engines' queues of this slot (`vllm:num_requests_waiting`, summed).
    pub waiting_requests: f64,
    /// Requests being decoded or prefilled in this slot (`vllm:num_requests_running`, summed).
    pub running_requests: f64,
    /// Mean KV-cache usage of the slot's ready replicas, 0..=1 (`vllm:kv_cache_usage_perc`).
    pub kv_cache_usage: f64,
    /// Requests per second that reached this slot over the last window.
    pub arrival_rate_rps: f64,
    /// Seconds until the shield's scale-down cooldown lets this slot shrink again (0 when it
    /// may); set by [`crate::policy::shield::Shield::annotate`] just before a decision.
    #[serde(default)]
    pub scale_down_blocked_s: f64,
}

/// What is observed of one GPU pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolObservation {
    /// GPU pool name.
    pub name: String,
    /// GPUs not used by any replica; `None` when the pool's capacity is unknown (unbounded).
    pub free_gpus: Option<u32>,
    /// Price of one GPU of this pool per hour, in USD.
    pub price_per_gpu_hour_usd: f64,
}

/// Latency percentiles over the last window, in seconds; `None` when no request finished.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyObservation {
    /// Median time to first token.
    pub ttft_p50_s: Option<f64>,
    /// 90th percentile time to first token.
    pub ttft_p90_s: Option<f64>,
    /// 99th percentile time to first token.
    pub ttft_p99_s: Option<f64>,
    /// Median time per output token (inter-token latency).
    pub tpot_p50_s: Option<f64>,
    /// 90th percentile time per output token.
    pub tpot_p90_s: Option<f64>,
    /// 99th percentile time per output token.
    pub tpot_p99_s: Option<f64>,
}

/// Everything a policy sees of one workload at one control tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Time of the observation in seconds (twin: since the start of the run; live: Unix time).
    pub time_s: f64,
    /// Length of the window the rates and percentiles are computed over, in seconds.
    pub window_s: f64,
    /// Requests per second that arrived at the workload over the window.
    pub arrival_rate_rps: f64,
    /// Change of the arrival rate per second (requests/s²), over the window.
    pub arrival_rate_trend_rps_per_s: f64,
    /// Latency percentiles of requests that finished in the window.
    pub latency: LatencyObservation,
    /// Fraction of requests finished in the window that met the SLO; `None` when none finished.
    pub slo_attainment: Option<f64>,
    /// Per (variant, pool) slot, in the order of the spec's variants then pools.
    pub slots: Vec<SlotObservation>,
    /// Per GPU pool, in the order of the spec.
    pub pools: Vec<PoolObservation>,
    /// What the fleet costs now, in USD per hour (all GPUs that are loading, serving or draining).
    pub cost_rate_usd_per_hour: f64,
    /// Seconds since the last applied change of replicas; `None` before the first.
    pub seconds_since_last_action: Option<f64>,
    /// Metrics that could not be read for this observation (series names). Empty when complete.
    /// A policy must not act on an observation with missing inputs it depends on; the
    /// operator holds its state instead.
    pub missing: Vec<String>,
}

impl Observation {
    /// Total ready replicas over all slots.
    pub fn ready_replicas(&self) -> u32 {
        self.slots.iter().map(|s| s.ready_replicas).sum()
    }
    /// Total replicas asked for over all slots.
    pub fn desired_replicas(&self) -> u32 {
        self.slots.iter().map(|s| s.desired_replicas).sum()
    }
    /// Total waiting requests over all slots.
    pub fn waiting_requests(&self) -> f64 {
        self.slots.iter().map(|s| s.waiting_requests).sum()
    }
    /// Total running requests over all slots.
    pub fn running_requests(&self) -> f64 {
        self.slots.iter().map(|s| s.running_requests).sum()
    }
    /// True when every metric the observation is built from was read.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
    /// The slot for (variant, pool), if the workload has it.
    pub fn slot(&self, variant: &str, pool: &str) -> Option<&SlotObservation> {
        self.slots.iter().find(|s| s.variant == variant && s.pool == pool)
    }
}

/// Desired replicas of one (variant, pool) slot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotTarget {
    /// Variant name.
    pub variant: String,
    /// GPU pool name.
    pub pool: String,
    /// Desired replica count.
    pub replicas: u32,
}

/// A policy's answer: desired replicas per (variant, pool), with a reason a human can read.
///
/// Slots that the decision does not name keep their current desired count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Desired replicas per slot.
    pub targets: Vec<SlotTarget>,
    /// Why, in one line (shown in status and Events).
    pub reason: String,
    /// Conditions the policy wants a human to know about, one line each (e.g. the
    /// forecast planner's forecasts have become poor); the operator publishes each as a
    /// Warning Event (`PolicyWarning`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Decision {
    /// An empty decision (every slot keeps its desired count) with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Decision { targets: Vec::new(), reason: reason.into(), warnings: Vec::new() }
    }
    /// A decision that keeps every slot of `obs` at its current desired count.
    pub fn hold(obs: &Observation, reason: impl Into<String>) -> Self {
        Decision {
            targets: obs
                .slots
                .iter()
                .map(|s| SlotTarget { variant: s.variant.clone(), pool: s.pool.clone(), replicas: s.desired_replicas })
                .collect(),
            reason: reason.into(),
            warnings: Vec::new(),
        }
    }
    /// Desired replicas for (variant, pool), if the decision names that slot.
    pub fn replicas(&self, variant: &str, pool: &str) -> Option<u32> {
        self.targets.iter().find(|t| t.variant == variant && t.pool == pool).map(|t| t.replicas)
    }
    /// Sets the desired replicas for (variant, pool), adding the slot if absent.
    pub fn set(&mut self, variant: &str, pool: &str, replicas: u32) {
        match self.targets.iter_mut().find(|t| t.variant == variant && t.pool == pool) {
            Some(t) => t.replicas = replicas,
            None => self.targets.push(SlotTarget { variant: variant.into(), pool: pool.into(), replicas }),
        }
    }
    /// Total desired replicas over the named slots.
    pub fn total_replicas(&self) -> u32 {
        self.targets.iter().map(|t| t.replicas).sum()
    }
}

/// What a learned policy weighed at its last decision, per action branch: shown on the
/// operator's decision page next to the decision it led to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// What the scores are: `q-value` (a DQN's expected return per option, the members'
    /// mean for an ensemble) or `probability` (an actor's softmax over the allowed
    /// options).
    pub score: String,
    /// One entry per action branch, in the layout's order.
    pub branches: Vec<BranchScores>,
    /// A remark on how the scores were used (e.g. an input out of its training range
    /// handed the decision to the fallback policy); `None` when the network decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The scores of one action branch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchScores {
    /// The branch (e.g. `replicas[llama3-8b/a100]`).
    pub name: String,
    /// The options' names (e.g. `-1`, `+0`, `+2`).
    pub options: Vec<String>,
    /// One score per option; a masked option's score is what the network gave it.
    pub scores: Vec<f64>,
    /// Whether each option was allowed (the limits, the cooldown and the pools' room).
    pub allowed: Vec<bool>,
    /// The option taken.
    pub chosen: usize,
}
