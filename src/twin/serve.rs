//! `llmos twin-serve`: the twin as the data plane of a real API server.

/// Arguments of `llmos twin-serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs `llmos twin-serve`.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos twin-serve` is not built yet")
}
