//! Command-line entry points of the twin: `llmos simulate` and `llmos trace-stats` (trace
//! files and ServeGen folders).

use std::path::PathBuf;

use anyhow::Context;

use super::traces::servegen::{ServegenData, ServegenStats};
use super::traces::{Trace, TraceStats};
use super::{Scenario, Twin};
use crate::policy::Decision;

/// Arguments of `llmos simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Scenario TOML file (e.g. scenarios/azure-conv-llama3-8b-a100.toml).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Replay this trace instead of the scenario's workload.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Seed of the run (synthetic arrivals, tie-breaking).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the report as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the wall time of the simulation loop to stderr (also without --quiet).
    #[arg(long)]
    pub timing: bool,
    /// Start from (and hold) this fleet instead of the scenario's `initial_replicas`:
    /// `VARIANT/POOL=N`, comma-separated (e.g. `llama70b-fp8/h100=2`).
    #[arg(long)]
    pub replicas: Option<String>,
}

/// Parses `VARIANT/POOL=N,...`.
fn parse_fleet(text: &str) -> anyhow::Result<Vec<super::scenario::InitialReplicas>> {
    text.split(',')
        .map(|part| {
            let (slot, n) =
                part.trim().split_once('=').context(format!("--replicas: `{part}` is not VARIANT/POOL=N"))?;
            let (variant, pool) = slot.split_once('/').context(format!("--replicas: `{slot}` is not VARIANT/POOL"))?;
            let replicas = n.trim().parse::<u32>().context(format!("--replicas: `{n}` is not a replica count"))?;
            Ok(super::scenario::InitialReplicas { variant: variant.trim().into(), pool: pool.trim().into(), replicas })
        })
        .collect()
}

/// Arguments of `llmos fidelity`.
#[derive(clap::Args, Debug)]
pub struct FidelityArgs {
    /// Points file.
    #[arg(long, default_value = "data/fidelity/points.csv")]
    pub points: PathBuf,
    /// Only points whose id is in this comma-separated list.
    #[arg(long)]
    pub only: Option<String>,
    /// Also print, per point, the spread of the twin's requests (p10/p50/p90 of queueing,
    /// TTFT, TPOT and end-to-end latency) and the run's length.
    #[arg(long)]
    pub detail: bool,
    /// Run with the constants from before the calibration (the "before" column of docs/fidelity.md).
    #[arg(long)]
    pub uncalibrated: bool,
}

/// Runs `llmos fidelity`: every point of the file through the twin, as a Markdown table
/// with the fit and check summaries (the table of docs/fidelity.md).
pub fn fidelity(args: FidelityArgs) -> anyhow::Result<()> {
    use super::fidelity::{evaluate_with, markdown, read_points};
    let mut points = read_points(&args.points)?;
    if let Some(only) = &args.only {
        let ids: Vec<&str> = only.split(',').map(str::trim).collect();
        points.retain(|p| ids.contains(&p.id.as_str()));
    }
    let catalog = super::catalog::Catalog::default();
    let results = evaluate_with(&points, &catalog, !args.uncalibrated)?;
    print!("{}", markdown(&results));
    if args.detail {
        println!();
        for r in &results {
            println!("{}: {}", r.point.id, super::fidelity::spread(&r.outcome));
        }
    }
    Ok(())
}

/// Runs `llmos simulate`: the scenario's initial fleet, held fixed, over its whole workload.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let mut scenario =
        Scenario::load(&args.scenario).with_context(|| format!("loading scenario {}", args.scenario.display()))?;
    if let Some(t) = &args.trace {
        scenario.set_trace(t).with_context(|| format!("loading trace {}", t.display()))?;
    }
    if let Some(f) = &args.replicas {
        scenario.set_initial_replicas(parse_fleet(f)?, "--replicas")?;
    }
    let mut twin = Twin::new(&scenario, args.seed)?;
    let total = twin.remaining_hint();
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = match total {
            Some(n) => indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stderr()),
            None => indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr()),
        };
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} requests {msg}")
        {
            b.set_style(style);
        }
        // Draw only when the run is long enough to need it.
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
        b
    };
    let mut ticks = 0u64;
    let wall = std::time::Instant::now(); // CLI only: the simulator itself never reads clocks
    while !twin.is_done() {
        let obs = twin.observe();
        twin.apply(&Decision::hold(&obs, "fixed fleet"));
        twin.step();
        ticks += 1;
        if ticks % 64 == 0 {
            bar.set_position(twin.arrived());
            bar.set_message(format!("t={:.0}s", twin.now_s()));
        }
    }
    bar.finish_and_clear();
    let report = twin.report();
    let secs = wall.elapsed().as_secs_f64();
    if !args.quiet || args.timing {
        eprintln!(
            "simulated {} requests ({:.0} s of traffic) in {:.3} s wall: {:.0} requests per wall-second",
            report.arrived,
            report.simulated_s,
            secs,
            report.arrived as f64 / secs.max(1e-9)
        );
    }
    if let Some(p) = &args.out {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.csv {
        std::fs::write(p, report.to_csv()).with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

/// Arguments of `llmos trace-stats`.
#[derive(clap::Args, Debug)]
pub struct TraceStatsArgs {
    /// Trace file (Azure CSV, Mooncake JSONL, BurstGPT CSV) or a ServeGen service folder
    /// (e.g. data/traces/servegen/language/m-small).
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// For a ServeGen folder: also draw its hourly rate over the days to this file (PNG
    /// when it ends in `.png`, else SVG; drawn by `eval::cli::trace_stats` from the
    /// statistics [`trace_stats`] returns).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Days where the plot's shaded segments change, comma-separated (e.g. `9,11`: days
    /// 1-9, 10-11 and 12-14, the training, validation and test days of the ServeGen
    /// scenarios).
    #[arg(long, value_delimiter = ',')]
    pub split_days: Vec<f64>,
}

fn servegen_stats(args: &TraceStatsArgs) -> anyhow::Result<ServegenStats> {
    let data = ServegenData::load(&args.file, &[])?;
    let s = ServegenStats::of(&data);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(s);
    }
    println!("folder             {} (ServeGen, rates at x1)", args.file.display());
    println!(
        "clients            {} ({} with token lengths, {:.0} % of the requests)",
        s.clients,
        s.clients_with_lengths,
        s.request_share_with_lengths * 100.0
    );
    println!("windows            {} x 10 min ({:.1} days)", s.windows, s.span_s / 86_400.0);
    println!("requests           {:.0}", s.requests);
    println!(
        "rate               mean {:.1} req/s, 10-min max {:.1}, min {:.1}",
        s.mean_rps, s.max_window_rps, s.min_window_rps
    );
    println!(
        "tokens             mean input {:.1}, output {:.1} (clients with lengths)",
        s.mean_input_tokens, s.mean_output_tokens
    );
    println!("{:<5} {:>10} {:>10} {:>10} {:>12}", "day", "mean", "peak hr", "trough hr", "peak/trough");
    for d in &s.days {
        let ratio = d.peak_over_trough.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<5} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            d.day, d.mean_rps, d.peak_hour_rps, d.trough_hour_rps, ratio
        );
    }
    println!("hour of day (from the recording's start; its wall-clock hour is not published), mean req/s:");
    for (h, r) in s.hour_of_day_rps.iter().enumerate() {
        print!("{h:>2}:{r:>8.1}{}", if h % 6 == 5 { "\n" } else { "  " });
    }
    Ok(s)
}

/// Runs `llmos trace-stats`; returns a ServeGen folder's statistics (for a caller that
/// draws them), `None` for a trace file.
pub fn trace_stats(args: TraceStatsArgs) -> anyhow::Result<Option<ServegenStats>> {
    if args.file.is_dir() {
        return servegen_stats(&args).map(Some);
    }
    let trace = Trace::load(&args.file, None)?;
    let s = TraceStats::of(&trace);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(None);
    }
    println!("file               {}", args.file.display());
    println!("rows               {}", s.rows);
    println!("span               {:.1} s ({:.1} min)", s.span_s, s.span_s / 60.0);
    println!("rate               {:.3} req/s", s.rate_rps);
    println!("inter-arrival CV   {:.2}", s.interarrival_cv);
    println!("{:<18} {:>9} {:>9} {:>9} {:>9} {:>9}", "tokens", "mean", "p50", "p90", "p99", "max");
    for (n, v) in [("input", s.input_tokens), ("output", s.output_tokens)] {
        println!("{:<18} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0}", n, v[0], v[1], v[2], v[3], v[4]);
    }
    if s.rows_with_hashes > 0 {
        println!("rows with prefix hashes {}", s.rows_with_hashes);
    }
    Ok(None)
}
