//! Static provisioning: a fixed replica count that never changes.
//!
//! Two forms:
//! - **per slot** (`kind: static`, [`StaticParams::replicas`]): every (variant, pool) slot a
//!   variant may run on gets `replicas`, whatever the load.
//! - **per variant** ([`StaticPolicy::per_variant`]): each variant gets a total, placed on
//!   pools by [`Placement`] (cheapest pool with free GPUs first). The comparison harness
//!   sizes it from a trace with [`replicas_for_rate`]: `static-peak` for the trace's peak
//!   arrival rate (the fleet a cautious operator provisions: it meets the SLO at the highest
//!   cost) and `static-mean` for its mean rate (cheap, and late whenever traffic is above the
//!   mean).
//!
//! Parameters: `replicas` (per slot), or the per-variant total; for sizing, the rate in
//! requests per second and the sustainable requests per second of one replica at the SLO.

use crate::policy::config::StaticParams;
use crate::policy::observation::{Decision, Observation};
use crate::policy::placement::{free_gpus, Placement, WorkloadInfo};
use crate::policy::Policy;

/// Replicas needed to serve `rate_rps` when one replica sustains `per_replica_rps`: at least 1.
/// Returns `None` for a non-positive or non-finite capacity.
pub fn replicas_for_rate(rate_rps: f64, per_replica_rps: f64) -> Option<u32> {
    if !(per_replica_rps > 0.0) || !per_replica_rps.is_finite() || !rate_rps.is_finite() {
        return None;
    }
    Some(((rate_rps.max(0.0) / per_replica_rps - 1e-9).ceil() as u32).max(1))
}

#[derive(Clone, Debug)]
enum Mode {
    PerSlot(u32),
    PerVariant(u32),
}

/// A fixed fleet.
#[derive(Clone, Debug)]
pub struct StaticPolicy {
    name: String,
    mode: Mode,
    placement: Placement,
    info: WorkloadInfo,
}

impl StaticPolicy {
    /// `params.replicas` on every allowed slot.
    pub fn per_slot(params: &StaticParams, info: WorkloadInfo, placement: Placement) -> Self {
        StaticPolicy { name: "static".into(), mode: Mode::PerSlot(params.replicas), placement, info }
    }

    /// `replicas` per variant, placed by `placement`; `name` labels it (e.g. `static-peak`).
    pub fn per_variant(name: impl Into<String>, replicas: u32, info: WorkloadInfo, placement: Placement) -> Self {
        StaticPolicy { name: name.into(), mode: Mode::PerVariant(replicas), placement, info }
    }
}

impl Policy for StaticPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let mut d = Decision::default();
        match self.mode {
            Mode::PerSlot(n) => {
                for v in &self.info.variants {
                    for &pi in &v.pools {
                        d.set(&v.name, &self.info.pools[pi].name, n);
                    }
                }
                d.reason = format!("{}: {n} per slot", self.name);
            }
            Mode::PerVariant(n) => {
                let mut free = free_gpus(&self.info, obs);
                // Only the replicas not placed yet move; existing ones stay where they are.
                for vi in 0..self.info.variants.len() {
                    self.placement.place(&self.info, obs, vi, n, &mut free, &mut d);
                }
                d.reason = format!("{}: {n} per variant", self.name);
            }
        }
        d
    }
}
