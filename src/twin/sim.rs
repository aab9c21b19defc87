//! The twin proper: a fleet of replicas on GPU pools, a load balancer, an event loop in
//! integer nanoseconds, and the stepping API policies are trained and judged through.
//!
//! **Events** (iteration ends, replicas becoming ready) sit in a binary heap ordered by
//! (time, insertion sequence); arrivals come from the [`ArrivalStream`] in time order and are
//! handled after heap events of the same instant. A replica's iteration event carries an
//! epoch so that a decode jump cut short by an arrival invalidates its old event.
//!
//! **Replicas** move through pending (no free GPUs in the pool) → starting (cold start:
//! `pod_startup_s + weight bytes / weight_load_gb_s`, or the variant's `coldStartSeconds`)
//! → ready → draining (takes no new requests, finishes its own) → stopped. A replica that a
//! decision removes while other replicas are still starting keeps serving ("retiring")
//! until none is starting: a variant switch starts the new variant before the old one drains.
//! Cost accrues per GPU from the start of loading to the stop, at the pool's price.
//!
//! **Control**: [`Twin::step`] advances one control interval (`spec.policy.intervalSeconds`);
//! at its end the serving replicas are scraped (their vLLM metrics, as a pod exposes
//! them), and [`Twin::observe`] builds the [`Observation`] from that scrape with the code
//! the live operator uses ([`crate::observe`]), over the last `spec.metrics.windowSeconds`;
//! [`Twin::apply`] takes a [`Decision`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::engine::{Engine, Finished, Seq};
use super::metrics::{LogHistogram, Report, SlotReport};
use super::perf::{PerfModel, RooflinePerf};
use super::scenario::{LoadBalancer, Scenario};
use super::time::Nanos;
use super::trace::{ArrivalStream, LengthSampler};
use super::TwinError;
use crate::crd::LLMWorkloadSpec;
use crate::metrics::exposition::render;
use crate::metrics::scrape::PodSample;
use crate::metrics::vllm::LABEL_MODEL_NAME;
use crate::metrics::Endpoint;
use crate::observe::{build_observation, SlotState};
use crate::policy::observation::{Decision, Observation, SlotId};

/// The namespace the twin's workload is observed under (series keys and messages).
pub const TWIN_NAMESPACE: &str = "twin";

/// State of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Waiting for free GPUs in its pool.
    Pending,
    /// Placed; loading (cold start).
    Starting,
    /// Serving.
    Ready,
    /// Removed by a decision but serving until the replicas that replace it are ready.
    Retiring,
    /// Finishing its requests; takes no new ones.
    Draining,
    /// Gone.
    Stopped,
}

/// Identity and state of one replica (for mapping simulated replicas to Pods).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicaInfo {
    /// Twin-wide replica id (never reused).
    pub id: usize,
    /// Variant name.
    pub variant: String,
    /// Model id as in the spec (`model_name` label).
    pub model: String,
    /// Pool name.
    pub pool: String,
    /// Index among the live replicas of its slot, by creation order.
    pub index: u32,
    /// State.
    pub state: ReplicaState,
    /// GPUs it holds.
    pub gpus: u32,
    /// Requests running.
    pub running: u32,
    /// Requests waiting.
    pub waiting: u32,
    /// KV-cache usage, 0..=1.
    pub kv_usage: f64,
}

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

struct Replica {
    slot: usize,
    state: ReplicaState,
    engine: Engine,
    epoch: u64,
    gpus: u32,
    ready_since: Option<Nanos>,
    ready_ns: u64,
    placed_at: Option<Nanos>,
    became_ready_at: Option<Nanos>,
    initial: bool,
}

struct SlotInfo {
    variant: usize,
    pool: usize,
    desired: u32,
    perf: Arc<dyn PerfModel>,
    blocks: u32,
    max_len: u64,
    cold_start: Nanos,
    price_per_gpu_s: f64,
    quality: f64,
    finished: u64,
    gpu_s: f64,
    cost_usd: f64,
    live: u32,
    peak: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Iter { rep: usize, epoch: u64 },
    Ready { rep: usize },
}

/// The digital twin of one LLMWorkload.
pub struct Twin {
    spec: LLMWorkloadSpec,
    engine_cfg: super::engine::EngineConfig,
    name: String,
    seed: u64,
    now: Nanos,
    interval: Nanos,
    cap: Option<Nanos>,
    lb: LoadBalancer,
    gateway_limit: u64,
    heap: BinaryHeap<Reverse<(Nanos, u64, Ev)>>,
    seq: u64,
    arrivals: ArrivalStream,
    next_arrival: Option<super::trace::Arrival>,
    next_id: u64,
    replicas: Vec<Replica>,
    serving: Vec<usize>,
    rr: usize,
    slots: Vec<SlotInfo>,
    pool_used: Vec<u32>,
    pool_cap: Vec<Option<u32>>,
    pending: VecDeque<usize>,
    gateway: VecDeque<Seq>,
    // cost integration
    cost_usd: f64,
    gpu_s: f64,
    cost_rate_per_s: f64,
    active_gpus: u64,
    last_accrue: Nanos,
    last_action: Option<Nanos>,
    // metrics
    tick: TickStats,
    arrived: u64,
    finished: u64,
    rejected: u64,
    slo_met: u64,
    quality_sum: f64,
    quality_met_sum: f64,
    has_quality: bool,
    in_tokens: u64,
    out_tokens: u64,
    preemptions_seen: u64,
    h_queue: LogHistogram,
    h_ttft: LogHistogram,
    h_tpot: LogHistogram,
    h_e2e: LogHistogram,
    /// Scrapes the serving replicas each tick: the metrics part of the observation.
    scraper: crate::observe::PodScraper,
    kv_samples: f64,
    kv_sum: f64,
    slo_ttft_s: f64,
    slo_tpot_s: f64,
    prefix_queries: u64,
    prefix_hits: u64,
    busy_ns_stopped: u64,
    ready_ns_stopped: u64,
    scratch: Vec<Finished>,
}

impl Twin {
    /// A twin of the scenario's whole trace (or synthetic workload) at its recorded load.
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Twin, TwinError> {
        let w = &scenario.file.workload;
        Self::with_window(scenario, seed, w.start_frac, w.end_frac, w.load)
    }

    /// Like [`Twin::new`], but only the trace window `[start_frac, end_frac)` of the
    /// scenario's trace, with arrivals scaled by `load` (1.0 = as recorded; trace times are
    /// divided by it). For synthetic workloads the window selects that fraction of the
    /// duration and `load` multiplies the rate; for ServeGen workloads it selects that
    /// fraction of the configured slice and `load` multiplies the request counts.
    pub fn with_window(
        scenario: &Scenario,
        seed: u64,
        start_frac: f64,
        end_frac: f64,
        load: f64,
    ) -> Result<Twin, TwinError> {
        let arrivals = Self::arrival_stream(scenario, seed, start_frac, end_frac, load)?;
        let spec = scenario.spec.clone();
        let slots = Self::build_slots(scenario)?;
        let interval = Nanos::from_secs_f64(spec.policy.interval_seconds.max(1) as f64);
        let slo_ttft_s = spec.slo.ttft_ms / 1e3;
        let slo_tpot_s = spec.slo.tpot_ms / 1e3;
        let has_quality = spec.variants.iter().any(|v| v.quality.is_some());
        let mut twin = Twin {
            name: scenario.name.clone(),
            engine_cfg: scenario.file.engine.clone(),
            seed,
            now: Nanos::ZERO,
            interval,
            cap: scenario.file.max_duration_s.map(Nanos::from_secs_f64),
            lb: scenario.file.cluster.load_balancer,
            gateway_limit: scenario.file.cluster.gateway_queue_limit,
            heap: BinaryHeap::new(),
            seq: 0,
            arrivals,
            next_arrival: None,
            next_id: 0,
            replicas: Vec::new(),
            serving: Vec::new(),
            rr: 0,
            slots,
            pool_used: vec![0; spec.gpu_pools.len()],
            pool_cap: spec.gpu_pools.iter().map(|p| p.capacity_gpus).collect(),
            pending: VecDeque::new(),
            gateway: VecDeque::new(),
            cost_usd: 0.0,
            gpu_s: 0.0,
            cost_rate_per_s: 0.0,
            active_gpus: 0,
            last_accrue: Nanos::ZERO,
            last_action: None,
            tick: TickStats::default(),
            arrived: 0,
            finished: 0,
            rejected: 0,
            slo_met: 0,
            quality_sum: 0.0,
            quality_met_sum: 0.0,
            has_quality,
            in_tokens: 0,
            out_tokens: 0,
            preemptions_seen: 0,
            h_queue: LogHistogram::default(),
            h_ttft: LogHistogram::default(),
            h_tpot: LogHistogram::default(),
            h_e2e: LogHistogram::default(),
            scraper: crate::observe::PodScraper::default(),
            kv_samples: 0.0,
            kv_sum: 0.0,
            slo_ttft_s,
            slo_tpot_s,
            prefix_queries: 0,
            prefix_hits: 0,
            busy_ns_stopped: 0,
            ready_ns_stopped: 0,
            scratch: Vec::new(),
            spec,
        };
        twin.start_initial_fleet(scenario);
        twin.next_arrival = twin.arrivals.next_arrival();
        // The first scrape round: the initial replicas are up when the run starts.
        twin.scrape();
        Ok(twin)
    }

    /// The initial fleet (the scenario's `initialReplicas`, or one replica of each variant
    /// on its first pool), ready at time zero.
    fn start_initial_fleet(&mut self, scenario: &Scenario) {
        let initial: Vec<(usize, u32)> = if scenario.file.initial_replicas.is_empty() {
            (0..self.spec.variants.len())
                .filter_map(|v| scenario.allowed_pools(v).first().map(|&p| (self.slot_index(v, p), 1)))
                .collect()
        } else {
            scenario
                .file
                .initial_replicas
                .iter()
                .map(|r| {
                    let v = self.spec.variants.iter().position(|x| x.name == r.variant).unwrap_or(0);
                    let p = self.spec.gpu_pools.iter().position(|x| x.name == r.pool).unwrap_or(0);
                    (self.slot_index(v, p), r.replicas)
                })
                .collect()
        };
        for (s, n) in initial {
            self.slots[s].desired += n;
            for _ in 0..n {
                let id = self.create_replica(s);
                if self.replicas[id].state == ReplicaState::Starting {
                    self.replicas[id].initial = true;
                    self.make_ready(id);
                }
            }
        }
    }

    /// One slot per (variant, allowed pool): its performance model, KV blocks, longest
    /// request, cold start and price, from the scenario's catalog and engine settings.
    fn build_slots(scenario: &Scenario) -> Result<Vec<SlotInfo>, TwinError> {
        let spec = &scenario.spec;
        let mut slots = Vec::new();
        for (v, var) in spec.variants.iter().enumerate() {
            let model = scenario.catalog.model(&var.model, &format!("spec.variants[{v}].model"))?;
            for p in scenario.allowed_pools(v) {
                let pool = &spec.gpu_pools[p];
                let gpu = scenario.catalog.gpu(&pool.gpu_type, &format!("spec.gpuPools[{p}].gpuType"))?;
                let blocks = scenario.kv_blocks(v, p)?;
                let tp = var.gpus_per_replica.max(1);
                let cold = scenario.cold_start_s(v)?;
                let eng = &scenario.file.engine;
                let mut max_len =
                    (eng.max_model_len.unwrap_or(model.max_context) as u64).min(blocks as u64 * eng.block_size as u64);
                if !eng.enable_chunked_prefill {
                    // Without chunking a whole prompt (and, after a preemption, its generated
                    // tokens) must fit one iteration's token budget.
                    max_len = max_len.min(eng.max_num_batched_tokens as u64);
                }
                slots.push(SlotInfo {
                    variant: v,
                    pool: p,
                    desired: 0,
                    perf: {
                        let mut rp = RooflinePerf::new(model, gpu, tp);
                        scenario.file.perf.apply(&mut rp.eff);
                        Arc::new(rp)
                    },
                    blocks,
                    max_len,
                    cold_start: Nanos::from_secs_f64(cold),
                    price_per_gpu_s: pool.price_per_gpu_hour / 3600.0,
                    quality: var.quality.unwrap_or(0.0),
                    finished: 0,
                    gpu_s: 0.0,
                    cost_usd: 0.0,
                    live: 0,
                    peak: 0,
                });
            }
        }
        Ok(slots)
    }

    /// The arrivals a twin built by [`Twin::with_window`] with the same arguments replays:
    /// a second, identical stream (for the harness's clairvoyant reference, which reads the
    /// run's future).
    pub fn arrival_stream(
        scenario: &Scenario,
        seed: u64,
        start_frac: f64,
        end_frac: f64,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        Ok(match (&scenario.trace, &scenario.servegen, &scenario.file.workload.synthetic) {
            (Some(t), _, _) => ArrivalStream::replay_resampled(t.clone(), start_frac, end_frac, load, seed)?,
            (None, Some(sg), _) => {
                // The window fractions select part of the ServeGen slice; `load` multiplies
                // the slice's own load factor.
                let cfg = scenario.file.workload.servegen.as_ref();
                let (a, b) = cfg.map(|c| c.slice_s(sg.span_s())).unwrap_or((0.0, sg.span_s()));
                let base = cfg.map(|c| c.load).unwrap_or(1.0);
                let (f0, f1) = (start_frac.clamp(0.0, 1.0), end_frac.clamp(0.0, 1.0));
                ArrivalStream::servegen(sg.clone(), seed, a + (b - a) * f0, a + (b - a) * f1, base * load)?
            }
            (None, None, Some(syn)) => {
                let lengths = LengthSampler::new(&syn.lengths, &scenario.base_dir, "workload.synthetic.lengths")?;
                let dur = syn.duration_s * (end_frac - start_frac).clamp(0.0, 1.0);
                let max = syn.max_requests.map(|m| ((m as f64) * (end_frac - start_frac)).round() as u64);
                ArrivalStream::synthetic(syn.arrival.clone(), lengths, seed ^ 0x9e37_79b9_7f4a_7c15, dur, max, load)?
            }
            (None, None, None) => {
                return Err(TwinError::Config {
                    field: "workload".into(),
                    message: "no trace, synthetic or servegen workload".into(),
                })
            }
        })
    }

    fn slot_index(&self, v: usize, p: usize) -> usize {
        self.slots.iter().position(|s| s.variant == v && s.pool == p).unwrap_or(0)
    }

    /// The workload spec.
    pub fn spec(&self) -> &LLMWorkloadSpec {
        &self.spec
    }
    /// Simulated time, seconds.
    pub fn now_s(&self) -> f64 {
        self.now.as_secs_f64()
    }
    /// Simulated time.
    pub fn now(&self) -> Nanos {
        self.now
    }
    /// Seconds between control ticks (`spec.policy.intervalSeconds`).
    pub fn control_interval_s(&self) -> f64 {
        self.interval.as_secs_f64()
    }
    /// Requests the arrival stream still holds, if known (for progress bars).
    pub fn remaining_hint(&self) -> Option<u64> {
        self.arrivals.len_hint().map(|n| n + self.next_arrival.is_some() as u64)
    }
    /// Requests arrived so far.
    pub fn arrived(&self) -> u64 {
        self.arrived
    }

    /// Requests in flight (in engines or at the gateway).
    pub fn in_flight(&self) -> u64 {
        self.gateway.len() as u64 + self.replicas.iter().map(|r| r.engine.outstanding() as u64).sum::<u64>()
    }

    /// True when the arrivals are exhausted and every request has finished, or the time cap is reached.
    pub fn is_done(&self) -> bool {
        if self.cap.is_some_and(|c| self.now >= c) {
            return true;
        }
        self.next_arrival.is_none() && self.in_flight() == 0
    }

    fn push(&mut self, t: Nanos, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn accrue(&mut self, t: Nanos) {
        if t > self.last_accrue {
            let dt = t.since(self.last_accrue).as_secs_f64();
            let c = self.cost_rate_per_s * dt;
            let g = self.active_gpus as f64 * dt;
            self.cost_usd += c;
            self.gpu_s += g;
            self.tick.cost_usd += c;
            self.tick.gpu_seconds += g;
            self.last_accrue = t;
        }
    }

    fn slot_accrue(&mut self, slot: usize, gpus: u32, from: Nanos, to: Nanos) {
        let dt = to.since(from).as_secs_f64();
        let s = &mut self.slots[slot];
        s.gpu_s += gpus as f64 * dt;
        s.cost_usd += gpus as f64 * dt * s.price_per_gpu_s;
    }

    fn create_replica(&mut self, slot: usize) -> usize {
        let s = &self.slots[slot];
        let gpus = self.spec.variants[s.variant].gpus_per_replica.max(1);
        let engine = Engine::new(self.engine_cfg.clone(), s.perf.clone(), s.blocks);
        let id = self.replicas.len();
        self.replicas.push(Replica {
            slot,
            state: ReplicaState::Pending,
            engine,
            epoch: 0,
            gpus,
            ready_since: None,
            ready_ns: 0,
            placed_at: None,
            became_ready_at: None,
            initial: false,
        });
        self.slots[slot].live += 1;
        self.slots[slot].peak = self.slots[slot].peak.max(self.slots[slot].live);
        if !self.try_place(id) {
            self.pending.push_back(id);
        }
        id
    }

    fn try_place(&mut self, id: usize) -> bool {
        let slot = self.replicas[id].slot;
        let pool = self.slots[slot].pool;
        let gpus = self.replicas[id].gpus;
        if let Some(cap) = self.pool_cap[pool] {
            if self.pool_used[pool] + gpus > cap {
                return false;
            }
        }
        self.accrue(self.now);
        self.pool_used[pool] += gpus;
        self.active_gpus += gpus as u64;
        self.cost_rate_per_s += gpus as f64 * self.slots[slot].price_per_gpu_s;
        self.replicas[id].state = ReplicaState::Starting;
        self.replicas[id].ready_since = Some(self.now); // "holding GPUs since" until ready
        self.replicas[id].placed_at = Some(self.now);
        let t = self.now.plus(self.slots[slot].cold_start);
        self.push(t, Ev::Ready { rep: id });
        true
    }

    fn make_ready(&mut self, id: usize) {
        let r = &mut self.replicas[id];
        if r.state != ReplicaState::Starting {
            return;
        }
        let held_since = r.ready_since.unwrap_or(self.now);
        let (slot, gpus) = (r.slot, r.gpus);
        r.state = ReplicaState::Ready;
        r.ready_since = Some(self.now);
        r.became_ready_at = Some(self.now);
        self.slot_accrue(slot, gpus, held_since, self.now);
        self.replicas[id].ready_since = Some(self.now);
        self.rebuild_serving();
        // Replacements are up: retiring replicas may drain now.
        self.retire_check();
        while let Some(s) = self.gateway.pop_front() {
            self.dispatch(s);
        }
    }

    fn rebuild_serving(&mut self) {
        self.serving = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring))
            .map(|(i, _)| i)
            .collect();
    }

    fn retire_check(&mut self) {
        let starting = self.replicas.iter().any(|r| r.state == ReplicaState::Starting);
        if starting {
            return;
        }
        let ids: Vec<usize> = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == ReplicaState::Retiring)
            .map(|(i, _)| i)
            .collect();
        for id in ids {
            self.begin_drain(id);
        }
    }

    fn begin_drain(&mut self, id: usize) {
        if self.replicas[id].state != ReplicaState::Retiring {
            return;
        }
        self.replicas[id].state = ReplicaState::Draining;
        self.rebuild_serving();
        if self.replicas[id].engine.outstanding() == 0 && !self.replicas[id].engine.is_busy() {
            self.stop(id);
        }
    }

    fn stop(&mut self, id: usize) {
        self.accrue(self.now);
        let now = self.now;
        let r = &mut self.replicas[id];
        let prev = r.state;
        r.state = ReplicaState::Stopped;
        r.epoch += 1;
        let (slot, gpus) = (r.slot, r.gpus);
        let since = r.ready_since.take();
        if let Some(since) = since {
            if matches!(prev, ReplicaState::Ready | ReplicaState::Retiring | ReplicaState::Draining) {
                r.ready_ns += now.since(since).0;
            }
        }
        let busy = r.engine.counters.busy_ns;
        let ready_ns = r.ready_ns;
        self.prefix_queries += r.engine.counters.prefix_queries;
        self.prefix_hits += r.engine.counters.prefix_hits;
        self.busy_ns_stopped += busy;
        self.ready_ns_stopped += ready_ns;
        // Free memory of a stopped replica's engine.
        let fresh = Engine::new(self.engine_cfg.clone(), self.slots[slot].perf.clone(), 0);
        self.replicas[id].engine = fresh;
        if let Some(since) = since {
            if prev != ReplicaState::Pending {
                self.slot_accrue(slot, gpus, since, now);
            }
        }
        if prev != ReplicaState::Pending {
            let pool = self.slots[slot].pool;
            self.pool_used[pool] -= gpus;
            self.active_gpus -= gpus as u64;
            self.cost_rate_per_s -= gpus as f64 * self.slots[slot].price_per_gpu_s;
            if self.active_gpus == 0 {
                self.cost_rate_per_s = 0.0;
            }
        }
        self.slots[slot].live -= 1;
        self.rebuild_serving();
        // Freed GPUs: place pending replicas in order.
        let mut still = VecDeque::new();
        while let Some(p) = self.pending.pop_front() {
            if self.replicas[p].state == ReplicaState::Pending && !self.try_place(p) {
                still.push_back(p);
            }
        }
        self.pending = still;
        if prev == ReplicaState::Starting {
            // A replacement that was still loading is gone: retiring replicas may drain.
            self.retire_check();
        }
    }

    fn pick_replica(&mut self) -> Option<usize> {
        if self.serving.is_empty() {
            return None;
        }
        match self.lb {
            LoadBalancer::RoundRobin => {
                self.rr = (self.rr + 1) % self.serving.len();
                Some(self.serving[self.rr])
            }
            LoadBalancer::LeastOutstanding => {
                let n = self.serving.len();
                self.rr = (self.rr + 1) % n;
                let mut best = None;
                let mut best_load = usize::MAX;
                for k in 0..n {
                    let id = self.serving[(self.rr + k) % n];
                    let l = self.replicas[id].engine.outstanding();
                    if l < best_load {
                        best_load = l;
                        best = Some(id);
                        if l == 0 {
                            break;
                        }
                    }
                }
                best
            }
        }
    }

    fn dispatch(&mut self, s: Seq) {
        let Some(id) = self.pick_replica() else {
            if (self.gateway.len() as u64) < self.gateway_limit {
                self.gateway.push_back(s);
            } else {
                self.rejected += 1;
                self.tick.rejected += 1;
            }
            return;
        };
        let slot = self.replicas[id].slot;
        if (s.input as u64 + s.output as u64) > self.slots[slot].max_len {
            self.rejected += 1;
            self.tick.rejected += 1;
            return;
        }
        let now = self.now;
        let r = &mut self.replicas[id];
        r.engine.enqueue(s);
        if r.engine.is_busy() {
            if let Some(t) = r.engine.interrupt(now) {
                r.epoch += 1;
                let ep = r.epoch;
                self.push(t, Ev::Iter { rep: id, epoch: ep });
            }
        } else if let Some(t) = r.engine.start_iteration(now) {
            r.epoch += 1;
            let ep = r.epoch;
            self.push(t, Ev::Iter { rep: id, epoch: ep });
        }
    }

    fn on_finished(&mut self, slot: usize, f: Finished) {
        let ttft = f.first_token.since(f.arrival).as_secs_f64();
        let e2e = f.finish.since(f.arrival).as_secs_f64();
        let tpot = if f.output > 1 { f.finish.since(f.first_token).as_secs_f64() / (f.output - 1) as f64 } else { 0.0 };
        let queue = f.first_sched.since(f.arrival).as_secs_f64();
        let met = ttft <= self.slo_ttft_s && tpot <= self.slo_tpot_s;
        self.h_queue.add(queue);
        self.h_ttft.add(ttft);
        self.h_tpot.add(tpot);
        self.h_e2e.add(e2e);
        self.finished += 1;
        self.tick.finished += 1;
        self.slots[slot].finished += 1;
        let q = self.slots[slot].quality;
        self.quality_sum += q;
        self.tick.quality_sum += q;
        self.in_tokens += f.input as u64;
        self.out_tokens += f.output as u64;
        self.tick.input_tokens += f.input as u64;
        self.tick.output_tokens += f.output as u64;
        if met {
            self.slo_met += 1;
            self.tick.slo_met += 1;
            self.quality_met_sum += q;
            self.tick.quality_met_sum += q;
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Ready { rep } => self.make_ready(rep),
            Ev::Iter { rep, epoch } => {
                if self.replicas[rep].epoch != epoch || self.replicas[rep].state == ReplicaState::Stopped {
                    return;
                }
                let now = self.now;
                let mut out = std::mem::take(&mut self.scratch);
                out.clear();
                let r = &mut self.replicas[rep];
                let pre_before = r.engine.counters.preemptions;
                r.engine.finish_iteration(now, &mut out);
                let pre = r.engine.counters.preemptions - pre_before;
                let next = r.engine.start_iteration(now);
                let pre2 = r.engine.counters.preemptions - pre_before - pre;
                if let Some(t) = next {
                    r.epoch += 1;
                    let ep = r.epoch;
                    self.push(t, Ev::Iter { rep, epoch: ep });
                }
                self.tick.preemptions += pre + pre2;
                self.preemptions_seen += pre + pre2;
                let slot = self.replicas[rep].slot;
                for f in out.drain(..) {
                    self.on_finished(slot, f);
                }
                self.scratch = out;
                let r = &self.replicas[rep];
                if r.state == ReplicaState::Draining && r.engine.outstanding() == 0 && !r.engine.is_busy() {
                    self.stop(rep);
                }
            }
        }
    }

    /// Advances to time `until`, processing every event and arrival up to it.
    fn run_until(&mut self, until: Nanos) {
        loop {
            let ht = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let at = self.next_arrival.as_ref().map(|a| a.at);
            let take_heap = match (ht, at) {
                (Some(h), Some(a)) => h <= a,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let t = if take_heap { ht.unwrap_or(until) } else { at.unwrap_or(until) };
            if t > until {
                break;
            }
            debug_assert!(t >= self.now, "time went back");
            self.now = t;
            if take_heap {
                if let Some(Reverse((_, _, ev))) = self.heap.pop() {
                    self.handle(ev);
                }
            } else if let Some(a) = self.next_arrival.take() {
                self.arrived += 1;
                self.tick.arrived += 1;
                self.next_id += 1;
                let s = Seq::new(self.next_id, a.at, a.input_tokens, a.output_tokens, a.hash_ids);
                self.dispatch(s);
                self.next_arrival = self.arrivals.next_arrival();
            }
        }
        self.now = self.now.max(until);
        self.accrue(self.now);
    }

    /// Advances one control interval and returns what happened in it.
    pub fn step(&mut self) -> TickStats {
        let until = self.now.plus(self.interval);
        let until = match self.cap {
            Some(c) if c < until => c.max(self.now),
            _ => until,
        };
        self.tick = TickStats::default();
        self.run_until(until);
        // Sample KV usage of serving replicas (for the report).
        let n = self.serving.len();
        if n > 0 {
            let kv: f64 = self.serving.iter().map(|&i| self.replicas[i].engine.kv_usage()).sum::<f64>() / n as f64;
            self.kv_sum += kv;
            self.kv_samples += 1.0;
        }
        self.scrape();
        let mut t = std::mem::take(&mut self.tick);
        t.time_s = self.now.as_secs_f64();
        t
    }

    /// The observation a policy sees now, built by the one builder the operator uses
    /// ([`crate::observe`]): the fleet part from the twin's replicas, the metrics part from
    /// the last scrape of the serving replicas' vLLM metrics (taken at the end of every
    /// [`Twin::step`]). Exact per-request latencies go to [`Twin::report`], not here.
    pub fn observe(&self) -> Observation {
        let mut current = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (si, s) in self.slots.iter().enumerate() {
            let id = SlotId::new(&self.spec.variants[s.variant].name, &self.spec.gpu_pools[s.pool].name);
            let mut st = SlotState { desired: s.desired, ..Default::default() };
            for r in self.replicas.iter().filter(|r| r.slot == si) {
                match r.state {
                    ReplicaState::Ready | ReplicaState::Retiring => {
                        st.ready += 1;
                        st.existing += 1;
                    }
                    ReplicaState::Pending | ReplicaState::Starting => st.existing += 1,
                    _ => {}
                }
            }
            current.insert(id.clone(), s.desired);
            states.insert(id, st);
        }
        let since = self.last_action.map(|t| self.now.since(t).as_secs_f64());
        let fleet = build_observation(&self.spec, &current, &states, self.now.as_secs_f64(), since);
        self.scraper.complete(fleet)
    }

    /// Scrapes every replica that is in its Service's endpoints (ready, or asked to
    /// retire but still serving until its replacement is ready), as the operator's direct
    /// scrape or Prometheus would.
    fn scrape(&mut self) {
        let mut pods = Vec::with_capacity(self.serving.len());
        for (id, r) in self.replicas.iter().enumerate() {
            if !matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring) {
                continue;
            }
            let s = &self.slots[r.slot];
            let endpoint = Endpoint {
                variant: self.spec.variants[s.variant].name.clone(),
                pool: self.spec.gpu_pools[s.pool].name.clone(),
                address: format!("replica-{id}"),
            };
            pods.push((endpoint, r.engine.sample()));
        }
        let now = self.now.as_secs_f64();
        self.scraper.scrape(TWIN_NAMESPACE, &self.name, &self.spec, now, pods);
    }

    /// Applies a decision: desired replicas per (variant, pool). Slots the decision does not
    /// name keep their count; unknown slots and slots the variant may not use are ignored.
    /// New replicas start (or wait for GPUs); removed ones stop if not yet serving, or
    /// drain — after any replacement that is starting has become ready.
    pub fn apply(&mut self, decision: &Decision) {
        self.accrue(self.now);
        let mut changed = false;
        let mut downs: Vec<(usize, u32)> = Vec::new();
        for t in &decision.targets {
            let Some(si) = self.slots.iter().position(|s| {
                self.spec.variants[s.variant].name == t.variant && self.spec.gpu_pools[s.pool].name == t.pool
            }) else {
                continue;
            };
            if self.slots[si].blocks == 0 {
                continue;
            }
            let live: Vec<usize> = self.live_replicas(si);
            let cur = live.len() as u32;
            self.slots[si].desired = t.replicas;
            if t.replicas > cur {
                for _ in cur..t.replicas {
                    self.create_replica(si);
                }
                changed = true;
            } else if t.replicas < cur {
                downs.push((si, cur - t.replicas));
                changed = true;
            }
        }
        // Scale-downs after scale-ups, so a switch starts the new replicas first.
        for (si, mut n) in downs {
            let live = self.live_replicas(si);
            // Newest non-serving first (pending, then starting), then serving newest first.
            let mut order: Vec<usize> =
                live.iter().rev().filter(|&&i| self.replicas[i].state == ReplicaState::Pending).copied().collect();
            order.extend(live.iter().rev().filter(|&&i| self.replicas[i].state == ReplicaState::Starting));
            order.extend(live.iter().rev().filter(|&&i| self.replicas[i].state == ReplicaState::Ready));
            for id in order {
                if n == 0 {
                    break;
                }
                n -= 1;
                match self.replicas[id].state {
                    ReplicaState::Pending => {
                        self.pending.retain(|&p| p != id);
                        self.stop(id);
                    }
                    ReplicaState::Starting => self.stop(id),
                    _ => {
                        self.replicas[id].state = ReplicaState::Retiring;
                    }
                }
            }
        }
        self.retire_check();
        self.rebuild_serving();
        if changed {
            self.last_action = Some(self.now);
        }
    }

    fn live_replicas(&self, si: usize) -> Vec<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.slot == si && matches!(r.state, ReplicaState::Pending | ReplicaState::Starting | ReplicaState::Ready)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Every replica that is not stopped, with its identity and state.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let mut idx = vec![0u32; self.slots.len()];
        let mut out = Vec::new();
        for (id, r) in self.replicas.iter().enumerate() {
            if r.state == ReplicaState::Stopped {
                continue;
            }
            let s = &self.slots[r.slot];
            let var = &self.spec.variants[s.variant];
            out.push(ReplicaInfo {
                id,
                variant: var.name.clone(),
                model: var.model.clone(),
                pool: self.spec.gpu_pools[s.pool].name.clone(),
                index: idx[r.slot],
                state: r.state,
                gpus: r.gpus,
                running: r.engine.num_running() as u32,
                waiting: r.engine.num_waiting() as u32,
                kv_usage: r.engine.kv_usage(),
            });
            idx[r.slot] += 1;
        }
        out
    }

    /// One replica's metrics as vLLM exposes them (the families of
    /// [`crate::metrics::vllm::METRICS`]), or `None` if it is not serving (vLLM only
    /// exposes metrics once the server is up; a draining replica still answers).
    pub fn replica_sample(&self, id: usize) -> Option<PodSample> {
        let r = self.replicas.get(id)?;
        matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring | ReplicaState::Draining)
            .then(|| r.engine.sample())
    }

    /// One replica's metrics in the Prometheus text format with vLLM's names, help texts
    /// and `model_name` label, rendered from [`Twin::replica_sample`] by
    /// [`crate::metrics::exposition::render`]; `None` if it is not serving.
    pub fn replica_metrics_text(&self, id: usize) -> Option<String> {
        let sample = self.replica_sample(id)?;
        let model = &self.spec.variants[self.slots[self.replicas[id].slot].variant].model;
        Some(render(&sample, &[(LABEL_MODEL_NAME, model.as_str())]))
    }

    /// The run's latency histograms so far (TTFT, TPOT, end-to-end; seconds), for CDFs.
    pub fn latency_histograms(&self) -> [&super::metrics::LogHistogram; 3] {
        [&self.h_ttft, &self.h_tpot, &self.h_e2e]
    }

    /// The report of the run so far.
    pub fn report(&self) -> Report {
        let sim = self.now.as_secs_f64();
        let per_s = |x: f64| if sim > 0.0 { x / sim } else { 0.0 };
        let (mut busy, mut ready) = (self.busy_ns_stopped, self.ready_ns_stopped);
        let (mut pq, mut ph) = (self.prefix_queries, self.prefix_hits);
        let mut slot_extra = vec![(0.0f64, 0.0f64); self.slots.len()];
        for r in &self.replicas {
            if r.state == ReplicaState::Stopped {
                continue;
            }
            busy += r.engine.counters.busy_ns;
            pq += r.engine.counters.prefix_queries;
            ph += r.engine.counters.prefix_hits;
            if let Some(since) = r.ready_since {
                if matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring | ReplicaState::Draining) {
                    ready += r.ready_ns + self.now.since(since).0;
                }
                if r.state != ReplicaState::Pending {
                    let dt = self.now.since(since).as_secs_f64();
                    let s = &self.slots[r.slot];
                    slot_extra[r.slot].0 += r.gpus as f64 * dt;
                    slot_extra[r.slot].1 += r.gpus as f64 * dt * s.price_per_gpu_s;
                }
            }
        }
        let prefix_on = self.slots.iter().any(|_| pq > 0);
        Report {
            scenario: self.name.clone(),
            seed: self.seed,
            simulated_s: sim,
            arrived: self.arrived,
            finished: self.finished,
            rejected: self.rejected,
            in_flight: self.in_flight(),
            throughput_rps: per_s(self.finished as f64),
            input_tokens_per_s: per_s(self.in_tokens as f64),
            output_tokens_per_s: per_s(self.out_tokens as f64),
            queue_s: self.h_queue.summary(),
            ttft_s: self.h_ttft.summary(),
            tpot_s: self.h_tpot.summary(),
            e2e_s: self.h_e2e.summary(),
            slo_ttft_ms: self.spec.slo.ttft_ms,
            slo_tpot_ms: self.spec.slo.tpot_ms,
            slo_attainment: (self.finished > 0).then(|| self.slo_met as f64 / self.finished as f64),
            goodput_rps: per_s(self.slo_met as f64),
            preemptions: self.preemptions_seen,
            prefix_cache_hit_rate: prefix_on.then(|| ph as f64 / pq as f64),
            gpu_hours: self.gpu_s / 3600.0,
            cost_usd: self.cost_usd,
            cost_per_1k_requests_usd: (self.finished > 0).then(|| self.cost_usd / self.finished as f64 * 1000.0),
            utilisation: if ready > 0 { busy as f64 / ready as f64 } else { 0.0 },
            mean_kv_usage: if self.kv_samples > 0.0 { self.kv_sum / self.kv_samples } else { 0.0 },
            mean_quality: (self.has_quality && self.finished > 0).then(|| self.quality_sum / self.finished as f64),
            good_quality_per_usd: (self.has_quality && self.cost_usd > 0.0)
                .then(|| self.quality_met_sum / self.cost_usd),
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| SlotReport {
                    variant: self.spec.variants[s.variant].name.clone(),
                    pool: self.spec.gpu_pools[s.pool].name.clone(),
                    finished: s.finished,
                    gpu_hours: (s.gpu_s + slot_extra[i].0) / 3600.0,
                    cost_usd: s.cost_usd + slot_extra[i].1,
                    peak_replicas: s.peak,
                })
                .collect(),
        }
    }

    /// Checks internal invariants (for tests): KV blocks within capacity, pool GPUs within
    /// capacity, request conservation.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, r) in self.replicas.iter().enumerate() {
            r.engine.check_invariants().map_err(|e| format!("replica {i}: {e}"))?;
            if r.engine.used_blocks() > r.engine.total_blocks() {
                return Err(format!("replica {i}: KV oversubscribed"));
            }
            if matches!(r.state, ReplicaState::Pending | ReplicaState::Starting) && r.engine.outstanding() > 0 {
                return Err(format!("replica {i} has requests before it is ready"));
            }
            if let (Some(p), Some(rd)) = (r.placed_at, r.became_ready_at) {
                if !r.initial && rd.since(p) < self.slots[r.slot].cold_start {
                    return Err(format!("replica {i} ready {:?} after placement, before its cold start", rd.since(p)));
                }
            }
        }
        for (p, used) in self.pool_used.iter().enumerate() {
            if let Some(c) = self.pool_cap[p] {
                if *used > c {
                    return Err(format!("pool {p}: {used} GPUs used > capacity {c}"));
                }
            }
            let held: u32 = self
                .replicas
                .iter()
                .filter(|r| {
                    self.slots[r.slot].pool == p
                        && matches!(
                            r.state,
                            ReplicaState::Starting
                                | ReplicaState::Ready
                                | ReplicaState::Retiring
                                | ReplicaState::Draining
                        )
                })
                .map(|r| r.gpus)
                .sum();
            if held != *used {
                return Err(format!("pool {p}: accounting {used} != held {held}"));
            }
        }
        if self.arrived != self.finished + self.rejected + self.in_flight() {
            return Err(format!(
                "conservation: arrived {} != finished {} + rejected {} + in flight {}",
                self.arrived,
                self.finished,
                self.rejected,
                self.in_flight()
            ));
        }
        Ok(())
    }
}
