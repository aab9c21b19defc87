//! Traffic records: a real trace run in the twin is recorded through the metric path the
//! operator reads (each replica's `/metrics` text, parsed by `parse_exposition`), stored,
//! exported as a trace, replayed in the twin and recorded again; the replay must
//! reproduce the recorded arrival rates and token distributions within the tolerances
//! stated below. Then the store's crash safety, limits and errors, and the sink.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llmos::learning::export::{requests, write_azure_csv, ExportConfig};
use llmos::learning::record::{fleet_of, TokenHistogram, TrafficWindow, WindowContext, WindowRecorder};
use llmos::learning::sink::{workload_dir, RecordSink};
use llmos::learning::store::{read_dir, recorded_seconds_since, segments, RecordStore, StoreConfig};
use llmos::learning::RecordError;
use llmos::metrics::scrape::{parse_exposition, PodSample};
use llmos::metrics::Endpoint;
use llmos::policy::Decision;
use llmos::twin::scenario::InitialReplicas;
use llmos::twin::{Scenario, Twin};

const SCENARIO: &str = "scenarios/azure-code-llama3-8b-a100.toml";
const WORKLOAD: &str = "default/code";
/// The recording's time zero: 2026-12-01 00:00:00 UTC.
const ORIGIN: f64 = 1_796_083_200.0;
const WINDOW_S: f64 = 60.0;
/// A fleet that keeps up with the trace's peaks, so that the requests finishing in a
/// window are (nearly) those that arrived in it: the token histograms describe a window's
/// arrivals only when latency is small next to the window.
const REPLICAS: u32 = 6;

fn load_scenario() -> Scenario {
    let mut s = Scenario::load(Path::new(SCENARIO)).unwrap();
    let v = &s.spec.variants[0];
    let fleet =
        vec![InitialReplicas { variant: v.name.clone(), pool: s.spec.gpu_pools[0].name.clone(), replicas: REPLICAS }];
    s.set_initial_replicas(fleet, SCENARIO).unwrap();
    s
}

/// What the operator's direct scrape reads from every serving replica: the text of its
/// `/metrics`, parsed.
fn scrape(twin: &Twin) -> Vec<(Endpoint, PodSample)> {
    twin.replicas()
        .iter()
        .filter_map(|r| {
            let text = twin.replica_metrics_text(r.id)?;
            let address = format!("replica-{}", r.id);
            Some((Endpoint { variant: r.variant.clone(), pool: r.pool.clone(), address }, parse_exposition(&text)))
        })
        .collect()
}

/// Runs the scenario's trace with its fixed fleet and records one window per `WINDOW_S`.
fn record_run(scenario: &Scenario, origin: f64) -> Vec<TrafficWindow> {
    let mut twin = Twin::new(scenario, 0).unwrap();
    let mut rec = WindowRecorder::new(WORKLOAD, WINDOW_S);
    let ctx = |twin: &Twin| WindowContext {
        slo: twin.spec().slo.clone(),
        fleet: fleet_of(&twin.observe()),
        slo_attainment: twin.observe().slo_attainment,
        policy: Some("static".into()),
    };
    assert!(rec.observe(origin, &scrape(&twin), &ctx(&twin)).is_none());
    let mut out = Vec::new();
    while !twin.is_done() {
        let obs = twin.observe();
        twin.apply(&Decision::hold(&obs, "fixed fleet"));
        twin.step();
        out.extend(rec.observe(origin + twin.now_s(), &scrape(&twin), &ctx(&twin)));
    }
    out.extend(rec.flush(origin + twin.now_s(), &ctx(&twin)));
    out
}

/// Which token distribution of a window.
type Pick = fn(&TrafficWindow) -> &TokenHistogram;

fn merged(ws: &[TrafficWindow], pick: Pick) -> TokenHistogram {
    let mut h = TokenHistogram::default();
    for w in ws {
        h.merge(pick(w)).unwrap();
    }
    h
}

/// The fields of a window that a JSON round trip keeps exactly in this test.
type ExactPart<'a> =
    (f64, f64, f64, f64, &'a TokenHistogram, &'a TokenHistogram, &'a [llmos::learning::record::FleetSlot]);

fn exact_part(w: &TrafficWindow) -> ExactPart<'_> {
    (w.start_unix_s, w.duration_s, w.arrivals, w.completions, &w.prompt_tokens, &w.generation_tokens, &w.fleet)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Mean, p50 and p90 of a histogram.
fn stats(h: &TokenHistogram) -> [f64; 3] {
    [h.mean().unwrap(), h.quantile(0.5).unwrap(), h.quantile(0.9).unwrap()]
}

#[test]
fn a_recorded_trace_replays_its_rates_and_token_distributions() {
    let t0 = Instant::now();
    let scenario = load_scenario();
    let trace = scenario.trace.clone().expect("a trace scenario");
    let recorded = record_run(&scenario, ORIGIN);

    // The metric path saw every request of the trace and its exact token totals.
    let arrivals: f64 = recorded.iter().map(|w| w.arrivals).sum();
    assert_eq!(arrivals, trace.records.len() as f64, "recorded arrivals vs the trace's requests");
    let prompt = merged(&recorded, |w| &w.prompt_tokens);
    let true_prompt: u64 = trace.records.iter().map(|r| r.input_tokens as u64).sum();
    assert_eq!(prompt.sum, true_prompt as f64);
    assert!(recorded
        .iter()
        .all(|w| w.slo.ttft_ms == 2000.0 && w.fleet.iter().map(|s| s.ready).sum::<u32>() == REPLICAS));

    // Stored through the sink, read back, exported, replayed, recorded again.
    let dir = tempfile::tempdir().unwrap();
    let (sink, writer) = RecordSink::spawn(dir.path(), StoreConfig::default(), 4096).unwrap();
    for w in &recorded {
        assert!(sink.record(w.clone()));
    }
    drop(sink);
    let stats_sink = writer.join();
    let counts = (stats_sink.written, stats_sink.dropped, stats_sink.write_errors);
    assert_eq!(counts, (recorded.len() as u64, 0, 0), "{:?}", stats_sink.last_problem);
    let read = read_dir(&workload_dir(dir.path(), WORKLOAD)).unwrap();
    assert!(read.warnings.is_empty(), "{:?}", read.warnings);
    assert_eq!(read.windows.len(), recorded.len());
    for (a, b) in read.windows.iter().zip(&recorded) {
        // serde_json reads a float back to within an ulp; counts and times here are integers.
        assert_eq!(exact_part(a), exact_part(b));
        assert!(rel(a.arrival_rate_rps, b.arrival_rate_rps) < 1e-12);
    }

    let csv = dir.path().join("replay.csv");
    // The served model's context caps a request, as vLLM's max_model_len does.
    let context = scenario.catalog.model(&scenario.spec.variants[0].model, "model").unwrap().max_context;
    let cfg = ExportConfig { seed: 7, max_total_tokens: Some(context) };
    let summary = write_azure_csv(&read.windows, &cfg, std::fs::File::create(&csv).unwrap()).unwrap();
    assert_eq!(summary.origin_unix_s, ORIGIN);
    assert_eq!(summary.requests, trace.records.len() as u64);
    let mut replay_scenario = load_scenario();
    replay_scenario.set_trace(&csv).unwrap();
    let replayed = record_run(&replay_scenario, summary.origin_unix_s);

    check_rates(&recorded, &replayed);
    check_tokens(&recorded, &replayed);
    eprintln!("record, store, export and replay of {} windows: {:.1} s", recorded.len(), t0.elapsed().as_secs_f64());
}

/// Tolerance: every window's replayed arrivals within 1 request or 1 % of the recorded
/// ones (the export keeps each window's count; the rest is timestamp rounding); windows
/// past the recorded ones hold no arrival.
fn check_rates(recorded: &[TrafficWindow], replayed: &[TrafficWindow]) {
    let n = recorded.len().min(replayed.len());
    assert!(n + 2 >= recorded.len(), "replay recorded {} windows, the run {}", replayed.len(), recorded.len());
    let mut worst: f64 = 0.0;
    for (a, b) in recorded.iter().zip(replayed) {
        assert!((a.start_unix_s - b.start_unix_s).abs() < 1e-6, "windows out of step");
        let diff = (a.arrivals - b.arrivals).abs();
        assert!(
            diff <= 1.0_f64.max(0.01 * a.arrivals),
            "window at {:.0} s: recorded {} arrivals ({:.3} rps), replayed {} ({:.3} rps)",
            a.start_unix_s - ORIGIN,
            a.arrivals,
            a.arrival_rate_rps,
            b.arrivals,
            b.arrival_rate_rps
        );
        worst = worst.max(diff);
    }
    for w in recorded.iter().skip(n).chain(replayed.iter().skip(n)) {
        assert!(w.arrivals <= 1.0, "an extra window with {} arrivals", w.arrivals);
    }
    eprintln!("arrivals per window: worst difference {worst} requests over {n} windows");
}

/// Standard deviation of a histogram's values, each bucket at its midpoint (the `+Inf`
/// bucket at the largest bound).
fn spread(h: &TokenHistogram) -> f64 {
    let (n, mean) = (h.total(), h.mean().unwrap());
    let mut var = 0.0;
    for (i, c) in h.counts.iter().enumerate() {
        let lo = if i == 0 { 0.0 } else { h.bounds[i - 1] };
        let hi = h.bounds.get(i).copied().unwrap_or(lo);
        var += c * ((lo + hi) / 2.0 - mean).powi(2);
    }
    (var / n).sqrt()
}

/// How far the replayed distribution `b` is from the recorded `a`, in standard errors of
/// a sample of `b`'s size: for the mean, `|Δmean| / (σ/√n)` (σ from `a`'s buckets); for
/// the p50 and p90, where `b`'s quantile falls in `a`'s distribution,
/// `|F_a(q_b) − p| / √(p(1−p)/n)` (a binomial count: bucket widths do not matter).
fn z_scores(a: &TokenHistogram, b: &TokenHistogram) -> [f64; 3] {
    let n = b.total();
    let z_mean = (b.mean().unwrap() - a.mean().unwrap()).abs() / (spread(a) / n.sqrt()).max(1e-9);
    let ca = a.to_cumulative();
    let z_q = |p: f64| {
        let f = ca.fraction_at_most(b.quantile(p).unwrap()).unwrap();
        (f - p).abs() / (p * (1.0 - p) / n).sqrt()
    };
    [z_mean, z_q(0.5), z_q(0.9)]
}

/// Tolerances. Whole run: the replayed mean within 3 % of the recorded one (the shape
/// inside a bucket is a guess fitted to the mean; requests are capped at the model's
/// context), p50 and p90 within 5 %. Every window with at least 100 finished requests:
/// mean, p50 and p90 within 4 standard errors of a fresh sample of that size (see
/// [`z_scores`]; the replay draws new requests from the recorded distribution, so it
/// can match it no closer than sampling allows), plus 1.5 for the guessed shape.
fn check_tokens(recorded: &[TrafficWindow], replayed: &[TrafficWindow]) {
    let picks: [(&str, Pick); 2] = [("prompt", |w| &w.prompt_tokens), ("output", |w| &w.generation_tokens)];
    for (what, pick) in picks {
        let (a, b) = (stats(&merged(recorded, pick)), stats(&merged(replayed, pick)));
        eprintln!("{what} tokens mean/p50/p90: recorded {a:.1?}, replayed {b:.1?}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let tol = if i == 0 { 0.03 } else { 0.05 };
            assert!(rel(*y, *x) <= tol, "{what} {}: recorded {x:.1}, replayed {y:.1}", ["mean", "p50", "p90"][i]);
        }
        let (mut worst, mut windows): ([f64; 3], usize) = ([0.0; 3], 0);
        for (wa, wb) in recorded.iter().zip(replayed) {
            let (ha, hb) = (pick(wa), pick(wb));
            if ha.total() < 100.0 || hb.total() < 100.0 {
                continue;
            }
            windows += 1;
            let z = z_scores(ha, hb);
            for (i, zi) in z.iter().enumerate() {
                worst[i] = worst[i].max(*zi);
                assert!(
                    *zi <= 5.5,
                    "{what}, window at {:.0} s ({} requests): {} is {zi:.1} standard errors off (recorded {:.1?}, replayed {:.1?})",
                    wa.start_unix_s - ORIGIN,
                    ha.total(),
                    ["mean", "p50", "p90"][i],
                    stats(ha),
                    stats(hb)
                );
            }
        }
        eprintln!("{what} tokens, {windows} windows with >= 100 requests: worst z (mean, p50, p90) {worst:.2?}");
    }
}

#[test]
fn export_is_deterministic_per_seed() {
    let scenario = Scenario::load(Path::new("scenarios/azure-code-llama3-8b-a100.toml")).unwrap();
    let mut s = scenario.clone();
    s.file.workload.end_frac = 0.1;
    let windows = record_run(&s, ORIGIN);
    let cfg = |seed| ExportConfig { seed, max_total_tokens: Some(8192) };
    let (a, _) = requests(&windows, &cfg(3)).unwrap();
    let (b, _) = requests(&windows, &cfg(3)).unwrap();
    let (c, _) = requests(&windows, &cfg(4)).unwrap();
    assert!(a.iter().all(|r| r.input_tokens + r.output_tokens <= 8192 && r.output_tokens >= 1));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.windows(2).all(|p| p[0].t_unix_s <= p[1].t_unix_s));
}

// ---- the store ----

fn window(i: usize, start: f64) -> TrafficWindow {
    let h = TokenHistogram { bounds: vec![1.0, 10.0, 100.0], counts: vec![0.0, 3.0, 5.0, i as f64 % 2.0], sum: 400.0 };
    TrafficWindow {
        version: 1,
        workload: WORKLOAD.into(),
        start_unix_s: start,
        duration_s: 10.0,
        arrivals: 8.0 + i as f64,
        arrival_rate_rps: (8.0 + i as f64) / 10.0,
        completions: 8.0,
        prompt_tokens: h.clone(),
        generation_tokens: h,
        slo: Default::default(),
        fleet: Vec::new(),
        slo_attainment: Some(0.97),
        policy: None,
        notes: Vec::new(),
    }
}

fn open_segment(dir: &Path) -> PathBuf {
    segments(dir).unwrap().into_iter().find(|s| !s.sealed).expect("an open segment").path
}

#[test]
fn a_torn_last_line_is_skipped_by_readers_and_dropped_by_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, warnings) = RecordStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(warnings.is_empty());
    for i in 0..5 {
        store.append(&window(i, ORIGIN + 10.0 * i as f64)).unwrap();
    }
    std::mem::forget(store); // killed: no seal
    let open = open_segment(dir.path());
    // A kill in the middle of the sixth write: half a line, no newline.
    let line = serde_json::to_string(&window(5, ORIGIN + 50.0)).unwrap();
    let mut bytes = std::fs::read(&open).unwrap();
    bytes.extend_from_slice(&line.as_bytes()[..line.len() / 2]);
    std::fs::write(&open, bytes).unwrap();

    let read = read_dir(dir.path()).unwrap();
    assert_eq!(read.windows.len(), 5);
    assert_eq!(read.warnings.len(), 1);
    let name = open.display().to_string();
    assert!(read.warnings[0].contains(&name) && read.warnings[0].contains("line 6"), "{:?}", read.warnings);

    // A kill during an earlier recovery left a copy behind; the next start cleans up.
    std::fs::write(dir.path().join("seg-0000000000.tmp"), b"{\"half").unwrap();
    let (mut store, warnings) = RecordStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(warnings.iter().any(|w| w.contains("line 6")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains(".tmp")), "{warnings:?}");
    let segs = segments(dir.path()).unwrap();
    assert!(segs.iter().all(|s| s.sealed), "{segs:?}");
    store.append(&window(6, ORIGIN + 60.0)).unwrap();
    drop(store);
    let read = read_dir(dir.path()).unwrap();
    assert!(read.warnings.is_empty(), "{:?}", read.warnings);
    let arrivals: Vec<f64> = read.windows.iter().map(|w| w.arrivals).collect();
    assert_eq!(arrivals, [8.0, 9.0, 10.0, 11.0, 12.0, 14.0]);
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().path().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn the_size_limit_and_the_retention_delete_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { max_bytes: 16 << 10, segment_bytes: 4 << 10, ..Default::default() };
    let (mut store, _) = RecordStore::open(dir.path(), cfg.clone()).unwrap();
    let mut deleted = 0;
    for i in 0..400 {
        deleted += store.append(&window(i, ORIGIN + 10.0 * i as f64)).unwrap().len();
        let total: u64 = segments(dir.path()).unwrap().iter().map(|s| s.bytes).sum();
        assert!(total <= cfg.max_bytes, "{total} bytes after window {i}");
    }
    assert!(deleted > 0);
    drop(store);
    let kept = read_dir(dir.path()).unwrap().windows;
    // What is left is the newest windows, with no gap.
    assert_eq!(kept.last().unwrap().arrivals, 8.0 + 399.0);
    assert!(kept.windows(2).all(|p| p[1].arrivals == p[0].arrivals + 1.0));
    assert!(kept.len() > 20 && kept.len() < 400, "{}", kept.len());

    // Retention: one window per hour for three days, kept one day.
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { retention_s: 86_400.0, segment_age_s: 3.0 * 3600.0, ..Default::default() };
    let (mut store, _) = RecordStore::open(dir.path(), cfg).unwrap();
    for i in 0..72 {
        store.append(&window(i, ORIGIN + 3600.0 * i as f64)).unwrap();
    }
    drop(store);
    let kept = read_dir(dir.path()).unwrap().windows;
    let newest = kept.last().unwrap().end_unix_s();
    let oldest = kept.first().unwrap().start_unix_s;
    assert!(newest - oldest <= 86_400.0 + 4.0 * 3600.0, "kept {} h", (newest - oldest) / 3600.0);
    assert!(newest - oldest >= 86_400.0 - 3600.0, "kept only {} h", (newest - oldest) / 3600.0);
}

#[test]
fn recorded_seconds_since_counts_only_newer_traffic_and_skips_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(recorded_seconds_since(&dir.path().join("absent"), ORIGIN).unwrap(), 0.0);
    // Small segments: 40 windows of 10 s become several sealed segments and an open one.
    let cfg = StoreConfig { segment_bytes: 4 << 10, ..Default::default() };
    let (mut store, _) = RecordStore::open(dir.path(), cfg).unwrap();
    for i in 0..40 {
        store.append(&window(i, ORIGIN + 10.0 * i as f64)).unwrap();
    }
    assert!(segments(dir.path()).unwrap().iter().filter(|s| s.sealed).count() >= 2);
    assert_eq!(recorded_seconds_since(dir.path(), ORIGIN - 100.0).unwrap(), 400.0);
    // Half of the window that starts at ORIGIN + 300 s counts.
    assert_eq!(recorded_seconds_since(dir.path(), ORIGIN + 305.0).unwrap(), 95.0);
    assert_eq!(recorded_seconds_since(dir.path(), ORIGIN + 400.0).unwrap(), 0.0);
    // An old sealed segment is not read: a corrupt one does not matter.
    drop(store);
    let first = segments(dir.path()).unwrap().into_iter().find(|s| s.sealed).unwrap();
    std::fs::write(&first.path, b"not json\nnot json\n").unwrap();
    assert_eq!(recorded_seconds_since(dir.path(), ORIGIN + 395.0).unwrap(), 5.0);
    let e = recorded_seconds_since(dir.path(), ORIGIN - 100.0).unwrap_err().to_string();
    assert!(e.contains(&first.path.display().to_string()) && e.contains("line 1"), "{e}");
}

#[test]
fn bad_files_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_string(&window(0, ORIGIN)).unwrap();
    let mut nan = window(1, ORIGIN);
    nan.prompt_tokens.counts.pop();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", format!("{good}\nnot json\n{good}\n").into_bytes(), "line 2"),
        (
            "wrong version",
            format!("{good}\n{}\n", good.replace("\"version\":1", "\"version\":9")).into_bytes(),
            "version 9",
        ),
        (
            "bad histogram",
            format!("{}\n{good}\n", serde_json::to_string(&nan).unwrap()).into_bytes(),
            "want bounds + 1",
        ),
        ("not UTF-8", [good.as_bytes(), b"\n\xff\xfe\n", good.as_bytes(), b"\n"].concat(), "not UTF-8"),
    ];
    for (what, body, needle) in cases {
        let seg = dir.path().join("seg-0000000001-1-2.jsonl");
        std::fs::write(&seg, body).unwrap();
        let e = read_dir(dir.path()).expect_err(what);
        let RecordError::Corrupt { file, line, message } = &e else { panic!("{what}: {e}") };
        assert!(file.ends_with("seg-0000000001-1-2.jsonl"), "{what}: {e}");
        assert!(*line >= 1 && (e.to_string().contains(needle) || message.contains(needle)), "{what}: {e}");
    }
    // A sealed segment's complete last line is never "torn": it is an error too.
    let seg = dir.path().join("seg-0000000001-1-2.jsonl");
    std::fs::write(&seg, format!("{good}\n{{}}\n")).unwrap();
    assert!(matches!(read_dir(dir.path()), Err(RecordError::Corrupt { line: 2, .. })));
    // Other files are not segments; a missing directory names itself.
    std::fs::remove_file(&seg).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    assert!(read_dir(dir.path()).unwrap().windows.is_empty());
    let missing = dir.path().join("nope");
    assert!(read_dir(&missing).unwrap_err().to_string().contains("nope"));
    // Limits that cannot hold are refused, naming the field.
    let e = RecordStore::open(dir.path(), StoreConfig { max_bytes: 10, ..Default::default() }).err().unwrap();
    assert!(e.to_string().starts_with("maxBytes"), "{e}");
}

#[test]
fn a_corrupt_open_segment_is_set_aside_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_string(&window(0, ORIGIN)).unwrap();
    std::fs::write(dir.path().join("seg-0000000003.open"), format!("{good}\ngarbage\n{good}\n")).unwrap();
    let (store, warnings) = RecordStore::open(dir.path(), StoreConfig::default()).unwrap();
    drop(store);
    assert!(warnings.iter().any(|w| w.contains("line 2") && w.contains("set aside")), "{warnings:?}");
    assert!(segments(dir.path()).unwrap().is_empty());
    assert!(dir.path().join("seg-0000000003.corrupt").exists());
}

#[test]
fn the_sink_never_blocks_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, writer) = RecordSink::spawn(dir.path(), StoreConfig::default(), 4).unwrap();
    let n = 20_000;
    let w = window(0, ORIGIN);
    let t = Instant::now();
    let mut accepted = 0u64;
    for _ in 0..n {
        accepted += sink.record(w.clone()) as u64;
    }
    let per_call = t.elapsed().as_secs_f64() / n as f64;
    let before = sink.stats();
    drop(sink);
    let stats = writer.join();
    assert_eq!(before.sent + before.dropped, n);
    assert_eq!(stats.sent, accepted);
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.written, stats.sent);
    assert!(per_call < 1e-3, "record() took {per_call} s per call");
    let kept = read_dir(&workload_dir(dir.path(), WORKLOAD)).unwrap().windows;
    assert_eq!(kept.len() as u64, stats.written);
}
