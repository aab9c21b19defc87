//! The residual action layout: the network's options are offsets from the replicas a base
//! policy asks for each tick. With every offset 0 the policy *is* the base policy, tick for
//! tick; a checkpoint trained on it names its base, loads as the operator's learned
//! policy with the base rebuilt from the spec, and refuses a base that is learned.

use std::path::PathBuf;

use llmos::rl::checkpoint;
use llmos::rl::dqn::DeviceChoice;
use llmos::rl::encoding::ActionLayoutKind;
use llmos::rl::env::{Env, EpisodeConfig, RewardConfig, TwinEnv};
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

#[test]
fn zero_offsets_are_the_base_policy_tick_for_tick() {
    let scenario = Scenario::load(&scenario_path()).unwrap();
    let base = "hpa:target=4";
    let mut env = TwinEnv::new(
        scenario.clone(),
        ActionLayoutKind::Residual,
        vec![-1, 0, 1],
        RewardConfig::default(),
        whole_run(),
    )
    .unwrap()
    .with_base(base)
    .unwrap();
    assert!(env.feature_names().iter().any(|n| n.ends_with(".base_target")));
    let seed = 3;
    let (_, mut mask) = env.reset(seed).unwrap();
    let hold = env.action_layout().hold();
    let mut ours = Vec::new();
    loop {
        assert!(hold.iter().zip(llmos::rl::env::branch_offsets(&env.branch_sizes())).all(|(h, off)| mask[off + h]));
        let s = env.step(&hold).unwrap();
        let obs = env.observation().unwrap();
        ours.push(obs.slots.iter().map(|x| x.desired_replicas).collect::<Vec<_>>());
        mask = s.mask;
        if s.truncated || s.terminated {
            break;
        }
    }
    let mut alone =
        llmos::rl::registry().parse(base, &scenario.spec.policy).unwrap().build_for(&scenario.spec).unwrap();
    let run = rollout(alone.as_mut(), &scenario, seed, (0.0, 1.0), 1.0, &RewardConfig::default()).unwrap();
    let theirs: Vec<Vec<u32>> = run.ticks.iter().map(|t| t.desired.clone()).collect();
    assert_eq!(ours, theirs, "zero offsets must decide as {base} alone");
    // The fleet moved: the comparison is not of two idle runs.
    assert!(theirs.iter().map(|d| d.iter().sum::<u32>()).max() > theirs.first().map(|d| d.iter().sum::<u32>()));
}

#[test]
fn a_residual_layout_needs_a_heuristic_base() {
    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mk = |kind| TwinEnv::new(scenario.clone(), kind, vec![-1, 0, 1], RewardConfig::default(), whole_run()).unwrap();
    let e = mk(ActionLayoutKind::Factored).with_base("hpa").err().unwrap().to_string();
    assert!(e.contains("residual"), "{e}");
    let e = mk(ActionLayoutKind::Residual).with_base("dqn:/some/ckpt").err().unwrap().to_string();
    assert!(e.contains("cannot be used here"), "{e}");
    let e = mk(ActionLayoutKind::Residual).with_base("nonsense").err().unwrap().to_string();
    assert!(e.contains("residualBase"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        scenario: scenario_path(),
        out: dir.path().join("x"),
        action_layout: ActionLayoutKind::Residual,
        ..Default::default()
    };
    let e = train(&cfg).unwrap_err().to_string();
    assert!(e.contains("residualBase"), "{e}");
}

#[test]
fn a_residual_checkpoint_names_its_base_and_loads_as_the_learned_policy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let cfg = TrainConfig {
        scenario: scenario_path(),
        steps: 1_024,
        seed: 1,
        out: out.clone(),
        action_layout: ActionLayoutKind::Residual,
        residual_base: Some("hpa:target=4".into()),
        deltas: vec![-2, -1, 0, 1, 2],
        reward: RewardConfig { cost_weight_per_usd: 5_000.0, ..Default::default() },
        episodes: whole_run(),
        algorithm: Algorithm::Ppo,
        ppo: PpoConfig {
            hidden: vec![32],
            num_envs: 2,
            rollout_steps: 64,
            device: DeviceChoice::Cpu,
            ..Default::default()
        },
        ..Default::default()
    };
    train(&cfg).unwrap();
    let meta = checkpoint::read_meta(&out).unwrap();
    let layout = meta.action_layout.unwrap();
    assert_eq!(layout.kind, ActionLayoutKind::Residual);
    assert_eq!(layout.base.as_deref(), Some("hpa:target=4"));
    assert!(meta.workload.unwrap().base_feature);

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let policy = DqnPolicy::load_on(&out, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let mut spy = Reasons(policy, Vec::new());
    rollout(&mut spy, &scenario, 0, (0.0, 1.0), 1.0, &cfg.reward).unwrap();
    let based = spy.1.iter().filter(|r| r.contains("base policy") && r.contains("hpa")).count();
    assert!(based * 2 > spy.1.len(), "most decisions should name the base policy: {:?}", spy.1);
}
