//! Command-line entry points of the twin module.

/// Arguments of `llmos simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {}

/// Runs `llmos simulate`.
pub fn simulate(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos simulate` is not built yet")
}

/// Arguments of `llmos trace-stats`.
#[derive(clap::Args, Debug)]
pub struct TraceStatsArgs {}

/// Runs `llmos trace-stats`.
pub fn trace_stats(_args: TraceStatsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos trace-stats` is not built yet")
}
