//! Building policies: from the `policy` section of a spec ([`build_policy`]), and from the
//! names the `compare` command takes ([`parse_policy_name`]).
//!
//! # Policy names on the command line
//!
//! `KIND[:ARG][:KEY=VALUE]...`, e.g. `hpa`, `hpa:target=8:window=60`, `kpa:stable-window=120`,
//! `static:4`, `static-peak`, `static-mean:capacity=2.5`, `queue:zero=true`,
//! `forecast:capacity=2:percentile=95`, `clairvoyant:capacity=1.3` (twin only), `dqn:PATH`.
//! Every kind also takes `placement=cheapest|spread` and
//! `variants=fixed|qualityFirst|costFirst`. The keys of each kind are listed by
//! [`valid_policy_names`]; an unknown name or key, or a bad value, is an error that lists
//! what is valid.

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::{
    DqnParams, ForecastParams, HpaMetric, HpaParams, HpaTarget, KpaParams, PlacementKind, PolicyKind, PolicySpec,
    QueueParams, RayParams, StaticParams, VariantSelection,
};
use crate::policy::forecast::ForecastPolicy;
use crate::policy::hpa::HpaScaler;
use crate::policy::kpa::KpaScaler;
use crate::policy::placement::{Placement, WorkloadInfo};
use crate::policy::queue::QueueScaler;
use crate::policy::ray::RayScaler;
use crate::policy::scaled::ScaledPolicy;
use crate::policy::static_policy::StaticPolicy;
use crate::policy::Policy;

/// Errors building a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `kind: dqn` without a DQN loader.
    #[error("policy kind `dqn` is provided by the rl module, which was not linked into this build path; build it with `build_policy_with` and the rl module's loader")]
    DqnNotAvailable,
    /// A required parameter block or field is absent.
    #[error("missing `{field}`: {message}")]
    Missing {
        /// Field path.
        field: String,
        /// What to add.
        message: String,
    },
    /// A parameter has a bad value.
    #[error("bad value for `{field}`: {message}")]
    InvalidParam {
        /// Field path (spec field or command-line key).
        field: String,
        /// What is wrong and what is valid.
        message: String,
    },
    /// An unknown policy name on the command line.
    #[error("unknown policy `{name}`; valid policies: {valid}")]
    UnknownName {
        /// The name given.
        name: String,
        /// The valid names, with their keys.
        valid: String,
    },
    /// Loading a learned policy failed.
    #[error("loading policy from `{path}`: {message}")]
    Load {
        /// Checkpoint path.
        path: String,
        /// Why.
        message: String,
    },
}

/// A loader for `dqn` policies, supplied by the rl module.
pub type DqnLoader<'a> = &'a dyn Fn(&DqnParams, &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError>;

/// Builds the policy selected by `spec.policy` (`dqn` is refused; see [`build_policy_with`]).
pub fn build_policy(spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
    build_policy_with(spec, None)
}

/// Builds the policy selected by `spec.policy`, using `dqn_loader` for `kind: dqn`.
pub fn build_policy_with(
    spec: &LLMWorkloadSpec,
    dqn_loader: Option<DqnLoader<'_>>,
) -> Result<Box<dyn Policy>, PolicyError> {
    let p = &spec.policy;
    validate_policy_spec(p)?;
    let info = WorkloadInfo::from_spec(spec);
    let placement = Placement::new(p.placement, p.variant_selection);
    Ok(match p.kind {
        PolicyKind::Static => {
            Box::new(StaticPolicy::per_slot(&p.r#static.clone().unwrap_or_default(), info, placement))
        }
        PolicyKind::Hpa => {
            Box::new(ScaledPolicy::new("hpa", HpaScaler::new(p.hpa.clone().unwrap_or_default()), placement, info))
        }
        PolicyKind::Kpa => {
            Box::new(ScaledPolicy::new("kpa", KpaScaler::new(p.kpa.clone().unwrap_or_default()), placement, info))
        }
        PolicyKind::Queue => {
            Box::new(ScaledPolicy::new("queue", QueueScaler::new(p.queue.clone().unwrap_or_default()), placement, info))
        }
        PolicyKind::Ray => {
            Box::new(ScaledPolicy::new("ray", RayScaler::new(p.ray.clone().unwrap_or_default()), placement, info))
        }
        PolicyKind::Forecast => Box::new(ForecastPolicy::new(p.forecast.clone().unwrap_or_default(), spec, placement)),
        PolicyKind::Dqn => {
            let params = p.dqn.as_ref().ok_or_else(|| PolicyError::Missing {
                field: "spec.policy.dqn.checkpoint".into(),
                message: "kind `dqn` needs `policy.dqn.checkpoint`, the directory of a trained checkpoint".into(),
            })?;
            match dqn_loader {
                Some(load) => load(params, spec)?,
                None => return Err(PolicyError::DqnNotAvailable),
            }
        }
    })
}

fn invalid(field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::InvalidParam { field: field.into(), message: message.into() }
}

fn check_pos(field: &str, x: f64) -> Result<(), PolicyError> {
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(invalid(field, format!("{x} must be a positive number")))
    }
}

/// Checks the parameters of the selected policy kind (values the schema ranges cannot
/// express, e.g. a zero target).
pub fn validate_policy_spec(p: &PolicySpec) -> Result<(), PolicyError> {
    if p.interval_seconds == 0 {
        return Err(invalid("spec.policy.intervalSeconds", "must be at least 1"));
    }
    match p.kind {
        PolicyKind::Hpa => {
            let h = p.hpa.clone().unwrap_or_default();
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
        }
        PolicyKind::Kpa => {
            let k = p.kpa.clone().unwrap_or_default();
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
        }
        PolicyKind::Queue => {
            let q = p.queue.clone().unwrap_or_default();
            check_pos("spec.policy.queue.queueLengthPerReplica", q.queue_length_per_replica)?;
        }
        PolicyKind::Ray => {
            let r = p.ray.clone().unwrap_or_default();
            check_pos("spec.policy.ray.targetOngoingRequests", r.target_ongoing_requests)?;
        }
        PolicyKind::Forecast => {
            let f = p.forecast.clone().unwrap_or_default();
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
                return Err(invalid(
                    "spec.policy.forecast.percentile",
                    format!("{} must be in [50, 99.9]", f.percentile),
                ));
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
        }
        PolicyKind::Static | PolicyKind::Dqn => {}
    }
    Ok(())
}

/// What a command-line policy name asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyRequest {
    /// A policy fully described by a `policy` section.
    Spec(PolicySpec),
    /// A static fleet sized for the trace's peak rate (`per_replica_rps` overrides the
    /// harness's estimate of one replica's capacity).
    StaticPeak {
        /// Requests per second one replica sustains, if given.
        per_replica_rps: Option<f64>,
        /// Placement and variant selection.
        base: PolicySpec,
    },
    /// A static fleet sized for the trace's mean rate.
    StaticMean {
        /// Requests per second one replica sustains, if given.
        per_replica_rps: Option<f64>,
        /// Placement and variant selection.
        base: PolicySpec,
    },
    /// The clairvoyant reference of the twin (`eval::clairvoyant`): sized from the run's
    /// own future arrivals, so only the harness can build it.
    Clairvoyant {
        /// Requests per second one replica sustains, if given (else the harness's estimate).
        per_replica_rps: Option<f64>,
        /// Bin over which the peak rate is measured, seconds (default: the control interval).
        bin_s: Option<f64>,
        /// Placement and variant selection.
        base: PolicySpec,
    },
    /// A learned DQN policy from a checkpoint directory.
    Dqn {
        /// Checkpoint directory.
        path: String,
        /// Placement and variant selection.
        base: PolicySpec,
    },
}

/// A parsed policy name: the label shown in tables, and what to build.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyChoice {
    /// The name as given (unique label in reports).
    pub label: String,
    /// What to build.
    pub request: PolicyRequest,
}

impl PolicyChoice {
    /// Builds the policy for `spec` when it needs nothing but the spec (all but
    /// `static-peak`, `static-mean`, `clairvoyant` and `dqn`, which need the harness).
    pub fn build_for(&self, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        match &self.request {
            PolicyRequest::Spec(p) => {
                let mut s = spec.clone();
                s.policy = p.clone();
                build_policy(&s)
            }
            _ => Err(PolicyError::InvalidParam {
                field: self.label.clone(),
                message: "needs the harness to be built (trace statistics, the run's arrivals or a DQN loader)".into(),
            }),
        }
    }
}

const COMMON_KEYS: &str = "placement=cheapest|spread, variants=fixed|qualityFirst|costFirst";

/// The valid policy names and their keys, one per line (for errors and `--help`).
pub fn valid_policy_names() -> String {
    [
        "hpa[:target=F][:metric=ongoingRequests|waitingRequests|runningRequests|kvCacheUsage][:tolerance=F][:window=S][:up-percent=N][:up-pods=N][:up-period=S]",
        "kpa[:target=F][:utilization=F][:stable-window=S][:panic-pct=F][:panic-threshold=F][:max-down-rate=F][:max-up-rate=F]",
        "queue[:target=F][:polling=S][:cooldown=S][:zero=true|false]",
        "ray[:target=F][:up-delay=S][:down-delay=S]",
        "static:N (N replicas per slot)",
        "static-peak[:capacity=RPS] (sized for the trace's peak rate)",
        "static-mean[:capacity=RPS] (sized for the trace's mean rate)",
        "forecast[:capacity=RPS][:cold-start=S][:horizon=S][:percentile=P][:alpha=F][:beta=F][:season=S][:bins=N][:gamma=F][:down-window=S]",
        "dqn:PATH (a trained checkpoint directory)",
        "clairvoyant[:capacity=RPS][:bin=S] (twin only: reads the run's future arrivals)",
    ]
    .iter()
    .map(|s| format!("{s}; also {COMMON_KEYS}"))
    .collect::<Vec<_>>()
    .join("\n  ")
}

fn unknown(name: &str) -> PolicyError {
    PolicyError::UnknownName { name: name.into(), valid: format!("\n  {}", valid_policy_names()) }
}

fn num<T: std::str::FromStr>(key: &str, v: &str, what: &str) -> Result<T, PolicyError> {
    v.parse().map_err(|_| invalid(key, format!("`{v}` is not {what}")))
}

/// Parses a comma-separated list of policy names (`--policies hpa,kpa,static-peak`).
pub fn parse_policy_list(list: &str, base: &PolicySpec) -> Result<Vec<PolicyChoice>, PolicyError> {
    let mut out: Vec<PolicyChoice> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if out.iter().any(|c| c.label == name) {
            return Err(invalid(name, "is listed twice"));
        }
        out.push(parse_policy_name(name, base)?);
    }
    if out.is_empty() {
        return Err(PolicyError::Missing {
            field: "--policies".into(),
            message: format!("name at least one policy:\n  {}", valid_policy_names()),
        });
    }
    Ok(out)
}

/// Parses one policy name (see the module docs). `base` supplies the placement, variant
/// selection and interval (usually the scenario's spec policy section).
pub fn parse_policy_name(name: &str, base: &PolicySpec) -> Result<PolicyChoice, PolicyError> {
    let mut parts = name.split(':');
    let kind = parts.next().unwrap_or("").trim();
    let mut spec = PolicySpec {
        interval_seconds: base.interval_seconds,
        placement: base.placement,
        variant_selection: base.variant_selection,
        ..PolicySpec::default()
    };
    if kind == "dqn" {
        let path = name.strip_prefix("dqn:").unwrap_or("");
        if path.is_empty() {
            return Err(invalid("dqn", "give the checkpoint directory: dqn:PATH"));
        }
        spec.kind = PolicyKind::Dqn;
        return Ok(PolicyChoice { label: name.into(), request: PolicyRequest::Dqn { path: path.into(), base: spec } });
    }
    let rest: Vec<&str> = parts.collect();
    let mut hpa = HpaParams::default();
    let mut kpa = KpaParams::default();
    let mut queue = QueueParams::default();
    let mut ray = RayParams::default();
    let mut stat = StaticParams::default();
    let mut fc = ForecastParams::default();
    let mut bin_s: Option<f64> = None;
    let mut capacity: Option<f64> = None;
    let (pk, keys): (Option<PolicyKind>, &str) = match kind {
        "hpa" => (Some(PolicyKind::Hpa), "target, metric, tolerance, window, up-percent, up-pods, up-period"),
        "kpa" => (
            Some(PolicyKind::Kpa),
            "target, utilization, stable-window, panic-pct, panic-threshold, max-down-rate, max-up-rate",
        ),
        "queue" => (Some(PolicyKind::Queue), "target, polling, cooldown, zero"),
        "ray" => (Some(PolicyKind::Ray), "target, up-delay, down-delay"),
        "static" => (Some(PolicyKind::Static), "replicas (or static:N)"),
        "forecast" => (
            Some(PolicyKind::Forecast),
            "capacity, cold-start, horizon, percentile, alpha, beta, season, bins, gamma, down-window",
        ),
        "static-peak" | "static-mean" => (None, "capacity"),
        "clairvoyant" => (None, "capacity, bin"),
        _ => return Err(unknown(name)),
    };
    for (i, item) in rest.iter().enumerate() {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None if i == 0 && kind == "static" => ("replicas", item.trim()),
            None => {
                return Err(invalid(
                    name,
                    format!("`{item}` is not KEY=VALUE; keys of `{kind}`: {keys}; also {COMMON_KEYS}"),
                ))
            }
        };
        let key = format!("{kind}:{k}");
        match (kind, k) {
            (_, "placement") => {
                spec.placement = match v {
                    "cheapest" => PlacementKind::Cheapest,
                    "spread" => PlacementKind::Spread,
                    _ => return Err(invalid(&key, format!("`{v}`; valid: cheapest, spread"))),
                }
            }
            (_, "variants") => {
                spec.variant_selection = match v {
                    "fixed" => VariantSelection::Fixed,
                    "qualityFirst" => VariantSelection::QualityFirst,
                    "costFirst" => VariantSelection::CostFirst,
                    _ => return Err(invalid(&key, format!("`{v}`; valid: fixed, qualityFirst, costFirst"))),
                }
            }
            ("hpa", "target") => {
                let t: f64 = num(&key, v, "a number")?;
                match hpa.targets.first_mut() {
                    Some(first) => first.target = t,
                    None => hpa.targets.push(HpaTarget { metric: HpaMetric::OngoingRequests, target: t }),
                }
            }
            ("hpa", "metric") => {
                let m = match v {
                    "ongoingRequests" => HpaMetric::OngoingRequests,
                    "waitingRequests" => HpaMetric::WaitingRequests,
                    "runningRequests" => HpaMetric::RunningRequests,
                    "kvCacheUsage" => HpaMetric::KvCacheUsage,
                    _ => {
                        return Err(invalid(
                            &key,
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
            ("hpa", "tolerance") => hpa.tolerance = num(&key, v, "a number")?,
            ("hpa", "window") => hpa.scale_down_stabilization_seconds = num(&key, v, "whole seconds")?,
            ("hpa", "up-percent") => hpa.scale_up_percent = num(&key, v, "a whole percentage")?,
            ("hpa", "up-pods") => hpa.scale_up_pods = num(&key, v, "a whole number")?,
            ("hpa", "up-period") => hpa.scale_up_period_seconds = num(&key, v, "whole seconds")?,
            ("kpa", "target") => kpa.container_concurrency_target = num(&key, v, "a number")?,
            ("kpa", "utilization") => kpa.target_utilization = num(&key, v, "a number")?,
            ("kpa", "stable-window") => kpa.stable_window_seconds = num(&key, v, "whole seconds")?,
            ("kpa", "panic-pct") => kpa.panic_window_percentage = num(&key, v, "a number")?,
            ("kpa", "panic-threshold") => kpa.panic_threshold_percentage = num(&key, v, "a number")?,
            ("kpa", "max-down-rate") => kpa.max_scale_down_rate = num(&key, v, "a number")?,
            ("kpa", "max-up-rate") => kpa.max_scale_up_rate = num(&key, v, "a number")?,
            ("queue", "target") => queue.queue_length_per_replica = num(&key, v, "a number")?,
            ("queue", "polling") => queue.polling_interval_seconds = num(&key, v, "whole seconds")?,
            ("queue", "cooldown") => queue.cooldown_seconds = num(&key, v, "whole seconds")?,
            ("queue", "zero") => queue.allow_scale_to_zero = num(&key, v, "true or false")?,
            ("ray", "target") => ray.target_ongoing_requests = num(&key, v, "a number")?,
            ("ray", "up-delay") => ray.upscale_delay_seconds = num(&key, v, "whole seconds")?,
            ("ray", "down-delay") => ray.downscale_delay_seconds = num(&key, v, "whole seconds")?,
            ("static", "replicas") => stat.replicas = num(&key, v, "a whole number of replicas")?,
            ("forecast", "capacity") => fc.capacity_rps = num(&key, v, "a number of requests per second")?,
            ("forecast", "cold-start") => fc.cold_start_seconds = Some(num(&key, v, "seconds")?),
            ("forecast", "horizon") => fc.horizon_seconds = Some(num(&key, v, "seconds")?),
            ("forecast", "percentile") => fc.percentile = num(&key, v, "a percentile")?,
            ("forecast", "alpha") => fc.alpha = num(&key, v, "a number")?,
            ("forecast", "beta") => fc.beta = num(&key, v, "a number")?,
            ("forecast", "season") => fc.season_seconds = num(&key, v, "seconds")?,
            ("forecast", "bins") => fc.season_bins = num(&key, v, "a whole number")?,
            ("forecast", "gamma") => fc.gamma = num(&key, v, "a number")?,
            ("forecast", "down-window") => fc.scale_down_stabilization_seconds = num(&key, v, "whole seconds")?,
            ("clairvoyant", "bin") => {
                let b: f64 = num(&key, v, "seconds")?;
                check_pos(&key, b)?;
                bin_s = Some(b);
            }
            ("static-peak" | "static-mean" | "clairvoyant", "capacity") => {
                let c: f64 = num(&key, v, "a number of requests per second")?;
                check_pos(&key, c)?;
                capacity = Some(c);
            }
            _ => return Err(invalid(&key, format!("unknown key `{k}`; keys of `{kind}`: {keys}; also {COMMON_KEYS}"))),
        }
    }
    let request = match pk {
        Some(k) => {
            spec.kind = k;
            match k {
                PolicyKind::Hpa => spec.hpa = Some(hpa),
                PolicyKind::Kpa => spec.kpa = Some(kpa),
                PolicyKind::Queue => spec.queue = Some(queue),
                PolicyKind::Ray => spec.ray = Some(ray),
                PolicyKind::Static => spec.r#static = Some(stat),
                PolicyKind::Forecast => spec.forecast = Some(fc),
                PolicyKind::Dqn => {}
            }
            validate_policy_spec(&spec).map_err(|e| match e {
                PolicyError::InvalidParam { field, message } => invalid(name, format!("{field}: {message}")),
                other => other,
            })?;
            PolicyRequest::Spec(spec)
        }
        None if kind == "static-peak" => PolicyRequest::StaticPeak { per_replica_rps: capacity, base: spec },
        None if kind == "clairvoyant" => PolicyRequest::Clairvoyant { per_replica_rps: capacity, bin_s, base: spec },
        None => PolicyRequest::StaticMean { per_replica_rps: capacity, base: spec },
    };
    Ok(PolicyChoice { label: name.into(), request })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_parameters() {
        let base = PolicySpec::default();
        let c = parse_policy_name("hpa:target=8:window=60", &base).unwrap();
        match c.request {
            PolicyRequest::Spec(p) => {
                let h = p.hpa.unwrap();
                assert_eq!(h.targets[0].target, 8.0);
                assert_eq!(h.scale_down_stabilization_seconds, 60);
            }
            other => panic!("{other:?}"),
        }
        let c = parse_policy_name("static:4", &base).unwrap();
        assert!(matches!(c.request, PolicyRequest::Spec(ref p) if p.r#static.as_ref().unwrap().replicas == 4));
        assert!(
            matches!(parse_policy_name("dqn:/tmp/ck", &base).unwrap().request, PolicyRequest::Dqn { ref path, .. } if path == "/tmp/ck")
        );
        assert!(
            matches!(parse_policy_name("static-peak:capacity=2", &base).unwrap().request, PolicyRequest::StaticPeak { per_replica_rps: Some(c), .. } if c == 2.0)
        );
    }

    #[test]
    fn bad_names_list_the_valid_ones() {
        let base = PolicySpec::default();
        let e = parse_policy_name("hpx", &base).unwrap_err().to_string();
        assert!(e.contains("unknown policy `hpx`") && e.contains("kpa[") && e.contains("static-peak"), "{e}");
        let e = parse_policy_name("hpa:wnidow=3", &base).unwrap_err().to_string();
        assert!(e.contains("unknown key `wnidow`") && e.contains("window"), "{e}");
        let e = parse_policy_name("kpa:utilization=2", &base).unwrap_err().to_string();
        assert!(e.contains("targetUtilization"), "{e}");
        let e = parse_policy_name("queue:target=abc", &base).unwrap_err().to_string();
        assert!(e.contains("`abc` is not a number"), "{e}");
        assert!(parse_policy_list("hpa,hpa", &base).is_err());
        assert!(parse_policy_name("dqn", &base).is_err());
    }
}
