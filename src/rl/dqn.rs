//! DQN on libtorch, readable top to bottom: config → network → agent → training loop.
//!
//! **Network.** A shared torso (an MLP with ReLU) feeds one value head V(s) and one
//! advantage head A_d(s, ·) per action branch d (action-branching architecture). With
//! `dueling`, Q_d(s,a) = V(s) + A_d(s,a) − mean_a' A_d(s,a'); without, Q_d = A_d. A
//! single branch is the ordinary (dueling) DQN.
//!
//! **Acting.** ε-greedy: with probability ε each branch takes a uniformly random
//! *allowed* option, otherwise the allowed option with the highest Q_d. Masked options
//! are never chosen.
//!
//! **Learning.** Transitions (n-step, see [`super::replay`]) are sampled uniformly. The
//! target of every branch is the branch-mean of the next state's values:
//!
//! ```text
//! y = R + γᵏ · (1/D) Σ_d Q_d^target(s', a'_d),   a'_d = argmax_{a allowed in s'} Q_d^online(s', a)   (Double DQN)
//!                                               a'_d = argmax_{a allowed in s'} Q_d^target(s', a)   (plain DQN)
//! ```
//!
//! and the loss is the Huber loss between Q_d(s, a_d) and y, averaged over the batch and
//! the branches. Masked options are excluded from the argmax, so nothing is bootstrapped
//! from an action that could not be taken. Gradients are clipped by global norm. The
//! target network is a copy of the online one, refreshed either every `every` updates
//! (hard) or after every update by Polyak averaging θ' ← τθ + (1−τ)θ'.
//!
//! **Inputs.** The agent owns the observation [`Normaliser`]: it updates it from every
//! observation while training and normalises at use time, so replay stores raw features
//! and every batch is normalised with the same (latest) statistics.
//!
//! **Determinism.** Weights are initialised after `tch::manual_seed(seed)`, exploration and
//! sampling use a ChaCha RNG seeded from `seed`, and libtorch runs on one thread: on the
//! CPU, the same seed gives the same weights and returns.
//!
//! Every hyperparameter is a field of [`DqnConfig`], documented there.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

use super::encoding::Normaliser;
use super::env::{branch_offsets, Env};
use super::replay::{Batch, NStep, ReplayBuffer, Step};
use super::schedule::EpsilonSchedule;
use super::RlError;

/// How the target network follows the online network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum TargetUpdate {
    /// Copy the online weights every `every` gradient updates.
    Hard {
        /// Updates between copies.
        every: u64,
    },
    /// θ' ← τθ + (1−τ)θ' after every update.
    Polyak {
        /// Interpolation factor τ in (0, 1].
        tau: f64,
    },
}

/// Where the networks live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceChoice {
    /// CUDA when available, CPU otherwise.
    #[default]
    Auto,
    /// Always the CPU (deterministic).
    Cpu,
}

impl DeviceChoice {
    /// The tch device.
    pub fn device(self) -> Device {
        match self {
            DeviceChoice::Auto => Device::cuda_if_available(),
            DeviceChoice::Cpu => Device::Cpu,
        }
    }
}

/// Every hyperparameter of the DQN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DqnConfig {
    /// Widths of the torso's hidden layers.
    pub hidden: Vec<i64>,
    /// Dueling heads (V + A − mean A) instead of plain Q heads.
    pub dueling: bool,
    /// Double DQN: the online network picks the next action, the target network values it.
    pub double: bool,
    /// Discount factor γ per step.
    pub gamma: f64,
    /// n of the n-step returns (1 = one-step TD).
    pub n_step: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Transitions per gradient update.
    pub batch_size: usize,
    /// Replay capacity, in transitions.
    pub buffer_size: usize,
    /// Environment steps (of this run) before the first update.
    pub learning_starts: u64,
    /// Environment steps between gradient updates.
    pub train_frequency: u64,
    /// Target network updates.
    pub target: TargetUpdate,
    /// Huber loss δ (quadratic below, linear above).
    pub huber_delta: f64,
    /// Clip the global gradient norm to this; `None` for no clipping.
    pub max_grad_norm: Option<f64>,
    /// Exploration schedule, indexed by environment steps.
    pub epsilon: EpsilonSchedule,
    /// Normalise observations with running statistics.
    pub normalise_obs: bool,
    /// Seed of the initial weights, exploration, replay sampling and episode offsets.
    pub seed: u64,
    /// Where the networks live.
    pub device: DeviceChoice,
}

impl Default for DqnConfig {
    fn default() -> Self {
        DqnConfig {
            hidden: vec![128, 128],
            dueling: true,
            double: true,
            gamma: 0.99,
            n_step: 1,
            learning_rate: 5e-4,
            batch_size: 64,
            buffer_size: 50_000,
            learning_starts: 1_000,
            train_frequency: 1,
            target: TargetUpdate::Hard { every: 500 },
            huber_delta: 1.0,
            max_grad_norm: Some(10.0),
            epsilon: EpsilonSchedule::default(),
            normalise_obs: true,
            seed: 0,
            device: DeviceChoice::Auto,
        }
    }
}

impl DqnConfig {
    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), RlError> {
        let bad = |m: String| Err(RlError::Config(m));
        if self.hidden.is_empty() || self.hidden.iter().any(|h| *h <= 0) {
            return bad(format!("dqn.hidden must be non-empty positive widths, got {:?}", self.hidden));
        }
        if !(0.0..=1.0).contains(&self.gamma) {
            return bad(format!("dqn.gamma must lie in [0, 1], got {}", self.gamma));
        }
        if self.batch_size == 0 || self.buffer_size == 0 || self.train_frequency == 0 || self.n_step == 0 {
            return bad("dqn.batchSize, bufferSize, trainFrequency and nStep must be ≥ 1".into());
        }
        if !(self.learning_rate > 0.0) {
            return bad(format!("dqn.learningRate must be > 0, got {}", self.learning_rate));
        }
        match self.target {
            TargetUpdate::Hard { every: 0 } => return bad("dqn.target.every must be ≥ 1".into()),
            TargetUpdate::Polyak { tau } if !(tau > 0.0 && tau <= 1.0) => {
                return bad(format!("dqn.target.tau must lie in (0, 1], got {tau}"))
            }
            _ => {}
        }
        self.epsilon.validate()
    }
}

/// The Q-network: shared torso, optional value head, one advantage head per branch.
#[derive(Debug)]
pub struct QNetwork {
    torso: nn::Sequential,
    value: Option<nn::Linear>,
    heads: Vec<nn::Linear>,
}

impl QNetwork {
    /// Builds the network's variables under `p`.
    pub fn new(p: &nn::Path, obs_dim: usize, hidden: &[i64], sizes: &[usize], dueling: bool) -> Self {
        let mut torso = nn::seq();
        let mut width = obs_dim as i64;
        for (i, h) in hidden.iter().enumerate() {
            torso = torso.add(nn::linear(p / format!("torso{i}"), width, *h, Default::default())).add_fn(|x| x.relu());
            width = *h;
        }
        let value = dueling.then(|| nn::linear(p / "value", width, 1, Default::default()));
        let heads = sizes
            .iter()
            .enumerate()
            .map(|(d, n)| nn::linear(p / format!("head{d}"), width, *n as i64, Default::default()))
            .collect();
        QNetwork { torso, value, heads }
    }

    /// The variables [`QNetwork::new`] creates, as `(name, shape)` in creation order,
    /// computed without allocating them: a checkpoint's weights are checked against this
    /// before libtorch reads them. `None` when a width is not positive or the shapes
    /// overflow.
    pub fn shapes(obs_dim: usize, hidden: &[i64], sizes: &[usize], dueling: bool) -> Option<Vec<(String, Vec<i64>)>> {
        let mut out = Vec::new();
        let mut width = i64::try_from(obs_dim).ok()?;
        let mut linear = |name: String, inputs: i64, outputs: i64| {
            inputs.checked_mul(outputs)?;
            (inputs > 0 && outputs > 0).then(|| {
                out.push((format!("{name}.weight"), vec![outputs, inputs]));
                out.push((format!("{name}.bias"), vec![outputs]));
            })
        };
        for (i, h) in hidden.iter().enumerate() {
            linear(format!("torso{i}"), width, *h)?;
            width = *h;
        }
        if dueling {
            linear("value".into(), width, 1)?;
        }
        for (d, n) in sizes.iter().enumerate() {
            linear(format!("head{d}"), width, i64::try_from(*n).ok()?)?;
        }
        Some(out)
    }

    /// Q-values of a batch `[B, obs_dim]` → `[B, Σ branch sizes]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.torso.forward(x);
        let qs: Vec<Tensor> = self
            .heads
            .iter()
            .map(|head| {
                let a = head.forward(&h);
                match &self.value {
                    Some(v) => v.forward(&h) + &a - a.mean_dim(1, true, Kind::Float),
                    None => a,
                }
            })
            .collect();
        Tensor::cat(&qs, 1)
    }
}

/// Checks the action branches and readies libtorch for an agent: the pinned CPU path
/// (libtorch reads it at its first operation), one thread, the chosen device.
pub(crate) fn prepare_torch(sizes: &[usize], device: DeviceChoice) -> Result<Device, RlError> {
    if sizes.is_empty() || sizes.contains(&0) {
        return Err(RlError::Config(format!("action branches must be non-empty, got {sizes:?}")));
    }
    crate::numerics::pin_from_env()?;
    tch::set_num_threads(1);
    Ok(device.device())
}

/// Runs `init` (which creates an agent's variables) right after `tch::manual_seed(seed)`,
/// under one process-wide lock: libtorch's generator is process-wide, so agents created on
/// several threads at once (the demo trains its ensemble in parallel) would interleave
/// their draws and get weights that depend on scheduling. Under the lock each agent's
/// initial weights are a function of its seed alone.
pub(crate) fn seeded_init<T>(seed: u64, init: impl FnOnce() -> T) -> T {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    init()
}

/// What one gradient update measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateStats {
    /// Huber loss.
    pub loss: f64,
    /// Mean Q(s, a) over the batch and branches.
    pub mean_q: f64,
}

/// The DQN agent: online and target networks, optimiser, normaliser and counters.
pub struct DqnAgent {
    /// Hyperparameters.
    pub cfg: DqnConfig,
    /// Device of the networks.
    pub device: Device,
    /// Online weights (saved in checkpoints).
    pub vs: nn::VarStore,
    net: QNetwork,
    target_vs: nn::VarStore,
    target: QNetwork,
    opt: nn::Optimizer,
    obs_dim: usize,
    sizes: Vec<usize>,
    offsets: Vec<usize>,
    /// Observation statistics.
    pub normaliser: Normaliser,
    /// Environment steps taken over the agent's life (drives ε).
    pub env_steps: u64,
    /// Gradient updates done over the agent's life.
    pub updates: u64,
}

impl std::fmt::Debug for DqnAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DqnAgent")
            .field("obs_dim", &self.obs_dim)
            .field("sizes", &self.sizes)
            .field("updates", &self.updates)
            .finish()
    }
}

impl DqnAgent {
    /// A fresh agent for `obs_dim` features and branches of `sizes` options.
    pub fn new(obs_dim: usize, sizes: &[usize], cfg: DqnConfig) -> Result<Self, RlError> {
        cfg.validate()?;
        let device = prepare_torch(sizes, cfg.device)?;
        let (vs, net, mut target_vs, target) = seeded_init(cfg.seed, || {
            let vs = nn::VarStore::new(device);
            let net = QNetwork::new(&vs.root(), obs_dim, &cfg.hidden, sizes, cfg.dueling);
            let target_vs = nn::VarStore::new(device);
            let target = QNetwork::new(&target_vs.root(), obs_dim, &cfg.hidden, sizes, cfg.dueling);
            (vs, net, target_vs, target)
        });
        target_vs.copy(&vs)?;
        target_vs.freeze();
        let opt = nn::Adam::default().build(&vs, cfg.learning_rate)?;
        Ok(DqnAgent {
            device,
            vs,
            net,
            target_vs,
            target,
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

    /// Copies the online weights into the target network (after loading a checkpoint).
    pub fn sync_target(&mut self) -> Result<(), RlError> {
        self.target_vs.copy(&self.vs)?;
        Ok(())
    }

    /// Raw observations (one, or several back to back) as the network takes them:
    /// normalised with the agent's statistics when `normalise_obs` is set, else as given.
    pub fn normalised(&self, raw: &[f32]) -> Vec<f32> {
        let mut x = raw.to_vec();
        if self.cfg.normalise_obs {
            for chunk in x.chunks_mut(self.obs_dim.max(1)) {
                self.normaliser.apply(chunk);
            }
        }
        x
    }

    /// Q-values of one raw observation, flattened over branches.
    pub fn q_values(&self, raw_obs: &[f32]) -> Vec<f32> {
        let x = Tensor::from_slice(&self.normalised(raw_obs)).view([1, self.obs_dim as i64]).to_device(self.device);
        let q = tch::no_grad(|| self.net.forward(&x)).to_device(Device::Cpu).view([-1]);
        Vec::<f32>::try_from(&q).unwrap_or_default()
    }

    /// The greedy allowed option per branch (option 0 if a branch has nothing allowed,
    /// which a well-formed mask never does: holding is always allowed).
    pub fn greedy(&self, raw_obs: &[f32], mask: &[bool]) -> Vec<usize> {
        masked_argmax(&self.q_values(raw_obs), mask, &self.sizes)
    }

    /// ε-greedy over allowed options, branch by branch.
    pub fn act(&self, raw_obs: &[f32], mask: &[bool], epsilon: f64, rng: &mut ChaCha8Rng) -> Vec<usize> {
        if rng.random::<f64>() < epsilon {
            return self
                .sizes
                .iter()
                .zip(&self.offsets)
                .map(|(&n, &off)| {
                    let allowed: Vec<usize> = (0..n).filter(|a| mask.get(off + a).copied().unwrap_or(false)).collect();
                    if allowed.is_empty() {
                        0
                    } else {
                        allowed[rng.random_range(0..allowed.len())]
                    }
                })
                .collect();
        }
        self.greedy(raw_obs, mask)
    }

    /// The TD targets y of a batch (see the module docs), on the agent's device.
    fn td_targets_tensor(&self, batch: &Batch) -> Tensor {
        let b = batch.size as i64;
        let m = self.sizes.iter().sum::<usize>() as i64;
        let dev = self.device;
        let next_obs =
            Tensor::from_slice(&self.normalised(&batch.next_obs)).view([b, self.obs_dim as i64]).to_device(dev);
        let rewards = Tensor::from_slice(&batch.rewards).to_device(dev);
        let discounts = Tensor::from_slice(&batch.discounts).to_device(dev);
        let penalty: Vec<f32> = batch.next_mask.iter().map(|&ok| if ok { 0.0 } else { -1e9 }).collect();
        let penalty = Tensor::from_slice(&penalty).view([b, m]).to_device(dev);
        // No gradient flows through the targets.
        tch::no_grad(|| {
            let q_next_target = self.target.forward(&next_obs);
            let chooser = if self.cfg.double { self.net.forward(&next_obs) } else { q_next_target.shallow_clone() };
            let chooser = chooser + &penalty;
            let per_branch: Vec<Tensor> = self
                .sizes
                .iter()
                .zip(&self.offsets)
                .map(|(&n, &off)| {
                    let a_next = chooser.narrow(1, off as i64, n as i64).argmax(1, true);
                    q_next_target.narrow(1, off as i64, n as i64).gather(1, &a_next, false)
                })
                .collect();
            let next_value = Tensor::cat(&per_branch, 1).mean_dim(1, false, Kind::Float);
            rewards + discounts * next_value
        })
    }

    /// The TD targets y of a batch, on the host (for tests and diagnostics).
    pub fn td_targets(&self, batch: &Batch) -> Vec<f32> {
        Vec::<f32>::try_from(&self.td_targets_tensor(batch).to_device(Device::Cpu)).unwrap_or_default()
    }

    /// One gradient update on a batch.
    pub fn update(&mut self, batch: &Batch) -> UpdateStats {
        let b = batch.size as i64;
        let d = self.sizes.len() as i64;
        let dev = self.device;
        let obs = Tensor::from_slice(&self.normalised(&batch.obs)).view([b, self.obs_dim as i64]).to_device(dev);
        let actions = Tensor::from_slice(&batch.actions).view([b, d]).to_device(dev);
        let y = self.td_targets_tensor(batch);

        let q = self.net.forward(&obs);
        let q_sa: Vec<Tensor> = self
            .sizes
            .iter()
            .zip(&self.offsets)
            .enumerate()
            .map(|(k, (&n, &off))| q.narrow(1, off as i64, n as i64).gather(1, &actions.narrow(1, k as i64, 1), false))
            .collect();
        let q_sa = Tensor::cat(&q_sa, 1);
        let loss = q_sa.huber_loss(&y.unsqueeze(1).expand_as(&q_sa), Reduction::Mean, self.cfg.huber_delta);
        self.opt.zero_grad();
        loss.backward();
        if let Some(max) = self.cfg.max_grad_norm {
            self.opt.clip_grad_norm(max);
        }
        self.opt.step();
        self.updates += 1;

        match self.cfg.target {
            TargetUpdate::Hard { every } => {
                if self.updates % every == 0 {
                    // Same shapes by construction; an error here is a bug.
                    let r = self.target_vs.copy(&self.vs);
                    debug_assert!(r.is_ok());
                }
            }
            TargetUpdate::Polyak { tau } => {
                let online = self.vs.variables();
                tch::no_grad(|| {
                    for (name, mut t) in self.target_vs.variables() {
                        if let Some(o) = online.get(&name) {
                            let mixed = o * tau + &t * (1.0 - tau);
                            t.copy_(&mixed);
                        }
                    }
                });
            }
        }
        UpdateStats {
            loss: f64::try_from(&loss).unwrap_or(f64::NAN),
            mean_q: f64::try_from(q_sa.mean(Kind::Float)).unwrap_or(f64::NAN),
        }
    }
}

/// A finished episode, as logged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// Episode index in this run.
    pub episode: u64,
    /// Agent's environment steps at the end of the episode.
    pub env_steps: u64,
    /// Agent's gradient updates at the end of the episode.
    pub updates: u64,
    /// Sum of rewards.
    pub episodic_return: f64,
    /// Steps in the episode.
    pub length: u64,
    /// ε at the end of the episode.
    pub epsilon: f64,
    /// Mean loss of the updates in the episode (NaN when none).
    pub mean_loss: f64,
    /// Mean Q(s, a) of the updates in the episode (NaN when none).
    pub mean_q: f64,
    /// Requests finished within the SLO / requests finished (NaN when none finished).
    pub slo_attainment: f64,
    /// GPU cost of the episode, USD.
    pub cost_usd: f64,
    /// GPU-hours of the episode.
    pub gpu_hours: f64,
}

/// Trains `agent` on `env` for `steps` environment steps (continuing its counters, so a
/// resumed agent keeps its ε). Calls `on_episode` after every episode.
pub fn train_dqn(
    agent: &mut DqnAgent,
    env: &mut dyn Env,
    steps: u64,
    on_episode: &mut dyn FnMut(&EpisodeRecord),
) -> Result<Vec<EpisodeRecord>, RlError> {
    train_dqn_with_eval(agent, env, steps, on_episode, 0, &mut |_| Ok(()))
}

/// Like [`train_dqn`], calling `on_eval` with the agent at the first episode boundary
/// after every `eval_every` environment steps (0: never); training's own random stream
/// is not touched by it, so evaluating does not change what is learned. An error from
/// `on_eval` stops training.
pub fn train_dqn_with_eval(
    agent: &mut DqnAgent,
    env: &mut dyn Env,
    steps: u64,
    on_episode: &mut dyn FnMut(&EpisodeRecord),
    eval_every: u64,
    on_eval: &mut dyn FnMut(&DqnAgent) -> Result<(), RlError>,
) -> Result<Vec<EpisodeRecord>, RlError> {
    let sizes = env.branch_sizes();
    if env.obs_dim() != agent.obs_dim || sizes != agent.sizes {
        return Err(RlError::Config(format!(
            "agent expects {} features and branches {:?}, env has {} and {:?}",
            agent.obs_dim,
            agent.sizes,
            env.obs_dim(),
            sizes
        )));
    }
    let cfg = agent.cfg.clone();
    // Seeds differ between a first run and a resumed one, but are fixed by (seed, steps).
    let run_seed = cfg.seed ^ agent.env_steps.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(run_seed);
    let mut buffer = ReplayBuffer::new(cfg.buffer_size, agent.obs_dim, sizes.len(), sizes.iter().sum());
    let mut nstep = NStep::new(cfg.n_step, cfg.gamma as f32);
    let mut records = Vec::new();

    let mut episode = 0u64;
    let mut next_eval = agent.env_steps + eval_every;
    let (mut obs, mut mask) = env.reset(run_seed.wrapping_add(episode))?;
    agent.normaliser.update(&obs);
    let mut ep = EpisodeRecord::default();
    let (mut loss_sum, mut q_sum, mut n_upd) = (0.0, 0.0, 0u64);
    let (mut finished, mut met) = (0.0, 0.0);

    for t in 0..steps {
        let epsilon = cfg.epsilon.value(agent.env_steps);
        let action = agent.act(&obs, &mask, epsilon, &mut rng);
        let s = env.step(&action)?;
        agent.env_steps += 1;
        agent.normaliser.update(&s.obs);
        ep.episodic_return += s.reward;
        ep.length += 1;
        ep.cost_usd += s.info.cost_usd;
        ep.gpu_hours += s.info.gpu_seconds / 3600.0;
        finished += s.info.finished;
        met += s.info.slo_met;

        let end = s.terminated || s.truncated;
        for tr in nstep.push(Step {
            obs: std::mem::take(&mut obs),
            action,
            reward: s.reward as f32,
            next_obs: s.obs.clone(),
            next_mask: s.mask.clone(),
            terminated: s.terminated,
            truncated: s.truncated,
        }) {
            buffer.push(&tr);
        }
        obs = s.obs;
        mask = s.mask;

        if t >= cfg.learning_starts && t % cfg.train_frequency == 0 && !buffer.is_empty() {
            let batch = buffer.sample(cfg.batch_size, &mut rng);
            let st = agent.update(&batch);
            loss_sum += st.loss;
            q_sum += st.mean_q;
            n_upd += 1;
        }

        if end {
            ep.episode = episode;
            ep.env_steps = agent.env_steps;
            ep.updates = agent.updates;
            ep.epsilon = epsilon;
            ep.mean_loss = if n_upd > 0 { loss_sum / n_upd as f64 } else { f64::NAN };
            ep.mean_q = if n_upd > 0 { q_sum / n_upd as f64 } else { f64::NAN };
            ep.slo_attainment = if finished > 0.0 { met / finished } else { f64::NAN };
            on_episode(&ep);
            records.push(std::mem::take(&mut ep));
            (loss_sum, q_sum, n_upd, finished, met) = (0.0, 0.0, 0, 0.0, 0.0);
            if eval_every > 0 && agent.env_steps >= next_eval {
                on_eval(agent)?;
                next_eval = agent.env_steps + eval_every;
            }
            episode += 1;
            let (o, m) = env.reset(run_seed.wrapping_add(episode))?;
            agent.normaliser.update(&o);
            obs = o;
            mask = m;
        }
    }
    Ok(records)
}

/// The highest-valued allowed option of each branch of a flattened Q-vector (option 0 if
/// a branch has nothing allowed, which a well-formed mask never does: holding is always
/// allowed).
pub fn masked_argmax(q: &[f32], mask: &[bool], sizes: &[usize]) -> Vec<usize> {
    sizes
        .iter()
        .zip(branch_offsets(sizes))
        .map(|(&n, off)| {
            let mut best: Option<(usize, f32)> = None;
            for a in 0..n {
                if !mask.get(off + a).copied().unwrap_or(false) {
                    continue;
                }
                let v = q.get(off + a).copied().unwrap_or(f32::NEG_INFINITY);
                if best.is_none_or(|(_, bv)| v > bv) {
                    best = Some((a, v));
                }
            }
            debug_assert!(best.is_some(), "a branch with every option masked");
            best.map(|(a, _)| a).unwrap_or(0)
        })
        .collect()
}

/// Mean return of `episodes` greedy episodes (no exploration, no learning).
pub fn evaluate(agent: &DqnAgent, env: &mut dyn Env, episodes: u64, seed: u64) -> Result<f64, RlError> {
    let mut total = 0.0;
    for e in 0..episodes {
        let (mut obs, mut mask) = env.reset(seed.wrapping_add(e))?;
        loop {
            let s = env.step(&agent.greedy(&obs, &mask))?;
            total += s.reward;
            if s.terminated || s.truncated {
                break;
            }
            obs = s.obs;
            mask = s.mask;
        }
    }
    Ok(total / episodes.max(1) as f64)
}
