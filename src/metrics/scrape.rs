//! [`ScrapeSource`]: reads vLLM's `/metrics` from every serving pod directly, without a
//! Prometheus server (small clusters, tests, the twin's data plane).
//!
//! Each [`MetricsSource::observe`] GETs every endpoint's `/metrics` concurrently (one
//! timeout per request), parses the Prometheus text format, and keeps the scrapes of the
//! last `spec.metrics.windowSeconds` per endpoint. From them:
//!
//! - **gauges** (waiting, running, KV cache) come from the newest scrape, summed (or
//!   averaged, for KV cache) over a slot's pods, as the table in [`super::vllm`] says;
//! - **counter rates** are the increase between the oldest and newest scrape in the
//!   window divided by the time between them, summed pair by pair so that a counter
//!   that went *down* (the pod restarted) counts its new value as the increase, as
//!   Prometheus' `rate()` does;
//! - **latency percentiles** come from the increase of the histogram buckets over the
//!   window (merged over all pods), see [`super::histogram`];
//! - **SLO attainment** is `min(F_ttft(slo.ttftMs), F_tpot(slo.tpotMs))`, each `F` the
//!   fraction of the window's observations at or below the threshold, read from the
//!   buckets. The true joint fraction (both met) lies between `F_ttft + F_tpot − 1` and
//!   this minimum; the minimum is exact when the requests that miss one target are
//!   those that miss the other (congestion), which is the usual case. TPOT is read from
//!   the inter-token latency histogram, whose observations are token gaps, not
//!   per-request means: a request-weighted TPOT is not exported by every vLLM version.
//! - **arrival rate** of a slot is its completion rate (`vllm:request_success_total`)
//!   plus the growth of its requests in flight (waiting + running) over the window:
//!   arrivals = completions + Δ in flight. The trend is the change of the workload's
//!   arrival rate since the previous observation, per second.
//!
//! Anything that cannot be computed is named in [`MetricsSnapshot::missing`]: an
//! endpoint that did not answer, its first scrape (rates need two), a NaN sample, a
//! family absent from a pod. Only when no endpoint answers at all is the result a
//! [`MetricsError::Unreachable`].
//!
//! Parsing uses the `prometheus-parse` crate. Its name pattern is `\w+`, which does not
//! admit `:` (every vLLM family has one), so each line's metric name has its colons
//! replaced by [`COLON_ESCAPE`] before parsing and restored after; malformed lines are
//! skipped by the crate and counted here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{join_all, BoxFuture};
use prometheus_parse::{LineInfo, Scrape, Value};

use super::histogram::Histogram;
use super::vllm::{self, Aggregate, Field, MetricKind};
use super::{Endpoint, MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource, SlotMetrics};
use crate::policy::observation::{LatencyObservation, SlotId};

/// What replaces `:` in metric names while `prometheus-parse` reads a line.
pub const COLON_ESCAPE: &str = "__llmos_colon__";

/// One pod's exposition, reduced to the families of the mapping table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSample {
    /// Gauges, combined over the pod's series (engines) by the table's aggregate.
    pub gauges: BTreeMap<Field, f64>,
    /// Counters, summed over the pod's series (e.g. every `finished_reason`).
    pub counters: BTreeMap<Field, f64>,
    /// Histograms, merged over the pod's series.
    pub histograms: BTreeMap<Field, Histogram>,
    /// Problems with individual series (NaN values, mismatched buckets).
    pub problems: Vec<String>,
    /// Non-comment lines the parser could not read.
    pub malformed_lines: usize,
}

impl PodSample {
    /// Multiplies every counter and histogram (bucket counts and sums) by `factor`,
    /// leaving gauges alone: what a pod whose clock runs `1 / factor` times as fast would
    /// expose, so that rates over wall time equal rates over its own time.
    pub fn scale_counts(&mut self, factor: f64) {
        for v in self.counters.values_mut() {
            *v *= factor;
        }
        for h in self.histograms.values_mut() {
            for (_, c) in &mut h.buckets {
                *c *= factor;
            }
            h.sum *= factor;
        }
    }
}

fn escape_line(line: &str) -> String {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix('#') {
        // `# TYPE name kind` / `# HELP name text`: escape the third token.
        let mut parts = rest.trim_start().splitn(2, char::is_whitespace);
        let keyword = parts.next().unwrap_or("");
        let tail = parts.next().unwrap_or("").trim_start();
        let (name, after) = tail.split_at(tail.find(char::is_whitespace).unwrap_or(tail.len()));
        return format!("# {keyword} {}{after}", name.replace(':', COLON_ESCAPE));
    }
    let end = t.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(t.len());
    let name = t[..end].replace(':', COLON_ESCAPE);
    let rest = &t[end..];
    let Some(labels) = rest.strip_prefix('{') else { return format!("{name}{rest}") };
    match sanitize_labels(labels) {
        // The parser's pattern wants a non-empty set between braces: `name{} 1` is `name 1`.
        Some((clean, after)) if clean.is_empty() => format!("{name}{after}"),
        Some((clean, after)) => format!("{name}{{{clean}}}{after}"),
        // An unterminated label set: a line no reader accepts (counted as malformed).
        None => "{{malformed".into(),
    }
}

/// Reads a label set (`name="value",...}` after the opening brace) as the text format
/// defines it (values quoted, with `\\`, `\"` and `\n` escapes, so a value may hold `,`,
/// `=`, `}` or spaces) and writes it again with every value byte outside
/// `[A-Za-z0-9._+-]` percent-encoded, so that `prometheus-parse`, which splits label sets
/// on `,` and `=`, reads every pair whole. Returns the clean set and what follows the
/// closing brace, or `None` when the set is not well formed. Only `le` is read back as a
/// value (a number, never encoded); the other labels only keep series apart.
fn sanitize_labels(s: &str) -> Option<(String, &str)> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let (i, c) = chars.next()?;
        if c == '}' {
            return Some((out.join(","), &s[i + 1..]));
        }
        let mut key = String::from(c);
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next()?.1 != '=' {
            return None;
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        let mut encoded = String::with_capacity(value.len());
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-') {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        out.push(format!("{key}=\"{encoded}\""));
    }
}

fn unescape(name: &str) -> String {
    name.replace(COLON_ESCAPE, ":")
}

fn is_malformed(escaped: &str) -> bool {
    match LineInfo::parse(escaped) {
        LineInfo::Sample { value, .. } => {
            let v = value.to_ascii_lowercase();
            v != "nan" && v.parse::<f64>().is_err()
        }
        LineInfo::Empty | LineInfo::Doc { .. } | LineInfo::Type { .. } => false,
        LineInfo::Ignored => !escaped.trim_start().starts_with('#'),
    }
}

/// Parses one pod's `/metrics` text into a [`PodSample`].
///
/// Never fails: unreadable lines are counted in `malformed_lines`, NaN values are
/// reported in `problems` and left out.
pub fn parse_exposition(text: &str) -> PodSample {
    let mut out = PodSample::default();
    let mut lines = Vec::new();
    for line in text.lines() {
        let escaped = escape_line(line);
        if is_malformed(&escaped) {
            out.malformed_lines += 1;
            continue;
        }
        lines.push(Ok(escaped));
    }
    let scrape = match Scrape::parse(lines.into_iter()) {
        Ok(s) => s,
        Err(e) => {
            out.problems.push(format!("exposition unreadable: {e}"));
            return out;
        }
    };
    // Families present under their current name win over legacy names.
    let present: std::collections::BTreeSet<String> = scrape.samples.iter().map(|s| unescape(&s.metric)).collect();
    let mut gauge_values: BTreeMap<Field, Vec<f64>> = BTreeMap::new();
    let mut sums: BTreeMap<Field, f64> = BTreeMap::new();
    for sample in &scrape.samples {
        let name = unescape(&sample.metric);
        let (family, suffix) = split_histogram_suffix(&name);
        let Some((row, legacy)) = vllm::lookup(family) else { continue };
        if legacy && present.iter().any(|p| split_histogram_suffix(p).0 == row.name) {
            continue;
        }
        match (row.kind, &sample.value, suffix) {
            (MetricKind::Histogram, Value::Histogram(buckets), _) => {
                let pairs: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
                if pairs.iter().any(|p| p.1.is_nan()) {
                    out.problems.push(format!("{name}: NaN bucket"));
                    continue;
                }
                let h = Histogram::from_buckets(pairs, 0.0);
                if h.buckets.last().map(|b| b.0.is_infinite()) != Some(true) {
                    out.problems.push(format!("{name}: no +Inf bucket"));
                    continue;
                }
                let entry = out.histograms.entry(row.field).or_default();
                if let Err(e) = entry.add(&h) {
                    out.problems.push(format!("{name}: {e}"));
                }
            }
            (MetricKind::Histogram, Value::Untyped(x) | Value::Counter(x) | Value::Gauge(x), Some("_sum")) => {
                *sums.entry(row.field).or_default() += *x;
            }
            (MetricKind::Histogram, _, _) => {} // _count: the +Inf bucket carries it
            (MetricKind::Gauge | MetricKind::Counter, v, None) => {
                let x = match v {
                    Value::Gauge(x) | Value::Counter(x) | Value::Untyped(x) => *x,
                    _ => continue,
                };
                if x.is_nan() {
                    out.problems.push(format!("{name}: value is NaN"));
                    continue;
                }
                match row.kind {
                    MetricKind::Gauge => gauge_values.entry(row.field).or_default().push(x),
                    _ => *out.counters.entry(row.field).or_default() += x,
                }
            }
            _ => {}
        }
    }
    for (field, sum) in sums {
        if let Some(h) = out.histograms.get_mut(&field) {
            h.sum = sum;
        }
    }
    for (field, values) in gauge_values {
        let sum: f64 = values.iter().sum();
        let v = match vllm::mapping(field).aggregate {
            Aggregate::Mean => sum / values.len() as f64,
            _ => sum,
        };
        out.gauges.insert(field, v);
    }
    out
}

fn split_histogram_suffix(name: &str) -> (&str, Option<&str>) {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if vllm::lookup(base).map(|(r, _)| r.kind == MetricKind::Histogram).unwrap_or(false) {
                return (base, Some(suffix));
            }
        }
    }
    (name, None)
}

/// Scrapes kept per endpoint: `(time in seconds, sample)`, oldest first.
type History = VecDeque<(f64, PodSample)>;

/// The pure state of direct scraping: recent scrapes per endpoint, and the last arrival
/// rate per workload (for the trend). No I/O and no clock: the caller passes times, so
/// tests drive it directly.
#[derive(Debug, Default)]
pub struct ScrapeState {
    history: HashMap<(String, String), History>,
    last_arrival: HashMap<String, (f64, f64)>,
}

/// Why one endpoint could not be scraped.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeFailure {
    /// The request failed (connection refused, timeout, a body that could not be read).
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    /// The endpoint answered with an error status.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// Any other failure, described (for callers that scrape by other means).
    #[error("{0}")]
    Other(String),
}

impl From<&str> for ScrapeFailure {
    fn from(s: &str) -> Self {
        ScrapeFailure::Other(s.to_string())
    }
}

/// The result of scraping one endpoint.
pub type ScrapeResult = Result<PodSample, ScrapeFailure>;

impl ScrapeState {
    /// Records this round's scrapes of `query`'s endpoints at time `now_s` and computes
    /// the snapshot. `results[i]` belongs to `query.endpoints[i]`.
    pub fn observe(&mut self, query: &MetricsQuery<'_>, now_s: f64, results: Vec<ScrapeResult>) -> MetricsSnapshot {
        let workload_key = format!("{}/{}", query.namespace, query.workload);
        let window_s = f64::from(query.spec.metrics.window_seconds.max(1));
        let stale_s = f64::from(query.spec.metrics.stale_after_seconds.max(1));
        // Forget endpoints of this workload that are gone.
        self.history.retain(|(w, addr), _| w != &workload_key || query.endpoints.iter().any(|e| &e.address == addr));
        if query.endpoints.is_empty() {
            let mut snap = MetricsSnapshot::default();
            snap.missing.push(format!("no serving endpoints for {workload_key}"));
            return snap;
        }

        let mut r = Round { bounds_ok: true, ..Default::default() };
        for (endpoint, result) in query.endpoints.iter().zip(results) {
            let hist = self.history.entry((workload_key.clone(), endpoint.address.clone())).or_default();
            read_endpoint(&mut r, endpoint, hist, result, (now_s, window_s, stale_s));
        }
        let Round { mut snap, slot_acc, ttft, tpot, any_rate, bounds_ok: histogram_bounds_ok } = r;
        if !histogram_bounds_ok {
            snap.missing.push("latency histograms: bucket bounds differ between pods".into());
        }

        let mut total_arrival = 0.0;
        for (SlotId { variant, pool }, acc) in slot_acc {
            let gauge = |f: Field| acc.gauges.get(&f).map(|v| v.iter().sum::<f64>());
            let kv = acc.gauges.get(&Field::KvCacheUsage).map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64);
            if acc.pods == 0 {
                continue;
            }
            total_arrival += acc.arrival_rps;
            snap.slots.push(SlotMetrics {
                variant,
                pool,
                waiting_requests: gauge(Field::WaitingRequests).unwrap_or(0.0),
                running_requests: gauge(Field::RunningRequests).unwrap_or(0.0),
                kv_cache_usage: kv.unwrap_or(0.0),
                arrival_rate_rps: acc.arrival_rps,
            });
        }
        if any_rate {
            snap.arrival_rate_rps = Some(total_arrival);
            if let Some((t_prev, a_prev)) = self.last_arrival.get(&workload_key) {
                if now_s > *t_prev {
                    snap.arrival_rate_trend_rps_per_s = Some((total_arrival - a_prev) / (now_s - t_prev));
                }
            }
            self.last_arrival.insert(workload_key, (now_s, total_arrival));
        }
        snap.latency = latency_from(&ttft, &tpot);
        snap.slo_attainment =
            slo_attainment(&ttft, &tpot, query.spec.slo.ttft_ms / 1000.0, query.spec.slo.tpot_ms / 1000.0);
        snap
    }
}

/// What one scrape round gathers over a workload's endpoints.
#[derive(Default)]
struct Round {
    snap: MetricsSnapshot,
    slot_acc: BTreeMap<SlotId, SlotAcc>,
    ttft: Histogram,
    tpot: Histogram,
    any_rate: bool,
    bounds_ok: bool,
}

/// Adds one endpoint's scrape (`result`, recorded into its history `hist`) to the round:
/// its gauges from the newest scrape, its arrival rate and latency histograms from the
/// increase over the window.
fn read_endpoint(
    r: &mut Round,
    endpoint: &Endpoint,
    hist: &mut History,
    result: ScrapeResult,
    (now_s, window_s, stale_s): (f64, f64, f64),
) {
    match result {
        Ok(sample) => {
            if sample.malformed_lines > 0 {
                r.snap
                    .missing
                    .push(format!("{}: {} malformed line(s) skipped", endpoint.address, sample.malformed_lines));
            }
            for p in &sample.problems {
                r.snap.missing.push(format!("{}: {p}", endpoint.address));
            }
            hist.push_back((now_s, sample));
        }
        Err(why) => r.snap.missing.push(format!("{}: scrape failed: {why}", endpoint.address)),
    }
    // Keep the newest scrape at or before the window start, and everything after.
    while hist.len() > 1 && hist[1].0 <= now_s - window_s {
        hist.pop_front();
    }
    let acc = r.slot_acc.entry(SlotId::new(&endpoint.variant, &endpoint.pool)).or_default();
    let Some((newest_t, newest)) = hist.back() else { return };
    if now_s - newest_t > stale_s {
        r.snap.missing.push(format!("{}: last good scrape {:.0}s ago (stale)", endpoint.address, now_s - newest_t));
        return;
    }
    acc.pods += 1;
    for field in [Field::WaitingRequests, Field::RunningRequests, Field::KvCacheUsage] {
        match newest.gauges.get(&field) {
            Some(v) => acc.gauges.entry(field).or_default().push(*v),
            None => r.snap.missing.push(format!("{}: {} absent", endpoint.address, vllm::mapping(field).name)),
        }
    }
    if hist.len() < 2 {
        r.snap.missing.push(format!("{}: first scrape in window, rates need two", endpoint.address));
        return;
    }
    let (oldest_t, _) = hist[0];
    let span = newest_t - oldest_t;
    if span <= 0.0 {
        return;
    }
    match counter_increase(hist, Field::RequestSuccess) {
        Some(inc) => {
            let in_flight = |s: &PodSample| {
                s.gauges.get(&Field::WaitingRequests).copied().unwrap_or(0.0)
                    + s.gauges.get(&Field::RunningRequests).copied().unwrap_or(0.0)
            };
            let growth = in_flight(newest) - in_flight(&hist[0].1);
            acc.arrival_rps += ((inc + growth) / span).max(0.0);
            acc.rate_pods += 1;
            r.any_rate = true;
        }
        None => r.snap.missing.push(format!("{}: {} absent", endpoint.address, vllm::REQUEST_SUCCESS_TOTAL)),
    }
    for (field, target) in [(Field::TimeToFirstToken, &mut r.ttft), (Field::TimePerOutputToken, &mut r.tpot)] {
        match histogram_increase(hist, field) {
            Ok(Some(inc)) => {
                if target.add(&inc).is_err() {
                    r.bounds_ok = false;
                }
            }
            Ok(None) => r.snap.missing.push(format!("{}: {} absent", endpoint.address, vllm::mapping(field).name)),
            Err(e) => r.snap.missing.push(format!("{}: {}: {e}", endpoint.address, vllm::mapping(field).name)),
        }
    }
}

#[derive(Default)]
struct SlotAcc {
    pods: usize,
    rate_pods: usize,
    gauges: BTreeMap<Field, Vec<f64>>,
    arrival_rps: f64,
}

/// Increase of a counter over the scrapes in `hist`, pair by pair; a decrease means the
/// process restarted and the new value is all increase.
fn counter_increase(hist: &History, field: Field) -> Option<f64> {
    let values: Vec<f64> = hist.iter().filter_map(|(_, s)| s.counters.get(&field).copied()).collect();
    if values.len() < 2 {
        return None;
    }
    Some(values.windows(2).map(|w| if w[1] >= w[0] { w[1] - w[0] } else { w[1] }).sum())
}

fn histogram_increase(hist: &History, field: Field) -> Result<Option<Histogram>, super::histogram::BoundsMismatch> {
    let hs: Vec<&Histogram> = hist.iter().filter_map(|(_, s)| s.histograms.get(&field)).collect();
    if hs.len() < 2 {
        return Ok(None);
    }
    let mut total = Histogram::default();
    for w in hs.windows(2) {
        total.add(&w[1].increase_since(w[0])?)?;
    }
    Ok(Some(total))
}

/// Percentiles of the window's TTFT and TPOT histograms.
pub fn latency_from(ttft: &Histogram, tpot: &Histogram) -> LatencyObservation {
    LatencyObservation {
        ttft_p50_s: ttft.quantile(0.5),
        ttft_p90_s: ttft.quantile(0.9),
        ttft_p99_s: ttft.quantile(0.99),
        tpot_p50_s: tpot.quantile(0.5),
        tpot_p90_s: tpot.quantile(0.9),
        tpot_p99_s: tpot.quantile(0.99),
    }
}

/// SLO attainment from the window's histograms (see the module docs for the
/// approximation); `None` when no request finished its first token in the window.
pub fn slo_attainment(ttft: &Histogram, tpot: &Histogram, ttft_slo_s: f64, tpot_slo_s: f64) -> Option<f64> {
    let a = ttft.fraction_at_most(ttft_slo_s)?;
    Some(match tpot.fraction_at_most(tpot_slo_s) {
        Some(b) => a.min(b),
        None => a,
    })
}

/// Settings of direct scraping.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    /// Timeout of one GET, connection included.
    pub timeout: Duration,
    /// Path of the metrics endpoint.
    pub path: String,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig { timeout: Duration::from_secs(3), path: "/metrics".into() }
    }
}

/// A [`MetricsSource`] that scrapes every endpoint's `/metrics` itself.
pub struct ScrapeSource {
    client: reqwest::Client,
    config: ScrapeConfig,
    state: Mutex<ScrapeState>,
}

impl ScrapeSource {
    /// A scraper with the given settings.
    pub fn new(config: ScrapeConfig) -> Result<Self, MetricsError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| MetricsError::Unreachable { source_name: "scrape".into(), message: e.to_string() })?;
        Ok(ScrapeSource { client, config, state: Mutex::new(ScrapeState::default()) })
    }

    async fn scrape_one(&self, endpoint: &Endpoint) -> ScrapeResult {
        let url = format!("http://{}{}", endpoint.address, self.config.path);
        let resp = self.client.get(&url).send().await?;
        if !resp.status().is_success() {
            return Err(ScrapeFailure::Status(resp.status()));
        }
        let text = resp.text().await?;
        Ok(parse_exposition(&text))
    }
}

fn unix_now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl MetricsSource for ScrapeSource {
    fn name(&self) -> &str {
        "scrape"
    }

    fn observe<'a>(&'a self, query: &'a MetricsQuery<'a>) -> BoxFuture<'a, Result<MetricsSnapshot, MetricsError>> {
        Box::pin(async move {
            let results: Vec<ScrapeResult> = join_all(query.endpoints.iter().map(|e| self.scrape_one(e))).await;
            if !results.is_empty() && results.iter().all(|r| r.is_err()) {
                let first = results.iter().find_map(|r| r.as_ref().err().map(|e| e.to_string())).unwrap_or_default();
                return Err(MetricsError::Unreachable {
                    source_name: "scrape".into(),
                    message: format!("none of {} endpoint(s) answered; first error: {first}", results.len()),
                });
            }
            let now = unix_now_s();
            let pods: Vec<(Endpoint, PodSample)> = query
                .endpoints
                .iter()
                .zip(&results)
                .filter_map(|(e, r)| r.as_ref().ok().map(|s| (e.clone(), s.clone())))
                .collect();
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut snap = state.observe(query, now, results);
            snap.pods = pods;
            Ok(snap)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_counts_divides_counters_and_histograms_not_gauges() {
        let text = "# TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"m\"} 4\n\
                    # TYPE vllm:request_success_total counter\n\
                    vllm:request_success_total{model_name=\"m\",finished_reason=\"stop\"} 100\n\
                    # TYPE vllm:e2e_request_latency_seconds histogram\n\
                    vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"1.0\"} 40\n\
                    vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 100\n\
                    vllm:e2e_request_latency_seconds_sum{model_name=\"m\"} 120\n\
                    vllm:e2e_request_latency_seconds_count{model_name=\"m\"} 100\n";
        let mut s = parse_exposition(text);
        s.scale_counts(0.1);
        assert_eq!(s.gauges[&Field::RunningRequests], 4.0);
        assert!((s.counters[&Field::RequestSuccess] - 10.0).abs() < 1e-9);
        let h = &s.histograms[&Field::E2eLatency];
        assert!((h.buckets[0].1 - 4.0).abs() < 1e-9 && (h.buckets[1].1 - 10.0).abs() < 1e-9);
        assert!((h.sum - 12.0).abs() < 1e-9, "the mean latency is kept: {}", h.sum);
    }

    const SAMPLE: &str = r#"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.99
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 10.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 2.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="m"} 10.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 2.5
"#;

    #[test]
    fn parses_vllm_names_with_colons_and_prefers_current_names() {
        let s = parse_exposition(SAMPLE);
        assert_eq!(s.gauges.get(&Field::WaitingRequests), Some(&3.0));
        assert_eq!(s.gauges.get(&Field::RunningRequests), Some(&5.0));
        assert_eq!(s.gauges.get(&Field::KvCacheUsage), Some(&0.25), "legacy name must not override");
        assert_eq!(s.counters.get(&Field::RequestSuccess), Some(&12.0));
        let h = &s.histograms[&Field::TimeToFirstToken];
        assert_eq!(h.total(), 12.0);
        assert_eq!(s.malformed_lines, 0);
    }

    #[test]
    fn legacy_names_are_read_when_current_absent() {
        let text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(parse_exposition(text).gauges.get(&Field::KvCacheUsage), Some(&0.5));
    }

    #[test]
    fn label_values_with_commas_equals_braces_and_quotes_are_read_whole() {
        // A model name that holds every character the naive split trips on, including a
        // fake `le` pair: the buckets must still be read by their real bounds, and the two
        // engines' series kept apart and merged.
        let text = concat!(
            "# TYPE vllm:time_to_first_token_seconds histogram\n",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"org/m,le=9 {x} \\\"q\\\"\",engine=\"0\",le=\"0.1\"} 2\n",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"org/m,le=9 {x} \\\"q\\\"\",engine=\"0\",le=\"+Inf\"} 3\n",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"org/m,le=9 {x} \\\"q\\\"\",engine=\"1\",le=\"0.1\"} 1\n",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"org/m,le=9 {x} \\\"q\\\"\",engine=\"1\",le=\"+Inf\"} 4\n",
            "# TYPE vllm:num_requests_waiting gauge\n",
            "vllm:num_requests_waiting{model_name=\"a=b,c\"} 7\n",
            "vllm:kv_cache_usage_perc{} 0.5\n",
            "vllm:num_requests_running{model_name=\"unterminated} 1\n",
        );
        let s = parse_exposition(text);
        assert_eq!(s.malformed_lines, 1, "{:?}", s.problems);
        assert_eq!(s.gauges.get(&Field::WaitingRequests), Some(&7.0));
        assert_eq!(s.gauges.get(&Field::KvCacheUsage), Some(&0.5));
        let h = &s.histograms[&Field::TimeToFirstToken];
        assert_eq!(h.buckets, vec![(0.1, 3.0), (f64::INFINITY, 7.0)]);
    }

    #[test]
    fn malformed_lines_and_nan_are_reported_not_fatal() {
        let text = "vllm:num_requests_waiting{model_name=\"m\"} not-a-number\n{{garbage\nvllm:num_requests_running NaN\nvllm:kv_cache_usage_perc 0.5\n";
        let s = parse_exposition(text);
        assert_eq!(s.malformed_lines, 2);
        assert!(
            s.problems.iter().any(|p| p.contains("vllm:num_requests_running") && p.contains("NaN")),
            "{:?}",
            s.problems
        );
        assert_eq!(s.gauges.get(&Field::KvCacheUsage), Some(&0.5));
        assert!(!s.gauges.contains_key(&Field::RunningRequests));
    }
}
