//! Policies: the seam between what is observed and what is decided.
//!
//! Every autoscaler — the baselines people run today and the DQN — implements
//! [`Policy`]; the [`shield`] clamps whatever a policy decides to the workload's hard
//! limits. The live operator and the twin call the same code on the same
//! [`Observation`].

pub mod build;
/// The `policy` section of the spec (defined with the CRD in [`crate::crd::policy`]).
pub mod config {
    pub use crate::crd::policy::*;
}
pub mod forecast;
pub mod hpa;
pub mod kpa;
pub mod observation;
pub mod placement;
pub mod queue;
pub mod ray;
pub mod scaled;
pub mod shield;
#[path = "static.rs"]
pub mod static_policy;

pub use config::{PolicyKind, PolicyMode, PolicySpec};
pub use observation::{Decision, LatencyObservation, Observation, PoolObservation, SlotObservation, SlotTarget};

/// Maps an observation of one workload to a decision: desired replicas per (variant, pool).
///
/// Implementations keep whatever state their algorithm needs (windows, cooldowns) in
/// `self`; they must not read clocks or spawn threads, so the twin stays deterministic.
pub trait Policy: Send {
    /// A short name for tables and metric labels (e.g. `hpa`, `kpa`, `dqn`).
    fn name(&self) -> &str;
    /// Decide desired replicas for the observed state.
    fn decide(&mut self, obs: &Observation) -> Decision;
    /// Forget all state (a new episode or a new workload generation).
    fn reset(&mut self) {}
    /// Called after the effect of the last decision is seen: the next observation and
    /// the reward of the tick in between. Learners use it; heuristics ignore it.
    fn feedback(&mut self, _next: &Observation, _reward: f64) {}
}
