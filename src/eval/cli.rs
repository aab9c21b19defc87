//! Command-line entry points of the eval module.

/// Arguments of `llmos compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}

/// Runs `llmos compare`.
pub fn compare(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos compare` is not built yet")
}

/// Arguments of `llmos demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs `llmos demo`.
pub fn demo(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos demo` is not built yet")
}
