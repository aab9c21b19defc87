//! The DQN in the twin: on `scenarios/tiny-step-two-pools.toml` (Poisson load steps up
//! tenfold at t = 200 s; a cheap pool with 4 GPUs and an expensive one) a small DQN,
//! trained for a few thousand control ticks, must scale up when the load steps (keeping
//! the SLO where a fixed fleet loses it) and fill the cheap pool before touching the
//! expensive one. The policy is loaded back from the checkpoint, as the operator does.

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

#[test]
fn dqn_scales_up_for_the_step_and_prefers_the_cheap_pool() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path().join("ckpt"), 1);
    let summary = train(&cfg).unwrap();
    assert!(summary.episodes > 10);

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut policy = DqnPolicy::load_on(&cfg.out, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let run = rollout(&mut policy, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    let fixed = rollout(&mut Hold, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    eprintln!("slots {:?}", run.slots);
    for t in &run.ticks {
        eprintln!(
            "t={:6.0} desired {:?} ready {:?} finished {:4} met {:4} ${:.4}",
            t.time_s, t.desired, t.ready, t.finished, t.slo_met, t.cost_usd
        );
    }
    eprintln!("dqn: {}", run.report.to_table());
    eprintln!("hold: {}", fixed.report.to_table());

    let cheap = run.slots.iter().position(|s| s.ends_with("/cheap")).unwrap();
    let dear = run.slots.iter().position(|s| s.ends_with("/expensive")).unwrap();
    let att = run.report.slo_attainment.unwrap_or(0.0);
    let att_fixed = fixed.report.slo_attainment.unwrap_or(0.0);
    // SLO kept where the fixed fleet loses it (some misses while new replicas cold-start are unavoidable).
    assert!(att >= 0.8 && att > att_fixed + 0.5, "SLO attainment {att} (fixed fleet {att_fixed})");
    // Scaled up within four ticks (60 s) of the step at t = 200 s.
    let after = run.ticks.iter().filter(|t| t.time_s >= 200.0 && t.time_s < 260.0);
    assert!(
        after.map(|t| t.desired.iter().sum::<u32>()).max().unwrap_or(0) >= 3,
        "no scale-up within 60 s of the step"
    );
    // Cheap first: most GPU time on the cheap pool, and none on the expensive one once the
    // load is steady (the last ten ticks), when the cheap pool alone can carry it.
    let gh = |i: usize| {
        run.report
            .slots
            .iter()
            .find(|s| format!("{}/{}", s.variant, s.pool) == run.slots[i])
            .map(|s| s.gpu_hours)
            .unwrap_or(0.0)
    };
    assert!(gh(dear) * 2.0 < gh(cheap), "expensive pool {} GPU-h vs cheap {}", gh(dear), gh(cheap));
    for t in run.ticks.iter().rev().take(10) {
        assert_eq!(t.desired[dear], 0, "expensive replicas in steady state at t={}", t.time_s);
        assert!(t.desired[cheap] >= 3, "too few cheap replicas for 20 req/s at t={}", t.time_s);
    }
}
