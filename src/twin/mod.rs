//! The digital twin: a fast, deterministic simulator of LLM inference deployments.
//!
//! The twin simulates what an `LLMWorkload` becomes on a cluster: replicas of model
//! variants on GPU pools, each running a vLLM-like engine (continuous batching, paged KV
//! cache, chunked prefill, preemption, prefix caching) whose iteration times come from a
//! roofline [`perf`] model calibrated on measured GPU operator profiles; cold starts and GPU
//! cost; a load balancer; traffic replayed from real traces or generated ([`traces`]).
//!
//! Policies drive it through the same seam as the live operator:
//!
//! ```no_run
//! use llmos::twin::{Scenario, Twin};
//! use llmos::policy::Decision;
//! let scenario = Scenario::load(std::path::Path::new("scenarios/azure-conv-llama3-8b-a100.toml"))?;
//! let mut twin = Twin::new(&scenario, 42)?;
//! while !twin.is_done() {
//!     let obs = twin.observe();              // same Observation the operator builds
//!     twin.apply(&Decision::hold(&obs, "fixed fleet"));
//!     let tick = twin.step();                // one control interval
//!     let _ = tick.slo_met;
//! }
//! println!("{}", twin.report().to_table());
//! # Ok::<(), llmos::twin::TwinError>(())
//! ```
//!
//! Modules: [`time`] (integer nanoseconds), [`traces`] (trace readers, ServeGen's 14-day
//! per-client traffic, synthetic arrivals, the arrival stream a run replays),
//! [`catalog`] (GPUs, models), [`perf`] (iteration time), [`engine`] (one replica),
//! [`scenario`] (TOML scenarios), [`cluster`] (several workloads on shared GPU pools), [`sim`] (the stepping API over the parts: [`events`],
//! [`fleet`], [`gateway`], [`meters`] with the one [`histogram`]), [`metrics`] (the report). See `docs/twin.md` for the model and its calibration.

pub mod catalog;
/// Command-line entry points.
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod events;
pub mod fidelity;
pub mod fleet;
pub mod gateway;
pub mod histogram;
pub mod meters;
pub mod metrics;
pub mod perf;
pub mod scenario;
pub mod sim;
pub mod time;
pub mod traces;

pub use fleet::{ReplicaInfo, ReplicaState};
pub use meters::TickStats;
pub use metrics::Report;
pub use scenario::{RunWindow, Scenario};
pub use sim::{Twin, TWIN_NAMESPACE};

/// Errors of the twin: bad input (trace rows, scenario fields) and I/O.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A trace or profile row is malformed.
    #[error("{file}, line {line}: {message}")]
    Trace {
        /// The file.
        file: String,
        /// 1-based line (0 when not line-specific).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A scenario or spec file does not parse.
    #[error("{file}, line {line}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("{field}: {message}")]
    Config {
        /// The field (with the file where known).
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// An internal invariant does not hold (a simulator bug; checked by tests).
    #[error("invariant broken in {part}: {message}")]
    Invariant {
        /// The part (a replica, a pool, request conservation).
        part: String,
        /// What does not hold.
        message: String,
    },
}
