//! ServeGen reader and arrival generator: exact window counts, inter-arrival CV, seeding,
//! slices, pooled lengths, error messages and the scenario integration. Small synthetic
//! folders written to a temporary directory keep these tests fast and self-contained; the
//! tests on the real m-small folder are skipped when it is absent.

// Parameters and expected moments that happen to be near e, √2 or 1/√2 are data of the
// distributions under test, not those constants.
#![allow(clippy::approx_constant)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use llmos::policy::Decision;
use llmos::twin::traces::servegen::{Family, LengthSource, ServegenData, ServegenStats, ServegenStream};
use llmos::twin::{Scenario, Twin};

const W: f64 = 600.0;

/// One client's trace: `windows` rows, silent except the given `(window, rate, family, shape)`.
fn trace(windows: usize, active: &[(usize, f64, &str, f64)]) -> String {
    let mut s = String::new();
    for w in 0..windows {
        match active.iter().find(|a| a.0 == w) {
            Some(&(_, rate, fam, shape)) => {
                let cv = if fam == "Gamma" { 1.0 / shape.sqrt() } else { 1.0 };
                s += &format!("{},{rate},{cv},{fam},{shape},0.01\r\n", w * 600);
            }
            None => s += &format!("{},0,0,,0,0\r\n", w * 600),
        }
    }
    s
}

fn folder(files: &[(String, String)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

fn trace_file(id: u32, text: String) -> (String, String) {
    (format!("chunk-{id}-trace.csv"), text)
}

/// A dataset file with one block per `(block start, input pmf, output pmf)`.
fn dataset_file(id: u32, blocks: &[(u64, &str, &str)]) -> (String, String) {
    let body: Vec<String> = blocks
        .iter()
        .map(|(b, i, o)| format!("  \"{b}\": {{\n    \"input_tokens\": \"{i}\",\n    \"output_tokens\": \"{o}\"\n  }}"))
        .collect();
    (format!("chunk-{id}-dataset.json"), format!("{{\n{}\n}}", body.join(",\n")))
}

fn drain(mut s: ServegenStream) -> Vec<(u32, u64, u32, u32)> {
    std::iter::from_fn(|| s.next_with_client()).map(|(c, a)| (c, a.at.0, a.input_tokens, a.output_tokens)).collect()
}

fn stream(dir: &Path, clients: &[u32], seed: u64, start_s: f64, end_s: f64, load: f64) -> ServegenStream {
    let data = Arc::new(ServegenData::load(dir, clients).unwrap());
    ServegenStream::new(data, seed, start_s, end_s, load).unwrap()
}

/// Three clients with silent windows, both families and counts that need rounding.
fn mixed_folder() -> (tempfile::TempDir, BTreeMap<u32, Vec<(usize, f64)>>) {
    let a = [(0, 1.2345, "Gamma", 0.6), (1, 0.0, "Gamma", 0.6), (2, 3.1, "Weibull", 0.5), (4, 0.0041, "Gamma", 2.0)];
    let b = [(0, 0.5, "Weibull", 1.3), (1, 2.71828, "Gamma", 0.2), (3, 7.77, "Gamma", 1.0), (4, 0.02, "Weibull", 0.9)];
    let c = [(2, 10.0, "Gamma", 0.05), (3, 0.3333, "Weibull", 0.25), (5, 4.4, "Gamma", 3.0)];
    let d = folder(&[
        trace_file(7, trace(6, &a)),
        trace_file(3, trace(6, &b)),
        trace_file(11, trace(6, &c)),
        dataset_file(7, &[(0, "{5: 0.5, 6: 0.5}", "{1: 1.0}")]),
    ]);
    let mut rates = BTreeMap::new();
    for (id, rows) in [(7u32, &a[..]), (3, &b[..]), (11, &c[..])] {
        rates.insert(id, rows.iter().map(|r| (r.0, r.1)).collect());
    }
    (d, rates)
}

#[test]
fn every_window_holds_exactly_its_rounded_count() {
    let (dir, rates) = mixed_folder();
    for load in [1.0, 0.37, 2.5] {
        let s = stream(dir.path(), &[], 9, 0.0, 6.0 * W, load);
        let hint = s.len_hint().unwrap();
        let got = drain(s);
        assert_eq!(got.len() as u64, hint, "len_hint is exact for a window-aligned slice");
        assert!(got.windows(2).all(|p| p[0].1 <= p[1].1), "arrivals in time order");
        let mut counts: BTreeMap<(u32, u64), u64> = BTreeMap::new();
        for (c, at, i, o) in &got {
            *counts.entry((*c, at / 600_000_000_000)).or_default() += 1;
            assert!(*i >= 1 && *o >= 1);
        }
        let mut expected = BTreeMap::new();
        for (id, rows) in &rates {
            for &(w, rate) in rows {
                let n = (rate * 600.0 * load).round() as u64;
                if n > 0 {
                    expected.insert((*id, w as u64), n);
                }
            }
        }
        assert_eq!(counts, expected, "load {load}");
    }
}

#[test]
fn a_slice_or_a_client_subset_gives_the_same_arrivals_as_the_full_run() {
    let (dir, _) = mixed_folder();
    let full = drain(stream(dir.path(), &[], 4, 0.0, 6.0 * W, 1.0));
    // A slice that starts and ends inside windows: arrivals shifted to the slice start.
    let (a, b) = (900.0, 2_700.5);
    let slice = drain(stream(dir.path(), &[], 4, a, b, 1.0));
    let (a_ns, b_ns) = ((a * 1e9) as u64, (b * 1e9) as u64);
    let want: Vec<_> = full.iter().filter(|x| x.1 >= a_ns && x.1 < b_ns).map(|x| (x.0, x.1 - a_ns, x.2, x.3)).collect();
    assert!(!want.is_empty());
    assert_eq!(slice, want);
    // One client alone: exactly its arrivals of the full run.
    let only = drain(stream(dir.path(), &[3], 4, 0.0, 6.0 * W, 1.0));
    let want: Vec<_> = full.iter().filter(|x| x.0 == 3).cloned().collect();
    assert_eq!(only, want);
}

#[test]
fn same_seed_same_arrivals_other_seed_differs() {
    let (dir, _) = mixed_folder();
    let a = drain(stream(dir.path(), &[], 1, 0.0, 6.0 * W, 0.8));
    let b = drain(stream(dir.path(), &[], 1, 0.0, 6.0 * W, 0.8));
    let c = drain(stream(dir.path(), &[], 2, 0.0, 6.0 * W, 0.8));
    assert_eq!(a, b);
    assert_eq!(a.len(), c.len(), "counts do not depend on the seed");
    assert_ne!(a, c);
    let differ = a.iter().zip(&c).filter(|(x, y)| x.1 != y.1).count();
    assert!(differ > a.len() / 2, "another seed moves most arrivals ({differ} of {})", a.len());
}

/// Sample CV of the inter-arrival gaps inside each window against the fitted distribution's
/// CV. Each window holds n = 30,000 requests (rate 50 req/s), so 29,999 gaps of i.i.d.
/// draws (the common rescaling does not change a CV). By the delta method the sample CV is
/// asymptotically normal with standard deviation `sigma / sqrt(m)`, where, with raw moments
/// `m_r` of the distribution, `s = sqrt(m2 - m1²)`, `ga = -m2 / (s m1²)`, `gb = 1 / (2 s m1)`:
/// `sigma² = ga² (m2 - m1²) + gb² (m4 - m2²) + 2 ga gb (m3 - m1 m2)`. The expected CVs and
/// sigmas below were computed from those formulas with Python's `math.gamma`. The tolerance is
/// 4 standard errors (a two-sided 6e-5 chance per window of a false failure under normality);
/// it is 2.2–3.5 % of the CV, tight enough that Poisson arrivals (CV 1) fail it in every case.
#[test]
fn interarrival_cv_matches_the_fitted_distribution() {
    // (family, shape, expected CV, sigma)
    let cases: [(&str, f64, f64, f64); 4] = [
        ("Gamma", 0.5, 1.414213562373095, 1.7320508075688772),
        ("Gamma", 2.0, 0.7071067811865476, 0.6123724356957945),
        ("Weibull", 0.7, 1.4624245730468175, 2.38428442321904),
        ("Weibull", 1.5, 0.678968693097346, 0.5174231728870508),
    ];
    let files: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (fam, shape, _, _))| {
            trace_file(i as u32, trace(2, &[(0, 50.0, fam, *shape), (1, 50.0, fam, *shape)]))
        })
        .chain([dataset_file(0, &[(0, "{10: 1.0}", "{10: 1.0}")])])
        .collect();
    let dir = folder(&files);
    let arrivals = drain(stream(dir.path(), &[], 21, 0.0, 2.0 * W, 1.0));
    for (i, (fam, shape, cv, sigma)) in cases.iter().enumerate() {
        let f = Family::parse(fam).unwrap();
        assert!((f.cv(*shape) - cv).abs() < 1e-9, "library CV of {fam}({shape})");
        for w in 0..2u64 {
            let t: Vec<f64> = arrivals
                .iter()
                .filter(|a| a.0 == i as u32 && a.1 / 600_000_000_000 == w)
                .map(|a| a.1 as f64 / 1e9)
                .collect();
            assert_eq!(t.len(), 30_000);
            let gaps: Vec<f64> = t.windows(2).map(|p| p[1] - p[0]).collect();
            let m = gaps.len() as f64;
            let mean = gaps.iter().sum::<f64>() / m;
            let sd = (gaps.iter().map(|g| (g - mean) * (g - mean)).sum::<f64>() / m).sqrt();
            let got = sd / mean;
            let tol = 4.0 * sigma / m.sqrt();
            assert!((got - cv).abs() < tol, "{fam}({shape}) window {w}: sample CV {got:.4}, fitted {cv:.4} ± {tol:.4}");
            assert!((1.0 - cv).abs() > tol, "the check can tell {fam}({shape}) from Poisson");
        }
    }
}

#[test]
fn pooled_lengths_where_a_client_has_no_file_or_an_empty_block() {
    // Block 0 (windows 0–35): donors 1 (3 req/s, 100/10 tokens) and 3 (1 req/s, 200/20).
    // Block 1 (from 21,600 s): client 1 has `{}`, so only donor 3 remains.
    let busy = |rate: f64| -> Vec<(usize, f64, &str, f64)> {
        (0..4).map(|w| (w, rate, "Gamma", 1.0)).chain((36..40).map(|w| (w, rate, "Gamma", 1.0))).collect()
    };
    let dir = folder(&[
        trace_file(1, trace(40, &busy(3.0))),
        trace_file(2, trace(40, &busy(1.5))),
        trace_file(3, trace(40, &busy(1.0))),
        dataset_file(1, &[(0, "{100: 1.0}", "{10: 1.0}"), (21600, "{}", "{}")]),
        dataset_file(3, &[(0, "{200: 1.0}", "{20: 1.0}"), (21600, "{200: 1.0}", "{20: 1.0}")]),
    ]);
    let data = Arc::new(ServegenData::load(dir.path(), &[]).unwrap());
    let idx = |id: u32| data.clients.iter().position(|c| c.id == id).unwrap();
    assert_eq!(data.length_source(idx(1), 0), LengthSource::Own);
    assert_eq!(data.length_source(idx(1), 21600), LengthSource::PooledBlock);
    assert_eq!(data.length_source(idx(2), 0), LengthSource::PooledBlock);
    let all = drain(ServegenStream::new(data, 5, 0.0, 40.0 * W, 1.0).unwrap());
    let block1 = 21_600_000_000_000u64;
    // Client 2 has no file: in block 0 a request-weighted mixture of donors 1 and 3, each
    // request's two lengths from one donor; P(donor 1) = 3 / (3 + 1) = 0.75.
    let c2: Vec<_> = all.iter().filter(|a| a.0 == 2 && a.1 < block1).collect();
    assert_eq!(c2.len(), 4 * 900);
    assert!(c2.iter().all(|a| (a.2, a.3) == (100, 10) || (a.2, a.3) == (200, 20)));
    let p = c2.iter().filter(|a| a.2 == 100).count() as f64 / c2.len() as f64;
    // Binomial standard error sqrt(0.75 · 0.25 / 3600) = 0.0072; 4 of them.
    assert!((p - 0.75).abs() < 0.029, "share of donor 1: {p}");
    // Client 1 uses its own pmf in block 0 and the pool (donor 3 only) in block 1.
    assert!(all.iter().filter(|a| a.0 == 1 && a.1 < block1).all(|a| (a.2, a.3) == (100, 10)));
    for id in [1, 2] {
        let b1: Vec<_> = all.iter().filter(|a| a.0 == id && a.1 >= block1).collect();
        assert!(!b1.is_empty() && b1.iter().all(|a| (a.2, a.3) == (200, 20)), "client {id} in block 1");
    }
    // Without any length file the generator refuses (nothing to pool).
    let bare = folder(&[trace_file(1, trace(2, &[(0, 1.0, "Gamma", 1.0)]))]);
    let data = Arc::new(ServegenData::load(bare.path(), &[]).unwrap());
    let e = ServegenStream::new(data, 0, 0.0, 1200.0, 1.0).unwrap_err().to_string();
    assert!(e.contains("no token lengths"), "{e}");
}

fn load_err(files: &[(String, String)]) -> String {
    let d = folder(files);
    ServegenData::load(d.path(), &[]).unwrap_err().to_string()
}

#[test]
fn bad_rows_name_file_line_and_field() {
    let good = "0,0,0,,0,0\r\n600,1.5,1.2,Gamma,0.7,0.01\r\n";
    for (row, field) in [
        ("1200,abc,1.0,Gamma,0.7,0.01", "rate_req_per_s"),
        ("1200,-1.5,1.0,Gamma,0.7,0.01", "rate_req_per_s"),
        ("1200,1.5,1.0,Lognormal,0.7,0.01", "family"),
        ("1200,1.5,1.0,Gamma,0.7", "expected 6 fields"),
        ("1200,1.5,1.0,Gamma,0.7,0.01,9", "expected 6 fields"),
        ("1200,1.5,1.0,Gamma,-0.7,0.01", "shape"),
        ("1200,1.5,1.0,Weibull,0.7,zero", "scale"),
        ("1200,1.5,1.0,,0,0", "family"),
        ("1201,1.5,1.0,Gamma,0.7,0.01", "window_start_s"),
        ("600,1.5,1.0,Gamma,0.7,0.01", "window_start_s"),
        ("1200,1.5,inf,Gamma,0.7,0.01", "cv_of_interarrival"),
    ] {
        let e = load_err(&[trace_file(5, format!("{good}{row}\r\n"))]);
        assert!(e.contains("chunk-5-trace.csv") && e.contains("line 3") && e.contains(field), "{row}: {e}");
    }
    // Token-length files: errors name the file, the key's line and the key.
    let t = trace_file(5, good.to_string());
    for (ds, key, line) in [
        (dataset_file(5, &[(0, "{1: 0.5}", "{1: 1.0}"), (21600, "{1: 0.5, x: 0.5}", "{}")]), "\"21600\"", "line 6"),
        (dataset_file(5, &[(0, "{1: 0.5}", "{1: -1.0}")]), "\"output_tokens\"", "line 2"),
        (dataset_file(5, &[(0, "[1, 2]", "{1: 1.0}")]), "\"input_tokens\"", "line 2"),
        (dataset_file(5, &[(600, "{1: 1.0}", "{1: 1.0}")]), "\"600\"", "line 2"),
        (
            ("chunk-5-dataset.json".into(), "{\"0\": {\"input_tokens\": \"{1: 1.0}\"}}".into()),
            "output_tokens",
            "line 1",
        ),
    ] {
        let e = load_err(&[t.clone(), ds]);
        assert!(e.contains("chunk-5-dataset.json") && e.contains(key) && e.contains(line), "{key}: {e}");
    }
    let e = load_err(&[t.clone(), ("chunk-5-dataset.json".into(), "{\"0\": ".into())]);
    assert!(e.contains("chunk-5-dataset.json") && e.contains("JSON"), "{e}");
    // An unknown client id is named.
    let d = folder(&[t]);
    let e = ServegenData::load(d.path(), &[5, 6]).unwrap_err().to_string();
    assert!(e.contains("clients") && e.contains("client 6"), "{e}");
}

const SPEC: &str = r#"
initial_replicas = [{ variant = "llama3-8b", pool = "a100", replicas = 2 }]
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

fn scenario_in(dir: &Path, workload: &str) -> Result<Scenario, String> {
    let p = dir.join("s.toml");
    std::fs::write(&p, format!("{SPEC}\n{workload}")).unwrap();
    Scenario::load(&p).map_err(|e| e.to_string())
}

fn run(s: &Scenario, seed: u64) -> String {
    let mut twin = Twin::new(s, seed).unwrap();
    while !twin.is_done() {
        let obs = twin.observe();
        twin.apply(&Decision::hold(&obs, "hold"));
        twin.step();
    }
    twin.check_invariants().unwrap();
    serde_json::to_string(&twin.report()).unwrap()
}

#[test]
fn scenario_servegen_workload_runs_deterministically_and_validates_fields() {
    let (data, rates) = mixed_folder();
    let dir = tempfile::tempdir().unwrap();
    let d = data.path().display();
    let sg = |extra: &str| format!("[workload.servegen]\ndir = \"{d}\"\n{extra}\n");
    let s = scenario_in(dir.path(), &sg("load = 0.5\nwindow_s = [600, 3000]")).unwrap();
    let a = run(&s, 3);
    assert_eq!(a, run(&s, 3), "same seed, same bytes");
    assert_ne!(a, run(&s, 4), "another seed, other traffic");
    // The twin sees exactly the slice's requests: windows 1–4 at load 0.5.
    let want: u64 = rates
        .values()
        .flatten()
        .filter(|(w, _)| (1..5).contains(w))
        .map(|(_, r)| (r * 600.0 * 0.5).round() as u64)
        .sum();
    let twin = Twin::new(&s, 3).unwrap();
    assert_eq!(twin.remaining_hint(), Some(want));
    let report: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(report["arrived"].as_u64(), Some(want), "{report}");
    // Validation errors name the field.
    for (w, field) in [
        (sg("load = 0"), "workload.servegen.load"),
        (sg("clients = [7, 99]"), "workload.servegen.clients"),
        (sg("window_days = [0, 15]"), "workload.servegen.window_days"),
        (sg("window_s = [3000, 600]"), "workload.servegen.window_s"),
        (sg("window_s = [0, 600]\nwindow_days = [0, 1]"), "workload.servegen.window_days"),
        (sg("colour = 1"), "colour"),
        ("[workload.servegen]\ndir = \"/nonexistent/servegen\"\n".to_string(), "workload.servegen.dir"),
        (format!("[workload]\ntrace = \"x.csv\"\n{}", sg("")), "not several"),
    ] {
        let e = scenario_in(dir.path(), &w).unwrap_err();
        assert!(e.contains(field), "{w}: {e}");
    }
}

fn m_small() -> Option<PathBuf> {
    let p = PathBuf::from("data/traces/servegen/language/m-small");
    p.join("chunk-0-trace.csv").exists().then_some(p)
}

#[test]
fn real_m_small_counts_and_published_summary() {
    let Some(dir) = m_small() else {
        eprintln!("skipped: data/traces/servegen/language/m-small is not present");
        return;
    };
    let data = Arc::new(ServegenData::load(&dir, &[]).unwrap());
    let st = ServegenStats::of(&data);
    // data/traces/servegen SOURCES.md: 43 clients, 6 with lengths, 2,016 windows, mean
    // 1,174 req/s, 10-minute maximum 3,880 req/s. The six clients with lengths sent
    // 500,747,321 of the 1,420,558,786 requests (35.25 %; summed from the CSV files with
    // Python; SOURCES.md rounds this to "33 %").
    assert_eq!((st.clients, st.clients_with_lengths, st.windows), (43, 6, 2016));
    assert!((st.requests - 1_420_558_786.0).abs() < 1.0, "{}", st.requests);
    assert!((st.mean_rps - 1174.0).abs() < 1.0, "{}", st.mean_rps);
    assert!((st.max_window_rps - 3880.0).abs() < 1.0, "{}", st.max_window_rps);
    assert!((st.request_share_with_lengths - 0.3525).abs() < 0.0005, "{}", st.request_share_with_lengths);
    // Request-weighted mean lengths of those clients (same Python sums): 34.79 and 6.75 tokens.
    assert!((st.mean_input_tokens - 34.79).abs() < 0.01, "{}", st.mean_input_tokens);
    assert!((st.mean_output_tokens - 6.745).abs() < 0.01, "{}", st.mean_output_tokens);
    // Two real clients (17 has lengths, 0 borrows them) over the busiest hour of day 1 at ×0.01.
    let sub = Arc::new(ServegenData::load(&dir, &[0, 17]).unwrap());
    let (a, b) = (86_400.0 + 36_000.0, 86_400.0 + 39_600.0);
    let got = drain(ServegenStream::new(sub.clone(), 1, a, b, 0.01).unwrap());
    let want: u64 = sub
        .selected_clients()
        .flat_map(|c| c.windows[(a / W) as usize..(b / W) as usize].iter())
        .map(|w| w.requests(0.01))
        .sum();
    assert_eq!(got.len() as u64, want);
}

/// Generation speed: one day of m-small at ×0.01 (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn generate_one_day_of_m_small() {
    let Some(dir) = m_small() else { return };
    let t = std::time::Instant::now();
    let data = Arc::new(ServegenData::load(&dir, &[]).unwrap());
    let loaded = t.elapsed().as_secs_f64();
    let mut s = ServegenStream::new(data, 0, 0.0, 86_400.0, 0.01).unwrap();
    let mut n = 0u64;
    while s.next_arrival().is_some() {
        n += 1;
    }
    eprintln!("m-small day 0 at x0.01: {n} requests; load {loaded:.2} s, total {:.2} s", t.elapsed().as_secs_f64());
}
