//! Small problems with known optimal policies, for tests that can fail for the right reason.
//!
//! - [`Chain`]: states 0..n−1 on a line, actions left/right. Going left in state 0 pays a
//!   small reward (a tempting local optimum); reaching state n−1 pays 1 and ends the
//!   episode. The optimal policy is "always right" whenever γ^{n−2} > small/(1−γ)·…,
//!   which holds for the defaults. Observation: the state one-hot. Time limit: truncation.
//! - [`MaskedBandit`]: one branch of arms; arm rewards are fixed and the best arm is
//!   *masked* in context 0 (allowed in context 1); the context is drawn at random per
//!   episode and observed. The learner must never pick a masked arm, and must learn the
//!   best allowed one. With `two_step`, a first step (a single "go" option, reward 0)
//!   leads to the bandit, so the start state's value, γ·0.8 in context 0 and γ·1.0 in
//!   context 1, tests that bootstrapping takes the max over *allowed* arms only.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::env::{BranchSpec, Env, EnvStep, StepInfo};
use super::RlError;

/// The chain problem.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Number of states (≥ 2).
    pub n: usize,
    /// Reward for going left in state 0.
    pub small_reward: f64,
    /// Steps before truncation.
    pub time_limit: usize,
    state: usize,
    t: usize,
}

impl Chain {
    /// A chain of `n` states with a 0.01 reward at the left end and a time limit of `time_limit`.
    pub fn new(n: usize, time_limit: usize) -> Self {
        Chain { n: n.max(2), small_reward: 0.01, time_limit, state: 0, t: 0 }
    }
    fn obs(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.n];
        v[self.state] = 1.0;
        v
    }
}

impl Env for Chain {
    fn feature_names(&self) -> Vec<String> {
        (0..self.n).map(|i| format!("state_{i}")).collect()
    }
    fn action_branches(&self) -> Vec<BranchSpec> {
        vec![BranchSpec { name: "move".into(), options: vec!["left".into(), "right".into()] }]
    }
    fn reset(&mut self, _seed: u64) -> Result<(Vec<f32>, Vec<bool>), RlError> {
        self.state = 0;
        self.t = 0;
        Ok((self.obs(), vec![true, true]))
    }
    fn step(&mut self, action: &[usize]) -> Result<EnvStep, RlError> {
        let a = *action.first().ok_or_else(|| RlError::Config("chain: empty action".into()))?;
        self.t += 1;
        let mut reward = 0.0;
        if a == 0 {
            if self.state == 0 {
                reward = self.small_reward;
            } else {
                self.state -= 1;
            }
        } else {
            self.state += 1;
        }
        let terminated = self.state == self.n - 1;
        if terminated {
            reward = 1.0;
        }
        Ok(EnvStep {
            obs: self.obs(),
            mask: vec![true, true],
            reward,
            terminated,
            truncated: !terminated && self.t >= self.time_limit,
            info: StepInfo::default(),
        })
    }
}

/// The contextual bandit with a masked best arm.
#[derive(Clone, Debug)]
pub struct MaskedBandit {
    /// Reward of each arm.
    pub arm_rewards: Vec<f64>,
    /// The arm that is masked in context 0 (the best one).
    pub masked_arm: usize,
    /// Start with a one-option step before the bandit.
    pub two_step: bool,
    context: usize,
    at_start: bool,
    rng: ChaCha8Rng,
}

impl MaskedBandit {
    /// Arms paying 0.2, 0.5, 1.0 and 0.8; arm 2 (the best) is masked in context 0.
    pub fn new(two_step: bool) -> Self {
        MaskedBandit {
            arm_rewards: vec![0.2, 0.5, 1.0, 0.8],
            masked_arm: 2,
            two_step,
            context: 0,
            at_start: false,
            rng: ChaCha8Rng::seed_from_u64(0),
        }
    }
    /// The current context (0: best arm masked, 1: all arms allowed).
    pub fn context(&self) -> usize {
        self.context
    }
    /// The mask of context `c`, flattened as the env reports it.
    pub fn mask_of(&self, c: usize, at_start: bool) -> Vec<bool> {
        if self.two_step && at_start {
            // The start step has only "go" (option 0).
            return (0..self.arm_rewards.len()).map(|i| i == 0).collect();
        }
        (0..self.arm_rewards.len()).map(|i| !(c == 0 && i == self.masked_arm)).collect()
    }
    /// The observation of context `c`.
    pub fn obs_of(&self, c: usize, at_start: bool) -> Vec<f32> {
        vec![c as f32, if at_start { 1.0 } else { 0.0 }]
    }
}

impl Env for MaskedBandit {
    fn feature_names(&self) -> Vec<String> {
        vec!["context".into(), "at_start".into()]
    }
    fn action_branches(&self) -> Vec<BranchSpec> {
        vec![BranchSpec {
            name: "arm".into(),
            options: (0..self.arm_rewards.len()).map(|i| format!("arm_{i}")).collect(),
        }]
    }
    fn reset(&mut self, seed: u64) -> Result<(Vec<f32>, Vec<bool>), RlError> {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.context = self.rng.random_range(0..2);
        self.at_start = self.two_step;
        Ok((self.obs_of(self.context, self.at_start), self.mask_of(self.context, self.at_start)))
    }
    fn step(&mut self, action: &[usize]) -> Result<EnvStep, RlError> {
        let a = *action.first().ok_or_else(|| RlError::Config("bandit: empty action".into()))?;
        if !self.mask_of(self.context, self.at_start).get(a).copied().unwrap_or(false) {
            return Err(RlError::Config(format!("bandit: arm {a} is masked in context {}", self.context)));
        }
        if self.at_start {
            self.at_start = false;
            return Ok(EnvStep {
                obs: self.obs_of(self.context, false),
                mask: self.mask_of(self.context, false),
                reward: 0.0,
                terminated: false,
                truncated: false,
                info: StepInfo::default(),
            });
        }
        Ok(EnvStep {
            obs: self.obs_of(self.context, false),
            mask: self.mask_of(self.context, false),
            reward: self.arm_rewards[a],
            terminated: true,
            truncated: false,
            info: StepInfo::default(),
        })
    }
}
