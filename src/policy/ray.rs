//! A Ray Serve style autoscaler: target ongoing requests per replica, with upscale and
//! downscale delays.
//!
//! Every control tick:
//! 1. `raw = ceil(ongoing / targetOngoingRequests)` where `ongoing` is running + waiting
//!    requests of the unit (Ray Serve's "ongoing requests" per replica, summed), at least 1.
//! 2. If `raw > current`, the scale-up need must persist for `upscaleDelaySeconds`: the time
//!    it was first seen is noted, and only when the need has lasted that long is the count
//!    set to the latest `raw`. Likewise `raw < current` must persist for
//!    `downscaleDelaySeconds`. When `raw == current`, or the direction flips, both timers
//!    reset (Ray Serve's consecutive-decision counter).
//! 3. A unit at zero replicas with traffic goes to 1 at once (there is no replica whose
//!    queue could prove the need).
//!
//! Parameters ([`RayParams`]): `targetOngoingRequests` (16), `upscaleDelaySeconds` (30),
//! `downscaleDelaySeconds` (600).

use crate::policy::config::{PolicyKind, PolicySpec, RayParams};
use crate::policy::registry::{check_pos, num, BuildContext, KindId, PolicyError, PolicyKindDef};
use crate::policy::scaled::{ScaledPolicy, Scaler, UnitMetrics};
use crate::policy::Policy;

/// The Ray Serve style algorithm for one scaling unit.
#[derive(Clone, Debug)]
pub struct RayScaler {
    params: RayParams,
    up_since_s: Option<f64>,
    down_since_s: Option<f64>,
    last: String,
}

impl RayScaler {
    /// A Ray Serve style scaler with the given parameters.
    pub fn new(params: RayParams) -> Self {
        RayScaler { params, up_since_s: None, down_since_s: None, last: String::new() }
    }
}

impl Scaler for RayScaler {
    fn recommend(&mut self, m: &UnitMetrics) -> u32 {
        let now = m.time_s;
        let current = m.current_replicas;
        let target = self.params.target_ongoing_requests;
        let raw =
            if target > 0.0 { ((m.ongoing_requests() / target - 1e-9).ceil().max(1.0)) as u32 } else { current.max(1) };
        if current == 0 {
            self.up_since_s = None;
            self.down_since_s = None;
            let traffic = m.arrival_rate_rps > 0.0 || m.ongoing_requests() > 0.0;
            self.last = "from zero".into();
            return u32::from(traffic);
        }
        let desired = if raw > current {
            self.down_since_s = None;
            let since = *self.up_since_s.get_or_insert(now);
            if now - since >= f64::from(self.params.upscale_delay_seconds) {
                self.up_since_s = None;
                raw
            } else {
                current
            }
        } else if raw < current {
            self.up_since_s = None;
            let since = *self.down_since_s.get_or_insert(now);
            if now - since >= f64::from(self.params.downscale_delay_seconds) {
                self.down_since_s = None;
                raw
            } else {
                current
            }
        } else {
            self.up_since_s = None;
            self.down_since_s = None;
            current
        };
        self.last = format!("{:.0} ongoing, raw {raw}", m.ongoing_requests());
        desired
    }

    fn explain(&self) -> String {
        self.last.clone()
    }
}

/// The `ray` kind (`kind: ray`, `ray[:KEY=VALUE]...`).
pub struct Ray;

impl PolicyKindDef for Ray {
    type Params = RayParams;
    const ID: KindId = KindId("ray");
    const USAGE: &'static str = "ray[:target=F][:up-delay=S][:down-delay=S]";
    const KEYS: &'static str = "target, up-delay, down-delay";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Ray);

    fn from_section(&self, p: &PolicySpec) -> Result<RayParams, PolicyError> {
        Ok(p.ray.clone().unwrap_or_default())
    }

    fn to_section(&self, params: &RayParams, p: &mut PolicySpec) {
        p.ray = Some(params.clone());
    }

    fn set(&self, ray: &mut RayParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "target" => ray.target_ongoing_requests = num(key, v, "a number")?,
            "up-delay" => ray.upscale_delay_seconds = num(key, v, "whole seconds")?,
            "down-delay" => ray.downscale_delay_seconds = num(key, v, "whole seconds")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, r: &RayParams) -> Result<(), PolicyError> {
        check_pos("spec.policy.ray.targetOngoingRequests", r.target_ongoing_requests)
    }

    fn build(&self, params: &RayParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        Ok(Box::new(ScaledPolicy::new("ray", RayScaler::new(params.clone()), ctx.placement(), ctx.info())))
    }
}
