//! The one reward: what a control tick is worth, in the same terms for training (the
//! twin environments), the comparison harness's reported objective, and the transitions
//! the operator records.

use serde::{Deserialize, Serialize};

use crate::twin::TickStats;

/// Reward weights. The reward of one control tick is
///
/// ```text
/// r = scale · [ w_slo · (met − miss_penalty · (finished − met + rejected)) − λ · cost_usd
///              + w_quality · quality_sum + w_good · quality_met_sum ]
/// ```
///
/// (`quality_sum` sums the variant quality of every finished request, `quality_met_sum` of
/// those that met the SLO: with `w_slo = 0` and `w_good = 1` the return is the quality
/// delivered in time minus λ × cost, the Lagrangian form of quality per dollar.)
///
/// **Why the sum is the objective the reports show.** Summed over an episode, the reward
/// is `scale · [w_slo · (N_met − m · N_missed) − λ · Cost + w_q · Q]`, where `N_met` and
/// `N_missed` are the episode's requests that met / missed the SLO (rejections count as
/// misses), `Cost` is Σ price × GPU-hours and `Q` the summed quality of answered requests.
/// On a fixed trace window every policy sees the same requests, so `N = N_met + N_missed`
/// is a constant and the return equals `scale · [w_slo · N · ((1+m) · attainment − m) −
/// λ · Cost + w_q · Q]`: an increasing affine function of the SLO attainment and a
/// decreasing one of the GPU cost (GPU-hours weighted by price) that the comparison
/// tables report. Maximising the return is maximising that weighted objective; λ sets the
/// exchange rate (how many missed requests one dollar of GPU time is worth). The only gap
/// is requests still in flight when a window ends, which no tick has counted yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Weight of the SLO term.
    pub slo_weight: f64,
    /// A miss costs this many met requests (m above).
    pub miss_penalty: f64,
    /// λ: requests-worth per USD of GPU time.
    pub cost_weight_per_usd: f64,
    /// Weight of the summed quality of answered requests (0 when variants do not differ).
    pub quality_weight: f64,
    /// Weight of the summed quality of requests answered within the SLO.
    pub good_quality_weight: f64,
    /// Constant factor on every reward (keeps TD errors near the Huber knee; does not
    /// change the optimal policy).
    pub scale: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            slo_weight: 1.0,
            miss_penalty: 1.0,
            cost_weight_per_usd: 200.0,
            quality_weight: 0.0,
            good_quality_weight: 0.0,
            scale: 0.01,
        }
    }
}

impl RewardConfig {
    /// The reward of one tick.
    pub fn reward(&self, t: &TickStats) -> f64 {
        let met = t.slo_met as f64;
        let missed = (t.finished as f64 - met).max(0.0) + t.rejected as f64;
        self.scale
            * (self.slo_weight * (met - self.miss_penalty * missed) - self.cost_weight_per_usd * t.cost_usd
                + self.quality_weight * t.quality_sum
                + self.good_quality_weight * t.quality_met_sum)
    }
}
