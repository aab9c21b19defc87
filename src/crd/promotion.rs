//! `spec.learning.promotion` and `status.learning` of an LLMWorkload: how a retrained
//! policy is judged before it acts (evaluation, then shadow) and undone when it degrades
//! the SLO (rollback), and where that stands.
//!
//! The rule itself is `learning::promote` (a pure state machine); the controller feeds it
//! (`controller::promotion`) and keeps its state in [`LearningStatus`], so an operator
//! restart or a new leader continues where the last one was. The types here are flat
//! (no tagged enums) so that the CRD's schema stays structural.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DecisionStatus;

/// Most entries `status.learning.history` keeps (the oldest are dropped first).
pub const HISTORY_KEPT: usize = 20;
/// Most training results `status.learning.consumed` remembers (the oldest are dropped
/// first; an `LLMPolicyTraining` older than that many others is not fed twice either,
/// since its phase stays `Evaluated` and the newest are remembered).
pub const CONSUMED_KEPT: usize = 50;

/// Longest shadow, rollback window and watch, seconds (30 days).
pub const PROMOTION_MAX_S: u32 = 30 * 86_400;

/// How a retrained policy becomes the active one (`spec.learning.promotion`).
///
/// An `LLMPolicyTraining` of this workload that reaches phase `Evaluated` hands its
/// candidate (a checkpoint and its digest) and the paired score differences against the
/// incumbent to the controller. The candidate goes to shadow only when the lower end of
/// the 95 % interval of the mean difference exceeds `margin` over at least `minSeeds`
/// seeds; in shadow it decides next to the active policy on the same observation, through
/// the same shield, without acting, for `shadowSeconds` and at least
/// `minShadowDecisions` decisions, and is rejected once the shield would have overridden
/// more than `maxShieldOverrideFraction` of them. Promoted, it acts; if over the next
/// `watchSeconds` its live SLO attainment over `rollbackWindowSeconds` falls more than
/// `rollbackMargin` below the incumbent's, the previous policy comes back. The spec's
/// `policy` is never edited: the promoted checkpoint lives in `status.learning.active`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PromotionSpec {
    /// Judge, promote and roll back retrained policies (default false). Off, the spec's
    /// policy decides and `status.learning` is left as it was (enabling it again resumes
    /// from there).
    pub enabled: bool,
    /// Score difference (candidate − incumbent, the evaluation harness's score) the lower
    /// end of the 95 % interval must exceed (default 0, at least 0).
    #[schemars(range(min = 0.0))]
    pub margin: f64,
    /// Fewest paired evaluation seeds (2..=1000, default 3).
    #[schemars(range(min = 2, max = 1000))]
    pub min_seeds: u32,
    /// Seconds the candidate decides in shadow before it can be promoted (1..=2592000,
    /// default 3600).
    #[schemars(range(min = 1, max = 2592000))]
    pub shadow_seconds: u32,
    /// Fewest shadow decisions before a promotion (default 100).
    #[schemars(range(min = 0, max = 1000000))]
    pub min_shadow_decisions: u32,
    /// Largest fraction of its shadow decisions the shield may have overridden, 0..1
    /// (default 0: any override rejects the candidate).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_shield_override_fraction: f64,
    /// How far (a fraction: 0.02 = 2 points) the promoted policy's live SLO attainment may
    /// fall below the incumbent's before it is rolled back, 0..1 (default 0.02).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rollback_margin: f64,
    /// The window both sides' live SLO attainment is judged over, seconds (1..=2592000,
    /// default 1800); a promoted policy is judged once it has run this long.
    #[schemars(range(min = 1, max = 2592000))]
    pub rollback_window_seconds: u32,
    /// How long after a promotion a rollback is considered, seconds (at least
    /// `rollbackWindowSeconds`, at most 2592000, default 86400).
    #[schemars(range(min = 1, max = 2592000))]
    pub watch_seconds: u32,
}

impl Default for PromotionSpec {
    fn default() -> Self {
        PromotionSpec {
            enabled: false,
            margin: 0.0,
            min_seeds: 3,
            shadow_seconds: 3600,
            min_shadow_decisions: 100,
            max_shield_override_fraction: 0.0,
            rollback_margin: 0.02,
            rollback_window_seconds: 1800,
            watch_seconds: 86_400,
        }
    }
}

impl PromotionSpec {
    /// Whether every field has its default (the section is then left out when written).
    pub fn is_default(&self) -> bool {
        *self == PromotionSpec::default()
    }

    /// What is wrong with the section, as `(field under spec.learning.promotion, message)`
    /// pairs: the schema's bounds checked again (for specs that do not pass an API server)
    /// and the relations the schema cannot state.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let fraction = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            out.push(("margin", format!("{} must be a number of at least 0", self.margin)));
        }
        if !(2..=1000).contains(&self.min_seeds) {
            out.push(("minSeeds", format!("{} is outside 2..=1000 (a 95 % interval needs two seeds)", self.min_seeds)));
        }
        if !(1..=PROMOTION_MAX_S).contains(&self.shadow_seconds) {
            out.push(("shadowSeconds", format!("{} is outside 1..={PROMOTION_MAX_S} seconds", self.shadow_seconds)));
        }
        if self.min_shadow_decisions > 1_000_000 {
            out.push(("minShadowDecisions", format!("{} is more than 1000000", self.min_shadow_decisions)));
        }
        if !fraction(self.max_shield_override_fraction) {
            out.push((
                "maxShieldOverrideFraction",
                format!("{} is not a fraction in 0..1", self.max_shield_override_fraction),
            ));
        }
        if !fraction(self.rollback_margin) {
            out.push((
                "rollbackMargin",
                format!("{} is not a fraction in 0..1 (0.02 = 2 points)", self.rollback_margin),
            ));
        }
        if !(1..=PROMOTION_MAX_S).contains(&self.rollback_window_seconds) {
            out.push((
                "rollbackWindowSeconds",
                format!("{} is outside 1..={PROMOTION_MAX_S} seconds", self.rollback_window_seconds),
            ));
        }
        if !(1..=PROMOTION_MAX_S).contains(&self.watch_seconds) {
            out.push(("watchSeconds", format!("{} is outside 1..={PROMOTION_MAX_S} seconds", self.watch_seconds)));
        } else if self.watch_seconds < self.rollback_window_seconds {
            out.push((
                "watchSeconds",
                format!(
                    "{} is shorter than rollbackWindowSeconds ({}): a promoted policy would never be judged",
                    self.watch_seconds, self.rollback_window_seconds
                ),
            ));
        }
        out
    }
}

/// A learned policy: its checkpoint and the checkpoint's SHA-256 digest (`llmos digest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// SHA-256 of the checkpoint (64 hex digits); the controller loads it pinned to it.
    pub digest: String,
    /// The checkpoint directory (on a volume the operator mounts) or a shipped policy's name.
    pub checkpoint: String,
}

/// An evaluation's numbers: the mean paired score difference, its 95 % half-width, seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationNumbers {
    /// Mean paired difference (candidate − incumbent).
    pub mean: f64,
    /// 95 % half-width (Student's t).
    pub ci95: f64,
    /// Paired seeds.
    pub seeds: u32,
}

/// One window of live SLO attainment of the active policy, kept for the rollback rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveWindow {
    /// When it ended (Unix seconds).
    pub end_unix_s: f64,
    /// Fraction of requests that met the SLO, 0..1 (tick attainments weighted by tick length).
    pub attainment: f64,
    /// Its length, seconds.
    pub seconds: f64,
}

/// The candidate in shadow: how often it decided, how often the shield would have
/// changed its decision, and its last decision (never applied).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStatus {
    /// Shadow decisions since the shadow started.
    pub decisions: u64,
    /// Of those, how many the shield would have overridden.
    pub shield_overrides: u64,
    /// The candidate's last decision after the shield (not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<DecisionStatus>,
}

/// One change of the active policy (`status.learning.history`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyHistoryEntry {
    /// Digest of the policy active from then on (absent: the spec's own policy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Its checkpoint (absent: the spec's own policy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkpoint: String,
    /// When (RFC 3339).
    pub time: String,
    /// `Promoted` or `RolledBack`.
    pub action: String,
    /// Why, with the numbers.
    pub why: String,
}

/// Where promotion stands for a workload (`status.learning`), written by the operator
/// and read back when it starts or takes over as leader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LearningStatus {
    /// `Idle`, `Training`, `Shadow` or `Watching`.
    pub phase: String,
    /// Since when the phase holds (RFC 3339; absent when idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The training run (phase `Training`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<String>,
    /// The candidate in shadow (phase `Shadow`) or the promoted policy being watched
    /// (phase `Watching`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<PolicyRef>,
    /// The candidate's evaluation (phase `Shadow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationNumbers>,
    /// What the watched policy replaced (phase `Watching`; absent: the spec's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PolicyRef>,
    /// The incumbent's live SLO attainment the watched policy is judged against (phase
    /// `Watching`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// The learned policy acting now; absent: the spec's own `policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<PolicyRef>,
    /// The shadow's counters (phase `Shadow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
    /// Promotions and rollbacks, oldest first (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PolicyHistoryEntry>,
    /// Recent live SLO attainment windows of the active policy (within
    /// `rollbackWindowSeconds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<LiveWindow>,
    /// Training results already fed to the rule, as `<training name>@<candidate digest>`
    /// (the newest 50), so that none is judged twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed: Vec<String>,
    /// The last promotion Event's reason and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
}
