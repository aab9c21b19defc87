//! The control loop of several workloads on shared GPU pools: each workload's policy
//! proposes and its shield clamps, as alone; then an [`Allocator`] decides what of the
//! proposals the shared pools give, and the world applies and advances once for all.
//!
//! Three allocators:
//! - [`Allocator::FirstCome`]: every proposal is applied as it is; replicas that find no
//!   GPU wait pending and get freed GPUs oldest first (what independent autoscalers on a
//!   shared cluster get from the scheduler).
//! - [`Allocator::Arbiter`]: the proposals become claims ([`crate::arbiter`]): grants by
//!   priority, guarantees first, max-min fair within a priority, preemption of strictly
//!   lower priorities, another pool or a smaller variant before preempting; what is
//!   applied never asks more GPUs of a pool than it has.
//! - [`Allocator::Learned`]: the arbiter, with the priorities a trained policy chooses
//!   every tick from all workloads' observations and proposals ([`crate::rl::allocator`]).

use crate::arbiter::{arbitrate, ArbiterEvent, Claim, SlotClaim};
use crate::policy::shield::{Shield, ShieldOutcome};
use crate::policy::{Decision, Observation, Policy};
use crate::twin::cluster::{ClusterTwin, Mix};
use crate::twin::TickStats;

use super::{ControlLoop, RewardConfig, Tick, World};

impl World for ClusterTwin {
    fn workloads(&self) -> usize {
        self.names().len()
    }
    fn observe(&self, workload: usize) -> Observation {
        self.twin(workload).observe()
    }
    fn apply(&mut self, workload: usize, decision: &Decision) {
        self.twin_mut(workload).apply(decision)
    }
    fn advance(&mut self) -> Vec<TickStats> {
        ClusterTwin::advance(self)
    }
    fn is_done(&self) -> bool {
        ClusterTwin::is_done(self)
    }
}

/// Who decides what the shared pools give of the workloads' proposals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    /// Proposals applied as they are; pending replicas get freed GPUs oldest first.
    FirstCome,
    /// The arbiter's grants ([`crate::arbiter::arbitrate`]).
    Arbiter,
    /// The arbiter's grants under priorities a trained allocator policy chooses every
    /// tick ([`crate::rl::allocator`]); its caller passes them to [`ClusterLoop::finish`].
    Learned,
}

impl Allocator {
    /// The name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::FirstCome => "first-come",
            Allocator::Arbiter => "arbiter",
            Allocator::Learned => "learned",
        }
    }
}

/// Every workload's proposal of one tick: what its policy asked and what its shield let
/// through.
pub type Proposals = Vec<(Decision, ShieldOutcome)>;

/// A run of a mix: the world, the control loops and every workload's policy.
pub type MixRun = (ClusterTwin, ClusterLoop, Vec<Box<dyn Policy>>);

/// The world, loops and policies of `mix` for one run with `seed`: every workload's
/// policy its scenario's, or the heuristic `policy` for all; its shield, the default
/// reward, and its standing from the mix file; `allocator` for the loops.
pub fn start_mix(mix: &Mix, seed: u64, policy: Option<&str>, allocator: Allocator) -> anyhow::Result<MixRun> {
    let world = mix.build(seed)?;
    let mut policies: Vec<Box<dyn Policy>> = Vec::with_capacity(mix.scenarios.len());
    for s in &mix.scenarios {
        policies.push(match policy {
            Some(name) => crate::policy::build::build_heuristic(name, &s.spec, "--policy")?,
            None => crate::policy::build::build_policy(&s.spec)?,
        });
    }
    let shields = mix.scenarios.iter().map(|s| Shield::new(&s.spec)).collect();
    let rewards = vec![RewardConfig::default(); mix.scenarios.len()];
    let standing = mix
        .file
        .workloads
        .iter()
        .map(|w| Standing { priority: w.priority, guaranteed_gpus: w.guaranteed_gpus })
        .collect();
    let control = ClusterLoop::new(&world, shields, rewards, standing, allocator);
    Ok((world, control, policies))
}

/// A workload's standing in the arbitration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    /// Priority (higher wins).
    pub priority: i32,
    /// GPUs over the shared pools that lower priorities cannot keep from it while it has traffic.
    pub guaranteed_gpus: u32,
}

/// One tick of all workloads.
#[derive(Clone, Debug)]
pub struct ClusterTick {
    /// Each workload's tick (what its policy proposed, what was applied, what happened).
    pub ticks: Vec<Tick>,
    /// What the arbiter did (empty under [`Allocator::FirstCome`]); indices are workloads
    /// and the slots of their applied decisions.
    pub events: Vec<ArbiterEvent>,
}

/// The control loops of a world of several workloads sharing GPU pools.
pub struct ClusterLoop {
    loops: Vec<ControlLoop>,
    standing: Vec<Standing>,
    allocator: Allocator,
}

impl ClusterLoop {
    /// One control loop per workload of `world` (its shield and reward), with its standing.
    pub fn new(
        world: &ClusterTwin,
        shields: Vec<Shield>,
        rewards: Vec<RewardConfig>,
        standing: Vec<Standing>,
        allocator: Allocator,
    ) -> Self {
        let loops = shields
            .into_iter()
            .zip(rewards)
            .enumerate()
            .map(|(w, (shield, reward))| ControlLoop::new(world, w, shield, reward))
            .collect();
        ClusterLoop { loops, standing, allocator }
    }

    /// Workload `w`'s control loop (its observation and shield).
    pub fn workload(&self, w: usize) -> &ControlLoop {
        &self.loops[w]
    }

    /// Workload `w`'s standing (its static priority and guarantee).
    pub fn standing(&self, w: usize) -> Standing {
        self.standing[w]
    }

    /// One tick: every policy proposes, the allocator decides, the world applies and
    /// runs one interval, every loop settles. The learned allocator's priorities come
    /// from its caller ([`ClusterLoop::propose`], then [`ClusterLoop::finish`]); here it
    /// uses the static ones, as the arbiter does.
    pub fn tick(&mut self, world: &mut ClusterTwin, policies: &mut [Box<dyn Policy>]) -> ClusterTick {
        let proposals = self.propose(policies);
        self.finish(world, policies, proposals, None)
    }

    /// The first half of a tick: every workload's policy proposes on its observation and
    /// its shield clamps.
    pub fn propose(&mut self, policies: &mut [Box<dyn Policy>]) -> Proposals {
        self.loops.iter_mut().zip(policies.iter_mut()).map(|(lp, p)| lp.propose(p.as_mut())).collect()
    }

    /// Adds `extra[w]` replicas to workload `w`'s proposal (on its slot that has the most
    /// replicas, the first on a tie), then lets its shield clamp the result again, so the
    /// workload's limits still hold. A learned allocator's headroom: the arbiter then
    /// grants the extra replicas like any demand.
    pub fn add_headroom(&self, proposals: &mut Proposals, extra: &[u32]) {
        for (w, ((_, outcome), &e)) in proposals.iter_mut().zip(extra).enumerate() {
            if e == 0 {
                continue;
            }
            let mut d = outcome.decision.clone();
            let mut best: Option<usize> = None;
            for (i, t) in d.targets.iter().enumerate() {
                if best.is_none_or(|b| t.replicas > d.targets[b].replicas) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { continue };
            d.targets[b].replicas = d.targets[b].replicas.saturating_add(e);
            let mut clamped = self.loops[w].clamp(&d);
            // What the shield overrode of the policy's own proposal still counts.
            let mut overrides = outcome.overrides.clone();
            overrides.append(&mut clamped.overrides);
            clamped.overrides = overrides;
            *outcome = clamped;
        }
    }

    /// The second half: the allocator decides on `proposals` (the arbiter with
    /// `priorities` instead of the static ones when given), the world applies and runs
    /// one interval, every loop settles.
    pub fn finish(
        &mut self,
        world: &mut ClusterTwin,
        policies: &mut [Box<dyn Policy>],
        mut proposals: Proposals,
        priorities: Option<&[i32]>,
    ) -> ClusterTick {
        let events = match self.allocator {
            Allocator::FirstCome => Vec::new(),
            Allocator::Arbiter | Allocator::Learned => self.arbitrate(world, &mut proposals, priorities),
        };
        for (w, (_, outcome)) in proposals.iter().enumerate() {
            world.apply(w, &outcome.decision);
        }
        let stats = world.advance();
        let ticks = proposals
            .into_iter()
            .zip(stats)
            .enumerate()
            .map(|(w, ((proposed, outcome), s))| {
                self.loops[w].settle(world, policies[w].as_mut(), proposed, outcome, s)
            })
            .collect();
        ClusterTick { ticks, events }
    }

    /// Replaces every shared slot's target by what the arbiter grants.
    fn arbitrate(
        &self,
        world: &ClusterTwin,
        proposals: &mut [(Decision, ShieldOutcome)],
        priorities: Option<&[i32]>,
    ) -> Vec<ArbiterEvent> {
        let mut claims: Vec<Claim> =
            proposals.iter().enumerate().map(|(w, (_, outcome))| self.claim(world, w, &outcome.decision)).collect();
        if let Some(p) = priorities {
            for (c, &p) in claims.iter_mut().zip(p) {
                c.priority = p;
            }
        }
        let allocation = arbitrate(world.pools(), &claims);
        for ((_, outcome), granted) in proposals.iter_mut().zip(&allocation.granted) {
            for (t, &g) in outcome.decision.targets.iter_mut().zip(granted) {
                t.replicas = g;
            }
        }
        allocation.events
    }

    /// Workload `w`'s claim: one slot per target of its clamped decision.
    fn claim(&self, world: &ClusterTwin, w: usize, decision: &Decision) -> Claim {
        let obs = self.loops[w].observation();
        let spec = world.twin(w).spec();
        let slots = decision
            .targets
            .iter()
            .map(|t| {
                let var = spec.variants.iter().find(|v| v.name == t.variant);
                let held = obs.slot(&t.variant, &t.pool).map(|s| s.desired_replicas).unwrap_or(0);
                let max = var.map(|v| v.max_replicas).unwrap_or(t.replicas);
                SlotClaim {
                    variant: t.variant.clone(),
                    // Only a shared pool's name is known to the arbiter; a private pool is granted as proposed.
                    pool: match world.shared_pool(w, &t.pool) {
                        Some(p) => world.pools()[p].name.clone(),
                        None => format!("{}/private", t.pool),
                    },
                    gpus_per_replica: var.map(|v| v.gpus_per_replica).unwrap_or(1).max(1),
                    held,
                    proposed: t.replicas,
                    max: max.min(held.saturating_add(spec.limits.max_step_change)).max(t.replicas),
                    replica_rps: 0.0,
                }
            })
            .collect();
        Claim {
            workload: world.names()[w].clone(),
            priority: self.standing[w].priority,
            guaranteed_gpus: self.standing[w].guaranteed_gpus,
            has_traffic: obs.arrival_rate_rps > 0.0,
            slots,
        }
    }
}
