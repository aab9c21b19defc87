//! `llmos train`: trains a DQN in the twin with a progress bar; see [`super::train`].

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::train::{train_with_progress, TrainConfig};

/// Arguments of `llmos train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Scenario TOML to train in.
    #[arg(long)]
    pub scenario: PathBuf,
    /// Environment steps (control ticks) to train for.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory for the checkpoint and metrics.
    #[arg(long)]
    pub out: PathBuf,
    /// Resume from this checkpoint directory.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Use this trace file instead of the scenario's.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// A TOML file with TrainConfig fields (dqn, reward, episodes, actionLayout, deltas).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Action layout: factored (one branch per slot), joint (one move at a time),
    /// residual (offsets from `residualBase`) or capacity (a capacity per replica per slot).
    #[arg(long)]
    pub action_layout: Option<String>,
    /// Capacities per replica (requests/s) of the capacity layout, comma-separated
    /// (overrides the config's `capacities`).
    #[arg(long, value_delimiter = ',')]
    pub capacities: Option<Vec<f64>>,
    /// Train on the CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
    /// Learning algorithm: `dqn` (default) or `ppo` (overrides the config's `algorithm`).
    #[arg(long)]
    pub algorithm: Option<String>,
}

/// The training run `llmos train ARGS` asks for: the `--config` file (or the defaults)
/// with the command line's settings over it. `llmos train-job` builds its run with it too.
pub fn train_config(args: TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            TrainConfig::from_toml_str(&text, &p.display().to_string())?
        }
        None => TrainConfig::default(),
    };
    cfg.scenario = args.scenario;
    cfg.out = args.out;
    cfg.resume = args.resume.or(cfg.resume);
    cfg.trace = args.trace.or(cfg.trace);
    if let Some(s) = args.steps {
        cfg.steps = s;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(k) = args.action_layout {
        cfg.action_layout = match k.as_str() {
            "factored" => super::encoding::ActionLayoutKind::Factored,
            "joint" => super::encoding::ActionLayoutKind::Joint,
            "residual" => super::encoding::ActionLayoutKind::Residual,
            "capacity" => super::encoding::ActionLayoutKind::Capacity,
            other => {
                anyhow::bail!("--action-layout must be `factored`, `joint`, `residual` or `capacity`, got `{other}`")
            }
        };
    }
    if let Some(c) = args.capacities {
        cfg.capacities = c;
    }
    cfg.check()?;
    if let Some(a) = args.algorithm {
        cfg.algorithm = match a.as_str() {
            "dqn" => super::train::Algorithm::Dqn,
            "ppo" => super::train::Algorithm::Ppo,
            other => anyhow::bail!("--algorithm must be `dqn` or `ppo`, got `{other}`"),
        };
    }
    if args.cpu {
        cfg.dqn.device = super::dqn::DeviceChoice::Cpu;
        cfg.ppo.device = super::dqn::DeviceChoice::Cpu;
    }
    Ok(cfg)
}

/// Runs `llmos train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = train_config(args)?;
    let bar = ProgressBar::new(cfg.steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start_steps = std::cell::Cell::new(None::<u64>);
    let summary = train_with_progress(&cfg, &mut |r| {
        let base = *start_steps.get().get_or_insert(r.env_steps - r.length);
        start_steps.set(Some(base));
        bar.set_position(r.env_steps - base);
        bar.set_message(format!(
            "ep {} return {:.2} ε {:.3} loss {:.4} Q {:.2} SLO {:.1}% ${:.2}",
            r.episode,
            r.episodic_return,
            r.epsilon,
            r.mean_loss,
            r.mean_q,
            r.slo_attainment * 100.0,
            r.cost_usd
        ));
    })
    .context("training failed")?;
    bar.finish();
    if let Some(p) = crate::numerics::pinned() {
        println!("numerics: {p}");
    }
    println!(
        "trained {} steps ({} updates, {} episodes) in {:.1} s: {:.0} env steps/s, {:.0} updates/s; recent return {:.3}, SLO {:.2}%",
        summary.env_steps,
        summary.updates,
        summary.episodes,
        summary.wall_s,
        summary.env_steps_per_s,
        summary.updates_per_s,
        summary.recent_return,
        summary.recent_slo_attainment * 100.0
    );
    if summary.validations > 0 {
        println!(
            "checkpoint: {} (selected at step {} of {} validations, validation score {:.3}; last weights in {})",
            summary.checkpoint.display(),
            summary.selected_env_steps,
            summary.validations,
            summary.selected_validation_return,
            summary.checkpoint.join("last").display()
        );
    } else {
        println!("checkpoint: {}", summary.checkpoint.display());
    }
    Ok(())
}

/// Arguments of `llmos ensemble`.
#[derive(clap::Args, Debug)]
pub struct EnsembleArgs {
    /// A directory whose subdirectories are checkpoints of one layout (e.g. one config
    /// trained with several seeds into DIR/s0, DIR/s1, ...). `DIR/ensemble.json` is
    /// written; `dqn:DIR` then averages the members' Q-values.
    pub dir: PathBuf,
    /// How the members are combined: `mean` (their mean output decides) or `vote` (each
    /// member chooses, the most chosen option per branch wins).
    #[arg(long, default_value = "mean")]
    pub combine: String,
}

/// Arguments of `llmos digest`.
#[derive(clap::Args, Debug)]
pub struct DigestArgs {
    /// A checkpoint or ensemble directory, or the name of a shipped policy.
    pub checkpoint: String,
}

/// Runs `llmos digest`: prints the digest a spec pins with `policy.dqn.sha256`, and the
/// files it covers.
pub fn digest(args: DigestArgs) -> anyhow::Result<()> {
    let dir = super::policy::resolve_checkpoint(&args.checkpoint);
    let files = super::policy::checkpoint_files(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let d = super::policy::checkpoint_digest(&dir).with_context(|| format!("reading {}", dir.display()))?;
    println!("{d}");
    eprintln!("{}: sha256 over {}", dir.display(), files.join(", "));
    Ok(())
}

/// Runs `llmos ensemble`.
pub fn ensemble(args: EnsembleArgs) -> anyhow::Result<()> {
    let combine = match args.combine.as_str() {
        "mean" => super::policy::Combine::Mean,
        "vote" => super::policy::Combine::Vote,
        other => anyhow::bail!("--combine must be `mean` or `vote`, got `{other}`"),
    };
    let e = super::policy::Ensemble::write(&args.dir, combine).context("could not write the ensemble")?;
    println!(
        "{}: ensemble of {} checkpoints ({}); use it as dqn:{}",
        args.dir.join(super::policy::ENSEMBLE_FILE).display(),
        e.members.len(),
        e.members.join(", "),
        args.dir.display()
    );
    Ok(())
}
