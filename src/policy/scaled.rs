//! The frame shared by the scaling baselines: a [`Scaler`] answers *how many* replicas a
//! scaling unit needs from the unit's aggregated metrics; [`ScaledPolicy`] turns that into a
//! [`Decision`] with [`Placement`] deciding *where* and *which variant*.
//!
//! A scaling unit is one variant (all its pools) under `variantSelection: fixed`, as a
//! Kubernetes autoscaler scales one Deployment; under `qualityFirst`/`costFirst` it is the
//! whole workload, and the count goes to the selected variant.
//!
//! An observation with missing inputs ([`Observation::missing`] non-empty) is not acted on:
//! the policy holds every slot and its windows are not fed, as an autoscaler whose metrics
//! API fails keeps the current scale.

use std::collections::BTreeMap;

use crate::policy::observation::{Decision, Observation};
use crate::policy::placement::{free_gpus, Placement, WorkloadInfo};
use crate::policy::registry::PolicyError;
use crate::policy::Policy;

/// Metrics of one scaling unit at one tick (sums over its slots).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitMetrics {
    /// Observation time, seconds.
    pub time_s: f64,
    /// Replicas currently asked for (the last applied decision).
    pub current_replicas: u32,
    /// Ready replicas.
    pub ready_replicas: u32,
    /// Replicas starting (placed or cold-starting, not ready).
    pub starting_replicas: u32,
    /// Requests waiting in the engines' queues.
    pub waiting_requests: f64,
    /// Requests running (prefill or decode).
    pub running_requests: f64,
    /// Mean KV-cache usage over ready replicas, 0..1.
    pub kv_cache_usage: f64,
    /// Requests per second reaching the unit.
    pub arrival_rate_rps: f64,
}

impl UnitMetrics {
    /// Running + waiting requests (what Knative calls concurrency, Ray "ongoing requests").
    pub fn ongoing_requests(&self) -> f64 {
        self.running_requests + self.waiting_requests
    }
    /// Aggregates the observation's slots that `filter` selects.
    pub fn aggregate(obs: &Observation, filter: impl Fn(&str) -> bool) -> Self {
        let mut m = UnitMetrics { time_s: obs.time_s, ..Default::default() };
        let mut kv_weighted = 0.0;
        for s in obs.slots.iter().filter(|s| filter(&s.variant)) {
            m.current_replicas += s.desired_replicas;
            m.ready_replicas += s.ready_replicas;
            m.starting_replicas += s.starting_replicas;
            m.waiting_requests += s.waiting_requests;
            m.running_requests += s.running_requests;
            m.arrival_rate_rps += s.arrival_rate_rps;
            kv_weighted += s.kv_cache_usage * f64::from(s.ready_replicas);
        }
        if m.ready_replicas > 0 {
            m.kv_cache_usage = kv_weighted / f64::from(m.ready_replicas);
        }
        // Slot arrival rates may be unknown (0) while the workload's is known.
        if m.arrival_rate_rps == 0.0 && obs.slots.iter().all(|s| filter(&s.variant)) {
            m.arrival_rate_rps = obs.arrival_rate_rps;
        }
        m
    }
}

/// A scaling algorithm for one unit: how many replicas it needs now.
pub trait Scaler: Send {
    /// Desired replicas for the unit, given its metrics. Called once per control tick.
    fn recommend(&mut self, m: &UnitMetrics) -> u32;
    /// A short description of the last recommendation, for the decision's reason.
    fn explain(&self) -> String {
        String::new()
    }
    /// The unit's state worth keeping across an operator restart or leader handover
    /// (e.g. the HPA's scale-down stabilisation window), as JSON; `None` (the default)
    /// when there is none.
    fn export_state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Puts back a state from [`Scaler::export_state`]; an error says what is wrong, and
    /// the unit keeps its own state.
    fn import_state(&mut self, _state: serde_json::Value) -> Result<(), String> {
        Ok(())
    }
}

/// A [`Policy`] made of a [`Scaler`] per scaling unit and a [`Placement`].
pub struct ScaledPolicy<S: Scaler + Clone> {
    name: String,
    prototype: S,
    units: BTreeMap<String, S>,
    placement: Placement,
    info: WorkloadInfo,
}

impl<S: Scaler + Clone> ScaledPolicy<S> {
    /// A policy named `name` that scales each unit with a fresh copy of `prototype`.
    pub fn new(name: impl Into<String>, prototype: S, placement: Placement, info: WorkloadInfo) -> Self {
        ScaledPolicy { name: name.into(), prototype, units: BTreeMap::new(), placement, info }
    }

    fn unit(&mut self, key: &str) -> &mut S {
        if !self.units.contains_key(key) {
            self.units.insert(key.to_string(), self.prototype.clone());
        }
        // Just inserted if absent.
        self.units.get_mut(key).expect("unit present")
    }
}

impl<S: Scaler + Clone> Policy for ScaledPolicy<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        if !obs.is_complete() {
            return Decision::hold(obs, format!("{}: holding, metrics missing: {}", self.name, obs.missing.join(", ")));
        }
        let mut decision = Decision::default();
        let mut free = free_gpus(&self.info, obs);
        let info = self.info.clone();
        let mut reasons = Vec::new();
        if self.placement.selection == crate::policy::config::VariantSelection::Fixed {
            for (vi, v) in info.variants.iter().enumerate() {
                let m = UnitMetrics::aggregate(obs, |name| name == v.name);
                let scaler = self.unit(&v.name);
                let n = scaler.recommend(&m);
                reasons.push(format!("{}: {} -> {} ({})", v.name, m.current_replicas, n, scaler.explain()));
                self.placement.place(&info, obs, vi, n, &mut free, &mut decision);
            }
        } else {
            let m = UnitMetrics::aggregate(obs, |_| true);
            let scaler = self.unit("*");
            let n = scaler.recommend(&m);
            let why = scaler.explain();
            if let Some(chosen) = self.placement.select_variant(&info, obs, n) {
                for (vi, v) in info.variants.iter().enumerate() {
                    let k = if vi == chosen { n } else { 0 };
                    self.placement.place(&info, obs, vi, k, &mut free, &mut decision);
                    let _ = v;
                }
                reasons.push(format!(
                    "{} on {}: {} -> {} ({})",
                    self.placement_label(),
                    info.variants[chosen].name,
                    m.current_replicas,
                    n,
                    why
                ));
            }
        }
        decision.reason = format!("{}: {}", self.name, reasons.join("; "));
        decision
    }

    fn reset(&mut self) {
        self.units.clear();
        self.placement.reset();
    }

    /// The units' states by unit (variant name, or `*` for the whole workload), when any
    /// unit has one.
    fn export_state(&self) -> Option<serde_json::Value> {
        let units: serde_json::Map<String, serde_json::Value> =
            self.units.iter().filter_map(|(k, u)| Some((k.clone(), u.export_state()?))).collect();
        (!units.is_empty()).then(|| serde_json::json!({ "units": units }))
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<(), PolicyError> {
        let err = |message: String| PolicyError::State { policy: self.name.clone(), message };
        let Some(units) = state.get("units").and_then(|u| u.as_object()) else {
            return Err(err("expected an object {\"units\": {<unit>: <state>}}".into()));
        };
        // All or nothing: every unit's state is checked on a copy first.
        let mut restored = BTreeMap::new();
        for (key, v) in units {
            let mut unit = self.prototype.clone();
            unit.import_state(v.clone()).map_err(|m| err(format!("units.{key}: {m}")))?;
            restored.insert(key.clone(), unit);
        }
        self.units.extend(restored);
        Ok(())
    }
}

impl<S: Scaler + Clone> ScaledPolicy<S> {
    fn placement_label(&self) -> &'static str {
        match self.placement.selection {
            crate::policy::config::VariantSelection::Fixed => "fixed",
            crate::policy::config::VariantSelection::QualityFirst => "quality-first",
            crate::policy::config::VariantSelection::CostFirst => "cost-first",
        }
    }
}
