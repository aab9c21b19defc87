//! The forecast planner: sizes the fleet for the arrival rate it forecasts over the time a
//! new replica takes to become ready, instead of reacting to load that has already arrived.
//!
//! # Algorithm (every control tick, per scaling unit)
//! A scaling unit is one variant under `variantSelection: fixed`, the whole workload
//! otherwise (as in [`crate::policy::scaled`]). Its observed arrival rate `y` (the
//! workload's rate when the unit is the whole workload, else the sum of its slots' rates)
//! is a mean over the last `window_s` seconds, so it is taken as the rate at
//! `t_data = time − window_s / 2`.
//!
//! 1. **Forecast model** ([`Forecaster`]): Holt's double exponential smoothing (level and
//!    trend per second, weights `alpha`, `beta`) of the rate, which follows the short-term
//!    trend of one-hour traces. With `seasonSeconds > 0` a seasonal profile is learned too:
//!    the cycle is cut into `seasonBins` knots (at most one per control interval), each
//!    observation updates the two knots around its phase with linear weights, and a knot's
//!    value is an exponentially weighted mean over cycles (weight `gamma` for the newest).
//!    Once one whole cycle has been observed (every knot has data), the model becomes
//!    Holt–Winters-like and additive: Holt smooths the *deseasonalised* rate
//!    `y − S(t)`, and the forecast is `S(t + h) + level + trend × h`, where `S` interpolates
//!    the profile linearly between knots. Before that (and always with `seasonSeconds: 0`)
//!    it is plain Holt. Forecasts are clamped at 0.
//! 2. **Horizon**: the fleet asked for now serves from now (a scale-down acts at once) and
//!    new replicas are ready after the cold start, so the unit is sized for the largest
//!    forecast over `[now, now + coldStart + horizon]` (sampled at 9 points), and never
//!    below the rate observed now.
//! 3. **Percentile**: the error of the forecast made `coldStart + horizon` ahead is
//!    recorded when its time comes; `σ` is the root of an exponentially weighted mean
//!    (weight 0.1) of the squared errors (until three errors are known: the Poisson noise
//!    of the measured rate, `sqrt(y / window_s)`). The rate planned for is
//!    `peak + z × σ`, `z` the standard normal quantile of `percentile` (90 → 1.28), plus the
//!    waiting requests drained over the same horizon.
//! 4. **Replicas**: `ceil(rate / capacityRps)`, at least 1; then placed on pools cheapest
//!    first (or as `placement` says), and the variant chosen by `variantSelection`, as for
//!    every policy. The shield clamps to the spec's limits afterwards.
//! 5. **Damped scale-down**: below the current count, the largest recommendation of the
//!    last `scaleDownStabilizationSeconds` is kept (the forecast already covers the cold
//!    start, so this window is shorter than HPA's 300 s).
//!
//! # Parameters ([`ForecastParams`])
//! `capacityRps` (default 1.3 requests/s per replica: Llama-3-8B on an A100 on the Azure
//! code trace; measure it for each model, GPU and traffic), `coldStartSeconds` (default:
//! the variants' largest `coldStartSeconds`, else 120), `horizonSeconds` (default: one
//! control interval), `percentile` (90), `alpha` (0.5), `beta` (0.1), `seasonSeconds`
//! (86400; 0 = no season), `seasonBins` (96), `gamma` (0.3),
//! `scaleDownStabilizationSeconds` (120).
//!
//! # State
//! Everything the planner learns is in [`ForecastState`] (serde), taken with
//! [`ForecastPolicy::state`] and put back with [`ForecastPolicy::restore`], or as JSON
//! through [`Policy::export_state`] / [`Policy::import_state`]: the operator keeps it in a
//! ConfigMap owned by the workload and gives it back after a restart or a spec change, so
//! the seasonal profile survives (docs/operator.md, "Policy state"). An imported state is
//! checked against the parameters (knot count, season length, finite values); the current
//! `alpha`, `beta` and `gamma` replace the saved ones. After a gap of more than
//! [`MAX_GAP_S`] without observations (an operator down for a while) Holt's level and trend
//! restart from the next observation and the pending forecasts are dropped; the seasonal
//! profile is kept.
//!
//! # Forecast-error warning
//! When the root-mean-square error of the recent forecasts (`σ` above, once three errors
//! are known) exceeds [`ERROR_WARN_RATIO`] of the larger of the mean observed rate (weight
//! 0.1 per tick) and one replica's capacity, the decision carries a warning (published by the operator as a
//! `PolicyWarning` Event) once; it is armed again when `σ` falls below half that.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::{ForecastParams, PolicyKind, PolicySpec, VariantSelection};
use crate::policy::observation::{Decision, Observation};
use crate::policy::placement::{free_gpus, Placement, WorkloadInfo};
use crate::policy::registry::{check_pos, invalid, num, BuildContext, KindId, PolicyError, PolicyKindDef};
use crate::policy::Policy;

/// Cold start assumed when neither the policy nor any variant gives one, seconds.
pub const DEFAULT_COLD_START_S: f64 = 120.0;
/// Weight of the newest squared forecast error in the error variance.
const ERROR_WEIGHT: f64 = 0.1;
/// Forecast errors needed before their variance replaces the Poisson prior.
const MIN_ERRORS: u32 = 3;
/// Points at which the forecast is sampled over the planning horizon.
const HORIZON_SAMPLES: usize = 9;
/// Seconds without an observation after which Holt's level and trend restart.
pub const MAX_GAP_S: f64 = 1800.0;
/// RMS forecast error, as a share of max(observed rate, capacity per replica), above which
/// the planner warns.
pub const ERROR_WARN_RATIO: f64 = 0.5;

/// The standard normal quantile of `p` in (0, 1) (Acklam's rational approximation,
/// relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// Holt's level and trend, with an optional additive seasonal profile (see the module docs).
///
/// Times are seconds on any fixed origin (twin time, Unix time); the seasonal phase is
/// `t mod seasonSeconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecaster {
    alpha: f64,
    beta: f64,
    gamma: f64,
    season_s: f64,
    /// Knot values of the seasonal profile (requests/s), knot `k` at phase `k × season_s / bins`.
    profile: Vec<f64>,
    /// Cycles that contributed to each knot.
    seen: Vec<u32>,
    /// Knots of the current pass still receiving observations: (absolute knot index, Σw, Σw·y).
    open: VecDeque<(i64, f64, f64)>,
    /// Whether the seasonal profile is in use (one whole cycle observed).
    seasonal: bool,
    first_t: Option<f64>,
    last_t: Option<f64>,
    /// Holt's level of the (deseasonalised) rate, requests/s.
    level: Option<f64>,
    /// Holt's trend, requests/s per second.
    trend: f64,
}

impl Forecaster {
    /// A forecaster with level weight `alpha`, trend weight `beta`, and, for
    /// `season_s > 0`, a seasonal profile of `bins` knots updated with weight `gamma`.
    pub fn new(alpha: f64, beta: f64, gamma: f64, season_s: f64, bins: usize) -> Self {
        let bins = if season_s > 0.0 { bins.max(2) } else { 0 };
        Forecaster {
            alpha: alpha.clamp(1e-6, 1.0),
            beta: beta.clamp(0.0, 1.0),
            gamma: gamma.clamp(1e-6, 1.0),
            season_s: season_s.max(0.0),
            profile: vec![0.0; bins],
            seen: vec![0; bins],
            open: VecDeque::new(),
            seasonal: false,
            first_t: None,
            last_t: None,
            level: None,
            trend: 0.0,
        }
    }

    /// Whether the seasonal component is in use (a whole cycle has been observed).
    pub fn is_seasonal(&self) -> bool {
        self.seasonal
    }

    /// Time of the last observation, seconds.
    pub fn last_time(&self) -> Option<f64> {
        self.last_t
    }

    /// Replaces the smoothing weights (kept as given, clamped as in [`Forecaster::new`]).
    pub fn set_weights(&mut self, alpha: f64, beta: f64, gamma: f64) {
        self.alpha = alpha.clamp(1e-6, 1.0);
        self.beta = beta.clamp(0.0, 1.0);
        self.gamma = gamma.clamp(1e-6, 1.0);
    }

    /// Checks a forecaster that was deserialised: `season_s` and `bins` as the policy's
    /// parameters give them, every number finite. The error names the field.
    pub fn check(&self, season_s: f64, bins: usize) -> Result<(), String> {
        let bins = if season_s > 0.0 { bins.max(2) } else { 0 };
        if (self.season_s - season_s.max(0.0)).abs() > 1e-9 {
            return Err(format!(
                "forecaster.season_s is {} s, the policy's seasonSeconds is {season_s} s (changed since it was saved)",
                self.season_s
            ));
        }
        if self.profile.len() != bins || self.seen.len() != bins {
            return Err(format!(
                "forecaster.profile has {} knots and forecaster.seen {}, the policy uses {bins} (seasonBins changed since it was saved)",
                self.profile.len(),
                self.seen.len()
            ));
        }
        let finite = |x: f64| x.is_finite();
        if !self.profile.iter().all(|&v| finite(v)) || !self.open.iter().all(|o| finite(o.1) && finite(o.2)) {
            return Err("forecaster.profile or forecaster.open holds a non-finite value".into());
        }
        if !finite(self.trend) || !self.level.is_none_or(finite) || ![self.first_t, self.last_t].iter().flatten().all(|&t| finite(t)) {
            return Err("forecaster.level, trend, first_t or last_t is not finite".into());
        }
        Ok(())
    }

    /// Forgets Holt's level and trend (kept: the seasonal profile), so the next
    /// observation starts them again.
    pub fn restart_level(&mut self) {
        self.level = None;
        self.trend = 0.0;
    }

    fn bin_s(&self) -> f64 {
        self.season_s / self.profile.len() as f64
    }

    /// The seasonal profile at time `t` (0 while it is not in use).
    pub fn seasonal_at(&self, t: f64) -> f64 {
        if !self.seasonal {
            return 0.0;
        }
        let b = self.profile.len() as i64;
        let x = t / self.bin_s();
        let i = x.floor();
        let f = x - i;
        let k = (i as i64).rem_euclid(b) as usize;
        let k1 = (k + 1) % b as usize;
        self.profile[k] * (1.0 - f) + self.profile[k1] * f
    }

    fn learn_season(&mut self, t: f64, y: f64) {
        if self.profile.is_empty() {
            return;
        }
        let x = t / self.bin_s();
        let i = x.floor() as i64;
        let f = x - x.floor();
        // Knots left behind receive nothing more: fold them into the profile.
        while self.open.front().is_some_and(|&(k, _, _)| k < i) {
            let (k, sw, swy) = self.open.pop_front().expect("front exists");
            if sw > 1e-12 {
                let j = k.rem_euclid(self.profile.len() as i64) as usize;
                let v = swy / sw;
                self.profile[j] =
                    if self.seen[j] == 0 { v } else { (1.0 - self.gamma) * self.profile[j] + self.gamma * v };
                self.seen[j] += 1;
            }
        }
        for (k, w) in [(i, 1.0 - f), (i + 1, f)] {
            match self.open.iter_mut().find(|o| o.0 == k) {
                Some(o) => {
                    o.1 += w;
                    o.2 += w * y;
                }
                None => self.open.push_back((k, w, w * y)),
            }
        }
        if !self.seasonal && self.first_t.is_some_and(|t0| t - t0 >= self.season_s) && self.seen.iter().all(|&n| n > 0)
        {
            self.seasonal = true;
            // Holt restarts on the deseasonalised rate.
            self.level = None;
            self.trend = 0.0;
        }
    }

    /// Adds the observed rate `y` (requests/s) at time `t` (seconds). Observations not
    /// later than the last one are ignored.
    pub fn observe(&mut self, t: f64, y: f64) {
        if !(t.is_finite() && y.is_finite()) || self.last_t.is_some_and(|l| t <= l) {
            return;
        }
        self.first_t.get_or_insert(t);
        self.learn_season(t, y);
        let r = y - self.seasonal_at(t);
        match (self.level, self.last_t) {
            (Some(level), Some(last)) => {
                let dt = t - last;
                let predicted = level + self.trend * dt;
                let new_level = self.alpha * r + (1.0 - self.alpha) * predicted;
                self.trend = self.beta * (new_level - level) / dt + (1.0 - self.beta) * self.trend;
                self.level = Some(new_level);
            }
            _ => {
                self.level = Some(r);
                self.trend = 0.0;
            }
        }
        self.last_t = Some(t);
    }

    /// The forecast rate at time `t` (at or after the last observation), requests/s;
    /// `None` before the first observation.
    pub fn forecast(&self, t: f64) -> Option<f64> {
        let (level, last) = (self.level?, self.last_t?);
        let h = (t - last).max(0.0);
        Some((self.seasonal_at(t) + level + self.trend * h).max(0.0))
    }
}

/// What the planner has learned of one scaling unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitState {
    /// The rate model.
    pub forecaster: Forecaster,
    /// Forecasts waiting for their time to come: (time, forecast rate).
    pub pending: VecDeque<(f64, f64)>,
    /// Exponentially weighted mean of the squared forecast errors, (requests/s)².
    pub error_var: f64,
    /// Forecast errors recorded.
    pub errors: u32,
    /// Recent recommendations (time, replicas), for damped scale-down.
    pub recommendations: VecDeque<(f64, u32)>,
    /// Whether the large-error warning was given and not yet re-armed.
    #[serde(default)]
    pub error_warned: bool,
    /// Exponentially weighted mean of the observed rate (weight 0.1), the scale the
    /// forecast error is judged against, requests/s.
    #[serde(default)]
    pub rate_mean: f64,
}

/// Everything the planner has learned, per scaling unit (variant name, or `*` for the
/// whole workload under variant selection): what a restart would need to carry over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForecastState {
    /// Per scaling unit.
    pub units: BTreeMap<String, UnitState>,
}

/// The forecast planner as a [`Policy`].
#[derive(Clone, Debug)]
pub struct ForecastPolicy {
    params: ForecastParams,
    cold_start_s: f64,
    horizon_s: f64,
    z: f64,
    bins: usize,
    state: ForecastState,
    placement: Placement,
    info: WorkloadInfo,
}

impl ForecastPolicy {
    /// The planner for `spec` with `params` (defaults filled from the spec as documented).
    pub fn new(params: ForecastParams, spec: &LLMWorkloadSpec, placement: Placement) -> Self {
        let interval = f64::from(spec.policy.interval_seconds.max(1));
        let cold_start_s = params.cold_start_seconds.unwrap_or_else(|| {
            spec.variants
                .iter()
                .filter_map(|v| v.cold_start_seconds)
                .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c))))
                .unwrap_or(DEFAULT_COLD_START_S)
        });
        let horizon_s = params.horizon_seconds.unwrap_or(interval);
        let per_interval = (params.season_seconds / interval).floor().max(2.0) as usize;
        let bins = (params.season_bins.max(2) as usize).min(per_interval);
        ForecastPolicy {
            z: normal_quantile(params.percentile / 100.0).max(0.0),
            params,
            cold_start_s,
            horizon_s,
            bins,
            state: ForecastState::default(),
            placement,
            info: WorkloadInfo::from_spec(spec),
        }
    }

    /// Seconds ahead the planner covers (cold start + horizon).
    pub fn lead_s(&self) -> f64 {
        self.cold_start_s + self.horizon_s
    }

    /// The learned state (to persist across restarts).
    pub fn state(&self) -> &ForecastState {
        &self.state
    }

    /// Puts back a state taken with [`ForecastPolicy::state`].
    pub fn restore(&mut self, state: ForecastState) {
        self.state = state;
    }

    fn new_unit(&self) -> UnitState {
        let p = &self.params;
        UnitState {
            forecaster: Forecaster::new(p.alpha, p.beta, p.gamma, p.season_seconds, self.bins),
            pending: VecDeque::new(),
            error_var: 0.0,
            errors: 0,
            recommendations: VecDeque::new(),
            error_warned: false,
            rate_mean: 0.0,
        }
    }

    /// Checks a state that was deserialised against this planner's parameters and puts the
    /// current smoothing weights into it.
    fn checked(&self, mut state: ForecastState) -> Result<ForecastState, PolicyError> {
        let p = &self.params;
        for (key, u) in state.units.iter_mut() {
            let bad = |m: String| PolicyError::State { policy: "forecast".into(), message: format!("units.{key}.{m}") };
            u.forecaster.check(p.season_seconds, self.bins).map_err(bad)?;
            if !(u.error_var.is_finite() && u.error_var >= 0.0) {
                return Err(bad(format!("error_var is {}", u.error_var)));
            }
            if !(u.rate_mean.is_finite() && u.rate_mean >= 0.0) {
                return Err(bad(format!("rate_mean is {}", u.rate_mean)));
            }
            let pending_ok = u.pending.iter().all(|&(t, v)| t.is_finite() && v.is_finite());
            if !pending_ok || !u.recommendations.iter().all(|&(t, _)| t.is_finite()) {
                return Err(bad("pending or recommendations hold a non-finite value".into()));
            }
            u.forecaster.set_weights(p.alpha, p.beta, p.gamma);
        }
        Ok(state)
    }

    /// Replicas for one unit: rate `y` observed over `window_s` ending at `now`, `waiting`
    /// requests queued, `current` replicas asked for; with the reason and a warning when
    /// the forecasts have just become poor.
    fn recommend(
        &mut self,
        key: &str,
        now: f64,
        window_s: f64,
        y: f64,
        waiting: f64,
        current: u32,
    ) -> (u32, String, Option<String>) {
        let lead = self.lead_s();
        let (z, cap, stab) =
            (self.z, self.params.capacity_rps, f64::from(self.params.scale_down_stabilization_seconds));
        if !self.state.units.contains_key(key) {
            let u = self.new_unit();
            self.state.units.insert(key.to_string(), u);
        }
        let u = self.state.units.get_mut(key).expect("unit inserted above");
        let window_s = window_s.max(1e-9);
        let t_data = now - window_s / 2.0;
        if u.forecaster.last_time().is_some_and(|l| t_data - l > MAX_GAP_S) {
            // Seen nothing for a while (an operator restart): the short-term state is stale.
            u.forecaster.restart_level();
            u.pending.clear();
            u.recommendations.clear();
        }
        // Errors of the forecasts whose time has come.
        while u.pending.front().is_some_and(|&(t, _)| t <= t_data) {
            let (_, f) = u.pending.pop_front().expect("front exists");
            let e = y - f;
            u.error_var = if u.errors == 0 { e * e } else { (1.0 - ERROR_WEIGHT) * u.error_var + ERROR_WEIGHT * e * e };
            u.errors += 1;
        }
        u.forecaster.observe(t_data, y);
        let f = &u.forecaster;
        if let Some(v) = f.forecast(now + lead) {
            u.pending.push_back((now + lead, v));
            while u.pending.len() > 10_000 {
                u.pending.pop_front();
            }
        }
        let mut peak = y;
        for i in 0..HORIZON_SAMPLES {
            let t = now + lead * i as f64 / (HORIZON_SAMPLES - 1) as f64;
            peak = peak.max(f.forecast(t).unwrap_or(0.0));
        }
        let sigma = if u.errors >= MIN_ERRORS { u.error_var.sqrt() } else { (y / window_s).sqrt() };
        u.rate_mean = if u.errors == 0 && u.rate_mean == 0.0 { y } else { 0.9 * u.rate_mean + 0.1 * y };
        let scale = u.rate_mean.max(cap);
        let mut warning = None;
        if u.errors >= MIN_ERRORS && !u.error_warned && sigma > ERROR_WARN_RATIO * scale {
            u.error_warned = true;
            warning = Some(format!(
                "forecast for {key} is poor: RMS error of the recent {lead:.0}-s-ahead forecasts {sigma:.2} req/s against a mean observed rate of {:.2} req/s ({:.0} % of max(rate, capacity {cap}) > {:.0} %); sizing adds {z:.2} x {sigma:.2} req/s",
                u.rate_mean,
                100.0 * sigma / scale,
                100.0 * ERROR_WARN_RATIO
            ));
        } else if u.error_warned && sigma < 0.5 * ERROR_WARN_RATIO * scale {
            u.error_warned = false;
        }
        let rate = peak + z * sigma + waiting.max(0.0) / lead.max(1.0);
        let raw = ((rate / cap - 1e-9).ceil().max(1.0)).min(f64::from(u32::MAX / 2)) as u32;
        u.recommendations.push_back((now, raw));
        while u.recommendations.front().is_some_and(|&(t, _)| now - t > stab) {
            u.recommendations.pop_front();
        }
        let floor = u.recommendations.iter().map(|&(_, r)| r).max().unwrap_or(raw);
        let desired = if raw < current { floor.min(current) } else { raw };
        let why = format!(
            "{} rate {y:.2}, peak forecast {peak:.2} over {lead:.0} s, sigma {sigma:.2} -> {rate:.2} req/s = {raw}",
            if f.is_seasonal() { "holt-winters" } else { "holt" }
        );
        (desired, why, warning)
    }
}

impl Policy for ForecastPolicy {
    fn name(&self) -> &str {
        "forecast"
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        if !obs.is_complete() {
            return Decision::hold(obs, format!("forecast: holding, metrics missing: {}", obs.missing.join(", ")));
        }
        let info = self.info.clone();
        let mut decision = Decision::default();
        let mut free = free_gpus(&info, obs);
        let mut reasons = Vec::new();
        let unit_rate = |filter: &dyn Fn(&str) -> bool| {
            if obs.slots.iter().all(|s| filter(&s.variant)) {
                obs.arrival_rate_rps
            } else {
                obs.slots.iter().filter(|s| filter(&s.variant)).map(|s| s.arrival_rate_rps).sum()
            }
        };
        let sums = |filter: &dyn Fn(&str) -> bool| {
            obs.slots
                .iter()
                .filter(|s| filter(&s.variant))
                .fold((0.0, 0u32), |(w, c), s| (w + s.waiting_requests, c + s.desired_replicas))
        };
        if self.placement.selection == VariantSelection::Fixed {
            for (vi, v) in info.variants.iter().enumerate() {
                let filter = |name: &str| name == v.name;
                let y = unit_rate(&filter);
                let (waiting, current) = sums(&filter);
                let (n, why, warning) = self.recommend(&v.name, obs.time_s, obs.window_s, y, waiting, current);
                decision.warnings.extend(warning);
                reasons.push(format!("{}: {current} -> {n} ({why})", v.name));
                self.placement.place(&info, obs, vi, n, &mut free, &mut decision);
            }
        } else {
            let all = |_: &str| true;
            let y = unit_rate(&all);
            let (waiting, current) = sums(&all);
            let (n, why, warning) = self.recommend("*", obs.time_s, obs.window_s, y, waiting, current);
            decision.warnings.extend(warning);
            if let Some(chosen) = self.placement.select_variant(&info, obs, n) {
                for vi in 0..info.variants.len() {
                    let k = if vi == chosen { n } else { 0 };
                    self.placement.place(&info, obs, vi, k, &mut free, &mut decision);
                }
                reasons.push(format!("{}: {current} -> {n} ({why})", info.variants[chosen].name));
            }
        }
        decision.reason = format!("forecast: {}", reasons.join("; "));
        decision
    }

    fn reset(&mut self) {
        self.state = ForecastState::default();
        self.placement.reset();
    }

    fn export_state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.state).ok()
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<(), PolicyError> {
        let parsed: ForecastState = serde_json::from_value(state)
            .map_err(|e| PolicyError::State { policy: "forecast".into(), message: e.to_string() })?;
        self.state = self.checked(parsed)?;
        Ok(())
    }
}

/// The `forecast` kind (`kind: forecast`, `forecast[:KEY=VALUE]...`).
pub struct Forecast;

impl PolicyKindDef for Forecast {
    type Params = ForecastParams;
    const ID: KindId = KindId("forecast");
    const USAGE: &'static str = "forecast[:capacity=RPS][:cold-start=S][:horizon=S][:percentile=P][:alpha=F][:beta=F][:season=S][:bins=N][:gamma=F][:down-window=S]";
    const KEYS: &'static str =
        "capacity, cold-start, horizon, percentile, alpha, beta, season, bins, gamma, down-window";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Forecast);

    fn from_section(&self, p: &PolicySpec) -> Result<ForecastParams, PolicyError> {
        Ok(p.forecast.clone().unwrap_or_default())
    }

    fn to_section(&self, params: &ForecastParams, p: &mut PolicySpec) {
        p.forecast = Some(params.clone());
    }

    fn set(&self, fc: &mut ForecastParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "capacity" => fc.capacity_rps = num(key, v, "a number of requests per second")?,
            "cold-start" => fc.cold_start_seconds = Some(num(key, v, "seconds")?),
            "horizon" => fc.horizon_seconds = Some(num(key, v, "seconds")?),
            "percentile" => fc.percentile = num(key, v, "a percentile")?,
            "alpha" => fc.alpha = num(key, v, "a number")?,
            "beta" => fc.beta = num(key, v, "a number")?,
            "season" => fc.season_seconds = num(key, v, "seconds")?,
            "bins" => fc.season_bins = num(key, v, "a whole number")?,
            "gamma" => fc.gamma = num(key, v, "a number")?,
            "down-window" => fc.scale_down_stabilization_seconds = num(key, v, "whole seconds")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, f: &ForecastParams) -> Result<(), PolicyError> {
        check_pos("spec.policy.forecast.capacityRps", f.capacity_rps)?;
        if let Some(c) = f.cold_start_seconds {
            if !(c.is_finite() && c >= 0.0) {
                return Err(invalid("spec.policy.forecast.coldStartSeconds", format!("{c} must be >= 0")));
            }
        }
        if let Some(h) = f.horizon_seconds {
            if !(h.is_finite() && h >= 0.0) {
                return Err(invalid("spec.policy.forecast.horizonSeconds", format!("{h} must be >= 0")));
            }
        }
        if !(50.0..=99.9).contains(&f.percentile) {
            return Err(invalid("spec.policy.forecast.percentile", format!("{} must be in [50, 99.9]", f.percentile)));
        }
        if !(f.alpha > 0.0 && f.alpha <= 1.0) {
            return Err(invalid("spec.policy.forecast.alpha", format!("{} must be in (0, 1]", f.alpha)));
        }
        if !(0.0..=1.0).contains(&f.beta) {
            return Err(invalid("spec.policy.forecast.beta", format!("{} must be in [0, 1]", f.beta)));
        }
        if !(f.gamma > 0.0 && f.gamma <= 1.0) {
            return Err(invalid("spec.policy.forecast.gamma", format!("{} must be in (0, 1]", f.gamma)));
        }
        if !(f.season_seconds.is_finite() && f.season_seconds >= 0.0) {
            return Err(invalid(
                "spec.policy.forecast.seasonSeconds",
                format!("{} must be >= 0 (0 = no season)", f.season_seconds),
            ));
        }
        if f.season_bins < 2 {
            return Err(invalid("spec.policy.forecast.seasonBins", "must be at least 2"));
        }
        Ok(())
    }

    fn build(&self, params: &ForecastParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        Ok(Box::new(ForecastPolicy::new(params.clone(), ctx.spec, ctx.placement())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles() {
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.9) - 1.281_551_565_5).abs() < 1e-6);
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-6);
        assert!((normal_quantile(0.01) + 2.326_347_874).abs() < 1e-6);
    }

    fn planner(params: ForecastParams) -> ForecastPolicy {
        let spec: LLMWorkloadSpec = serde_json::from_value(serde_json::json!({
            "variants": [{ "name": "v", "model": "m", "image": "i", "maxReplicas": 50 }],
            "gpuPools": [{ "name": "p", "gpuType": "A100-80GB", "pricePerGpuHour": 1.0 }],
            "slo": { "ttftMs": 2000.0, "tpotMs": 100.0 },
            "policy": { "kind": "forecast" }
        }))
        .unwrap();
        let placement = Placement::new(spec.policy.placement, spec.policy.variant_selection);
        ForecastPolicy::new(params, &spec, placement)
    }

    fn obs(t: f64, rate: f64, desired: u32) -> Observation {
        Observation {
            time_s: t,
            window_s: 60.0,
            arrival_rate_rps: rate,
            slots: vec![crate::policy::SlotObservation {
                variant: "v".into(),
                pool: "p".into(),
                ready_replicas: desired,
                desired_replicas: desired,
                gpus_per_replica: 1,
                arrival_rate_rps: rate,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Runs `p` over `rates` (one per 15-s tick from `t0`), returns the replica counts and
    /// every warning.
    fn run(p: &mut ForecastPolicy, t0: f64, rates: &[f64]) -> (Vec<u32>, Vec<String>) {
        let (mut out, mut warnings, mut desired) = (Vec::new(), Vec::new(), 1);
        for (i, &r) in rates.iter().enumerate() {
            let d = p.decide(&obs(t0 + 15.0 * i as f64, r, desired));
            desired = d.replicas("v", "p").unwrap_or(desired);
            out.push(desired);
            warnings.extend(d.warnings);
        }
        (out, warnings)
    }

    #[test]
    fn an_exported_state_carries_the_planner_on() {
        let params = ForecastParams { season_seconds: 3600.0, season_bins: 24, ..Default::default() };
        let rates: Vec<f64> = (0..600).map(|i| 5.0 + 4.0 * (i as f64 * 15.0 / 3600.0 * std::f64::consts::TAU).sin()).collect();
        let mut a = planner(params.clone());
        run(&mut a, 0.0, &rates[..400]);
        let saved = a.export_state().expect("the planner exports its state");
        assert!(a.state().units["v"].forecaster.is_seasonal(), "a whole season was seen");
        let mut b = planner(params.clone());
        b.import_state(saved.clone()).expect("the same parameters accept the state");
        assert_eq!(run(&mut a, 6000.0, &rates[400..]), run(&mut b, 6000.0, &rates[400..]), "identical from here on");
        // Other weights are taken from the new parameters; another knot count is refused.
        let mut c = planner(ForecastParams { alpha: 0.2, ..params.clone() });
        c.import_state(saved.clone()).unwrap();
        assert_eq!(c.state().units["v"].forecaster.alpha, 0.2);
        let mut d = planner(ForecastParams { season_bins: 12, ..params.clone() });
        let e = d.import_state(saved.clone()).unwrap_err().to_string();
        assert!(e.contains("units.v.forecaster.profile") && e.contains("seasonBins"), "{e}");
        assert!(d.state().units.is_empty(), "a refused state leaves the planner fresh");
        let e = planner(params).import_state(serde_json::json!({"units": {"v": {"errors": -1}}})).unwrap_err();
        assert!(e.to_string().contains("policy state of `forecast` rejected"), "{e}");
    }

    #[test]
    fn a_poor_forecast_warns_once_and_rearms() {
        let mut p = planner(ForecastParams { capacity_rps: 1.0, season_seconds: 0.0, ..Default::default() });
        let steady = vec![10.0; 40];
        let (_, w) = run(&mut p, 0.0, &steady);
        assert!(w.is_empty(), "a steady rate is forecast well: {w:?}");
        // A rate jumping between 2 and 30 req/s every tick: the forecasts are poor.
        let wild: Vec<f64> = (0..40).map(|i| if i % 2 == 0 { 2.0 } else { 30.0 }).collect();
        let (_, w) = run(&mut p, 600.0, &wild);
        assert_eq!(w.len(), 1, "one warning while the forecasts stay poor: {w:?}");
        assert!(w[0].contains("forecast for v is poor") && w[0].contains("RMS error"), "{}", w[0]);
        let (_, w) = run(&mut p, 1200.0, &steady.repeat(3));
        assert!(w.is_empty(), "{w:?}");
        let (_, w) = run(&mut p, 3000.0, &wild);
        assert_eq!(w.len(), 1, "warned again after the forecasts recovered: {w:?}");
    }

    #[test]
    fn after_a_long_gap_the_level_restarts_and_the_season_stays() {
        let params = ForecastParams { season_seconds: 3600.0, season_bins: 24, ..Default::default() };
        let mut p = planner(params);
        let rising: Vec<f64> = (0..300).map(|i| 2.0 + i as f64 * 0.1).collect();
        run(&mut p, 0.0, &rising);
        let before = p.state().units["v"].forecaster.clone();
        assert!(before.is_seasonal() && before.trend > 0.0);
        // Two hours later: the old trend would have carried the level far up.
        run(&mut p, 4500.0 + 7200.0, &[5.0]);
        let after = &p.state().units["v"].forecaster;
        let changed = after.profile.iter().zip(&before.profile).filter(|(a, b)| a != b).count();
        assert!(after.is_seasonal() && changed <= 2, "the profile is kept (only the knots open before the gap fold in): {changed} changed");
        assert_eq!(after.trend, 0.0, "Holt's trend restarted");
        assert_eq!(p.state().units["v"].pending.len(), 1, "stale forecasts dropped, one new one");
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut f = Forecaster::new(0.5, 0.1, 0.3, 600.0, 40);
        for i in 0..100 {
            let t = i as f64 * 15.0;
            f.observe(t, 3.0 + (t / 100.0).sin());
        }
        let s = serde_json::to_string(&f).unwrap();
        let g: Forecaster = serde_json::from_str(&s).unwrap();
        assert_eq!(f.forecast(1600.0), g.forecast(1600.0));
    }
}
