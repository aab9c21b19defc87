//! The trained DQN as a [`Policy`]: greedy, masked by the workload's limits.
//!
//! [`DqnPolicy::load`] reads a checkpoint directory (see [`super::checkpoint`]) and checks
//! that its observation and action layouts match the workload's spec, so a checkpoint
//! trained for other variants or pools is refused with an error naming the difference.
//! Each decision encodes the observation, normalises it with the frozen statistics,
//! takes the highest-valued *allowed* option per branch (no exploration) and turns the
//! deltas into desired replicas; the shield then clamps it like any policy's decision.
//! On an incomplete observation (missing metrics) it holds.
//!
//! With `record_transitions` set, every (observation, action, reward, next observation,
//! next mask) seen through [`Policy::feedback`] is appended as one JSON line to
//! `transitions.jsonl` in that directory, for offline retraining.
//!
//! [`Dqn`] is the `dqn` policy kind (`kind: dqn`, `dqn:PATH`), registered in
//! [`crate::rl::registry`]: the operator and the comparison harness build it from there.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::{DqnParams, PolicyKind, PolicySpec};
use crate::policy::registry::{invalid, BuildContext, KindId, PolicyError, PolicyKindDef, Positional};
use crate::policy::{Decision, Observation, Policy};

use super::checkpoint::{self, Expected};
use super::dqn::{masked_argmax, DeviceChoice, DqnAgent};
use super::encoding::{ActionLayout, ActionLimits, ObsEncoder, WorkloadLayout};
use super::RlError;

/// One recorded transition.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordedTransition<'a> {
    time_s: f64,
    obs: &'a [f32],
    action: &'a [usize],
    reward: f64,
    next_obs: &'a [f32],
    next_mask: &'a [bool],
}

/// The file that makes a directory an ensemble of checkpoints (see [`Ensemble`]).
pub const ENSEMBLE_FILE: &str = "ensemble.json";

/// An ensemble: checkpoints of the same layouts (typically one config trained with several
/// seeds) whose Q-values are averaged before the greedy choice. DQN training is noisy from
/// seed to seed; averaging the members' value estimates gives a steadier policy than any
/// one of them (ensembling / averaged DQN). Written by `llmos ensemble DIR`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ensemble {
    /// Member checkpoint directories, relative to the ensemble's directory.
    pub members: Vec<String>,
}

impl Ensemble {
    /// Reads `dir/ensemble.json`, or `None` when `dir` is a plain checkpoint.
    pub fn read(dir: &Path) -> Result<Option<Ensemble>, RlError> {
        let p = dir.join(ENSEMBLE_FILE);
        if !p.exists() {
            return Ok(None);
        }
        let text = fs::read(&p).map_err(|e| RlError::Io { path: p.display().to_string(), source: e })?;
        let e: Ensemble =
            serde_json::from_slice(&text).map_err(|e| RlError::Json { path: p.display().to_string(), source: e })?;
        if e.members.is_empty() {
            return Err(RlError::Checkpoint { path: p.display().to_string(), message: "lists no members".into() });
        }
        Ok(Some(e))
    }

    /// Makes `dir` an ensemble of every checkpoint directly under it (sorted by name), after
    /// checking that they share the observation and action layouts; returns the members.
    pub fn write(dir: &Path) -> Result<Ensemble, RlError> {
        let rd = fs::read_dir(dir).map_err(|e| RlError::Io { path: dir.display().to_string(), source: e })?;
        let mut members: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(checkpoint::META_FILE).is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        members.sort();
        let Some(first) = members.first() else {
            return Err(RlError::Checkpoint {
                path: dir.display().to_string(),
                message: "has no checkpoint directories to make an ensemble of".into(),
            });
        };
        let m0 = checkpoint::read_meta(&dir.join(first))?;
        for m in &members[1..] {
            let meta = checkpoint::read_meta(&dir.join(m))?;
            let differs = if meta.feature_names != m0.feature_names {
                Some("observation features")
            } else if meta.branches != m0.branches || meta.action_layout != m0.action_layout {
                Some("action layout")
            } else {
                None
            };
            if let Some(what) = differs {
                return Err(RlError::Checkpoint {
                    path: dir.join(m).display().to_string(),
                    message: format!("its {what} differ from {first}'s; an ensemble needs one layout"),
                });
            }
        }
        let e = Ensemble { members };
        let p = dir.join(ENSEMBLE_FILE);
        let text =
            serde_json::to_vec_pretty(&e).map_err(|e| RlError::Json { path: p.display().to_string(), source: e })?;
        checkpoint::write_atomic(&p, &text)?;
        Ok(e)
    }
}

/// A greedy policy from a trained DQN checkpoint (or an [`Ensemble`] of them).
pub struct DqnPolicy {
    agents: Vec<DqnAgent>,
    encoder: ObsEncoder,
    actions: ActionLayout,
    limits: ActionLimits,
    last: Option<(Vec<f32>, Vec<usize>)>,
    recorder: Option<(PathBuf, BufWriter<fs::File>)>,
    record_errors: u64,
}

impl std::fmt::Debug for DqnPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DqnPolicy").field("agents", &self.agents).finish()
    }
}

impl DqnPolicy {
    /// Loads the checkpoint in `dir` for a workload with `spec`, on CUDA when available.
    pub fn load(dir: &Path, spec: &LLMWorkloadSpec) -> Result<Self, RlError> {
        Self::load_on(dir, spec, DeviceChoice::Auto)
    }

    /// Loads the checkpoint (or ensemble) in `dir` for `spec` on the chosen device.
    pub fn load_on(dir: &Path, spec: &LLMWorkloadSpec, device: DeviceChoice) -> Result<Self, RlError> {
        let dirs: Vec<std::path::PathBuf> = match Ensemble::read(dir)? {
            Some(e) => e.members.iter().map(|m| dir.join(m)).collect(),
            None => vec![dir.to_path_buf()],
        };
        let meta = checkpoint::read_meta(&dirs[0])?;
        let stored = meta.action_layout.clone().ok_or_else(|| RlError::Checkpoint {
            path: dir.display().to_string(),
            message: "has no action layout (it was not trained for a workload)".into(),
        })?;
        let history = meta.workload.as_ref().map(|w| w.rate_history_s.clone()).unwrap_or_default();
        let cooldown = meta.workload.as_ref().is_some_and(|w| w.cooldown_feature);
        let layout = WorkloadLayout::from_spec(spec).with_rate_history(&history).with_cooldown_feature(cooldown);
        let encoder = ObsEncoder::new(layout.clone());
        let actions = ActionLayout::new(stored.kind, layout.slots.clone(), stored.deltas.clone())
            .with_mask_cooldown(stored.mask_cooldown);
        let names = encoder.feature_names();
        let branches = actions.branches();
        let expected = Expected { feature_names: Some(&names), branches: Some(&branches) };
        let agents = dirs
            .iter()
            .map(|d| {
                let (a, m) = checkpoint::load(d, &expected, device)?;
                // Features and branches are checked above; the masking rule and the encoder's
                // options must agree too, or the members would not answer the same question.
                if m.action_layout != meta.action_layout || m.workload != meta.workload {
                    return Err(RlError::Checkpoint {
                        path: d.display().to_string(),
                        message: format!(
                            "its action layout or encoder options differ from {}'s; an ensemble needs one layout",
                            dirs[0].display()
                        ),
                    });
                }
                Ok(a)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DqnPolicy {
            agents,
            encoder,
            limits: ActionLimits::from_spec(spec, &layout),
            actions,
            last: None,
            recorder: None,
            record_errors: 0,
        })
    }

    /// Appends transitions to `dir/transitions.jsonl` from now on.
    pub fn record_transitions(&mut self, dir: &Path) -> Result<(), RlError> {
        fs::create_dir_all(dir).map_err(|e| RlError::Io { path: dir.display().to_string(), source: e })?;
        let path = dir.join("transitions.jsonl");
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| RlError::Io { path: path.display().to_string(), source: e })?;
        self.recorder = Some((path, BufWriter::new(f)));
        Ok(())
    }

    /// Transitions that could not be written (the recorder never stops decisions).
    pub fn record_errors(&self) -> u64 {
        self.record_errors
    }

    /// Q-values of an observation, flattened over branches (for inspection and shadow
    /// mode); the members' mean for an ensemble.
    pub fn q_values(&self, obs: &Observation) -> Vec<f32> {
        mean_q(&self.agents, &self.encoder.features(obs))
    }

    /// Number of checkpoints behind the policy (1, or an ensemble's members).
    pub fn members(&self) -> usize {
        self.agents.len()
    }
}

impl Policy for DqnPolicy {
    fn name(&self) -> &str {
        "dqn"
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        if !obs.is_complete() {
            self.last = None;
            return Decision::hold(obs, format!("dqn: holding, missing metrics: {}", obs.missing.join(", ")));
        }
        let (d, x, a) = greedy_decision(&self.agents, &mut self.encoder, &self.actions, &self.limits, obs);
        self.last = Some((x, a));
        d
    }

    fn reset(&mut self) {
        self.last = None;
        self.encoder.reset();
    }

    fn feedback(&mut self, next: &Observation, reward: f64) {
        let Some((path, w)) = self.recorder.as_mut() else { return };
        let Some((obs, action)) = self.last.as_ref() else { return };
        let next_obs = self.encoder.encode(next);
        let next_mask = self.actions.mask(next, &self.limits);
        let t =
            RecordedTransition { time_s: next.time_s, obs, action, reward, next_obs: &next_obs, next_mask: &next_mask };
        let ok =
            serde_json::to_string(&t).ok().and_then(|line| writeln!(w, "{line}").ok()).and_then(|_| w.flush().ok());
        if ok.is_none() {
            self.record_errors += 1;
            tracing::warn!(path = %path.display(), "could not record a transition");
        }
    }
}

/// The mean of the agents' Q-values for raw features `x` (one agent: its own).
fn mean_q(agents: &[DqnAgent], x: &[f32]) -> Vec<f32> {
    let mut q = agents.first().map(|a| a.q_values(x)).unwrap_or_default();
    for a in agents.iter().skip(1) {
        for (s, v) in q.iter_mut().zip(a.q_values(x)) {
            *s += v;
        }
    }
    let n = agents.len().max(1) as f32;
    q.iter_mut().for_each(|v| *v /= n);
    q
}

/// One greedy decision of `agents` (one checkpoint, or an ensemble whose Q-values are
/// averaged) on `obs`: encodes it (recording it in the encoder's rate history), takes the
/// best allowed option per branch and turns the deltas into desired replicas. Returns the
/// decision, the raw features and the chosen options. What [`DqnPolicy`] does on a
/// complete observation, and what training's validation runs.
pub fn greedy_decision(
    agents: &[DqnAgent],
    encoder: &mut ObsEncoder,
    actions: &ActionLayout,
    limits: &ActionLimits,
    obs: &Observation,
) -> (Decision, Vec<f32>, Vec<usize>) {
    let x = encoder.encode(obs);
    let mask = actions.mask(obs, limits);
    let sizes = agents.first().map(|a| a.branch_sizes().to_vec()).unwrap_or_default();
    let a = masked_argmax(&mean_q(agents, &x), &mask, &sizes);
    let deltas = actions.slot_deltas(&a);
    let moves: Vec<String> = actions
        .slots
        .iter()
        .zip(&deltas)
        .filter(|(_, d)| **d != 0)
        .map(|(s, d)| format!("{}/{} {d:+}", s.variant, s.pool))
        .collect();
    let reason = if moves.is_empty() { "dqn: hold".to_string() } else { format!("dqn: {}", moves.join(", ")) };
    (actions.decision(&a, obs, &reason), x, a)
}

/// The `dqn` kind: a trained checkpoint (`kind: dqn` with `policy.dqn`, or `dqn:PATH`).
pub struct Dqn;

impl PolicyKindDef for Dqn {
    type Params = DqnParams;
    const ID: KindId = KindId("dqn");
    const USAGE: &'static str = "dqn:PATH (a trained checkpoint directory)";
    const KEYS: &'static str = "PATH (dqn:PATH)";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Dqn);
    const POSITIONAL: Positional = Positional::Rest("checkpoint");
    const LEARNED: bool = true;

    fn from_section(&self, p: &PolicySpec) -> Result<DqnParams, PolicyError> {
        p.dqn.clone().ok_or_else(|| PolicyError::Missing {
            field: "spec.policy.dqn.checkpoint".into(),
            message: "kind `dqn` needs `policy.dqn.checkpoint`, the directory of a trained checkpoint".into(),
        })
    }

    fn to_section(&self, params: &DqnParams, p: &mut PolicySpec) {
        p.dqn = Some(params.clone());
    }

    fn set(&self, params: &mut DqnParams, k: &str, v: &str, _key: &str) -> Result<bool, PolicyError> {
        match k {
            "checkpoint" => params.checkpoint = v.to_string(),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, params: &DqnParams) -> Result<(), PolicyError> {
        if params.checkpoint.is_empty() {
            return Err(invalid("dqn", "give the checkpoint directory: dqn:PATH"));
        }
        Ok(())
    }

    fn build(&self, params: &DqnParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        let load_err = |e: RlError| PolicyError::Load { path: params.checkpoint.clone(), message: e.to_string() };
        let mut p = DqnPolicy::load(Path::new(&params.checkpoint), ctx.spec).map_err(load_err)?;
        if let Some(dir) = &params.record_transitions {
            p.record_transitions(Path::new(dir)).map_err(load_err)?;
        }
        Ok(Box::new(p))
    }

    fn load_checkpoint(&self, dir: &str, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        self.build(&DqnParams { checkpoint: dir.into(), record_transitions: None }, &BuildContext::of_spec(spec, "dqn"))
    }
}
