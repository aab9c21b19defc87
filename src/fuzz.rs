//! Entry points of the fuzz targets: every parser of untrusted input, driven by arbitrary
//! bytes, with the properties its result must have.
//!
//! Each function takes the bytes a fuzzer made, runs one reader the way llmos runs it on
//! input it did not write, and panics only when a property fails: a reader that panics,
//! a result that breaks an invariant (a trace out of order, a metrics snapshot that
//! claims to be complete yet holds a NaN, a decision past the shield's bounds). A returned
//! error is the right answer to bad input and passes. Each returns whether the reader
//! accepted the input (so a test can check that the seeds reach past the parsers). The targets in `fuzz/` (cargo-fuzz,
//! libFuzzer) call these; `tests/fuzz_corpus.rs` replays the committed corpus and every
//! input that once failed through them on stable Rust, so a fixed crash stays fixed.
//!
//! | target | reader | property beyond "no panic" |
//! |---|---|---|
//! | `trace` | Azure CSV, Mooncake JSONL, BurstGPT CSV ([`Trace::parse`]) | sorted, starts at 0, finite statistics |
//! | `servegen` | ServeGen rate windows and length datasets | rates finite and ≥ 0, samples from the pmf's support |
//! | `exposition` | vLLM `/metrics` text, two scrapes ([`parse_exposition`], [`ScrapeState`]), then a control tick | a snapshot with nothing missing is finite and ≥ 0; on incomplete metrics the policy holds; the shield's bounds hold |
//! | `prometheus` | Prometheus query API answers ([`parse_answer`], [`assemble`]) | the same |
//! | `scenario` | scenario TOML ([`Scenario::from_toml_str`]) | none |
//! | `train_config` | training TOML ([`TrainConfig::from_toml_str`]) | none |
//! | `checkpoint` | checkpoint sidecar and safetensors header ([`checkpoint::parse_meta`], [`checkpoint::check_tensors`]) | none |
//! | `workload` | an LLMWorkload as the API server sends it: validation, plan, policy, shield | an invalid spec writes nothing; the first plan and the shield keep every variant within `maxReplicas` and the fleet within `maxTotalReplicas` |
//!
//! Readers that open the files an input names (a scenario's trace, spec file, ServeGen
//! folder or length file; a workload's checkpoint) resolve relative names against a
//! directory that does not exist, so every file they look for is absent; inputs with an
//! absolute path in any string are skipped.

use std::collections::BTreeMap;
use std::path::Path;

use kube::api::ObjectMeta;

use crate::controller::plan::{self, Observed, PlanInput, Settings};
use crate::crd::{LLMWorkload, LLMWorkloadSpec};
use crate::metrics::prometheus::{assemble, parse_answer, Answers};
use crate::metrics::scrape::{parse_exposition, ScrapeResult, ScrapeState};
use crate::metrics::{Endpoint, MetricsQuery, MetricsSnapshot};
use crate::observe::{build_observation, SlotState};
use crate::policy::observation::{Decision, SlotId};
use crate::policy::shield::Shield;
use crate::rl::checkpoint;
use crate::rl::train::TrainConfig;
use crate::twin::scenario::Scenario;
use crate::twin::traces::readers::{Trace, TraceFormat, TraceStats};
use crate::twin::traces::servegen;

/// The example workload the metrics targets read for (`manifests/examples/llmworkload-small.yaml`).
const EXAMPLE: &str = include_str!("../manifests/examples/llmworkload-small.yaml");

/// Every target: its name (the file under `fuzz/fuzz_targets/` and the corpus folder)
/// and its entry point.
pub const TARGETS: &[(&str, fn(&[u8]) -> bool)] = &[
    ("trace", trace),
    ("servegen", servegen),
    ("exposition", exposition),
    ("prometheus", prometheus),
    ("scenario", scenario),
    ("train_config", train_config),
    ("checkpoint", checkpoint),
    ("workload", workload),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Splits `data` at the first form feed (`\x0c`): two inputs in one.
fn two(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0x0c) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn example_spec() -> LLMWorkloadSpec {
    let wl: LLMWorkload = serde_yaml::from_str(EXAMPLE).expect("the example workload parses");
    wl.spec
}

/// Trace readers. The first byte picks the format (Azure, Mooncake, BurstGPT), the rest
/// is the file.
pub fn trace(data: &[u8]) -> bool {
    let Some((&first, rest)) = data.split_first() else { return false };
    let format = [TraceFormat::Azure, TraceFormat::Mooncake, TraceFormat::Burstgpt][usize::from(first % 3)];
    let Some(body) = text(rest) else { return false };
    let Ok(t) = Trace::parse(body, format, "fuzz") else { return false };
    assert!(!t.records.is_empty(), "a parsed trace has requests");
    assert_eq!(t.records[0].arrival_ns, 0, "arrivals start at 0");
    assert!(t.records.windows(2).all(|w| w[0].arrival_ns <= w[1].arrival_ns), "arrivals are sorted");
    let stats = TraceStats::of(&t);
    assert!(t.span_s().is_finite() && t.span_s() >= 0.0, "span {}", t.span_s());
    let _ = format!("{stats:?}");
    true
}

/// ServeGen readers: the rate windows (`chunk-*-trace.csv`) before a form feed, the
/// length dataset (`chunk-*-dataset.json`) after it.
pub fn servegen(data: &[u8]) -> bool {
    let (a, b) = two(data);
    let mut accepted = 0;
    if let Some(Ok(windows)) = text(a).map(|t| servegen::parse_trace(t, "fuzz-trace.csv")) {
        accepted += 1;
        for w in &windows {
            for load in [0.5, 1.0, 1.5] {
                let _ = w.requests(load);
            }
        }
    }
    if let Some(Ok(blocks)) = text(b).map(|t| servegen::parse_dataset(t, "fuzz-dataset.json")) {
        accepted += 1;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for block in blocks.values() {
            for pmf in [&block.input, &block.output] {
                assert!(pmf.mean().is_finite() && pmf.mean() >= 0.0, "pmf mean {}", pmf.mean());
                for _ in 0..4 {
                    let _ = pmf.sample(&mut rng);
                }
            }
        }
    }
    accepted == 2
}

/// Checks what [`MetricsSnapshot::fill`] hands a policy: when nothing is reported
/// missing, every number is finite and not negative, and fractions are at most 1.
fn check_snapshot(snap: &MetricsSnapshot) -> bool {
    if !snap.missing.is_empty() {
        return false; // the operator holds: nothing here is acted on
    }
    let fine = |what: &str, v: f64| assert!(v.is_finite() && v >= 0.0, "{what} = {v} in a complete snapshot");
    if let Some(v) = snap.arrival_rate_rps {
        fine("arrival rate", v);
    }
    if let Some(v) = snap.arrival_rate_trend_rps_per_s {
        assert!(v.is_finite(), "trend = {v} in a complete snapshot");
    }
    if let Some(v) = snap.slo_attainment {
        fine("SLO attainment", v);
        assert!(v <= 1.0, "SLO attainment {v} > 1");
    }
    let l = &snap.latency;
    for v in [l.ttft_p50_s, l.ttft_p90_s, l.ttft_p99_s, l.tpot_p50_s, l.tpot_p90_s, l.tpot_p99_s].into_iter().flatten()
    {
        fine("latency percentile", v);
    }
    for s in &snap.slots {
        fine("waiting requests", s.waiting_requests);
        fine("running requests", s.running_requests);
        fine("KV cache usage", s.kv_cache_usage);
        fine("slot arrival rate", s.arrival_rate_rps);
    }
    true
}

/// vLLM's `/metrics` text: one pod scraped twice, 15 s apart (the two expositions
/// separated by a form feed), read for the example workload's slot.
pub fn exposition(data: &[u8]) -> bool {
    let (a, b) = two(data);
    let (Some(a), Some(b)) = (text(a), text(b)) else { return false };
    let spec = example_spec();
    let (v, p) = (&spec.variants[0].name, &spec.gpu_pools[0].name);
    let endpoints = [Endpoint { variant: v.clone(), pool: p.clone(), address: "10.0.0.1:8000".into() }];
    let query = MetricsQuery { namespace: "fuzz", workload: "w", spec: &spec, endpoints: &endpoints };
    let mut state = ScrapeState::default();
    let mut complete = false;
    let slot = SlotId::new(v, p);
    let current = BTreeMap::from([(slot.clone(), 2)]);
    let states = BTreeMap::from([(slot, SlotState { desired: 2, ready: 2, existing: 2 })]);
    let mut policy = crate::policy::build::build_policy(&spec).expect("the example's policy builds");
    let shield = Shield::new(&spec);
    for (t, body) in [(0.0, a), (15.0, b)] {
        let sample = parse_exposition(body);
        let results: Vec<ScrapeResult> = vec![Ok(sample)];
        let snap = state.observe(&query, t, results);
        complete = check_snapshot(&snap);
        // The control tick on what was read: a policy that cannot see everything holds,
        // and whatever it decides stays within the shield's bounds.
        let mut obs = build_observation(&spec, &current, &states, 1_800_000_000.0 + t, Some(60.0));
        snap.fill(&mut obs);
        let decision = policy.decide(&obs);
        if !obs.is_complete() {
            assert!(decision.targets.iter().all(|x| x.replicas == 2), "acted on incomplete metrics: {decision:?}");
        }
        let out = shield.clamp(&obs, &decision);
        let all: u32 = out.decision.targets.iter().map(|x| x.replicas).sum();
        assert!(all <= spec.limits.max_total_replicas, "{all} replicas > maxTotalReplicas");
    }
    complete
}

/// Prometheus query API answers: the bodies, separated by form feeds, answer the
/// queries in [`crate::metrics::prometheus::Queries`] order; a body that does not parse
/// fails the read (the operator holds), the rest are assembled into a snapshot.
pub fn prometheus(data: &[u8]) -> bool {
    let Some(all) = text(data) else { return false };
    let mut bodies = all.split('\x0c');
    let mut next = || -> Option<Vec<crate::metrics::prometheus::Series>> {
        match bodies.next() {
            None => Some(Vec::new()),
            Some(b) => parse_answer("fuzz", "q", b).ok(),
        }
    };
    let mut fields = Vec::new();
    for _ in 0..16 {
        match next() {
            Some(s) => fields.push(s),
            None => return false,
        }
    }
    let mut f = fields.into_iter();
    let mut take = || f.next().unwrap_or_default();
    let answers = Answers {
        waiting: take(),
        running: take(),
        kv: take(),
        completions: take(),
        delta: take(),
        trend: take(),
        ttft_b: take(),
        tpot_b: take(),
        age: take(),
        targets: take(),
        quantile_answers: vec![(take(), take()), (take(), take()), (take(), take())],
    };
    let spec = example_spec();
    let query = MetricsQuery { namespace: "fuzz", workload: "w", spec: &spec, endpoints: &[] };
    check_snapshot(&assemble(&query, &answers))
}

/// Whether any string in `v` is an absolute path (or starts with `~`).
fn toml_names_absolute(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => s.starts_with(['/', '\\', '~']),
        toml::Value::Array(a) => a.iter().any(toml_names_absolute),
        toml::Value::Table(t) => t.values().any(toml_names_absolute),
        _ => false,
    }
}

fn json_names_absolute(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.starts_with(['/', '\\', '~']),
        serde_json::Value::Array(a) => a.iter().any(json_names_absolute),
        serde_json::Value::Object(o) => o.values().any(json_names_absolute),
        _ => false,
    }
}

/// Scenario TOML, with relative names resolved against a directory that does not exist.
pub fn scenario(data: &[u8]) -> bool {
    let Some(t) = text(data) else { return false };
    let Ok(table) = t.parse::<toml::Table>() else { return false };
    if toml_names_absolute(&toml::Value::Table(table)) {
        return false;
    }
    Scenario::from_toml_str_in(t, "fuzz.toml", Path::new("fuzz-no-such-dir")).is_ok()
}

/// Training TOML: parsed and checked as `llmos train --config` does before it reads
/// any scenario.
pub fn train_config(data: &[u8]) -> bool {
    let Some(t) = text(data) else { return false };
    TrainConfig::from_toml_str(t, "fuzz.toml").is_ok()
}

/// A checkpoint: the sidecar JSON before a form feed, the weights file after it; the
/// weights' header is checked against the network the sidecar describes (libtorch is
/// not involved: nothing that fails here reaches it).
pub fn checkpoint(data: &[u8]) -> bool {
    let (meta, weights) = two(data);
    let Ok(meta) = checkpoint::parse_meta("fuzz", meta) else { return false };
    checkpoint::check_tensors("fuzz", &meta, weights).is_ok()
}

/// An LLMWorkload as the API server sends it (JSON): validated, planned as a first
/// reconcile, and, when valid, its policy built and run through the shield with its own
/// decision and with extreme ones.
pub fn workload(data: &[u8]) -> bool {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else { return false };
    if json_names_absolute(&raw) {
        return false;
    }
    let Ok(mut wl) = serde_json::from_value::<LLMWorkload>(raw) else { return false };
    wl.metadata = ObjectMeta {
        name: Some(wl.metadata.name.clone().unwrap_or_else(|| "w".into())),
        namespace: Some("fuzz".into()),
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        generation: Some(1),
        ..wl.metadata
    };
    let observed = Observed::new(&wl, Vec::new());
    let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("a fixed time");
    let settings = Settings { invalid_spec_requeue: std::time::Duration::from_secs(60) };
    let input = PlanInput {
        workload: &wl,
        observed: &observed,
        now,
        policy_error: None,
        tick: None,
        last_tick: None,
        settings,
        grants: None,
    };
    let planned = plan::plan(&input);
    let problems = crate::controller::validate::validate_spec(&wl.metadata.name.clone().unwrap_or_default(), &wl.spec);
    if !problems.is_empty() {
        assert!(planned.apply.is_empty() && planned.service.is_none(), "an invalid spec wrote objects");
        return false;
    }
    let spec = &wl.spec;
    for v in &spec.variants {
        let planned_v: u64 =
            planned.targets.iter().filter(|(s, _)| s.variant == v.name).map(|(_, r)| u64::from(*r)).sum();
        assert!(planned_v <= u64::from(v.max_replicas), "first plan puts {planned_v} replicas on variant {}", v.name);
    }
    let current: BTreeMap<SlotId, u32> = observed.current.clone();
    let mut obs = build_observation(spec, &current, &observed.states, 1_800_000_000.0, None);
    obs.arrival_rate_rps = 1.0;
    let shield = Shield::new(spec);
    let mut decisions = Vec::new();
    for fill in [0, 1, u32::MAX] {
        let mut d = Decision::new("fuzz");
        for s in &obs.slots {
            d.set(&s.variant, &s.pool, fill);
        }
        decisions.push(d);
    }
    if let Ok(mut policy) = crate::policy::build::build_policy(spec) {
        decisions.push(policy.decide(&obs));
    }
    for d in &decisions {
        let out = shield.clamp(&obs, d);
        let all: u64 = out.decision.targets.iter().map(|t| u64::from(t.replicas)).sum();
        assert!(all <= u64::from(spec.limits.max_total_replicas), "{all} replicas > maxTotalReplicas");
        for v in &spec.variants {
            let total: u64 =
                out.decision.targets.iter().filter(|t| t.variant == v.name).map(|t| u64::from(t.replicas)).sum();
            assert!(
                total <= u64::from(v.max_replicas),
                "variant {} at {total} > maxReplicas {}",
                v.name,
                v.max_replicas
            );
        }
    }
    true
}
