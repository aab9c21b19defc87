//! The pure steps between the cluster's state and the replicas to apply.
//!
//! - [`build_observation`]: the cluster part of an [`Observation`] (replicas per slot from
//!   the Deployments, free GPUs from pool capacities, cost from pool prices); the metrics
//!   part is merged by [`crate::metrics::MetricsSnapshot::fill`].
//! - [`initial_targets`]: replicas of slots that have no Deployment yet: each variant's
//!   `minReplicas` placed on its pools (cheapest first, or spread), then the shield.
//! - [`make_before_break`]: a variant switch starts the new variant before the old one is
//!   drained, and drains the old one only as the new one's replicas become ready, so the
//!   ready replicas never fall below the fewer of those ready before and those wanted.
//! - [`changes`]: what changed per slot, for Events (`ScaledUp`, `ScaledDown`, `Placed`).
//!
//! Nothing here talks to the API server or reads a clock.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::PlacementKind;
use crate::policy::observation::Decision;
use crate::policy::observation::Observation;
use crate::policy::shield::{Shield, ShieldRule};

use super::desired::{existing_replicas, ready_replicas, spec_replicas, variant_pools, Slot};

pub use crate::observe::{build_observation, SlotState};

impl SlotState {
    /// The state of a Deployment.
    pub fn of(d: &Deployment) -> Self {
        SlotState { desired: spec_replicas(d), ready: ready_replicas(d), existing: existing_replicas(d) }
    }
}

/// Initial replicas of every slot: each variant's `minReplicas`, placed on its pools by
/// the spec's placement (`cheapest`: all on the cheapest pool per replica-hour that has
/// room; `spread`: round-robin over the pools), then clamped by the shield (which also
/// raises the total to `limits.minTotalReplicas`).
pub fn initial_targets(spec: &LLMWorkloadSpec) -> BTreeMap<Slot, u32> {
    let mut out: BTreeMap<Slot, u32> = BTreeMap::new();
    let mut free: BTreeMap<&str, Option<u32>> =
        spec.gpu_pools.iter().map(|p| (p.name.as_str(), p.capacity_gpus)).collect();
    for v in &spec.variants {
        let mut pools = variant_pools(spec, v);
        for p in &pools {
            out.insert(Slot::new(&v.name, &p.name), 0);
        }
        if pools.is_empty() {
            continue;
        }
        if spec.policy.placement == PlacementKind::Cheapest {
            pools.sort_by(|a, b| a.price_per_gpu_hour.total_cmp(&b.price_per_gpu_hour));
        }
        for i in 0..v.min_replicas as usize {
            let fits = |name: &str, free: &BTreeMap<&str, Option<u32>>| {
                free.get(name).copied().flatten().is_none_or(|f| f >= v.gpus_per_replica)
            };
            let pick = match spec.policy.placement {
                PlacementKind::Cheapest => pools.iter().find(|p| fits(&p.name, &free)).unwrap_or(&pools[0]),
                PlacementKind::Spread => {
                    let n = pools.len();
                    (0..n).map(|k| pools[(i + k) % n]).find(|p| fits(&p.name, &free)).unwrap_or(pools[i % n])
                }
            };
            if let Some(Some(f)) = free.get_mut(pick.name.as_str()) {
                *f = f.saturating_sub(v.gpus_per_replica);
            }
            *out.entry(Slot::new(&v.name, &pick.name)).or_default() += 1;
        }
    }
    // The shield raises the total to its minimum and enforces capacities and maxima.
    let obs = build_observation(spec, &out, &BTreeMap::new(), 0.0, None);
    let mut decision = Decision::default();
    for (slot, r) in &out {
        decision.set(&slot.variant, &slot.pool, *r);
    }
    let shield = crate::policy::shield::Shield::new(spec);
    let clamped = shield.clamp(&obs, &decision).decision;
    for t in clamped.targets {
        // The shield also names slots a variant may not use (at 0); keep only real slots.
        if let Some(r) = out.get_mut(&Slot::new(t.variant, t.pool)) {
            *r = t.replicas;
        }
    }
    out
}

/// Result of [`make_before_break`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequenced {
    /// Replicas to apply now.
    pub targets: BTreeMap<Slot, u32>,
    /// Variants being scaled up whose wanted replicas are not all ready yet (named when
    /// another variant's scale-down is held for them).
    pub starting_variants: Vec<String>,
    /// Variants whose scale-down is held, wholly or in part, until the starting variants'
    /// replicas are ready.
    pub held_variants: Vec<String>,
}

/// Orders a variant switch so that serving capacity never dips: while some variant wants
/// more replicas than it has ready and another variant is scaled down, the shrinking
/// variants keep enough ready replicas that
/// - the ready replicas after this tick are at least the fewer of those ready now and
///   those the targets want, and
/// - the shrinking variants' ready replicas left are at least their share in proportion
///   to the growing variants' wanted replicas not ready yet (all of them while none is),
///   since a replica of one variant does not serve the load of one of another.
///
/// The old variant is thus drained as the new one's replicas become ready, not at the
/// first one.
///
/// Only ready replicas are kept: a shrinking slot's replicas that are not ready are let
/// go at once (a ReplicaSet removes those first), and a shrinking variant never keeps
/// more than its Deployments ask for now.
///
/// A variant counts as growing from what the Deployments report, not from whether this
/// tick raises it: at every tick after the one that started it (the same leader's, or a
/// new leader's after a handover), its Deployment already asks for the replicas the
/// targets want, and the old variant must still wait for them to be ready.
pub fn make_before_break(
    targets: &BTreeMap<Slot, u32>,
    current: &BTreeMap<Slot, u32>,
    states: &BTreeMap<Slot, SlotState>,
) -> Sequenced {
    let by_variant = |m: &BTreeMap<Slot, u32>| {
        let mut out: BTreeMap<String, u32> = BTreeMap::new();
        for (s, r) in m {
            *out.entry(s.variant.clone()).or_default() += r;
        }
        out
    };
    let ready_of = |s: &Slot| states.get(s).map_or(0, |st| st.ready);
    let want = by_variant(targets);
    let have = by_variant(current);
    let mut ready: BTreeMap<String, u32> = BTreeMap::new();
    for (s, st) in states {
        *ready.entry(s.variant.clone()).or_default() += st.ready;
    }
    let growing: Vec<String> =
        want.iter().filter(|(v, w)| **w > ready.get(*v).copied().unwrap_or(0)).map(|(v, _)| v.clone()).collect();
    let shrinking: Vec<String> = want
        .iter()
        .filter(|(v, w)| **w < have.get(*v).copied().unwrap_or(0) && !growing.contains(v))
        .map(|(v, _)| v.clone())
        .collect();
    let mut out = targets.clone();
    if growing.is_empty() || shrinking.is_empty() {
        return Sequenced { targets: out, ..Default::default() };
    }
    // The serving floor, and what serves after this tick outside the shrinking variants.
    let ready_now: u32 = ready.values().sum();
    let floor = ready_now.min(want.values().sum());
    let serving_others: u32 =
        out.iter().filter(|(s, _)| !shrinking.contains(&s.variant)).map(|(s, r)| ready_of(s).min(*r)).sum();
    // Replicas of different variants serve different loads, so the shrinking variants
    // also keep their ready replicas in proportion to the growing variants' replicas
    // not ready yet (all of them while none is ready).
    let (mut missing, mut wanted) = (0u64, 0u64);
    for v in &growing {
        let (w, r) = (want[v], ready.get(v).copied().unwrap_or(0));
        (missing, wanted) = (missing + u64::from(w.saturating_sub(r)), wanted + u64::from(w));
    }
    let shrinking_ready: u64 = out
        .keys()
        .filter(|s| shrinking.contains(&s.variant))
        .map(|s| u64::from(ready_of(s).min(current.get(s).copied().unwrap_or(0))))
        .sum();
    let proportional = (shrinking_ready * missing).div_ceil(wanted.max(1)) as u32;
    let mut need = floor.saturating_sub(serving_others).max(proportional);
    let mut held = Vec::new();
    for (slot, r) in out.iter_mut().filter(|(s, _)| shrinking.contains(&s.variant)) {
        let cur = current.get(slot).copied().unwrap_or(0);
        let keep = ready_of(slot).min(cur).min(need);
        if keep > *r {
            *r = keep;
            if !held.contains(&slot.variant) {
                held.push(slot.variant.clone());
            }
        }
        need = need.saturating_sub(ready_of(slot).min(*r));
    }
    Sequenced {
        targets: out,
        starting_variants: if held.is_empty() { Vec::new() } else { growing },
        held_variants: held,
    }
}

/// How one slot's replicas changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replicas placed on a slot that had none (`Placed`).
    Placed {
        /// The slot.
        slot: Slot,
        /// New replicas.
        to: u32,
    },
    /// More replicas (`ScaledUp`).
    Up {
        /// The slot.
        slot: Slot,
        /// Old replicas.
        from: u32,
        /// New replicas.
        to: u32,
    },
    /// Fewer replicas (`ScaledDown`).
    Down {
        /// The slot.
        slot: Slot,
        /// Old replicas.
        from: u32,
        /// New replicas.
        to: u32,
    },
}

/// The per-slot changes from `current` to `targets` (slots absent from `current` count as 0).
pub fn changes(current: &BTreeMap<Slot, u32>, targets: &BTreeMap<Slot, u32>) -> Vec<Change> {
    let mut out = Vec::new();
    for (slot, &to) in targets {
        let from = current.get(slot).copied().unwrap_or(0);
        if to == from {
            continue;
        }
        out.push(if from == 0 {
            Change::Placed { slot: slot.clone(), to }
        } else if to > from {
            Change::Up { slot: slot.clone(), from, to }
        } else {
            Change::Down { slot: slot.clone(), from, to }
        });
    }
    out
}

/// Converts a decision into a per-slot map over the spec's slots; slots the decision
/// does not name keep their `current` count.
pub fn decision_targets(
    spec: &LLMWorkloadSpec,
    decision: &Decision,
    current: &BTreeMap<Slot, u32>,
) -> BTreeMap<Slot, u32> {
    super::desired::slots(spec)
        .into_iter()
        .map(|s| {
            let r = decision.replicas(&s.variant, &s.pool).unwrap_or_else(|| current.get(&s).copied().unwrap_or(0));
            (s, r)
        })
        .collect()
}

/// The fleet raised to the shield's minima (`VariantMinReplicas`, `TotalMinReplicas`)
/// when some slot is below them, for a tick without complete metrics; `None` otherwise.
/// Nothing else of the shield's clamp is taken: without metrics nothing is lowered.
pub fn floor_without_metrics(shield: &Shield, obs: &Observation) -> Option<Decision> {
    let mut hold = Decision::new("hold: metrics unavailable");
    for s in &obs.slots {
        hold.set(&s.variant, &s.pool, s.desired_replicas);
    }
    let outcome = shield.clamp(obs, &hold);
    let raised = outcome.overrides.iter().any(|o| {
        matches!(o.rule, ShieldRule::VariantMinReplicas | ShieldRule::TotalMinReplicas) && o.applied > o.asked
    });
    if !raised {
        return None;
    }
    let mut floor = Decision::new("the spec's minimum replicas, held without metrics");
    for s in &obs.slots {
        let clamped = outcome.decision.targets.iter().find(|t| t.variant == s.variant && t.pool == s.pool);
        floor.set(&s.variant, &s.pool, clamped.map_or(s.desired_replicas, |t| t.replicas.max(s.desired_replicas)));
    }
    Some(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> LLMWorkloadSpec {
        serde_json::from_value(json).expect("valid spec")
    }

    fn two_variants() -> LLMWorkloadSpec {
        spec(serde_json::json!({
            "variants": [
                {"name": "small", "model": "m7", "image": "i", "minReplicas": 1, "pools": ["l4", "a100"]},
                {"name": "large", "model": "m70", "image": "i", "gpusPerReplica": 4, "pools": ["a100"]}
            ],
            "gpuPools": [
                {"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 3.0, "capacityGpus": 8},
                {"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8}
            ],
        }))
    }

    #[test]
    fn initial_targets_place_minimum_on_the_cheapest_pool() {
        let t = initial_targets(&two_variants());
        assert_eq!(t.get(&Slot::new("small", "l4")), Some(&1));
        assert_eq!(t.get(&Slot::new("small", "a100")), Some(&0));
        assert_eq!(t.get(&Slot::new("large", "a100")), Some(&0));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn observation_counts_cost_and_free_gpus() {
        let s = two_variants();
        let current = BTreeMap::from([
            (Slot::new("small", "l4"), 2),
            (Slot::new("small", "a100"), 0),
            (Slot::new("large", "a100"), 1),
        ]);
        let states = BTreeMap::from([(Slot::new("large", "a100"), SlotState { desired: 1, ready: 1, existing: 1 })]);
        let obs = build_observation(&s, &current, &states, 10.0, None);
        assert_eq!(obs.slots.len(), 3);
        assert!((obs.cost_rate_usd_per_hour - (2.0 * 0.8 + 4.0 * 3.0)).abs() < 1e-9);
        let a100 = obs.pools.iter().find(|p| p.name == "a100").expect("pool");
        assert_eq!(a100.free_gpus, Some(4));
        assert_eq!(obs.slot("large", "a100").map(|s| s.ready_replicas), Some(1));
    }

    #[test]
    fn switch_holds_old_variant_until_new_is_ready() {
        let small = Slot::new("small", "l4");
        let large = Slot::new("large", "a100");
        let current = BTreeMap::from([(small.clone(), 2), (large.clone(), 0)]);
        let targets = BTreeMap::from([(small.clone(), 0), (large.clone(), 1)]);
        let mut states = BTreeMap::from([(small.clone(), SlotState { desired: 2, ready: 2, existing: 2 })]);
        let s = make_before_break(&targets, &current, &states);
        assert_eq!(s.targets[&small], 2, "old variant keeps its replicas");
        assert_eq!(s.targets[&large], 1, "new variant starts");
        assert_eq!(s.held_variants, vec!["small".to_string()]);
        // The next tick (or a new leader's first): the new variant's Deployment already
        // asks for its replica, none is ready yet; the old variant still waits.
        states.insert(large.clone(), SlotState { desired: 1, ready: 0, existing: 1 });
        let current = BTreeMap::from([(small.clone(), 2), (large.clone(), 1)]);
        let s = make_before_break(&targets, &current, &states);
        assert_eq!(s.targets[&small], 2, "old variant still serving while the new one is not ready");
        assert_eq!(s.held_variants, vec!["small".to_string()]);
        states.insert(large.clone(), SlotState { desired: 1, ready: 1, existing: 1 });
        let s = make_before_break(&targets, &current, &states);
        assert_eq!(s.targets[&small], 0, "drained once the new variant is ready");
        assert!(s.held_variants.is_empty());
    }

    /// What would serve after applying `targets`: per slot, its ready replicas up to its
    /// target (a ReplicaSet scaled down removes replicas that are not ready first).
    fn serving_after(targets: &BTreeMap<Slot, u32>, states: &BTreeMap<Slot, SlotState>) -> u32 {
        targets.iter().map(|(s, r)| states.get(s).map_or(0, |st| st.ready).min(*r)).sum()
    }

    #[test]
    fn switch_drains_the_old_variant_one_replica_per_new_ready_replica() {
        let small = Slot::new("small", "l4");
        let large = Slot::new("large", "a100");
        let targets = BTreeMap::from([(small.clone(), 0), (large.clone(), 2)]);
        let mut current = BTreeMap::from([(small.clone(), 2), (large.clone(), 2)]);
        let mut fewest = u32::MAX;
        for (new_ready, old_left) in [(0, 2), (1, 1), (2, 0)] {
            let states = BTreeMap::from([
                (small.clone(), SlotState { desired: current[&small], ready: current[&small], existing: 2 }),
                (large.clone(), SlotState { desired: 2, ready: new_ready, existing: 2 }),
            ]);
            let s = make_before_break(&targets, &current, &states);
            assert_eq!(s.targets[&small], old_left, "old replicas left with {new_ready} new ones ready");
            assert_eq!(s.held_variants.is_empty(), old_left == 0);
            fewest = fewest.min(serving_after(&s.targets, &states));
            current.insert(small.clone(), s.targets[&small]);
        }
        assert_eq!(fewest, 2, "two replicas serve at every step of the switch");
    }

    #[test]
    fn replicas_of_the_old_variant_that_are_not_ready_are_let_go() {
        let small = Slot::new("small", "l4");
        let large = Slot::new("large", "a100");
        let targets = BTreeMap::from([(small.clone(), 0), (large.clone(), 2)]);
        let current = BTreeMap::from([(small.clone(), 3), (large.clone(), 2)]);
        let states = BTreeMap::from([
            (small.clone(), SlotState { desired: 3, ready: 2, existing: 3 }),
            (large.clone(), SlotState { desired: 2, ready: 0, existing: 2 }),
        ]);
        let s = make_before_break(&targets, &current, &states);
        assert_eq!(s.targets[&small], 2, "the two ready old replicas stay, the third goes");
        assert_eq!(s.starting_variants, vec!["large".to_string()]);
    }

    #[test]
    fn a_scale_down_with_nothing_starting_is_not_held() {
        let a = Slot::new("small", "l4");
        let b = Slot::new("large", "a100");
        let targets = BTreeMap::from([(a.clone(), 1), (b.clone(), 1)]);
        let current = BTreeMap::from([(a.clone(), 3), (b.clone(), 1)]);
        let states = BTreeMap::from([
            (a.clone(), SlotState { desired: 3, ready: 3, existing: 3 }),
            (b.clone(), SlotState { desired: 1, ready: 1, existing: 1 }),
        ]);
        let s = make_before_break(&targets, &current, &states);
        assert_eq!(s.targets, targets);
        assert!(s.held_variants.is_empty() && s.starting_variants.is_empty());
    }

    proptest::proptest! {
        /// Whatever the fleet, a tick that grows one variant and shrinks another leaves
        /// at least the fewer of the replicas ready now and those wanted serving, never
        /// raises a slot above what its Deployment asks for now, never lowers one below
        /// its target, and leaves a fleet with nothing growing as the targets say.
        #[test]
        fn serving_never_falls_below_the_floor(
            slots in proptest::collection::vec((0u32..5, 0u32..5, 0u32..5), 4),
        ) {
            let names = [("a", "p"), ("a", "q"), ("b", "p"), ("c", "q")];
            let (mut targets, mut current, mut states) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
            for ((v, p), (want, cur, ready)) in names.iter().zip(&slots) {
                let slot = Slot::new(*v, *p);
                targets.insert(slot.clone(), *want);
                current.insert(slot.clone(), *cur);
                states.insert(slot, SlotState { desired: *cur, ready: (*ready).min(*cur), existing: *cur });
            }
            let s = make_before_break(&targets, &current, &states);
            let ready_now: u32 = states.values().map(|st| st.ready).sum();
            let floor = ready_now.min(targets.values().sum());
            let after = serving_after(&s.targets, &states);
            for (slot, r) in &s.targets {
                proptest::prop_assert!(*r >= targets[slot]);
                proptest::prop_assert!(*r == targets[slot] || *r <= current[slot]);
            }
            if s.held_variants.is_empty() {
                proptest::prop_assert_eq!(&s.targets, &targets);
            }
            // Where the rule applies (a variant grows, another shrinks), the floor holds
            // unless every shrinking slot already keeps all its ready replicas.
            let by = |m: &BTreeMap<Slot, u32>, v: &str| -> u32 { m.iter().filter(|(s, _)| s.variant == v).map(|(_, r)| *r).sum() };
            let ready_v = |v: &str| -> u32 { states.iter().filter(|(s, _)| s.variant == v).map(|(_, st)| st.ready).sum() };
            let grows = ["a", "b", "c"].iter().any(|v| by(&targets, v) > ready_v(v));
            let shrinking: Vec<&str> =
                ["a", "b", "c"].into_iter().filter(|v| by(&targets, v) < by(&current, v) && by(&targets, v) <= ready_v(v)).collect();
            if grows && !shrinking.is_empty() {
                let all_kept = s
                    .targets
                    .iter()
                    .filter(|(slot, _)| shrinking.contains(&slot.variant.as_str()))
                    .all(|(slot, r)| *r >= states[slot].ready);
                proptest::prop_assert!(after >= floor || all_kept, "serving {} < floor {}: {:?}", after, floor, s);
            }
        }
    }

    #[test]
    fn changes_classify_placed_up_down() {
        let a = Slot::new("v", "a");
        let b = Slot::new("v", "b");
        let c = Slot::new("v", "c");
        let cur = BTreeMap::from([(a.clone(), 1), (b.clone(), 3), (c.clone(), 0)]);
        let tgt = BTreeMap::from([(a.clone(), 2), (b.clone(), 1), (c.clone(), 2)]);
        let ch = changes(&cur, &tgt);
        assert_eq!(
            ch,
            vec![
                Change::Up { slot: a, from: 1, to: 2 },
                Change::Down { slot: b, from: 3, to: 1 },
                Change::Placed { slot: c, to: 2 }
            ]
        );
    }
}
