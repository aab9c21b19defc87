//! Analytic checks: one request on an idle replica, low load, overload.

use llmos::policy::Decision;
use llmos::twin::catalog::Catalog;
use llmos::twin::perf::{PerfModel, RooflinePerf};
use llmos::twin::{Scenario, Twin};

fn scenario(arrival: &str, lengths: &str, duration: f64, extra: &str) -> Scenario {
    let text = format!(
        r#"
initial_replicas = [{{ variant = "v", pool = "p", replicas = 1 }}]
{extra}
[workload.synthetic]
duration_s = {duration}
arrival = {arrival}
lengths = {lengths}
[engine]
max_num_batched_tokens = 2048
[spec]
variants = [{{ name = "v", model = "llama-3-8b", image = "vllm", gpusPerReplica = 1 }}]
gpuPools = [{{ name = "p", gpuType = "A100-80GB", pricePerGpuHour = 3.0 }}]
policy = {{ intervalSeconds = 15 }}
"#
    );
    Scenario::from_toml_str(&text, "analytic.toml").unwrap()
}

fn run_to_end(twin: &mut Twin) {
    while !twin.is_done() {
        let obs = twin.observe();
        twin.apply(&Decision::hold(&obs, "hold"));
        twin.step();
        twin.check_invariants().unwrap();
    }
}

#[test]
fn one_request_on_idle_replica() {
    let s = scenario(
        r#"{ kind = "poisson", rate_rps = 0.01 }"#,
        r#"{ kind = "fixed", input_tokens = 1500, output_tokens = 100 }"#,
        100_000.0,
        "max_duration_s = 100000.0",
    );
    let s = {
        let mut s = s;
        s.file.workload.synthetic.as_mut().unwrap().max_requests = Some(1);
        s
    };
    let mut twin = Twin::new(&s, 3).unwrap();
    run_to_end(&mut twin);
    let r = twin.report();
    assert_eq!(r.finished, 1);
    let c = Catalog::default();
    let eng = &s.file.engine;
    let cpu = eng.cpu_costs();
    let perf = RooflinePerf::new(c.model("llama-3-8b", "").unwrap(), c.gpu("A100-80GB", "").unwrap(), 1).with_cpu(cpu);
    // Latencies count from the client's send: the per-request cost (HTTP, tokenisation)
    // first; each token reaches the client one streaming service time after it is computed
    // (the API server keeps up with one sequence).
    let front = cpu.request_s + cpu.per_prompt_token_s * 1500.0 + cpu.stream_s_per_token;
    // Prompt 1500 < budget 2048: one prefill iteration.
    let prefill = perf.prefill_s(1500);
    let (a, b) = perf.decode_affine(1);
    let decode: f64 = (0..99).map(|i| a + b * (1500.0 + i as f64)).sum();
    let ttft = r.ttft_s.mean.unwrap();
    let e2e = r.e2e_s.mean.unwrap();
    assert!((ttft - front - prefill).abs() < 1e-6, "ttft {ttft} vs front {front} + prefill {prefill}");
    assert!((e2e - front - prefill - decode).abs() < 1e-5, "e2e {e2e} vs {}", front + prefill + decode);
    let queue = r.queue_s.mean.unwrap() - cpu.request_s - cpu.per_prompt_token_s * 1500.0;
    assert!(queue.abs() < 1e-6, "queueing is the per-request cost alone: {queue}");
}

#[test]
fn low_poisson_load_has_near_zero_queueing() {
    let s = scenario(
        r#"{ kind = "poisson", rate_rps = 0.5 }"#,
        r#"{ kind = "fixed", input_tokens = 500, output_tokens = 50 }"#,
        1200.0,
        "",
    );
    let mut twin = Twin::new(&s, 11).unwrap();
    run_to_end(&mut twin);
    let r = twin.report();
    assert!(r.finished > 400, "{}", r.finished);
    // An arrival waits at most for the decode step in progress (~15 ms), after the
    // per-request cost (HTTP, tokenisation) that every latency counts from the client's send.
    let eng = &s.file.engine;
    let cpu = eng.cpu_costs();
    let front = cpu.request_s + cpu.per_prompt_token_s * 500.0;
    assert!(r.queue_s.mean.unwrap() - front < 0.02, "mean queue {:?}, request cost {front}", r.queue_s.mean);
    assert_eq!(r.slo_attainment, Some(1.0));
}

#[test]
fn overload_queue_grows() {
    let s = scenario(
        r#"{ kind = "poisson", rate_rps = 60.0 }"#,
        r#"{ kind = "fixed", input_tokens = 1000, output_tokens = 200 }"#,
        400.0,
        "",
    );
    let mut twin = Twin::new(&s, 5).unwrap();
    let mut waiting = Vec::new();
    for _ in 0..24 {
        twin.step();
        twin.check_invariants().unwrap();
        waiting.push(twin.observe().waiting_requests());
    }
    for w in waiting.windows(4).step_by(4) {
        assert!(w[3] > w[0], "queue does not grow: {waiting:?}");
    }
    assert!(waiting[23] > 1000.0, "{waiting:?}");
}
