//! The comparison harness: fair (same arrivals per seed), deterministic, and clear about
//! bad input.

use std::path::PathBuf;

use llmos::control::RewardConfig;
use llmos::eval::{compare, run_episode, stats, CompareConfig, RunLabel, Window};
use llmos::policy::build::parse_policy_name;
use llmos::policy::shield::Shield;
use llmos::twin::{RunWindow, Scenario, Twin};

fn scenario() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml")
}

fn cfg(policies: &str) -> CompareConfig {
    CompareConfig {
        scenario: scenario(),
        policies: policies.into(),
        seeds: 2,
        window: Window::All,
        loads: vec![1.0],
        replica_capacity_rps: Some(3.0),
        max_duration_s: Some(300.0),
        clairvoyant_sweep: Vec::new(),
        reward: RewardConfig::default(),
        timeline: false,
    }
}

#[test]
fn every_policy_sees_the_same_arrivals_and_runs_are_deterministic() {
    let a = compare(&cfg("hpa,kpa,static:2")).unwrap();
    assert_eq!(a.rows.len(), 3);
    for seed in 0..2 {
        let arrived: Vec<u64> = a.episodes.iter().filter(|e| e.seed == seed).map(|e| e.report.arrived).collect();
        assert!(arrived.iter().all(|&n| n == arrived[0] && n > 0), "seed {seed}: {arrived:?}");
    }
    let b = compare(&cfg("hpa,kpa,static:2")).unwrap();
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    let csv = stats::csv(&a.rows);
    assert!(csv.starts_with("policy,load,slo_pct_mean,slo_pct_ci95"), "{csv}");
    let table = stats::table(&a.rows, &a.loads);
    assert!(table.contains('*') && table.contains("hpa"), "{table}");
}

#[test]
fn a_recorded_timeline_has_every_tick_and_changes_nothing() {
    let plain = compare(&cfg("hpa,static:100")).unwrap();
    let recorded = compare(&CompareConfig { timeline: true, ..cfg("hpa,static:100") }).unwrap();
    assert_eq!(serde_json::to_string(&plain).unwrap(), serde_json::to_string(&recorded).unwrap());
    assert!(plain.episodes.iter().all(|e| e.timeline.is_none()));
    for e in &recorded.episodes {
        let t = e.timeline.as_ref().expect("recorded");
        assert_eq!(t.rows.len() as u64, e.ticks, "{}", e.policy);
        assert_eq!(t.slots.len(), t.rows[0].slots.len());
        let arrived: u64 = t.rows.iter().map(|r| r.arrived).sum();
        assert!(arrived <= e.report.arrived && arrived > 0, "{arrived} of {}", e.report.arrived);
        let overrides = t.rows.iter().filter(|r| !r.overrides.is_empty()).count();
        if e.policy == "static:100" {
            assert!(overrides > 0, "the shield clamps static:100 and the timeline says so");
            assert!(t.rows.iter().any(|r| r.overrides.iter().any(|o| o.contains("->"))));
        }
        let csv = t.to_csv();
        assert_eq!(csv.lines().count(), t.rows.len() + 1);
        let header = csv.lines().next().unwrap();
        assert_eq!(header.split(',').count(), 9 + 4 * t.slots.len() + 2, "{header}");
    }
}

#[test]
fn the_shield_is_applied_in_episodes() {
    let sc = Scenario::load(&scenario()).unwrap();
    let mut twin = Twin::with_window(&sc, RunWindow::new(1, (0.0, 0.5), 1.0)).unwrap();
    // static:100 asks for far more than capacity (4 + 8 GPUs, max 12): the shield clamps.
    let choice = parse_policy_name("static:100", &sc.spec.policy).unwrap();
    let mut policy = choice.build_for(&sc.spec).unwrap();
    let shield = Shield::new(&sc.spec);
    let run = RunLabel { policy: "static:100", seed: 1, load: 1.0 };
    let r = run_episode(&mut twin, policy.as_mut(), shield, run, &RewardConfig::default());
    assert!(r.shield_overrides > 0);
    assert!(r.series.iter().all(|p| p.desired_replicas <= 12));
}

#[test]
fn bad_policies_and_settings_are_clear_errors() {
    let e = compare(&cfg("hpa,nonsense")).unwrap_err().to_string();
    assert!(e.contains("unknown policy `nonsense`") && e.contains("static-peak"), "{e}");
    let mut c = cfg("static-peak");
    c.replica_capacity_rps = None;
    let e = compare(&c).unwrap_err().to_string();
    assert!(e.contains("--replica-capacity-rps"), "{e}");
    let e = compare(&cfg("dqn:/nowhere")).unwrap_err().to_string();
    assert!(e.contains("rl module"), "{e}");
    let mut c = cfg("hpa");
    c.loads = vec![0.0];
    assert!(compare(&c).unwrap_err().to_string().contains("--load"));
}

#[test]
fn the_reported_objective_is_the_sum_of_training_rewards() {
    // The harness and training (rollouts, the twin environment) tick through the one
    // control loop with the one reward, so a run's objective is the return training sees.
    let sc = Scenario::load(&scenario()).unwrap();
    let reward = RewardConfig::default();
    for name in ["hpa", "static:2"] {
        let choice = parse_policy_name(name, &sc.spec.policy).unwrap();
        let mut policy = choice.build_for(&sc.spec).unwrap();
        let mut twin = Twin::with_window(&sc, RunWindow::new(4, (0.0, 0.3), 1.5)).unwrap();
        let run = RunLabel { policy: name, seed: 4, load: 1.5 };
        let r = run_episode(&mut twin, policy.as_mut(), Shield::new(&sc.spec), run, &reward);
        let mut policy = choice.build_for(&sc.spec).unwrap();
        let ro = llmos::rl::rollout::rollout(policy.as_mut(), &sc, 4, (0.0, 0.3), 1.5, &reward).unwrap();
        assert!(r.ticks > 10 && r.objective != 0.0, "{name}: {} ticks, objective {}", r.ticks, r.objective);
        assert_eq!(r.ticks as usize, ro.ticks.len(), "{name}");
        assert_eq!(r.objective, ro.episodic_return, "{name}");
        assert_eq!(r.objective, ro.ticks.iter().map(|t| t.reward).sum::<f64>(), "{name}");
        assert_eq!(r.report, ro.report, "{name}");
        // The first observation is always blind (rates need two scrapes); most are not.
        assert!(
            r.blind_ticks >= 1 && r.blind_ticks * 4 < r.ticks,
            "{name}: {} of {} ticks blind",
            r.blind_ticks,
            r.ticks
        );
    }
}
