//! What recording traffic costs: the work a reconcile does per window (building the
//! window from the pods' samples, handing it to the sink), the writer's synced appends
//! per second, and the bytes a workload's record grows by per day at one window per
//! 10 s. The windows are real: the Azure code trace run in the twin on six replicas.
//!
//! `cargo run --example record_overhead [-- DIR]` (DIR: where the store writes, default a
//! temporary directory; its file system decides the cost of `fdatasync`).

use std::path::Path;
use std::time::{Duration, Instant};

use llmos::learning::record::{fleet_of, TrafficWindow, WindowContext, WindowRecorder};
use llmos::learning::sink::RecordSink;
use llmos::learning::store::{RecordStore, StoreConfig};
use llmos::metrics::scrape::{parse_exposition, PodSample};
use llmos::metrics::Endpoint;
use llmos::policy::Decision;
use llmos::twin::scenario::InitialReplicas;
use llmos::twin::{Scenario, Twin};

fn scrape(twin: &Twin) -> Vec<(Endpoint, PodSample)> {
    twin.replicas()
        .iter()
        .filter_map(|r| {
            let text = twin.replica_metrics_text(r.id)?;
            let e = Endpoint { variant: r.variant.clone(), pool: r.pool.clone(), address: format!("replica-{}", r.id) };
            Some((e, parse_exposition(&text)))
        })
        .collect()
}

/// Windows of the code trace (one per control interval) and the time spent in
/// `WindowRecorder::observe` per call.
fn windows() -> anyhow::Result<(Vec<TrafficWindow>, Duration, u32)> {
    let mut s = Scenario::load(Path::new("scenarios/azure-code-llama3-8b-a100.toml"))?;
    let (v, p) = (s.spec.variants[0].name.clone(), s.spec.gpu_pools[0].name.clone());
    s.set_initial_replicas(vec![InitialReplicas { variant: v, pool: p, replicas: 6 }], "overhead")?;
    let mut twin = Twin::new(&s, 0)?;
    let mut rec = WindowRecorder::new("default/code", twin.control_interval_s());
    let (mut spent, mut calls, mut out) = (Duration::ZERO, 0u32, Vec::new());
    while !twin.is_done() {
        let obs = twin.observe();
        twin.apply(&Decision::hold(&obs, "fixed fleet"));
        twin.step();
        let pods = scrape(&twin);
        let obs = twin.observe();
        let ctx = WindowContext {
            slo: twin.spec().slo.clone(),
            fleet: fleet_of(&obs),
            slo_attainment: obs.slo_attainment,
            policy: Some("static".into()),
        };
        let t = Instant::now();
        let w = rec.observe(1.8e9 + twin.now_s(), &pods, &ctx);
        spent += t.elapsed();
        calls += 1;
        out.extend(w);
    }
    Ok((out, spent, calls))
}

fn main() -> anyhow::Result<()> {
    let (ws, spent, calls) = windows()?;
    let busy: Vec<&TrafficWindow> = ws.iter().filter(|w| w.arrivals > 0.0).collect();
    let line_bytes: Vec<usize> =
        busy.iter().map(|w| serde_json::to_vec(w).map(|v| v.len() + 1)).collect::<Result<_, _>>()?;
    let mean_line = line_bytes.iter().sum::<usize>() as f64 / line_bytes.len().max(1) as f64;
    println!("windows: {} ({} with traffic), 6 pods scraped per round", ws.len(), busy.len());
    println!(
        "WindowRecorder::observe: {:.1} us per scrape round ({calls} rounds)",
        spent.as_secs_f64() * 1e6 / calls as f64
    );
    println!("record line: {mean_line:.0} bytes on average (max {})", line_bytes.iter().max().unwrap_or(&0));
    println!(
        "per workload-day at one window per 10 s: {:.2} MiB ({} windows)",
        mean_line * 8640.0 / (1 << 20) as f64,
        8640
    );

    let tmp = tempfile::tempdir()?;
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;

    // The writer's side: synced appends (one fdatasync each), through segment seals.
    let cfg = StoreConfig { segment_bytes: 256 << 10, max_bytes: 4 << 20, ..Default::default() };
    let (mut store, _) = RecordStore::open(&dir.join("store"), cfg.clone())?;
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        let mut w = busy[i % busy.len()].clone();
        w.start_unix_s = 1.8e9 + 10.0 * i as f64;
        store.append(&w)?;
    }
    let per_s = n as f64 / t.elapsed().as_secs_f64();
    println!("RecordStore::append (fdatasync each): {per_s:.0} windows/s ({:.0} us each)", 1e6 / per_s);

    // The reconcile's side: handing a window to the sink.
    let (sink, writer) = RecordSink::spawn(&dir.join("sink"), cfg, 1024)?;
    let (mut spent, mut sent) = (Duration::ZERO, 0);
    for i in 0..n {
        let w = busy[i % busy.len()].clone();
        let t = Instant::now();
        sent += sink.record(w) as usize;
        spent += t.elapsed();
        // Faster than the writer syncs: once the channel is full, windows are dropped, counted.
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(sink);
    let stats = writer.join();
    println!(
        "RecordSink::record: {:.1} us per call ({sent} sent, {} dropped, {} written)",
        spent.as_secs_f64() * 1e6 / n as f64,
        stats.dropped,
        stats.written
    );
    Ok(())
}
