//! The clairvoyant frontier of a comparison and the two per-policy figures (GPU-hours saved
//! against HPA/KPA at equal or better SLO, share of the frontier's saving captured), their
//! edge cases, the sweep in `compare`, and static sizing on a ServeGen slice.

use std::path::PathBuf;

use llmos::eval::stats::{self, columns, Estimate, PolicyFigures, Row, NO_FIGURE};
use llmos::eval::{arrival_stats, compare, CompareConfig, Window};
use llmos::policy::static_policy::replicas_for_rate;
use llmos::twin::{RunWindow, Scenario, Twin};

fn row(policy: &str, slo: f64, gpu: f64) -> Row {
    let names: Vec<&'static str> = columns().iter().map(|c| c.name).collect();
    let mut values = vec![Estimate::default(); names.len()];
    values[names.iter().position(|c| *c == "SLO %").unwrap()] = Estimate { mean: slo, ci95: 0.0, n: 1 };
    values[names.iter().position(|c| *c == "GPU-h").unwrap()] = Estimate { mean: gpu, ci95: 0.0, n: 1 };
    Row { policy: policy.into(), kind: llmos::rl::registry().kind_of(policy), load: 1.0, columns: names, values }
}

fn fig<'a>(figs: &'a [PolicyFigures], policy: &str) -> &'a PolicyFigures {
    figs.iter().find(|f| f.policy == policy).unwrap_or_else(|| panic!("no figures for {policy}"))
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

fn rows() -> Vec<Row> {
    vec![
        row("hpa:target=0.5", 98.0, 10.0),
        row("hpa", 95.0, 8.0),
        row("kpa", 90.0, 6.0),
        row("clairvoyant:capacity=1", 99.0, 6.0),
        row("clairvoyant:capacity=2", 95.0, 4.0),
        row("clairvoyant:capacity=1.5", 95.0, 5.0), // dominated: not on the frontier
        row("clairvoyant:capacity=3", 90.0, 3.0),
        row("forecast", 96.5, 7.0),
        row("queue", 85.0, 5.0),
    ]
}

#[test]
fn captured_is_one_on_the_frontier_and_zero_at_the_reference() {
    let figs = stats::policy_figures(&rows());
    // A frontier point: as cheap as the frontier at its own SLO.
    for p in ["clairvoyant:capacity=2", "clairvoyant:capacity=3"] {
        assert!(close(fig(&figs, p).captured, 1.0), "{p}: {:?}", fig(&figs, p));
    }
    // A dominated clairvoyant run captures less: (8 − 5) / (8 − 4).
    assert!(close(fig(&figs, "clairvoyant:capacity=1.5").captured, 0.75));
    // Each HPA/KPA setting that is the cheapest at its SLO is its own reference: 0 saved, 0 captured.
    for p in ["hpa", "kpa", "hpa:target=0.5"] {
        let f = fig(&figs, p);
        assert_eq!(f.reference.as_deref(), Some(p));
        assert!(close(f.saved, 0.0) && close(f.captured, 0.0), "{p}: {f:?}");
    }
    // An online policy: the reference is the cheapest HPA/KPA at ≥ 96.5 % (hpa:target=0.5,
    // 10 GPU-h); the frontier at 96.5 % is 4 + 1.5/4 × 2 = 4.75 GPU-h.
    let f = fig(&figs, "forecast");
    assert_eq!(f.reference.as_deref(), Some("hpa:target=0.5"));
    assert!(close(f.saved, 0.3) && close(f.frontier_gpu_h, 4.75));
    assert!(close(f.captured, 3.0 / 5.25));
    // The frontier: Pareto points only, SLO and GPU-hours both increasing.
    let fr = &stats::frontiers(&rows(), &[1.0])[0];
    assert_eq!(fr.points, vec![(90.0, 3.0), (95.0, 4.0), (99.0, 6.0)]);
    assert!(fr.points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
}

#[test]
fn unsupported_figures_are_dashes_with_a_reason() {
    let figs = stats::policy_figures(&rows());
    // No HPA/KPA setting reaches 99 %: neither figure.
    let f = fig(&figs, "clairvoyant:capacity=1");
    assert!(f.saved.is_none() && f.captured.is_none() && f.reference.is_none());
    assert!(f.saved_why.as_deref().unwrap().contains("no HPA/KPA setting reaches 99.0 %"), "{f:?}");
    // 85 % is below the frontier's range [90, 99]: a saving (against kpa) but no share.
    let f = fig(&figs, "queue");
    assert_eq!(f.reference.as_deref(), Some("kpa"));
    assert!(close(f.saved, 1.0 / 6.0) && f.captured.is_none() && f.frontier_gpu_h.is_none());
    assert!(f.captured_why.as_deref().unwrap().contains("outside the frontier's range"), "{f:?}");
    // The frontier no cheaper than the reference: no share.
    let figs2 =
        stats::policy_figures(&[row("hpa", 95.0, 4.0), row("clairvoyant:capacity=2", 95.0, 4.5), row("x", 95.0, 3.0)]);
    let f = fig(&figs2, "x");
    assert!(close(f.saved, 0.25) && f.captured.is_none());
    assert!(f.captured_why.as_deref().unwrap().contains("saves less than"), "{f:?}");
    // No clairvoyant run at all: no share; no HPA/KPA at all: no saving.
    let figs3 = stats::policy_figures(&[row("hpa", 95.0, 4.0), row("x", 95.0, 3.0)]);
    assert!(fig(&figs3, "x").captured_why.as_deref().unwrap().contains("no clairvoyant run"));
    let figs4 = stats::policy_figures(&[row("x", 95.0, 3.0), row("clairvoyant:capacity=2", 95.0, 2.0)]);
    assert!(fig(&figs4, "x").saved_why.as_deref().unwrap().contains("no HPA/KPA setting in the run"));
    // Printed as "–" with the reason; never a number.
    let table = stats::figures_table(&figs, &[1.0]);
    let line = |name: &str| table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap().to_string();
    assert!(line("clairvoyant:capacity=1").matches(NO_FIGURE).count() >= 4, "{table}");
    assert!(line("queue").trim_end().ends_with(NO_FIGURE), "{table}");
    assert!(line("forecast").trim_end().ends_with("0.57"), "{table}");
    let text = stats::figures_text(&figs);
    let l = text.lines().find(|l| l.contains(" queue ")).unwrap();
    assert!(l.contains(&format!("frontier share {NO_FIGURE} (85.0 % SLO is outside")), "{l}");
    let l = text.lines().find(|l| l.contains(" clairvoyant:capacity=1 ")).unwrap();
    assert!(l.contains(&format!("saved vs HPA/KPA {NO_FIGURE} (no HPA/KPA setting reaches")), "{l}");
    // CSV: empty fields where a figure is missing.
    let csv = stats::csv_with_figures(&rows(), &figs);
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with(",hpa_kpa_reference,saved_vs_hpa_kpa,frontier_gpu_h,frontier_captured"));
    assert!(csv.lines().find(|l| l.starts_with("clairvoyant:capacity=1,")).unwrap().ends_with(",,,6,"), "{csv}");
    assert!(csv.lines().find(|l| l.starts_with("queue,")).unwrap().ends_with(",kpa,0.16666666666666666,,"), "{csv}");
}

fn tiny_step() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml")
}

/// Two seeds of the first 300 s of the tiny step scenario with `policies` and a sweep.
fn tiny_cfg(policies: &str, sweep: Vec<f64>) -> CompareConfig {
    CompareConfig {
        scenario: tiny_step(),
        policies: policies.into(),
        seeds: 2,
        window: Window::All,
        loads: vec![1.0],
        replica_capacity_rps: Some(3.0),
        max_duration_s: Some(300.0),
        clairvoyant_sweep: sweep,
        reward: llmos::control::RewardConfig::default(),
        timeline: false,
    }
}

#[test]
fn the_sweep_runs_on_the_same_arrivals_and_is_never_a_reference() {
    let cfg = tiny_cfg("hpa,kpa,static-peak,clairvoyant:capacity=2.5", vec![1.5, 2.5, 4.0]);
    let r = compare(&cfg).unwrap();
    // 2.5 was listed already: not run twice.
    assert_eq!(r.sweep, vec!["clairvoyant:capacity=1.5", "clairvoyant:capacity=4"]);
    assert_eq!(r.policies.len(), 6);
    for seed in 0..2 {
        let arrived: Vec<u64> = r.episodes.iter().filter(|e| e.seed == seed).map(|e| e.report.arrived).collect();
        assert!(arrived.len() == 6 && arrived.iter().all(|&n| n == arrived[0] && n > 0), "{arrived:?}");
    }
    let fr = &r.frontiers[0].points;
    assert!(!fr.is_empty());
    assert!(fr.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "{fr:?}");
    assert_eq!(r.figures.len(), 6, "every policy has figures");
    for f in &r.figures {
        if let Some(re) = &f.reference {
            assert!(stats::is_hpa_kpa(re), "{f:?}");
        }
        assert!(f.saved.is_some() || f.saved_why.is_some());
        assert!(f.captured.is_some() || f.captured_why.is_some());
    }
    let mut bad = cfg.clone();
    bad.clairvoyant_sweep = vec![0.0];
    assert!(compare(&bad).unwrap_err().to_string().contains("--clairvoyant-sweep"));
    // The default sweep: 0.6–2 × the replica capacity.
    assert_eq!(llmos::eval::auto_sweep(1.3), vec![0.78, 1.04, 1.3, 1.625, 2.08, 2.6]);
}

/// A policy compared later, with the rows of an earlier report of the same runs, gets the
/// figures it would have had in one comparison with all of them; a report of other runs
/// is refused, naming the file and the field.
#[test]
fn rows_of_an_earlier_report_judge_a_later_policy_as_one_run_would() {
    let all = compare(&tiny_cfg("hpa,kpa,hpa:target=2,static:2", vec![1.5, 2.5, 4.0])).unwrap();
    let earlier = compare(&tiny_cfg("hpa,kpa,hpa:target=2", vec![1.5, 2.5, 4.0])).unwrap();
    let earlier = serde_json::to_value(&earlier).unwrap();
    let registry = llmos::policy::Registry::builtin();
    let mut later = compare(&tiny_cfg("static:2", Vec::new())).unwrap();
    let added = llmos::eval::merge::merge_rows(&mut later, &earlier, "earlier.json", registry).unwrap();
    assert_eq!(added.len(), 6, "{added:?}");
    let of = |r: &llmos::eval::CompareReport| r.figures.iter().find(|f| f.policy == "static:2").cloned().unwrap();
    assert_eq!(format!("{:?}", of(&later)), format!("{:?}", of(&all)));
    assert_eq!(format!("{:?}", later.frontiers), format!("{:?}", all.frontiers));
    // Other runs: refused.
    let mut other = earlier.clone();
    other["seeds"] = serde_json::json!(5);
    let mut again = compare(&tiny_cfg("static:2", Vec::new())).unwrap();
    let e = llmos::eval::merge::merge_rows(&mut again, &other, "earlier.json", registry).unwrap_err().to_string();
    assert!(e.contains("earlier.json") && e.contains("`seeds`"), "{e}");
    other = earlier.clone();
    other["rows"][0]["values"][0] = serde_json::json!("x");
    let e = llmos::eval::merge::merge_rows(&mut again, &other, "earlier.json", registry).unwrap_err().to_string();
    assert!(e.contains("rows[0]") && e.contains("SLO %"), "{e}");
    // A report written before a column was added: the column has no value, the rest merge.
    let mut older = earlier.clone();
    for row in older["rows"].as_array_mut().unwrap() {
        let i = row["columns"].as_array().unwrap().iter().position(|c| c == "large-variant changes").unwrap();
        row["columns"].as_array_mut().unwrap().remove(i);
        row["values"].as_array_mut().unwrap().remove(i);
    }
    let mut later = compare(&tiny_cfg("static:2", Vec::new())).unwrap();
    assert_eq!(llmos::eval::merge::merge_rows(&mut later, &older, "older.json", registry).unwrap().len(), 6);
    assert_eq!(format!("{:?}", of(&later)), format!("{:?}", of(&all)));
    // A column this build does not know: refused, naming the row.
    let mut newer = earlier.clone();
    newer["rows"][0]["columns"][0] = serde_json::json!("a column from the future");
    let e = llmos::eval::merge::merge_rows(&mut again, &newer, "newer.json", registry).unwrap_err().to_string();
    assert!(e.contains("rows[0]") && e.contains("a column from the future"), "{e}");
}

const SPEC: &str = r#"
initial_replicas = [{ variant = "llama3-8b", pool = "a100", replicas = 1 }]
[spec]
variants = [
  { name = "llama3-8b", model = "meta-llama/Meta-Llama-3-8B-Instruct", image = "vllm/vllm-openai:v0.6.3", gpusPerReplica = 1, minReplicas = 1, maxReplicas = 8 },
]
gpuPools = [{ name = "a100", gpuType = "A100-80GB", pricePerGpuHour = 3.0, capacityGpus = 8 }]
slo = { ttftMs = 2000.0, tpotMs = 100.0, percentile = 90.0, targetAttainment = 0.95 }
limits = { minTotalReplicas = 1, maxTotalReplicas = 8, maxStepChange = 4, scaleDownCooldownSeconds = 120 }
metrics = { windowSeconds = 60 }
policy = { kind = "hpa", intervalSeconds = 15 }
"#;

#[test]
fn static_peak_and_static_mean_size_on_a_servegen_slice() {
    // One client, Poisson (Gamma shape 1): 2 req/s for ten minutes, then 6 req/s.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("chunk-1-trace.csv"),
        "0,2.0,1.0,Gamma,1.0,0.5\r\n600,6.0,1.0,Gamma,1.0,0.1667\r\n",
    )
    .unwrap();
    let lengths = "{\"0\": {\"input_tokens\": \"{50: 0.5, 60: 0.5}\", \"output_tokens\": \"{10: 1.0}\"}}";
    std::fs::write(data.path().join("chunk-1-dataset.json"), lengths).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    std::fs::write(&p, format!("{SPEC}\n[workload.servegen]\ndir = \"{}\"\n", data.path().display())).unwrap();
    let sc = Scenario::load(&p).unwrap();
    Twin::arrival_stream(&sc, RunWindow::new(0, (0.0, 1.0), 1.0)).unwrap();
    let st = arrival_stats(&sc, Window::All, 1.0).expect("ServeGen arrival statistics");
    // 1200 + 3600 requests over 1200 s; the busiest minute is in the 6 req/s half.
    assert!((3.9..4.2).contains(&st.mean_rps), "{st:?}");
    assert!((6.0..8.5).contains(&st.peak_rps), "{st:?}");
    // The peak is over 60 s bins of seed 0's arrivals, as for traces.
    let mut s = Twin::arrival_stream(&sc, RunWindow::new(0, (0.0, 1.0), 1.0)).unwrap();
    let mut bins = vec![0u32; 21];
    while let Some(a) = s.next_arrival() {
        bins[(a.at.as_secs_f64() / 60.0) as usize] += 1;
    }
    assert_eq!(st.peak_rps, *bins.iter().max().unwrap() as f64 / 60.0);
    let cfg = CompareConfig {
        scenario: p,
        policies: "static-peak,static-mean".into(),
        seeds: 1,
        window: Window::All,
        loads: vec![1.0],
        replica_capacity_rps: Some(2.5),
        max_duration_s: Some(300.0),
        clairvoyant_sweep: Vec::new(),
        reward: llmos::control::RewardConfig::default(),
        timeline: false,
    };
    let r = compare(&cfg).unwrap();
    let most = |label: &str| {
        r.episodes.iter().find(|e| e.policy == label).unwrap().series.iter().map(|x| x.desired_replicas).max().unwrap()
    };
    assert_eq!(most("static-peak"), replicas_for_rate(st.peak_rps, 2.5).unwrap());
    assert_eq!(most("static-mean"), replicas_for_rate(st.mean_rps, 2.5).unwrap());
    assert!(most("static-peak") > most("static-mean"));
}

/// The changes of the largest variant (the one with the most GPUs per replica) are counted
/// apart when a workload has two variants: never more than all changes, and the whole
/// count when a policy moves only that variant; with one variant there is no such count.
#[test]
fn the_largest_variants_changes_are_counted_apart() {
    let one = compare(&tiny_cfg("hpa", Vec::new())).unwrap();
    assert!(one.episodes.iter().all(|e| e.large_variant_changes.is_none()));
    let cfg = CompareConfig {
        scenario: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/two-variants-two-pools.toml"),
        seeds: 1,
        replica_capacity_rps: None,
        max_duration_s: Some(900.0),
        ..tiny_cfg("hpa:variants=qualityFirst:placement=spread,hpa:placement=spread", Vec::new())
    };
    let r = compare(&cfg).unwrap();
    for e in &r.episodes {
        let large = e.large_variant_changes.expect("two variants: a count of the 70B's changes");
        assert!(large <= e.replica_changes, "{}: {large} of {}", e.policy, e.replica_changes);
    }
    let quality_first = r.episodes.iter().find(|e| e.policy.contains("qualityFirst")).unwrap();
    assert!(quality_first.large_variant_changes.unwrap() > 0, "quality first scales the 70B variant");
    let table = stats::table(&r.rows, &r.loads);
    assert!(table.contains("large-variant changes"), "{table}");
}
