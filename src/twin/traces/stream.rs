//! [`ArrivalStream`]: the arrivals a run replays, in time order: a trace window (a
//! fraction of its span, optionally resampled) with a load factor, a seeded synthetic
//! process, or ServeGen's per-client traffic ([`super::servegen`]). Streams are generated
//! lazily, so a million requests need no memory up front.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma};

use super::arrival::Arrival;
use super::readers::{Trace, TraceRecord};
use super::synthetic::{ArrivalProcess, LengthSampler};
use crate::twin::time::Nanos;
use crate::twin::TwinError;

/// A source of arrivals in time order.
#[derive(Debug)]
pub enum ArrivalStream {
    /// Replay of a trace window, times divided by the load factor.
    Replay {
        /// The trace.
        trace: std::sync::Arc<Trace>,
        /// Next index.
        next: usize,
        /// One past the last index.
        end: usize,
        /// Arrival time of the window start in trace time.
        t0_ns: u64,
        /// Load factor (times are divided by it).
        load: f64,
        /// Seeded resampling of the replay (`None` replays the trace as recorded).
        resample: Option<Box<Resampler>>,
    },
    /// Synthetic arrivals, generated lazily.
    Synthetic {
        /// The process.
        process: ArrivalProcess,
        /// Lengths.
        lengths: LengthSampler,
        /// RNG.
        rng: Box<ChaCha8Rng>,
        /// Time of the last arrival, seconds.
        t_s: f64,
        /// Stop after this time, seconds.
        duration_s: f64,
        /// Stop after this many requests.
        max_requests: Option<u64>,
        /// Requests emitted.
        emitted: u64,
        /// Load factor multiplying the rate.
        load: f64,
    },
    /// ServeGen per-client traffic, generated lazily window by window ([`super::servegen`]).
    Servegen(Box<super::servegen::ServegenStream>),
}

impl ArrivalStream {
    /// Replays `[start_frac, end_frac)` of the trace's span with arrival times divided by `load`.
    pub fn replay(
        trace: std::sync::Arc<Trace>,
        start_frac: f64,
        end_frac: f64,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        check_window(start_frac, end_frac, load)?;
        let span = trace.records.last().map(|r| r.arrival_ns).unwrap_or(0) as f64;
        let (a, b) = ((span * start_frac) as u64, (span * end_frac) as u64);
        let start = trace.records.partition_point(|r| r.arrival_ns < a);
        let end =
            if end_frac >= 1.0 { trace.records.len() } else { trace.records.partition_point(|r| r.arrival_ns < b) };
        Ok(ArrivalStream::Replay { trace, next: start, end, t0_ns: a, load, resample: None })
    }

    /// Like [`ArrivalStream::replay`], but for `seed > 0` replays a seeded resample of the
    /// window (see [`Resampler`]); seed 0 replays the trace as recorded.
    ///
    /// This is what gives several seeds of a trace-driven run different, equally
    /// plausible traffic with the same rate profile, so confidence intervals over seeds
    /// mean something.
    pub fn replay_resampled(
        trace: std::sync::Arc<Trace>,
        start_frac: f64,
        end_frac: f64,
        load: f64,
        seed: u64,
    ) -> Result<ArrivalStream, TwinError> {
        let mut s = Self::replay(trace, start_frac, end_frac, load)?;
        if seed != 0 {
            if let ArrivalStream::Replay { resample, .. } = &mut s {
                *resample = Some(Box::new(Resampler::new(seed)));
            }
        }
        Ok(s)
    }

    /// Synthetic arrivals for `duration_s` seconds (or `max_requests`), rate multiplied by `load`.
    pub fn synthetic(
        process: ArrivalProcess,
        lengths: LengthSampler,
        seed: u64,
        duration_s: f64,
        max_requests: Option<u64>,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        process.validate("workload.synthetic.arrival")?;
        check_window(0.0, 1.0, load)?;
        Ok(ArrivalStream::Synthetic {
            process,
            lengths,
            rng: Box::new(ChaCha8Rng::seed_from_u64(seed)),
            t_s: 0.0,
            duration_s,
            max_requests,
            emitted: 0,
            load,
        })
    }

    /// Arrivals of a ServeGen slice: `[start_s, end_s)` seconds of the recording, request
    /// counts scaled by `load` (see [`super::servegen::ServegenStream`]).
    pub fn servegen(
        data: std::sync::Arc<super::servegen::ServegenData>,
        seed: u64,
        start_s: f64,
        end_s: f64,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        Ok(ArrivalStream::Servegen(Box::new(super::servegen::ServegenStream::new(data, seed, start_s, end_s, load)?)))
    }

    /// The next arrival, or `None` when the stream is exhausted.
    pub fn next_arrival(&mut self) -> Option<Arrival> {
        match self {
            ArrivalStream::Servegen(s) => s.next_arrival(),
            ArrivalStream::Replay { trace, next, end, t0_ns, load, resample } => {
                let Some(rs) = resample else {
                    if *next >= *end {
                        return None;
                    }
                    let r = &trace.records[*next];
                    *next += 1;
                    let rel = r.arrival_ns.saturating_sub(*t0_ns) as f64 / *load;
                    return Some(Arrival {
                        at: Nanos(rel.round() as u64),
                        input_tokens: r.input_tokens,
                        output_tokens: r.output_tokens,
                        hash_ids: r.hash_ids.clone(),
                    });
                };
                loop {
                    if let Some((at_ns, i)) = rs.pending.pop() {
                        let r = &trace.records[i];
                        let rel = at_ns.saturating_sub(*t0_ns) as f64 / *load;
                        return Some(Arrival {
                            at: Nanos(rel.round() as u64),
                            input_tokens: r.input_tokens,
                            output_tokens: r.output_tokens,
                            hash_ids: r.hash_ids.clone(),
                        });
                    }
                    if *next >= *end {
                        return None;
                    }
                    rs.expand(&trace.records, *next, *end, *t0_ns);
                    *next += 1;
                }
            }
            ArrivalStream::Synthetic { process, lengths, rng, t_s, duration_s, max_requests, emitted, load } => {
                if max_requests.is_some_and(|m| *emitted >= m) {
                    return None;
                }
                let lmax = process.max_rate() * *load;
                if lmax <= 0.0 {
                    return None;
                }
                loop {
                    let gap = match process {
                        ArrivalProcess::Gamma { cv, .. } => {
                            let shape = 1.0 / (*cv * *cv);
                            let g = Gamma::new(shape, 1.0 / (shape * lmax)).ok()?;
                            g.sample(rng.as_mut())
                        }
                        _ => Exp::new(lmax).ok()?.sample(rng.as_mut()),
                    };
                    *t_s += gap;
                    if *t_s >= *duration_s {
                        return None;
                    }
                    // Thinning for time-varying rates (accept with rate(t)/max).
                    let accept = process.rate_at(*t_s) * *load / lmax;
                    if accept >= 1.0 || rng.random::<f64>() < accept {
                        break;
                    }
                }
                *emitted += 1;
                let (i, o) = lengths.sample(rng.as_mut());
                Some(Arrival {
                    at: Nanos((*t_s * 1e9).round() as u64),
                    input_tokens: i,
                    output_tokens: o,
                    hash_ids: Vec::new(),
                })
            }
        }
    }

    /// Requests in the stream, if known up front.
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            ArrivalStream::Replay { next, end, .. } => Some((*end - *next) as u64),
            ArrivalStream::Synthetic { max_requests, .. } => *max_requests,
            ArrivalStream::Servegen(s) => s.len_hint(),
        }
    }
}

/// Seeded resampling of a trace replay: a Poisson bootstrap with in-gap jitter.
///
/// Each request of the window is replayed `k ~ Poisson(1)` times (so on average as
/// often as recorded; some are dropped, some repeated), and each copy arrives at a time
/// drawn uniformly between the midpoints to its neighbours in the trace. The rate profile
/// of the trace is kept at every time scale above the inter-arrival gaps, lengths (and
/// prefix hashes) stay those of real requests, and arrivals stay in time order because
/// the jitter intervals of consecutive requests do not overlap.
#[derive(Debug)]
pub struct Resampler {
    rng: ChaCha8Rng,
    /// Copies of the current request: (trace time ns, record index), latest first.
    pending: Vec<(u64, usize)>,
}

impl Resampler {
    /// A resampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Resampler { rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5851_f42d_4c95_7f2d), pending: Vec::new() }
    }

    /// Draws the copies of record `i` (within `[start.., end)`) into `pending`.
    fn expand(&mut self, records: &[TraceRecord], i: usize, end: usize, t0_ns: u64) {
        let t = records[i].arrival_ns;
        let lo = if i > 0 { t - (t - records[i - 1].arrival_ns) / 2 } else { t };
        let lo = lo.max(t0_ns.min(t));
        let hi = if i + 1 < end { t + (records[i + 1].arrival_ns - t) / 2 } else { t };
        // Poisson(1) by inversion: small k, exact, no allocation.
        let u: f64 = self.rng.random();
        let (mut k, mut p, mut cdf) = (0u32, (-1.0f64).exp(), (-1.0f64).exp());
        while u > cdf && k < 16 {
            k += 1;
            p /= k as f64;
            cdf += p;
        }
        for _ in 0..k {
            let at = if hi > lo { self.rng.random_range(lo..=hi) } else { t };
            self.pending.push((at, i));
        }
        // Pop from the back: latest first in the vector, so sort descending.
        self.pending.sort_unstable_by(|a, b| b.cmp(a));
    }
}

fn check_window(start_frac: f64, end_frac: f64, load: f64) -> Result<(), TwinError> {
    if !(0.0..=1.0).contains(&start_frac) || !(0.0..=1.0).contains(&end_frac) || start_frac >= end_frac {
        return Err(TwinError::Config {
            field: "window".into(),
            message: format!("need 0 <= start_frac < end_frac <= 1, got [{start_frac}, {end_frac})"),
        });
    }
    if !(load.is_finite() && load > 0.0) {
        return Err(TwinError::Config {
            field: "load".into(),
            message: format!("load factor must be > 0, got {load}"),
        });
    }
    Ok(())
}
