//! Property tests of the fleet and engines under random traffic and random decisions:
//! requests in = finished + in flight + rejected; time never goes back; KV blocks within
//! capacity; pool GPUs never oversubscribed; replicas serve only after their cold start;
//! preempted requests complete.

use llmos::policy::Decision;
use llmos::twin::{RunWindow, Scenario, Twin};
use proptest::prelude::*;

/// A scenario with a deliberately small GPU (few KV blocks) so that preemption happens.
fn scenario(rate: f64, input: f64, output: f64, cap_small: u32, chunked: bool, prefix: bool) -> Scenario {
    let text = format!(
        r#"
initial_replicas = [{{ variant = "a", pool = "small", replicas = 1 }}]
[[gpus]]
name = "Tiny-20GB"
peak_bf16_tflops = 312.0
hbm_gb_s = 2039.0
memory_gib = 20.0
interconnect_gb_s = 300.0
default_usd_per_hour = 1.0
[workload.synthetic]
duration_s = 240.0
arrival = {{ kind = "gamma", rate_rps = {rate}, cv = 2.0 }}
lengths = {{ kind = "lognormal", input_mean = {input}, input_cv = 1.0, output_mean = {output}, output_cv = 1.0, max_tokens = 3000 }}
[engine]
max_num_batched_tokens = 1024
max_num_seqs = 64
enable_chunked_prefill = {chunked}
enable_prefix_caching = {prefix}
[cluster]
pod_startup_s = 5.0
gateway_queue_limit = 200
[spec]
variants = [
  {{ name = "a", model = "llama-3-8b", image = "vllm", gpusPerReplica = 1, coldStartSeconds = 20.0 }},
  {{ name = "b", model = "mistral-7b", image = "vllm", gpusPerReplica = 2 }},
]
gpuPools = [
  {{ name = "small", gpuType = "Tiny-20GB", pricePerGpuHour = 1.0, capacityGpus = {cap_small} }},
  {{ name = "big", gpuType = "A100-80GB", pricePerGpuHour = 3.0, capacityGpus = 4 }},
]
policy = {{ intervalSeconds = 10 }}
metrics = {{ windowSeconds = 20 }}
"#
    );
    Scenario::from_toml_str(&text, "prop.toml").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]
    #[test]
    fn fleet_invariants(rate in 0.5f64..12.0, input in 50f64..1500.0, output in 5f64..400.0, cap in 1u32..4,
                        chunked in any::<bool>(), seed in 0u64..1000, moves in proptest::collection::vec((0usize..4, 0u32..4), 40)) {
        let s = scenario(rate, input, output, cap, chunked, false);
        let mut twin = Twin::new(&s, seed).unwrap();
        let mut last = twin.now_s();
        for (i, (slot, n)) in moves.iter().enumerate() {
            let obs = twin.observe();
            let mut d = Decision::hold(&obs, "random");
            if let Some(t) = obs.slots.get(*slot) {
                d.set(&t.variant.clone(), &t.pool.clone(), *n);
            }
            // Keep at least one replica at the end so everything drains.
            if i + 1 == moves.len() {
                d.set("a", "big", 1);
            }
            twin.apply(&d);
            twin.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
            twin.step();
            prop_assert!(twin.now_s() >= last, "time went back");
            last = twin.now_s();
            twin.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let mut guard = 0;
        while !twin.is_done() && guard < 2000 {
            twin.step();
            twin.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
            guard += 1;
        }
        prop_assert!(twin.is_done(), "did not drain");
        let r = twin.report();
        prop_assert_eq!(r.arrived, r.finished + r.rejected + r.in_flight);
        prop_assert_eq!(r.in_flight, 0);
    }
}

#[test]
fn preempted_requests_complete() {
    let s = scenario(10.0, 800.0, 600.0, 1, true, false);
    let mut twin = Twin::new(&s, 4).unwrap();
    while !twin.is_done() {
        twin.step();
        twin.check_invariants().unwrap();
    }
    let r = twin.report();
    assert!(r.preemptions > 0, "expected preemptions on a tiny KV cache");
    assert_eq!(r.arrived, r.finished + r.rejected);
    assert!(r.finished > 0);
}

#[test]
fn variant_switch_starts_new_before_draining_old() {
    let s = scenario(3.0, 300.0, 100.0, 2, true, false);
    let mut twin = Twin::new(&s, 9).unwrap();
    twin.step();
    let obs = twin.observe();
    let mut d = Decision::hold(&obs, "switch");
    d.set("a", "small", 0);
    d.set("b", "big", 1);
    twin.apply(&d);
    // The old replica keeps serving until the new one is ready.
    let serving = |t: &Twin| {
        t.replicas()
            .iter()
            .filter(|r| matches!(r.state, llmos::twin::ReplicaState::Ready | llmos::twin::ReplicaState::Retiring))
            .count()
    };
    assert_eq!(serving(&twin), 1);
    let mut saw_gap = false;
    for _ in 0..20 {
        twin.step();
        twin.check_invariants().unwrap();
        if serving(&twin) == 0 {
            saw_gap = true;
        }
    }
    assert!(!saw_gap, "no replica was serving during the switch");
    let reps = twin.replicas();
    assert!(reps.iter().all(|r| r.variant == "b"), "{reps:?}");
}

#[test]
fn prefix_cache_accounting_on_mooncake_window() {
    let s = Scenario::load(std::path::Path::new("scenarios/mooncake-conv-prefix.toml")).unwrap();
    let mut twin = Twin::with_window(&s, RunWindow::new(0, (0.0, 0.04), 1.0)).unwrap();
    while !twin.is_done() {
        twin.step();
        twin.check_invariants().unwrap();
    }
    let r = twin.report();
    assert_eq!(r.arrived, r.finished + r.rejected);
    let hit = r.prefix_cache_hit_rate.unwrap();
    assert!(hit > 0.0 && hit < 0.37, "hit rate {hit} must be positive and below the infinite-cache bound 36.6%");
}
