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

/// A reward table that cannot be used, with the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RewardConfigError {
    /// The file read.
    pub file: String,
    /// What is wrong, naming the field.
    pub message: String,
}

impl RewardConfig {
    /// Reads the `[reward]` table of a TOML file: a training config
    /// (`scenarios/train/*.toml`) or a file holding only that table. Every field is
    /// optional (the defaults above); unknown fields and values that are not finite, a
    /// negative weight or a non-positive scale are errors naming the field.
    pub fn from_toml(text: &str, file: &str) -> Result<RewardConfig, RewardConfigError> {
        let err = |message: String| RewardConfigError { file: file.to_string(), message };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
        let Some(reward) = table.get("reward") else {
            return Err(err("no [reward] table".into()));
        };
        let cfg: RewardConfig = reward.clone().try_into().map_err(|e: toml::de::Error| err(format!("reward: {e}")))?;
        match cfg.problem() {
            Some(message) => Err(err(message)),
            None => Ok(cfg),
        }
    }

    /// What is wrong with the weights, naming the field: every weight must be finite and
    /// non-negative, the scale finite and positive.
    fn problem(&self) -> Option<String> {
        let weights = [
            ("sloWeight", self.slo_weight),
            ("missPenalty", self.miss_penalty),
            ("costWeightPerUsd", self.cost_weight_per_usd),
            ("qualityWeight", self.quality_weight),
            ("goodQualityWeight", self.good_quality_weight),
        ];
        if let Some((name, v)) = weights.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Some(format!("reward.{name}: {v} is not a finite, non-negative number"));
        }
        (!(self.scale.is_finite() && self.scale > 0.0))
            .then(|| format!("reward.scale: {} must be a finite, positive number", self.scale))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reward_table_of_a_training_config() {
        let text = "[reward]\ncostWeightPerUsd = 120\nmissPenalty = 2\n\n[dqn]\nhidden = [64, 64]\n";
        let r = RewardConfig::from_toml(text, "t.toml").unwrap();
        assert_eq!(r.cost_weight_per_usd, 120.0);
        assert_eq!(r.miss_penalty, 2.0);
        assert_eq!(r.scale, RewardConfig::default().scale);
    }

    #[test]
    fn bad_reward_tables_name_the_file_and_field() {
        let e = RewardConfig::from_toml("[dqn]\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("a.toml") && e.contains("[reward]"), "{e}");
        let e = RewardConfig::from_toml("[reward]\ncostWeight = 3\n", "b.toml").unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("costWeight"), "{e}");
        let e = RewardConfig::from_toml("[reward]\nscale = 0\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("reward.scale"), "{e}");
        let e = RewardConfig::from_toml("[reward]\nmissPenalty = -1\n", "d.toml").unwrap_err().to_string();
        assert!(e.contains("reward.missPenalty"), "{e}");
    }
}
