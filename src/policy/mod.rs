//! Policies: the seam between what is observed and what is decided.
//!
//! Every autoscaler — the baselines people run today and the DQN — implements
//! [`Policy`]; the [`shield`] clamps whatever a policy decides to the workload's hard
//! limits. The live operator and the twin call the same code on the same
//! [`Observation`]. Each policy kind declares itself in its own file ([`PolicyKindDef`])
//! and is listed once, below, in [`KINDS`]; the [`registry`] resolves the spec's
//! `policy.kind`, command-line names and report kinds through that list.

pub mod build;
/// The `policy` section of the spec (defined with the CRD in [`crate::crd::policy`]).
pub mod config {
    pub use crate::crd::policy::*;
}
pub mod observation;
pub mod placement;
pub mod registry;
pub mod scaled;
pub mod shield;

pub use config::{PolicyKind, PolicyMode, PolicySpec};
pub use observation::{
    BranchScores, Decision, Explanation, LatencyObservation, Observation, PoolObservation, SlotObservation, SlotTarget,
};
pub use registry::{KindId, PolicyEntry, PolicyKindDef, Registry};

/// Declares the kind modules and lists their kinds in [`KINDS`], in order.
macro_rules! kinds {
    ($($(#[$attr:meta])* $module:ident: $($kind:ident),+;)*) => {
        $($(#[$attr])* pub mod $module;)*
        /// The policy kinds of this module, in the order `--help` lists them
        /// ([`Registry::builtin`]).
        pub static KINDS: &[&dyn PolicyEntry] = &[$($(&$module::$kind,)+)*];
    };
}

// A new kind: its file in src/policy/ and one line here (`module: KindType;`).
kinds! {
    hpa: Hpa;
    kpa: Kpa;
    queue: Queue;
    ray: Ray;
    #[path = "static.rs"] static_policy: Static, StaticPeak, StaticMean;
    forecast: Forecast;
    clairvoyant: ClairvoyantKind;
}

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
    /// What the policy has learned that an operator restart should not lose (the forecast
    /// planner's seasonal profile and error model), as JSON; `None` (the default) for
    /// policies that rebuild their state from a few observations. The operator stores it
    /// in a ConfigMap (docs/operator.md, "Policy state") and gives it back with
    /// [`Policy::import_state`] after a restart or a spec change.
    fn export_state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Puts back a state exported by the same kind of policy. A state that does not parse
    /// is an error naming what is wrong, and the policy keeps its own state.
    fn import_state(&mut self, _state: serde_json::Value) -> Result<(), registry::PolicyError> {
        Ok(())
    }
    /// What the last [`Policy::decide`] weighed, per action branch (a learned policy's
    /// Q-values or action probabilities), for the operator's decision page; `None` (the
    /// default) for policies whose reason line says it all, and after a hold on missing
    /// metrics.
    fn explain(&self) -> Option<Explanation> {
        None
    }
}
