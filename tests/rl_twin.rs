//! The DQN in the twin: on `scenarios/tiny-step-two-pools.toml` (Poisson load steps up
//! tenfold at t = 200 s; a cheap pool with 4 GPUs and an expensive one) a small DQN,
//! trained for a few thousand control ticks, must scale up when the load steps (keeping
//! the SLO where a fixed fleet loses it) and fill the cheap pool before touching the
//! expensive one. The policy is loaded back from the checkpoint, as the operator does.
//! Several training seeds are judged, so the test asserts what training reliably
//! achieves, not what one seed happened to learn.

mod learning_support;

use std::path::PathBuf;

use llmos::policy::{Decision, Observation, Policy};
use llmos::rl::dqn::{DeviceChoice, DqnConfig, TargetUpdate};
use llmos::rl::encoding::ActionLayoutKind;
use llmos::rl::env::{EpisodeConfig, RewardConfig};
use llmos::rl::policy::DqnPolicy;
use llmos::rl::rollout::rollout;
use llmos::rl::schedule::EpsilonSchedule;
use llmos::rl::train::{train, TrainConfig};
use llmos::twin::Scenario;

struct Hold;
impl Policy for Hold {
    fn name(&self) -> &str {
        "hold"
    }
    fn decide(&mut self, obs: &Observation) -> Decision {
        Decision::hold(obs, "hold")
    }
}

fn scenario_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml")
}

fn tiny_config(out: PathBuf, seed: u64) -> TrainConfig {
    TrainConfig {
        scenario: scenario_path(),
        steps: 6_000,
        seed,
        out,
        action_layout: ActionLayoutKind::Factored,
        deltas: vec![-4, -1, 0, 1, 2],
        // λ = 5000 requests per USD: an idle expensive replica costs 37.5 requests' worth per
        // 15 s tick more than a cheap one, a signal the learner sees through arrival noise.
        reward: RewardConfig { cost_weight_per_usd: 5_000.0, ..Default::default() },
        episodes: EpisodeConfig { train_window: (0.0, 1.0), episode_frac: 1.0, ..Default::default() },
        dqn: DqnConfig {
            hidden: vec![64, 64],
            gamma: 0.95,
            n_step: 3,
            learning_rate: 1e-3,
            learning_starts: 200,
            batch_size: 64,
            device: DeviceChoice::Cpu,
            epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 3_000 },
            target: TargetUpdate::Hard { every: 250 },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What one trained seed achieved on the evaluation run.
#[derive(Debug)]
struct Outcome {
    seed: u64,
    /// SLO attainment of the DQN and of holding the initial fleet.
    attainment: (f64, f64),
    /// Most replicas desired within 60 s of the step.
    peak_after_step: u32,
    /// GPU-hours on the expensive and the cheap pool.
    gpu_hours: (f64, f64),
    /// Expensive and cheap replicas over the last ten ticks (max and min).
    steady: (u32, u32),
}

impl Outcome {
    /// SLO kept where the fixed fleet loses it (some misses while new replicas cold-start
    /// are unavoidable), and scaled up within four ticks (60 s) of the step at t = 200 s.
    fn scales_up(&self) -> bool {
        self.attainment.0 >= 0.8 && self.attainment.0 > self.attainment.1 + 0.5 && self.peak_after_step >= 3
    }
    /// Cheap first: most GPU time on the cheap pool, and none on the expensive one once the
    /// load is steady (the last ten ticks), with enough cheap replicas for 20 req/s.
    fn prefers_cheap(&self) -> bool {
        self.gpu_hours.0 * 2.0 < self.gpu_hours.1 && self.steady.0 == 0 && self.steady.1 >= 3
    }
}

fn train_and_judge(seed: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path().join("ckpt"), seed);
    let summary = train(&cfg).unwrap();
    assert!(summary.episodes > 10);

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut policy = DqnPolicy::load_on(&cfg.out, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let run = rollout(&mut policy, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    let fixed = rollout(&mut Hold, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    let cheap = run.slots.iter().position(|s| s.ends_with("/cheap")).unwrap();
    let dear = run.slots.iter().position(|s| s.ends_with("/expensive")).unwrap();
    let gh = |i: usize| {
        run.report
            .slots
            .iter()
            .find(|s| format!("{}/{}", s.variant, s.pool) == run.slots[i])
            .map(|s| s.gpu_hours)
            .unwrap_or(0.0)
    };
    let after = run.ticks.iter().filter(|t| t.time_s >= 200.0 && t.time_s < 260.0);
    let last: Vec<_> = run.ticks.iter().rev().take(10).collect();
    let outcome = Outcome {
        seed,
        attainment: (run.report.slo_attainment.unwrap_or(0.0), fixed.report.slo_attainment.unwrap_or(0.0)),
        peak_after_step: after.map(|t| t.desired.iter().sum::<u32>()).max().unwrap_or(0),
        gpu_hours: (gh(dear), gh(cheap)),
        steady: (
            last.iter().map(|t| t.desired[dear]).max().unwrap_or(0),
            last.iter().map(|t| t.desired[cheap]).min().unwrap_or(0),
        ),
    };
    let desired: Vec<_> = run.ticks.iter().map(|t| t.desired.clone()).collect();
    eprintln!("seed {seed}: {outcome:?}\n  desired per tick {desired:?}");
    outcome
}

/// Training seeds judged by the test; `LLMOS_TEST_SEEDS=1-8` tries others (e.g. to check
/// how often a property holds).
fn seeds() -> Vec<u64> {
    learning_support::seeds(&[1, 2, 3])
}

/// Trains seeds 1-3 (two at a time) and requires what DQN training reliably achieves here:
/// every seed scales up for the step and keeps the SLO; a majority also learns to prefer
/// the cheap pool. On the pinned numeric path (the default) all of seeds 1-8 did both
/// (docs/results.md), so the outcome is the same on every x86-64 machine. Under
/// `LLMOS_NUMERICS=native` the test is not expected to pass: on an AVX-512 processor's
/// native path seed 2 reached only 74 % SLO and seeds 1 and 2 kept expensive replicas, so
/// this 6,000-step budget does not learn reliably there. A learner that does not learn
/// cannot pass: holding the fleet gets 5 % SLO, and a policy blind to price splits its
/// replicas over both pools.
#[test]
fn dqn_scales_up_for_the_step_and_prefers_the_cheap_pool() {
    let seeds = seeds();
    let outcomes: Vec<Outcome> = seeds
        .chunks(2)
        .flat_map(|pair| {
            std::thread::scope(|sc| {
                let hs: Vec<_> = pair.iter().map(|&s| sc.spawn(move || train_and_judge(s))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    for o in &outcomes {
        eprintln!("seed {}: scales up {}, prefers cheap {}", o.seed, o.scales_up(), o.prefers_cheap());
    }
    for o in &outcomes {
        assert!(o.scales_up(), "seed {} did not scale up for the step / keep the SLO: {o:?}", o.seed);
    }
    let cheap = outcomes.iter().filter(|o| o.prefers_cheap()).count();
    assert!(cheap * 2 > outcomes.len(), "only {cheap} of {} seeds prefer the cheap pool: {outcomes:?}", outcomes.len());
}
