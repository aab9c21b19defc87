//! The out-of-range guard of a learned policy (`policy.dqn.outOfRange`): while an input
//! feature is further than `maxZ` standard deviations from the mean the checkpoint saw in
//! training, the fallback policy decides, and entering and leaving the fallback are
//! warnings (published by the operator as `PolicyWarning` Events).
//!
//! A small checkpoint is trained on `scenarios/tiny-step-two-pools.toml` (a few hundred
//! ticks: the guard's behaviour does not depend on what the network learned), then:
//! - with a limit every observation exceeds, a checkpoint without a recorded training
//!   range decides exactly as its fallback alone does, tick for tick (the fallback sees
//!   every observation), while one with the range keeps most decisions at the training
//!   load (a value seen in training is in range however far from the mean);
//! - with the guard off, it decides exactly as the bare network;
//! - at a load far beyond training the fallback takes over, with one warning on entering
//!   and one on leaving, alternating;
//! - bad guard settings are refused with errors naming the field.

use std::path::{Path, PathBuf};

use llmos::policy::{Decision, Observation, Policy};
use llmos::rl::dqn::{DeviceChoice, DqnConfig, TargetUpdate};
use llmos::rl::env::{EpisodeConfig, RewardConfig};
use llmos::rl::policy::DqnPolicy;
use llmos::rl::rollout::rollout;
use llmos::rl::schedule::EpsilonSchedule;
use llmos::rl::train::{train, TrainConfig};
use llmos::twin::Scenario;

fn scenario_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml")
}

/// A checkpoint trained for 400 ticks on the first half of the tiny scenario at load 1.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let out = dir.join("ckpt");
    let cfg = TrainConfig {
        scenario: scenario_path(),
        steps: 400,
        seed: 1,
        out: out.clone(),
        deltas: vec![-1, 0, 1, 2],
        reward: RewardConfig { cost_weight_per_usd: 5_000.0, ..Default::default() },
        episodes: EpisodeConfig { train_window: (0.0, 1.0), episode_frac: 1.0, ..Default::default() },
        dqn: DqnConfig {
            hidden: vec![16],
            learning_starts: 100,
            device: DeviceChoice::Cpu,
            epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 300 },
            target: TargetUpdate::Hard { every: 100 },
            ..Default::default()
        },
        ..Default::default()
    };
    train(&cfg).unwrap();
    out
}

/// Records every decision's reason and warnings of the policy it wraps.
struct Spy {
    inner: Box<dyn Policy>,
    reasons: Vec<String>,
    warnings: Vec<String>,
}

impl Policy for Spy {
    fn name(&self) -> &str {
        "spy"
    }
    fn decide(&mut self, obs: &Observation) -> Decision {
        let d = self.inner.decide(obs);
        self.reasons.push(d.reason.clone());
        self.warnings.extend(d.warnings.iter().cloned());
        d
    }
    fn reset(&mut self) {
        self.inner.reset();
    }
    fn feedback(&mut self, next: &Observation, reward: f64) {
        self.inner.feedback(next, reward);
    }
}

/// A copy of checkpoint `dir` in `to` whose normaliser has no recorded minimum and
/// maximum, as checkpoints written before they were recorded.
fn without_range(dir: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let path = to.join("checkpoint.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let n = meta["normaliser"].as_object_mut().unwrap();
    assert!(n.remove("min").is_some() && n.remove("max").is_some(), "a new checkpoint records its range");
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    to.to_path_buf()
}

fn build(name: &str, scenario: &Scenario) -> Result<Box<dyn Policy>, String> {
    let reg = llmos::rl::registry();
    reg.parse(name, &scenario.spec.policy).and_then(|c| c.build_for(&scenario.spec)).map_err(|e| e.to_string())
}

fn desired(policy: &mut dyn Policy, scenario: &Scenario, load: f64) -> Vec<Vec<u32>> {
    let run = rollout(policy, scenario, 0, (0.0, 1.0), load, &RewardConfig::default()).unwrap();
    run.ticks.into_iter().map(|t| t.desired).collect()
}

#[test]
fn the_guard_hands_decisions_to_its_fallback_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path());
    let c = ckpt.display().to_string();
    let scenario = Scenario::load(&scenario_path()).unwrap();

    // A checkpoint written before the training range was recorded: the z rule alone.
    let legacy = without_range(&ckpt, &tmp.path().join("legacy"));
    let l = legacy.display().to_string();

    // Every observation beyond a tiny limit: the fallback decides every tick, as it would alone.
    let mut guarded = build(&format!("dqn:{l},max-z=0.0001,fallback=hpa:target=4"), &scenario).unwrap();
    let mut alone = build("hpa:target=4", &scenario).unwrap();
    let (g, a) = (desired(guarded.as_mut(), &scenario, 1.0), desired(alone.as_mut(), &scenario, 1.0));
    assert_eq!(g, a, "the guarded policy with every input out of range must decide as its fallback");

    // With the range recorded, a value the feature took in training is in range however
    // far from the mean: at the training load the network keeps most decisions.
    let fallbacks = |name: String| {
        let mut spy = Spy { inner: build(&name, &scenario).unwrap(), reasons: vec![], warnings: vec![] };
        desired(&mut spy, &scenario, 1.0);
        let n = spy.reasons.iter().filter(|r| r.contains("out of training range")).count();
        (n, spy.reasons.iter().filter(|r| !r.contains("missing metrics")).count())
    };
    let (with_range, ticks) = fallbacks(format!("dqn:{c},max-z=0.0001,fallback=hpa:target=4"));
    let (z_only, z_ticks) = fallbacks(format!("dqn:{l},max-z=0.0001,fallback=hpa:target=4"));
    assert_eq!(z_only, z_ticks, "the z rule alone at a tiny limit: every seen tick falls back");
    assert!(with_range < ticks / 2, "{with_range} of {ticks} ticks fell back with the training range recorded");

    // The guard off: the bare network.
    let mut off = build(&format!("dqn:{c},max-z=0"), &scenario).unwrap();
    let mut bare = DqnPolicy::load_on(&ckpt, &scenario.spec, DeviceChoice::Cpu).unwrap();
    assert_eq!(desired(off.as_mut(), &scenario, 1.0), desired(&mut bare, &scenario, 1.0));

    // Twenty times the training load: the fallback takes over with a warning naming the
    // feature, and says when the network decides again.
    let mut spy =
        Spy { inner: build(&format!("dqn:{c},fallback=hpa"), &scenario).unwrap(), reasons: vec![], warnings: vec![] };
    desired(&mut spy, &scenario, 20.0);
    let fell_back = spy.reasons.iter().filter(|r| r.contains("out of training range")).count();
    assert!(fell_back > 0, "no fallback at 20x the training load: {:?}", spy.reasons);
    assert!(spy.reasons.iter().any(|r| r.contains("), fallback hpa: ")), "{:?}", spy.reasons);
    assert!(!spy.warnings.is_empty());
    for (i, w) in spy.warnings.iter().enumerate() {
        let entering = w.contains("standard deviations from the training mean") && w.contains("hpa decides");
        let leaving = w.contains("back in the training range");
        assert!(if i % 2 == 0 { entering } else { leaving }, "warning {i} out of order: {:?}", spy.warnings);
    }
    // One entering warning per stretch of fallback ticks (a tick held for missing metrics
    // does not end a stretch: nothing was seen).
    let seen: Vec<&String> = spy.reasons.iter().filter(|r| !r.contains("missing metrics")).collect();
    let stretches = seen
        .windows(2)
        .filter(|w| !w[0].contains("out of training range") && w[1].contains("out of training range"))
        .count()
        + usize::from(seen[0].contains("out of training range"));
    assert_eq!(spy.warnings.iter().filter(|w| w.contains("hpa decides")).count(), stretches);

    // `hold` keeps the fleet while out of range.
    let mut hold = build(&format!("dqn:{l},max-z=0.0001,fallback=hold"), &scenario).unwrap();
    let h = desired(hold.as_mut(), &scenario, 1.0);
    assert!(h.windows(2).all(|w| w[0] == w[1]), "hold changed the fleet: {h:?}");
}

#[test]
fn bad_guard_settings_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path());
    let c = ckpt.display().to_string();
    let scenario = Scenario::load(&scenario_path()).unwrap();
    for (name, needle) in [
        (format!("dqn:{c},fallback=dqn:{c}"), "outOfRange.fallback"),
        (format!("dqn:{c},fallback=clairvoyant"), "outOfRange.fallback"),
        (format!("dqn:{c},fallback=nonsense"), "outOfRange.fallback"),
        (format!("dqn:{c},fallback=hpa:target=-1"), "outOfRange.fallback"),
        (format!("dqn:{c},max-z=-1"), "maxZ"),
        (format!("dqn:{c},max-z=many"), "max-z"),
        (format!("dqn:{c},bogus=1"), "bogus"),
    ] {
        let e = build(&name, &scenario).err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(e.contains(needle), "{name}: {e}");
    }
    // A list keeps the keys after a path with their name.
    let list = llmos::rl::registry()
        .parse_list(&format!("hpa,dqn:{c},max-z=4,fallback=forecast:capacity=8,kpa"), &scenario.spec.policy)
        .unwrap();
    let labels: Vec<&str> = list.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["hpa", &format!("dqn:{c},max-z=4,fallback=forecast:capacity=8"), "kpa"]);
}

/// A shipped policy is selectable by name (`policies/<name>`, from the repository root the
/// tests run in) and loads for the workload it was trained for.
#[test]
fn a_shipped_policy_loads_by_name() {
    let code =
        Scenario::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/azure-code-llama3-8b-a100.toml"))
            .unwrap();
    assert_eq!(
        llmos::rl::policy::resolve_checkpoint("azure-code-ppo"),
        PathBuf::from("policies/azure-code-ppo"),
        "run from the repository root"
    );
    let mut p = build("dqn:azure-code-ppo", &code).unwrap();
    let run = rollout(p.as_mut(), &code, 0, (0.6, 0.65), 1.0, &RewardConfig::default()).unwrap();
    assert!(!run.ticks.is_empty());
    // A name that is no shipped policy fails naming it.
    let e = build("dqn:no-such-policy", &code).err().unwrap();
    assert!(e.contains("no-such-policy"), "{e}");
}
