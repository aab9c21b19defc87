//! `llmos share`: several workloads on shared GPU pools in the twin, under each
//! [`Allocator`], on the same traffic, over seeds.
//!
//! Per allocator it reports the mix's **SLO-weighted goodput**: requests that met their
//! workload's SLO, each counted with its workload's weight (the mix file's `weight`), as
//! a total and as a share of the weighted arrivals (a rejected or late request counts as
//! missed); per workload its SLO attainment and GPU-hours; and the arbiter's preempted,
//! refused and substituted replicas; and each allocator's difference from the arbiter,
//! paired over seeds (every allocator sees the same arrivals per seed). The learned
//! allocator gets a row per checkpoint (`learned#i`, one per training seed) and one
//! pooled over them (`learned(N)`), so the spread over training seeds shows. Every tick
//! checks that no shared pool holds more GPUs than it has (a run that breaks it is an
//! error, not a row).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::stats::Estimate;
use crate::arbiter::ArbiterEvent;
use crate::control::cluster::{start_mix, Allocator};
use crate::rl::allocator::{features, LearnedAllocator};
use crate::twin::cluster::Mix;

/// Arguments of `llmos share`.
#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    /// Mix file (TOML): shared pools and the workloads on them, e.g.
    /// `scenarios/shared/three-services-one-pool.toml`.
    #[arg(long)]
    pub mix: PathBuf,
    /// Allocators to compare, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "first-come,arbiter")]
    pub allocators: Vec<Allocator>,
    /// Number of seeds (0..N); every allocator sees the same arrivals per seed.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Every workload's policy (a heuristic kind, e.g. `hpa`), instead of its scenario's.
    #[arg(long)]
    pub policy: Option<String>,
    /// Write every run as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override a shared pool's capacity, `POOL=GPUS` (repeatable), e.g. `a100=100` for the
    /// workloads without contention.
    #[arg(long, value_parser = parse_capacity)]
    pub capacity: Vec<(String, u32)>,
    /// The learned allocator's checkpoint (`llmos share-train`), for `--allocators learned`.
    /// Several, comma-separated (one per training seed), each a row `learned#i`; a
    /// directory without a checkpoint of its own stands for the checkpoints in its
    /// subdirectories (e.g. `policies/shared-allocator` for its `s0`, `s1`, `s2`).
    #[arg(long, value_delimiter = ',')]
    pub allocator_policy: Vec<PathBuf>,
}

fn parse_capacity(s: &str) -> Result<(String, u32), String> {
    let (pool, n) = s.split_once('=').ok_or_else(|| format!("`{s}`: give POOL=GPUS"))?;
    let n = n.trim().parse::<u32>().map_err(|e| format!("`{s}`: GPUS: {e}"))?;
    Ok((pool.trim().to_string(), n))
}

/// What one workload got in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkloadOutcome {
    /// Workload name.
    pub name: String,
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests that finished within the SLO.
    pub slo_met: u64,
    /// Requests rejected.
    pub rejected: u64,
    /// GPU-hours held.
    pub gpu_hours: f64,
    /// Replicas taken from it by the arbiter (summed over ticks).
    pub preempted_replicas: u64,
    /// Ticks at which a slot of it got fewer replicas than proposed.
    pub refused_ticks: u64,
    /// Replicas granted in another slot for ones that did not fit (summed over ticks).
    pub substituted_replicas: u64,
}

impl WorkloadOutcome {
    /// Requests within the SLO over requests that arrived, 0..1.
    pub fn attainment(&self) -> f64 {
        if self.arrived == 0 {
            1.0
        } else {
            self.slo_met as f64 / self.arrived as f64
        }
    }
}

/// One run of a mix under one allocator and seed.
#[derive(Clone, Debug, Serialize)]
pub struct MixRun {
    /// Allocator.
    pub allocator: Allocator,
    /// For the learned allocator, the index of its checkpoint in `--allocator-policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<usize>,
    /// Seed.
    pub seed: u64,
    /// Per workload, in the mix's order.
    pub workloads: Vec<WorkloadOutcome>,
    /// Σ weight × requests within the SLO.
    pub weighted_goodput: f64,
    /// Σ weight × requests within the SLO over Σ weight × arrived requests, 0..1.
    pub weighted_attainment: f64,
    /// GPU-hours over all workloads.
    pub gpu_hours: f64,
    /// Most GPUs held at once per shared pool.
    pub peak_held_gpus: Vec<u32>,
    /// Control ticks.
    pub ticks: u64,
}

/// Runs `mix` once under `allocator` with `seed`; `policy` replaces every workload's
/// policy by a heuristic kind; `learned` is the learned allocator's checkpoint (index,
/// directory), which [`Allocator::Learned`] needs.
pub fn run_mix(
    mix: &Mix,
    allocator: Allocator,
    seed: u64,
    policy: Option<&str>,
    learned: Option<(usize, &Path)>,
) -> anyhow::Result<MixRun> {
    let learned_allocator = match (allocator, learned) {
        (Allocator::Learned, Some((_, dir))) => {
            let names: Vec<String> = mix.file.workloads.iter().map(|w| w.name.clone()).collect();
            Some(
                LearnedAllocator::load(dir, &names)
                    .map_err(|e| anyhow::anyhow!("--allocator-policy {}: {e}", dir.display()))?,
            )
        }
        (Allocator::Learned, None) => anyhow::bail!("--allocators learned needs --allocator-policy"),
        _ => None,
    };
    let (mut world, mut control, mut policies) = start_mix(mix, seed, policy, allocator)?;
    let mut out: Vec<WorkloadOutcome> =
        world.names().iter().map(|name| WorkloadOutcome { name: name.clone(), ..Default::default() }).collect();
    let mut ticks = 0u64;
    while !world.is_done() {
        let tick = match &learned_allocator {
            Some(l) => {
                let mut proposals = control.propose(&mut policies);
                let (priorities, extra) = l.decide(&features(mix, &world, &control, &proposals));
                control.add_headroom(&mut proposals, &extra);
                control.finish(&mut world, &mut policies, proposals, Some(&priorities))
            }
            None => control.tick(&mut world, &mut policies),
        };
        ticks += 1;
        world.check_invariants()?;
        for (o, t) in out.iter_mut().zip(&tick.ticks) {
            o.arrived += t.stats.arrived;
            o.slo_met += t.stats.slo_met;
            o.rejected += t.stats.rejected;
            o.gpu_hours += t.stats.gpu_seconds / 3600.0;
        }
        count_events(&mut out, &tick.events);
    }
    let weights: Vec<f64> = mix.file.workloads.iter().map(|w| w.weight).collect();
    let goodput: f64 = out.iter().zip(&weights).map(|(o, w)| w * o.slo_met as f64).sum();
    let offered: f64 = out.iter().zip(&weights).map(|(o, w)| w * o.arrived as f64).sum();
    Ok(MixRun {
        allocator,
        checkpoint: learned.map(|(i, _)| i),
        seed,
        weighted_goodput: goodput,
        weighted_attainment: if offered > 0.0 { goodput / offered } else { 1.0 },
        gpu_hours: out.iter().map(|o| o.gpu_hours).sum(),
        peak_held_gpus: world.peak_held().to_vec(),
        workloads: out,
        ticks,
    })
}

fn count_events(out: &mut [WorkloadOutcome], events: &[ArbiterEvent]) {
    let mut refused = vec![false; out.len()];
    for e in events {
        match *e {
            ArbiterEvent::Preempted { workload, replicas, .. } => {
                out[workload].preempted_replicas += u64::from(replicas)
            }
            ArbiterEvent::Substituted { workload, granted, .. } => {
                out[workload].substituted_replicas += u64::from(granted)
            }
            ArbiterEvent::Refused { workload, .. } => refused[workload] = true,
            ArbiterEvent::Granted { .. } => {}
        }
    }
    for (o, r) in out.iter_mut().zip(refused) {
        o.refused_ticks += u64::from(r);
    }
}

/// Every allocator on every seed (in parallel), in (allocator, seed) order; the learned
/// allocator once per checkpoint of `learned`.
pub fn run_all(
    mix: &Mix,
    allocators: &[Allocator],
    seeds: u64,
    policy: Option<&str>,
    learned: &[PathBuf],
) -> anyhow::Result<Vec<MixRun>> {
    type Checkpoint<'a> = Option<(usize, &'a Path)>;
    let mut jobs: Vec<(Allocator, Checkpoint, u64)> = Vec::new();
    for &a in allocators {
        let checkpoints: Vec<Checkpoint> = match a {
            Allocator::Learned if !learned.is_empty() => {
                learned.iter().enumerate().map(|(i, p)| Some((i, p.as_path()))).collect()
            }
            _ => vec![None],
        };
        for c in checkpoints {
            jobs.extend((0..seeds).map(|s| (a, c, s)));
        }
    }
    jobs.par_iter().map(|&(a, c, s)| run_mix(mix, a, s, policy, c)).collect()
}

/// The row name of a run's allocator: `learned#i` for the i-th checkpoint.
fn row_name(r: &MixRun) -> String {
    match r.checkpoint {
        Some(i) => format!("{}#{i}", r.allocator.name()),
        None => r.allocator.name().to_string(),
    }
}

fn est(runs: &[&MixRun], f: impl Fn(&MixRun) -> f64) -> Estimate {
    Estimate::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn fmt(e: &Estimate, scale: f64, digits: usize) -> String {
    format!("{:.*} ± {:.*}", digits, e.mean * scale, digits, e.ci95 * scale)
}

/// The comparison as a text table: one block per allocator (mix totals), then one line
/// per workload and allocator; means with 95 % intervals over seeds.
pub fn table(mix: &Mix, runs: &[MixRun]) -> String {
    use std::fmt::Write;
    // One row per allocator (per checkpoint for the learned one), and the learned
    // allocator pooled over its checkpoints (training seeds) when it has several.
    let mut rows: Vec<(String, Vec<&MixRun>)> = Vec::new();
    for r in runs {
        let name = row_name(r);
        match rows.iter_mut().find(|(n, _)| *n == name) {
            Some((_, rs)) => rs.push(r),
            None => rows.push((name, vec![r])),
        }
    }
    let learned: Vec<&MixRun> = runs.iter().filter(|r| r.checkpoint.is_some()).collect();
    let checkpoints = learned.iter().filter_map(|r| r.checkpoint).max().map_or(0, |m| m + 1);
    if checkpoints > 1 {
        rows.push((format!("learned({checkpoints})"), learned));
    }
    let seeds = rows.first().map_or(0, |(_, rs)| rs.len());
    // The reference of the paired differences: the arbiter, else the first row.
    let reference = rows.iter().find(|(n, _)| n == "arbiter").or(rows.first()).map(|(n, rs)| (n.clone(), rs.clone()));
    let reference = reference.as_ref();
    let pools: Vec<String> = mix.file.pools.iter().map(|p| format!("{} ({} GPUs)", p.name, p.capacity_gpus)).collect();
    let mut s = String::new();
    let _ = writeln!(s, "mix {}: pools {}; {} seeds, 95 % intervals", mix.file.name, pools.join(", "), seeds);
    let _ = writeln!(
        s,
        "{:<11} {:>22} {:>22} {:>20} {:>16} {:>12} {:>10}",
        "allocator",
        "weighted SLO met (%)",
        format!("Δ vs {} (pp)", reference.map_or("-", |(n, _)| n.as_str())),
        "weighted goodput",
        "GPU-hours",
        "preempted",
        "peak GPUs"
    );
    for (name, rs) in &rows {
        let peak = rs.iter().flat_map(|r| r.peak_held_gpus.iter().copied()).max().unwrap_or(0);
        let preempted: u64 = rs.iter().flat_map(|r| r.workloads.iter().map(|w| w.preempted_replicas)).sum();
        // Paired over seeds: every run against the reference's run on the same arrivals.
        let delta = reference.filter(|(n, _)| n != name).map_or("-".to_string(), |(_, refs)| {
            let d: Vec<f64> = rs
                .iter()
                .filter_map(|r| {
                    refs.iter().find(|x| x.seed == r.seed).map(|x| r.weighted_attainment - x.weighted_attainment)
                })
                .collect();
            fmt(&super::stats::Estimate::of(&d), 100.0, 2)
        });
        let _ = writeln!(
            s,
            "{:<11} {:>22} {:>22} {:>20} {:>16} {:>12} {:>10}",
            name,
            fmt(&est(rs, |r| r.weighted_attainment), 100.0, 2),
            delta,
            fmt(&est(rs, |r| r.weighted_goodput), 1.0, 0),
            fmt(&est(rs, |r| r.gpu_hours), 1.0, 2),
            format!("{:.1}/run", preempted as f64 / rs.len().max(1) as f64),
            peak
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<16} {:>4} {:>6} {:<11} {:>16} {:>14} {:>10} {:>9} {:>12}",
        "workload", "prio", "weight", "allocator", "SLO met (%)", "GPU-hours", "preempted", "refused", "substituted"
    );
    for (i, w) in mix.file.workloads.iter().enumerate() {
        for (name, rs) in &rows {
            let per = |f: &dyn Fn(&super::cluster::WorkloadOutcome) -> f64| -> f64 {
                rs.iter().map(|r| f(&r.workloads[i])).sum::<f64>() / rs.len().max(1) as f64
            };
            let _ = writeln!(
                s,
                "{:<16} {:>4} {:>6} {:<11} {:>16} {:>14} {:>10.1} {:>9.1} {:>12.1}",
                w.name,
                w.priority,
                w.weight,
                name,
                fmt(&est(rs, |r| r.workloads[i].attainment()), 100.0, 2),
                fmt(&est(rs, |r| r.workloads[i].gpu_hours), 1.0, 2),
                per(&|o| o.preempted_replicas as f64),
                per(&|o| o.refused_ticks as f64),
                per(&|o| o.substituted_replicas as f64),
            );
        }
    }
    s
}

/// The checkpoints `paths` name: a directory holding `checkpoint.json` is one; another
/// directory stands for its subdirectories that hold one, in name order.
fn expand_checkpoints(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.join(crate::rl::checkpoint::META_FILE).is_file() {
            out.push(p.clone());
            continue;
        }
        let entries = std::fs::read_dir(p).map_err(|e| anyhow::anyhow!("--allocator-policy {}: {e}", p.display()))?;
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|d| d.join(crate::rl::checkpoint::META_FILE).is_file())
            .collect();
        found.sort();
        if found.is_empty() {
            anyhow::bail!("--allocator-policy {}: no checkpoint there nor in its subdirectories", p.display());
        }
        out.extend(found);
    }
    Ok(out)
}

/// `llmos share`.
pub fn share(args: ShareArgs) -> anyhow::Result<()> {
    let mut mix = Mix::load(&args.mix)?;
    for (pool, n) in &args.capacity {
        let Some(p) = mix.file.pools.iter_mut().find(|p| &p.name == pool) else {
            anyhow::bail!("--capacity {pool}={n}: the mix has no pool `{pool}`");
        };
        p.capacity_gpus = *n;
    }
    if args.seeds == 0 {
        anyhow::bail!("--seeds: give at least 1");
    }
    if args.allocators.contains(&Allocator::Learned) && args.allocator_policy.is_empty() {
        anyhow::bail!("--allocators learned needs --allocator-policy DIR[,DIR...] (llmos share-train writes one)");
    }
    let checkpoints = expand_checkpoints(&args.allocator_policy)?;
    let runs = run_all(&mix, &args.allocators, args.seeds, args.policy.as_deref(), &checkpoints)?;
    print!("{}", table(&mix, &runs));
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&runs)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json.as_bytes())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
