//! What the Pods of an `LLMPolicyTraining`'s Jobs run (`crate::controller::training`
//! creates the Jobs): `llmos train-job`, one index of the train Job, and `llmos
//! evaluate-candidates`, the evaluation Job.
//!
//! Both work under the training's directory on the volume shared with the operator,
//! `<mount>/trainings/<training>/`:
//!
//! - `candidate-<index>/`: index `index`'s checkpoint (`checkpoint.json`,
//!   `model.safetensors`, the training's metrics) and `candidate.json` (index, seed,
//!   SHA-256 digest as `llmos digest` prints it). It is written as
//!   `.tmp-candidate-<index>-<pid>/`, every file and the directory synced, then renamed
//!   into place and the parent synced: a killed index leaves only a `.tmp-` directory,
//!   which no reader lists and the index's next attempt deletes. A reader takes a
//!   candidate only when `candidate.json` is there and its digest matches the files.
//! - `work-<index>/`, `work-eval/`: the exported record and the generated scenarios.
//! - `evaluation.json`: the evaluation ([`TrainingEvaluation`]), written the same way
//!   (temporary file, sync, rename, sync) and also, compact and under 4 KiB, to the
//!   evaluation Pod's termination message, which the operator reads from the Pod's status.
//!
//! **Traffic.** With `--records DIR` the workload's recorded windows
//! ([`super::store::read_dir`]) are exported as an Azure-format trace
//! ([`super::export`], seed 0, so every index and the evaluation replay the same file).
//! The main scenario is `--scenario` with its trace replaced by that export, or, without
//! `--scenario`, one built from the workload's spec (`$LLMOS_WORKLOAD_SPEC`, JSON) with the
//! twin's default engine and cluster. Each `--public` trace (a CSV) becomes one more
//! scenario with the workload's spec, a `.toml` is taken as it is; training draws episodes
//! from all of them (`TrainConfig::mix`), the evaluation sums each seed's score over all
//! of them.
//!
//! **Score.** A run's score is the comparison harness's `objective`
//! ([`crate::eval::run_episode`]): the summed per-tick reward of the training config's
//! `[reward]` (the default weights without `--config`), the objective training maximises.
//! Every candidate and the incumbent run on the same seeds `0..seeds` (common random
//! numbers: the same arrivals per seed); the best candidate has the highest mean score,
//! and its paired differences (candidate − incumbent per seed) give the mean and the 95 %
//! half-width of [`crate::eval::stats::Estimate`]. The best of several candidates is
//! chosen on the same seeds its differences are reported on, which favours it slightly;
//! the promotion's shadow phase judges it again on live traffic.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crd::training::{CandidateRef, CandidateStatus, IncumbentRef, TrainingEvaluation};
use crate::crd::LLMWorkloadSpec;
use crate::twin::scenario::{RunWindow, ScenarioFile, WorkloadConfig};
use crate::twin::Scenario;

/// The environment variable holding the workload's spec (JSON) in the Jobs' Pods.
pub const WORKLOAD_SPEC_ENV: &str = "LLMOS_WORKLOAD_SPEC";
/// The environment variable the Job controller sets to an Indexed Job's completion index.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The file in a candidate directory that says it is complete.
pub const CANDIDATE_FILE: &str = "candidate.json";
/// The evaluation's file in the training's directory.
pub const EVALUATION_FILE: &str = "evaluation.json";
/// Most bytes of a Pod's termination message the kubelet keeps.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// The directory of index `index`'s candidate under the training's directory.
pub fn candidate_dir(root: &Path, index: u32) -> PathBuf {
    root.join(format!("candidate-{index}"))
}

/// What `candidate.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateFile {
    /// The train Job's completion index.
    pub index: u32,
    /// The training seed.
    pub seed: u64,
    /// SHA-256 of the checkpoint (`llmos digest`).
    pub digest: String,
    /// The algorithm (`dqn` or `ppo`).
    pub algorithm: String,
    /// Environment steps trained.
    pub steps: u64,
}

/// The traffic both subcommands build their scenarios from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrafficArgs {
    /// The workload's record directory (`<record-dir>/<namespace>_<name>`); its windows
    /// are exported as the main trace.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// A public trace (Azure-format CSV) or scenario TOML added to training and
    /// evaluation; repeatable.
    #[arg(long)]
    pub public: Vec<PathBuf>,
    /// A scenario TOML whose engine, cluster and fleet are used (its trace is replaced by
    /// the record); absent: one built from the workload's spec.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// The workload's spec as JSON (default: `$LLMOS_WORKLOAD_SPEC`); needed without
    /// `--scenario` and for public CSV traces.
    #[arg(long)]
    pub workload_spec: Option<String>,
}

/// Arguments of `llmos train-job`.
#[derive(clap::Args, Debug)]
pub struct TrainJobArgs {
    /// The training's directory on the shared volume (`<mount>/trainings/<training>`).
    #[arg(long)]
    pub root: PathBuf,
    /// This index (default: `$JOB_COMPLETION_INDEX`, set by the Job controller).
    #[arg(long)]
    pub index: Option<u32>,
    /// Seed of index 0; index `i` trains with `base_seed + i`.
    #[arg(long, default_value_t = 0)]
    pub base_seed: u64,
    /// `dqn` or `ppo`.
    #[arg(long, default_value = "ppo")]
    pub algorithm: String,
    /// Environment steps (control ticks).
    #[arg(long)]
    pub steps: u64,
    /// A training config TOML (`llmos train --config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Resume from this checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Train on the CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
    /// Also write `candidate.json` to this file (the Pod's termination message, which the
    /// operator reads to list the candidates while the others train).
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
    /// The traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// Arguments of `llmos evaluate-candidates`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// The training's directory on the shared volume (`<mount>/trainings/<training>`).
    #[arg(long)]
    pub root: PathBuf,
    /// Candidates the train Job should have written (indexes `0..N`); fewer complete
    /// candidates is an error naming the missing ones.
    #[arg(long)]
    pub candidates: u32,
    /// Paired evaluation seeds (`0..N`).
    #[arg(long, default_value_t = 3)]
    pub seeds: u32,
    /// `test` (the last 40 % of each trace) or `all`.
    #[arg(long, default_value = "test")]
    pub window: String,
    /// Stop each episode after this many simulated seconds.
    #[arg(long)]
    pub max_duration_s: Option<f64>,
    /// The training config TOML whose `[reward]` scores the runs (default weights without).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A learned checkpoint acting for the workload instead of its spec's policy (the
    /// incumbent); absent: the spec's policy.
    #[arg(long)]
    pub incumbent_checkpoint: Option<String>,
    /// Also write the result, compact, to this file (the Pod's termination message).
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
    /// The traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// Syncs a file's data to disk.
fn sync_file(path: &Path) -> anyhow::Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot sync", path.display()))
}

/// Syncs a directory's entries (a rename or a new file in it).
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: cannot sync the directory", path.display()))
}

/// Syncs every file under `dir`, then every directory bottom-up.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let p = e.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            sync_file(&p)?;
        }
    }
    sync_dir(dir)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over
/// `path`, the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    {
        let mut f = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
        f.sync_all().with_context(|| format!("{}: cannot sync", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

/// The workload's spec from `--workload-spec` or `$LLMOS_WORKLOAD_SPEC`.
fn workload_spec(traffic: &TrafficArgs) -> anyhow::Result<Option<LLMWorkloadSpec>> {
    let text = match &traffic.workload_spec {
        Some(t) => t.clone(),
        None => match std::env::var(WORKLOAD_SPEC_ENV) {
            Ok(t) if !t.trim().is_empty() => t,
            _ => return Ok(None),
        },
    };
    let spec: LLMWorkloadSpec = serde_json::from_str(&text)
        .with_context(|| format!("--workload-spec (or ${WORKLOAD_SPEC_ENV}) is not an LLMWorkload spec"))?;
    Ok(Some(spec))
}

/// A scenario file for `spec` replaying `trace`, with the twin's default engine and
/// cluster and one replica of each variant at time zero.
fn scenario_for(name: &str, spec: &LLMWorkloadSpec, trace: &Path) -> ScenarioFile {
    ScenarioFile {
        name: Some(name.to_string()),
        description: Some("generated by llmos train-job from the workload's spec".into()),
        spec: Some(spec.clone()),
        spec_file: None,
        workload: WorkloadConfig { trace: Some(trace.to_path_buf()), ..Default::default() },
        engine: Default::default(),
        cluster: Default::default(),
        initial_replicas: Vec::new(),
        max_duration_s: None,
        gpus: Vec::new(),
        models: Vec::new(),
        perf: Default::default(),
    }
}

/// The scenarios of a training or evaluation: the main one first (see the module docs),
/// written under `work` where generated. Each is `(scenario path, trace that replaces
/// its own)`.
pub fn scenarios(traffic: &TrafficArgs, work: &Path) -> anyhow::Result<Vec<(PathBuf, Option<PathBuf>)>> {
    // A generated scenario names its trace by path, and the scenario loader reads a
    // relative one from the scenario's own directory: with a relative `work` (`--root` of
    // a command run by hand) that path would be `work` twice. Absolute paths throughout.
    let work = &std::path::absolute(work).with_context(|| format!("{}: no absolute path", work.display()))?;
    fs::create_dir_all(work).with_context(|| format!("{}: cannot create", work.display()))?;
    let spec = workload_spec(traffic)?;
    let need_spec = |what: &str| {
        spec.clone().with_context(|| {
            format!("{what} needs the workload's spec: give --workload-spec or set ${WORKLOAD_SPEC_ENV}")
        })
    };
    let write = |name: &str, file: &ScenarioFile| -> anyhow::Result<PathBuf> {
        let path = work.join(format!("{name}.toml"));
        let text = toml::to_string(file).with_context(|| format!("cannot write scenario {name} as TOML"))?;
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    };
    let mut out = Vec::new();
    if let Some(dir) = &traffic.records {
        let read = super::store::read_dir(dir).with_context(|| format!("reading the record in {}", dir.display()))?;
        for w in &read.warnings {
            eprintln!("warning: {w}");
        }
        let csv = work.join("recorded.csv");
        let mut buf = Vec::new();
        let max_total = None;
        let s = super::export::write_azure_csv(
            &read.windows,
            &super::export::ExportConfig { seed: 0, max_total_tokens: max_total },
            &mut buf,
        )
        .with_context(|| format!("exporting the record in {}", dir.display()))?;
        write_atomic(&csv, &buf)?;
        eprintln!(
            "record {}: {} windows, {} requests exported to {}",
            dir.display(),
            s.windows,
            s.requests,
            csv.display()
        );
        match &traffic.scenario {
            Some(sc) => out.push((sc.clone(), Some(csv))),
            None => out
                .push((write("recorded", &scenario_for("recorded", &need_spec("the recorded traffic")?, &csv))?, None)),
        }
    } else if let Some(sc) = &traffic.scenario {
        out.push((sc.clone(), None));
    }
    for (i, p) in traffic.public.iter().enumerate() {
        if p.extension().is_some_and(|e| e == "toml") {
            out.push((p.clone(), None));
        } else {
            let abs = fs::canonicalize(p).with_context(|| format!("--public {}: no such trace", p.display()))?;
            let name = format!("public-{i}");
            out.push((write(&name, &scenario_for(&name, &need_spec("a public trace")?, &abs))?, None));
        }
    }
    if out.is_empty() {
        bail!("no traffic: give --records, --scenario or --public");
    }
    Ok(out)
}

/// The completion index: `--index`, else `$JOB_COMPLETION_INDEX`.
fn completion_index(arg: Option<u32>) -> anyhow::Result<u32> {
    if let Some(i) = arg {
        return Ok(i);
    }
    let v = std::env::var(COMPLETION_INDEX_ENV).with_context(|| {
        format!("no --index and no ${COMPLETION_INDEX_ENV} (set by the Job controller of an Indexed Job)")
    })?;
    v.trim().parse().with_context(|| format!("${COMPLETION_INDEX_ENV} = {v:?} is not an index"))
}

/// Deletes `.tmp-candidate-<index>-*` directories a killed attempt of this index left.
fn remove_leftovers(root: &Path, index: u32) -> anyhow::Result<()> {
    let prefix = format!(".tmp-candidate-{index}-");
    for e in fs::read_dir(root).with_context(|| format!("{}: cannot list", root.display()))? {
        let e = e.with_context(|| format!("{}: cannot list", root.display()))?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            eprintln!("removing {} (left by a killed attempt)", e.path().display());
            fs::remove_dir_all(e.path()).with_context(|| format!("{}: cannot remove", e.path().display()))?;
        }
    }
    Ok(())
}

/// Runs `llmos train-job`: trains index `$JOB_COMPLETION_INDEX` and publishes its
/// candidate atomically (see the module docs). Returns the candidate's directory.
pub fn train_job(args: TrainJobArgs) -> anyhow::Result<PathBuf> {
    let index = completion_index(args.index)?;
    let seed = args.base_seed.checked_add(u64::from(index)).context("--base-seed + index overflows")?;
    let root = &args.root;
    fs::create_dir_all(root).with_context(|| format!("{}: cannot create", root.display()))?;
    remove_leftovers(root, index)?;
    let sources = scenarios(&args.traffic, &root.join(format!("work-{index}")))?;
    let tmp = root.join(format!(".tmp-candidate-{index}-{}", std::process::id()));
    let (main, main_trace) = sources[0].clone();
    let mut cfg = crate::rl::cli::train_config(crate::rl::cli::TrainArgs {
        scenario: main,
        steps: Some(args.steps),
        seed: Some(seed),
        out: tmp.clone(),
        resume: args.resume.clone(),
        trace: main_trace,
        config: args.config.clone(),
        action_layout: None,
        capacities: None,
        cpu: args.cpu,
        algorithm: Some(args.algorithm.clone()),
    })?;
    for (scenario, trace) in sources.iter().skip(1) {
        if trace.is_some() {
            bail!("{}: only the main scenario's trace can be replaced", scenario.display());
        }
        cfg.mix.push(crate::rl::train::MixSource {
            scenario: scenario.clone(),
            weight: 1.0,
            episodes: cfg.episodes.clone(),
            validation: None,
        });
    }
    eprintln!(
        "train-job: index {index}, seed {seed}, {} {} steps on {} scenario(s) into {}",
        args.algorithm,
        args.steps,
        sources.len(),
        tmp.display()
    );
    let summary = crate::rl::train::train(&cfg).context("training failed")?;
    let digest = crate::rl::policy::checkpoint_digest(&tmp).with_context(|| format!("digest of {}", tmp.display()))?;
    let file =
        CandidateFile { index, seed, digest: digest.clone(), algorithm: args.algorithm.clone(), steps: args.steps };
    fs::write(tmp.join(CANDIDATE_FILE), serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("{}: cannot write {CANDIDATE_FILE}", tmp.display()))?;
    sync_tree(&tmp)?;
    let dest = candidate_dir(root, index);
    if dest.exists() {
        // An earlier attempt of this index finished (its Pod was counted failed after):
        // the new one replaces it; between the renames the candidate is absent, never torn.
        let stale = root.join(format!(".tmp-stale-candidate-{index}-{}", std::process::id()));
        fs::rename(&dest, &stale).with_context(|| format!("cannot move {} aside", dest.display()))?;
        fs::rename(&tmp, &dest).with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
        let _ = fs::remove_dir_all(&stale);
    } else {
        fs::rename(&tmp, &dest).with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    }
    sync_dir(root)?;
    if let Some(log) = &args.termination_log {
        fs::write(log, serde_json::to_vec(&file)?)
            .with_context(|| format!("{}: cannot write the termination message", log.display()))?;
    }
    println!(
        "candidate {index}: {} (sha256 {digest}); {} steps in {:.1} s, recent return {:.3}, SLO {:.1} %",
        dest.display(),
        summary.env_steps,
        summary.wall_s,
        summary.recent_return,
        summary.recent_slo_attainment * 100.0
    );
    Ok(dest)
}

/// A complete candidate read back from the volume.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundCandidate {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `candidate.json`.
    pub file: CandidateFile,
}

/// The complete candidates under `root`, by index: directories `candidate-<i>` whose
/// `candidate.json` names index `i` and whose files have the digest it states.
/// Temporary directories of killed writes are never read. Returns the candidates and,
/// per directory left out, why.
pub fn read_candidates(root: &Path) -> anyhow::Result<(Vec<FoundCandidate>, Vec<String>)> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for e in fs::read_dir(root).with_context(|| format!("{}: cannot list", root.display()))? {
        let e = e.with_context(|| format!("{}: cannot list", root.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(i) = name.strip_prefix("candidate-").and_then(|s| s.parse::<u32>().ok()) else { continue };
        let dir = e.path();
        let meta = dir.join(CANDIDATE_FILE);
        let file: CandidateFile = match fs::read(&meta)
            .map_err(|e| format!("no readable {CANDIDATE_FILE} ({e}): not complete"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("{CANDIDATE_FILE} is not valid: {e}")))
        {
            Ok(f) => f,
            Err(why) => {
                skipped.push(format!("{}: {why}", dir.display()));
                continue;
            }
        };
        if file.index != i {
            skipped.push(format!("{}: {CANDIDATE_FILE} names index {}", dir.display(), file.index));
            continue;
        }
        match crate::rl::policy::checkpoint_digest(&dir) {
            Ok(d) if d == file.digest => found.push(FoundCandidate { dir, file }),
            Ok(d) => {
                skipped.push(format!("{}: its files' digest {d} is not the {} it states", dir.display(), file.digest))
            }
            Err(e) => skipped.push(format!("{}: {e}", dir.display())),
        }
    }
    found.sort_by_key(|c| c.file.index);
    Ok((found, skipped))
}

/// The window fractions of `--window`.
fn window_fractions(window: &str) -> anyhow::Result<(f64, f64)> {
    Ok(match window {
        "test" => crate::eval::Window::Test.fractions(),
        "all" => crate::eval::Window::All.fractions(),
        other => bail!("--window must be `test` or `all`, got `{other}`"),
    })
}

/// The spec of a policy that is the learned checkpoint `checkpoint` (pinned by `digest`)
/// in place of `spec`'s own.
fn learned_spec(spec: &LLMWorkloadSpec, checkpoint: &str, digest: Option<&str>) -> LLMWorkloadSpec {
    let mut s = spec.clone();
    s.policy.kind = crate::crd::policy::PolicyKind::Dqn;
    let base = s.policy.dqn.take().unwrap_or_else(|| crate::crd::policy::DqnParams {
        checkpoint: String::new(),
        sha256: None,
        record_transitions: None,
        out_of_range: None,
    });
    s.policy.dqn = Some(crate::crd::policy::DqnParams {
        checkpoint: checkpoint.to_string(),
        sha256: digest.map(str::to_string),
        record_transitions: None,
        ..base
    });
    s
}

/// Scores of every policy on every seed, summed over the scenarios: `scores[p][seed]`.
fn score_all(
    scenarios: &[Scenario],
    specs: &[LLMWorkloadSpec],
    seeds: u32,
    window: (f64, f64),
    reward: &crate::control::RewardConfig,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let registry = crate::rl::registry();
    // Every policy is built once first, so a bad checkpoint fails before any run.
    for (p, spec) in specs.iter().enumerate() {
        registry.build(spec).map_err(|e| anyhow::anyhow!("policy {p}: {e}"))?;
    }
    let runs: Vec<(usize, usize, u32)> = (0..scenarios.len())
        .flat_map(|s| (0..specs.len()).flat_map(move |p| (0..seeds).map(move |k| (s, p, k))))
        .collect();
    let results: Vec<anyhow::Result<(usize, u32, f64)>> = runs
        .par_iter()
        .map(|&(s, p, k)| {
            let scenario = &scenarios[s];
            let mut policy = registry.build(&specs[p]).map_err(|e| anyhow::anyhow!("policy {p}: {e}"))?;
            let run = RunWindow::new(u64::from(k), window, 1.0);
            let mut twin =
                crate::twin::Twin::with_window(scenario, run).with_context(|| format!("scenario {}", scenario.name))?;
            let shield = crate::policy::shield::Shield::new(&specs[p]);
            let label = crate::eval::RunLabel { policy: "", seed: u64::from(k), load: 1.0 };
            let r = crate::eval::run_episode(&mut twin, policy.as_mut(), shield, label, reward);
            Ok((p, k, r.objective))
        })
        .collect();
    let mut scores = vec![vec![0.0; seeds as usize]; specs.len()];
    for r in results {
        let (p, k, objective) = r?;
        scores[p][k as usize] += objective;
    }
    Ok(scores)
}

/// The mean of `xs` (NaN when empty).
fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The evaluation's scenarios with their traces, cut to `max_duration_s` when given.
fn load_scenarios(
    sources: &[(PathBuf, Option<PathBuf>)],
    max_duration_s: Option<f64>,
) -> anyhow::Result<Vec<Scenario>> {
    let mut loaded = Vec::new();
    for (path, trace) in sources {
        let mut s = Scenario::load(path).with_context(|| format!("loading scenario {}", path.display()))?;
        if let Some(t) = trace {
            s.set_trace(t).with_context(|| format!("loading trace {}", t.display()))?;
        }
        if let Some(d) = max_duration_s {
            s.file.max_duration_s = Some(s.file.max_duration_s.map_or(d, |m| m.min(d)));
        }
        loaded.push(s);
    }
    Ok(loaded)
}

/// Runs the evaluation (see the module docs) and returns its result; `llmos
/// evaluate-candidates` writes it.
pub fn evaluate(args: &EvaluateArgs) -> anyhow::Result<TrainingEvaluation> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let window = window_fractions(&args.window)?;
    // Absolute, so the candidates' checkpoint paths in the result name them from anywhere.
    let root = std::path::absolute(&args.root).with_context(|| format!("{}: no absolute path", args.root.display()))?;
    let (found, skipped) = read_candidates(&root)?;
    for s in &skipped {
        eprintln!("warning: left out {s}");
    }
    let missing: Vec<u32> = (0..args.candidates).filter(|i| !found.iter().any(|c| c.file.index == *i)).collect();
    if !missing.is_empty() {
        bail!(
            "{}: no complete candidate of index(es) {missing:?} (of {}); {}",
            root.display(),
            args.candidates,
            if skipped.is_empty() { "nothing was left out".to_string() } else { skipped.join("; ") }
        );
    }
    let found: Vec<FoundCandidate> = found.into_iter().filter(|c| c.file.index < args.candidates).collect();
    let sources = scenarios(&args.traffic, &root.join("work-eval"))?;
    let loaded = load_scenarios(&sources, args.max_duration_s)?;
    // The workload's spec is the main scenario's (the operator's, when it built it).
    let spec = match workload_spec(&args.traffic)? {
        Some(s) => s,
        None => loaded[0].spec.clone(),
    };
    let reward = match &args.config {
        Some(p) => {
            // The reward the candidates were trained for (the defaults without a table).
            let text = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            crate::rl::train::TrainConfig::from_toml_str(&text, &p.display().to_string())?.reward
        }
        None => crate::control::RewardConfig::default(),
    };
    let incumbent_digest = match &args.incumbent_checkpoint {
        Some(c) => Some(
            crate::rl::policy::checkpoint_digest(&crate::rl::policy::resolve_checkpoint(c))
                .with_context(|| format!("--incumbent-checkpoint {c}"))?,
        ),
        None => None,
    };
    let incumbent_spec = match &args.incumbent_checkpoint {
        Some(c) => learned_spec(&spec, c, incumbent_digest.as_deref()),
        None => spec.clone(),
    };
    let mut specs: Vec<LLMWorkloadSpec> =
        found.iter().map(|c| learned_spec(&spec, &c.dir.display().to_string(), Some(&c.file.digest))).collect();
    specs.push(incumbent_spec.clone());
    let scores = score_all(&loaded, &specs, args.seeds, window, &reward)?;
    let inc = &scores[found.len()];
    let mut ranked: Vec<(usize, f64)> = (0..found.len()).map(|i| (i, mean(&scores[i]))).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let best = ranked[0].0;
    let diffs: Vec<f64> = scores[best].iter().zip(inc).map(|(c, i)| c - i).collect();
    let est = crate::eval::stats::Estimate::of(&diffs);
    let candidates = ranked
        .iter()
        .map(|&(i, m)| CandidateStatus {
            index: found[i].file.index,
            seed: found[i].file.seed,
            checkpoint: found[i].dir.display().to_string(),
            digest: found[i].file.digest.clone(),
            mean_score: Some(m),
        })
        .collect();
    Ok(TrainingEvaluation {
        candidate: CandidateRef {
            digest: found[best].file.digest.clone(),
            checkpoint: found[best].dir.display().to_string(),
        },
        incumbent: IncumbentRef {
            policy: incumbent_spec.policy.kind.as_str().to_string(),
            checkpoint: args.incumbent_checkpoint.clone(),
            digest: incumbent_digest,
        },
        paired_differences: diffs,
        mean: est.mean,
        ci95: est.ci95,
        seeds: args.seeds,
        score: format!(
            "objective (summed per-tick reward) over {} trace(s), window {}, seeds 0..{}",
            loaded.len(),
            args.window,
            args.seeds
        ),
        candidates,
        incumbent_mean_score: Some(mean(inc)),
    })
}

/// The evaluation as a termination message: compact JSON under 4 KiB, leaving out the
/// per-candidate list and then the score's description when needed. `None` when even
/// the essential fields do not fit.
pub fn termination_message(e: &TrainingEvaluation) -> Option<String> {
    let mut e = e.clone();
    for step in 0..3 {
        match step {
            1 => e.candidates.clear(),
            2 => e.score.clear(),
            _ => {}
        }
        if let Ok(s) = serde_json::to_string(&e) {
            if s.len() < TERMINATION_MESSAGE_MAX {
                return Some(s);
            }
        }
    }
    None
}

/// Runs `llmos evaluate-candidates`: evaluates, writes `evaluation.json` atomically and
/// the termination message, and prints the result.
pub fn evaluate_candidates(args: EvaluateArgs) -> anyhow::Result<TrainingEvaluation> {
    let result = evaluate(&args)?;
    let path = args.root.join(EVALUATION_FILE);
    write_atomic(&path, &serde_json::to_vec_pretty(&result)?)?;
    if let Some(log) = &args.termination_log {
        let msg = termination_message(&result).context("the evaluation does not fit a termination message")?;
        fs::write(log, msg).with_context(|| format!("{}: cannot write the termination message", log.display()))?;
    }
    println!(
        "best candidate {} (sha256 {}): score difference {:+.4} ± {:.4} (95 %, {} seeds) against the incumbent {}; wrote {}",
        result.candidate.checkpoint,
        result.candidate.digest,
        result.mean,
        result.ci95,
        result.seeds,
        result.incumbent.policy,
        path.display()
    );
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_termination_message_fits_in_4_kib() {
        let e = TrainingEvaluation {
            candidate: CandidateRef { digest: "a".repeat(64), checkpoint: "/v/trainings/t/candidate-0".into() },
            paired_differences: vec![-123.456789012345; 100],
            seeds: 100,
            candidates: (0..64)
                .map(|i| CandidateStatus {
                    index: i,
                    checkpoint: format!("/v/trainings/t/candidate-{i}"),
                    digest: "b".repeat(64),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let m = termination_message(&e).expect("fits once the candidates are left out");
        assert!(m.len() < TERMINATION_MESSAGE_MAX);
        let back: TrainingEvaluation = serde_json::from_str(&m).expect("reads back");
        assert_eq!(back.paired_differences.len(), 100);
        assert!(back.candidates.is_empty());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.json");
        write_atomic(&p, b"1").expect("first");
        write_atomic(&p, b"2").expect("second");
        assert_eq!(fs::read(&p).expect("read"), b"2");
        assert_eq!(fs::read_dir(d.path()).expect("list").count(), 1);
    }

    #[test]
    fn a_relative_work_directory_gives_a_scenario_that_loads() {
        use crate::learning::record::{TrafficWindow, RECORD_VERSION};
        use crate::learning::store::{RecordStore, StoreConfig};
        // Relative to the working directory of the test (the crate's root).
        let base = tempfile::tempdir_in("target").expect("tempdir under target/");
        let rel = base.path().strip_prefix(std::env::current_dir().expect("cwd")).unwrap_or(base.path()).to_path_buf();
        assert!(rel.is_relative(), "{}", rel.display());
        let records = rel.join("records/default_code");
        let (mut store, _) = RecordStore::open(&records, StoreConfig::default()).expect("store");
        for i in 0..4 {
            let mut w: TrafficWindow = serde_json::from_value(serde_json::json!({
                "version": RECORD_VERSION, "workload": "default/code",
                "start_unix_s": 1_800_000_000.0 + 10.0 * f64::from(i), "duration_s": 10.0,
                "arrivals": 20.0, "arrival_rate_rps": 2.0, "completions": 20.0,
                "prompt_tokens": {"bounds": [100.0, 1000.0], "counts": [0.0, 20.0, 0.0], "sum": 10000.0},
                "generation_tokens": {"bounds": [100.0, 1000.0], "counts": [20.0, 0.0, 0.0], "sum": 1000.0},
                "slo": {}, "fleet": []
            }))
            .expect("a window");
            w.slo_attainment = Some(1.0);
            store.append(&w).expect("append");
        }
        store.seal().expect("seal");
        let spec: LLMWorkloadSpec = serde_json::from_value(serde_json::json!({
            "variants": [{"name": "llama3-8b", "model": "llama-3-8b", "image": "vllm/vllm-openai:v0.6.3"}],
            "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 3.0}]
        }))
        .expect("a spec");
        let traffic = TrafficArgs {
            records: Some(records),
            workload_spec: Some(serde_json::to_string(&spec).expect("JSON")),
            ..Default::default()
        };
        let out = scenarios(&traffic, &rel.join("trainings/t/work-0")).expect("scenarios");
        assert!(out[0].0.is_absolute(), "{}", out[0].0.display());
        let s = Scenario::load(&out[0].0).expect("the generated scenario loads, its trace found");
        assert_eq!(s.spec.variants[0].name, "llama3-8b");
    }

    #[test]
    fn a_missing_index_is_named() {
        std::env::remove_var(COMPLETION_INDEX_ENV);
        let e = completion_index(None).unwrap_err().to_string();
        assert!(e.contains(COMPLETION_INDEX_ENV), "{e}");
        assert_eq!(completion_index(Some(3)).expect("given"), 3);
    }
}
