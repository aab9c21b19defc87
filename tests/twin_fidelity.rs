//! The twin against published vLLM measurements (data/fidelity/points.csv).
//!
//! - docs/fidelity.md holds the table `llmos fidelity` prints, byte for byte: the report
//!   cannot drift from the model.
//! - The errors may not grow past what the calibration reached (a regression guard, not
//!   the target: docs/fidelity.md says how far from it the twin is).
//! - The quantized variants behave as their formats say on every catalog GPU.

use std::path::Path;

use llmos::twin::catalog::{Catalog, WeightFormat};
use llmos::twin::fidelity::{evaluate, markdown, read_points, summary, Role};
use llmos::twin::perf::{PerfModel, RooflinePerf};

fn results() -> Vec<llmos::twin::fidelity::PointResult> {
    let points = read_points(Path::new("data/fidelity/points.csv")).expect("data/fidelity/points.csv");
    evaluate(&points, &Catalog::default()).expect("every point runs")
}

#[test]
fn docs_hold_the_table_the_command_prints() {
    let table = markdown(&results());
    let doc = std::fs::read_to_string("docs/fidelity.md").expect("docs/fidelity.md");
    assert!(doc.contains(&table), "docs/fidelity.md is stale: paste the output of `llmos fidelity` into it\n\n{table}");
}

#[test]
fn errors_stay_within_what_the_calibration_reached() {
    let r = results();
    assert!(r.iter().all(|x| x.twin.is_finite() && x.twin > 0.0), "every point gives a value");
    let (nf, fit_med, _) = summary(&r, Role::Fit);
    let (nc, check_med, _) = summary(&r, Role::Check);
    assert!(nf >= 10 && nc >= 30, "{nf} fit and {nc} check points");
    // Measured when the constants were chosen: docs/fidelity.md, "Summary".
    assert!(fit_med <= 0.06, "fit median |error| {:.1} %", 100.0 * fit_med);
    assert!(check_med <= 0.05, "check median |error| {:.1} %", 100.0 * check_med);
    for family in ["ttft", "tpot", "e2e", "throughput"] {
        assert!(r.iter().any(|x| x.point.metric.family() == family), "no {family} point");
    }
}

#[test]
fn quantized_formats_read_fewer_bytes_and_fp8_needs_fp8_tensor_cores() {
    let c = Catalog::default();
    for gpu in ["A100-80GB", "H100-SXM", "H200", "L4"] {
        let g = c.gpu(gpu, "").unwrap();
        let step = |m: &str, n: u64| {
            let p = RooflinePerf::new(c.model(m, "").unwrap(), g, 1);
            let (a, b) = p.decode_affine(n);
            a + b * 1000.0 * n as f64
        };
        // Batch 1 is bound by reading the weights: fewer bytes, faster steps.
        let (bf16, fp8, int8, int4) =
            (step("Llama-3-8B", 1), step("Llama-3-8B-FP8", 1), step("Llama-3-8B-INT8", 1), step("Llama-3-8B-INT4", 1));
        assert!(int4 < int8.min(fp8) && int8.max(fp8) < bf16, "{gpu}: {bf16} {fp8} {int8} {int4}");
        // A 4k-token prefill is compute-bound: FP8 is faster only with FP8 tensor cores;
        // weight-only formats pay for dequantising.
        let pre = |m: &str| RooflinePerf::new(c.model(m, "").unwrap(), g, 1).prefill_s(4096);
        if g.peak_fp8_tflops.is_some() {
            assert!(pre("Llama-3-8B-FP8") < 0.9 * pre("Llama-3-8B"), "{gpu}");
        } else {
            assert!(pre("Llama-3-8B-FP8") > pre("Llama-3-8B"), "{gpu}: FP8 runs weight-only here");
        }
        assert!(pre("Llama-3-8B-INT4") > pre("Llama-3-8B"), "{gpu}");
    }
    let m = c.model("Llama-3.1-70B-INT4", "").unwrap();
    assert_eq!(m.weights, WeightFormat::Int4);
    assert!(m.weight_bytes() < 0.3 * c.model("Llama-3.1-70B", "").unwrap().weight_bytes());
}
