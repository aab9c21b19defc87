//! Training across traffic: episodes drawn from several scenarios by weight, each with its
//! load, cold start, price and SLO randomised within the configured ranges; the shipped
//! mix configuration loads; a scenario of another workload shape is refused by name; and
//! a run without a mix is the same, draw for draw, as before the mix existed.

use std::path::{Path, PathBuf};

use llmos::rl::encoding::ActionLayoutKind;
use llmos::rl::env::{Env, EpisodeConfig, RewardConfig, Source, TwinEnv};
use llmos::rl::mix::Randomisation;
use llmos::rl::train::TrainConfig;
use llmos::twin::Scenario;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(rel: &str) -> Scenario {
    Scenario::load(&root().join(rel)).unwrap()
}

fn env(scenario: Scenario) -> TwinEnv {
    let episodes =
        EpisodeConfig { train_window: (0.0, 0.45), episode_frac: 0.05, loads: vec![1.0], ..Default::default() };
    TwinEnv::new(scenario, ActionLayoutKind::Factored, vec![-1, 0, 1], RewardConfig::default(), episodes).unwrap()
}

fn source(rel: &str, weight: f64) -> Source {
    Source {
        scenario: load(rel),
        weight,
        episodes: EpisodeConfig {
            train_window: (0.0, 1.0),
            episode_frac: 0.02,
            loads: vec![1.0],
            ..Default::default()
        },
    }
}

/// Runs `n` ticks holding; returns the raw features of every step.
fn hold_run(env: &mut TwinEnv, seed: u64, n: usize) -> Vec<Vec<f32>> {
    let (first, _) = env.reset(seed).unwrap();
    let hold = env.action_layout().hold();
    let mut out = vec![first];
    for _ in 0..n {
        let s = env.step(&hold).unwrap();
        out.push(s.obs);
        if s.truncated {
            break;
        }
    }
    out
}

#[test]
fn episodes_follow_the_weights_and_see_the_randomised_workload() {
    let code = "scenarios/azure-code-llama3-8b-a100.toml";
    let randomise = Randomisation {
        load_scale: (0.5, 2.0),
        price_scale: (0.5, 2.0),
        ttft_scale: (0.5, 2.0),
        cold_start_scale: (0.5, 2.0),
        ..Default::default()
    };
    let sources = vec![source(code, 1.0), source("scenarios/mix/synthetic-onoff-llama3-8b-a100.toml", 3.0)];
    let mut e = env(load(code)).with_mix(sources, randomise).unwrap();
    let names = e.feature_names();
    let price_at = names.iter().position(|n| n == "pool[a100].price_per_gpu_hour").unwrap();
    let mut second = 0;
    let mut prices = Vec::new();
    for seed in 0..40 {
        let (x, _) = e.reset(seed).unwrap();
        let (index, f) = e.last_episode;
        second += usize::from(index == 1);
        assert!((0.5..=2.0).contains(&f.price) && (0.5..=2.0).contains(&f.load));
        // The observation carries the episode's price, and latencies are judged against
        // the episode's SLO target.
        let obs = e.observation().unwrap();
        assert!((obs.pools[0].price_per_gpu_hour_usd - 3.0 * f.price).abs() < 1e-9, "{obs:?}");
        assert!((f64::from(x[price_at]) - 3.0 * f.price).abs() < 1e-4, "{}", x[price_at]);
        prices.push(f.price);
    }
    assert!((22..=38).contains(&second), "weight 3 of 4 drew {second} of 40 episodes");
    prices.sort_by(f64::total_cmp);
    assert!(prices[0] < 0.7 && prices[39] > 1.4, "{prices:?}");
}

#[test]
fn the_same_seed_gives_the_same_episodes() {
    let code = "scenarios/azure-code-llama3-8b-a100.toml";
    let make = || {
        let r = Randomisation { load_scale: (0.6, 1.6), tpot_scale: (0.75, 1.5), ..Default::default() };
        env(load(code))
            .with_mix(vec![source(code, 1.0), source("scenarios/mix/synthetic-steps-llama3-8b-a100.toml", 1.0)], r)
            .unwrap()
    };
    let (mut a, mut b) = (make(), make());
    for seed in [4, 5, 6] {
        assert_eq!(hold_run(&mut a, seed, 12), hold_run(&mut b, seed, 12));
        assert_eq!(a.last_episode, b.last_episode);
    }
}

#[test]
fn a_mix_of_the_one_scenario_without_randomisation_is_the_plain_environment() {
    // The mix draws from its own random stream: a run without a mix keeps its episodes.
    let code = "scenarios/azure-code-llama3-8b-a100.toml";
    let mut plain = env(load(code));
    let own = EpisodeConfig { train_window: (0.0, 0.45), episode_frac: 0.05, loads: vec![1.0], ..Default::default() };
    let mut mixed = env(load(code))
        .with_mix(vec![Source { scenario: load(code), weight: 1.0, episodes: own }], Randomisation::default())
        .unwrap();
    for seed in [0, 9] {
        assert_eq!(hold_run(&mut plain, seed, 20), hold_run(&mut mixed, seed, 20));
    }
}

#[test]
fn another_workload_shape_is_refused_by_name() {
    let code = "scenarios/azure-code-llama3-8b-a100.toml";
    let other = source("scenarios/mooncake-conv-prefix.toml", 1.0);
    let err = env(load(code)).with_mix(vec![other], Randomisation::default()).err().unwrap().to_string();
    assert!(err.contains("mooncake-conv-prefix") && err.contains("llama31-8b/h100"), "{err}");
    let zero = source(code, 0.0);
    let err = env(load(code)).with_mix(vec![zero], Randomisation::default()).err().unwrap().to_string();
    assert!(err.contains("weight"), "{err}");
    let bad = Randomisation { cold_start_scale: (2.0, 0.5), ..Default::default() };
    let err = env(load(code)).with_mix(vec![], bad).err().unwrap().to_string();
    assert!(err.contains("coldStartScale"), "{err}");
}

#[test]
fn the_shipped_mix_configuration_loads_and_checks_its_windows() {
    let p = root().join("scenarios/train/mix-ppo.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let cfg: TrainConfig = toml::from_str(&text).unwrap();
    assert_eq!(cfg.mix.len(), 5);
    assert!(!cfg.randomise.is_off());
    cfg.randomise.check().unwrap();
    // No source of the mix is the held-out Azure conversation trace.
    for m in &cfg.mix {
        let s = Scenario::load(&root().join(&m.scenario)).unwrap();
        assert!(!s.name.contains("azure-conv"), "{}", s.name);
        if let Some(v) = &m.validation {
            v.check(m.episodes.train_window, llmos::rl::train::test_start_of(&s)).unwrap();
        }
        // Every source has the trained workload's slots.
        Source { scenario: s, weight: m.weight, episodes: m.episodes.clone() }
            .check(env(load("scenarios/azure-code-llama3-8b-a100.toml")).encoder().layout())
            .unwrap();
    }
}

#[test]
fn a_mix_validation_needs_the_runs_validation_section() {
    let text = std::fs::read_to_string(root().join("scenarios/train/mix-ppo.toml")).unwrap();
    let mut cfg: TrainConfig = toml::from_str(&text).unwrap();
    cfg.scenario = root().join("scenarios/azure-code-llama3-8b-a100.toml");
    for m in &mut cfg.mix {
        m.scenario = root().join(&m.scenario);
    }
    cfg.validation = None;
    cfg.steps = 16;
    cfg.out = std::env::temp_dir().join(format!("llmos-mix-noval-{}", std::process::id()));
    let err = llmos::rl::train::train(&cfg).unwrap_err().to_string();
    assert!(err.contains("mix[0]") && err.contains("validation"), "{err}");
    assert!(!Path::new(&cfg.out).join("model.safetensors").exists());
}
