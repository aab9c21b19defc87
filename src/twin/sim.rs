//! The twin proper: the stepping API policies are trained and judged through, over its
//! parts: the [`EventQueue`] (iteration ends, replicas becoming ready, in integer
//! nanoseconds), the [`Fleet`] (slots, replicas, pool GPUs), the [`Gateway`] (arrivals,
//! load balancing, held requests) and the [`Meters`] (counters, histograms, cost).
//!
//! Heap events are handled before arrivals of the same instant. A replica's iteration
//! event carries an epoch so that a decode jump cut short by an arrival invalidates its
//! old event. Cost accrues per GPU from the start of loading to the stop, at the pool's
//! price.
//!
//! **Control**: [`Twin::step`] advances one control interval (`spec.policy.intervalSeconds`);
//! at its end the serving replicas are scraped (their vLLM metrics, as a pod exposes
//! them), and [`Twin::observe`] builds the [`Observation`] from that scrape with the code
//! the live operator uses ([`crate::observe`]), over the last `spec.metrics.windowSeconds`;
//! [`Twin::apply`] takes a [`Decision`].

use super::engine::{Finished, Seq};
use super::events::{Event, EventQueue};
use super::fleet::{Fleet, ReplicaInfo, ReplicaState};
use super::gateway::Gateway;
use super::histogram::Histogram;
use super::meters::{Meters, TickStats};
use super::metrics::Report;
use super::scenario::{RunWindow, Scenario};
use super::time::Nanos;
use super::traces::{ArrivalStream, LengthSampler};
use super::TwinError;
use crate::crd::LLMWorkloadSpec;
use crate::metrics::exposition::render;
use crate::metrics::scrape::PodSample;
use crate::metrics::vllm::LABEL_MODEL_NAME;
use crate::metrics::Endpoint;
use crate::observe::build_observation;
use crate::policy::observation::{Decision, Observation};

/// The namespace the twin's workload is observed under (series keys and messages).
pub const TWIN_NAMESPACE: &str = "twin";

/// The digital twin of one LLMWorkload.
pub struct Twin {
    spec: LLMWorkloadSpec,
    name: String,
    seed: u64,
    now: Nanos,
    interval: Nanos,
    cap: Option<Nanos>,
    last_action: Option<Nanos>,
    events: EventQueue,
    fleet: Fleet,
    gateway: Gateway,
    meters: Meters,
    /// Scrapes the serving replicas each tick: the metrics part of the observation.
    scraper: crate::observe::PodScraper,
    has_quality: bool,
    scratch: Vec<Finished>,
}

impl Twin {
    /// A twin of the scenario's whole trace (or synthetic workload) at its recorded load.
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Twin, TwinError> {
        let w = &scenario.file.workload;
        Self::with_window(scenario, RunWindow::new(seed, (w.start_frac, w.end_frac), w.load))
    }

    /// Like [`Twin::new`], but only the trace window `[start_frac, end_frac)` of the
    /// scenario's trace, with arrivals scaled by `load` (1.0 = as recorded; trace times are
    /// divided by it). For synthetic workloads the window selects that fraction of the
    /// duration and `load` multiplies the rate; for ServeGen workloads it selects that
    /// fraction of the configured slice and `load` multiplies the request counts.
    pub fn with_window(scenario: &Scenario, run: RunWindow) -> Result<Twin, TwinError> {
        let arrivals = Self::arrival_stream(scenario, run)?;
        let spec = scenario.spec.clone();
        let cluster = &scenario.file.cluster;
        let mut twin = Twin {
            name: scenario.name.clone(),
            seed: run.seed,
            now: Nanos::ZERO,
            interval: Nanos::from_secs_f64(spec.policy.interval_seconds.max(1) as f64),
            cap: scenario.file.max_duration_s.map(Nanos::from_secs_f64),
            last_action: None,
            events: EventQueue::default(),
            fleet: Fleet::build(scenario)?,
            gateway: Gateway::new(arrivals, cluster.load_balancer, cluster.gateway_queue_limit),
            meters: Meters::new(&spec),
            scraper: crate::observe::PodScraper::default(),
            has_quality: spec.variants.iter().any(|v| v.quality.is_some()),
            scratch: Vec::new(),
            spec,
        };
        twin.start_initial_fleet(scenario);
        // The first scrape round: the initial replicas are up when the run starts.
        twin.scrape();
        Ok(twin)
    }

    /// The initial fleet (the scenario's `initialReplicas`, or one replica of each variant
    /// on its first pool), ready at time zero.
    fn start_initial_fleet(&mut self, scenario: &Scenario) {
        let initial: Vec<(usize, u32)> = if scenario.file.initial_replicas.is_empty() {
            (0..self.spec.variants.len())
                .filter_map(|v| scenario.allowed_pools(v).first().map(|&p| (self.fleet.slot_index(v, p), 1)))
                .collect()
        } else {
            scenario
                .file
                .initial_replicas
                .iter()
                .map(|r| {
                    let v = self.spec.variants.iter().position(|x| x.name == r.variant).unwrap_or(0);
                    let p = self.spec.gpu_pools.iter().position(|x| x.name == r.pool).unwrap_or(0);
                    (self.fleet.slot_index(v, p), r.replicas)
                })
                .collect()
        };
        for (s, n) in initial {
            self.fleet.slots[s].desired += n;
            for _ in 0..n {
                let id = self.create_replica(s);
                if self.fleet.replicas[id].state == ReplicaState::Starting {
                    self.fleet.replicas[id].initial = true;
                    self.make_ready(id);
                }
            }
        }
    }

    /// The arrivals a twin built by [`Twin::with_window`] with the same window replays:
    /// a second, identical stream (for the harness's clairvoyant reference, which reads the
    /// run's future).
    pub fn arrival_stream(scenario: &Scenario, run: RunWindow) -> Result<ArrivalStream, TwinError> {
        let RunWindow { seed, start_frac, end_frac, load } = run;
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
        self.gateway.remaining_hint()
    }
    /// Requests arrived so far.
    pub fn arrived(&self) -> u64 {
        self.meters.arrived
    }

    /// True when the arrival stream has no request left to deliver.
    pub fn arrivals_exhausted(&self) -> bool {
        self.gateway.exhausted()
    }

    /// Requests in flight (in engines or at the gateway).
    pub fn in_flight(&self) -> u64 {
        self.gateway.held() as u64 + self.fleet.outstanding()
    }

    /// True when the arrivals are exhausted and every request has finished, or the time cap is reached.
    pub fn is_done(&self) -> bool {
        if self.cap.is_some_and(|c| self.now >= c) {
            return true;
        }
        self.gateway.exhausted() && self.in_flight() == 0
    }

    fn create_replica(&mut self, slot: usize) -> usize {
        let id = self.fleet.add_replica(slot);
        self.fleet.replicas[id].created_at = self.now;
        if !self.try_place(id) {
            self.fleet.pending.push_back(id);
        }
        id
    }

    fn try_place(&mut self, id: usize) -> bool {
        if !self.fleet.fits(id) {
            return false;
        }
        self.meters.accrue(self.now);
        let ready_at = self.fleet.place(id, self.now);
        let r = &self.fleet.replicas[id];
        self.meters.cost.hold(r.gpus, self.fleet.slots[r.slot].price_per_gpu_s);
        self.events.push(ready_at, Event::Ready { replica: id });
        true
    }

    fn make_ready(&mut self, id: usize) {
        if !self.fleet.mark_ready(id, self.now) {
            return;
        }
        // Replacements are up: retiring replicas may drain now.
        self.retire_check();
        for s in self.gateway.release_held() {
            self.dispatch(s);
        }
    }

    fn retire_check(&mut self) {
        if self.fleet.any_starting() {
            return;
        }
        for id in self.fleet.in_state(ReplicaState::Retiring) {
            self.begin_drain(id);
        }
    }

    fn begin_drain(&mut self, id: usize) {
        if self.fleet.replicas[id].state != ReplicaState::Retiring {
            return;
        }
        self.fleet.replicas[id].state = ReplicaState::Draining;
        self.fleet.rebuild_serving();
        let e = &self.fleet.replicas[id].engine;
        if e.outstanding() == 0 && !e.is_busy() {
            self.stop(id);
        }
    }

    fn stop(&mut self, id: usize) {
        self.meters.accrue(self.now);
        let (prev, released) = self.fleet.stop(id, self.now);
        if let Some((gpus, price)) = released {
            self.meters.cost.release(gpus, price);
        }
        self.place_pending();
        if prev == ReplicaState::Starting {
            // A replacement that was still loading is gone: retiring replicas may drain.
            self.retire_check();
        }
    }

    /// Places pending replicas, oldest first, while their pools have GPUs for them.
    fn place_pending(&mut self) {
        let mut still = std::collections::VecDeque::new();
        while let Some(p) = self.fleet.pending.pop_front() {
            if self.fleet.replicas[p].state == ReplicaState::Pending && !self.try_place(p) {
                still.push_back(p);
            }
        }
        self.fleet.pending = still;
    }

    fn dispatch(&mut self, s: Seq) {
        let fleet = &self.fleet;
        let Some(id) = self.gateway.pick(&fleet.serving, |i| fleet.replicas[i].engine.outstanding()) else {
            if !self.gateway.hold(s) {
                self.meters.rejection();
            }
            return;
        };
        let slot = self.fleet.replicas[id].slot;
        if (s.input as u64 + s.output as u64) > self.fleet.slots[slot].max_len {
            self.meters.rejection();
            return;
        }
        let now = self.now;
        let r = &mut self.fleet.replicas[id];
        r.engine.enqueue(s);
        let next = if r.engine.is_busy() { r.engine.interrupt(now) } else { r.engine.start_iteration(now) };
        if let Some(t) = next {
            r.epoch += 1;
            let epoch = r.epoch;
            self.events.push(t, Event::Iteration { replica: id, epoch });
        }
    }

    fn end_iteration(&mut self, rep: usize, epoch: u64) {
        let r = &self.fleet.replicas[rep];
        if r.epoch != epoch || r.state == ReplicaState::Stopped {
            return;
        }
        let now = self.now;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let r = &mut self.fleet.replicas[rep];
        let pre_before = r.engine.counters.preemptions;
        r.engine.finish_iteration(now, &mut out);
        let next = r.engine.start_iteration(now);
        if let Some(t) = next {
            r.epoch += 1;
            let epoch = r.epoch;
            self.events.push(t, Event::Iteration { replica: rep, epoch });
        }
        let preempted = r.engine.counters.preemptions - pre_before;
        self.meters.preempted(preempted);
        let slot = self.fleet.replicas[rep].slot;
        let quality = self.fleet.slots[slot].quality;
        for f in out.drain(..) {
            self.meters.finished(&f, quality);
            self.fleet.slots[slot].finished += 1;
        }
        self.scratch = out;
        let r = &self.fleet.replicas[rep];
        if r.state == ReplicaState::Draining && r.engine.outstanding() == 0 && !r.engine.is_busy() {
            self.stop(rep);
        }
    }

    /// Advances to time `until`, processing every event and arrival up to it.
    fn run_until(&mut self, until: Nanos) {
        loop {
            // Heap events go before arrivals of the same instant.
            let (t, take_heap) = match (self.events.next_time(), self.gateway.next_arrival_time()) {
                (Some(h), Some(a)) if h <= a => (h, true),
                (_, Some(a)) => (a, false),
                (Some(h), None) => (h, true),
                (None, None) => break,
            };
            if t > until {
                break;
            }
            debug_assert!(t >= self.now, "time went back");
            self.now = t;
            if take_heap {
                match self.events.pop() {
                    Some(Event::Ready { replica }) => self.make_ready(replica),
                    Some(Event::Iteration { replica, epoch }) => self.end_iteration(replica, epoch),
                    None => {}
                }
            } else if let Some(s) = self.gateway.take_arrival() {
                self.meters.arrival();
                self.dispatch(s);
            }
        }
        self.now = self.now.max(until);
        self.meters.accrue(self.now);
    }

    /// Advances one control interval and returns what happened in it.
    pub fn step(&mut self) -> TickStats {
        let until = self.now.plus(self.interval);
        let until = match self.cap {
            Some(c) if c < until => c.max(self.now),
            _ => until,
        };
        self.meters.tick = TickStats::default();
        self.run_until(until);
        self.end_tick()
    }

    /// Runs the simulation up to `until` (at most the time cap) inside the current control
    /// interval, without ending it: for a world of several twins that share GPU pools and
    /// hand freed GPUs between them more often than once a tick
    /// ([`super::cluster::ClusterTwin`]). [`Twin::end_tick`] ends the interval.
    pub fn run_to(&mut self, until: Nanos) {
        let until = match self.cap {
            Some(c) if c < until => c.max(self.now),
            _ => until,
        };
        if until > self.now {
            self.run_until(until);
        }
    }

    /// Ends the control interval that [`Twin::run_to`] advanced: samples KV usage, scrapes
    /// the serving replicas, and returns what happened in the interval.
    pub fn end_tick(&mut self) -> TickStats {
        // Sample KV usage of serving replicas (for the report).
        if let Some(kv) = self.fleet.mean_serving_kv() {
            self.meters.sample_kv(kv);
        }
        self.scrape();
        self.meters.take_tick(self.now)
    }

    /// GPUs of pool `pool` (index in the spec) this twin's replicas hold now (loading,
    /// serving or draining).
    pub fn pool_gpus_held(&self, pool: usize) -> u32 {
        self.fleet.pool_used.get(pool).copied().unwrap_or(0)
    }

    /// Replicas waiting for GPUs: (pool index, GPUs, when asked for), oldest first.
    pub fn pending_replicas(&self) -> Vec<(usize, u32, Nanos)> {
        self.fleet
            .pending
            .iter()
            .map(|&id| &self.fleet.replicas[id])
            .filter(|r| r.state == ReplicaState::Pending)
            .map(|r| (self.fleet.slots[r.slot].pool, r.gpus, r.created_at))
            .collect()
    }

    /// Sets how many GPUs of pool `pool` (index in the spec) this twin may hold (`None`:
    /// unbounded), then places pending replicas that now fit. A capacity below what is
    /// held stops nothing: it only keeps new replicas pending.
    pub fn set_pool_capacity(&mut self, pool: usize, capacity: Option<u32>) {
        if let Some(c) = self.fleet.pool_cap.get_mut(pool) {
            *c = capacity;
            self.place_pending();
        }
    }

    /// The observation a policy sees now, built by the one builder the operator uses
    /// ([`crate::observe`]): the fleet part from the twin's replicas, the metrics part from
    /// the last scrape of the serving replicas' vLLM metrics (taken at the end of every
    /// [`Twin::step`]). Exact per-request latencies go to [`Twin::report`], not here.
    pub fn observe(&self) -> Observation {
        let (current, states) = self.fleet.slot_states();
        let since = self.last_action.map(|t| self.now.since(t).as_secs_f64());
        let fleet = build_observation(&self.spec, &current, &states, self.now.as_secs_f64(), since);
        self.scraper.complete(fleet)
    }

    /// Scrapes every replica that is in its Service's endpoints (ready, or asked to
    /// retire but still serving until its replacement is ready), as the operator's direct
    /// scrape or Prometheus would.
    fn scrape(&mut self) {
        let mut pods = Vec::with_capacity(self.fleet.serving.len());
        for (id, r) in self.fleet.replicas.iter().enumerate() {
            if !r.state.is_serving() {
                continue;
            }
            let s = &self.fleet.slots[r.slot];
            let endpoint =
                Endpoint { variant: s.id.variant.clone(), pool: s.id.pool.clone(), address: format!("replica-{id}") };
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
        self.meters.accrue(self.now);
        let mut changed = false;
        let mut downs: Vec<(usize, u32)> = Vec::new();
        for t in &decision.targets {
            let Some(si) = self.fleet.slot_named(&t.variant, &t.pool) else {
                continue;
            };
            if self.fleet.slots[si].blocks == 0 {
                continue;
            }
            let cur = self.fleet.live(si).len() as u32;
            self.fleet.slots[si].desired = t.replicas;
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
        for (si, n) in downs {
            self.scale_down(si, n);
        }
        self.retire_check();
        self.fleet.rebuild_serving();
        if changed {
            self.last_action = Some(self.now);
        }
    }

    /// Removes `n` replicas of slot `si`: newest non-serving first (pending, then
    /// starting; they stop at once), then serving ones newest first (they retire).
    fn scale_down(&mut self, si: usize, n: u32) {
        let live = self.fleet.live(si);
        let state = |i: &usize| self.fleet.replicas[*i].state;
        let mut order: Vec<usize> = Vec::with_capacity(live.len());
        for want in [ReplicaState::Pending, ReplicaState::Starting, ReplicaState::Ready] {
            order.extend(live.iter().rev().filter(|i| state(i) == want));
        }
        for id in order.into_iter().take(n as usize) {
            match self.fleet.replicas[id].state {
                ReplicaState::Pending => {
                    self.fleet.pending.retain(|&p| p != id);
                    self.stop(id);
                }
                ReplicaState::Starting => self.stop(id),
                _ => self.fleet.replicas[id].state = ReplicaState::Retiring,
            }
        }
    }

    /// Every replica that is not stopped, with its identity and state.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.fleet.infos()
    }

    /// One replica's metrics as vLLM exposes them (the families of
    /// [`crate::metrics::vllm::METRICS`]), or `None` if it is not serving (vLLM only
    /// exposes metrics once the server is up; a draining replica still answers).
    pub fn replica_sample(&self, id: usize) -> Option<PodSample> {
        let r = self.fleet.replicas.get(id)?;
        (r.state.is_serving() || r.state == ReplicaState::Draining).then(|| r.engine.sample())
    }

    /// One replica's metrics in the Prometheus text format with vLLM's names, help texts
    /// and `model_name` label, rendered from [`Twin::replica_sample`] by
    /// [`crate::metrics::exposition::render`]; `None` if it is not serving.
    pub fn replica_metrics_text(&self, id: usize) -> Option<String> {
        self.replica_metrics_text_scaled(id, 1.0)
    }

    /// [`Twin::replica_metrics_text`] with counters and histograms multiplied by
    /// `counts_factor` ([`PodSample::scale_counts`]; gauges as they are): what `twin-serve`
    /// serves when simulated time runs faster than wall time.
    pub fn replica_metrics_text_scaled(&self, id: usize, counts_factor: f64) -> Option<String> {
        let mut sample = self.replica_sample(id)?;
        if counts_factor != 1.0 {
            sample.scale_counts(counts_factor);
        }
        let model = &self.fleet.slots[self.fleet.replicas[id].slot].model;
        Some(render(&sample, &[(LABEL_MODEL_NAME, model.as_str())]))
    }

    /// The run's latency histograms so far (TTFT, TPOT, end-to-end; seconds), for CDFs.
    pub fn latency_histograms(&self) -> [&Histogram; 3] {
        [&self.meters.ttft, &self.meters.tpot, &self.meters.e2e]
    }

    /// The report of the run so far.
    pub fn report(&self) -> Report {
        let m = &self.meters;
        let sim = self.now.as_secs_f64();
        let per_s = |x: f64| if sim > 0.0 { x / sim } else { 0.0 };
        let t = self.fleet.totals(self.now);
        let prefix_on = !self.fleet.slots.is_empty() && t.prefix_queries > 0;
        Report {
            scenario: self.name.clone(),
            seed: self.seed,
            simulated_s: sim,
            arrived: m.arrived,
            finished: m.finished,
            rejected: m.rejected,
            in_flight: self.in_flight(),
            throughput_rps: per_s(m.finished as f64),
            input_tokens_per_s: per_s(m.in_tokens as f64),
            output_tokens_per_s: per_s(m.out_tokens as f64),
            queue_s: m.queue.summary(),
            ttft_s: m.ttft.summary(),
            tpot_s: m.tpot.summary(),
            e2e_s: m.e2e.summary(),
            slo_ttft_ms: self.spec.slo.ttft_ms,
            slo_tpot_ms: self.spec.slo.tpot_ms,
            slo_attainment: (m.finished > 0).then(|| m.slo_met as f64 / m.finished as f64),
            goodput_rps: per_s(m.slo_met as f64),
            preemptions: m.preemptions,
            prefix_cache_hit_rate: prefix_on.then(|| t.prefix_hits as f64 / t.prefix_queries as f64),
            gpu_hours: m.cost.gpu_s / 3600.0,
            cost_usd: m.cost.cost_usd,
            cost_per_1k_requests_usd: (m.finished > 0).then(|| m.cost.cost_usd / m.finished as f64 * 1000.0),
            utilisation: if t.ready_ns > 0 { t.busy_ns as f64 / t.ready_ns as f64 } else { 0.0 },
            mean_kv_usage: if m.kv_samples > 0.0 { m.kv_sum / m.kv_samples } else { 0.0 },
            mean_quality: (self.has_quality && m.finished > 0).then(|| m.quality_sum / m.finished as f64),
            good_quality_per_usd: (self.has_quality && m.cost.cost_usd > 0.0)
                .then(|| m.quality_met_sum / m.cost.cost_usd),
            slots: self.fleet.slot_reports(self.now),
        }
    }

    /// Checks internal invariants (for tests): the fleet's (KV blocks within capacity,
    /// pool GPUs within capacity and accounted for, cold starts respected) and request
    /// conservation.
    pub fn check_invariants(&self) -> Result<(), TwinError> {
        self.fleet.check()?;
        let m = &self.meters;
        if m.arrived != m.finished + m.rejected + self.in_flight() {
            return Err(TwinError::Invariant {
                part: "request conservation".into(),
                message: format!(
                    "arrived {} != finished {} + rejected {} + in flight {}",
                    m.arrived,
                    m.finished,
                    m.rejected,
                    self.in_flight()
                ),
            });
        }
        Ok(())
    }
}
