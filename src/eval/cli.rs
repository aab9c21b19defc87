//! Command-line entry points of the eval module.

use std::path::PathBuf;

use anyhow::Context;

use crate::eval::{compare as run_compare, plots, stats, CompareConfig, Window};

/// Arguments of `llmos compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Scenario file (TOML), e.g. `scenarios/azure-code-llama3-8b-a100.toml`.
    #[arg(long)]
    pub scenario: PathBuf,
    /// Comma-separated policy names, e.g. `hpa,kpa,static-peak,hpa:window=60,dqn:PATH`.
    /// Each is `KIND[:ARG][:KEY=VALUE]...`; a bad name lists the valid ones.
    #[arg(long, default_value = "hpa,kpa,queue,ray,static-peak,static-mean")]
    pub policies: String,
    /// Number of seeds (0..N); every policy sees the same arrivals per seed.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Trace window: train (first 60 %), test (last 40 %) or all.
    #[arg(long, value_enum, default_value_t = Window::Test)]
    pub window: Window,
    /// Load multipliers, comma-separated (1.0 = the trace as recorded).
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    pub load: Vec<f64>,
    /// Requests per second one replica sustains within the SLO, to size `static-peak` and
    /// `static-mean` (or give `static-peak:capacity=R`).
    #[arg(long)]
    pub replica_capacity_rps: Option<f64>,
    /// Stop each episode after this many simulated seconds.
    #[arg(long)]
    pub max_duration_s: Option<f64>,
    /// Directory for report.json, report.csv and the plots.
    #[arg(long, default_value = "out/compare")]
    pub out: PathBuf,
    /// Skip the plots.
    #[arg(long)]
    pub no_plots: bool,
}

/// Runs `llmos compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let cfg = CompareConfig {
        scenario: args.scenario.clone(),
        policies: args.policies.clone(),
        seeds: args.seeds,
        window: args.window,
        loads: args.load.clone(),
        replica_capacity_rps: args.replica_capacity_rps,
        max_duration_s: args.max_duration_s,
    };
    let report = run_compare(&cfg)?;
    let (a, b) = report.window_fractions;
    println!(
        "{}: window {:?} [{:.0}%, {:.0}%) of the trace, {} seeds, policies {}",
        report.scenario,
        report.window,
        a * 100.0,
        b * 100.0,
        report.seeds,
        report.policies.join(", ")
    );
    for (l, s) in report.loads.iter().zip(&report.arrivals) {
        println!("load ×{l}: mean {:.2} req/s, peak (60 s) {:.2} req/s", s.mean_rps, s.peak_rps);
    }
    println!();
    print!("{}", stats::table(&report.rows, &report.loads));
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let jp = args.out.join("report.json");
    std::fs::write(&jp, json).with_context(|| format!("writing {}", jp.display()))?;
    let cp = args.out.join("report.csv");
    std::fs::write(&cp, stats::csv(&report.rows)).with_context(|| format!("writing {}", cp.display()))?;
    println!("wrote {} and {}", jp.display(), cp.display());
    if !args.no_plots {
        let files = plots::write_all(&report, &args.out).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
        println!("wrote {}", files.join(", "));
    }
    Ok(())
}

/// Arguments of `llmos demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs `llmos demo`.
pub fn demo(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos demo` is not built yet")
}
