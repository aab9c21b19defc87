//! A recorded traffic record as a trace the twin replays: an Azure LLM inference 2023
//! CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`), the format the twin's trace reader,
//! `llmos simulate --trace`, `llmos trace-stats` and any scenario's `workload.trace`
//! already read, so an exported record needs no new reader and no new scenario field.
//!
//! Per window, in time order:
//!
//! - **arrivals**: the recorded count (fractional parts carried to the next window, so
//!   the total is kept) at times drawn uniformly in the window and sorted: a Poisson
//!   process conditioned on the recorded count, so every window replays its recorded rate
//!   exactly, not only in expectation. The first request of the export is placed at the
//!   start of its window, so that the replay's time zero is that window's start.
//! - **tokens**: prompt and output counts drawn independently from the window's
//!   recorded histograms: a bucket with its recorded probability, then a value inside
//!   it, `lo + (hi − lo)·u^k` rounded up, with one shape `k` per histogram chosen so that
//!   the expected mean equals the recorded mean (`_sum / _count`). Values stay in their
//!   buckets, so the replay's histograms estimate the same quantiles. The `+Inf` bucket
//!   replays as the largest finite bound. A window with arrivals but no finished request
//!   borrows the nearest earlier window's distribution (else the nearest later one).
//!   With `max_total_tokens` (the served model's context length) a request's output is
//!   capped at it minus one and its prompt at what is left: vLLM's buckets are coarse at
//!   the top (5,000–10,000), and a request the replayed model could not hold would be
//!   rejected instead of served.
//!
//! What is lost: the correlation between a request's prompt and output lengths, the
//! arrival pattern inside a window, and prefix sharing. Deterministic for a given seed
//! (ChaCha8).

use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::record::{TokenHistogram, TrafficWindow};
use super::RecordError;

/// How to export.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExportConfig {
    /// Seed of the arrival times and token draws.
    pub seed: u64,
    /// Largest prompt + output tokens of one request (the model's context), if any.
    pub max_total_tokens: Option<u32>,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSummary {
    /// Windows replayed.
    pub windows: usize,
    /// Windows left out because they overlap an earlier one (a restarted recorder).
    pub overlapping: usize,
    /// Requests written.
    pub requests: u64,
    /// The Unix time that is the replay's time zero (the first request's window start).
    pub origin_unix_s: f64,
}

/// One exported request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExportedRequest {
    /// Arrival, seconds since the Unix epoch.
    pub t_unix_s: f64,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Output tokens (at least 1).
    pub output_tokens: u32,
}

/// Draws token counts from one recorded [`TokenHistogram`] (see the module docs).
#[derive(Clone, Debug)]
pub struct TokenSampler {
    /// `(lo, hi, cumulative probability)` per non-empty bucket.
    buckets: Vec<(f64, f64, f64)>,
    /// Exponent of `u` inside a bucket.
    k: f64,
}

impl TokenSampler {
    /// A sampler for `h`, `None` when it holds no observation.
    pub fn new(h: &TokenHistogram) -> Option<TokenSampler> {
        let total = h.total();
        if total.is_nan() || total <= 0.0 || h.check().is_err() {
            return None;
        }
        let (mut acc, mut low_mean, mut width_mean) = (0.0, 0.0, 0.0);
        let mut buckets = Vec::new();
        for (i, &c) in h.counts.iter().enumerate() {
            let lo = if i == 0 { 0.0 } else { h.bounds[i - 1] };
            // +Inf bucket: the largest finite bound is all that is known.
            let hi = h.bounds.get(i).copied().unwrap_or(lo);
            if c <= 0.0 {
                continue;
            }
            let p = c / total;
            acc += p;
            low_mean += p * lo;
            width_mean += p * (hi - lo);
            buckets.push((lo, hi, acc));
        }
        // E[lo + (hi-lo) u^k] = lo + (hi-lo)/(k+1); rounding up adds about half a token.
        let target = h.sum / total - 0.5;
        let c = if width_mean > 0.0 { ((target - low_mean) / width_mean).clamp(1e-3, 1.0) } else { 0.5 };
        Some(TokenSampler { buckets, k: 1.0 / c - 1.0 })
    }

    /// One token count (at least 1).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let r: f64 = rng.random();
        let i = self.buckets.partition_point(|b| b.2 < r).min(self.buckets.len() - 1);
        let (lo, hi, _) = self.buckets[i];
        let u: f64 = rng.random();
        let x = lo + (hi - lo) * u.powf(self.k);
        // Inside (lo, hi]: integer bounds keep the value in its bucket.
        let v = if hi > lo { x.ceil().clamp(lo.floor() + 1.0, hi) } else { hi };
        v.clamp(1.0, u32::MAX as f64) as u32
    }
}

/// The windows to replay: sorted by start, those that overlap an earlier one left out.
fn ordered(windows: &[TrafficWindow]) -> (Vec<&TrafficWindow>, usize) {
    let mut sorted: Vec<&TrafficWindow> = windows.iter().collect();
    sorted.sort_by(|a, b| a.start_unix_s.total_cmp(&b.start_unix_s));
    let mut out: Vec<&TrafficWindow> = Vec::with_capacity(sorted.len());
    let mut overlapping = 0;
    for w in sorted {
        match out.last() {
            Some(prev) if w.start_unix_s < prev.end_unix_s() - 1e-6 => overlapping += 1,
            _ => out.push(w),
        }
    }
    (out, overlapping)
}

/// For each window, the index of the window whose distribution it replays (its own,
/// else the nearest earlier one with observations, else the nearest later one).
fn donors(ws: &[&TrafficWindow], pick: fn(&TrafficWindow) -> &TokenHistogram) -> Vec<Option<usize>> {
    let has = |i: usize| pick(ws[i]).total() > 0.0;
    let mut out = vec![None; ws.len()];
    let mut last = None;
    for (i, slot) in out.iter_mut().enumerate() {
        if has(i) {
            last = Some(i);
        }
        *slot = last;
    }
    let mut next = None;
    for i in (0..ws.len()).rev() {
        if has(i) {
            next = Some(i);
        }
        if out[i].is_none() {
            out[i] = next;
        }
    }
    out
}

/// The requests of a record, in time order (see the module docs); deterministic for the
/// config's seed.
pub fn requests(
    windows: &[TrafficWindow],
    cfg: &ExportConfig,
) -> Result<(Vec<ExportedRequest>, ExportSummary), RecordError> {
    let (ws, overlapping) = ordered(windows);
    if ws.is_empty() {
        return Err(RecordError::Export("no windows to export".into()));
    }
    let samplers = |pick: fn(&TrafficWindow) -> &TokenHistogram| -> Vec<Option<TokenSampler>> {
        donors(&ws, pick).into_iter().map(|d| d.and_then(|i| TokenSampler::new(pick(ws[i])))).collect()
    };
    let prompt = samplers(|w| &w.prompt_tokens);
    let output = samplers(|w| &w.generation_tokens);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let cap = cfg.max_total_tokens.unwrap_or(u32::MAX).max(2);
    let mut out = Vec::new();
    let mut carry = 0.0;
    let mut summary = ExportSummary { windows: ws.len(), overlapping, ..Default::default() };
    for (i, w) in ws.iter().enumerate() {
        carry += w.arrivals;
        let n = carry.floor();
        carry -= n;
        if n < 1.0 {
            continue;
        }
        let (Some(ps), Some(os)) = (&prompt[i], &output[i]) else {
            return Err(RecordError::Export(format!(
                "{}: arrivals recorded but no token distribution in any window",
                w.workload
            )));
        };
        let mut times: Vec<f64> = (0..n as u64).map(|_| w.start_unix_s + rng.random::<f64>() * w.duration_s).collect();
        times.sort_by(f64::total_cmp);
        if out.is_empty() {
            times[0] = w.start_unix_s;
            summary.origin_unix_s = w.start_unix_s;
        }
        for t in times {
            let (input, output) = (ps.sample(&mut rng), os.sample(&mut rng));
            let output_tokens = output.min(cap - 1);
            out.push(ExportedRequest { t_unix_s: t, input_tokens: input.min(cap - output_tokens), output_tokens });
        }
    }
    summary.requests = out.len() as u64;
    if out.is_empty() {
        return Err(RecordError::Export("the record holds no arrivals".into()));
    }
    Ok((out, summary))
}

/// Formats a Unix time as the Azure trace does (`2023-11-16 18:17:03.9799600`, UTC, to
/// 100 ns).
pub fn azure_timestamp(t_unix_s: f64) -> String {
    let ticks = (t_unix_s * 1e7).round() as i64;
    let (secs, frac) = (ticks.div_euclid(10_000_000), ticks.rem_euclid(10_000_000));
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => format!("{}.{frac:07}", t.format("%Y-%m-%d %H:%M:%S")),
        None => "1970-01-01 00:00:00.0000000".into(),
    }
}

/// Writes the record as an Azure-format CSV to `out`; deterministic for the config's seed.
pub fn write_azure_csv<W: Write>(
    windows: &[TrafficWindow],
    cfg: &ExportConfig,
    mut out: W,
) -> Result<ExportSummary, RecordError> {
    let (reqs, summary) = requests(windows, cfg)?;
    let io = |e: std::io::Error| RecordError::Io { path: "export output".into(), message: e.to_string() };
    out.write_all(b"TIMESTAMP,ContextTokens,GeneratedTokens\n").map_err(io)?;
    for r in &reqs {
        writeln!(out, "{},{},{}", azure_timestamp(r.t_unix_s), r.input_tokens, r.output_tokens).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[f64], sum: f64) -> TokenHistogram {
        TokenHistogram { bounds: vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0], counts: counts.to_vec(), sum }
    }

    #[test]
    fn sampled_tokens_keep_buckets_and_mean() {
        // 100 in (5, 10], 100 in (20, 50]: mean 30 asks for values high in their buckets.
        let h = hist(&[0.0, 0.0, 0.0, 100.0, 0.0, 100.0, 0.0, 0.0], 200.0 * 30.0);
        let s = TokenSampler::new(&h).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let xs: Vec<u32> = (0..20_000).map(|_| s.sample(&mut rng)).collect();
        assert!(xs.iter().all(|&x| (6..=10).contains(&x) || (21..=50).contains(&x)), "a value left its bucket");
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        assert!((mean - 30.0).abs() < 0.6, "mean {mean}");
        let low = xs.iter().filter(|&&x| x <= 10).count() as f64 / xs.len() as f64;
        assert!((low - 0.5).abs() < 0.02, "{low}");
    }

    #[test]
    fn timestamps_read_back_by_the_trace_reader() {
        assert_eq!(azure_timestamp(1_700_000_000.25), "2023-11-14 22:13:20.2500000");
    }
}
