//! Uniform experience replay with seeded sampling, and an n-step return accumulator.
//!
//! The buffer is a ring of fixed capacity holding flat arrays (one row per transition),
//! so a batch is a handful of contiguous copies that become tensors directly. Sampling
//! draws indices uniformly with replacement from a caller-supplied seeded RNG, so the
//! same seed gives the same batches.
//!
//! A stored [`Transition`] is already an n-step transition: `reward` is the discounted
//! sum r₀ + γr₁ + … + γ^{k−1}r_{k−1}, `next_obs` is the observation k steps later, and
//! `discount` is γ^k (0 when the episode *terminated* within the k steps, so nothing is
//! bootstrapped). A *truncated* episode (time limit: the end of a trace window) keeps
//! γ^k: the world did not end, the window did, so the value after it is still bootstrapped.
//! [`NStep`] builds these from one-step experience; with n = 1 it passes them through.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One (possibly n-step) transition.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Observation features (raw, before normalisation).
    pub obs: Vec<f32>,
    /// Chosen option per action branch.
    pub action: Vec<usize>,
    /// Discounted sum of the rewards over the k steps.
    pub reward: f32,
    /// Observation k steps later.
    pub next_obs: Vec<f32>,
    /// Allowed actions in `next_obs`, flattened over branches.
    pub next_mask: Vec<bool>,
    /// γ^k, or 0 when the episode terminated within the k steps.
    pub discount: f32,
}

/// A sampled batch, as flat row-major arrays ready to become tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Rows.
    pub size: usize,
    /// `size × obs_dim`.
    pub obs: Vec<f32>,
    /// `size × branches`.
    pub actions: Vec<i64>,
    /// `size`.
    pub rewards: Vec<f32>,
    /// `size × obs_dim`.
    pub next_obs: Vec<f32>,
    /// `size × total options`, 1.0 for allowed.
    pub next_mask: Vec<bool>,
    /// `size`.
    pub discounts: Vec<f32>,
}

/// A fixed-capacity ring buffer of transitions.
#[derive(Clone, Debug)]
pub struct ReplayBuffer {
    capacity: usize,
    obs_dim: usize,
    n_branches: usize,
    mask_dim: usize,
    len: usize,
    next: usize,
    obs: Vec<f32>,
    actions: Vec<i64>,
    rewards: Vec<f32>,
    next_obs: Vec<f32>,
    next_mask: Vec<bool>,
    discounts: Vec<f32>,
}

impl ReplayBuffer {
    /// An empty buffer for observations of `obs_dim` features and actions over
    /// `n_branches` branches with `mask_dim` options in total.
    pub fn new(capacity: usize, obs_dim: usize, n_branches: usize, mask_dim: usize) -> Self {
        let capacity = capacity.max(1);
        ReplayBuffer {
            capacity,
            obs_dim,
            n_branches,
            mask_dim,
            len: 0,
            next: 0,
            obs: vec![0.0; capacity * obs_dim],
            actions: vec![0; capacity * n_branches],
            rewards: vec![0.0; capacity],
            next_obs: vec![0.0; capacity * obs_dim],
            next_mask: vec![false; capacity * mask_dim],
            discounts: vec![0.0; capacity],
        }
    }

    /// Transitions stored (at most the capacity).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores a transition, overwriting the oldest when full.
    pub fn push(&mut self, t: &Transition) {
        debug_assert_eq!(t.obs.len(), self.obs_dim);
        debug_assert_eq!(t.next_obs.len(), self.obs_dim);
        debug_assert_eq!(t.action.len(), self.n_branches);
        debug_assert_eq!(t.next_mask.len(), self.mask_dim);
        let i = self.next;
        let (d, b, m) = (self.obs_dim, self.n_branches, self.mask_dim);
        self.obs[i * d..(i + 1) * d].copy_from_slice(&t.obs);
        self.next_obs[i * d..(i + 1) * d].copy_from_slice(&t.next_obs);
        for (k, a) in t.action.iter().enumerate() {
            self.actions[i * b + k] = *a as i64;
        }
        self.next_mask[i * m..(i + 1) * m].copy_from_slice(&t.next_mask);
        self.rewards[i] = t.reward;
        self.discounts[i] = t.discount;
        self.next = (self.next + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// Samples `size` transitions uniformly with replacement.
    ///
    /// # Panics
    /// In debug builds, when the buffer is empty (a caller bug: learning starts only
    /// after `learning_starts` steps).
    pub fn sample(&self, size: usize, rng: &mut ChaCha8Rng) -> Batch {
        debug_assert!(self.len > 0, "sampling from an empty replay buffer");
        let (d, b, m) = (self.obs_dim, self.n_branches, self.mask_dim);
        let mut batch = Batch {
            size,
            obs: Vec::with_capacity(size * d),
            actions: Vec::with_capacity(size * b),
            rewards: Vec::with_capacity(size),
            next_obs: Vec::with_capacity(size * d),
            next_mask: Vec::with_capacity(size * m),
            discounts: Vec::with_capacity(size),
        };
        for _ in 0..size {
            let i = rng.random_range(0..self.len.max(1));
            batch.obs.extend_from_slice(&self.obs[i * d..(i + 1) * d]);
            batch.next_obs.extend_from_slice(&self.next_obs[i * d..(i + 1) * d]);
            batch.actions.extend_from_slice(&self.actions[i * b..(i + 1) * b]);
            batch.next_mask.extend_from_slice(&self.next_mask[i * m..(i + 1) * m]);
            batch.rewards.push(self.rewards[i]);
            batch.discounts.push(self.discounts[i]);
        }
        batch
    }
}

/// One-step experience as the environment produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Observation the action was chosen in.
    pub obs: Vec<f32>,
    /// Chosen option per branch.
    pub action: Vec<usize>,
    /// Reward of the step.
    pub reward: f32,
    /// Observation after the step.
    pub next_obs: Vec<f32>,
    /// Allowed actions in `next_obs`.
    pub next_mask: Vec<bool>,
    /// The episode ended for good (no bootstrapping).
    pub terminated: bool,
    /// The episode was cut by a time limit (bootstrapping continues).
    pub truncated: bool,
}

/// Turns one-step experience into n-step transitions.
#[derive(Clone, Debug)]
pub struct NStep {
    n: usize,
    gamma: f32,
    pending: VecDeque<Step>,
}

impl NStep {
    /// An accumulator for `n`-step returns with discount `gamma` (n = 0 is treated as 1).
    pub fn new(n: usize, gamma: f32) -> Self {
        NStep { n: n.max(1), gamma, pending: VecDeque::new() }
    }

    /// Adds one step; returns the transitions that became complete. At the end of an
    /// episode (terminated or truncated) every pending step is flushed.
    pub fn push(&mut self, step: Step) -> Vec<Transition> {
        let end = step.terminated || step.truncated;
        self.pending.push_back(step);
        let mut out = Vec::new();
        if end {
            while !self.pending.is_empty() {
                out.push(self.emit());
                self.pending.pop_front();
            }
        } else if self.pending.len() >= self.n {
            out.push(self.emit());
            self.pending.pop_front();
        }
        out
    }

    /// The transition starting at the front of the queue, over everything pending.
    fn emit(&self) -> Transition {
        let first = &self.pending[0];
        let mut reward = 0.0f32;
        let mut discount = 1.0f32;
        let mut terminated = false;
        let mut last = first;
        for s in self.pending.iter().take(self.n) {
            reward += discount * s.reward;
            discount *= self.gamma;
            last = s;
            if s.terminated {
                terminated = true;
                break;
            }
        }
        Transition {
            obs: first.obs.clone(),
            action: first.action.clone(),
            reward,
            next_obs: last.next_obs.clone(),
            next_mask: last.next_mask.clone(),
            discount: if terminated { 0.0 } else { discount },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn step(i: usize, r: f32, terminated: bool, truncated: bool) -> Step {
        Step {
            obs: vec![i as f32],
            action: vec![0],
            reward: r,
            next_obs: vec![(i + 1) as f32],
            next_mask: vec![true],
            terminated,
            truncated,
        }
    }

    #[test]
    fn nstep_matches_hand_computation() {
        let mut acc = NStep::new(3, 0.5);
        assert!(acc.push(step(0, 1.0, false, false)).is_empty());
        assert!(acc.push(step(1, 2.0, false, false)).is_empty());
        let out = acc.push(step(2, 4.0, false, false));
        assert_eq!(out.len(), 1);
        // 1 + 0.5·2 + 0.25·4 = 3, bootstrapped with 0.5³ from obs 3.
        assert_eq!(out[0].reward, 3.0);
        assert_eq!(out[0].discount, 0.125);
        assert_eq!(out[0].next_obs, vec![3.0]);
        // Termination flushes: from 1: 2 + 0.5·4 + 0.25·8 = 6, no bootstrap; from 2: 4 + 4; from 3: 8.
        let out = acc.push(step(3, 8.0, true, false));
        let got: Vec<(f32, f32)> = out.iter().map(|t| (t.reward, t.discount)).collect();
        assert_eq!(got, vec![(6.0, 0.0), (8.0, 0.0), (8.0, 0.0)]);
    }

    #[test]
    fn truncation_keeps_bootstrapping() {
        let mut acc = NStep::new(2, 0.5);
        acc.push(step(0, 1.0, false, false));
        let out = acc.push(step(1, 1.0, false, true));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].reward, out[0].discount), (1.5, 0.25));
        assert_eq!((out[1].reward, out[1].discount), (1.0, 0.5));
        assert_eq!(out[1].next_obs, vec![2.0]);
    }

    #[test]
    fn one_step_passes_through() {
        let mut acc = NStep::new(1, 0.9);
        let out = acc.push(step(0, 2.0, false, false));
        assert_eq!((out[0].reward, out[0].discount), (2.0, 0.9));
    }

    #[test]
    fn ring_overwrites_oldest_and_sampling_is_seeded() {
        let mut buf = ReplayBuffer::new(3, 1, 1, 1);
        let mut acc = NStep::new(1, 1.0);
        for i in 0..5 {
            for t in acc.push(step(i, i as f32, false, false)) {
                buf.push(&t);
            }
        }
        assert_eq!(buf.len(), 3);
        let a = buf.sample(64, &mut ChaCha8Rng::seed_from_u64(7));
        let b = buf.sample(64, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a, b);
        // Only the last three rewards (2, 3, 4) remain, and each is drawn.
        for r in &a.rewards {
            assert!([2.0, 3.0, 4.0].contains(r));
        }
        for r in [2.0, 3.0, 4.0] {
            assert!(a.rewards.contains(&r));
        }
    }
}
