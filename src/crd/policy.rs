//! The `policy` section of an LLMWorkload: which policy decides, in which mode, how often,
//! and each policy's parameters.
//!
//! The section is a flat struct with a `kind` tag and one optional parameter block per
//! kind (`hpa:`, `kpa:`, ...) rather than a Rust enum, so the CRD's OpenAPI schema stays
//! structural (Kubernetes rejects `oneOf` with differing types) and every field can be
//! validated at admission.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which policy decides replica counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// A fixed replica count per slot (`static.replicas`).
    Static,
    /// Kubernetes Horizontal Pod Autoscaler algorithm.
    #[default]
    Hpa,
    /// Knative Pod Autoscaler (stable and panic windows).
    Kpa,
    /// KEDA-style queue-length threshold.
    Queue,
    /// Ray Serve style target ongoing requests with up/down delays.
    Ray,
    /// The learned DQN policy, loaded from a checkpoint.
    Dqn,
    /// Forecast planner: sizes for the arrival rate forecast over the next cold start.
    Forecast,
}

impl PolicyKind {
    /// All kinds, for error messages that list the valid ones.
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Static,
        PolicyKind::Hpa,
        PolicyKind::Kpa,
        PolicyKind::Queue,
        PolicyKind::Ray,
        PolicyKind::Dqn,
        PolicyKind::Forecast,
    ];
    /// The lowercase name used in specs and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyKind::Static => "static",
            PolicyKind::Hpa => "hpa",
            PolicyKind::Kpa => "kpa",
            PolicyKind::Queue => "queue",
            PolicyKind::Ray => "ray",
            PolicyKind::Dqn => "dqn",
            PolicyKind::Forecast => "forecast",
        }
    }
}

/// Whether decisions are applied (`active`) or only recorded next to the state (`shadow`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Decisions are applied to the Deployments.
    #[default]
    Active,
    /// Decisions are recorded in status and Events but not applied.
    Shadow,
}

impl PolicyMode {
    /// The lowercase name used in specs.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyMode::Active => "active",
            PolicyMode::Shadow => "shadow",
        }
    }
}

/// Where new replicas go when a variant may run on several pools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PlacementKind {
    /// The cheapest pool (per GPU-hour) with free GPUs first.
    #[default]
    Cheapest,
    /// Spread replicas evenly across the allowed pools.
    Spread,
}

/// How a policy chooses among model variants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VariantSelection {
    /// Scale the variants as they are; never switch.
    #[default]
    Fixed,
    /// The highest-quality variant whose fleet fits the budget.
    QualityFirst,
    /// The cheapest variant that meets the SLO.
    CostFirst,
}

/// Parameters of the static policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticParams {
    /// Replicas of each (variant, pool) slot the variant may run on.
    #[schemars(range(min = 0))]
    pub replicas: u32,
}

impl Default for StaticParams {
    fn default() -> Self {
        StaticParams { replicas: 1 }
    }
}

/// The metric an HPA scales on, per replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HpaMetric {
    /// `vllm:num_requests_running + vllm:num_requests_waiting` per replica.
    #[default]
    OngoingRequests,
    /// `vllm:num_requests_waiting` per replica.
    WaitingRequests,
    /// `vllm:num_requests_running` per replica.
    RunningRequests,
    /// `vllm:kv_cache_usage_perc` (mean over replicas, 0..1).
    KvCacheUsage,
}

/// One HPA metric target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaTarget {
    /// The metric.
    pub metric: HpaMetric,
    /// Target average value per replica (for `kvCacheUsage`, a fraction 0..1).
    #[schemars(range(min = 0.0))]
    pub target: f64,
}

/// Parameters of the Kubernetes HPA algorithm (defaults as Kubernetes documents them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HpaParams {
    /// Metric targets; the largest recommendation over them wins.
    pub targets: Vec<HpaTarget>,
    /// Ratio band around 1.0 within which the HPA does not scale.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
    /// Scale-down stabilisation window: the max recommendation over this window is used.
    pub scale_down_stabilization_seconds: u32,
    /// Scale-up policy: at most this percentage more pods per period.
    pub scale_up_percent: u32,
    /// Scale-up policy: at most this many more pods per period.
    pub scale_up_pods: u32,
    /// Period of the scale-up policies.
    pub scale_up_period_seconds: u32,
}

impl Default for HpaParams {
    fn default() -> Self {
        HpaParams {
            targets: vec![HpaTarget { metric: HpaMetric::OngoingRequests, target: 16.0 }],
            tolerance: 0.1,
            scale_down_stabilization_seconds: 300,
            scale_up_percent: 100,
            scale_up_pods: 4,
            scale_up_period_seconds: 15,
        }
    }
}

/// Parameters of the Knative KPA algorithm (defaults as Knative documents them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KpaParams {
    /// Target concurrent requests per replica.
    #[schemars(range(min = 0.0))]
    pub container_concurrency_target: f64,
    /// Fraction of the target to aim for (headroom for bursts).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub target_utilization: f64,
    /// Stable window length.
    pub stable_window_seconds: u32,
    /// Panic window as a percentage of the stable window (Knative default 10% = 6 s of 60 s).
    pub panic_window_percentage: f64,
    /// Enter panic when desired (panic window) ≥ this percentage of ready capacity.
    pub panic_threshold_percentage: f64,
    /// At most divide the replicas by this rate on one scale-down.
    pub max_scale_down_rate: f64,
    /// At most multiply the replicas by this rate on one scale-up.
    pub max_scale_up_rate: f64,
}

impl Default for KpaParams {
    fn default() -> Self {
        KpaParams {
            container_concurrency_target: 16.0,
            target_utilization: 0.7,
            stable_window_seconds: 60,
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_down_rate: 2.0,
            max_scale_up_rate: 1000.0,
        }
    }
}

/// Parameters of the KEDA-style queue threshold policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct QueueParams {
    /// Target waiting requests per replica.
    #[schemars(range(min = 0.0))]
    pub queue_length_per_replica: f64,
    /// How often the metric is polled.
    pub polling_interval_seconds: u32,
    /// Wait this long after the last active period before scaling down.
    pub cooldown_seconds: u32,
    /// Allow scaling to zero replicas when there is no traffic.
    pub allow_scale_to_zero: bool,
}

impl Default for QueueParams {
    fn default() -> Self {
        QueueParams {
            queue_length_per_replica: 4.0,
            polling_interval_seconds: 30,
            cooldown_seconds: 300,
            allow_scale_to_zero: false,
        }
    }
}

/// Parameters of the Ray Serve style policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RayParams {
    /// Target ongoing (running + waiting) requests per replica.
    #[schemars(range(min = 0.0))]
    pub target_ongoing_requests: f64,
    /// The need to scale up must persist this long before scaling up.
    pub upscale_delay_seconds: u32,
    /// The need to scale down must persist this long before scaling down.
    pub downscale_delay_seconds: u32,
}

impl Default for RayParams {
    fn default() -> Self {
        RayParams { target_ongoing_requests: 16.0, upscale_delay_seconds: 30, downscale_delay_seconds: 600 }
    }
}

/// Parameters of the forecast planner (`src/policy/forecast.rs` describes the algorithm).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ForecastParams {
    /// Requests per second one replica serves within the SLO (measure it for the model,
    /// GPU and request lengths; 1.3 is Llama-3-8B on an A100 on the Azure code trace).
    #[schemars(range(min = 0.0))]
    pub capacity_rps: f64,
    /// Seconds from asking for a replica to its being ready; absent: the largest
    /// `coldStartSeconds` of the variants, or 120 when none is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cold_start_seconds: Option<f64>,
    /// Seconds beyond the cold start the forecast must cover; absent: one control interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub horizon_seconds: Option<f64>,
    /// Percentile of the forecast the fleet is sized for (forecast + z·σ of recent
    /// forecast errors; 50 sizes for the point forecast).
    #[schemars(range(min = 50.0, max = 99.9))]
    pub percentile: f64,
    /// Holt's level smoothing weight per observation, (0, 1].
    #[schemars(range(min = 0.0, max = 1.0))]
    pub alpha: f64,
    /// Holt's trend smoothing weight per observation, [0, 1].
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta: f64,
    /// Length of the seasonal cycle in seconds (86400 for daily traffic); 0 turns the
    /// seasonal component off.
    #[schemars(range(min = 0.0))]
    pub season_seconds: f64,
    /// Bins of the seasonal profile per cycle (at most one per control interval is used).
    #[schemars(range(min = 2, max = 10000))]
    pub season_bins: u32,
    /// Weight of the newest cycle in each bin of the seasonal profile, (0, 1].
    #[schemars(range(min = 0.0, max = 1.0))]
    pub gamma: f64,
    /// Scale-down damping: the largest recommendation over this many seconds is kept.
    pub scale_down_stabilization_seconds: u32,
}

impl Default for ForecastParams {
    fn default() -> Self {
        ForecastParams {
            capacity_rps: 1.3,
            cold_start_seconds: None,
            horizon_seconds: None,
            percentile: 90.0,
            alpha: 0.5,
            beta: 0.1,
            season_seconds: 86400.0,
            season_bins: 96,
            gamma: 0.3,
            scale_down_stabilization_seconds: 120,
        }
    }
}

/// Parameters of the DQN policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DqnParams {
    /// Directory of the checkpoint (weights + JSON sidecar), or of an ensemble of
    /// checkpoints (`ensemble.json` naming member directories, whose Q-values are
    /// averaged), e.g. a mounted volume; or the name of a shipped policy (a bare name such
    /// as `azure-code-ppo`, looked up under `$LLMOS_POLICIES_DIR`, `/opt/llmos/policies`
    /// and `policies/`).
    pub checkpoint: String,
    /// Pins the checkpoint by its SHA-256 digest (64 hex digits, as `llmos digest DIR`
    /// prints): a checkpoint whose digest differs is not loaded (PolicyReady=False and a
    /// PolicyBuildFailed Event name both digests), so a replaced file on the volume
    /// cannot change what decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
    /// Record transitions under this directory for offline retraining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_transitions: Option<String>,
    /// What the policy does while the network's inputs are outside the range it was
    /// trained on (absent: the defaults of [`OutOfRangeParams`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_range: Option<OutOfRangeParams>,
}

/// The guard of a learned policy against inputs it never saw in training.
///
/// Each tick, every input feature is compared with the mean and standard deviation the
/// checkpoint recorded over its training observations; a feature further than `maxZ`
/// standard deviations away (or, for a feature that was constant in training, any
/// change) is out of range, unless it lies within the smallest and largest values the
/// feature took in training (checkpoints that record them). While any feature is out of range, the `fallback` policy
/// decides instead of the network; it sees every observation, so its windows and learned
/// state are warm when it takes over. Entering and leaving the fallback are published as
/// `PolicyWarning` Events naming the feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutOfRangeParams {
    /// Standard deviations from the training mean beyond which a feature is out of
    /// range; 0 turns the guard off.
    #[schemars(range(min = 0.0))]
    pub max_z: f64,
    /// The policy that decides while an input is out of range, in the command-line form
    /// (`hpa`, `forecast:capacity=8`, `ray:target=16`, or `hold` to keep the current
    /// fleet); it cannot be a learned kind.
    pub fallback: String,
}

impl Default for OutOfRangeParams {
    fn default() -> Self {
        OutOfRangeParams { max_z: DEFAULT_MAX_Z, fallback: "hpa".into() }
    }
}

/// Default [`OutOfRangeParams::max_z`].
pub const DEFAULT_MAX_Z: f64 = 6.0;

/// The `policy` section of an LLMWorkload spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicySpec {
    /// Which policy decides.
    pub kind: PolicyKind,
    /// Apply decisions (`active`) or only record them (`shadow`).
    pub mode: PolicyMode,
    /// Seconds between control ticks.
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
    /// Where new replicas go.
    pub placement: PlacementKind,
    /// How variants are chosen.
    pub variant_selection: VariantSelection,
    /// Parameters of `kind: static`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#static: Option<StaticParams>,
    /// Parameters of `kind: hpa`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hpa: Option<HpaParams>,
    /// Parameters of `kind: kpa`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kpa: Option<KpaParams>,
    /// Parameters of `kind: queue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueParams>,
    /// Parameters of `kind: ray`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ray: Option<RayParams>,
    /// Parameters of `kind: dqn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dqn: Option<DqnParams>,
    /// Parameters of `kind: forecast`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastParams>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            kind: PolicyKind::Hpa,
            mode: PolicyMode::Active,
            interval_seconds: 15,
            placement: PlacementKind::Cheapest,
            variant_selection: VariantSelection::Fixed,
            r#static: None,
            hpa: None,
            kpa: None,
            queue: None,
            ray: None,
            dqn: None,
            forecast: None,
        }
    }
}
