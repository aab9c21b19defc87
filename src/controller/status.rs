//! Status conditions and the per-slot status, computed from what reconcile saw (pure).
//!
//! Conditions follow Kubernetes conventions: one entry per type, `status` `True`, `False`
//! or `Unknown`, a CamelCase `reason`, a `message` that says what to fix when something
//! is wrong, and `lastTransitionTime` that only moves when `status` changes.

use std::collections::BTreeMap;

use crate::crd::{Condition, SlotStatus, StatusSummary};

use super::decide::SlotState;
use super::desired::Slot;

/// Condition type: every slot has its desired replicas ready.
pub const READY: &str = "Ready";
/// Condition type: replicas are being added or removed.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the workload cannot be reconciled as specified.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the last metrics read was complete.
pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
/// Condition type: the policy was built and decides.
pub const POLICY_READY: &str = "PolicyReady";
/// Condition type: where the promotion of a retrained policy stands
/// (`spec.learning.promotion`; `True` while a candidate trains, is in shadow or is watched).
pub const POLICY_PROMOTION: &str = "PolicyPromotion";

/// A condition to set: type, status, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// Condition type.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl ConditionUpdate {
    /// A condition update.
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        ConditionUpdate {
            type_,
            status: if status { "True" } else { "False" },
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// An `Unknown` condition.
    pub fn unknown(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        ConditionUpdate { type_, status: "Unknown", reason: reason.into(), message: message.into() }
    }
}

/// Sets `update` in `conditions`, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_condition(conditions: &mut Vec<Condition>, update: ConditionUpdate, now: &str, generation: Option<i64>) {
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(c) => {
            if c.status != update.status {
                c.last_transition_time = now.to_string();
            }
            c.status = update.status.to_string();
            c.reason = update.reason;
            c.message = update.message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: update.type_.to_string(),
            status: update.status.to_string(),
            reason: update.reason,
            message: update.message,
            last_transition_time: now.to_string(),
            observed_generation: generation,
        }),
    }
    let order = [READY, PROGRESSING, DEGRADED, METRICS_AVAILABLE, POLICY_READY, POLICY_PROMOTION];
    conditions.sort_by_key(|c| order.iter().position(|t| *t == c.type_).unwrap_or(order.len()));
}

/// The condition named `type_`, if set.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Per-slot status rows, in slot order.
pub fn slot_statuses(
    targets: &BTreeMap<Slot, u32>,
    states: &BTreeMap<Slot, SlotState>,
    order: &[Slot],
) -> Vec<SlotStatus> {
    order
        .iter()
        .map(|s| SlotStatus {
            variant: s.variant.clone(),
            pool: s.pool.clone(),
            desired_replicas: targets.get(s).copied().unwrap_or(0),
            ready_replicas: states.get(s).map_or(0, |st| st.ready),
        })
        .collect()
}

/// `Ready` and `Progressing` from the slots: ready when every slot has its desired
/// replicas ready (and at least one is desired), progressing while any slot differs.
pub fn rollout_conditions(slots: &[SlotStatus]) -> [ConditionUpdate; 2] {
    let desired: u32 = slots.iter().map(|s| s.desired_replicas).sum();
    let lagging: Vec<String> = slots
        .iter()
        .filter(|s| s.ready_replicas != s.desired_replicas)
        .map(|s| format!("{}/{} {}/{} ready", s.variant, s.pool, s.ready_replicas, s.desired_replicas))
        .collect();
    let ready = if desired == 0 {
        ConditionUpdate::new(READY, false, "NoReplicas", "no replicas are desired")
    } else if lagging.is_empty() {
        ConditionUpdate::new(READY, true, "AllReplicasReady", format!("{desired} replicas ready"))
    } else {
        ConditionUpdate::new(READY, false, "ReplicasNotReady", lagging.join(", "))
    };
    let progressing = if lagging.is_empty() {
        ConditionUpdate::new(PROGRESSING, false, "Stable", "every slot has its desired replicas")
    } else {
        ConditionUpdate::new(PROGRESSING, true, "Scaling", lagging.join(", "))
    };
    [ready, progressing]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set_condition(&mut c, ConditionUpdate::new(READY, false, "A", "a"), "t1", Some(1));
        set_condition(&mut c, ConditionUpdate::new(READY, false, "B", "b"), "t2", Some(2));
        assert_eq!(c[0].last_transition_time, "t1");
        assert_eq!(c[0].reason, "B");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, ConditionUpdate::new(READY, true, "C", "c"), "t3", Some(2));
        assert_eq!(c[0].last_transition_time, "t3");
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn conditions_keep_a_stable_order() {
        let mut c = Vec::new();
        set_condition(&mut c, ConditionUpdate::new(POLICY_READY, true, "A", ""), "t", None);
        set_condition(&mut c, ConditionUpdate::new(DEGRADED, false, "A", ""), "t", None);
        set_condition(&mut c, ConditionUpdate::new(READY, true, "A", ""), "t", None);
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![READY, DEGRADED, POLICY_READY]);
    }

    #[test]
    fn rollout_conditions_follow_the_slots() {
        let s = |d, r| SlotStatus { variant: "v".into(), pool: "p".into(), desired_replicas: d, ready_replicas: r };
        let [ready, prog] = rollout_conditions(&[s(2, 2)]);
        assert_eq!((ready.status, prog.status), ("True", "False"));
        let [ready, prog] = rollout_conditions(&[s(2, 1)]);
        assert_eq!((ready.status, ready.reason.as_str(), prog.status), ("False", "ReplicasNotReady", "True"));
        assert!(ready.message.contains("v/p 1/2 ready"));
        let [ready, _] = rollout_conditions(&[s(0, 0)]);
        assert_eq!(ready.reason, "NoReplicas");
    }
}

/// The status figures formatted for `kubectl get llmw` (see [`StatusSummary`]): computed
/// from the spec and the status about to be written, so every status write carries it.
pub fn summary(spec: &crate::crd::LLMWorkloadSpec, st: &crate::crd::LLMWorkloadStatus) -> StatusSummary {
    use crate::policy::PolicyMode;
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let kind = serde_json::to_value(spec.policy.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into());
    let shadow = spec.policy.mode == PolicyMode::Shadow;
    // A promoted learned policy acts in place of the spec's (`status.learning.active`).
    let promoted = st.learning.as_ref().and_then(|l| l.active.as_ref()).filter(|_| spec.learning.promotion.enabled);
    let kind = match promoted {
        Some(a) => format!("dqn (promoted {})", a.digest.chars().take(8).collect::<String>()),
        None => kind,
    };
    let decision = if shadow { st.shadow_decision.as_ref() } else { st.last_decision.as_ref() };
    StatusSummary {
        policy: if shadow { format!("{kind} (shadow)") } else { kind },
        rps: finite(st.observed_arrival_rate_rps).map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
        slo: finite(st.slo_attainment).map(|a| format!("{:.1}%", a * 100.0)).unwrap_or_else(|| "-".into()),
        cost_per_hour: finite(st.cost_rate_usd_per_hour).map(|c| format!("${c:.2}")).unwrap_or_else(|| "-".into()),
        slots: if st.slots.is_empty() {
            "-".into()
        } else {
            st.slots
                .iter()
                .map(|s| format!("{}/{} {}/{}", s.variant, s.pool, s.ready_replicas, s.desired_replicas))
                .collect::<Vec<_>>()
                .join(", ")
        },
        last_decision: decision
            .map(|d| shorten(&format!("{}: {}", d.policy, d.reason), 60))
            .unwrap_or_else(|| "-".into()),
    }
}

/// `s` cut to at most `max` characters, with `…` where it was cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use crate::crd::{DecisionStatus, LLMWorkloadStatus};

    fn spec(mode: &str) -> crate::crd::LLMWorkloadSpec {
        serde_yaml::from_str(&format!(
            "variants: [{{name: v, model: m, image: i, gpusPerReplica: 1, minReplicas: 1, maxReplicas: 4}}]\n\
             gpuPools: [{{name: p, gpuType: L4, pricePerGpuHour: 0.8}}]\n\
             slo: {{ttftMs: 2000, tpotMs: 100}}\n\
             policy: {{kind: kpa, mode: {mode}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn formats_figures_for_people_and_marks_unknowns() {
        let mut st = LLMWorkloadStatus {
            observed_arrival_rate_rps: Some(175.98803557674114),
            slo_attainment: Some(0.95234),
            cost_rate_usd_per_hour: Some(12.3456),
            slots: vec![SlotStatus { variant: "v".into(), pool: "p".into(), desired_replicas: 3, ready_replicas: 2 }],
            last_decision: Some(DecisionStatus { policy: "kpa".into(), reason: "x".repeat(100), ..Default::default() }),
            ..Default::default()
        };
        let s = summary(&spec("active"), &st);
        assert_eq!((s.policy.as_str(), s.rps.as_str(), s.slo.as_str()), ("kpa", "176.0", "95.2%"));
        assert_eq!((s.cost_per_hour.as_str(), s.slots.as_str()), ("$12.35", "v/p 2/3"));
        assert_eq!(s.last_decision.chars().count(), 60);
        assert!(s.last_decision.starts_with("kpa: xxx") && s.last_decision.ends_with('…'));

        st.observed_arrival_rate_rps = Some(f64::NAN);
        st.slo_attainment = None;
        st.slots.clear();
        let s = summary(&spec("shadow"), &st);
        assert_eq!((s.policy.as_str(), s.rps.as_str(), s.slo.as_str()), ("kpa (shadow)", "-", "-"));
        assert_eq!((s.slots.as_str(), s.last_decision.as_str()), ("-", "-"), "shadow mode shows the shadow decision");
    }
}
