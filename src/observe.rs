//! The one Observation builder: how a world's fleet state and its pods' vLLM metrics
//! become the [`Observation`] a policy sees, in the cluster and in the twin alike.
//!
//! An observation has two parts:
//!
//! - **the fleet part** ([`build_observation`]): replicas per slot (desired, ready,
//!   starting), free GPUs per pool and the cost rate, from a [`SlotState`] per slot. The
//!   cluster reads them from its Deployments, the twin from its replicas; the arithmetic
//!   (what counts as held, what a GPU costs) is this one function's.
//! - **the metrics part**: every serving pod's `/metrics` as a
//!   [`crate::metrics::scrape::PodSample`], turned into a [`MetricsSnapshot`] by
//!   [`crate::metrics::scrape::ScrapeState`] (rates from counter increases, percentiles
//!   and SLO attainment from histogram buckets, arrivals as completions plus the growth
//!   of requests in flight), merged with [`MetricsSnapshot::fill`]. The twin's pods are
//!   scraped by [`PodScraper`] each control tick, exactly as `llmos` scrapes real pods
//!   (the operator can also read the same families through Prometheus, see
//!   [`crate::metrics::prometheus`]).
//!
//! What the twin knows beyond this (exact per-request latencies, the arrivals counted at
//! its gateway) goes to its report, never into the observation.

use std::collections::BTreeMap;

use crate::crd::LLMWorkloadSpec;
use crate::metrics::scrape::{PodSample, ScrapeState};
use crate::metrics::{Endpoint, MetricsQuery, MetricsSnapshot};
use crate::policy::observation::{Observation, PoolObservation, SlotId, SlotObservation};

/// What a world says about one slot's replicas (the cluster: its Deployment; the twin: its fleet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// What was last applied (`spec.replicas`).
    pub desired: u32,
    /// Replicas that are ready and serving (`status.readyReplicas`).
    pub ready: u32,
    /// Replicas that exist, ready or not, terminating ones excluded (`status.replicas`).
    pub existing: u32,
}

/// Builds the cluster part of the observation of `spec` at `time_s` (Unix seconds).
///
/// `current` holds the desired replicas per slot (the Deployment's, or the initial
/// placement for a slot without one); `states` what the Deployments report. Cost counts
/// every GPU that is asked for or still held: `max(desired, existing) × gpusPerReplica ×
/// price`. Free GPUs of a pool with a capacity subtract the same count.
pub fn build_observation(
    spec: &LLMWorkloadSpec,
    current: &BTreeMap<SlotId, u32>,
    states: &BTreeMap<SlotId, SlotState>,
    time_s: f64,
    seconds_since_last_action: Option<f64>,
) -> Observation {
    let mut used: BTreeMap<&str, u32> = BTreeMap::new();
    let mut cost = 0.0;
    let mut slots = Vec::new();
    for v in &spec.variants {
        for p in spec.pools_of(v) {
            let slot = SlotId::new(&v.name, &p.name);
            let st = states.get(&slot).copied().unwrap_or_default();
            let desired = current.get(&slot).copied().unwrap_or(st.desired);
            let held = desired.max(st.existing);
            *used.entry(p.name.as_str()).or_default() += held.saturating_mul(v.gpus_per_replica);
            cost += f64::from(held) * f64::from(v.gpus_per_replica) * p.price_per_gpu_hour;
            slots.push(SlotObservation {
                variant: v.name.clone(),
                pool: p.name.clone(),
                ready_replicas: st.ready,
                starting_replicas: st.existing.saturating_sub(st.ready),
                desired_replicas: desired,
                gpus_per_replica: v.gpus_per_replica,
                ..Default::default()
            });
        }
    }
    let pools = spec
        .gpu_pools
        .iter()
        .map(|p| PoolObservation {
            name: p.name.clone(),
            free_gpus: p.capacity_gpus.map(|c| c.saturating_sub(used.get(p.name.as_str()).copied().unwrap_or(0))),
            price_per_gpu_hour_usd: p.price_per_gpu_hour,
        })
        .collect();
    Observation {
        time_s,
        window_s: f64::from(spec.metrics.window_seconds),
        slots,
        pools,
        cost_rate_usd_per_hour: cost,
        seconds_since_last_action,
        ..Default::default()
    }
}

/// Scrapes a world's serving pods and keeps the newest [`MetricsSnapshot`]: the metrics
/// part of the one builder for worlds that hold their pods' samples in memory (the twin).
///
/// Each [`PodScraper::scrape`] is one scrape round (one per control tick), fed through the
/// same [`ScrapeState`] that `llmos` uses on real pods.
#[derive(Debug, Default)]
pub struct PodScraper {
    state: ScrapeState,
    snapshot: MetricsSnapshot,
}

impl PodScraper {
    /// Records one scrape round at `now_s` of `pods` (each an endpoint and what it
    /// exposed) of workload `namespace/workload`, and computes the snapshot.
    pub fn scrape(
        &mut self,
        namespace: &str,
        workload: &str,
        spec: &LLMWorkloadSpec,
        now_s: f64,
        pods: Vec<(Endpoint, PodSample)>,
    ) -> &MetricsSnapshot {
        let (endpoints, samples): (Vec<Endpoint>, Vec<PodSample>) = pods.into_iter().unzip();
        let query = MetricsQuery { namespace, workload, spec, endpoints: &endpoints };
        self.snapshot = self.state.observe(&query, now_s, samples.into_iter().map(Ok).collect());
        &self.snapshot
    }

    /// The snapshot of the last round (empty before the first).
    pub fn snapshot(&self) -> &MetricsSnapshot {
        &self.snapshot
    }

    /// The observation: the fleet part completed with the last round's metrics.
    pub fn complete(&self, mut fleet: Observation) -> Observation {
        self.snapshot.fill(&mut fleet);
        fleet
    }
}
