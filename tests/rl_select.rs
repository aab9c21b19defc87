//! Checkpoint selection on held-out traffic and ensembles of checkpoints, on the tiny step
//! scenario (`scenarios/tiny-step-two-pools.toml`).
//!
//! - Training with a validation window writes one `validation.jsonl` line per evaluation,
//!   keeps the best-scoring weights as the checkpoint and the last ones in `last/`; running
//!   the saved checkpoint on the validation window again gives exactly the recorded score,
//!   so what is saved is what was selected.
//! - A validation window that overlaps the training window or the test window is refused.
//! - An ensemble directory averages its members' Q-values, and refuses members of
//!   different layouts.

use std::path::{Path, PathBuf};

use llmos::policy::Policy;
use llmos::rl::checkpoint;
use llmos::rl::dqn::{DeviceChoice, DqnConfig, TargetUpdate};
use llmos::rl::env::{EpisodeConfig, RewardConfig};
use llmos::rl::policy::{DqnPolicy, Ensemble};
use llmos::rl::rollout::rollout;
use llmos::rl::schedule::EpsilonSchedule;
use llmos::rl::train::{train, TrainConfig, ValidationConfig, ValidationRecord};
use llmos::twin::{RunWindow, Scenario, Twin};

fn scenario_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml")
}

fn config(out: PathBuf, seed: u64, steps: u64, deltas: Vec<i32>) -> TrainConfig {
    TrainConfig {
        scenario: scenario_path(),
        steps,
        seed,
        out,
        deltas,
        rate_history_s: vec![60.0],
        reward: RewardConfig { cost_weight_per_usd: 5_000.0, ..Default::default() },
        episodes: EpisodeConfig { train_window: (0.0, 0.5), episode_frac: 0.25, ..Default::default() },
        validation: Some(ValidationConfig {
            window: (0.5, 0.6),
            loads: vec![1.0],
            seeds: vec![0, 1],
            every: 400,
            ..Default::default()
        }),
        dqn: DqnConfig {
            hidden: vec![32, 32],
            learning_starts: 100,
            device: DeviceChoice::Cpu,
            epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 800 },
            target: TargetUpdate::Hard { every: 100 },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn records(dir: &Path) -> Vec<ValidationRecord> {
    std::fs::read_to_string(dir.join("validation.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn validation_keeps_the_best_checkpoint_and_the_last_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path().join("ckpt"), 3, 1_600, vec![-1, 0, 1, 2]);
    let summary = train(&cfg).unwrap();

    let recs = records(&cfg.out);
    // One evaluation per 400 steps (at episode boundaries) plus the final one.
    assert!(recs.len() >= 4, "{} validations", recs.len());
    assert_eq!(recs.len() as u64, summary.validations);
    assert_eq!(recs.last().unwrap().env_steps, 1_600);
    // `best` marks each new maximum; the selected one is the overall maximum.
    let mut running = f64::NEG_INFINITY;
    for r in &recs {
        assert_eq!(r.best, r.mean_return > running, "{r:?}");
        running = running.max(r.mean_return);
    }
    let best = recs.iter().filter(|r| r.best).next_back().unwrap();
    assert_eq!(best.mean_return, running);
    assert_eq!(summary.selected_env_steps, best.env_steps);
    assert_eq!(checkpoint::read_meta(&cfg.out).unwrap().env_steps, best.env_steps);
    assert_eq!(checkpoint::read_meta(&cfg.out.join("last")).unwrap().env_steps, 1_600);

    // The saved checkpoint scores on the validation window exactly what was recorded.
    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut policy = DqnPolicy::load_on(&cfg.out, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let v = cfg.validation.as_ref().unwrap();
    let mut total = 0.0;
    for &seed in &v.seeds {
        total += rollout(&mut policy, &scenario, seed, v.window, 1.0, &cfg.reward).unwrap().episodic_return;
    }
    let again = total / v.seeds.len() as f64;
    assert!((again - best.mean_return).abs() < 1e-9, "recorded {} replayed {again}", best.mean_return);
}

#[test]
fn validation_must_use_traffic_training_and_testing_do_not() {
    let test_start = llmos::twin::scenario::TRAIN_FRACTION;
    let v = ValidationConfig { window: (0.4, 0.6), ..Default::default() };
    let e = v.check((0.0, 0.5), test_start).unwrap_err().to_string();
    assert!(e.contains("validation.window") && e.contains("overlaps episodes.trainWindow"), "{e}");
    let v = ValidationConfig { window: (0.5, 0.7), ..Default::default() };
    let e = v.check((0.0, 0.5), test_start).unwrap_err().to_string();
    assert!(e.contains("validation.window") && e.contains("test window"), "{e}");
    assert!(ValidationConfig { window: (0.45, 0.6), ..Default::default() }.check((0.0, 0.45), test_start).is_ok());
    // A ServeGen slice holds no test days: its last days may validate.
    assert!(v.check((0.0, 0.5), 1.0).is_ok());
    let sg = llmos::twin::scenario::Scenario::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/servegen-m-small-70b-train.toml"
    )))
    .expect("the ServeGen training scenario loads");
    assert_eq!(llmos::rl::train::test_start_of(&sg), 1.0);
}

#[test]
fn an_ensemble_averages_its_members_and_refuses_mixed_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let ens = dir.path().join("ens");
    for seed in [1, 2] {
        let mut cfg = config(ens.join(format!("s{seed}")), seed, 400, vec![-1, 0, 1, 2]);
        cfg.validation = None;
        train(&cfg).unwrap();
    }
    let e = Ensemble::write(&ens, llmos::rl::policy::Combine::Mean).unwrap();
    assert_eq!(e.members, vec!["s1", "s2"]);

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut both = DqnPolicy::load_on(&ens, &scenario.spec, DeviceChoice::Cpu).unwrap();
    assert_eq!(both.members(), 2);
    let one = DqnPolicy::load_on(&ens.join("s1"), &scenario.spec, DeviceChoice::Cpu).unwrap();
    let two = DqnPolicy::load_on(&ens.join("s2"), &scenario.spec, DeviceChoice::Cpu).unwrap();
    let twin = Twin::with_window(&scenario, RunWindow::new(0, (0.0, 1.0), 1.0)).unwrap();
    let obs = twin.observe();
    let (q, q1, q2) = (both.q_values(&obs), one.q_values(&obs), two.q_values(&obs));
    assert_eq!(q.len(), q1.len());
    for i in 0..q.len() {
        assert!((q[i] - (q1[i] + q2[i]) / 2.0).abs() < 1e-5, "option {i}: {} vs {} {}", q[i], q1[i], q2[i]);
    }
    // The ensemble decides like any policy.
    let d = both.decide(&obs);
    assert!(d.reason.starts_with("dqn"), "{}", d.reason);

    // A member with other action deltas cannot join.
    let mut cfg = config(ens.join("s3"), 3, 300, vec![-2, 0, 2]);
    cfg.validation = None;
    train(&cfg).unwrap();
    let err = Ensemble::write(&ens, llmos::rl::policy::Combine::Mean).unwrap_err().to_string();
    assert!(err.contains("s3") && err.contains("action layout"), "{err}");
}

#[test]
fn a_voting_ensemble_takes_the_majority_choice() {
    let dir = tempfile::tempdir().unwrap();
    let ens = dir.path().join("ens");
    for seed in [1, 2] {
        let mut cfg = config(ens.join(format!("s{seed}")), seed, 400, vec![-1, 0, 1, 2]);
        cfg.validation = None;
        train(&cfg).unwrap();
    }
    // Two copies of s1 against s2: s1's choice is the majority on every branch.
    std::fs::create_dir_all(ens.join("s1b")).unwrap();
    for f in [llmos::rl::checkpoint::META_FILE, llmos::rl::checkpoint::WEIGHTS_FILE] {
        std::fs::copy(ens.join("s1").join(f), ens.join("s1b").join(f)).unwrap();
    }
    let e = Ensemble::write(&ens, llmos::rl::policy::Combine::Vote).unwrap();
    assert_eq!(e.combine, llmos::rl::policy::Combine::Vote);
    let written = std::fs::read_to_string(ens.join(llmos::rl::policy::ENSEMBLE_FILE)).unwrap();
    assert!(written.contains("\"combine\": \"vote\""), "{written}");

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut voting = DqnPolicy::load_on(&ens, &scenario.spec, DeviceChoice::Cpu).unwrap();
    let mut one = DqnPolicy::load_on(&ens.join("s1"), &scenario.spec, DeviceChoice::Cpu).unwrap();
    let mut twin = Twin::with_window(&scenario, RunWindow::new(0, (0.0, 1.0), 1.0)).unwrap();
    for _ in 0..20 {
        let obs = twin.observe();
        assert_eq!(voting.decide(&obs).targets, one.decide(&obs).targets, "at t = {}", obs.time_s);
        twin.step();
    }
}

/// Relative selection: each validation window's return is compared with a reference
/// policy's on the same runs (what the policy would have earned in its place), and the
/// worst window decides. The reference's return is what `rollout` gives that policy;
/// the score is the worst relative improvement; `best` marks each new maximum of it.
#[test]
fn relative_worst_selection_compares_each_window_with_the_reference() {
    use llmos::rl::train::ValidationScore;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path().join("ckpt"), 4, 800, vec![-1, 0, 1, 2]);
    let v = cfg.validation.as_mut().unwrap();
    v.score = ValidationScore::RelativeWorst;
    // Without a reference the score means nothing: refused, naming the field.
    let err = train(&cfg).unwrap_err().to_string();
    assert!(err.contains("validation.reference"), "{err}");
    cfg.validation.as_mut().unwrap().reference = Some("hpa".into());
    train(&cfg).unwrap();

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let v = cfg.validation.as_ref().unwrap();
    let mut hpa = llmos::policy::build::build_heuristic("hpa", &scenario.spec, "test").unwrap();
    let mut reference = 0.0;
    for &seed in &v.seeds {
        hpa.reset();
        reference += rollout(hpa.as_mut(), &scenario, seed, v.window, 1.0, &cfg.reward).unwrap().episodic_return;
    }
    reference /= v.seeds.len() as f64;

    let recs = records(&cfg.out);
    let mut running = f64::NEG_INFINITY;
    for r in &recs {
        assert_eq!(r.window_returns.len(), 1, "one window: {r:?}");
        assert_eq!(r.relative.len(), 1);
        let want = (r.window_returns[0] - reference) / reference.abs();
        assert!((r.relative[0] - want).abs() < 1e-9, "relative {} vs {want}", r.relative[0]);
        assert_eq!(r.score, r.relative[0], "the worst of one window is that window");
        assert_eq!(r.best, r.score > running, "{r:?}");
        running = running.max(r.score);
    }
}

/// `spec.policy.dqn.sha256` pins a checkpoint: the digest is what `sha256sum` gives over
/// the listing of the files loaded (so a user can compute it without llmos), a matching
/// checkpoint loads, a changed file is refused naming both digests, and a malformed digest
/// is refused naming the field. An ensemble's digest covers `ensemble.json` and every
/// member's files.
#[test]
fn a_pinned_digest_admits_only_that_checkpoint() {
    use llmos::policy::config::{DqnParams, PolicyKind};
    use llmos::rl::policy::{checkpoint_digest, ENSEMBLE_FILE};
    let dir = tempfile::tempdir().unwrap();
    let ens = dir.path().join("ens");
    for seed in [1, 2] {
        let mut cfg = config(ens.join(format!("s{seed}")), seed, 300, vec![-1, 0, 1, 2]);
        cfg.validation = None;
        train(&cfg).unwrap();
    }
    let sha256sum = |dir: &Path, files: &[&str]| -> String {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("sha256sum {} | sha256sum", files.join(" ")))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
    };
    let ck = ens.join("s1");
    let digest = checkpoint_digest(&ck).unwrap();
    assert_eq!(digest, sha256sum(&ck, &[checkpoint::META_FILE, checkpoint::WEIGHTS_FILE]));

    let scenario = Scenario::load(&scenario_path()).unwrap();
    let mut spec = scenario.spec.clone();
    let registry = llmos::rl::registry();
    let build_policy = |spec: &llmos::crd::LLMWorkloadSpec| registry.build(spec);
    let pin = |spec: &mut llmos::crd::LLMWorkloadSpec, d: &str| {
        spec.policy.kind = PolicyKind::Dqn;
        spec.policy.dqn =
            Some(DqnParams { checkpoint: ck.display().to_string(), sha256: Some(d.into()), ..Default::default() });
    };
    pin(&mut spec, &digest);
    build_policy(&spec).expect("the pinned checkpoint loads");
    pin(&mut spec, &digest.to_uppercase());
    build_policy(&spec).expect("hex digits in either case");

    // A replaced file: still a valid checkpoint, but not the pinned one.
    let meta = ck.join(checkpoint::META_FILE);
    let mut text = std::fs::read_to_string(&meta).unwrap();
    text.push('\n');
    std::fs::write(&meta, text).unwrap();
    pin(&mut spec, &digest);
    let err = build_policy(&spec).err().expect("a changed checkpoint is refused").to_string();
    let now = checkpoint_digest(&ck).unwrap();
    assert!(err.contains(&digest) && err.contains(&now) && err.contains("spec.policy.dqn.sha256"), "{err}");

    pin(&mut spec, "abc123");
    let err = build_policy(&spec).err().expect("a malformed digest is refused").to_string();
    assert!(err.contains("spec.policy.dqn.sha256"), "{err}");

    Ensemble::write(&ens, llmos::rl::policy::Combine::Mean).unwrap();
    let files =
        [ENSEMBLE_FILE, "s1/checkpoint.json", "s1/model.safetensors", "s2/checkpoint.json", "s2/model.safetensors"];
    assert_eq!(checkpoint_digest(&ens).unwrap(), sha256sum(&ens, &files));
}

/// Every shipped policy's card states the digest of the files shipped with it, so a
/// user can pin it (`policy.dqn.sha256`) by copying the card.
#[test]
fn shipped_policy_cards_state_their_digest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut checked = 0;
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let card = e.path().join("CARD.md");
        let Ok(text) = std::fs::read_to_string(&card) else { continue };
        let digest = llmos::rl::policy::checkpoint_digest(&e.path()).unwrap();
        let stated: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("sha256:").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        assert!(!stated.is_empty(), "{} states no sha256", card.display());
        for d in stated {
            assert_eq!(d, digest, "{} states {d}; the files give {digest}", card.display());
        }
        checked += 1;
    }
    assert!(checked >= 1, "no shipped policy found under {}", root.display());
}
