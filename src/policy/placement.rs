//! Placement and variant selection: *where* a variant's replicas go and *which* variant
//! serves. They compose with the scaling policies (HPA, KPA, queue, Ray, static), which
//! decide *how many*.
//!
//! # Placement ([`PlacementKind`])
//! Given a variant's new total replica count and its current count per pool:
//! - **`cheapest`**: a scale-up adds replicas one by one to the pool with the lowest
//!   price per replica (`pricePerGpuHour × gpusPerReplica`) that still has enough free
//!   GPUs (pools of unknown capacity always do); when no pool has room the cheapest
//!   allowed pool gets them (the shield then clamps to capacity). A scale-down removes
//!   from the most expensive pool first. Existing replicas are never moved, so placement
//!   causes no churn.
//! - **`spread`**: the total is split as evenly as possible over the allowed pools (the
//!   remainder going to the cheaper pools), limited by each pool's room; what does not fit
//!   goes to the pools that still have room, cheapest first.
//!
//! # Variant selection ([`VariantSelection`])
//! - **`fixed`**: every variant is scaled on its own metrics; nothing switches.
//! - **`qualityFirst`**: all replicas go to the highest-quality variant whose fleet of
//!   the asked size fits `limits.maxCostPerHour` on its cheapest pool (no budget: the
//!   best variant); other variants go to zero (the shield keeps the last ready replica
//!   until the new variant is ready).
//! - **`costFirst`**: start on the variant that is cheapest per replica. When the window's
//!   SLO attainment is below `slo.targetAttainment` while the asked fleet is at that
//!   variant's `maxReplicas` or over the budget (it cannot scale further), switch to the
//!   next more expensive variant; when attainment meets the target and the asked fleet
//!   would also fit a cheaper variant's maximum, switch back down. At most one switch per
//!   [`SWITCH_DWELL_S`] seconds, so the choice does not flap.
//!
//! The replica count asked of a selected variant is the scaling policy's answer computed on
//! the whole workload's metrics; variants of different speed would need different counts,
//! which these heuristics ignore (the DQN can learn it).

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::{PlacementKind, VariantSelection};
use crate::policy::observation::{Decision, Observation};

/// Minimum seconds between two variant switches of `costFirst` selection.
pub const SWITCH_DWELL_S: f64 = 300.0;

/// What policies need to know of a workload beyond the observation (from its spec).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadInfo {
    /// Variants in spec order.
    pub variants: Vec<VariantInfo>,
    /// Pools in spec order.
    pub pools: Vec<PoolInfo>,
    /// `limits.maxCostPerHour`.
    pub max_cost_per_hour: Option<f64>,
    /// `slo.targetAttainment`.
    pub target_attainment: f64,
}

/// One variant of a [`WorkloadInfo`].
#[derive(Clone, Debug, PartialEq)]
pub struct VariantInfo {
    /// Name.
    pub name: String,
    /// GPUs per replica.
    pub gpus_per_replica: u32,
    /// Answer quality 0..1 (0 when unknown).
    pub quality: f64,
    /// Indices into [`WorkloadInfo::pools`] this variant may use.
    pub pools: Vec<usize>,
    /// `minReplicas`.
    pub min_replicas: u32,
    /// `maxReplicas`.
    pub max_replicas: u32,
}

/// One GPU pool of a [`WorkloadInfo`].
#[derive(Clone, Debug, PartialEq)]
pub struct PoolInfo {
    /// Name.
    pub name: String,
    /// USD per GPU-hour.
    pub price_per_gpu_hour: f64,
}

impl WorkloadInfo {
    /// Reads what policies need from a spec.
    pub fn from_spec(spec: &LLMWorkloadSpec) -> Self {
        let pools: Vec<PoolInfo> = spec
            .gpu_pools
            .iter()
            .map(|p| PoolInfo { name: p.name.clone(), price_per_gpu_hour: p.price_per_gpu_hour })
            .collect();
        let variants = spec
            .variants
            .iter()
            .map(|v| VariantInfo {
                name: v.name.clone(),
                gpus_per_replica: v.gpus_per_replica.max(1),
                quality: v.quality.unwrap_or(0.0),
                pools: (0..pools.len()).filter(|&i| v.pools.is_empty() || v.pools.contains(&pools[i].name)).collect(),
                min_replicas: v.min_replicas,
                max_replicas: v.max_replicas,
            })
            .collect();
        WorkloadInfo {
            variants,
            pools,
            max_cost_per_hour: spec.limits.max_cost_per_hour,
            target_attainment: spec.slo.target_attainment,
        }
    }

    /// USD per hour of one replica of variant `vi` on pool `pi`.
    pub fn replica_cost(&self, vi: usize, pi: usize) -> f64 {
        f64::from(self.variants[vi].gpus_per_replica) * self.pools[pi].price_per_gpu_hour
    }

    /// USD per hour of one replica of variant `vi` on its cheapest pool (∞ without pools).
    pub fn cheapest_replica_cost(&self, vi: usize) -> f64 {
        self.variants[vi].pools.iter().map(|&pi| self.replica_cost(vi, pi)).fold(f64::INFINITY, f64::min)
    }
}

/// The most replicas [`Placement::place`] places for one variant: the CRD's ceiling on
/// `limits.maxTotalReplicas` (a request beyond it is placed as this many, and the shield
/// clamps to the spec's limits as always).
pub const MAX_PLACED_REPLICAS: u32 = 10_000;

/// Places a variant's replicas on pools and picks the serving variant.
#[derive(Clone, Debug)]
pub struct Placement {
    /// How replicas are spread over pools.
    pub kind: PlacementKind,
    /// How the serving variant is chosen.
    pub selection: VariantSelection,
    /// `costFirst`: index of the current variant in cost order.
    level: usize,
    /// `costFirst`: time of the last switch.
    last_switch_s: Option<f64>,
}

impl Placement {
    /// A placement with the given strategy.
    pub fn new(kind: PlacementKind, selection: VariantSelection) -> Self {
        Placement { kind, selection, level: 0, last_switch_s: None }
    }

    /// Forgets the `costFirst` state.
    pub fn reset(&mut self) {
        self.level = 0;
        self.last_switch_s = None;
    }

    /// Which variant serves, for `qualityFirst`/`costFirst`, given the replica count the
    /// scaling policy asks for; `None` for `fixed` (every variant scales on its own).
    pub fn select_variant(&mut self, info: &WorkloadInfo, obs: &Observation, asked: u32) -> Option<usize> {
        if info.variants.is_empty() {
            return None;
        }
        let fits_budget = |vi: usize| match info.max_cost_per_hour {
            Some(b) => f64::from(asked) * info.cheapest_replica_cost(vi) <= b + 1e-9,
            None => true,
        };
        match self.selection {
            VariantSelection::Fixed => None,
            VariantSelection::QualityFirst => {
                let mut order: Vec<usize> = (0..info.variants.len()).collect();
                order.sort_by(|&a, &b| info.variants[b].quality.total_cmp(&info.variants[a].quality).then(a.cmp(&b)));
                let pick = order.iter().copied().find(|&vi| fits_budget(vi));
                // Nothing fits: the cheapest, and the shield enforces the budget.
                Some(pick.unwrap_or_else(|| self.cost_order(info)[0]))
            }
            VariantSelection::CostFirst => {
                let order = self.cost_order(info);
                self.level = self.level.min(order.len() - 1);
                let can_switch = self.last_switch_s.is_none_or(|t| obs.time_s - t >= SWITCH_DWELL_S);
                if can_switch {
                    if let Some(att) = obs.slo_attainment {
                        let cur = order[self.level];
                        let stuck = asked >= info.variants[cur].max_replicas || !fits_budget(cur);
                        if att < info.target_attainment && stuck && self.level + 1 < order.len() {
                            self.level += 1;
                            self.last_switch_s = Some(obs.time_s);
                        } else if att >= info.target_attainment && self.level > 0 {
                            let cheaper = order[self.level - 1];
                            if asked < info.variants[cheaper].max_replicas && fits_budget(cheaper) {
                                self.level -= 1;
                                self.last_switch_s = Some(obs.time_s);
                            }
                        }
                    }
                }
                Some(order[self.level])
            }
        }
    }

    fn cost_order(&self, info: &WorkloadInfo) -> Vec<usize> {
        let mut order: Vec<usize> = (0..info.variants.len()).collect();
        order.sort_by(|&a, &b| info.cheapest_replica_cost(a).total_cmp(&info.cheapest_replica_cost(b)).then(a.cmp(&b)));
        order
    }

    /// Sets variant `vi`'s replicas on its pools so they add up to `total`, starting from
    /// the current desired counts in `obs`, and writes them into `decision`.
    /// `free_gpus` is the room per pool (`None` = unbounded) and is reduced by what is added.
    pub fn place(
        &self,
        info: &WorkloadInfo,
        obs: &Observation,
        vi: usize,
        total: u32,
        free_gpus: &mut [Option<u32>],
        decision: &mut Decision,
    ) {
        let v = &info.variants[vi];
        if v.pools.is_empty() {
            return;
        }
        // A garbage input (an absurd metric sample, an edited saved state) can make a
        // policy ask for billions of replicas; placing them one by one would stall the
        // reconcile. No spec allows more than this; the shield clamps to the spec after.
        let total = total.min(MAX_PLACED_REPLICAS);
        let current: Vec<u32> = v
            .pools
            .iter()
            .map(|&pi| obs.slot(&v.name, &info.pools[pi].name).map(|s| s.desired_replicas).unwrap_or(0))
            .collect();
        let gpr = v.gpus_per_replica;
        // Pools of this variant, cheapest first.
        let mut by_price: Vec<usize> = (0..v.pools.len()).collect();
        by_price.sort_by(|&a, &b| {
            info.replica_cost(vi, v.pools[a]).total_cmp(&info.replica_cost(vi, v.pools[b])).then(a.cmp(&b))
        });
        let room = |free: &[Option<u32>], k: usize| free.get(v.pools[k]).copied().flatten().is_none_or(|f| f >= gpr);
        let take = |free: &mut [Option<u32>], k: usize| {
            if let Some(Some(f)) = free.get_mut(v.pools[k]) {
                *f = f.saturating_sub(gpr);
            }
        };
        let give = |free: &mut [Option<u32>], k: usize| {
            if let Some(Some(f)) = free.get_mut(v.pools[k]) {
                *f = f.saturating_add(gpr);
            }
        };
        let mut counts = current.clone();
        match self.kind {
            PlacementKind::Cheapest => {
                let mut sum: u32 = counts.iter().sum();
                while sum < total {
                    let k = by_price.iter().copied().find(|&k| room(free_gpus, k)).unwrap_or(by_price[0]);
                    counts[k] += 1;
                    take(free_gpus, k);
                    sum += 1;
                }
                while sum > total {
                    // The most expensive pool that has a replica.
                    let Some(k) = by_price.iter().rev().copied().find(|&k| counts[k] > 0) else { break };
                    counts[k] -= 1;
                    give(free_gpus, k);
                    sum -= 1;
                }
            }
            PlacementKind::Spread => {
                // Room per pool if this variant's current replicas were removed.
                for k in 0..counts.len() {
                    for _ in 0..counts[k] {
                        give(free_gpus, k);
                    }
                    counts[k] = 0;
                }
                let n = counts.len() as u32;
                let mut left = total;
                // Even shares, remainder to the cheaper pools, each limited by room.
                for (rank, &k) in by_price.iter().enumerate() {
                    let share = total / n + u32::from((rank as u32) < total % n);
                    let mut placed = 0;
                    while placed < share && left > 0 && room(free_gpus, k) {
                        counts[k] += 1;
                        take(free_gpus, k);
                        placed += 1;
                        left -= 1;
                    }
                }
                // Overflow: wherever there is room, cheapest first; then the cheapest.
                while left > 0 {
                    let k = by_price.iter().copied().find(|&k| room(free_gpus, k)).unwrap_or(by_price[0]);
                    counts[k] += 1;
                    take(free_gpus, k);
                    left -= 1;
                }
            }
        }
        for (k, &pi) in v.pools.iter().enumerate() {
            decision.set(&v.name, &info.pools[pi].name, counts[k]);
        }
    }
}

/// Free GPUs per pool of `info` (index-aligned), from the observation (`None` = unbounded).
pub fn free_gpus(info: &WorkloadInfo, obs: &Observation) -> Vec<Option<u32>> {
    info.pools.iter().map(|p| obs.pools.iter().find(|o| o.name == p.name).and_then(|o| o.free_gpus)).collect()
}
