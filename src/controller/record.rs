//! The traffic record at each control tick (`spec.learning.record`): per workload a
//! [`WindowRecorder`] in the controller's memory, and one [`RecordSink`] per operator
//! process (`llmos run --record-dir`).
//!
//! - With the `scrape` source, the recorder reads the pods' samples of the tick's own
//!   scrape ([`crate::metrics::MetricsSnapshot::pods`]): nothing is scraped twice.
//! - With the `prometheus` source, when a window is due a task queries the increases of
//!   the counters and token histograms over the window
//!   ([`crate::metrics::MetricsSource::traffic`]) and hands the window over; the
//!   reconcile does not wait for it.
//!
//! A closed window goes to the sink with `try_send` (never blocks); a full queue drops it.
//! Each window is counted in `llmos_record_windows_total{result}` and the time a tick
//! spends here in `llmos_record_duration_seconds`.

use std::path::PathBuf;
use std::sync::Arc;

use kube::ResourceExt;

use crate::crd::{LLMWorkload, MetricsSourceKind};
use crate::learning::record::{fleet_of, WindowContext, WindowRecorder};
use crate::learning::sink::RecordSink;
use crate::learning::store::StoreConfig;
use crate::metrics::scrape::PodSample;
use crate::metrics::{Endpoint, MetricsQuery, MetricsSource};
use crate::policy::Observation;

use super::telemetry::OperatorMetrics;

/// The operator's traffic record: the sink over `--record-dir`.
#[derive(Clone)]
pub struct Recording {
    /// Hands windows to the writer thread.
    pub sink: RecordSink,
    /// The record directory (`<root>/<namespace>_<name>/` per workload).
    pub root: PathBuf,
}

/// What the controller keeps per recording workload.
pub(super) struct WorkloadRecord {
    recorder: WindowRecorder,
    window_seconds: u32,
}

/// What a tick read that the record needs.
pub(super) struct TickRead<'a> {
    /// The workload (its spec resolved).
    pub wl: &'a LLMWorkload,
    /// The tick's observation (fleet, SLO attainment).
    pub obs: &'a Observation,
    /// Every serving endpoint the tick knew of (scrape source).
    pub endpoints: &'a [Endpoint],
    /// The samples of the endpoints that answered (scrape source).
    pub pods: &'a [(Endpoint, PodSample)],
    /// The deciding policy, if one decided.
    pub policy: Option<&'a str>,
    /// Now, seconds since the Unix epoch.
    pub now_s: f64,
}

/// Feeds one tick to the workload's recorder and hands a closed window to the sink.
/// `slot` is the workload's record state (`None` until it records); `warned` says
/// whether the missing `--record-dir` was already logged for it.
pub(super) fn tick(
    recording: Option<&Recording>,
    source: &Arc<dyn MetricsSource>,
    metrics: &OperatorMetrics,
    slot: &mut Option<WorkloadRecord>,
    read: &TickRead<'_>,
) {
    let spec = &read.wl.spec.learning.record;
    if !spec.enabled && slot.is_none() {
        return;
    }
    let key = format!("{}/{}", read.wl.metadata.namespace.as_deref().unwrap_or_default(), read.wl.name_any());
    let Some(recording) = recording.filter(|_| spec.enabled) else {
        if spec.enabled && slot.is_none() {
            tracing::warn!(workload = %key, "spec.learning.record.enabled, but the operator runs without --record-dir: nothing is recorded");
        }
        // Remember the warning (an inert recorder) or forget a disabled one.
        *slot = spec.enabled.then(|| WorkloadRecord { recorder: WindowRecorder::new(&key, 1.0), window_seconds: 0 });
        return;
    };
    let started = std::time::Instant::now();
    if slot.as_ref().is_none_or(|r| r.window_seconds != spec.window_seconds) {
        let recorder = WindowRecorder::new(&key, f64::from(spec.window_seconds));
        *slot = Some(WorkloadRecord { recorder, window_seconds: spec.window_seconds });
    }
    let Some(rec) = slot.as_mut() else { return };
    let ctx = WindowContext {
        slo: read.wl.spec.slo.clone(),
        fleet: fleet_of(read.obs),
        slo_attainment: read.obs.slo_attainment,
        policy: read.policy.map(str::to_string).or_else(|| Some(read.wl.spec.policy.kind.as_str().to_string())),
    };
    let limits = Some(StoreConfig::from_spec(spec));
    match read.wl.spec.metrics.source {
        MetricsSourceKind::Scrape => {
            let addresses: Vec<&str> = read.endpoints.iter().map(|e| e.address.as_str()).collect();
            rec.recorder.retain(&addresses);
            // A round where no pod answered says nothing about the traffic.
            if read.pods.is_empty() && !read.endpoints.is_empty() {
                return;
            }
            if let Some(w) = rec.recorder.observe(read.now_s, read.pods, &ctx) {
                hand(&recording.sink, metrics, w, limits);
            }
        }
        MetricsSourceKind::Prometheus => {
            if let Some((start, duration)) = rec.recorder.due(read.now_s) {
                let recorder = WindowRecorder::new(&key, rec.recorder.window_s());
                let job = PromWindow { wl: read.wl.clone(), start, duration, ctx, limits };
                spawn_prometheus_window(recording.sink.clone(), source.clone(), metrics.clone(), recorder, job);
            }
        }
    }
    metrics.record_duration.observe(started.elapsed().as_secs_f64());
}

/// Hands a window to the sink and counts what became of it.
fn hand(
    sink: &RecordSink,
    metrics: &OperatorMetrics,
    w: crate::learning::record::TrafficWindow,
    limits: Option<StoreConfig>,
) {
    let result = if sink.record_with(w, limits) { "handed" } else { "dropped" };
    metrics.record_window(result);
}

/// A Prometheus window to read and hand over.
struct PromWindow {
    wl: LLMWorkload,
    start: f64,
    duration: f64,
    ctx: WindowContext,
    limits: Option<StoreConfig>,
}

/// Reads the window's increases from Prometheus in a task of its own and hands the
/// window to the sink; a failed query is logged and counted (`unread`).
fn spawn_prometheus_window(
    sink: RecordSink,
    source: Arc<dyn MetricsSource>,
    metrics: OperatorMetrics,
    recorder: WindowRecorder,
    job: PromWindow,
) {
    tokio::spawn(async move {
        let ns = job.wl.metadata.namespace.clone().unwrap_or_default();
        let name = job.wl.name_any();
        let query = MetricsQuery { namespace: &ns, workload: &name, spec: &job.wl.spec, endpoints: &[] };
        let window_s = job.duration.round().max(1.0) as u32;
        match source.traffic(&query, window_s).await {
            Ok(Some(inc)) => {
                let w = recorder.window_from_increase(job.start, job.duration, &inc, &job.ctx);
                hand(&sink, &metrics, w, job.limits);
            }
            Ok(None) => metrics.record_window("unread"),
            Err(e) => {
                tracing::warn!(workload = %format!("{ns}/{name}"), error = %e, "cannot read the traffic record window");
                metrics.record_window("unread");
            }
        }
    });
}
