//! The Kubernetes Horizontal Pod Autoscaler algorithm (autoscaling/v2), as the Kubernetes
//! documentation specifies it, on vLLM metrics.
//!
//! Every control tick (the HPA's sync period):
//! 1. For each metric target, the average per **ready** replica is compared with its
//!    target: `ratio = average / target`. If `|ratio − 1| ≤ tolerance` the metric
//!    recommends the current count (no change). Otherwise
//!    `desired = ceil(ready × ratio)`. For a scale-up, replicas that are not ready yet are
//!    counted with a metric of 0 (the documented conservative rule), i.e. the ratio is
//!    recomputed over `ready + starting` replicas; if that no longer asks for more, the
//!    metric recommends no change.
//! 2. With several metrics, the largest recommendation wins.
//! 3. **Scale-down stabilisation**: recommendations are kept for
//!    `scaleDownStabilizationSeconds`; the count applied is never below the largest
//!    recommendation in that window (so a scale-down happens only once the whole window
//!    agrees; scale-ups are not stabilised, as the default `scaleUp.stabilizationWindowSeconds: 0`).
//! 4. **Scale-up rate limit**: within any `scaleUpPeriodSeconds`, the count may grow to at
//!    most `max(start × (1 + scaleUpPercent/100), start + scaleUpPods)`, where `start` is
//!    the count at the beginning of the period (the default policies, `selectPolicy: Max`).
//! 5. The floor is 1 replica (`minReplicas` of an HPA is at least 1).
//!
//! As the Kubernetes controller does on its first sync of an HPA, the first tick records
//! the current count as a recommendation, so a fresh HPA (a new operator, or a new leader,
//! with or without a saved state, which can be minutes old) waits out one stabilisation
//! window before it scales below what it found instead of scaling down at once.
//!
//! With no ready replica there are no metrics: the HPA keeps the current count, except
//! that a unit at zero replicas with traffic is brought to 1 (an HPA never leaves a
//! Deployment below its `minReplicas` of 1).
//!
//! Parameters ([`HpaParams`]): `targets` (metric and target average per replica; metrics
//! are `ongoingRequests` = running + waiting, `waitingRequests`, `runningRequests`,
//! `kvCacheUsage` as a 0..1 fraction), `tolerance` (default 0.1),
//! `scaleDownStabilizationSeconds` (300), `scaleUpPercent` (100), `scaleUpPods` (4),
//! `scaleUpPeriodSeconds` (15).

use std::collections::VecDeque;

use crate::policy::config::{HpaMetric, HpaParams, HpaTarget, PolicyKind, PolicySpec};
use crate::policy::registry::{check_pos, invalid, num, BuildContext, KindId, PolicyError, PolicyKindDef};
use crate::policy::scaled::{ScaledPolicy, Scaler, UnitMetrics};
use crate::policy::Policy;

/// The HPA algorithm for one scaling unit.
#[derive(Clone, Debug)]
pub struct HpaScaler {
    params: HpaParams,
    /// (time, recommendation) within the stabilisation window.
    recommendations: VecDeque<(f64, u32)>,
    /// (time, replicas added) by scale-ups within the rate-limit period.
    scale_ups: VecDeque<(f64, u32)>,
    /// Whether the first tick has run (and recorded the count it found).
    seeded: bool,
    last: String,
}

impl HpaScaler {
    /// An HPA with the given parameters.
    pub fn new(params: HpaParams) -> Self {
        HpaScaler { params, recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
            seeded: false,
            last: String::new(),
        }
    }

    fn metric_value(metric: HpaMetric, m: &UnitMetrics) -> f64 {
        match metric {
            HpaMetric::OngoingRequests => m.ongoing_requests(),
            HpaMetric::WaitingRequests => m.waiting_requests,
            HpaMetric::RunningRequests => m.running_requests,
            HpaMetric::KvCacheUsage => m.kv_cache_usage * f64::from(m.ready_replicas),
        }
    }

    /// The raw recommendation of one metric (step 1).
    fn metric_recommendation(&self, metric: HpaMetric, target: f64, m: &UnitMetrics) -> u32 {
        let current = m.current_replicas;
        if target <= 0.0 || m.ready_replicas == 0 {
            return current;
        }
        let total = Self::metric_value(metric, m);
        let ready = f64::from(m.ready_replicas);
        let ratio = total / ready / target;
        if (ratio - 1.0).abs() <= self.params.tolerance {
            return current;
        }
        if ratio > 1.0 && m.starting_replicas > 0 {
            let counted = ready + f64::from(m.starting_replicas);
            let r2 = total / counted / target;
            if r2 <= 1.0 + self.params.tolerance {
                return current;
            }
            return (counted * r2 - 1e-9).ceil() as u32;
        }
        (ready * ratio - 1e-9).ceil() as u32
    }
}

impl Scaler for HpaScaler {
    fn recommend(&mut self, m: &UnitMetrics) -> u32 {
        let now = m.time_s;
        let current = m.current_replicas;
        if !self.seeded {
            // Also after a restored state: what was saved can be minutes old, and the count
            // found now is what the last leader decided since.
            self.seeded = true;
            self.recommendations.retain(|&(t, _)| t <= now);
            self.recommendations.push_back((now, current));
        }
        if m.ready_replicas == 0 {
            let n = if current == 0 && (m.arrival_rate_rps > 0.0 || m.ongoing_requests() > 0.0) {
                1
            } else {
                current.max(1)
            };
            self.last = "no ready replica: no metrics".into();
            if n > current {
                self.scale_ups.push_back((now, n - current));
            }
            return n;
        }
        // 1-2: the largest recommendation over the metrics.
        let raw = self
            .params
            .targets
            .iter()
            .map(|t| self.metric_recommendation(t.metric, t.target, m))
            .max()
            .unwrap_or(current)
            .max(1);
        // 3: scale-down stabilisation over the window.
        let window = f64::from(self.params.scale_down_stabilization_seconds);
        self.recommendations.push_back((now, raw));
        while self.recommendations.front().is_some_and(|&(t, _)| now - t > window) {
            self.recommendations.pop_front();
        }
        let stabilised_floor = self.recommendations.iter().map(|&(_, r)| r).max().unwrap_or(raw);
        let mut desired = if raw < current { stabilised_floor.min(current) } else { raw };
        // 4: scale-up rate limit over the period.
        let period = f64::from(self.params.scale_up_period_seconds);
        while self.scale_ups.front().is_some_and(|&(t, _)| now - t >= period) {
            self.scale_ups.pop_front();
        }
        if desired > current {
            let added: u32 = self.scale_ups.iter().map(|&(_, n)| n).sum();
            let start = current.saturating_sub(added);
            let by_percent = (f64::from(start) * (1.0 + f64::from(self.params.scale_up_percent) / 100.0)).ceil() as u32;
            let by_pods = start + self.params.scale_up_pods;
            let limit = by_percent.max(by_pods);
            desired = desired.min(limit.max(current));
            if desired > current {
                self.scale_ups.push_back((now, desired - current));
            }
        }
        self.last = format!("raw {raw}, window max {stabilised_floor}");
        desired.max(1)
    }

    fn explain(&self) -> String {
        self.last.clone()
    }

    /// The stabilisation window's recommendations and the rate-limit period's scale-ups,
    /// with their times (the observation's clock: Unix seconds in the operator), so a new
    /// leader keeps the window instead of scaling down at once.
    fn export_state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "recommendations": self.recommendations.iter().collect::<Vec<_>>(),
            "scaleUps": self.scale_ups.iter().collect::<Vec<_>>(),
        }))
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let list = |field: &str| -> Result<VecDeque<(f64, u32)>, String> {
            let v = state.get(field).cloned().unwrap_or(serde_json::Value::Array(Vec::new()));
            let items: Vec<(f64, u32)> =
                serde_json::from_value(v).map_err(|e| format!("{field}: expected [[time, replicas], ...]: {e}"))?;
            if items.len() > MAX_STATE_ENTRIES {
                return Err(format!("{field}: {} entries, at most {MAX_STATE_ENTRIES}", items.len()));
            }
            if let Some((i, _)) = items.iter().enumerate().find(|(_, (t, _))| !t.is_finite() || *t < 0.0) {
                return Err(format!("{field}[{i}]: the time must be a finite number >= 0"));
            }
            if items.windows(2).any(|w| w[1].0 < w[0].0) {
                return Err(format!("{field}: times must not decrease"));
            }
            Ok(items.into_iter().collect())
        };
        let (recommendations, scale_ups) = (list("recommendations")?, list("scaleUps")?);
        self.recommendations = recommendations;
        self.scale_ups = scale_ups;
        Ok(())
    }
}

/// Most entries of a restored window (one per control tick: a 5-minute window at a 1 s
/// interval is 300).
const MAX_STATE_ENTRIES: usize = 100_000;

/// The `hpa` kind (`kind: hpa`, `hpa[:KEY=VALUE]...`).
pub struct Hpa;

impl PolicyKindDef for Hpa {
    type Params = HpaParams;
    const ID: KindId = KindId("hpa");
    const USAGE: &'static str = "hpa[:target=F][:metric=ongoingRequests|waitingRequests|runningRequests|kvCacheUsage][:tolerance=F][:window=S][:up-percent=N][:up-pods=N][:up-period=S]";
    const KEYS: &'static str = "target, metric, tolerance, window, up-percent, up-pods, up-period";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Hpa);

    fn from_section(&self, p: &PolicySpec) -> Result<HpaParams, PolicyError> {
        Ok(p.hpa.clone().unwrap_or_default())
    }

    fn to_section(&self, params: &HpaParams, p: &mut PolicySpec) {
        p.hpa = Some(params.clone());
    }

    fn set(&self, hpa: &mut HpaParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "target" => {
                let t: f64 = num(key, v, "a number")?;
                match hpa.targets.first_mut() {
                    Some(first) => first.target = t,
                    None => hpa.targets.push(HpaTarget { metric: HpaMetric::OngoingRequests, target: t }),
                }
            }
            "metric" => {
                let m = match v {
                    "ongoingRequests" => HpaMetric::OngoingRequests,
                    "waitingRequests" => HpaMetric::WaitingRequests,
                    "runningRequests" => HpaMetric::RunningRequests,
                    "kvCacheUsage" => HpaMetric::KvCacheUsage,
                    _ => {
                        return Err(invalid(
                            key,
                            format!("`{v}`; valid: ongoingRequests, waitingRequests, runningRequests, kvCacheUsage"),
                        ))
                    }
                };
                if let Some(first) = hpa.targets.first_mut() {
                    first.metric = m;
                    if m == HpaMetric::KvCacheUsage && first.target > 1.0 {
                        first.target = 0.8;
                    }
                }
            }
            "tolerance" => hpa.tolerance = num(key, v, "a number")?,
            "window" => hpa.scale_down_stabilization_seconds = num(key, v, "whole seconds")?,
            "up-percent" => hpa.scale_up_percent = num(key, v, "a whole percentage")?,
            "up-pods" => hpa.scale_up_pods = num(key, v, "a whole number")?,
            "up-period" => hpa.scale_up_period_seconds = num(key, v, "whole seconds")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, h: &HpaParams) -> Result<(), PolicyError> {
        if h.targets.is_empty() {
            return Err(invalid("spec.policy.hpa.targets", "needs at least one metric target"));
        }
        for (i, t) in h.targets.iter().enumerate() {
            check_pos(&format!("spec.policy.hpa.targets[{i}].target"), t.target)?;
            if t.metric == HpaMetric::KvCacheUsage && t.target > 1.0 {
                return Err(invalid(
                    &format!("spec.policy.hpa.targets[{i}].target"),
                    "kvCacheUsage is a fraction: use a target in (0, 1]",
                ));
            }
        }
        if !(0.0..1.0).contains(&h.tolerance) {
            return Err(invalid("spec.policy.hpa.tolerance", format!("{} must be in [0, 1)", h.tolerance)));
        }
        if h.scale_up_period_seconds == 0 {
            return Err(invalid("spec.policy.hpa.scaleUpPeriodSeconds", "must be at least 1"));
        }
        Ok(())
    }

    fn build(&self, params: &HpaParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        Ok(Box::new(ScaledPolicy::new("hpa", HpaScaler::new(params.clone()), ctx.placement(), ctx.info())))
    }
}
