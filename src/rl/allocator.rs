//! A learned allocator for shared GPU pools: one centralised policy that, every tick,
//! chooses each workload's priority level for the arbiter from all workloads'
//! observations and proposals.
//!
//! **What it decides.** Each workload's policy (HPA, say) proposes replicas as alone; the
//! learned allocator then sets one priority level per workload (`low`, `mid`, `high`: one
//! factored head per workload) and [`crate::arbiter::arbitrate`] grants under those
//! levels. Trained with `--headroom H` it also adds 0 to H replicas to each workload's
//! proposal (a second head per workload): idle GPUs of the pool can then serve a
//! workload whose own policy reacts late; the workload's shield clamps the result again,
//! and the arbiter grants the extra replicas like any demand. The arbiter keeps every promise it makes under static priorities (no pool
//! over-committed, preemption only of strictly lower levels, guarantees honoured, no
//! refusal while a pool has room), so nothing the network outputs can break capacity or
//! a guarantee: no mask is needed. With the levels fixed to the static order it *is* the
//! arbiter; what it can learn is to change the order when that serves the weighted SLO
//! goodput better (the coding service's burst while chat has slack, say).
//!
//! **Why centralised.** The grants are one coupled decision over one resource: whom to
//! serve first only makes sense against what the others want. With a handful of
//! workloads the joint observation is small (11 features each, 2 for the pools), so one
//! network sees everything and no agent has to learn the others' behaviour as a moving
//! environment (what independent agents with a shared critic would face). It does not
//! scale to hundreds of workloads per pool; the arbiter does.
//!
//! **Reward** per tick: the weighted requests that missed their SLO (rejected, late or
//! never served), negated, over 100: `-Σ_w weight_w × (arrived_w − slo_met_w) / 100`. Its
//! sum over an episode is the comparison's weighted goodput minus the weighted arrivals,
//! which the allocator cannot change.
//!
//! **Training** ([`train_cli`], `llmos share-train`): PPO ([`crate::rl::ppo`]) over
//! environments that each run the mix in the twin ([`AllocatorEnv`]) on a training window
//! of the traces (default the first 60 %; `llmos share` judges on the last 40 %), with
//! each workload's load drawn per episode from a range, so the policy sees more than one
//! day's shape. The checkpoint is the usual one (weights + sidecar, `algorithm: ppo`);
//! its feature names carry the workload names, so it loads only for a mix of the same
//! workloads.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{self, Expected};
use super::dqn::{DeviceChoice, DqnAgent};
use super::env::{BranchSpec, Env, EnvStep, StepInfo};
use super::ppo::{train_ppo, PpoAgent, PpoConfig};
use super::RlError;
use crate::control::cluster::{start_mix, Allocator, ClusterLoop, Proposals};
use crate::policy::Policy;
use crate::twin::cluster::{ClusterTwin, Mix};

/// The priority levels a workload can be given, lowest first (the arbiter's priority is
/// the index).
pub const LEVELS: [&str; 3] = ["low", "mid", "high"];

/// Per-workload features, in order (each prefixed by the workload's name).
const WORKLOAD_FEATURES: [&str; 11] = [
    "arrival_rps",
    "arrival_trend_rps_per_s",
    "waiting_per_ready_replica",
    "running_per_ready_replica",
    "slo_attainment",
    "held_gpus_share",
    "ready_gpus_share",
    "proposed_gpus_share",
    "static_priority",
    "weight",
    "guaranteed_gpus_share",
];

/// Names of the features for workloads `names`, then the pools' two.
pub fn feature_names(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> =
        names.iter().flat_map(|n| WORKLOAD_FEATURES.iter().map(move |f| format!("{n}.{f}"))).collect();
    out.push("pools.free_gpus_share".into());
    out.push("pools.proposed_gpus_share".into());
    out
}

/// One branch per workload for its priority level, then, with `headroom` > 0, one per
/// workload for the replicas added to its proposal (`+0` to `+headroom`).
pub fn branches(names: &[String], headroom: u32) -> Vec<BranchSpec> {
    let mut out: Vec<BranchSpec> = names
        .iter()
        .map(|n| BranchSpec { name: format!("priority[{n}]"), options: LEVELS.iter().map(|l| l.to_string()).collect() })
        .collect();
    if headroom > 0 {
        out.extend(names.iter().map(|n| BranchSpec {
            name: format!("headroom[{n}]"),
            options: (0..=headroom).map(|k| format!("+{k}")).collect(),
        }));
    }
    out
}

/// The features of one tick: every workload's observation and proposal, shares of the
/// shared pools' total capacity.
pub fn features(mix: &Mix, world: &ClusterTwin, control: &ClusterLoop, proposals: &Proposals) -> Vec<f32> {
    let capacity = world.pools().iter().map(|p| p.capacity_gpus).sum::<u32>().max(1) as f64;
    let mut out = Vec::with_capacity(WORKLOAD_FEATURES.len() * proposals.len() + 2);
    let (mut held_all, mut proposed_all) = (0.0, 0.0);
    for (w, (_, outcome)) in proposals.iter().enumerate() {
        let obs = control.workload(w).observation();
        let standing = control.standing(w);
        let ready = obs.ready_replicas().max(1) as f64;
        let held: f64 = obs.slots.iter().map(|s| f64::from(s.desired_replicas * s.gpus_per_replica)).sum();
        let ready_gpus: f64 = obs.slots.iter().map(|s| f64::from(s.ready_replicas * s.gpus_per_replica)).sum();
        let proposed: f64 = outcome
            .decision
            .targets
            .iter()
            .map(|t| f64::from(t.replicas * obs.slot(&t.variant, &t.pool).map_or(1, |s| s.gpus_per_replica.max(1))))
            .sum();
        held_all += held;
        proposed_all += proposed;
        out.extend([
            obs.arrival_rate_rps,
            obs.arrival_rate_trend_rps_per_s,
            obs.waiting_requests() / ready,
            obs.running_requests() / ready,
            obs.slo_attainment.unwrap_or(1.0),
            held / capacity,
            ready_gpus / capacity,
            proposed / capacity,
            f64::from(standing.priority),
            mix.file.workloads.get(w).map_or(1.0, |x| x.weight),
            f64::from(standing.guaranteed_gpus) / capacity,
        ]);
    }
    out.push((1.0 - held_all / capacity).max(0.0));
    out.push(proposed_all / capacity);
    out.into_iter().map(|x| if x.is_finite() { x as f32 } else { 0.0 }).collect()
}

/// The allowed options for a tick's features: every priority level; headroom above `+0`
/// only for a workload that has traffic (its arrival rate, the first of its features, is
/// above zero), so no GPU is held for a workload nobody calls.
pub fn mask(features: &[f32], workloads: usize, headroom: u32) -> Vec<bool> {
    let mut m = vec![true; workloads * LEVELS.len()];
    if headroom > 0 {
        for w in 0..workloads {
            let traffic = features.get(w * WORKLOAD_FEATURES.len()).is_some_and(|r| *r > 0.0);
            m.push(true);
            m.extend(std::iter::repeat_n(traffic, headroom as usize));
        }
    }
    m
}

/// The arbiter priorities of an action (its first branch per workload: a level index).
pub fn priorities(action: &[usize], workloads: usize) -> Vec<i32> {
    action.iter().take(workloads).map(|&a| a.min(LEVELS.len() - 1) as i32).collect()
}

/// The replicas an action adds to each workload's proposal (its headroom branches; none
/// without them).
pub fn headroom(action: &[usize], workloads: usize) -> Vec<u32> {
    let extra: Vec<u32> = action.iter().skip(workloads).take(workloads).map(|&a| a as u32).collect();
    if extra.len() == workloads {
        extra
    } else {
        vec![0; workloads]
    }
}

/// One episode of a mix under the learned allocator.
struct Episode {
    world: ClusterTwin,
    control: ClusterLoop,
    policies: Vec<Box<dyn Policy>>,
    proposals: Proposals,
}

/// The twin with several workloads as an [`Env`] for the learned allocator (see the
/// module documentation).
pub struct AllocatorEnv {
    mix: Mix,
    policy: String,
    load_range: (f64, f64),
    headroom: u32,
    names: Vec<String>,
    episode: Option<Episode>,
}

impl AllocatorEnv {
    /// An environment over `mix` (its windows as given), each workload's policy the
    /// heuristic `policy`, each workload's load multiplied per episode by a factor drawn
    /// uniformly from `load_range`; `headroom` > 0 adds the headroom branches.
    pub fn new(mix: Mix, policy: &str, load_range: (f64, f64), headroom: u32) -> Self {
        let names = mix.file.workloads.iter().map(|w| w.name.clone()).collect();
        AllocatorEnv { mix, policy: policy.to_string(), load_range, headroom, names, episode: None }
    }

    fn observe(&self) -> Vec<f32> {
        match &self.episode {
            Some(e) => features(&self.mix, &e.world, &e.control, &e.proposals),
            None => vec![0.0; self.obs_dim()],
        }
    }
}

impl Env for AllocatorEnv {
    fn feature_names(&self) -> Vec<String> {
        feature_names(&self.names)
    }
    fn action_branches(&self) -> Vec<BranchSpec> {
        branches(&self.names, self.headroom)
    }
    fn reset(&mut self, seed: u64) -> Result<(Vec<f32>, Vec<bool>), RlError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_a110);
        let mut mix = self.mix.clone();
        for w in &mut mix.file.workloads {
            w.load *= rng.random_range(self.load_range.0..=self.load_range.1);
        }
        let (world, mut control, mut policies) = start_mix(&mix, seed, Some(&self.policy), Allocator::Learned)
            .map_err(|e| RlError::Config(format!("{e:#}")))?;
        let proposals = control.propose(&mut policies);
        self.episode = Some(Episode { world, control, policies, proposals });
        let obs = self.observe();
        let mask = mask(&obs, self.names.len(), self.headroom);
        Ok((obs, mask))
    }
    fn step(&mut self, action: &[usize]) -> Result<EnvStep, RlError> {
        let Some(e) = self.episode.as_mut() else {
            return Err(RlError::Config("step before reset".into()));
        };
        let n = self.names.len();
        let mut proposals = std::mem::take(&mut e.proposals);
        e.control.add_headroom(&mut proposals, &headroom(action, n));
        let tick = e.control.finish(&mut e.world, &mut e.policies, proposals, Some(&priorities(action, n)));
        e.world.check_invariants().map_err(|err| RlError::Config(format!("the shared pools broke: {err}")))?;
        let mut info = StepInfo::default();
        let mut missed = 0.0;
        for (t, w) in tick.ticks.iter().zip(&self.mix.file.workloads) {
            let s = &t.stats;
            missed += w.weight * s.arrived.saturating_sub(s.slo_met) as f64;
            info.finished += s.finished as f64;
            info.slo_met += s.slo_met as f64;
            info.rejected += s.rejected as f64;
            info.cost_usd += s.cost_usd;
            info.gpu_seconds += s.gpu_seconds;
        }
        let terminated = e.world.is_done();
        if !terminated {
            e.proposals = e.control.propose(&mut e.policies);
        }
        let obs = self.observe();
        let mask = mask(&obs, self.names.len(), self.headroom);
        Ok(EnvStep { obs, mask, reward: -missed / 100.0, terminated, truncated: false, info })
    }
}

/// A trained allocator, loaded from a checkpoint for a mix's workloads.
pub struct LearnedAllocator {
    agent: DqnAgent,
    headroom: u32,
    workloads: usize,
}

impl LearnedAllocator {
    /// Loads the checkpoint in `dir` for workloads `names` (its features and branches must
    /// be theirs, with or without headroom branches); errors name the file and the first
    /// difference.
    pub fn load(dir: &std::path::Path, names: &[String]) -> Result<Self, RlError> {
        // The headroom the checkpoint was trained with, from its branches (0 without).
        let meta_path = dir.join(checkpoint::META_FILE);
        let headroom = std::fs::read_to_string(&meta_path)
            .ok()
            .and_then(|t| serde_json::from_str::<checkpoint::CheckpointMeta>(&t).ok())
            .and_then(|m| m.branches.iter().find(|b| b.name.starts_with("headroom[")).map(|b| b.options.len() as u32))
            .map_or(0, |n| n.saturating_sub(1));
        let (fnames, br) = (feature_names(names), branches(names, headroom));
        let expected = Expected { feature_names: Some(&fnames), branches: Some(&br) };
        let (agent, _) = checkpoint::load(dir, &expected, DeviceChoice::Cpu)?;
        Ok(LearnedAllocator { agent, headroom, workloads: names.len() })
    }

    /// The priorities and the replicas added to each proposal for a tick's features (the
    /// most probable option per branch).
    pub fn decide(&self, features: &[f32]) -> (Vec<i32>, Vec<u32>) {
        let a = self.agent.greedy(features, &mask(features, self.workloads, self.headroom));
        (priorities(&a, self.workloads), headroom(&a, self.workloads))
    }
}

/// Arguments of `llmos share-train`.
#[derive(clap::Args, Debug)]
pub struct ShareTrainArgs {
    /// Mix file (TOML), e.g. `scenarios/shared/three-services-one-pool.toml`.
    #[arg(long)]
    pub mix: PathBuf,
    /// The window of every workload's trace to train on, `START,END` as fractions (the mix
    /// file's own windows are replaced; keep them apart from the ones `llmos share` judges on).
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [0.0, 0.6])]
    pub window: Vec<f64>,
    /// Environment steps (control ticks over all environments).
    #[arg(long, default_value_t = 20_000)]
    pub steps: u64,
    /// Training seed (network initialisation, episodes' loads and arrivals).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Every workload's policy while training (a heuristic kind).
    #[arg(long, default_value = "hpa")]
    pub policy: String,
    /// Parallel environments.
    #[arg(long, default_value_t = 2)]
    pub envs: usize,
    /// Range of the per-episode load factor of each workload, `MIN,MAX`.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [0.8, 1.2])]
    pub load: Vec<f64>,
    /// Most replicas the allocator may add to a workload's proposal per tick (0: it only
    /// sets priorities). Added replicas go through the workload's shield and the arbiter
    /// like any other demand.
    #[arg(long, default_value_t = 0)]
    pub headroom: u32,
    /// PPO's learning rate (annealed to zero over the run).
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// PPO's entropy bonus.
    #[arg(long, default_value_t = 0.01)]
    pub entropy_coef: f64,
    /// Checkpoint directory to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `llmos share-train`: trains a learned allocator on a mix and writes its checkpoint.
pub fn train_cli(args: ShareTrainArgs) -> anyhow::Result<()> {
    let (w0, w1) = (args.window[0], args.window[1]);
    anyhow::ensure!((0.0..1.0).contains(&w0) && w0 < w1 && w1 <= 1.0, "--window {w0},{w1}: give 0 ≤ START < END ≤ 1");
    let (l0, l1) = (args.load[0], args.load[1]);
    anyhow::ensure!(l0 > 0.0 && l0 <= l1 && l1.is_finite(), "--load {l0},{l1}: give 0 < MIN ≤ MAX");
    anyhow::ensure!(args.envs >= 1, "--envs: give at least 1");
    let mut mix = Mix::load(&args.mix)?;
    for w in &mut mix.file.workloads {
        w.window = Some((w0, w1));
    }
    let mut envs: Vec<AllocatorEnv> =
        (0..args.envs).map(|_| AllocatorEnv::new(mix.clone(), &args.policy, (l0, l1), args.headroom)).collect();
    let cfg = PpoConfig {
        num_envs: args.envs,
        seed: args.seed,
        device: DeviceChoice::Cpu,
        learning_rate: args.learning_rate,
        entropy_coef: args.entropy_coef,
        ..Default::default()
    };
    let mut agent = PpoAgent::new(envs[0].obs_dim(), &envs[0].branch_sizes(), cfg)?;
    let t0 = std::time::Instant::now();
    let mut returns: Vec<f64> = Vec::new();
    let mut log = |r: &super::dqn::EpisodeRecord| {
        returns.push(r.episodic_return);
        if returns.len() % 10 == 0 {
            let recent = &returns[returns.len() - 10..];
            eprintln!(
                "episode {:>4}  steps {:>7}  mean return of the last 10 {:>9.2}  {:.0}s",
                returns.len(),
                r.env_steps,
                recent.iter().sum::<f64>() / 10.0,
                t0.elapsed().as_secs_f64()
            );
        }
    };
    let (_, stats) = train_ppo(&mut agent, &mut envs, args.steps, &mut log, 0, &mut |_| Ok(()))?;
    let greedy = agent.greedy_agent()?;
    let record = serde_json::json!({
        "kind": "allocator", "mix": args.mix.display().to_string(), "window": [w0, w1], "load": [l0, l1],
        "policy": args.policy, "steps": args.steps, "envs": args.envs,
        "learningRate": args.learning_rate, "entropyCoef": args.entropy_coef, "headroom": args.headroom,
    });
    checkpoint::save_as(
        &args.out,
        &greedy,
        Some("ppo"),
        envs[0].feature_names(),
        envs[0].action_branches(),
        None,
        None,
        Some(record),
    )?;
    eprintln!(
        "trained {} steps in {:.0}s (last update: entropy {:.3}, approx KL {:.4}); wrote {}",
        agent.env_steps,
        t0.elapsed().as_secs_f64(),
        stats.entropy,
        stats.approx_kl,
        args.out.display()
    );
    Ok(())
}
