//! [`SpecSource`]: the metrics source the operator runs with. It reads each workload
//! the way its spec says (`spec.metrics.source`): through Prometheus
//! ([`PrometheusSource`], URL from `spec.metrics.prometheusUrl`, else the operator-wide
//! default) or by scraping the pods ([`ScrapeSource`]).

use futures::future::BoxFuture;

use super::{
    MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource, PrometheusConfig, PrometheusSource, ScrapeConfig,
    ScrapeSource,
};
use crate::crd::MetricsSourceKind;

/// Environment variable with the default Prometheus URL (used when a spec names none).
pub const PROMETHEUS_URL_ENV: &str = "LLMOS_PROMETHEUS_URL";

/// Dispatches to Prometheus or direct scraping per workload, as its spec asks.
pub struct SpecSource {
    prometheus: PrometheusSource,
    scrape: ScrapeSource,
}

impl SpecSource {
    /// A source with the given settings of both kinds.
    pub fn new(prometheus: PrometheusConfig, scrape: ScrapeConfig) -> Result<Self, MetricsError> {
        Ok(SpecSource { prometheus: PrometheusSource::new(prometheus)?, scrape: ScrapeSource::new(scrape)? })
    }

    /// Default settings; the default Prometheus URL is `default_url`, else
    /// `$LLMOS_PROMETHEUS_URL` when set.
    pub fn with_default_url(default_url: Option<String>) -> Result<Self, MetricsError> {
        Self::with_prometheus(PrometheusConfig { default_url, ..Default::default() })
    }

    /// Default scrape settings and the given Prometheus settings; without a default URL,
    /// `$LLMOS_PROMETHEUS_URL` when set.
    pub fn with_prometheus(mut prometheus: PrometheusConfig) -> Result<Self, MetricsError> {
        prometheus.default_url =
            prometheus.default_url.or_else(|| std::env::var(PROMETHEUS_URL_ENV).ok()).filter(|u| !u.is_empty());
        Self::new(prometheus, ScrapeConfig::default())
    }
}

impl MetricsSource for SpecSource {
    fn name(&self) -> &str {
        "spec"
    }

    fn observe<'a>(&'a self, query: &'a MetricsQuery<'a>) -> BoxFuture<'a, Result<MetricsSnapshot, MetricsError>> {
        match query.spec.metrics.source {
            MetricsSourceKind::Prometheus => self.prometheus.observe(query),
            MetricsSourceKind::Scrape => self.scrape.observe(query),
        }
    }

    fn traffic<'a>(
        &'a self,
        query: &'a MetricsQuery<'a>,
        window_s: u32,
    ) -> BoxFuture<'a, Result<Option<super::TrafficIncrease>, MetricsError>> {
        match query.spec.metrics.source {
            MetricsSourceKind::Prometheus => self.prometheus.traffic(query, window_s),
            MetricsSourceKind::Scrape => Box::pin(async { Ok(None) }),
        }
    }
}
