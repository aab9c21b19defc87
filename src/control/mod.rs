//! The one control loop: observe → annotate → decide → shield → apply → advance →
//! reward, over any [`World`].
//!
//! A world holds workloads, can be observed (one [`Observation`] per workload, built by
//! [`crate::observe`] from its pods' vLLM metrics and its fleet) and acted on (desired
//! replicas per slot). The twin is a world ([`crate::twin::Twin`], one workload); the
//! cluster is the other (the controller observes through Prometheus or direct scrapes and
//! acts through Deployments; it runs the decision half of the tick, [`decide`], inside its
//! reconcile).
//!
//! Every user of the loop drives [`ControlLoop::tick`] instead of writing it again: the
//! comparison harness ([`crate::eval::run_episode`]), the twin's training environment
//! ([`crate::rl::env::TwinEnv`]), rollouts ([`crate::rl::rollout`]) and training's
//! validation. The tick's reward is [`RewardConfig`]'s, so a harness objective and a
//! training return for the same run are the same sum.

pub mod cluster;
pub mod reward;

pub use reward::RewardConfig;

use crate::policy::shield::{Shield, ShieldOutcome};
use crate::policy::{Decision, Observation, Policy};
use crate::twin::{TickStats, Twin};

/// Something a control loop can observe and act on.
///
/// Workloads are numbered `0..workloads()`; a world of one workload (the twin today)
/// answers for workload 0.
pub trait World {
    /// How many workloads the world holds.
    fn workloads(&self) -> usize;
    /// What a policy sees of `workload` now.
    fn observe(&self, workload: usize) -> Observation;
    /// Applies desired replicas per slot of `workload` (slots not named keep theirs).
    fn apply(&mut self, workload: usize, decision: &Decision);
    /// Lets one control interval pass; returns what happened to each workload in it.
    fn advance(&mut self) -> Vec<TickStats>;
    /// True when there is nothing left to run (the trace window has ended).
    fn is_done(&self) -> bool;
}

impl World for Twin {
    fn workloads(&self) -> usize {
        1
    }
    fn observe(&self, _workload: usize) -> Observation {
        Twin::observe(self)
    }
    fn apply(&mut self, _workload: usize, decision: &Decision) {
        Twin::apply(self, decision)
    }
    fn advance(&mut self) -> Vec<TickStats> {
        vec![self.step()]
    }
    fn is_done(&self) -> bool {
        Twin::is_done(self)
    }
}

/// The decision half of a tick as the operator runs it: the shield annotates the
/// observation (cooldowns), the policy decides, the shield clamps without recording. The
/// caller records the outcome with [`Shield::record`] once it is applied, so a shadow
/// decision starts no cooldown. ([`ControlLoop::tick_with`] clamps and records at once,
/// since the twin always applies.)
pub fn decide(shield: &mut Shield, policy: &mut dyn Policy, obs: &mut Observation) -> (Decision, ShieldOutcome) {
    shield.annotate(obs);
    let proposed = policy.decide(obs);
    let outcome = shield.clamp(obs, &proposed);
    (proposed, outcome)
}

/// What one tick of the loop did.
#[derive(Clone, Debug)]
pub struct Tick {
    /// The observation the decision was made on (annotated by the shield).
    pub observation: Observation,
    /// What the policy asked for.
    pub proposed: Decision,
    /// What the shield let through (and applied), with its overrides.
    pub outcome: ShieldOutcome,
    /// Slots whose desired replicas the applied decision changed.
    pub changed_slots: u32,
    /// What happened in the world during the interval that followed.
    pub stats: TickStats,
    /// The tick's reward ([`RewardConfig::reward`] of `stats`).
    pub reward: f64,
}

/// The control loop of one workload of a world: its shield, the reward, and the
/// observation the next decision will be made on.
pub struct ControlLoop {
    workload: usize,
    shield: Shield,
    reward: RewardConfig,
    obs: Observation,
}

impl ControlLoop {
    /// Starts the loop on `workload` of `world`: resets the shield and takes the first
    /// observation.
    pub fn new(world: &impl World, workload: usize, mut shield: Shield, reward: RewardConfig) -> Self {
        shield.reset();
        let mut obs = world.observe(workload);
        shield.annotate(&mut obs);
        ControlLoop { workload, shield, reward, obs }
    }

    /// The observation the next decision will be made on.
    pub fn observation(&self) -> &Observation {
        &self.obs
    }

    /// The shield (for its counters).
    pub fn shield(&self) -> &Shield {
        &self.shield
    }

    /// The reward weights.
    pub fn reward_config(&self) -> &RewardConfig {
        &self.reward
    }

    /// One tick with a decision function: `choose` maps the observation to a decision,
    /// the shield clamps it, the world applies it and runs one interval, and the next
    /// observation is taken.
    pub fn tick_with(&mut self, world: &mut impl World, choose: impl FnOnce(&Observation) -> Decision) -> Tick {
        let proposed = choose(&self.obs);
        let outcome = self.shield.apply(&self.obs, &proposed);
        let changed_slots = changed_slots(&self.obs, &outcome.decision);
        world.apply(self.workload, &outcome.decision);
        let stats = world.advance().into_iter().nth(self.workload).unwrap_or_default();
        let reward = self.reward.reward(&stats);
        let mut next = world.observe(self.workload);
        self.shield.annotate(&mut next);
        let observation = std::mem::replace(&mut self.obs, next);
        Tick { observation, proposed, outcome, changed_slots, stats, reward }
    }

    /// The decision half of a tick in a world of several workloads whose decisions are
    /// applied together ([`cluster::ClusterLoop`]): `policy` decides on the current
    /// observation and the shield clamps, without recording (the caller records what it
    /// applies with [`ControlLoop::settle`]).
    pub fn propose(&mut self, policy: &mut dyn Policy) -> (Decision, ShieldOutcome) {
        let proposed = policy.decide(&self.obs);
        let outcome = self.shield.clamp(&self.obs, &proposed);
        (proposed, outcome)
    }

    /// The shield's clamp of `decision` on the current observation, without recording
    /// (for a decision changed after [`ControlLoop::propose`], such as an allocator's
    /// headroom).
    pub fn clamp(&self, decision: &Decision) -> ShieldOutcome {
        self.shield.clamp(&self.obs, decision)
    }

    /// The other half of [`ControlLoop::propose`], once the world has applied `applied` (the
    /// shield's outcome, or what an arbiter granted of it) and advanced: records it with
    /// the shield, takes the next observation, and gives `policy` its feedback.
    pub fn settle(
        &mut self,
        world: &impl World,
        policy: &mut dyn Policy,
        proposed: Decision,
        applied: ShieldOutcome,
        stats: TickStats,
    ) -> Tick {
        let changed_slots = changed_slots(&self.obs, &applied.decision);
        self.shield.record(&self.obs, &applied);
        let reward = self.reward.reward(&stats);
        let mut next = world.observe(self.workload);
        self.shield.annotate(&mut next);
        let observation = std::mem::replace(&mut self.obs, next);
        policy.feedback(&self.obs, reward);
        Tick { observation, proposed, outcome: applied, changed_slots, stats, reward }
    }

    /// One tick of `policy`; the policy gets the tick's reward and the next observation
    /// as feedback.
    pub fn tick(&mut self, world: &mut impl World, policy: &mut dyn Policy) -> Tick {
        let tick = self.tick_with(world, |obs| policy.decide(obs));
        policy.feedback(&self.obs, tick.reward);
        tick
    }
}

/// Slots whose desired replicas `decision` changes from what `obs` saw.
fn changed_slots(obs: &Observation, decision: &Decision) -> u32 {
    changed_targets(obs, decision).count() as u32
}

/// The targets of `decision` whose replicas differ from the desired replicas `obs` saw for
/// their slot (a slot `obs` does not show counts as desired 0).
pub fn changed_targets<'a>(
    obs: &'a Observation,
    decision: &'a Decision,
) -> impl Iterator<Item = &'a crate::policy::SlotTarget> + 'a {
    decision
        .targets
        .iter()
        .filter(|t| obs.slot(&t.variant, &t.pool).map(|s| s.desired_replicas).unwrap_or(0) != t.replicas)
}
