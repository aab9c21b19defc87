//! Reinforcement learning for llmos: a DQN and PPO on libtorch (`tch`) and a tabular
//! Q-learner, trained in the digital twin and loaded by the operator as `policy: dqn`.
//!
//! The module follows the CleanRL / Stable-Baselines3 split: the shared pieces are
//! small, separately tested files, and each learner reads top to bottom in its own file.
//!
//! | file | what it holds |
//! |------|---------------|
//! | [`replay`] | uniform replay buffer with seeded sampling and an n-step accumulator |
//! | [`schedule`] | ε-greedy schedules (linear, exponential) |
//! | [`env`] | the [`env::Env`] trait every learner trains on, and [`env::TwinEnv`] over the twin |
//! | [`toy`] | small problems with known optimal policies (chain, masked bandit) for tests |
//! | [`tabular`] | tabular Q-learning over a discretised observation (reference learner) |
//! | [`dqn`] | the DQN: shared torso, dueling branch heads, Double DQN, Huber, n-step, masking |
//! | [`fused`] | an ensemble's members stacked into one batched forward pass |
//! | [`ppo`] | PPO: the same factored heads as a masked categorical actor, a critic, GAE(λ), clipped surrogate, parallel environments |
//! | [`mix`] | training across traffic: per-episode randomisation of load, cold start, price and SLO (the sources are [`env::Source`]) |
//! | [`encoding`] | [`crate::policy::Observation`] → feature vector, normaliser, action layout |
//! | [`checkpoint`] | weights + JSON sidecar, written atomically, validated on load |
//! | [`policy`] | [`policy::DqnPolicy`], the trained network as a [`crate::policy::Policy`], and the `dqn` kind ([`policy::Dqn`]) |
//! | [`rollout`] | one policy through one twin window with the shield, tick by tick |
//! | [`train`] | [`train::train`], the twin training entry point used by the CLI and the demo |
//! | [`cli`] | `llmos train` |
//!
//! ## Actions: factored branches, one code path for both layouts
//!
//! A workload has one *slot* per (variant, pool). The network has a shared torso and one
//! advantage *branch* per action dimension (action-branching DQN, Tavakoli et al. 2018):
//! with [`encoding::ActionLayoutKind::Factored`] there is one branch per slot whose
//! options are replica deltas (by default down / hold / up / up-fast), so the output grows
//! linearly with the number of slots instead of exponentially. The alternative, a small
//! enumerated set of joint moves ([`encoding::ActionLayoutKind::Joint`]: hold, or move one
//! slot by one delta), is a single branch, and the same DQN code handles it because a
//! single branch reduces every formula below to the textbook DQN. Switching variants is
//! expressed as scaling one variant's slots up and another's down (both layouts can do it
//! in one tick with the factored layout, over two ticks with the joint one). Which layout
//! works better on the twin is measured in `docs/results.md`.
//!
//! A third layout, [`encoding::ActionLayoutKind::Residual`], keeps the factored branches
//! but makes each option an *offset* from the replicas a heuristic base policy (the
//! forecast planner, say) asks for this tick; the base's targets are features too. With
//! every offset 0 the learned policy is the base policy, so learning starts from a
//! planner's behaviour instead of from nothing.
//!
//! A fourth, [`encoding::ActionLayoutKind::Capacity`], gives each slot one branch whose
//! options are *hold* or a capacity per replica in req/s from a fixed list
//! (`capacities` in the training config, stored in the checkpoint); a sizing rule turns
//! the chosen capacity into `ceil(slot arrival rate / capacity)` replicas, at least one
//! for a slot that already serves. The policy learns how much headroom the traffic
//! needs, not how many replicas to add, so the same choice scales with the load. The
//! capacity can instead be in requests in flight per replica (`capacityMetric =
//! "inFlight"`, as Knative's KPA sizes by concurrency), and the hold can be masked while
//! any capacity is allowed (`capacityHold = false`), so the rule sizes every tick.
//!
//! ## Learners and what the operator loads
//!
//! The DQN ([`dqn`]) and PPO ([`ppo`]) write the same checkpoint format: PPO's actor has
//! the DQN's torso and per-branch heads without the dueling branch, and its logits are read
//! where the DQN's Q-values are; the greedy choice is the masked argmax either way. So one
//! operator kind, `dqn` (`policy: {kind: dqn, dqn: {checkpoint: …}}`), loads both; the
//! sidecar's `algorithm` says which trained it, and `llmos train --algorithm ppo` (or
//! `algorithm = "ppo"` in the training config) picks the learner.

/// Shared error type of the rl module.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: String,
        /// What failed.
        source: serde_json::Error,
    },
    /// A checkpoint is missing, corrupt or of another format version.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint's layout does not match the workload it is loaded for.
    #[error(
        "checkpoint {path} does not match the workload: {what}: checkpoint has {checkpoint}, workload has {workload}"
    )]
    LayoutMismatch {
        /// The checkpoint directory.
        path: String,
        /// Which part of the layout differs.
        what: String,
        /// What the checkpoint was trained for.
        checkpoint: String,
        /// What the workload needs.
        workload: String,
    },
    /// The numeric path setting (`LLMOS_NUMERICS`) is invalid.
    #[error(transparent)]
    Numerics(#[from] crate::numerics::NumericsError),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The twin reported an error.
    #[error("twin: {0}")]
    Twin(#[from] crate::twin::TwinError),
    /// An environment was stepped before it was reset.
    #[error("environment stepped before reset")]
    NotReset,
}

pub mod allocator;
pub mod checkpoint;
pub mod cli;
pub mod dqn;
pub mod encoding;
pub mod env;
pub mod fused;
pub mod mix;
pub mod policy;
pub mod ppo;
pub mod replay;
pub mod rollout;
pub mod schedule;
pub mod tabular;
pub mod toy;
pub mod train;
pub mod validation;

use crate::policy::registry::{PolicyEntry, Registry};

/// The policy kinds of this module (they need libtorch), registered after the `policy`
/// module's own ([`registry`]). A new learned kind: its file here and one line in this list.
pub static KINDS: &[&dyn PolicyEntry] = &[&policy::Dqn];

/// Every policy kind: the `policy` module's ([`Registry::builtin`]) and this module's
/// [`KINDS`]. The operator and `llmos compare` build policies with it.
pub fn registry() -> &'static Registry {
    static ALL: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    ALL.get_or_init(|| Registry::builtin().with(KINDS))
}

pub use dqn::{DqnAgent, DqnConfig};
pub use env::Env;
pub use train::{train, TrainConfig, TrainSummary};
