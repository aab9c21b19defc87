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
//! [`dqn_loader`] is the hook the policy builder ([`crate::policy::build`]) and the
//! comparison harness call for `kind: dqn` / `dqn:PATH`.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::crd::LLMWorkloadSpec;
use crate::policy::build::PolicyError;
use crate::policy::config::DqnParams;
use crate::policy::{Decision, Observation, Policy};

use super::checkpoint::{self, Expected};
use super::dqn::{DeviceChoice, DqnAgent};
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

/// A greedy policy from a trained DQN checkpoint.
pub struct DqnPolicy {
    agent: DqnAgent,
    encoder: ObsEncoder,
    actions: ActionLayout,
    limits: ActionLimits,
    last: Option<(Vec<f32>, Vec<usize>)>,
    recorder: Option<(PathBuf, BufWriter<fs::File>)>,
    record_errors: u64,
}

impl std::fmt::Debug for DqnPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DqnPolicy").field("agent", &self.agent).finish()
    }
}

impl DqnPolicy {
    /// Loads the checkpoint in `dir` for a workload with `spec`, on CUDA when available.
    pub fn load(dir: &Path, spec: &LLMWorkloadSpec) -> Result<Self, RlError> {
        Self::load_on(dir, spec, DeviceChoice::Auto)
    }

    /// Loads the checkpoint in `dir` for `spec` on the chosen device.
    pub fn load_on(dir: &Path, spec: &LLMWorkloadSpec, device: DeviceChoice) -> Result<Self, RlError> {
        let meta = checkpoint::read_meta(dir)?;
        let stored = meta.action_layout.clone().ok_or_else(|| RlError::Checkpoint {
            path: dir.display().to_string(),
            message: "has no action layout (it was not trained for a workload)".into(),
        })?;
        let layout = WorkloadLayout::from_spec(spec);
        let encoder = ObsEncoder::new(layout.clone());
        let actions = ActionLayout::new(stored.kind, layout.slots.clone(), stored.deltas.clone());
        let names = encoder.feature_names();
        let branches = actions.branches();
        let (agent, _) =
            checkpoint::load(dir, &Expected { feature_names: Some(&names), branches: Some(&branches) }, device)?;
        Ok(DqnPolicy {
            agent,
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

    /// Q-values of an observation, flattened over branches (for inspection and shadow mode).
    pub fn q_values(&self, obs: &Observation) -> Vec<f32> {
        self.agent.q_values(&self.encoder.encode(obs))
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
        let x = self.encoder.encode(obs);
        let mask = self.actions.mask(obs, &self.limits);
        let a = self.agent.greedy(&x, &mask);
        let deltas = self.actions.slot_deltas(&a);
        let moves: Vec<String> = self
            .actions
            .slots
            .iter()
            .zip(&deltas)
            .filter(|(_, d)| **d != 0)
            .map(|(s, d)| format!("{}/{} {d:+}", s.variant, s.pool))
            .collect();
        let reason = if moves.is_empty() { "dqn: hold".to_string() } else { format!("dqn: {}", moves.join(", ")) };
        let d = self.actions.decision(&a, obs, &reason);
        self.last = Some((x, a));
        d
    }

    fn reset(&mut self) {
        self.last = None;
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

/// The loader for `kind: dqn` that [`crate::policy::build::build_policy_with`] takes.
pub fn dqn_loader(params: &DqnParams, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
    let load_err = |e: RlError| PolicyError::Load { path: params.checkpoint.clone(), message: e.to_string() };
    let mut p = DqnPolicy::load(Path::new(&params.checkpoint), spec).map_err(load_err)?;
    if let Some(dir) = &params.record_transitions {
        p.record_transitions(Path::new(dir)).map_err(load_err)?;
    }
    Ok(Box::new(p))
}
