//! Twin speed: the whole Azure conversation hour on 4 replicas, and a synthetic run on 64.
//!
//! `cargo bench --bench twin`. Figures and the 1M-request run are in docs/benchmarks.md.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use llmos::twin::{Scenario, Twin};

fn run(s: &Scenario) -> u64 {
    let mut twin = Twin::new(s, 0).unwrap();
    while !twin.is_done() {
        twin.step();
    }
    twin.report().finished
}

fn bench(c: &mut Criterion) {
    let conv = Scenario::load(Path::new("scenarios/azure-conv-llama3-8b-a100.toml")).unwrap();
    let mut g = c.benchmark_group("twin");
    g.sample_size(10);
    g.bench_function("azure_conv_hour_4_replicas", |b| b.iter(|| run(&conv)));
    let mut syn = Scenario::load(Path::new("scenarios/bench-synthetic-1m-64.toml")).unwrap();
    if let Some(x) = syn.file.workload.synthetic.as_mut() {
        x.max_requests = Some(100_000);
    }
    g.bench_function("synthetic_100k_64_replicas", |b| b.iter(|| run(&syn)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
