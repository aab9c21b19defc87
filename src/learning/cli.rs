//! `llmos records`: list a workload's recorded windows and export them as a trace.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::export::{write_azure_csv, ExportConfig};
use super::store::{read_dir, segments};

/// `llmos records`.
#[derive(Args, Debug)]
pub struct RecordsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RecordsCommand,
}

/// The `records` subcommands.
#[derive(Subcommand, Debug)]
pub enum RecordsCommand {
    /// List the segments and windows of one workload's record directory.
    List {
        /// The workload's record directory (`<root>/<namespace>_<name>`).
        #[arg(long)]
        dir: PathBuf,
        /// Print every window, not only the segments and totals.
        #[arg(long)]
        windows: bool,
    },
    /// Export a record directory as an Azure-format CSV trace the twin replays.
    Export {
        /// The workload's record directory.
        #[arg(long)]
        dir: PathBuf,
        /// Seed of the arrival times and token draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Largest prompt + output tokens of one request (the served model's context).
        #[arg(long)]
        max_total_tokens: Option<u32>,
        /// Where to write the CSV.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs `llmos records`.
pub fn run(args: RecordsArgs) -> anyhow::Result<()> {
    match args.command {
        RecordsCommand::List { dir, windows } => list(&dir, windows),
        RecordsCommand::Export { dir, seed, max_total_tokens, out } => {
            let read = read_dir(&dir)?;
            for w in &read.warnings {
                eprintln!("warning: {w}");
            }
            let file = std::fs::File::create(&out).with_context(|| format!("{}: cannot create", out.display()))?;
            let cfg = ExportConfig { seed, max_total_tokens };
            let s = write_azure_csv(&read.windows, &cfg, std::io::BufWriter::new(file))?;
            println!(
                "{}: {} requests from {} windows ({} overlapping left out); time zero is Unix {:.3}",
                out.display(),
                s.requests,
                s.windows,
                s.overlapping,
                s.origin_unix_s
            );
            Ok(())
        }
    }
}

fn list(dir: &std::path::Path, each: bool) -> anyhow::Result<()> {
    for s in segments(dir)? {
        let state = if s.sealed { "sealed" } else { "open" };
        println!("{}  {state}  {} bytes", s.path.display(), s.bytes);
    }
    let read = read_dir(dir)?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    if each {
        println!("start_unix_s,duration_s,arrival_rate_rps,prompt_mean,prompt_p90,output_mean,output_p90,replicas");
        for w in &read.windows {
            let f = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_default();
            let replicas: u32 = w.fleet.iter().map(|s| s.ready).sum();
            println!(
                "{:.3},{:.1},{:.4},{},{},{},{},{replicas}",
                w.start_unix_s,
                w.duration_s,
                w.arrival_rate_rps,
                f(w.prompt_tokens.mean()),
                f(w.prompt_tokens.quantile(0.9)),
                f(w.generation_tokens.mean()),
                f(w.generation_tokens.quantile(0.9)),
            );
        }
    }
    let span: f64 = read.windows.iter().map(|w| w.duration_s).sum();
    let arrivals: f64 = read.windows.iter().map(|w| w.arrivals).sum();
    println!("{} windows, {:.0} s, {:.0} requests", read.windows.len(), span, arrivals);
    Ok(())
}
