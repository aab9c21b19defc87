//! Speed of the learning side, measured with timed loops (run in `--release`):
//!
//! - twin control ticks per second with a fixed fleet (simulation alone);
//! - training: environment steps and gradient updates per second (simulation + learning);
//! - decision latency of [`DqnPolicy::decide`] at batch 1 on the CPU (encode, normalise,
//!   forward, masked argmax, decision), median and p99 over many calls, for the small
//!   network trained here and for the committed Azure-code checkpoints (one network and an
//!   ensemble of three);
//! - the same for the shipped policy `policies/azure-code-ppo` (an ensemble of three PPO
//!   actors): one member alone, the ensemble with one forward pass per member (unfused),
//!   and the ensemble in one batched forward pass (fused, what the operator runs).
//!
//! `cargo run --release --example rl_bench -- [TRAIN_STEPS]`

use std::path::PathBuf;
use std::time::Instant;

use llmos::policy::{Decision, Observation, Policy};
use llmos::rl::dqn::{DeviceChoice, DqnConfig};
use llmos::rl::env::{EpisodeConfig, RewardConfig};
use llmos::rl::policy::DqnPolicy;
use llmos::rl::schedule::EpsilonSchedule;
use llmos::rl::train::{train, TrainConfig};
use llmos::twin::{Scenario, Twin};

fn main() -> anyhow::Result<()> {
    let steps: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3_000);
    let scenario_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/tiny-step-two-pools.toml");
    let scenario = Scenario::load(&scenario_path)?;

    // 1. Simulation alone: a fixed fleet of 4 cheap replicas, whole run, repeated.
    let t0 = Instant::now();
    let mut ticks = 0u64;
    for seed in 0..20 {
        let mut twin = Twin::new(&scenario, seed)?;
        let obs = twin.observe();
        let mut d = Decision::hold(&obs, "bench");
        d.set("llama3-8b", "cheap", 4);
        twin.apply(&d);
        while !twin.is_done() {
            let _ = twin.observe();
            twin.step();
            ticks += 1;
        }
    }
    let sim_s = t0.elapsed().as_secs_f64();
    println!("twin alone: {ticks} control ticks in {sim_s:.2} s = {:.0} ticks/s", ticks as f64 / sim_s);

    // 2. Training (factored layout, 64x64 torso, batch 64, one update per step).
    let out = std::env::temp_dir().join("llmos-rl-bench");
    let cfg = TrainConfig {
        scenario: scenario_path.clone(),
        steps,
        seed: 1,
        out: out.clone(),
        deltas: vec![-4, -1, 0, 1, 2],
        reward: RewardConfig { cost_weight_per_usd: 5_000.0, ..Default::default() },
        episodes: EpisodeConfig { train_window: (0.0, 1.0), episode_frac: 1.0, ..Default::default() },
        dqn: DqnConfig {
            hidden: vec![64, 64],
            learning_starts: 0,
            device: DeviceChoice::Cpu,
            epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: steps / 2 },
            ..Default::default()
        },
        ..Default::default()
    };
    let s = train(&cfg)?;
    println!(
        "training: {} env steps, {} updates in {:.2} s = {:.0} env steps/s, {:.0} updates/s",
        s.env_steps, s.updates, s.wall_s, s.env_steps_per_s, s.updates_per_s
    );

    // 3. Decision latency at batch 1 on the CPU.
    let mut policy = DqnPolicy::load_on(&out, &scenario.spec, DeviceChoice::Cpu)?;
    report("DqnPolicy::decide, tiny scenario, 64x64", latency(&mut policy, &scenario)?);

    // 4. The same for the committed Azure-code checkpoints: one network (128x128, rate
    //    history) and an ensemble of three whose Q-values are averaged.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let code = Scenario::load(&root.join("scenarios/azure-code-llama3-8b-a100.toml"))?;
    let ens = root.join("docs/figures/dqn-azure-code/checkpoints/select-ens-012");
    let one = DqnPolicy::load_on(&ens.join("s0"), &code.spec, DeviceChoice::Cpu)?;
    let fused = DqnPolicy::load_on(&ens, &code.spec, DeviceChoice::Cpu)?;
    let unfused = DqnPolicy::load_on(&ens, &code.spec, DeviceChoice::Cpu)?.unfused();
    for (what, mut p) in
        [("one 128x128 network", one), ("ensemble of 3, unfused", unfused), ("ensemble of 3, fused", fused)]
    {
        report(&format!("Azure code checkpoint, {what}"), latency(&mut p, &code)?);
    }

    // 5. The shipped policy: an ensemble of three PPO actors (128x128), logits averaged.
    let shipped = root.join("policies/azure-code-ppo");
    let one = DqnPolicy::load_on(&shipped.join("s0"), &code.spec, DeviceChoice::Cpu)?;
    let fused = DqnPolicy::load_on(&shipped, &code.spec, DeviceChoice::Cpu)?;
    anyhow::ensure!(fused.is_fused(), "the shipped ensemble is not fused: {:?}", fused.unfused_reason());
    let unfused = DqnPolicy::load_on(&shipped, &code.spec, DeviceChoice::Cpu)?.unfused();
    for (what, mut p) in [("one member", one), ("ensemble of 3, unfused", unfused), ("ensemble of 3, fused", fused)] {
        report(&format!("shipped azure-code-ppo, {what}"), latency(&mut p, &code)?);
    }
    Ok(())
}

/// Median, p99 and max of `DqnPolicy::decide` over 20,000 calls on the first 40
/// observations of the scenario's run, µs.
fn latency(policy: &mut DqnPolicy, scenario: &Scenario) -> anyhow::Result<(f64, f64, f64)> {
    let mut twin = Twin::new(scenario, 0)?;
    let mut observations: Vec<Observation> = Vec::new();
    while !twin.is_done() && observations.len() < 40 {
        observations.push(twin.observe());
        twin.step();
    }
    for o in &observations {
        let _ = policy.decide(o);
    }
    let n = 20_000;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let o = &observations[i % observations.len()];
        let t = Instant::now();
        let d = policy.decide(o);
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
        std::hint::black_box(d);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((p * n as f64) as usize).min(n - 1)];
    Ok((q(0.5), q(0.99), lat[n - 1]))
}

fn report(what: &str, (median, p99, max): (f64, f64, f64)) {
    println!(
        "decision latency ({what}, batch 1, CPU, 1 thread): median {median:.1} µs, p99 {p99:.1} µs, max {max:.1} µs"
    );
}
