//! The two reference policies: the forecast planner (anticipates a daily ramp that HPA
//! only follows) and the clairvoyant reference of the twin (meets the SLO for less than
//! every causal baseline when the answer is known); and the forecaster itself (a pure trend
//! and a pure season are forecast within a tolerance).

use std::path::PathBuf;

use llmos::control::RewardConfig;
use llmos::eval::{compare, run_episode, CompareConfig, EpisodeResult, RunLabel, Window};
use llmos::policy::build::parse_policy_name;
use llmos::policy::forecast::Forecaster;
use llmos::policy::shield::Shield;
use llmos::twin::{RunWindow, Scenario, Twin};

// ---------------- the forecaster ----------------

#[test]
fn a_pure_trend_is_forecast() {
    // Holt alone (no season): y = 2 + 0.01 t, observed every 15 s for 10 minutes.
    let mut f = Forecaster::new(0.5, 0.1, 0.3, 0.0, 96);
    let y = |t: f64| 2.0 + 0.01 * t;
    for i in 0..=40 {
        let t = i as f64 * 15.0;
        f.observe(t, y(t));
    }
    let last = f.last_time().unwrap();
    for h in [15.0, 60.0, 120.0, 300.0] {
        let got = f.forecast(last + h).unwrap();
        let want = y(last + h);
        assert!((got - want).abs() < 0.02 * want, "h={h}: forecast {got:.3}, truth {want:.3}");
    }
    assert!(!f.is_seasonal());
}

#[test]
fn a_pure_season_is_forecast() {
    // y = 5 + 3 sin(2πt/600), observed every 15 s (with an offset, so observations fall
    // between knots) for three cycles; the season is 600 s in 40 knots.
    let p = 600.0;
    let y = |t: f64| 5.0 + 3.0 * (2.0 * std::f64::consts::PI * t / p).sin();
    let mut f = Forecaster::new(0.5, 0.1, 0.3, p, 40);
    let mut t = 7.0;
    while t < 3.0 * p {
        f.observe(t, y(t));
        t += 15.0;
    }
    assert!(f.is_seasonal(), "a whole cycle was observed");
    let last = f.last_time().unwrap();
    let mut worst: f64 = 0.0;
    for h in (0..=20).map(|i| i as f64 * 15.0) {
        let err = (f.forecast(last + h).unwrap() - y(last + h)).abs();
        worst = worst.max(err);
    }
    // Plain Holt would be off by up to the amplitude (3) over a quarter cycle.
    assert!(worst < 0.15, "worst error over 5 minutes ahead: {worst:.3}");
    // Holt without the season cannot follow the turn of the sine.
    let mut h = Forecaster::new(0.5, 0.1, 0.3, 0.0, 40);
    let mut t = 7.0;
    while t < 3.0 * p {
        h.observe(t, y(t));
        t += 15.0;
    }
    let holt_worst = (0..=20)
        .map(|i| {
            let tt = h.last_time().unwrap() + i as f64 * 15.0;
            (h.forecast(tt).unwrap() - y(tt)).abs()
        })
        .fold(0.0, f64::max);
    assert!(holt_worst > 4.0 * worst, "holt {holt_worst:.3} vs seasonal {worst:.3}");
}

// ---------------- the planner anticipates a daily ramp ----------------

/// A "day" of 1200 s: a sinusoidal rate between 0.6 and 11.4 requests/s, three days.
const PERIOD_S: f64 = 1200.0;
const MEAN_RPS: f64 = 6.0;
const AMPLITUDE: f64 = 0.9;

fn diurnal_scenario() -> Scenario {
    let toml = format!(
        r#"
name = "diurnal-short"
initial_replicas = [{{ variant = "llama3-8b", pool = "a100", replicas = 1 }}]

[workload.synthetic]
duration_s = {dur}
arrival = {{ kind = "diurnal", mean_rps = {MEAN_RPS}, amplitude = {AMPLITUDE}, period_s = {PERIOD_S} }}
lengths = {{ kind = "lognormal", input_mean = 512.0, input_cv = 0.5, output_mean = 128.0, output_cv = 0.5, max_tokens = 2048 }}

[engine]
max_num_batched_tokens = 2048
max_num_seqs = 256

[cluster]
load_balancer = "least-outstanding"

[spec]
variants = [
  {{ name = "llama3-8b", model = "llama-3-8b", image = "vllm/vllm-openai:v0.6.3", gpusPerReplica = 1, minReplicas = 1, maxReplicas = 16, coldStartSeconds = 45.0 }},
]
gpuPools = [ {{ name = "a100", gpuType = "A100-80GB", pricePerGpuHour = 2.0, capacityGpus = 16 }} ]
slo = {{ ttftMs = 2000.0, tpotMs = 100.0, percentile = 90.0, targetAttainment = 0.95 }}
limits = {{ minTotalReplicas = 1, maxTotalReplicas = 16, maxStepChange = 4, scaleDownCooldownSeconds = 60 }}
metrics = {{ windowSeconds = 30 }}
policy = {{ kind = "hpa", intervalSeconds = 15 }}
"#,
        dur = 3.0 * PERIOD_S
    );
    Scenario::from_toml_str(&toml, "diurnal-short").expect("scenario parses")
}

fn episode(sc: &Scenario, name: &str) -> EpisodeResult {
    let mut twin = Twin::with_window(sc, RunWindow::new(1, (0.0, 1.0), 1.0)).unwrap();
    let choice = parse_policy_name(name, &sc.spec.policy).unwrap();
    let mut policy = choice.build_for(&sc.spec).unwrap();
    let shield = Shield::new(&sc.spec);
    let run = RunLabel { policy: name, seed: 1, load: 1.0 };
    run_episode(&mut twin, policy.as_mut(), shield, run, &RewardConfig::default())
}

fn rate(t: f64) -> f64 {
    MEAN_RPS * (1.0 + AMPLITUDE * (2.0 * std::f64::consts::PI * t / PERIOD_S).sin())
}

/// How far ahead of the traffic (seconds; negative: behind) a policy's asked-for replicas
/// move on the rising half of the third day: the shift of the rate curve that best matches
/// the replica curve, both scaled to 0..1 over that day, so that the policies' different
/// sizing rules do not matter.
fn lead_on_the_ramp(e: &EpisodeResult) -> f64 {
    let interval = 15.0;
    // (decision time, asked replicas) over the third day.
    let day: Vec<(f64, f64)> = e
        .series
        .iter()
        .map(|p| (p.time_s - interval, f64::from(p.desired_replicas)))
        .filter(|&(t, _)| (2.0 * PERIOD_S - 0.25 * PERIOD_S..3.0 * PERIOD_S - 0.25 * PERIOD_S).contains(&t))
        .collect();
    let lo = day.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = day.iter().map(|p| p.1).fold(0.0, f64::max);
    assert!(hi > lo + 1.0, "{}: replicas hardly move ({lo}..{hi})", e.policy);
    let (rlo, rhi) = (MEAN_RPS * (1.0 - AMPLITUDE), MEAN_RPS * (1.0 + AMPLITUDE));
    // The rising half: from the trough (0.75 of a day) to the peak (1.25).
    let ramp: Vec<(f64, f64)> = day
        .iter()
        .copied()
        .filter(|&(t, _)| (2.0 * PERIOD_S - 0.25 * PERIOD_S..2.0 * PERIOD_S + 0.25 * PERIOD_S).contains(&t))
        .collect();
    let mut best = (f64::INFINITY, 0.0);
    for k in -40..=40 {
        let tau = k as f64 * 5.0;
        let sse: f64 = ramp
            .iter()
            .map(|&(t, n)| {
                let a = (n - lo) / (hi - lo);
                let b = (rate((t + tau).clamp(0.0, 2.0 * PERIOD_S + 0.25 * PERIOD_S)) - rlo) / (rhi - rlo);
                (a - b) * (a - b)
            })
            .sum();
        if sse < best.0 {
            best = (sse, tau);
        }
    }
    best.1
}

#[test]
fn the_forecast_planner_scales_up_before_the_daily_ramp_and_hpa_after() {
    let sc = diurnal_scenario();
    // One replica serves about 2.5 requests/s of these lengths within the SLO.
    let forecast = episode(&sc, &format!("forecast:capacity=2.5:season={PERIOD_S}"));
    let hpa = episode(&sc, "hpa:target=4");
    let (lf, lh) = (lead_on_the_ramp(&forecast), lead_on_the_ramp(&hpa));
    let slo = |e: &EpisodeResult| e.report.slo_attainment.unwrap_or(0.0);
    eprintln!(
        "forecast: lead {lf} s, SLO {:.3}, {:.2} GPU-h; hpa: lead {lh} s, SLO {:.3}, {:.2} GPU-h",
        slo(&forecast),
        forecast.report.gpu_hours,
        slo(&hpa),
        hpa.report.gpu_hours
    );
    // Asked for at least the cold start (45 s) ahead of the traffic...
    assert!(lf >= 45.0, "forecast planner leads the ramp by only {lf} s");
    // ...while HPA follows it.
    assert!(lh <= 0.0, "hpa leads the ramp by {lh} s");
}

// ---------------- the clairvoyant reference ----------------

#[test]
fn the_clairvoyant_reference_meets_the_slo_for_less_than_every_causal_baseline() {
    // A tenfold step (2 to 20 requests/s at t = 200 s) with a 45 s cold start: the answer
    // is known (be at the step's fleet one cold start before it, stay small before).
    let cfg = CompareConfig {
        scenario: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml"),
        policies: "clairvoyant:capacity=2.5,hpa,kpa,queue,static-peak".into(),
        seeds: 2,
        window: Window::All,
        loads: vec![1.0],
        replica_capacity_rps: Some(2.5),
        max_duration_s: None,
        clairvoyant_sweep: Vec::new(),
        reward: RewardConfig::default(),
        timeline: false,
    };
    let report = compare(&cfg).unwrap();
    let mean = |label: &str, f: &dyn Fn(&EpisodeResult) -> f64| {
        let v: Vec<f64> = report.episodes.iter().filter(|e| e.policy == label).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let slo = |e: &EpisodeResult| e.report.slo_attainment.unwrap_or(0.0);
    let gpu_h = |e: &EpisodeResult| e.report.gpu_hours;
    for p in &report.policies {
        eprintln!("{p}: SLO {:.3}, {:.3} GPU-h", mean(p, &slo), mean(p, &gpu_h));
    }
    let c = "clairvoyant:capacity=2.5";
    assert!(mean(c, &slo) >= 0.95, "clairvoyant misses the SLO: {:.3}", mean(c, &slo));
    for b in ["hpa", "kpa", "queue", "static-peak"] {
        assert!(
            mean(c, &gpu_h) < mean(b, &gpu_h),
            "clairvoyant {:.3} GPU-h is not below {b} {:.3}",
            mean(c, &gpu_h),
            mean(b, &gpu_h)
        );
    }
}

#[test]
fn the_clairvoyant_reference_is_not_buildable_from_a_spec() {
    let sc = diurnal_scenario();
    let choice = parse_policy_name("clairvoyant:capacity=1.3", &sc.spec.policy).unwrap();
    let e = choice.build_for(&sc.spec).err().expect("needs the harness").to_string();
    assert!(e.contains("harness"), "{e}");
    let e = parse_policy_name("clairvoyant:capcity=1", &sc.spec.policy).unwrap_err().to_string();
    assert!(e.contains("unknown key") && e.contains("capacity"), "{e}");
    let e = parse_policy_name("forecast:percentile=20", &sc.spec.policy).unwrap_err().to_string();
    assert!(e.contains("percentile"), "{e}");
}
