//! The operator's own telemetry: Prometheus metrics (`llmos_*`), the `/metrics`,
//! `/healthz` and `/readyz` endpoints, the decision pages (`/decisions`, [`super::page`]),
//! and the tracing subscriber (text or JSON logs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::journal::DecisionJournal;

/// Label set with an error reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Error reason (e.g. `KubeApi`, `Metrics`).
    pub reason: String,
}

/// Label set with a decision kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `scale_up`, `scale_down`, `hold`, `switch`, `shadow`.
    pub kind: String,
}

/// Label set with the outcome of a write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `written`, `unchanged` (not sent), or for status writes `conflict` (refused, then
    /// written again).
    pub outcome: String,
}

/// Label set of a traffic record window's fate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordResultLabel {
    /// `handed` (to the writer), `dropped` (the writer's queue was full or it had
    /// stopped), or `unread` (the source's window query failed).
    pub result: String,
}

/// A phase of a reconcile, the label of `llmos_reconcile_phase_duration_seconds`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Phase {
    /// The cluster reads before a tick: pool refs, the owned Deployments (from the
    /// watch's cache), the workload's state and its saved policy state.
    Read,
    /// The metrics source's answer (16 PromQL queries for Prometheus).
    Observe,
    /// The policy's decision and the shield's clamp, waiting for the workload's lock
    /// included.
    Decide,
    /// The plan, the arbiter of shared pools (its lock included), the journal and the
    /// per-workload gauges.
    Plan,
    /// The writes: Events, applies, deletes and the status patch.
    Write,
    /// Saving a learning policy's state to its ConfigMap.
    SaveState,
}

impl Phase {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::Observe => "observe",
            Phase::Decide => "decide",
            Phase::Plan => "plan",
            Phase::Write => "write",
            Phase::SaveState => "save_state",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Phase {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Label set of `llmos_reconcile_phase_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The phase.
    pub phase: Phase,
}

/// A histogram family whose histograms have the reconcile's buckets (1 ms … 16 s).
pub type PhaseHistograms = Family<PhaseLabel, Histogram, fn() -> Histogram>;

/// Registers `llmos_reconcile_phase_duration_seconds` and `llmos_control_tick_lag_seconds`.
fn register_phases(registry: &mut Registry, phases: &PhaseHistograms, lag: &Histogram) {
    registry.register(
        "reconcile_phase_duration_seconds",
        "Time a reconciliation spent in each phase (read, observe, decide, plan, write, save_state)",
        phases.clone(),
    );
    registry.register("control_tick_lag_seconds", "How long after it was due a control tick started", lag.clone());
}

/// The buckets of the reconcile's histograms: 1 ms … 16 s, doubling.
fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The buckets of the phases: 100 µs … 13 s, doubling.
fn phase_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Label set of an object write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectWriteLabel {
    /// `deployment` or `service`.
    pub object: String,
    /// `written`, or `unchanged` (not sent).
    pub outcome: String,
}

/// Labels of `llmos_admission_reviews_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// The reviewed object's kind (`LLMWorkload`, `LLMPolicyTraining`; empty for a body
    /// that was not a review).
    pub kind: String,
    /// `CREATE`, `UPDATE`, `DELETE`, ... (empty for a body that was not a review).
    pub operation: String,
    /// `allowed`, `denied`, or `bad_request` (not an admission.k8s.io/v1 review: 400; a
    /// body over the size limit is refused before it is read, 413, and not counted).
    pub verdict: String,
}

/// The validating admission webhook's metrics: what it answered and how fast. A webhook
/// with `failurePolicy: Ignore` that stops answering goes unnoticed by users; these and
/// the API server's own `apiserver_admission_webhook_*` metrics show it.
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    /// `llmos_admission_reviews_total{kind, operation, verdict}`.
    pub reviews: Family<AdmissionLabels, Counter>,
    /// `llmos_admission_review_duration_seconds`: from the body read to the answer.
    pub duration: Histogram,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        // 10 µs .. 5 s, doubling.
        Self { reviews: Family::default(), duration: Histogram::new(exponential_buckets(0.00001, 2.0, 20)) }
    }
}

impl AdmissionMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "admission_reviews",
            "Admission reviews the validating webhook answered, by kind, operation and verdict (allowed, denied, bad_request)",
            self.reviews.clone(),
        );
        registry.register(
            "admission_review_duration_seconds",
            "Time the validating webhook took to answer a review",
            self.duration.clone(),
        );
    }

    /// Counts one answered review.
    pub fn review(&self, kind: &str, operation: &str, verdict: &str) {
        self.reviews
            .get_or_create(&AdmissionLabels { kind: kind.into(), operation: operation.into(), verdict: verdict.into() })
            .inc();
    }
}

/// Labels of `llmos_policy_promotions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PromotionLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub workload: String,
    /// `TrainingStarted`, `CandidateRejected`, `ShadowStarted`, `Promoted` or `RolledBack`.
    pub action: String,
}

/// Labels of `llmos_shadow_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowDecisionLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub workload: String,
    /// `true` when the shield would have changed the candidate's decision.
    pub shielded: String,
}

/// Labels of `llmos_shadow_desired_replicas`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowReplicaLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub workload: String,
    /// The variant.
    pub variant: String,
    /// The pool.
    pub pool: String,
}

/// Label set with a shield rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The shield rule (e.g. `MaxStepChange`).
    pub rule: String,
}

/// Label set of one workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub workload: String,
}

/// Label set of one slot count of a workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct SlotLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub workload: String,
    /// Variant.
    pub variant: String,
    /// GPU pool.
    pub pool: String,
    /// `desired` or `ready`.
    pub state: String,
}

/// Label set of a workload's policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub workload: String,
    /// The policy kind (`hpa`, `dqn`, ...).
    pub policy: String,
    /// `active` or `shadow`.
    pub mode: String,
}

/// A gauge holding a float.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// What the operator knows of one workload after a control tick, for its gauges.
pub struct WorkloadReading<'a> {
    /// Namespace and name.
    pub labels: WorkloadLabels,
    /// The spec (SLO target, policy).
    pub spec: &'a crate::crd::LLMWorkloadSpec,
    /// The status the tick wrote (slots, SLO attainment, cost, arrivals).
    pub status: &'a crate::crd::LLMWorkloadStatus,
    /// The metrics source answered and nothing the policy needs was missing.
    pub metrics_available: bool,
    /// The policy could be built (a learned policy's checkpoint loaded).
    pub policy_ready: bool,
}

/// Per-workload gauges (`llmos_workload_*`, `llmos_slot_replicas`): what the dashboard
/// and the alerts in the chart read.
#[derive(Clone, Default)]
pub struct WorkloadGauges {
    /// `llmos_workload_slo_attainment_ratio`: observed SLO attainment over the metrics
    /// window (absent while unknown).
    pub slo_attainment: Family<WorkloadLabels, FloatGauge>,
    /// `llmos_workload_slo_target_ratio`: `spec.slo.targetAttainment`.
    pub slo_target: Family<WorkloadLabels, FloatGauge>,
    /// `llmos_workload_cost_per_hour_usd`: GPUs held × price.
    pub cost_per_hour: Family<WorkloadLabels, FloatGauge>,
    /// `llmos_workload_arrival_rate_rps`: the arrival rate the policy saw.
    pub arrival_rate: Family<WorkloadLabels, FloatGauge>,
    /// `llmos_workload_metrics_available`: 1 when the last tick could see, else 0.
    pub metrics_available: Family<WorkloadLabels, FloatGauge>,
    /// `llmos_workload_policy_ready`: 1 when the policy is built, 0 when it could not be
    /// (the workload holds).
    pub policy_ready: Family<WorkloadLabels, FloatGauge>,
    /// `llmos_workload_policy_info{policy, mode}`: 1 for the workload's policy.
    pub policy_info: Family<PolicyLabels, FloatGauge>,
    /// `llmos_slot_replicas{variant, pool, state}`: desired and ready replicas per slot.
    pub slot_replicas: Family<SlotLabels, FloatGauge>,
    /// The slot and policy series set per workload, to drop the stale ones.
    written: Arc<Mutex<BTreeMap<WorkloadLabels, (BTreeSet<SlotLabels>, BTreeSet<PolicyLabels>)>>>,
}

impl WorkloadGauges {
    fn register(&self, registry: &mut Registry) {
        let families = [
            ("workload_slo_attainment_ratio", "Observed SLO attainment over the metrics window", &self.slo_attainment),
            ("workload_slo_target_ratio", "The workload's SLO attainment target", &self.slo_target),
            ("workload_cost_per_hour_usd", "GPU cost of the workload per hour", &self.cost_per_hour),
            ("workload_arrival_rate_rps", "Arrival rate the policy saw, requests per second", &self.arrival_rate),
            (
                "workload_metrics_available",
                "1 when the last control tick had every metric, else 0",
                &self.metrics_available,
            ),
            ("workload_policy_ready", "1 when the workload's policy is built, else 0 (it holds)", &self.policy_ready),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        registry.register("workload_policy_info", "The workload's policy and mode (value 1)", self.policy_info.clone());
        registry.register("slot_replicas", "Desired and ready replicas per slot", self.slot_replicas.clone());
    }

    /// Sets the workload's gauges from a control tick's outcome.
    pub fn record(&self, r: &WorkloadReading<'_>) {
        let l = &r.labels;
        match r.status.slo_attainment {
            Some(v) if v.is_finite() => {
                self.slo_attainment.get_or_create(l).set(v);
            }
            _ => {
                self.slo_attainment.remove(l);
            }
        }
        self.slo_target.get_or_create(l).set(r.spec.slo.target_attainment);
        self.cost_per_hour.get_or_create(l).set(r.status.cost_rate_usd_per_hour.unwrap_or(0.0));
        self.arrival_rate.get_or_create(l).set(r.status.observed_arrival_rate_rps.unwrap_or(0.0));
        self.metrics_available.get_or_create(l).set(f64::from(u8::from(r.metrics_available)));
        self.policy_ready.get_or_create(l).set(f64::from(u8::from(r.policy_ready)));
        let mut slots = BTreeSet::new();
        for s in &r.status.slots {
            for (state, v) in [("desired", s.desired_replicas), ("ready", s.ready_replicas)] {
                let key = SlotLabels {
                    namespace: l.namespace.clone(),
                    workload: l.workload.clone(),
                    variant: s.variant.clone(),
                    pool: s.pool.clone(),
                    state: state.into(),
                };
                self.slot_replicas.get_or_create(&key).set(f64::from(v));
                slots.insert(key);
            }
        }
        let policy = PolicyLabels {
            namespace: l.namespace.clone(),
            workload: l.workload.clone(),
            policy: r.spec.policy.kind.as_str().into(),
            mode: r.spec.policy.mode.as_str().into(),
        };
        self.policy_info.get_or_create(&policy).set(1.0);
        let policies = BTreeSet::from([policy]);
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old_slots, old_policies)) = written.insert(l.clone(), (slots.clone(), policies.clone())) {
            old_slots.difference(&slots).for_each(|k| {
                self.slot_replicas.remove(k);
            });
            old_policies.difference(&policies).for_each(|k| {
                self.policy_info.remove(k);
            });
        }
    }

    /// Drops every series of a deleted workload.
    pub fn forget(&self, labels: &WorkloadLabels) {
        for family in [
            &self.slo_attainment,
            &self.slo_target,
            &self.cost_per_hour,
            &self.arrival_rate,
            &self.metrics_available,
            &self.policy_ready,
        ] {
            family.remove(labels);
        }
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((slots, policies)) = written.remove(labels) {
            slots.iter().for_each(|k| {
                self.slot_replicas.remove(k);
            });
            policies.iter().for_each(|k| {
                self.policy_info.remove(k);
            });
        }
    }
}

/// The operator's Prometheus metrics.
#[derive(Clone)]
pub struct OperatorMetrics {
    /// `llmos_reconciles_total`.
    pub reconciles: Counter,
    /// `llmos_reconcile_errors_total{reason}`.
    pub reconcile_errors: Family<ReasonLabel, Counter>,
    /// `llmos_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `llmos_reconcile_phase_duration_seconds{phase}`: where a reconcile's time went.
    pub phase_duration: PhaseHistograms,
    /// `llmos_control_tick_lag_seconds`: how long after it was due a control tick
    /// started (the scheduler's and the runtime's delay, before any work of the tick).
    pub tick_lag: Histogram,
    /// `llmos_decisions_total{kind}`.
    pub decisions: Family<KindLabel, Counter>,
    /// `llmos_shield_overrides_total{rule}`.
    pub shield_overrides: Family<RuleLabel, Counter>,
    /// `llmos_policy_decision_duration_seconds`.
    pub policy_duration: Histogram,
    /// `llmos_control_ticks_total`: reconciles that ran a control tick.
    pub ticks: Counter,
    /// `llmos_status_writes_total{outcome}`: status writes sent (`written`), skipped
    /// because the status was already what the plan wants (`unchanged`), and refused
    /// because the workload changed since it was read (`conflict`, then written again).
    pub status_writes: Family<OutcomeLabel, Counter>,
    /// `llmos_object_writes_total{object, outcome}`: server-side applies of Deployments
    /// and Services sent (`written`), skipped as unchanged (`unchanged`), and Deployment
    /// applies refused because someone else changed the Deployment's spec since the plan
    /// read it (`refused`: nothing written, the workload planned again).
    pub object_writes: Family<ObjectWriteLabel, Counter>,
    /// `llmos_record_windows_total{result}`: traffic record windows handed to the
    /// writer, dropped, or not read.
    pub record_windows: Family<RecordResultLabel, Counter>,
    /// `llmos_record_duration_seconds`: time a control tick spent recording (feeding the
    /// window recorder and handing a closed window over), for workloads that record.
    pub record_duration: Histogram,
    /// `llmos_policy_promotions_total{namespace, workload, action}`: promotion steps
    /// (`spec.learning.promotion`), by the Event's reason.
    pub policy_promotions: Family<PromotionLabels, Counter>,
    /// `llmos_shadow_decisions_total{namespace, workload, shielded}`: decisions of a
    /// retrained candidate in shadow (never applied).
    pub shadow_decisions: Family<ShadowDecisionLabels, Counter>,
    /// `llmos_shadow_desired_replicas{namespace, workload, variant, pool}`: what the
    /// candidate in shadow would set, after the shield (not applied).
    pub shadow_replicas: Family<ShadowReplicaLabels, Gauge>,
    /// The per-workload gauges.
    pub workloads: WorkloadGauges,
    /// The validating webhook's metrics (served on the operator's metrics port, not the
    /// webhook's).
    pub admission: AdmissionMetrics,
    registry: Arc<Registry>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    /// Creates the metrics and registers them in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llmos");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        // 1 ms .. 16 s and 10 µs .. 1.3 s, doubling: fine enough to read p50/p99 off the buckets.
        let reconcile_duration = reconcile_buckets();
        let phase_duration = PhaseHistograms::new_with_constructor(phase_buckets);
        let tick_lag = reconcile_buckets();
        let decisions = Family::<KindLabel, Counter>::default();
        let shield_overrides = Family::<RuleLabel, Counter>::default();
        let policy_duration = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
        let ticks = Counter::default();
        let status_writes = Family::<OutcomeLabel, Counter>::default();
        let object_writes = Family::<ObjectWriteLabel, Counter>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register("control_ticks", "Reconciliations that ran a control tick", ticks.clone());
        registry.register(
            "status_writes",
            "Status writes, by outcome (written; unchanged and not sent; conflict: refused as read at an old resourceVersion, then its changes sent again)",
            status_writes.clone(),
        );
        registry.register(
            "object_writes",
            "Server-side applies of Deployments and Services, by outcome (written; unchanged and not sent; refused: the Deployment's spec changed since it was read)",
            object_writes.clone(),
        );
        registry.register("reconcile_errors", "Reconciliations that failed, by reason", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Time one reconciliation took", reconcile_duration.clone());
        register_phases(&mut registry, &phase_duration, &tick_lag);
        registry.register("decisions", "Decisions made, by kind", decisions.clone());
        registry.register(
            "shield_overrides",
            "Changes the shield made to policy decisions, by rule",
            shield_overrides.clone(),
        );
        registry.register(
            "policy_decision_duration_seconds",
            "Time the policy took to decide",
            policy_duration.clone(),
        );
        let record_windows = Family::<RecordResultLabel, Counter>::default();
        let record_duration = Histogram::new(exponential_buckets(0.000001, 2.0, 20));
        registry.register(
            "record_windows",
            "Traffic record windows, by result (handed to the writer, dropped, unread)",
            record_windows.clone(),
        );
        registry.register(
            "record_duration_seconds",
            "Time a control tick spent recording traffic",
            record_duration.clone(),
        );
        let policy_promotions = Family::<PromotionLabels, Counter>::default();
        let shadow_decisions = Family::<ShadowDecisionLabels, Counter>::default();
        let shadow_replicas = Family::<ShadowReplicaLabels, Gauge>::default();
        registry.register(
            "policy_promotions",
            "Promotion steps of retrained policies, by action (the Event's reason)",
            policy_promotions.clone(),
        );
        registry.register(
            "shadow_decisions",
            "Decisions of retrained candidates in shadow (not applied), by whether the shield would have changed them",
            shadow_decisions.clone(),
        );
        registry.register(
            "shadow_desired_replicas",
            "Replicas the candidate in shadow would set per slot, after the shield (not applied)",
            shadow_replicas.clone(),
        );
        let workloads = WorkloadGauges::default();
        workloads.register(&mut registry);
        let admission = AdmissionMetrics::default();
        admission.register(&mut registry);
        OperatorMetrics {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            phase_duration,
            tick_lag,
            decisions,
            shield_overrides,
            policy_duration,
            ticks,
            status_writes,
            object_writes,
            record_windows,
            record_duration,
            policy_promotions,
            shadow_decisions,
            shadow_replicas,
            workloads,
            admission,
            registry: Arc::new(registry),
        }
    }

    /// Counts a decision of `kind`.
    pub fn decision(&self, kind: &str) {
        self.decisions.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    /// Counts a status write (`written`) or one skipped as unchanged (`unchanged`).
    pub fn status_write(&self, outcome: &str) {
        self.status_writes.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// Observes the time since `since` as phase `phase` of a reconcile.
    pub fn phase(&self, phase: Phase, since: std::time::Instant) {
        self.phase_duration.get_or_create(&PhaseLabel { phase }).observe(since.elapsed().as_secs_f64());
    }

    /// Counts a server-side apply of `object` (`deployment`, `service`) sent or skipped.
    pub fn object_write(&self, object: &str, outcome: &str) {
        self.object_writes.get_or_create(&ObjectWriteLabel { object: object.into(), outcome: outcome.into() }).inc();
    }

    /// Counts a traffic record window by `result` (`handed`, `dropped`, `unread`).
    pub fn record_window(&self, result: &str) {
        self.record_windows.get_or_create(&RecordResultLabel { result: result.into() }).inc();
    }

    /// Counts a failed reconciliation.
    pub fn error(&self, reason: &str) {
        self.reconcile_errors.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// Counts a promotion step of workload `labels` (`action`: the Event's reason).
    pub fn promotion(&self, labels: &WorkloadLabels, action: &str) {
        let l = PromotionLabels {
            namespace: labels.namespace.clone(),
            workload: labels.workload.clone(),
            action: action.into(),
        };
        self.policy_promotions.get_or_create(&l).inc();
    }

    /// Counts a shadow decision of workload `labels` and sets what it would have set.
    pub fn shadow_decision(&self, labels: &WorkloadLabels, d: &crate::crd::DecisionStatus) {
        let l = ShadowDecisionLabels {
            namespace: labels.namespace.clone(),
            workload: labels.workload.clone(),
            shielded: d.shielded.to_string(),
        };
        self.shadow_decisions.get_or_create(&l).inc();
        for t in &d.targets {
            let l = ShadowReplicaLabels {
                namespace: labels.namespace.clone(),
                workload: labels.workload.clone(),
                variant: t.variant.clone(),
                pool: t.pool.clone(),
            };
            self.shadow_replicas.get_or_create(&l).set(i64::from(t.replicas));
        }
    }

    /// Drops what a candidate in shadow would set for the slots `(variant, pool)` of
    /// workload `labels` (no candidate is in shadow).
    pub fn clear_shadow(&self, labels: &WorkloadLabels, slots: &[(String, String)]) {
        for (variant, pool) in slots {
            let l = ShadowReplicaLabels {
                namespace: labels.namespace.clone(),
                workload: labels.workload.clone(),
                variant: variant.clone(),
                pool: pool.clone(),
            };
            self.shadow_replicas.remove(&l);
        }
    }

    /// Counts a shield override.
    pub fn shield_override(&self, rule: &str) {
        self.shield_overrides.get_or_create(&RuleLabel { rule: rule.into() }).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Health state shared with the HTTP endpoints.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the operator ready (connected to the API server) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the read-only decision pages
/// (`/decisions`, [`decision_routes`]) on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: OperatorMetrics,
    health: Health,
    journal: DecisionJournal,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    let h = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let h = h.clone();
                async move {
                    if h.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .merge(decision_routes(journal));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides `level` when set.
pub fn init_tracing(format: LogFormat, level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// The decision pages ([`super::page`]): `GET /decisions`, `/decisions/{namespace}/{name}`
/// and `/decisions/{namespace}/{name}/json`, read from `journal`. Nothing here writes.
pub fn decision_routes(journal: DecisionJournal) -> axum::Router {
    use axum::extract::Path;
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    const HTML: &str = "text/html; charset=utf-8";
    let (j1, j2, j3) = (journal.clone(), journal.clone(), journal);
    axum::Router::new()
        .route(
            "/decisions",
            get(move || {
                let j = j1.clone();
                async move { ([(header::CONTENT_TYPE, HTML)], super::page::index_html(&j.workloads())) }
            }),
        )
        .route(
            "/decisions/{namespace}/{name}",
            get(move |Path((ns, name)): Path<(String, String)>| {
                let j = j2.clone();
                async move {
                    let key = format!("{ns}/{name}");
                    match j.entries(&key) {
                        Some(e) => {
                            (StatusCode::OK, [(header::CONTENT_TYPE, HTML)], super::page::workload_html(&key, &e))
                        }
                        None => (
                            StatusCode::NOT_FOUND,
                            [(header::CONTENT_TYPE, HTML)],
                            format!("no decisions for {}", super::page::escape(&key)),
                        ),
                    }
                }
            }),
        )
        .route(
            "/decisions/{namespace}/{name}/json",
            get(move |Path((ns, name)): Path<(String, String)>| {
                let j = j3.clone();
                async move {
                    let key = format!("{ns}/{name}");
                    match j.entries(&key).map(|e| serde_json::to_string_pretty(&e)) {
                        Some(Ok(body)) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body),
                        Some(Err(e)) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string())
                        }
                        None => (
                            StatusCode::NOT_FOUND,
                            [(header::CONTENT_TYPE, "text/plain")],
                            format!("no decisions for {key}"),
                        ),
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_llmos_prefixed() {
        let m = OperatorMetrics::new();
        m.reconciles.inc();
        m.error("KubeApi");
        m.decision("scale_up");
        m.shield_override("MaxStepChange");
        m.reconcile_duration.observe(0.01);
        m.policy_duration.observe(0.001);
        m.phase(Phase::Observe, std::time::Instant::now());
        m.tick_lag.observe(0.002);
        let text = m.encode();
        for name in [
            "llmos_reconcile_phase_duration_seconds_count{phase=\"observe\"} 1",
            "llmos_reconcile_phase_duration_seconds_bucket{le=\"0.0001\",phase=\"observe\"}",
            "llmos_control_tick_lag_seconds_count 1",
            "llmos_reconciles_total 1",
            "llmos_reconcile_errors_total{reason=\"KubeApi\"} 1",
            "llmos_decisions_total{kind=\"scale_up\"} 1",
            "llmos_shield_overrides_total{rule=\"MaxStepChange\"} 1",
            "llmos_reconcile_duration_seconds_count 1",
            "llmos_policy_decision_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn workload_gauges_follow_the_status_and_drop_stale_series() {
        use crate::crd::{LLMWorkloadSpec, LLMWorkloadStatus, SlotStatus};
        let spec: LLMWorkloadSpec = serde_json::from_value(serde_json::json!({
            "variants": [{"name": "small", "model": "m", "image": "i", "pools": ["a100", "l4"]}],
            "gpuPools": [
                {"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0},
                {"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8}
            ],
        }))
        .expect("valid spec");
        let slot = |pool: &str, d, r| SlotStatus {
            variant: "small".into(),
            pool: pool.into(),
            desired_replicas: d,
            ready_replicas: r,
        };
        let mut status = LLMWorkloadStatus {
            slots: vec![slot("a100", 3, 2), slot("l4", 1, 1)],
            slo_attainment: Some(0.97),
            cost_rate_usd_per_hour: Some(6.8),
            observed_arrival_rate_rps: Some(12.5),
            ..Default::default()
        };
        let m = OperatorMetrics::new();
        let labels = WorkloadLabels { namespace: "ns".into(), workload: "w".into() };
        let reading = |status: &LLMWorkloadStatus| {
            m.workloads.record(&WorkloadReading {
                labels: labels.clone(),
                spec: &spec,
                status,
                metrics_available: true,
                policy_ready: true,
            })
        };
        reading(&status);
        let text = m.encode();
        for line in [
            "llmos_workload_slo_attainment_ratio{namespace=\"ns\",workload=\"w\"} 0.97",
            "llmos_workload_cost_per_hour_usd{namespace=\"ns\",workload=\"w\"} 6.8",
            "llmos_workload_arrival_rate_rps{namespace=\"ns\",workload=\"w\"} 12.5",
            "llmos_workload_metrics_available{namespace=\"ns\",workload=\"w\"} 1",
            "llmos_slot_replicas{namespace=\"ns\",workload=\"w\",variant=\"small\",pool=\"a100\",state=\"desired\"} 3",
            "llmos_slot_replicas{namespace=\"ns\",workload=\"w\",variant=\"small\",pool=\"l4\",state=\"ready\"} 1",
            "llmos_workload_policy_info{namespace=\"ns\",workload=\"w\",policy=\"hpa\",mode=\"active\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // The l4 slot goes away and the attainment becomes unknown: their series go too.
        status.slots.truncate(1);
        status.slo_attainment = None;
        reading(&status);
        let text = m.encode();
        assert!(!text.contains("pool=\"l4\""), "{text}");
        assert!(!text.contains("llmos_workload_slo_attainment_ratio{"), "{text}");
        m.workloads.forget(&labels);
        assert!(!m.encode().contains("workload=\"w\""), "{}", m.encode());
    }
}
