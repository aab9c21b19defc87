//! The roofline's fitted efficiencies against the measured operator profiles in
//! `data/profiles` (Vidur, MIT). The stated error bounds are the ones in docs/twin.md.
//!
//! `cargo test --test twin_perf_fit -- --ignored --nocapture refit` re-runs the fit and
//! prints the constants to paste into `src/twin/perf.rs`.

use std::path::Path;

use llmos::twin::catalog::Catalog;
use llmos::twin::perf::{fit_allreduce, fit_layer_efficiency, profile_errors, read_profile, Efficiency, ProfileRow};

const A100: &[&str] = &[
    "data/profiles/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv",
    "data/profiles/compute/a100/meta-llama/Llama-2-70b-hf/mlp.csv",
];
const H100: &[&str] = &[
    "data/profiles/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv",
    "data/profiles/compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv",
];

fn rows(files: &[&str]) -> Vec<ProfileRow> {
    let mut v = Vec::new();
    for f in files {
        v.extend(read_profile(Path::new(f)).unwrap());
    }
    // Serving batches: up to 8192 tokens per iteration.
    v.retain(|r| r.tokens <= 8192.0);
    v
}

/// Stated bounds (docs/twin.md): median and 90th-percentile relative error per layer.
const MEDIAN_BOUND: f64 = 0.06;
const P90_BOUND: f64 = 0.15;

#[test]
fn fitted_constants_match_profiles() {
    let c = Catalog::default();
    for (gpu, files) in [("A100-80GB", A100), ("H100-SXM", H100)] {
        let g = c.gpu(gpu, "").unwrap();
        let eff = Efficiency::for_gpu(g);
        let (med, p90, max) = profile_errors(&rows(files), g, &eff);
        println!("{gpu}: median {:.1}%  p90 {:.1}%  max {:.1}%", med * 100.0, p90 * 100.0, max * 100.0);
        assert!(med < MEDIAN_BOUND && p90 < P90_BOUND, "{gpu}: median {med}, p90 {p90}");
    }
}

#[test]
fn allreduce_fit_is_close() {
    let c = Catalog::default();
    for (i, (gpu, f)) in [
        ("A100-80GB", "data/profiles/network/a100_dgx/all_reduce.csv"),
        ("H100-SXM", "data/profiles/network/h100_dgx/all_reduce.csv"),
    ]
    .into_iter()
    .enumerate()
    {
        let (lat, bw, med) = fit_allreduce(Path::new(f)).unwrap();
        let nccl = llmos::twin::perf::NCCL_AR[i];
        assert!(
            (nccl[0] / lat - 1.0).abs() < 0.05 && (nccl[1] / bw - 1.0).abs() < 0.05,
            "{gpu}: {nccl:?} vs {lat} {bw}"
        );
        let eff = Efficiency::for_gpu(c.gpu(gpu, "").unwrap());
        println!("{gpu}: fitted latency {:.1} us, bus {:.0} GB/s, median error {:.1}%", lat * 1e6, bw, med * 100.0);
        assert!(
            (eff.allreduce_bus_gb_s / bw - 1.0).abs() < 0.05,
            "{gpu}: stored {} vs fitted {bw}",
            eff.allreduce_bus_gb_s
        );
    }
}

#[test]
#[ignore]
fn refit() {
    let c = Catalog::default();
    for (gpu, files) in [("A100-80GB", A100), ("H100-SXM", H100)] {
        let g = c.gpu(gpu, "").unwrap();
        let r = rows(files);
        let start = Efficiency::for_gpu(g);
        let fit = fit_layer_efficiency(&r, g, start);
        let (med, p90, max) = profile_errors(&r, g, &fit);
        println!(
            "{gpu}: [{:.3}, {:.3}, {:.2}, {:.2e}]  median {:.1}% p90 {:.1}% max {:.1}% over {} rows",
            fit.gemm_compute,
            fit.memory,
            fit.smooth_p,
            fit.kernel_s,
            med * 100.0,
            p90 * 100.0,
            max * 100.0,
            r.len()
        );
    }
    for f in ["data/profiles/network/a100_dgx/all_reduce.csv", "data/profiles/network/h100_dgx/all_reduce.csv"] {
        let (lat, bw, med) = fit_allreduce(Path::new(f)).unwrap();
        println!("{f}: [{lat:.2e}, {bw:.0}] median error {:.1}%", med * 100.0);
    }
}

/// Prints the calibration table of docs/twin.md:
/// `cargo test --test twin_perf_fit -- --ignored --nocapture calibration_table`.
#[test]
#[ignore]
fn calibration_table() {
    use llmos::twin::perf::{BatchShape, PerfModel, RooflinePerf};
    let c = Catalog::default();
    println!("| model | GPU x TP | prefill 512 / 2k / 8k (ms) | decode ms/step at batch 1 / 8 / 32 / 64 / 128 (ctx 1k each) | tok/s per seq at batch 1 / 32 |");
    for (m, g, tp) in [
        ("Llama-3-8B", "A100-80GB", 1),
        ("Llama-3-8B", "H100-SXM", 1),
        ("Llama-2-7B", "A100-80GB", 1),
        ("Llama-3-70B", "A100-80GB", 4),
        ("Llama-3-70B", "H100-SXM", 4),
        ("Llama-3-8B", "L4", 1),
    ] {
        let p = RooflinePerf::new(c.model(m, "").unwrap(), c.gpu(g, "").unwrap(), tp);
        let pre: Vec<String> = [512u64, 2048, 8192].iter().map(|&t| format!("{:.0}", p.prefill_s(t) * 1e3)).collect();
        let step = |n: u64| {
            p.iteration_s(&BatchShape {
                decode_seqs: n,
                decode_ctx_tokens: n * 1024,
                logit_seqs: n,
                ..Default::default()
            })
        };
        let dec: Vec<String> = [1u64, 8, 32, 64, 128].iter().map(|&n| format!("{:.1}", step(n) * 1e3)).collect();
        println!(
            "| {m} | {g} x {tp} | {} | {} | {:.0} / {:.0} |",
            pre.join(" / "),
            dec.join(" / "),
            1.0 / step(1),
            1.0 / step(32)
        );
    }
}
