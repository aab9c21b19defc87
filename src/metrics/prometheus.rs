//! [`PrometheusSource`]: reads a workload's vLLM metrics from a Prometheus server through
//! its HTTP query API (`GET /api/v1/query`, instant queries evaluated now).
//!
//! Every query selects the workload's series with
//! `{llmos_workload="<name>", namespace="<ns>", <spec.metrics.labelSelector>}`: the
//! `llmos_*` labels are the pods' `llmos.dev/*` labels copied onto the series by
//! Prometheus' relabelling (see [`super::vllm`] for the rule), and per-slot results are
//! grouped `by (llmos_variant, llmos_pool)`. With `w` = `spec.metrics.windowSeconds`:
//!
//! | what | PromQL |
//! |---|---|
//! | waiting, running | `sum by (slot) (vllm:num_requests_waiting{sel})` |
//! | KV cache | `avg by (slot) (vllm:kv_cache_usage_perc{sel} or vllm:gpu_cache_usage_perc{sel})` |
//! | completions/s | `sum by (slot) (rate(vllm:request_success_total{sel}[w]))` |
//! | growth of in-flight | `sum by (slot) (delta(waiting{sel}[w])) + sum by (slot) (delta(running{sel}[w]))` |
//! | trend | `(sum(rate(success[w/2])) - sum(rate(success[w/2] offset w/2))) / (w/2)` |
//! | TTFT/TPOT p50/p90/p99 | `histogram_quantile(q, sum by (le) (rate(..._bucket{sel}[w])))` |
//! | SLO attainment | bucket rates `sum by (le) (rate(..._bucket{sel}[w]))`, read as in [`super::histogram`] |
//! | staleness | `time() - max by (slot) (timestamp(vllm:num_requests_running{sel}))` |
//! | scrape targets | `up{sel}` (1 up, 0 down; judged against ready replicas in [`MetricsSnapshot::fill`]) |
//!
//! A traffic record window of `W` seconds ([`PrometheusSource::traffic`], only for a
//! workload that records) reads `sum(increase(vllm:request_success_total{sel}[W]))`, the
//! growth of waiting + running requests (`delta`), and both token histograms as
//! `sum by (le) (increase(vllm:request_{prompt,generation}_tokens_bucket{sel}[W]))` with
//! their `_sum`'s increase ([`traffic_queries`]).
//!
//! Arrival rate of a slot = completions/s + growth of in-flight requests / w (the same
//! definition as [`super::scrape`]). Older metric names are joined with `or`, which
//! keeps the current name where a pod exports both.
//!
//! Missing, stale, NaN or partial series are named in [`MetricsSnapshot::missing`] with
//! the reason; only an unreachable server (connection refused, timeout, HTTP 5xx
//! without a Prometheus error body) is a [`MetricsError::Unreachable`], and an answer
//! that is not a Prometheus vector is a [`MetricsError::BadAnswer`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use serde::Deserialize;

use super::histogram::Histogram;
use super::scrape::slo_attainment;
use super::vllm::{self, SERIES_LABEL_NAMESPACE, SERIES_LABEL_POOL, SERIES_LABEL_VARIANT, SERIES_LABEL_WORKLOAD};
use super::{MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource, ScrapeTarget, SlotMetrics, TrafficIncrease};
use crate::policy::observation::{LatencyObservation, SlotId};

/// Settings of the Prometheus source.
///
/// Authentication follows the Prometheus Operator's conventions for reaching a secured
/// Prometheus (its `bearerTokenFile` and `tlsConfig.caFile`): a token read from a mounted
/// file (read again at every tick, so a rotated token is picked up) and a CA bundle that
/// verifies the server's certificate, next to the system's roots.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// Base URL used when the workload's spec names none (e.g. `http://127.0.0.1:9090`).
    pub default_url: Option<String>,
    /// Timeout of one query, connection included.
    pub timeout: Duration,
    /// A file holding a bearer token sent with every query (`Authorization: Bearer`).
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// A PEM file of CA certificates that verify an `https://` Prometheus.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig { default_url: None, timeout: Duration::from_secs(5), bearer_token_file: None, ca_file: None }
    }
}

/// Most queries one [`PrometheusSource`] has in flight at once (the others wait for a
/// turn), and most idle connections it keeps per Prometheus. Without a bound, a burst of
/// due ticks (16 queries each) opened one connection per query, hundreds, which the pool
/// then kept; Prometheus itself runs 20 queries at a time by default
/// (`--query.max-concurrency`) and queues the rest.
pub const MAX_CONCURRENT_QUERIES: usize = 64;

/// A [`MetricsSource`] backed by a Prometheus server.
pub struct PrometheusSource {
    client: reqwest::Client,
    config: PrometheusConfig,
    /// Turns of [`MAX_CONCURRENT_QUERIES`].
    permits: tokio::sync::Semaphore,
}

/// One series of an instant-vector answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (may be NaN or ±Inf).
    pub value: f64,
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct ApiSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (serde_json::Value, String),
}

/// Parses a Prometheus sample value (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Parses the body of `/api/v1/query` into series. `query` names the query in errors.
pub fn parse_answer(source: &str, query: &str, body: &str) -> Result<Vec<Series>, MetricsError> {
    let bad = |message: String| MetricsError::BadAnswer { source_name: source.into(), series: query.into(), message };
    let answer: ApiAnswer = serde_json::from_str(body).map_err(|e| bad(format!("not a Prometheus API answer: {e}")))?;
    if answer.status != "success" {
        return Err(bad(format!(
            "{}: {}",
            answer.error_type.unwrap_or_else(|| "error".into()),
            answer.error.unwrap_or_default()
        )));
    }
    let data = answer.data.ok_or_else(|| bad("success without data".into()))?;
    match data.result_type.as_str() {
        "vector" => {
            let raw: Vec<ApiSeries> =
                serde_json::from_value(data.result).map_err(|e| bad(format!("bad vector: {e}")))?;
            raw.into_iter()
                .map(|s| {
                    let value =
                        parse_value(&s.value.1).ok_or_else(|| bad(format!("bad sample value {:?}", s.value.1)))?;
                    Ok(Series { labels: s.metric, value })
                })
                .collect()
        }
        "scalar" => {
            let (_, v): (serde_json::Value, String) =
                serde_json::from_value(data.result).map_err(|e| bad(format!("bad scalar: {e}")))?;
            let value = parse_value(&v).ok_or_else(|| bad(format!("bad sample value {v:?}")))?;
            Ok(vec![Series { labels: BTreeMap::new(), value }])
        }
        other => Err(bad(format!("expected an instant vector, got {other}"))),
    }
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The label matchers that select one workload's series (without braces).
pub fn selector(query: &MetricsQuery<'_>) -> String {
    let mut m: BTreeMap<&str, &str> = BTreeMap::new();
    m.insert(SERIES_LABEL_WORKLOAD, query.workload);
    m.insert(SERIES_LABEL_NAMESPACE, query.namespace);
    for (k, v) in &query.spec.metrics.label_selector {
        m.insert(k.as_str(), v.as_str());
    }
    m.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v))).collect::<Vec<_>>().join(",")
}

/// The PromQL queries one observation runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Queries {
    /// Waiting requests per slot.
    pub waiting: String,
    /// Running requests per slot.
    pub running: String,
    /// KV-cache usage per slot.
    pub kv_cache: String,
    /// Completions per second per slot.
    pub completions: String,
    /// Growth of requests in flight over the window, per slot.
    pub in_flight_delta: String,
    /// Trend of the completion rate (requests/s²).
    pub trend: String,
    /// `[(quantile, TTFT query, TPOT query)]` for p50, p90, p99.
    pub quantiles: Vec<(f64, String, String)>,
    /// Bucket rates of TTFT (for SLO attainment).
    pub ttft_buckets: String,
    /// Bucket rates of TPOT.
    pub tpot_buckets: String,
    /// Age of the newest sample per slot.
    pub age: String,
    /// Every scrape target's health (`up`, 1 or 0), with its slot labels.
    pub targets: String,
}

/// Builds the queries for `query`.
pub fn queries(query: &MetricsQuery<'_>) -> Queries {
    let sel = selector(query);
    let w = query.spec.metrics.window_seconds.max(2);
    let half = (w / 2).max(1);
    let by = format!("{SERIES_LABEL_VARIANT}, {SERIES_LABEL_POOL}");
    let with_legacy = |name: &str, legacy: &[&str], wrap: &dyn Fn(&str) -> String| {
        std::iter::once(name).chain(legacy.iter().copied()).map(|n| wrap(n)).collect::<Vec<_>>().join(" or ")
    };
    let kv_row = vllm::mapping(vllm::Field::KvCacheUsage);
    let tpot_row = vllm::mapping(vllm::Field::TimePerOutputToken);
    let ttft_rate = format!("rate({}_bucket{{{sel}}}[{w}s])", vllm::TIME_TO_FIRST_TOKEN_SECONDS);
    let tpot_rate = with_legacy(tpot_row.name, tpot_row.legacy_names, &|n| format!("rate({n}_bucket{{{sel}}}[{w}s])"));
    let ttft_b = format!("sum by (le) ({ttft_rate})");
    let tpot_b = format!("sum by (le) ({tpot_rate})");
    Queries {
        waiting: format!("sum by ({by}) ({}{{{sel}}})", vllm::NUM_REQUESTS_WAITING),
        running: format!("sum by ({by}) ({}{{{sel}}})", vllm::NUM_REQUESTS_RUNNING),
        kv_cache: format!(
            "avg by ({by}) ({})",
            with_legacy(kv_row.name, kv_row.legacy_names, &|n| format!("{n}{{{sel}}}"))
        ),
        completions: format!("sum by ({by}) (rate({}{{{sel}}}[{w}s]))", vllm::REQUEST_SUCCESS_TOTAL),
        // Two sums joined on the slot labels: one `delta()` over a name regex would drop
        // `__name__` and collide (waiting and running of one pod have the same labels).
        in_flight_delta: format!(
            "sum by ({by}) (delta({}{{{sel}}}[{w}s])) + sum by ({by}) (delta({}{{{sel}}}[{w}s]))",
            vllm::NUM_REQUESTS_WAITING,
            vllm::NUM_REQUESTS_RUNNING
        ),
        trend: format!(
            "(sum(rate({s}{{{sel}}}[{half}s])) - sum(rate({s}{{{sel}}}[{half}s] offset {half}s))) / {half}",
            s = vllm::REQUEST_SUCCESS_TOTAL
        ),
        quantiles: [0.5, 0.9, 0.99]
            .iter()
            .map(|q| (*q, format!("histogram_quantile({q}, {ttft_b})"), format!("histogram_quantile({q}, {tpot_b})")))
            .collect(),
        ttft_buckets: ttft_b,
        tpot_buckets: tpot_b,
        age: format!("time() - max by ({by}) (timestamp({}{{{sel}}}))", vllm::NUM_REQUESTS_RUNNING),
        targets: format!("up{{{sel}}}"),
    }
}

/// The PromQL queries of a traffic record window ([`PrometheusSource::traffic`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficQueries {
    /// `sum(increase(vllm:request_success_total{..}[W]))`.
    pub completions: String,
    /// Growth of waiting + running requests over the window.
    pub in_flight_growth: String,
    /// `sum by (le) (increase(vllm:request_prompt_tokens_bucket{..}[W]))`.
    pub prompt_buckets: String,
    /// `sum(increase(vllm:request_prompt_tokens_sum{..}[W]))`.
    pub prompt_sum: String,
    /// Buckets of `vllm:request_generation_tokens`.
    pub generation_buckets: String,
    /// Sum of `vllm:request_generation_tokens`.
    pub generation_sum: String,
}

/// Builds the traffic queries of `query`'s workload over the last `window_s` seconds.
pub fn traffic_queries(query: &MetricsQuery<'_>, window_s: u32) -> TrafficQueries {
    let sel = selector(query);
    let w = window_s.max(1);
    let inc = |series: String| format!("sum(increase({series}[{w}s]))");
    TrafficQueries {
        completions: inc(format!("{}{{{sel}}}", vllm::REQUEST_SUCCESS_TOTAL)),
        in_flight_growth: format!(
            "sum(delta({}{{{sel}}}[{w}s])) + sum(delta({}{{{sel}}}[{w}s]))",
            vllm::NUM_REQUESTS_WAITING,
            vllm::NUM_REQUESTS_RUNNING
        ),
        prompt_buckets: format!("sum by (le) (increase({}_bucket{{{sel}}}[{w}s]))", vllm::REQUEST_PROMPT_TOKENS),
        prompt_sum: inc(format!("{}_sum{{{sel}}}", vllm::REQUEST_PROMPT_TOKENS)),
        generation_buckets: format!(
            "sum by (le) (increase({}_bucket{{{sel}}}[{w}s]))",
            vllm::REQUEST_GENERATION_TOKENS
        ),
        generation_sum: inc(format!("{}_sum{{{sel}}}", vllm::REQUEST_GENERATION_TOKENS)),
    }
}

/// The answers to [`TrafficQueries`] as increases (pure). An empty answer is zero for a
/// counter and an absent histogram (noted); a NaN or negative value is noted and zero.
pub fn assemble_traffic(answers: &[Vec<Series>; 6]) -> TrafficIncrease {
    let mut out = TrafficIncrease::default();
    let scalar = |what: &str, a: &[Series], signed: bool, notes: &mut Vec<String>| match a.first().map(|s| s.value) {
        None => 0.0,
        Some(v) if v.is_finite() && (signed || v >= 0.0) => v,
        Some(v) => {
            notes.push(format!("{what}: {v}"));
            0.0
        }
    };
    let [completions, growth, pb, ps, gb, gs] = answers;
    out.completions = scalar(vllm::REQUEST_SUCCESS_TOTAL, completions, false, &mut out.notes);
    out.in_flight_growth = scalar("in-flight growth", growth, true, &mut out.notes);
    for (name, buckets, sum) in [(vllm::REQUEST_PROMPT_TOKENS, pb, ps), (vllm::REQUEST_GENERATION_TOKENS, gb, gs)] {
        let h = if buckets.is_empty() {
            out.notes.push(format!("{name}_bucket: no series in the window"));
            None
        } else {
            let mut h = histogram_of(buckets);
            h.sum = scalar(&format!("{name}_sum"), sum, false, &mut out.notes);
            Some(h)
        };
        if name == vllm::REQUEST_PROMPT_TOKENS {
            out.prompt_tokens = h;
        } else {
            out.generation_tokens = h;
        }
    }
    out
}

type SlotKey = SlotId;

/// One `up` series as a [`ScrapeTarget`]: up only when its value is exactly 1.
fn scrape_target(s: &Series) -> ScrapeTarget {
    ScrapeTarget {
        instance: s.labels.get("instance").cloned().unwrap_or_else(|| "?".into()),
        variant: s.labels.get(SERIES_LABEL_VARIANT).cloned(),
        pool: s.labels.get(SERIES_LABEL_POOL).cloned(),
        up: s.value == 1.0,
    }
}

fn slot_of(s: &Series) -> Option<SlotKey> {
    Some(SlotId::new(s.labels.get(SERIES_LABEL_VARIANT)?, s.labels.get(SERIES_LABEL_POOL)?))
}

/// Per-slot values of a grouped answer. Values that cannot be true are reported in
/// `missing` (naming the series and the slot) and left out, so the operator holds
/// instead of acting on them: NaN, ±Inf, and, unless the quantity is `signed` (a change),
/// a negative value. Series without slot labels are reported too.
fn per_slot(what: &str, series: &[Series], signed: bool, missing: &mut Vec<String>) -> BTreeMap<SlotKey, f64> {
    let mut out = BTreeMap::new();
    for s in series {
        match slot_of(s) {
            None => missing.push(format!("{what}: series without {SERIES_LABEL_VARIANT}/{SERIES_LABEL_POOL} labels")),
            Some(k) if !s.value.is_finite() => missing.push(format!("{what}: {} for slot {}", s.value, k.key())),
            Some(k) if !signed && s.value < 0.0 => {
                missing.push(format!("{what}: negative ({}) for slot {}", s.value, k.key()))
            }
            Some(k) => {
                out.insert(k, s.value);
            }
        }
    }
    out
}

fn histogram_of(series: &[Series]) -> Histogram {
    let pairs = series
        .iter()
        .filter_map(|s| Some((parse_value(s.labels.get(vllm::LABEL_LE)?)?, s.value)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    Histogram::from_buckets(pairs, 0.0)
}

impl PrometheusSource {
    /// A source with the given settings.
    pub fn new(config: PrometheusConfig) -> Result<Self, MetricsError> {
        let fail = |message: String| MetricsError::Unreachable { source_name: "prometheus".into(), message };
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(MAX_CONCURRENT_QUERIES);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| fail(format!("cannot read the CA file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(format!("the CA file {} is not PEM certificates: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(fail(format!("the CA file {} holds no certificate", ca.display())));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder.build().map_err(|e| fail(e.to_string()))?;
        Ok(PrometheusSource { client, config, permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_QUERIES) })
    }

    /// The bearer token to send, read from `bearer_token_file` now.
    fn token(&self) -> Result<Option<String>, MetricsError> {
        let Some(f) = &self.config.bearer_token_file else { return Ok(None) };
        let t = std::fs::read_to_string(f).map_err(|e| MetricsError::Unreachable {
            source_name: "prometheus".into(),
            message: format!("cannot read the bearer token file {}: {e}", f.display()),
        })?;
        Ok(Some(t.trim().to_string()))
    }

    /// Runs one instant query against `base_url`.
    pub async fn query(&self, base_url: &str, promql: &str) -> Result<Vec<Series>, MetricsError> {
        let token = self.token()?;
        self.query_with(base_url, promql, token.as_deref()).await
    }

    async fn query_with(&self, base_url: &str, promql: &str, token: Option<&str>) -> Result<Vec<Series>, MetricsError> {
        let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
        let unreachable =
            |message: String| MetricsError::Unreachable { source_name: format!("prometheus {base_url}"), message };
        let mut req = self.client.get(&url).query(&[("query", promql)]);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        // The turn is held until the answer is read: the connection is back in the pool.
        let (status, body) = {
            let _turn = self.permits.acquire().await.map_err(|e| unreachable(e.to_string()))?;
            let resp = req.send().await.map_err(|e| unreachable(e.to_string()))?;
            (resp.status(), resp.text().await.map_err(|e| unreachable(e.to_string()))?)
        };
        match parse_answer("prometheus", promql, &body) {
            Err(MetricsError::BadAnswer { .. }) if status.is_server_error() => {
                Err(unreachable(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>())))
            }
            other => other,
        }
    }

    async fn observe_inner(&self, query: &MetricsQuery<'_>) -> Result<MetricsSnapshot, MetricsError> {
        let base = self.base_url(query)?;
        let q = queries(query);
        let mut list: Vec<&str> = vec![
            &q.waiting,
            &q.running,
            &q.kv_cache,
            &q.completions,
            &q.in_flight_delta,
            &q.trend,
            &q.ttft_buckets,
            &q.tpot_buckets,
            &q.age,
            &q.targets,
        ];
        for (_, a, b) in &q.quantiles {
            list.push(a);
            list.push(b);
        }
        let token = self.token()?;
        let answers = join_all(list.iter().map(|p| self.query_with(base, p, token.as_deref()))).await;
        let mut results = Vec::with_capacity(answers.len());
        for a in answers {
            results.push(a?);
        }
        let mut it = results.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let (waiting, running, kv, completions, delta, trend, ttft_b, tpot_b, age, targets) =
            (next(), next(), next(), next(), next(), next(), next(), next(), next(), next());
        let mut quantile_answers = Vec::new();
        for _ in 0..q.quantiles.len() {
            quantile_answers.push((next(), next()));
        }
        Ok(assemble(
            query,
            &Answers {
                waiting,
                running,
                kv,
                completions,
                delta,
                trend,
                ttft_b,
                tpot_b,
                age,
                targets,
                quantile_answers,
            },
        ))
    }
}

/// The answers to [`Queries`], in that order (quantiles as `(ttft, tpot)` pairs).
#[derive(Clone, Debug, Default)]
pub struct Answers {
    /// Waiting per slot.
    pub waiting: Vec<Series>,
    /// Running per slot.
    pub running: Vec<Series>,
    /// KV cache per slot.
    pub kv: Vec<Series>,
    /// Completions/s per slot.
    pub completions: Vec<Series>,
    /// In-flight growth per slot.
    pub delta: Vec<Series>,
    /// Trend (one series or none).
    pub trend: Vec<Series>,
    /// TTFT bucket rates.
    pub ttft_b: Vec<Series>,
    /// TPOT bucket rates.
    pub tpot_b: Vec<Series>,
    /// Age of the newest sample per slot.
    pub age: Vec<Series>,
    /// Every scrape target's `up`.
    pub targets: Vec<Series>,
    /// `(ttft, tpot)` answers for p50, p90, p99.
    pub quantile_answers: Vec<(Vec<Series>, Vec<Series>)>,
}

/// The latency percentiles of the `(ttft, tpot)` quantile answers for p50, p90, p99. A
/// quantile is NaN when the window saw no requests (`None`: nothing to report); a negative
/// latency cannot be true and is reported in `missing`.
fn latency_of(answers: &[(Vec<Series>, Vec<Series>)], missing: &mut Vec<String>) -> LatencyObservation {
    let mut pick = |what: &str, q: f64, answers: &[Series]| {
        let v = answers.first().map(|s| s.value).filter(|v| v.is_finite())?;
        if v < 0.0 {
            missing.push(format!("histogram_quantile({q}, {what}): negative ({v})"));
            return None;
        }
        Some(v)
    };
    let mut lat = LatencyObservation::default();
    for (i, (t, p)) in answers.iter().enumerate() {
        let q = [0.5, 0.9, 0.99].get(i).copied().unwrap_or(f64::NAN);
        let (tv, pv) = (pick(vllm::TIME_TO_FIRST_TOKEN_SECONDS, q, t), pick("time per output token", q, p));
        match i {
            0 => (lat.ttft_p50_s, lat.tpot_p50_s) = (tv, pv),
            1 => (lat.ttft_p90_s, lat.tpot_p90_s) = (tv, pv),
            _ => (lat.ttft_p99_s, lat.tpot_p99_s) = (tv, pv),
        }
    }
    lat
}

/// Turns query answers into a snapshot (pure; unit-tested without a server).
pub fn assemble(query: &MetricsQuery<'_>, a: &Answers) -> MetricsSnapshot {
    let mut snap = MetricsSnapshot::default();
    let m = &mut snap.missing;
    let w = f64::from(query.spec.metrics.window_seconds.max(2));
    let stale = f64::from(query.spec.metrics.stale_after_seconds.max(1));
    let sel = selector(query);

    snap.targets = a.targets.iter().map(scrape_target).collect();
    let waiting = per_slot(vllm::NUM_REQUESTS_WAITING, &a.waiting, false, m);
    let running = per_slot(vllm::NUM_REQUESTS_RUNNING, &a.running, false, m);
    let kv = per_slot(vllm::KV_CACHE_USAGE_PERC, &a.kv, false, m);
    let completions = per_slot(&format!("rate({})", vllm::REQUEST_SUCCESS_TOTAL), &a.completions, false, m);
    let delta = per_slot("delta(in-flight requests)", &a.delta, true, m);
    let mut stale_slots = BTreeSet::new();
    for (k, age) in per_slot("sample age", &a.age, true, m) {
        if age > stale {
            m.push(format!("slot {}: newest sample is {age:.0}s old (stale after {stale:.0}s)", k.key()));
            stale_slots.insert(k);
        }
    }
    if waiting.is_empty() && running.is_empty() {
        m.push(format!(
            "{}: no series match {{{sel}}} (targets not scraped yet, or labels not relabelled)",
            vllm::NUM_REQUESTS_WAITING
        ));
    }
    let slots: BTreeSet<SlotKey> = waiting.keys().chain(running.keys()).cloned().collect();
    let mut total_arrival = 0.0;
    let mut any_rate = false;
    for k in &slots {
        if stale_slots.contains(k) {
            continue;
        }
        for (name, map) in [
            (vllm::NUM_REQUESTS_WAITING, &waiting),
            (vllm::NUM_REQUESTS_RUNNING, &running),
            (vllm::KV_CACHE_USAGE_PERC, &kv),
        ] {
            if !map.contains_key(k) {
                m.push(format!("{name}: absent for slot {}", k.key()));
            }
        }
        let arrival = match completions.get(k) {
            Some(c) => {
                any_rate = true;
                (c + delta.get(k).copied().unwrap_or(0.0) / w).max(0.0)
            }
            None => {
                m.push(format!(
                    "rate({}[{w:.0}s]): absent for slot {} (fewer than two samples in the window?)",
                    vllm::REQUEST_SUCCESS_TOTAL,
                    k.key()
                ));
                0.0
            }
        };
        total_arrival += arrival;
        snap.slots.push(SlotMetrics {
            variant: k.variant.clone(),
            pool: k.pool.clone(),
            waiting_requests: waiting.get(k).copied().unwrap_or(0.0),
            running_requests: running.get(k).copied().unwrap_or(0.0),
            kv_cache_usage: kv.get(k).copied().unwrap_or(0.0),
            arrival_rate_rps: arrival,
        });
    }
    if any_rate {
        snap.arrival_rate_rps = Some(total_arrival);
    }
    snap.arrival_rate_trend_rps_per_s = a.trend.first().map(|s| s.value).filter(|v| v.is_finite());

    let ttft = histogram_of(&a.ttft_b);
    let tpot = histogram_of(&a.tpot_b);
    if a.ttft_b.is_empty() && !slots.is_empty() {
        m.push(format!("{}_bucket: no series in the window", vllm::TIME_TO_FIRST_TOKEN_SECONDS));
    }
    snap.latency = latency_of(&a.quantile_answers, m);
    snap.slo_attainment =
        slo_attainment(&ttft, &tpot, query.spec.slo.ttft_ms / 1000.0, query.spec.slo.tpot_ms / 1000.0);
    snap
}

impl PrometheusSource {
    /// The base URL for `query`: the spec's, else the operator's default.
    fn base_url<'a>(&'a self, query: &'a MetricsQuery<'a>) -> Result<&'a str, MetricsError> {
        query.spec.metrics.prometheus_url.as_deref().or(self.config.default_url.as_deref()).ok_or_else(|| {
            MetricsError::Unreachable {
                source_name: "prometheus".into(),
                message: "no Prometheus URL: set spec.metrics.prometheusUrl or the operator's --prometheus-url".into(),
            }
        })
    }

    async fn traffic_inner(&self, query: &MetricsQuery<'_>, window_s: u32) -> Result<TrafficIncrease, MetricsError> {
        let base = self.base_url(query)?;
        let q = traffic_queries(query, window_s);
        let token = self.token()?;
        let list = [
            &q.completions,
            &q.in_flight_growth,
            &q.prompt_buckets,
            &q.prompt_sum,
            &q.generation_buckets,
            &q.generation_sum,
        ];
        let answers = join_all(list.iter().map(|p| self.query_with(base, p, token.as_deref()))).await;
        let mut out: [Vec<Series>; 6] = Default::default();
        for (slot, a) in out.iter_mut().zip(answers) {
            *slot = a?;
        }
        Ok(assemble_traffic(&out))
    }
}

impl MetricsSource for PrometheusSource {
    fn name(&self) -> &str {
        "prometheus"
    }

    fn observe<'a>(&'a self, query: &'a MetricsQuery<'a>) -> BoxFuture<'a, Result<MetricsSnapshot, MetricsError>> {
        Box::pin(self.observe_inner(query))
    }

    fn traffic<'a>(
        &'a self,
        query: &'a MetricsQuery<'a>,
        window_s: u32,
    ) -> BoxFuture<'a, Result<Option<TrafficIncrease>, MetricsError>> {
        Box::pin(async move { self.traffic_inner(query, window_s).await.map(Some) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(le: Option<&str>, value: f64) -> Series {
        let labels = le.map(|l| BTreeMap::from([(vllm::LABEL_LE.to_string(), l.to_string())])).unwrap_or_default();
        Series { labels, value }
    }

    #[test]
    fn traffic_queries_take_the_window_and_the_selector() {
        let spec: crate::crd::LLMWorkloadSpec = serde_json::from_value(serde_json::json!({
            "variants": [{"name": "v", "model": "m", "image": "i"}],
            "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
        }))
        .expect("spec");
        let q = MetricsQuery { namespace: "ns", workload: "w", spec: &spec, endpoints: &[] };
        let t = traffic_queries(&q, 30);
        let sel = selector(&q);
        assert_eq!(
            t.prompt_buckets,
            format!("sum by (le) (increase(vllm:request_prompt_tokens_bucket{{{sel}}}[30s]))")
        );
        assert_eq!(t.completions, format!("sum(increase(vllm:request_success_total{{{sel}}}[30s]))"));
        assert!(t.in_flight_growth.contains("delta(vllm:num_requests_running"), "{}", t.in_flight_growth);
    }

    #[test]
    fn traffic_answers_become_increases_and_bad_values_are_noted() {
        let buckets = vec![series(Some("10"), 4.0), series(Some("+Inf"), 6.0), series(Some("100"), 5.0)];
        let answers = [
            vec![series(None, 12.0)],
            vec![series(None, -2.0)],
            buckets,
            vec![series(None, 300.0)],
            vec![],
            vec![series(None, f64::NAN)],
        ];
        let t = assemble_traffic(&answers);
        assert_eq!((t.completions, t.in_flight_growth), (12.0, -2.0));
        let p = t.prompt_tokens.expect("prompt histogram");
        assert_eq!(p.buckets, vec![(10.0, 4.0), (100.0, 5.0), (f64::INFINITY, 6.0)]);
        assert_eq!(p.sum, 300.0);
        assert!(t.generation_tokens.is_none());
        assert!(t.notes.iter().any(|n| n.contains("request_generation_tokens_bucket")), "{:?}", t.notes);
    }
}
