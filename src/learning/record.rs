//! The traffic a workload saw, one [`TrafficWindow`] per window, and the
//! [`WindowRecorder`] that builds windows from vLLM's metrics.
//!
//! A window holds what a replay needs and what judging a policy needs:
//!
//! - **arrivals**: requests that reached the workload's engines in the window, measured
//!   the way the operator's direct scrape measures its arrival rate: per pod, the increase
//!   of `vllm:request_success_total` plus the growth of requests in flight
//!   (`vllm:num_requests_waiting` + `vllm:num_requests_running`), summed over pods;
//! - **token distributions**: the increase over the window of `vllm:request_prompt_tokens`
//!   and `vllm:request_generation_tokens` (vLLM's per-request histograms, observed when a
//!   request finishes), merged over pods, as [`TokenHistogram`]s;
//! - the **SLO** and the **fleet** (desired and ready replicas per variant and pool) in
//!   force, the SLO attainment the operator observed and the policy that decided.
//!
//! Counters are read from [`PodSample`]s, the parsed form of a pod's `/metrics` that
//! [`crate::metrics::scrape::parse_exposition`] produces and the twin's engines expose, and
//! increases use [`Histogram::increase_since`] (Prometheus' counter-reset rule). A pod
//! seen for the first time after the recorder's first round is new: its counters count
//! from zero. Pods present at the first round are only a baseline (their history before
//! the recorder started belongs to no window).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::SloSpec;
use crate::metrics::histogram::Histogram;
use crate::metrics::scrape::PodSample;
use crate::metrics::vllm::Field;
use crate::metrics::Endpoint;

/// The version of the record format this code writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// A distribution of token counts over a window: observations per bucket (not
/// cumulative) with vLLM's bucket bounds, and the sum of the observed values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenHistogram {
    /// Finite upper bounds (`le`), ascending; the last bucket (`+Inf`) has none.
    pub bounds: Vec<f64>,
    /// Observations per bucket, `bounds.len() + 1` entries, the last the `+Inf` bucket.
    pub counts: Vec<f64>,
    /// Sum of the observed values (the increase of `_sum`).
    pub sum: f64,
}

impl TokenHistogram {
    /// The per-bucket form of a cumulative histogram (bucket increases over a window).
    pub fn from_cumulative(h: &Histogram) -> TokenHistogram {
        let mut out = TokenHistogram { sum: h.sum, ..Default::default() };
        let mut prev = 0.0;
        for &(le, c) in &h.buckets {
            if le.is_finite() {
                out.bounds.push(le);
            }
            out.counts.push((c - prev).max(0.0));
            prev = c;
        }
        if h.buckets.last().is_none_or(|b| b.0.is_finite()) {
            out.counts.push(0.0); // no +Inf bucket given: it is empty
        }
        out
    }

    /// The cumulative form, for quantiles ([`Histogram::quantile`]).
    pub fn to_cumulative(&self) -> Histogram {
        let mut acc = 0.0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        Histogram { buckets, sum: self.sum }
    }

    /// Observations in all buckets.
    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// Mean observed value (`sum / total`), `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        let n = self.total();
        (n > 0.0).then(|| self.sum / n)
    }

    /// The `q` quantile as PromQL's `histogram_quantile` estimates it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.to_cumulative().quantile(q)
    }

    /// Adds `other` bucket by bucket; a side without observations takes the other's
    /// bounds.
    pub fn merge(&mut self, other: &TokenHistogram) -> Result<(), String> {
        let empty = |h: &TokenHistogram| h.total() == 0.0 && h.sum == 0.0;
        if other.counts.is_empty() || (empty(other) && !self.counts.is_empty()) {
            return Ok(());
        }
        if self.counts.is_empty() || (empty(self) && self.bounds != other.bounds) {
            *self = other.clone();
            return Ok(());
        }
        if self.bounds != other.bounds {
            return Err(format!("bucket bounds differ ({} vs {} bounds)", self.bounds.len(), other.bounds.len()));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        Ok(())
    }

    /// Why the histogram is not well formed, if it is not: empty (no bounds, no counts,
    /// sum 0), or counts one more than bounds, bounds finite and strictly ascending,
    /// counts and sum finite and non-negative.
    pub fn check(&self) -> Result<(), String> {
        if self.counts.is_empty() && self.bounds.is_empty() {
            // Nothing observed (no pod exported the family).
            return if self.sum == 0.0 { Ok(()) } else { Err(format!("sum {} without buckets", self.sum)) };
        }
        if self.counts.len() != self.bounds.len() + 1 {
            return Err(format!("{} counts for {} bounds (want bounds + 1)", self.counts.len(), self.bounds.len()));
        }
        if self.bounds.iter().any(|b| !b.is_finite()) || self.bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err("bounds must be finite and strictly ascending".into());
        }
        if self.counts.iter().any(|c| !(c.is_finite() && *c >= 0.0)) || !(self.sum.is_finite() && self.sum >= 0.0) {
            return Err("counts and sum must be finite and non-negative".into());
        }
        Ok(())
    }
}

/// Replicas of one (variant, pool) slot when a window ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSlot {
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas ready and serving.
    pub ready: u32,
}

/// One window of a workload's traffic: one line of a record segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficWindow {
    /// Record format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The workload, `namespace/name`.
    pub workload: String,
    /// Start of the window, seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// Length of the window, seconds.
    pub duration_s: f64,
    /// Requests that arrived in the window (completions + growth in flight; may be
    /// fractional when a data plane scales its counters).
    pub arrivals: f64,
    /// `arrivals / duration_s`, requests per second.
    pub arrival_rate_rps: f64,
    /// Requests that finished in the window.
    pub completions: f64,
    /// Prompt tokens of the requests that finished in the window.
    pub prompt_tokens: TokenHistogram,
    /// Generated tokens of the requests that finished in the window.
    pub generation_tokens: TokenHistogram,
    /// The SLO in force.
    pub slo: SloSpec,
    /// Replicas per slot at the end of the window.
    pub fleet: Vec<FleetSlot>,
    /// SLO attainment the operator observed at the end of the window, when it had one.
    #[serde(default)]
    pub slo_attainment: Option<f64>,
    /// The policy that decided (kind, and checkpoint digest for a learned one).
    #[serde(default)]
    pub policy: Option<String>,
    /// What could not be read cleanly in the window (mismatched buckets, absent families).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl TrafficWindow {
    /// End of the window, seconds since the Unix epoch.
    pub fn end_unix_s(&self) -> f64 {
        self.start_unix_s + self.duration_s
    }

    /// Why the window is not valid, if it is not: the version this code reads, finite
    /// non-negative times and counts, well-formed histograms (each error names the field).
    pub fn check(&self) -> Result<(), String> {
        if self.version != RECORD_VERSION {
            return Err(format!("version {} (this llmos reads version {RECORD_VERSION})", self.version));
        }
        let fields = [
            ("start_unix_s", self.start_unix_s),
            ("duration_s", self.duration_s),
            ("arrivals", self.arrivals),
            ("arrival_rate_rps", self.arrival_rate_rps),
            ("completions", self.completions),
        ];
        for (name, v) in fields {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name}: {v} is not a finite non-negative number"));
            }
        }
        if self.duration_s <= 0.0 {
            return Err("duration_s: must be > 0".into());
        }
        self.prompt_tokens.check().map_err(|e| format!("prompt_tokens: {e}"))?;
        self.generation_tokens.check().map_err(|e| format!("generation_tokens: {e}"))
    }
}

/// What was in force when a window ended, from the caller (the reconcile or the twin).
#[derive(Clone, Debug, Default)]
pub struct WindowContext {
    /// The workload's SLO.
    pub slo: SloSpec,
    /// Replicas per slot.
    pub fleet: Vec<FleetSlot>,
    /// The SLO attainment observed, if any.
    pub slo_attainment: Option<f64>,
    /// The policy in force.
    pub policy: Option<String>,
}

/// Increases summed over the pods of one window so far.
#[derive(Default)]
struct Acc {
    completions: f64,
    in_flight_growth: f64,
    prompt: TokenHistogram,
    generation: TokenHistogram,
    notes: Vec<String>,
}

/// Builds [`TrafficWindow`]s from successive scrapes of a workload's pods: one window
/// every `window_s` seconds (the first round only sets the baseline).
pub struct WindowRecorder {
    workload: String,
    window_s: f64,
    last: BTreeMap<String, PodSample>,
    window_start: Option<f64>,
    acc: Acc,
}

fn counter(s: &PodSample, f: Field) -> f64 {
    s.counters.get(&f).copied().unwrap_or(0.0)
}

fn in_flight(s: &PodSample) -> f64 {
    s.gauges.get(&Field::WaitingRequests).copied().unwrap_or(0.0)
        + s.gauges.get(&Field::RunningRequests).copied().unwrap_or(0.0)
}

impl WindowRecorder {
    /// A recorder for `workload` (`namespace/name`) emitting one window per `window_s`
    /// seconds (at least one scrape round; a window closes at the first round at or after
    /// its end).
    pub fn new(workload: &str, window_s: f64) -> WindowRecorder {
        WindowRecorder {
            workload: workload.to_string(),
            window_s: if window_s.is_finite() && window_s > 0.0 { window_s } else { 60.0 },
            last: BTreeMap::new(),
            window_start: None,
            acc: Acc::default(),
        }
    }

    /// Adds one scrape round of the workload's serving pods at `now_unix_s`; returns the
    /// window that this round closes, if any. A pod missing from a round (its scrape
    /// failed) keeps its last sample as its baseline until [`WindowRecorder::retain`]
    /// forgets it, so one failed scrape does not count its history again.
    pub fn observe(
        &mut self,
        now_unix_s: f64,
        pods: &[(Endpoint, PodSample)],
        ctx: &WindowContext,
    ) -> Option<TrafficWindow> {
        let Some(start) = self.window_start else {
            self.window_start = Some(now_unix_s);
            self.last = pods.iter().map(|(e, s)| (e.address.clone(), s.clone())).collect();
            return None;
        };
        for (endpoint, sample) in pods {
            let prev = self.last.remove(&endpoint.address).unwrap_or_default();
            self.add_increase(&endpoint.address, &prev, sample);
            self.last.insert(endpoint.address.clone(), sample.clone());
        }
        (now_unix_s - start >= self.window_s - 1e-9).then(|| self.close(now_unix_s, ctx))
    }

    /// Forgets the baselines of pods whose address is not in `addresses` (pods that are
    /// gone); a pod seen again later counts from zero, as a new one.
    pub fn retain(&mut self, addresses: &[&str]) {
        self.last.retain(|a, _| addresses.contains(&a.as_str()));
    }

    /// The window length, seconds.
    pub fn window_s(&self) -> f64 {
        self.window_s
    }

    /// For a source that aggregates over pods itself (Prometheus): the first call sets the
    /// window's start; a later one at or after its end returns the window that closes,
    /// `(start, duration)`, and starts the next. Read the increases over `duration` and
    /// build the window with [`WindowRecorder::window_from_increase`].
    pub fn due(&mut self, now_unix_s: f64) -> Option<(f64, f64)> {
        let Some(start) = self.window_start else {
            self.window_start = Some(now_unix_s);
            return None;
        };
        (now_unix_s - start >= self.window_s - 1e-9).then(|| {
            self.window_start = Some(now_unix_s);
            (start, now_unix_s - start)
        })
    }

    /// The window `[start, start + duration)` from increases already summed over the pods
    /// (a Prometheus answer): arrivals are completions plus the growth in flight, as in
    /// [`WindowRecorder::observe`].
    pub fn window_from_increase(
        &self,
        start_unix_s: f64,
        duration_s: f64,
        inc: &crate::metrics::TrafficIncrease,
        ctx: &WindowContext,
    ) -> TrafficWindow {
        let duration_s = duration_s.max(1e-9);
        let arrivals = (inc.completions + inc.in_flight_growth).max(0.0);
        let tokens = |h: &Option<Histogram>| h.as_ref().map(TokenHistogram::from_cumulative).unwrap_or_default();
        TrafficWindow {
            version: RECORD_VERSION,
            workload: self.workload.clone(),
            start_unix_s,
            duration_s,
            arrivals,
            arrival_rate_rps: arrivals / duration_s,
            completions: inc.completions.max(0.0),
            prompt_tokens: tokens(&inc.prompt_tokens),
            generation_tokens: tokens(&inc.generation_tokens),
            slo: ctx.slo.clone(),
            fleet: ctx.fleet.clone(),
            slo_attainment: ctx.slo_attainment,
            policy: ctx.policy.clone(),
            notes: inc.notes.iter().take(16).cloned().collect(),
        }
    }

    /// Closes the current window at `now_unix_s` even if it is shorter than `window_s`
    /// (the end of a run); `None` when no round followed the baseline.
    pub fn flush(&mut self, now_unix_s: f64, ctx: &WindowContext) -> Option<TrafficWindow> {
        let start = self.window_start?;
        (now_unix_s > start).then(|| self.close(now_unix_s, ctx))
    }

    fn add_increase(&mut self, address: &str, prev: &PodSample, cur: &PodSample) {
        let (c0, c1) = (counter(prev, Field::RequestSuccess), counter(cur, Field::RequestSuccess));
        let restarted = c1 < c0;
        self.acc.completions += if restarted { c1 } else { c1 - c0 };
        self.acc.in_flight_growth += in_flight(cur) - if restarted { 0.0 } else { in_flight(prev) };
        for field in [Field::RequestPromptTokens, Field::RequestGenerationTokens] {
            let Some(now) = cur.histograms.get(&field) else {
                self.note(format!("{address}: {} absent", crate::metrics::vllm::mapping(field).name));
                continue;
            };
            let inc = match prev.histograms.get(&field) {
                Some(before) => match now.increase_since(before) {
                    Ok(inc) => inc,
                    Err(e) => {
                        self.note(format!("{address}: {}: {e}", crate::metrics::vllm::mapping(field).name));
                        continue;
                    }
                },
                None => now.clone(),
            };
            let target =
                if field == Field::RequestPromptTokens { &mut self.acc.prompt } else { &mut self.acc.generation };
            if let Err(e) = target.merge(&TokenHistogram::from_cumulative(&inc)) {
                let name = crate::metrics::vllm::mapping(field).name;
                self.note(format!("{address}: {name}: {e}"));
            }
        }
    }

    fn note(&mut self, n: String) {
        if !self.acc.notes.contains(&n) && self.acc.notes.len() < 16 {
            self.acc.notes.push(n);
        }
    }

    fn close(&mut self, now_unix_s: f64, ctx: &WindowContext) -> TrafficWindow {
        let start = self.window_start.unwrap_or(now_unix_s);
        let acc = std::mem::take(&mut self.acc);
        self.window_start = Some(now_unix_s);
        let duration_s = (now_unix_s - start).max(1e-9);
        let arrivals = (acc.completions + acc.in_flight_growth).max(0.0);
        TrafficWindow {
            version: RECORD_VERSION,
            workload: self.workload.clone(),
            start_unix_s: start,
            duration_s,
            arrivals,
            arrival_rate_rps: arrivals / duration_s,
            completions: acc.completions,
            prompt_tokens: acc.prompt,
            generation_tokens: acc.generation,
            slo: ctx.slo.clone(),
            fleet: ctx.fleet.clone(),
            slo_attainment: ctx.slo_attainment,
            policy: ctx.policy.clone(),
            notes: acc.notes,
        }
    }
}

/// The fleet part of a [`WindowContext`] from an observation's slots.
pub fn fleet_of(obs: &crate::policy::Observation) -> Vec<FleetSlot> {
    obs.slots
        .iter()
        .map(|s| FleetSlot {
            variant: s.variant.clone(),
            pool: s.pool.clone(),
            desired: s.desired_replicas,
            ready: s.ready_replicas,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(success: f64, waiting: f64, prompt: &[(f64, f64)], sum: f64) -> PodSample {
        let mut s = PodSample::default();
        s.counters.insert(Field::RequestSuccess, success);
        s.gauges.insert(Field::WaitingRequests, waiting);
        s.gauges.insert(Field::RunningRequests, 0.0);
        let h = Histogram::from_buckets(prompt.to_vec(), sum);
        s.histograms.insert(Field::RequestPromptTokens, h.clone());
        s.histograms.insert(Field::RequestGenerationTokens, h);
        s
    }

    fn ep(a: &str) -> Endpoint {
        Endpoint { variant: "v".into(), pool: "p".into(), address: a.into() }
    }

    #[test]
    fn arrivals_are_completions_plus_growth_in_flight_and_histograms_are_increases() {
        let inf = f64::INFINITY;
        let mut r = WindowRecorder::new("ns/w", 10.0);
        let ctx = WindowContext::default();
        let s0 = sample(100.0, 2.0, &[(10.0, 50.0), (100.0, 100.0), (inf, 100.0)], 3000.0);
        assert!(r.observe(0.0, &[(ep("a"), s0)], &ctx).is_none());
        let s1 = sample(110.0, 5.0, &[(10.0, 54.0), (100.0, 110.0), (inf, 110.0)], 3400.0);
        assert!(r.observe(5.0, &[(ep("a"), s1.clone())], &ctx).is_none());
        // A new pod counts from zero; pod a restarted (its counter went down).
        let s2 = sample(1.0, 0.0, &[(10.0, 1.0), (100.0, 1.0), (inf, 1.0)], 7.0);
        let fresh = sample(3.0, 1.0, &[(10.0, 0.0), (100.0, 3.0), (inf, 3.0)], 90.0);
        let w = r.observe(10.0, &[(ep("a"), s2), (ep("b"), fresh)], &ctx).expect("window closes");
        // a: 10 + 3 in flight, then restart: 1 + 0 - 0; b: 3 + 1.
        assert_eq!(w.completions, 14.0);
        assert_eq!(w.arrivals, 10.0 + 3.0 + 1.0 + 3.0 + 1.0);
        assert_eq!(w.duration_s, 10.0);
        assert_eq!(w.prompt_tokens.bounds, vec![10.0, 100.0]);
        assert_eq!(w.prompt_tokens.counts, vec![4.0 + 1.0, 6.0 + 3.0, 0.0]);
        assert_eq!(w.prompt_tokens.sum, 400.0 + 7.0 + 90.0);
        assert!(w.check().is_ok());
    }

    #[test]
    fn aggregated_increases_make_windows_when_due() {
        let inf = f64::INFINITY;
        let mut r = WindowRecorder::new("ns/w", 10.0);
        assert_eq!(r.due(100.0), None, "the first call sets the start");
        assert_eq!(r.due(105.0), None);
        assert_eq!(r.due(111.0), Some((100.0, 11.0)));
        assert_eq!(r.due(115.0), None);
        let inc = crate::metrics::TrafficIncrease {
            completions: 20.0,
            in_flight_growth: 2.0,
            prompt_tokens: Some(Histogram::from_buckets(vec![(10.0, 5.0), (100.0, 20.0), (inf, 20.0)], 700.0)),
            generation_tokens: None,
            notes: vec!["x".into()],
        };
        let w = r.window_from_increase(100.0, 11.0, &inc, &WindowContext::default());
        assert_eq!((w.arrivals, w.arrival_rate_rps), (22.0, 2.0));
        assert_eq!(w.prompt_tokens.counts, vec![5.0, 15.0, 0.0]);
        assert_eq!(w.generation_tokens, TokenHistogram::default());
        assert!(w.check().is_ok(), "{:?}", w.check());
    }

    #[test]
    fn token_histogram_round_trips_and_estimates_like_promql() {
        let h = TokenHistogram { bounds: vec![1.0, 2.0, 5.0], counts: vec![0.0, 10.0, 10.0, 0.0], sum: 60.0 };
        assert_eq!(TokenHistogram::from_cumulative(&h.to_cumulative()), h);
        assert_eq!(h.mean(), Some(3.0));
        assert!((h.quantile(0.5).unwrap() - 2.0).abs() < 1e-12);
        assert!((h.quantile(0.75).unwrap() - 3.5).abs() < 1e-12);
        let bad = TokenHistogram { bounds: vec![2.0, 1.0], counts: vec![0.0; 3], sum: 0.0 };
        assert!(bad.check().unwrap_err().contains("ascending"));
        let short = TokenHistogram { bounds: vec![1.0], counts: vec![0.0], sum: 0.0 };
        assert!(short.check().unwrap_err().contains("want bounds + 1"));
    }
}
