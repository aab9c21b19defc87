//! The decision journal: each workload's recent control ticks as the operator saw and
//! decided them, for the read-only decision page (`/decisions` on the metrics port,
//! [`super::page`]).
//!
//! An [`Entry`] holds, for one tick: what the operator observed (load, latency, SLO
//! attainment, cost, replicas per slot), how the metrics read went, what the policy
//! proposed and why (for a learned policy, its Q-values or action probabilities per
//! branch), what the shield changed and which rule made it, what was applied (or, in
//! shadow mode, what the policy would have done and that nothing was applied), and, once
//! the next tick has been observed, the SLO attainment and cost that followed.
//!
//! The journal is memory only, bounded per workload ([`DecisionJournal::with_capacity`]),
//! and lost on a restart: the durable record is the status, the Events and the metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::crd::TargetStatus;
use crate::policy::observation::{Explanation, LatencyObservation};
use crate::policy::{Decision, Observation};

use super::desired::Slot;
use super::plan::{MetricsRead, Plan, TickOutcome};

/// Ticks kept per workload by default (an hour at the default 30 s interval).
pub const DEFAULT_CAPACITY: usize = 120;

/// What was observed of one slot.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotSeen {
    /// `<variant>/<pool>`.
    pub slot: String,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Requests waiting in the slot's engines.
    pub waiting: f64,
    /// Requests running.
    pub running: f64,
    /// KV-cache usage, 0..1.
    pub kv_cache_usage: f64,
}

/// The part of an observation the page shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    /// Requests per second arriving over the window.
    pub arrival_rate_rps: f64,
    /// Change of the rate, requests/s².
    pub arrival_rate_trend_rps_per_s: f64,
    /// Fraction of requests that met the SLO over the window; `None` when none finished.
    pub slo_attainment: Option<f64>,
    /// Latency percentiles.
    pub latency: LatencyObservation,
    /// What the fleet costs now, USD per hour.
    pub cost_usd_per_hour: f64,
    /// Per slot.
    pub slots: Vec<SlotSeen>,
    /// Series that could not be read (empty when complete).
    pub missing: Vec<String>,
}

impl Seen {
    /// The summary of `obs`.
    pub fn of(obs: &Observation) -> Self {
        Seen {
            arrival_rate_rps: obs.arrival_rate_rps,
            arrival_rate_trend_rps_per_s: obs.arrival_rate_trend_rps_per_s,
            slo_attainment: obs.slo_attainment,
            latency: obs.latency.clone(),
            cost_usd_per_hour: obs.cost_rate_usd_per_hour,
            slots: obs
                .slots
                .iter()
                .map(|s| SlotSeen {
                    slot: format!("{}/{}", s.variant, s.pool),
                    desired: s.desired_replicas,
                    ready: s.ready_replicas,
                    waiting: s.waiting_requests,
                    running: s.running_requests,
                    kv_cache_usage: s.kv_cache_usage,
                })
                .collect(),
            missing: obs.missing.clone(),
        }
    }
}

/// One change the shield made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShieldChange {
    /// The rule (e.g. `MaxStepChange`).
    pub rule: String,
    /// What the rule enforces.
    pub why: String,
    /// `<variant>/<pool>`.
    pub slot: String,
    /// Replicas asked for before the rule.
    pub asked: u32,
    /// Replicas after it.
    pub applied: u32,
}

/// What the policy proposed at a tick and what the shield made of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    /// The policy's name.
    pub policy: String,
    /// Its reason line.
    pub reason: String,
    /// Replicas per slot it asked for.
    pub asked: Vec<TargetStatus>,
    /// Replicas per slot after the shield.
    pub shielded: Vec<TargetStatus>,
    /// The shield's changes, in rule order.
    pub shield: Vec<ShieldChange>,
    /// Per-branch scores of a learned policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
    /// Conditions the policy raised (published as `PolicyWarning` Events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What followed a decision: read at the next tick.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Followed {
    /// Seconds between the two ticks.
    pub after_s: f64,
    /// SLO attainment over the next tick's window.
    pub slo_attainment: Option<f64>,
    /// Cost per hour at the next tick.
    pub cost_usd_per_hour: f64,
    /// Ready replicas at the next tick.
    pub ready: u32,
}

/// One control tick of one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When (RFC 3339).
    pub time: String,
    /// The observation's time, seconds.
    pub time_s: f64,
    /// `active` or `shadow`.
    pub mode: String,
    /// The decision kind (`hold`, `shadow`, `scale_up`, `scale_down`, `rebalance`, `switch`).
    pub kind: String,
    /// How the metrics read went (`read from prometheus`, or why it failed).
    pub metrics: String,
    /// What was observed.
    pub seen: Seen,
    /// The policy's proposal; `None` when the operator held without asking it (metrics
    /// missing, or the policy could not be built).
    pub proposal: Option<Proposal>,
    /// Why the policy was not asked, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_because: Option<String>,
    /// Replicas per slot after this tick (in shadow mode, unchanged).
    pub applied: Vec<TargetStatus>,
    /// SLO and cost at the next tick; `None` until it is observed.
    pub followed: Option<Followed>,
}

fn targets_of(m: &BTreeMap<Slot, u32>) -> Vec<TargetStatus> {
    m.iter().map(|(s, r)| TargetStatus { variant: s.variant.clone(), pool: s.pool.clone(), replicas: *r }).collect()
}

fn decision_targets(d: &Decision) -> Vec<TargetStatus> {
    d.targets
        .iter()
        .map(|t| TargetStatus { variant: t.variant.clone(), pool: t.pool.clone(), replicas: t.replicas })
        .collect()
}

impl Entry {
    /// The entry of a tick: `plan` is what the operator made of `tick`; `explanation` what
    /// the policy weighed; `policy_error` why the policy cannot be built, if it cannot.
    pub fn new(
        time: String,
        mode: &str,
        tick: &TickOutcome,
        plan: &Plan,
        explanation: Option<Explanation>,
        policy_error: Option<&str>,
    ) -> Self {
        let obs = &tick.observation;
        let metrics = match &tick.metrics {
            MetricsRead::Read { source } if obs.missing.is_empty() => format!("read from {source}"),
            MetricsRead::Read { source } => format!("read from {source}, missing {}", obs.missing.join(", ")),
            MetricsRead::Failed(e) => format!("failed: {e}"),
        };
        let proposal = tick.decided.as_ref().map(|d| Proposal {
            policy: d.policy.clone(),
            reason: d.decision.reason.clone(),
            asked: decision_targets(&d.decision),
            shielded: decision_targets(&d.outcome.decision),
            shield: d
                .outcome
                .overrides
                .iter()
                .map(|o| ShieldChange {
                    rule: o.rule.as_str().into(),
                    why: o.rule.meaning().into(),
                    slot: format!("{}/{}", o.variant, o.pool),
                    asked: o.asked,
                    applied: o.applied,
                })
                .collect(),
            explanation,
            warnings: d.decision.warnings.clone(),
        });
        let held_because = match (&proposal, policy_error) {
            (Some(_), _) => None,
            (None, Some(e)) => Some(format!("the policy cannot be built: {e}")),
            (None, None) => Some(format!("the metrics are incomplete ({metrics}); replicas are held")),
        };
        Entry {
            time,
            time_s: obs.time_s,
            mode: mode.into(),
            kind: plan.decision.map_or("hold", |k| k.as_str()).into(),
            metrics,
            seen: Seen::of(obs),
            proposal,
            held_because,
            applied: targets_of(&plan.targets),
            followed: None,
        }
    }
}

/// The recent ticks of every workload, shared by the controller (which records) and the
/// HTTP server (which reads). Cloning shares the journal.
#[derive(Clone, Debug)]
pub struct DecisionJournal {
    inner: Arc<Mutex<BTreeMap<String, VecDeque<Entry>>>>,
    capacity: usize,
}

impl Default for DecisionJournal {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl DecisionJournal {
    /// A journal keeping the last `capacity` ticks per workload (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        DecisionJournal { inner: Arc::new(Mutex::new(BTreeMap::new())), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<Entry>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `entry` for workload `key` (`namespace/name`); the previous entry learns
    /// what followed it; the oldest entry goes when the workload has `capacity`.
    pub fn record(&self, key: &str, entry: Entry) {
        let mut m = self.lock();
        let q = m.entry(key.to_string()).or_default();
        if let Some(prev) = q.back_mut() {
            prev.followed = Some(Followed {
                after_s: entry.time_s - prev.time_s,
                slo_attainment: entry.seen.slo_attainment,
                cost_usd_per_hour: entry.seen.cost_usd_per_hour,
                ready: entry.seen.slots.iter().map(|s| s.ready).sum(),
            });
        }
        q.push_back(entry);
        while q.len() > self.capacity {
            q.pop_front();
        }
    }

    /// Drops workload `key` (deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The workloads with entries, with their entry count and last entry.
    pub fn workloads(&self) -> Vec<(String, usize, Option<Entry>)> {
        self.lock().iter().map(|(k, q)| (k.clone(), q.len(), q.back().cloned())).collect()
    }

    /// The entries of workload `key`, oldest first (`None` if it has none).
    pub fn entries(&self, key: &str) -> Option<Vec<Entry>> {
        self.lock().get(key).map(|q| q.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: f64, slo: Option<f64>) -> Entry {
        Entry {
            time: format!("t{t}"),
            time_s: t,
            mode: "active".into(),
            kind: "hold".into(),
            metrics: "read from test".into(),
            seen: Seen {
                arrival_rate_rps: 1.0,
                arrival_rate_trend_rps_per_s: 0.0,
                slo_attainment: slo,
                latency: LatencyObservation::default(),
                cost_usd_per_hour: t,
                slots: vec![],
                missing: vec![],
            },
            proposal: None,
            held_because: None,
            applied: vec![],
            followed: None,
        }
    }

    #[test]
    fn keeps_the_last_entries_and_links_what_followed() {
        let j = DecisionJournal::with_capacity(2);
        j.record("ns/a", entry(0.0, None));
        j.record("ns/a", entry(30.0, Some(0.9)));
        j.record("ns/a", entry(60.0, Some(0.95)));
        let e = j.entries("ns/a").expect("entries");
        assert_eq!(e.len(), 2, "bounded");
        assert_eq!(e[0].time_s, 30.0);
        let f = e[0].followed.as_ref().expect("followed");
        assert_eq!((f.after_s, f.slo_attainment, f.cost_usd_per_hour), (30.0, Some(0.95), 60.0));
        assert!(e[1].followed.is_none(), "the last tick has no successor yet");
        assert_eq!(j.workloads().len(), 1);
        j.forget("ns/a");
        assert!(j.entries("ns/a").is_none());
    }
}
