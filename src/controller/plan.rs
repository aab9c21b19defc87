//! The reconcile plan: what one reconcile of a workload should write, computed without
//! any I/O.
//!
//! [`plan`] takes what reconcile read (the workload, its owned Deployments as an
//! [`Observed`], the time) and what the control tick produced (the observation with its
//! metrics, the policy's decision and the shield's outcome, as a [`TickOutcome`]) and
//! returns a [`Plan`]: the Deployments and Service to apply, the Deployments to delete,
//! the replica changes, the Events, the new status (conditions, decision record), the
//! decision counted in the operator's metrics and when to look again. The executor
//! ([`super::execute`]) carries it out; nothing here reads a clock or talks to the API
//! server, so every branch of reconcile can be tested as a table of inputs and plans.
//!
//! Event reasons and decision kinds are enums ([`EventReason`], [`DecisionKind`]) whose
//! `as_str` are the reason strings and metric labels that Events, `llmos_decisions_total`
//! and docs/operator.md use.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::crd::{ArbitrationStatus, DecisionStatus, LLMWorkload, LLMWorkloadSpec, LLMWorkloadStatus, TargetStatus};
use crate::policy::config::PolicyMode;
use crate::policy::shield::{slot_key, ShieldOutcome, ShieldRule};
use crate::policy::{Decision, Observation};

use super::decide::{changes, decision_targets, initial_targets, make_before_break, Change, SlotState};
use super::desired::{self, deployment_name, slots, Slot};
use super::status::{self, ConditionUpdate, DEGRADED, METRICS_AVAILABLE, POLICY_READY, READY};
use super::validate;

/// The reason of an Event the controller publishes (`as_str` is the Event's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// Warning: the spec is invalid and was not applied.
    InvalidSpec,
    /// Warning: the policy cannot be built; replicas are held.
    PolicyBuildFailed,
    /// Warning: metrics are missing or stale, or the source failed; replicas are held.
    MetricsUnavailable,
    /// What a policy in shadow mode would have done.
    ShadowDecision,
    /// The shield changed the policy's decision.
    ShieldOverride,
    /// A Deployment whose variant or pool left the spec was deleted.
    DeploymentDeleted,
    /// A slot went from 0 to some replicas.
    Placed,
    /// A slot got more replicas.
    ScaledUp,
    /// A slot got fewer replicas.
    ScaledDown,
    /// A new variant starts while the old one keeps serving, or an old one was drained.
    VariantSwitched,
    /// The finalizer deleted what the workload owned.
    Deleted,
    /// Warning: the policy reports a condition a human should know about (e.g. the
    /// forecast planner's forecasts have become poor).
    PolicyWarning,
    /// The policy's saved state (a ConfigMap) was put back after a restart.
    PolicyStateRestored,
    /// Warning: the policy's saved state could not be read or was rejected; the policy
    /// starts afresh.
    PolicyStateRejected,
    /// Warning: the arbiter of a shared GPU pool granted fewer replicas than the workload
    /// asked for (the pool is full of workloads of the same or higher priority).
    GpusRefused,
    /// Warning: a workload of higher priority took replicas of this one in a shared GPU
    /// pool (or the pool's capacity fell below what its workloads held).
    Preempted,
    /// This workload took GPUs of a shared pool from a workload of lower priority; the
    /// victim was scaled down first.
    Preempting,
    /// Replicas that did not fit in one shared slot were granted in another slot of the
    /// workload (another pool, or a smaller variant).
    Substituted,
    /// A training run of this workload's policy started (`spec.learning.promotion`).
    TrainingStarted,
    /// Warning: a retrained candidate failed its evaluation, its shadow, or could not be
    /// loaded; the message has the numbers.
    CandidateRejected,
    /// A retrained candidate passed its evaluation and decides in shadow.
    ShadowStarted,
    /// A retrained candidate became the workload's active policy.
    Promoted,
    /// Warning: a promoted policy degraded the SLO and the previous one is back.
    RolledBack,
    /// A scheduled round of retraining was created (`spec.learning.retrain`).
    RetrainStarted,
    /// Warning: a due round of retraining could not be created from its template (the
    /// message names the field and the template).
    RetrainRefused,
    /// Finished rounds of retraining beyond `historyLimit` were deleted.
    RetrainPruned,
}

impl EventReason {
    /// The Event's `reason`, as published and as docs/operator.md lists it.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventReason::InvalidSpec => "InvalidSpec",
            EventReason::PolicyBuildFailed => "PolicyBuildFailed",
            EventReason::MetricsUnavailable => "MetricsUnavailable",
            EventReason::ShadowDecision => "ShadowDecision",
            EventReason::ShieldOverride => "ShieldOverride",
            EventReason::DeploymentDeleted => "DeploymentDeleted",
            EventReason::Placed => "Placed",
            EventReason::ScaledUp => "ScaledUp",
            EventReason::ScaledDown => "ScaledDown",
            EventReason::VariantSwitched => "VariantSwitched",
            EventReason::Deleted => "Deleted",
            EventReason::PolicyWarning => "PolicyWarning",
            EventReason::PolicyStateRestored => "PolicyStateRestored",
            EventReason::PolicyStateRejected => "PolicyStateRejected",
            EventReason::GpusRefused => "GpusRefused",
            EventReason::Preempted => "Preempted",
            EventReason::Preempting => "Preempting",
            EventReason::Substituted => "Substituted",
            EventReason::TrainingStarted => "TrainingStarted",
            EventReason::CandidateRejected => "CandidateRejected",
            EventReason::ShadowStarted => "ShadowStarted",
            EventReason::Promoted => "Promoted",
            EventReason::RolledBack => "RolledBack",
            EventReason::RetrainStarted => "RetrainStarted",
            EventReason::RetrainRefused => "RetrainRefused",
            EventReason::RetrainPruned => "RetrainPruned",
        }
    }
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a control-tick decision (`as_str` is the `kind` label of `llmos_decisions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Replicas held: metrics unavailable, no policy, or a decision that changes nothing.
    Hold,
    /// A decision recorded in shadow mode, not applied.
    Shadow,
    /// More replicas in total.
    ScaleUp,
    /// Fewer replicas in total.
    ScaleDown,
    /// The same total, spread differently over the slots.
    Rebalance,
    /// A variant switch held by make-before-break.
    Switch,
}

impl DecisionKind {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionKind::Hold => "hold",
            DecisionKind::Shadow => "shadow",
            DecisionKind::ScaleUp => "scale_up",
            DecisionKind::ScaleDown => "scale_down",
            DecisionKind::Rebalance => "rebalance",
            DecisionKind::Switch => "switch",
        }
    }
}

/// An Event to publish about the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// The reason.
    pub reason: EventReason,
    /// What was done, concretely (`Scale small/l4 1->3`): Events with the same type,
    /// reason and action fold into one series, so different actions get their own.
    pub action: String,
    /// The human-readable note.
    pub note: String,
}

impl PlannedEvent {
    /// A Normal Event.
    pub fn normal(reason: EventReason, action: impl Into<String>, note: impl Into<String>) -> Self {
        PlannedEvent { type_: EventType::Normal, reason, action: action.into(), note: note.into() }
    }
    /// A Warning Event.
    pub fn warning(reason: EventReason, action: impl Into<String>, note: impl Into<String>) -> Self {
        PlannedEvent { type_: EventType::Warning, reason, action: action.into(), note: note.into() }
    }
}

/// An owned Deployment to delete, and the Event to publish once it is deleted (none when
/// it was already gone).
#[derive(Clone, Debug, PartialEq)]
pub struct Deletion {
    /// The Deployment's name.
    pub name: String,
    /// Published after a successful delete.
    pub event: PlannedEvent,
}

/// What reconcile read of the cluster: the workload's owned Deployments matched to the
/// slots of its spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The Deployments the workload owns, as listed.
    pub deployments: Vec<Deployment>,
    /// Every slot of the spec, in spec order.
    pub slots: Vec<Slot>,
    /// What the Deployment of each slot that has one reports.
    pub states: BTreeMap<Slot, SlotState>,
    /// Replicas per slot now: the Deployment's `spec.replicas`; for a slot without a
    /// Deployment 0 when its variant already has one, else the initial placement.
    pub current: BTreeMap<Slot, u32>,
}

impl Observed {
    /// Matches `deployments` (owned by `wl`) to the slots of `wl`'s spec.
    pub fn new(wl: &LLMWorkload, deployments: Vec<Deployment>) -> Self {
        let name = wl.name_any();
        let all_slots = slots(&wl.spec);
        let by_name: BTreeMap<String, &Deployment> = deployments.iter().map(|d| (d.name_any(), d)).collect();
        let states: BTreeMap<Slot, SlotState> = all_slots
            .iter()
            .filter_map(|s| by_name.get(&deployment_name(&name, s)).map(|d| (s.clone(), SlotState::of(d))))
            .collect();
        let initial = initial_targets(&wl.spec);
        let current = all_slots
            .iter()
            .map(|s| {
                let r = match states.get(s) {
                    Some(state) => state.desired,
                    None if states.keys().any(|k| k.variant == s.variant) => 0,
                    None => initial.get(s).copied().unwrap_or(0),
                };
                (s.clone(), r)
            })
            .collect();
        Observed { deployments, slots: all_slots, states, current }
    }
}

/// How the metrics read of a control tick went.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricsRead {
    /// The source answered and its snapshot was merged into the observation; what it
    /// lacked is in [`Observation::missing`].
    Read {
        /// The source's name.
        source: String,
    },
    /// The source failed (the error's message).
    Failed(String),
}

/// The policy's answer at a control tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    /// The policy's name.
    pub policy: String,
    /// What the policy asked for.
    pub decision: Decision,
    /// The shield's clamp of it.
    pub outcome: ShieldOutcome,
}

/// What a control tick produced, as data: the observation, the metrics read and, when
/// the metrics were complete and the policy could be built, the decision.
#[derive(Clone, Debug, PartialEq)]
pub struct TickOutcome {
    /// The observation (cluster part, merged metrics, the shield's annotations).
    pub observation: Observation,
    /// How the metrics read went.
    pub metrics: MetricsRead,
    /// The decision; `None` when the metrics were incomplete or there is no policy.
    pub decided: Option<Decided>,
    /// With incomplete metrics: the fleet raised to the shield's minima (a variant's
    /// `minReplicas`, `limits.minTotalReplicas`), when some slot is below them. A floor
    /// needs no metrics: a workload whose replicas were preempted to zero cannot see its
    /// traffic until it has a replica again, and would otherwise hold at zero forever.
    pub floor: Option<Decision>,
}

/// Settings of the controller the plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How soon an invalid spec is looked at again.
    pub invalid_spec_requeue: Duration,
}

/// Everything [`plan`] needs.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The workload (spec, status, generation, name, namespace, uid).
    pub workload: &'a LLMWorkload,
    /// What reconcile read of the cluster.
    pub observed: &'a Observed,
    /// Now.
    pub now: Timestamp,
    /// Why the workload's policy cannot be built, if it cannot.
    pub policy_error: Option<&'a str>,
    /// The control tick of this reconcile, if one was due.
    pub tick: Option<&'a TickOutcome>,
    /// When the last control tick ran before this reconcile (ignored when `tick` is set).
    pub last_tick: Option<Timestamp>,
    /// Controller settings.
    pub settings: Settings,
    /// What the arbiter of the shared GPU pools granted (`None` for a workload without
    /// shared pools, or before the arbitration).
    pub grants: Option<&'a Grants>,
}

/// What the arbiter of the shared GPU pools granted a workload at one reconcile
/// ([`super::share`]): it replaces the targets of the workload's shared slots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grants {
    /// Replicas per shared slot.
    pub targets: BTreeMap<Slot, u32>,
    /// Events about the arbitration (refusals, preemptions made, substitutions),
    /// published with the change events.
    pub events: Vec<PlannedEvent>,
    /// The record for `status.arbitration`.
    pub status: ArbitrationStatus,
}

/// An owned Deployment's identity and versions as the plan read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDeployment {
    /// `metadata.generation`: raised by every change to its spec.
    pub generation: i64,
    /// `metadata.uid`: another object when deleted and created again.
    pub uid: String,
    /// `metadata.resourceVersion`: raised by every write, its status's included.
    pub resource_version: Option<String>,
}

impl ObservedDeployment {
    /// `d`'s identity and versions; `None` for an object the API server has not stored
    /// (no generation or uid).
    pub fn of(d: &Deployment) -> Option<Self> {
        Some(ObservedDeployment {
            generation: d.metadata.generation?,
            uid: d.metadata.uid.clone()?,
            resource_version: d.metadata.resource_version.clone(),
        })
    }
}

/// What one reconcile writes, in the order the executor writes it: `notices`, then the
/// Deployments in `apply`, `delete` (each followed by its Event), `service`, `events`,
/// and last `status`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Events about what was observed and decided, published before anything is written.
    pub notices: Vec<PlannedEvent>,
    /// Deployments to server-side apply, one per slot in spec order.
    pub apply: Vec<Deployment>,
    /// Each owned Deployment as the plan saw it, by name: the executor skips an apply that
    /// would write what it wrote before to the same object whose spec nobody changed since
    /// (same uid, same generation), and fences every apply with its `resourceVersion`.
    pub observed_deployments: BTreeMap<String, ObservedDeployment>,
    /// Owned Deployments whose slot left the spec.
    pub delete: Vec<Deletion>,
    /// The Service to server-side apply (`None` for an invalid spec).
    pub service: Option<Service>,
    /// Replicas per slot after this reconcile (empty for an invalid spec).
    pub targets: BTreeMap<Slot, u32>,
    /// How each slot's replicas change from what the cluster had.
    pub changes: Vec<Change>,
    /// Events about what changed, published after the writes.
    pub events: Vec<PlannedEvent>,
    /// The status to write, `summary` included; it also holds the decision record
    /// (`lastDecision`, or `shadowDecision` in shadow mode).
    pub status: LLMWorkloadStatus,
    /// The decision the control tick made, counted in `llmos_decisions_total{kind}`.
    pub decision: Option<DecisionKind>,
    /// The shield's overrides of an applied decision, counted in `llmos_shield_overrides_total{rule}`.
    pub shield_overrides: Vec<ShieldRule>,
    /// What the shield records as applied (its scale-downs start cooldowns).
    pub shield_applied: Option<ShieldOutcome>,
    /// Lines to log at warning level.
    pub warnings: Vec<String>,
    /// When to reconcile again.
    pub requeue_after: Duration,
}

/// The plan of a workload whose spec is invalid (`Degraded=True`, a Warning Event unless
/// the same problems were already reported, no Deployment touched), or `None` when the
/// spec is valid.
pub fn invalid_spec(wl: &LLMWorkload, now: Timestamp, settings: Settings) -> Option<Plan> {
    let problems = validate::validate_spec(&wl.name_any(), &wl.spec);
    if problems.is_empty() {
        return None;
    }
    Some(degraded(wl, &problems, now, settings))
}

/// The plan for a spec whose `poolRefs` cannot be resolved (a GPUPool that does not
/// exist, a slot name that clashes with a pool's): the same as for an invalid spec,
/// naming the field.
pub fn unresolved_pools(
    wl: &LLMWorkload,
    err: &crate::crd::pool::PoolRefError,
    now: Timestamp,
    settings: Settings,
) -> Plan {
    let problem = validate::SpecProblem { field: err.field().to_string(), message: err.to_string() };
    degraded(wl, &[problem], now, settings)
}

/// `Degraded=True` (reason `InvalidSpec`) naming `problems`, a Warning Event when the
/// message is new, and nothing else touched.
fn degraded(wl: &LLMWorkload, problems: &[validate::SpecProblem], now: Timestamp, settings: Settings) -> Plan {
    let msg = validate::summary(problems);
    let (now_str, generation) = (now.to_string(), wl.meta().generation);
    let mut st = wl.status.clone().unwrap_or_default();
    st.observed_generation = generation;
    let was_degraded =
        status::condition(&st.conditions, DEGRADED).is_some_and(|c| c.status == "True" && c.message == msg);
    let degraded = ConditionUpdate::new(DEGRADED, true, "InvalidSpec", msg.clone());
    status::set_condition(&mut st.conditions, degraded, &now_str, generation);
    let ready = ConditionUpdate::new(READY, false, "InvalidSpec", "the spec is invalid; see the Degraded condition");
    status::set_condition(&mut st.conditions, ready, &now_str, generation);
    st.summary = Some(status::summary(&wl.spec, &st));
    let mut notices = Vec::new();
    if !was_degraded {
        let note = format!("spec not applied, fix: {msg}");
        notices.push(PlannedEvent::warning(EventReason::InvalidSpec, "ValidateSpec", note));
    }
    Plan {
        notices,
        status: st,
        warnings: vec![format!("invalid spec: {msg}")],
        requeue_after: settings.invalid_spec_requeue,
        ..Default::default()
    }
}

/// The plan of one reconcile (see the module doc); an invalid spec gives [`invalid_spec`]'s plan.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    if let Some(p) = invalid_spec(input.workload, input.now, input.settings) {
        return p;
    }
    let mut d = Draft::new(input);
    d.policy_condition(input.policy_error);
    if let Some(tick) = input.tick {
        d.tick(tick);
    }
    if let Some(g) = input.grants {
        d.grant(g);
    }
    let (apply, delete, service) = writes(input.workload, input.observed, &d.targets);
    let before: BTreeMap<Slot, u32> = input
        .observed
        .slots
        .iter()
        .map(|s| (s.clone(), input.observed.states.get(s).map_or(0, |st| st.desired)))
        .collect();
    let changes = changes(&before, &d.targets);
    let mut events = d.change_events(&changes);
    events.extend(d.switch_events(&before));
    events.extend(input.grants.iter().flat_map(|g| g.events.iter().cloned()));
    d.finish_status();
    let last = if input.tick.is_some() { input.now } else { input.last_tick.unwrap_or(input.now) };
    let observed_deployments = input
        .observed
        .deployments
        .iter()
        .filter_map(|dep| Some((dep.name_any(), ObservedDeployment::of(dep)?)))
        .collect();
    Plan {
        notices: d.notices,
        apply,
        observed_deployments,
        delete,
        service: Some(service),
        targets: d.targets,
        changes,
        events,
        status: d.st,
        decision: d.decision,
        shield_overrides: d.shield_overrides,
        shield_applied: d.shield_applied,
        warnings: d.warnings,
        requeue_after: requeue_after(input.workload, input.now, last),
    }
}

/// Look again at the next tick ([`next_tick`]), at least 0.5 s from now.
fn requeue_after(wl: &LLMWorkload, now: Timestamp, last_tick: Timestamp) -> Duration {
    let wait = Duration::try_from(next_tick(wl, last_tick).duration_since(now)).unwrap_or(Duration::ZERO);
    wait.max(Duration::from_millis(500))
}

/// What is left of `requeue_after`, planned at `planned`, at `now` (the reconcile's
/// writes took the difference), at least 0.5 s: the next tick then comes when it is
/// due instead of one reconcile's duration late.
pub fn requeue_from(requeue_after: Duration, planned: Timestamp, now: Timestamp) -> Duration {
    let spent = Duration::try_from(now.duration_since(planned)).unwrap_or(Duration::ZERO);
    requeue_after.saturating_sub(spent).max(Duration::from_millis(500))
}

/// A workload's place in its control interval, in ms: a stable hash (FNV-1a) of its uid
/// (else its namespace and name) modulo the interval. Every replica of the operator
/// computes the same one, so a new leader keeps the workload's ticks where they were.
pub fn tick_phase_ms(wl: &LLMWorkload, interval_ms: i64) -> i64 {
    let key =
        wl.metadata.uid.clone().unwrap_or_else(|| format!("{}/{}", wl.namespace().unwrap_or_default(), wl.name_any()));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % interval_ms.max(1) as u64) as i64
}

/// When the tick after `last_tick` is due: the first instant at least half an interval
/// after it whose Unix time in ms is the workload's phase ([`tick_phase_ms`]) modulo the
/// interval. Workloads that tick together once (an operator start, a failover, many
/// applied at once) so spread their reconciles over the interval instead of keeping to
/// one instant; once on its phase a workload ticks exactly every interval (a tick that
/// runs late by less than half an interval does not move the next one).
pub fn next_tick(wl: &LLMWorkload, last_tick: Timestamp) -> Timestamp {
    let interval_ms = i64::from(wl.spec.policy.interval_seconds.max(1)) * 1000;
    let earliest = last_tick.as_millisecond().saturating_add(interval_ms / 2);
    let phase = tick_phase_ms(wl, interval_ms);
    let wait = (phase - earliest).rem_euclid(interval_ms);
    Timestamp::from_millisecond(earliest.saturating_add(wait)).unwrap_or(last_tick)
}

/// The objects to write: one Deployment per slot with its target replicas, deletions of
/// owned Deployments whose slot left the spec, and the Service.
fn writes(
    wl: &LLMWorkload,
    observed: &Observed,
    targets: &BTreeMap<Slot, u32>,
) -> (Vec<Deployment>, Vec<Deletion>, Service) {
    let name = wl.name_any();
    let apply = observed
        .slots
        .iter()
        .filter_map(|s| desired::deployment(wl, s, targets.get(s).copied().unwrap_or(0)))
        .collect();
    let wanted: Vec<String> = observed.slots.iter().map(|s| deployment_name(&name, s)).collect();
    let delete = observed
        .deployments
        .iter()
        .map(|d| d.name_any())
        .filter(|dn| !wanted.contains(dn))
        .map(|dn| Deletion {
            event: PlannedEvent::normal(
                EventReason::DeploymentDeleted,
                format!("Delete {dn}"),
                format!("deleted {dn}: its variant or pool left the spec"),
            ),
            name: dn,
        })
        .collect();
    (apply, delete, desired::service(wl))
}

/// The plan being built for a workload with a valid spec.
struct Draft<'a> {
    spec: &'a LLMWorkloadSpec,
    observed: &'a Observed,
    now_str: String,
    generation: Option<i64>,
    st: LLMWorkloadStatus,
    targets: BTreeMap<Slot, u32>,
    /// Variants whose scale-down make-before-break holds.
    held_variants: Vec<String>,
    /// Variants the policy asked to shrink at this tick (before the shield and sequencing).
    asked_down: Vec<String>,
    notices: Vec<PlannedEvent>,
    decision: Option<DecisionKind>,
    shield_overrides: Vec<ShieldRule>,
    shield_applied: Option<ShieldOutcome>,
    warnings: Vec<String>,
}

impl<'a> Draft<'a> {
    fn new(input: &PlanInput<'a>) -> Self {
        let mut st = input.workload.status.clone().unwrap_or_default();
        let generation = input.workload.meta().generation;
        st.observed_generation = generation;
        Draft {
            spec: &input.workload.spec,
            observed: input.observed,
            now_str: input.now.to_string(),
            generation,
            st,
            targets: input.observed.current.clone(),
            held_variants: Vec::new(),
            asked_down: Vec::new(),
            notices: Vec::new(),
            decision: None,
            shield_overrides: Vec::new(),
            shield_applied: None,
            warnings: Vec::new(),
        }
    }

    fn set_condition(&mut self, update: ConditionUpdate) {
        status::set_condition(&mut self.st.conditions, update, &self.now_str, self.generation);
    }

    /// `PolicyReady`, and a Warning when the policy has just become unbuildable.
    fn policy_condition(&mut self, policy_error: Option<&str>) {
        let Some(e) = policy_error else {
            let what = format!("policy {} ({:?} mode)", self.spec.policy.kind.as_str(), self.spec.policy.mode);
            self.set_condition(ConditionUpdate::new(POLICY_READY, true, "PolicyBuilt", what.to_lowercase()));
            return;
        };
        let was = status::condition(&self.st.conditions, POLICY_READY).is_some_and(|c| c.status == "False");
        self.set_condition(ConditionUpdate::new(POLICY_READY, false, "PolicyBuildFailed", e));
        if !was {
            let note = format!("holding replicas: {e}");
            self.notices.push(PlannedEvent::warning(EventReason::PolicyBuildFailed, "BuildPolicy", note));
        }
    }

    /// The control tick: hold on incomplete metrics, else record (shadow) or sequence and
    /// apply (active) the shielded decision.
    fn tick(&mut self, tick: &TickOutcome) {
        let obs = &tick.observation;
        self.st.cost_rate_usd_per_hour = Some(obs.cost_rate_usd_per_hour);
        let source = match &tick.metrics {
            MetricsRead::Read { source } if obs.missing.is_empty() => source,
            MetricsRead::Read { .. } => {
                let msg = format!("missing or stale: {}", obs.missing.join(", "));
                return self.hold_metrics("MetricsMissing", msg, tick.floor.as_ref());
            }
            MetricsRead::Failed(e) => return self.hold_metrics("MetricsSourceError", e.clone(), tick.floor.as_ref()),
        };
        self.set_condition(ConditionUpdate::new(METRICS_AVAILABLE, true, "MetricsRead", format!("read from {source}")));
        self.st.observed_arrival_rate_rps = Some(obs.arrival_rate_rps);
        self.st.slo_attainment = obs.slo_attainment;
        for (d, w) in tick.decided.iter().flat_map(|d| d.decision.warnings.iter().map(move |w| (d, w))) {
            self.notices.push(PlannedEvent::warning(
                EventReason::PolicyWarning,
                format!("Warn {}", d.policy),
                w.clone(),
            ));
            self.warnings.push(format!("{}: {w}", d.policy));
        }
        match &tick.decided {
            None => self.decision = Some(DecisionKind::Hold),
            Some(d) if self.spec.policy.mode == PolicyMode::Shadow => self.shadow(d),
            Some(d) => self.active(d),
        }
    }

    /// Metrics are missing or the source failed: replicas are held and the reason said,
    /// except that slots below the shield's minima are raised to them (`floor`).
    fn hold_metrics(&mut self, reason: &'static str, msg: String, floor: Option<&Decision>) {
        let total: u32 = self.observed.current.values().sum();
        self.set_condition(ConditionUpdate::new(METRICS_AVAILABLE, false, reason, msg.clone()));
        let raised = floor
            .map(|f| decision_targets(self.spec, f, &self.observed.current))
            .filter(|f| f.iter().any(|(s, r)| *r > self.observed.current.get(s).copied().unwrap_or(0)));
        let note = match &raised {
            None => format!("holding {total} replicas: {msg}"),
            Some(f) => {
                // Only raises: a slot above its floor keeps what it has.
                for (s, r) in f {
                    let t = self.targets.entry(s.clone()).or_insert(0);
                    *t = (*t).max(*r);
                }
                let to: u32 = self.targets.values().sum();
                format!("holding {total} replicas, raised to the spec's minimum of {to}: {msg}")
            }
        };
        self.notices.push(PlannedEvent::warning(EventReason::MetricsUnavailable, format!("Hold {reason}"), note));
        self.decision = Some(if raised.is_some() { self.kind() } else { DecisionKind::Hold });
        self.warnings.push(format!("metrics unavailable; holding replicas: {reason}: {msg}"));
    }

    /// The decision record of `d` with `targets`.
    fn record(&self, d: &Decided, targets: &BTreeMap<Slot, u32>) -> DecisionStatus {
        let mut rules: Vec<String> = d.outcome.overrides.iter().map(|o| o.rule.as_str().to_string()).collect();
        rules.dedup();
        DecisionStatus {
            time: self.now_str.clone(),
            policy: d.policy.clone(),
            reason: d.decision.reason.clone(),
            targets: targets
                .iter()
                .map(|(s, r)| TargetStatus { variant: s.variant.clone(), pool: s.pool.clone(), replicas: *r })
                .collect(),
            shielded: d.outcome.shielded(),
            shield_rules: rules,
        }
    }

    /// Shadow mode: the shielded decision is recorded and announced, not applied.
    fn shadow(&mut self, d: &Decided) {
        let proposed = decision_targets(self.spec, &d.outcome.decision, &self.observed.current);
        self.st.shadow_decision = Some(self.record(d, &proposed));
        self.decision = Some(DecisionKind::Shadow);
        if proposed != self.observed.current {
            self.notices.push(PlannedEvent::normal(
                EventReason::ShadowDecision,
                format!("Shadow {}", describe(&proposed)),
                format!(
                    "{} would set {} ({}); not applied (shadow mode)",
                    d.policy,
                    describe(&proposed),
                    d.decision.reason
                ),
            ));
        }
    }

    /// Active mode: the shielded decision, sequenced by make-before-break, becomes the targets.
    fn active(&mut self, d: &Decided) {
        let current = &self.observed.current;
        let proposed = decision_targets(self.spec, &d.outcome.decision, current);
        let seq = make_before_break(&proposed, current, &self.observed.states);
        self.targets = seq.targets;
        self.held_variants = seq.held_variants;
        let asked = decision_targets(self.spec, &d.decision, current);
        for v in &self.spec.variants {
            if variant_total(&asked, &v.name) < variant_total(current, &v.name) {
                self.asked_down.push(v.name.clone());
            }
        }
        // The shield records what is really applied (cooldowns start on applied scale-downs).
        let mut applied = Decision::new(d.decision.reason.clone());
        for (s, r) in &self.targets {
            applied.set(&s.variant, &s.pool, *r);
        }
        self.shield_applied = Some(ShieldOutcome { decision: applied, overrides: d.outcome.overrides.clone() });
        self.shield_overrides = d.outcome.overrides.iter().map(|o| o.rule).collect();
        if d.outcome.shielded() {
            self.shield_override(d);
        }
        self.st.last_decision = Some(self.record(d, &self.targets));
        self.decision = Some(self.kind());
    }

    /// The arbiter's grants replace the targets of the shared slots; what the shield
    /// records as applied, the decision record and the decision's kind follow them.
    fn grant(&mut self, g: &Grants) {
        let mut status = g.status.clone();
        if status.last_preempted.is_none() {
            status.last_preempted = self.st.arbitration.as_ref().and_then(|a| a.last_preempted.clone());
        }
        self.st.arbitration = Some(status);
        let mut changed = false;
        for (s, r) in &g.targets {
            if let Some(t) = self.targets.get_mut(s) {
                changed |= *t != *r;
                *t = *r;
            }
        }
        if !changed {
            return;
        }
        if let Some(applied) = &mut self.shield_applied {
            for (s, r) in &g.targets {
                applied.decision.set(&s.variant, &s.pool, *r);
            }
        }
        if let Some(rec) = self.st.last_decision.as_mut().filter(|r| r.time == self.now_str) {
            rec.targets = self
                .targets
                .iter()
                .map(|(s, r)| TargetStatus { variant: s.variant.clone(), pool: s.pool.clone(), replicas: *r })
                .collect();
        }
        if !matches!(self.decision, None | Some(DecisionKind::Hold) | Some(DecisionKind::Shadow)) {
            self.decision = Some(self.kind());
        }
    }

    /// Counts the shield's overrides in status and says which rule changed which slot.
    fn shield_override(&mut self, d: &Decided) {
        let overrides = &d.outcome.overrides;
        self.st.shield_overrides = self.st.shield_overrides.saturating_add(overrides.len() as u64);
        let mut rules: Vec<&str> = overrides.iter().map(|o| o.rule.as_str()).collect();
        rules.dedup();
        let what: Vec<String> = overrides
            .iter()
            .map(|o| format!("{} {}/{} {}→{}", o.rule.as_str(), o.variant, o.pool, o.asked, o.applied))
            .collect();
        self.notices.push(PlannedEvent::normal(
            EventReason::ShieldOverride,
            format!("Shield {}", rules.join(",")),
            format!("shield changed {}'s decision: {}", d.policy, what.join(", ")),
        ));
    }

    /// The kind of an applied decision, from the targets and what the cluster had.
    fn kind(&self) -> DecisionKind {
        let current = &self.observed.current;
        let (to, from) = (self.targets.values().sum::<u32>(), current.values().sum::<u32>());
        if !self.held_variants.is_empty() {
            DecisionKind::Switch
        } else if to > from {
            DecisionKind::ScaleUp
        } else if to < from {
            DecisionKind::ScaleDown
        } else if self.targets != *current {
            DecisionKind::Rebalance
        } else {
            DecisionKind::Hold
        }
    }

    /// `Placed`/`ScaledUp`/`ScaledDown` per changed slot (scale-downs start the slot's
    /// cooldown in status), and the time of the last action.
    fn change_events(&mut self, ch: &[Change]) -> Vec<PlannedEvent> {
        let first_creation = self.observed.states.is_empty();
        let mut out = Vec::new();
        for c in ch {
            let (reason, action, note) = match c {
                Change::Placed { slot, to } => {
                    let gpu =
                        self.spec.gpu_pools.iter().find(|p| p.name == slot.pool).map_or("", |p| p.gpu_type.as_str());
                    let note = format!("placed {to} replica(s) of {} on pool {} ({gpu})", slot.variant, slot.pool);
                    (EventReason::Placed, format!("Scale {}/{} 0->{to}", slot.variant, slot.pool), note)
                }
                Change::Up { slot, from, to } => {
                    let note = format!("{}/{}: {from} → {to} replicas", slot.variant, slot.pool);
                    (EventReason::ScaledUp, format!("Scale {}/{} {from}->{to}", slot.variant, slot.pool), note)
                }
                Change::Down { slot, from, to } => {
                    self.st.last_scale_down.insert(slot_key(&slot.variant, &slot.pool), self.now_str.clone());
                    let note = format!("{}/{}: {from} → {to} replicas", slot.variant, slot.pool);
                    (EventReason::ScaledDown, format!("Scale {}/{} {from}->{to}", slot.variant, slot.pool), note)
                }
            };
            let why = self
                .st
                .last_decision
                .as_ref()
                .filter(|_| !first_creation)
                .map(|d| format!(" ({})", d.reason))
                .unwrap_or_default();
            out.push(PlannedEvent::normal(reason, action, format!("{note}{why}")));
        }
        if !ch.is_empty() && !first_creation {
            self.st.last_action_time = Some(self.now_str.clone());
        }
        out
    }

    /// `VariantSwitched`: a variant starting from nothing while others drain, and each
    /// variant drained to nothing while others serve.
    fn switch_events(&self, before: &BTreeMap<Slot, u32>) -> Vec<PlannedEvent> {
        let (spec, targets) = (self.spec, &self.targets);
        let first_creation = self.observed.states.is_empty();
        let mut out = Vec::new();
        let starting: Vec<&str> = spec
            .variants
            .iter()
            .filter(|v| variant_total(before, &v.name) == 0 && variant_total(targets, &v.name) > 0)
            .map(|v| v.name.as_str())
            .collect();
        let mut draining: Vec<String> = self.held_variants.clone();
        draining.extend(
            self.asked_down
                .iter()
                .filter(|v| variant_total(targets, v) > 0 && !starting.contains(&v.as_str()))
                .cloned(),
        );
        draining.sort();
        draining.dedup();
        if !first_creation && !starting.is_empty() && !draining.is_empty() {
            out.push(PlannedEvent::normal(
                EventReason::VariantSwitched,
                format!("Start {}", starting.join(",")),
                format!(
                    "switching to {}: it starts first; {} keep(s) serving, drained as its replicas become ready",
                    starting.join(", "),
                    draining.join(", ")
                ),
            ));
        }
        let serving: Vec<&str> =
            spec.variants.iter().filter(|o| variant_total(targets, &o.name) > 0).map(|o| o.name.as_str()).collect();
        let total: u32 = targets.values().sum();
        for v in &spec.variants {
            if variant_total(before, &v.name) > 0 && variant_total(targets, &v.name) == 0 && total > 0 {
                out.push(PlannedEvent::normal(
                    EventReason::VariantSwitched,
                    format!("Drain {}", v.name),
                    format!("drained {}; now serving: {}", v.name, serving.join(", ")),
                ));
            }
        }
        out
    }

    /// Slots, totals, cooldowns of slots that still exist, rollout conditions,
    /// `Degraded=False`, `MetricsAvailable=Unknown` before the first tick, and the summary.
    fn finish_status(&mut self) {
        let all_slots = &self.observed.slots;
        self.st.slots = status::slot_statuses(&self.targets, &self.observed.states, all_slots);
        self.st.desired_replicas = self.targets.values().sum();
        self.st.ready_replicas = self.st.slots.iter().map(|s| s.ready_replicas).sum();
        self.st.last_scale_down.retain(|k, _| all_slots.iter().any(|s| s.key() == *k));
        for c in status::rollout_conditions(&self.st.slots) {
            self.set_condition(c);
        }
        self.set_condition(ConditionUpdate::new(DEGRADED, false, "AsExpected", "the spec is valid and applied"));
        if status::condition(&self.st.conditions, METRICS_AVAILABLE).is_none() {
            self.set_condition(ConditionUpdate::unknown(METRICS_AVAILABLE, "NotReadYet", "no control tick yet"));
        }
        self.st.summary = Some(status::summary(self.spec, &self.st));
    }
}

fn variant_total(m: &BTreeMap<Slot, u32>, variant: &str) -> u32 {
    m.iter().filter(|(s, _)| s.variant == variant).map(|(_, r)| *r).sum()
}

fn describe(t: &BTreeMap<Slot, u32>) -> String {
    t.iter().map(|(s, r)| format!("{}/{}={r}", s.variant, s.pool)).collect::<Vec<_>>().join(", ")
}

/// Whether the tick after `last_tick` is due at `now` ([`next_tick`]; always when there
/// was none).
pub fn tick_due(wl: &LLMWorkload, now: Timestamp, last_tick: Option<Timestamp>) -> bool {
    last_tick.is_none_or(|t| now >= next_tick(wl, t))
}
