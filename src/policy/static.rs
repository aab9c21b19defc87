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

use crate::policy::config::{PolicyKind, PolicySpec, StaticParams};
use crate::policy::observation::{Decision, Observation};
use crate::policy::placement::{free_gpus, Placement, WorkloadInfo};
use crate::policy::registry::{
    check_pos, invalid, num, ArrivalStats, BuildContext, KindId, PolicyError, PolicyKindDef, Positional,
};
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

/// The `static` kind (`kind: static`, `static:N`): [`StaticPolicy::per_slot`].
pub struct Static;

impl PolicyKindDef for Static {
    type Params = StaticParams;
    const ID: KindId = KindId("static");
    const USAGE: &'static str = "static:N (N replicas per slot)";
    const KEYS: &'static str = "replicas (or static:N)";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Static);
    const POSITIONAL: Positional = Positional::First("replicas");

    fn from_section(&self, p: &PolicySpec) -> Result<StaticParams, PolicyError> {
        Ok(p.r#static.clone().unwrap_or_default())
    }

    fn to_section(&self, params: &StaticParams, p: &mut PolicySpec) {
        p.r#static = Some(params.clone());
    }

    fn set(&self, params: &mut StaticParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "replicas" => params.replicas = num(key, v, "a whole number of replicas")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn build(&self, params: &StaticParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        Ok(Box::new(StaticPolicy::per_slot(params, ctx.info(), ctx.placement())))
    }
}

/// Parameters of `static-peak` and `static-mean` (command line only).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SizedParams {
    /// Requests per second one replica sustains (default: the harness's
    /// `--replica-capacity-rps`).
    pub per_replica_rps: Option<f64>,
}

fn set_capacity(params: &mut SizedParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
    match k {
        "capacity" => {
            let c: f64 = num(key, v, "a number of requests per second")?;
            check_pos(key, c)?;
            params.per_replica_rps = Some(c);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A static fleet per variant sized for `rate` (the harness's statistics of the window).
fn sized(
    params: &SizedParams,
    ctx: &BuildContext<'_>,
    rate: impl Fn(&ArrivalStats) -> f64,
) -> Result<Box<dyn Policy>, PolicyError> {
    let label = ctx.label;
    let cap = params.per_replica_rps.or(ctx.replica_capacity_rps).ok_or_else(|| PolicyError::Missing {
        field: format!("{label}: capacity"),
        message: "static sizing needs the requests per second one replica sustains: `--replica-capacity-rps R` or `static-peak:capacity=R`".into(),
    })?;
    let arrivals = ctx.arrivals.ok_or_else(|| ctx.needs_harness())?;
    if arrivals.peak_rps <= 0.0 {
        return Err(invalid(
            label,
            "static sizing needs the arrival rates of the scenario's window, and this window has no arrivals; use `static:N`",
        ));
    }
    let n = replicas_for_rate(rate(&arrivals), cap)
        .ok_or_else(|| invalid(&format!("{label}: capacity"), format!("{cap} must be positive")))?;
    Ok(Box::new(StaticPolicy::per_variant(label, n, ctx.info(), ctx.placement())))
}

/// The `static-peak` kind: a static fleet sized for the window's peak rate (harness only).
pub struct StaticPeak;

impl PolicyKindDef for StaticPeak {
    type Params = SizedParams;
    const ID: KindId = KindId("static-peak");
    const USAGE: &'static str = "static-peak[:capacity=RPS] (sized for the trace's peak rate)";
    const KEYS: &'static str = "capacity";
    const NEEDS_HARNESS: bool = true;

    fn set(&self, params: &mut SizedParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        set_capacity(params, k, v, key)
    }

    fn build(&self, params: &SizedParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        sized(params, ctx, |a| a.peak_rps)
    }
}

/// The `static-mean` kind: a static fleet sized for the window's mean rate (harness only).
pub struct StaticMean;

impl PolicyKindDef for StaticMean {
    type Params = SizedParams;
    const ID: KindId = KindId("static-mean");
    const USAGE: &'static str = "static-mean[:capacity=RPS] (sized for the trace's mean rate)";
    const KEYS: &'static str = "capacity";
    const NEEDS_HARNESS: bool = true;

    fn set(&self, params: &mut SizedParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        set_capacity(params, k, v, key)
    }

    fn build(&self, params: &SizedParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        sized(params, ctx, |a| a.mean_rps)
    }
}
