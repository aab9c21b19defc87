//! The controller: reconciles `LLMWorkload`s into Deployments and a Service, and runs
//! the control loop (metrics → observation → policy → shield → Deployments).
//!
//! [`reconcile`] is idempotent. It reads the workload and the Deployments it owns,
//! computes what should exist, applies it with server-side apply under one field manager
//! (`llmos`, which therefore owns `spec.replicas`: nothing else should set it), deletes
//! Deployments of slots the spec no longer has, writes status and returns when to look
//! again. Once per control interval (`spec.policy.intervalSeconds`) it also reads the
//! metrics and lets the policy decide; between ticks it only keeps the objects in shape.
//!
//! - Invalid spec ([`validate::validate_spec`]): `Degraded=True`, a Warning Event naming
//!   what to fix, and no Deployment is touched.
//! - Missing or stale metrics: replicas are held, `MetricsAvailable=False`, Warning Event.
//! - Shadow mode: the decision is recorded (`status.shadowDecision`, Event) and not applied.
//! - Variant switch: the new variant starts before the old one drains
//!   ([`decide::make_before_break`]).
//! - Deletion: a finalizer deletes the owned Deployments and Service first.
//!
//! Everything the reconciler needs comes in a [`Context`]; tests build one with a fake
//! metrics source, a scripted policy and a manual clock.

pub mod cli;
pub mod decide;
pub mod desired;
pub mod leader;
pub mod plan;
pub mod status;
pub mod telemetry;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Client, Resource, ResourceExt};

use crate::crd::{DecisionStatus, LLMWorkload, LLMWorkloadStatus, TargetStatus};
use crate::metrics::{Endpoint, MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource};
use crate::policy::config::PolicyMode;
use crate::policy::shield::{slot_key, Shield, ShieldOutcome};
use crate::policy::{Decision, Policy};

use decide::{build_observation, changes, decision_targets, initial_targets, make_before_break, Change, SlotState};
use desired::{deployment_name, slots, workload_selector, Slot};
use status::{ConditionUpdate, DEGRADED, METRICS_AVAILABLE, POLICY_READY, READY};
use telemetry::OperatorMetrics;

/// The finalizer the controller puts on every workload it manages.
pub const FINALIZER: &str = "llmos.dev/cleanup";
/// The server-side apply field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "llmos";

/// Builds the policy a workload's spec asks for; an `Err` says why it cannot be built.
pub type PolicyBuilder = Arc<dyn Fn(&crate::crd::LLMWorkloadSpec) -> Result<Box<dyn Policy>, String> + Send + Sync>;

/// A source of the current time (a manual one in tests).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new(t)))
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let step = SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO);
        *t = t.checked_add(step).unwrap_or(*t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A metrics source that always fails; the operator then holds replicas and says so.
#[derive(Clone, Debug)]
pub struct UnavailableSource {
    /// Why no source is available.
    pub why: String,
}

impl MetricsSource for UnavailableSource {
    fn name(&self) -> &str {
        "unavailable"
    }
    fn observe<'a>(
        &'a self,
        _query: &'a MetricsQuery<'a>,
    ) -> futures::future::BoxFuture<'a, Result<MetricsSnapshot, MetricsError>> {
        Box::pin(async move {
            Err(MetricsError::Unreachable { source_name: "unavailable".into(), message: self.why.clone() })
        })
    }
}

/// Settings of the controller that are not part of any workload's spec.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// First retry delay after a failed reconciliation.
    pub error_backoff_base: Duration,
    /// Longest retry delay after repeated failures.
    pub error_backoff_max: Duration,
    /// How often an invalid spec is looked at again (edits trigger a reconcile anyway).
    pub invalid_spec_requeue: Duration,
    /// Name of this operator instance in Events (`reportingInstance`).
    pub instance: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            error_backoff_base: Duration::from_secs(1),
            error_backoff_max: Duration::from_secs(300),
            invalid_spec_requeue: Duration::from_secs(300),
            instance: leader::default_identity(),
        }
    }
}

/// What the controller keeps per workload between reconciles (rebuilt after a restart;
/// the cooldown state survives through `status.lastScaleDown`).
struct WorkloadState {
    generation: Option<i64>,
    policy: Result<Box<dyn Policy>, String>,
    shield: Shield,
    last_tick: Option<Timestamp>,
}

/// Everything reconcile needs.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Where metrics come from.
    pub metrics_source: Arc<dyn MetricsSource>,
    /// Builds a workload's policy.
    pub policy_builder: PolicyBuilder,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The operator's own metrics.
    pub metrics: OperatorMetrics,
    /// Settings.
    pub config: ControllerConfig,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Per-workload state, each behind its own lock: the map's lock is held only to find
    /// or insert an entry, so a slow policy decision (or a checkpoint load) of one
    /// workload never delays another workload's reconcile.
    workloads: Mutex<HashMap<String, Arc<Mutex<WorkloadState>>>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context with the system clock and fresh metrics.
    pub fn new(
        client: Client,
        metrics_source: Arc<dyn MetricsSource>,
        policy_builder: PolicyBuilder,
        config: ControllerConfig,
    ) -> Self {
        let reporter = Reporter { controller: "llmos".into(), instance: Some(config.instance.clone()) };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics_source,
            policy_builder,
            metrics: OperatorMetrics::new(),
            config,
            clock: Arc::new(SystemClock),
            workloads: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The state of workload `key`, if it has been reconciled (the map's lock is released on return).
    fn workload_state(&self, key: &str) -> Option<Arc<Mutex<WorkloadState>>> {
        self.workloads.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the operator metrics (to share a registry with the HTTP server).
    pub fn with_metrics(mut self, metrics: OperatorMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API call failed while {action}: {source}")]
    Kube {
        /// What the controller was doing.
        action: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer, or the cleanup, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The workload has no namespace (LLMWorkload is namespaced; this is a bug elsewhere).
    #[error("workload {0} has no namespace")]
    MissingNamespace(String),
    /// Status could not be serialised.
    #[error("serialising status: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A stable label for `llmos_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApi",
            Error::Finalizer(_) => "Finalizer",
            Error::MissingNamespace(_) => "MissingNamespace",
            Error::Serialize(_) => "Serialize",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

fn key_of(wl: &LLMWorkload) -> String {
    format!("{}/{}", wl.namespace().unwrap_or_default(), wl.name_any())
}

/// Reconciles one workload (the entry point the kube-runtime `Controller` calls).
pub async fn reconcile(wl: Arc<LLMWorkload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let key = key_of(&wl);
    let ns = wl.namespace().ok_or_else(|| Error::MissingNamespace(wl.name_any()))?;
    let api: Api<LLMWorkload> = Api::namespaced(ctx.client.clone(), &ns);
    let c = ctx.clone();
    let result = finalizer(&api, FINALIZER, wl, |event| async move {
        match event {
            FinalizerEvent::Apply(wl) => apply(wl, c).await,
            FinalizerEvent::Cleanup(wl) => cleanup(wl, c).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
    result
}

/// Retries a failed reconciliation with exponential backoff (per workload), and counts
/// the error by reason.
pub fn error_policy(wl: Arc<LLMWorkload>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key_of(&wl)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(ctx.config.error_backoff_base, ctx.config.error_backoff_max, n);
    tracing::warn!(workload = %key_of(&wl), error = %error, attempt = n, retry_in_s = delay.as_secs_f64(), "reconcile failed");
    Action::requeue(delay)
}

/// `base × 2^(attempt-1)`, at most `max`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

/// Publishes an Event about `wl`. kube's Recorder folds Events with the same
/// (type, reason, action) into one series and keeps the first note, so `action` names
/// what was done concretely (`Scale small/l4 1->3`, `Drain small`): different actions
/// get their own Event, repeats of the same one count up.
async fn publish(ctx: &Context, wl: &LLMWorkload, type_: EventType, reason: &str, action: String, note: String) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: truncate(action, 120),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &wl.object_ref(&())).await {
        tracing::warn!(workload = %key_of(wl), reason, error = %e, "cannot publish event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn parse_time_s(s: &str) -> Option<f64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_millisecond() as f64 / 1000.0)
}

fn time_s(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn status_of(wl: &LLMWorkload) -> LLMWorkloadStatus {
    wl.status.clone().unwrap_or_default()
}

async fn patch_status(ctx: &Context, wl: &LLMWorkload, status: &LLMWorkloadStatus) -> Result<(), Error> {
    let ns = wl.namespace().unwrap_or_default();
    let api: Api<LLMWorkload> = Api::namespaced(ctx.client.clone(), &ns);
    let mut written = status.clone();
    written.summary = Some(self::status::summary(&wl.spec, &written));
    let mut value = serde_json::to_value(&written)?;
    if let Some(obj) = value.as_object_mut() {
        // A merge patch leaves absent keys alone: clear what is no longer set.
        for k in
            ["lastDecision", "shadowDecision", "observedArrivalRateRps", "sloAttainment", "costRateUsdPerHour", "slots"]
        {
            obj.entry(k).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(&wl.name_any(), &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": value })))
        .await
        .map_err(kube_err("writing status"))?;
    Ok(())
}

/// The Deployments of a workload (by label, owned by it).
async fn owned_deployments(ctx: &Context, wl: &LLMWorkload) -> Result<Vec<Deployment>, Error> {
    let ns = wl.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let list = api
        .list(&ListParams::default().labels(&workload_selector(&wl.name_any())))
        .await
        .map_err(kube_err("listing Deployments"))?;
    Ok(list.items.into_iter().filter(|d| desired::is_owned_by(&d.metadata, wl)).collect())
}

async fn endpoints(ctx: &Context, wl: &LLMWorkload) -> Vec<Endpoint> {
    let ns = wl.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let sel = format!("{}={}", desired::LABEL_WORKLOAD, wl.name_any());
    let Ok(list) = api.list(&ListParams::default().labels(&sel)).await else { return Vec::new() };
    list.items
        .into_iter()
        .filter_map(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let variant = labels.get(desired::LABEL_VARIANT)?.clone();
            let pool = labels.get(desired::LABEL_POOL)?.clone();
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let port = wl.spec.variants.iter().find(|v| v.name == variant).map_or(8000, |v| v.port);
            Some(Endpoint { variant, pool, address: format!("{ip}:{port}") })
        })
        .collect()
}

/// Reconciles a workload that is not being deleted.
async fn apply(wl: Arc<LLMWorkload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let now_str = now.to_string();
    let name = wl.name_any();
    let ns = wl.namespace().unwrap_or_default();
    let key = key_of(&wl);
    let generation = wl.meta().generation;
    let spec = &wl.spec;
    let interval = Duration::from_secs(u64::from(spec.policy.interval_seconds.max(1)));
    let mut st = status_of(&wl);
    st.observed_generation = generation;

    // 1. Semantic validation: nothing is touched while the spec is inconsistent.
    let problems = validate::validate_spec(&name, spec);
    if !problems.is_empty() {
        let msg = validate::summary(&problems);
        let was_degraded =
            status::condition(&st.conditions, DEGRADED).is_some_and(|c| c.status == "True" && c.message == msg);
        status::set_condition(
            &mut st.conditions,
            ConditionUpdate::new(DEGRADED, true, "InvalidSpec", msg.clone()),
            &now_str,
            generation,
        );
        status::set_condition(
            &mut st.conditions,
            ConditionUpdate::new(READY, false, "InvalidSpec", "the spec is invalid; see the Degraded condition"),
            &now_str,
            generation,
        );
        if !was_degraded {
            publish(
                &ctx,
                &wl,
                EventType::Warning,
                "InvalidSpec",
                "ValidateSpec".into(),
                format!("spec not applied, fix: {msg}"),
            )
            .await;
        }
        tracing::warn!(workload = %key, problems = %msg, "invalid spec");
        patch_status(&ctx, &wl, &st).await?;
        return Ok(Action::requeue(ctx.config.invalid_spec_requeue));
    }

    // 2. What exists.
    let deployments = owned_deployments(&ctx, &wl).await?;
    let all_slots = slots(spec);
    let by_name: BTreeMap<String, &Deployment> = deployments.iter().map(|d| (d.name_any(), d)).collect();
    let mut states: BTreeMap<Slot, SlotState> = BTreeMap::new();
    for s in &all_slots {
        if let Some(d) = by_name.get(&deployment_name(&name, s)) {
            states.insert(s.clone(), SlotState::of(d));
        }
    }
    let initial = initial_targets(spec);
    let mut current: BTreeMap<Slot, u32> = BTreeMap::new();
    for s in &all_slots {
        let r = match states.get(s) {
            Some(state) => state.desired,
            None if states.keys().any(|k| k.variant == s.variant) => 0,
            None => initial.get(s).copied().unwrap_or(0),
        };
        current.insert(s.clone(), r);
    }

    // 3. Per-workload state: policy and shield, rebuilt when the spec changes.
    let state = match ctx.workload_state(&key) {
        Some(s) => s,
        None => {
            // Built outside the map's lock (loading a checkpoint can take a while).
            let mut shield = Shield::new(spec);
            let cooldowns: BTreeMap<String, f64> =
                st.last_scale_down.iter().filter_map(|(k, v)| parse_time_s(v).map(|t| (k.clone(), t))).collect();
            shield.import_state(&cooldowns);
            let ws = WorkloadState { generation, policy: (ctx.policy_builder)(spec), shield, last_tick: None };
            let mut map = ctx.workloads.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_insert_with(|| Arc::new(Mutex::new(ws))).clone()
        }
    };
    let (tick_due, policy_error) = {
        let mut ws = state.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        if ws.generation != generation {
            ws.generation = generation;
            ws.policy = (ctx.policy_builder)(spec);
            ws.shield.update_spec(spec);
            changed = true;
        }
        let due = changed
            || ws.last_tick.is_none_or(|t| {
                now.duration_since(t) >= SignedDuration::try_from(interval).unwrap_or(SignedDuration::ZERO)
            });
        (due, ws.policy.as_ref().err().cloned())
    };
    match &policy_error {
        None => status::set_condition(
            &mut st.conditions,
            ConditionUpdate::new(
                POLICY_READY,
                true,
                "PolicyBuilt",
                format!("policy {} ({:?} mode)", spec.policy.kind.as_str(), spec.policy.mode).to_lowercase(),
            ),
            &now_str,
            generation,
        ),
        Some(e) => {
            let was = status::condition(&st.conditions, POLICY_READY).is_some_and(|c| c.status == "False");
            status::set_condition(
                &mut st.conditions,
                ConditionUpdate::new(POLICY_READY, false, "PolicyBuildFailed", e.clone()),
                &now_str,
                generation,
            );
            if !was {
                publish(
                    &ctx,
                    &wl,
                    EventType::Warning,
                    "PolicyBuildFailed",
                    "BuildPolicy".into(),
                    format!("holding replicas: {e}"),
                )
                .await;
            }
        }
    }

    // 4. The control tick: metrics → observation → policy → shield.
    let mut targets = current.clone();
    let mut held_variants: Vec<String> = Vec::new();
    // Variants the policy asked to shrink at this tick (before the shield and sequencing).
    let mut asked_down: Vec<String> = Vec::new();
    let mut decision_kind = None;
    if tick_due {
        let since_action = st.last_action_time.as_deref().and_then(parse_time_s).map(|t| (time_s(now) - t).max(0.0));
        let mut obs = build_observation(spec, &current, &states, time_s(now), since_action);
        st.cost_rate_usd_per_hour = Some(obs.cost_rate_usd_per_hour);
        let eps = endpoints(&ctx, &wl).await;
        let query = MetricsQuery { namespace: &ns, workload: &name, spec, endpoints: &eps };
        let read = ctx.metrics_source.observe(&query).await;
        let missing = match read {
            Ok(snapshot) => {
                snapshot.fill(&mut obs);
                if obs.missing.is_empty() {
                    None
                } else {
                    Some(("MetricsMissing", format!("missing or stale: {}", obs.missing.join(", "))))
                }
            }
            Err(e) => Some(("MetricsSourceError", e.to_string())),
        };
        if let Some((reason, msg)) = missing {
            let total: u32 = current.values().sum();
            status::set_condition(
                &mut st.conditions,
                ConditionUpdate::new(METRICS_AVAILABLE, false, reason, msg.clone()),
                &now_str,
                generation,
            );
            publish(
                &ctx,
                &wl,
                EventType::Warning,
                "MetricsUnavailable",
                format!("Hold {reason}"),
                format!("holding {total} replicas: {msg}"),
            )
            .await;
            ctx.metrics.decision("hold");
            tracing::warn!(workload = %key, reason, message = %msg, "metrics unavailable; holding replicas");
        } else {
            status::set_condition(
                &mut st.conditions,
                ConditionUpdate::new(
                    METRICS_AVAILABLE,
                    true,
                    "MetricsRead",
                    format!("read from {}", ctx.metrics_source.name()),
                ),
                &now_str,
                generation,
            );
            st.observed_arrival_rate_rps = Some(obs.arrival_rate_rps);
            st.slo_attainment = obs.slo_attainment;
            let mut decide = || {
                let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
                let ws = &mut *guard;
                ws.shield.annotate(&mut obs);
                ws.policy.as_mut().ok().map(|policy| {
                    let t0 = std::time::Instant::now();
                    let decision = policy.decide(&obs);
                    ctx.metrics.policy_duration.observe(t0.elapsed().as_secs_f64());
                    let outcome = ws.shield.clamp(&obs, &decision);
                    (policy.name().to_string(), decision, outcome)
                })
            };
            // A decision is synchronous CPU work (a DQN forward pass, or a slow policy): on a
            // multi-threaded runtime it runs in `block_in_place`, so the worker's other tasks
            // (other workloads' reconciles, the API client's connections) move to another
            // thread instead of waiting behind it.
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let decided = if multi_thread { tokio::task::block_in_place(decide) } else { decide() };
            if let Some((policy_name, decision, outcome)) = decided {
                let rules: Vec<String> = {
                    let mut r: Vec<String> = outcome.overrides.iter().map(|o| o.rule.as_str().to_string()).collect();
                    r.dedup();
                    r
                };
                let proposed = decision_targets(spec, &outcome.decision, &current);
                let record = |t: &BTreeMap<Slot, u32>| DecisionStatus {
                    time: now_str.clone(),
                    policy: policy_name.clone(),
                    reason: decision.reason.clone(),
                    targets: t
                        .iter()
                        .map(|(s, r)| TargetStatus { variant: s.variant.clone(), pool: s.pool.clone(), replicas: *r })
                        .collect(),
                    shielded: outcome.shielded(),
                    shield_rules: rules.clone(),
                };
                if spec.policy.mode == PolicyMode::Shadow {
                    st.shadow_decision = Some(record(&proposed));
                    ctx.metrics.decision("shadow");
                    if proposed != current {
                        publish(
                            &ctx,
                            &wl,
                            EventType::Normal,
                            "ShadowDecision",
                            format!("Shadow {}", describe(&proposed)),
                            format!(
                                "{policy_name} would set {} ({}); not applied (shadow mode)",
                                describe(&proposed),
                                decision.reason
                            ),
                        )
                        .await;
                    }
                } else {
                    let seq = make_before_break(&proposed, &current, &states);
                    targets = seq.targets;
                    held_variants = seq.held_variants;
                    let asked = decision_targets(spec, &decision, &current);
                    for v in &spec.variants {
                        if variant_total(&asked, &v.name) < variant_total(&current, &v.name) {
                            asked_down.push(v.name.clone());
                        }
                    }
                    // Record in the shield what is really applied (cooldowns start on applied scale-downs).
                    let mut applied = Decision { targets: Vec::new(), reason: decision.reason.clone() };
                    for (s, r) in &targets {
                        applied.set(&s.variant, &s.pool, *r);
                    }
                    let applied_outcome = ShieldOutcome { decision: applied, overrides: outcome.overrides.clone() };
                    state.lock().unwrap_or_else(|e| e.into_inner()).shield.record(&obs, &applied_outcome);
                    for o in &outcome.overrides {
                        ctx.metrics.shield_override(o.rule.as_str());
                    }
                    if outcome.shielded() {
                        st.shield_overrides = st.shield_overrides.saturating_add(outcome.overrides.len() as u64);
                        let what: Vec<String> = outcome
                            .overrides
                            .iter()
                            .map(|o| format!("{} {}/{} {}→{}", o.rule.as_str(), o.variant, o.pool, o.asked, o.applied))
                            .collect();
                        publish(
                            &ctx,
                            &wl,
                            EventType::Normal,
                            "ShieldOverride",
                            format!("Shield {}", rules.join(",")),
                            format!("shield changed {policy_name}'s decision: {}", what.join(", ")),
                        )
                        .await;
                    }
                    st.last_decision = Some(record(&targets));
                    decision_kind = Some(if !held_variants.is_empty() {
                        "switch"
                    } else if targets.values().sum::<u32>() > current.values().sum::<u32>() {
                        "scale_up"
                    } else if targets.values().sum::<u32>() < current.values().sum::<u32>() {
                        "scale_down"
                    } else if targets != current {
                        "rebalance"
                    } else {
                        "hold"
                    });
                }
            } else {
                ctx.metrics.decision("hold");
            }
        }
        state.lock().unwrap_or_else(|e| e.into_inner()).last_tick = Some(now);
    }
    if let Some(k) = decision_kind {
        ctx.metrics.decision(k);
    }

    // 5. Apply: one Deployment per slot, the Service; delete Deployments of lost slots.
    let dep_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for s in &all_slots {
        let r = targets.get(s).copied().unwrap_or(0);
        if let Some(d) = desired::deployment(&wl, s, r) {
            let dn = deployment_name(&name, s);
            dep_api
                .patch(&dn, &pp, &Patch::Apply(&d))
                .await
                .map_err(kube_err(format!("applying Deployment {ns}/{dn}")))?;
        }
    }
    let wanted: Vec<String> = all_slots.iter().map(|s| deployment_name(&name, s)).collect();
    for d in &deployments {
        let dn = d.name_any();
        if !wanted.contains(&dn) {
            match dep_api.delete(&dn, &DeleteParams::background()).await {
                Ok(_) => {
                    publish(
                        &ctx,
                        &wl,
                        EventType::Normal,
                        "DeploymentDeleted",
                        format!("Delete {dn}"),
                        format!("deleted {dn}: its variant or pool left the spec"),
                    )
                    .await
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_err(format!("deleting Deployment {ns}/{dn}"))(e)),
            }
        }
    }
    let svc_api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    svc_api
        .patch(&name, &pp, &Patch::Apply(&desired::service(&wl)))
        .await
        .map_err(kube_err(format!("applying Service {ns}/{name}")))?;

    // 6. Events for what changed.
    // Events compare with what the cluster had (a slot without a Deployment had 0).
    let before: BTreeMap<Slot, u32> =
        all_slots.iter().map(|s| (s.clone(), states.get(s).map_or(0, |st| st.desired))).collect();
    let ch = changes(&before, &targets);
    let first_creation = states.is_empty();
    for c in &ch {
        let action = match c {
            Change::Placed { slot, to } => format!("Scale {}/{} 0->{to}", slot.variant, slot.pool),
            Change::Up { slot, from, to } | Change::Down { slot, from, to } => {
                format!("Scale {}/{} {from}->{to}", slot.variant, slot.pool)
            }
        };
        let (reason, note) = match c {
            Change::Placed { slot, to } => {
                let gpu = spec.gpu_pools.iter().find(|p| p.name == slot.pool).map_or("", |p| p.gpu_type.as_str());
                ("Placed", format!("placed {to} replica(s) of {} on pool {} ({gpu})", slot.variant, slot.pool))
            }
            Change::Up { slot, from, to } => {
                ("ScaledUp", format!("{}/{}: {from} → {to} replicas", slot.variant, slot.pool))
            }
            Change::Down { slot, from, to } => {
                st.last_scale_down.insert(slot_key(&slot.variant, &slot.pool), now_str.clone());
                ("ScaledDown", format!("{}/{}: {from} → {to} replicas", slot.variant, slot.pool))
            }
        };
        let why = st
            .last_decision
            .as_ref()
            .filter(|_| !first_creation)
            .map(|d| format!(" ({})", d.reason))
            .unwrap_or_default();
        publish(&ctx, &wl, EventType::Normal, reason, action, format!("{note}{why}")).await;
    }
    if !ch.is_empty() && !first_creation {
        st.last_action_time = Some(now_str.clone());
    }
    let starting: Vec<&str> = spec
        .variants
        .iter()
        .filter(|v| variant_total(&before, &v.name) == 0 && variant_total(&targets, &v.name) > 0)
        .map(|v| v.name.as_str())
        .collect();
    let mut draining: Vec<String> = held_variants.clone();
    draining.extend(
        asked_down.iter().filter(|v| variant_total(&targets, v) > 0 && !starting.contains(&v.as_str())).cloned(),
    );
    draining.sort();
    draining.dedup();
    if !first_creation && !starting.is_empty() && !draining.is_empty() {
        publish(
            &ctx,
            &wl,
            EventType::Normal,
            "VariantSwitched",
            format!("Start {}", starting.join(",")),
            format!(
                "switching to {}: it starts first; {} keep(s) serving until it has a ready replica",
                starting.join(", "),
                draining.join(", ")
            ),
        )
        .await;
    }
    for v in &spec.variants {
        if variant_total(&before, &v.name) > 0
            && variant_total(&targets, &v.name) == 0
            && targets.values().sum::<u32>() > 0
        {
            let now_serving: Vec<&str> = spec
                .variants
                .iter()
                .filter(|o| variant_total(&targets, &o.name) > 0)
                .map(|o| o.name.as_str())
                .collect();
            publish(
                &ctx,
                &wl,
                EventType::Normal,
                "VariantSwitched",
                format!("Drain {}", v.name),
                format!("drained {}; now serving: {}", v.name, now_serving.join(", ")),
            )
            .await;
        }
    }

    // 7. Status.
    st.slots = status::slot_statuses(&targets, &states, &all_slots);
    st.desired_replicas = targets.values().sum();
    st.ready_replicas = st.slots.iter().map(|s| s.ready_replicas).sum();
    st.last_scale_down.retain(|k, _| all_slots.iter().any(|s| s.key() == *k));
    for c in status::rollout_conditions(&st.slots) {
        status::set_condition(&mut st.conditions, c, &now_str, generation);
    }
    status::set_condition(
        &mut st.conditions,
        ConditionUpdate::new(DEGRADED, false, "AsExpected", "the spec is valid and applied"),
        &now_str,
        generation,
    );
    if status::condition(&st.conditions, METRICS_AVAILABLE).is_none() {
        status::set_condition(
            &mut st.conditions,
            ConditionUpdate::unknown(METRICS_AVAILABLE, "NotReadYet", "no control tick yet"),
            &now_str,
            generation,
        );
    }
    patch_status(&ctx, &wl, &st).await?;

    // 8. Look again at the next tick (sooner while a switch waits for the new variant).
    let next = {
        let last = state.lock().unwrap_or_else(|e| e.into_inner()).last_tick.unwrap_or(now);
        let elapsed = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
        interval.saturating_sub(elapsed).max(Duration::from_millis(500))
    };
    Ok(Action::requeue(next))
}

fn variant_total(m: &BTreeMap<Slot, u32>, variant: &str) -> u32 {
    m.iter().filter(|(s, _)| s.variant == variant).map(|(_, r)| *r).sum()
}

fn describe(t: &BTreeMap<Slot, u32>) -> String {
    t.iter().map(|(s, r)| format!("{}/{}={r}", s.variant, s.pool)).collect::<Vec<_>>().join(", ")
}

/// Deletes what the workload owns, before its finalizer is removed.
async fn cleanup(wl: Arc<LLMWorkload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = wl.namespace().unwrap_or_default();
    let name = wl.name_any();
    let dep_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut deleted = Vec::new();
    for d in owned_deployments(&ctx, &wl).await? {
        let dn = d.name_any();
        match dep_api.delete(&dn, &DeleteParams::background()).await {
            Ok(_) => deleted.push(dn),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting Deployment {ns}/{dn}"))(e)),
        }
    }
    let svc_api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    match svc_api.get_opt(&name).await.map_err(kube_err("reading the Service"))? {
        Some(svc) if desired::is_owned_by(&svc.metadata, &wl) => {
            match svc_api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(format!("service/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_err(format!("deleting Service {ns}/{name}"))(e)),
            }
        }
        _ => {}
    }
    ctx.workloads.lock().unwrap_or_else(|e| e.into_inner()).remove(&key_of(&wl));
    publish(
        &ctx,
        &wl,
        EventType::Normal,
        "Deleted",
        "Cleanup".into(),
        format!("deleted {}", if deleted.is_empty() { "nothing".into() } else { deleted.join(", ") }),
    )
    .await;
    tracing::info!(workload = %key_of(&wl), deleted = ?deleted, "cleaned up");
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown` resolves: watches LLMWorkloads (in `namespace`,
/// or all) and the Deployments and Services the operator manages.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    use kube::runtime::{watcher, Controller};
    let client = ctx.client.clone();
    let (wls, deps, svcs): (Api<LLMWorkload>, Api<Deployment>, Api<Service>) = match &namespace {
        Some(ns) => {
            (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns), Api::namespaced(client, ns))
        }
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client)),
    };
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={}", desired::MANAGED_BY));
    Controller::new(wls, watcher::Config::default())
        .owns(deps, owned.clone())
        .owns(svcs, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(workload = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = |n| backoff(Duration::from_secs(1), Duration::from_secs(60), n);
        assert_eq!(b(1), Duration::from_secs(1));
        assert_eq!(b(2), Duration::from_secs(2));
        assert_eq!(b(4), Duration::from_secs(8));
        assert_eq!(b(30), Duration::from_secs(60));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp::UNIX_EPOCH);
        assert_eq!(c.now(), Timestamp::UNIX_EPOCH);
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now().as_second(), 5);
    }
}
