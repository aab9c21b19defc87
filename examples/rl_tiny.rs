//! Trains a small DQN on `scenarios/tiny-step-two-pools.toml` and prints what the greedy
//! policy does, tick by tick: the quickest way to see the DQN learn in the twin.
//!
//! `cargo run --release --example rl_tiny -- [STEPS] [SEED] [TRAIN-CONFIG.toml]`

use std::path::PathBuf;

use llmos::policy::{Decision, Observation, Policy};
use llmos::rl::dqn::{DeviceChoice, DqnConfig, TargetUpdate};
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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3_000);
    let seed: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let scenario_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml");
    let out = std::env::temp_dir().join(format!("llmos-rl-tiny-{seed}"));
    let mut cfg = match args.get(3) {
        Some(p) => toml::from_str::<TrainConfig>(&std::fs::read_to_string(p)?)?,
        None => TrainConfig {
            deltas: vec![-1, 0, 1, 2],
            reward: RewardConfig { cost_weight_per_usd: 1_000.0, ..Default::default() },
            episodes: EpisodeConfig { train_window: (0.0, 1.0), episode_frac: 1.0, ..Default::default() },
            dqn: DqnConfig {
                hidden: vec![64, 64],
                gamma: 0.95,
                n_step: 3,
                learning_starts: 200,
                device: DeviceChoice::Cpu,
                epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: steps / 2 },
                target: TargetUpdate::Polyak { tau: 0.02 },
                ..Default::default()
            },
            ..Default::default()
        },
    };
    cfg.scenario = scenario_path.clone();
    cfg.out = out.clone();
    cfg.steps = steps;
    cfg.seed = seed;
    let s = train(&cfg)?;
    println!(
        "trained {} steps in {:.1} s ({:.0} steps/s, {:.0} updates/s)",
        s.env_steps, s.wall_s, s.env_steps_per_s, s.updates_per_s
    );
    let scenario = Scenario::load(&scenario_path)?;
    let mut policy = DqnPolicy::load_on(&out, &scenario.spec, DeviceChoice::Cpu)?;
    let mut baselines: Vec<(String, Box<dyn Policy>)> = Vec::new();
    for kind in ["hpa", "kpa", "queue"] {
        let mut spec = scenario.spec.clone();
        spec.policy.kind = match kind {
            "hpa" => llmos::policy::PolicyKind::Hpa,
            "kpa" => llmos::policy::PolicyKind::Kpa,
            _ => llmos::policy::PolicyKind::Queue,
        };
        baselines.push((kind.to_string(), llmos::policy::build::build_policy(&spec)?));
    }
    let mut hold = Hold;
    let mut all: Vec<(String, &mut dyn Policy)> =
        vec![("dqn".into(), &mut policy as &mut dyn Policy), ("hold".into(), &mut hold as &mut dyn Policy)];
    for (n, b) in baselines.iter_mut() {
        all.push((n.clone(), b.as_mut()));
    }
    for (name, p) in all {
        let run = rollout(p, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward)?;
        let traj: Vec<String> =
            run.ticks.iter().map(|t| t.desired.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("+")).collect();
        println!(
            "{name}: return {:.2}  SLO {:.2}%  GPU-h {:.3}  cost ${:.2}  slots {:?}\n  desired per tick: {}",
            run.episodic_return,
            run.report.slo_attainment.unwrap_or(0.0) * 100.0,
            run.report.gpu_hours,
            run.report.cost_usd,
            run.slots,
            traj.join(" ")
        );
    }
    Ok(())
}
