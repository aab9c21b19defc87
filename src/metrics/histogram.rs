//! Cumulative Prometheus histograms: windowed deltas, quantiles and SLO attainment.
//!
//! A Prometheus histogram is a set of cumulative counters `_bucket{le="b"}` (requests
//! with value ≤ b) ending with `le="+Inf"`, plus `_sum` and `_count`. Over a window we
//! work with the *increase* of every bucket (the requests observed in the window).
//!
//! - **Quantile** ([`Histogram::quantile`]): the same estimate as PromQL's
//!   `histogram_quantile`: find the bucket where the cumulative count reaches
//!   `q × total` and interpolate linearly between its lower and upper bound (the lower
//!   bound of the first bucket is 0). When the rank falls in the `+Inf` bucket the
//!   answer is the largest finite bound (a lower bound of the truth).
//! - **Fraction at or below a threshold** ([`Histogram::fraction_at_most`]): the
//!   cumulative count at the threshold, interpolated linearly inside the bucket that
//!   contains it, over the total. Above the largest finite bound nothing is known, so
//!   requests in the `+Inf` bucket count as above the threshold (conservative).
//!
//! Both are approximations whose error is bounded by the bucket width around the
//! answer: vLLM's TTFT buckets are 1 ms … 2560 s, roughly ×2–2.5 apart, so a 500 ms SLO
//! is judged to within the 0.5–0.75 s bucket.

/// A cumulative histogram: `(upper bound, cumulative count)` sorted by bound, the last
/// bound `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)` pairs, ascending `le`, last one `f64::INFINITY`.
    pub buckets: Vec<(f64, f64)>,
    /// `_sum`, when exported.
    pub sum: f64,
}

/// Why two histograms cannot be combined.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("histogram bucket bounds differ ({left} vs {right} buckets or different `le` values)")]
pub struct BoundsMismatch {
    /// Buckets on the left.
    pub left: usize,
    /// Buckets on the right.
    pub right: usize,
}

impl Histogram {
    /// Builds a histogram from `(le, count)` pairs in any order; non-monotonic
    /// cumulative counts (a scrape racing an update) are repaired with a running maximum.
    pub fn from_buckets(mut buckets: Vec<(f64, f64)>, sum: f64) -> Self {
        buckets.retain(|(le, c)| !le.is_nan() && !c.is_nan());
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets.dedup_by(|b, a| a.0 == b.0);
        let mut max = 0.0f64;
        for b in buckets.iter_mut() {
            max = max.max(b.1);
            b.1 = max;
        }
        Histogram { buckets, sum }
    }

    /// Total observations (the `+Inf` bucket), 0 when empty.
    pub fn total(&self) -> f64 {
        self.buckets.last().map(|b| b.1).unwrap_or(0.0)
    }

    /// True when both have the same bucket bounds.
    pub fn same_bounds(&self, other: &Histogram) -> bool {
        self.buckets.len() == other.buckets.len() && self.buckets.iter().zip(&other.buckets).all(|(a, b)| a.0 == b.0)
    }

    /// Adds `other` bucket by bucket (pods of one slot, engines of one pod).
    pub fn add(&mut self, other: &Histogram) -> Result<(), BoundsMismatch> {
        if self.buckets.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        if !self.same_bounds(other) {
            return Err(BoundsMismatch { left: self.buckets.len(), right: other.buckets.len() });
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.1 += b.1;
        }
        self.sum += other.sum;
        Ok(())
    }

    /// The increase from `earlier` to `self`, with Prometheus' counter-reset rule: when
    /// the total went down, the process restarted and everything in `self` is new.
    pub fn increase_since(&self, earlier: &Histogram) -> Result<Histogram, BoundsMismatch> {
        if !self.same_bounds(earlier) {
            return Err(BoundsMismatch { left: self.buckets.len(), right: earlier.buckets.len() });
        }
        if self.total() < earlier.total() {
            return Ok(self.clone());
        }
        let buckets = self.buckets.iter().zip(&earlier.buckets).map(|(a, b)| (a.0, (a.1 - b.1).max(0.0))).collect();
        Ok(Histogram::from_buckets(buckets, (self.sum - earlier.sum).max(0.0)))
    }

    /// The `q` quantile (0..=1), as `histogram_quantile` computes it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if !(total > 0.0) || self.buckets.len() < 2 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for (i, &(le, count)) in self.buckets.iter().enumerate() {
            if count >= rank {
                if le.is_infinite() {
                    // Rank in the +Inf bucket: the largest finite bound is all we know.
                    return Some(self.buckets[i.saturating_sub(1)].0);
                }
                if i == 0 && le <= 0.0 {
                    return Some(le);
                }
                let in_bucket = count - prev_count;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(prev_le + (le - prev_le) * (rank - prev_count) / in_bucket);
            }
            prev_le = le;
            prev_count = count;
        }
        None
    }

    /// Fraction of observations at or below `threshold`; `None` when empty.
    pub fn fraction_at_most(&self, threshold: f64) -> Option<f64> {
        let total = self.total();
        if !(total > 0.0) {
            return None;
        }
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for &(le, count) in &self.buckets {
            if le.is_infinite() {
                // Above the largest finite bound: count as misses.
                return Some((prev_count / total).clamp(0.0, 1.0));
            }
            if threshold <= le {
                let width = le - prev_le;
                let within = if width > 0.0 { ((threshold - prev_le) / width).clamp(0.0, 1.0) } else { 1.0 };
                return Some(((prev_count + (count - prev_count) * within) / total).clamp(0.0, 1.0));
            }
            prev_le = le;
            prev_count = count;
        }
        Some((prev_count / total).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: &[(f64, f64)]) -> Histogram {
        Histogram::from_buckets(b.to_vec(), 0.0)
    }

    #[test]
    fn quantile_interpolates_like_promql() {
        // 10 obs ≤ 0.1, 10 more ≤ 0.2, none above.
        let x = h(&[(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)]);
        assert!((x.quantile(0.5).unwrap() - 0.1).abs() < 1e-12);
        assert!((x.quantile(0.75).unwrap() - 0.15).abs() < 1e-12);
        assert!((x.quantile(0.25).unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(h(&[(0.1, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5), None);
    }

    #[test]
    fn quantile_in_inf_bucket_is_largest_finite_bound() {
        let x = h(&[(0.1, 1.0), (0.2, 2.0), (f64::INFINITY, 10.0)]);
        assert_eq!(x.quantile(0.9), Some(0.2));
    }

    #[test]
    fn fraction_at_most_interpolates_and_counts_inf_as_miss() {
        let x = h(&[(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 40.0)]);
        assert!((x.fraction_at_most(0.15).unwrap() - 15.0 / 40.0).abs() < 1e-12);
        assert!((x.fraction_at_most(0.2).unwrap() - 0.5).abs() < 1e-12);
        assert!((x.fraction_at_most(5.0).unwrap() - 0.5).abs() < 1e-12);
        assert!((x.fraction_at_most(0.0).unwrap() - 0.0).abs() < 1e-12);
    }

    #[test]
    fn increase_handles_counter_reset() {
        let before = h(&[(0.1, 100.0), (f64::INFINITY, 150.0)]);
        let after_restart = h(&[(0.1, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(after_restart.increase_since(&before).unwrap(), after_restart);
        let later = h(&[(0.1, 110.0), (f64::INFINITY, 170.0)]);
        assert_eq!(later.increase_since(&before).unwrap().buckets, vec![(0.1, 10.0), (f64::INFINITY, 20.0)]);
    }

    #[test]
    fn mismatched_bounds_are_an_error() {
        let mut a = h(&[(0.1, 1.0), (f64::INFINITY, 1.0)]);
        let b = h(&[(0.2, 1.0), (f64::INFINITY, 1.0)]);
        assert!(a.add(&b).is_err());
        assert!(b.increase_since(&a).is_err());
    }

    #[test]
    fn non_monotonic_buckets_are_repaired() {
        let x = h(&[(0.2, 3.0), (0.1, 5.0), (f64::INFINITY, 5.0)]);
        assert_eq!(x.buckets, vec![(0.1, 5.0), (0.2, 5.0), (f64::INFINITY, 5.0)]);
    }
}
