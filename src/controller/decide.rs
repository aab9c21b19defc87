//! The pure steps between the cluster's state and the replicas to apply.
//!
//! - [`build_observation`]: the cluster part of an [`Observation`] (replicas per slot from
//!   the Deployments, free GPUs from pool capacities, cost from pool prices); the metrics
//!   part is merged by [`crate::metrics::MetricsSnapshot::fill`].
//! - [`initial_targets`]: replicas of slots that have no Deployment yet: each variant's
//!   `minReplicas` placed on its pools (cheapest first, or spread), then the shield.
//! - [`make_before_break`]: a variant switch starts the new variant before the old one is
//!   drained: while a variant that is being scaled up from nothing has no ready replica,
//!   no other variant is scaled down.
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
    /// Variants that are being started from nothing and are not ready yet.
    pub starting_variants: Vec<String>,
    /// Variants whose scale-down is held until a starting variant is ready.
    pub held_variants: Vec<String>,
}

/// Orders a variant switch: while the targets want replicas of a variant that has no
/// ready replica yet and scale another variant down, the scale-down waits (the old
/// variant keeps its current replicas) until the new variant has a ready replica.
///
/// A variant counts as starting from what the Deployments report, not from whether this
/// tick raises it: at every tick after the one that started it (the same leader's, or a
/// new leader's after a handover), its Deployment already asks for the replicas the
/// targets want, and the old variant must still wait for one of them to be ready.
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
    let want = by_variant(targets);
    let have = by_variant(current);
    let mut ready: BTreeMap<String, u32> = BTreeMap::new();
    for (s, st) in states {
        *ready.entry(s.variant.clone()).or_default() += st.ready;
    }
    let starting: Vec<String> = want
        .iter()
        .filter(|(v, w)| **w > 0 && ready.get(*v).copied().unwrap_or(0) == 0)
        .map(|(v, _)| v.clone())
        .collect();
    let shrinking: Vec<String> = want
        .iter()
        .filter(|(v, w)| **w < have.get(*v).copied().unwrap_or(0) && !starting.contains(v))
        .map(|(v, _)| v.clone())
        .collect();
    let mut out = targets.clone();
    let mut held = Vec::new();
    if !starting.is_empty() {
        for v in &shrinking {
            for (slot, r) in out.iter_mut() {
                if &slot.variant == v {
                    let cur = current.get(slot).copied().unwrap_or(0);
                    if *r < cur {
                        *r = cur;
                    }
                }
            }
            held.push(v.clone());
        }
    }
    Sequenced {
        targets: out,
        starting_variants: if held.is_empty() { Vec::new() } else { starting },
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
