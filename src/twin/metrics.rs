//! Run metrics: per-request latencies streamed into bounded-memory aggregates, and the
//! report (table, JSON, CSV).
//!
//! Latency distributions come from the meters' log-bucketed histograms
//! ([`super::meters::Histogram`]), so memory does not grow with the trace length.

use serde::Serialize;

/// Mean and percentiles of a latency, seconds (`None` when nothing was measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Mean.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// Per (variant, pool) slot totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SlotReport {
    /// Variant.
    pub variant: String,
    /// Pool.
    pub pool: String,
    /// Requests finished by the slot's replicas.
    pub finished: u64,
    /// GPU-hours the slot's replicas used (loading, serving, draining).
    pub gpu_hours: f64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Most replicas the slot had at once (any state but stopped).
    pub peak_replicas: u32,
}

/// The report of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated time, seconds.
    pub simulated_s: f64,
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests finished.
    pub finished: u64,
    /// Requests rejected (too long for the model, or no replica and the gateway queue full).
    pub rejected: u64,
    /// Requests still in flight at the end.
    pub in_flight: u64,
    /// Finished requests per second of simulated time.
    pub throughput_rps: f64,
    /// Prompt tokens of finished requests per second.
    pub input_tokens_per_s: f64,
    /// Output tokens of finished requests per second.
    pub output_tokens_per_s: f64,
    /// Queueing delay (arrival to first scheduled), seconds.
    pub queue_s: LatencySummary,
    /// Time to first token, seconds.
    pub ttft_s: LatencySummary,
    /// Time per output token after the first, seconds.
    pub tpot_s: LatencySummary,
    /// End-to-end latency, seconds.
    pub e2e_s: LatencySummary,
    /// SLO TTFT target, ms.
    pub slo_ttft_ms: f64,
    /// SLO TPOT target, ms.
    pub slo_tpot_ms: f64,
    /// Fraction of finished requests that met both targets.
    pub slo_attainment: Option<f64>,
    /// Requests per second that met the SLO.
    pub goodput_rps: f64,
    /// Preemptions.
    pub preemptions: u64,
    /// Prefix-cache hit rate: hit prompt tokens / looked-up prompt tokens (`None` without prefix caching).
    pub prefix_cache_hit_rate: Option<f64>,
    /// GPU-hours (every GPU from start of loading to stop).
    pub gpu_hours: f64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Cost per 1000 finished requests, USD.
    pub cost_per_1k_requests_usd: Option<f64>,
    /// Fraction of ready replica time spent running iterations.
    pub utilisation: f64,
    /// Mean KV-cache usage over ready replicas, sampled each control tick.
    pub mean_kv_usage: f64,
    /// Mean variant quality of finished requests (`None` when variants have none).
    pub mean_quality: Option<f64>,
    /// Quality delivered per dollar: the summed variant quality of the requests that met
    /// the SLO, divided by the GPU cost in USD (`None` when variants have no quality or
    /// nothing was spent). A late answer counts nothing; a better model counts more.
    pub good_quality_per_usd: Option<f64>,
    /// Per slot.
    pub slots: Vec<SlotReport>,
}

fn f(v: Option<f64>, scale: f64) -> String {
    v.map(|x| format!("{:.1}", x * scale)).unwrap_or_else(|| "-".into())
}

impl Report {
    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(s, "scenario {}  seed {}  simulated {:.1} s", self.scenario, self.seed, self.simulated_s);
        let _ = writeln!(
            s,
            "requests   arrived {}  finished {}  rejected {}  in flight {}",
            self.arrived, self.finished, self.rejected, self.in_flight
        );
        let _ = writeln!(
            s,
            "throughput {:.2} req/s  {:.0} prompt tok/s  {:.0} output tok/s",
            self.throughput_rps, self.input_tokens_per_s, self.output_tokens_per_s
        );
        let _ = writeln!(s, "{:<10} {:>10} {:>10} {:>10} {:>10}", "latency ms", "mean", "p50", "p90", "p99");
        for (n, l) in [("queue", &self.queue_s), ("ttft", &self.ttft_s), ("tpot", &self.tpot_s), ("e2e", &self.e2e_s)] {
            let _ = writeln!(
                s,
                "{:<10} {:>10} {:>10} {:>10} {:>10}",
                n,
                f(l.mean, 1e3),
                f(l.p50, 1e3),
                f(l.p90, 1e3),
                f(l.p99, 1e3)
            );
        }
        let _ = writeln!(
            s,
            "SLO (TTFT {} ms, TPOT {} ms): attainment {}  goodput {:.2} req/s",
            self.slo_ttft_ms,
            self.slo_tpot_ms,
            self.slo_attainment.map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "-".into()),
            self.goodput_rps
        );
        let _ = writeln!(
            s,
            "cost ${:.2}  {:.2} GPU-h  ${} per 1k req  utilisation {:.1}%  KV usage {:.1}%  preemptions {}  prefix hit {}",
            self.cost_usd,
            self.gpu_hours,
            self.cost_per_1k_requests_usd.map(|c| format!("{c:.3}")).unwrap_or_else(|| "-".into()),
            self.utilisation * 100.0,
            self.mean_kv_usage * 100.0,
            self.preemptions,
            self.prefix_cache_hit_rate.map(|h| format!("{:.1}%", h * 100.0)).unwrap_or_else(|| "-".into())
        );
        for sl in &self.slots {
            let _ = writeln!(
                s,
                "  slot {}/{}: finished {}  {:.2} GPU-h  ${:.2}  peak replicas {}",
                sl.variant, sl.pool, sl.finished, sl.gpu_hours, sl.cost_usd, sl.peak_replicas
            );
        }
        s
    }

    /// CSV: a header and one row of the headline figures (latencies in seconds).
    pub fn to_csv(&self) -> String {
        let o = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        let header = "scenario,seed,simulated_s,arrived,finished,rejected,in_flight,throughput_rps,input_tokens_per_s,output_tokens_per_s,queue_mean_s,queue_p99_s,ttft_mean_s,ttft_p50_s,ttft_p90_s,ttft_p99_s,tpot_mean_s,tpot_p50_s,tpot_p90_s,tpot_p99_s,e2e_mean_s,e2e_p50_s,e2e_p90_s,e2e_p99_s,slo_attainment,goodput_rps,preemptions,prefix_cache_hit_rate,gpu_hours,cost_usd,cost_per_1k_requests_usd,utilisation,mean_kv_usage,mean_quality,good_quality_per_usd";
        let row = [
            self.scenario.replace(',', ";"),
            self.seed.to_string(),
            format!("{:.3}", self.simulated_s),
            self.arrived.to_string(),
            self.finished.to_string(),
            self.rejected.to_string(),
            self.in_flight.to_string(),
            format!("{:.6}", self.throughput_rps),
            format!("{:.3}", self.input_tokens_per_s),
            format!("{:.3}", self.output_tokens_per_s),
            o(self.queue_s.mean),
            o(self.queue_s.p99),
            o(self.ttft_s.mean),
            o(self.ttft_s.p50),
            o(self.ttft_s.p90),
            o(self.ttft_s.p99),
            o(self.tpot_s.mean),
            o(self.tpot_s.p50),
            o(self.tpot_s.p90),
            o(self.tpot_s.p99),
            o(self.e2e_s.mean),
            o(self.e2e_s.p50),
            o(self.e2e_s.p90),
            o(self.e2e_s.p99),
            o(self.slo_attainment),
            format!("{:.6}", self.goodput_rps),
            self.preemptions.to_string(),
            o(self.prefix_cache_hit_rate),
            format!("{:.6}", self.gpu_hours),
            format!("{:.6}", self.cost_usd),
            o(self.cost_per_1k_requests_usd),
            format!("{:.6}", self.utilisation),
            format!("{:.6}", self.mean_kv_usage),
            o(self.mean_quality),
            o(self.good_quality_per_usd),
        ];
        format!("{header}\n{}\n", row.join(","))
    }
}
