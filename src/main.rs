//! The `llmos` binary: the operator, the twin and the tools around them ([`llmos::cli`]).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    llmos::cli::run(llmos::cli::Cli::parse())
}
