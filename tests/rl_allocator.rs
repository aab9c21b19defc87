//! The learned allocator (`src/rl/allocator.rs`): its environment over the twin with
//! several workloads keeps the pools' capacity whatever the actions, its static-order
//! action is exactly the arbiter, a short training writes a checkpoint that `llmos share`
//! loads and judges, and a checkpoint for other workloads is refused naming the feature.

use std::path::Path;

use llmos::control::cluster::{start_mix, Allocator};
use llmos::eval::cluster::run_mix;
use llmos::rl::allocator::{features, AllocatorEnv, LearnedAllocator, ShareTrainArgs};
use llmos::rl::Env;
use llmos::twin::cluster::Mix;

fn mix(name: &str) -> Mix {
    Mix::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/shared").join(name)).expect("mix loads")
}

#[test]
fn any_action_keeps_the_pools_and_rewards_count_weighted_misses() {
    let mut m = mix("three-services-one-pool.toml");
    for w in &mut m.file.workloads {
        w.window = Some((0.0, 0.1));
    }
    let mut env = AllocatorEnv::new(m, "hpa", (0.8, 1.2), 2);
    let (obs, mask) = env.reset(7).expect("reset");
    assert_eq!(obs.len(), env.feature_names().len());
    assert_eq!(mask.len(), 18, "three workloads, three levels and three headrooms each");
    let mut steps = 0;
    let mut total = 0.0;
    loop {
        // Levels cycling through every combination, the worst orders included.
        let a = [steps % 3, (steps / 3) % 3, (steps / 9) % 3, steps % 3, (steps + 1) % 3, (steps + 2) % 3];
        let s = env.step(&a).expect("a step keeps the pools (checked inside)");
        assert!(s.reward <= 0.0 && s.obs.iter().all(|x| x.is_finite()));
        total += s.reward;
        steps += 1;
        if s.terminated {
            break;
        }
        assert!(steps < 10_000);
    }
    assert!(steps > 10 && total < 0.0, "{steps} steps, return {total}");
}

#[test]
fn the_static_order_is_the_arbiter() {
    let m = mix("three-services-one-pool.toml");
    let arbiter = run_mix(&m, Allocator::Arbiter, 1, Some("hpa"), None).expect("arbiter");
    // The learned path with levels in the static priorities' order (chat 10 > code 5 >
    // batch 0 as high > mid > low) grants the same, tick for tick.
    let (mut world, mut control, mut policies) = start_mix(&m, 1, Some("hpa"), Allocator::Learned).expect("start");
    let mut met = vec![0u64; 3];
    while !world.is_done() {
        let proposals = control.propose(&mut policies);
        assert_eq!(features(&m, &world, &control, &proposals).len(), 35);
        let tick = control.finish(&mut world, &mut policies, proposals, Some(&[2, 1, 0]));
        for (m, t) in met.iter_mut().zip(&tick.ticks) {
            *m += t.stats.slo_met;
        }
    }
    let arb: Vec<u64> = arbiter.workloads.iter().map(|w| w.slo_met).collect();
    assert_eq!(met, arb);
}

#[test]
fn a_short_training_writes_a_checkpoint_that_share_judges() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alloc");
    let m = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/shared/three-services-one-pool.toml");
    llmos::rl::allocator::train_cli(ShareTrainArgs {
        mix: m.clone(),
        window: vec![0.0, 0.1],
        steps: 256,
        seed: 3,
        policy: "hpa".into(),
        envs: 1,
        load: vec![0.9, 1.1],
        headroom: 0,
        learning_rate: 1e-3,
        entropy_coef: 0.01,
        out: out.clone(),
    })
    .expect("training runs");
    let mix = Mix::load(&m).unwrap();
    let r = run_mix(&mix, Allocator::Learned, 0, Some("hpa"), Some((0, &out))).expect("judged");
    assert!(r.peak_held_gpus[0] <= mix.file.pools[0].capacity_gpus);
    assert_eq!(r.checkpoint, Some(0));
    // Another mix's workloads: refused, naming the first feature that differs.
    let names = vec!["chat".to_string(), "code".to_string()];
    let err = LearnedAllocator::load(&out, &names).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("feature"), "{err}");
    // No checkpoint: a clear error.
    let err = run_mix(&mix, Allocator::Learned, 0, Some("hpa"), None).expect_err("refused").to_string();
    assert!(err.contains("--allocator-policy"), "{err}");
}
