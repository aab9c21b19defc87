//! Shared by the training tests (tests/learning_job.rs, tests/e2e_training.rs): a
//! workload's traffic record written with the store, as the operator writes it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use llmos::crd::SloSpec;
use llmos::learning::record::{FleetSlot, TokenHistogram, TrafficWindow, RECORD_VERSION};
use llmos::learning::store::{RecordStore, StoreConfig};

/// vLLM's 1-2-5 token buckets up to 10,000.
const BOUNDS: [f64; 13] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

/// A tiny DQN: small network, learning from the 60th step.
pub const TINY_DQN: &str = r#"algorithm = "dqn"
deltas = [-1, 0, 1, 2]
[dqn]
hidden = [16, 16]
learningStarts = 60
batchSize = 16
device = "cpu"
"#;

fn hist(counts: &[f64], mean: f64) -> TokenHistogram {
    let mut c = counts.to_vec();
    c.resize(BOUNDS.len() + 1, 0.0);
    let n: f64 = c.iter().sum();
    TokenHistogram { bounds: BOUNDS.to_vec(), counts: c, sum: n * mean }
}

/// Writes a record of `windows` 15 s windows at 1 to 3 requests/s (a ramp and back) of
/// workload `default/code` to `root/default_code/` with the store, as the operator would.
pub fn write_record(root: &Path, windows: usize) -> PathBuf {
    write_record_of(root, "default", "code", windows)
}

/// [`write_record`] for workload `namespace/name`, in `root/<namespace>_<name>/`.
pub fn write_record_of(root: &Path, namespace: &str, name: &str, windows: usize) -> PathBuf {
    let dir = root.join(format!("{namespace}_{name}"));
    let (mut store, _) = RecordStore::open(&dir, StoreConfig::default()).expect("open the store");
    for i in 0..windows {
        let x = i as f64 / windows as f64;
        let rate = 1.0 + 2.0 * (1.0 - (2.0 * x - 1.0).abs());
        let arrivals = (rate * 15.0).round();
        let w = TrafficWindow {
            version: RECORD_VERSION,
            workload: format!("{namespace}/{name}"),
            start_unix_s: 1_800_000_000.0 + 15.0 * i as f64,
            duration_s: 15.0,
            arrivals,
            arrival_rate_rps: arrivals / 15.0,
            completions: arrivals,
            // Prompts mostly 500-2000 tokens, outputs 50-200.
            prompt_tokens: hist(
                &[0., 0., 0., 0., 0., 0., 0., 0., arrivals * 0.3, arrivals * 0.5, arrivals * 0.2],
                900.0,
            ),
            generation_tokens: hist(&[0., 0., 0., 0., 0., arrivals * 0.3, arrivals * 0.6, arrivals * 0.1], 110.0),
            slo: SloSpec::default(),
            fleet: vec![FleetSlot { variant: "llama3-8b".into(), pool: "a100".into(), desired: 2, ready: 2 }],
            slo_attainment: Some(0.97),
            policy: Some("hpa".into()),
            notes: Vec::new(),
        };
        store.append(&w).expect("append a window");
    }
    store.seal().expect("seal");
    dir
}
