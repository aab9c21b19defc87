//! The comparison harness: runs policies in the twin on identical traffic and reports
//! SLO attainment, latency, cost and stability with confidence intervals over seeds.
//!
//! # Fairness
//! - **Common random numbers**: for a given seed and load every policy sees the same
//!   arrivals (trace replay is deterministic; synthetic arrivals are seeded by the seed
//!   only), and starts from the scenario's initial fleet.
//! - **Same shield**: every decision goes through the [`Shield`] with the scenario's limits,
//!   so no policy gets more room than another.
//! - **Train/test split by time**: [`Window::Train`] is the first [`TRAIN_FRACTION`] of the
//!   trace's span and [`Window::Test`] the rest; a learned policy is trained on the first
//!   and judged on the second (traffic it never saw). [`Window::All`] is the whole trace.
//!
//! # Episode loop ([`run_episode`])
//! The one control loop ([`crate::control::ControlLoop`]): observe → `policy.decide` →
//! shield → `twin.apply` → `twin.step` → `policy.feedback(next observation, reward)`, the
//! reward being [`RewardConfig`]'s (the one training uses), summed into
//! [`EpisodeResult::objective`].
//!
//! Memory is bounded: per-request latencies stay in the twin's fixed-size histograms; an
//! episode keeps one point per control tick (thinned to at most [`MAX_SERIES_POINTS`]).
//!
//! [`dashboard`] draws the chart's Grafana panels from a Prometheus server (`llmos dashboard`).

pub mod cli;
pub mod cluster;
pub mod dashboard;
pub mod merge;
pub mod plots;
pub mod quality;
pub mod stats;
pub mod timeline;

use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::control::{ControlLoop, RewardConfig};
use crate::policy::registry::{
    ArrivalTimes, ArrivalTimesSource, BuildContext, EpisodeRun, KindId, PolicyError, Registry,
};
use crate::policy::shield::Shield;
use crate::policy::Policy;
use crate::twin::{Report, RunWindow, Scenario, Twin, TwinError};

pub use crate::policy::registry::ArrivalStats;
pub use crate::twin::scenario::{Window, TRAIN_FRACTION};
/// Most points of the replicas-over-time series kept per episode.
pub const MAX_SERIES_POINTS: usize = 4000;
/// Quantile levels at which latency CDFs are sampled.
pub const CDF_LEVELS: usize = 99;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The twin refused the scenario.
    #[error(transparent)]
    Twin(#[from] TwinError),
    /// A policy could not be built.
    #[error("policy `{label}`: {source}")]
    Policy {
        /// The policy's label.
        label: String,
        /// Why.
        source: PolicyError,
    },
    /// A bad harness setting.
    #[error("{0}")]
    Config(String),
    /// Writing outputs failed.
    #[error("{path}: {message}")]
    Output {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// The run of the twin a policy is built for: the arguments of [`Twin::with_window`]. It is
/// the [`EpisodeRun`] of the [`BuildContext`] the harness builds policies with.
#[derive(Clone, Copy)]
pub struct EpisodeContext<'a> {
    /// The scenario.
    pub scenario: &'a Scenario,
    /// The seed, window and load of the run.
    pub run: RunWindow,
}

impl EpisodeRun for EpisodeContext<'_> {
    fn cold_start_s(&self) -> Result<f64, PolicyError> {
        let mut cold = 0.0f64;
        for v in 0..self.scenario.spec.variants.len() {
            let c = self
                .scenario
                .cold_start_s(v)
                .map_err(|e| PolicyError::Run { what: "cold start".into(), source: Box::new(e) })?;
            cold = cold.max(c);
        }
        Ok(cold)
    }

    fn arrival_times(&self) -> Result<ArrivalTimesSource, PolicyError> {
        let run = self.run;
        // Fail now, not at the first tick, if the stream cannot be built.
        Twin::arrival_stream(self.scenario, run)
            .map_err(|e| PolicyError::Run { what: "arrivals".into(), source: Box::new(e) })?;
        let sc = self.scenario.clone();
        Ok(Box::new(move || {
            let mut stream = Twin::arrival_stream(&sc, run).ok()?;
            let times: ArrivalTimes =
                Box::new(std::iter::from_fn(move || stream.next_arrival().map(|x| x.at.as_secs_f64())));
            Some(times)
        }))
    }
}

/// Arrival statistics of a scenario's window at `load`: of the trace as recorded for
/// trace-driven scenarios, of seed 0's arrivals for synthetic and ServeGen ones (a ServeGen
/// slice is generated once more for this: about 0.35 s per million requests in the dev
/// profile); the peak is over 60 s bins from the window's start in every case. `None` when
/// the scenario has no arrivals to read.
pub fn arrival_stats(scenario: &Scenario, window: Window, load: f64) -> Option<ArrivalStats> {
    let (a, b) = window.fractions();
    let mut stream = match &scenario.trace {
        Some(trace) => crate::twin::traces::ArrivalStream::replay(trace.clone(), a, b, load).ok()?,
        None => Twin::arrival_stream(scenario, RunWindow::new(0, (a, b), load)).ok()?,
    };
    let mut bins: Vec<u32> = Vec::new();
    let (mut n, mut last) = (0u64, 0.0f64);
    while let Some(x) = stream.next_arrival() {
        let t = x.at.as_secs_f64();
        let i = (t / 60.0) as usize;
        if bins.len() <= i {
            bins.resize(i + 1, 0);
        }
        bins[i] += 1;
        n += 1;
        last = t;
    }
    if n == 0 {
        return Some(ArrivalStats::default());
    }
    let peak = bins.iter().copied().max().unwrap_or(0) as f64 / 60.0;
    Some(ArrivalStats { mean_rps: n as f64 / last.max(1.0), peak_rps: peak })
}

/// One point of an episode's time series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Simulated time, seconds.
    pub time_s: f64,
    /// Arrival rate over the tick, requests per second.
    pub arrival_rps: f64,
    /// Replicas asked for after the shield.
    pub desired_replicas: u32,
    /// Ready replicas at the start of the tick.
    pub ready_replicas: u32,
}

/// What one episode produced.
#[derive(Clone, Debug, Serialize)]
pub struct EpisodeResult {
    /// The policy's label.
    pub policy: String,
    /// The policy's kind (set by [`compare`]; `None` for a policy run by [`run_episode`]
    /// alone, which knows only its label).
    pub kind: Option<KindId>,
    /// The seed.
    pub seed: u64,
    /// The load multiplier.
    pub load: f64,
    /// The twin's report.
    pub report: Report,
    /// Changes of any slot's desired count (a measure of flapping).
    pub replica_changes: u64,
    /// Changes of the desired count of the largest variant's slots (the variant with the
    /// most GPUs per replica, whose cold starts cost most), when the workload has more
    /// than one variant; `None` with one variant.
    pub large_variant_changes: Option<u64>,
    /// Overrides by the shield.
    pub shield_overrides: u64,
    /// Control ticks.
    pub ticks: u64,
    /// Ticks whose observation had missing metrics (a new replica's first scrape, no
    /// serving replica): the policy could not see, and every policy but a static fleet
    /// holds on such a tick, as the operator does.
    pub blind_ticks: u64,
    /// The sum of the ticks' rewards ([`RewardConfig`]): the objective training maximises,
    /// for this run.
    pub objective: f64,
    /// Replicas and arrivals over time (at most [`MAX_SERIES_POINTS`]).
    #[serde(skip)]
    pub series: Vec<SeriesPoint>,
    /// TTFT, TPOT and E2E quantiles at levels `(i+1)/(CDF_LEVELS+1)`, seconds.
    #[serde(skip)]
    pub cdf: [Vec<f64>; 3],
    /// Every tick (what was asked, applied, ready, and why), when recorded
    /// ([`run_episode_recorded`], `llmos compare --timeline`).
    #[serde(skip)]
    pub timeline: Option<timeline::Timeline>,
}

/// Which run an episode is: the policy's label, the seed and the load multiplier.
#[derive(Clone, Copy, Debug)]
pub struct RunLabel<'a> {
    /// The policy's label (as in the report).
    pub policy: &'a str,
    /// The seed the twin was built with.
    pub seed: u64,
    /// The load multiplier the twin was built with.
    pub load: f64,
}

/// Runs one episode of `policy` in `twin` through `shield` until the twin is done, with
/// the one control loop ([`ControlLoop`]); `reward` gives the per-tick reward the policy
/// gets as feedback and whose sum is the episode's [`EpisodeResult::objective`].
pub fn run_episode(
    twin: &mut Twin,
    policy: &mut dyn Policy,
    shield: Shield,
    run: RunLabel<'_>,
    reward: &RewardConfig,
) -> EpisodeResult {
    run_episode_recorded(twin, policy, shield, run, reward, false)
}

/// [`run_episode`], keeping every tick in [`EpisodeResult::timeline`] when `record` is
/// set (a few hundred bytes a tick: for inspection, not for training).
pub fn run_episode_recorded(
    twin: &mut Twin,
    policy: &mut dyn Policy,
    shield: Shield,
    run: RunLabel<'_>,
    reward: &RewardConfig,
    record: bool,
) -> EpisodeResult {
    policy.reset();
    let mut timeline = record.then(timeline::Timeline::default);
    let interval = twin.control_interval_s().max(1e-9);
    let mut series = Vec::new();
    let (mut changes, mut ticks, mut blind_ticks, mut objective) = (0u64, 0u64, 0u64, 0.0);
    let mut control = ControlLoop::new(twin, 0, shield, reward.clone());
    let large = largest_variant(control.observation());
    let mut large_changes = 0u64;
    while !twin.is_done() {
        let tick = control.tick(twin, policy);
        if let Some(t) = timeline.as_mut() {
            t.push(&tick);
        }
        changes += u64::from(tick.changed_slots);
        if let Some(v) = large.as_deref() {
            let changed = crate::control::changed_targets(&tick.observation, &tick.outcome.decision);
            large_changes += changed.filter(|t| t.variant == v).count() as u64;
        }
        ticks += 1;
        objective += tick.reward;
        blind_ticks += u64::from(!tick.observation.is_complete());
        series.push(SeriesPoint {
            time_s: tick.stats.time_s,
            arrival_rps: tick.stats.arrived as f64 / interval,
            desired_replicas: tick.outcome.decision.total_replicas(),
            ready_replicas: tick.observation.ready_replicas(),
        });
        if series.len() >= 2 * MAX_SERIES_POINTS {
            // Thin by half, keeping bounded memory on long traces.
            series = series.into_iter().step_by(2).collect();
        }
    }
    let hs = twin.latency_histograms();
    let cdf = hs.map(|h| (1..=CDF_LEVELS).filter_map(|i| h.quantile(i as f64 / (CDF_LEVELS + 1) as f64)).collect());
    EpisodeResult {
        policy: run.policy.to_string(),
        kind: None,
        seed: run.seed,
        load: run.load,
        report: twin.report(),
        replica_changes: changes,
        large_variant_changes: large.map(|_| large_changes),
        shield_overrides: control.shield().overrides_total(),
        ticks,
        blind_ticks,
        objective,
        series,
        cdf,
        timeline,
    }
}

/// The variant with the most GPUs per replica, when the observation shows more than one
/// variant (the first such variant on a tie).
fn largest_variant(obs: &crate::policy::Observation) -> Option<String> {
    let largest = obs.slots.iter().reduce(|b, s| if s.gpus_per_replica > b.gpus_per_replica { s } else { b })?;
    obs.slots.iter().any(|s| s.variant != largest.variant).then(|| largest.variant.clone())
}

/// Settings of a comparison.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// Scenario file.
    pub scenario: PathBuf,
    /// Policy names, comma-separated (see `policy::build`).
    pub policies: String,
    /// Seeds `0..seeds`.
    pub seeds: u64,
    /// Trace window.
    pub window: Window,
    /// Load multipliers.
    pub loads: Vec<f64>,
    /// Requests per second one replica sustains (for `static-peak`/`static-mean`).
    pub replica_capacity_rps: Option<f64>,
    /// Stop each episode after this many simulated seconds (for quick runs).
    pub max_duration_s: Option<f64>,
    /// Capacities (requests/s per replica) of clairvoyant runs added to the policies, as
    /// `clairvoyant:capacity=R`, to trace the clairvoyant frontier (see [`auto_sweep`]);
    /// empty: none beyond those listed in `policies`.
    pub clairvoyant_sweep: Vec<f64>,
    /// The per-tick reward: fed back to policies and summed into each episode's objective
    /// (the same weights training uses by default).
    pub reward: RewardConfig,
    /// Keep every episode's per-tick timeline ([`EpisodeResult::timeline`]).
    pub timeline: bool,
}

/// Multipliers of `--replica-capacity-rps` in the default clairvoyant sweep: from well
/// provisioned (0.6 × the capacity: more replicas, higher SLO attainment) to lean (2 ×).
pub const AUTO_SWEEP: [f64; 6] = [0.6, 0.8, 1.0, 1.25, 1.6, 2.0];

/// The default clairvoyant sweep for a replica capacity of `capacity_rps`: [`AUTO_SWEEP`]
/// times it, rounded to 0.001 req/s.
pub fn auto_sweep(capacity_rps: f64) -> Vec<f64> {
    AUTO_SWEEP.iter().map(|m| (m * capacity_rps * 1000.0).round() / 1000.0).collect()
}

/// The policy label of a clairvoyant sweep point.
pub fn sweep_label(capacity_rps: f64) -> String {
    format!("clairvoyant:capacity={}", (capacity_rps * 1000.0).round() / 1000.0)
}

/// Results of a comparison: every episode plus aggregates per (policy, load).
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Scenario name.
    pub scenario: String,
    /// The window.
    pub window: Window,
    /// `(start_frac, end_frac)` of the window.
    pub window_fractions: (f64, f64),
    /// Policies in the order given.
    pub policies: Vec<String>,
    /// The kind of each policy, in the order of `policies`.
    pub kinds: Vec<KindId>,
    /// Loads.
    pub loads: Vec<f64>,
    /// Seeds.
    pub seeds: u64,
    /// Arrival statistics per load.
    pub arrivals: Vec<ArrivalStats>,
    /// The clairvoyant runs added by the sweep (`CompareConfig::clairvoyant_sweep`), also
    /// at the end of `policies`.
    pub sweep: Vec<String>,
    /// Aggregates per (policy, load).
    pub rows: Vec<stats::Row>,
    /// The clairvoyant frontier per load (every clairvoyant run, listed or swept).
    pub frontiers: Vec<stats::Frontier>,
    /// Per (policy, load): GPU-hours saved against HPA/KPA and the share of the frontier's
    /// saving captured.
    pub figures: Vec<stats::PolicyFigures>,
    /// The workload's SLO attainment target, % (`spec.slo.targetAttainment` × 100).
    pub slo_target_pct: f64,
    /// Per load: the policies meeting the SLO target, cheapest first.
    pub target_winners: Vec<stats::TargetWinner>,
    /// Every episode (reports only; series and CDFs are in the plots).
    pub episodes: Vec<EpisodeResult>,
}

/// Runs every policy × load × seed in parallel and aggregates, with the kinds of the
/// `policy` module ([`Registry::builtin`]: every kind but `dqn`).
pub fn compare(cfg: &CompareConfig) -> Result<CompareReport, EvalError> {
    compare_with(cfg, Registry::builtin())
}

/// Like [`compare`] with the kinds of `registry` (e.g. `crate::rl::registry()`, which
/// builds `dqn:PATH`).
pub fn compare_with(cfg: &CompareConfig, registry: &Registry) -> Result<CompareReport, EvalError> {
    let mut scenario = Scenario::load(&cfg.scenario)?;
    if let Some(d) = cfg.max_duration_s {
        scenario.file.max_duration_s = Some(scenario.file.max_duration_s.map_or(d, |m| m.min(d)));
    }
    if cfg.seeds == 0 {
        return Err(EvalError::Config("--seeds must be at least 1".into()));
    }
    if cfg.loads.is_empty() || cfg.loads.iter().any(|l| !(*l > 0.0) || !l.is_finite()) {
        return Err(EvalError::Config(format!("--load needs positive numbers, got {:?}", cfg.loads)));
    }
    let spec = scenario.spec.clone();
    let mut choices = registry
        .parse_list(&cfg.policies, &spec.policy)
        .map_err(|e| EvalError::Policy { label: cfg.policies.clone(), source: e })?;
    let mut sweep = Vec::new();
    for &c in &cfg.clairvoyant_sweep {
        if !(c > 0.0) || !c.is_finite() {
            return Err(EvalError::Config(format!("--clairvoyant-sweep needs positive capacities, got {c}")));
        }
        let label = sweep_label(c);
        if choices.iter().any(|x| x.label == label) {
            continue;
        }
        let choice =
            registry.parse(&label, &spec.policy).map_err(|e| EvalError::Policy { label: label.clone(), source: e })?;
        sweep.push(label);
        choices.push(choice);
    }
    let (a, b) = cfg.window.fractions();
    let arrivals: Vec<ArrivalStats> =
        cfg.loads.iter().map(|&l| arrival_stats(&scenario, cfg.window, l).unwrap_or_default()).collect();
    // Build every policy once up front so configuration errors surface before any run.
    for (li, _) in cfg.loads.iter().enumerate() {
        for c in &choices {
            let episode = EpisodeContext { scenario: &scenario, run: RunWindow::new(0, (a, b), cfg.loads[li]) };
            let ctx = BuildContext {
                spec: &spec,
                label: &c.label,
                arrivals: Some(arrivals[li]),
                replica_capacity_rps: cfg.replica_capacity_rps,
                episode: Some(&episode),
            };
            c.build(&ctx).map_err(|e| EvalError::Policy { label: c.label.clone(), source: e })?;
        }
    }
    let jobs: Vec<(usize, f64, usize, u64)> = (cfg.loads.iter().enumerate())
        .flat_map(|(li, &load)| {
            (0..choices.len()).flat_map(move |ci| (0..cfg.seeds).map(move |seed| (li, load, ci, seed)))
        })
        .collect();
    let results: Vec<Result<EpisodeResult, EvalError>> = jobs
        .par_iter()
        .map(|&(li, load, ci, seed)| {
            let c = &choices[ci];
            let run = RunWindow::new(seed, (a, b), load);
            let episode = EpisodeContext { scenario: &scenario, run };
            let ctx = BuildContext {
                spec: &spec,
                label: &c.label,
                arrivals: Some(arrivals[li]),
                replica_capacity_rps: cfg.replica_capacity_rps,
                episode: Some(&episode),
            };
            let mut policy = c.build(&ctx).map_err(|e| EvalError::Policy { label: c.label.clone(), source: e })?;
            let mut twin = Twin::with_window(&scenario, run)?;
            let shield = Shield::new(&spec);
            let label = RunLabel { policy: &c.label, seed, load };
            let mut result = run_episode_recorded(&mut twin, policy.as_mut(), shield, label, &cfg.reward, cfg.timeline);
            result.kind = Some(c.kind());
            Ok(result)
        })
        .collect();
    let episodes = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let labels: Vec<String> = choices.iter().map(|c| c.label.clone()).collect();
    let rows = stats::aggregate(&episodes, &labels, &cfg.loads);
    let frontiers = stats::frontiers(&rows, &cfg.loads);
    let figures = stats::policy_figures(&rows);
    let slo_target_pct = scenario.spec.slo.target_attainment * 100.0;
    Ok(CompareReport {
        target_winners: stats::target_winners(&rows, &cfg.loads, slo_target_pct),
        scenario: scenario.file.name.clone().unwrap_or_else(|| cfg.scenario.display().to_string()),
        window: cfg.window,
        window_fractions: (a, b),
        policies: labels,
        kinds: choices.iter().map(|c| c.kind()).collect(),
        loads: cfg.loads.clone(),
        seeds: cfg.seeds,
        arrivals,
        sweep,
        rows,
        frontiers,
        figures,
        slo_target_pct,
        episodes,
    })
}
