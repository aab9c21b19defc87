//! Checkpoint selection on held-out windows: the validation configuration, one
//! validation of a greedy agent ([`validate`]) and the reference policy's returns
//! ([`reference_returns`]) that relative scores compare with.
//!
//! A run validates on its own window and on each mix source's. Summing returns over
//! windows of different lengths and rates lets the longest, busiest window decide which
//! weights are kept. [`ValidationScore`] says how the windows are combined:
//! `meanReturn` (the default: the mean return over every run of every window, as before),
//! `relativeMean` or `relativeWorst` (per window, the relative improvement on a reference
//! policy's return on the same runs, then their mean or their minimum). The relative
//! scores weigh every window alike, whatever its length, rate or reward scale, and
//! `relativeWorst` keeps the weights that are best where they are worst.

use serde::{Deserialize, Serialize};

use crate::control::ControlLoop;
use crate::policy::shield::Shield;
use crate::policy::{Decision, Observation};
use crate::twin::{RunWindow, Scenario, Twin};

use super::dqn::DqnAgent;
use super::encoding::{ActionLimits, ObsEncoder};
use super::env::{RewardConfig, TwinEnv};
use super::policy::greedy_decision;
use super::RlError;

/// How validation windows are combined into the score selection compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValidationScore {
    /// The mean return over every run of every window.
    #[default]
    MeanReturn,
    /// The mean over windows of the relative improvement on the reference policy.
    RelativeMean,
    /// The worst window's relative improvement on the reference policy.
    RelativeWorst,
}

impl ValidationScore {
    /// The name used in configuration files.
    pub fn as_str(&self) -> &'static str {
        match self {
            ValidationScore::MeanReturn => "meanReturn",
            ValidationScore::RelativeMean => "relativeMean",
            ValidationScore::RelativeWorst => "relativeWorst",
        }
    }
    fn is_mean_return(&self) -> bool {
        *self == ValidationScore::MeanReturn
    }
}

/// Checkpoint selection on a held-out window (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// The validation window as fractions `[start, end)` of the trace: outside
    /// `episodes.trainWindow` and ending at or before the test window.
    pub window: (f64, f64),
    /// Load multipliers to validate at.
    pub loads: Vec<f64>,
    /// Replay seeds (0 = as recorded, k > 0 = seeded resamples).
    pub seeds: Vec<u64>,
    /// Environment steps between evaluations.
    pub every: u64,
    /// How the windows are scored for selection (the run's `validation` decides; a mix
    /// source's is not used).
    #[serde(skip_serializing_if = "ValidationScore::is_mean_return")]
    pub score: ValidationScore,
    /// The reference policy of a relative score, in the command-line form (`hpa`,
    /// `kpa:target=1`, `forecast:capacity=1.3`); needed by the relative scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            window: (0.45, crate::twin::scenario::TRAIN_FRACTION),
            loads: vec![0.5, 1.0, 1.5],
            seeds: vec![0, 1, 2, 3, 4],
            every: 2000,
            score: ValidationScore::MeanReturn,
            reference: None,
        }
    }
}

impl ValidationConfig {
    /// Checks the window against the training window and the test window, which starts
    /// at `test_start` (a fraction of the scenario's traffic; 1 when the scenario's test
    /// traffic is another scenario, as for ServeGen's days: [`test_start_of`]).
    pub fn check(&self, train_window: (f64, f64), test_start: f64) -> Result<(), RlError> {
        let (a, b) = self.window;
        if !(0.0 <= a && a < b && b <= test_start + 1e-12) {
            return Err(RlError::Config(format!(
                "validation.window {:?} must satisfy 0 ≤ start < end ≤ {test_start} (the test window starts there)",
                self.window,
            )));
        }
        if a < train_window.1 && train_window.0 < b {
            return Err(RlError::Config(format!(
                "validation.window {:?} overlaps episodes.trainWindow {:?}; validation must use traffic training never sees",
                self.window, train_window
            )));
        }
        if self.loads.is_empty() || self.loads.iter().any(|l| !(*l > 0.0)) {
            return Err(RlError::Config(format!("validation.loads {:?} must be positive and non-empty", self.loads)));
        }
        if self.seeds.is_empty() || self.every == 0 {
            return Err(RlError::Config("validation.seeds must be non-empty and validation.every > 0".into()));
        }
        if self.score != ValidationScore::MeanReturn && self.reference.is_none() {
            return Err(RlError::Config(format!(
                "validation.score = {:?} compares with a reference policy: set validation.reference (e.g. \"hpa\")",
                self.score.as_str()
            )));
        }
        Ok(())
    }
}

/// One validation of the greedy policy (a line of `validation.jsonl`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRecord {
    /// Environment steps trained when evaluated.
    pub env_steps: u64,
    /// Gradient updates done when evaluated.
    pub updates: u64,
    /// Mean return over the validation runs (loads × seeds).
    pub mean_return: f64,
    /// Per validation window (the run's first, then each mix source's), the mean return
    /// per run.
    #[serde(default)]
    pub window_returns: Vec<f64>,
    /// Per window, the return's relative improvement on the reference policy's
    /// (`(R − R_ref) / |R_ref|`); empty without a reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relative: Vec<f64>,
    /// What selection compares ([`ValidationScore`]): the mean return, or the mean or
    /// worst relative improvement.
    #[serde(default)]
    pub score: f64,
    /// SLO attainment over all validation requests.
    pub slo_attainment: f64,
    /// GPU-hours over all validation runs.
    pub gpu_hours: f64,
    /// Whether this evaluation became the selected checkpoint.
    pub best: bool,
}

/// Runs every (load, seed) of every validation set with `decide` (a fresh policy per run
/// from `make`), returning per set the mean return per run, and the totals.
fn run_sets<P>(
    sets: &[(Scenario, ValidationConfig)],
    reward: &RewardConfig,
    mut make: impl FnMut(&Scenario) -> Result<P, RlError>,
    mut decide: impl FnMut(&mut P, &Observation) -> Decision,
) -> Result<(Vec<f64>, Totals), RlError> {
    let mut per_set = Vec::with_capacity(sets.len());
    let mut totals = Totals::default();
    for (scenario, v) in sets {
        let (mut ret, mut runs) = (0.0, 0.0);
        for &load in &v.loads {
            for &seed in &v.seeds {
                let mut twin = Twin::with_window(scenario, RunWindow::new(seed, (v.window.0, v.window.1), load))?;
                let mut policy = make(scenario)?;
                let mut control = ControlLoop::new(&twin, 0, Shield::new(&scenario.spec), reward.clone());
                while !twin.is_done() {
                    let t = control.tick_with(&mut twin, |obs| decide(&mut policy, obs));
                    ret += t.reward;
                    // The total in tick order, as it always was summed (selection with
                    // `meanReturn` keeps the same weights, bit for bit).
                    totals.ret += t.reward;
                    totals.finished += t.stats.finished as f64;
                    totals.met += t.stats.slo_met as f64;
                    totals.gpu_s += t.stats.gpu_seconds;
                }
                runs += 1.0;
            }
        }
        totals.runs += runs;
        per_set.push(ret / runs.max(1.0));
    }
    Ok((per_set, totals))
}

#[derive(Default)]
struct Totals {
    ret: f64,
    runs: f64,
    finished: f64,
    met: f64,
    gpu_s: f64,
}

/// The greedy agent in one validation run: its encoder and limits for the run's
/// scenario, and the residual layout's base policy.
struct GreedyRun {
    encoder: ObsEncoder,
    limits: ActionLimits,
    base: Option<Box<dyn crate::policy::Policy>>,
}

/// Runs the greedy agent on every (load, seed) of every validation set (a scenario and
/// its window); `reference` (per set, [`reference_returns`]) and `score` make the score.
pub fn validate(
    agent: &DqnAgent,
    sets: &[(Scenario, ValidationConfig)],
    template: &TwinEnv,
    reward: &RewardConfig,
    score: ValidationScore,
    reference: Option<&[f64]>,
) -> Result<ValidationRecord, RlError> {
    let actions = template.action_layout();
    let make = |scenario: &Scenario| -> Result<GreedyRun, RlError> {
        let mut encoder = ObsEncoder::new(template.encoder().layout().clone());
        encoder.retarget(&scenario.spec);
        let base = match &actions.base {
            Some(b) => Some(
                crate::policy::build::build_heuristic(b, &scenario.spec, "residualBase")
                    .map_err(|e| RlError::Config(e.to_string()))?,
            ),
            None => None,
        };
        Ok(GreedyRun { encoder, limits: ActionLimits::from_spec(&scenario.spec, template.encoder().layout()), base })
    };
    let decide = |g: &mut GreedyRun, obs: &Observation| {
        let b = g.base.as_mut().map(|p| p.decide(obs));
        greedy_decision(std::slice::from_ref(agent), &mut g.encoder, actions, &g.limits, obs, b.as_ref()).0
    };
    let (window_returns, t) = run_sets(sets, reward, make, decide)?;
    let mean_return = t.ret / t.runs.max(1.0);
    let relative: Vec<f64> = match reference {
        Some(r) => window_returns.iter().zip(r).map(|(a, b)| (a - b) / b.abs().max(1e-9)).collect(),
        None => Vec::new(),
    };
    let score = match (score, relative.is_empty()) {
        (ValidationScore::MeanReturn, _) | (_, true) => mean_return,
        (ValidationScore::RelativeMean, false) => relative.iter().sum::<f64>() / relative.len() as f64,
        (ValidationScore::RelativeWorst, false) => relative.iter().copied().fold(f64::INFINITY, f64::min),
    };
    Ok(ValidationRecord {
        env_steps: agent.env_steps,
        updates: agent.updates,
        mean_return,
        window_returns,
        relative,
        score,
        slo_attainment: if t.finished > 0.0 { t.met / t.finished } else { f64::NAN },
        gpu_hours: t.gpu_s / 3600.0,
        best: false,
    })
}

/// The reference policy's mean return per run on each validation set (the same windows,
/// loads, seeds, shield and reward as [`validate`]); `reference` is a heuristic policy in
/// the command-line form.
pub fn reference_returns(
    sets: &[(Scenario, ValidationConfig)],
    reward: &RewardConfig,
    reference: &str,
) -> Result<Vec<f64>, RlError> {
    let make = |scenario: &Scenario| {
        crate::policy::build::build_heuristic(reference, &scenario.spec, "validation.reference")
            .map_err(|e| RlError::Config(e.to_string()))
    };
    let decide = |p: &mut Box<dyn crate::policy::Policy>, obs: &Observation| p.decide(obs);
    Ok(run_sets(sets, reward, make, decide)?.0)
}
