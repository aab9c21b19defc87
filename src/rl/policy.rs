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
use crate::policy::build::build_heuristic;
use crate::policy::config::{DqnParams, OutOfRangeParams, PolicyKind, PolicySpec};
use crate::policy::registry::{invalid, BuildContext, KindId, PolicyError, PolicyKindDef, Positional};
use crate::policy::{BranchScores, Decision, Explanation, Observation, Policy};

use super::checkpoint::{self, Expected};
use super::dqn::{masked_argmax, DeviceChoice, DqnAgent};
use super::encoding::{ActionLayout, ActionLayoutKind, ActionLimits, ObsEncoder, WorkloadLayout};
use super::fused::FusedEnsemble;
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
    /// How the members' outputs become one choice per branch.
    #[serde(default, skip_serializing_if = "Combine::is_mean")]
    pub combine: Combine,
}

/// How an [`Ensemble`] combines its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Combine {
    /// The greedy choice of the members' mean output (Q-values, or a PPO actor's logits).
    #[default]
    Mean,
    /// Each member chooses greedily and the most chosen option per branch wins; ties go
    /// to the higher mean probability (the softmax of each member's outputs over the
    /// allowed options). Members whose outputs differ in scale count alike.
    Vote,
}

impl Combine {
    fn is_mean(&self) -> bool {
        *self == Combine::Mean
    }
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
    pub fn write(dir: &Path, combine: Combine) -> Result<Ensemble, RlError> {
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
        let e = Ensemble { members, combine };
        let p = dir.join(ENSEMBLE_FILE);
        let text =
            serde_json::to_vec_pretty(&e).map_err(|e| RlError::Json { path: p.display().to_string(), source: e })?;
        checkpoint::write_atomic(&p, &text)?;
        Ok(e)
    }
}

/// What a learned policy does while its inputs are outside its training range
/// ([`OutOfRangeParams`]): the limit, the fallback policy (`None`: hold) and whether it
/// is deciding now.
pub struct Guard {
    max_z: f64,
    name: String,
    fallback: Option<Box<dyn Policy>>,
    /// The feature that put the policy on the fallback and its z, while it is there.
    active: Option<(String, f64)>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("max_z", &self.max_z).field("fallback", &self.name).finish()
    }
}

impl Guard {
    /// The guard of `params` for a workload with `spec`: the fallback is built from its
    /// command-line form with the spec's own `policy` section as the base; `hold` keeps the
    /// current fleet. A learned fallback, or one only the comparison harness can build, is
    /// refused.
    pub fn build(params: &OutOfRangeParams, spec: &LLMWorkloadSpec) -> Result<Guard, PolicyError> {
        let field = "spec.policy.dqn.outOfRange";
        check_max_z(params.max_z)?;
        let name = params.fallback.trim().to_string();
        let fallback =
            if name == "hold" { None } else { Some(build_heuristic(&name, spec, &format!("{field}.fallback"))?) };
        Ok(Guard { max_z: params.max_z, name, fallback, active: None })
    }
}

/// `outOfRange.maxZ` must be 0 (off) or a positive number.
fn check_max_z(max_z: f64) -> Result<(), PolicyError> {
    if max_z.is_finite() && max_z >= 0.0 {
        return Ok(());
    }
    Err(invalid("spec.policy.dqn.outOfRange.maxZ", format!("must be 0 (off) or positive, not {max_z}")))
}

/// A greedy policy from a trained DQN checkpoint (or an [`Ensemble`] of them).
///
/// An ensemble whose members share one architecture (inputs, hidden widths, dueling heads,
/// branches, device) runs as one batched forward pass over its stacked weights
/// ([`FusedEnsemble`]), built once at load time; both ways of combining the members use
/// its per-member outputs. Members of different architectures, or a fused pass that
/// fails, fall back to one forward pass per member, the same computation up to the
/// order of floating-point sums ([`DqnPolicy::unfused_reason`] says why it is not fused).
pub struct DqnPolicy {
    agents: Vec<DqnAgent>,
    /// The members in one batched forward pass (an ensemble of one architecture).
    fused: Option<FusedEnsemble>,
    /// Why an ensemble's members run one forward pass each, when they do.
    unfused_because: Option<String>,
    encoder: ObsEncoder,
    actions: ActionLayout,
    limits: ActionLimits,
    last: Option<(Vec<f32>, Vec<usize>)>,
    recorder: Option<(PathBuf, BufWriter<fs::File>)>,
    record_errors: u64,
    guard: Option<Guard>,
    /// The base policy of a residual layout (its decision each tick is what the network's
    /// options are offsets from).
    base: Option<Box<dyn Policy>>,
    /// The training algorithm named in the checkpoint (`ppo`: the outputs are an actor's
    /// logits; else Q-values).
    algorithm: Option<String>,
    /// What the last decision weighed ([`Policy::explain`]).
    explained: Option<Explanation>,
    /// How an ensemble's members are combined.
    combine: Combine,
}

impl std::fmt::Debug for DqnPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DqnPolicy").field("agents", &self.agents).field("fused", &self.fused.is_some()).finish()
    }
}

impl DqnPolicy {
    /// Loads the checkpoint in `dir` for a workload with `spec`, on CUDA when available.
    pub fn load(dir: &Path, spec: &LLMWorkloadSpec) -> Result<Self, RlError> {
        Self::load_on(dir, spec, DeviceChoice::Auto)
    }

    /// Loads the checkpoint (or ensemble) in `dir` for `spec` on the chosen device.
    pub fn load_on(dir: &Path, spec: &LLMWorkloadSpec, device: DeviceChoice) -> Result<Self, RlError> {
        let (dirs, combine): (Vec<std::path::PathBuf>, Combine) = match Ensemble::read(dir)? {
            Some(e) => (e.members.iter().map(|m| dir.join(m)).collect(), e.combine),
            None => (vec![dir.to_path_buf()], Combine::Mean),
        };
        let meta = checkpoint::read_meta(&dirs[0])?;
        let stored = meta.action_layout.clone().ok_or_else(|| RlError::Checkpoint {
            path: dir.display().to_string(),
            message: "has no action layout (it was not trained for a workload)".into(),
        })?;
        let history = meta.workload.as_ref().map(|w| w.rate_history_s.clone()).unwrap_or_default();
        let cooldown = meta.workload.as_ref().is_some_and(|w| w.cooldown_feature);
        let base_feature = meta.workload.as_ref().is_some_and(|w| w.base_feature);
        let layout = WorkloadLayout::from_spec(spec)
            .with_rate_history(&history)
            .with_cooldown_feature(cooldown)
            .with_base_feature(base_feature);
        let encoder = ObsEncoder::new(layout.clone());
        let actions = ActionLayout::new(stored.kind, layout.slots.clone(), stored.deltas.clone())
            .with_mask_cooldown(stored.mask_cooldown)
            .with_base(stored.base.clone())
            .with_capacities(stored.capacities.clone())
            .with_capacity_rule(stored.capacity_metric, !stored.capacity_no_hold);
        actions.check().map_err(|e| RlError::Checkpoint {
            path: dir.display().to_string(),
            message: format!("its action layout: {e}"),
        })?;
        let base = match (&stored.kind, &stored.base) {
            (ActionLayoutKind::Residual, Some(b)) => {
                Some(build_heuristic(b, spec, "checkpoint actionLayout.base").map_err(|e| RlError::Checkpoint {
                    path: dir.display().to_string(),
                    message: format!("its base policy: {e}"),
                })?)
            }
            (ActionLayoutKind::Residual, None) => {
                return Err(RlError::Checkpoint {
                    path: dir.display().to_string(),
                    message: "has a residual action layout without a base policy".into(),
                })
            }
            _ => None,
        };
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
        let (fused, unfused_because) = fuse(&agents);
        Ok(DqnPolicy {
            agents,
            fused,
            unfused_because,
            encoder,
            limits: ActionLimits::from_spec(spec, &layout),
            actions,
            last: None,
            recorder: None,
            record_errors: 0,
            guard: None,
            base,
            algorithm: meta.algorithm.clone(),
            explained: None,
            combine,
        })
    }

    /// Puts `guard` in front of the network: while an input is out of its training range,
    /// the guard's fallback decides (see [`OutOfRangeParams`]).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The input feature furthest outside the training range of any member, as (name, z),
    /// when it is beyond `max_z` standard deviations.
    fn out_of_range(&self, x: &[f32], max_z: f64) -> Option<(String, f64)> {
        let (i, z) = self
            .agents
            .iter()
            .filter_map(|a| a.normaliser.out_of_range(x, max_z))
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
        // Names only when a feature is out: they are built, not stored.
        let name = self.encoder.feature_names().get(i).cloned().unwrap_or_else(|| format!("feature {i}"));
        Some((name, z))
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
        mean_of(&self.member_q_values(obs))
    }

    /// Each member's outputs for an observation (Q-values, or a PPO actor's logits),
    /// flattened over branches, in the ensemble's order; computed the way decisions are
    /// (one batched pass when fused).
    pub fn member_q_values(&self, obs: &Observation) -> Vec<Vec<f32>> {
        member_outputs(&self.agents, self.fused.as_ref(), &self.encoder.features(obs))
    }

    /// Number of checkpoints behind the policy (1, or an ensemble's members).
    pub fn members(&self) -> usize {
        self.agents.len()
    }

    /// Whether the members run as one batched forward pass ([`FusedEnsemble`]).
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Why an ensemble's members run one forward pass each (architectures that differ),
    /// or `None` (fused, or a single checkpoint).
    pub fn unfused_reason(&self) -> Option<&str> {
        self.unfused_because.as_deref()
    }

    /// The same policy with the batched pass dropped: each member runs its own forward
    /// pass, as before fusing (to compare the two, and to measure what fusing saves).
    pub fn unfused(mut self) -> Self {
        if self.fused.take().is_some() {
            self.unfused_because = Some("unfused on request".into());
        }
        self
    }
}

impl Policy for DqnPolicy {
    fn name(&self) -> &str {
        "dqn"
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        // The fallback and the base policy see every observation, so their windows and
        // learned state are what they would be alone.
        let fallback = self.guard.as_mut().and_then(|g| g.fallback.as_mut()).map(|p| p.decide(obs));
        let base = self.base.as_mut().map(|p| p.decide(obs));
        if !obs.is_complete() {
            self.last = None;
            self.explained = None;
            return Decision::hold(obs, format!("dqn: holding, missing metrics: {}", obs.missing.join(", ")));
        }
        let g = greedy_combined(
            &self.agents,
            self.fused.as_ref(),
            self.combine,
            &mut self.encoder,
            &self.actions,
            &self.limits,
            obs,
            base.as_ref(),
        );
        self.explained = Some(explanation(&self.actions, &g, self.algorithm.as_deref()));
        let (d, x, a) = (g.decision, g.features, g.action);
        let Some(max_z) = self.guard.as_ref().map(|g| g.max_z) else {
            self.last = Some((x, a));
            return d;
        };
        let outside = self.out_of_range(&x, max_z);
        let g = self.guard.as_mut().expect("guard checked above");
        match outside {
            Some((feature, z)) => {
                // The network's choice is not a transition of the policy that acted.
                self.last = None;
                let mut out = match fallback {
                    Some(f) => f,
                    None => Decision::hold(obs, "hold"),
                };
                if g.active.is_none() {
                    out.warnings.push(format!(
                        "input {feature} is {z:.1} standard deviations from the training mean (limit {max_z}); \
                         {} decides until every input is back in range",
                        g.name
                    ));
                }
                out.reason = format!("dqn: {feature} out of training range (z {z:.1}), fallback {}", out.reason);
                if let Some(e) = self.explained.as_mut() {
                    e.note = Some(format!(
                        "not used: {feature} is {z:.1} standard deviations from the training mean; {} decided",
                        g.name
                    ));
                }
                g.active = Some((feature, z));
                out
            }
            None => {
                self.last = Some((x, a));
                let mut d = d;
                if let Some((feature, _)) = g.active.take() {
                    d.warnings.push(format!(
                        "inputs back in the training range ({feature} was the last out); the network decides again"
                    ));
                }
                d
            }
        }
    }

    fn reset(&mut self) {
        self.last = None;
        self.explained = None;
        self.encoder.reset();
        if let Some(b) = self.base.as_mut() {
            b.reset();
        }
        if let Some(g) = self.guard.as_mut() {
            g.active = None;
            if let Some(f) = g.fallback.as_mut() {
                f.reset();
            }
        }
    }

    /// The learned state of the policies it leans on, as `{"base": …, "fallback": …}`
    /// (the residual layout's base policy, the out-of-range fallback; each only when it
    /// has one).
    fn export_state(&self) -> Option<serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(s) = self.base.as_ref().and_then(|b| b.export_state()) {
            m.insert("base".into(), s);
        }
        if let Some(s) = self.guard.as_ref().and_then(|g| g.fallback.as_ref()).and_then(|f| f.export_state()) {
            m.insert("fallback".into(), s);
        }
        (!m.is_empty()).then_some(serde_json::Value::Object(m))
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<(), PolicyError> {
        let serde_json::Value::Object(mut m) = state else {
            return Err(PolicyError::State {
                policy: "dqn".into(),
                message: "a learned policy's state is an object with `base` and `fallback`".into(),
            });
        };
        if let (Some(s), Some(b)) = (m.remove("base"), self.base.as_mut()) {
            b.import_state(s)?;
        }
        if let (Some(s), Some(f)) = (m.remove("fallback"), self.guard.as_mut().and_then(|g| g.fallback.as_mut())) {
            f.import_state(s)?;
        }
        Ok(())
    }

    fn explain(&self) -> Option<Explanation> {
        self.explained.clone()
    }

    fn feedback(&mut self, next: &Observation, reward: f64) {
        if let Some(f) = self.guard.as_mut().and_then(|g| g.fallback.as_mut()) {
            f.feedback(next, reward);
        }
        if let Some(b) = self.base.as_mut() {
            b.feedback(next, reward);
        }
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

/// The batched forward pass of an ensemble's members when they share one architecture;
/// else `None` and why (a single checkpoint: neither, it has nothing to fuse).
fn fuse(agents: &[DqnAgent]) -> (Option<FusedEnsemble>, Option<String>) {
    if agents.len() < 2 {
        return (None, None);
    }
    match FusedEnsemble::new(agents) {
        Ok(f) => (Some(f), None),
        Err(e) => {
            tracing::info!(error = %e, "ensemble members run one forward pass each");
            (None, Some(e.to_string()))
        }
    }
}

/// Each agent's outputs for raw features `x`: from the batched pass when there is one
/// (and it succeeds), else one forward pass per agent.
fn member_outputs(agents: &[DqnAgent], fused: Option<&FusedEnsemble>, x: &[f32]) -> Vec<Vec<f32>> {
    if let Some(f) = fused {
        match f.outputs(x) {
            Ok(out) => return out,
            Err(e) => tracing::warn!(error = %e, "the fused forward pass failed; each member runs its own"),
        }
    }
    agents.iter().map(|a| a.q_values(x)).collect()
}

/// The mean of the members' outputs (one member: its own): summed in the members'
/// order, then divided by their number.
fn mean_of(outputs: &[Vec<f32>]) -> Vec<f32> {
    let mut q = outputs.first().cloned().unwrap_or_default();
    for o in outputs.iter().skip(1) {
        for (s, v) in q.iter_mut().zip(o) {
            *s += v;
        }
    }
    let n = outputs.len().max(1) as f32;
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
    base: Option<&Decision>,
) -> (Decision, Vec<f32>, Vec<usize>) {
    let g = greedy_scored(agents, encoder, actions, limits, obs, base);
    (g.decision, g.features, g.action)
}

/// A greedy decision with what it weighed ([`greedy_scored`]).
#[derive(Clone, Debug)]
pub struct Greedy {
    /// The decision.
    pub decision: Decision,
    /// The raw features the network saw.
    pub features: Vec<f32>,
    /// The option taken per branch.
    pub action: Vec<usize>,
    /// The network's outputs, flattened over branches (the members' mean).
    pub scores: Vec<f32>,
    /// Which options were allowed, flattened alike.
    pub mask: Vec<bool>,
}

/// [`greedy_decision`], keeping the network's outputs and the mask for an explanation.
pub fn greedy_scored(
    agents: &[DqnAgent],
    encoder: &mut ObsEncoder,
    actions: &ActionLayout,
    limits: &ActionLimits,
    obs: &Observation,
    base: Option<&Decision>,
) -> Greedy {
    greedy_combined(agents, None, Combine::Mean, encoder, actions, limits, obs, base)
}

/// Each member's greedy option per branch (from its `outputs`), counted; ties go to the
/// higher mean of the members' softmax over the allowed options ([`Combine::Vote`]).
/// Returns the option per branch.
fn vote(outputs: &[Vec<f32>], mask: &[bool], sizes: &[usize]) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    let mut score = vec![0.0f64; total];
    let n = outputs.len().max(1) as f64;
    for q in outputs {
        let mut off = 0;
        for (&size, pick) in sizes.iter().zip(masked_argmax(q, mask, sizes)) {
            score[off + pick] += 1.0;
            let allowed: Vec<usize> = (off..off + size).filter(|&j| mask.get(j).copied().unwrap_or(false)).collect();
            let top = allowed.iter().map(|&j| f64::from(q[j])).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = allowed.iter().map(|&j| (f64::from(q[j]) - top).exp()).sum();
            for &j in &allowed {
                // At most 0.5 in all: a tie-break that never outweighs one vote.
                score[j] += 0.5 * (f64::from(q[j]) - top).exp() / z / n;
            }
            off += size;
        }
    }
    let score: Vec<f32> = score.into_iter().map(|v| v as f32).collect();
    masked_argmax(&score, mask, sizes)
}

/// [`greedy_scored`] with the members combined as `combine` says, their outputs from
/// `fused` when given (see [`member_outputs`]); the scores kept for the explanation are
/// the members' mean either way.
#[allow(clippy::too_many_arguments)]
fn greedy_combined(
    agents: &[DqnAgent],
    fused: Option<&FusedEnsemble>,
    combine: Combine,
    encoder: &mut ObsEncoder,
    actions: &ActionLayout,
    limits: &ActionLimits,
    obs: &Observation,
    base: Option<&Decision>,
) -> Greedy {
    encoder.set_base(base);
    let x = encoder.encode(obs);
    let mask = actions.mask_on(obs, limits, base);
    let sizes = agents.first().map(|a| a.branch_sizes().to_vec()).unwrap_or_default();
    let outputs = member_outputs(agents, fused, &x);
    let q = mean_of(&outputs);
    let a = match combine {
        Combine::Vote if outputs.len() > 1 => vote(&outputs, &mask, &sizes),
        _ => masked_argmax(&q, &mask, &sizes),
    };
    let deltas = actions.slot_deltas(&a);
    let moves: Vec<String> = if actions.kind == ActionLayoutKind::Capacity {
        // A chosen capacity, with the replicas the sizing rule makes of it.
        actions
            .slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| {
                let c = *actions.capacities.get(a.get(k)?.checked_sub(1)?)?;
                let n = actions.capacity_target(k, c, obs)?;
                Some(format!("{}/{} at {c} {} per replica ({n})", s.variant, s.pool, actions.capacity_metric.words()))
            })
            .collect()
    } else {
        actions
            .slots
            .iter()
            .zip(&deltas)
            .filter(|(_, d)| **d != 0)
            .map(|(s, d)| format!("{}/{} {d:+}", s.variant, s.pool))
            .collect()
    };
    let reason = match (base, moves.is_empty()) {
        (Some(b), true) => format!("dqn: as the base policy ({})", b.reason),
        (Some(b), false) => format!(
            "dqn: base policy {}, {} ({})",
            if moves.len() == 1 { "offset" } else { "offsets" },
            moves.join(", "),
            b.reason
        ),
        (None, true) => "dqn: hold".to_string(),
        (None, false) => format!("dqn: {}", moves.join(", ")),
    };
    Greedy { decision: actions.decision_on(&a, obs, base, &reason), features: x, action: a, scores: q, mask }
}

/// The per-branch explanation of a greedy decision: Q-values for a DQN, the softmax over
/// the allowed options of an actor's logits for a PPO checkpoint (`algorithm` `ppo`).
pub fn explanation(actions: &ActionLayout, g: &Greedy, algorithm: Option<&str>) -> Explanation {
    let probabilities = algorithm == Some("ppo");
    let mut off = 0;
    let branches = actions
        .branches()
        .into_iter()
        .zip(&g.action)
        .map(|(b, &chosen)| {
            let n = b.options.len();
            let raw: Vec<f64> = (0..n).map(|i| g.scores.get(off + i).copied().unwrap_or(f32::NAN) as f64).collect();
            let allowed: Vec<bool> = (0..n).map(|i| g.mask.get(off + i).copied().unwrap_or(false)).collect();
            off += n;
            let scores = if probabilities { softmax_allowed(&raw, &allowed) } else { raw };
            BranchScores { name: b.name, options: b.options, scores, allowed, chosen }
        })
        .collect();
    Explanation { score: if probabilities { "probability" } else { "q-value" }.into(), branches, note: None }
}

/// Softmax of `logits` over the allowed options (a masked option gets 0).
fn softmax_allowed(logits: &[f64], allowed: &[bool]) -> Vec<f64> {
    let max = logits.iter().zip(allowed).filter(|(_, a)| **a).map(|(l, _)| *l).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> =
        logits.iter().zip(allowed).map(|(l, a)| if *a && max.is_finite() { (l - max).exp() } else { 0.0 }).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }).collect()
}

/// Where shipped policies are looked up by name, in order: `$LLMOS_POLICIES_DIR`, the
/// operator image's `/opt/llmos/policies`, and `policies/` of the working directory (the
/// repository).
pub const POLICY_DIRS: [&str; 2] = ["/opt/llmos/policies", "policies"];

/// The checkpoint directory `reference` means: the path as given when it exists or holds a
/// `/`; else a shipped policy of that name, the first of `$LLMOS_POLICIES_DIR` and
/// [`POLICY_DIRS`] that holds a checkpoint or an ensemble under it; else the path as given
/// (whose loading then fails, naming it).
pub fn resolve_checkpoint(reference: &str) -> PathBuf {
    let given = PathBuf::from(reference);
    if given.exists() || reference.contains('/') || reference.is_empty() {
        return given;
    }
    let mut dirs: Vec<PathBuf> = std::env::var("LLMOS_POLICIES_DIR").ok().map(PathBuf::from).into_iter().collect();
    dirs.extend(POLICY_DIRS.iter().map(PathBuf::from));
    let found = dirs
        .into_iter()
        .map(|d| d.join(reference))
        .find(|c| c.join(ENSEMBLE_FILE).is_file() || c.join(checkpoint::META_FILE).is_file());
    found.unwrap_or(given)
}

/// The files a checkpoint directory's loading reads, relative to it, in a fixed order:
/// `checkpoint.json` and `model.safetensors`, or for an ensemble `ensemble.json` and
/// then each member's two files in the order the ensemble lists them.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<String>, RlError> {
    let pair = |prefix: &str| {
        [checkpoint::META_FILE, checkpoint::WEIGHTS_FILE].map(|f| {
            if prefix.is_empty() {
                f.to_string()
            } else {
                format!("{}/{f}", prefix.trim_end_matches('/'))
            }
        })
    };
    Ok(match Ensemble::read(dir)? {
        None => pair("").to_vec(),
        Some(e) => {
            let mut files = vec![ENSEMBLE_FILE.to_string()];
            for m in &e.members {
                files.extend(pair(m));
            }
            files
        }
    })
}

/// The SHA-256 digest of a checkpoint (or ensemble) directory, as 64 lowercase hex
/// digits: the digest of the `sha256sum` listing of [`checkpoint_files`] (one line
/// `<hex>  <path>` per file), so that
/// `(cd DIR && sha256sum checkpoint.json model.safetensors) | sha256sum` gives the same
/// value for a plain checkpoint. A spec pins a checkpoint with `policy.dqn.sha256`.
pub fn checkpoint_digest(dir: &Path) -> Result<String, RlError> {
    use sha2::{Digest, Sha256};
    let mut listing = String::new();
    for f in checkpoint_files(dir)? {
        let p = dir.join(&f);
        let bytes = fs::read(&p).map_err(|e| RlError::Io { path: p.display().to_string(), source: e })?;
        listing.push_str(&format!("{:x}  {f}\n", Sha256::digest(&bytes)));
    }
    Ok(format!("{:x}", Sha256::digest(listing.as_bytes())))
}

/// Checks a pinned digest (64 hex digits, case-insensitive) against the checkpoint in
/// `dir`: an error names both digests when they differ.
pub fn check_digest(dir: &Path, pinned: &str) -> Result<(), RlError> {
    let actual = checkpoint_digest(dir)?;
    if actual.eq_ignore_ascii_case(pinned.trim()) {
        return Ok(());
    }
    Err(RlError::Checkpoint {
        path: dir.display().to_string(),
        message: format!(
            "its sha256 digest is {actual}, not the {} pinned in spec.policy.dqn.sha256; it is not loaded",
            pinned.trim()
        ),
    })
}

/// Whether `s` is a SHA-256 digest written as 64 hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `dqn` kind: a trained checkpoint (`kind: dqn` with `policy.dqn`, or `dqn:PATH`).
pub struct Dqn;

impl PolicyKindDef for Dqn {
    type Params = DqnParams;
    const ID: KindId = KindId("dqn");
    const USAGE: &'static str =
        "dqn:PATH[,sha256=DIGEST][,max-z=Z][,fallback=POLICY] (a trained checkpoint directory, optionally pinned by its digest; inputs beyond Z standard deviations of training hand the decision to POLICY)";
    const KEYS: &'static str = "PATH (dqn:PATH), sha256, max-z, fallback (after the path, separated by commas)";
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

    fn set(&self, params: &mut DqnParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            // `dqn:PATH,max-z=6,fallback=forecast:capacity=8`: the path, then keys after commas
            // (the fallback is last-but-anything: its own `:` keys stay with it).
            "checkpoint" => {
                let mut items = v.split(',');
                params.checkpoint = items.next().unwrap_or_default().trim().to_string();
                for item in items {
                    let Some((k2, v2)) = item.split_once('=') else {
                        return Err(invalid(
                            key,
                            format!("`{item}` is not KEY=VALUE; keys after the path: sha256, max-z, fallback"),
                        ));
                    };
                    if k2.trim() == "sha256" {
                        params.sha256 = Some(v2.trim().to_string());
                        continue;
                    }
                    let g = params.out_of_range.get_or_insert_with(OutOfRangeParams::default);
                    match k2.trim() {
                        "max-z" => {
                            g.max_z =
                                crate::policy::registry::num("dqn:max-z", v2.trim(), "a number of standard deviations")?
                        }
                        "fallback" => g.fallback = v2.trim().to_string(),
                        other => {
                            return Err(invalid(
                                key,
                                format!("unknown key `{other}`; keys after the path: sha256, max-z, fallback"),
                            ))
                        }
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, params: &DqnParams) -> Result<(), PolicyError> {
        if params.checkpoint.is_empty() {
            return Err(invalid("dqn", "give the checkpoint directory: dqn:PATH"));
        }
        if let Some(d) = &params.sha256 {
            if !is_sha256_hex(d.trim()) {
                return Err(invalid(
                    "spec.policy.dqn.sha256",
                    format!("`{d}` is not a SHA-256 digest (64 hex digits, as `llmos digest DIR` prints)"),
                ));
            }
        }
        if let Some(g) = &params.out_of_range {
            check_max_z(g.max_z)?;
            if g.fallback.trim().is_empty() {
                return Err(invalid("spec.policy.dqn.outOfRange.fallback", "give a policy (e.g. hpa) or hold"));
            }
        }
        Ok(())
    }

    fn build(&self, params: &DqnParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        let load_err = |e: RlError| PolicyError::Load { path: params.checkpoint.clone(), message: e.to_string() };
        let dir = resolve_checkpoint(&params.checkpoint);
        if let Some(pinned) = &params.sha256 {
            check_digest(&dir, pinned).map_err(load_err)?;
        }
        let mut p = DqnPolicy::load(&dir, ctx.spec).map_err(load_err)?;
        if let Some(dir) = &params.record_transitions {
            p.record_transitions(Path::new(dir)).map_err(load_err)?;
        }
        let guard = params.out_of_range.clone().unwrap_or_default();
        if guard.max_z > 0.0 {
            p = p.with_guard(Guard::build(&guard, ctx.spec)?);
        }
        Ok(Box::new(p))
    }

    fn load_checkpoint(&self, dir: &str, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        self.build(&DqnParams { checkpoint: dir.into(), ..DqnParams::default() }, &BuildContext::of_spec(spec, "dqn"))
    }
}
