//! # llmos
//!
//! A Kubernetes operator that runs LLM inference deployments with reinforcement
//! learning, and the digital twin it learns in.
//!
//! - [`crd`]: the `LLMWorkload` custom resource.
//! - [`arbiter`]: grants GPUs of shared pools across workloads (priority, guarantees,
//!   max-min fair share, preemption).
//! - [`policy`]: the [`policy::Observation`] → [`policy::Decision`] seam, the shield and
//!   the baseline autoscalers.
//! - [`twin`]: the simulator of LLM serving fleets that policies are trained and judged in.
//! - [`rl`]: the learned policies (DQN and PPO on libtorch, tabular Q-learning).
//! - [`eval`]: the comparison harness.
//! - [`metrics`]: reading vLLM metrics (Prometheus or direct scrape) into observations.
//! - [`controller`]: the reconciler that owns Deployments.
//! - [`dataplane`]: `llmos twin-serve`, the twin as the data plane of a real API server.
//! - [`numerics`]: libtorch's CPU floating-point path, pinned for reproducible training.
//! - [`cli`]: the `llmos` command line.
//! - [`fuzz`]: the fuzz targets' entry points (every parser of untrusted input).
//! - [`learning`]: traffic records, their export as traces, and the promotion rule.
#![warn(missing_docs)]

pub mod arbiter;
pub mod cli;
pub mod control;
pub mod controller;
pub mod crd;
pub mod dataplane;
pub mod eval;
pub mod fuzz;
pub mod learning;
pub mod metrics;
pub mod numerics;
pub mod observe;
pub mod policy;
pub mod rl;
pub mod twin;
pub mod vllm_sim;
