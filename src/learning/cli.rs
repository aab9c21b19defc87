//! `llmos records`: list a workload's recorded windows, or export them as a trace.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::export::{write_azure_csv, ExportConfig};
use super::store::{read_dir, segments};

/// `llmos records`: without `--export`, list the record; with it, export it.
#[derive(Args, Debug)]
pub struct RecordsArgs {
    /// The workload's record directory (`<root>/<namespace>_<name>`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Print every window, not only the segments and totals.
    #[arg(long)]
    pub windows: bool,
    /// Write the record as an Azure-format CSV trace the twin replays to this file.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Seed of the exported arrival times and token draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest prompt + output tokens of one exported request (the served model's context).
    #[arg(long)]
    pub max_total_tokens: Option<u32>,
}

/// Runs `llmos records`.
pub fn run(args: RecordsArgs) -> anyhow::Result<()> {
    let Some(out) = &args.export else { return list(&args.dir, args.windows) };
    let read = read_dir(&args.dir)?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    let file = std::fs::File::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let cfg = ExportConfig { seed: args.seed, max_total_tokens: args.max_total_tokens };
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
