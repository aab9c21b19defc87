//! The Knative Pod Autoscaler (KPA) algorithm, as Knative documents and implements it.
//!
//! Every control tick the observed concurrency (running + waiting requests of the unit, what
//! Knative's queue-proxies report) is recorded. Then:
//! 1. `stable` = mean concurrency over the last `stableWindowSeconds`; `panic` = mean over
//!    the panic window, `stableWindowSeconds × panicWindowPercentage / 100` (6 s by default;
//!    with control ticks longer than that it holds the latest sample only).
//! 2. The per-replica target is `containerConcurrencyTarget × targetUtilization`;
//!    `desiredStable = ceil(stable / target)`, `desiredPanic = ceil(panic / target)`.
//! 3. Rate limits relative to ready replicas (at least 1): the count may grow to at most
//!    `ceil(maxScaleUpRate × ready)` and shrink to at least `floor(ready / maxScaleDownRate)`
//!    (so by default at most halving per step).
//! 4. **Panic**: when `panic / target ≥ panicThresholdPercentage/100 × ready` (twice the
//!    ready capacity by default) the autoscaler enters (or stays in) panic and notes the
//!    time. In panic the count is `desiredPanic`, but never below the highest count asked
//!    during this panic: **no scale-down in panic**. Panic ends once a whole stable window
//!    has passed without the panic condition; then the count follows `desiredStable`.
//! 5. The floor is 1 replica (this implementation does not scale to zero; Knative would
//!    after its scale-to-zero grace period with `min-scale: 0`).
//!
//! With no sample in the stable window (e.g. right after a reset) the count is held.
//!
//! Parameters ([`KpaParams`]): `containerConcurrencyTarget` (16), `targetUtilization` (0.7),
//! `stableWindowSeconds` (60), `panicWindowPercentage` (10), `panicThresholdPercentage`
//! (200), `maxScaleDownRate` (2), `maxScaleUpRate` (1000).

use std::collections::VecDeque;

use crate::policy::config::{KpaParams, PolicyKind, PolicySpec};
use crate::policy::registry::{check_pos, invalid, num, BuildContext, KindId, PolicyError, PolicyKindDef};
use crate::policy::scaled::{ScaledPolicy, Scaler, UnitMetrics};
use crate::policy::Policy;

/// The KPA algorithm for one scaling unit.
#[derive(Clone, Debug)]
pub struct KpaScaler {
    params: KpaParams,
    samples: VecDeque<(f64, f64)>,
    /// Time the panic condition last held, while in panic.
    panic_since: Option<f64>,
    /// Highest count asked during the current panic.
    max_panic_pods: u32,
    last: String,
}

impl KpaScaler {
    /// A KPA with the given parameters.
    pub fn new(params: KpaParams) -> Self {
        KpaScaler { params, samples: VecDeque::new(), panic_since: None, max_panic_pods: 0, last: String::new() }
    }

    /// Whether the autoscaler is in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic_since.is_some()
    }

    fn mean_since(&self, from: f64) -> Option<f64> {
        let (mut n, mut sum) = (0u32, 0.0);
        for &(t, c) in self.samples.iter().rev() {
            if t < from {
                break;
            }
            n += 1;
            sum += c;
        }
        if n == 0 {
            None
        } else {
            Some(sum / f64::from(n))
        }
    }
}

impl Scaler for KpaScaler {
    fn recommend(&mut self, m: &UnitMetrics) -> u32 {
        let now = m.time_s;
        let p = &self.params;
        let stable_w = f64::from(p.stable_window_seconds);
        let panic_w = stable_w * p.panic_window_percentage / 100.0;
        self.samples.push_back((now, m.ongoing_requests()));
        while self.samples.front().is_some_and(|&(t, _)| now - t > stable_w) {
            self.samples.pop_front();
        }
        let current = m.current_replicas;
        let target = p.container_concurrency_target * p.target_utilization;
        let (Some(stable), true) = (self.mean_since(now - stable_w), target > 0.0) else {
            self.last = "no samples".into();
            return current.max(1);
        };
        // The latest sample is always in the panic window, however long the tick.
        let panic = self.mean_since(now - panic_w).unwrap_or(stable);
        let ready = f64::from(m.ready_replicas.max(1));
        let max_up = (p.max_scale_up_rate * ready).ceil() as u32;
        let max_down = if p.max_scale_down_rate > 0.0 { (ready / p.max_scale_down_rate).floor() as u32 } else { 0 };
        let clamp = |x: u32| x.clamp(max_down.min(max_up), max_up.max(1));
        let desired_stable = clamp((stable / target - 1e-9).ceil().max(0.0) as u32);
        let desired_panic = clamp((panic / target - 1e-9).ceil().max(0.0) as u32);
        let over_threshold = panic / target >= p.panic_threshold_percentage / 100.0 * ready;
        if over_threshold {
            if self.panic_since.is_none() {
                self.max_panic_pods = current;
            }
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|t| now - t >= stable_w) {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        let desired = if self.in_panic() {
            // No scale-down in panic.
            let d = desired_panic.max(self.max_panic_pods);
            self.max_panic_pods = d;
            d
        } else {
            desired_stable
        };
        self.last = format!(
            "{}stable {:.1}, panic {:.1} concurrent, target {:.1}/replica",
            if self.in_panic() { "PANIC " } else { "" },
            stable,
            panic,
            target
        );
        desired.max(1)
    }

    fn explain(&self) -> String {
        self.last.clone()
    }
}

/// The `kpa` kind (`kind: kpa`, `kpa[:KEY=VALUE]...`).
pub struct Kpa;

impl PolicyKindDef for Kpa {
    type Params = KpaParams;
    const ID: KindId = KindId("kpa");
    const USAGE: &'static str = "kpa[:target=F][:utilization=F][:stable-window=S][:panic-pct=F][:panic-threshold=F][:max-down-rate=F][:max-up-rate=F]";
    const KEYS: &'static str =
        "target, utilization, stable-window, panic-pct, panic-threshold, max-down-rate, max-up-rate";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Kpa);

    fn from_section(&self, p: &PolicySpec) -> Result<KpaParams, PolicyError> {
        Ok(p.kpa.clone().unwrap_or_default())
    }

    fn to_section(&self, params: &KpaParams, p: &mut PolicySpec) {
        p.kpa = Some(params.clone());
    }

    fn set(&self, kpa: &mut KpaParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "target" => kpa.container_concurrency_target = num(key, v, "a number")?,
            "utilization" => kpa.target_utilization = num(key, v, "a number")?,
            "stable-window" => kpa.stable_window_seconds = num(key, v, "whole seconds")?,
            "panic-pct" => kpa.panic_window_percentage = num(key, v, "a number")?,
            "panic-threshold" => kpa.panic_threshold_percentage = num(key, v, "a number")?,
            "max-down-rate" => kpa.max_scale_down_rate = num(key, v, "a number")?,
            "max-up-rate" => kpa.max_scale_up_rate = num(key, v, "a number")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, k: &KpaParams) -> Result<(), PolicyError> {
        check_pos("spec.policy.kpa.containerConcurrencyTarget", k.container_concurrency_target)?;
        if !(k.target_utilization > 0.0 && k.target_utilization <= 1.0) {
            return Err(invalid(
                "spec.policy.kpa.targetUtilization",
                format!("{} must be in (0, 1]", k.target_utilization),
            ));
        }
        if k.stable_window_seconds == 0 {
            return Err(invalid("spec.policy.kpa.stableWindowSeconds", "must be at least 1"));
        }
        if !(k.panic_window_percentage > 0.0 && k.panic_window_percentage <= 100.0) {
            return Err(invalid(
                "spec.policy.kpa.panicWindowPercentage",
                format!("{} must be in (0, 100]", k.panic_window_percentage),
            ));
        }
        check_pos("spec.policy.kpa.panicThresholdPercentage", k.panic_threshold_percentage)?;
        if !(k.max_scale_down_rate >= 1.0) {
            return Err(invalid(
                "spec.policy.kpa.maxScaleDownRate",
                format!("{} must be at least 1", k.max_scale_down_rate),
            ));
        }
        if !(k.max_scale_up_rate >= 1.0) {
            return Err(invalid(
                "spec.policy.kpa.maxScaleUpRate",
                format!("{} must be at least 1", k.max_scale_up_rate),
            ));
        }
        Ok(())
    }

    fn build(&self, params: &KpaParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        Ok(Box::new(ScaledPolicy::new("kpa", KpaScaler::new(params.clone()), ctx.placement(), ctx.info())))
    }
}
