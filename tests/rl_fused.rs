//! The fused ensemble forward pass ([`llmos::rl::fused::FusedEnsemble`]) against one
//! forward pass per member, on the committed ensembles:
//!
//! - the shipped `policies/azure-code-ppo` (three PPO actors, logits averaged), the same
//!   members voting (`docs/figures/ppo-vote/ppo-azure-code`) and a DQN ensemble with
//!   dueling heads (`docs/figures/dqn-azure-code/checkpoints/pinned-ens-012`), each in
//!   twin replays of their scenario (`scenarios/azure-code-llama3-8b-a100.toml`, whole
//!   trace, loads ×0.5, ×1, ×1.5, 2 seeds), the fused policy deciding and the unfused
//!   one deciding on the same observations alongside: every decision is the same, and
//!   every member's outputs agree within [`TOL`];
//! - a few thousand random observations around each member's training statistics
//!   (some far outside, where the normaliser clamps), straight through the fused pass
//!   and each member's own, with random masks: the same outputs within [`TOL`] and the
//!   same greedy choice of the members' mean;
//! - members of different architectures are not fused, the policy says why and still
//!   decides.
//!
//! **Tolerance.** Both paths run the same matrix products per member on the pinned CPU
//! path; only the order in which a dot product (up to 128 terms) and the dueling mean
//! are summed may differ. In f32 that moves an output by a few units in the last place
//! (ε = 1.2·10⁻⁷ relative): [`TOL`] = 10⁻⁵ relative to max(1, |output|) is about 80 such
//! units, far above any reordering and far below the gaps that decide (the tests print
//! the largest difference seen and the closest decision).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use llmos::policy::{Decision, Observation, Policy};
use llmos::rl::checkpoint::{self, Expected};
use llmos::rl::dqn::{masked_argmax, DeviceChoice, DqnAgent, DqnConfig};
use llmos::rl::env::RewardConfig;
use llmos::rl::fused::FusedEnsemble;
use llmos::rl::policy::{Combine, DqnPolicy, Ensemble};
use llmos::rl::rollout::rollout;
use llmos::twin::Scenario;

/// Largest difference allowed between a fused and an unfused output, relative to
/// max(1, |output|) (see the module docs).
const TOL: f32 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenario() -> Scenario {
    Scenario::load(&root().join("scenarios/azure-code-llama3-8b-a100.toml")).unwrap()
}

/// The committed ensembles: (name, directory, how it combines).
fn ensembles() -> Vec<(&'static str, PathBuf, Combine)> {
    vec![
        ("shipped azure-code-ppo", root().join("policies/azure-code-ppo"), Combine::Mean),
        ("ppo-vote azure-code", root().join("docs/figures/ppo-vote/ppo-azure-code"), Combine::Vote),
        ("dqn pinned-ens-012", root().join("docs/figures/dqn-azure-code/checkpoints/pinned-ens-012"), Combine::Mean),
    ]
}

/// The largest relative difference between two output vectors (see [`TOL`]).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f32::max)
}

/// [`rel_diff`] of the explanations' scores.
fn rel_diff64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f64::max)
}

/// What the comparison saw over a replay.
#[derive(Debug, Default)]
struct Seen {
    decisions: usize,
    differing: Vec<String>,
    outputs: usize,
    bit_identical: usize,
    max_rel: f32,
    /// The smallest gap between the chosen option's score (the members' mean) and the next
    /// allowed one, for an ensemble whose mean decides: how close the closest call was.
    closest: f64,
}

/// The fused policy decides; the unfused one decides on the same observation alongside.
struct Both {
    fused: DqnPolicy,
    each: DqnPolicy,
    /// Whether the members' mean decides (else they vote, and the mean is not the choice).
    mean: bool,
    seen: Seen,
}

impl Both {
    fn compare(&mut self, obs: &Observation, d: &Decision, e: &Decision) {
        let s = &mut self.seen;
        s.decisions += 1;
        if d.targets != e.targets || d.reason != e.reason {
            s.differing.push(format!(
                "t = {}: fused {:?} ({}), unfused {:?} ({})",
                obs.time_s, d.targets, d.reason, e.targets, e.reason
            ));
        }
        if !obs.is_complete() {
            return;
        }
        // After `decide` the encoders hold this observation: the features it decided on.
        let (f, u) = (self.fused.member_q_values(obs), self.each.member_q_values(obs));
        assert_eq!(f.len(), u.len());
        for (a, b) in f.iter().zip(&u) {
            s.outputs += 1;
            s.bit_identical += usize::from(a == b);
            s.max_rel = s.max_rel.max(rel_diff(a, b));
        }
        let (Some(xf), Some(xu)) = (self.fused.explain(), self.each.explain()) else { return };
        for (bf, bu) in xf.branches.iter().zip(&xu.branches) {
            assert_eq!(bf.chosen, bu.chosen, "t = {}", obs.time_s);
            assert!(rel_diff64(&bf.scores, &bu.scores) <= f64::from(TOL), "t = {}", obs.time_s);
            if !self.mean {
                continue;
            }
            let best = bf.scores[bf.chosen];
            let next = (0..bf.scores.len())
                .filter(|&i| i != bf.chosen && bf.allowed[i])
                .map(|i| best - bf.scores[i])
                .fold(f64::INFINITY, f64::min);
            s.closest = s.closest.min(next);
        }
    }
}

impl Policy for Both {
    fn name(&self) -> &str {
        "both"
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let d = self.fused.decide(obs);
        let e = self.each.decide(obs);
        self.compare(obs, &d, &e);
        d
    }

    fn reset(&mut self) {
        self.fused.reset();
        self.each.reset();
    }

    fn feedback(&mut self, next: &Observation, reward: f64) {
        self.fused.feedback(next, reward);
        self.each.feedback(next, reward);
    }
}

#[test]
fn committed_ensembles_decide_alike_fused_and_unfused_in_twin_replays() {
    let scenario = scenario();
    for (name, dir, combine) in ensembles() {
        assert_eq!(Ensemble::read(&dir).unwrap().unwrap().combine, combine, "{name}");
        let fused = DqnPolicy::load_on(&dir, &scenario.spec, DeviceChoice::Cpu).unwrap();
        assert!(fused.is_fused(), "{name}: {:?}", fused.unfused_reason());
        assert_eq!(fused.members(), 3);
        let each = DqnPolicy::load_on(&dir, &scenario.spec, DeviceChoice::Cpu).unwrap().unfused();
        assert!(!each.is_fused());
        let mean = combine == Combine::Mean;
        let mut both = Both { fused, each, mean, seen: Seen { closest: f64::INFINITY, ..Default::default() } };
        for load in [0.5, 1.0, 1.5] {
            for seed in [0, 1] {
                rollout(&mut both, &scenario, seed, (0.0, 1.0), load, &RewardConfig::default()).unwrap();
            }
        }
        let s = &both.seen;
        eprintln!(
            "{name}: {} decisions, {} differing; {} member outputs, {} bit-identical, largest relative difference {:e}; closest call of the mean: gap {:e}",
            s.decisions,
            s.differing.len(),
            s.outputs,
            s.bit_identical,
            s.max_rel,
            s.closest
        );
        assert!(s.decisions >= 6 * 200, "{name}: {} decisions", s.decisions);
        assert!(s.differing.is_empty(), "{name}: decisions differ:\n{}", s.differing.join("\n"));
        assert!(s.max_rel <= TOL, "{name}: outputs differ by {:e} (relative)", s.max_rel);
    }
}

/// The members of the ensemble in `dir`, each loaded on its own.
fn members(dir: &Path) -> Vec<DqnAgent> {
    let e = Ensemble::read(dir).unwrap().unwrap();
    e.members
        .iter()
        .map(|m| checkpoint::load(&dir.join(m), &Expected::default(), DeviceChoice::Cpu).unwrap().0)
        .collect()
}

/// A raw observation around `agent`'s training statistics: each feature at its mean plus
/// up to ±4 standard deviations, or (one in ten) up to ±15, where the normaliser clamps.
fn random_obs(agent: &DqnAgent, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = &agent.normaliser;
    let spread = if rng.random::<f64>() < 0.1 { 15.0 } else { 4.0 };
    (0..n.dim())
        .map(|i| {
            let sd = (n.m2[i] / (n.count.max(2) - 1) as f64).max(0.0).sqrt().max(1e-3);
            (n.mean[i] + sd * rng.random_range(-spread..spread)) as f32
        })
        .collect()
}

/// A random mask with at least one allowed option per branch.
fn random_mask(sizes: &[usize], rng: &mut ChaCha8Rng) -> Vec<bool> {
    let mut mask = Vec::new();
    for &n in sizes {
        let keep = rng.random_range(0..n);
        mask.extend((0..n).map(|i| i == keep || rng.random::<f64>() < 0.6));
    }
    mask
}

#[test]
fn fused_outputs_match_each_member_on_random_observations() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for (name, dir, _) in ensembles() {
        let agents = members(&dir);
        let fused = FusedEnsemble::new(&agents).unwrap();
        let sizes = fused.branch_sizes().to_vec();
        let (mut max_rel, mut identical, mut differing) = (0.0f32, 0usize, 0usize);
        let n = 3_000;
        for _ in 0..n {
            let x = random_obs(&agents[0], &mut rng);
            let out = fused.outputs(&x).unwrap();
            let own: Vec<Vec<f32>> = agents.iter().map(|a| a.q_values(&x)).collect();
            for (f, o) in out.iter().zip(&own) {
                max_rel = max_rel.max(rel_diff(f, o));
                identical += usize::from(f == o);
            }
            let mean = |v: &[Vec<f32>]| -> Vec<f32> {
                let mut m = v[0].clone();
                for r in &v[1..] {
                    m.iter_mut().zip(r).for_each(|(s, x)| *s += x);
                }
                m.iter_mut().for_each(|s| *s /= v.len() as f32);
                m
            };
            let mask = random_mask(&sizes, &mut rng);
            let all = vec![true; mask.len()];
            for m in [&mask, &all] {
                differing +=
                    usize::from(masked_argmax(&mean(&out), m, &sizes) != masked_argmax(&mean(&own), m, &sizes));
            }
        }
        eprintln!(
            "{name}: {n} random observations, {} member outputs ({identical} bit-identical), largest relative difference {max_rel:e}, {differing} greedy choices differ",
            n * agents.len()
        );
        assert!(max_rel <= TOL, "{name}: outputs differ by {max_rel:e} (relative)");
        assert_eq!(differing, 0, "{name}: greedy choices differ");
    }
}

#[test]
fn members_of_different_architectures_run_one_pass_each() {
    let dir = tempfile::tempdir().unwrap();
    let ens = dir.path().join("ens");
    let shipped = root().join("policies/azure-code-ppo");
    let meta = checkpoint::read_meta(&shipped.join("s0")).unwrap();
    std::fs::create_dir_all(ens.join("a")).unwrap();
    for f in [checkpoint::META_FILE, checkpoint::WEIGHTS_FILE] {
        std::fs::copy(shipped.join("s0").join(f), ens.join("a").join(f)).unwrap();
    }
    // Member b: the same layout, a 64x64 torso (untrained weights).
    let sizes: Vec<usize> = meta.branches.iter().map(|b| b.options.len()).collect();
    let cfg = DqnConfig { hidden: vec![64, 64], dueling: false, device: DeviceChoice::Cpu, ..Default::default() };
    let mut b = DqnAgent::new(meta.feature_names.len(), &sizes, cfg).unwrap();
    b.normaliser = meta.normaliser.clone();
    checkpoint::save_as(
        &ens.join("b"),
        &b,
        Some("ppo"),
        meta.feature_names.clone(),
        meta.branches.clone(),
        meta.workload.clone(),
        meta.action_layout.clone(),
        None,
    )
    .unwrap();
    Ensemble::write(&ens, Combine::Mean).unwrap();

    let scenario = scenario();
    let mut p = DqnPolicy::load_on(&ens, &scenario.spec, DeviceChoice::Cpu).unwrap();
    assert_eq!(p.members(), 2);
    assert!(!p.is_fused());
    let why = p.unfused_reason().unwrap();
    assert!(why.contains("member 1") && why.contains("hidden widths"), "{why}");
    let a = DqnPolicy::load_on(&ens.join("a"), &scenario.spec, DeviceChoice::Cpu).unwrap();
    let bp = DqnPolicy::load_on(&ens.join("b"), &scenario.spec, DeviceChoice::Cpu).unwrap();
    assert!(a.unfused_reason().is_none() && !a.is_fused(), "a single checkpoint has nothing to fuse");
    let twin = llmos::twin::Twin::new(&scenario, 0).unwrap();
    let obs = twin.observe();
    let (q, qa, qb) = (p.q_values(&obs), a.q_values(&obs), bp.q_values(&obs));
    for i in 0..q.len() {
        assert_eq!(q[i], (qa[i] + qb[i]) / 2.0, "option {i}");
    }
    assert!(p.decide(&obs).reason.starts_with("dqn"));
}
