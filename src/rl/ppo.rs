//! PPO (clipped surrogate, Schulman et al. 2017) on libtorch, readable top to bottom:
//! config → agent → rollout → advantages → update, in the manner of CleanRL's `ppo.py`.
//!
//! **Networks.** The actor is the DQN's network shape without the dueling value branch
//! ([`QNetwork`]: a ReLU torso and one head per action branch), so its outputs are one
//! logit per option of each branch: the same factored action heads as the DQN. The
//! critic is a separate MLP of the same widths (under `critic/` in the same weights),
//! ending in one value. The actor's heads start at 1 % of their initial scale, so the
//! first policy is close to uniform over the allowed options.
//!
//! **Masks.** A masked option's logit gets −10⁹ before the softmax of its branch, so it
//! is never sampled and carries no probability in the ratio or the entropy. The policy is
//! a product of one categorical per branch: log π(a|s) = Σ_d log π_d(a_d|s), and the
//! entropy is the sum of the branches' entropies.
//!
//! **Rollouts.** `num_envs` environments (each its own twin) are stepped together for
//! `rollout_steps` steps; the environments step on the rayon pool (all cores), the
//! networks run once per step on the batch of observations. An episode cut by a time
//! limit (truncated, not terminated) is bootstrapped: its last reward gets γ·V(s_last).
//!
//! **Advantages.** GAE(λ) over the rollout; returns = advantages + values. With
//! `normalise_rewards`, rewards are divided by the running standard deviation of the
//! discounted return (as Gym's `NormalizeReward`), so the twin's reward scale (requests
//! and dollars) does not set the step size. Advantages are normalised per minibatch.
//!
//! **Update.** `epochs` passes over the rollout in `minibatches` shuffled minibatches:
//! loss = −min(r·A, clip(r, 1 ± ε)·A) + c_v·½(V − R)² (clipped around the old value
//! when `clip_value`) − c_e·H, gradients clipped by global norm, Adam with the learning
//! rate annealed linearly to 0 over the run when `anneal_lr`.
//!
//! **Checkpoints.** [`PpoAgent::greedy_agent`] is the actor as a [`DqnAgent`] whose
//! "Q-values" are the logits: the most probable allowed option per branch is the masked
//! argmax the operator's learned policy already takes, so a PPO checkpoint has the DQN's
//! format (the sidecar says `algorithm: ppo`) and loads as `kind: dqn`. The critic is not
//! part of the checkpoint, so PPO training starts afresh (no `resume`).
//!
//! **Determinism.** Weights are initialised after `tch::manual_seed(seed)`; sampling and
//! shuffling use a ChaCha RNG seeded from `seed`; environments are reset with seeds drawn
//! in environment order and libtorch runs on one thread: the same seed gives the same run.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::dqn::{prepare_torch, seeded_init, DeviceChoice, DqnAgent, DqnConfig, EpisodeRecord, QNetwork};
use super::encoding::Normaliser;
use super::env::{branch_offsets, Env, EnvStep};
use super::RlError;

/// Logit added to a masked option.
const MASKED: f32 = -1e9;

/// Every hyperparameter of PPO (defaults: CleanRL's for classic control, with four
/// environments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Widths of the actor's and the critic's hidden layers.
    pub hidden: Vec<i64>,
    /// Discount factor γ per step.
    pub gamma: f64,
    /// λ of GAE.
    pub gae_lambda: f64,
    /// Adam learning rate (at the start, when annealed).
    pub learning_rate: f64,
    /// Anneal the learning rate linearly to 0 over the run.
    pub anneal_lr: bool,
    /// Environments stepped together (each its own twin).
    pub num_envs: usize,
    /// Steps per environment per rollout.
    pub rollout_steps: usize,
    /// Passes over each rollout.
    pub epochs: usize,
    /// Minibatches per pass.
    pub minibatches: usize,
    /// Clip range ε of the probability ratio (and of the value, with `clip_value`).
    pub clip: f64,
    /// Clip the value loss around the rollout's values.
    pub clip_value: bool,
    /// Weight of the value loss.
    pub value_coef: f64,
    /// Weight of the entropy bonus.
    pub entropy_coef: f64,
    /// Clip the global gradient norm to this.
    pub max_grad_norm: f64,
    /// Normalise advantages per minibatch.
    pub normalise_advantages: bool,
    /// Divide rewards by the running standard deviation of the discounted return.
    pub normalise_rewards: bool,
    /// Normalise observations with running statistics.
    pub normalise_obs: bool,
    /// Stop an update's epochs early when the approximate KL divergence exceeds this.
    pub target_kl: Option<f64>,
    /// Seed of the initial weights, sampling, shuffling and episode offsets.
    pub seed: u64,
    /// Where the networks live.
    pub device: DeviceChoice,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            hidden: vec![64, 64],
            gamma: 0.99,
            gae_lambda: 0.95,
            learning_rate: 2.5e-4,
            anneal_lr: true,
            num_envs: 4,
            rollout_steps: 128,
            epochs: 4,
            minibatches: 4,
            clip: 0.2,
            clip_value: true,
            value_coef: 0.5,
            entropy_coef: 0.01,
            max_grad_norm: 0.5,
            normalise_advantages: true,
            normalise_rewards: true,
            normalise_obs: true,
            target_kl: None,
            seed: 0,
            device: DeviceChoice::Auto,
        }
    }
}

impl PpoConfig {
    /// Checks value ranges; errors name the field.
    pub fn validate(&self) -> Result<(), RlError> {
        let bad = |m: String| Err(RlError::Config(m));
        if self.hidden.is_empty() || self.hidden.iter().any(|h| *h <= 0) {
            return bad(format!("ppo.hidden must be non-empty positive widths, got {:?}", self.hidden));
        }
        for (name, v) in [("gamma", self.gamma), ("gaeLambda", self.gae_lambda)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("ppo.{name} must lie in [0, 1], got {v}"));
            }
        }
        if self.num_envs == 0 || self.rollout_steps == 0 || self.epochs == 0 || self.minibatches == 0 {
            return bad("ppo.numEnvs, rolloutSteps, epochs and minibatches must be ≥ 1".into());
        }
        if self.minibatches > self.num_envs * self.rollout_steps {
            return bad(format!(
                "ppo.minibatches ({}) exceeds the rollout's {} steps",
                self.minibatches,
                self.num_envs * self.rollout_steps
            ));
        }
        for (name, v) in
            [("learningRate", self.learning_rate), ("clip", self.clip), ("maxGradNorm", self.max_grad_norm)]
        {
            if !(v > 0.0 && v.is_finite()) {
                return bad(format!("ppo.{name} must be > 0, got {v}"));
            }
        }
        for (name, v) in [("valueCoef", self.value_coef), ("entropyCoef", self.entropy_coef)] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("ppo.{name} must be ≥ 0, got {v}"));
            }
        }
        if self.target_kl.is_some_and(|k| !(k > 0.0)) {
            return bad(format!("ppo.targetKl must be > 0, got {:?}", self.target_kl));
        }
        Ok(())
    }

    /// Environment steps in one rollout (all environments).
    pub fn batch_size(&self) -> usize {
        self.num_envs * self.rollout_steps
    }
}

/// What one PPO update (all epochs over one rollout) measured, means over minibatches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PpoStats {
    /// Clipped surrogate loss.
    pub policy_loss: f64,
    /// Value loss.
    pub value_loss: f64,
    /// Entropy of the policy (sum over branches).
    pub entropy: f64,
    /// Approximate KL divergence between the rollout's and the updated policy.
    pub approx_kl: f64,
    /// Share of samples whose ratio was clipped.
    pub clip_fraction: f64,
    /// Mean value of the rollout's states.
    pub mean_value: f64,
}

/// The PPO agent: actor and critic, optimiser, normaliser and counters.
pub struct PpoAgent {
    /// Hyperparameters.
    pub cfg: PpoConfig,
    /// Device of the networks.
    pub device: Device,
    /// Actor (at the root, as a DQN's network) and critic (under `critic/`).
    pub vs: nn::VarStore,
    actor: QNetwork,
    critic: nn::Sequential,
    opt: nn::Optimizer,
    obs_dim: usize,
    sizes: Vec<usize>,
    offsets: Vec<usize>,
    /// Observation statistics.
    pub normaliser: Normaliser,
    /// Environment steps taken over the agent's life.
    pub env_steps: u64,
    /// Gradient steps (minibatches) done over the agent's life.
    pub updates: u64,
}

impl std::fmt::Debug for PpoAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PpoAgent").field("obs_dim", &self.obs_dim).field("sizes", &self.sizes).finish()
    }
}

impl PpoAgent {
    /// A fresh agent for `obs_dim` features and branches of `sizes` options.
    pub fn new(obs_dim: usize, sizes: &[usize], cfg: PpoConfig) -> Result<Self, RlError> {
        cfg.validate()?;
        let device = prepare_torch(sizes, cfg.device)?;
        let (vs, actor, critic) = seeded_init(cfg.seed, || {
            let vs = nn::VarStore::new(device);
            let actor = QNetwork::new(&vs.root(), obs_dim, &cfg.hidden, sizes, false);
            let p = vs.root() / "critic";
            let mut critic = nn::seq();
            let mut width = obs_dim as i64;
            for (i, h) in cfg.hidden.iter().enumerate() {
                critic =
                    critic.add(nn::linear(&p / format!("l{i}"), width, *h, Default::default())).add_fn(|x| x.relu());
                width = *h;
            }
            critic = critic.add(nn::linear(&p / "out", width, 1, Default::default()));
            (vs, actor, critic)
        });
        // A near-uniform first policy: the heads' weights and biases at 1 % of their scale.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.starts_with("head") {
                    let _ = t.f_mul_scalar_(0.01);
                }
            }
        });
        let opt = nn::Adam::default().build(&vs, cfg.learning_rate)?;
        Ok(PpoAgent {
            device,
            vs,
            actor,
            critic,
            opt,
            obs_dim,
            offsets: branch_offsets(sizes),
            sizes: sizes.to_vec(),
            normaliser: Normaliser::new(obs_dim),
            env_steps: 0,
            updates: 0,
            cfg,
        })
    }

    /// Number of observation features.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// Options per branch.
    pub fn branch_sizes(&self) -> &[usize] {
        &self.sizes
    }

    fn normalised(&self, raw: &[f32]) -> Vec<f32> {
        let mut x = raw.to_vec();
        if self.cfg.normalise_obs {
            self.normaliser.apply(&mut x);
        }
        x
    }

    fn rows(&self, flat: &[f32]) -> Tensor {
        Tensor::from_slice(flat).view([-1, self.obs_dim as i64]).to_device(self.device)
    }

    /// Logits and values of a batch of normalised observations, on the host.
    fn evaluate_host(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let t = self.rows(x);
        let (l, v) = tch::no_grad(|| (self.actor.forward(&t), self.critic.forward(&t)));
        let l = Vec::<f32>::try_from(&l.to_device(Device::Cpu).view([-1])).unwrap_or_default();
        let v = Vec::<f32>::try_from(&v.to_device(Device::Cpu).view([-1])).unwrap_or_default();
        (l, v)
    }

    /// Samples one option per branch from the masked logits of one observation; returns
    /// the options and Σ log π.
    fn sample(&self, logits: &[f32], mask: &[bool], rng: &mut ChaCha8Rng) -> (Vec<usize>, f32) {
        let mut action = Vec::with_capacity(self.sizes.len());
        let mut logp = 0.0f64;
        for (&n, &off) in self.sizes.iter().zip(&self.offsets) {
            let allowed = |a: usize| mask.get(off + a).copied().unwrap_or(false);
            let max = (0..n).filter(|&a| allowed(a)).map(|a| logits[off + a] as f64).fold(f64::NEG_INFINITY, f64::max);
            if !max.is_finite() {
                // Nothing allowed (a malformed mask): option 0, as the greedy rule does.
                action.push(0);
                continue;
            }
            let w: Vec<f64> =
                (0..n).map(|a| if allowed(a) { (logits[off + a] as f64 - max).exp() } else { 0.0 }).collect();
            let total: f64 = w.iter().sum();
            let u = rng.random::<f64>() * total;
            let mut acc = 0.0;
            let mut pick = (0..n).rev().find(|&a| w[a] > 0.0).unwrap_or(0);
            for (a, wa) in w.iter().enumerate() {
                acc += wa;
                if u < acc && *wa > 0.0 {
                    pick = a;
                    break;
                }
            }
            logp += (w[pick] / total).ln();
            action.push(pick);
        }
        (action, logp as f32)
    }

    /// The actor as a [`DqnAgent`] whose Q-values are its logits (see the module docs):
    /// what checkpoints, validation and the operator use.
    pub fn greedy_agent(&self) -> Result<DqnAgent, RlError> {
        let cfg = DqnConfig {
            hidden: self.cfg.hidden.clone(),
            dueling: false,
            normalise_obs: self.cfg.normalise_obs,
            seed: self.cfg.seed,
            device: self.cfg.device,
            ..Default::default()
        };
        let mut a = DqnAgent::new(self.obs_dim, &self.sizes, cfg)?;
        a.vs.copy(&self.vs)?;
        a.sync_target()?;
        a.normaliser = self.normaliser.clone();
        a.normaliser.frozen = true;
        a.env_steps = self.env_steps;
        a.updates = self.updates;
        Ok(a)
    }

    /// The most probable allowed option per branch.
    pub fn greedy(&self, raw_obs: &[f32], mask: &[bool]) -> Vec<usize> {
        let (l, _) = self.evaluate_host(&self.normalised(raw_obs));
        super::dqn::masked_argmax(&l, mask, &self.sizes)
    }

    /// Σ log π(a|s) and the entropy per row, for a batch on the device.
    fn log_prob_entropy(&self, x: &Tensor, penalty: &Tensor, actions: &Tensor) -> (Tensor, Tensor) {
        let logits = self.actor.forward(x) + penalty;
        let mut logp: Option<Tensor> = None;
        let mut ent: Option<Tensor> = None;
        for (k, (&n, &off)) in self.sizes.iter().zip(&self.offsets).enumerate() {
            let lp = logits.narrow(1, off as i64, n as i64).log_softmax(1, Kind::Float);
            let chosen = lp.gather(1, &actions.narrow(1, k as i64, 1), false).squeeze_dim(1);
            // Masked options have probability 0: their terms vanish without 0·(−∞).
            let h = -(lp.exp() * lp.clamp_min(-1e4)).sum_dim_intlist(1, false, Kind::Float);
            logp = Some(match logp {
                Some(s) => s + chosen,
                None => chosen,
            });
            ent = Some(match ent {
                Some(s) => s + h,
                None => h,
            });
        }
        (logp.expect("at least one branch"), ent.expect("at least one branch"))
    }
}

/// The rollout of one update, flattened step-major (`[t][env]`).
struct Rollout {
    obs: Vec<f32>,
    penalty: Vec<f32>,
    actions: Vec<i64>,
    logp: Vec<f32>,
    values: Vec<f32>,
    rewards: Vec<f32>,
    dones: Vec<f32>,
}

/// Running variance of each environment's discounted return, for reward scaling.
struct ReturnScale {
    gamma: f64,
    ret: Vec<f64>,
    count: f64,
    mean: f64,
    m2: f64,
}

impl ReturnScale {
    fn scale(&mut self, env: usize, r: f64, done: bool) -> f64 {
        self.ret[env] = self.ret[env] * self.gamma + r;
        self.count += 1.0;
        let d = self.ret[env] - self.mean;
        self.mean += d / self.count;
        self.m2 += d * (self.ret[env] - self.mean);
        if done {
            self.ret[env] = 0.0;
        }
        let var = if self.count > 1.0 { self.m2 / (self.count - 1.0) } else { 1.0 };
        r / (var + 1e-8).sqrt()
    }
}

/// Per-environment episode accumulators.
#[derive(Default, Clone)]
struct Running {
    record: EpisodeRecord,
    finished: f64,
    met: f64,
}

/// The state of a run between rollouts: the random stream (sampling, then shuffling),
/// the episode seeds, each environment's current observation and episode, reward scaling
/// and the finished episodes.
struct Collector {
    rng: ChaCha8Rng,
    episode_seed: u64,
    obs: Vec<Vec<f32>>,
    masks: Vec<Vec<bool>>,
    running: Vec<Running>,
    scale: ReturnScale,
    records: Vec<EpisodeRecord>,
    episode: u64,
}

impl Collector {
    /// Resets every environment, in order, and records the first observations.
    fn start<E: Env>(agent: &mut PpoAgent, envs: &mut [E]) -> Result<Self, RlError> {
        let cfg = &agent.cfg;
        let run_seed = cfg.seed ^ agent.env_steps.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = envs.len();
        let mut c = Collector {
            rng: ChaCha8Rng::seed_from_u64(run_seed),
            episode_seed: run_seed,
            obs: Vec::with_capacity(n),
            masks: Vec::with_capacity(n),
            running: vec![Running::default(); n],
            scale: ReturnScale { gamma: cfg.gamma, ret: vec![0.0; n], count: 0.0, mean: 0.0, m2: 0.0 },
            records: Vec::new(),
            episode: 0,
        };
        for e in envs.iter_mut() {
            let (o, mk) = e.reset(c.next_seed())?;
            agent.normaliser.update(&o);
            c.obs.push(o);
            c.masks.push(mk);
        }
        Ok(c)
    }

    fn next_seed(&mut self) -> u64 {
        self.episode_seed = self.episode_seed.wrapping_add(1);
        self.episode_seed
    }

    /// One rollout of `rollout_steps` steps of every environment; `last` is the previous
    /// update's statistics (logged with the episodes that end).
    fn rollout<E: Env + Send>(
        &mut self,
        agent: &mut PpoAgent,
        envs: &mut [E],
        last: &PpoStats,
        on_episode: &mut dyn FnMut(&EpisodeRecord),
    ) -> Result<Rollout, RlError> {
        let cfg = agent.cfg.clone();
        let (n_envs, batch) = (envs.len(), cfg.batch_size());
        let m: usize = agent.sizes.iter().sum();
        let mut ro = Rollout {
            obs: Vec::with_capacity(batch * agent.obs_dim),
            penalty: Vec::with_capacity(batch * m),
            actions: Vec::with_capacity(batch * agent.sizes.len()),
            logp: Vec::with_capacity(batch),
            values: Vec::with_capacity(batch),
            rewards: Vec::with_capacity(batch),
            dones: Vec::with_capacity(batch),
        };
        for _ in 0..cfg.rollout_steps {
            let x: Vec<f32> = self.obs.iter().flat_map(|o| agent.normalised(o)).collect();
            let (logits, values) = agent.evaluate_host(&x);
            let mut actions = Vec::with_capacity(n_envs);
            for (e, mk) in self.masks.iter().enumerate() {
                let (a, lp) = agent.sample(&logits[e * m..(e + 1) * m], mk, &mut self.rng);
                ro.logp.push(lp);
                ro.actions.extend(a.iter().map(|&v| v as i64));
                ro.penalty.extend(mk.iter().map(|&ok| if ok { 0.0 } else { MASKED }));
                actions.push(a);
            }
            ro.obs.extend_from_slice(&x);
            ro.values.extend_from_slice(&values);
            // Every environment steps on the rayon pool; results come back in order.
            let stepped: Vec<Result<EnvStep, RlError>> =
                envs.par_iter_mut().zip(actions.par_iter()).map(|(e, a)| e.step(a)).collect();
            let stepped = stepped.into_iter().collect::<Result<Vec<_>, _>>()?;
            agent.env_steps += n_envs as u64;
            // Truncated episodes are bootstrapped with the value of their last state.
            let cut: Vec<usize> = (0..n_envs).filter(|&e| stepped[e].truncated && !stepped[e].terminated).collect();
            let boot: Vec<f32> = if cut.is_empty() {
                Vec::new()
            } else {
                let xs: Vec<f32> = cut.iter().flat_map(|&e| agent.normalised(&stepped[e].obs)).collect();
                agent.evaluate_host(&xs).1
            };
            for (e, s) in stepped.into_iter().enumerate() {
                let done = s.terminated || s.truncated;
                let mut r = if cfg.normalise_rewards { self.scale.scale(e, s.reward, done) } else { s.reward };
                if let Some(i) = cut.iter().position(|&c| c == e) {
                    r += cfg.gamma * boot[i] as f64;
                }
                ro.rewards.push(r as f32);
                ro.dones.push(if done { 1.0 } else { 0.0 });
                self.account(e, &s);
                if done {
                    self.finish_episode(e, agent, last, on_episode);
                    let (o, mk) = envs[e].reset(self.next_seed())?;
                    agent.normaliser.update(&o);
                    self.obs[e] = o;
                    self.masks[e] = mk;
                } else {
                    agent.normaliser.update(&s.obs);
                    self.obs[e] = s.obs;
                    self.masks[e] = s.mask;
                }
            }
        }
        Ok(ro)
    }

    /// Adds a step's measurements to environment `e`'s running episode.
    fn account(&mut self, e: usize, s: &EnvStep) {
        let run = &mut self.running[e];
        run.record.episodic_return += s.reward;
        run.record.length += 1;
        run.record.cost_usd += s.info.cost_usd;
        run.record.gpu_hours += s.info.gpu_seconds / 3600.0;
        run.finished += s.info.finished;
        run.met += s.info.slo_met;
    }

    /// Closes environment `e`'s episode into a record.
    fn finish_episode(
        &mut self,
        e: usize,
        agent: &PpoAgent,
        last: &PpoStats,
        on_episode: &mut dyn FnMut(&EpisodeRecord),
    ) {
        let mut rec = std::mem::take(&mut self.running[e]);
        rec.record.episode = self.episode;
        rec.record.env_steps = agent.env_steps;
        rec.record.updates = agent.updates;
        rec.record.epsilon = f64::NAN;
        rec.record.mean_loss = last.policy_loss + agent.cfg.value_coef * last.value_loss;
        rec.record.mean_q = last.mean_value;
        rec.record.slo_attainment = if rec.finished > 0.0 { rec.met / rec.finished } else { f64::NAN };
        on_episode(&rec.record);
        self.records.push(rec.record);
        self.episode += 1;
    }

    /// GAE(λ) advantages and returns of a rollout, with the value of the states after it.
    fn advantages(&self, agent: &PpoAgent, ro: &Rollout) -> (Vec<f32>, Vec<f32>) {
        let cfg = &agent.cfg;
        let (n_envs, t_steps) = (self.obs.len(), cfg.rollout_steps);
        let x: Vec<f32> = self.obs.iter().flat_map(|o| agent.normalised(o)).collect();
        let next_values = agent.evaluate_host(&x).1;
        let mut adv = vec![0f32; ro.values.len()];
        let mut last_gae = vec![0f32; n_envs];
        let (g, lam) = (cfg.gamma as f32, cfg.gae_lambda as f32);
        for t in (0..t_steps).rev() {
            for e in 0..n_envs {
                let i = t * n_envs + e;
                let nonterminal = 1.0 - ro.dones[i];
                let next_v = if t + 1 == t_steps { next_values[e] } else { ro.values[i + n_envs] };
                let delta = ro.rewards[i] + g * next_v * nonterminal - ro.values[i];
                last_gae[e] = delta + g * lam * nonterminal * last_gae[e];
                adv[i] = last_gae[e];
            }
        }
        let returns: Vec<f32> = adv.iter().zip(&ro.values).map(|(a, v)| a + v).collect();
        (adv, returns)
    }
}

/// Trains `agent` on `envs` (one per `num_envs`; each its own twin) for at least `steps`
/// environment steps (whole rollouts). Calls `on_episode` after every finished episode,
/// and `on_eval` with the agent after the first update past every `eval_every`
/// environment steps (0: never). Returns the episode records and the last update's
/// statistics.
pub fn train_ppo<E: Env + Send>(
    agent: &mut PpoAgent,
    envs: &mut [E],
    steps: u64,
    on_episode: &mut dyn FnMut(&EpisodeRecord),
    eval_every: u64,
    on_eval: &mut dyn FnMut(&PpoAgent) -> Result<(), RlError>,
) -> Result<(Vec<EpisodeRecord>, PpoStats), RlError> {
    let cfg = agent.cfg.clone();
    if envs.len() != cfg.num_envs {
        return Err(RlError::Config(format!(
            "ppo.numEnvs is {} but {} environments were given",
            cfg.num_envs,
            envs.len()
        )));
    }
    for e in envs.iter() {
        if e.obs_dim() != agent.obs_dim || e.branch_sizes() != agent.sizes {
            return Err(RlError::Config(format!(
                "agent expects {} features and branches {:?}, env has {} and {:?}",
                agent.obs_dim,
                agent.sizes,
                e.obs_dim(),
                e.branch_sizes()
            )));
        }
    }
    let num_updates = steps.div_ceil(cfg.batch_size() as u64).max(1);
    let mut c = Collector::start(agent, envs)?;
    let mut next_eval = agent.env_steps + eval_every;
    let mut last = PpoStats::default();
    for update in 0..num_updates {
        if cfg.anneal_lr {
            let frac = 1.0 - update as f64 / num_updates as f64;
            agent.opt.set_lr(frac * cfg.learning_rate);
        }
        let ro = c.rollout(agent, envs, &last, on_episode)?;
        let (adv, returns) = c.advantages(agent, &ro);
        last = update_epochs(agent, &ro, &adv, &returns, &mut c.rng);
        if eval_every > 0 && agent.env_steps >= next_eval {
            on_eval(agent)?;
            next_eval = agent.env_steps + eval_every;
        }
    }
    Ok((c.records, last))
}

/// The epochs of one update over a rollout; returns the means over minibatches.
fn update_epochs(agent: &mut PpoAgent, ro: &Rollout, adv: &[f32], returns: &[f32], rng: &mut ChaCha8Rng) -> PpoStats {
    let cfg = agent.cfg.clone();
    let dev = agent.device;
    let b = adv.len() as i64;
    let m = agent.sizes.iter().sum::<usize>() as i64;
    let nb = agent.sizes.len() as i64;
    let obs = agent.rows(&ro.obs);
    let penalty = Tensor::from_slice(&ro.penalty).view([b, m]).to_device(dev);
    let actions = Tensor::from_slice(&ro.actions).view([b, nb]).to_device(dev);
    let old_logp = Tensor::from_slice(&ro.logp).to_device(dev);
    let old_v = Tensor::from_slice(&ro.values).to_device(dev);
    let adv_t = Tensor::from_slice(adv).to_device(dev);
    let ret_t = Tensor::from_slice(returns).to_device(dev);
    let mb = (adv.len() / cfg.minibatches).max(1);
    let mut idx: Vec<i64> = (0..b).collect();
    let mut sums = PpoStats::default();
    let mut n = 0.0;
    'epochs: for _ in 0..cfg.epochs {
        idx.shuffle(rng);
        for chunk in idx.chunks(mb) {
            let ix = Tensor::from_slice(chunk).to_device(dev);
            let (logp, ent) = agent.log_prob_entropy(
                &obs.index_select(0, &ix),
                &penalty.index_select(0, &ix),
                &actions.index_select(0, &ix),
            );
            let log_ratio = &logp - old_logp.index_select(0, &ix);
            let ratio = log_ratio.exp();
            let mut a = adv_t.index_select(0, &ix);
            if cfg.normalise_advantages && chunk.len() > 1 {
                a = (&a - a.mean(Kind::Float)) / (a.std(true) + 1e-8);
            }
            let pg1 = -&a * &ratio;
            let pg2 = -&a * ratio.clamp(1.0 - cfg.clip, 1.0 + cfg.clip);
            let pg_loss = pg1.max_other(&pg2).mean(Kind::Float);
            let v = agent.critic.forward(&obs.index_select(0, &ix)).squeeze_dim(1);
            let r = ret_t.index_select(0, &ix);
            let v_loss = if cfg.clip_value {
                let ov = old_v.index_select(0, &ix);
                let clipped = &ov + (&v - &ov).clamp(-cfg.clip, cfg.clip);
                let l1 = (&v - &r).square();
                let l2 = (clipped - &r).square();
                l1.max_other(&l2).mean(Kind::Float) * 0.5
            } else {
                (&v - &r).square().mean(Kind::Float) * 0.5
            };
            let entropy = ent.mean(Kind::Float);
            let loss = &pg_loss - &entropy * cfg.entropy_coef + &v_loss * cfg.value_coef;
            agent.opt.zero_grad();
            loss.backward();
            agent.opt.clip_grad_norm(cfg.max_grad_norm);
            agent.opt.step();
            agent.updates += 1;
            let f = |t: &Tensor| f64::try_from(t).unwrap_or(f64::NAN);
            let kl = tch::no_grad(|| ((&ratio - 1.0) - &log_ratio).mean(Kind::Float));
            let clipped = tch::no_grad(|| (&ratio - 1.0).abs().gt(cfg.clip).to_kind(Kind::Float).mean(Kind::Float));
            sums.policy_loss += f(&pg_loss);
            sums.value_loss += f(&v_loss);
            sums.entropy += f(&entropy);
            sums.approx_kl += f(&kl);
            sums.clip_fraction += f(&clipped);
            n += 1.0;
            if cfg.target_kl.is_some_and(|t| f(&kl) > t) {
                break 'epochs;
            }
        }
    }
    let n = f64::max(n, 1.0);
    PpoStats {
        policy_loss: sums.policy_loss / n,
        value_loss: sums.value_loss / n,
        entropy: sums.entropy / n,
        approx_kl: sums.approx_kl / n,
        clip_fraction: sums.clip_fraction / n,
        mean_value: ro.values.iter().map(|v| *v as f64).sum::<f64>() / ro.values.len().max(1) as f64,
    }
}
