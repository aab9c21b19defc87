//! The shield's limits hold for any decision (property tests), and its named rules do what
//! their names say on hand-built cases.

use std::collections::BTreeMap;

use llmos::crd::{GpuPoolSpec, LLMWorkloadSpec, LimitsSpec, VariantSpec};
use llmos::policy::shield::{slot_key, validate_spec, Shield, ShieldRule};
use llmos::policy::{Decision, Observation, PoolObservation, SlotObservation};
use proptest::prelude::*;

fn variant(name: &str, gpus: u32, min: u32, max: u32, pools: &[&str]) -> VariantSpec {
    VariantSpec {
        name: name.into(),
        model: "m".into(),
        image: "i".into(),
        args: vec![],
        port: 8000,
        gpus_per_replica: gpus,
        quality: None,
        pools: pools.iter().map(|p| p.to_string()).collect(),
        min_replicas: min,
        max_replicas: max,
        cold_start_seconds: None,
    }
}

fn pool(name: &str, price: f64, cap: Option<u32>) -> GpuPoolSpec {
    GpuPoolSpec {
        name: name.into(),
        gpu_type: "A100-80GB".into(),
        node_selector: BTreeMap::new(),
        tolerations: vec![],
        price_per_gpu_hour: price,
        capacity_gpus: cap,
    }
}

fn spec(variants: Vec<VariantSpec>, pools: Vec<GpuPoolSpec>, limits: LimitsSpec) -> LLMWorkloadSpec {
    LLMWorkloadSpec {
        variants,
        gpu_pools: pools,
        pool_refs: vec![],
        scheduling: Default::default(),
        learning: Default::default(),
        slo: Default::default(),
        limits,
        metrics: Default::default(),
        policy: Default::default(),
    }
}

/// An observation with (variant, pool, desired, ready) slots.
fn obs(time_s: f64, rate: f64, slots: &[(&str, &str, u32, u32)]) -> Observation {
    Observation {
        time_s,
        window_s: 60.0,
        arrival_rate_rps: rate,
        slots: slots
            .iter()
            .map(|&(v, p, d, r)| SlotObservation {
                variant: v.into(),
                pool: p.into(),
                ready_replicas: r,
                starting_replicas: d.saturating_sub(r),
                desired_replicas: d,
                gpus_per_replica: 1,
                ..Default::default()
            })
            .collect(),
        pools: vec![PoolObservation { name: "a".into(), free_gpus: None, price_per_gpu_hour_usd: 1.0 }],
        ..Default::default()
    }
}

fn decision(targets: &[(&str, &str, u32)]) -> Decision {
    let mut d = Decision::default();
    for &(v, p, n) in targets {
        d.set(v, p, n);
    }
    d
}

fn limits(min_total: u32, max_total: u32, budget: Option<f64>, step: u32, cooldown: u32) -> LimitsSpec {
    LimitsSpec {
        min_total_replicas: min_total,
        max_total_replicas: max_total,
        max_cost_per_hour: budget,
        max_step_change: step,
        scale_down_cooldown_seconds: cooldown,
    }
}

#[test]
fn max_step_change_limits_a_jump() {
    let s = spec(vec![variant("v", 1, 0, 100, &[])], vec![pool("a", 1.0, None)], limits(0, 100, None, 2, 0));
    let mut sh = Shield::new(&s);
    let o = obs(0.0, 1.0, &[("v", "a", 3, 3)]);
    let out = sh.apply(&o, &decision(&[("v", "a", 10)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(5));
    assert_eq!(out.overrides[0].rule, ShieldRule::MaxStepChange);
    assert_eq!(out.overrides[0].asked, 10);
    assert_eq!(sh.overrides_total(), 1);
}

#[test]
fn cooldown_holds_scale_down_and_survives_export_import() {
    let s = spec(vec![variant("v", 1, 0, 100, &[])], vec![pool("a", 1.0, None)], limits(0, 100, None, 8, 60));
    let mut sh = Shield::new(&s);
    let out = sh.apply(&obs(100.0, 1.0, &[("v", "a", 6, 6)]), &decision(&[("v", "a", 4)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(4));
    // A restarted operator restores the state from status.
    let state = sh.export_state();
    assert_eq!(state.get(&slot_key("v", "a")), Some(&100.0));
    let mut restarted = Shield::new(&s);
    restarted.import_state(&state);
    let out = restarted.apply(&obs(130.0, 1.0, &[("v", "a", 4, 4)]), &decision(&[("v", "a", 2)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(4));
    assert_eq!(out.overrides[0].rule, ShieldRule::ScaleDownCooldown);
    // Scaling up is not held, and after the cooldown scaling down is allowed again.
    let out = restarted.apply(&obs(140.0, 1.0, &[("v", "a", 4, 4)]), &decision(&[("v", "a", 5)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(5));
    let out = restarted.apply(&obs(161.0, 1.0, &[("v", "a", 5, 5)]), &decision(&[("v", "a", 2)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(2));
}

#[test]
fn annotate_tells_the_policy_how_long_the_cooldown_still_runs() {
    let s = spec(vec![variant("v", 1, 0, 100, &[])], vec![pool("a", 1.0, None)], limits(0, 100, None, 8, 60));
    let mut sh = Shield::new(&s);
    let mut o = obs(100.0, 1.0, &[("v", "a", 6, 6)]);
    sh.annotate(&mut o);
    assert_eq!(o.slots[0].scale_down_blocked_s, 0.0, "no scale-down yet");
    sh.apply(&o, &decision(&[("v", "a", 4)]));
    for (t, left) in [(100.0, 60.0), (145.0, 15.0), (160.0, 0.0), (200.0, 0.0)] {
        let mut o = obs(t, 1.0, &[("v", "a", 4, 4)]);
        sh.annotate(&mut o);
        assert_eq!(o.slots[0].scale_down_blocked_s, left, "at {t} s");
        // Exactly when the annotation says blocked, the shield refuses a scale-down.
        let refused = sh.clamp(&o, &decision(&[("v", "a", 3)])).decision.replicas("v", "a") == Some(4);
        assert_eq!(refused, left > 0.0, "at {t} s");
    }
}

#[test]
fn keeps_last_ready_replica_with_traffic_but_not_without() {
    let s = spec(
        vec![variant("v", 1, 0, 100, &[])],
        vec![pool("a", 1.0, None), pool("b", 1.0, None)],
        limits(0, 100, None, 8, 0),
    );
    let sh = Shield::new(&s);
    // Moving everything from pool a (ready) to pool b (cold) would leave no ready replica.
    let o = obs(0.0, 2.0, &[("v", "a", 1, 1), ("v", "b", 0, 0)]);
    let out = sh.clamp(&o, &decision(&[("v", "a", 0), ("v", "b", 2)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(1));
    assert!(out.overrides.iter().any(|o| o.rule == ShieldRule::KeepLastReady));
    let o = obs(0.0, 0.0, &[("v", "a", 1, 1), ("v", "b", 0, 0)]);
    let out = sh.clamp(&o, &decision(&[("v", "a", 0)]));
    assert_eq!(out.decision.replicas("v", "a"), Some(0));
}

#[test]
fn budget_cuts_the_most_expensive_gpus_first() {
    let s = spec(
        vec![variant("v", 1, 0, 100, &[])],
        vec![pool("cheap", 1.0, None), pool("dear", 3.0, None)],
        limits(0, 100, Some(10.0), 100, 0),
    );
    let sh = Shield::new(&s);
    let o = obs(0.0, 0.0, &[]);
    let out = sh.clamp(&o, &decision(&[("v", "cheap", 4), ("v", "dear", 4)]));
    // 4 × 1 + 2 × 3 = 10 ≤ 10.
    assert_eq!(out.decision.replicas("v", "cheap"), Some(4));
    assert_eq!(out.decision.replicas("v", "dear"), Some(2));
    assert!(out.overrides.iter().all(|o| o.rule == ShieldRule::Budget));
}

#[test]
fn capacity_counts_gpus_per_replica_and_pools_are_enforced() {
    let s = spec(
        vec![variant("big", 4, 0, 100, &["a"]), variant("small", 1, 0, 100, &[])],
        vec![pool("a", 1.0, Some(8)), pool("b", 1.0, None)],
        limits(0, 100, None, 100, 0),
    );
    let sh = Shield::new(&s);
    let out = sh.clamp(&obs(0.0, 0.0, &[]), &decision(&[("big", "a", 3), ("big", "b", 2), ("nope", "a", 1)]));
    assert_eq!(out.decision.replicas("big", "a"), Some(2));
    assert_eq!(out.decision.replicas("big", "b"), Some(0));
    assert_eq!(out.decision.replicas("nope", "a"), None);
    let rules: Vec<ShieldRule> = out.overrides.iter().map(|o| o.rule).collect();
    assert!(rules.contains(&ShieldRule::UnknownSlot));
    assert!(rules.contains(&ShieldRule::PoolNotAllowed));
    assert!(rules.contains(&ShieldRule::PoolCapacity));
}

#[test]
fn omitted_slots_keep_their_current_count() {
    let s = spec(
        vec![variant("v", 1, 0, 100, &[])],
        vec![pool("a", 1.0, None), pool("b", 1.0, None)],
        limits(0, 100, None, 8, 0),
    );
    let sh = Shield::new(&s);
    let out = sh.clamp(&obs(0.0, 1.0, &[("v", "a", 3, 3), ("v", "b", 2, 2)]), &decision(&[("v", "a", 4)]));
    assert_eq!(out.decision.replicas("v", "b"), Some(2));
    assert!(out.overrides.is_empty());
}

#[test]
fn validate_spec_names_what_to_fix() {
    let s = spec(
        vec![variant("v", 1, 5, 2, &["nowhere"]), variant("v", 8, 0, 1, &["a"])],
        vec![pool("a", 1.0, Some(4))],
        limits(20, 3, Some(0.5), 0, 0),
    );
    let problems = validate_spec(&s);
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(has("`nowhere`"), "{text:#?}");
    assert!(has("used twice"), "{text:#?}");
    assert!(has("minReplicas 5 > maxReplicas 2"), "{text:#?}");
    assert!(has("needs 8 GPUs per replica"), "{text:#?}");
    assert!(has("minTotalReplicas 20 > maxTotalReplicas 3"), "{text:#?}");
    assert!(has("maxStepChange is 0"), "{text:#?}");
    let ok = spec(vec![variant("v", 1, 1, 4, &[])], vec![pool("a", 1.0, Some(4))], LimitsSpec::default());
    assert!(validate_spec(&ok).is_empty());
}

// ---- property tests ----

#[derive(Debug, Clone)]
struct Case {
    spec: LLMWorkloadSpec,
    obs: Observation,
    decision: Decision,
    cooldown_state: BTreeMap<String, f64>,
}

const POOLS: [&str; 3] = ["p0", "p1", "p2"];
const VARIANTS: [&str; 3] = ["v0", "v1", "v2"];

fn case_strategy(bounded: bool) -> impl Strategy<Value = Case> {
    (1usize..=3, 1usize..=3).prop_flat_map(move |(nv, np)| {
        let variants = proptest::collection::vec((1u32..=4, 0u32..=4, 0u32..=8, 0u8..8), nv);
        let pools = proptest::collection::vec((0.1f64..5.0, proptest::option::of(0u32..=16)), np);
        let lim = (0u32..=6, 0u32..=14, proptest::option::of(0.0f64..60.0), 0u32..=4, 0u32..=120);
        let slots = proptest::collection::vec(
            (0u32..=8, 0u32..=8, 0u32..=10, any::<bool>(), proptest::option::of(0.0f64..200.0)),
            nv * np,
        );
        let rate = prop_oneof![Just(0.0), 0.01f64..20.0];
        (variants, pools, lim, slots, rate, 0u32..=3).prop_map(move |(vs, ps, l, ss, rate, unknown)| {
            let pools: Vec<GpuPoolSpec> = ps
                .iter()
                .enumerate()
                .map(|(i, &(price, cap))| pool(POOLS[i], price, if bounded { None } else { cap }))
                .collect();
            let variants: Vec<VariantSpec> = vs
                .iter()
                .enumerate()
                .map(|(i, &(g, min, max, mask))| {
                    let allowed: Vec<&str> = (0..np).filter(|j| mask & (1 << j) != 0).map(|j| POOLS[j]).collect();
                    if bounded {
                        variant(VARIANTS[i], g, 0, max.max(1), &allowed)
                    } else {
                        variant(VARIANTS[i], g, min, max, &allowed)
                    }
                })
                .collect();
            let limits = if bounded { limits(0, 100, l.2, l.3, l.4) } else { limits(l.0, l.1, l.2, l.3, l.4) };
            let mut o = Observation { time_s: 1000.0, arrival_rate_rps: rate, ..Default::default() };
            let mut d = Decision::default();
            let mut cooldown_state = BTreeMap::new();
            for (k, &(desired, ready, target, named, last_down)) in ss.iter().enumerate() {
                let (v, p) = (VARIANTS[k / np], POOLS[k % np]);
                o.slots.push(SlotObservation {
                    variant: v.into(),
                    pool: p.into(),
                    ready_replicas: ready.min(desired),
                    starting_replicas: desired - ready.min(desired),
                    desired_replicas: desired,
                    gpus_per_replica: 1,
                    ..Default::default()
                });
                if named {
                    d.set(v, p, target);
                }
                if let Some(t) = last_down {
                    cooldown_state.insert(slot_key(v, p), 1000.0 - t);
                }
            }
            if unknown > 0 {
                d.set("ghost", POOLS[0], unknown);
            }
            Case { spec: spec(variants, pools, limits), obs: o, decision: d, cooldown_state }
        })
    })
}

struct View<'a> {
    spec: &'a LLMWorkloadSpec,
    d: &'a Decision,
}

impl View<'_> {
    fn gpr(&self, v: &str) -> u32 {
        self.spec.variants.iter().find(|x| x.name == v).map(|x| x.gpus_per_replica).unwrap_or(1)
    }
    fn allowed(&self, v: &str, p: &str) -> bool {
        self.spec.variants.iter().any(|x| x.name == v && (x.pools.is_empty() || x.pools.iter().any(|q| q == p)))
            && self.spec.gpu_pools.iter().any(|q| q.name == p)
    }
    fn vtotal(&self, v: &str) -> u32 {
        self.d.targets.iter().filter(|t| t.variant == v).map(|t| t.replicas).sum()
    }
    fn pool_gpus(&self, p: &str) -> u64 {
        self.d
            .targets
            .iter()
            .filter(|t| t.pool == p)
            .map(|t| u64::from(t.replicas) * u64::from(self.gpr(&t.variant)))
            .sum()
    }
    fn cost(&self) -> f64 {
        self.d
            .targets
            .iter()
            .map(|t| {
                let price =
                    self.spec.gpu_pools.iter().find(|p| p.name == t.pool).map(|p| p.price_per_gpu_hour).unwrap_or(0.0);
                f64::from(t.replicas) * f64::from(self.gpr(&t.variant)) * price
            })
            .sum()
    }
    fn vmin(&self, v: &str) -> u32 {
        self.spec.variants.iter().find(|x| x.name == v).map(|x| x.min_replicas).unwrap_or(0)
    }
    fn vmax(&self, v: &str) -> u32 {
        self.spec.variants.iter().find(|x| x.name == v).map(|x| x.max_replicas).unwrap_or(0)
    }
    /// Whether one more replica of `v` could be placed on `p`, if every other variant gave
    /// up its replicas above its minimum.
    fn could_add(&self, v: &str, p: &str) -> bool {
        if !self.allowed(v, p) || self.vtotal(v) >= self.vmax(v) {
            return false;
        }
        let total_floor: u32 = self
            .spec
            .variants
            .iter()
            .map(|w| if w.name == v { self.vtotal(v) } else { self.vtotal(&w.name).min(w.min_replicas) })
            .sum();
        if total_floor >= self.spec.limits.max_total_replicas {
            return false;
        }
        let cap = self.spec.gpu_pools.iter().find(|q| q.name == p).and_then(|q| q.capacity_gpus);
        match cap {
            None => true,
            Some(cap) => {
                let removable: u64 = self
                    .d
                    .targets
                    .iter()
                    .filter(|t| t.pool == p && t.variant != v)
                    .map(|t| {
                        let excess = self.vtotal(&t.variant).saturating_sub(self.vmin(&t.variant));
                        u64::from(t.replicas.min(excess)) * u64::from(self.gpr(&t.variant))
                    })
                    .sum();
                self.pool_gpus(p) - removable + u64::from(self.gpr(v)) <= u64::from(cap)
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Whatever the policy asks, capacities, maxima and allowed pools always hold; minima
    /// hold unless no room exists; the budget holds unless every remaining replica is an
    /// availability floor; step change and cooldown hold unless a hard rule moved the slot.
    #[test]
    fn shield_limits_hold_for_any_decision(c in case_strategy(false)) {
        let mut sh = Shield::new(&c.spec);
        sh.import_state(&c.cooldown_state);
        let out = sh.apply(&c.obs, &c.decision);
        let d = &out.decision;
        let v = View { spec: &c.spec, d };
        for t in &d.targets {
            prop_assert!(t.replicas == 0 || v.allowed(&t.variant, &t.pool), "slot not allowed: {:?}", t);
            prop_assert!(t.variant != "ghost");
        }
        for p in &c.spec.gpu_pools {
            if let Some(cap) = p.capacity_gpus {
                prop_assert!(v.pool_gpus(&p.name) <= u64::from(cap), "pool {} over capacity", p.name);
            }
        }
        let total = d.total_replicas();
        prop_assert!(total <= c.spec.limits.max_total_replicas);
        for x in &c.spec.variants {
            prop_assert!(v.vtotal(&x.name) <= x.max_replicas);
            if v.vtotal(&x.name) < x.min_replicas {
                for p in &c.spec.gpu_pools {
                    prop_assert!(!v.could_add(&x.name, &p.name), "variant {} below min though {} has room", x.name, p.name);
                }
            }
        }
        if total < c.spec.limits.min_total_replicas {
            for x in &c.spec.variants {
                for p in &c.spec.gpu_pools {
                    let cap_ok = p.capacity_gpus.is_none_or(|cap| v.pool_gpus(&p.name) + u64::from(x.gpus_per_replica) <= u64::from(cap));
                    prop_assert!(!(v.allowed(&x.name, &p.name) && v.vtotal(&x.name) < x.max_replicas && total < c.spec.limits.max_total_replicas && cap_ok), "below total min with room");
                }
            }
        }
        if let Some(budget) = c.spec.limits.max_cost_per_hour {
            if v.cost() > budget + 1e-9 {
                // Every replica left is a floor: cutting any would break a minimum or the last ready replica.
                let kept: u32 = d.targets.iter().map(|t| t.replicas.min(c.obs.slot(&t.variant, &t.pool).map(|s| s.ready_replicas).unwrap_or(0))).sum();
                let protect = c.obs.arrival_rate_rps > 0.0 && kept > 0;
                for t in d.targets.iter().filter(|t| t.replicas > 0) {
                    let ready = c.obs.slot(&t.variant, &t.pool).map(|s| s.ready_replicas).unwrap_or(0);
                    let floor = total <= c.spec.limits.min_total_replicas
                        || v.vtotal(&t.variant) <= v.vmin(&t.variant)
                        || (protect && kept <= 1 && t.replicas <= ready);
                    prop_assert!(floor, "over budget ({} > {}) with a cuttable replica in {:?}", v.cost(), budget, t);
                }
            }
        }
        let hard = |t: &llmos::policy::SlotTarget| out.overrides.iter().any(|o| {
            o.variant == t.variant && o.pool == t.pool && !matches!(o.rule, ShieldRule::MaxStepChange | ShieldRule::ScaleDownCooldown)
        });
        let step = c.spec.limits.max_step_change.max(1);
        for t in &d.targets {
            let cur = c.obs.slot(&t.variant, &t.pool).map(|s| s.desired_replicas).unwrap_or(0);
            if t.replicas.abs_diff(cur) > step && v.allowed(&t.variant, &t.pool) {
                prop_assert!(hard(t), "step {} -> {} without a hard rule", cur, t.replicas);
            }
            let cooling = c.cooldown_state.get(&slot_key(&t.variant, &t.pool))
                .is_some_and(|&last| c.obs.time_s - last < f64::from(c.spec.limits.scale_down_cooldown_seconds));
            if cooling && t.replicas < cur && v.allowed(&t.variant, &t.pool) {
                prop_assert!(hard(t), "scaled down in cooldown without a hard rule");
            }
        }
        // The decision covers every allowed slot, and the counter counts the overrides.
        prop_assert_eq!(sh.overrides_total(), out.overrides.len() as u64);
    }

    /// With no capacity and total limits in the way, a workload with traffic always keeps a
    /// ready replica.
    #[test]
    fn keeps_a_ready_replica_when_traffic(c in case_strategy(true)) {
        let sh = Shield::new(&c.spec);
        let out = sh.clamp(&c.obs, &c.decision);
        let ready_allowed = c.obs.slots.iter().any(|s| s.ready_replicas > 0 && View { spec: &c.spec, d: &out.decision }.allowed(&s.variant, &s.pool));
        if c.obs.arrival_rate_rps > 0.0 && ready_allowed {
            let kept: u32 = out.decision.targets.iter().map(|t| t.replicas.min(c.obs.slot(&t.variant, &t.pool).map(|s| s.ready_replicas).unwrap_or(0))).sum();
            prop_assert!(kept >= 1, "no ready replica kept: {:?}", out);
        }
    }
}
