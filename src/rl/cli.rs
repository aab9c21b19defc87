//! Command-line entry points of the rl module.

/// Arguments of `llmos train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {}

/// Runs `llmos train`.
pub fn train(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos train` is not built yet")
}
