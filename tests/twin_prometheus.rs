//! Each serving replica's metrics render in Prometheus text with vLLM's names, and the
//! live metrics path (`metrics::scrape::parse_exposition`) reads them back.

use std::path::Path;

use llmos::metrics::scrape::parse_exposition;
use llmos::metrics::vllm::Field;
use llmos::twin::{ReplicaState, Scenario, Twin};

#[test]
fn replica_metrics_round_trip_through_the_scraper() {
    let s = Scenario::load(Path::new("scenarios/tiny-step-two-pools.toml")).unwrap();
    let mut twin = Twin::new(&s, 0).unwrap();
    for _ in 0..4 {
        twin.step();
    }
    let reps = twin.replicas();
    assert_eq!(reps.len(), 1);
    let r = &reps[0];
    assert_eq!((r.variant.as_str(), r.pool.as_str(), r.index, r.state), ("llama3-8b", "cheap", 0, ReplicaState::Ready));
    let text = twin.replica_metrics_text(r.id).unwrap();
    for n in [
        "vllm:num_requests_running{model_name=\"llama-3-8b\"}",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
    ] {
        assert!(text.contains(n), "{n} missing in\n{text}");
    }
    let pod = parse_exposition(&text);
    assert_eq!(pod.malformed_lines, 0, "{:?}", pod.problems);
    assert_eq!(pod.gauges.get(&Field::RunningRequests).copied(), Some(r.running as f64));
    assert_eq!(pod.gauges.get(&Field::WaitingRequests).copied(), Some(r.waiting as f64));
    assert!(pod.gauges.contains_key(&Field::KvCacheUsage));
    assert!(pod.counters.get(&Field::RequestSuccess).copied().unwrap_or(0.0) > 0.0);
    assert!(pod.counters.get(&Field::GenerationTokens).copied().unwrap_or(0.0) > 0.0);
    assert!(pod.histograms.contains_key(&Field::TimeToFirstToken));
    assert!(pod.histograms.contains_key(&Field::E2eLatency));
    // Arrival rate counts every arrival at the workload (2 req/s before the step).
    let obs = twin.observe();
    assert!(obs.arrival_rate_rps > 0.5 && obs.arrival_rate_rps < 4.0, "{}", obs.arrival_rate_rps);
}
