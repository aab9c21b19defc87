//! Running any [`Policy`] through one twin window, tick by tick, with the shield in the
//! loop, and keeping the trajectory: what the learning tests and diagnostics look at.
//!
//! The loop is the operator's: observe → decide → shield → apply → step, then
//! [`Policy::feedback`] with the tick's reward. The comparison harness in `crate::eval` is
//! the place for tables over many seeds; this is the single-run view.

use serde::Serialize;

use crate::policy::shield::Shield;
use crate::policy::Policy;
use crate::twin::{Report, Scenario, Twin};

use super::env::RewardConfig;
use super::RlError;

/// One control tick of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TickRecord {
    /// Twin time at the start of the tick, seconds.
    pub time_s: f64,
    /// Desired replicas per slot after the shield (spec order of `Rollout::slots`).
    pub desired: Vec<u32>,
    /// Ready replicas per slot when the decision was made.
    pub ready: Vec<u32>,
    /// Requests finished in the tick.
    pub finished: u64,
    /// Requests finished within the SLO in the tick.
    pub slo_met: u64,
    /// Cost of the tick, USD.
    pub cost_usd: f64,
    /// Reward of the tick.
    pub reward: f64,
}

/// A finished rollout.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// Slot names (`variant/pool`), in the order of the tick vectors.
    pub slots: Vec<String>,
    /// Every tick.
    pub ticks: Vec<TickRecord>,
    /// The twin's report of the run.
    pub report: Report,
    /// Sum of rewards.
    pub episodic_return: f64,
}

/// Runs `policy` on the window `[start_frac, end_frac)` of `scenario` at `load`.
pub fn rollout(
    policy: &mut dyn Policy,
    scenario: &Scenario,
    seed: u64,
    window: (f64, f64),
    load: f64,
    reward: &RewardConfig,
) -> Result<Rollout, RlError> {
    let mut twin =
        Twin::with_window(scenario, seed, window.0, window.1, load).map_err(|e| RlError::Twin(e.to_string()))?;
    let mut shield = Shield::new(&scenario.spec);
    policy.reset();
    let mut obs = twin.observe();
    shield.annotate(&mut obs);
    let slots: Vec<String> = obs.slots.iter().map(|s| format!("{}/{}", s.variant, s.pool)).collect();
    let mut ticks = Vec::new();
    let mut ret = 0.0;
    while !twin.is_done() {
        let decision = policy.decide(&obs);
        let out = shield.apply(&obs, &decision);
        twin.apply(&out.decision);
        let desired = obs
            .slots
            .iter()
            .map(|s| out.decision.replicas(&s.variant, &s.pool).unwrap_or(s.desired_replicas))
            .collect();
        let ready = obs.slots.iter().map(|s| s.ready_replicas).collect();
        let time_s = obs.time_s;
        let tick = twin.step();
        let r = reward.reward(&tick);
        ret += r;
        obs = twin.observe();
        shield.annotate(&mut obs);
        policy.feedback(&obs, r);
        ticks.push(TickRecord {
            time_s,
            desired,
            ready,
            finished: tick.finished,
            slo_met: tick.slo_met,
            cost_usd: tick.cost_usd,
            reward: r,
        });
    }
    Ok(Rollout { slots, ticks, report: twin.report(), episodic_return: ret })
}
