//! The twin's one histogram type.
//!
//! [`Histogram`] with [`Buckets::Log`] (1 % relative bucket width from 1 µs to ~11 days,
//! fixed size) holds the report's latency distributions in bounded memory, whatever the
//! trace length ([`super::meters`]); with [`Buckets::Fixed`] (vLLM's bucket boundaries,
//! [`TTFT_BUCKETS`], [`ITL_BUCKETS`], [`E2E_BUCKETS`], [`TOKEN_BUCKETS`]) it is what an engine exposes as a
//! Prometheus histogram ([`super::engine`]).

use super::metrics::LatencySummary;
use crate::metrics::histogram::Histogram as CumulativeHistogram;

/// vLLM's TTFT buckets.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
/// vLLM's inter-token latency buckets.
pub const ITL_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// vLLM's end-to-end latency buckets.
pub const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

/// vLLM's buckets of the per-request token histograms (`vllm:request_prompt_tokens`,
/// `vllm:request_generation_tokens`): 1, 2, 5, 10, 20, 50, … up to the model length
/// (here 100,000, the last 1-2-5 step under Llama 3's 131,072).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

const LOG_MIN: f64 = 1e-6;
const LOG_GROWTH: f64 = 1.02;
const LOG_BUCKETS: usize = 1500; // 1e-6 × 1.02^1500 ≈ 8e6 s

/// How a [`Histogram`] divides its range.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Buckets {
    /// Logarithmic buckets 2 % wide from 1 µs to ~8·10⁶ s; values ≤ 1 µs count as zero.
    #[default]
    Log,
    /// Fixed upper bounds, increasing, with a `+Inf` bucket after them (Prometheus).
    Fixed(&'static [f64]),
}

/// A histogram of non-negative values (seconds) with count, sum and maximum. The default
/// is an empty log-bucketed one.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Buckets,
    /// Count per bucket (not cumulative); for fixed bounds, one more than the bounds.
    counts: Vec<u64>,
    zeros: u64,
    n: u64,
    sum: f64,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::log()
    }
}

impl Histogram {
    fn empty(buckets: Buckets, n_counts: usize) -> Histogram {
        Histogram { buckets, counts: vec![0; n_counts], zeros: 0, n: 0, sum: 0.0, max: 0.0 }
    }

    /// An empty log-bucketed histogram (~1 % relative error on quantiles).
    pub fn log() -> Histogram {
        Histogram::empty(Buckets::Log, LOG_BUCKETS)
    }

    /// An empty histogram with these upper bounds (and `+Inf`).
    pub fn fixed(bounds: &'static [f64]) -> Histogram {
        Histogram::empty(Buckets::Fixed(bounds), bounds.len() + 1)
    }

    /// Adds one value.
    pub fn add(&mut self, v: f64) {
        self.observe_n(v, 1);
    }

    /// Adds `n` observations of `v`.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        self.n += n;
        match self.buckets {
            Buckets::Log => {
                if !(v > LOG_MIN) {
                    self.zeros += n;
                    self.sum += v.max(0.0) * n as f64;
                    return;
                }
                let i = ((v / LOG_MIN).ln() / LOG_GROWTH.ln()) as usize;
                self.counts[i.min(LOG_BUCKETS - 1)] += n;
            }
            Buckets::Fixed(bounds) => {
                let i = bounds.partition_point(|&b| b < v);
                self.counts[i] += n;
            }
        }
        self.sum += v * n as f64;
        self.max = self.max.max(v);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Sum of the values.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The `q`-quantile (0..=1), or `None` when empty: for log buckets the bucket's
    /// geometric midpoint (capped at the maximum); for fixed bounds linear interpolation
    /// inside the bucket, as Prometheus' `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        if rank <= self.zeros {
            return Some(0.0);
        }
        let mut acc = self.zeros;
        for (i, c) in self.counts.iter().enumerate() {
            let before = acc;
            acc += c;
            if acc >= rank {
                return Some(match self.buckets {
                    Buckets::Log => {
                        let lo = LOG_MIN * LOG_GROWTH.powi(i as i32);
                        (lo * LOG_GROWTH.sqrt()).min(self.max)
                    }
                    Buckets::Fixed(bounds) => {
                        let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
                        let hi = bounds.get(i).copied().unwrap_or(self.max.max(lo));
                        lo + (hi - lo) * (rank - before) as f64 / *c as f64
                    }
                });
            }
        }
        Some(self.max)
    }

    /// Summary (mean, p50, p90, p99, max) in seconds.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            mean: self.mean(),
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            max: (self.n > 0).then_some(self.max),
        }
    }

    /// The cumulative form Prometheus exposes: `(le, count ≤ le)` per upper bound, then
    /// `+Inf` (for log buckets, every bucket's upper bound).
    pub fn cumulative(&self) -> CumulativeHistogram {
        let mut acc = self.zeros;
        let mut buckets = Vec::with_capacity(self.counts.len() + 1);
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = match self.buckets {
                Buckets::Log => LOG_MIN * LOG_GROWTH.powi(i as i32 + 1),
                Buckets::Fixed(bounds) => match bounds.get(i) {
                    Some(b) => *b,
                    None => continue,
                },
            };
            buckets.push((le, acc as f64));
        }
        buckets.push((f64::INFINITY, self.n as f64));
        CumulativeHistogram { buckets, sum: self.sum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buckets_cumulate_as_prometheus() {
        let mut h = Histogram::fixed(&[0.1, 1.0]);
        h.observe_n(0.05, 2);
        h.observe_n(0.1, 1); // le is inclusive
        h.observe_n(3.0, 1);
        let c = h.cumulative();
        assert_eq!(c.buckets, vec![(0.1, 3.0), (1.0, 3.0), (f64::INFINITY, 4.0)]);
        assert!((c.sum - 3.2).abs() < 1e-12);
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn log_quantiles_within_two_percent() {
        let mut h = Histogram::log();
        for i in 1..=10_000 {
            h.add(i as f64 / 1000.0);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((p50 / 5.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 9.9 - 1.0).abs() < 0.02, "{p99}");
        assert!((h.mean().unwrap() - 5.0005).abs() < 1e-9);
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn fixed_quantile_interpolates_inside_the_bucket() {
        let mut h = Histogram::fixed(&[1.0, 2.0]);
        h.observe_n(1.5, 4);
        assert_eq!(h.quantile(0.5).unwrap(), 1.5);
        assert!(Histogram::fixed(&[1.0]).quantile(0.5).is_none());
    }
}
