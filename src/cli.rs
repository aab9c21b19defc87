//! The `llmos` command line: every subcommand and the global options. The binary
//! (`src/main.rs`) parses [`Cli`] and calls [`run`]; `tests/doc_commands.rs` parses every
//! `llmos` command the README and docs show with the same definition, so the docs cannot
//! name a flag or subcommand that does not exist.

use clap::{Parser, Subcommand};

/// llmos: LLM inference deployments on Kubernetes, scaled by reinforcement learning.
#[derive(Parser, Debug)]
#[command(name = "llmos", version, about, long_about = None)]
pub struct Cli {
    /// libtorch's CPU floating-point path: `reproducible` (default; the same trained weights
    /// on every x86-64 processor) or `native` (the processor's fastest kernels). Overrides
    /// the LLMOS_NUMERICS environment variable.
    #[arg(long, global = true, value_enum)]
    pub numerics: Option<crate::numerics::NumericPath>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against the cluster in the current kubeconfig.
    Run(crate::controller::cli::RunArgs),
    /// Print the CustomResourceDefinitions (LLMWorkload, GPUPool, then LLMPolicyTraining) as one
    /// YAML stream.
    Crdgen(crate::controller::cli::CrdgenArgs),
    /// Simulate a scenario in the digital twin and print its report.
    Simulate(crate::twin::cli::SimulateArgs),
    /// Print statistics of a trace file (rows, span, rate, burstiness, tokens).
    TraceStats(crate::twin::cli::TraceStatsArgs),
    /// Check the twin against published vLLM measurements (data/fidelity/points.csv).
    Fidelity(crate::twin::cli::FidelityArgs),
    /// Serve the twin as the data plane of a real API server (simulated vLLM replicas).
    TwinServe(crate::dataplane::ServeArgs),
    /// One simulated vLLM replica behind vLLM's HTTP API (completions, /metrics, /health,
    /// SIGTERM drain): the entrypoint of the simulated-vLLM image.
    VllmSim(crate::vllm_sim::VllmSimArgs),
    /// Compare policies on identical traffic in the twin.
    Compare(crate::eval::cli::CompareArgs),
    /// Run several workloads on shared GPU pools in the twin and compare allocators
    /// (first-come, the arbiter, a learned allocator).
    Share(crate::eval::cluster::ShareArgs),
    /// Train a learned allocator (priorities per workload and tick) on a mix of workloads.
    ShareTrain(crate::rl::allocator::ShareTrainArgs),
    /// Train a learned policy (DQN or PPO) in the twin.
    Train(crate::rl::cli::TrainArgs),
    /// Make a directory of trained checkpoints (one layout, several seeds) an ensemble policy.
    Ensemble(crate::rl::cli::EnsembleArgs),
    /// Print a checkpoint's (or ensemble's) SHA-256 digest, for `policy.dqn.sha256`.
    Digest(crate::rl::cli::DigestArgs),
    /// Draw the chart's Grafana dashboard from a Prometheus server as one PNG (no Grafana needed).
    Dashboard(crate::eval::dashboard::DashboardArgs),
    /// The built-in default job: train a small PPO ensemble on a real trace, compare it with the baselines.
    Demo(crate::eval::cli::DemoArgs),
    /// One index of an LLMPolicyTraining's train Job: export the workload's record, train
    /// seed `base + $JOB_COMPLETION_INDEX`, publish the candidate atomically on the volume.
    TrainJob(crate::learning::job::TrainJobArgs),
    /// An LLMPolicyTraining's evaluation Job: every candidate against the incumbent in the
    /// twin on paired seeds; the best one's result to the volume and the termination log.
    EvaluateCandidates(crate::learning::job::EvaluateArgs),
    /// List a workload's recorded traffic windows, or export them as a trace the twin replays.
    Records(crate::learning::cli::RecordsArgs),
    /// Show where a workload's retrained policies stand: the promotion phase, the learned
    /// policy acting and the history of promotions and rollbacks (from its status).
    PolicyHistory(crate::controller::history::PolicyHistoryArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything can touch libtorch: it reads its CPU path once, at its first operation.
    match cli.numerics {
        Some(path) => {
            crate::numerics::pin(path);
        }
        None => {
            crate::numerics::pin_from_env()?;
        }
    }
    match cli.command {
        Command::Run(args) => crate::controller::cli::run(args),
        Command::Dashboard(args) => crate::eval::dashboard::run(args),
        Command::Crdgen(args) => crate::controller::cli::crdgen(args),
        Command::Simulate(args) => crate::twin::cli::simulate(args),
        Command::TraceStats(args) => crate::eval::cli::trace_stats(args),
        Command::Fidelity(args) => crate::twin::cli::fidelity(args),
        Command::TwinServe(args) => crate::dataplane::run(args),
        Command::VllmSim(args) => crate::vllm_sim::run(args),
        Command::Compare(args) => crate::eval::cli::compare(args),
        Command::Share(args) => crate::eval::cluster::share(args),
        Command::ShareTrain(args) => crate::rl::allocator::train_cli(args),
        Command::Train(args) => crate::rl::cli::train(args),
        Command::Ensemble(args) => crate::rl::cli::ensemble(args),
        Command::Digest(args) => crate::rl::cli::digest(args),
        Command::Demo(args) => crate::eval::cli::demo(args),
        Command::TrainJob(args) => crate::learning::job::train_job(args).map(|_| ()),
        Command::EvaluateCandidates(args) => crate::learning::job::evaluate_candidates(args).map(|_| ()),
        Command::Records(args) => crate::learning::cli::run(args),
        Command::PolicyHistory(args) => crate::controller::history::run(args),
    }
}
