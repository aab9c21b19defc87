//! The capacity action layout: per slot the network holds or picks a capacity per replica
//! (requests/s), and the sizing rule `ceil(arrival rate / capacity)` turns it into
//! replicas. A fixed choice follows the load by the rule; a checkpoint trained with it
//! stores its capacities, loads as the operator's learned policy, explains its choices in
//! requests/s, and is refused when its capacities are not usable. The same with the
//! capacity in requests in flight and no free hold.

use std::path::PathBuf;

use llmos::rl::checkpoint;
use llmos::rl::dqn::DeviceChoice;
use llmos::rl::encoding::{ActionLayoutKind, CapacityMetric};
use llmos::rl::env::{branch_offsets, Env, EpisodeConfig, RewardConfig, TwinEnv};
use llmos::rl::policy::DqnPolicy;
use llmos::rl::ppo::PpoConfig;
use llmos::rl::rollout::rollout;
use llmos::rl::train::{train, Algorithm, TrainConfig};
use llmos::twin::Scenario;

mod rl_support;
use rl_support::Reasons;

fn scenario_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml")
}

fn whole_run() -> EpisodeConfig {
    EpisodeConfig { train_window: (0.0, 1.0), episode_frac: 1.0, loads: vec![1.0], ..Default::default() }
}

/// A short PPO run of the capacity layout on the step scenario: `capacities` per replica,
/// one hidden layer of `hidden`, a cost weight high enough that capacity matters.
fn ppo_capacity_config(out: PathBuf, seed: u64, steps: u64, capacities: Vec<f64>, hidden: i64) -> TrainConfig {
    TrainConfig {
        scenario: scenario_path(),
        steps,
        seed,
        out,
        action_layout: ActionLayoutKind::Capacity,
        capacities,
        reward: RewardConfig { cost_weight_per_usd: 5_000.0, ..Default::default() },
        episodes: whole_run(),
        algorithm: Algorithm::Ppo,
        ppo: PpoConfig {
            hidden: vec![hidden],
            num_envs: 2,
            rollout_steps: 64,
            device: DeviceChoice::Cpu,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_fixed_capacity_sizes_the_fleet_for_the_load_before_and_after_a_step() {
    // 2 req/s for 200 s, then 20: at 8 req/s per replica the rule asks for 1, then 3.
    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut env = TwinEnv::new(scenario, ActionLayoutKind::Capacity, vec![0], RewardConfig::default(), whole_run())
        .unwrap()
        .with_capacities(vec![2.0, 8.0])
        .unwrap();
    let branches = env.action_branches();
    assert_eq!(branches[0].name, "capacity[llama3-8b/cheap]");
    assert_eq!(branches[0].options, vec!["hold", "2rps", "8rps"]);
    let (_, mut mask) = env.reset(5).unwrap();
    let offsets = branch_offsets(&env.branch_sizes());
    // cheap at 8 req/s per replica; expensive (no replicas, no traffic) held.
    let action = vec![2, 0];
    let (mut before, mut after, mut ticks) = (Vec::new(), Vec::new(), 0);
    loop {
        let obs = env.observation().unwrap().clone();
        if obs.is_complete() {
            assert!(mask[offsets[0] + 2], "8 req/s per replica is allowed at t = {}", obs.time_s);
        }
        let s = env.step(&action).unwrap();
        ticks += 1;
        let now = env.observation().unwrap();
        let cheap = now.slot("llama3-8b", "cheap").unwrap().desired_replicas;
        let expensive = now.slot("llama3-8b", "expensive").unwrap().desired_replicas;
        assert_eq!(expensive, 0, "a slot that serves nothing is sized to nothing");
        if now.time_s < 200.0 {
            before.push(cheap);
        } else if now.time_s > 300.0 {
            after.push(cheap);
        }
        mask = s.mask;
        if s.truncated || s.terminated {
            break;
        }
    }
    assert!(ticks > 30, "{ticks} ticks");
    assert!(before.iter().all(|&r| r == 1), "at 2 req/s: {before:?}");
    assert!(after.iter().all(|&r| r == 3), "at 20 req/s: {after:?}");
}

#[test]
fn a_capacity_layout_needs_usable_capacities() {
    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mk = |kind| TwinEnv::new(scenario.clone(), kind, vec![-1, 0, 1], RewardConfig::default(), whole_run()).unwrap();
    let e = mk(ActionLayoutKind::Capacity).with_capacities(vec![]).err().unwrap().to_string();
    assert!(e.contains("needs capacities"), "{e}");
    let e = mk(ActionLayoutKind::Capacity).with_capacities(vec![1.0, f64::NAN]).err().unwrap().to_string();
    assert!(e.contains("capacities must be finite and > 0"), "{e}");
    let e = mk(ActionLayoutKind::Factored).with_capacities(vec![1.0]).err().unwrap().to_string();
    assert!(e.contains("only for actionLayout = \"capacity\""), "{e}");
    let text = "actionLayout = \"capacity\"\ncapacities = [1.0, -2.0]\n";
    let e = TrainConfig::from_toml_str(text, "cap.toml").unwrap_err().to_string();
    assert!(e.contains("cap.toml") && e.contains("capacities"), "{e}");
}

#[test]
fn a_capacity_checkpoint_stores_its_capacities_and_loads_as_the_learned_policy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let cfg = ppo_capacity_config(out.clone(), 1, 1_024, vec![1.0, 2.0, 4.0, 8.0], 32);
    train(&cfg).unwrap();
    let meta = checkpoint::read_meta(&out).unwrap();
    let layout = meta.action_layout.unwrap();
    assert_eq!(layout.kind, ActionLayoutKind::Capacity);
    assert_eq!(layout.capacities, vec![1.0, 2.0, 4.0, 8.0]);

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let policy = DqnPolicy::load_on(&out, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let mut spy = Reasons(policy, Vec::new());
    let run = rollout(&mut spy, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    assert!(run.ticks.len() > 30);
    // Every decision is a hold (the first ticks hold on metrics not yet seen) or names
    // the capacity it chose and the replicas it makes.
    for r in &spy.1 {
        assert!(r.starts_with("dqn: hold") || r.contains("req/s per replica"), "{r}");
    }
    assert!(spy.1.iter().any(|r| r.contains("req/s per replica")), "{:?}", spy.1);

    // A sidecar whose capacities were edited to nonsense is refused, naming the field.
    let path = out.join(checkpoint::META_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["actionLayout"]["capacities"] = serde_json::json!([1.0, 0.0, 4.0, 8.0]);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let e = DqnPolicy::load_on(&out, &scenario.spec, DeviceChoice::Cpu).unwrap_err().to_string();
    assert!(e.contains("capacities must be finite and > 0"), "{e}");
}

#[test]
fn an_in_flight_capacity_without_hold_round_trips_through_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let cfg = TrainConfig {
        capacity_metric: CapacityMetric::InFlight,
        capacity_hold: false,
        ..ppo_capacity_config(out.clone(), 2, 512, vec![1.0, 4.0, 16.0], 16)
    };
    train(&cfg).unwrap();
    let layout = checkpoint::read_meta(&out).unwrap().action_layout.unwrap();
    assert_eq!((layout.capacity_metric, layout.capacity_no_hold), (CapacityMetric::InFlight, true));

    // Loaded, it sizes by requests in flight every tick it can see: a hold only when blind.
    let scenario = Scenario::load(&scenario_path()).unwrap();
    let policy = DqnPolicy::load_on(&out, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let mut spy = Reasons(policy, Vec::new());
    rollout(&mut spy, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    for r in &spy.1 {
        assert!(r.starts_with("dqn: hold") || r.contains("requests in flight per replica"), "{r}");
    }
    assert!(spy.1.iter().any(|r| r.contains("requests in flight per replica")), "{:?}", spy.1);
}
