//! The operator's own telemetry: Prometheus metrics (`llmos_*`), the `/metrics`,
//! `/healthz` and `/readyz` endpoints, and the tracing subscriber (text or JSON logs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

/// Label set with a shield rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The shield rule (e.g. `MaxStepChange`).
    pub rule: String,
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
    /// `llmos_decisions_total{kind}`.
    pub decisions: Family<KindLabel, Counter>,
    /// `llmos_shield_overrides_total{rule}`.
    pub shield_overrides: Family<RuleLabel, Counter>,
    /// `llmos_policy_decision_duration_seconds`.
    pub policy_duration: Histogram,
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
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let decisions = Family::<KindLabel, Counter>::default();
        let shield_overrides = Family::<RuleLabel, Counter>::default();
        let policy_duration = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciliations that failed, by reason", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Time one reconciliation took", reconcile_duration.clone());
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
        OperatorMetrics {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            decisions,
            shield_overrides,
            policy_duration,
            registry: Arc::new(registry),
        }
    }

    /// Counts a decision of `kind`.
    pub fn decision(&self, kind: &str) {
        self.decisions.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    /// Counts a failed reconciliation.
    pub fn error(&self, reason: &str) {
        self.reconcile_errors.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: OperatorMetrics,
    health: Health,
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
        );
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
        let text = m.encode();
        for name in [
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
}
