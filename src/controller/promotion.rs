//! Shadow, promote, roll back in the controller (`spec.learning.promotion`): the
//! workload's side of [`crate::learning::promote`].
//!
//! Per workload the controller keeps a [`Promotion`]: the rule's state, the shadow's
//! counters, which training results were fed, the live attainment being gathered into a
//! window, and the candidate policy while it is in shadow. At each control tick:
//!
//! - **Trainings** ([`Promotion::feed_trainings`]): every `LLMPolicyTraining` of the
//!   workload in its namespace, read as [`TrainingInput`]s ([`training_input`]): one in
//!   phase `Training` is `Input::TrainingStarted` (once per run), one in phase `Evaluated`
//!   is `Input::Evaluated` with its candidate and paired differences, fed once
//!   (`status.learning.consumed`), and only while no other candidate is in shadow or
//!   watched (it waits until then).
//! - **Shadow** ([`Promotion::shadow`]): while a candidate is in shadow, it is built from
//!   its checkpoint by the operator's own policy builder (the spec with `policy.kind: dqn`
//!   and the checkpoint pinned by its digest, [`effective_spec`]: the algorithm comes from
//!   the checkpoint), decides on the same observation as the active policy and goes
//!   through the same shield with [`Shield::clamp`], which records nothing: it is never
//!   applied. Decisions and shield overrides are counted and fed as `Input::Shadow`. A
//!   candidate that cannot be built (no such checkpoint, a digest that differs, a network
//!   for another workload shape) is rejected with the error.
//! - **Live** ([`Promotion::live`]): each tick's observed SLO attainment, weighted by the
//!   time since the previous tick, is gathered into windows of a sixth of
//!   `rollbackWindowSeconds` (at least one tick), each fed as `Input::Live`. A tick
//!   without complete metrics adds nothing: the operator holds what it knows when it
//!   cannot see.
//!
//! The state lives in `status.learning` ([`Promotion::to_status`],
//! [`Promotion::from_status`]), read back on the first reconcile after a start or a
//! leader handover; the candidate is loaded again from its checkpoint then.

use std::collections::VecDeque;

use crate::crd::promotion::{
    EvaluationNumbers, LearningStatus, LiveWindow, PolicyHistoryEntry, PolicyRef, PromotionSpec, ShadowStatus,
    CONSUMED_KEPT, HISTORY_KEPT,
};
use crate::crd::{DecisionStatus, LLMWorkloadSpec, TargetStatus};
use crate::learning::promote::{
    Candidate, EvaluationSummary, EventReason as Reason, HistoryEntry, Input, Phase, PromotionConfig, PromotionEvent,
    PromotionState, Transition,
};
use crate::policy::config::{DqnParams, PolicyKind};
use crate::policy::shield::Shield;
use crate::policy::{Observation, Policy};

use super::plan::{EventReason, PlannedEvent};
use super::status::{ConditionUpdate, POLICY_PROMOTION};

/// The group, version and plural of the training resource the controller reads.
pub const TRAINING_GROUP: &str = "llmos.dev";
/// The training resource's version.
pub const TRAINING_VERSION: &str = "v1alpha1";
/// The training resource's kind.
pub const TRAINING_KIND: &str = "LLMPolicyTraining";
/// The training resource's plural.
pub const TRAINING_PLURAL: &str = "llmpolicytrainings";

/// The rule's numbers for a workload: its `spec.learning.promotion`, with the SLO's
/// `targetAttainment` as the baseline when the incumbent left no live window.
pub fn config(spec: &LLMWorkloadSpec) -> PromotionConfig {
    let p: &PromotionSpec = &spec.learning.promotion;
    PromotionConfig {
        margin: p.margin,
        min_seeds: p.min_seeds as usize,
        shadow_s: f64::from(p.shadow_seconds),
        min_shadow_decisions: u64::from(p.min_shadow_decisions),
        max_shield_override_fraction: p.max_shield_override_fraction,
        rollback_margin: p.rollback_margin,
        rollback_window_s: f64::from(p.rollback_window_seconds),
        fallback_baseline: spec.slo.target_attainment,
        watch_s: f64::from(p.watch_seconds),
    }
}

/// The spec the controller builds the policy from: `spec` itself without a learned
/// policy, else `spec` with `policy.kind: dqn` and `policy.dqn.checkpoint` the learned
/// policy's checkpoint, pinned by its digest (`policy.dqn.sha256`: a checkpoint replaced
/// on the volume is refused). A spec that is already `kind: dqn` keeps its `outOfRange`
/// guard; the mode and interval stay the spec's. The spec's own policy is not edited.
pub fn effective_spec(spec: &LLMWorkloadSpec, active: Option<&Candidate>) -> LLMWorkloadSpec {
    let mut out = spec.clone();
    if let Some(c) = active {
        let out_of_range = spec.policy.dqn.as_ref().filter(|_| spec.policy.kind == PolicyKind::Dqn);
        out.policy.kind = PolicyKind::Dqn;
        out.policy.dqn = Some(DqnParams {
            checkpoint: c.checkpoint.clone(),
            sha256: Some(c.digest.clone()),
            record_transitions: None,
            out_of_range: out_of_range.and_then(|d| d.out_of_range.clone()),
        });
    }
    out
}

/// What a training resource says to the rule.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainingInput {
    /// The run is training (phase `Training`).
    Started {
        /// The training's name.
        run: String,
    },
    /// The run's candidate was evaluated (phase `Evaluated`).
    Evaluated {
        /// The training's name.
        run: String,
        /// The candidate.
        candidate: Candidate,
        /// Per seed, candidate score − incumbent score.
        paired_differences: Vec<f64>,
        /// The digest of the learned policy it was judged against (`status.evaluation.incumbent.digest`;
        /// empty: the spec's own policy); `None` when the result does not say.
        incumbent: Option<String>,
    },
    /// The run says it is evaluated, but its result cannot be read: rejected with this
    /// message (once).
    Unreadable {
        /// The training's name.
        run: String,
        /// What is wrong, naming the field.
        message: String,
        /// What marks it consumed (the name and, when readable, the digest).
        key: String,
    },
}

impl TrainingInput {
    /// The training's name.
    pub fn run(&self) -> &str {
        match self {
            TrainingInput::Started { run }
            | TrainingInput::Evaluated { run, .. }
            | TrainingInput::Unreadable { run, .. } => run,
        }
    }
}

/// Reads one `LLMPolicyTraining` (as JSON) for the workload `workload`: `None` when it is
/// for another workload or in a phase the rule does not take; an evaluated one whose
/// result is not usable is [`TrainingInput::Unreadable`] naming the field.
pub fn training_input(obj: &serde_json::Value, workload: &str) -> Option<TrainingInput> {
    if obj.pointer("/spec/workload").and_then(|v| v.as_str()) != Some(workload) {
        return None;
    }
    let run = obj.pointer("/metadata/name").and_then(|v| v.as_str())?.to_string();
    match obj.pointer("/status/phase").and_then(|v| v.as_str())? {
        "Training" => Some(TrainingInput::Started { run }),
        "Evaluated" => Some(evaluated(obj, run)),
        _ => None,
    }
}

fn evaluated(obj: &serde_json::Value, run: String) -> TrainingInput {
    let ev = obj.pointer("/status/evaluation");
    let digest = ev.and_then(|e| e.pointer("/candidate/digest")).and_then(|v| v.as_str()).unwrap_or("").trim();
    let checkpoint = ev.and_then(|e| e.pointer("/candidate/checkpoint")).and_then(|v| v.as_str()).unwrap_or("").trim();
    let key = format!("{run}@{digest}");
    let bad = |message: String| TrainingInput::Unreadable { run: run.clone(), message, key: key.clone() };
    if !crate::rl::policy::is_sha256_hex(digest) {
        return bad(format!("status.evaluation.candidate.digest `{digest}` is not a SHA-256 digest (64 hex digits)"));
    }
    if checkpoint.is_empty() {
        return bad("status.evaluation.candidate.checkpoint is empty".into());
    }
    let Some(list) = ev.and_then(|e| e.get("pairedDifferences")).and_then(|v| v.as_array()) else {
        return bad("status.evaluation.pairedDifferences is missing or not a list".into());
    };
    let mut diffs = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        match v.as_f64() {
            Some(d) => diffs.push(d),
            None => return bad(format!("status.evaluation.pairedDifferences[{i}] is `{v}`, not a number")),
        }
    }
    let candidate = Candidate { digest: digest.to_lowercase(), checkpoint: checkpoint.to_string() };
    let incumbent = ev
        .and_then(|e| e.get("incumbent"))
        .filter(|i| i.is_object())
        .map(|i| i.get("digest").and_then(|d| d.as_str()).unwrap_or_default().trim().to_lowercase());
    TrainingInput::Evaluated { run, candidate, paired_differences: diffs, incumbent }
}

/// What one step produced: the Events to publish (in order) and how many promotions and
/// rollbacks happened (for the metrics).
#[derive(Debug, Default)]
pub struct Produced {
    /// Every transition's Event.
    pub events: Vec<PromotionEvent>,
    /// Whether the active policy changed (a promotion or a rollback).
    pub switched: bool,
}

impl Produced {
    fn take(&mut self, t: Transition) {
        if t.history.is_some() {
            self.switched = true;
        }
        self.events.extend(t.event);
    }
}

/// Builds a policy for a spec (the controller's policy builder).
pub type Build<'a> = &'a dyn Fn(&LLMWorkloadSpec) -> Result<Box<dyn Policy>, String>;

/// A workload's promotion state in the controller (see the module docs).
pub struct Promotion {
    /// The rule's state.
    pub state: PromotionState,
    /// Shadow decisions since the shadow started.
    pub shadow_decisions: u64,
    /// Of those, how many the shield would have overridden.
    pub shadow_overrides: u64,
    /// The candidate's last decision (never applied).
    pub shadow_last: Option<DecisionStatus>,
    /// Training results fed, `<name>@<digest>`, oldest first.
    pub consumed: VecDeque<String>,
    /// The last Event, `Reason: message`.
    pub last_event: Option<String>,
    /// The candidate in shadow, built: its digest and the policy.
    candidate: Option<(String, Box<dyn Policy>)>,
    /// Live attainment being gathered: (Σ attainment × seconds, seconds).
    live_sum: (f64, f64),
    /// When the last tick that saw the SLO attainment was (Unix seconds).
    live_last: Option<f64>,
}

impl std::fmt::Debug for Promotion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Promotion").field("state", &self.state).field("consumed", &self.consumed).finish()
    }
}

fn time_str(unix_s: f64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond((unix_s * 1000.0).round() as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn time_s(s: &str, field: &str) -> Result<f64, String> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_millisecond() as f64 / 1000.0)
        .map_err(|e| format!("status.learning.{field} `{s}` is not an RFC 3339 time: {e}"))
}

fn to_ref(c: &Candidate) -> PolicyRef {
    PolicyRef { digest: c.digest.clone(), checkpoint: c.checkpoint.clone() }
}

fn from_ref(r: &PolicyRef) -> Candidate {
    Candidate { digest: r.digest.clone(), checkpoint: r.checkpoint.clone() }
}

/// The short name of a learned policy, or the spec's.
pub fn describe(c: Option<&Candidate>) -> String {
    c.map(|c| format!("{} ({})", c.digest.chars().take(12).collect::<String>(), c.checkpoint))
        .unwrap_or_else(|| "the spec's policy".into())
}

impl Promotion {
    /// Idle, the spec's policy acting, nothing consumed.
    pub fn new() -> Promotion {
        Promotion {
            state: PromotionState::new(None),
            shadow_decisions: 0,
            shadow_overrides: 0,
            shadow_last: None,
            consumed: VecDeque::new(),
            last_event: None,
            candidate: None,
            live_sum: (0.0, 0.0),
            live_last: None,
        }
    }

    /// The state written in `status.learning` (`None`: nothing yet), checked: a phase or a
    /// time that does not parse is an error naming the field (the controller then starts
    /// idle with the spec's policy and says so).
    pub fn from_status(st: Option<&LearningStatus>) -> Result<Promotion, String> {
        let mut p = Promotion::new();
        let Some(st) = st else { return Ok(p) };
        let since = || match st.since.as_deref() {
            Some(s) => time_s(s, "since"),
            None => Err("status.learning.since is missing".into()),
        };
        let candidate = || st.candidate.as_ref().map(from_ref).ok_or("status.learning.candidate is missing");
        p.state.phase = match st.phase.as_str() {
            "" | "Idle" => Phase::Idle,
            "Training" => Phase::Training { run: st.training.clone().unwrap_or_default(), since_unix_s: since()? },
            "Shadow" => {
                let e = st.evaluation.unwrap_or_default();
                Phase::Shadow {
                    candidate: candidate()?,
                    since_unix_s: since()?,
                    evaluation: EvaluationSummary { mean: e.mean, ci95: e.ci95, seeds: e.seeds as usize },
                }
            }
            "Watching" => Phase::Watching {
                promoted: candidate()?,
                previous: st.previous.as_ref().map(from_ref),
                since_unix_s: since()?,
                baseline: st.baseline.filter(|b| b.is_finite()).ok_or("status.learning.baseline is missing")?,
            },
            other => return Err(format!("status.learning.phase `{other}` is not Idle, Training, Shadow or Watching")),
        };
        p.state.active = st.active.as_ref().map(from_ref);
        for (i, h) in st.history.iter().enumerate() {
            let action = match h.action.as_str() {
                "Promoted" => Reason::Promoted,
                "RolledBack" => Reason::RolledBack,
                other => {
                    return Err(format!("status.learning.history[{i}].action `{other}` is not Promoted or RolledBack"))
                }
            };
            p.state.history.push(HistoryEntry {
                digest: h.digest.clone(),
                checkpoint: h.checkpoint.clone(),
                at_unix_s: time_s(&h.time, &format!("history[{i}].time"))?,
                action,
                why: h.why.clone(),
            });
        }
        p.state.live = st
            .live
            .iter()
            .filter(|w| w.end_unix_s.is_finite() && w.attainment.is_finite() && w.seconds > 0.0)
            .map(|w| (w.end_unix_s, w.attainment, w.seconds))
            .collect();
        if let Some(s) = &st.shadow {
            (p.shadow_decisions, p.shadow_overrides, p.shadow_last) =
                (s.decisions, s.shield_overrides, s.last_decision.clone());
        }
        p.consumed = st.consumed.iter().cloned().collect();
        p.last_event = st.last_event.clone();
        Ok(p)
    }

    /// The state as `status.learning`.
    pub fn to_status(&self) -> LearningStatus {
        let mut st = LearningStatus {
            active: self.state.active.as_ref().map(to_ref),
            history: self
                .state
                .history
                .iter()
                .map(|h| PolicyHistoryEntry {
                    digest: h.digest.clone(),
                    checkpoint: h.checkpoint.clone(),
                    time: time_str(h.at_unix_s),
                    action: h.action.as_str().into(),
                    why: h.why.clone(),
                })
                .collect(),
            live: self
                .state
                .live
                .iter()
                .map(|&(end_unix_s, attainment, seconds)| LiveWindow { end_unix_s, attainment, seconds })
                .collect(),
            consumed: self.consumed.iter().cloned().collect(),
            last_event: self.last_event.clone(),
            ..Default::default()
        };
        match &self.state.phase {
            Phase::Idle => st.phase = "Idle".into(),
            Phase::Training { run, since_unix_s } => {
                st.phase = "Training".into();
                st.training = Some(run.clone());
                st.since = Some(time_str(*since_unix_s));
            }
            Phase::Shadow { candidate, since_unix_s, evaluation } => {
                st.phase = "Shadow".into();
                st.candidate = Some(to_ref(candidate));
                st.since = Some(time_str(*since_unix_s));
                st.evaluation = Some(EvaluationNumbers {
                    mean: evaluation.mean,
                    ci95: evaluation.ci95,
                    seeds: evaluation.seeds as u32,
                });
                st.shadow = Some(ShadowStatus {
                    decisions: self.shadow_decisions,
                    shield_overrides: self.shadow_overrides,
                    last_decision: self.shadow_last.clone(),
                });
            }
            Phase::Watching { promoted, previous, since_unix_s, baseline } => {
                st.phase = "Watching".into();
                st.candidate = Some(to_ref(promoted));
                st.previous = previous.as_ref().map(to_ref);
                st.since = Some(time_str(*since_unix_s));
                st.baseline = Some(*baseline);
            }
        }
        st
    }

    /// The `PolicyPromotion` condition: `True` while a candidate is trained, in shadow or
    /// watched, `False` when idle; the reason is the phase, the message says what acts and
    /// the last Event.
    pub fn condition(&self) -> ConditionUpdate {
        let active = describe(self.state.active.as_ref());
        let last = self.last_event.as_deref().map(|e| format!("; last: {e}")).unwrap_or_default();
        match &self.state.phase {
            Phase::Idle => ConditionUpdate::new(POLICY_PROMOTION, false, "Idle", format!("{active} acts{last}")),
            Phase::Training { run, .. } => {
                ConditionUpdate::new(POLICY_PROMOTION, true, "Training", format!("training run {run}; {active} acts"))
            }
            Phase::Shadow { candidate, .. } => ConditionUpdate::new(
                POLICY_PROMOTION,
                true,
                "Shadow",
                format!(
                    "{} in shadow: {} decisions, {} the shield would have overridden; {active} acts",
                    describe(Some(candidate)),
                    self.shadow_decisions,
                    self.shadow_overrides
                ),
            ),
            Phase::Watching { baseline, .. } => ConditionUpdate::new(
                POLICY_PROMOTION,
                true,
                "Watching",
                format!(
                    "{active} promoted and watched against the incumbent's {:.1} % SLO attainment",
                    100.0 * baseline
                ),
            ),
        }
    }

    fn apply(&mut self, cfg: &PromotionConfig, now: f64, input: &Input, out: &mut Produced) {
        let t = self.state.apply(cfg, now, input);
        if let Some(reason) = t.ignored.as_ref() {
            tracing::debug!(%reason, "promotion input ignored");
        }
        self.note(&t.event);
        // A shadow that ends, or one that starts, has its counters from zero.
        if !matches!(self.state.phase, Phase::Shadow { .. }) || matches!(input, Input::Evaluated { .. }) {
            (self.shadow_decisions, self.shadow_overrides, self.shadow_last) = (0, 0, None);
        }
        self.state.history = keep_last(std::mem::take(&mut self.state.history), HISTORY_KEPT);
        out.take(t);
    }

    fn note(&mut self, ev: &Option<PromotionEvent>) {
        if let Some(e) = ev {
            self.last_event = Some(format!("{}: {}", e.reason.as_str(), e.message));
        }
    }

    /// Feeds the workload's trainings (see the module docs) at `now` (Unix seconds).
    pub fn feed_trainings(&mut self, cfg: &PromotionConfig, now: f64, trainings: &[TrainingInput], out: &mut Produced) {
        for t in trainings {
            let accepts_result = matches!(self.state.phase, Phase::Idle | Phase::Training { .. });
            match t {
                TrainingInput::Started { run } => {
                    let fresh = match &self.state.phase {
                        Phase::Idle => true,
                        Phase::Training { run: r, .. } => r != run,
                        _ => false,
                    };
                    // A run whose result was already judged is not training again.
                    if fresh && !self.consumed.iter().any(|k| k.split('@').next() == Some(run.as_str())) {
                        self.apply(cfg, now, &Input::TrainingStarted { run: run.clone() }, out);
                    }
                }
                TrainingInput::Evaluated { run, candidate, paired_differences, incumbent } => {
                    let key = format!("{run}@{}", candidate.digest);
                    if !accepts_result || self.consumed.contains(&key) {
                        continue;
                    }
                    self.consume(key);
                    let acting = self.state.active.as_ref().map(|a| a.digest.to_lowercase()).unwrap_or_default();
                    if let Some(judged) = incumbent.as_ref().filter(|i| !i.eq_ignore_ascii_case(&acting)) {
                        // Judged against a policy that no longer acts (a promotion or a
                        // rollback since): its numbers say nothing about the one that does.
                        let name = |d: &str| {
                            if d.is_empty() {
                                "the spec's policy".to_string()
                            } else {
                                d.chars().take(12).collect()
                            }
                        };
                        let message = format!(
                            "{}: training {run} judged it against {}, but {} acts now; evaluate it again",
                            describe(Some(candidate)),
                            name(judged),
                            name(&acting)
                        );
                        self.reject_result(message, out);
                        continue;
                    }
                    let input = Input::Evaluated {
                        candidate: candidate.clone(),
                        paired_differences: paired_differences.clone(),
                    };
                    self.apply(cfg, now, &input, out);
                }
                TrainingInput::Unreadable { run, message, key } => {
                    if !accepts_result || self.consumed.contains(key) {
                        continue;
                    }
                    self.consume(key.clone());
                    self.reject_result(format!("training {run}: {message}"), out);
                }
            }
        }
    }

    /// A training result that cannot be judged: `CandidateRejected` with `message`, idle.
    fn reject_result(&mut self, message: String, out: &mut Produced) {
        let ev = PromotionEvent { reason: Reason::CandidateRejected, message };
        self.state.phase = Phase::Idle;
        self.note(&Some(ev.clone()));
        out.events.push(ev);
    }

    fn consume(&mut self, key: String) {
        self.consumed.push_back(key);
        while self.consumed.len() > CONSUMED_KEPT {
            self.consumed.pop_front();
        }
    }

    /// Rejects the candidate in shadow with `why` (it cannot be built): idle again.
    fn reject(&mut self, why: String, out: &mut Produced) {
        let Phase::Shadow { candidate, .. } = &self.state.phase else { return };
        let ev = PromotionEvent {
            reason: Reason::CandidateRejected,
            message: format!("{}: cannot be loaded: {why}", describe(Some(candidate))),
        };
        self.state.phase = Phase::Idle;
        self.candidate = None;
        (self.shadow_decisions, self.shadow_overrides, self.shadow_last) = (0, 0, None);
        self.note(&Some(ev.clone()));
        out.events.push(ev);
    }

    /// The shadow step: when a candidate is in shadow, it decides on `obs` (the active
    /// policy's observation, already annotated by `shield`), the shield clamps its
    /// decision without recording it, the counters are fed to the rule. `build` builds a
    /// policy for a spec (the controller's builder); `now_str` stamps the decision record.
    /// Returns the candidate's shielded decision record, if it decided.
    #[allow(clippy::too_many_arguments)]
    pub fn shadow(
        &mut self,
        cfg: &PromotionConfig,
        spec: &LLMWorkloadSpec,
        build: Build<'_>,
        shield: &Shield,
        obs: &Observation,
        now: (f64, &str),
        out: &mut Produced,
    ) -> Option<DecisionStatus> {
        let Phase::Shadow { candidate, .. } = &self.state.phase else {
            self.candidate = None;
            return None;
        };
        let candidate = candidate.clone();
        if self.candidate.as_ref().is_none_or(|(d, _)| *d != candidate.digest) {
            match build(&effective_spec(spec, Some(&candidate))) {
                Ok(p) => self.candidate = Some((candidate.digest.clone(), p)),
                Err(e) => {
                    self.reject(e, out);
                    return None;
                }
            }
        }
        let (_, policy) = self.candidate.as_mut()?;
        let proposed = policy.decide(obs);
        let outcome = shield.clamp(obs, &proposed);
        let mut rules: Vec<String> = outcome.overrides.iter().map(|o| o.rule.as_str().to_string()).collect();
        rules.dedup();
        let record = DecisionStatus {
            time: now.1.to_string(),
            policy: format!("{} (candidate {})", policy.name(), candidate.digest.chars().take(12).collect::<String>()),
            reason: proposed.reason.clone(),
            targets: outcome
                .decision
                .targets
                .iter()
                .map(|t| TargetStatus { variant: t.variant.clone(), pool: t.pool.clone(), replicas: t.replicas })
                .collect(),
            shielded: outcome.shielded(),
            shield_rules: rules,
        };
        self.shadow_decisions += 1;
        self.shadow_overrides += u64::from(outcome.shielded());
        self.shadow_last = Some(record.clone());
        let input = Input::Shadow { decisions: self.shadow_decisions, shield_overrides: self.shadow_overrides };
        self.apply(cfg, now.0, &input, out);
        Some(record)
    }

    /// Takes the candidate policy built in shadow, once it was promoted: it has seen every
    /// observation of the shadow, so it acts with warm state instead of being loaded again.
    pub fn take_promoted(&mut self) -> Option<Box<dyn Policy>> {
        let digest = self.state.active.as_ref()?.digest.clone();
        match self.candidate.take() {
            Some((d, p)) if d == digest => Some(p),
            _ => None,
        }
    }

    /// The live step: the tick's SLO attainment (`None`: the metrics were incomplete, the
    /// tick adds nothing) weighted by the time since the previous tick that saw it, at most
    /// `max_tick_s`; a full window goes to the rule as `Input::Live`.
    pub fn live(
        &mut self,
        cfg: &PromotionConfig,
        now: f64,
        attainment: Option<f64>,
        max_tick_s: f64,
        out: &mut Produced,
    ) {
        let Some(a) = attainment.filter(|a| a.is_finite()) else { return };
        let dt = self.live_last.map(|t| (now - t).clamp(0.0, max_tick_s)).unwrap_or(0.0);
        self.live_last = Some(now);
        if dt <= 0.0 {
            return;
        }
        self.live_sum.0 += a.clamp(0.0, 1.0) * dt;
        self.live_sum.1 += dt;
        let window = (cfg.rollback_window_s / 6.0).max(max_tick_s / 2.0);
        if self.live_sum.1 + 1e-9 >= window {
            let (s, w) = std::mem::take(&mut self.live_sum);
            self.apply(cfg, now, &Input::Live { slo_attainment: s / w, window_s: w }, out);
        }
    }
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion::new()
    }
}

fn keep_last<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
    if v.len() > n {
        v.drain(..v.len() - n);
    }
    v
}

/// The Event to publish for a promotion Event: rejections and rollbacks are Warnings.
pub fn planned_event(e: &PromotionEvent) -> PlannedEvent {
    let (reason, warning) = match e.reason {
        Reason::TrainingStarted => (EventReason::TrainingStarted, false),
        Reason::CandidateRejected => (EventReason::CandidateRejected, true),
        Reason::ShadowStarted => (EventReason::ShadowStarted, false),
        Reason::Promoted => (EventReason::Promoted, false),
        Reason::RolledBack => (EventReason::RolledBack, true),
    };
    // The message's first word is the digest or the run: one Event series per candidate.
    let subject: String = e.message.split([':', ' ']).next().unwrap_or_default().chars().take(40).collect();
    let action = format!("{} {subject}", e.reason.as_str());
    if warning {
        PlannedEvent::warning(reason, action, e.message.clone())
    } else {
        PlannedEvent::normal(reason, action, e.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::decide::build_observation;
    use crate::controller::desired::Slot;
    use crate::controller::{Clock, ManualClock};
    use crate::policy::Decision;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// A policy that asks for `n` replicas of every slot.
    struct Fixed(u32);

    impl Policy for Fixed {
        fn name(&self) -> &str {
            "dqn"
        }
        fn decide(&mut self, obs: &Observation) -> Decision {
            let mut d = Decision::new(format!("fixed {}", self.0));
            for s in &obs.slots {
                d.set(&s.variant, &s.pool, self.0);
            }
            d
        }
    }

    fn spec() -> LLMWorkloadSpec {
        serde_json::from_value(serde_json::json!({
            "variants": [{"name": "v", "model": "m", "image": "i", "minReplicas": 1, "maxReplicas": 4}],
            "gpuPools": [{"name": "p", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
            "slo": {"ttftMs": 2000.0, "tpotMs": 100.0, "targetAttainment": 0.95},
            "policy": {"kind": "hpa", "intervalSeconds": 10},
            "learning": {"promotion": {
                "enabled": true, "shadowSeconds": 60, "minShadowDecisions": 5,
                "rollbackWindowSeconds": 60, "rollbackMargin": 0.02, "watchSeconds": 600
            }}
        }))
        .expect("spec")
    }

    /// The controller's builder, scripted: the spec's own policy is `hpa`; a learned one
    /// is [`Fixed`] by checkpoint (`good`: 2 replicas, `greedy`: 100, beyond every
    /// limit), and `missing` does not load.
    fn build(s: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, String> {
        if s.policy.kind != PolicyKind::Dqn {
            return Err(format!("the scripted builder only builds learned policies, not {}", s.policy.kind.as_str()));
        }
        let d = s.policy.dqn.as_ref().expect("dqn section");
        assert!(d.sha256.as_deref().is_some_and(crate::rl::policy::is_sha256_hex), "pinned by its digest");
        match d.checkpoint.as_str() {
            "/ckpt/good" => Ok(Box::new(Fixed(2))),
            "/ckpt/greedy" => Ok(Box::new(Fixed(100))),
            other => Err(format!("checkpoint {other}: checkpoint.json: No such file or directory")),
        }
    }

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn evaluated(run: &str, ckpt: &str, diffs: &[f64]) -> TrainingInput {
        let d = match ckpt {
            "/ckpt/good" => 'a',
            "/ckpt/greedy" => 'b',
            _ => 'c',
        };
        TrainingInput::Evaluated {
            run: run.into(),
            candidate: Candidate { digest: digest(d), checkpoint: ckpt.into() },
            paired_differences: diffs.to_vec(),
            incumbent: None,
        }
    }

    /// A workload, its promotion, a shield and a manual clock: the controller's step
    /// driven tick by tick.
    struct World {
        spec: LLMWorkloadSpec,
        cfg: PromotionConfig,
        p: Promotion,
        shield: Shield,
        clock: ManualClock,
        reasons: Vec<Reason>,
        messages: Vec<String>,
    }

    impl World {
        fn new() -> World {
            let spec = spec();
            World {
                cfg: config(&spec),
                shield: Shield::new(&spec),
                spec,
                p: Promotion::new(),
                clock: ManualClock::new(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap()),
                reasons: Vec::new(),
                messages: Vec::new(),
            }
        }

        fn now(&self) -> f64 {
            self.clock.now().as_millisecond() as f64 / 1000.0
        }

        fn take(&mut self, out: Produced) {
            for e in out.events {
                self.reasons.push(e.reason);
                self.messages.push(e.message);
            }
        }

        /// One control tick 10 s after the last: trainings, shadow, live attainment `a`.
        fn tick(&mut self, trainings: &[TrainingInput], a: f64) {
            self.clock.advance(Duration::from_secs(10));
            let now = self.now();
            let mut out = Produced::default();
            self.p.feed_trainings(&self.cfg, now, trainings, &mut out);
            let current = BTreeMap::from([(Slot::new("v", "p"), 1)]);
            let mut obs = build_observation(&self.spec, &current, &BTreeMap::new(), now, None);
            obs.slo_attainment = Some(a);
            self.shield.annotate(&mut obs);
            self.p.shadow(&self.cfg, &self.spec, &build, &self.shield, &obs, (now, "t"), &mut out);
            self.p.live(&self.cfg, now, Some(a), 20.0, &mut out);
            let promoted = out.events.iter().any(|e| e.reason == Reason::Promoted);
            self.take(out);
            if promoted {
                assert!(self.p.take_promoted().is_some(), "the shadow's policy acts on promotion");
            }
        }

        /// What the controller builds now.
        fn acting(&self) -> LLMWorkloadSpec {
            effective_spec(&self.spec, self.p.state.active.as_ref())
        }
    }

    #[test]
    fn a_better_candidate_is_shadowed_then_promoted_after_shadow_seconds() {
        let mut w = World::new();
        w.tick(&[TrainingInput::Started { run: "r1".into() }], 0.97);
        w.tick(&[TrainingInput::Started { run: "r1".into() }], 0.97);
        assert_eq!(w.reasons, [Reason::TrainingStarted], "a run that stays in training starts once");
        let ev = evaluated("r1", "/ckpt/good", &[0.05, 0.06, 0.04]);
        w.tick(std::slice::from_ref(&ev), 0.97);
        assert_eq!(w.reasons.last(), Some(&Reason::ShadowStarted));
        assert_eq!(w.p.shadow_decisions, 1, "the candidate decided at the tick it entered shadow");
        for _ in 0..5 {
            w.tick(std::slice::from_ref(&ev), 0.97);
        }
        assert!(matches!(w.p.state.phase, Phase::Shadow { .. }), "50 s of shadow is less than shadowSeconds");
        assert_eq!(w.acting().policy.kind, PolicyKind::Hpa, "the candidate does not act in shadow");
        let shown = w.p.to_status().shadow.expect("shadow status");
        assert_eq!((shown.decisions, shown.shield_overrides), (6, 0));
        assert_eq!(shown.last_decision.expect("its decision is shown").targets[0].replicas, 2);
        w.tick(&[], 0.97);
        assert_eq!(w.reasons, [Reason::TrainingStarted, Reason::ShadowStarted, Reason::Promoted]);
        let acting = w.acting();
        assert_eq!(acting.policy.kind, PolicyKind::Dqn);
        assert_eq!(acting.policy.dqn.as_ref().unwrap().checkpoint, "/ckpt/good");
        assert_eq!(acting.policy.dqn.as_ref().unwrap().sha256.as_deref(), Some(digest('a').as_str()));
        assert_eq!(w.spec.policy.kind, PolicyKind::Hpa, "the spec is not edited");
        let st = w.p.to_status();
        assert_eq!((st.phase.as_str(), st.history.len()), ("Watching", 1));
        assert_eq!(st.history[0].action, "Promoted");
        assert!(st.history[0].why.contains("evaluation +0.0500") && st.history[0].why.contains("over 60 s"), "{st:?}");
        assert!(st.baseline.is_some_and(|b| (b - 0.97).abs() < 1e-9), "baseline = the incumbent's live attainment");
    }

    #[test]
    fn a_worse_candidate_is_rejected_with_the_numbers() {
        let mut w = World::new();
        w.tick(&[evaluated("r1", "/ckpt/good", &[-0.05, -0.04, -0.06])], 0.97);
        assert_eq!(w.reasons, [Reason::CandidateRejected]);
        let m = &w.messages[0];
        assert!(m.contains("score difference -0.0500") && m.contains("3 seeds") && m.contains("margin 0.0000"), "{m}");
        assert_eq!(w.p.state.phase, Phase::Idle);
        assert_eq!(w.acting(), w.spec, "the spec's policy still acts");
        let c = w.p.condition();
        assert_eq!((c.status, c.reason.as_str()), ("False", "Idle"));
        assert!(c.message.contains("CandidateRejected"), "{}", c.message);
    }

    #[test]
    fn a_candidate_the_shield_overrides_in_shadow_is_rejected() {
        let mut w = World::new();
        w.tick(&[evaluated("r1", "/ckpt/greedy", &[0.05, 0.06, 0.04])], 0.97);
        assert_eq!(w.reasons, [Reason::ShadowStarted, Reason::CandidateRejected]);
        assert!(w.messages[1].contains("overridden 1 of 1 shadow decisions"), "{}", w.messages[1]);
        assert_eq!(w.p.state.phase, Phase::Idle);
        assert!(w.p.state.active.is_none() && w.p.take_promoted().is_none());
    }

    #[test]
    fn a_candidate_that_does_not_load_is_rejected_with_the_error() {
        let mut w = World::new();
        w.tick(&[evaluated("r1", "/ckpt/missing", &[0.05, 0.06, 0.04])], 0.97);
        assert_eq!(w.reasons, [Reason::ShadowStarted, Reason::CandidateRejected]);
        assert!(
            w.messages[1].contains("cannot be loaded") && w.messages[1].contains("No such file"),
            "{}",
            w.messages[1]
        );
        assert_eq!(w.p.state.phase, Phase::Idle);
    }

    /// Promotes the good candidate: 6 ticks of shadow at 0.97 live attainment.
    fn promoted() -> World {
        let mut w = World::new();
        let ev = evaluated("r1", "/ckpt/good", &[0.05, 0.06, 0.04]);
        for _ in 0..7 {
            w.tick(std::slice::from_ref(&ev), 0.97);
        }
        assert_eq!(w.reasons, [Reason::ShadowStarted, Reason::Promoted]);
        w
    }

    #[test]
    fn a_promoted_policy_that_degrades_the_slo_is_rolled_back() {
        let mut w = promoted();
        for _ in 0..10 {
            w.tick(&[], 0.90);
        }
        assert_eq!(w.reasons, [Reason::ShadowStarted, Reason::Promoted, Reason::RolledBack]);
        let m = w.messages.last().unwrap();
        assert!(m.contains("90.0 %") && m.contains("97.0 %") && m.contains("2.0 pt"), "{m}");
        assert_eq!(w.acting(), w.spec, "the previous policy (the spec's) is what the controller builds");
        assert!(w.p.take_promoted().is_none());
        let st = w.p.to_status();
        let actions: Vec<&str> = st.history.iter().map(|h| h.action.as_str()).collect();
        assert_eq!(actions, ["Promoted", "RolledBack"]);
        assert_eq!(st.history[1].digest, "", "rolled back to the spec's own policy");

        // Kept when within the margin.
        let mut w = promoted();
        for _ in 0..10 {
            w.tick(&[], 0.96);
        }
        assert_eq!(w.reasons, [Reason::ShadowStarted, Reason::Promoted]);
        assert_eq!(w.acting().policy.kind, PolicyKind::Dqn);
    }

    #[test]
    fn a_rollback_brings_back_the_previous_learned_policy() {
        let mut w = World::new();
        w.p.state.active = Some(Candidate { digest: digest('d'), checkpoint: "/ckpt/old".into() });
        let ev = evaluated("r2", "/ckpt/good", &[0.05, 0.06, 0.04]);
        for _ in 0..7 {
            w.tick(std::slice::from_ref(&ev), 0.97);
        }
        for _ in 0..10 {
            w.tick(&[], 0.5);
        }
        assert_eq!(w.reasons.last(), Some(&Reason::RolledBack));
        let acting = w.acting();
        assert_eq!(acting.policy.dqn.as_ref().unwrap().checkpoint, "/ckpt/old");
        assert_eq!(acting.policy.dqn.as_ref().unwrap().sha256.as_deref(), Some(digest('d').as_str()));
    }

    #[test]
    fn a_consumed_training_is_not_fed_twice() {
        let mut w = World::new();
        let ev = evaluated("r1", "/ckpt/good", &[-0.05, -0.04, -0.06]);
        for _ in 0..3 {
            w.tick(std::slice::from_ref(&ev), 0.97);
        }
        assert_eq!(w.reasons, [Reason::CandidateRejected]);
        assert_eq!(w.p.consumed, [format!("r1@{}", digest('a'))]);
        // Nor after a restart: the consumed list is in status.
        let st = serde_json::to_value(w.p.to_status()).unwrap();
        w.p = Promotion::from_status(Some(&serde_json::from_value(st).unwrap())).unwrap();
        w.tick(std::slice::from_ref(&ev), 0.97);
        w.tick(&[TrainingInput::Started { run: "r1".into() }], 0.97);
        assert_eq!(w.reasons, [Reason::CandidateRejected], "neither its result nor a stale Training phase");
        // A second candidate of another run is judged.
        w.tick(&[ev, evaluated("r2", "/ckpt/good", &[-0.1, -0.1, -0.1])], 0.97);
        assert_eq!(w.reasons, [Reason::CandidateRejected, Reason::CandidateRejected]);
    }

    #[test]
    fn state_restored_from_a_serialized_status_continues_where_it_was() {
        let mut w = World::new();
        let ev = evaluated("r1", "/ckpt/good", &[0.05, 0.06, 0.04]);
        for _ in 0..3 {
            w.tick(std::slice::from_ref(&ev), 0.97);
        }
        // The operator restarts (or another replica leads): only status.learning remains.
        let text = serde_json::to_string(&w.p.to_status()).unwrap();
        let restored: LearningStatus = serde_json::from_str(&text).unwrap();
        w.p = Promotion::from_status(Some(&restored)).unwrap();
        assert_eq!(w.p.to_status(), restored, "what is read back writes the same status");
        assert_eq!(w.p.shadow_decisions, 3);
        for _ in 0..4 {
            w.tick(std::slice::from_ref(&ev), 0.97);
        }
        assert_eq!(
            w.reasons,
            [Reason::ShadowStarted, Reason::Promoted],
            "the shadow went on, the candidate loaded again"
        );
        assert!(w.p.take_promoted().is_none(), "already taken at the promotion");
        // Watching survives a restart too, and still rolls back.
        let text = serde_json::to_string(&w.p.to_status()).unwrap();
        w.p = Promotion::from_status(Some(&serde_json::from_str(&text).unwrap())).unwrap();
        assert!(matches!(w.p.state.phase, Phase::Watching { .. }));
        for _ in 0..10 {
            w.tick(&[], 0.80);
        }
        assert_eq!(w.reasons.last(), Some(&Reason::RolledBack));
    }

    #[test]
    fn a_result_judged_against_another_incumbent_is_rejected() {
        let mut w = World::new();
        w.p.state.active = Some(Candidate { digest: digest('a'), checkpoint: "/ckpt/good".into() });
        let judged_against = |run: &str, inc: String| {
            let mut ev = evaluated(run, "/ckpt/greedy", &[0.5, 0.6, 0.4]);
            if let TrainingInput::Evaluated { incumbent, .. } = &mut ev {
                *incumbent = Some(inc);
            }
            ev
        };
        w.tick(&[judged_against("r1", String::new())], 0.97);
        assert_eq!(w.reasons, [Reason::CandidateRejected]);
        let m = &w.messages[0];
        assert!(m.contains("against the spec's policy") && m.contains("aaaaaaaaaaaa acts now"), "{m}");
        assert_eq!(w.acting().policy.dqn.unwrap().checkpoint, "/ckpt/good", "the promoted policy still acts");
        w.tick(&[judged_against("r2", digest('A'))], 0.97);
        assert_eq!(w.reasons[1], Reason::ShadowStarted, "judged against the policy that acts: {:?}", w.messages);
    }

    #[test]
    fn a_broken_status_is_an_error_naming_the_field() {
        let bad = LearningStatus { phase: "Shadowing".into(), ..Default::default() };
        assert!(Promotion::from_status(Some(&bad)).unwrap_err().contains("status.learning.phase `Shadowing`"));
        let bad = LearningStatus {
            phase: "Shadow".into(),
            since: Some("yesterday".into()),
            candidate: Some(PolicyRef { digest: digest('a'), checkpoint: "/c".into() }),
            ..Default::default()
        };
        assert!(Promotion::from_status(Some(&bad)).unwrap_err().contains("status.learning.since"));
        let bad = LearningStatus {
            phase: "Watching".into(),
            since: Some("2027-01-15T08:00:00Z".into()),
            candidate: Some(PolicyRef { digest: digest('a'), checkpoint: "/c".into() }),
            ..Default::default()
        };
        assert!(Promotion::from_status(Some(&bad)).unwrap_err().contains("baseline"));
    }

    #[test]
    fn trainings_are_read_from_their_json_and_bad_results_name_the_field() {
        let t = |phase: &str, ev: serde_json::Value| {
            serde_json::json!({
                "metadata": {"name": "r1"},
                "spec": {"workload": "chat"},
                "status": {"phase": phase, "evaluation": ev}
            })
        };
        let good = serde_json::json!({"candidate": {"digest": digest('A'), "checkpoint": "/c"}, "pairedDifferences": [0.1, 0.2]});
        assert_eq!(
            training_input(&t("Training", serde_json::Value::Null), "chat"),
            Some(TrainingInput::Started { run: "r1".into() })
        );
        assert_eq!(training_input(&t("Training", serde_json::Value::Null), "other"), None);
        assert_eq!(training_input(&t("Failed", serde_json::Value::Null), "chat"), None);
        match training_input(&t("Evaluated", good), "chat") {
            Some(TrainingInput::Evaluated { candidate, paired_differences, .. }) => {
                assert_eq!(candidate.digest, digest('a'), "digests are compared in lowercase");
                assert_eq!(paired_differences, [0.1, 0.2]);
            }
            other => panic!("{other:?}"),
        }
        let cases = [
            (
                serde_json::json!({"candidate": {"digest": "abc", "checkpoint": "/c"}, "pairedDifferences": []}),
                "candidate.digest",
            ),
            (
                serde_json::json!({"candidate": {"digest": digest('a')}, "pairedDifferences": []}),
                "candidate.checkpoint",
            ),
            (
                serde_json::json!({"candidate": {"digest": digest('a'), "checkpoint": "/c"}}),
                "pairedDifferences is missing",
            ),
            (
                serde_json::json!({"candidate": {"digest": digest('a'), "checkpoint": "/c"}, "pairedDifferences": [0.1, "x"]}),
                "pairedDifferences[1]",
            ),
        ];
        for (ev, field) in cases {
            match training_input(&t("Evaluated", ev.clone()), "chat") {
                Some(TrainingInput::Unreadable { message, .. }) => assert!(message.contains(field), "{ev}: {message}"),
                other => panic!("{ev}: {other:?}"),
            }
        }
        // An unreadable result is rejected once.
        let mut w = World::new();
        let bad = training_input(&t("Evaluated", serde_json::json!({})), "chat").unwrap();
        w.tick(std::slice::from_ref(&bad), 0.97);
        w.tick(&[bad], 0.97);
        assert_eq!(w.reasons, [Reason::CandidateRejected]);
    }
}
