//! The `llmos` binary: the operator, the twin and the tools around them.

use clap::{Parser, Subcommand};

/// llmos: LLM inference deployments on Kubernetes, scaled by reinforcement learning.
#[derive(Parser)]
#[command(name = "llmos", version, about, long_about = None)]
struct Cli {
    /// libtorch's CPU floating-point path: `reproducible` (default; the same trained weights
    /// on every x86-64 processor) or `native` (the processor's fastest kernels). Overrides
    /// the LLMOS_NUMERICS environment variable.
    #[arg(long, global = true, value_enum)]
    numerics: Option<llmos::numerics::NumericPath>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster in the current kubeconfig.
    Run(llmos::controller::cli::RunArgs),
    /// Print the LLMWorkload CustomResourceDefinition as YAML.
    Crdgen,
    /// Simulate a scenario in the digital twin and print its report.
    Simulate(llmos::twin::cli::SimulateArgs),
    /// Print statistics of a trace file (rows, span, rate, burstiness, tokens).
    TraceStats(llmos::twin::cli::TraceStatsArgs),
    /// Serve the twin as the data plane of a real API server (simulated vLLM replicas).
    TwinServe(llmos::dataplane::ServeArgs),
    /// Compare policies on identical traffic in the twin.
    Compare(llmos::eval::cli::CompareArgs),
    /// Train a DQN policy in the twin.
    Train(llmos::rl::cli::TrainArgs),
    /// Make a directory of trained checkpoints (one layout, several seeds) an ensemble policy.
    Ensemble(llmos::rl::cli::EnsembleArgs),
    /// The built-in default job: train a small DQN on a real trace, compare it with the baselines.
    Demo(llmos::eval::cli::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before anything can touch libtorch: it reads its CPU path once, at its first operation.
    match cli.numerics {
        Some(path) => {
            llmos::numerics::pin(path);
        }
        None => {
            llmos::numerics::pin_from_env()?;
        }
    }
    match cli.command {
        Command::Run(args) => llmos::controller::cli::run(args),
        Command::Crdgen => llmos::controller::cli::crdgen(),
        Command::Simulate(args) => llmos::twin::cli::simulate(args),
        Command::TraceStats(args) => llmos::eval::cli::trace_stats(args),
        Command::TwinServe(args) => llmos::dataplane::run(args),
        Command::Compare(args) => llmos::eval::cli::compare(args),
        Command::Train(args) => llmos::rl::cli::train(args),
        Command::Ensemble(args) => llmos::rl::cli::ensemble(args),
        Command::Demo(args) => llmos::eval::cli::demo(args),
    }
}
