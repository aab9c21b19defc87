//! The shield: hard limits applied after any policy, in the live operator and in the twin.
//!
//! A [`Shield`] takes the decision of any [`crate::policy::Policy`] and the observation it
//! was made on, and returns the decision clamped to the workload's hard limits
//! (`LLMWorkloadSpec::limits`, per-variant min/max replicas and pools, pool capacities and
//! prices), with a record of every change it made ([`Override`]) and a running count.
//!
//! # Rules, in the order they are applied
//!
//! Each rule sees the result of the ones before it; a later rule wins over an earlier one.
//! The order encodes which limit wins when two cannot both hold:
//!
//! 1. **`UnknownSlot` / `PoolNotAllowed`** (normalise): slots naming a variant or pool the
//!    spec does not have are dropped; a variant may only run on its `pools` (empty = all),
//!    other slots are set to 0. Slots the decision omits keep their current desired count.
//! 2. **`MaxStepChange`**: a slot moves at most `limits.maxStepChange` replicas from its
//!    current desired count per tick (a value of 0 is treated as 1; validation flags it).
//! 3. **`ScaleDownCooldown`**: a slot that was scaled down less than
//!    `limits.scaleDownCooldownSeconds` ago is not scaled down again.
//!    Rules 2–3 are rate limits: they come first so every hard limit after them can
//!    override them (a lowered capacity or max must take effect at once).
//! 4. **`PoolCapacity`**: replicas × `gpusPerReplica` over the variants of a pool must fit
//!    `capacityGpus`. Replicas that are not ready yet are cut first, then the variants
//!    with the most GPUs per replica.
//! 5. **`VariantMaxReplicas`**, 6. **`TotalMaxReplicas`**: cut, most expensive pool
//!    (USD per GPU-hour) first.
//! 7. **`VariantMinReplicas`**, 8. **`TotalMinReplicas`**: raise, on the cheapest allowed
//!    slot (USD per replica-hour) that still has capacity and is below its maxima. When a
//!    minimum cannot be met without breaking capacity or a maximum, the shield **prefers
//!    capacity and the maxima**: the minimum is left short and [`validate_spec`] reports
//!    the spec as inconsistent (the controller shows it as the Degraded condition).
//! 9. **`KeepLastReady`**: when the workload has traffic (arrival rate > 0) and ready
//!    replicas, the decision must keep at least one of them (a replica survives a
//!    scale-down of its slot when the slot keeps at least as many replicas as it has
//!    ready; Kubernetes removes not-ready pods first). If the chosen slot has no room, one
//!    not-yet-ready replica of another slot is given up for it.
//! 10. **`Budget`**: while the fleet's cost (replicas × GPUs × price) exceeds
//!     `limits.maxCostPerHour`, cut one replica of the most expensive per-GPU slot, never
//!     below a variant's or the total minimum and never the last kept ready replica. Budget
//!     is last among the cuts so that it is exact: if the result is over budget, every
//!     remaining replica is required by a minimum or by `KeepLastReady` (availability
//!     floors win over the budget; validation flags a minimum fleet that costs more than
//!     the budget).
//!
//! Hence, whatever the policy asked: allowed pools, capacities and maxima always hold;
//! minima and the last ready replica hold whenever capacity and maxima allow; the budget
//! holds unless the availability floors cost more; step change and cooldown hold unless a
//! hard limit forced a bigger move.
//!
//! # Cooldown state across restarts
//!
//! The times of the last scale-down per slot live in the shield. [`Shield::export_state`]
//! and [`Shield::import_state`] move them in and out as seconds keyed by
//! [`slot_key`] (`"variant/pool"`), so the operator can keep them in
//! `status.lastScaleDown` (RFC 3339) and a restarted operator keeps the cooldown. Times
//! are in the clock of [`Observation::time_s`] (Unix seconds live, run seconds in the twin).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::LLMWorkloadSpec;
use crate::policy::observation::{Decision, Observation, SlotId, SlotTarget};

/// The key of a (variant, pool) slot in exported state and in status: `"variant/pool"`
/// ([`SlotId::key`]).
pub fn slot_key(variant: &str, pool: &str) -> String {
    SlotId::new(variant, pool).key()
}

/// A shield rule; its [`ShieldRule::as_str`] is a stable CamelCase name for metric labels,
/// Events and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ShieldRule {
    /// The decision named a variant or pool the spec does not have.
    UnknownSlot,
    /// The variant may not run on this pool.
    PoolNotAllowed,
    /// The slot moved more than `limits.maxStepChange` in one tick.
    MaxStepChange,
    /// The slot was scaled down within `limits.scaleDownCooldownSeconds`.
    ScaleDownCooldown,
    /// The pool's `capacityGpus` would be exceeded.
    PoolCapacity,
    /// The variant's `maxReplicas` would be exceeded.
    VariantMaxReplicas,
    /// `limits.maxTotalReplicas` would be exceeded.
    TotalMaxReplicas,
    /// The variant's `minReplicas` was not met.
    VariantMinReplicas,
    /// `limits.minTotalReplicas` was not met.
    TotalMinReplicas,
    /// The last ready replica of a workload with traffic would be removed.
    KeepLastReady,
    /// `limits.maxCostPerHour` would be exceeded.
    Budget,
}

impl ShieldRule {
    /// All rules, in the order they are applied.
    pub const ALL: [ShieldRule; 11] = [
        ShieldRule::UnknownSlot,
        ShieldRule::PoolNotAllowed,
        ShieldRule::MaxStepChange,
        ShieldRule::ScaleDownCooldown,
        ShieldRule::PoolCapacity,
        ShieldRule::VariantMaxReplicas,
        ShieldRule::TotalMaxReplicas,
        ShieldRule::VariantMinReplicas,
        ShieldRule::TotalMinReplicas,
        ShieldRule::KeepLastReady,
        ShieldRule::Budget,
    ];
    /// Stable CamelCase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ShieldRule::UnknownSlot => "UnknownSlot",
            ShieldRule::PoolNotAllowed => "PoolNotAllowed",
            ShieldRule::MaxStepChange => "MaxStepChange",
            ShieldRule::ScaleDownCooldown => "ScaleDownCooldown",
            ShieldRule::PoolCapacity => "PoolCapacity",
            ShieldRule::VariantMaxReplicas => "VariantMaxReplicas",
            ShieldRule::TotalMaxReplicas => "TotalMaxReplicas",
            ShieldRule::VariantMinReplicas => "VariantMinReplicas",
            ShieldRule::TotalMinReplicas => "TotalMinReplicas",
            ShieldRule::KeepLastReady => "KeepLastReady",
            ShieldRule::Budget => "Budget",
        }
    }
    /// What the rule enforces, in a few words (the decision page's "why").
    pub fn meaning(&self) -> &'static str {
        match self {
            ShieldRule::UnknownSlot => "the spec has no such variant or pool",
            ShieldRule::PoolNotAllowed => "the variant may not run on this pool",
            ShieldRule::MaxStepChange => "at most limits.maxStepChange replicas per slot per tick",
            ShieldRule::ScaleDownCooldown => "no scale-down within limits.scaleDownCooldownSeconds of the last",
            ShieldRule::PoolCapacity => "the pool's capacityGpus would be exceeded",
            ShieldRule::VariantMaxReplicas => "the variant's maxReplicas would be exceeded",
            ShieldRule::TotalMaxReplicas => "limits.maxTotalReplicas would be exceeded",
            ShieldRule::VariantMinReplicas => "the variant's minReplicas must be met",
            ShieldRule::TotalMinReplicas => "limits.minTotalReplicas must be met",
            ShieldRule::KeepLastReady => "the last ready replica of a workload with traffic stays",
            ShieldRule::Budget => "limits.maxCostPerHour would be exceeded",
        }
    }
}

impl std::fmt::Display for ShieldRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change the shield made to one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The rule that made it.
    pub rule: ShieldRule,
    /// Variant name.
    pub variant: String,
    /// Pool name.
    pub pool: String,
    /// Replicas before the rule (what the policy, or an earlier rule, asked for).
    pub asked: u32,
    /// Replicas after the rule.
    pub applied: u32,
}

/// The shield's answer: the clamped decision and what was changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShieldOutcome {
    /// The decision to apply: every allowed slot of the spec (in spec order: variants, then
    /// pools), then observed slots that are no longer allowed, at 0.
    pub decision: Decision,
    /// Every change, in rule order.
    pub overrides: Vec<Override>,
}

impl ShieldOutcome {
    /// Whether the shield changed the policy's decision.
    pub fn shielded(&self) -> bool {
        !self.overrides.is_empty()
    }
}

/// A semantic problem of a spec that the CRD schema cannot catch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecProblem {
    /// The field path, e.g. `spec.variants[1].pools[0]`.
    pub field: String,
    /// What is wrong and what to fix.
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Limits of one variant, resolved against the pools.
#[derive(Clone, Debug)]
struct VariantLimits {
    name: String,
    gpus_per_replica: u32,
    min_replicas: u32,
    max_replicas: u32,
    /// Indices into `Shield::pools` this variant may use.
    allowed: Vec<usize>,
}

#[derive(Clone, Debug)]
struct PoolLimits {
    name: String,
    price_per_gpu_hour: f64,
    capacity_gpus: Option<u32>,
}

/// One slot during clamping.
#[derive(Clone, Debug)]
struct Slot {
    variant: String,
    pool: String,
    /// Index into the spec's variants / pools; `None` for observed slots the spec lost.
    vi: Option<usize>,
    pi: Option<usize>,
    allowed: bool,
    current: u32,
    ready: u32,
    target: u32,
}

/// Clamps decisions to a workload's hard limits and keeps the per-slot cooldown state.
#[derive(Clone, Debug)]
pub struct Shield {
    variants: Vec<VariantLimits>,
    pools: Vec<PoolLimits>,
    min_total: u32,
    max_total: u32,
    max_cost_per_hour: Option<f64>,
    max_step_change: u32,
    cooldown_s: f64,
    /// Last applied scale-down per slot key, in observation seconds.
    last_scale_down: BTreeMap<SlotId, f64>,
    overrides_total: u64,
    decisions_shielded: u64,
}

impl Shield {
    /// A shield for the limits of `spec`, with no cooldown state.
    pub fn new(spec: &LLMWorkloadSpec) -> Self {
        let mut s = Shield {
            variants: Vec::new(),
            pools: Vec::new(),
            min_total: 0,
            max_total: 0,
            max_cost_per_hour: None,
            max_step_change: 1,
            cooldown_s: 0.0,
            last_scale_down: BTreeMap::new(),
            overrides_total: 0,
            decisions_shielded: 0,
        };
        s.update_spec(spec);
        s
    }

    /// Takes new limits from a changed spec, keeping the cooldown state and counters.
    pub fn update_spec(&mut self, spec: &LLMWorkloadSpec) {
        self.pools = spec
            .gpu_pools
            .iter()
            .map(|p| PoolLimits {
                name: p.name.clone(),
                price_per_gpu_hour: if p.price_per_gpu_hour.is_finite() { p.price_per_gpu_hour.max(0.0) } else { 0.0 },
                capacity_gpus: p.capacity_gpus,
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        self.variants = spec
            .variants
            .iter()
            // A duplicate variant name is a spec error (validate_spec); the first one wins here.
            .filter(|v| seen.insert(v.name.clone()))
            .map(|v| {
                let allowed = if v.pools.is_empty() {
                    (0..self.pools.len()).collect()
                } else {
                    (0..self.pools.len()).filter(|&i| v.pools.iter().any(|p| *p == self.pools[i].name)).collect()
                };
                VariantLimits {
                    name: v.name.clone(),
                    gpus_per_replica: v.gpus_per_replica.max(1),
                    min_replicas: v.min_replicas,
                    max_replicas: v.max_replicas,
                    allowed,
                }
            })
            .collect();
        self.min_total = spec.limits.min_total_replicas;
        self.max_total = spec.limits.max_total_replicas;
        self.max_cost_per_hour = spec.limits.max_cost_per_hour.filter(|c| c.is_finite());
        self.max_step_change = spec.limits.max_step_change.max(1);
        self.cooldown_s = f64::from(spec.limits.scale_down_cooldown_seconds);
    }

    /// Individual overrides made since the shield was created (or imported).
    pub fn overrides_total(&self) -> u64 {
        self.overrides_total
    }

    /// Decisions the shield changed since it was created.
    pub fn decisions_shielded(&self) -> u64 {
        self.decisions_shielded
    }

    /// The cooldown state: time of the last applied scale-down per [`slot_key`], in seconds.
    pub fn export_state(&self) -> BTreeMap<String, f64> {
        self.last_scale_down.iter().map(|(slot, t)| (slot.key(), *t)).collect()
    }

    /// Restores cooldown state exported by [`Shield::export_state`] (e.g. parsed from
    /// `status.lastScaleDown`). Entries replace those already held; non-finite times and keys
    /// that name no slot (no `/`) are ignored.
    pub fn import_state(&mut self, state: &BTreeMap<String, f64>) {
        for (k, t) in state {
            if let (Some(slot), true) = (SlotId::from_key(k), t.is_finite()) {
                self.last_scale_down.insert(slot, *t);
            }
        }
    }

    /// Writes into `obs` how long each slot's scale-down cooldown still runs
    /// ([`SlotObservation::scale_down_blocked_s`](crate::policy::observation::SlotObservation)),
    /// so a policy can know which scale-downs the shield would refuse now.
    pub fn annotate(&self, obs: &mut Observation) {
        for s in &mut obs.slots {
            s.scale_down_blocked_s = self
                .last_scale_down
                .get(&SlotId::new(&s.variant, &s.pool))
                .map(|t| (self.cooldown_s - (obs.time_s - t)).max(0.0))
                .unwrap_or(0.0);
        }
    }

    /// Forgets cooldown state and counters (a new episode in the twin).
    pub fn reset(&mut self) {
        self.last_scale_down.clear();
        self.overrides_total = 0;
        self.decisions_shielded = 0;
    }

    /// Clamps `decision` and records its effect: scale-downs start their slot's cooldown
    /// and overrides are counted. Use [`Shield::clamp`] for a decision that will not be
    /// applied (shadow mode).
    pub fn apply(&mut self, obs: &Observation, decision: &Decision) -> ShieldOutcome {
        let out = self.clamp(obs, decision);
        self.record(obs, &out);
        out
    }

    /// Records that `outcome` (from [`Shield::clamp`] on `obs`) was applied.
    pub fn record(&mut self, obs: &Observation, outcome: &ShieldOutcome) {
        for t in &outcome.decision.targets {
            let current = obs.slot(&t.variant, &t.pool).map(|s| s.desired_replicas).unwrap_or(0);
            if t.replicas < current {
                self.last_scale_down.insert(SlotId::new(&t.variant, &t.pool), obs.time_s);
            }
        }
        self.overrides_total += outcome.overrides.len() as u64;
        if outcome.shielded() {
            self.decisions_shielded += 1;
        }
    }

    /// Clamps `decision`, made on `obs`, to the hard limits, without changing any state.
    pub fn clamp(&self, obs: &Observation, decision: &Decision) -> ShieldOutcome {
        let mut overrides = Vec::new();
        let mut slots = self.build_slots(obs, decision, &mut overrides);
        self.rule_step_change(&mut slots, &mut overrides);
        self.rule_cooldown(&mut slots, obs.time_s, &mut overrides);
        self.rule_capacity(&mut slots, &mut overrides);
        self.rule_variant_max(&mut slots, &mut overrides);
        self.rule_total_max(&mut slots, &mut overrides);
        // Raising the total can give a variant replicas above its minimum that another
        // variant's minimum may then take; repeat until nothing changes (bounded).
        for _ in 0..8 {
            let before: Vec<u32> = slots.iter().map(|s| s.target).collect();
            self.rule_variant_min(&mut slots, &mut overrides);
            self.rule_total_min(&mut slots, &mut overrides);
            if slots.iter().map(|s| s.target).eq(before) {
                break;
            }
        }
        let protect = self.rule_keep_last_ready(&mut slots, obs, &mut overrides);
        self.rule_budget(&mut slots, protect, &mut overrides);
        ShieldOutcome {
            decision: Decision {
                targets: slots
                    .iter()
                    .map(|s| SlotTarget { variant: s.variant.clone(), pool: s.pool.clone(), replicas: s.target })
                    .collect(),
                reason: decision.reason.clone(),
                warnings: decision.warnings.clone(),
            },
            overrides,
        }
    }

    // ---- building blocks ----

    fn build_slots(&self, obs: &Observation, decision: &Decision, overrides: &mut Vec<Override>) -> Vec<Slot> {
        let mut slots = Vec::new();
        for (vi, v) in self.variants.iter().enumerate() {
            for (pi, p) in self.pools.iter().enumerate() {
                let o = obs.slot(&v.name, &p.name);
                let current = o.map(|s| s.desired_replicas).unwrap_or(0);
                let ready = o.map(|s| s.ready_replicas).unwrap_or(0);
                let allowed = v.allowed.contains(&pi);
                slots.push(Slot {
                    variant: v.name.clone(),
                    pool: p.name.clone(),
                    vi: Some(vi),
                    pi: Some(pi),
                    allowed,
                    current,
                    ready,
                    target: current,
                });
            }
        }
        // Observed slots the spec no longer has: scale them to zero.
        for o in &obs.slots {
            if !slots.iter().any(|s| s.variant == o.variant && s.pool == o.pool) {
                slots.push(Slot {
                    variant: o.variant.clone(),
                    pool: o.pool.clone(),
                    vi: None,
                    pi: None,
                    allowed: false,
                    current: o.desired_replicas,
                    ready: o.ready_replicas,
                    target: o.desired_replicas,
                });
            }
        }
        for t in &decision.targets {
            match slots.iter_mut().find(|s| s.variant == t.variant && s.pool == t.pool) {
                Some(s) => s.target = t.replicas,
                None => overrides.push(Override {
                    rule: ShieldRule::UnknownSlot,
                    variant: t.variant.clone(),
                    pool: t.pool.clone(),
                    asked: t.replicas,
                    applied: 0,
                }),
            }
        }
        for s in slots.iter_mut() {
            if !s.allowed && s.target > 0 {
                let rule =
                    if s.vi.is_none() || s.pi.is_none() { ShieldRule::UnknownSlot } else { ShieldRule::PoolNotAllowed };
                overrides.push(Override {
                    rule,
                    variant: s.variant.clone(),
                    pool: s.pool.clone(),
                    asked: s.target,
                    applied: 0,
                });
                s.target = 0;
            }
        }
        slots
    }

    fn gpus(&self, s: &Slot) -> u32 {
        s.vi.map(|vi| self.variants[vi].gpus_per_replica).unwrap_or(1)
    }

    fn price_per_gpu(&self, s: &Slot) -> f64 {
        s.pi.map(|pi| self.pools[pi].price_per_gpu_hour).unwrap_or(0.0)
    }

    fn cost_per_replica(&self, s: &Slot) -> f64 {
        f64::from(self.gpus(s)) * self.price_per_gpu(s)
    }

    fn cost(&self, slots: &[Slot]) -> f64 {
        slots.iter().map(|s| f64::from(s.target) * self.cost_per_replica(s)).sum()
    }

    fn pool_gpus(&self, slots: &[Slot], pi: usize) -> u64 {
        slots.iter().filter(|s| s.pi == Some(pi)).map(|s| u64::from(s.target) * u64::from(self.gpus(s))).sum()
    }

    fn variant_total(slots: &[Slot], vi: usize) -> u32 {
        slots.iter().filter(|s| s.vi == Some(vi)).map(|s| s.target).sum()
    }

    fn total(slots: &[Slot]) -> u32 {
        slots.iter().map(|s| s.target).sum()
    }

    /// Whether one more replica of slot `i` keeps capacity and maxima.
    fn can_add(&self, slots: &[Slot], i: usize) -> bool {
        let s = &slots[i];
        let (Some(vi), Some(pi)) = (s.vi, s.pi) else { return false };
        if !s.allowed || Self::total(slots) >= self.max_total {
            return false;
        }
        if Self::variant_total(slots, vi) >= self.variants[vi].max_replicas {
            return false;
        }
        match self.pools[pi].capacity_gpus {
            Some(cap) => self.pool_gpus(slots, pi) + u64::from(self.gpus(s)) <= u64::from(cap),
            None => true,
        }
    }

    /// Runs `f` and records each slot it changed as an override of `rule`.
    fn with_diff(slots: &mut [Slot], overrides: &mut Vec<Override>, rule: ShieldRule, f: impl FnOnce(&mut [Slot])) {
        let before: Vec<u32> = slots.iter().map(|s| s.target).collect();
        f(slots);
        for (s, b) in slots.iter().zip(before) {
            if s.target != b {
                overrides.push(Override {
                    rule,
                    variant: s.variant.clone(),
                    pool: s.pool.clone(),
                    asked: b,
                    applied: s.target,
                });
            }
        }
    }

    // ---- rules ----

    fn rule_step_change(&self, slots: &mut [Slot], ov: &mut Vec<Override>) {
        let step = self.max_step_change;
        Self::with_diff(slots, ov, ShieldRule::MaxStepChange, |slots| {
            for s in slots.iter_mut().filter(|s| s.allowed) {
                s.target = s.target.clamp(s.current.saturating_sub(step), s.current.saturating_add(step));
            }
        });
    }

    fn rule_cooldown(&self, slots: &mut [Slot], now_s: f64, ov: &mut Vec<Override>) {
        Self::with_diff(slots, ov, ShieldRule::ScaleDownCooldown, |slots| {
            for s in slots.iter_mut().filter(|s| s.allowed && s.target < s.current) {
                if let Some(t) = self.last_scale_down.get(&SlotId::new(&s.variant, &s.pool)) {
                    if now_s - t < self.cooldown_s {
                        s.target = s.current;
                    }
                }
            }
        });
    }

    fn rule_capacity(&self, slots: &mut [Slot], ov: &mut Vec<Override>) {
        Self::with_diff(slots, ov, ShieldRule::PoolCapacity, |slots| {
            for pi in 0..self.pools.len() {
                let Some(cap) = self.pools[pi].capacity_gpus else { continue };
                while self.pool_gpus(slots, pi) > u64::from(cap) {
                    // Cut not-ready replicas first, then the largest replicas.
                    let victim = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.pi == Some(pi) && s.target > 0)
                        .max_by_key(|(i, s)| (s.target > s.ready, self.gpus(s), std::cmp::Reverse(*i)))
                        .map(|(i, _)| i);
                    match victim {
                        Some(i) => slots[i].target -= 1,
                        None => break,
                    }
                }
            }
        });
    }

    /// Index of the most expensive per-GPU slot with a replica among `filter`; ties go to
    /// the slot with the most not-ready replicas, then the later slot.
    fn most_expensive(&self, slots: &[Slot], filter: impl Fn(usize, &Slot) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, s) in slots.iter().enumerate() {
            if s.target == 0 || !filter(i, s) {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) => {
                    let (pb, pi) = (self.price_per_gpu(&slots[b]), self.price_per_gpu(s));
                    let surplus = |x: &Slot| x.target.saturating_sub(x.ready);
                    if pi > pb || (pi == pb && surplus(s) >= surplus(&slots[b])) {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        best
    }

    /// Index of the cheapest per-replica slot where one more replica fits, among `filter`.
    fn cheapest_addable(&self, slots: &[Slot], filter: impl Fn(&Slot) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in 0..slots.len() {
            if !filter(&slots[i]) || !self.can_add(slots, i) {
                continue;
            }
            if best.is_none_or(|b| self.cost_per_replica(&slots[i]) < self.cost_per_replica(&slots[b])) {
                best = Some(i);
            }
        }
        best
    }

    fn rule_variant_max(&self, slots: &mut [Slot], ov: &mut Vec<Override>) {
        Self::with_diff(slots, ov, ShieldRule::VariantMaxReplicas, |slots| {
            for vi in 0..self.variants.len() {
                while Self::variant_total(slots, vi) > self.variants[vi].max_replicas {
                    match self.most_expensive(slots, |_, s| s.vi == Some(vi)) {
                        Some(i) => slots[i].target -= 1,
                        None => break,
                    }
                }
            }
        });
    }

    fn rule_total_max(&self, slots: &mut [Slot], ov: &mut Vec<Override>) {
        Self::with_diff(slots, ov, ShieldRule::TotalMaxReplicas, |slots| {
            while Self::total(slots) > self.max_total {
                match self.most_expensive(slots, |_, _| true) {
                    Some(i) => slots[i].target -= 1,
                    None => break,
                }
            }
        });
    }

    /// Makes room for one more replica of slot `i` by giving up replicas of other variants
    /// that are above their own minimum (`extra` further restricts donors), most expensive
    /// per GPU and not-ready first. Returns whether the replica now fits; on failure the
    /// slots are left unchanged.
    fn make_room(&self, slots: &mut [Slot], i: usize, extra: impl Fn(&Slot) -> bool) -> bool {
        if self.can_add(slots, i) {
            return true;
        }
        let (Some(vi), Some(pi)) = (slots[i].vi, slots[i].pi) else { return false };
        if !slots[i].allowed || self.variants[vi].max_replicas == 0 {
            return false;
        }
        let saved: Vec<u32> = slots.iter().map(|s| s.target).collect();
        while !self.can_add(slots, i) {
            let cap_blocked = match self.pools[pi].capacity_gpus {
                Some(cap) => self.pool_gpus(slots, pi) + u64::from(self.gpus(&slots[i])) > u64::from(cap),
                None => false,
            };
            let vmax_blocked = Self::variant_total(slots, vi) >= self.variants[vi].max_replicas;
            let donor = self.most_expensive(slots, |j, s| {
                j != i
                    && extra(s)
                    && s.vi.is_some_and(|w| Self::variant_total(slots, w) > self.variants[w].min_replicas)
                    && (!cap_blocked || s.pi == Some(pi))
                    && (!vmax_blocked || s.vi == Some(vi))
            });
            match donor {
                Some(j) => slots[j].target -= 1,
                None => {
                    for (s, t) in slots.iter_mut().zip(saved) {
                        s.target = t;
                    }
                    return false;
                }
            }
        }
        true
    }

    fn rule_variant_min(&self, slots: &mut [Slot], ov: &mut Vec<Override>) {
        Self::with_diff(slots, ov, ShieldRule::VariantMinReplicas, |slots| {
            for vi in 0..self.variants.len() {
                while Self::variant_total(slots, vi) < self.variants[vi].min_replicas {
                    if let Some(i) = self.cheapest_addable(slots, |s| s.vi == Some(vi)) {
                        slots[i].target += 1;
                        continue;
                    }
                    // No free room: take it from variants above their minimum.
                    let mut cands: Vec<usize> =
                        (0..slots.len()).filter(|&i| slots[i].vi == Some(vi) && slots[i].allowed).collect();
                    cands.sort_by(|&a, &b| {
                        self.cost_per_replica(&slots[a]).total_cmp(&self.cost_per_replica(&slots[b])).then(a.cmp(&b))
                    });
                    let mut done = false;
                    for i in cands {
                        if self.make_room(slots, i, |s| s.vi != Some(vi)) {
                            slots[i].target += 1;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        break;
                    }
                }
            }
        });
    }

    fn rule_total_min(&self, slots: &mut [Slot], ov: &mut Vec<Override>) {
        Self::with_diff(slots, ov, ShieldRule::TotalMinReplicas, |slots| {
            while Self::total(slots) < self.min_total {
                match self.cheapest_addable(slots, |_| true) {
                    Some(i) => slots[i].target += 1,
                    None => break,
                }
            }
        });
    }

    fn kept_ready(slots: &[Slot]) -> u32 {
        slots.iter().map(|s| s.ready.min(s.target)).sum()
    }

    /// Returns whether the last ready replica is protected (traffic and ready replicas).
    fn rule_keep_last_ready(&self, slots: &mut [Slot], obs: &Observation, ov: &mut Vec<Override>) -> bool {
        let has_ready = slots.iter().any(|s| s.ready > 0 && s.allowed);
        if obs.arrival_rate_rps <= 0.0 || !obs.arrival_rate_rps.is_finite() || !has_ready {
            return false;
        }
        if Self::kept_ready(slots) > 0 {
            return true;
        }
        Self::with_diff(slots, ov, ShieldRule::KeepLastReady, |slots| {
            // The cheapest allowed slot that has a ready replica.
            let mut cands: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].ready > 0 && slots[i].allowed).collect();
            cands.sort_by(|&a, &b| {
                self.cost_per_replica(&slots[a]).total_cmp(&self.cost_per_replica(&slots[b])).then(a.cmp(&b))
            });
            for i in cands {
                // Room may come from not-ready replicas of variants above their minimum.
                if !self.make_room(slots, i, |s| s.target > s.ready) {
                    continue;
                }
                slots[i].target += 1;
                return;
            }
        });
        true
    }

    fn rule_budget(&self, slots: &mut [Slot], protect: bool, ov: &mut Vec<Override>) {
        let Some(budget) = self.max_cost_per_hour else { return };
        Self::with_diff(slots, ov, ShieldRule::Budget, |slots| {
            while self.cost(slots) > budget + 1e-9 {
                let total = Self::total(slots);
                let kept = Self::kept_ready(slots);
                let cuttable = |_: usize, s: &Slot| {
                    if self.cost_per_replica(s) <= 0.0 || total <= self.min_total {
                        return false;
                    }
                    if let Some(vi) = s.vi {
                        if Self::variant_total(slots, vi) <= self.variants[vi].min_replicas {
                            return false;
                        }
                    }
                    // Never cut the last kept ready replica of a workload with traffic.
                    let loses_ready = s.target <= s.ready;
                    !(protect && loses_ready && kept <= 1)
                };
                match self.most_expensive(slots, cuttable) {
                    Some(i) => slots[i].target -= 1,
                    None => break,
                }
            }
        });
    }
}

/// Semantic problems of a spec that its schema cannot catch; empty when the spec is sound.
/// Each message says what to fix. The controller reports them in the Degraded condition.
pub fn validate_spec(spec: &LLMWorkloadSpec) -> Vec<SpecProblem> {
    let mut out = Vec::new();
    validate_pools(spec, &mut out);
    let totals = validate_variants(spec, &mut out);
    validate_limits(spec, &totals, &mut out);
    out
}

/// The pools' part of [`validate_spec`]: inline pools and poolRefs, whose slot names are
/// unique over both lists.
fn validate_pools(spec: &LLMWorkloadSpec, out: &mut Vec<SpecProblem>) {
    let mut problem = |field: String, message: String| out.push(SpecProblem { field, message });
    let pool_names: Vec<&str> = spec.gpu_pools.iter().map(|p| p.name.as_str()).collect();
    for (i, p) in spec.gpu_pools.iter().enumerate() {
        if pool_names[..i].contains(&p.name.as_str()) {
            problem(
                format!("spec.gpuPools[{i}].name"),
                format!("pool name `{}` is used twice; give each pool a unique name", p.name),
            );
        }
        if !p.price_per_gpu_hour.is_finite() || p.price_per_gpu_hour < 0.0 {
            problem(
                format!("spec.gpuPools[{i}].pricePerGpuHour"),
                format!("price {} is not a non-negative number of USD", p.price_per_gpu_hour),
            );
        }
    }
    let mut taken: Vec<(&str, String)> =
        spec.gpu_pools.iter().enumerate().map(|(i, p)| (p.name.as_str(), format!("spec.gpuPools[{i}].name"))).collect();
    for (i, r) in spec.pool_refs.iter().enumerate() {
        let (slot, field) = (r.slot_name(), crate::crd::pool::slot_name_field(i, r));
        if let Err(why) = crate::crd::pool::check_slot_name(slot) {
            problem(field, format!("`{slot}` cannot be a pool slot name: {why}"));
        } else if let Some((_, other)) = taken.iter().find(|(n, _)| *n == slot) {
            problem(
                field,
                format!("pool slot name `{slot}` is already used by {other}; give this poolRef a unique `name`"),
            );
        } else {
            taken.push((slot, field));
        }
    }
    if spec.variants.is_empty() {
        problem("spec.variants".into(), "no variants: add at least one model variant".into());
    }
    if spec.gpu_pools.is_empty() && spec.pool_refs.is_empty() {
        problem(
            "spec.gpuPools".into(),
            "no GPU pools: add at least one pool to spec.gpuPools or a GPUPool to spec.poolRefs".into(),
        );
    }
    let s = &spec.scheduling;
    let ref_caps: Option<u64> = spec.pool_refs.iter().map(|r| r.max_gpus.map(u64::from)).sum();
    if let (false, Some(cap)) = (spec.pool_refs.is_empty(), ref_caps) {
        if u64::from(s.guaranteed_gpus) > cap {
            problem(
                "spec.scheduling.guaranteedGpus".into(),
                format!("{} guaranteed GPUs, more than the poolRefs' maxGpus allow ({cap}); lower the guarantee or raise maxGpus", s.guaranteed_gpus),
            );
        }
    }
}

/// Totals over the variants that the limits are checked against.
#[derive(Clone, Copy)]
struct VariantTotals {
    sum_min: u64,
    sum_max: u64,
    min_fleet_cost: f64,
}

/// What validation knows of a pool slot: an inline pool's capacity and price, or a
/// poolRef's `maxGpus` (its GPUPool's capacity and price are not known before it is
/// resolved).
struct PoolView<'a> {
    name: &'a str,
    capacity_gpus: Option<u32>,
    price_per_gpu_hour: Option<f64>,
}

/// The pool slots `v` may run on (spec order, inline pools first).
fn allowed_pools<'a>(spec: &'a LLMWorkloadSpec, v: &crate::crd::VariantSpec) -> Vec<PoolView<'a>> {
    let inline = spec.gpu_pools.iter().map(|p| PoolView {
        name: &p.name,
        capacity_gpus: p.capacity_gpus,
        price_per_gpu_hour: Some(p.price_per_gpu_hour),
    });
    let refs = spec.pool_refs.iter().map(|r| PoolView {
        name: r.slot_name(),
        capacity_gpus: r.max_gpus,
        price_per_gpu_hour: None,
    });
    inline.chain(refs).filter(|p| v.pools.is_empty() || v.pools.iter().any(|n| n == p.name)).collect()
}

/// The variants' part of [`validate_spec`].
fn validate_variants(spec: &LLMWorkloadSpec, out: &mut Vec<SpecProblem>) -> VariantTotals {
    let mut problem = |field: String, message: String| out.push(SpecProblem { field, message });
    let pool_names: Vec<&str> = spec.pool_names();
    let mut sum_min: u64 = 0;
    let mut sum_max: u64 = 0;
    let mut min_fleet_cost = 0.0;
    for (i, v) in spec.variants.iter().enumerate() {
        if spec.variants[..i].iter().any(|o| o.name == v.name) {
            problem(
                format!("spec.variants[{i}].name"),
                format!("variant name `{}` is used twice; give each variant a unique name", v.name),
            );
        }
        for (j, p) in v.pools.iter().enumerate() {
            if !pool_names.contains(&p.as_str()) {
                problem(
                    format!("spec.variants[{i}].pools[{j}]"),
                    format!("variant `{}` names pool `{p}`, which is not in spec.gpuPools or spec.poolRefs (known: {}); fix the name or add the pool", v.name, pool_names.join(", ")),
                );
            }
        }
        if v.min_replicas > v.max_replicas {
            problem(
                format!("spec.variants[{i}].minReplicas"),
                format!(
                    "variant `{}` has minReplicas {} > maxReplicas {}; lower minReplicas or raise maxReplicas",
                    v.name, v.min_replicas, v.max_replicas
                ),
            );
        }
        if v.gpus_per_replica == 0 {
            problem(
                format!("spec.variants[{i}].gpusPerReplica"),
                format!("variant `{}` needs at least 1 GPU per replica", v.name),
            );
        }
        let allowed = allowed_pools(spec, v);
        let fits: Vec<&PoolView> =
            allowed.iter().filter(|p| p.capacity_gpus.is_none_or(|c| c >= v.gpus_per_replica)).collect();
        if !allowed.is_empty() && fits.is_empty() {
            problem(
                format!("spec.variants[{i}]"),
                format!(
                    "variant `{}` needs {} GPUs per replica but none of its pools ({}) has that capacity; raise a pool's capacityGpus or allow a bigger pool",
                    v.name,
                    v.gpus_per_replica,
                    allowed.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let cap_replicas: Option<u64> = allowed
            .iter()
            .map(|p| p.capacity_gpus.map(|c| u64::from(c / v.gpus_per_replica.max(1))))
            .sum::<Option<u64>>();
        if let Some(cap) = cap_replicas {
            if u64::from(v.min_replicas) > cap {
                problem(
                    format!("spec.variants[{i}].minReplicas"),
                    format!("variant `{}` asks for at least {} replicas but its pools fit only {cap}; lower minReplicas or raise capacityGpus", v.name, v.min_replicas),
                );
            }
        }
        sum_min += u64::from(v.min_replicas);
        sum_max += u64::from(v.max_replicas);
        // A poolRef's price is the GPUPool's, unknown here: the cheapest is then unknown
        // and the variant adds nothing to the lower bound of the fleet's cost.
        let cheapest: Option<f64> = fits
            .iter()
            .map(|p| p.price_per_gpu_hour.map(|c| f64::from(v.gpus_per_replica) * c))
            .try_fold(f64::INFINITY, |m, c| c.map(|c| m.min(c)));
        if let Some(cheapest) = cheapest.filter(|c| c.is_finite()) {
            min_fleet_cost += f64::from(v.min_replicas) * cheapest;
        }
    }
    VariantTotals { sum_min, sum_max, min_fleet_cost }
}

/// The limits' and SLO's part of [`validate_spec`].
fn validate_limits(spec: &LLMWorkloadSpec, totals: &VariantTotals, out: &mut Vec<SpecProblem>) {
    let mut problem = |field: String, message: String| out.push(SpecProblem { field, message });
    let VariantTotals { sum_min, sum_max, min_fleet_cost } = *totals;
    let l = &spec.limits;
    if l.min_total_replicas > l.max_total_replicas {
        problem(
            "spec.limits.minTotalReplicas".into(),
            format!(
                "minTotalReplicas {} > maxTotalReplicas {}; lower the minimum or raise the maximum",
                l.min_total_replicas, l.max_total_replicas
            ),
        );
    }
    if sum_min > u64::from(l.max_total_replicas) {
        problem(
            "spec.limits.maxTotalReplicas".into(),
            format!("the variants' minReplicas add up to {sum_min} > maxTotalReplicas {}; raise maxTotalReplicas or lower the variants' minima", l.max_total_replicas),
        );
    }
    if !spec.variants.is_empty() && u64::from(l.min_total_replicas) > sum_max {
        problem(
            "spec.limits.minTotalReplicas".into(),
            format!("minTotalReplicas {} > sum of the variants' maxReplicas {sum_max}; lower minTotalReplicas or raise a variant's maxReplicas", l.min_total_replicas),
        );
    }
    if l.max_step_change == 0 {
        problem(
            "spec.limits.maxStepChange".into(),
            "maxStepChange is 0, so nothing could ever scale; set it to at least 1".into(),
        );
    }
    if let Some(budget) = l.max_cost_per_hour {
        if !budget.is_finite() || budget < 0.0 {
            problem(
                "spec.limits.maxCostPerHour".into(),
                format!("budget {budget} is not a non-negative number of USD per hour"),
            );
        } else if min_fleet_cost > budget + 1e-9 {
            problem(
                "spec.limits.maxCostPerHour".into(),
                format!("the variants' minimum replicas cost at least {min_fleet_cost:.2} USD/h on their cheapest pools, over the budget of {budget:.2} USD/h; raise the budget or lower minReplicas"),
            );
        }
    }
    if !(spec.slo.ttft_ms > 0.0) || !(spec.slo.tpot_ms > 0.0) {
        problem("spec.slo".into(), "ttftMs and tpotMs must be positive numbers of milliseconds".into());
    }
    if !(0.0..=1.0).contains(&spec.slo.target_attainment) {
        problem(
            "spec.slo.targetAttainment".into(),
            format!("{} is not a fraction in 0..1", spec.slo.target_attainment),
        );
    }
}
