//! Reading live metrics: vLLM's Prometheus metrics, through a Prometheus server or by
//! scraping pods directly, into the metric part of an [`Observation`].
//!
//! A [`MetricsSource`] returns a [`MetricsSnapshot`]; the controller adds what it knows
//! from the cluster (replicas per slot, free GPUs, cost) with [`MetricsSnapshot::into_observation`]-style
//! merging, so the policy sees the same [`Observation`] the twin produces.
//!

pub mod exposition;
pub mod histogram;
pub mod live;
pub mod prometheus;
pub mod scrape;
pub mod vllm;

pub use live::SpecSource;
pub use prometheus::{PrometheusConfig, PrometheusSource};
pub use scrape::{ScrapeConfig, ScrapeSource};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::crd::LLMWorkloadSpec;
use crate::policy::observation::{LatencyObservation, Observation};

/// A serving endpoint of one slot, for direct scraping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// `host:port` of the pod's metrics endpoint.
    pub address: String,
}

/// What a metrics source needs to know about the workload it reads.
#[derive(Clone, Debug)]
pub struct MetricsQuery<'a> {
    /// Namespace of the LLMWorkload.
    pub namespace: &'a str,
    /// Name of the LLMWorkload.
    pub workload: &'a str,
    /// Its spec (SLO, metrics section, variants and pools).
    pub spec: &'a LLMWorkloadSpec,
    /// Serving endpoints, for direct scraping (ignored by Prometheus).
    pub endpoints: &'a [Endpoint],
}

/// Metrics of one (variant, pool) slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotMetrics {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// `vllm:num_requests_waiting`, summed over the slot's pods.
    pub waiting_requests: f64,
    /// `vllm:num_requests_running`, summed over the slot's pods.
    pub running_requests: f64,
    /// `vllm:kv_cache_usage_perc`, mean over the slot's pods, 0..1.
    pub kv_cache_usage: f64,
    /// Requests per second finished or admitted by the slot over the window.
    pub arrival_rate_rps: f64,
}

/// The metric part of an observation, as read from a metrics source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Requests per second arriving at the workload over the window.
    pub arrival_rate_rps: Option<f64>,
    /// Change of the arrival rate (requests/s²).
    pub arrival_rate_trend_rps_per_s: Option<f64>,
    /// Latency percentiles over the window.
    pub latency: LatencyObservation,
    /// Fraction of requests in the window that met the SLO.
    pub slo_attainment: Option<f64>,
    /// Per slot that has pods reporting.
    pub slots: Vec<SlotMetrics>,
    /// Series that could not be read (missing, stale, NaN, reset), with a short why each.
    pub missing: Vec<String>,
    /// The workload's scrape targets and whether each is up (Prometheus' `up`; empty for
    /// a source that scrapes the pods itself). [`MetricsSnapshot::fill`] decides which
    /// of the targets that are down hide a serving replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<ScrapeTarget>,
    /// The parsed `/metrics` of each pod that answered this round (direct scraping only;
    /// empty for Prometheus), so the traffic record reads the same scrape instead of
    /// scraping again.
    #[serde(skip)]
    pub pods: Vec<(Endpoint, scrape::PodSample)>,
}

/// One scrape target of a workload, as Prometheus' `up` series reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrapeTarget {
    /// The target's `instance` label (`?` when absent).
    pub instance: String,
    /// Its variant label, when the relabelling set one.
    pub variant: Option<String>,
    /// Its pool label, when the relabelling set one.
    pub pool: Option<String>,
    /// Whether the last scrape succeeded (`up == 1`).
    pub up: bool,
}

/// Increases of a workload's traffic counters over a window, summed over its pods, as a
/// source that aggregates itself (Prometheus) answers them: what a traffic record window
/// is built from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficIncrease {
    /// Increase of `vllm:request_success_total`.
    pub completions: f64,
    /// Growth of `vllm:num_requests_waiting` + `vllm:num_requests_running`.
    pub in_flight_growth: f64,
    /// Increase of `vllm:request_prompt_tokens` (cumulative buckets and sum).
    pub prompt_tokens: Option<histogram::Histogram>,
    /// Increase of `vllm:request_generation_tokens`.
    pub generation_tokens: Option<histogram::Histogram>,
    /// What could not be read (absent families, bad values).
    pub notes: Vec<String>,
}

/// Why metrics could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The source could not be reached.
    #[error("metrics source {source_name} unreachable: {message}")]
    Unreachable {
        /// Which source.
        source_name: String,
        /// What failed.
        message: String,
    },
    /// The source answered with something that is not valid.
    #[error("metrics source {source_name} answered badly for {series}: {message}")]
    BadAnswer {
        /// Which source.
        source_name: String,
        /// Which series or query.
        series: String,
        /// What was wrong.
        message: String,
    },
}

/// Reads the metric part of an observation for one workload.
pub trait MetricsSource: Send + Sync {
    /// A short name for logs and conditions (`prometheus`, `scrape`).
    fn name(&self) -> &str;
    /// Reads the workload's metrics now.
    fn observe<'a>(&'a self, query: &'a MetricsQuery<'a>) -> BoxFuture<'a, Result<MetricsSnapshot, MetricsError>>;
    /// The increases of the workload's traffic counters over the last `window_s` seconds,
    /// for a source that aggregates over pods itself; `Ok(None)` (the default) for a
    /// source whose [`MetricsSnapshot::pods`] carry the raw samples instead.
    fn traffic<'a>(
        &'a self,
        _query: &'a MetricsQuery<'a>,
        _window_s: u32,
    ) -> BoxFuture<'a, Result<Option<TrafficIncrease>, MetricsError>> {
        Box::pin(async { Ok(None) })
    }
}

impl MetricsSnapshot {
    /// Copies the metric fields into `obs` (whose replica and pool fields the caller
    /// filled from the cluster) and records what is missing.
    pub fn fill(&self, obs: &mut Observation) {
        obs.arrival_rate_rps = self.arrival_rate_rps.unwrap_or(0.0);
        obs.arrival_rate_trend_rps_per_s = self.arrival_rate_trend_rps_per_s.unwrap_or(0.0);
        obs.latency = self.latency.clone();
        obs.slo_attainment = self.slo_attainment;
        if self.arrival_rate_rps.is_none() {
            obs.missing.push("arrival rate".into());
        }
        for slot in obs.slots.iter_mut() {
            if let Some(m) = self.slots.iter().find(|m| m.variant == slot.variant && m.pool == slot.pool) {
                slot.waiting_requests = m.waiting_requests;
                slot.running_requests = m.running_requests;
                slot.kv_cache_usage = m.kv_cache_usage;
                slot.arrival_rate_rps = m.arrival_rate_rps;
            }
        }
        obs.missing.extend(self.missing.iter().cloned());
        obs.missing.extend(self.hidden_replicas(obs));
    }

    /// The targets that are down and may hide a serving replica, each as a line for
    /// [`Observation::missing`]. A target that is down is not a blind spot when its slot
    /// already has at least as many targets up as the cluster counts ready replicas: then
    /// it is a replica that is gone (scaled down, its scrape target not yet dropped by
    /// service discovery) or not serving yet (loading its model), and every replica the
    /// Deployment calls ready is seen. A target of a slot the workload no longer has is
    /// ignored alike; one without slot labels cannot be judged and counts as missing.
    pub fn hidden_replicas(&self, obs: &Observation) -> Vec<String> {
        let up_in = |v: &str, p: &str| {
            self.targets
                .iter()
                .filter(|t| t.up && t.variant.as_deref() == Some(v) && t.pool.as_deref() == Some(p))
                .count()
        };
        let mut out = Vec::new();
        for t in self.targets.iter().filter(|t| !t.up) {
            let (Some(v), Some(p)) = (&t.variant, &t.pool) else {
                out.push(format!("target {} is down (up == 0) and names no slot", t.instance));
                continue;
            };
            let Some(slot) = obs.slots.iter().find(|s| &s.variant == v && &s.pool == p) else { continue };
            let seen = up_in(v, p);
            if seen < slot.ready_replicas as usize {
                out.push(format!(
                    "target {} of slot {v}/{p} is down (up == 0): {seen} of {} ready replicas seen",
                    t.instance, slot.ready_replicas
                ));
            }
        }
        out
    }
}
