//! Tabular Q-learning over a discretised observation: the readable reference learner.
//!
//! Each raw feature is cut into `bins` equal intervals over `[low, high]` (values outside
//! are clamped into the end bins); the tuple of bin indices is the state. The factored
//! action is enumerated jointly (the product of the branch sizes), so the table holds one
//! value per (state, joint action). After every step the classic update is applied:
//!
//! ```text
//! Q(s,a) ← Q(s,a) + α [ r + γ · max_{a' allowed in s'} Q(s',a') − Q(s,a) ]
//! ```
//!
//! with the bootstrap term dropped when the episode *terminated* (kept on truncation).
//! Actions are ε-greedy over the *allowed* joint actions; masked actions are never
//! chosen nor maximised over. Unvisited entries start at `initial_q`.
//!
//! Parameters ([`TabularConfig`]): `alpha` (learning rate), `gamma` (discount),
//! `epsilon` (exploration schedule), `episodes`, `bins`/`low`/`high` (discretisation),
//! `initial_q`, `seed`.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::env::{branch_offsets, Env};
use super::schedule::EpsilonSchedule;
use super::RlError;

/// Hyperparameters of tabular Q-learning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TabularConfig {
    /// Learning rate α.
    pub alpha: f64,
    /// Discount γ.
    pub gamma: f64,
    /// Exploration, indexed by environment step.
    pub epsilon: EpsilonSchedule,
    /// Episodes to train.
    pub episodes: usize,
    /// Bins per feature.
    pub bins: usize,
    /// Lower edge of the binned range (same for every feature).
    pub low: f32,
    /// Upper edge of the binned range.
    pub high: f32,
    /// Value of unvisited entries.
    pub initial_q: f64,
    /// Seed of the exploration RNG and of the episode seeds.
    pub seed: u64,
}

impl Default for TabularConfig {
    fn default() -> Self {
        TabularConfig {
            alpha: 0.2,
            gamma: 0.9,
            epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 2_000 },
            episodes: 500,
            bins: 2,
            low: 0.0,
            high: 1.0,
            initial_q: 0.0,
            seed: 0,
        }
    }
}

/// A learned Q-table.
#[derive(Clone, Debug)]
pub struct QTable {
    cfg: TabularConfig,
    branch_sizes: Vec<usize>,
    n_joint: usize,
    q: HashMap<Vec<u16>, Vec<f64>>,
}

impl QTable {
    /// An empty table for the given branch sizes.
    pub fn new(cfg: TabularConfig, branch_sizes: Vec<usize>) -> Self {
        let n_joint = branch_sizes.iter().product::<usize>().max(1);
        QTable { cfg, branch_sizes, n_joint, q: HashMap::new() }
    }

    /// The discretised state of raw features.
    pub fn state(&self, obs: &[f32]) -> Vec<u16> {
        let bins = self.cfg.bins.max(1);
        let width = (self.cfg.high - self.cfg.low).max(f32::EPSILON);
        obs.iter()
            .map(|x| {
                let f = ((x - self.cfg.low) / width * bins as f32).floor();
                (f.max(0.0) as usize).min(bins - 1) as u16
            })
            .collect()
    }

    /// Joint index → one option per branch (first branch varies slowest).
    pub fn split(&self, mut joint: usize) -> Vec<usize> {
        let mut out = vec![0; self.branch_sizes.len()];
        for (k, size) in self.branch_sizes.iter().enumerate().rev() {
            out[k] = joint % size;
            joint /= size;
        }
        out
    }

    /// Whether a joint action is allowed by a flattened per-branch mask.
    fn allowed(&self, joint: usize, mask: &[bool]) -> bool {
        let offs = branch_offsets(&self.branch_sizes);
        self.split(joint).iter().enumerate().all(|(k, o)| mask.get(offs[k] + o).copied().unwrap_or(false))
    }

    /// Q-values of a state (initial values when unvisited).
    pub fn values(&self, obs: &[f32]) -> Vec<f64> {
        self.q.get(&self.state(obs)).cloned().unwrap_or_else(|| vec![self.cfg.initial_q; self.n_joint])
    }

    /// The greedy allowed joint action and its value; `None` when nothing is allowed.
    pub fn greedy(&self, obs: &[f32], mask: &[bool]) -> Option<(usize, f64)> {
        let q = self.values(obs);
        (0..self.n_joint).filter(|&a| self.allowed(a, mask)).map(|a| (a, q[a])).fold(None, |best, (a, v)| match best {
            Some((_, bv)) if bv >= v => best,
            _ => Some((a, v)),
        })
    }

    /// ε-greedy over the allowed joint actions.
    pub fn act(&self, obs: &[f32], mask: &[bool], epsilon: f64, rng: &mut ChaCha8Rng) -> Option<usize> {
        if rng.random::<f64>() < epsilon {
            let allowed: Vec<usize> = (0..self.n_joint).filter(|&a| self.allowed(a, mask)).collect();
            if allowed.is_empty() {
                return None;
            }
            return Some(allowed[rng.random_range(0..allowed.len())]);
        }
        self.greedy(obs, mask).map(|(a, _)| a)
    }

    /// The classic update for one step.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        obs: &[f32],
        joint: usize,
        reward: f64,
        next_obs: &[f32],
        next_mask: &[bool],
        terminated: bool,
    ) {
        let bootstrap = if terminated { 0.0 } else { self.greedy(next_obs, next_mask).map(|(_, v)| v).unwrap_or(0.0) };
        let target = reward + self.cfg.gamma * bootstrap;
        let (alpha, init, n) = (self.cfg.alpha, self.cfg.initial_q, self.n_joint);
        let row = self.q.entry(self.state(obs)).or_insert_with(|| vec![init; n]);
        row[joint] += alpha * (target - row[joint]);
    }
}

/// Trains tabular Q-learning on `env`; returns the table and the return of every episode.
pub fn train_tabular(env: &mut dyn Env, cfg: &TabularConfig) -> Result<(QTable, Vec<f64>), RlError> {
    cfg.epsilon.validate()?;
    let mut table = QTable::new(cfg.clone(), env.branch_sizes());
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut returns = Vec::with_capacity(cfg.episodes);
    let mut global_step = 0u64;
    for episode in 0..cfg.episodes {
        let (mut obs, mut mask) = env.reset(cfg.seed.wrapping_add(episode as u64))?;
        let mut ret = 0.0;
        loop {
            let eps = cfg.epsilon.value(global_step);
            let joint = table
                .act(&obs, &mask, eps, &mut rng)
                .ok_or_else(|| RlError::Config("every action is masked".into()))?;
            let step = env.step(&table.split(joint))?;
            table.update(&obs, joint, step.reward, &step.obs, &step.mask, step.terminated);
            ret += step.reward;
            global_step += 1;
            obs = step.obs;
            mask = step.mask;
            if step.terminated || step.truncated {
                break;
            }
        }
        returns.push(ret);
    }
    Ok((table, returns))
}
