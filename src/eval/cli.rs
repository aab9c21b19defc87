//! Command-line entry points of the eval module.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::eval::{compare_with, plots, stats, CompareConfig, CompareReport, Window};
use crate::policy::registry::PolicyKindDef;
use crate::policy::static_policy::StaticPeak;

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
    /// Clairvoyant runs that trace the clairvoyant frontier (SLO attainment against
    /// GPU-hours; docs/policies.md): `auto` (0.6, 0.8, 1, 1.25, 1.6 and 2 × the
    /// `--replica-capacity-rps`; none without it), `none`, or capacities in requests/s per
    /// replica, comma-separated (e.g. `0.8,1.0,1.3,1.6,2.0`). They run as
    /// `clairvoyant:capacity=R` on the same arrivals and are never HPA/KPA references.
    #[arg(long, default_value = "auto")]
    pub clairvoyant_sweep: String,
    /// A TOML file whose `[reward]` table sets the per-tick reward summed into each
    /// episode's `objective` column (a training config such as
    /// `scenarios/train/azure-code-select.toml` works: its objective is then the return that
    /// training maximised). Default: the built-in weights of `control::RewardConfig`.
    #[arg(long)]
    pub reward_config: Option<PathBuf>,
    /// A report.json of an earlier comparison of the same runs (scenario, window, seeds):
    /// its rows for policies not run now join this comparison, and the GPU-hours saved
    /// against HPA/KPA and the frontier share are computed over all of them (to judge a
    /// policy trained later against references already run; `eval::merge`).
    #[arg(long)]
    pub with_report: Option<PathBuf>,
    /// Directory for report.json, report.csv and the plots.
    #[arg(long, default_value = "out/compare")]
    pub out: PathBuf,
    /// Skip the plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Write every episode's per-tick timeline to this directory, one CSV per (policy,
    /// seed, load): replicas asked for, applied and ready per slot, the shield's overrides,
    /// the policy's reason, arrivals, SLO met, cost and reward (`eval::timeline`).
    #[arg(long)]
    pub timeline: Option<PathBuf>,
}

/// The capacities of `--clairvoyant-sweep` (see [`CompareArgs::clairvoyant_sweep`]).
pub fn parse_sweep(text: &str, replica_capacity_rps: Option<f64>) -> anyhow::Result<Vec<f64>> {
    match text.trim() {
        "auto" => Ok(replica_capacity_rps.map(crate::eval::auto_sweep).unwrap_or_default()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(|x| {
                let v: f64 = x.trim().parse().with_context(|| format!("--clairvoyant-sweep: `{x}` is not a number"))?;
                anyhow::ensure!(v > 0.0 && v.is_finite(), "--clairvoyant-sweep: capacities must be positive, got {v}");
                Ok(v)
            })
            .collect(),
    }
}

/// Runs `llmos compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let clairvoyant_sweep = parse_sweep(&args.clairvoyant_sweep, args.replica_capacity_rps)?;
    if args.clairvoyant_sweep.trim() == "auto" && clairvoyant_sweep.is_empty() {
        eprintln!("no clairvoyant frontier: give --replica-capacity-rps (or --clairvoyant-sweep R1,R2,...)");
    }
    let cfg = CompareConfig {
        scenario: args.scenario.clone(),
        policies: args.policies.clone(),
        seeds: args.seeds,
        window: args.window,
        loads: args.load.clone(),
        replica_capacity_rps: args.replica_capacity_rps,
        max_duration_s: args.max_duration_s,
        clairvoyant_sweep,
        reward: match &args.reward_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                crate::control::RewardConfig::from_toml(&text, &path.display().to_string())?
            }
            None => crate::control::RewardConfig::default(),
        },
        timeline: args.timeline.is_some(),
    };
    let mut report = compare_with(&cfg, crate::rl::registry())?;
    if let Some(dir) = &args.timeline {
        write_timelines(&report, dir)?;
    }
    if let Some(path) = &args.with_report {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {origin}"))?;
        let earlier: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{origin} is not JSON"))?;
        let added = crate::eval::merge::merge_rows(&mut report, &earlier, &origin, crate::rl::registry())?;
        println!(
            "rows of {} from {origin} (not rerun)",
            if added.is_empty() { "no policy".into() } else { added.join(", ") }
        );
    }
    print_and_write(&report, &args.out, !args.no_plots)
}

/// Writes the recorded timeline of every episode of `report` into `dir`.
fn write_timelines(report: &CompareReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut n = 0;
    for e in &report.episodes {
        if let Some(t) = &e.timeline {
            let path = dir.join(crate::eval::timeline::file_name(&e.policy, e.seed, e.load));
            std::fs::write(&path, t.to_csv()).with_context(|| format!("writing {}", path.display()))?;
            n += 1;
        }
    }
    println!("{n} timelines in {}", dir.display());
    Ok(())
}

/// Prints the comparison table and writes report.json, report.csv and (optionally) the plots.
fn print_and_write(report: &CompareReport, out: &Path, plots_too: bool) -> anyhow::Result<()> {
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
    if !report.sweep.is_empty() {
        println!("clairvoyant frontier (sweep): {}", report.sweep.join(", "));
    }
    println!();
    print!("{}", stats::table(&report.rows, &report.loads));
    // Every policy against the HPA/KPA settings and the clairvoyant frontier.
    print!("{}", stats::figures_table(&report.figures, &report.loads));
    print!("{}", stats::figures_text(&report.figures));
    println!();
    print!("{}", stats::target_text(&report.target_winners));
    // Each policy against the HPA and KPA settings in the run at iso-SLO (the bar: ≥ 25 %
    // fewer GPU-hours than their front at the policy's SLO attainment, in a cell that
    // counts; `stats::Verdict::meets`).
    let learned = |k: &crate::policy::KindId| crate::rl::registry().get(k.name()).is_some_and(|e| e.learned());
    let is_hpa_kpa = |r: &stats::Row| r.is_hpa_kpa();
    // Every policy but the HPA/KPA settings and the clairvoyant runs gets the iso-SLO
    // verdict; the learned ones also the static-peak line.
    let judged = |k: &crate::policy::KindId| !stats::is_hpa_kpa_kind(Some(*k)) && !stats::is_clairvoyant_kind(Some(*k));
    // The heuristics a policy with several variants is judged against (`eval::quality`).
    let heuristic = |r: &stats::Row| r.kind.is_some_and(|k| !learned(&k) && !stats::is_clairvoyant_kind(Some(k)));
    for (p, k) in report.policies.iter().zip(&report.kinds).filter(|(_, k)| judged(k)) {
        let v = stats::verdicts(&report.rows, p, &is_hpa_kpa, report.slo_target_pct);
        if !v.is_empty() {
            println!();
            print!("{}", stats::verdict_text(&v, "HPA/KPA", 0.25));
        }
        if !learned(k) {
            continue;
        }
        // With several variants: good quality per dollar against the best heuristic at
        // equal or better SLO (`eval::quality`).
        let qv = super::quality::quality_verdicts(&report.rows, p, &heuristic, report.slo_target_pct);
        if !qv.is_empty() {
            print!("{}", super::quality::quality_verdict_text(&qv));
        }
        // The peak-sized static fleet knows the window's peak in advance: a reference an
        // online policy would have to match, said separately so it is not missed.
        for sv in
            stats::verdicts(&report.rows, p, &|b: &stats::Row| b.kind == Some(StaticPeak::ID), report.slo_target_pct)
        {
            println!(
                "load ×{}: against static-peak (sized from the window's own peak, not an online policy): {:.1} % at {:.2} GPU-h vs {:.1} % at {:.2} GPU-h: {}",
                sv.load,
                sv.slo_pct,
                sv.gpu_h,
                sv.baseline_slo_pct,
                sv.baseline_gpu_h,
                if sv.saved >= 0.0 && sv.slo_pct >= sv.baseline_slo_pct - 0.05 {
                    "the learned policy is as good or better on both"
                } else if sv.saved < 0.0 && sv.slo_pct <= sv.baseline_slo_pct + 0.05 {
                    "static-peak is as good or better on both"
                } else {
                    "neither is better on both"
                }
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let jp = out.join("report.json");
    std::fs::write(&jp, json).with_context(|| format!("writing {}", jp.display()))?;
    let cp = out.join("report.csv");
    std::fs::write(&cp, stats::csv_with_figures(&report.rows, &report.figures))
        .with_context(|| format!("writing {}", cp.display()))?;
    println!("wrote {} and {}", jp.display(), cp.display());
    if plots_too {
        let files = plots::write_all(&report, out)?;
        println!("wrote {}", files.join(", "));
    }
    Ok(())
}

/// Arguments of `llmos demo`, the built-in default job.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Scenario to train and compare in (a real trace; train on its first 60 %, judge on the last 40 %).
    #[arg(long, default_value = "scenarios/azure-code-llama3-8b-a100.toml")]
    pub scenario: PathBuf,
    /// Training settings (a TOML file of `TrainConfig` fields, as `llmos train --config`
    /// takes): PPO by default; `scenarios/train/azure-code-select.toml` trains the DQN
    /// (with `--steps 40000`).
    #[arg(long, default_value = "scenarios/train/azure-code-ppo.toml")]
    pub config: PathBuf,
    /// Training steps (control ticks) for each member.
    #[arg(long, default_value_t = 400_000)]
    pub steps: u64,
    /// Seed of the first training run (member k trains with seed + k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Policies trained (in parallel) and averaged into one ensemble policy; 1 for a single one.
    #[arg(long, default_value_t = 3)]
    pub members: u64,
    /// Evaluation seeds (every policy sees the same arrivals per seed).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Load multipliers of the test window (1.0 = the trace as recorded).
    #[arg(long, value_delimiter = ',', default_value = "0.5,1.0,1.5")]
    pub load: Vec<f64>,
    /// Baselines to compare with (names as in `llmos compare`).
    #[arg(long, default_value = "hpa,hpa:target=0.5,hpa:target=1,kpa,kpa:target=1,queue,static-peak")]
    pub baselines: String,
    /// Requests per second one replica sustains within the SLO, to size `static-peak`
    /// (1.3 for the Azure code trace, measured on its training window: docs/results.md).
    #[arg(long, default_value_t = 1.3)]
    pub replica_capacity_rps: f64,
    /// Use this trained checkpoint (or ensemble directory) instead of training.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Output directory (checkpoint, training metrics, report, plots).
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
}

/// Trains the demo's members in parallel (one thread each, a progress bar over all) and
/// returns the checkpoint to judge: the ensemble of the members, or the one member.
fn train_demo_members(args: &DemoArgs, base: &crate::rl::train::TrainConfig) -> anyhow::Result<PathBuf> {
    let members = args.members.max(1);
    let dir = args.out.join("ckpt");
    // A previous run's members would otherwise join the new ensemble.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    eprintln!(
        "[1/2] training {members} {} policies for {} steps each on the training part of {} (seeds {}..={}); numerics: {}",
        match base.algorithm {
            crate::rl::train::Algorithm::Dqn => "DQN",
            crate::rl::train::Algorithm::Ppo => "PPO",
        },
        args.steps,
        args.scenario.display(),
        args.seed,
        args.seed + members - 1,
        crate::numerics::pin_from_env()?
    );
    let bar = indicatif::ProgressBar::new(args.steps * members);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed_precise}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<anyhow::Result<crate::rl::train::TrainSummary>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..members)
            .map(|k| {
                let mut cfg = base.clone();
                cfg.scenario = args.scenario.clone();
                cfg.steps = args.steps;
                cfg.seed = args.seed + k;
                cfg.out = dir.join(format!("s{}", cfg.seed));
                let (bar, done) = (&bar, &done);
                sc.spawn(move || {
                    let mut last = 0u64;
                    let mut first: Option<u64> = None;
                    let s = crate::rl::train::train_with_progress(&cfg, &mut |r| {
                        let base = *first.get_or_insert(r.env_steps - r.length);
                        let now = (r.env_steps - base).min(cfg.steps);
                        let total = done.fetch_add(now - last, std::sync::atomic::Ordering::Relaxed) + now - last;
                        last = now;
                        bar.set_position(total);
                        bar.set_message(format!(
                            "seed {} episode {} SLO {:.1}%",
                            cfg.seed,
                            r.episode,
                            r.slo_attainment * 100.0
                        ));
                    })?;
                    Ok(s)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a training thread panicked"))))
            .collect()
    });
    bar.finish_and_clear();
    for r in results {
        let s = r?;
        eprintln!(
            "      trained {}: {} steps, {} updates in {:.0} s ({:.0} twin steps/s); kept step {} (validation return {:.2})",
            s.checkpoint.display(),
            s.env_steps,
            s.updates,
            s.wall_s,
            s.env_steps_per_s,
            s.selected_env_steps,
            s.selected_validation_return
        );
    }
    Ok(if members > 1 {
        let e = crate::rl::policy::Ensemble::write(&dir, crate::rl::policy::Combine::Mean)?;
        eprintln!("      ensemble of {} in {}", e.members.len(), dir.display());
        dir
    } else {
        dir.join(format!("s{}", args.seed))
    })
}

/// Runs `llmos demo`: trains small policies (PPO by default; an ensemble of `--members` seeds, in parallel) in
/// the twin on the training part of a real trace, each keeping its best checkpoint on a
/// held-out validation window, then compares the ensemble with the baselines on the test
/// window that neither saw.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let base: crate::rl::train::TrainConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    let ckpt = match &args.checkpoint {
        Some(c) => c.clone(),
        None => train_demo_members(&args, &base)?,
    };
    let policies = format!("{},dqn:{}", args.baselines, ckpt.display());
    eprintln!("[2/2] comparing {policies} on the test window, {} seeds", args.seeds);
    let cfg = CompareConfig {
        scenario: args.scenario.clone(),
        policies,
        seeds: args.seeds,
        window: Window::Test,
        loads: args.load.clone(),
        replica_capacity_rps: Some(args.replica_capacity_rps),
        max_duration_s: None,
        clairvoyant_sweep: Vec::new(),
        // The objective each episode reports is the return training maximised.
        reward: base.reward.clone(),
        timeline: false,
    };
    let report = compare_with(&cfg, crate::rl::registry())?;
    print_and_write(&report, &args.out, true)
}

/// Runs `llmos trace-stats` ([`crate::twin::cli::trace_stats`]) and, for a ServeGen folder
/// with `--plot`, draws its hourly rate over the days with the `--split-days` segments.
pub fn trace_stats(args: crate::twin::cli::TraceStatsArgs) -> anyhow::Result<()> {
    let (plot, dir, split) = (args.plot.clone(), args.file.clone(), args.split_days.clone());
    let stats = crate::twin::cli::trace_stats(args)?;
    let Some(path) = plot else { return Ok(()) };
    let Some(stats) = stats else {
        anyhow::bail!("--plot draws a ServeGen folder's rate; {} is a file", dir.display())
    };
    let days = stats.hourly_rps.len() as f64 / 24.0;
    let mut edges = vec![0.0];
    edges.extend(split.iter().copied().filter(|d| *d > 0.0 && *d < days));
    edges.push(days);
    let labels: Vec<String> = edges
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let name = match (edges.len(), i) {
                (4, 0) => "training ",
                (4, 1) => "validation ",
                (4, 2) => "test ",
                _ => "",
            };
            format!("{name}days {:.0}-{:.0}", w[0] + 1.0, w[1])
        })
        .collect();
    let splits: Vec<(f64, f64, &str)> = edges.windows(2).zip(&labels).map(|(w, l)| (w[0], w[1], l.as_str())).collect();
    let title = format!("{}: hourly arrival rate over {days:.0} days (rates at x1)", dir.display());
    plots::rate_over_days(&stats.hourly_rps, &splits, &title, &path)?;
    println!("wrote {}", path.display());
    Ok(())
}
