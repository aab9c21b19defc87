//! Training a DQN in the twin: the entry point of `llmos train` and of the demo job.
//!
//! [`train`] loads the scenario, builds a [`TwinEnv`] (random windows of the training part
//! of the trace), creates a fresh agent or resumes one from a checkpoint, runs
//! [`train_dqn`], and writes into the output directory:
//!
//! - `metrics.jsonl` and `metrics.csv`: one row per episode (episodic return, length, ε,
//!   mean loss, mean Q, SLO attainment, cost, GPU-hours, counters);
//! - the checkpoint (`model.safetensors` + `checkpoint.json`, see [`super::checkpoint`]);
//! - `train.json`: the [`TrainSummary`].
//!
//! Every parameter is a field of [`TrainConfig`]; a TOML file with the same fields can be
//! given to the CLI with `--config`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::twin::Scenario;

use super::checkpoint::{self, Expected};
use super::dqn::{train_dqn, DqnAgent, DqnConfig, EpisodeRecord};
use super::encoding::ActionLayoutKind;
use super::env::{Env, EpisodeConfig, RewardConfig, TwinEnv};
use super::schedule::EpsilonSchedule;
use super::RlError;

/// Everything a training run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Scenario TOML to train in.
    pub scenario: PathBuf,
    /// Replace the scenario's trace file (e.g. a trace outside the repository).
    pub trace: Option<PathBuf>,
    /// Environment steps (control ticks) to train for.
    pub steps: u64,
    /// Seed of everything random in the run (overrides `dqn.seed`).
    pub seed: u64,
    /// Output directory (checkpoint and metrics).
    pub out: PathBuf,
    /// Resume from this checkpoint directory.
    pub resume: Option<PathBuf>,
    /// Factored branches or enumerated joint moves.
    pub action_layout: ActionLayoutKind,
    /// Replica deltas per slot (must contain 0).
    pub deltas: Vec<i32>,
    /// DQN hyperparameters.
    pub dqn: DqnConfig,
    /// Reward weights.
    pub reward: RewardConfig,
    /// Episode windows and load scaling.
    pub episodes: EpisodeConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            scenario: PathBuf::new(),
            trace: None,
            steps: 20_000,
            seed: 0,
            out: PathBuf::from("ckpt"),
            resume: None,
            action_layout: ActionLayoutKind::Factored,
            deltas: vec![-1, 0, 1, 3],
            dqn: DqnConfig {
                gamma: 0.97,
                n_step: 3,
                learning_starts: 500,
                epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 10_000 },
                target: super::dqn::TargetUpdate::Polyak { tau: 0.01 },
                ..Default::default()
            },
            reward: RewardConfig::default(),
            episodes: EpisodeConfig::default(),
        }
    }
}

/// What a training run produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainSummary {
    /// The checkpoint directory written.
    pub checkpoint: PathBuf,
    /// Environment steps in this run.
    pub env_steps: u64,
    /// Environment steps over the agent's life (including resumed ones).
    pub total_env_steps: u64,
    /// Gradient updates over the agent's life.
    pub total_updates: u64,
    /// Gradient updates in this run.
    pub updates: u64,
    /// Episodes finished in this run.
    pub episodes: u64,
    /// Mean return of the last 10 episodes.
    pub recent_return: f64,
    /// Mean SLO attainment of the last 10 episodes.
    pub recent_slo_attainment: f64,
    /// Wall time of the training loop, seconds.
    pub wall_s: f64,
    /// Environment (twin) steps per second, including learning.
    pub env_steps_per_s: f64,
    /// Gradient updates per second, including simulation.
    pub updates_per_s: f64,
}

fn io(path: &Path, e: std::io::Error) -> RlError {
    RlError::Io { path: path.display().to_string(), source: e }
}

/// Trains as configured; see the module docs.
pub fn train(cfg: &TrainConfig) -> Result<TrainSummary, RlError> {
    train_with_progress(cfg, &mut |_| {})
}

/// Like [`train`], calling `on_episode` after every episode (the CLI's progress bar).
pub fn train_with_progress(
    cfg: &TrainConfig,
    on_episode: &mut dyn FnMut(&EpisodeRecord),
) -> Result<TrainSummary, RlError> {
    let mut scenario = Scenario::load(&cfg.scenario).map_err(|e| RlError::Twin(e.to_string()))?;
    if let Some(t) = &cfg.trace {
        scenario.set_trace(t).map_err(|e| RlError::Twin(e.to_string()))?;
    }
    let mut env =
        TwinEnv::new(scenario, cfg.action_layout, cfg.deltas.clone(), cfg.reward.clone(), cfg.episodes.clone())?;
    let names = env.feature_names();
    let branches = env.action_branches();

    let mut agent = match &cfg.resume {
        Some(dir) => {
            let expected = Expected { feature_names: Some(&names), branches: Some(&branches) };
            let (mut a, _) = checkpoint::load(dir, &expected, cfg.dqn.device)?;
            a.normaliser.frozen = false;
            a
        }
        None => {
            let mut d = cfg.dqn.clone();
            d.seed = cfg.seed;
            DqnAgent::new(names.len(), &env.branch_sizes(), d)?
        }
    };

    fs::create_dir_all(&cfg.out).map_err(|e| io(&cfg.out, e))?;
    let jsonl_path = cfg.out.join("metrics.jsonl");
    let csv_path = cfg.out.join("metrics.csv");
    let append = cfg.resume.is_some() && jsonl_path.exists();
    let open = |p: &Path| {
        fs::OpenOptions::new().create(true).append(append).write(true).truncate(!append).open(p).map_err(|e| io(p, e))
    };
    let mut jsonl = std::io::BufWriter::new(open(&jsonl_path)?);
    let mut csv = csv::WriterBuilder::new().has_headers(!append).from_writer(open(&csv_path)?);
    let mut write_err: Option<RlError> = None;

    let updates_before = agent.updates;
    let t0 = Instant::now();
    let records = train_dqn(&mut agent, &mut env, cfg.steps, &mut |r| {
        if write_err.is_none() {
            let line = serde_json::to_string(r).unwrap_or_default();
            if let Err(e) = writeln!(jsonl, "{line}") {
                write_err = Some(io(&jsonl_path, e));
            }
            if let Err(e) = csv.serialize(r) {
                write_err = Some(RlError::Config(format!("{}: {e}", csv_path.display())));
            }
        }
        on_episode(r);
    })?;
    let wall_s = t0.elapsed().as_secs_f64();
    if let Some(e) = write_err {
        return Err(e);
    }
    jsonl.flush().map_err(|e| io(&jsonl_path, e))?;
    csv.flush().map_err(|e| io(&csv_path, e))?;

    let layout = env.encoder().layout().clone();
    let train_json = serde_json::to_value(cfg).ok();
    checkpoint::save(&cfg.out, &agent, names, branches, Some(layout), Some(env.action_layout().clone()), train_json)?;

    let tail: Vec<&EpisodeRecord> = records.iter().rev().take(10).collect();
    let mean = |f: &dyn Fn(&EpisodeRecord) -> f64| {
        let v: Vec<f64> = tail.iter().map(|r| f(r)).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let updates = agent.updates - updates_before;
    let summary = TrainSummary {
        checkpoint: cfg.out.clone(),
        env_steps: cfg.steps,
        total_env_steps: agent.env_steps,
        total_updates: agent.updates,
        updates,
        episodes: records.len() as u64,
        recent_return: mean(&|r| r.episodic_return),
        recent_slo_attainment: mean(&|r| r.slo_attainment),
        wall_s,
        env_steps_per_s: cfg.steps as f64 / wall_s.max(1e-9),
        updates_per_s: updates as f64 / wall_s.max(1e-9),
    };
    let p = cfg.out.join("train.json");
    let text =
        serde_json::to_vec_pretty(&summary).map_err(|e| RlError::Json { path: p.display().to_string(), source: e })?;
    checkpoint::write_atomic(&p, &text)?;
    Ok(summary)
}
