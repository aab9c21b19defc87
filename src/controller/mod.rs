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
//! A reconcile is three steps:
//!
//! 1. Read (here): the owned Deployments ([`plan::Observed`]) and, when a control tick is
//!    due, the pods' endpoints and the metrics; the policy decides and the shield clamps
//!    (under `block_in_place`). The result is data: a [`plan::TickOutcome`].
//! 2. Plan ([`plan::plan`], pure): the Deployments and Service to apply, the Deployments
//!    to delete, the Events, the status and when to look again, as a [`plan::Plan`].
//! 3. Execute ([`execute::execute`]): writes the plan through the API server.
//!
//! - Invalid spec ([`validate::validate_spec`]): `Degraded=True`, a Warning Event naming
//!   what to fix, and no Deployment is touched.
//! - Missing or stale metrics: replicas are held, `MetricsAvailable=False`, Warning Event.
//! - Shadow mode: the decision is recorded (`status.shadowDecision`, Event) and not applied.
//! - Variant switch: the new variant starts before the old one drains
//!   ([`decide::make_before_break`]).
//! - Deletion: a finalizer deletes the owned Deployments and Service first.
//! - Every control tick is kept in the [`journal::DecisionJournal`] (bounded, memory
//!   only) that the decision pages ([`page`], `/decisions` on the metrics port) show.
//!
//! Everything the reconciler needs comes in a [`Context`]; tests build one with a fake
//! metrics source, a scripted policy and a manual clock.

pub mod admission;
pub mod cache;
pub mod cli;
pub mod decide;
pub mod desired;
pub mod execute;
pub mod history;
pub mod journal;
pub mod leader;
pub mod page;
pub mod plan;
pub mod policy_state;
pub mod promotion;
pub mod record;
pub mod retrain;
pub mod share;
pub mod status;
pub mod telemetry;
pub mod training;
pub mod validate;
pub mod webhook_cert;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Client, Resource, ResourceExt};

use crate::crd::LLMWorkload;
use crate::metrics::{Endpoint, MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource};
use crate::policy::shield::Shield;
use crate::policy::{Explanation, Observation, Policy};

use decide::build_observation;
use desired::workload_selector;
use journal::DecisionJournal;
use plan::{Decided, EventReason, MetricsRead, Observed, Plan, PlanInput, PlannedEvent, TickOutcome};
use telemetry::{OperatorMetrics, Phase, WorkloadLabels, WorkloadReading};

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
    /// Shortest time between two writes of a policy's learned state
    /// ([`policy_state`]); zero writes after every tick that changed it.
    pub policy_state_interval: Duration,
    /// Most reconciles running at once (0: no limit). Each running reconcile holds at
    /// most one request to the API server and one observation of the metrics source, so
    /// this also bounds the connections a burst of due ticks opens (the HTTP/1.1 pools
    /// open one per concurrent request and keep it).
    pub max_concurrent_reconciles: u16,
}

/// The default of [`ControllerConfig::max_concurrent_reconciles`]: at 1,000 workloads
/// every 15 s about 2 reconciles run at a time; 32 leave room for a slow metrics source
/// (32 in flight at 0.5 s each are 64 ticks a second).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 32;

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            error_backoff_base: Duration::from_secs(1),
            error_backoff_max: Duration::from_secs(300),
            invalid_spec_requeue: Duration::from_secs(300),
            instance: leader::default_identity(),
            policy_state_interval: Duration::from_secs(300),
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
        }
    }
}

/// What the controller keeps per workload between reconciles (rebuilt after a restart;
/// the cooldown state survives through `status.lastScaleDown`, a learning policy's state
/// through its ConfigMap, [`policy_state`], the promotion's through `status.learning`).
struct WorkloadState {
    generation: Option<i64>,
    policy: Result<Box<dyn Policy>, String>,
    shield: Shield,
    last_tick: Option<Timestamp>,
    /// Whether the saved policy state was looked for since this state was built.
    state_restored: bool,
    /// When the policy state was last written, and what was written.
    state_saved: Option<(Timestamp, serde_json::Value)>,
    /// The traffic recorder, while `spec.learning.record` is enabled ([`record`]).
    record: Option<record::WorkloadRecord>,
    /// The promotion of retrained policies ([`promotion`]), restored from `status.learning`.
    promotion: promotion::Promotion,
    /// The learned policy `policy` was built for (`None`: the spec's own).
    built_for: Option<crate::learning::promote::Candidate>,
    /// While a promoted policy is watched: the policy it displaced, still deciding on
    /// every observation (its decisions discarded), so that a rollback gets it back with
    /// its windows warm. Not kept across a restart or a spec change (then rebuilt).
    standby: Option<Box<dyn Policy>>,
    /// The last refusal the retraining schedule published ([`retrain`]), said once.
    retrain_said: Option<String>,
    /// Whether the policy's last decision was quick ([`QUICK_DECISION`]): the next one
    /// then runs on the worker, not in `block_in_place` ([`decide`]).
    quick_decisions: bool,
}

/// A decision that takes less than this runs on the runtime's worker thread: handing the
/// worker to another thread (`block_in_place`) costs more than that, two context switches
/// and at times a new thread, at every tick of every workload. An HPA decides in about
/// 20 µs, a small DQN in well under 1 ms.
const QUICK_DECISION: Duration = Duration::from_millis(1);

/// The learned policy that should act for `wl`: the promoted one while
/// `spec.learning.promotion.enabled`, else none (the spec's own policy).
fn wanted_policy(wl: &LLMWorkload, p: &promotion::Promotion) -> Option<crate::learning::promote::Candidate> {
    wl.spec.learning.promotion.enabled.then(|| p.state.active.clone()).flatten()
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
    /// Each workload's recent ticks, for the decision pages.
    pub journal: DecisionJournal,
    /// Per-workload state, each behind its own lock: the map's lock is held only to find
    /// or insert an entry, so a slow policy decision (or a checkpoint load) of one
    /// workload never delays another workload's reconcile.
    workloads: Mutex<HashMap<String, Arc<Mutex<WorkloadState>>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// What this process last applied per object (`ns/name`): see [`execute::Written`].
    written: Mutex<HashMap<String, execute::Written>>,
    /// The owned Deployments as the controller's watch sees them (set by
    /// [`run_controller`]); a reconcile reads them here instead of listing them.
    deployments: std::sync::OnceLock<kube::runtime::reflector::Store<Deployment>>,
    /// The names of those Deployments per workload, fed by the same watch.
    deployment_index: cache::DeploymentIndex,
    /// The LLMWorkloads as the controller's watch sees them (set by [`run_controller`]);
    /// the arbiter of shared pools reads the other workloads here instead of listing them.
    llmworkloads: std::sync::OnceLock<kube::runtime::reflector::Store<LLMWorkload>>,
    /// The arbiter of shared GPU pools: its lock and its memory ([`share`]).
    shared: share::SharedPools,
    /// The traffic record (`llmos run --record-dir`), if the operator keeps one.
    recording: Option<record::Recording>,
    /// The LLMPolicyTrainings as a watch sees them (set by [`run_controller`]) and whether
    /// its first list is in: the promotion step and the retraining schedule read them
    /// here instead of listing them at every tick of every workload.
    trainings: std::sync::OnceLock<TrainingCache>,
}

/// The LLMPolicyTrainings a watch keeps, and whether its first list is complete.
struct TrainingCache {
    store: kube::runtime::reflector::Store<kube::api::DynamicObject>,
    ready: Arc<std::sync::atomic::AtomicBool>,
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
            journal: DecisionJournal::default(),
            workloads: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            deployments: std::sync::OnceLock::new(),
            deployment_index: cache::DeploymentIndex::default(),
            llmworkloads: std::sync::OnceLock::new(),
            shared: share::SharedPools::default(),
            recording: None,
            trainings: std::sync::OnceLock::new(),
        }
    }

    /// Records the traffic of workloads that enable `spec.learning.record` into `recording`.
    pub fn with_recording(mut self, recording: record::Recording) -> Self {
        self.recording = Some(recording);
        self
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

    /// Replaces the decision journal (to share it with the HTTP server).
    pub fn with_journal(mut self, journal: DecisionJournal) -> Self {
        self.journal = journal;
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

fn parse_time_s(s: &str) -> Option<f64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_millisecond() as f64 / 1000.0)
}

fn time_s(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Deployments of a workload (by label, owned by it): from the watch's cache once it
/// has synced (a list per tick would read every Deployment of the namespace from etcd,
/// so each tick would cost O(workloads) and all ticks O(workloads²)); before that, and
/// without a running controller, by a list.
async fn owned_deployments(ctx: &Context, wl: &LLMWorkload) -> Result<Vec<Deployment>, Error> {
    use futures::FutureExt;
    let ns = wl.namespace().unwrap_or_default();
    if let Some(store) = ctx.deployments.get() {
        if store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()) {
            use kube::runtime::reflector::ObjectRef;
            let name = wl.name_any();
            // By name through the index (sorted), not by walking every cached Deployment.
            let out: Vec<Deployment> = ctx
                .deployment_index
                .names(&ns, &name)
                .into_iter()
                .filter_map(|n| store.get(&ObjectRef::new(&n).within(&ns)))
                .filter(|d| d.labels().get(desired::LABEL_WORKLOAD) == Some(&name))
                .filter(|d| desired::is_owned_by(&d.metadata, wl))
                .map(|d| (*d).clone())
                .collect();
            if !cache_behind_own_writes(ctx, wl, &out) {
                return Ok(out);
            }
            // Deciding on what this process wrote over would undo or repeat it (a drain
            // announced again, a cooldown started twice): read them from the API server.
            tracing::debug!(workload = %key_of(wl), "the Deployment cache is behind this operator's writes: listing");
        }
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let list = api
        .list(&ListParams::default().labels(&workload_selector(&wl.name_any())))
        .await
        .map_err(kube_err("listing Deployments"))?;
    Ok(list.items.into_iter().filter(|d| desired::is_owned_by(&d.metadata, wl)).collect())
}

/// Whether the watch's cache of `wl`'s Deployments (`cached`) is behind what this process
/// last applied: a slot's Deployment that it wrote is missing from the cache, or cached
/// with an older generation than the API server gave the write.
fn cache_behind_own_writes(ctx: &Context, wl: &LLMWorkload, cached: &[Deployment]) -> bool {
    let (ns, name) = (wl.namespace().unwrap_or_default(), wl.name_any());
    desired::slots(&wl.spec).iter().any(|slot| {
        let dn = desired::deployment_name(&name, slot);
        let Some(wrote) = execute::written_generation(ctx, &format!("{ns}/{dn}")) else { return false };
        let seen = cached.iter().find(|d| d.metadata.name.as_deref() == Some(dn.as_str()));
        seen.and_then(|d| d.metadata.generation).is_none_or(|g| g < wrote)
    })
}

/// The serving pods of a workload, for a metrics source that scrapes them.
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

/// Reconciles a workload that is not being deleted: reads what exists, runs the control
/// tick when one is due, plans ([`plan::plan`]) and executes the plan ([`execute::execute`]).
async fn apply(wl: Arc<LLMWorkload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let settings = plan::Settings { invalid_spec_requeue: ctx.config.invalid_spec_requeue };
    // Nothing is read or touched while the spec is inconsistent.
    if let Some(p) = plan::invalid_spec(&wl, now, settings) {
        return execute::execute(&ctx, &wl, &p).await;
    }
    // poolRefs become pool slots like inline pools, from the GPUPools they name.
    let (written, t_read) = (wl.clone(), std::time::Instant::now());
    let (wl, gpupools) = match resolve_pool_refs(&ctx, &wl).await? {
        Ok(resolved) => resolved,
        Err(e) => return execute::execute(&ctx, &wl, &plan::unresolved_pools(&wl, &e, now, settings)).await,
    };
    let observed = Observed::new(&wl, owned_deployments(&ctx, &wl).await?);
    let state = state_of(&ctx, &wl);
    let (tick_due, policy_error) = refresh_state(&ctx, &state, &wl, now);
    restore_policy_state(&ctx, &state, &wl).await;
    ctx.metrics.phase(Phase::Read, t_read);
    let (tick, explanation, promoted) = match tick_due {
        true => tick_with_promotion(&ctx, &state, &wl, &observed, now).await,
        false => (None, None, Vec::new()),
    };
    let (last_tick, t_plan) = (lock(&state).last_tick, std::time::Instant::now());
    // A workload on shared pools holds the arbiter's lock from its plan to its last
    // write, so no other reconcile decides on the same GPUs meanwhile (the metrics read
    // and the policy's decision happen before, without it).
    let mut book = match written.spec.pool_refs.is_empty() {
        true => None,
        false => Some(ctx.shared.lock().await),
    };
    let mut input = PlanInput {
        workload: &wl,
        observed: &observed,
        now,
        policy_error: policy_error.as_deref(),
        tick: tick.as_ref(),
        last_tick,
        settings,
        grants: None,
    };
    let mut p = plan::plan(&input);
    // Shared slots get what the arbiter grants of what the plan proposes (victims of a
    // preemption are scaled down in there, before this plan's writes).
    let shared = match book.as_deref_mut() {
        None => None,
        Some(book) => {
            // A floor raised without metrics is a proposal too (a preempted workload asks
            // for its minimum back).
            let decided = tick.as_ref().is_some_and(|t| t.decided.is_some() || t.floor.is_some());
            let traffic = tick
                .as_ref()
                .filter(|t| matches!(t.metrics, MetricsRead::Read { .. }))
                .map(|t| t.observation.arrival_rate_rps > 0.0);
            let ask = share::Ask {
                wl: &written,
                resolved: &wl,
                own: &observed.deployments,
                proposal: &p.targets,
                decided,
                traffic,
            };
            let outcome = share::arbitrate_reconcile(&ctx, book, &ask, &gpupools, now).await?;
            input.grants = Some(&outcome.grants);
            p = plan::plan(&input);
            Some(outcome)
        }
    };
    finish_learning(&state, &wl, &mut p, promoted, now);
    remember(&ctx, &state, tick.as_ref(), &p);
    if let Some(tick) = &tick {
        let mode = wl.spec.policy.mode.as_str();
        let entry = journal::Entry::new(now.to_string(), mode, tick, &p, explanation, policy_error.as_deref());
        ctx.journal.record(&key_of(&wl), entry);
        ctx.metrics.workloads.record(&WorkloadReading {
            labels: workload_labels(&wl),
            spec: &wl.spec,
            status: &p.status,
            metrics_available: matches!(tick.metrics, MetricsRead::Read { .. }) && tick.observation.missing.is_empty(),
            policy_ready: policy_error.is_none(),
        });
    }
    let t_write = std::time::Instant::now();
    ctx.metrics.phase(Phase::Plan, t_plan);
    execute::execute(&ctx, &wl, &p).await?;
    ctx.metrics.phase(Phase::Write, t_write);
    if let (Some(book), Some(outcome)) = (book.as_deref_mut(), &shared) {
        let ready = observed.states.iter().map(|(s, st)| (s.clone(), st.ready)).collect();
        share::settle(&ctx, book, &written, outcome, &p.targets, &ready).await;
    }
    drop(book);
    if tick.is_some() {
        let t_save = std::time::Instant::now();
        save_policy_state(&ctx, &state, &wl, now).await;
        ctx.metrics.phase(Phase::SaveState, t_save);
    }
    Ok(Action::requeue(plan::requeue_from(p.requeue_after, now, ctx.clock.now())))
}

/// A due control tick ([`control_tick`]), its promotion step ([`promotion_tick`]) and
/// the retraining schedule's step ([`retrain_tick`]), with the workload's trainings
/// listed first: the tick, what the policy weighed, the Events of both steps.
async fn tick_with_promotion(
    ctx: &Context,
    state: &Mutex<WorkloadState>,
    wl: &LLMWorkload,
    observed: &Observed,
    now: Timestamp,
) -> (Option<TickOutcome>, Option<Explanation>, Vec<PlannedEvent>) {
    let learning = &wl.spec.learning;
    let objects = match learning.promotion.enabled || learning.retrain.enabled {
        true => list_trainings(ctx, wl).await,
        false => None,
    };
    let name = wl.name_any();
    let trainings = objects.as_ref().filter(|_| learning.promotion.enabled).map(|items| {
        let values = items.iter().filter_map(|o| serde_json::to_value(o).ok());
        values.filter_map(|v| promotion::training_input(&v, &name)).collect()
    });
    ctx.metrics.ticks.inc();
    let (tick, explanation) = control_tick(ctx, state, wl, observed, now).await;
    let mut events = promotion_tick(ctx, state, wl, &tick, trainings, now);
    if let Some(items) = objects.as_deref().filter(|_| learning.retrain.enabled) {
        events.extend(retrain_tick(ctx, state, wl, items, now).await);
    }
    (Some(tick), explanation, events)
}

/// The retraining schedule's step ([`retrain::tick`]) with what the promotion knows:
/// whether a candidate is in shadow, the acting checkpoint, the checkpoints whose files
/// must stay.
async fn retrain_tick(
    ctx: &Context,
    state: &Mutex<WorkloadState>,
    wl: &LLMWorkload,
    objects: &[kube::api::DynamicObject],
    now: Timestamp,
) -> Vec<PlannedEvent> {
    use crate::learning::promote::Phase;
    let (view, mut said) = {
        let ws = lock(state);
        let st = &ws.promotion.state;
        let active = st.active.as_ref().map(|c| c.checkpoint.clone());
        let mut protected: Vec<String> = active.iter().cloned().collect();
        match &st.phase {
            Phase::Shadow { candidate, .. } => protected.push(candidate.checkpoint.clone()),
            Phase::Watching { promoted, previous, .. } => {
                protected.push(promoted.checkpoint.clone());
                protected.extend(previous.iter().map(|p| p.checkpoint.clone()));
            }
            _ => {}
        }
        let in_shadow = matches!(st.phase, Phase::Shadow { .. });
        (retrain::PromotionView { in_shadow, active, protected }, ws.retrain_said.clone())
    };
    let dir = ctx.recording.as_ref().map(|r| crate::learning::sink::workload_dir(&r.root, &key_of(wl)));
    let events = retrain::tick(&ctx.client, wl, objects, &view, dir.as_deref(), time_s(now), &mut said).await;
    lock(state).retrain_said = said;
    events
}

/// The `LLMPolicyTraining` API resource (read as dynamic objects, so that one the
/// typed struct cannot read still shows).
fn training_resource() -> kube::api::ApiResource {
    use kube::api::{ApiResource, GroupVersionKind};
    let gvk = GroupVersionKind::gvk(promotion::TRAINING_GROUP, promotion::TRAINING_VERSION, promotion::TRAINING_KIND);
    ApiResource::from_gvk_with_plural(&gvk, promotion::TRAINING_PLURAL)
}

/// The `LLMPolicyTraining`s of `wl`'s namespace, oldest first, from the watch's cache once
/// its first list is in, else listed; `None` when they cannot be listed (logged: the
/// promotion and the retraining schedule then hold where they are, as they do whenever
/// the operator cannot see).
async fn list_trainings(ctx: &Context, wl: &LLMWorkload) -> Option<Vec<kube::api::DynamicObject>> {
    use kube::api::DynamicObject;
    let ns = wl.namespace().unwrap_or_default();
    let cached = ctx.trainings.get().filter(|c| c.ready.load(std::sync::atomic::Ordering::Acquire));
    let mut items = match cached {
        Some(c) => {
            c.store.state().iter().filter(|o| o.namespace().as_deref() == Some(&ns)).map(|o| (**o).clone()).collect()
        }
        None => {
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &training_resource());
            match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(e) => {
                    tracing::warn!(workload = %key_of(wl), error = %e, "cannot list LLMPolicyTrainings; promotion and retraining hold");
                    return None;
                }
            }
        }
    };
    items.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
    Some(items)
}

/// Runs `f`, a piece of synchronous CPU work (a checkpoint load, a network's forward
/// pass), in `block_in_place` on a multi-threaded runtime (see [`decide`]).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// The promotion step of a control tick (`spec.learning.promotion`, [`promotion`]): the
/// trainings are fed, the candidate in shadow decides on the tick's observation through
/// the shield without acting, the tick's SLO attainment joins the live window; on a
/// promotion or a rollback the acting policy is switched at once. Returns the Events.
fn promotion_tick(
    ctx: &Context,
    state: &Mutex<WorkloadState>,
    wl: &LLMWorkload,
    tick: &TickOutcome,
    trainings: Option<Vec<promotion::TrainingInput>>,
    now: Timestamp,
) -> Vec<PlannedEvent> {
    let spec = &wl.spec;
    if !spec.learning.promotion.enabled {
        return Vec::new();
    }
    let cfg = promotion::config(spec);
    let (now_s, now_str) = (time_s(now), now.to_string());
    let labels = workload_labels(wl);
    let mut out = promotion::Produced::default();
    let mut guard = lock(state);
    let ws = &mut *guard;
    if let Some(t) = trainings {
        ws.promotion.feed_trainings(&cfg, now_s, &t, &mut out);
    }
    // Only a tick whose policy decided on complete metrics: the candidate sees what the
    // active policy saw, and the live window only what was seen.
    if tick.decided.is_some() {
        let build = |s: &crate::crd::LLMWorkloadSpec| (ctx.policy_builder)(s);
        let (promotion, shield, obs) = (&mut ws.promotion, &ws.shield, &tick.observation);
        let shadow = blocking(|| promotion.shadow(&cfg, spec, &build, shield, obs, (now_s, &now_str), &mut out));
        if let Some(d) = &shadow {
            ctx.metrics.shadow_decision(&labels, d);
        }
        if let Some(standby) = ws.standby.as_mut() {
            blocking(|| standby.decide(obs));
        }
        let max_tick_s = 2.0 * f64::from(spec.policy.interval_seconds.max(1));
        ws.promotion.live(&cfg, now_s, tick.observation.slo_attainment, max_tick_s, &mut out);
    }
    if out.switched {
        let promoted = out.events.iter().any(|e| e.reason == crate::learning::promote::EventReason::Promoted);
        switch_policy(ctx, ws, wl, promoted);
    }
    if !matches!(ws.promotion.state.phase, crate::learning::promote::Phase::Watching { .. }) {
        ws.standby = None;
    }
    if !matches!(ws.promotion.state.phase, crate::learning::promote::Phase::Shadow { .. }) {
        let slots: Vec<(String, String)> = spec
            .variants
            .iter()
            .flat_map(|v| spec.pool_names_of(v).into_iter().map(|p| (v.name.clone(), p.to_string())))
            .collect();
        ctx.metrics.clear_shadow(&labels, &slots);
    }
    for e in &out.events {
        ctx.metrics.promotion(&labels, e.reason.as_str());
        tracing::info!(workload = %key_of(wl), reason = e.reason.as_str(), "{}", e.message);
    }
    out.events.iter().map(promotion::planned_event).collect()
}

/// After a promotion or a rollback: the policy that now acts. A promoted candidate keeps
/// the policy built in shadow (it has seen every observation since), and the policy it
/// displaces stands by, deciding in the background, until the watch ends; a rollback
/// takes the standby back, or, after a restart, builds it again, and then it reads its
/// saved state (the policy-state ConfigMap) before anything is saved over it. The shield,
/// with its cooldowns, stays.
fn switch_policy(ctx: &Context, ws: &mut WorkloadState, wl: &LLMWorkload, promoted: bool) {
    let wanted = wanted_policy(wl, &ws.promotion);
    let build = || blocking(|| (ctx.policy_builder)(&promotion::effective_spec(&wl.spec, wanted.as_ref())));
    if promoted {
        let next = ws.promotion.take_promoted().map(Ok).unwrap_or_else(build);
        ws.standby = std::mem::replace(&mut ws.policy, next).ok();
        ws.state_restored = false;
    } else {
        match ws.standby.take() {
            Some(p) => ws.policy = Ok(p),
            None => {
                ws.policy = build();
                ws.state_restored = false;
            }
        }
    }
    ws.built_for = wanted;
}

/// Puts the promotion's state into the plan's status (`status.learning`, the
/// `PolicyPromotion` condition, the summary's policy) and its Events after the others.
/// With promotion off, `status.learning` stays as it was and the condition, if any, says
/// the spec's policy acts.
fn finish_learning(
    state: &Mutex<WorkloadState>,
    wl: &LLMWorkload,
    p: &mut Plan,
    events: Vec<PlannedEvent>,
    now: Timestamp,
) {
    let (now_str, generation) = (now.to_string(), wl.meta().generation);
    let st = &mut p.status;
    if wl.spec.learning.promotion.enabled {
        let ws = lock(state);
        st.learning = Some(ws.promotion.to_status());
        status::set_condition(&mut st.conditions, ws.promotion.condition(), &now_str, generation);
        if let (Some(c), Ok(policy)) = (&ws.built_for, &ws.policy) {
            let what = format!(
                "policy {} promoted from {} (sha256 {}), in place of the spec's {}",
                policy.name(),
                c.checkpoint,
                c.digest,
                wl.spec.policy.kind.as_str()
            );
            let ready = status::ConditionUpdate::new(status::POLICY_READY, true, "PolicyBuilt", what);
            status::set_condition(&mut st.conditions, ready, &now_str, generation);
        }
    } else if status::condition(&st.conditions, status::POLICY_PROMOTION).is_some() {
        let msg = "spec.learning.promotion.enabled is false: the spec's policy acts; status.learning is kept";
        let off = status::ConditionUpdate::new(status::POLICY_PROMOTION, false, "Disabled", msg);
        status::set_condition(&mut st.conditions, off, &now_str, generation);
    }
    st.summary = Some(status::summary(&wl.spec, st));
    p.events.extend(events);
}

/// GPUPools by name.
type GpuPools = BTreeMap<String, crate::crd::GPUPool>;

/// `wl` with its `poolRefs` resolved into pool slots ([`crate::crd::pool::resolve_pools`]),
/// and the GPUPools: they are listed only for a workload that has poolRefs; an error
/// names the poolRef that cannot be resolved. Each shared slot is capped by the ref's
/// `maxGpus` or the pool's `capacityGpus` for the workload's own shield; what the
/// workload gets of the pool is the arbiter's grant ([`share`]).
async fn resolve_pool_refs(
    ctx: &Context,
    wl: &Arc<LLMWorkload>,
) -> Result<Result<(Arc<LLMWorkload>, GpuPools), crate::crd::pool::PoolRefError>, Error> {
    if wl.spec.pool_refs.is_empty() {
        return Ok(Ok((wl.clone(), GpuPools::new())));
    }
    let api: Api<crate::crd::GPUPool> = Api::all(ctx.client.clone());
    let list = api.list(&ListParams::default()).await.map_err(kube_err("listing GPUPools"))?;
    let pools: GpuPools = list.items.into_iter().map(|p| (p.name_any(), p)).collect();
    let specs = pools.iter().map(|(n, p)| (n.clone(), p.spec.clone())).collect();
    Ok(crate::crd::pool::resolve_pools(&wl.spec, &specs).map(|spec| {
        let mut resolved = (**wl).clone();
        resolved.spec = spec;
        (Arc::new(resolved), pools)
    }))
}

/// On the first reconcile of `wl` since its state was built: reads the policy's saved
/// state and gives it back to the policy, with an Event saying what came of it.
async fn restore_policy_state(ctx: &Context, state: &Mutex<WorkloadState>, wl: &LLMWorkload) {
    {
        let ws = lock(state);
        if ws.state_restored || ws.policy.as_ref().map_or(true, |p| p.export_state().is_none()) {
            return;
        }
    }
    let saved = policy_state::load(&ctx.client, wl).await;
    let outcome = {
        let mut ws = lock(state);
        ws.state_restored = true;
        match ws.policy.as_mut() {
            Ok(p) => policy_state::restore(p.as_mut(), saved),
            Err(_) => Ok(None),
        }
    };
    let ev = match outcome {
        Ok(None) => return,
        Ok(Some(note)) => PlannedEvent::normal(EventReason::PolicyStateRestored, "RestorePolicyState", note),
        Err(note) => {
            tracing::warn!(workload = %key_of(wl), "{note}");
            PlannedEvent::warning(EventReason::PolicyStateRejected, "RestorePolicyState", note)
        }
    };
    execute::publish(ctx, wl, &ev).await;
}

/// Writes the policy's learned state to its ConfigMap when it changed and the last write
/// is at least `policy_state_interval` old. A failed write is logged and tried again on
/// the next tick: the state is not worth a failed reconcile.
async fn save_policy_state(ctx: &Context, state: &Mutex<WorkloadState>, wl: &LLMWorkload, now: Timestamp) {
    let (policy, value) = {
        let ws = lock(state);
        let Ok(p) = ws.policy.as_ref() else { return };
        // A policy whose saved state was not read back yet (a switch back from a promoted
        // policy) must not overwrite it with a fresh one.
        if !ws.state_restored {
            return;
        }
        // The interval first: within it nothing is exported (the state is serialised
        // only when it may be written).
        let interval = SignedDuration::try_from(ctx.config.policy_state_interval).unwrap_or(SignedDuration::MAX);
        if ws.state_saved.as_ref().is_some_and(|(t, _)| now.duration_since(*t) < interval) {
            return;
        }
        let Some(value) = p.export_state() else { return };
        if ws.state_saved.as_ref().is_some_and(|(_, v)| *v == value) {
            return;
        }
        (p.name().to_string(), value)
    };
    let cm = policy_state::config_map(wl, &policy, &value, now);
    match policy_state::save(&ctx.client, &cm).await {
        Ok(()) => lock(state).state_saved = Some((now, value)),
        Err(e) => tracing::warn!(workload = %key_of(wl), error = %e, "cannot save the policy state"),
    }
}

/// The labels of a workload's series in the operator's metrics.
fn workload_labels(wl: &LLMWorkload) -> WorkloadLabels {
    WorkloadLabels { namespace: wl.namespace().unwrap_or_default(), workload: wl.name_any() }
}

/// The policy and shield of `wl`, built on its first reconcile (the shield's cooldowns
/// restored from `status.lastScaleDown`).
fn state_of(ctx: &Context, wl: &LLMWorkload) -> Arc<Mutex<WorkloadState>> {
    let key = key_of(wl);
    if let Some(s) = ctx.workload_state(&key) {
        return s;
    }
    // Built outside the map's lock (loading a checkpoint can take a while).
    let mut shield = Shield::new(&wl.spec);
    let last_scale_down = wl.status.as_ref().map(|s| &s.last_scale_down);
    let cooldowns: BTreeMap<String, f64> =
        last_scale_down.into_iter().flatten().filter_map(|(k, v)| parse_time_s(v).map(|t| (k.clone(), t))).collect();
    shield.import_state(&cooldowns);
    let learning = wl.status.as_ref().and_then(|s| s.learning.as_ref());
    let promotion = promotion::Promotion::from_status(learning).unwrap_or_else(|e| {
        tracing::warn!(workload = %key, error = %e, "status.learning cannot be read; promotion starts idle with the spec's policy");
        promotion::Promotion::new()
    });
    let built_for = wanted_policy(wl, &promotion);
    let policy = (ctx.policy_builder)(&promotion::effective_spec(&wl.spec, built_for.as_ref()));
    let ws = WorkloadState {
        generation: wl.meta().generation,
        policy,
        shield,
        last_tick: None,
        state_restored: false,
        state_saved: None,
        record: None,
        promotion,
        built_for,
        standby: None,
        retrain_said: None,
        quick_decisions: false,
    };
    lock(&ctx.workloads).entry(key).or_insert_with(|| Arc::new(Mutex::new(ws))).clone()
}

/// Rebuilds the policy and updates the shield when the spec changed; returns whether a
/// control tick is due (an interval passed, or the spec changed) and why the policy
/// cannot be built, if it cannot.
fn refresh_state(
    ctx: &Context,
    state: &Mutex<WorkloadState>,
    wl: &LLMWorkload,
    now: Timestamp,
) -> (bool, Option<String>) {
    let mut ws = lock(state);
    let generation = wl.meta().generation;
    let wanted = wanted_policy(wl, &ws.promotion);
    let changed = ws.generation != generation || ws.built_for != wanted;
    if changed {
        ws.generation = generation;
        let learned = ws.policy.as_ref().ok().and_then(|p| p.export_state().map(|s| (p.name().to_string(), s)));
        ws.policy = (ctx.policy_builder)(&promotion::effective_spec(&wl.spec, wanted.as_ref()));
        ws.built_for = wanted;
        ws.standby = None;
        // What the policy learned carries over a spec change when the kind stays the same.
        if let (Ok(p), Some((name, s))) = (ws.policy.as_mut(), learned) {
            if p.name() == name {
                if let Err(e) = p.import_state(s) {
                    tracing::warn!(workload = %key_of(wl), error = %e, "the policy's state does not fit the new spec; it starts afresh");
                }
            }
        }
        ws.shield.update_spec(&wl.spec);
    }
    let due = changed || plan::tick_due(wl, now, ws.last_tick);
    // How late a scheduled tick starts (a tick the spec's change brings forward is not late).
    if let Some(last) = ws.last_tick.filter(|_| due && !changed) {
        let late = now.duration_since(plan::next_tick(wl, last));
        ctx.metrics.tick_lag.observe(late.as_secs_f64().max(0.0));
    }
    (due, ws.policy.as_ref().err().cloned())
}

/// The control tick: the observation (cluster part, then the metrics), and when the
/// metrics are complete the policy's decision and the shield's clamp of it, with what
/// the policy weighed ([`Policy::explain`]).
async fn control_tick(
    ctx: &Context,
    state: &Mutex<WorkloadState>,
    wl: &LLMWorkload,
    observed: &Observed,
    now: Timestamp,
) -> (TickOutcome, Option<Explanation>) {
    let spec = &wl.spec;
    let last_action = wl.status.as_ref().and_then(|s| s.last_action_time.as_deref()).and_then(parse_time_s);
    let since_action = last_action.map(|t| (time_s(now) - t).max(0.0));
    let mut obs = build_observation(spec, &observed.current, &observed.states, time_s(now), since_action);
    let (ns, name) = (wl.namespace().unwrap_or_default(), wl.name_any());
    // Only a source that scrapes the pods needs their addresses (one Pod list per tick).
    let eps = match spec.metrics.source {
        crate::crd::MetricsSourceKind::Scrape => endpoints(ctx, wl).await,
        crate::crd::MetricsSourceKind::Prometheus => Vec::new(),
    };
    let query = MetricsQuery { namespace: &ns, workload: &name, spec, endpoints: &eps };
    let t_observe = std::time::Instant::now();
    let (metrics, pods) = match ctx.metrics_source.observe(&query).await {
        Ok(snapshot) => {
            snapshot.fill(&mut obs);
            (MetricsRead::Read { source: ctx.metrics_source.name().to_string() }, snapshot.pods)
        }
        Err(e) => (MetricsRead::Failed(e.to_string()), Vec::new()),
    };
    ctx.metrics.phase(Phase::Observe, t_observe);
    let complete = matches!(metrics, MetricsRead::Read { .. }) && obs.missing.is_empty();
    let t_decide = std::time::Instant::now();
    let (decided, explanation) = if complete { decide(ctx, state, &mut obs) } else { (None, None) };
    ctx.metrics.phase(Phase::Decide, t_decide);
    {
        let policy = decided.as_ref().map(|d| d.policy.as_str());
        let read = record::TickRead { wl, obs: &obs, endpoints: &eps, pods: &pods, policy, now_s: time_s(now) };
        let recording = ctx.recording.as_ref();
        record::tick(recording, &ctx.metrics_source, &ctx.metrics, &mut lock(state).record, &read);
    }
    let floor = if complete { None } else { decide::floor_without_metrics(&lock(state).shield, &obs) };
    lock(state).last_tick = Some(now);
    (TickOutcome { observation: obs, metrics, decided, floor }, explanation)
}

/// The shield annotates the observation, the policy decides, the shield clamps
/// ([`crate::control::decide`], the step every world shares); `None` when the policy
/// could not be built.
///
/// A decision is synchronous CPU work (a DQN forward pass, or a slow policy): on a
/// multi-threaded runtime it runs in `block_in_place`, so the worker's other tasks (other
/// workloads' reconciles, the API client's connections) move to another thread instead
/// of waiting behind it; unless the policy's last decision was quicker than
/// [`QUICK_DECISION`], which then runs in place.
fn decide(
    ctx: &Context,
    state: &Mutex<WorkloadState>,
    obs: &mut Observation,
) -> (Option<Decided>, Option<Explanation>) {
    let mut run = || {
        let mut guard = lock(state);
        let ws = &mut *guard;
        let Ok(policy) = ws.policy.as_mut() else { return (None, None) };
        let t0 = std::time::Instant::now();
        // The decision half of the one control tick; the shield records the outcome only
        // once it is applied (`remember`), so a shadow decision starts no cooldown.
        let (decision, outcome) = crate::control::decide(&mut ws.shield, policy.as_mut(), obs);
        let took = t0.elapsed();
        ctx.metrics.policy_duration.observe(took.as_secs_f64());
        ws.quick_decisions = took < QUICK_DECISION;
        (Some(Decided { policy: policy.name().to_string(), decision, outcome }), policy.explain())
    };
    if lock(state).quick_decisions {
        run()
    } else {
        blocking(run)
    }
}

/// Keeps what the plan decided in the controller's memory before anything is written:
/// the shield records the applied decision (cooldowns), and the decision and the shield's
/// overrides are counted in the operator's metrics.
fn remember(ctx: &Context, state: &Mutex<WorkloadState>, tick: Option<&TickOutcome>, p: &Plan) {
    if let (Some(tick), Some(applied)) = (tick, &p.shield_applied) {
        lock(state).shield.record(&tick.observation, applied);
    }
    for rule in &p.shield_overrides {
        ctx.metrics.shield_override(rule.as_str());
    }
    if let Some(kind) = p.decision {
        ctx.metrics.decision(kind.as_str());
    }
}

/// Deletes what the workload owns, before its finalizer is removed.
async fn cleanup(wl: Arc<LLMWorkload>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.workloads.forget(&workload_labels(&wl));
    ctx.journal.forget(&key_of(&wl));
    if !wl.spec.pool_refs.is_empty() {
        ctx.shared.lock().await.forget(&key_of(&wl));
    }
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
    lock(&ctx.workloads).remove(&key_of(&wl));
    // Deployments and the Service (named after the workload) alike, by name.
    execute::forget_written(&ctx, &ns, &deleted);
    execute::forget_written(&ctx, &ns, std::slice::from_ref(&name));
    let what = if deleted.is_empty() { "nothing".into() } else { deleted.join(", ") };
    let ev = PlannedEvent::normal(EventReason::Deleted, "Cleanup", format!("deleted {what}"));
    execute::publish(&ctx, &wl, &ev).await;
    tracing::info!(workload = %key_of(&wl), deleted = ?deleted, "cleaned up");
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown` resolves: watches LLMWorkloads (in `namespace`,
/// or all) and the Deployments and Services the operator manages.
///
/// An LLMWorkload triggers a reconcile only when its generation (the spec, or the
/// deletion mark) or its finalizers change: the status the operator writes at each tick
/// comes back through the watch, and without the filter it would trigger a second
/// reconcile per tick. The ticks themselves come from the requeue each reconcile asks
/// for; changes to the owned Deployments and Services still trigger a reconcile. The
/// reflector's store, which the reconciles read, sees every change.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::{predicates, reflector, watcher, Controller, Predicate, WatchStreamExt};
    let (dep_reader, dep_writer) = reflector::store::<Deployment>();
    let client = ctx.client.clone();
    let (wls, deps, svcs): (Api<LLMWorkload>, Api<Deployment>, Api<Service>) = match &namespace {
        Some(ns) => {
            (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns), Api::namespaced(client, ns))
        }
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client)),
    };
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={}", desired::MANAGED_BY));
    let (reader, writer) = reflector::store();
    let trigger = watcher(wls, watcher::Config::default())
        .default_backoff()
        .modify(cache::trim)
        .reflect(writer)
        .touched_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    // The owned Deployments: one watch feeds both the triggers and the cache reconciles read.
    let _ = ctx.deployments.set(dep_reader);
    let _ = ctx.llmworkloads.set(reader.clone());
    let index = ctx.deployment_index.clone();
    let dep_stream = watcher(deps, owned.clone())
        .default_backoff()
        .modify(cache::trim)
        .inspect_ok(move |e| index.apply(e))
        .reflect(dep_writer)
        .touched_objects();
    // Stopped with the controller, also when this future is dropped (a lost Lease).
    let _trainings = AbortOnDrop(tokio::spawn(watch_trainings(ctx.clone(), namespace)));
    let config = kube::runtime::controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles);
    Controller::for_stream(trigger, reader)
        .with_config(config)
        .owns_stream(dep_stream)
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

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `ctx.trainings` up to date from a watch of the LLMPolicyTrainings (of
/// `namespace`, or all), marking it ready once the first list is in. Without the CRD the
/// watch retries with backoff and the cache stays unready (the reconciles then list, and
/// find nothing to list).
async fn watch_trainings(ctx: Arc<Context>, namespace: Option<String>) {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let ar = training_resource();
    let api: Api<kube::api::DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
    let writer = reflector::store::Writer::new(ar);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = ctx.trainings.set(TrainingCache { store: writer.as_reader(), ready: ready.clone() });
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|e| {
            if matches!(e, Ok(watcher::Event::InitDone)) {
                ready.store(true, std::sync::atomic::Ordering::Release);
            }
            futures::future::ready(())
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
