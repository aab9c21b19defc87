//! Training is reproducible across processors: `llmos train` pins libtorch's CPU numeric
//! path (`ATEN_CPU_CAPABILITY=default`, `MKL_CBWR=COMPATIBLE`) itself, so the environment
//! a processor would set up (AVX2 or AVX-512 kernels and MKL branches) does not change the
//! trained weights. Each run is a separate `llmos train` process, since libtorch reads its
//! path once per process.
//!
//! The test can fail: the control trains the same seed with the path left native under two
//! processor paths and requires different weights, so the comparison is sensitive to the
//! path; the pinned runs must then agree to the last bit (weights checksum).

use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = r#"
actionLayout = "factored"
deltas = [-1, 0, 1, 2]

[reward]
costWeightPerUsd = 5000.0

[episodes]
trainWindow = [0.0, 1.0]
episodeFrac = 1.0

[dqn]
hidden = [64, 64]
gamma = 0.95
nStep = 3
learningRate = 1e-3
learningStarts = 100
batchSize = 64
epsilon = { kind = "linear", start = 1.0, end = 0.05, steps = 300 }
target = { kind = "hard", every = 100 }
device = "cpu"
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Trains 400 steps of the tiny scenario in a fresh process with `env` set (and the
/// numeric-path variables otherwise unset), returning the weights checksum and the
/// recorded numeric path.
fn train(dir: &Path, name: &str, env: &[(&str, &str)]) -> (String, String) {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = dir.join(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmos"));
    cmd.args(["train", "--scenario"])
        .arg(root().join("scenarios/tiny-step-two-pools.toml"))
        .arg("--config")
        .arg(&cfg)
        .args(["--steps", "400", "--seed", "5", "--out"])
        .arg(&out)
        .env_remove("LLMOS_NUMERICS")
        .env_remove("ATEN_CPU_CAPABILITY")
        .env_remove("MKL_CBWR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let res = cmd.output().expect("running llmos train");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "llmos train ({name}) failed:\n{stdout}\n{}", String::from_utf8_lossy(&res.stderr));
    let meta = llmos::rl::checkpoint::read_meta(&out).unwrap();
    eprintln!("{name}: weights {} ({})", meta.weights_fnv1a64, meta.numerics.clone().unwrap_or_default());
    (meta.weights_fnv1a64, meta.numerics.unwrap_or_default())
}

#[test]
fn pinned_training_gives_the_same_weights_whatever_path_the_processor_would_take() {
    let dir = tempfile::tempdir().unwrap();
    let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let avx512 = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw");

    // Control: left native, the processor path changes the weights. Without AVX2 there is
    // only one path to take, and nothing to compare.
    if avx2 {
        let (scalar, _) = train(
            dir.path(),
            "native-default",
            &[("LLMOS_NUMERICS", "native"), ("ATEN_CPU_CAPABILITY", "default"), ("MKL_CBWR", "COMPATIBLE")],
        );
        let (vector, native) = train(
            dir.path(),
            "native-avx2",
            &[("LLMOS_NUMERICS", "native"), ("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2")],
        );
        assert!(native.starts_with("native") && native.contains("ATEN_CPU_CAPABILITY=avx2"), "{native}");
        assert_ne!(
            scalar, vector,
            "the native scalar and AVX2 paths trained identical weights: the control cannot tell paths apart"
        );
    } else {
        eprintln!("no AVX2 on this processor: control skipped");
    }

    // Pinned (the default): the environment's path is replaced, the weights are the same.
    let mut envs: Vec<(&str, Vec<(&str, &str)>)> = vec![("pinned-unset", vec![])];
    if avx2 {
        envs.push(("pinned-avx2", vec![("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2")]));
    }
    if avx512 {
        envs.push(("pinned-avx512", vec![("ATEN_CPU_CAPABILITY", "avx512"), ("MKL_CBWR", "AVX512")]));
    }
    let runs: Vec<(String, String, String)> = envs
        .iter()
        .map(|(name, env)| {
            let (sum, numerics) = train(dir.path(), name, env);
            (name.to_string(), sum, numerics)
        })
        .collect();
    for (name, sum, numerics) in &runs {
        assert_eq!(
            numerics, "reproducible (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE)",
            "{name}: checkpoint records another numeric path"
        );
        assert_eq!(sum, &runs[0].1, "{name} trained other weights than {}", runs[0].0);
    }
}

#[test]
fn an_unknown_numeric_path_is_refused_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_llmos"))
        .args(["train", "--scenario"])
        .arg(root().join("scenarios/tiny-step-two-pools.toml"))
        .args(["--steps", "10", "--out"])
        .arg(dir.path().join("x"))
        .env("LLMOS_NUMERICS", "fastest")
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("LLMOS_NUMERICS") && err.contains("fastest"), "{err}");
    assert!(!dir.path().join("x").exists(), "a checkpoint was written despite the bad setting");
}
