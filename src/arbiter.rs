//! The arbiter: grants GPUs of shared pools to the workloads that want them.
//!
//! Each control tick every workload's policy proposes replicas per slot (after its own
//! shield); the arbiter turns all proposals into grants that never over-commit a pool.
//! It is a pure function of the proposals and the pools ([`arbitrate`]), so the operator
//! and the twin run the same code, and property tests (`tests/arbiter.rs`) check its
//! promises over any input:
//!
//! 1. **Capacity.** The GPUs granted in a pool never exceed its capacity, even when the
//!    workloads held more before (a pool that shrank): then the lowest priorities give
//!    back first.
//! 2. **Priority.** A workload loses GPUs it held (is preempted) only to a workload of
//!    strictly higher priority, or because the pool shrank; never to an equal or lower
//!    priority.
//! 3. **Guarantees.** A workload with traffic and a guaranteed share is served up to
//!    `min(share, demand)` before anything else at its priority, taking from strictly lower
//!    priorities when the pool is full (their guarantees included); its guaranteed GPUs are
//!    never taken by another workload's non-guaranteed demand. So it ends below its share
//!    only when no lower-priority workload holds GPUs it could use.
//! 4. **Work conservation.** No GPU a workload asked for stays idle: when a request is
//!    refused, its pool has fewer free GPUs than one replica of it needs.
//!
//! How it grants, per tick:
//! - every workload keeps what it holds up to what it now proposes (scaling down is
//!   always granted, and nobody loses replicas to a workload of the same priority);
//! - guaranteed shares, highest priority first;
//! - the rest of the demand, priority level by priority level, highest first; within a
//!   level **max-min fair on GPUs**: the next replica goes to the workload of the level
//!   that holds the fewest GPUs over the shared pools (ties: the order of the claims);
//! - a last pass, highest level first, hands out what is still free (a preempted replica
//!   can free more than the replica it was taken for);
//! - a replica that does not fit in its pool goes, in this order, to free GPUs of the
//!   same variant on another pool of the workload, to free GPUs of a smaller variant of
//!   the workload (as many replicas as serve the same requests per second, when both
//!   capacities are known), and only then to GPUs preempted from strictly lower
//!   priorities (the lowest first, then the one holding most above its guarantee), and
//!   only when the preemption frees enough for the replica.
//!
//! Slots on pools the arbiter does not know (a workload's private inline pool) are
//! granted as proposed.

use serde::Serialize;

/// A shared GPU pool and how many GPUs the workloads may hold in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolCapacity {
    /// Pool name (the `GPUPool`'s name; what [`SlotClaim::pool`] refers to).
    pub name: String,
    /// GPUs that may be granted over all workloads.
    pub capacity_gpus: u32,
}

/// What one workload asks for in one of its (variant, pool) slots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotClaim {
    /// Variant name.
    pub variant: String,
    /// Shared pool name (a [`PoolCapacity::name`]); any other name is not arbitrated.
    pub pool: String,
    /// GPUs one replica holds (its tensor-parallel degree, at least 1).
    pub gpus_per_replica: u32,
    /// Replicas the workload holds now (its current desired count).
    pub held: u32,
    /// Replicas the workload's policy (after its shield) asks for.
    pub proposed: u32,
    /// The most replicas this slot may have (the workload's own limits); a substitution
    /// never grants beyond it.
    pub max: u32,
    /// Requests per second one replica serves at the SLO, if known (0 = unknown); used to
    /// size a substitution by a different variant.
    pub replica_rps: f64,
}

/// One workload's proposal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claim {
    /// Workload name (for events), e.g. `namespace/name`.
    pub workload: String,
    /// Higher wins GPUs from lower when a pool is short.
    pub priority: i32,
    /// GPUs over the shared pools that lower priorities cannot keep from this workload
    /// while it has traffic.
    pub guaranteed_gpus: u32,
    /// Whether the workload has traffic now (a guarantee holds only then).
    pub has_traffic: bool,
    /// Its slots, in its order of preference (the first is where a replica goes first).
    pub slots: Vec<SlotClaim>,
}

/// What the arbiter did that a human should know, per workload and slot (indices into
/// the claims and their slots).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ArbiterEvent {
    /// The slot was granted more replicas than it held.
    Granted {
        /// Workload index.
        workload: usize,
        /// Slot index.
        slot: usize,
        /// Replicas held before.
        from: u32,
        /// Replicas granted.
        to: u32,
    },
    /// The slot got fewer replicas than proposed (after substitutions).
    Refused {
        /// Workload index.
        workload: usize,
        /// Slot index.
        slot: usize,
        /// Replicas proposed.
        asked: u32,
        /// Replicas granted.
        granted: u32,
        /// Free GPUs left in the slot's pool.
        pool_free_gpus: u32,
    },
    /// Replicas of the slot were taken back.
    Preempted {
        /// Workload index (the one that lost replicas).
        workload: usize,
        /// Slot index.
        slot: usize,
        /// Replicas taken.
        replicas: u32,
        /// The workload they went to; `None` when the pool shrank below what was held.
        by: Option<usize>,
    },
    /// Replicas that did not fit in one slot were granted in another slot of the workload
    /// (another pool, or a smaller variant).
    Substituted {
        /// Workload index.
        workload: usize,
        /// The slot that could not grow.
        from_slot: usize,
        /// The slot that grew instead.
        to_slot: usize,
        /// Replicas of `from_slot` that were not granted.
        missing: u32,
        /// Replicas of `to_slot` granted for them.
        granted: u32,
    },
}

/// The arbiter's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Allocation {
    /// Granted replicas per workload per slot (the claims' order).
    pub granted: Vec<Vec<u32>>,
    /// GPUs granted per pool (the pools' order).
    pub pool_allocated: Vec<u32>,
    /// What happened, per workload and slot, in a stable order.
    pub events: Vec<ArbiterEvent>,
}

impl Allocation {
    /// GPUs of `pool` (index) left free after the grants.
    pub fn pool_free(&self, pools: &[PoolCapacity], pool: usize) -> u32 {
        pools[pool].capacity_gpus.saturating_sub(self.pool_allocated[pool])
    }
}

/// How a victim is chosen, smallest first: cuts into a guarantee, priority, GPUs held
/// (most first), claim index (last first).
type VictimKey = (bool, i32, std::cmp::Reverse<u64>, std::cmp::Reverse<usize>);

/// Working state of one arbitration.
struct State<'a> {
    claims: &'a [Claim],
    /// Pool index per workload per slot (`None`: not arbitrated).
    pool_of: Vec<Vec<Option<usize>>>,
    /// Replicas granted so far per workload per slot.
    grant: Vec<Vec<u32>>,
    /// Free GPUs per pool.
    free: Vec<u32>,
    /// GPUs per pool held beyond its capacity at the start.
    overcommit: Vec<u64>,
    /// GPUs per workload over the shared pools that its guarantee protects.
    protected: Vec<u32>,
    /// Replicas of a slot's proposal served by substitutes in other slots.
    substituted: Vec<Vec<u32>>,
    /// Preempted replicas: (victim, slot, beneficiary), one entry per replica.
    preempted: Vec<(usize, usize, Option<usize>)>,
    /// Substitutions: (workload, from slot, to slot, missing, granted).
    subs: Vec<(usize, usize, usize, u32, u32)>,
}

/// Grants replicas per slot to every claim under the capacity of `pools`; see the
/// module's documentation for the rules and the promises.
pub fn arbitrate(pools: &[PoolCapacity], claims: &[Claim]) -> Allocation {
    let mut st = State::new(pools, claims);
    st.shrink_to_capacity();
    let order = by_priority(claims);
    for &w in &order {
        st.serve_guarantee(w);
    }
    let mut start = 0;
    while start < order.len() {
        let prio = claims[order[start]].priority;
        let end = start + order[start..].iter().take_while(|&&w| claims[w].priority == prio).count();
        st.serve_level(&order[start..end], true);
        start = end;
    }
    // What a lower level's preemption freed beyond its replica may fit a request of a
    // higher level that was refused before: hand out free GPUs until none fits.
    let mut start = 0;
    while start < order.len() {
        let prio = claims[order[start]].priority;
        let end = start + order[start..].iter().take_while(|&&w| claims[w].priority == prio).count();
        st.serve_level(&order[start..end], false);
        start = end;
    }
    st.finish(pools)
}

/// Workload indices, highest priority first (stable: the claims' order within a level).
fn by_priority(claims: &[Claim]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by_key(|&w| std::cmp::Reverse(claims[w].priority));
    order
}

impl<'a> State<'a> {
    fn new(pools: &[PoolCapacity], claims: &'a [Claim]) -> Self {
        let pool_of: Vec<Vec<Option<usize>>> = claims
            .iter()
            .map(|c| c.slots.iter().map(|s| pools.iter().position(|p| p.name == s.pool)).collect())
            .collect();
        let mut used = vec![0u64; pools.len()];
        let mut grant = Vec::with_capacity(claims.len());
        for (w, c) in claims.iter().enumerate() {
            let mut g = Vec::with_capacity(c.slots.len());
            for (s, slot) in c.slots.iter().enumerate() {
                match pool_of[w][s] {
                    Some(p) => {
                        let keep = slot.held.min(slot.proposed);
                        used[p] += u64::from(keep) * u64::from(slot.gpus_per_replica.max(1));
                        g.push(keep);
                    }
                    None => g.push(slot.proposed),
                }
            }
            grant.push(g);
        }
        let free =
            pools.iter().zip(&used).map(|(p, &u)| clamp_u32(u64::from(p.capacity_gpus).saturating_sub(u))).collect();
        let overcommit = pools.iter().zip(&used).map(|(p, &u)| u.saturating_sub(u64::from(p.capacity_gpus))).collect();
        let protected = claims
            .iter()
            .enumerate()
            .map(|(w, c)| {
                if !c.has_traffic {
                    return 0;
                }
                let demand: u64 = (0..c.slots.len())
                    .filter(|&s| pool_of[w][s].is_some())
                    .map(|s| u64::from(c.slots[s].proposed) * u64::from(c.slots[s].gpus_per_replica.max(1)))
                    .sum();
                clamp_u32(demand.min(u64::from(c.guaranteed_gpus)))
            })
            .collect();
        let substituted = claims.iter().map(|c| vec![0; c.slots.len()]).collect();
        State {
            claims,
            pool_of,
            grant,
            free,
            overcommit,
            protected,
            substituted,
            preempted: Vec::new(),
            subs: Vec::new(),
        }
    }

    /// GPUs one replica of slot `s` of workload `w` holds.
    fn gpus(&self, w: usize, s: usize) -> u32 {
        self.claims[w].slots[s].gpus_per_replica.max(1)
    }

    /// GPUs workload `w` is granted over the shared pools.
    fn held_gpus(&self, w: usize) -> u64 {
        (0..self.grant[w].len())
            .filter(|&s| self.pool_of[w][s].is_some())
            .map(|s| u64::from(self.grant[w][s]) * u64::from(self.gpus(w, s)))
            .sum()
    }

    /// Replicas of slot `s` of `w` still asked for (0 for slots not arbitrated).
    fn outstanding(&self, w: usize, s: usize) -> u32 {
        if self.pool_of[w][s].is_none() {
            return 0;
        }
        self.claims[w].slots[s].proposed.saturating_sub(self.grant[w][s] + self.substituted[w][s])
    }

    /// Grants one more replica of slot `s` of `w` from free GPUs, if they suffice.
    fn take_free(&mut self, w: usize, s: usize) -> bool {
        let (Some(p), g) = (self.pool_of[w][s], self.gpus(w, s)) else { return false };
        if self.free[p] < g {
            return false;
        }
        self.free[p] -= g;
        self.grant[w][s] += 1;
        true
    }

    /// Gives back GPUs held beyond a pool's capacity: lowest priority first, holdings
    /// above a guarantee before guaranteed ones.
    fn shrink_to_capacity(&mut self) {
        for p in 0..self.free.len() {
            while self.overcommit[p] > 0 {
                let Some((v, s)) = self.victim(p, i32::MAX, true) else { break };
                let g = u64::from(self.gpus(v, s));
                self.grant[v][s] -= 1;
                self.preempted.push((v, s, None));
                if g >= self.overcommit[p] {
                    self.free[p] += clamp_u32(g - self.overcommit[p]);
                    self.overcommit[p] = 0;
                } else {
                    self.overcommit[p] -= g;
                }
            }
        }
    }

    /// The replica to take next in pool `p` from a workload of priority below `below`:
    /// the lowest priority; holdings above a guarantee first (guaranteed ones only when
    /// `into_floor`); then the workload holding the most; then the later claim.
    fn victim(&self, p: usize, below: i32, into_floor: bool) -> Option<(usize, usize)> {
        let mut best: Option<(VictimKey, (usize, usize))> = None;
        for (v, c) in self.claims.iter().enumerate() {
            if c.priority >= below {
                continue;
            }
            let held = self.held_gpus(v);
            for s in 0..c.slots.len() {
                if self.pool_of[v][s] != Some(p) || self.grant[v][s] == 0 {
                    continue;
                }
                let g = u64::from(self.gpus(v, s));
                let cuts_floor = held.saturating_sub(g) < u64::from(self.protected[v]);
                if cuts_floor && !into_floor {
                    continue;
                }
                let key = (cuts_floor, c.priority, std::cmp::Reverse(held), std::cmp::Reverse(v));
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, (v, s)));
                }
            }
        }
        best.map(|(_, vs)| vs)
    }

    /// Frees `need` GPUs in pool `p` for workload `for_w` by preempting replicas of
    /// strictly lower priorities, or changes nothing and returns false when that cannot
    /// free enough.
    fn preempt(&mut self, p: usize, need: u32, for_w: usize, into_floor: bool) -> bool {
        let below = self.claims[for_w].priority;
        let mut taken = Vec::new();
        while self.free[p] < need {
            let Some((v, s)) = self.victim(p, below, into_floor) else { break };
            self.grant[v][s] -= 1;
            self.free[p] += self.gpus(v, s);
            taken.push((v, s));
        }
        if self.free[p] >= need {
            self.preempted.extend(taken.into_iter().map(|(v, s)| (v, s, Some(for_w))));
            return true;
        }
        for (v, s) in taken {
            self.grant[v][s] += 1;
            self.free[p] -= self.gpus(v, s);
        }
        false
    }

    /// Serves `w`'s guarantee: replicas of its slots, in its order, from free GPUs and
    /// then from strictly lower priorities (their guarantees included).
    fn serve_guarantee(&mut self, w: usize) {
        let slots = self.claims[w].slots.len();
        while self.held_gpus(w) < u64::from(self.protected[w]) {
            let asked: Vec<usize> = (0..slots).filter(|&s| self.outstanding(w, s) > 0).collect();
            if asked.iter().any(|&s| self.take_free(w, s)) {
                continue;
            }
            let grew = asked.iter().any(|&s| {
                let (p, g) = (self.pool_of[w][s].unwrap_or(0), self.gpus(w, s));
                self.preempt(p, g, w, true) && self.take_free(w, s)
            });
            if !grew {
                break;
            }
        }
    }

    /// Serves the rest of the demand of one priority level: max-min fair on GPUs held;
    /// from free GPUs only unless `may_preempt`.
    fn serve_level(&mut self, level: &[usize], may_preempt: bool) {
        let mut active: Vec<usize> = level.to_vec();
        while !active.is_empty() {
            let (i, &w) =
                active.iter().enumerate().min_by_key(|&(i, &w)| (self.held_gpus(w), i)).expect("active is not empty");
            if !self.grow(w, may_preempt) {
                active.remove(i);
            }
        }
    }

    /// Grants `w` one more replica (or its substitute); false when nothing it asks for
    /// can be had.
    fn grow(&mut self, w: usize, may_preempt: bool) -> bool {
        let asked: Vec<usize> = (0..self.claims[w].slots.len()).filter(|&s| self.outstanding(w, s) > 0).collect();
        if asked.iter().any(|&s| self.take_free(w, s)) {
            return true;
        }
        if asked.iter().any(|&s| self.substitute(w, s)) {
            return true;
        }
        may_preempt
            && asked.iter().any(|&s| {
                let (p, g) = (self.pool_of[w][s].unwrap_or(0), self.gpus(w, s));
                self.preempt(p, g, w, false) && self.take_free(w, s)
            })
    }

    /// Serves one missing replica of slot `s` of `w` from free GPUs of another of its
    /// slots: the same variant on another pool first, then smaller variants.
    fn substitute(&mut self, w: usize, s: usize) -> bool {
        for t in self.alternatives(w, s) {
            let Some(k) = self.replicas_for_one(w, s, t) else { continue };
            let (Some(p), g) = (self.pool_of[w][t], self.gpus(w, t)) else { continue };
            let slot = &self.claims[w].slots[t];
            if self.grant[w][t] + k > slot.max || u64::from(self.free[p]) < u64::from(k) * u64::from(g) {
                continue;
            }
            self.free[p] -= k * g;
            self.grant[w][t] += k;
            self.substituted[w][s] += 1;
            self.subs.push((w, s, t, 1, k));
            return true;
        }
        false
    }

    /// The other slots of `w` that can stand in for slot `s`: the same variant on other
    /// pools, then variants with fewer GPUs per replica (fewest first).
    fn alternatives(&self, w: usize, s: usize) -> Vec<usize> {
        let slots = &self.claims[w].slots;
        let me = &slots[s];
        let mut alts: Vec<usize> = (0..slots.len())
            .filter(|&t| t != s && self.pool_of[w][t].is_some())
            .filter(|&t| slots[t].variant == me.variant || slots[t].gpus_per_replica < me.gpus_per_replica)
            .collect();
        alts.sort_by_key(|&t| (slots[t].variant != me.variant, slots[t].gpus_per_replica, t));
        alts
    }

    /// Replicas of slot `t` that serve what one replica of slot `s` would: by their
    /// requests per second when both are known, one for one within a variant, and `None`
    /// (no substitution) for another variant of unknown capacity.
    fn replicas_for_one(&self, w: usize, s: usize, t: usize) -> Option<u32> {
        let (a, b) = (&self.claims[w].slots[s], &self.claims[w].slots[t]);
        if a.replica_rps > 0.0 && b.replica_rps > 0.0 && a.replica_rps.is_finite() && b.replica_rps.is_finite() {
            let k = (a.replica_rps / b.replica_rps).ceil();
            return (1.0..=1000.0).contains(&k).then_some(k as u32);
        }
        (a.variant == b.variant).then_some(1)
    }

    fn finish(self, pools: &[PoolCapacity]) -> Allocation {
        let mut pool_allocated = vec![0u32; pools.len()];
        for (w, c) in self.claims.iter().enumerate() {
            for s in 0..c.slots.len() {
                if let Some(p) = self.pool_of[w][s] {
                    pool_allocated[p] += self.grant[w][s] * self.gpus(w, s);
                }
            }
        }
        let events = self.events();
        Allocation { granted: self.grant, pool_allocated, events }
    }

    /// The events, per workload and slot: preemptions, substitutions, grants, refusals.
    fn events(&self) -> Vec<ArbiterEvent> {
        use std::collections::BTreeMap;
        let mut out = Vec::new();
        let mut pre: BTreeMap<(usize, usize, Option<usize>), u32> = BTreeMap::new();
        for &(v, s, by) in &self.preempted {
            *pre.entry((v, s, by)).or_default() += 1;
        }
        let mut subs: BTreeMap<(usize, usize, usize), (u32, u32)> = BTreeMap::new();
        for &(w, s, t, m, k) in &self.subs {
            let e = subs.entry((w, s, t)).or_default();
            e.0 += m;
            e.1 += k;
        }
        for (w, c) in self.claims.iter().enumerate() {
            for (s, slot) in c.slots.iter().enumerate() {
                let Some(p) = self.pool_of[w][s] else { continue };
                for (&(_, _, by), &replicas) in pre.range((w, s, None)..=(w, s, Some(usize::MAX))) {
                    out.push(ArbiterEvent::Preempted { workload: w, slot: s, replicas, by });
                }
                for (&(_, _, t), &(missing, granted)) in subs.range((w, s, 0)..=(w, s, usize::MAX)) {
                    out.push(ArbiterEvent::Substituted { workload: w, from_slot: s, to_slot: t, missing, granted });
                }
                let g = self.grant[w][s];
                if g > slot.held {
                    out.push(ArbiterEvent::Granted { workload: w, slot: s, from: slot.held, to: g });
                }
                if g + self.substituted[w][s] < slot.proposed {
                    out.push(ArbiterEvent::Refused {
                        workload: w,
                        slot: s,
                        asked: slot.proposed,
                        granted: g,
                        pool_free_gpus: self.free[p],
                    });
                }
            }
        }
        out
    }
}

fn clamp_u32(x: u64) -> u32 {
    x.min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(variant: &str, pool: &str, gpus: u32, held: u32, proposed: u32) -> SlotClaim {
        SlotClaim {
            variant: variant.into(),
            pool: pool.into(),
            gpus_per_replica: gpus,
            held,
            proposed,
            max: 64,
            replica_rps: 0.0,
        }
    }

    fn claim(name: &str, priority: i32, guaranteed: u32, slots: Vec<SlotClaim>) -> Claim {
        Claim { workload: name.into(), priority, guaranteed_gpus: guaranteed, has_traffic: true, slots }
    }

    fn pool(name: &str, cap: u32) -> PoolCapacity {
        PoolCapacity { name: name.into(), capacity_gpus: cap }
    }

    #[test]
    fn a_burst_of_the_high_priority_preempts_the_low() {
        let pools = [pool("a100", 8)];
        let claims = [
            claim("high", 10, 0, vec![slot("8b", "a100", 1, 2, 6)]),
            claim("low", 0, 0, vec![slot("8b", "a100", 1, 6, 6)]),
        ];
        let a = arbitrate(&pools, &claims);
        assert_eq!(a.granted, vec![vec![6], vec![2]]);
        assert_eq!(a.pool_allocated, vec![8]);
        assert!(a.events.contains(&ArbiterEvent::Preempted { workload: 1, slot: 0, replicas: 4, by: Some(0) }));
        assert!(a.events.contains(&ArbiterEvent::Granted { workload: 0, slot: 0, from: 2, to: 6 }));
    }

    #[test]
    fn equal_priorities_share_free_gpus_max_min_and_never_preempt_each_other() {
        let pools = [pool("p", 10)];
        let claims =
            [claim("a", 0, 0, vec![slot("m", "p", 1, 6, 10)]), claim("b", 0, 0, vec![slot("m", "p", 1, 0, 10)])];
        let a = arbitrate(&pools, &claims);
        // a keeps its 6; the 4 free go to b, which holds fewer.
        assert_eq!(a.granted, vec![vec![6], vec![4]]);
        let claims =
            [claim("a", 0, 0, vec![slot("m", "p", 1, 0, 10)]), claim("b", 0, 0, vec![slot("m", "p", 1, 0, 10)])];
        assert_eq!(arbitrate(&pools, &claims).granted, vec![vec![5], vec![5]]);
    }

    #[test]
    fn a_guarantee_is_served_from_lower_priorities_and_protected_from_higher() {
        let pools = [pool("p", 8)];
        let claims = [
            claim("top", 10, 0, vec![slot("m", "p", 1, 4, 8)]),
            claim("mid", 5, 3, vec![slot("m", "p", 1, 0, 6)]),
            claim("low", 0, 0, vec![slot("m", "p", 1, 4, 4)]),
        ];
        let a = arbitrate(&pools, &claims);
        // mid's guarantee (3) comes out of low; top's extra demand takes low's last GPU
        // but not mid's guaranteed three.
        assert_eq!(a.granted, vec![vec![5], vec![3], vec![0]]);
    }

    #[test]
    fn a_full_pool_moves_the_replica_to_another_pool_or_a_smaller_variant() {
        let pools = [pool("h100", 4), pool("a100", 2)];
        let mut big = slot("70b", "h100", 4, 1, 2);
        big.replica_rps = 4.0;
        let mut small = slot("8b", "a100", 1, 0, 0);
        small.replica_rps = 2.0;
        let claims = [claim("w", 0, 0, vec![big, small])];
        let a = arbitrate(&pools, &claims);
        assert_eq!(a.granted, vec![vec![1, 2]]);
        assert!(a.events.contains(&ArbiterEvent::Substituted {
            workload: 0,
            from_slot: 0,
            to_slot: 1,
            missing: 1,
            granted: 2
        }));
        assert!(!a.events.iter().any(|e| matches!(e, ArbiterEvent::Refused { .. })));
    }

    #[test]
    fn a_shrunk_pool_takes_back_from_the_lowest_priority_first() {
        let pools = [pool("p", 4)];
        let claims =
            [claim("hi", 1, 0, vec![slot("m", "p", 1, 3, 3)]), claim("lo", 0, 0, vec![slot("m", "p", 1, 3, 3)])];
        let a = arbitrate(&pools, &claims);
        assert_eq!(a.granted, vec![vec![3], vec![1]]);
        assert!(a.events.contains(&ArbiterEvent::Preempted { workload: 1, slot: 0, replicas: 2, by: None }));
    }

    #[test]
    fn preemption_that_cannot_free_a_whole_replica_takes_nothing() {
        let pools = [pool("p", 4)];
        let claims = [
            claim("hi", 1, 0, vec![slot("70b", "p", 4, 0, 1)]),
            claim("eq", 1, 0, vec![slot("8b", "p", 1, 3, 3)]),
            claim("lo", 0, 0, vec![slot("8b", "p", 1, 1, 1)]),
        ];
        let a = arbitrate(&pools, &claims);
        assert_eq!(a.granted, vec![vec![0], vec![3], vec![1]]);
        assert!(a.events.iter().any(|e| matches!(e, ArbiterEvent::Refused { workload: 0, .. })));
    }

    #[test]
    fn private_pools_are_granted_as_proposed() {
        let a = arbitrate(&[pool("p", 1)], &[claim("w", 0, 0, vec![slot("m", "own", 2, 0, 7)])]);
        assert_eq!(a.granted, vec![vec![7]]);
        assert!(a.events.is_empty());
    }
}
