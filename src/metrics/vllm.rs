//! The one table that maps what llmos observes to vLLM's Prometheus metric names.
//!
//! vLLM (V1 engine, 0.8 and later) exports these families on `/metrics`, every series
//! labelled with `model_name` (the served model name) and `engine` (the engine index,
//! `"0"` unless data parallelism is on); `vllm:request_success_total` also carries
//! `finished_reason` (`stop`, `length`, `abort`, ...).
//!
//! | field | current name | older name (V0 engine) | type | aggregate over a slot's pods |
//! |---|---|---|---|---|
//! | waiting requests | `vllm:num_requests_waiting` | — | gauge | sum |
//! | running requests | `vllm:num_requests_running` | — | gauge | sum |
//! | KV-cache usage (0..1) | `vllm:kv_cache_usage_perc` | `vllm:gpu_cache_usage_perc` | gauge | mean |
//! | time to first token | `vllm:time_to_first_token_seconds` | — | histogram | merge buckets |
//! | time per output token | `vllm:inter_token_latency_seconds` | `vllm:time_per_output_token_seconds` | histogram | merge buckets |
//! | end-to-end latency | `vllm:e2e_request_latency_seconds` | — | histogram | merge buckets |
//! | finished requests | `vllm:request_success_total` | — | counter | sum of rates |
//! | prompt tokens | `vllm:prompt_tokens_total` | — | counter | sum of rates |
//! | generated tokens | `vllm:generation_tokens_total` | — | counter | sum of rates |
//! | preemptions | `vllm:num_preemptions_total` | — | counter | sum of rates |
//! | prompt tokens per finished request | `vllm:request_prompt_tokens` | — | histogram | merge buckets |
//! | generated tokens per finished request | `vllm:request_generation_tokens` | — | histogram | merge buckets |
//!
//! When a pod exports both the current and the older name (some releases did, with the
//! old one hidden behind `--show-hidden-metrics-for-version`), the current one wins.
//!
//! The twin renders exactly these names (it imports the constants below), so a policy
//! trained there reads the same signals in a cluster.
//!
//! Series are attributed to an `LLMWorkload` slot by three labels that Prometheus adds
//! from the pod's labels (`llmos.dev/workload`, `llmos.dev/variant`, `llmos.dev/pool`):
//! [`SERIES_LABEL_WORKLOAD`], [`SERIES_LABEL_VARIANT`], [`SERIES_LABEL_POOL`], plus
//! [`SERIES_LABEL_NAMESPACE`]. In Kubernetes service discovery the relabelling
//! `labelmap` with regex `__meta_kubernetes_pod_label_llmos_dev_(.+)` and replacement
//! `llmos_$1` produces them; targets written by `llmos twin-serve` carry them directly.

/// `vllm:num_requests_waiting`: requests queued in the engine (gauge).
pub const NUM_REQUESTS_WAITING: &str = "vllm:num_requests_waiting";
/// `vllm:num_requests_running`: requests in the running batch (gauge).
pub const NUM_REQUESTS_RUNNING: &str = "vllm:num_requests_running";
/// `vllm:kv_cache_usage_perc`: fraction of KV-cache blocks in use, 0..1 (gauge).
pub const KV_CACHE_USAGE_PERC: &str = "vllm:kv_cache_usage_perc";
/// `vllm:gpu_cache_usage_perc`: the V0 engine's name for [`KV_CACHE_USAGE_PERC`].
pub const GPU_CACHE_USAGE_PERC_LEGACY: &str = "vllm:gpu_cache_usage_perc";
/// `vllm:time_to_first_token_seconds`: time to first token per request (histogram).
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "vllm:time_to_first_token_seconds";
/// `vllm:inter_token_latency_seconds`: gap between consecutive output tokens (histogram).
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "vllm:inter_token_latency_seconds";
/// `vllm:time_per_output_token_seconds`: the older name of [`INTER_TOKEN_LATENCY_SECONDS`].
pub const TIME_PER_OUTPUT_TOKEN_SECONDS_LEGACY: &str = "vllm:time_per_output_token_seconds";
/// `vllm:e2e_request_latency_seconds`: arrival to last token per request (histogram).
pub const E2E_REQUEST_LATENCY_SECONDS: &str = "vllm:e2e_request_latency_seconds";
/// `vllm:request_success_total`: finished requests (counter, label `finished_reason`).
pub const REQUEST_SUCCESS_TOTAL: &str = "vllm:request_success_total";
/// `vllm:prompt_tokens_total`: prefilled prompt tokens (counter).
pub const PROMPT_TOKENS_TOTAL: &str = "vllm:prompt_tokens_total";
/// `vllm:generation_tokens_total`: generated tokens (counter).
pub const GENERATION_TOKENS_TOTAL: &str = "vllm:generation_tokens_total";

/// `vllm:num_preemptions_total`: requests preempted by the scheduler (counter).
pub const NUM_PREEMPTIONS_TOTAL: &str = "vllm:num_preemptions_total";
/// `vllm:request_prompt_tokens`: prompt tokens of each finished request (histogram,
/// vLLM's 1-2-5 buckets up to the model length).
pub const REQUEST_PROMPT_TOKENS: &str = "vllm:request_prompt_tokens";
/// `vllm:request_generation_tokens`: generated tokens of each finished request (histogram).
pub const REQUEST_GENERATION_TOKENS: &str = "vllm:request_generation_tokens";

/// Label vLLM puts on every series: the served model name.
pub const LABEL_MODEL_NAME: &str = "model_name";
/// Label vLLM puts on every series: the engine index (`"0"` without data parallelism).
pub const LABEL_ENGINE: &str = "engine";
/// Label of `vllm:request_success_total`: why the request finished.
pub const LABEL_FINISHED_REASON: &str = "finished_reason";
/// Histogram bucket upper bound label.
pub const LABEL_LE: &str = "le";

/// Series label naming the `LLMWorkload` (from pod label `llmos.dev/workload`).
pub const SERIES_LABEL_WORKLOAD: &str = "llmos_workload";
/// Series label naming the variant (from pod label `llmos.dev/variant`).
pub const SERIES_LABEL_VARIANT: &str = "llmos_variant";
/// Series label naming the GPU pool (from pod label `llmos.dev/pool`).
pub const SERIES_LABEL_POOL: &str = "llmos_pool";
/// Series label naming the namespace (Kubernetes service discovery's usual target label).
pub const SERIES_LABEL_NAMESPACE: &str = "namespace";

/// Pod label the operator puts on a workload's pods, mapped to [`SERIES_LABEL_WORKLOAD`].
pub const POD_LABEL_WORKLOAD: &str = "llmos.dev/workload";
/// Pod label naming the variant, mapped to [`SERIES_LABEL_VARIANT`].
pub const POD_LABEL_VARIANT: &str = "llmos.dev/variant";
/// Pod label naming the pool, mapped to [`SERIES_LABEL_POOL`].
pub const POD_LABEL_POOL: &str = "llmos.dev/pool";

/// What llmos reads from a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Requests waiting in the engines' queues.
    WaitingRequests,
    /// Requests in the running batches.
    RunningRequests,
    /// KV-cache usage, 0..1.
    KvCacheUsage,
    /// Time to first token (seconds).
    TimeToFirstToken,
    /// Time per output token (seconds).
    TimePerOutputToken,
    /// End-to-end request latency (seconds).
    E2eLatency,
    /// Finished requests.
    RequestSuccess,
    /// Prompt tokens.
    PromptTokens,
    /// Generated tokens.
    GenerationTokens,
    /// Preempted requests.
    Preemptions,
    /// Prompt tokens per finished request (a distribution).
    RequestPromptTokens,
    /// Generated tokens per finished request (a distribution).
    RequestGenerationTokens,
}

/// Prometheus metric type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonically increasing total (resets to 0 when the process restarts).
    Counter,
    /// Cumulative `_bucket{le=...}` counters plus `_sum` and `_count`.
    Histogram,
}

/// How a slot's pods combine into one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// Sum over pods (queue lengths, counter rates).
    Sum,
    /// Mean over pods (utilisation fractions).
    Mean,
    /// Add histogram buckets with equal bounds, then take quantiles.
    MergeBuckets,
}

/// One row of the mapping table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricMapping {
    /// What llmos reads.
    pub field: Field,
    /// The current vLLM family name.
    pub name: &'static str,
    /// The `# HELP` text vLLM exports with the family (the twin renders the same).
    pub help: &'static str,
    /// Older names accepted when the current one is absent.
    pub legacy_names: &'static [&'static str],
    /// Prometheus type.
    pub kind: MetricKind,
    /// How pods of a slot combine.
    pub aggregate: Aggregate,
}

/// The mapping table (see the module documentation for the same table in prose).
pub const METRICS: &[MetricMapping] = &[
    MetricMapping {
        field: Field::WaitingRequests,
        name: NUM_REQUESTS_WAITING,
        help: "Number of requests waiting to be processed.",
        legacy_names: &[],
        kind: MetricKind::Gauge,
        aggregate: Aggregate::Sum,
    },
    MetricMapping {
        field: Field::RunningRequests,
        name: NUM_REQUESTS_RUNNING,
        help: "Number of requests in model execution batches.",
        legacy_names: &[],
        kind: MetricKind::Gauge,
        aggregate: Aggregate::Sum,
    },
    MetricMapping {
        field: Field::KvCacheUsage,
        name: KV_CACHE_USAGE_PERC,
        help: "KV-cache usage. 1 means 100 percent usage.",
        legacy_names: &[GPU_CACHE_USAGE_PERC_LEGACY],
        kind: MetricKind::Gauge,
        aggregate: Aggregate::Mean,
    },
    MetricMapping {
        field: Field::TimeToFirstToken,
        name: TIME_TO_FIRST_TOKEN_SECONDS,
        help: "Histogram of time to first token in seconds.",
        legacy_names: &[],
        kind: MetricKind::Histogram,
        aggregate: Aggregate::MergeBuckets,
    },
    MetricMapping {
        field: Field::TimePerOutputToken,
        name: INTER_TOKEN_LATENCY_SECONDS,
        help: "Histogram of inter-token latency in seconds.",
        legacy_names: &[TIME_PER_OUTPUT_TOKEN_SECONDS_LEGACY],
        kind: MetricKind::Histogram,
        aggregate: Aggregate::MergeBuckets,
    },
    MetricMapping {
        field: Field::E2eLatency,
        name: E2E_REQUEST_LATENCY_SECONDS,
        help: "Histogram of e2e request latency in seconds.",
        legacy_names: &[],
        kind: MetricKind::Histogram,
        aggregate: Aggregate::MergeBuckets,
    },
    MetricMapping {
        field: Field::RequestSuccess,
        name: REQUEST_SUCCESS_TOTAL,
        help: "Count of successfully processed requests.",
        legacy_names: &[],
        kind: MetricKind::Counter,
        aggregate: Aggregate::Sum,
    },
    MetricMapping {
        field: Field::PromptTokens,
        name: PROMPT_TOKENS_TOTAL,
        help: "Number of prefill tokens processed.",
        legacy_names: &[],
        kind: MetricKind::Counter,
        aggregate: Aggregate::Sum,
    },
    MetricMapping {
        field: Field::GenerationTokens,
        name: GENERATION_TOKENS_TOTAL,
        help: "Number of generation tokens processed.",
        legacy_names: &[],
        kind: MetricKind::Counter,
        aggregate: Aggregate::Sum,
    },
    MetricMapping {
        field: Field::Preemptions,
        name: NUM_PREEMPTIONS_TOTAL,
        help: "Cumulative number of preemptions from the engine.",
        legacy_names: &[],
        kind: MetricKind::Counter,
        aggregate: Aggregate::Sum,
    },
    MetricMapping {
        field: Field::RequestPromptTokens,
        name: REQUEST_PROMPT_TOKENS,
        help: "Number of prefill tokens processed.",
        legacy_names: &[],
        kind: MetricKind::Histogram,
        aggregate: Aggregate::MergeBuckets,
    },
    MetricMapping {
        field: Field::RequestGenerationTokens,
        name: REQUEST_GENERATION_TOKENS,
        help: "Number of generation tokens processed.",
        legacy_names: &[],
        kind: MetricKind::Histogram,
        aggregate: Aggregate::MergeBuckets,
    },
];

/// The table row for `field`.
pub fn mapping(field: Field) -> &'static MetricMapping {
    // Every Field has exactly one row; the test below pins it.
    METRICS.iter().find(|m| m.field == field).unwrap_or(&METRICS[0])
}

/// The row a family name belongs to, and whether the name is a legacy one.
pub fn lookup(family: &str) -> Option<(&'static MetricMapping, bool)> {
    METRICS.iter().find_map(|m| {
        if m.name == family {
            Some((m, false))
        } else if m.legacy_names.contains(&family) {
            Some((m, true))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_one_row() {
        let fields = [
            Field::WaitingRequests,
            Field::RunningRequests,
            Field::KvCacheUsage,
            Field::TimeToFirstToken,
            Field::TimePerOutputToken,
            Field::E2eLatency,
            Field::RequestSuccess,
            Field::PromptTokens,
            Field::GenerationTokens,
            Field::Preemptions,
            Field::RequestPromptTokens,
            Field::RequestGenerationTokens,
        ];
        for f in fields {
            assert_eq!(METRICS.iter().filter(|m| m.field == f).count(), 1, "{f:?}");
            assert_eq!(mapping(f).field, f);
        }
        assert_eq!(METRICS.len(), fields.len());
    }

    #[test]
    fn legacy_names_resolve_to_current_fields() {
        assert_eq!(lookup("vllm:gpu_cache_usage_perc").map(|(m, l)| (m.field, l)), Some((Field::KvCacheUsage, true)));
        assert_eq!(
            lookup("vllm:time_per_output_token_seconds").map(|(m, l)| (m.field, l)),
            Some((Field::TimePerOutputToken, true))
        );
        assert_eq!(lookup("vllm:kv_cache_usage_perc").map(|(m, l)| (m.field, l)), Some((Field::KvCacheUsage, false)));
        assert!(lookup("vllm:num_requests_swapped").is_none());
    }
}
