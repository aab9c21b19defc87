//! Several workloads on shared GPU pools: one [`Twin`] per workload, run in lockstep,
//! with the GPUs of each shared pool handed between them as a cluster scheduler would.
//!
//! A **mix** file (`scenarios/shared/*.toml`, [`MixFile`]) names the shared pools with
//! their capacity and the workloads: each a scenario file (its trace, model variants, SLO,
//! policy), the window and load of its trace, and its priority, guaranteed GPUs and
//! weight. A workload's pool whose name is a shared pool's is shared; any other pool of
//! it stays private (its own capacity).
//!
//! **Placement.** A replica a workload asks for is created pending. Every `substep`
//! (1 s by default) of simulated time, and when a tick starts, each shared pool's free
//! GPUs go to pending replicas of all workloads, oldest first, skipping one that does not
//! fit for a later one that does (as kube-scheduler places pending pods as GPUs free up);
//! a workload's twin is then allowed what it holds plus what it was handed. GPUs a
//! replica frees (a replica stopped, or drained after a scale-down) return to the pool at
//! the next sub-step. So the GPUs held in a shared pool never exceed its capacity at any
//! instant ([`ClusterTwin::check_invariants`]).
//!
//! **Preemption** is a scale-down decided by whoever allocates (the arbiter in
//! [`crate::control::cluster`]): the replicas drain as vLLM does on SIGTERM (in-flight
//! requests finish, no new ones are routed), holding their GPUs until they are empty,
//! so no request is lost; the preempting workload's replicas wait pending until then.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::scenario::{RunWindow, Scenario};
use super::time::Nanos;
use super::{TickStats, Twin, TwinError};
use crate::arbiter::PoolCapacity;

/// A mix: shared pools and the workloads that share them (a TOML file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixFile {
    /// Name for reports.
    pub name: String,
    /// Seconds of simulated time between two hand-outs of free GPUs (default 1).
    #[serde(default = "default_substep")]
    pub substep_seconds: f64,
    /// Seconds of simulated time a run goes on after the last arrival of every workload
    /// (default 900): requests still unfinished then are counted as missed, so an
    /// allocator that starves a workload ends the run instead of holding it forever.
    #[serde(default = "default_drain")]
    pub drain_seconds: f64,
    /// The shared pools.
    pub pools: Vec<MixPool>,
    /// The workloads.
    pub workloads: Vec<MixWorkload>,
}

/// A shared GPU pool of a mix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixPool {
    /// Pool name: a workload's pool of this name is this pool.
    pub name: String,
    /// GPUs in the pool, over all workloads.
    pub capacity_gpus: u32,
}

/// One workload of a mix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixWorkload {
    /// Name for reports and events.
    pub name: String,
    /// The scenario file (relative to the mix file).
    pub scenario: PathBuf,
    /// The window of the scenario's trace, fractions `[start, end)` (default: the
    /// scenario's own window).
    #[serde(default)]
    pub window: Option<(f64, f64)>,
    /// Load factor on the trace (default 1).
    #[serde(default = "default_load")]
    pub load: f64,
    /// Priority: higher wins GPUs from lower when a pool is short.
    #[serde(default)]
    pub priority: i32,
    /// GPUs over the shared pools lower priorities cannot keep from it while it has traffic.
    #[serde(default)]
    pub guaranteed_gpus: u32,
    /// Weight of its requests in the mix's SLO-weighted goodput (default 1).
    #[serde(default = "default_load")]
    pub weight: f64,
    /// Seed offset of its traffic (so two workloads on one trace differ; default its index).
    #[serde(default)]
    pub seed_offset: Option<u64>,
}

fn default_substep() -> f64 {
    1.0
}

fn default_drain() -> f64 {
    900.0
}
fn default_load() -> f64 {
    1.0
}

/// A loaded mix: the file and each workload's scenario.
#[derive(Clone, Debug)]
pub struct Mix {
    /// The mix file.
    pub file: MixFile,
    /// Each workload's scenario, in the file's order.
    pub scenarios: Vec<Scenario>,
}

impl Mix {
    /// Reads and checks a mix file and the scenarios it names. Errors name the file and
    /// the field (`workloads[1].scenario`, `pools[0].capacity_gpus`).
    pub fn load(path: &Path) -> Result<Mix, TwinError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TwinError::Io { path: origin.clone(), message: e.to_string() })?;
        let file: MixFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
            TwinError::Parse { file: origin.clone(), line, message: e.message().to_string() }
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut scenarios = Vec::with_capacity(file.workloads.len());
        for (i, w) in file.workloads.iter().enumerate() {
            let p = dir.join(&w.scenario);
            let s = Scenario::load(&p).map_err(|e| TwinError::Config {
                field: format!("{origin}: workloads[{i}].scenario"),
                message: e.to_string(),
            })?;
            scenarios.push(s);
        }
        let mix = Mix { file, scenarios };
        mix.validate(&origin)?;
        Ok(mix)
    }

    fn validate(&self, origin: &str) -> Result<(), TwinError> {
        let bad =
            |field: String, message: String| Err(TwinError::Config { field: format!("{origin}: {field}"), message });
        let f = &self.file;
        if !(f.drain_seconds.is_finite() && f.drain_seconds >= 0.0) {
            return bad("drain_seconds".into(), format!("must be ≥ 0, got {}", f.drain_seconds));
        }
        if !(f.substep_seconds.is_finite() && f.substep_seconds > 0.0) {
            return bad("substep_seconds".into(), format!("must be > 0, got {}", f.substep_seconds));
        }
        if f.workloads.is_empty() {
            return bad("workloads".into(), "a mix needs at least one workload".into());
        }
        for (i, p) in f.pools.iter().enumerate() {
            if f.pools[..i].iter().any(|q| q.name == p.name) {
                return bad(format!("pools[{i}].name"), format!("`{}` is named twice", p.name));
            }
        }
        let interval = self.scenarios[0].spec.policy.interval_seconds;
        for (i, (w, s)) in f.workloads.iter().zip(&self.scenarios).enumerate() {
            if f.workloads[..i].iter().any(|x| x.name == w.name) {
                return bad(format!("workloads[{i}].name"), format!("`{}` is named twice", w.name));
            }
            if !(w.load.is_finite() && w.load > 0.0) {
                return bad(format!("workloads[{i}].load"), format!("must be > 0, got {}", w.load));
            }
            if !(w.weight.is_finite() && w.weight >= 0.0) {
                return bad(format!("workloads[{i}].weight"), format!("must be >= 0, got {}", w.weight));
            }
            if let Some((a, b)) = w.window {
                if !(0.0..1.0).contains(&a) || !(a < b && b <= 1.0) {
                    return bad(
                        format!("workloads[{i}].window"),
                        format!("need 0 <= start < end <= 1, got [{a}, {b}]"),
                    );
                }
            }
            if s.spec.policy.interval_seconds != interval {
                return bad(
                    format!("workloads[{i}].scenario"),
                    format!(
                        "control interval {} s differs from the first workload's {} s: the workloads of a mix tick together",
                        s.spec.policy.interval_seconds, interval
                    ),
                );
            }
            if !s.spec.gpu_pools.iter().any(|p| f.pools.iter().any(|q| q.name == p.name)) {
                return bad(
                    format!("workloads[{i}].scenario"),
                    format!("none of its pools ({}) is a shared pool of the mix", pool_names(s)),
                );
            }
        }
        Ok(())
    }

    /// The shared pools as the arbiter sees them.
    pub fn pool_capacities(&self) -> Vec<PoolCapacity> {
        self.file.pools.iter().map(|p| PoolCapacity { name: p.name.clone(), capacity_gpus: p.capacity_gpus }).collect()
    }

    /// The twins of the mix for one run: each workload's window and load, its seed
    /// `seed + seed_offset` (default offset: its index).
    pub fn build(&self, seed: u64) -> Result<ClusterTwin, TwinError> {
        let mut twins = Vec::with_capacity(self.scenarios.len());
        for (i, (w, s)) in self.file.workloads.iter().zip(&self.scenarios).enumerate() {
            let window = w.window.unwrap_or((s.file.workload.start_frac, s.file.workload.end_frac));
            let run = RunWindow::new(
                seed.wrapping_add(w.seed_offset.unwrap_or(i as u64)),
                window,
                w.load * s.file.workload.load,
            );
            twins.push((w.name.clone(), Twin::with_window(s, run)?));
        }
        let mut world = ClusterTwin::new(twins, self.pool_capacities(), self.file.substep_seconds)?;
        world.drain = Nanos::from_secs_f64(self.file.drain_seconds.max(0.0));
        Ok(world)
    }
}

fn pool_names(s: &Scenario) -> String {
    s.spec.gpu_pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Several twins in lockstep on shared GPU pools (see the module documentation).
pub struct ClusterTwin {
    names: Vec<String>,
    twins: Vec<Twin>,
    pools: Vec<PoolCapacity>,
    /// Per twin, per pool of its spec: the shared pool it is, if any.
    shared: Vec<Vec<Option<usize>>>,
    substep: Nanos,
    interval: Nanos,
    now: Nanos,
    /// Most GPUs held at once per shared pool, over the run.
    peak_held: Vec<u32>,
    /// How long a run goes on after every workload's last arrival.
    drain: Nanos,
    /// When every workload's arrivals were first seen exhausted.
    exhausted_at: Option<Nanos>,
}

impl ClusterTwin {
    /// Twins (with names) on `pools`; `substep_s` between hand-outs of free GPUs. The
    /// initial fleets must fit the shared pools.
    pub fn new(twins: Vec<(String, Twin)>, pools: Vec<PoolCapacity>, substep_s: f64) -> Result<ClusterTwin, TwinError> {
        let interval = twins.first().map(|(_, t)| t.control_interval_s()).unwrap_or(1.0);
        let shared = twins
            .iter()
            .map(|(_, t)| t.spec().gpu_pools.iter().map(|p| pools.iter().position(|q| q.name == p.name)).collect())
            .collect();
        let (names, twins): (Vec<String>, Vec<Twin>) = twins.into_iter().unzip();
        let mut c = ClusterTwin {
            names,
            twins,
            peak_held: vec![0; pools.len()],
            pools,
            shared,
            substep: Nanos::from_secs_f64(substep_s.max(1e-3)),
            interval: Nanos::from_secs_f64(interval),
            now: Nanos::ZERO,
            drain: Nanos::from_secs_f64(default_drain()),
            exhausted_at: None,
        };
        for p in 0..c.pools.len() {
            let held = c.held(p);
            if held > c.pools[p].capacity_gpus {
                return Err(TwinError::Config {
                    field: format!("pools[{p}].capacity_gpus"),
                    message: format!(
                        "the workloads' initial replicas hold {held} GPUs of pool `{}`, more than its {} GPUs",
                        c.pools[p].name, c.pools[p].capacity_gpus
                    ),
                });
            }
        }
        c.rebalance();
        Ok(c)
    }

    /// The workloads' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Workload `w`'s twin.
    pub fn twin(&self, w: usize) -> &Twin {
        &self.twins[w]
    }

    /// Workload `w`'s twin, mutably (to apply a decision).
    pub fn twin_mut(&mut self, w: usize) -> &mut Twin {
        &mut self.twins[w]
    }

    /// The shared pools.
    pub fn pools(&self) -> &[PoolCapacity] {
        &self.pools
    }

    /// The shared pool (index) that workload `w`'s pool named `pool` is, if it is shared.
    pub fn shared_pool(&self, w: usize, pool: &str) -> Option<usize> {
        let local = self.twins[w].spec().gpu_pools.iter().position(|p| p.name == pool)?;
        self.shared[w][local]
    }

    /// GPUs of shared pool `p` held now over all workloads.
    pub fn held(&self, p: usize) -> u32 {
        self.twins
            .iter()
            .zip(&self.shared)
            .flat_map(|(t, map)| {
                map.iter()
                    .enumerate()
                    .filter(move |(_, s)| **s == Some(p))
                    .map(move |(local, _)| t.pool_gpus_held(local))
            })
            .sum()
    }

    /// The most GPUs held at once in each shared pool so far (sampled at every sub-step).
    pub fn peak_held(&self) -> &[u32] {
        &self.peak_held
    }

    /// Hands each shared pool's free GPUs to pending replicas, oldest first, and sets
    /// each twin's allowance to what it holds plus what it was handed.
    fn rebalance(&mut self) {
        for p in 0..self.pools.len() {
            let held = self.held(p);
            self.peak_held[p] = self.peak_held[p].max(held);
            let mut free = self.pools[p].capacity_gpus.saturating_sub(held);
            let mut pending: Vec<(Nanos, usize, u32)> = Vec::new();
            for (w, t) in self.twins.iter().enumerate() {
                for (local, gpus, since) in t.pending_replicas() {
                    if self.shared[w][local] == Some(p) {
                        pending.push((since, w, gpus));
                    }
                }
            }
            pending.sort_by_key(|&(since, w, _)| (since, w));
            let mut extra = vec![0u32; self.twins.len()];
            for (_, w, gpus) in pending {
                if gpus <= free {
                    free -= gpus;
                    extra[w] += gpus;
                }
            }
            for w in 0..self.twins.len() {
                for local in 0..self.shared[w].len() {
                    if self.shared[w][local] == Some(p) {
                        let allowance = self.twins[w].pool_gpus_held(local) + std::mem::take(&mut extra[w]);
                        self.twins[w].set_pool_capacity(local, Some(allowance));
                    }
                }
            }
        }
    }

    /// Runs one control interval for every workload, handing out freed GPUs every
    /// sub-step; returns each workload's tick.
    pub fn advance(&mut self) -> Vec<TickStats> {
        self.rebalance();
        let end = self.now.plus(self.interval);
        let mut t = self.now;
        while t < end {
            t = t.plus(self.substep).min(end);
            for twin in &mut self.twins {
                twin.run_to(t);
            }
            self.rebalance();
        }
        self.now = end;
        if self.exhausted_at.is_none() && self.twins.iter().all(|t| t.arrivals_exhausted()) {
            self.exhausted_at = Some(self.now);
        }
        self.twins.iter_mut().map(|t| t.end_tick()).collect()
    }

    /// True when every workload's run has ended, or the drain time after the last
    /// arrival (the mix's `drain_seconds`) has passed.
    pub fn is_done(&self) -> bool {
        if self.exhausted_at.is_some_and(|t| self.now >= t.plus(self.drain)) {
            return true;
        }
        self.twins.iter().all(|t| t.is_done())
    }

    /// Every twin's invariants, and no shared pool holding more GPUs than it has.
    pub fn check_invariants(&self) -> Result<(), TwinError> {
        for (w, t) in self.twins.iter().enumerate() {
            t.check_invariants().map_err(|e| TwinError::Invariant {
                part: format!("workload {}", self.names[w]),
                message: e.to_string(),
            })?;
        }
        for (p, pool) in self.pools.iter().enumerate() {
            let held = self.held(p);
            if held > pool.capacity_gpus {
                return Err(TwinError::Invariant {
                    part: format!("shared pool {}", pool.name),
                    message: format!("{held} GPUs held > capacity {}", pool.capacity_gpus),
                });
            }
        }
        Ok(())
    }
}
