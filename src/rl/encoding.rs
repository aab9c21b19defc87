//! From an [`Observation`] to the network's input, and from the network's output to a
//! [`Decision`].
//!
//! **Features** ([`ObsEncoder`]): workload-level arrival rate and trend, SLO attainment,
//! TTFT/TPOT percentiles *relative to the SLO* (so 1.0 means "at the target" whatever the
//! target is), fleet cost rate, time since the last action; per (variant, pool) slot the
//! ready/starting/desired replicas, waiting and running requests, load per ready replica,
//! KV-cache usage and arrival rate; per pool the free GPUs and the price. Heavy-tailed
//! counts go through `ln(1+x)`. Missing values (no request finished, unknown capacity)
//! become 0 with an indicator feature, never NaN.
//!
//! **Rate history** (optional, [`WorkloadLayout::rate_history_s`]): for each horizon `W`
//! seconds, the peak and the mean of the observed arrival rate over the last `W` seconds
//! of observations, including the current one. A single observation says how busy the
//! workload is now; a bursty workload also needs to know how high it went recently, which
//! is what a peak-sized fleet is sized from. The encoder keeps those samples itself
//! ([`ObsEncoder::encode`] records, [`ObsEncoder::features`] only reads), so the operator
//! and the twin compute the features the same way; after a restart the history starts
//! empty and the features equal the current rate until it fills.
//!
//! **Normalisation** ([`Normaliser`]): running mean and variance (Welford) of every
//! feature, updated while training and frozen into the checkpoint, so the operator feeds
//! the network exactly the scaling it was trained with. Normalised values are clipped to ±10.
//!
//! **Actions** ([`ActionLayout`]): see the module docs of [`crate::rl`]. Each option is a
//! replica *delta* applied to the slot's current desired count, or, in the residual
//! layout ([`ActionLayoutKind::Residual`]), an *offset* from the replicas a base policy
//! asks for this tick (whose targets are then features too: `slot[..].base_target`), or,
//! in the capacity layout ([`ActionLayoutKind::Capacity`]), a *capacity per replica*
//! (requests/s) that a fixed sizing rule turns into replicas ([`ActionLayout::capacity_target`]).
//! [`ActionLayout::mask`]
//! forbids options that would break a hard limit (negative replicas, the variant's
//! min/max, the total min/max, the step limit, free GPUs of the pool, the budget), so the
//! network never picks and never bootstraps from them. With the factored layout each
//! branch is masked as if the other branches held; the shield still clamps the joint
//! decision afterwards.

use serde::{Deserialize, Serialize};

use crate::crd::LLMWorkloadSpec;
use crate::policy::observation::{Decision, Observation};

/// One action branch: a name and the names of its options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    /// What this branch controls (e.g. `replicas[small/a100]`).
    pub name: String,
    /// The options, in output order (e.g. `-1`, `0`, `+1`).
    pub options: Vec<String>,
}

/// A (variant, pool) slot: the seam's one slot identity (checkpoints store it as
/// `{variant, pool}`).
pub use crate::policy::observation::SlotId as SlotKey;

/// The shape of a workload as the network sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadLayout {
    /// Slots, in spec order (variants, then the pools each may run on).
    pub slots: Vec<SlotKey>,
    /// Pool names, in spec order.
    pub pools: Vec<String>,
    /// TTFT target, ms.
    pub slo_ttft_ms: f64,
    /// TPOT target, ms.
    pub slo_tpot_ms: f64,
    /// Horizons of the rate-history features, seconds (none: no such features; what
    /// checkpoints written before these features existed have).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_history_s: Vec<f64>,
    /// Whether each slot has a `scale_down_blocked` feature (the fraction of the shield's
    /// scale-down cooldown still to run); false in checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cooldown_feature: bool,
    /// Whether each slot has a `base_target` feature: the replicas the base policy of a
    /// residual layout asks for ([`ActionLayoutKind::Residual`]); false otherwise and in
    /// checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_feature: bool,
    /// The spec's scale-down cooldown, seconds (scales the cooldown feature; not stored).
    #[serde(skip)]
    pub cooldown_s: f64,
}

impl WorkloadLayout {
    /// The layout of a spec.
    pub fn from_spec(spec: &LLMWorkloadSpec) -> Self {
        let pools: Vec<String> = spec.gpu_pools.iter().map(|p| p.name.clone()).collect();
        let mut slots = Vec::new();
        for v in &spec.variants {
            for p in &pools {
                if v.pools.is_empty() || v.pools.contains(p) {
                    slots.push(SlotKey { variant: v.name.clone(), pool: p.clone() });
                }
            }
        }
        WorkloadLayout {
            slots,
            pools,
            slo_ttft_ms: spec.slo.ttft_ms,
            slo_tpot_ms: spec.slo.tpot_ms,
            rate_history_s: Vec::new(),
            cooldown_feature: false,
            base_feature: false,
            cooldown_s: f64::from(spec.limits.scale_down_cooldown_seconds),
        }
    }

    /// The same layout with (or without) the per-slot base-target feature.
    pub fn with_base_feature(mut self, on: bool) -> Self {
        self.base_feature = on;
        self
    }

    /// The same layout with (or without) the per-slot cooldown feature.
    pub fn with_cooldown_feature(mut self, on: bool) -> Self {
        self.cooldown_feature = on;
        self
    }

    /// The same layout with rate-history features over the given horizons (seconds).
    pub fn with_rate_history(mut self, horizons_s: &[f64]) -> Self {
        self.rate_history_s = horizons_s.to_vec();
        self
    }
}

/// Per-feature running mean and variance (Welford), frozen at checkpoint time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Normaliser {
    /// Running means.
    pub mean: Vec<f64>,
    /// Running sums of squared deviations.
    pub m2: Vec<f64>,
    /// Samples seen.
    pub count: u64,
    /// When true, [`Normaliser::update`] does nothing.
    pub frozen: bool,
    /// The smallest value of each feature seen (empty before the first sample, and in
    /// checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub min: Vec<f64>,
    /// The largest value of each feature seen (as `min`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max: Vec<f64>,
}

impl Normaliser {
    /// Identity-like statistics (mean 0, variance 1) for `dim` features.
    pub fn new(dim: usize) -> Self {
        Normaliser {
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
            count: 0,
            frozen: false,
            min: Vec::new(),
            max: Vec::new(),
        }
    }
    /// Checks that the statistics fit together (what a checkpoint's sidecar must hold):
    /// one mean, sum of squares and, when recorded, minimum and maximum per feature, all
    /// finite, the sums of squares not negative and no minimum above its maximum. The
    /// error names the field and the feature's index.
    pub fn check(&self) -> Result<(), String> {
        let dim = self.dim();
        if self.m2.len() != dim {
            return Err(format!("m2 has {} values for {dim} features", self.m2.len()));
        }
        if self.min.len() != self.max.len() || (!self.min.is_empty() && self.min.len() != dim) {
            return Err(format!(
                "min and max have {} and {} values for {dim} features",
                self.min.len(),
                self.max.len()
            ));
        }
        for (name, v) in [("mean", &self.mean), ("m2", &self.m2), ("min", &self.min), ("max", &self.max)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("{name}[{i}] is not a finite number"));
            }
        }
        if let Some(i) = self.m2.iter().position(|&x| x < 0.0) {
            return Err(format!("m2[{i}] is negative"));
        }
        if let Some(i) = (0..self.min.len()).find(|&i| self.min[i] > self.max[i]) {
            return Err(format!("min[{i}] = {} is above max[{i}] = {}", self.min[i], self.max[i]));
        }
        Ok(())
    }
    /// Number of features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
    /// Adds one sample to the statistics (unless frozen).
    pub fn update(&mut self, x: &[f32]) {
        if self.frozen {
            return;
        }
        debug_assert_eq!(x.len(), self.mean.len());
        self.count += 1;
        let n = self.count as f64;
        let dim = self.mean.len();
        if self.min.len() != dim {
            // The first sample, or statistics from a checkpoint that did not record a range.
            (self.min, self.max) = (vec![f64::INFINITY; dim], vec![f64::NEG_INFINITY; dim]);
        }
        for i in 0..dim {
            let v = x[i] as f64;
            let d = v - self.mean[i];
            self.mean[i] += d / n;
            self.m2[i] += d * (v - self.mean[i]);
            self.min[i] = self.min[i].min(v);
            self.max[i] = self.max[i].max(v);
        }
    }
    /// Whether `v` lies within the values feature `i` took in training (with a tolerance
    /// of 10⁻³ × max(1, |bound|)); `false` when the range was not recorded.
    pub fn seen(&self, i: usize, v: f64) -> bool {
        match (self.min.get(i), self.max.get(i)) {
            (Some(&lo), Some(&hi)) => {
                v.is_finite() && v >= lo - 1e-3 * lo.abs().max(1.0) && v <= hi + 1e-3 * hi.abs().max(1.0)
            }
            _ => false,
        }
    }
    /// Standard deviation of feature `i` (1 until two samples were seen; never below 1e-4).
    pub fn std(&self, i: usize) -> f64 {
        if self.count < 2 {
            return 1.0;
        }
        (self.m2[i] / (self.count - 1) as f64).sqrt().max(1e-4)
    }
    /// The feature of `x` furthest from the statistics, as (index, z), when it is more than
    /// `max_z` standard deviations from the mean; `None` when every feature is within
    /// range (or fewer than two samples were seen, or `max_z` is 0). A feature that was
    /// constant in training (standard deviation below 1e-6) is out of range as soon as it
    /// differs from its mean by more than 1e-3 × max(1, |mean|); its z is then reported as
    /// the difference over 1e-6. A non-finite feature is out of range with z = ∞. A value
    /// the feature took in training ([`Normaliser::seen`]: within its recorded minimum
    /// and maximum) is never out of range, however rare it was: the first tick of every
    /// training episode, say, where a slot the policy then empties still serves.
    pub fn out_of_range(&self, x: &[f32], max_z: f64) -> Option<(usize, f64)> {
        if self.count < 2 || max_z <= 0.0 {
            return None;
        }
        let mut worst: Option<(usize, f64)> = None;
        for (i, &v) in x.iter().enumerate().take(self.mean.len()) {
            let v = v as f64;
            let d = v - self.mean[i];
            let sd = (self.m2[i] / (self.count - 1) as f64).max(0.0).sqrt();
            let z = if !v.is_finite() {
                f64::INFINITY
            } else if sd < 1e-6 {
                if d.abs() > 1e-3 * self.mean[i].abs().max(1.0) {
                    d / 1e-6
                } else {
                    0.0
                }
            } else {
                d / sd
            };
            if z.abs() > max_z && !self.seen(i, v) && worst.is_none_or(|(_, w)| z.abs() > w.abs()) {
                worst = Some((i, z));
            }
        }
        worst
    }
    /// Normalises features in place: (x − mean)/std, clipped to ±10.
    pub fn apply(&self, x: &mut [f32]) {
        for (i, v) in x.iter_mut().enumerate() {
            let z = (*v as f64 - self.mean[i]) / self.std(i);
            *v = z.clamp(-10.0, 10.0) as f32;
        }
    }
}

/// Encodes observations of one workload layout into raw features, keeping the recent
/// arrival rates the rate-history features need.
#[derive(Clone, Debug)]
pub struct ObsEncoder {
    layout: WorkloadLayout,
    /// (time_s, arrival rate) of recorded observations, oldest first, within the longest horizon.
    history: std::collections::VecDeque<(f64, f64)>,
    /// The base policy's replicas per slot, for the base-target features.
    base: Vec<f32>,
}

fn ln1p(x: f64) -> f32 {
    (x.max(0.0)).ln_1p() as f32
}

fn signed_ln1p(x: f64) -> f32 {
    (x.signum() * x.abs().ln_1p()) as f32
}

impl ObsEncoder {
    /// An encoder for `layout`.
    pub fn new(layout: WorkloadLayout) -> Self {
        ObsEncoder { layout, history: std::collections::VecDeque::new(), base: Vec::new() }
    }

    /// Sets the base policy's decision the next features describe (a residual layout's
    /// base-target features); `None` clears it (the features then equal the desired
    /// replicas).
    pub fn set_base(&mut self, base: Option<&Decision>) {
        self.base = match base {
            Some(d) => self
                .layout
                .slots
                .iter()
                .map(|s| d.replicas(&s.variant, &s.pool).map(|r| r as f32).unwrap_or(f32::NAN))
                .collect(),
            None => Vec::new(),
        };
    }

    /// Forgets the recorded rate history (a new episode, a rebuilt policy).
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Takes the SLO targets and the scale-down cooldown of `spec` (a workload of the same
    /// slots, e.g. another episode of a training mix); features are relative to them.
    pub fn retarget(&mut self, spec: &crate::crd::LLMWorkloadSpec) {
        self.layout.slo_ttft_ms = spec.slo.ttft_ms;
        self.layout.slo_tpot_ms = spec.slo.tpot_ms;
        self.layout.cooldown_s = f64::from(spec.limits.scale_down_cooldown_seconds);
    }

    /// Records `obs` in the rate history (replacing a sample with the same time) and
    /// returns its features. Observations with missing metrics are encoded but not recorded.
    pub fn encode(&mut self, obs: &Observation) -> Vec<f32> {
        if !self.layout.rate_history_s.is_empty() && obs.is_complete() && obs.arrival_rate_rps.is_finite() {
            // The same tick observed again (or a clock step back): keep one sample per time.
            while self.history.back().is_some_and(|(t, _)| *t >= obs.time_s) {
                self.history.pop_back();
            }
            self.history.push_back((obs.time_s, obs.arrival_rate_rps.max(0.0)));
            let longest = self.layout.rate_history_s.iter().copied().fold(0.0, f64::max);
            while self.history.front().is_some_and(|(t, _)| *t < obs.time_s - longest) {
                self.history.pop_front();
            }
        }
        self.features(obs)
    }

    /// Peak and mean arrival rate over the last `horizon_s` seconds before `obs`, `obs` included.
    fn rate_window(&self, obs: &Observation, horizon_s: f64) -> (f64, f64) {
        let now = obs.arrival_rate_rps.max(0.0);
        let now = if now.is_finite() { now } else { 0.0 };
        let (mut peak, mut sum, mut n) = (now, now, 1.0);
        for &(t, r) in &self.history {
            if t >= obs.time_s - horizon_s && t < obs.time_s {
                peak = peak.max(r);
                sum += r;
                n += 1.0;
            }
        }
        (peak, sum / n)
    }
    /// The layout.
    pub fn layout(&self) -> &WorkloadLayout {
        &self.layout
    }
    /// Names of the features, in order (stored in the checkpoint and checked on load).
    pub fn feature_names(&self) -> Vec<String> {
        let mut n: Vec<String> = [
            "ln1p_arrival_rate_rps",
            "signed_ln1p_arrival_trend",
            "slo_attainment",
            "slo_attainment_known",
            "ttft_p50_over_slo",
            "ttft_p90_over_slo",
            "ttft_p99_over_slo",
            "tpot_p50_over_slo",
            "tpot_p90_over_slo",
            "tpot_p99_over_slo",
            "latency_known",
            "ln1p_cost_rate_usd_per_hour",
            "since_last_action_over_600s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for s in &self.layout.slots {
            for f in [
                "ready",
                "starting",
                "desired",
                "ln1p_waiting",
                "ln1p_running",
                "ln1p_load_per_ready",
                "kv_usage",
                "ln1p_arrival_rps",
            ] {
                n.push(format!("slot[{}/{}].{f}", s.variant, s.pool));
            }
            if self.layout.cooldown_feature {
                n.push(format!("slot[{}/{}].scale_down_blocked", s.variant, s.pool));
            }
            if self.layout.base_feature {
                n.push(format!("slot[{}/{}].base_target", s.variant, s.pool));
            }
        }
        for p in &self.layout.pools {
            for f in ["free_gpus", "capacity_known", "price_per_gpu_hour"] {
                n.push(format!("pool[{p}].{f}"));
            }
        }
        for w in &self.layout.rate_history_s {
            n.push(format!("ln1p_peak_arrival_rate_{w}s"));
            n.push(format!("ln1p_mean_arrival_rate_{w}s"));
        }
        n
    }

    /// Raw (unnormalised) features of an observation against the recorded history,
    /// without recording it. Slots and pools are looked up by name, so the order of the
    /// observation's vectors does not matter; a slot missing from the observation encodes
    /// as empty.
    pub fn features(&self, obs: &Observation) -> Vec<f32> {
        let mut x = Vec::with_capacity(13 + 8 * self.layout.slots.len() + 3 * self.layout.pools.len());
        x.push(ln1p(obs.arrival_rate_rps));
        x.push(signed_ln1p(obs.arrival_rate_trend_rps_per_s));
        x.push(obs.slo_attainment.unwrap_or(1.0) as f32);
        x.push(if obs.slo_attainment.is_some() { 1.0 } else { 0.0 });
        let l = &obs.latency;
        let rel = |v: Option<f64>, slo_ms: f64| ln1p(v.unwrap_or(0.0) * 1000.0 / slo_ms.max(1e-9));
        for v in [l.ttft_p50_s, l.ttft_p90_s, l.ttft_p99_s] {
            x.push(rel(v, self.layout.slo_ttft_ms));
        }
        for v in [l.tpot_p50_s, l.tpot_p90_s, l.tpot_p99_s] {
            x.push(rel(v, self.layout.slo_tpot_ms));
        }
        x.push(if l.ttft_p50_s.is_some() || l.tpot_p50_s.is_some() { 1.0 } else { 0.0 });
        x.push(ln1p(obs.cost_rate_usd_per_hour));
        x.push(obs.seconds_since_last_action.map(|s| (s / 600.0).min(1.0)).unwrap_or(1.0) as f32);
        for (k, key) in self.layout.slots.iter().enumerate() {
            match obs.slot(&key.variant, &key.pool) {
                Some(s) => {
                    let ready = s.ready_replicas as f64;
                    x.push(s.ready_replicas as f32);
                    x.push(s.starting_replicas as f32);
                    x.push(s.desired_replicas as f32);
                    x.push(ln1p(s.waiting_requests));
                    x.push(ln1p(s.running_requests));
                    x.push(ln1p((s.waiting_requests + s.running_requests) / ready.max(1.0)));
                    x.push(s.kv_cache_usage as f32);
                    x.push(ln1p(s.arrival_rate_rps));
                    if self.layout.cooldown_feature {
                        let c = self.layout.cooldown_s.max(1.0);
                        x.push((s.scale_down_blocked_s / c).clamp(0.0, 1.0) as f32);
                    }
                }
                None => x.extend_from_slice(if self.layout.cooldown_feature { &[0.0; 9] } else { &[0.0; 8] }),
            }
            if self.layout.base_feature {
                let desired = obs.slot(&key.variant, &key.pool).map(|s| s.desired_replicas as f32).unwrap_or(0.0);
                let b = self.base.get(k).copied().filter(|b| b.is_finite()).unwrap_or(desired);
                x.push(b);
            }
        }
        for name in &self.layout.pools {
            match obs.pools.iter().find(|p| &p.name == name) {
                Some(p) => {
                    x.push(p.free_gpus.unwrap_or(0) as f32);
                    x.push(if p.free_gpus.is_some() { 1.0 } else { 0.0 });
                    x.push(p.price_per_gpu_hour_usd as f32);
                }
                None => x.extend_from_slice(&[0.0; 3]),
            }
        }
        for &w in &self.layout.rate_history_s {
            let (peak, mean) = self.rate_window(obs, w);
            x.push(ln1p(peak));
            x.push(ln1p(mean));
        }
        x
    }
}

/// How the multi-dimensional action is presented to the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionLayoutKind {
    /// One branch per slot, each choosing a replica delta (action branching).
    #[default]
    Factored,
    /// One branch: hold, or apply one non-zero delta to one slot.
    Joint,
    /// One branch per slot, each choosing an offset from the replicas a base policy (the
    /// forecast planner, say) asks for: with every offset 0 the policy is the base policy.
    Residual,
    /// One branch per slot: hold, or a capacity per replica (requests/s, one option per
    /// entry of [`ActionLayout::capacities`]) that the sizing rule of
    /// [`ActionLayout::capacity_target`] turns into the slot's replicas. The policy learns
    /// how much headroom to keep; the replicas follow the load by the rule, so a choice
    /// that fits one load fits another.
    Capacity,
}

/// What a capacity of the capacity layout is per replica of: the load the sizing rule
/// divides by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CapacityMetric {
    /// Requests per second arriving at the slot (the Observation's `arrival_rate_rps`).
    #[default]
    ArrivalRate,
    /// Requests in flight at the slot, waiting and running (as Knative's KPA sizes by
    /// concurrency): a long request holds a replica longer, so this unit carries request
    /// size, which an arrival rate does not.
    InFlight,
}

impl CapacityMetric {
    /// The unit an option of this metric is named with (`2rps`, `8inflight`).
    pub fn unit(self) -> &'static str {
        match self {
            CapacityMetric::ArrivalRate => "rps",
            CapacityMetric::InFlight => "inflight",
        }
    }

    /// The unit in words, for decision reasons.
    pub fn words(self) -> &'static str {
        match self {
            CapacityMetric::ArrivalRate => "req/s",
            CapacityMetric::InFlight => "requests in flight",
        }
    }

    /// The slot's load in this metric.
    fn load(self, s: &crate::policy::SlotObservation) -> f64 {
        match self {
            CapacityMetric::ArrivalRate => s.arrival_rate_rps,
            CapacityMetric::InFlight => s.waiting_requests + s.running_requests,
        }
    }
}

/// The hard limits the action mask respects (a subset of what the shield enforces).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionLimits {
    /// Per slot (layout order): the variant's min replicas over its pools.
    pub variant_min: Vec<u32>,
    /// Per slot: the variant's max replicas over its pools.
    pub variant_max: Vec<u32>,
    /// Per slot: GPUs per replica.
    pub gpus_per_replica: Vec<u32>,
    /// Per slot: index of its pool in the layout's pools.
    pub pool_index: Vec<usize>,
    /// Fewest replicas in total.
    pub min_total: u32,
    /// Most replicas in total.
    pub max_total: u32,
    /// Most a slot may change in one tick.
    pub max_step_change: u32,
    /// Budget in USD per hour, if any.
    pub max_cost_per_hour: Option<f64>,
}

impl ActionLimits {
    /// The limits of a spec for its layout.
    pub fn from_spec(spec: &LLMWorkloadSpec, layout: &WorkloadLayout) -> Self {
        let mut l = ActionLimits {
            min_total: spec.limits.min_total_replicas,
            max_total: spec.limits.max_total_replicas,
            max_step_change: spec.limits.max_step_change,
            max_cost_per_hour: spec.limits.max_cost_per_hour,
            ..Default::default()
        };
        for s in &layout.slots {
            let v = spec.variants.iter().find(|v| v.name == s.variant);
            l.variant_min.push(v.map(|v| v.min_replicas).unwrap_or(0));
            l.variant_max.push(v.map(|v| v.max_replicas).unwrap_or(0));
            l.gpus_per_replica.push(v.map(|v| v.gpus_per_replica).unwrap_or(1));
            l.pool_index.push(layout.pools.iter().position(|p| p == &s.pool).unwrap_or(0));
        }
        l
    }
}

/// The action layout: which slots, which deltas, factored or joint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionLayout {
    /// Factored or joint.
    pub kind: ActionLayoutKind,
    /// The slots, in layout order.
    pub slots: Vec<SlotKey>,
    /// Replica deltas a slot can be moved by (must contain 0).
    pub deltas: Vec<i32>,
    /// Mask scale-downs of a slot whose shield cooldown still runs (the shield would refuse
    /// them); false in checkpoints written before this existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_cooldown: bool,
    /// The base policy of a residual layout, in the command-line form
    /// (`forecast:capacity=1.3`); `None` for the other layouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The capacities per replica (requests/s) a slot's options name, after the hold, in
    /// the capacity layout; empty for the other layouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacities: Vec<f64>,
    /// What the capacities are per replica of (the capacity layout); arrival rate in
    /// checkpoints written before this existed.
    #[serde(default, skip_serializing_if = "is_default_metric")]
    pub capacity_metric: CapacityMetric,
    /// The capacity layout without a free hold: the hold is masked whenever a capacity is
    /// allowed, so the sizing rule acts every tick (the hold stays for blind ticks and
    /// when the shield would refuse every capacity).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capacity_no_hold: bool,
}

fn is_default_metric(m: &CapacityMetric) -> bool {
    *m == CapacityMetric::default()
}

impl ActionLayout {
    /// A layout over `slots`.
    pub fn new(kind: ActionLayoutKind, slots: Vec<SlotKey>, deltas: Vec<i32>) -> Self {
        ActionLayout {
            kind,
            slots,
            deltas,
            mask_cooldown: false,
            base: None,
            capacities: Vec::new(),
            capacity_metric: CapacityMetric::ArrivalRate,
            capacity_no_hold: false,
        }
    }

    /// The same layout with the capacity layout's sizing metric, and with or without a
    /// free hold (see [`ActionLayout::capacity_no_hold`]).
    pub fn with_capacity_rule(mut self, metric: CapacityMetric, hold: bool) -> Self {
        self.capacity_metric = metric;
        self.capacity_no_hold = !hold;
        self
    }

    /// The same layout with the capacities per replica (requests/s) of the capacity layout.
    pub fn with_capacities(mut self, capacities: Vec<f64>) -> Self {
        self.capacities = capacities;
        self
    }

    /// Checks what the layout's kind needs: the capacity layout one or more finite
    /// capacities > 0 and no others; every other layout a delta of 0. Errors name the field.
    pub fn check(&self) -> Result<(), String> {
        match self.kind {
            ActionLayoutKind::Capacity => {
                if self.capacities.is_empty() {
                    return Err("actionLayout = \"capacity\" needs capacities (requests/s per replica)".into());
                }
                if let Some(c) = self.capacities.iter().find(|c| !(c.is_finite() && **c > 0.0)) {
                    return Err(format!("capacities must be finite and > 0, got {c}"));
                }
                Ok(())
            }
            _ if !self.capacities.is_empty() => {
                Err(format!("capacities are only for actionLayout = \"capacity\" (it is {:?})", self.kind))
            }
            _ if self.capacity_no_hold || self.capacity_metric != CapacityMetric::ArrivalRate => Err(format!(
                "capacityMetric and capacityHold are only for actionLayout = \"capacity\" (it is {:?})",
                self.kind
            )),
            _ if !self.deltas.contains(&0) => Err(format!("deltas {:?} must contain 0 (hold)", self.deltas)),
            _ => Ok(()),
        }
    }

    /// The sizing rule of the capacity layout: the replicas slot `k` needs at `capacity`
    /// per replica, `ceil(load / capacity)` of the slot's load in the layout's
    /// [`CapacityMetric`] (the requests/s it received over the observation's window, or
    /// its requests in flight), and at least 1 for a slot that has replicas or asks
    /// for some (the rule sizes the slots that serve; it never empties one, so moving a
    /// variant to another pool needs the factored or residual layout). `None` when the
    /// slot is missing from `obs` or its rate is not finite.
    pub fn capacity_target(&self, k: usize, capacity: f64, obs: &Observation) -> Option<i64> {
        let key = self.slots.get(k)?;
        let s = obs.slot(&key.variant, &key.pool)?;
        let rate = self.capacity_metric.load(s);
        if !(rate.is_finite() && capacity.is_finite() && capacity > 0.0) {
            return None;
        }
        let need = (rate.max(0.0) / capacity - 1e-9).ceil().min(1e6) as i64;
        let serving = s.desired_replicas + s.ready_replicas + s.starting_replicas > 0;
        Some(if serving { need.max(1) } else { need.max(0) })
    }

    /// The same layout over the base policy `base` (command-line form); a residual layout
    /// needs one.
    pub fn with_base(mut self, base: Option<String>) -> Self {
        self.base = base;
        self
    }

    /// The same layout, masking (or not) scale-downs the shield's cooldown would refuse.
    pub fn with_mask_cooldown(mut self, on: bool) -> Self {
        self.mask_cooldown = on;
        self
    }

    fn hold_index(&self) -> usize {
        match self.kind {
            ActionLayoutKind::Capacity => 0,
            _ => self.deltas.iter().position(|d| *d == 0).unwrap_or(0),
        }
    }

    /// Options per slot of the per-slot layouts.
    fn options_per_slot(&self) -> usize {
        match self.kind {
            ActionLayoutKind::Capacity => 1 + self.capacities.len(),
            _ => self.deltas.len(),
        }
    }

    fn nonzero(&self) -> Vec<i32> {
        self.deltas.iter().copied().filter(|d| *d != 0).collect()
    }

    /// The branches (names and option names).
    pub fn branches(&self) -> Vec<BranchSpec> {
        match self.kind {
            ActionLayoutKind::Factored | ActionLayoutKind::Residual => self
                .slots
                .iter()
                .map(|s| BranchSpec {
                    name: format!("replicas[{}/{}]", s.variant, s.pool),
                    options: self.deltas.iter().map(|d| format!("{d:+}")).collect(),
                })
                .collect(),
            ActionLayoutKind::Joint => {
                let mut options = vec!["hold".to_string()];
                for s in &self.slots {
                    for d in self.nonzero() {
                        options.push(format!("{}/{}{d:+}", s.variant, s.pool));
                    }
                }
                vec![BranchSpec { name: "joint".into(), options }]
            }
            ActionLayoutKind::Capacity => self
                .slots
                .iter()
                .map(|s| BranchSpec {
                    name: format!("capacity[{}/{}]", s.variant, s.pool),
                    options: std::iter::once("hold".to_string())
                        .chain(self.capacities.iter().map(|c| format!("{c}{}", self.capacity_metric.unit())))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Per-slot deltas of an action (one option per branch); all 0 for the capacity layout,
    /// whose moves depend on the observation ([`ActionLayout::decision_on`]).
    pub fn slot_deltas(&self, action: &[usize]) -> Vec<i32> {
        match self.kind {
            ActionLayoutKind::Capacity => vec![0; self.slots.len()],
            ActionLayoutKind::Factored | ActionLayoutKind::Residual => (0..self.slots.len())
                .map(|k| action.get(k).and_then(|&o| self.deltas.get(o)).copied().unwrap_or(0))
                .collect(),
            ActionLayoutKind::Joint => {
                let mut d = vec![0; self.slots.len()];
                let nz = self.nonzero();
                if let Some(&o) = action.first() {
                    if o > 0 && !nz.is_empty() {
                        let k = (o - 1) / nz.len();
                        if k < d.len() {
                            d[k] = nz[(o - 1) % nz.len()];
                        }
                    }
                }
                d
            }
        }
    }

    /// The action that holds every slot.
    pub fn hold(&self) -> Vec<usize> {
        match self.kind {
            ActionLayoutKind::Factored | ActionLayoutKind::Residual | ActionLayoutKind::Capacity => {
                vec![self.hold_index(); self.slots.len()]
            }
            ActionLayoutKind::Joint => vec![0],
        }
    }

    /// The decision an action means in `obs`: desired replicas + delta per slot.
    pub fn decision(&self, action: &[usize], obs: &Observation, reason: &str) -> Decision {
        self.decision_on(action, obs, None, reason)
    }

    /// The replicas each slot's options are offsets from: the base decision's (a residual
    /// layout with its base given), else the desired replicas in `obs`.
    fn reference(&self, obs: &Observation, base: Option<&Decision>) -> Vec<i64> {
        self.slots
            .iter()
            .map(|s| {
                let desired = obs.slot(&s.variant, &s.pool).map(|x| x.desired_replicas).unwrap_or(0);
                let from_base = match (self.kind, base) {
                    (ActionLayoutKind::Residual, Some(b)) => b.replicas(&s.variant, &s.pool),
                    _ => None,
                };
                from_base.unwrap_or(desired) as i64
            })
            .collect()
    }

    /// The replicas slot `k` asks for with option `o` of the capacity layout: the desired
    /// replicas for the hold (option 0) or when the sizing rule has no answer.
    fn capacity_option_target(&self, k: usize, o: usize, obs: &Observation, desired: i64) -> i64 {
        match o.checked_sub(1).and_then(|i| self.capacities.get(i)) {
            Some(&c) => self.capacity_target(k, c, obs).unwrap_or(desired),
            None => desired,
        }
    }

    /// The decision an action means in `obs`: per slot, the reference replicas (the base
    /// decision's for a residual layout, else the desired ones) plus the option's delta;
    /// for the capacity layout, the sizing rule's replicas at the chosen capacity (the
    /// desired ones for a hold).
    pub fn decision_on(&self, action: &[usize], obs: &Observation, base: Option<&Decision>, reason: &str) -> Decision {
        let reference = self.reference(obs, base);
        let mut d = Decision::new(reason);
        if self.kind == ActionLayoutKind::Capacity {
            for (k, (s, cur)) in self.slots.iter().zip(reference).enumerate() {
                let o = action.get(k).copied().unwrap_or(0);
                d.set(&s.variant, &s.pool, self.capacity_option_target(k, o, obs, cur).max(0) as u32);
            }
            return d;
        }
        let deltas = self.slot_deltas(action);
        for ((s, delta), cur) in self.slots.iter().zip(deltas).zip(reference) {
            d.set(&s.variant, &s.pool, (cur + delta as i64).max(0) as u32);
        }
        d
    }

    /// Whether moving slot `k` by `delta` from the reference replicas (others at theirs)
    /// respects the limits in `obs`.
    fn delta_allowed(&self, k: usize, delta: i32, obs: &Observation, lim: &ActionLimits, reference: &[i64]) -> bool {
        if delta == 0 {
            return true;
        }
        // A residual offset or a capacity's target is not a step from the current fleet (the
        // shield limits the step).
        if matches!(self.kind, ActionLayoutKind::Factored | ActionLayoutKind::Joint)
            && delta.unsigned_abs() > lim.max_step_change.max(1)
        {
            return false;
        }
        let desired = |i: usize| reference.get(i).copied().unwrap_or(0);
        let cur = desired(k);
        let new = cur + delta as i64;
        if new < 0 {
            return false;
        }
        let variant = &self.slots[k].variant;
        let variant_total: i64 =
            (0..self.slots.len()).filter(|&i| &self.slots[i].variant == variant).map(desired).sum::<i64>()
                + delta as i64;
        let total: i64 = (0..self.slots.len()).map(desired).sum::<i64>() + delta as i64;
        let vmin = lim.variant_min.get(k).copied().unwrap_or(0) as i64;
        let vmax = lim.variant_max.get(k).copied().unwrap_or(u32::MAX) as i64;
        if delta < 0 {
            let blocked = self.mask_cooldown
                && obs.slot(&self.slots[k].variant, &self.slots[k].pool).is_some_and(|s| s.scale_down_blocked_s > 0.0);
            return !blocked && variant_total >= vmin && total >= lim.min_total as i64;
        }
        if variant_total > vmax || total > lim.max_total as i64 {
            return false;
        }
        let gpus = lim.gpus_per_replica.get(k).copied().unwrap_or(1) as i64 * delta as i64;
        let pool_idx = lim.pool_index.get(k).copied().unwrap_or(0);
        let pool_name = &self.slots[k].pool;
        if let Some(p) = obs.pools.iter().find(|p| &p.name == pool_name) {
            // Replicas already asked for but not yet placed have not taken GPUs yet.
            let pending: i64 = (0..self.slots.len())
                .filter(|&i| lim.pool_index.get(i) == Some(&pool_idx))
                .map(|i| {
                    let s = &self.slots[i];
                    let o = obs.slot(&s.variant, &s.pool);
                    let placed = o.map(|x| (x.ready_replicas + x.starting_replicas) as i64).unwrap_or(0);
                    (desired(i) - placed).max(0) * lim.gpus_per_replica.get(i).copied().unwrap_or(1) as i64
                })
                .sum();
            if let Some(free) = p.free_gpus {
                if gpus + pending > free as i64 {
                    return false;
                }
            }
            if let Some(budget) = lim.max_cost_per_hour {
                if obs.cost_rate_usd_per_hour + gpus as f64 * p.price_per_gpu_hour_usd > budget + 1e-9 {
                    return false;
                }
            }
        }
        true
    }

    /// The mask of allowed options, flattened over branches; only the hold when the
    /// observation has missing metrics.
    pub fn mask(&self, obs: &Observation, lim: &ActionLimits) -> Vec<bool> {
        self.mask_on(obs, lim, None)
    }

    /// [`ActionLayout::mask`] with the base decision a residual layout's options are offsets
    /// from (ignored by the other layouts).
    pub fn mask_on(&self, obs: &Observation, lim: &ActionLimits, base: Option<&Decision>) -> Vec<bool> {
        // On an observation with missing metrics the operator holds (it does not act on
        // what it cannot see): only the hold is allowed, in training as in the cluster.
        let blind = !obs.is_complete();
        let reference = self.reference(obs, base);
        match self.kind {
            ActionLayoutKind::Factored | ActionLayoutKind::Residual => {
                let mut m = Vec::with_capacity(self.slots.len() * self.deltas.len());
                for k in 0..self.slots.len() {
                    for &d in &self.deltas {
                        m.push(if blind { d == 0 } else { self.delta_allowed(k, d, obs, lim, &reference) });
                    }
                }
                m
            }
            ActionLayoutKind::Capacity => {
                let mut m = Vec::with_capacity(self.slots.len() * self.options_per_slot());
                for (k, &cur) in reference.iter().enumerate() {
                    let hold_at = m.len();
                    m.push(true);
                    for (i, &c) in self.capacities.iter().enumerate() {
                        let allowed = !blind
                            && self.capacity_target(k, c, obs).is_some_and(|t| {
                                let delta = (t - cur).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                                self.delta_allowed(k, delta, obs, lim, &reference)
                            });
                        debug_assert_eq!(m.len(), k * self.options_per_slot() + 1 + i);
                        m.push(allowed);
                    }
                    if self.capacity_no_hold && m[hold_at + 1..].iter().any(|a| *a) {
                        m[hold_at] = false;
                    }
                }
                m
            }
            ActionLayoutKind::Joint => {
                let mut m = vec![true];
                for k in 0..self.slots.len() {
                    for d in self.nonzero() {
                        m.push(!blind && self.delta_allowed(k, d, obs, lim, &reference));
                    }
                }
                m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::observation::{PoolObservation, SlotObservation};

    #[test]
    fn out_of_range_names_the_furthest_feature() {
        let mut n = Normaliser::new(3);
        assert_eq!(n.out_of_range(&[1e9, 0.0, 0.0], 6.0), None, "no statistics yet");
        for i in 0..100 {
            // Feature 0 varies (mean 0, std about 1), feature 1 is constant, feature 2 varies.
            let v = if i % 2 == 0 { 1.0 } else { -1.0 };
            n.update(&[v, 5.0, 10.0 * v]);
        }
        assert_eq!(n.out_of_range(&[0.5, 5.0, -3.0], 6.0), None);
        assert_eq!(n.out_of_range(&[0.5, 5.0 + 1e-4, -3.0], 6.0), None, "float noise on a constant");
        let (i, z) = n.out_of_range(&[7.0, 5.0, 0.0], 6.0).unwrap();
        assert_eq!(i, 0);
        assert!((z - 7.0 / n.std(0)).abs() < 1e-9, "{z}");
        assert_eq!(n.out_of_range(&[7.0, 5.5, 0.0], 6.0).map(|(i, _)| i), Some(1), "a constant that moved");
        assert_eq!(n.out_of_range(&[-80.0, 5.0, 0.0], 6.0).map(|(i, _)| i), Some(0));
        let (i, z) = n.out_of_range(&[0.0, 5.0, f32::NAN], 6.0).unwrap();
        assert_eq!((i, z), (2, f64::INFINITY));
        assert_eq!(n.out_of_range(&[1e9, 5.0, 0.0], 0.0), None, "a limit of 0 is off");
    }

    #[test]
    fn a_value_seen_in_training_is_in_range_however_rare() {
        let mut n = Normaliser::new(1);
        // The first tick of each of 10 episodes sees 3.0; the 590 other ticks see 0.
        for i in 0..600 {
            n.update(&[if i % 60 == 0 { 3.0 } else { 0.0 }]);
        }
        assert!(3.0 / n.std(0) > 6.0, "3.0 is {} standard deviations out", 3.0 / n.std(0));
        assert_eq!(n.out_of_range(&[3.0], 6.0), None, "seen in training");
        assert_eq!(n.out_of_range(&[2.0], 6.0), None, "between values seen");
        assert_eq!(n.out_of_range(&[3.5], 6.0).map(|(i, _)| i), Some(0), "beyond the largest value seen");
        // A checkpoint written before the range was recorded: the z rule alone.
        let old = Normaliser { min: Vec::new(), max: Vec::new(), ..n.clone() };
        assert!(old.check().is_ok());
        assert_eq!(old.out_of_range(&[3.0], 6.0).map(|(i, _)| i), Some(0));
        let round: Normaliser = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!((round.min, round.max), (vec![0.0], vec![3.0]));
        let legacy: Normaliser = serde_json::from_str(r#"{"mean":[0.5],"m2":[2.0],"count":9,"frozen":true}"#).unwrap();
        assert!(legacy.min.is_empty() && legacy.check().is_ok());
    }

    #[test]
    fn inconsistent_statistics_are_named() {
        let mut n = Normaliser::new(2);
        n.update(&[1.0, 2.0]);
        n.update(&[3.0, 4.0]);
        assert!(n.check().is_ok());
        let bad = Normaliser { min: vec![5.0, 2.0], ..n.clone() };
        assert!(bad.check().unwrap_err().contains("min[0]"), "{:?}", bad.check());
        let bad = Normaliser { max: vec![3.0], ..n.clone() };
        assert!(bad.check().unwrap_err().contains("min and max"));
        let bad = Normaliser { m2: vec![1.0], ..n.clone() };
        assert!(bad.check().unwrap_err().contains("m2 has 1"));
        let bad = Normaliser { m2: vec![1.0, -2.0], ..n.clone() };
        assert!(bad.check().unwrap_err().contains("m2[1]"));
    }

    fn obs() -> Observation {
        Observation {
            slots: vec![
                SlotObservation {
                    variant: "v".into(),
                    pool: "cheap".into(),
                    desired_replicas: 1,
                    ready_replicas: 1,
                    gpus_per_replica: 1,
                    ..Default::default()
                },
                SlotObservation {
                    variant: "v".into(),
                    pool: "dear".into(),
                    desired_replicas: 0,
                    gpus_per_replica: 1,
                    ..Default::default()
                },
            ],
            pools: vec![
                PoolObservation { name: "cheap".into(), free_gpus: Some(1), price_per_gpu_hour_usd: 1.0 },
                PoolObservation { name: "dear".into(), free_gpus: None, price_per_gpu_hour_usd: 4.0 },
            ],
            ..Default::default()
        }
    }

    fn layout(kind: ActionLayoutKind) -> (ActionLayout, ActionLimits) {
        let slots = vec![
            SlotKey { variant: "v".into(), pool: "cheap".into() },
            SlotKey { variant: "v".into(), pool: "dear".into() },
        ];
        let lim = ActionLimits {
            variant_min: vec![1, 1],
            variant_max: vec![4, 4],
            gpus_per_replica: vec![1, 1],
            pool_index: vec![0, 1],
            min_total: 1,
            max_total: 10,
            max_step_change: 8,
            max_cost_per_hour: None,
        };
        (ActionLayout::new(kind, slots, vec![-1, 0, 1, 2]), lim)
    }

    #[test]
    fn factored_mask_respects_min_free_gpus_and_negatives() {
        let (a, lim) = layout(ActionLayoutKind::Factored);
        let m = a.mask(&obs(), &lim);
        // cheap: -1 would leave the variant at 0 < min 1; +2 needs 2 GPUs but 1 is free.
        assert_eq!(&m[0..4], &[false, true, true, false]);
        // dear: -1 would go negative; capacity unknown, so +1 and +2 are allowed.
        assert_eq!(&m[4..8], &[false, true, true, true]);
    }

    #[test]
    fn residual_options_are_offsets_from_the_base_decision() {
        let (a, lim) = layout(ActionLayoutKind::Residual);
        // The base asks for 3 cheap (2 more than desired; 1 GPU is free) and 0 dear.
        let mut base = Decision::new("base");
        base.set("v", "cheap", 3);
        base.set("v", "dear", 0);
        let m = a.mask_on(&obs(), &lim, Some(&base));
        // cheap from 3: -1 → 2 is fine for the variant; +1 → 4 and +2 → 5 need more GPUs
        // than the one free beyond the two the base already asks for.
        assert_eq!(&m[0..4], &[true, true, false, false]);
        // dear from 0: -1 would go negative; the variant's max (4) allows +1 (4) but not +2 (5).
        assert_eq!(&m[4..8], &[false, true, true, false]);
        let hold = a.hold();
        let d = a.decision_on(&hold, &obs(), Some(&base), "r");
        assert_eq!((d.replicas("v", "cheap"), d.replicas("v", "dear")), (Some(3), Some(0)));
        let d = a.decision_on(&[0, 2], &obs(), Some(&base), "r");
        assert_eq!((d.replicas("v", "cheap"), d.replicas("v", "dear")), (Some(2), Some(1)));
        // Without a base the residual layout reads the desired replicas, as the factored one.
        assert_eq!(a.decision_on(&hold, &obs(), None, "r").replicas("v", "cheap"), Some(1));
    }

    #[test]
    fn capacity_options_size_each_serving_slot_by_its_arrival_rate() {
        let (a, lim) = layout(ActionLayoutKind::Capacity);
        let a = a.with_capacities(vec![0.5, 1.0, 4.0]);
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.branches()[0].options, vec!["hold", "0.5rps", "1rps", "4rps"]);
        let mut o = obs();
        o.slots[0].arrival_rate_rps = 1.6;
        o.pools[0].free_gpus = Some(2);
        // cheap at 1.6 req/s: 0.5 → 4 replicas (3 more; 2 GPUs free), 1.0 → 2, 4.0 → 1 (the
        // rule keeps a serving slot at 1 at least).
        assert_eq!(
            (0..3).map(|i| a.capacity_target(0, [0.5, 1.0, 4.0][i], &o)).collect::<Vec<_>>(),
            vec![Some(4), Some(2), Some(1)]
        );
        // dear serves nothing and receives nothing: every capacity sizes it to 0, which
        // the variant's other slot allows.
        assert_eq!(a.capacity_target(1, 1.0, &o), Some(0));
        let m = a.mask(&o, &lim);
        assert_eq!(&m[0..4], &[true, false, true, true], "4 replicas need 3 more GPUs, 2 are free");
        assert_eq!(&m[4..8], &[true, true, true, true]);
        let d = a.decision(&[2, 0], &o, "r");
        assert_eq!((d.replicas("v", "cheap"), d.replicas("v", "dear")), (Some(2), Some(0)));
        assert_eq!(a.decision(&a.hold(), &o, "r").replicas("v", "cheap"), Some(1));
        // A rate exactly at capacity needs no extra replica; a rate that is not a number
        // sizes nothing, and only the hold is allowed.
        o.slots[0].arrival_rate_rps = 2.0;
        assert_eq!(a.capacity_target(0, 1.0, &o), Some(2));
        o.slots[0].arrival_rate_rps = f64::NAN;
        assert_eq!(a.capacity_target(0, 1.0, &o), None);
        assert_eq!(&a.mask(&o, &lim)[0..4], &[true, false, false, false]);
        assert_eq!(a.decision(&[1, 0], &o, "r").replicas("v", "cheap"), Some(1), "no answer: the desired replicas");
        // Blind: only the hold.
        o.slots[0].arrival_rate_rps = 1.0;
        o.missing.push("vllm:num_requests_running".into());
        assert_eq!(&a.mask(&o, &lim)[0..4], &[true, false, false, false]);
        // What a layout needs is checked, naming the field.
        assert!(layout(ActionLayoutKind::Capacity).0.check().unwrap_err().contains("capacities"));
        assert!(a
            .clone()
            .with_capacities(vec![1.0, 0.0])
            .check()
            .unwrap_err()
            .contains("capacities must be finite and > 0"));
        assert!(layout(ActionLayoutKind::Factored)
            .0
            .with_capacities(vec![1.0])
            .check()
            .unwrap_err()
            .contains("only for"));
    }

    #[test]
    fn in_flight_capacities_size_by_concurrency_and_a_capacity_layout_without_hold_masks_it() {
        let (a, lim) = layout(ActionLayoutKind::Capacity);
        let a = a.with_capacities(vec![2.0, 8.0]).with_capacity_rule(CapacityMetric::InFlight, false);
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.branches()[0].options, vec!["hold", "2inflight", "8inflight"]);
        let mut o = obs();
        o.pools[0].free_gpus = Some(8);
        // 3 waiting + 5 running = 8 in flight: 4 replicas at 2 each (the variant's
        // maximum), 1 at 8 each; the arrival rate plays no part.
        o.slots[0].waiting_requests = 3.0;
        o.slots[0].running_requests = 5.0;
        o.slots[0].arrival_rate_rps = 100.0;
        assert_eq!(a.capacity_target(0, 2.0, &o), Some(4));
        assert_eq!(a.capacity_target(0, 8.0, &o), Some(1));
        // No free hold: masked while a capacity is allowed ...
        assert_eq!(&a.mask(&o, &lim)[0..3], &[false, true, true]);
        // ... and the only choice when none is (blind).
        o.missing.push("vllm:num_requests_running".into());
        assert_eq!(&a.mask(&o, &lim)[0..3], &[true, false, false]);
        // The rule survives a checkpoint's serde round trip; other layouts refuse it.
        let back: ActionLayout = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert!(layout(ActionLayoutKind::Factored)
            .0
            .with_capacity_rule(CapacityMetric::InFlight, true)
            .check()
            .unwrap_err()
            .contains("capacityMetric"));
    }

    #[test]
    fn joint_layout_decodes_and_masks() {
        let (a, lim) = layout(ActionLayoutKind::Joint);
        assert_eq!(a.branches()[0].options.len(), 1 + 2 * 3);
        assert_eq!(a.slot_deltas(&[0]), vec![0, 0]);
        assert_eq!(a.slot_deltas(&[2]), vec![1, 0]);
        assert_eq!(a.slot_deltas(&[6]), vec![0, 2]);
        let m = a.mask(&obs(), &lim);
        assert_eq!(m, vec![true, false, true, false, false, true, true]);
        let d = a.decision(&[6], &obs(), "test");
        assert_eq!(d.replicas("v", "dear"), Some(2));
        assert_eq!(d.replicas("v", "cheap"), Some(1));
    }

    #[test]
    fn encoder_has_one_value_per_name_and_no_nan() {
        let layout = WorkloadLayout {
            slots: vec![SlotKey { variant: "v".into(), pool: "cheap".into() }],
            pools: vec!["cheap".into(), "dear".into()],
            slo_ttft_ms: 500.0,
            slo_tpot_ms: 50.0,
            rate_history_s: vec![60.0],
            cooldown_feature: true,
            base_feature: true,
            cooldown_s: 120.0,
        };
        let mut e = ObsEncoder::new(layout);
        let x = e.encode(&obs());
        assert_eq!(x.len(), e.feature_names().len());
        assert!(x.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn rate_history_tracks_peak_and_mean_within_the_horizon() {
        let layout = WorkloadLayout {
            slots: vec![],
            pools: vec![],
            slo_ttft_ms: 500.0,
            slo_tpot_ms: 50.0,
            rate_history_s: vec![30.0],
            cooldown_feature: false,
            base_feature: false,
            cooldown_s: 0.0,
        };
        let mut e = ObsEncoder::new(layout);
        let at = |t: f64, r: f64| Observation { time_s: t, arrival_rate_rps: r, ..Default::default() };
        let n = e.feature_names().len();
        let peak_mean = |x: &[f32]| ((x[n - 2] as f64).exp_m1(), (x[n - 1] as f64).exp_m1());
        e.encode(&at(0.0, 9.0));
        e.encode(&at(15.0, 1.0));
        // The same tick seen twice (feedback, then decide) counts once.
        e.encode(&at(15.0, 1.0));
        let (p, m) = peak_mean(&e.encode(&at(30.0, 2.0)));
        assert!((p - 9.0).abs() < 1e-4 && (m - 4.0).abs() < 1e-4, "peak {p} mean {m}");
        // 45 s: the 9 rps sample at 0 s is older than 30 s.
        let (p, m) = peak_mean(&e.encode(&at(45.0, 3.0)));
        assert!((p - 3.0).abs() < 1e-4 && (m - 2.0).abs() < 1e-4, "peak {p} mean {m}");
        // Reading does not record; an observation with missing metrics is not recorded.
        let mut missing = at(60.0, 100.0);
        missing.missing = vec!["vllm:num_requests_running".into()];
        e.encode(&missing);
        let (p, _) = peak_mean(&e.features(&at(75.0, 0.0)));
        assert!((p - 3.0).abs() < 1e-4, "peak {p}");
        e.reset();
        let (p, m) = peak_mean(&e.features(&at(90.0, 5.0)));
        assert!((p - 5.0).abs() < 1e-4 && (m - 5.0).abs() < 1e-4);
    }

    #[test]
    fn normaliser_matches_hand_computation_and_freezes() {
        let mut n = Normaliser::new(1);
        for v in [1.0, 2.0, 3.0] {
            n.update(&[v]);
        }
        assert!((n.mean[0] - 2.0).abs() < 1e-12);
        assert!((n.std(0) - 1.0).abs() < 1e-12);
        n.frozen = true;
        n.update(&[100.0]);
        let mut x = [4.0f32];
        n.apply(&mut x);
        assert!((x[0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn cooldown_masks_scale_downs_only_when_asked_and_is_a_feature() {
        let (a, lim) = layout(ActionLayoutKind::Factored);
        let mut o = obs();
        o.slots[0].desired_replicas = 3;
        o.pools[0].free_gpus = None;
        o.slots[0].scale_down_blocked_s = 30.0;
        // Without the flag the cooldown does not change the mask (older checkpoints).
        assert_eq!(&a.mask(&o, &lim)[0..4], &[true, true, true, false]);
        let a = a.with_mask_cooldown(true);
        assert_eq!(&a.mask(&o, &lim)[0..4], &[false, true, true, false]);
        o.slots[0].scale_down_blocked_s = 0.0;
        assert_eq!(&a.mask(&o, &lim)[0..4], &[true, true, true, false]);

        let layout = WorkloadLayout {
            slots: vec![SlotKey { variant: "v".into(), pool: "cheap".into() }],
            pools: vec![],
            slo_ttft_ms: 500.0,
            slo_tpot_ms: 50.0,
            rate_history_s: vec![],
            cooldown_feature: true,
            base_feature: false,
            cooldown_s: 120.0,
        };
        let mut e = ObsEncoder::new(layout);
        let names = e.feature_names();
        let i = names.iter().position(|n| n == "slot[v/cheap].scale_down_blocked").unwrap();
        o.slots[0].scale_down_blocked_s = 30.0;
        assert!((e.encode(&o)[i] - 0.25).abs() < 1e-6);
        assert_eq!(e.encode(&o).len(), names.len());
    }
}
