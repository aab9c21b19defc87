//! Learning tests that can fail for the right reason: each learner solves a problem with
//! a known optimal policy; masked actions are never chosen nor bootstrapped from; the same
//! seed gives the same weights; checkpoints round-trip and refuse what does not fit.

mod learning_support;

use llmos::rl::checkpoint::{self, Expected};
use llmos::rl::dqn::{evaluate, train_dqn, DeviceChoice, DqnAgent, DqnConfig, TargetUpdate};
use llmos::rl::env::Env;
use llmos::rl::replay::Batch;
use llmos::rl::schedule::EpsilonSchedule;
use llmos::rl::tabular::{train_tabular, TabularConfig};
use llmos::rl::toy::{Chain, MaskedBandit};
use llmos::rl::RlError;

fn small_dqn(seed: u64, steps_to_floor: u64) -> DqnConfig {
    DqnConfig {
        hidden: vec![32, 32],
        gamma: 0.9,
        learning_rate: 2e-3,
        batch_size: 32,
        buffer_size: 5_000,
        learning_starts: 200,
        target: TargetUpdate::Hard { every: 100 },
        epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: steps_to_floor },
        seed,
        device: DeviceChoice::Cpu,
        ..Default::default()
    }
}

fn one_hot(n: usize, i: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    v[i] = 1.0;
    v
}

#[test]
fn tabular_q_learning_solves_the_chain() {
    let mut env = Chain::new(6, 30);
    let cfg = TabularConfig {
        episodes: 400,
        epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 4_000 },
        ..Default::default()
    };
    let (table, returns) = train_tabular(&mut env, &cfg).unwrap();
    for s in 0..5 {
        let (a, _) = table.greedy(&one_hot(6, s), &[true, true]).unwrap();
        assert_eq!(table.split(a), vec![1], "state {s}: the optimal move is right");
    }
    let tail: f64 = returns[returns.len() - 50..].iter().sum::<f64>() / 50.0;
    assert!(tail > 0.8, "late episodes should mostly reach the goal, mean return {tail}");
}

#[test]
fn tabular_q_learning_never_picks_the_masked_arm() {
    // The env returns an error if a masked arm is pulled, so training itself checks it.
    let mut env = MaskedBandit::new(true);
    let cfg = TabularConfig { episodes: 600, alpha: 0.3, ..Default::default() };
    let (table, _) = train_tabular(&mut env, &cfg).unwrap();
    let e = MaskedBandit::new(true);
    let (a0, _) = table.greedy(&e.obs_of(0, false), &e.mask_of(0, false)).unwrap();
    let (a1, _) = table.greedy(&e.obs_of(1, false), &e.mask_of(1, false)).unwrap();
    assert_eq!((a0, a1), (3, 2));
    // Bootstrapped start values: γ·0.8 with the best arm masked, γ·1.0 without.
    let (_, v0) = table.greedy(&e.obs_of(0, true), &e.mask_of(0, true)).unwrap();
    let (_, v1) = table.greedy(&e.obs_of(1, true), &e.mask_of(1, true)).unwrap();
    assert!((v0 - 0.72).abs() < 0.05 && (v1 - 0.9).abs() < 0.05, "start values {v0} {v1}");
}

/// Seeds each DQN learning test trains. The problems are small enough that every seed
/// solves them (checked over seeds 1-8 on the pinned numeric path; `LLMOS_TEST_SEEDS=1-8`
/// repeats that check), so the test asserts every seed, and a learner that does not learn
/// fails it: a random or untrained greedy policy gets the chain's moves or the bandit's
/// values wrong.
fn seeds() -> Vec<u64> {
    learning_support::seeds(&[1, 2, 3])
}

#[test]
fn dqn_solves_the_chain() {
    for seed in seeds() {
        let mut env = Chain::new(6, 30);
        let mut agent = DqnAgent::new(env.obs_dim(), &env.branch_sizes(), small_dqn(seed, 2_000)).unwrap();
        train_dqn(&mut agent, &mut env, 4_000, &mut |_| {}).unwrap();
        for s in 0..5 {
            assert_eq!(
                agent.greedy(&one_hot(6, s), &[true, true]),
                vec![1],
                "seed {seed}, state {s}: the optimal move is right"
            );
        }
        // Greedy: reach the end in 5 steps.
        assert!((evaluate(&agent, &mut env, 3, 0).unwrap() - 1.0).abs() < 1e-9, "seed {seed}");
    }
}

#[test]
fn dqn_never_chooses_nor_bootstraps_from_masked_arms() {
    for seed in seeds() {
        let mut env = MaskedBandit::new(true);
        let mut agent = DqnAgent::new(env.obs_dim(), &env.branch_sizes(), small_dqn(seed + 1, 1_500)).unwrap();
        // Any masked pull during training would be an error from the env.
        train_dqn(&mut agent, &mut env, 3_000, &mut |_| {}).unwrap();
        let e = MaskedBandit::new(true);
        assert_eq!(agent.greedy(&e.obs_of(0, false), &e.mask_of(0, false)), vec![3], "seed {seed}");
        assert_eq!(agent.greedy(&e.obs_of(1, false), &e.mask_of(1, false)), vec![2], "seed {seed}");
        let v0 = agent.q_values(&e.obs_of(0, true))[0];
        let v1 = agent.q_values(&e.obs_of(1, true))[0];
        assert!(
            (v0 - 0.72).abs() < 0.08,
            "seed {seed}: start value with the best arm masked should be γ·0.8, got {v0}"
        );
        assert!((v1 - 0.9).abs() < 0.08, "seed {seed}: start value with every arm allowed should be γ·1.0, got {v1}");
    }
}

#[test]
fn td_target_excludes_masked_options_by_hand_computation() {
    let env = MaskedBandit::new(false);
    let cfg = DqnConfig { normalise_obs: false, ..small_dqn(3, 10) };
    let agent = DqnAgent::new(env.obs_dim(), &env.branch_sizes(), cfg).unwrap();
    let next = vec![0.3f32, 0.7];
    let q = agent.q_values(&next);
    let best = (0..4).max_by(|&a, &b| q[a].total_cmp(&q[b])).unwrap();
    let mask: Vec<bool> = (0..4).map(|a| a != best).collect();
    let allowed_max = (0..4).filter(|&a| a != best).map(|a| q[a]).fold(f32::NEG_INFINITY, f32::max);
    let batch = Batch {
        size: 1,
        obs: vec![0.0, 0.0],
        actions: vec![0],
        rewards: vec![0.5],
        next_obs: next,
        next_mask: mask,
        discounts: vec![0.9],
    };
    // Online and target networks are equal at start, so Double DQN's value is the allowed max.
    let y = agent.td_targets(&batch)[0];
    assert!((y - (0.5 + 0.9 * allowed_max)).abs() < 1e-5, "y = {y}, expected {}", 0.5 + 0.9 * allowed_max);
    let terminal = Batch { discounts: vec![0.0], ..batch };
    assert!((agent.td_targets(&terminal)[0] - 0.5).abs() < 1e-6);
}

fn weights(agent: &DqnAgent) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> =
        agent.vs.variables().into_iter().map(|(k, t)| (k, Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn train_chain(seed: u64) -> (DqnAgent, Vec<f64>) {
    let mut env = Chain::new(5, 20);
    let cfg = DqnConfig { target: TargetUpdate::Polyak { tau: 0.05 }, n_step: 3, ..small_dqn(seed, 500) };
    let mut agent = DqnAgent::new(env.obs_dim(), &env.branch_sizes(), cfg).unwrap();
    let recs = train_dqn(&mut agent, &mut env, 800, &mut |_| {}).unwrap();
    (agent, recs.iter().map(|r| r.episodic_return).collect())
}

#[test]
fn same_seed_gives_identical_weights_and_returns() {
    let (a, ra) = train_chain(7);
    let (b, rb) = train_chain(7);
    assert_eq!(ra, rb);
    assert_eq!(weights(&a), weights(&b));
    let (c, _) = train_chain(8);
    assert_ne!(weights(&a), weights(&c), "a different seed should give different weights");
}

#[test]
fn agents_initialised_on_parallel_threads_get_the_weights_of_their_seed() {
    // libtorch's generator is process-wide; agents created at the same moment on several
    // threads (as the demo trains its ensemble) must still depend on their seed alone.
    let seeds: Vec<u64> = (1..=6).collect();
    let alone: Vec<_> =
        seeds.iter().map(|&s| weights(&DqnAgent::new(4, &[3, 3], small_dqn(s, 100)).unwrap())).collect();
    let barrier = std::sync::Barrier::new(seeds.len());
    let together: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = seeds
            .iter()
            .map(|&s| {
                let barrier = &barrier;
                sc.spawn(move || {
                    barrier.wait();
                    weights(&DqnAgent::new(4, &[3, 3], small_dqn(s, 100)).unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
}

#[test]
fn checkpoint_round_trips_and_rejects_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    let env = MaskedBandit::new(false);
    let (agent, _) = train_chain(9);
    let chain = Chain::new(5, 20);
    let names = chain.feature_names();
    let branches = chain.action_branches();
    checkpoint::save(&ck, &agent, names.clone(), branches.clone(), None, None, None).unwrap();

    // Round trip: identical Q-values and counters, normaliser frozen.
    let expected = Expected { feature_names: Some(&names), branches: Some(&branches) };
    let (loaded, meta) = checkpoint::load(&ck, &expected, DeviceChoice::Cpu).unwrap();
    for s in 0..5 {
        assert_eq!(agent.q_values(&one_hot(5, s)), loaded.q_values(&one_hot(5, s)));
    }
    assert_eq!(meta.env_steps, agent.env_steps);
    assert!(loaded.normaliser.frozen);
    assert_eq!(weights(&agent), weights(&loaded));

    // Layout mismatch names the difference.
    let other = env.feature_names();
    let err = checkpoint::load(&ck, &Expected { feature_names: Some(&other), branches: None }, DeviceChoice::Cpu)
        .unwrap_err();
    assert!(matches!(err, RlError::LayoutMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("observation features") && msg.contains('5') && msg.contains('2'), "{msg}");
    let mut renamed = names.clone();
    renamed[3] = "state_x".into();
    let msg = checkpoint::load(&ck, &Expected { feature_names: Some(&renamed), branches: None }, DeviceChoice::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("observation feature 3") && msg.contains("state_3") && msg.contains("state_x"), "{msg}");
    let other_branches = env.action_branches();
    let msg =
        checkpoint::load(&ck, &Expected { feature_names: None, branches: Some(&other_branches) }, DeviceChoice::Cpu)
            .unwrap_err()
            .to_string();
    assert!(msg.contains("action branch 0") && msg.contains("arm"), "{msg}");

    // Missing directory, corrupt weights, garbage sidecar: errors, not panics.
    let err = checkpoint::load(&dir.path().join("nope"), &Expected::default(), DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(err, RlError::Checkpoint { .. }), "{err}");
    let w = ck.join(checkpoint::WEIGHTS_FILE);
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(&ck, &Expected::default(), DeviceChoice::Cpu).unwrap_err();
    assert!(err.to_string().contains("does not match the sidecar"), "{err}");
    std::fs::write(ck.join(checkpoint::META_FILE), b"{ not json").unwrap();
    let err = checkpoint::load(&ck, &Expected::default(), DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(err, RlError::Json { .. }), "{err}");
}

#[test]
fn network_shapes_match_the_built_network() {
    for dueling in [false, true] {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _net = llmos::rl::dqn::QNetwork::new(&vs.root(), 7, &[16, 8], &[3, 5], dueling);
        let mut built: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
        built.sort();
        let mut computed = llmos::rl::dqn::QNetwork::shapes(7, &[16, 8], &[3, 5], dueling).unwrap();
        computed.sort();
        assert_eq!(built, computed, "dueling {dueling}");
    }
    assert!(llmos::rl::dqn::QNetwork::shapes(7, &[0], &[3], false).is_none(), "a zero width is no network");
    assert!(llmos::rl::dqn::QNetwork::shapes(7, &[i64::MAX, 2], &[3], false).is_none(), "overflowing shapes");
}

/// Rewrites a safetensors file with `edit` applied to its header (offsets kept).
fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn weights_are_checked_against_the_sidecar_before_libtorch_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ckpt");
    let (agent, _) = train_chain(3);
    let chain = Chain::new(5, 20);
    checkpoint::save(&ck, &agent, chain.feature_names(), chain.action_branches(), None, None, None).unwrap();
    let meta = checkpoint::read_meta(&ck).unwrap();
    let bytes = std::fs::read(ck.join(checkpoint::WEIGHTS_FILE)).unwrap();
    checkpoint::check_tensors("ck", &meta, &bytes).unwrap();

    let first = meta.dqn.hidden[0];
    let reshaped = edit_header(&bytes, |h| {
        h["torso0.bias"]["shape"] = serde_json::json!([first / 2, 2]);
    });
    let msg = checkpoint::check_tensors("ck", &meta, &reshaped).unwrap_err().to_string();
    assert!(msg.contains("tensor `torso0.bias` has shape") && msg.contains(&format!("[{first}]")), "{msg}");
    let renamed = edit_header(&bytes, |h| {
        let t = h.remove("head0.weight").unwrap();
        h.insert("head9.weight".into(), t);
    });
    let msg = checkpoint::check_tensors("ck", &meta, &renamed).unwrap_err().to_string();
    assert!(msg.contains("tensor `head0.weight` is missing"), "{msg}");
    let msg = checkpoint::check_tensors("ck", &meta, &bytes[..40]).unwrap_err().to_string();
    assert!(msg.contains("not a safetensors file"), "{msg}");

    // A sidecar that describes a huge network is refused before anything is allocated:
    // its weights file cannot hold the tensors it announces.
    let mut huge = meta.clone();
    huge.dqn.hidden = vec![1 << 40];
    let msg = checkpoint::check_tensors("ck", &huge, &bytes).unwrap_err().to_string();
    assert!(msg.contains("torso0.weight"), "{msg}");
    let mut no_branch = serde_json::to_value(&meta).unwrap();
    no_branch["branches"] = serde_json::json!([]);
    let msg = checkpoint::parse_meta("ck", &serde_json::to_vec(&no_branch).unwrap()).unwrap_err().to_string();
    assert!(msg.contains("branches: empty"), "{msg}");
    // Normaliser statistics that do not fit together are named, not indexed into later.
    for (edit, expect) in [
        (serde_json::json!({"m2": [1.0]}), "normaliser: m2 has 1 values"),
        (serde_json::json!({"max": [0.0]}), "normaliser: min and max have"),
        (serde_json::json!({"m2": null}), "invalid type: null"),
    ] {
        let mut v = serde_json::to_value(&meta).unwrap();
        let n = v["normaliser"].as_object_mut().unwrap();
        for (k, x) in edit.as_object().unwrap() {
            n.insert(k.clone(), x.clone());
        }
        let err = checkpoint::parse_meta("ck", &serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
        assert!(err.contains(expect), "{expect}: {err}");
    }
    let mut v = serde_json::to_value(&meta).unwrap();
    let dim = meta.normaliser.dim();
    v["normaliser"]["min"] = serde_json::json!(vec![1.0; dim]);
    v["normaliser"]["max"] = serde_json::json!(vec![0.0; dim]);
    let err = checkpoint::parse_meta("ck", &serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
    assert!(err.contains("normaliser: min[0] = 1 is above max[0] = 0"), "{err}");
}
