//! `PrometheusSource` against a tiny local HTTP server that answers recorded Prometheus
//! JSON, and `assemble` on hand-made answers: missing, NaN, stale and partial series,
//! an unreachable server, an error answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use llmos::crd::LLMWorkloadSpec;
use llmos::metrics::prometheus::{assemble, parse_answer, queries, selector, Answers, Series};
use llmos::metrics::{MetricsError, MetricsQuery, MetricsSource, PrometheusConfig, PrometheusSource};

fn spec(url: Option<&str>) -> LLMWorkloadSpec {
    let mut v = serde_json::json!({
        "variants": [{"name": "small", "model": "m", "image": "vllm/vllm-openai"}],
        "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
        "slo": {"ttftMs": 500.0, "tpotMs": 50.0, "percentile": 90.0, "targetAttainment": 0.9},
        "metrics": {"windowSeconds": 30, "staleAfterSeconds": 10, "labelSelector": {"cluster": "x\"y"}}
    });
    if let Some(u) = url {
        v["metrics"]["prometheusUrl"] = serde_json::json!(u);
    }
    serde_json::from_value(v).expect("valid spec")
}

fn slot(variant: &str, pool: &str, value: f64) -> Series {
    let mut labels = BTreeMap::new();
    labels.insert("llmos_variant".to_string(), variant.to_string());
    labels.insert("llmos_pool".to_string(), pool.to_string());
    Series { labels, value }
}

fn bucket(le: &str, value: f64) -> Series {
    let mut labels = BTreeMap::new();
    labels.insert("le".to_string(), le.to_string());
    Series { labels, value }
}

#[test]
fn selector_escapes_and_includes_workload_namespace_and_spec_labels() {
    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    assert_eq!(selector(&q), r#"cluster="x\"y",llmos_workload="chat",namespace="prod""#);
    let qs = queries(&q);
    assert!(
        qs.kv_cache.contains("vllm:kv_cache_usage_perc{") && qs.kv_cache.contains(" or vllm:gpu_cache_usage_perc{")
    );
    assert!(qs.quantiles[1]
        .1
        .starts_with("histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{"));
    assert!(qs.quantiles[1].2.contains("vllm:time_per_output_token_seconds_bucket"));
    assert!(qs.completions.contains("[30s]"));
}

#[test]
fn assemble_complete_answer() {
    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let a = Answers {
        waiting: vec![slot("small", "a100", 4.0)],
        running: vec![slot("small", "a100", 10.0)],
        kv: vec![slot("small", "a100", 0.5)],
        completions: vec![slot("small", "a100", 2.0)],
        delta: vec![slot("small", "a100", 30.0)], // +30 in flight over 30 s = +1 rps
        trend: vec![Series { labels: BTreeMap::new(), value: 0.1 }],
        ttft_b: vec![bucket("0.25", 5.0), bucket("0.5", 9.0), bucket("+Inf", 10.0)],
        tpot_b: vec![bucket("0.05", 10.0), bucket("+Inf", 10.0)],
        age: vec![slot("small", "a100", 1.0)],
        targets: vec![],
        quantile_answers: vec![
            (
                vec![Series { labels: BTreeMap::new(), value: 0.2 }],
                vec![Series { labels: BTreeMap::new(), value: 0.01 }],
            ),
            (
                vec![Series { labels: BTreeMap::new(), value: 0.5 }],
                vec![Series { labels: BTreeMap::new(), value: f64::NAN }],
            ),
            (vec![], vec![]),
        ],
    };
    let snap = assemble(&q, &a);
    assert!(snap.missing.is_empty(), "{:?}", snap.missing);
    assert_eq!(snap.arrival_rate_rps, Some(3.0));
    assert_eq!(snap.arrival_rate_trend_rps_per_s, Some(0.1));
    assert_eq!(snap.slots.len(), 1);
    assert_eq!(snap.slots[0].waiting_requests, 4.0);
    assert_eq!(snap.latency.ttft_p50_s, Some(0.2));
    assert_eq!(snap.latency.tpot_p90_s, None, "NaN quantile (no requests) is None");
    assert_eq!(snap.slo_attainment, Some(0.9));
}

#[test]
fn assemble_names_missing_nan_stale_partial_and_down() {
    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let mut down_labels = BTreeMap::new();
    down_labels.insert("instance".to_string(), "127.0.0.1:9001".to_string());
    let a = Answers {
        waiting: vec![slot("small", "a100", 1.0), slot("big", "h100", 2.0), slot("old", "l4", 0.0)],
        running: vec![slot("small", "a100", 1.0), slot("big", "h100", f64::NAN), slot("old", "l4", 0.0)],
        kv: vec![slot("small", "a100", 0.1), slot("old", "l4", 0.0)],
        completions: vec![slot("small", "a100", 1.0), slot("old", "l4", 0.0)],
        age: vec![slot("small", "a100", 1.0), slot("big", "h100", 1.0), slot("old", "l4", 99.0)],
        targets: vec![Series { labels: down_labels, value: 0.0 }],
        ..Answers::default()
    };
    let snap = assemble(&q, &a);
    assert_eq!(snap.targets.len(), 1);
    assert!(!snap.targets[0].up && snap.targets[0].instance == "127.0.0.1:9001");
    let mut obs = llmos::policy::Observation::default();
    snap.fill(&mut obs);
    let text = obs.missing.join("\n");
    assert!(text.contains("target 127.0.0.1:9001 is down (up == 0) and names no slot"), "{text}");
    assert!(text.contains("vllm:num_requests_running: NaN for slot big/h100"), "{text}");
    assert!(text.contains("vllm:kv_cache_usage_perc: absent for slot big/h100"), "{text}");
    assert!(text.contains("rate(vllm:request_success_total[30s]): absent for slot big/h100"), "{text}");
    assert!(text.contains("slot old/l4: newest sample is 99s old"), "{text}");
    assert!(text.contains("vllm:time_to_first_token_seconds_bucket: no series"), "{text}");
    assert_eq!(snap.slots.iter().map(|s| s.variant.as_str()).collect::<Vec<_>>(), vec!["big", "small"]);
}

fn target(instance: &str, slot_labels: Option<(&str, &str)>, up: bool) -> Series {
    let mut s = match slot_labels {
        Some((v, p)) => slot(v, p, if up { 1.0 } else { 0.0 }),
        None => Series { labels: BTreeMap::new(), value: if up { 1.0 } else { 0.0 } },
    };
    s.labels.insert("instance".to_string(), instance.to_string());
    s
}

/// A target that is down hides a serving replica only when its slot has fewer targets up
/// than the cluster counts ready replicas: a replica scaled down (its target not yet
/// dropped by service discovery) or still loading its model is not a blind spot.
#[test]
fn a_target_down_is_a_blind_spot_only_when_a_ready_replica_is_unseen() {
    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let small = Some(("small", "a100"));
    let a = Answers {
        waiting: vec![slot("small", "a100", 1.0)],
        running: vec![slot("small", "a100", 1.0)],
        targets: vec![
            target("10.0.0.1:8000", small, true),
            target("10.0.0.2:8000", small, false),
            target("10.0.0.9:8000", Some(("removed", "a100")), false),
        ],
        ..Answers::default()
    };
    let snap = assemble(&q, &a);
    let missing_with_ready = |ready: u32| {
        let obs = llmos::policy::Observation {
            slots: vec![llmos::policy::SlotObservation {
                variant: "small".into(),
                pool: "a100".into(),
                ready_replicas: ready,
                ..Default::default()
            }],
            ..Default::default()
        };
        snap.hidden_replicas(&obs)
    };
    assert_eq!(
        missing_with_ready(2),
        vec!["target 10.0.0.2:8000 of slot small/a100 is down (up == 0): 1 of 2 ready replicas seen".to_string()],
        "two ready replicas, one seen: blind"
    );
    assert!(missing_with_ready(1).is_empty(), "the one ready replica is seen; the other target is gone or loading");
    assert!(missing_with_ready(0).is_empty(), "no ready replica: a loading replica's target is not a blind spot");
}

#[test]
fn assemble_with_no_series_says_so() {
    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let snap = assemble(&q, &Answers::default());
    assert!(snap.arrival_rate_rps.is_none());
    assert!(snap.missing.iter().any(|m| m.contains("no series match")), "{:?}", snap.missing);
}

#[test]
fn parse_answer_errors_are_bad_answers() {
    let err = parse_answer("prometheus", "up", r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
        .unwrap_err();
    assert!(matches!(err, MetricsError::BadAnswer { .. }));
    assert!(err.to_string().contains("bad_data: parse error"));
    assert!(parse_answer("prometheus", "up", "<html>").is_err());
    let ok = parse_answer(
        "prometheus",
        "up",
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1.5,"NaN"]},{"metric":{},"value":[1.5,"+Inf"]}]}}"#,
    )
    .unwrap();
    assert!(ok[0].value.is_nan());
    assert_eq!(ok[1].value, f64::INFINITY);
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves `/api/v1/query`, answering by the first recorded (substring, body) that matches.
async fn serve(answers: Vec<(&'static str, String)>) -> (String, tokio::task::JoinHandle<()>) {
    use axum::extract::RawQuery;
    let answers = Arc::new(answers);
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |RawQuery(raw): RawQuery| {
            let answers = answers.clone();
            async move {
                let raw = raw.unwrap_or_default();
                let q = raw.strip_prefix("query=").map(percent_decode).unwrap_or_default();
                let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.to_string();
                answers.iter().find(|(needle, _)| q.contains(needle)).map(|(_, body)| body.clone()).unwrap_or(empty)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), handle)
}

fn vector(series: &[(&[(&str, &str)], &str)]) -> String {
    let result: Vec<serde_json::Value> = series
        .iter()
        .map(|(labels, v)| {
            let m: serde_json::Map<String, serde_json::Value> =
                labels.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
            serde_json::json!({"metric": m, "value": [1700000000.0, v]})
        })
        .collect();
    serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
}

#[tokio::test]
async fn observes_through_a_recorded_prometheus() {
    let slot_labels: &[(&str, &str)] = &[("llmos_variant", "small"), ("llmos_pool", "a100")];
    let answers = vec![
        ("histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first", vector(&[(&[], "0.3")])),
        ("histogram_quantile(0.5, sum by (le) (rate(vllm:inter_token", vector(&[(&[], "0.02")])),
        ("sum by (le) (rate(vllm:time_to_first", vector(&[(&[("le", "0.5")], "9"), (&[("le", "+Inf")], "10")])),
        ("sum by (llmos_variant, llmos_pool) (vllm:num_requests_waiting", vector(&[(slot_labels, "7")])),
        ("sum by (llmos_variant, llmos_pool) (vllm:num_requests_running", vector(&[(slot_labels, "3")])),
        ("avg by (llmos_variant, llmos_pool) (vllm:kv_cache_usage_perc", vector(&[(slot_labels, "0.4")])),
        ("pool) (rate(vllm:request_success_total", vector(&[(slot_labels, "5")])),
        ("time() - max", vector(&[(slot_labels, "0.5")])),
    ];
    let (url, server) = serve(answers).await;
    let s = spec(Some(&url));
    let src = PrometheusSource::new(PrometheusConfig::default()).expect("client");
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let snap = src.observe(&q).await.expect("observe");
    assert!(snap.missing.is_empty(), "{:?}", snap.missing);
    assert_eq!(snap.arrival_rate_rps, Some(5.0));
    assert_eq!(snap.slots[0].waiting_requests, 7.0);
    assert_eq!(snap.slots[0].kv_cache_usage, 0.4);
    assert_eq!(snap.latency.ttft_p50_s, Some(0.3));
    assert_eq!(snap.latency.tpot_p50_s, Some(0.02));
    assert_eq!(snap.slo_attainment, Some(0.9));
    server.abort();
}

#[tokio::test]
async fn error_answer_is_bad_answer_and_dead_server_is_unreachable() {
    let err_body = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error"}"#.to_string();
    let (url, server) = serve(vec![("vllm", err_body)]).await;
    let s = spec(Some(&url));
    let src = PrometheusSource::new(PrometheusConfig::default()).expect("client");
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    assert!(matches!(src.observe(&q).await, Err(MetricsError::BadAnswer { .. })));
    server.abort();

    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    let s = spec(Some(&dead));
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    assert!(matches!(src.observe(&q).await, Err(MetricsError::Unreachable { .. })));

    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let err = src.observe(&q).await.unwrap_err();
    assert!(err.to_string().contains("prometheusUrl"), "{err}");
}

#[test]
fn assemble_refuses_infinite_and_negative_values_naming_the_series() {
    let s = spec(None);
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    let a = Answers {
        waiting: vec![slot("small", "a100", -3.0)],
        running: vec![slot("small", "a100", 1.0)],
        kv: vec![slot("small", "a100", f64::INFINITY)],
        completions: vec![slot("small", "a100", 1.0)],
        // In-flight requests may shrink: a negative change is a value, not an error.
        delta: vec![slot("small", "a100", -40.0)],
        ..Answers::default()
    };
    let snap = assemble(&q, &a);
    let text = snap.missing.join("\n");
    assert!(text.contains("vllm:num_requests_waiting: negative (-3) for slot small/a100"), "{text}");
    assert!(text.contains("vllm:kv_cache_usage_perc: inf for slot small/a100"), "{text}");
    assert!(!text.contains("delta"), "{text}");
    assert_eq!(snap.slots[0].arrival_rate_rps, 0.0, "1 completion/s minus 40 over the window, floored at 0");

    // A negative latency quantile is missing too (found by the `prometheus` fuzz target).
    let a = Answers {
        waiting: vec![slot("small", "a100", 1.0)],
        running: vec![slot("small", "a100", 1.0)],
        quantile_answers: vec![(vec![Series { labels: BTreeMap::new(), value: -40.0 }], vec![])],
        ..Answers::default()
    };
    let snap = assemble(&q, &a);
    let text = snap.missing.join("\n");
    assert!(text.contains("histogram_quantile(0.5, vllm:time_to_first_token_seconds): negative (-40)"), "{text}");
    assert_eq!(snap.latency.ttft_p50_s, None);
}

/// A bearer token from a file goes with every query, read again at each observation (a
/// rotated token is used at the next tick); an unreadable token file is an unreachable
/// source naming the file, so the operator holds.
#[tokio::test]
async fn sends_the_bearer_token_from_its_file() {
    use axum::http::{HeaderMap, StatusCode};
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |headers: HeaderMap| {
            let seen = s2.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                seen.lock().unwrap().push(auth.clone());
                if auth.starts_with("Bearer ") {
                    (StatusCode::OK, vector(&[(&[], "1")]))
                } else {
                    (StatusCode::UNAUTHORIZED, "Unauthorized".to_string())
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").expect("token file");
    let src = PrometheusSource::new(PrometheusConfig { bearer_token_file: Some(token.clone()), ..Default::default() })
        .expect("client");
    let s = spec(Some(&url));
    let q = MetricsQuery { namespace: "prod", workload: "chat", spec: &s, endpoints: &[] };
    src.observe(&q).await.expect("observe with a token");
    std::fs::write(&token, "second-token").expect("rotated token");
    src.observe(&q).await.expect("observe with the rotated token");
    {
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 2 && seen.iter().all(|a| a.starts_with("Bearer ")), "{seen:?}");
        assert!(seen.contains(&"Bearer first-token".to_string()) && seen.contains(&"Bearer second-token".to_string()));
    }
    std::fs::remove_file(&token).expect("remove token");
    let err = src.observe(&q).await.unwrap_err();
    assert!(matches!(err, MetricsError::Unreachable { .. }) && err.to_string().contains("token"), "{err}");
    // Without a token the server refuses: no snapshot, never a silent empty one.
    let plain = PrometheusSource::new(PrometheusConfig::default()).expect("client");
    assert!(plain.observe(&q).await.is_err());
    server.abort();
}

/// A real Prometheus (Debian's package) serving https only, with a certificate from a CA
/// of the test's own: queries succeed with that CA as `ca_file` and fail without it
/// (the system roots do not know it). Skipped when `prometheus` or `openssl` is missing.
#[tokio::test]
async fn queries_a_real_prometheus_over_tls_with_a_ca_file() {
    let have = |b: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !have("prometheus") || !have("openssl") {
        eprintln!("prometheus or openssl missing: skipping");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("bash").arg("-c").arg(cmd).current_dir(d).output().expect("bash");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=llmos-test-prom-ca -keyout ca.key -out ca.crt");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=prometheus -keyout tls.key -out tls.csr");
    sh("echo subjectAltName=IP:127.0.0.1,DNS:localhost > san.cnf && openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.cnf -out tls.crt");
    std::fs::write(
        d.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            d.join("tls.crt").display(),
            d.join("tls.key").display()
        ),
    )
    .expect("web config");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/prometheus/start.sh"))
        .arg(d.join("prom"))
        .arg(d.join("targets.json"))
        .arg(port.to_string())
        .env("WEB_CONFIG", d.join("web.yml"))
        .output()
        .expect("scripts/prometheus/start.sh");
    let stop = || {
        let _ = std::process::Command::new("bash")
            .arg(root.join("scripts/prometheus/stop.sh"))
            .arg(d.join("prom"))
            .status();
    };
    if !out.status.success() {
        stop();
        panic!("Prometheus over TLS did not start: {}", String::from_utf8_lossy(&out.stderr));
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.starts_with("https://"), "{url}");
    let with_ca = PrometheusSource::new(PrometheusConfig { ca_file: Some(d.join("ca.crt")), ..Default::default() })
        .expect("client with the CA");
    let got = with_ca.query(&url, "vector(1)").await;
    let without = PrometheusSource::new(PrometheusConfig::default()).expect("client").query(&url, "vector(1)").await;
    let bad_ca = PrometheusSource::new(PrometheusConfig { ca_file: Some(d.join("web.yml")), ..Default::default() });
    stop();
    let got = got.expect("query over TLS with the CA");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, 1.0);
    let err = without.expect_err("the test CA is not a system root");
    assert!(matches!(err, MetricsError::Unreachable { .. }), "{err}");
    let err = bad_ca.err().expect("a CA file without certificates is refused").to_string();
    assert!(err.contains("web.yml"), "{err}");
}
