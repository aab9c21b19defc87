//! Arbiter speed: one arbitration of 100 and 1,000 workloads (two slots each on two
//! shared pools, a quarter of them bursting into a pool too small for all).
//!
//! `cargo bench --bench arbiter`. Figures in docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, Criterion};
use llmos::arbiter::{arbitrate, Claim, PoolCapacity, SlotClaim};

/// `n` workloads whose held replicas fill 90 % of two pools, a quarter of them asking
/// for three more replicas per slot; priorities 0..4, every tenth with a guarantee.
fn case(n: usize) -> (Vec<PoolCapacity>, Vec<Claim>) {
    let pools = vec![
        PoolCapacity { name: "a100".into(), capacity_gpus: (n * 4) as u32 },
        PoolCapacity { name: "h100".into(), capacity_gpus: (n * 4) as u32 },
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let claims = (0..n)
        .map(|i| {
            let burst = next() % 4 == 0;
            let slots = ["a100", "h100"]
                .iter()
                .enumerate()
                .map(|(k, pool)| {
                    let gpus = if k == 0 { 1 } else { 2 };
                    let held = if k == 0 { 3 } else { 1 } + (next() % 2) as u32;
                    SlotClaim {
                        variant: if k == 0 { "8b".into() } else { "70b".into() },
                        pool: (*pool).into(),
                        gpus_per_replica: gpus,
                        held,
                        proposed: held + if burst { 3 } else { 0 },
                        max: 16,
                        replica_rps: if k == 0 { 1.0 } else { 2.5 },
                    }
                })
                .collect();
            Claim {
                workload: format!("ns/w{i}"),
                priority: (next() % 4) as i32,
                guaranteed_gpus: if i % 10 == 0 { 4 } else { 0 },
                has_traffic: true,
                slots,
            }
        })
        .collect();
    (pools, claims)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("arbiter");
    for n in [100, 1000] {
        let (pools, claims) = case(n);
        g.bench_function(format!("{n}_workloads"), |b| b.iter(|| arbitrate(&pools, &claims)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
