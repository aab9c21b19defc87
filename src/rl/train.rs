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
//! **Checkpoint selection.** With a [`ValidationConfig`], the greedy policy is run every
//! `validation.every` steps (and once at the end) on a *validation* window of the trace:
//! a window that training episodes never see and that lies before the test window
//! (`crate::twin::scenario::TRAIN_FRACTION`), at the configured loads and replay seeds, through the
//! same shield. The checkpoint in the output directory is then the one with the highest
//! validation score (by default the mean validation return, the objective the reward sums
//! to; with a mix, optionally each window's improvement on a reference policy:
//! [`super::validation`]), not simply the last weights, which are kept in `last/`. Each evaluation is a line of `validation.jsonl`.
//! DQN training is known to oscillate; this is the usual remedy, and it uses no test data.
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
use super::dqn::{train_dqn_with_eval, DqnAgent, DqnConfig, EpisodeRecord};
use super::encoding::{ActionLayoutKind, BranchSpec, CapacityMetric};
use super::env::{check_episodes, Env, EpisodeConfig, RewardConfig, Source, TwinEnv};
use super::mix::Randomisation;
use super::ppo::{train_ppo, PpoAgent, PpoConfig};
use super::schedule::EpsilonSchedule;
use super::validation::{reference_returns, validate};
pub use super::validation::{ValidationConfig, ValidationRecord, ValidationScore};
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
    /// Horizons (seconds) of the rate-history features (peak and mean arrival rate over
    /// each); empty for none. See [`super::encoding`].
    pub rate_history_s: Vec<f64>,
    /// Checkpoint selection on a held-out validation window; `None` keeps the last weights.
    pub validation: Option<ValidationConfig>,
    /// Cooldown-aware agent: the shield's remaining scale-down cooldown per slot is a
    /// feature, and scale-downs it would refuse are masked (see [`TwinEnv::with_cooldown`]).
    pub cooldown_aware: bool,
    /// The capacities per replica (requests/s) a slot can be sized for with
    /// `actionLayout = "capacity"` (see [`super::encoding::ActionLayout::capacity_target`]).
    pub capacities: Vec<f64>,
    /// What the capacity layout's capacities are per replica of: `arrivalRate` (req/s,
    /// the default) or `inFlight` (requests waiting and running).
    pub capacity_metric: CapacityMetric,
    /// The capacity layout's hold is an option like any other (`true`, the default), or
    /// is masked whenever a capacity is allowed (`false`), so the rule sizes every tick.
    pub capacity_hold: bool,
    /// The base policy of `actionLayout = "residual"`, in the command-line form (e.g.
    /// `forecast:capacity=1.3`): the network's options are offsets from its targets.
    pub residual_base: Option<String>,
    /// The learning algorithm: `dqn` (the `dqn` section) or `ppo` (the `ppo` section).
    pub algorithm: Algorithm,
    /// PPO hyperparameters (with `algorithm = "ppo"`).
    pub ppo: PpoConfig,
    /// Training across traffic: more scenarios episodes are drawn from, besides
    /// `scenario` (which always takes part, with weight `mainWeight`, `episodes` and
    /// `validation`). See [`super::mix`].
    pub mix: Vec<MixSource>,
    /// Relative frequency of `scenario`'s episodes in a mix (> 0).
    pub main_weight: f64,
    /// Per-episode randomisation of load, cold start, price and SLO targets.
    pub randomise: Randomisation,
}

/// One more scenario of a training mix (`[[mix]]` in the training config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MixSource {
    /// Scenario TOML, resolved against the working directory like `--scenario`.
    pub scenario: PathBuf,
    /// Relative frequency of its episodes (> 0; `scenario`'s is `mainWeight`).
    #[serde(default = "one")]
    pub weight: f64,
    /// How its episodes are cut: windows, length (a fraction of *this* scenario's
    /// traffic), loads.
    pub episodes: EpisodeConfig,
    /// Its validation window for checkpoint selection; none: not validated. Its `every`
    /// is not used: the run's `validation.every` says when all windows are validated.
    #[serde(default)]
    pub validation: Option<ValidationConfig>,
}

fn one() -> f64 {
    1.0
}

/// Which learner [`train`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// The DQN ([`super::dqn`]).
    #[default]
    Dqn,
    /// PPO ([`super::ppo`]); its checkpoint holds the actor, loadable as `kind: dqn`.
    Ppo,
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
            rate_history_s: Vec::new(),
            validation: None,
            cooldown_aware: false,
            residual_base: None,
            capacities: Vec::new(),
            capacity_metric: CapacityMetric::ArrivalRate,
            capacity_hold: true,
            algorithm: Algorithm::Dqn,
            ppo: PpoConfig::default(),
            mix: Vec::new(),
            main_weight: 1.0,
            randomise: Randomisation::default(),
        }
    }
}

impl TrainConfig {
    /// Parses a training config from TOML text (`origin` names it in errors, with the
    /// line) and checks it ([`TrainConfig::check`]).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<TrainConfig, RlError> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
            RlError::Config(format!("{origin}, line {line}: {}", e.message()))
        })?;
        cfg.check().map_err(|e| RlError::Config(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Checks every field that needs no file (the scenarios' own checks come when they
    /// are loaded): the learner's hyperparameters, the action deltas, the episodes of the
    /// run and of each mix source, the weights, the randomisation ranges, the rate-history
    /// horizons and the validation settings. Errors name the field.
    pub fn check(&self) -> Result<(), RlError> {
        match self.algorithm {
            Algorithm::Dqn => self.dqn.validate()?,
            Algorithm::Ppo => self.ppo.validate()?,
        }
        super::encoding::ActionLayout::new(self.action_layout, Vec::new(), self.deltas.clone())
            .with_capacities(self.capacities.clone())
            .with_capacity_rule(self.capacity_metric, self.capacity_hold)
            .check()
            .map_err(RlError::Config)?;
        check_episodes(&self.episodes)?;
        if !(self.main_weight.is_finite() && self.main_weight > 0.0) {
            return Err(RlError::Config(format!("mainWeight must be finite and > 0, got {}", self.main_weight)));
        }
        for (i, m) in self.mix.iter().enumerate() {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(RlError::Config(format!("mix[{i}].weight must be finite and > 0, got {}", m.weight)));
            }
            check_episodes(&m.episodes).map_err(|e| RlError::Config(format!("mix[{i}]: {e}")))?;
        }
        self.randomise.check()?;
        if let Some(h) = self.rate_history_s.iter().find(|h| !(h.is_finite() && **h > 0.0)) {
            return Err(RlError::Config(format!("rateHistoryS must hold finite horizons > 0, got {h}")));
        }
        if let Some(v) = &self.validation {
            v.check(self.episodes.train_window, 1.0)?;
        }
        Ok(())
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
    /// Environment steps of the selected checkpoint (the last step without validation).
    pub selected_env_steps: u64,
    /// Validation score of the selected checkpoint (`validation.score`; the mean return
    /// by default; NaN without validation).
    pub selected_validation_return: f64,
    /// Validations run.
    pub validations: u64,
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

/// The run's validation score.
fn score_of(cfg: &TrainConfig) -> ValidationScore {
    cfg.validation.as_ref().map(|v| v.score).unwrap_or_default()
}

/// The reference policy's return per validation window, when the run's score is relative
/// (computed once: the reference does not learn).
fn reference_of(cfg: &TrainConfig, traffic: &Traffic) -> Result<Option<Vec<f64>>, RlError> {
    match &cfg.validation {
        Some(v) if v.score != ValidationScore::MeanReturn => {
            let name = v.reference.as_deref().unwrap_or("hpa");
            Ok(Some(reference_returns(&traffic.validations, &cfg.reward, name)?))
        }
        _ => Ok(None),
    }
}

/// What a run trains and selects on.
struct Traffic {
    /// The workload's scenario (with `cfg.trace` in place of its own, if set).
    scenario: Scenario,
    /// The mix, `scenario` first; empty without `[[mix]]` and randomisation.
    sources: Vec<Source>,
    /// Validation sets: each scenario with its validation window.
    validations: Vec<(Scenario, ValidationConfig)>,
}

/// Loads the scenario (and a mix's), after checking that no validation window overlaps
/// its scenario's training window or test window.
fn load_traffic(cfg: &TrainConfig) -> Result<Traffic, RlError> {
    let mut scenario = Scenario::load(&cfg.scenario)?;
    if let Some(t) = &cfg.trace {
        scenario.set_trace(t)?;
    }
    let mut validations = Vec::new();
    if let Some(v) = &cfg.validation {
        v.check(cfg.episodes.train_window, test_start_of(&scenario))?;
        validations.push((scenario.clone(), v.clone()));
    }
    let mut sources = Vec::new();
    if !cfg.mix.is_empty() || !cfg.randomise.is_off() {
        sources.push(Source { scenario: scenario.clone(), weight: cfg.main_weight, episodes: cfg.episodes.clone() });
    }
    for (i, m) in cfg.mix.iter().enumerate() {
        let s = Scenario::load(&m.scenario)?;
        if let Some(v) = &m.validation {
            if cfg.validation.is_none() {
                return Err(RlError::Config(format!(
                    "mix[{i}] ({}) has a validation window but the run has no `validation` section (which sets how often checkpoints are selected)",
                    m.scenario.display()
                )));
            }
            v.check(m.episodes.train_window, test_start_of(&s))
                .map_err(|e| RlError::Config(format!("mix[{i}] ({}): {e}", m.scenario.display())))?;
            validations.push((s.clone(), v.clone()));
        }
        sources.push(Source { scenario: s, weight: m.weight, episodes: m.episodes.clone() });
    }
    Ok(Traffic { scenario, sources, validations })
}

/// Where the test window starts in `scenario`, as a fraction of its traffic: the last
/// 40 % of a trace (`--window test`, [`crate::twin::scenario::TRAIN_FRACTION`]), but 1 for
/// a ServeGen scenario, which is one slice of days whose test days are another scenario
/// file (`scenarios/servegen-m-small-70b-{train,test}.toml`): training and validation may
/// then split the whole slice.
pub fn test_start_of(scenario: &Scenario) -> f64 {
    if scenario.servegen.is_some() && scenario.trace.is_none() {
        1.0
    } else {
        crate::twin::scenario::TRAIN_FRACTION
    }
}

/// A training environment over the traffic with the config's actions, reward, episodes,
/// features and mix.
fn make_env(traffic: &Traffic, cfg: &TrainConfig) -> Result<TwinEnv, RlError> {
    let env = TwinEnv::new(
        traffic.scenario.clone(),
        cfg.action_layout,
        cfg.deltas.clone(),
        cfg.reward.clone(),
        cfg.episodes.clone(),
    )?
    .with_rate_history(&cfg.rate_history_s)
    .with_cooldown(cfg.cooldown_aware)
    .with_capacities(cfg.capacities.clone())?
    .with_capacity_rule(cfg.capacity_metric, cfg.capacity_hold)?
    .with_mix(traffic.sources.clone(), cfg.randomise.clone())?;
    match (&cfg.residual_base, cfg.action_layout) {
        (Some(b), _) => env.with_base(b),
        (None, ActionLayoutKind::Residual) => Err(RlError::Config(
            "actionLayout = \"residual\" needs residualBase (e.g. \"forecast:capacity=1.3\")".into(),
        )),
        (None, _) => Ok(env),
    }
}

/// Opens a training log: appended to when resuming, else written anew.
fn open_log(p: &Path, append: bool) -> Result<fs::File, RlError> {
    fs::OpenOptions::new().create(true).append(append).write(true).truncate(!append).open(p).map_err(|e| io(p, e))
}

/// The agent to train: resumed from `cfg.resume` (its normaliser unfrozen) or new.
fn make_agent(
    cfg: &TrainConfig,
    env: &TwinEnv,
    names: &[String],
    branches: &[BranchSpec],
) -> Result<DqnAgent, RlError> {
    Ok(match &cfg.resume {
        Some(dir) => {
            let expected = Expected { feature_names: Some(names), branches: Some(branches) };
            let (mut a, _) = checkpoint::load(dir, &expected, cfg.dqn.device)?;
            a.normaliser.frozen = false;
            a
        }
        None => {
            let mut d = cfg.dqn.clone();
            d.seed = cfg.seed;
            DqnAgent::new(names.len(), &env.branch_sizes(), d)?
        }
    })
}

/// What a training run measured besides its records.
struct RunFigures {
    updates: u64,
    validations: u64,
    wall_s: f64,
}

/// The run's summary, also written atomically to `train.json` in the output folder.
fn summarise(
    cfg: &TrainConfig,
    records: &[EpisodeRecord],
    agent: &DqnAgent,
    best: Option<(f64, u64)>,
    run: RunFigures,
) -> Result<TrainSummary, RlError> {
    let (selected_validation_return, selected_env_steps) = best.unwrap_or((f64::NAN, agent.env_steps));
    let tail: Vec<&EpisodeRecord> = records.iter().rev().take(10).collect();
    let mean = |f: &dyn Fn(&EpisodeRecord) -> f64| {
        let v: Vec<f64> = tail.iter().map(|r| f(r)).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let RunFigures { updates, validations, wall_s } = run;
    let summary = TrainSummary {
        checkpoint: cfg.out.clone(),
        env_steps: cfg.steps,
        total_env_steps: agent.env_steps,
        total_updates: agent.updates,
        updates,
        episodes: records.len() as u64,
        recent_return: mean(&|r| r.episodic_return),
        recent_slo_attainment: mean(&|r| r.slo_attainment),
        selected_env_steps,
        selected_validation_return,
        validations,
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

/// The per-episode logs of a run (`metrics.jsonl`, `metrics.csv`): appended to when
/// resuming. A write error is kept and returned by [`EpisodeLog::finish`], never
/// interrupting training.
struct EpisodeLog {
    jsonl_path: PathBuf,
    csv_path: PathBuf,
    jsonl: std::io::BufWriter<fs::File>,
    csv: csv::Writer<fs::File>,
    error: Option<RlError>,
}

impl EpisodeLog {
    fn open(out: &Path, append: bool) -> Result<Self, RlError> {
        let jsonl_path = out.join("metrics.jsonl");
        let csv_path = out.join("metrics.csv");
        let append = append && jsonl_path.exists();
        let jsonl = std::io::BufWriter::new(open_log(&jsonl_path, append)?);
        let csv = csv::WriterBuilder::new().has_headers(!append).from_writer(open_log(&csv_path, append)?);
        Ok(EpisodeLog { jsonl_path, csv_path, jsonl, csv, error: None })
    }

    fn write(&mut self, r: &EpisodeRecord) {
        if self.error.is_some() {
            return;
        }
        let line = serde_json::to_string(r).unwrap_or_default();
        if let Err(e) = writeln!(self.jsonl, "{line}") {
            self.error = Some(io(&self.jsonl_path, e));
        }
        if let Err(e) = self.csv.serialize(r) {
            self.error = Some(RlError::Config(format!("{}: {e}", self.csv_path.display())));
        }
    }

    fn finish(mut self) -> Result<(), RlError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.jsonl.flush().map_err(|e| io(&self.jsonl_path, e))?;
        self.csv.flush().map_err(|e| io(&self.csv_path, e))
    }
}

/// Checkpoint selection on the validation windows: keeps the best score
/// ([`ValidationRecord::score`]) and the `validation.jsonl` log.
struct Selection {
    path: PathBuf,
    log: Option<std::io::BufWriter<fs::File>>,
    best: Option<(f64, u64)>,
    validations: u64,
}

impl Selection {
    fn open(cfg: &TrainConfig, append: bool) -> Result<Self, RlError> {
        let path = cfg.out.join("validation.jsonl");
        let log = match &cfg.validation {
            Some(_) => Some(std::io::BufWriter::new(open_log(&path, append)?)),
            None => None,
        };
        Ok(Selection { path, log, best: None, validations: 0 })
    }

    /// Records one validation; when it is the best so far, marks it and calls `save`.
    fn record(&mut self, mut rec: ValidationRecord, save: impl FnOnce() -> Result<(), RlError>) -> Result<(), RlError> {
        self.validations += 1;
        if rec.score.is_finite() && self.best.is_none_or(|(b, _)| rec.score > b) {
            self.best = Some((rec.score, rec.env_steps));
            rec.best = true;
            save()?;
        }
        if let Some(w) = self.log.as_mut() {
            let line = serde_json::to_string(&rec).unwrap_or_default();
            writeln!(w, "{line}").and_then(|_| w.flush()).map_err(|e| io(&self.path, e))?;
        }
        Ok(())
    }
}

/// Like [`train`], calling `on_episode` after every episode (the CLI's progress bar).
pub fn train_with_progress(
    cfg: &TrainConfig,
    on_episode: &mut dyn FnMut(&EpisodeRecord),
) -> Result<TrainSummary, RlError> {
    cfg.check()?;
    if cfg.algorithm == Algorithm::Ppo {
        return train_ppo_run(cfg, on_episode);
    }
    let traffic = load_traffic(cfg)?;
    let mut env = make_env(&traffic, cfg)?;
    let names = env.feature_names();
    let branches = env.action_branches();

    let mut agent = make_agent(cfg, &env, &names, &branches)?;

    fs::create_dir_all(&cfg.out).map_err(|e| io(&cfg.out, e))?;
    let append = cfg.resume.is_some();
    let mut log = EpisodeLog::open(&cfg.out, append)?;

    let layout = env.encoder().layout().clone();
    let action_layout = env.action_layout().clone();
    let train_json = serde_json::to_value(cfg).ok();
    let save_to = |dir: &Path, agent: &DqnAgent| {
        checkpoint::save(
            dir,
            agent,
            names.clone(),
            branches.clone(),
            Some(layout.clone()),
            Some(action_layout.clone()),
            train_json.clone(),
        )
        .map(|_| ())
    };
    // Validation: a separate environment template (same layouts), its own log.
    let template = make_env(&traffic, cfg)?;
    let reference = reference_of(cfg, &traffic)?;
    let mut selection = Selection::open(cfg, append && cfg.out.join("validation.jsonl").exists())?;
    let mut run_validation = |agent: &DqnAgent| -> Result<(), RlError> {
        if cfg.validation.is_none() {
            return Ok(());
        }
        let rec = validate(agent, &traffic.validations, &template, &cfg.reward, score_of(cfg), reference.as_deref())?;
        selection.record(rec, || save_to(&cfg.out, agent))
    };

    let updates_before = agent.updates;
    let t0 = Instant::now();
    let every = cfg.validation.as_ref().map(|v| v.every).unwrap_or(0);
    let records = train_dqn_with_eval(
        &mut agent,
        &mut env,
        cfg.steps,
        &mut |r| {
            log.write(r);
            on_episode(r);
        },
        every,
        &mut run_validation,
    )?;
    let wall_s = t0.elapsed().as_secs_f64();
    log.finish()?;

    if cfg.validation.is_some() {
        // The final weights compete too, and are kept in `last/` either way.
        run_validation(&agent)?;
        save_to(&cfg.out.join("last"), &agent)?;
    } else {
        save_to(&cfg.out, &agent)?;
    }
    let run = RunFigures { updates: agent.updates - updates_before, validations: selection.validations, wall_s };
    summarise(cfg, &records, &agent, selection.best, run)
}

/// PPO's run: `ppo.numEnvs` twin environments (each its own episodes), the same logs,
/// validation and checkpoint selection as the DQN's, the actor saved as a checkpoint of
/// the DQN's format with `algorithm: ppo`.
fn train_ppo_run(cfg: &TrainConfig, on_episode: &mut dyn FnMut(&EpisodeRecord)) -> Result<TrainSummary, RlError> {
    if cfg.resume.is_some() {
        return Err(RlError::Config(
            "resume: a PPO checkpoint holds the actor only (not the critic); PPO training starts afresh".into(),
        ));
    }
    let traffic = load_traffic(cfg)?;
    let mut envs = (0..cfg.ppo.num_envs).map(|_| make_env(&traffic, cfg)).collect::<Result<Vec<_>, _>>()?;
    let names = envs[0].feature_names();
    let branches = envs[0].action_branches();
    let mut pcfg = cfg.ppo.clone();
    pcfg.seed = cfg.seed;
    let mut agent = PpoAgent::new(names.len(), &envs[0].branch_sizes(), pcfg)?;

    fs::create_dir_all(&cfg.out).map_err(|e| io(&cfg.out, e))?;
    let mut log = EpisodeLog::open(&cfg.out, false)?;

    let layout = envs[0].encoder().layout().clone();
    let action_layout = envs[0].action_layout().clone();
    let train_json = serde_json::to_value(cfg).ok();
    let save_to = |dir: &Path, greedy: &DqnAgent| {
        checkpoint::save_as(
            dir,
            greedy,
            Some("ppo"),
            names.clone(),
            branches.clone(),
            Some(layout.clone()),
            Some(action_layout.clone()),
            train_json.clone(),
        )
        .map(|_| ())
    };
    let template = make_env(&traffic, cfg)?;
    let reference = reference_of(cfg, &traffic)?;
    let mut selection = Selection::open(cfg, false)?;
    let mut run_validation = |agent: &PpoAgent| -> Result<(), RlError> {
        if cfg.validation.is_none() {
            return Ok(());
        }
        let greedy = agent.greedy_agent()?;
        let rec = validate(&greedy, &traffic.validations, &template, &cfg.reward, score_of(cfg), reference.as_deref())?;
        selection.record(rec, || save_to(&cfg.out, &greedy))
    };
    let t0 = Instant::now();
    let every = cfg.validation.as_ref().map(|v| v.every).unwrap_or(0);
    let (records, _) = train_ppo(
        &mut agent,
        &mut envs,
        cfg.steps,
        &mut |r| {
            log.write(r);
            on_episode(r);
        },
        every,
        &mut run_validation,
    )?;
    let wall_s = t0.elapsed().as_secs_f64();
    log.finish()?;
    if cfg.validation.is_some() {
        run_validation(&agent)?;
        save_to(&cfg.out.join("last"), &agent.greedy_agent()?)?;
    } else {
        save_to(&cfg.out, &agent.greedy_agent()?)?;
    }
    let greedy = agent.greedy_agent()?;
    let run = RunFigures { updates: agent.updates, validations: selection.validations, wall_s };
    let mut summary = summarise(cfg, &records, &greedy, selection.best, run)?;
    // Whole rollouts: the run may take a few steps more than asked.
    summary.env_steps = agent.env_steps;
    summary.env_steps_per_s = agent.env_steps as f64 / wall_s.max(1e-9);
    let p = cfg.out.join("train.json");
    let text =
        serde_json::to_vec_pretty(&summary).map_err(|e| RlError::Json { path: p.display().to_string(), source: e })?;
    checkpoint::write_atomic(&p, &text)?;
    Ok(summary)
}
