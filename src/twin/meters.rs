//! The twin's meters: the run's counters and cost integration.
//!
//! [`Meters`] counts what the run did (arrivals, completions, rejections, SLO attainment,
//! quality, tokens, preemptions, KV usage) in totals and per control interval
//! ([`TickStats`]), and integrates cost over time at the GPUs' prices ([`CostMeter`]).

use serde::Serialize;

use super::engine::Finished;
use super::histogram::Histogram;
use super::time::Nanos;
use crate::crd::LLMWorkloadSpec;

/// What happened during one control interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TickStats {
    /// Simulated time at the end of the interval, seconds.
    pub time_s: f64,
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests finished.
    pub finished: u64,
    /// Finished requests that met the SLO (TTFT and TPOT).
    pub slo_met: u64,
    /// Requests rejected.
    pub rejected: u64,
    /// Cost accrued, USD.
    pub cost_usd: f64,
    /// GPU-seconds accrued.
    pub gpu_seconds: f64,
    /// Σ variant quality over finished requests (variants without quality count 0).
    pub quality_sum: f64,
    /// Σ variant quality over requests that finished within the SLO.
    pub quality_met_sum: f64,
    /// Prompt tokens of finished requests.
    pub input_tokens: u64,
    /// Output tokens of finished requests.
    pub output_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
}

/// Cost integrated over time: the GPUs held and their price per second, accrued up to
/// each change.
#[derive(Clone, Debug, Default)]
pub struct CostMeter {
    /// USD so far.
    pub cost_usd: f64,
    /// GPU-seconds so far.
    pub gpu_s: f64,
    rate_per_s: f64,
    active_gpus: u64,
    last: Nanos,
}

impl CostMeter {
    /// Accrues cost up to `t`; returns the (USD, GPU-seconds) added.
    pub fn accrue(&mut self, t: Nanos) -> (f64, f64) {
        if t <= self.last {
            return (0.0, 0.0);
        }
        let dt = t.since(self.last).as_secs_f64();
        let c = self.rate_per_s * dt;
        let g = self.active_gpus as f64 * dt;
        self.cost_usd += c;
        self.gpu_s += g;
        self.last = t;
        (c, g)
    }

    /// `gpus` start being paid for at `price_per_gpu_s` (accrue first).
    pub fn hold(&mut self, gpus: u32, price_per_gpu_s: f64) {
        self.active_gpus += gpus as u64;
        self.rate_per_s += gpus as f64 * price_per_gpu_s;
    }

    /// `gpus` held at `price_per_gpu_s` are released (accrue first).
    pub fn release(&mut self, gpus: u32, price_per_gpu_s: f64) {
        self.active_gpus -= gpus as u64;
        self.rate_per_s -= gpus as f64 * price_per_gpu_s;
        if self.active_gpus == 0 {
            // No drift from repeated additions and subtractions.
            self.rate_per_s = 0.0;
        }
    }
}

/// The run's counters: totals, the current interval's [`TickStats`], the report's
/// latency histograms and the cost meter.
#[derive(Clone, Debug)]
pub struct Meters {
    /// The current control interval.
    pub tick: TickStats,
    /// Requests arrived.
    pub arrived: u64,
    /// Requests finished.
    pub finished: u64,
    /// Requests rejected (gateway full, or longer than the replica's context).
    pub rejected: u64,
    /// Finished within the SLO.
    pub slo_met: u64,
    /// Σ quality of finished requests.
    pub quality_sum: f64,
    /// Σ quality of requests finished within the SLO.
    pub quality_met_sum: f64,
    /// Prompt tokens of finished requests.
    pub in_tokens: u64,
    /// Output tokens of finished requests.
    pub out_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Queueing delay (arrival to first scheduled), seconds.
    pub queue: Histogram,
    /// Time to first token, seconds.
    pub ttft: Histogram,
    /// Time per output token after the first, seconds.
    pub tpot: Histogram,
    /// End-to-end latency, seconds.
    pub e2e: Histogram,
    /// Σ of the serving replicas' mean KV usage, one sample per tick.
    pub kv_sum: f64,
    /// Number of KV samples.
    pub kv_samples: f64,
    /// Cost.
    pub cost: CostMeter,
    slo_ttft_s: f64,
    slo_tpot_s: f64,
}

impl Meters {
    /// Empty meters judging requests against `spec`'s SLO.
    pub fn new(spec: &LLMWorkloadSpec) -> Meters {
        Meters {
            tick: TickStats::default(),
            arrived: 0,
            finished: 0,
            rejected: 0,
            slo_met: 0,
            quality_sum: 0.0,
            quality_met_sum: 0.0,
            in_tokens: 0,
            out_tokens: 0,
            preemptions: 0,
            queue: Histogram::log(),
            ttft: Histogram::log(),
            tpot: Histogram::log(),
            e2e: Histogram::log(),
            kv_sum: 0.0,
            kv_samples: 0.0,
            cost: CostMeter::default(),
            slo_ttft_s: spec.slo.ttft_ms / 1e3,
            slo_tpot_s: spec.slo.tpot_ms / 1e3,
        }
    }

    /// Accrues cost up to `t`, in the totals and the current interval.
    pub fn accrue(&mut self, t: Nanos) {
        let (c, g) = self.cost.accrue(t);
        self.tick.cost_usd += c;
        self.tick.gpu_seconds += g;
    }

    /// A request arrived.
    pub fn arrival(&mut self) {
        self.arrived += 1;
        self.tick.arrived += 1;
    }

    /// A request was rejected.
    pub fn rejection(&mut self) {
        self.rejected += 1;
        self.tick.rejected += 1;
    }

    /// `n` preemptions happened.
    pub fn preempted(&mut self, n: u64) {
        self.preemptions += n;
        self.tick.preemptions += n;
    }

    /// A request finished on a replica of a variant of quality `quality`.
    pub fn finished(&mut self, f: &Finished, quality: f64) {
        let ttft = f.first_token.since(f.arrival).as_secs_f64();
        let e2e = f.finish.since(f.arrival).as_secs_f64();
        let tpot = if f.output > 1 { f.finish.since(f.first_token).as_secs_f64() / (f.output - 1) as f64 } else { 0.0 };
        let queue = f.first_sched.since(f.arrival).as_secs_f64();
        let met = ttft <= self.slo_ttft_s && tpot <= self.slo_tpot_s;
        self.queue.add(queue);
        self.ttft.add(ttft);
        self.tpot.add(tpot);
        self.e2e.add(e2e);
        self.finished += 1;
        self.tick.finished += 1;
        self.quality_sum += quality;
        self.tick.quality_sum += quality;
        self.in_tokens += f.input as u64;
        self.out_tokens += f.output as u64;
        self.tick.input_tokens += f.input as u64;
        self.tick.output_tokens += f.output as u64;
        if met {
            self.slo_met += 1;
            self.tick.slo_met += 1;
            self.quality_met_sum += quality;
            self.tick.quality_met_sum += quality;
        }
    }

    /// One sample of the serving replicas' mean KV usage.
    pub fn sample_kv(&mut self, mean_usage: f64) {
        self.kv_sum += mean_usage;
        self.kv_samples += 1.0;
    }

    /// Ends the current interval at `now`: returns its stats and starts the next.
    pub fn take_tick(&mut self, now: Nanos) -> TickStats {
        let mut t = std::mem::take(&mut self.tick);
        t.time_s = now.as_secs_f64();
        t
    }
}
