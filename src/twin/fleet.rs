//! The twin's fleet: slots (a variant on a pool), the replicas in them with their engines
//! and life cycle, and the pools' GPUs.
//!
//! Replicas move through pending (no free GPUs in the pool) → starting (cold start:
//! `pod_startup_s + weight bytes / weight_load_gb_s`, or the variant's `coldStartSeconds`)
//! → ready → draining (takes no new requests, finishes its own) → stopped. A replica that a
//! decision removes while other replicas are still starting keeps serving ("retiring")
//! until none is starting: a variant switch starts the new variant before the old one
//! drains. The fleet keeps the bookkeeping of these moves (GPUs per pool, the serving
//! set, per-slot GPU-seconds and cost); the simulator ([`super::sim`]) decides when they
//! happen.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::engine::{Engine, EngineConfig};
use super::metrics::SlotReport;
use super::perf::{PerfModel, RooflinePerf};
use super::scenario::Scenario;
use super::time::Nanos;
use super::TwinError;
use crate::observe::SlotState;
use crate::policy::observation::SlotId;

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

impl ReplicaState {
    /// In its Service's endpoints: takes requests and exposes metrics.
    pub fn is_serving(self) -> bool {
        matches!(self, ReplicaState::Ready | ReplicaState::Retiring)
    }
    /// Holds GPUs (placed and not stopped).
    pub fn holds_gpus(self) -> bool {
        matches!(self, ReplicaState::Starting | ReplicaState::Ready | ReplicaState::Retiring | ReplicaState::Draining)
    }
    /// Counts against its slot's desired replicas (not yet asked to go).
    pub fn is_live(self) -> bool {
        matches!(self, ReplicaState::Pending | ReplicaState::Starting | ReplicaState::Ready)
    }
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

/// One simulated replica.
pub struct Replica {
    /// Its slot.
    pub slot: usize,
    /// Life-cycle state.
    pub state: ReplicaState,
    /// The engine serving its requests.
    pub engine: Engine,
    /// Bumped whenever its scheduled iteration event becomes stale.
    pub epoch: u64,
    /// GPUs it holds once placed.
    pub gpus: u32,
    /// Holding GPUs since (while starting), or serving since (once ready).
    pub ready_since: Option<Nanos>,
    /// Nanoseconds spent serving before the current stretch.
    pub ready_ns: u64,
    placed_at: Option<Nanos>,
    became_ready_at: Option<Nanos>,
    /// Part of the initial fleet (ready at time zero, no cold start).
    pub initial: bool,
    /// When it was asked for (its pod created): the order pending replicas of several
    /// workloads get freed GPUs in a shared pool.
    pub created_at: Nanos,
}

/// A variant on a pool, with what its replicas need and what they have cost.
pub struct SlotInfo {
    /// The slot's identity.
    pub id: SlotId,
    /// Index of the variant in the spec.
    pub variant: usize,
    /// Index of the pool in the spec.
    pub pool: usize,
    /// Model id (`model_name` label).
    pub model: String,
    /// GPUs per replica.
    pub gpus_per_replica: u32,
    /// Desired replicas (the last decision).
    pub desired: u32,
    /// Iteration-time model.
    pub perf: Arc<dyn PerfModel>,
    /// KV blocks per replica (0: the variant does not fit the pool's GPU).
    pub blocks: u32,
    /// Longest request (prompt + output) a replica accepts.
    pub max_len: u64,
    /// Cold start.
    pub cold_start: Nanos,
    /// Price per GPU-second.
    pub price_per_gpu_s: f64,
    /// Variant quality (0 without).
    pub quality: f64,
    /// Requests finished.
    pub finished: u64,
    /// GPU-seconds of stopped stretches.
    pub gpu_s: f64,
    /// Cost of stopped stretches.
    pub cost_usd: f64,
    /// Replicas created and not stopped.
    pub live: u32,
    /// Most replicas live at once.
    pub peak: u32,
}

/// Time and prefix-cache totals of replicas: of the stopped ones (whose engines are freed)
/// in [`Fleet::stopped`], of all of them from [`Fleet::totals`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicaTotals {
    /// Iteration time.
    pub busy_ns: u64,
    /// Serving time.
    pub ready_ns: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Prompt tokens found there.
    pub prefix_hits: u64,
}

/// Slots, replicas and pool GPUs.
pub struct Fleet {
    /// Every replica ever created, by id.
    pub replicas: Vec<Replica>,
    /// Ids of the serving replicas (ready or retiring), ascending.
    pub serving: Vec<usize>,
    /// The slots, variant-major.
    pub slots: Vec<SlotInfo>,
    /// GPUs placed per pool.
    pub pool_used: Vec<u32>,
    /// GPU cap per pool.
    pub pool_cap: Vec<Option<u32>>,
    /// Replicas waiting for GPUs, in creation order.
    pub pending: VecDeque<usize>,
    /// What stopped replicas did.
    pub stopped: ReplicaTotals,
    engine_cfg: EngineConfig,
}

impl Fleet {
    /// An empty fleet with one slot per (variant, allowed pool): its performance model,
    /// KV blocks, longest request, cold start and price, from the scenario's catalog and
    /// engine settings.
    pub fn build(scenario: &Scenario) -> Result<Fleet, TwinError> {
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
                if !eng.chunked_prefill() {
                    // Without chunking a whole prompt (and, after a preemption, its generated
                    // tokens) must fit one iteration's token budget.
                    max_len = max_len.min(eng.max_num_batched_tokens as u64);
                }
                let mut perf = RooflinePerf::new(model, gpu, tp).with_cpu(eng.cpu_costs());
                scenario.file.perf.apply(&mut perf.eff);
                slots.push(SlotInfo {
                    id: SlotId::new(&var.name, &pool.name),
                    variant: v,
                    pool: p,
                    model: var.model.clone(),
                    gpus_per_replica: tp,
                    desired: 0,
                    perf: Arc::new(perf),
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
        Ok(Fleet {
            replicas: Vec::new(),
            serving: Vec::new(),
            slots,
            pool_used: vec![0; spec.gpu_pools.len()],
            pool_cap: spec.gpu_pools.iter().map(|p| p.capacity_gpus).collect(),
            pending: VecDeque::new(),
            stopped: ReplicaTotals::default(),
            engine_cfg: scenario.file.engine.clone(),
        })
    }

    /// The slot of variant `v` on pool `p` (spec indices); slot 0 if there is none.
    pub fn slot_index(&self, v: usize, p: usize) -> usize {
        self.slots.iter().position(|s| s.variant == v && s.pool == p).unwrap_or(0)
    }

    /// The slot of the named variant on the named pool, if the variant may use the pool.
    pub fn slot_named(&self, variant: &str, pool: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.id.variant == variant && s.id.pool == pool)
    }

    /// Creates a pending replica in `slot` (not yet placed); returns its id.
    pub fn add_replica(&mut self, slot: usize) -> usize {
        let s = &mut self.slots[slot];
        let engine = Engine::new(self.engine_cfg.clone(), s.perf.clone(), s.blocks);
        s.live += 1;
        s.peak = s.peak.max(s.live);
        let id = self.replicas.len();
        self.replicas.push(Replica {
            slot,
            state: ReplicaState::Pending,
            engine,
            epoch: 0,
            gpus: s.gpus_per_replica,
            ready_since: None,
            ready_ns: 0,
            placed_at: None,
            became_ready_at: None,
            initial: false,
            created_at: Nanos::ZERO,
        });
        id
    }

    /// True when replica `id`'s pool has GPUs for it.
    pub fn fits(&self, id: usize) -> bool {
        let r = &self.replicas[id];
        let pool = self.slots[r.slot].pool;
        self.pool_cap[pool].is_none_or(|cap| self.pool_used[pool] + r.gpus <= cap)
    }

    /// Places replica `id` at `now`: it holds its GPUs and starts loading. Returns when
    /// its cold start ends.
    pub fn place(&mut self, id: usize, now: Nanos) -> Nanos {
        let r = &mut self.replicas[id];
        let s = &self.slots[r.slot];
        self.pool_used[s.pool] += r.gpus;
        r.state = ReplicaState::Starting;
        r.ready_since = Some(now); // "holding GPUs since" until ready
        r.placed_at = Some(now);
        now.plus(s.cold_start)
    }

    /// Replica `id`'s cold start ended at `now`; false if it was not starting.
    pub fn mark_ready(&mut self, id: usize, now: Nanos) -> bool {
        let r = &mut self.replicas[id];
        if r.state != ReplicaState::Starting {
            return false;
        }
        let held_since = r.ready_since.unwrap_or(now);
        let (slot, gpus) = (r.slot, r.gpus);
        r.state = ReplicaState::Ready;
        r.ready_since = Some(now);
        r.became_ready_at = Some(now);
        self.slot_accrue(slot, gpus, held_since, now);
        self.rebuild_serving();
        true
    }

    /// Stops replica `id` at `now`: frees its engine, adds its time to its slot and the
    /// stopped totals, and returns its pool's GPUs. Returns its state before, and the
    /// (GPUs, price per GPU-second) it stops paying for, if it held GPUs.
    pub fn stop(&mut self, id: usize, now: Nanos) -> (ReplicaState, Option<(u32, f64)>) {
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
        let c = &r.engine.counters;
        self.stopped.prefix_queries += c.prefix_queries;
        self.stopped.prefix_hits += c.prefix_hits;
        self.stopped.busy_ns += c.busy_ns;
        self.stopped.ready_ns += r.ready_ns;
        // Free memory of a stopped replica's engine.
        r.engine = Engine::new(self.engine_cfg.clone(), self.slots[slot].perf.clone(), 0);
        let mut released = None;
        if prev != ReplicaState::Pending {
            if let Some(since) = since {
                self.slot_accrue(slot, gpus, since, now);
            }
            self.pool_used[self.slots[slot].pool] -= gpus;
            released = Some((gpus, self.slots[slot].price_per_gpu_s));
        }
        self.slots[slot].live -= 1;
        self.rebuild_serving();
        (prev, released)
    }

    fn slot_accrue(&mut self, slot: usize, gpus: u32, from: Nanos, to: Nanos) {
        let dt = to.since(from).as_secs_f64();
        let s = &mut self.slots[slot];
        s.gpu_s += gpus as f64 * dt;
        s.cost_usd += gpus as f64 * dt * s.price_per_gpu_s;
    }

    /// Recomputes the serving set.
    pub fn rebuild_serving(&mut self) {
        self.serving = self.replicas.iter().enumerate().filter(|(_, r)| r.state.is_serving()).map(|(i, _)| i).collect();
    }

    /// True while some replica is loading.
    pub fn any_starting(&self) -> bool {
        self.replicas.iter().any(|r| r.state == ReplicaState::Starting)
    }

    /// Ids of the replicas in `state`.
    pub fn in_state(&self, state: ReplicaState) -> Vec<usize> {
        self.replicas.iter().enumerate().filter(|(_, r)| r.state == state).map(|(i, _)| i).collect()
    }

    /// Ids of `slot`'s live replicas (pending, starting or ready), oldest first.
    pub fn live(&self, slot: usize) -> Vec<usize> {
        self.replicas.iter().enumerate().filter(|(_, r)| r.slot == slot && r.state.is_live()).map(|(i, _)| i).collect()
    }

    /// Requests in the engines.
    pub fn outstanding(&self) -> u64 {
        self.replicas.iter().map(|r| r.engine.outstanding() as u64).sum()
    }

    /// Mean KV usage of the serving replicas, or `None` when none serves.
    pub fn mean_serving_kv(&self) -> Option<f64> {
        let n = self.serving.len();
        (n > 0).then(|| self.serving.iter().map(|&i| self.replicas[i].engine.kv_usage()).sum::<f64>() / n as f64)
    }

    /// Desired replicas and replica counts per slot, for the observation's fleet part.
    pub fn slot_states(&self) -> (BTreeMap<SlotId, u32>, BTreeMap<SlotId, SlotState>) {
        let mut current = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (si, s) in self.slots.iter().enumerate() {
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
            current.insert(s.id.clone(), s.desired);
            states.insert(s.id.clone(), st);
        }
        (current, states)
    }

    /// Every replica that is not stopped, with its identity and state.
    pub fn infos(&self) -> Vec<ReplicaInfo> {
        let mut idx = vec![0u32; self.slots.len()];
        let mut out = Vec::new();
        for (id, r) in self.replicas.iter().enumerate() {
            if r.state == ReplicaState::Stopped {
                continue;
            }
            let s = &self.slots[r.slot];
            out.push(ReplicaInfo {
                id,
                variant: s.id.variant.clone(),
                model: s.model.clone(),
                pool: s.id.pool.clone(),
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

    /// Time and prefix-cache totals over all replicas, stopped or not, up to `now`.
    pub fn totals(&self, now: Nanos) -> ReplicaTotals {
        let mut t = self.stopped;
        for r in self.replicas.iter().filter(|r| r.state != ReplicaState::Stopped) {
            t.busy_ns += r.engine.counters.busy_ns;
            t.prefix_queries += r.engine.counters.prefix_queries;
            t.prefix_hits += r.engine.counters.prefix_hits;
            if let Some(since) = r.ready_since {
                if matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring | ReplicaState::Draining) {
                    t.ready_ns += r.ready_ns + now.since(since).0;
                }
            }
        }
        t
    }

    /// Per-slot report lines up to `now` (stopped stretches plus the live replicas' time).
    pub fn slot_reports(&self, now: Nanos) -> Vec<SlotReport> {
        let mut extra = vec![(0.0f64, 0.0f64); self.slots.len()];
        for r in self.replicas.iter().filter(|r| !matches!(r.state, ReplicaState::Stopped | ReplicaState::Pending)) {
            if let Some(since) = r.ready_since {
                let dt = now.since(since).as_secs_f64();
                extra[r.slot].0 += r.gpus as f64 * dt;
                extra[r.slot].1 += r.gpus as f64 * dt * self.slots[r.slot].price_per_gpu_s;
            }
        }
        self.slots
            .iter()
            .zip(extra)
            .map(|(s, (g, c))| SlotReport {
                variant: s.id.variant.clone(),
                pool: s.id.pool.clone(),
                finished: s.finished,
                gpu_hours: (s.gpu_s + g) / 3600.0,
                cost_usd: s.cost_usd + c,
                peak_replicas: s.peak,
            })
            .collect()
    }

    /// Checks the fleet's invariants: engines consistent, KV within capacity, no requests
    /// before ready, no replica ready before its cold start, pool GPUs within capacity and
    /// equal to what the replicas hold.
    pub fn check(&self) -> Result<(), TwinError> {
        let bad = |part: String, message: String| Err(TwinError::Invariant { part, message });
        for (i, r) in self.replicas.iter().enumerate() {
            if let Err(e) = r.engine.check_invariants() {
                return bad(format!("replica {i}"), e.to_string());
            }
            if r.engine.used_blocks() > r.engine.total_blocks() {
                return bad(format!("replica {i}"), "KV oversubscribed".into());
            }
            if matches!(r.state, ReplicaState::Pending | ReplicaState::Starting) && r.engine.outstanding() > 0 {
                return bad(format!("replica {i}"), "has requests before it is ready".into());
            }
            if let (Some(p), Some(rd)) = (r.placed_at, r.became_ready_at) {
                if !r.initial && rd.since(p) < self.slots[r.slot].cold_start {
                    return bad(
                        format!("replica {i}"),
                        format!("ready {:?} after placement, before its cold start", rd.since(p)),
                    );
                }
            }
        }
        for (p, used) in self.pool_used.iter().enumerate() {
            if let Some(c) = self.pool_cap[p] {
                if *used > c {
                    return bad(format!("pool {p}"), format!("{used} GPUs used > capacity {c}"));
                }
            }
            let held: u32 = self
                .replicas
                .iter()
                .filter(|r| self.slots[r.slot].pool == p && r.state.holds_gpus())
                .map(|r| r.gpus)
                .sum();
            if held != *used {
                return bad(format!("pool {p}"), format!("accounting {used} != held {held}"));
            }
        }
        Ok(())
    }
}
