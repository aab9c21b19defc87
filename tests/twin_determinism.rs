//! The same scenario and seed give a byte-identical report; the shipped scenarios load.

use std::path::Path;

use llmos::policy::Decision;
use llmos::twin::{RunWindow, Scenario, Twin};

fn run(scenario: &Scenario, seed: u64, start: f64, end: f64) -> String {
    let mut twin = Twin::with_window(scenario, RunWindow::new(seed, (start, end), 1.0)).unwrap();
    while !twin.is_done() {
        let obs = twin.observe();
        twin.apply(&Decision::hold(&obs, "hold"));
        twin.step();
    }
    twin.check_invariants().unwrap();
    serde_json::to_string(&twin.report()).unwrap()
}

#[test]
fn same_seed_same_bytes_trace() {
    let s = Scenario::load(Path::new("scenarios/azure-conv-llama3-8b-a100.toml")).unwrap();
    let a = run(&s, 7, 0.0, 0.15);
    let b = run(&s, 7, 0.0, 0.15);
    assert_eq!(a, b);
}

#[test]
fn same_seed_same_bytes_synthetic_and_seeds_differ() {
    let s = Scenario::load(Path::new("scenarios/tiny-step-two-pools.toml")).unwrap();
    let a = run(&s, 1, 0.0, 0.3);
    assert_eq!(a, run(&s, 1, 0.0, 0.3));
    assert_ne!(a, run(&s, 2, 0.0, 0.3));
}

#[test]
fn shipped_scenarios_load() {
    for f in std::fs::read_dir("scenarios").unwrap() {
        let p = f.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) == Some("toml") {
            let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            Twin::new(&s, 0).unwrap();
        }
    }
}
