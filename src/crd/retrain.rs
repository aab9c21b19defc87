//! `spec.learning.retrain` of an LLMWorkload: retraining on a schedule, so that learning
//! does not stop at the first promoted checkpoint.
//!
//! A retraining run is an `LLMPolicyTraining` (`crd::training`); this section makes the
//! operator create one for the workload every `intervalSeconds`, as a CronJob creates
//! Jobs from its template. The template is an existing training of the workload named in
//! `from` (usually the first one, applied by hand): each round copies its spec, gives it
//! fresh seeds and, with `resumeFromActive`, starts from the policy acting now. A round
//! starts only when the last training of the workload has finished, no candidate is in
//! shadow, and at least `minRecordedSeconds` of new traffic was recorded since the last
//! training was created; the oldest finished rounds beyond `historyLimit` are deleted.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest retraining interval, seconds (90 days).
pub const RETRAIN_MAX_INTERVAL_S: u32 = 90 * 86_400;
/// Most finished rounds kept.
pub const RETRAIN_MAX_HISTORY: u32 = 100;

/// Retraining on a schedule (`spec.learning.retrain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetrainSpec {
    /// Retrain on the schedule (default false).
    pub enabled: bool,
    /// The `LLMPolicyTraining` (in the workload's namespace, training this workload)
    /// whose spec each round copies. Required when `enabled`.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    pub from: String,
    /// Seconds from the creation of the workload's newest training to the next round
    /// (1..=7776000, default 86400: daily).
    #[schemars(range(min = 1, max = 7776000))]
    pub interval_seconds: u32,
    /// Seconds of traffic the operator must have recorded (`spec.learning.record`) since
    /// the newest training was created before a round starts (default 3600; 0: no such
    /// condition, e.g. when the template trains on public traces only).
    #[schemars(range(min = 0, max = 7776000))]
    pub min_recorded_seconds: u32,
    /// Start each round from the learned policy acting now (`status.learning.active`),
    /// when there is one, instead of the template's `baseCheckpoint` (default true).
    pub resume_from_active: bool,
    /// Finished rounds (phase `Evaluated` or `Failed`) kept; older ones are deleted with
    /// their Jobs and, when the operator mounts the training volume, their files (a
    /// checkpoint that is active, in shadow or the previous policy is never deleted;
    /// 1..=100, default 3). Trainings applied by hand are never deleted.
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
}

impl Default for RetrainSpec {
    fn default() -> Self {
        RetrainSpec {
            enabled: false,
            from: String::new(),
            interval_seconds: 86_400,
            min_recorded_seconds: 3_600,
            resume_from_active: true,
            history_limit: 3,
        }
    }
}

impl RetrainSpec {
    /// Whether every field has its default (the section is then left out when written).
    pub fn is_default(&self) -> bool {
        *self == RetrainSpec::default()
    }

    /// What is wrong with the section, as `(field under spec.learning.retrain, message)`
    /// pairs: the schema's bounds checked again and what the schema cannot state.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.enabled && self.from.is_empty() {
            out.push((
                "from",
                "is required when retraining is enabled: name the LLMPolicyTraining to copy".to_string(),
            ));
        }
        if !self.from.is_empty() && !is_dns_subdomain(&self.from) {
            out.push(("from", format!("{:?} is not a valid object name (a DNS subdomain)", self.from)));
        }
        if !(1..=RETRAIN_MAX_INTERVAL_S).contains(&self.interval_seconds) {
            out.push((
                "intervalSeconds",
                format!("{} is outside 1..={RETRAIN_MAX_INTERVAL_S} seconds", self.interval_seconds),
            ));
        }
        if self.min_recorded_seconds > RETRAIN_MAX_INTERVAL_S {
            out.push((
                "minRecordedSeconds",
                format!("{} is more than {RETRAIN_MAX_INTERVAL_S} seconds", self.min_recorded_seconds),
            ));
        }
        if !(1..=RETRAIN_MAX_HISTORY).contains(&self.history_limit) {
            out.push(("historyLimit", format!("{} is outside 1..={RETRAIN_MAX_HISTORY}", self.history_limit)));
        }
        out
    }
}

/// Whether `s` is a Kubernetes object name (RFC 1123 subdomain, at most 253 characters).
fn is_dns_subdomain(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253 && s.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_enabled_needs_a_template() {
        assert!(RetrainSpec::default().problems().is_empty());
        let on = RetrainSpec { enabled: true, ..RetrainSpec::default() };
        assert_eq!(on.problems()[0].0, "from");
        let named = RetrainSpec { from: "chat-first".into(), ..on };
        assert!(named.problems().is_empty());
    }

    #[test]
    fn bounds_name_their_fields() {
        let bad = RetrainSpec {
            enabled: true,
            from: "Bad_Name".into(),
            interval_seconds: 0,
            min_recorded_seconds: u32::MAX,
            resume_from_active: true,
            history_limit: 0,
        };
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["from", "intervalSeconds", "minRecordedSeconds", "historyLimit"]);
    }

    #[test]
    fn parses_camel_case_with_defaults_and_refuses_unknown_fields() {
        let s: RetrainSpec = serde_json::from_str(r#"{"enabled": true, "from": "t", "intervalSeconds": 60}"#).unwrap();
        assert_eq!((s.interval_seconds, s.history_limit, s.resume_from_active), (60, 3, true));
        let e = serde_json::from_str::<RetrainSpec>(r#"{"every": 60}"#).unwrap_err();
        assert!(e.to_string().contains("every"), "{e}");
    }
}
