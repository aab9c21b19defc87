//! One Observation builder: the twin's observation is what the live operator would build
//! from the same pods.
//!
//! At every control tick of a twin run with scale-ups, scale-downs and a variant switch,
//! the serving replicas' metrics go through two paths into [`PodScraper`] (the operator's
//! scrape state):
//!
//! 1. the twin's samples as they are (`Twin::replica_sample`),
//! 2. the same samples rendered as Prometheus text (`Twin::replica_metrics_text`, what
//!    `llmos twin-serve` serves on `/metrics`) and parsed by the scraper's parser.
//!
//! Both snapshots must be identical, and the twin's own observation must be its fleet
//! part completed by that snapshot: nothing the twin knows beyond the metrics (exact
//! latencies, gateway arrivals) reaches the policy.

use std::path::Path;

use llmos::metrics::scrape::parse_exposition;
use llmos::metrics::Endpoint;
use llmos::observe::PodScraper;
use llmos::policy::{Decision, Observation};
use llmos::twin::{ReplicaState, Scenario, Twin, TWIN_NAMESPACE};

/// The observation with its metric part cleared (what the fleet part alone gives).
fn fleet_part(obs: &Observation) -> Observation {
    let mut o = obs.clone();
    o.arrival_rate_rps = 0.0;
    o.arrival_rate_trend_rps_per_s = 0.0;
    o.latency = Default::default();
    o.slo_attainment = None;
    o.missing.clear();
    for s in o.slots.iter_mut() {
        s.waiting_requests = 0.0;
        s.running_requests = 0.0;
        s.kv_cache_usage = 0.0;
        s.arrival_rate_rps = 0.0;
    }
    o
}

fn run(scenario: &str, decisions: &[(usize, &[(&str, &str, u32)])], ticks: usize) {
    let s = Scenario::load(Path::new(scenario)).unwrap();
    let mut twin = Twin::new(&s, 3).unwrap();
    let mut direct = PodScraper::default();
    let mut text = PodScraper::default();
    let mut compared = 0;
    let mut with_rates = 0;
    for tick in 0..=ticks {
        if tick > 0 {
            twin.step();
        }
        let serving: Vec<_> = twin
            .replicas()
            .into_iter()
            .filter(|r| matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring))
            .collect();
        let endpoint = |r: &llmos::twin::ReplicaInfo| Endpoint {
            variant: r.variant.clone(),
            pool: r.pool.clone(),
            address: format!("replica-{}", r.id),
        };
        let samples: Vec<_> = serving.iter().map(|r| (endpoint(r), twin.replica_sample(r.id).unwrap())).collect();
        let parsed: Vec<_> = serving
            .iter()
            .map(|r| {
                let pod = parse_exposition(&twin.replica_metrics_text(r.id).unwrap());
                assert_eq!(pod.malformed_lines, 0, "{:?}", pod.problems);
                assert!(pod.problems.is_empty(), "{:?}", pod.problems);
                (endpoint(r), pod)
            })
            .collect();
        let now = twin.now_s();
        let a = direct.scrape(TWIN_NAMESPACE, s.name.as_str(), &s.spec, now, samples).clone();
        let b = text.scrape(TWIN_NAMESPACE, s.name.as_str(), &s.spec, now, parsed).clone();
        assert_eq!(a, b, "tick {tick}: samples and their text differ after the builder");
        let obs = twin.observe();
        assert_eq!(direct.complete(fleet_part(&obs)), obs, "tick {tick}: the twin's observation is not the builder's");
        compared += 1;
        if a.arrival_rate_rps.is_some() && a.latency.ttft_p50_s.is_some() {
            with_rates += 1;
        }
        for (at, targets) in decisions {
            if *at == tick {
                let mut d = Decision::default();
                for (v, p, r) in *targets {
                    d.set(v, p, *r);
                }
                twin.apply(&d);
            }
        }
    }
    assert_eq!(compared, ticks + 1);
    assert!(with_rates * 2 > ticks, "only {with_rates} of {ticks} ticks had rates and latencies");
}

#[test]
fn samples_and_their_text_give_the_same_observation_through_scale_changes() {
    // Scale up, then down (draining), on a step of traffic.
    run(
        "scenarios/tiny-step-two-pools.toml",
        &[(2, &[("llama3-8b", "cheap", 3)]), (10, &[("llama3-8b", "cheap", 1), ("llama3-8b", "fast", 1)])],
        30,
    );
}

#[test]
fn samples_and_their_text_give_the_same_observation_through_a_variant_switch() {
    let s = Scenario::load(Path::new("scenarios/two-variants-two-pools.toml")).unwrap();
    let v: Vec<String> = s.spec.variants.iter().map(|v| v.name.clone()).collect();
    let p: Vec<String> = s.spec.gpu_pools.iter().map(|p| p.name.clone()).collect();
    let (v0, v1, p0) = (v[0].as_str(), v[v.len() - 1].as_str(), p[0].as_str());
    run(
        "scenarios/two-variants-two-pools.toml",
        &[(3, &[(v1, p0, 2)]), (6, &[(v0, p0, 0)]), (14, &[(v0, p0, 1), (v1, p0, 0)])],
        30,
    );
}
