//! Direct scraping: rates between scrapes, counter resets after a restart, windowed
//! histogram percentiles, SLO attainment, and what is reported missing; plus
//! `ScrapeSource` against real HTTP endpoints on loopback.

use std::sync::{Arc, Mutex};

use llmos::crd::LLMWorkloadSpec;
use llmos::metrics::scrape::{parse_exposition, ScrapeState};
use llmos::metrics::{Endpoint, MetricsError, MetricsQuery, MetricsSource, ScrapeConfig, ScrapeSource};

fn spec() -> LLMWorkloadSpec {
    serde_json::from_value(serde_json::json!({
        "variants": [{"name": "small", "model": "m", "image": "vllm/vllm-openai"}],
        "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
        "slo": {"ttftMs": 500.0, "tpotMs": 50.0, "percentile": 90.0, "targetAttainment": 0.9},
        "metrics": {"source": "scrape", "windowSeconds": 30, "staleAfterSeconds": 20}
    }))
    .expect("valid spec")
}

/// A vLLM-like exposition with the given gauges, finished count and TTFT buckets
/// (≤0.1, ≤0.5, ≤1, total).
fn text(waiting: f64, running: f64, success: f64, ttft: [f64; 4]) -> String {
    format!(
        "# HELP vllm:num_requests_waiting Waiting.\n# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{{engine=\"0\",model_name=\"m\"}} {waiting}\n\
# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{engine=\"0\",model_name=\"m\"}} {running}\n\
# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"m\"}} 0.5\n\
# TYPE vllm:request_success_total counter\n\
vllm:request_success_total{{engine=\"0\",finished_reason=\"stop\",model_name=\"m\"}} {success}\n\
# TYPE vllm:time_to_first_token_seconds histogram\n\
vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"0.1\",model_name=\"m\"}} {}\n\
vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"0.5\",model_name=\"m\"}} {}\n\
vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"1.0\",model_name=\"m\"}} {}\n\
vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"m\"}} {}\n\
vllm:time_to_first_token_seconds_count{{engine=\"0\",model_name=\"m\"}} {}\n\
# TYPE vllm:inter_token_latency_seconds histogram\n\
vllm:inter_token_latency_seconds_bucket{{engine=\"0\",le=\"0.05\",model_name=\"m\"}} {}\n\
vllm:inter_token_latency_seconds_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"m\"}} {}\n",
        ttft[0],
        ttft[1],
        ttft[2],
        ttft[3],
        ttft[3],
        ttft[3] * 10.0,
        ttft[3] * 10.0
    )
}

fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint { variant: "small".into(), pool: "a100".into(), address: "10.0.0.1:8000".into() }]
}

#[test]
fn first_scrape_reports_rates_missing_then_rates_appear() {
    let s = spec();
    let eps = endpoints();
    let q = MetricsQuery { namespace: "ns", workload: "w", spec: &s, endpoints: &eps };
    let mut st = ScrapeState::default();
    let first = st.observe(&q, 100.0, vec![Ok(parse_exposition(&text(2.0, 4.0, 100.0, [10.0, 20.0, 25.0, 30.0])))]);
    assert!(first.arrival_rate_rps.is_none());
    assert!(first.missing.iter().any(|m| m.contains("first scrape")), "{:?}", first.missing);
    assert_eq!(first.slots[0].waiting_requests, 2.0);

    // 10 s later: 50 more finished, in flight 6 -> 16 (+10): arrivals 60 over 10 s.
    let second = st.observe(&q, 110.0, vec![Ok(parse_exposition(&text(8.0, 8.0, 150.0, [20.0, 60.0, 75.0, 80.0])))]);
    assert!(second.missing.is_empty(), "{:?}", second.missing);
    assert!((second.arrival_rate_rps.unwrap() - 6.0).abs() < 1e-9);
    // Window TTFT increase: 10 ≤0.1, 30 in (0.1,0.5], 10 in (0.5,1], none above; total 50.
    let p50 = second.latency.ttft_p50_s.unwrap();
    assert!((p50 - (0.1 + 0.4 * (25.0 - 10.0) / 30.0)).abs() < 1e-9, "{p50}");
    let p99 = second.latency.ttft_p99_s.unwrap();
    assert!((p99 - (0.5 + 0.5 * (49.5 - 40.0) / 10.0)).abs() < 1e-9, "{p99}");
    // F_ttft(0.5) = 40/50; F_tpot(0.05) = 1 -> min = 0.8.
    assert!((second.slo_attainment.unwrap() - 0.8).abs() < 1e-9);
}

#[test]
fn counter_reset_after_restart_counts_new_value_as_increase() {
    let s = spec();
    let eps = endpoints();
    let q = MetricsQuery { namespace: "ns", workload: "w", spec: &s, endpoints: &eps };
    let mut st = ScrapeState::default();
    st.observe(&q, 0.0, vec![Ok(parse_exposition(&text(0.0, 0.0, 1000.0, [100.0, 200.0, 300.0, 300.0])))]);
    // The pod restarted: counters start again from small values.
    let after = st.observe(&q, 10.0, vec![Ok(parse_exposition(&text(0.0, 0.0, 20.0, [5.0, 10.0, 10.0, 10.0])))]);
    assert!((after.arrival_rate_rps.unwrap() - 2.0).abs() < 1e-9, "{:?}", after.arrival_rate_rps);
    assert!(after.latency.ttft_p50_s.unwrap() <= 0.5);
    assert!(after.arrival_rate_rps.unwrap() >= 0.0);
}

#[test]
fn window_drops_old_scrapes_and_trend_follows_rate() {
    let s = spec();
    let eps = endpoints();
    let q = MetricsQuery { namespace: "ns", workload: "w", spec: &s, endpoints: &eps };
    let mut st = ScrapeState::default();
    let h = [0.0, 0.0, 0.0, 0.0];
    st.observe(&q, 0.0, vec![Ok(parse_exposition(&text(0.0, 0.0, 0.0, h)))]);
    let a = st.observe(&q, 10.0, vec![Ok(parse_exposition(&text(0.0, 0.0, 10.0, h)))]); // 1 rps
    assert!((a.arrival_rate_rps.unwrap() - 1.0).abs() < 1e-9);
    assert!(a.latency.ttft_p50_s.is_none(), "no requests in window -> no percentile");
    assert!(a.slo_attainment.is_none());
    st.observe(&q, 40.0, vec![Ok(parse_exposition(&text(0.0, 0.0, 100.0, h)))]);
    // Window 30 s: at t=70 the scrape at t=40 is the oldest kept; (400-100)/30 = 10 rps.
    let b = st.observe(&q, 70.0, vec![Ok(parse_exposition(&text(0.0, 0.0, 400.0, h)))]);
    assert!((b.arrival_rate_rps.unwrap() - 10.0).abs() < 1e-9, "{:?}", b.arrival_rate_rps);
    assert!(b.arrival_rate_trend_rps_per_s.unwrap() > 0.0);
}

#[test]
fn failed_and_stale_endpoints_are_named() {
    let s = spec();
    let eps = vec![
        Endpoint { variant: "small".into(), pool: "a100".into(), address: "10.0.0.1:8000".into() },
        Endpoint { variant: "small".into(), pool: "a100".into(), address: "10.0.0.2:8000".into() },
    ];
    let q = MetricsQuery { namespace: "ns", workload: "w", spec: &s, endpoints: &eps };
    let mut st = ScrapeState::default();
    let t = text(1.0, 1.0, 0.0, [0.0; 4]);
    st.observe(&q, 0.0, vec![Ok(parse_exposition(&t)), Ok(parse_exposition(&t))]);
    let snap = st.observe(&q, 30.0, vec![Ok(parse_exposition(&t)), Err("connection refused".into())]);
    let all = snap.missing.join("\n");
    assert!(all.contains("10.0.0.2:8000: scrape failed: connection refused"), "{all}");
    assert!(all.contains("10.0.0.2:8000: last good scrape 30s ago (stale)"), "{all}");
    // The healthy pod still counts.
    assert_eq!(snap.slots[0].waiting_requests, 1.0);
}

#[test]
fn nan_and_malformed_lines_are_reported() {
    let s = spec();
    let eps = endpoints();
    let q = MetricsQuery { namespace: "ns", workload: "w", spec: &s, endpoints: &eps };
    let mut st = ScrapeState::default();
    let body = "vllm:num_requests_waiting NaN\nvllm:num_requests_running 2\nthis is { not prometheus\n";
    let snap = st.observe(&q, 0.0, vec![Ok(parse_exposition(body))]);
    let all = snap.missing.join("\n");
    assert!(all.contains("vllm:num_requests_waiting: value is NaN"), "{all}");
    assert!(all.contains("1 malformed line(s)"), "{all}");
    assert!(all.contains("vllm:kv_cache_usage_perc absent"), "{all}");
}

async fn serve_text(body: Arc<Mutex<String>>) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body.lock().map(|b| b.clone()).unwrap_or_default() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr").to_string();
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, h)
}

#[tokio::test]
async fn scrape_source_over_http() {
    let body = Arc::new(Mutex::new(text(3.0, 1.0, 10.0, [1.0, 2.0, 3.0, 3.0])));
    let (addr, server) = serve_text(body.clone()).await;
    let s = spec();
    let eps = vec![Endpoint { variant: "small".into(), pool: "a100".into(), address: addr }];
    let q = MetricsQuery { namespace: "ns", workload: "w", spec: &s, endpoints: &eps };
    let src = ScrapeSource::new(ScrapeConfig::default()).expect("client");
    let first = src.observe(&q).await.expect("first");
    assert_eq!(first.slots[0].waiting_requests, 3.0);
    *body.lock().expect("lock") = text(3.0, 1.0, 20.0, [2.0, 4.0, 6.0, 6.0]);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let second = src.observe(&q).await.expect("second");
    assert!(second.arrival_rate_rps.unwrap() > 0.0);
    assert!(second.missing.is_empty(), "{:?}", second.missing);
    server.abort();
    let _ = server.await;
    match src.observe(&q).await {
        Err(MetricsError::Unreachable { .. }) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
