//! The arbiter's promises, over any proposals and any cluster state (proptest): it never
//! over-commits a pool, never preempts a workload for an equal or lower priority, never
//! leaves a workload with traffic below its guaranteed share while lower priorities hold
//! GPUs it could use, never leaves asked-for GPUs idle, and grants nothing beyond what was
//! proposed except a substitute within the slot's maximum.

use llmos::arbiter::{arbitrate, Allocation, ArbiterEvent, Claim, PoolCapacity, SlotClaim};
use proptest::prelude::*;

const POOLS: [&str; 3] = ["p0", "p1", "p2"];

fn slot_strategy(pools: usize) -> impl Strategy<Value = SlotClaim> {
    (0..=pools, prop::sample::select(vec![1u32, 2, 4]), 0u32..7, 0u32..9, 0u32..4, prop_oneof![Just(0.0), 0.5f64..8.0])
        .prop_map(move |(p, g, held, proposed, extra, rps)| SlotClaim {
            variant: format!("v{g}"),
            // One index past the shared pools is a private pool the arbiter does not know.
            pool: if p < pools { POOLS[p].to_string() } else { "private".to_string() },
            gpus_per_replica: g,
            held,
            proposed,
            max: proposed + extra,
            replica_rps: rps,
        })
}

fn case() -> impl Strategy<Value = (Vec<PoolCapacity>, Vec<Claim>)> {
    (1usize..=3).prop_flat_map(|n_pools| {
        let pools = prop::collection::vec(0u32..17, n_pools).prop_map(|caps| {
            caps.into_iter()
                .enumerate()
                .map(|(i, c)| PoolCapacity { name: POOLS[i].to_string(), capacity_gpus: c })
                .collect::<Vec<_>>()
        });
        let claim = (0i32..4, 0u32..9, any::<bool>(), prop::collection::vec(slot_strategy(n_pools), 1..4));
        let claims = prop::collection::vec(claim, 1..6).prop_map(|cs| {
            cs.into_iter()
                .enumerate()
                .map(|(i, (priority, guaranteed_gpus, has_traffic, slots))| Claim {
                    workload: format!("w{i}"),
                    priority,
                    guaranteed_gpus,
                    has_traffic,
                    slots,
                })
                .collect::<Vec<_>>()
        });
        (pools, claims)
    })
}

/// GPUs per (workload, pool): what it kept of its holdings (`min(held, proposed)`) and what
/// it was granted.
fn per_pool(pools: &[PoolCapacity], claims: &[Claim], a: &Allocation) -> (Vec<Vec<u64>>, Vec<Vec<u64>>) {
    let mut kept = vec![vec![0u64; pools.len()]; claims.len()];
    let mut granted = kept.clone();
    for (w, c) in claims.iter().enumerate() {
        for (s, sl) in c.slots.iter().enumerate() {
            if let Some(p) = pools.iter().position(|p| p.name == sl.pool) {
                let g = u64::from(sl.gpus_per_replica.max(1));
                kept[w][p] += u64::from(sl.held.min(sl.proposed)) * g;
                granted[w][p] += u64::from(a.granted[w][s]) * g;
            }
        }
    }
    (kept, granted)
}

/// The GPUs a claim's guarantee protects: `min(guarantee, demand over shared pools)` while
/// it has traffic.
fn share(pools: &[PoolCapacity], c: &Claim) -> u64 {
    let demand: u64 = c
        .slots
        .iter()
        .filter(|x| pools.iter().any(|p| p.name == x.pool))
        .map(|x| u64::from(x.proposed) * u64::from(x.gpus_per_replica.max(1)))
        .sum();
    if c.has_traffic {
        demand.min(u64::from(c.guaranteed_gpus))
    } else {
        0
    }
}

fn substituted_into(a: &Allocation, w: usize, t: usize) -> bool {
    a.events
        .iter()
        .any(|e| matches!(e, ArbiterEvent::Substituted { workload, to_slot, .. } if *workload == w && *to_slot == t))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_arbiter_keeps_its_promises((pools, claims) in case()) {
        let a = arbitrate(&pools, &claims);
        prop_assert_eq!(&a, &arbitrate(&pools, &claims), "deterministic");
        let (kept, granted) = per_pool(&pools, &claims, &a);

        // 1. Capacity, and the reported allocation is the sum of the grants.
        for (p, pool) in pools.iter().enumerate() {
            let sum: u64 = granted.iter().map(|g| g[p]).sum();
            prop_assert_eq!(sum, u64::from(a.pool_allocated[p]));
            prop_assert!(sum <= u64::from(pool.capacity_gpus), "pool {} over-committed: {} > {}", pool.name, sum, pool.capacity_gpus);
        }

        // Grants: private slots as proposed; shared slots at most the proposal, or the
        // slot's maximum when it stood in for another slot.
        for (w, c) in claims.iter().enumerate() {
            for (s, sl) in c.slots.iter().enumerate() {
                let g = a.granted[w][s];
                if !pools.iter().any(|p| p.name == sl.pool) {
                    prop_assert_eq!(g, sl.proposed);
                } else if substituted_into(&a, w, s) {
                    prop_assert!(g <= sl.max.max(sl.proposed));
                } else {
                    prop_assert!(g <= sl.proposed, "{}/{} granted {} > proposed {}", c.workload, s, g, sl.proposed);
                }
            }
        }

        // 2. Priority: every GPU a workload kept and lost is a preemption event; one with a
        // beneficiary names a strictly higher priority; one without happens only in a pool
        // that held more than its capacity.
        for (v, cv) in claims.iter().enumerate() {
            for (p, pool) in pools.iter().enumerate() {
                let overcommitted = kept.iter().map(|k| k[p]).sum::<u64>() > u64::from(pool.capacity_gpus);
                let mut recorded = 0u64;
                for e in &a.events {
                    let ArbiterEvent::Preempted { workload, slot, replicas, by } = *e else { continue };
                    let sl = &claims[workload].slots[slot];
                    if workload != v || sl.pool != pool.name {
                        continue;
                    }
                    recorded += u64::from(replicas) * u64::from(sl.gpus_per_replica.max(1));
                    match by {
                        Some(u) => prop_assert!(claims[u].priority > cv.priority, "{} preempted for {} of priority {} <= {}", cv.workload, claims[u].workload, claims[u].priority, cv.priority),
                        None => prop_assert!(overcommitted, "{} preempted in {} for nobody", cv.workload, pool.name),
                    }
                }
                prop_assert!(kept[v][p].saturating_sub(granted[v][p]) <= recorded, "{} lost GPUs in {} without a preemption event", cv.workload, pool.name);
            }
        }

        let free: Vec<u64> = pools.iter().enumerate().map(|(p, pool)| u64::from(pool.capacity_gpus) - u64::from(a.pool_allocated[p])).collect();
        for e in &a.events {
            let ArbiterEvent::Refused { workload: w, slot: s, pool_free_gpus, .. } = *e else { continue };
            let sl = &claims[w].slots[s];
            let p = pools.iter().position(|p| p.name == sl.pool).expect("refusals are of shared pools");
            let g = u64::from(sl.gpus_per_replica.max(1));
            prop_assert_eq!(u64::from(pool_free_gpus), free[p]);
            // 4. Work conservation: a refused replica did not fit in what is free.
            prop_assert!(free[p] < g, "{} refused in {} with {} GPUs free", claims[w].workload, sl.pool, free[p]);
            // 3. Guarantees: below its share only when lower priorities hold too little
            // in the pool to make room for one replica.
            let c = &claims[w];
            let share = share(&pools, c);
            let held: u64 = granted[w].iter().sum();
            if held < share {
                let lower: u64 = claims.iter().enumerate().filter(|(_, u)| u.priority < c.priority).map(|(u, _)| granted[u][p]).sum();
                prop_assert!(free[p] + lower < g, "{} below its guarantee ({} < {}) while lower priorities hold {} in {}", c.workload, held, share, lower, sl.pool);
            }
        }
    }
}

#[test]
fn three_workloads_one_pool_a_burst_and_back() {
    // The story of the end-to-end test, in the arbiter alone: one 8-GPU pool, priorities
    // 10 / 5 / 0, the middle one guaranteed three GPUs; the high one bursts, takes GPUs
    // from the low one (not the middle one's guaranteed three), and gives them back.
    let pools = [PoolCapacity { name: "a100".into(), capacity_gpus: 8 }];
    let claim = |name: &str, prio, held, proposed| Claim {
        workload: name.into(),
        priority: prio,
        guaranteed_gpus: if name == "mid" { 3 } else { 0 },
        has_traffic: true,
        slots: vec![SlotClaim {
            variant: "8b".into(),
            pool: "a100".into(),
            gpus_per_replica: 1,
            held,
            proposed,
            max: 16,
            replica_rps: 0.0,
        }],
    };
    let calm = [claim("high", 10, 2, 2), claim("mid", 5, 3, 3), claim("low", 0, 3, 3)];
    assert_eq!(arbitrate(&pools, &calm).granted, vec![vec![2], vec![3], vec![3]]);
    let burst = [claim("high", 10, 2, 6), claim("mid", 5, 3, 3), claim("low", 0, 3, 3)];
    let a = arbitrate(&pools, &burst);
    assert_eq!(a.granted, vec![vec![5], vec![3], vec![0]], "low gives all it has; mid keeps its three");
    let after = [claim("high", 10, 5, 2), claim("mid", 5, 3, 3), claim("low", 0, 0, 3)];
    assert_eq!(arbitrate(&pools, &after).granted, vec![vec![2], vec![3], vec![3]]);
}
