//! The environment interface the learners train on.
//!
//! An [`Env`] is the RL view of a control problem: raw observation features (the learner
//! normalises them), a factored action (one chosen option per branch), a mask of allowed
//! options, a reward, and the two ways an episode ends: *terminated* (the world ended, no
//! bootstrapping) and *truncated* (a time limit cut it, bootstrapping continues). The toy
//! problems in [`crate::rl::toy`] and the twin environment (`TwinEnv`, below) implement it.

use serde::{Deserialize, Serialize};

use super::RlError;

pub use super::encoding::BranchSpec;

/// What a step measured besides the reward, for training logs (zero for toy problems).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Requests that finished in the tick.
    pub finished: f64,
    /// Requests that finished within the SLO in the tick.
    pub slo_met: f64,
    /// Requests rejected in the tick.
    pub rejected: f64,
    /// GPU cost of the tick, USD.
    pub cost_usd: f64,
    /// GPU-seconds of the tick.
    pub gpu_seconds: f64,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvStep {
    /// Raw observation features after the step.
    pub obs: Vec<f32>,
    /// Allowed options after the step, flattened over branches.
    pub mask: Vec<bool>,
    /// Reward of the step.
    pub reward: f64,
    /// The episode ended for good.
    pub terminated: bool,
    /// The episode was cut by a time limit.
    pub truncated: bool,
    /// Measurements of the step.
    pub info: StepInfo,
}

/// A reinforcement-learning environment with a factored, maskable action space.
pub trait Env {
    /// Names of the raw observation features, in order.
    fn feature_names(&self) -> Vec<String>;
    /// The action branches, in order.
    fn action_branches(&self) -> Vec<BranchSpec>;
    /// Starts a new episode; returns the first observation and its action mask.
    fn reset(&mut self, seed: u64) -> Result<(Vec<f32>, Vec<bool>), RlError>;
    /// Applies one option per branch and advances one step.
    fn step(&mut self, action: &[usize]) -> Result<EnvStep, RlError>;

    /// Number of observation features.
    fn obs_dim(&self) -> usize {
        self.feature_names().len()
    }
    /// Number of options per branch.
    fn branch_sizes(&self) -> Vec<usize> {
        self.action_branches().iter().map(|b| b.options.len()).collect()
    }
}

/// Offsets of each branch in a flattened mask or Q-vector.
pub fn branch_offsets(sizes: &[usize]) -> Vec<usize> {
    let mut off = Vec::with_capacity(sizes.len());
    let mut acc = 0;
    for s in sizes {
        off.push(acc);
        acc += s;
    }
    off
}

// ---------------------------------------------------------------------------------------
// The environment over the twin.
// ---------------------------------------------------------------------------------------

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::control::ControlLoop;
use crate::policy::shield::Shield;
use crate::policy::Observation;
use crate::twin::{RunWindow, Scenario, Twin};

use super::encoding::{ActionLayout, ActionLayoutKind, ActionLimits, ObsEncoder, WorkloadLayout};
use super::mix::{EpisodeFactors, Randomisation};

/// Seed offset of the mix's random stream (source and factors of an episode).
const MIX_STREAM: u64 = 0x6d69_785f_7372_6373;

pub use crate::control::RewardConfig;

/// How training episodes are cut from the scenario's trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EpisodeConfig {
    /// The training part of the trace, as fractions `[start, end)`; the rest is for testing.
    pub train_window: (f64, f64),
    /// Length of one episode as a fraction of the whole trace.
    pub episode_frac: f64,
    /// Most control ticks per episode; `None` for the whole window.
    pub max_ticks: Option<u64>,
    /// Load multipliers; each episode draws one uniformly.
    pub loads: Vec<f64>,
    /// Curriculum: for the first `curriculum_episodes` episodes, only loads ≤ 1 are drawn
    /// (when the list has any), so the agent first learns in calmer traffic.
    pub curriculum_episodes: u64,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        EpisodeConfig {
            train_window: (0.0, crate::twin::scenario::TRAIN_FRACTION),
            episode_frac: 0.1,
            max_ticks: None,
            loads: vec![1.0],
            curriculum_episodes: 0,
        }
    }
}

/// Checks an episode configuration (windows, length, loads); the error names the field.
pub fn check_episodes(episodes: &EpisodeConfig) -> Result<(), RlError> {
    let (a, b) = episodes.train_window;
    if !(0.0 <= a && a < b && b <= 1.0) || !(episodes.episode_frac > 0.0) {
        return Err(RlError::Config(format!(
            "episodes.trainWindow {:?} must satisfy 0 ≤ start < end ≤ 1 and episodeFrac > 0",
            episodes.train_window
        )));
    }
    if episodes.loads.is_empty() || episodes.loads.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
        return Err(RlError::Config(format!("episodes.loads {:?} must be positive and non-empty", episodes.loads)));
    }
    Ok(())
}

/// One scenario of a training mix, loaded.
#[derive(Clone)]
pub struct Source {
    /// The scenario (its trace loaded once, shared by every episode).
    pub scenario: Scenario,
    /// Relative frequency of its episodes (> 0).
    pub weight: f64,
    /// How its episodes are cut.
    pub episodes: EpisodeConfig,
}

impl Source {
    /// Checks that the source has the slots and pools of `layout` (the workload the
    /// policy is trained for) and a positive weight; the error names the scenario.
    pub fn check(&self, layout: &WorkloadLayout) -> Result<(), RlError> {
        let own = WorkloadLayout::from_spec(&self.scenario.spec);
        let name = &self.scenario.name;
        if own.slots != layout.slots || own.pools != layout.pools {
            let show = |l: &WorkloadLayout| {
                l.slots.iter().map(|s| format!("{}/{}", s.variant, s.pool)).collect::<Vec<_>>().join(", ")
            };
            return Err(RlError::Config(format!(
                "mix scenario `{name}` has slots [{}] but the trained workload has [{}]; every scenario of a mix needs the same variant and pool names",
                show(&own),
                show(layout)
            )));
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(RlError::Config(format!("mix scenario `{name}`: weight {} must be > 0", self.weight)));
        }
        check_episodes(&self.episodes).map_err(|e| RlError::Config(format!("mix scenario `{name}`: {e}")))
    }
}

/// Picks a source index with probability proportional to its weight.
pub fn pick_source(sources: &[Source], rng: &mut impl Rng) -> usize {
    let total: f64 = sources.iter().map(|s| s.weight).sum();
    let mut u = rng.random::<f64>() * total;
    for (i, s) in sources.iter().enumerate() {
        if u < s.weight {
            return i;
        }
        u -= s.weight;
    }
    sources.len() - 1
}

/// The twin as an [`Env`]: episodes are random windows of the training part of the trace.
///
/// Each step is one tick of the one control loop ([`ControlLoop`]): the chosen deltas
/// become a [`crate::policy::Decision`], the workload's [`Shield`] clamps it (exactly as
/// the operator would), the twin applies it and runs one control interval, and the tick
/// is rewarded with [`RewardConfig`].
pub struct TwinEnv {
    scenario: Scenario,
    encoder: ObsEncoder,
    actions: ActionLayout,
    limits: ActionLimits,
    reward: RewardConfig,
    episodes: EpisodeConfig,
    /// The running episode: the twin and the one control loop over it.
    running: Option<(Twin, ControlLoop)>,
    ticks: u64,
    episode: u64,
    /// Twin control ticks simulated so far (for throughput figures).
    pub twin_steps: u64,
    /// The base policy of a residual layout and its decision on the current observation.
    base: Option<(Box<dyn crate::policy::Policy>, crate::policy::Decision)>,
    /// Training across traffic: the scenarios episodes are drawn from (empty: `scenario`
    /// with `episodes` only) and the per-episode randomisation.
    sources: Vec<Source>,
    randomise: Randomisation,
    /// The last episode's source (index into `sources`, 0 without a mix) and factors.
    pub last_episode: (usize, EpisodeFactors),
}

impl TwinEnv {
    /// An environment over `scenario` with the given action deltas and layout kind.
    pub fn new(
        scenario: Scenario,
        kind: ActionLayoutKind,
        deltas: Vec<i32>,
        reward: RewardConfig,
        episodes: EpisodeConfig,
    ) -> Result<Self, RlError> {
        if kind != ActionLayoutKind::Capacity && !deltas.contains(&0) {
            return Err(RlError::Config(format!("action deltas {deltas:?} must contain 0 (hold)")));
        }
        check_episodes(&episodes)?;
        let spec = scenario.spec.clone();
        let layout = WorkloadLayout::from_spec(&spec);
        let limits = ActionLimits::from_spec(&spec, &layout);
        let actions = ActionLayout::new(kind, layout.slots.clone(), deltas);
        Ok(TwinEnv {
            encoder: ObsEncoder::new(layout),
            actions,
            limits,
            reward,
            episodes,
            scenario,
            running: None,
            ticks: 0,
            episode: 0,
            twin_steps: 0,
            base: None,
            sources: Vec::new(),
            randomise: Randomisation::default(),
            last_episode: (0, EpisodeFactors::default()),
        })
    }

    /// Trains across traffic: episodes are drawn from `sources` (by weight; the
    /// environment's own scenario takes part only if listed) with `randomise` applied to
    /// each. Every source must have this workload's slots and pools.
    pub fn with_mix(mut self, sources: Vec<Source>, randomise: Randomisation) -> Result<Self, RlError> {
        randomise.check()?;
        for s in &sources {
            s.check(self.encoder.layout())?;
        }
        self.sources = sources;
        self.randomise = randomise;
        Ok(self)
    }

    /// Puts the base policy `name` (command-line form, a heuristic kind) under a residual
    /// layout: each tick the base policy decides, its targets become features, and the
    /// action's options are offsets from them. An error when the layout is not residual.
    pub fn with_base(mut self, name: &str) -> Result<Self, RlError> {
        if self.actions.kind != ActionLayoutKind::Residual {
            return Err(RlError::Config(format!(
                "residualBase `{name}` needs actionLayout = \"residual\" (it is {:?})",
                self.actions.kind
            )));
        }
        let policy = crate::policy::build::build_heuristic(name, &self.scenario.spec, "residualBase")
            .map_err(|e| RlError::Config(e.to_string()))?;
        self.encoder = ObsEncoder::new(self.encoder.layout().clone().with_base_feature(true));
        self.actions = self.actions.clone().with_base(Some(name.to_string()));
        self.base = Some((policy, crate::policy::Decision::new("")));
        Ok(self)
    }

    /// Gives the capacity layout its capacities per replica (requests/s); an error when
    /// the layout is the capacity one without any, or another one with some.
    pub fn with_capacities(mut self, capacities: Vec<f64>) -> Result<Self, RlError> {
        self.actions = self.actions.clone().with_capacities(capacities);
        self.actions.check().map_err(RlError::Config)?;
        Ok(self)
    }

    /// Gives the capacity layout its sizing metric and says whether its hold is free (see
    /// [`crate::rl::encoding::ActionLayout::with_capacity_rule`]); an error on another layout
    /// unless they are the defaults.
    pub fn with_capacity_rule(mut self, metric: super::encoding::CapacityMetric, hold: bool) -> Result<Self, RlError> {
        self.actions = self.actions.clone().with_capacity_rule(metric, hold);
        self.actions.check().map_err(RlError::Config)?;
        Ok(self)
    }

    /// Adds rate-history features over the given horizons (seconds) to the observation;
    /// see [`super::encoding`].
    pub fn with_rate_history(mut self, horizons_s: &[f64]) -> Self {
        self.encoder = ObsEncoder::new(self.encoder.layout().clone().with_rate_history(horizons_s));
        self
    }

    /// Makes the agent cooldown-aware (or not): each slot gets the fraction of the shield's
    /// scale-down cooldown still to run as a feature, and scale-downs the shield would refuse
    /// are masked instead of being overridden.
    pub fn with_cooldown(mut self, on: bool) -> Self {
        self.encoder = ObsEncoder::new(self.encoder.layout().clone().with_cooldown_feature(on));
        self.actions = self.actions.clone().with_mask_cooldown(on);
        self
    }

    /// The observation encoder.
    pub fn encoder(&self) -> &ObsEncoder {
        &self.encoder
    }
    /// The action layout.
    pub fn action_layout(&self) -> &ActionLayout {
        &self.actions
    }
    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }
    /// The last observation (`None` before the first reset).
    pub fn observation(&self) -> Option<&Observation> {
        self.running.as_ref().map(|(_, c)| c.observation())
    }
}

/// The base decision on `obs` (a residual layout), kept in `base` and set into the
/// encoder; `None` without a base. A free function over the two fields, so the running
/// control loop's observation can be read meanwhile without a copy.
fn decide_base<'a>(
    base: &'a mut Option<(Box<dyn crate::policy::Policy>, crate::policy::Decision)>,
    encoder: &mut ObsEncoder,
    obs: &Observation,
) -> Option<&'a crate::policy::Decision> {
    let (p, d) = base.as_mut()?;
    *d = p.decide(obs);
    encoder.set_base(Some(d));
    Some(d)
}

impl Env for TwinEnv {
    fn feature_names(&self) -> Vec<String> {
        self.encoder.feature_names()
    }
    fn action_branches(&self) -> Vec<BranchSpec> {
        self.actions.branches()
    }
    fn reset(&mut self, seed: u64) -> Result<(Vec<f32>, Vec<bool>), RlError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // The mix draws from a stream of its own, so a run without one is as before.
        let mut mix_rng = ChaCha8Rng::seed_from_u64(seed ^ MIX_STREAM);
        let index = if self.sources.is_empty() { 0 } else { pick_source(&self.sources, &mut mix_rng) };
        let factors = self.randomise.draw(&mut mix_rng);
        let (source, episodes) = match self.sources.get(index) {
            Some(s) => (&s.scenario, &s.episodes),
            None => (&self.scenario, &self.episodes),
        };
        let (a, b) = episodes.train_window;
        let len = episodes.episode_frac.min(b - a);
        let start = a + rng.random::<f64>() * (b - a - len);
        let loads: Vec<f64> = if self.episode < episodes.curriculum_episodes && episodes.loads.iter().any(|l| *l <= 1.0)
        {
            episodes.loads.iter().copied().filter(|l| *l <= 1.0).collect()
        } else {
            episodes.loads.clone()
        };
        let load = loads[rng.random_range(0..loads.len())] * factors.load;
        let perturbed = if self.randomise.is_off() { None } else { Some(super::mix::perturbed(source, &factors)?) };
        let scenario = perturbed.as_ref().unwrap_or(source);
        let twin = Twin::with_window(scenario, RunWindow::new(seed, (start, start + len), load))?;
        let control = ControlLoop::new(&twin, 0, Shield::new(&scenario.spec), self.reward.clone());
        if !self.sources.is_empty() || perturbed.is_some() {
            // This episode's workload: its limits, SLO and cooldown, its base policy.
            let spec = &scenario.spec;
            self.limits = ActionLimits::from_spec(spec, self.encoder.layout());
            self.encoder.retarget(spec);
            if let (Some(name), Some(b)) = (&self.actions.base, self.base.as_mut()) {
                b.0 = crate::policy::build::build_heuristic(name, spec, "residualBase")
                    .map_err(|e| RlError::Config(e.to_string()))?;
            }
        }
        self.last_episode = (index, factors);
        self.encoder.reset();
        self.ticks = 0;
        self.episode += 1;
        if let Some((p, _)) = self.base.as_mut() {
            p.reset();
        }
        let obs = control.observation();
        let base = decide_base(&mut self.base, &mut self.encoder, obs);
        let first = (self.encoder.encode(obs), self.actions.mask_on(obs, &self.limits, base));
        self.running = Some((twin, control));
        Ok(first)
    }
    fn step(&mut self, action: &[usize]) -> Result<EnvStep, RlError> {
        let (twin, control) = self.running.as_mut().ok_or(RlError::NotReset)?;
        let actions = &self.actions;
        let base = self.base.as_ref().map(|(_, d)| d);
        let t = control.tick_with(twin, |obs| actions.decision_on(action, obs, base, "dqn"));
        let tick = t.stats;
        self.twin_steps += 1;
        self.ticks += 1;
        let truncated = twin.is_done() || self.episodes.max_ticks.is_some_and(|m| self.ticks >= m);
        let obs = control.observation();
        let base = decide_base(&mut self.base, &mut self.encoder, obs);
        Ok(EnvStep {
            obs: self.encoder.encode(obs),
            mask: self.actions.mask_on(obs, &self.limits, base),
            reward: t.reward,
            terminated: false,
            truncated,
            info: StepInfo {
                finished: tick.finished as f64,
                slo_met: tick.slo_met as f64,
                rejected: tick.rejected as f64,
                cost_usd: tick.cost_usd,
                gpu_seconds: tick.gpu_seconds,
            },
        })
    }
}
