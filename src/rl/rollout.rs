//! Running any [`Policy`] through one twin window, tick by tick, with the shield in the
//! loop, and keeping the trajectory: what the learning tests and diagnostics look at.
//!
//! The loop is the operator's: observe → decide → shield → apply → step, then
//! [`Policy::feedback`] with the tick's reward. The comparison harness in `crate::eval` is
//! the place for tables over many seeds; this is the single-run view.

use serde::Serialize;

use crate::control::ControlLoop;
use crate::policy::shield::Shield;
use crate::policy::Policy;
use crate::twin::{Report, RunWindow, Scenario, Twin};

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
    let mut twin = Twin::with_window(scenario, RunWindow::new(seed, (window.0, window.1), load))?;
    policy.reset();
    let mut control = ControlLoop::new(&twin, 0, Shield::new(&scenario.spec), reward.clone());
    let slots: Vec<String> = control.observation().slots.iter().map(|s| format!("{}/{}", s.variant, s.pool)).collect();
    let mut ticks = Vec::new();
    let mut ret = 0.0;
    while !twin.is_done() {
        let t = control.tick(&mut twin, policy);
        let obs = &t.observation;
        let desired = obs
            .slots
            .iter()
            .map(|s| t.outcome.decision.replicas(&s.variant, &s.pool).unwrap_or(s.desired_replicas))
            .collect();
        ret += t.reward;
        ticks.push(TickRecord {
            time_s: obs.time_s,
            desired,
            ready: obs.slots.iter().map(|s| s.ready_replicas).collect(),
            finished: t.stats.finished,
            slo_met: t.stats.slo_met,
            cost_usd: t.stats.cost_usd,
            reward: t.reward,
        });
    }
    Ok(Rollout { slots, ticks, report: twin.report(), episodic_return: ret })
}
