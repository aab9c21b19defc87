//! The clairvoyant reference: a policy of the twin that reads the run's *future* arrivals
//! and sizes the fleet for the demand that will come, so that online policies can be judged
//! against what foresight would achieve. It is built only by the comparison harness
//! (`llmos compare --policies clairvoyant:capacity=1.3`); the operator cannot select it
//! (there is no `kind: clairvoyant`).
//!
//! # How it gets the future
//! The harness builds, for each episode, a second arrival stream identical to the twin's
//! (`Twin::arrival_stream` with the same scenario, seed, window and load) and hands it to
//! the policy ([`EpisodeRun::arrival_times`]), which reads ahead in it as simulated time
//! advances. Only arrival times are used.
//!
//! # Sizing (every control tick at time `t`)
//! - `need(s)` = the peak arrival rate over `[s, s + coldStart + interval]`, measured in
//!   equal bins of at most `bin` seconds (default: one control interval), divided by
//!   `capacity` (requests/s one replica serves within the SLO), rounded up, at least 1.
//!   The window starts at `s`, not `s + coldStart`: a scale-down acts at once while a
//!   scale-up only helps after the cold start, so a replica is kept as long as it will be
//!   needed before a new one could be ready; and the fleet asked for at `t` is the one that
//!   serves until the next tick's new replicas are ready, at `t + interval + coldStart`.
//! - The shield changes a slot by at most `limits.maxStepChange` per tick, so a large
//!   step must start early: the fleet asked for is `max over j ≥ 0 of need(t + j × interval)
//!   − j × maxStepChange` (as far ahead as reaching the variant's maximum takes).
//! - The count is placed on pools cheapest first (or as `placement` says). The whole
//!   workload is one unit: under `variantSelection: fixed` the first variant takes the count
//!   and the others are held at their `minReplicas`; otherwise the placement's variant
//!   selection chooses.
//!
//! # How close to optimal
//! Swept over `capacity` (headroom), it traces a frontier of SLO attainment against
//! GPU-hours that no causal rate-based policy can beat by much on the same traffic: it
//! scales up exactly one cold start before demand arrives and down as soon as no demand
//! within a cold start needs the capacity. It is an approximate lower bound, not the exact
//! optimum: it sizes by request *rate* with one capacity for every request (it does not
//! use the lengths it could read, so a burst of long prompts can still miss the SLO), the
//! peak is per bin (bursts shorter than a bin are averaged away), the twin's actual ready
//! time can exceed the cold start when a pool has no free GPUs, queues built up earlier are
//! not drained faster, and the shield's cooldown may hold replicas it would drop. A policy
//! that used the request lengths or pre-drained queues could do slightly better; none that
//! only knows the past should do better on cost at equal SLO attainment.

use std::collections::VecDeque;

use crate::policy::config::VariantSelection;
use crate::policy::observation::{Decision, Observation};
use crate::policy::placement::{free_gpus, Placement, WorkloadInfo};
use crate::policy::registry::{
    check_pos, num, ArrivalTimes, ArrivalTimesSource, BuildContext, EpisodeRun, KindId, PolicyError, PolicyKindDef,
};
use crate::policy::Policy;

/// Most ticks ahead the step-limited sizing looks.
const MAX_TICKS_AHEAD: u32 = 64;

/// Parameters of the clairvoyant reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClairvoyantParams {
    /// Requests per second one replica serves within the SLO.
    pub capacity_rps: f64,
    /// Bin over which the peak rate is measured, seconds (`None`: one control interval).
    pub bin_s: Option<f64>,
}

/// The clairvoyant reference policy (see the module docs).
pub struct Clairvoyant {
    name: String,
    params: ClairvoyantParams,
    source: ArrivalTimesSource,
    stream: Option<ArrivalTimes>,
    /// The next arrival not yet moved into `ahead`, seconds.
    peeked: Option<f64>,
    /// Arrival times read ahead, seconds, in order.
    ahead: VecDeque<f64>,
    /// Whether `stream` has been read from since it was built.
    used: bool,
    cold_start_s: f64,
    interval_s: f64,
    max_step: u32,
    info: WorkloadInfo,
    placement: Placement,
}

impl Clairvoyant {
    /// A clairvoyant policy named `name` that reads the arrivals `source` builds; new
    /// replicas take `cold_start_s` to be ready.
    pub fn new(
        name: impl Into<String>,
        params: ClairvoyantParams,
        source: ArrivalTimesSource,
        cold_start_s: f64,
        spec: &crate::crd::LLMWorkloadSpec,
        placement: Placement,
    ) -> Self {
        Clairvoyant {
            name: name.into(),
            params,
            source,
            stream: None,
            peeked: None,
            ahead: VecDeque::new(),
            used: false,
            cold_start_s: cold_start_s.max(0.0),
            interval_s: f64::from(spec.policy.interval_seconds.max(1)),
            max_step: spec.limits.max_step_change,
            info: WorkloadInfo::from_spec(spec),
            placement,
        }
    }

    /// The clairvoyant policy for one run of the harness: the run's arrivals and the
    /// largest cold start of its variants.
    pub fn for_episode(
        name: impl Into<String>,
        params: ClairvoyantParams,
        episode: &dyn EpisodeRun,
        spec: &crate::crd::LLMWorkloadSpec,
        placement: Placement,
    ) -> Result<Self, PolicyError> {
        let cold = episode.cold_start_s()?;
        let source = episode.arrival_times()?;
        Ok(Self::new(name, params, source, cold, spec, placement))
    }

    /// Reads arrivals up to time `until` into `ahead`.
    fn read_until(&mut self, until: f64) {
        if self.stream.is_none() {
            self.stream = (self.source)();
            self.peeked = None;
            self.ahead.clear();
        }
        let Some(stream) = self.stream.as_mut() else { return };
        self.used = true;
        loop {
            let t = match self.peeked {
                Some(t) => t,
                None => match stream.next() {
                    Some(t) => t,
                    None => return,
                },
            };
            if t > until {
                self.peeked = Some(t);
                return;
            }
            self.peeked = None;
            self.ahead.push_back(t);
        }
    }

    /// Replicas needed for the arrivals in `[s, s + cold start + interval]`.
    fn need(&self, s: f64) -> u32 {
        let len = self.cold_start_s + self.interval_s;
        let bin = self.params.bin_s.unwrap_or(self.interval_s).max(1e-3);
        let n = ((len / bin).ceil() as usize).max(1);
        let width = len / n as f64;
        let mut counts = vec![0u32; n];
        let lo = self.ahead.partition_point(|&t| t < s);
        for &t in self.ahead.range(lo..) {
            if t > s + len {
                break;
            }
            let i = (((t - s) / width) as usize).min(n - 1);
            counts[i] += 1;
        }
        let peak = counts.iter().copied().max().unwrap_or(0) as f64 / width;
        ((peak / self.params.capacity_rps - 1e-9).ceil().max(1.0)) as u32
    }
}

impl Policy for Clairvoyant {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let t = obs.time_s;
        let max_total = self.info.variants.iter().map(|v| v.max_replicas).max().unwrap_or(1);
        let ticks_ahead = if self.max_step > 0 { (max_total.div_ceil(self.max_step)).min(MAX_TICKS_AHEAD) } else { 0 };
        let until = t + f64::from(ticks_ahead) * self.interval_s + self.cold_start_s + self.interval_s;
        self.read_until(until);
        while self.ahead.front().is_some_and(|&a| a < t) {
            self.ahead.pop_front();
        }
        let mut n = 0u32;
        for j in 0..=ticks_ahead {
            let need = self.need(t + f64::from(j) * self.interval_s);
            n = n.max(need.saturating_sub(j.saturating_mul(self.max_step)));
        }
        let info = self.info.clone();
        let mut decision = Decision::default();
        let mut free = free_gpus(&info, obs);
        let chosen = if self.placement.selection == VariantSelection::Fixed {
            Some(0)
        } else {
            self.placement.select_variant(&info, obs, n)
        };
        for (vi, v) in info.variants.iter().enumerate() {
            let k = if Some(vi) == chosen {
                n
            } else if self.placement.selection == VariantSelection::Fixed {
                v.min_replicas
            } else {
                0
            };
            self.placement.place(&info, obs, vi, k, &mut free, &mut decision);
        }
        decision.reason = format!(
            "{}: {n} replicas for the peak of the next {:.0} s (cold start {:.0} s), {} req/s each",
            self.name,
            self.cold_start_s + self.interval_s,
            self.cold_start_s,
            self.params.capacity_rps
        );
        decision
    }

    fn reset(&mut self) {
        // A used stream cannot rewind: read the run's arrivals again from the start.
        if self.used {
            self.stream = None;
            self.used = false;
        }
        self.peeked = None;
        self.ahead.clear();
        self.placement.reset();
    }
}

/// The `clairvoyant` kind: `clairvoyant[:capacity=RPS][:bin=S]`, built only by the
/// comparison harness, from the run it is built for ([`BuildContext::episode`]).
pub struct ClairvoyantKind;

/// Command-line parameters of `clairvoyant`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClairvoyantArgs {
    /// Requests per second one replica sustains, if given (else the harness's estimate).
    pub per_replica_rps: Option<f64>,
    /// Bin over which the peak rate is measured, seconds (default: the control interval).
    pub bin_s: Option<f64>,
}

impl PolicyKindDef for ClairvoyantKind {
    type Params = ClairvoyantArgs;
    const ID: KindId = KindId("clairvoyant");
    const USAGE: &'static str = "clairvoyant[:capacity=RPS][:bin=S] (twin only: reads the run's future arrivals)";
    const KEYS: &'static str = "capacity, bin";
    const NEEDS_HARNESS: bool = true;

    fn set(&self, params: &mut ClairvoyantArgs, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "bin" => {
                let b: f64 = num(key, v, "seconds")?;
                check_pos(key, b)?;
                params.bin_s = Some(b);
            }
            "capacity" => {
                let c: f64 = num(key, v, "a number of requests per second")?;
                check_pos(key, c)?;
                params.per_replica_rps = Some(c);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn build(&self, params: &ClairvoyantArgs, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        let label = ctx.label;
        let cap = params.per_replica_rps.or(ctx.replica_capacity_rps).ok_or_else(|| PolicyError::Missing {
            field: format!("{label}: capacity"),
            message: "the clairvoyant reference needs the requests per second one replica sustains: `clairvoyant:capacity=R` or `--replica-capacity-rps R`".into(),
        })?;
        let ep = ctx.episode.ok_or_else(|| PolicyError::InvalidParam {
            field: label.to_string(),
            message:
                "the clairvoyant reference reads a twin run's future arrivals; it exists only in the comparison harness"
                    .into(),
        })?;
        let p = ClairvoyantParams { capacity_rps: cap, bin_s: params.bin_s };
        let c = Clairvoyant::for_episode(label, p, ep, ctx.spec, ctx.placement())?;
        Ok(Box::new(c))
    }
}
