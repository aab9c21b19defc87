//! ε-greedy exploration schedules.
//!
//! With probability ε the agent takes a uniformly random *allowed* action, otherwise the
//! greedy one. ε starts high (explore) and decays to a floor (mostly exploit):
//!
//! - [`EpsilonSchedule::Linear`]: ε falls in a straight line from `start` to `end` over
//!   `steps` environment steps, then stays at `end` (DQN's original schedule).
//! - [`EpsilonSchedule::Exponential`]: ε = end + (start − end)·0.5^(step / half_life_steps),
//!   which never quite reaches `end` and spends longer at moderate exploration.

use serde::{Deserialize, Serialize};

/// How ε decays with the number of environment steps taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum EpsilonSchedule {
    /// Linear decay from `start` to `end` over `steps`, then constant.
    #[serde(rename_all = "camelCase")]
    Linear {
        /// ε at step 0.
        start: f64,
        /// ε after `steps` steps.
        end: f64,
        /// Steps over which ε decays.
        steps: u64,
    },
    /// Exponential decay towards `end`, halving the distance every `half_life_steps`.
    #[serde(rename_all = "camelCase")]
    Exponential {
        /// ε at step 0.
        start: f64,
        /// The floor ε approaches.
        end: f64,
        /// Steps after which the distance to `end` has halved.
        half_life_steps: f64,
    },
}

impl Default for EpsilonSchedule {
    fn default() -> Self {
        EpsilonSchedule::Linear { start: 1.0, end: 0.05, steps: 10_000 }
    }
}

impl EpsilonSchedule {
    /// ε after `step` environment steps.
    pub fn value(&self, step: u64) -> f64 {
        match *self {
            EpsilonSchedule::Linear { start, end, steps } => {
                if steps == 0 || step >= steps {
                    end
                } else {
                    start + (end - start) * (step as f64 / steps as f64)
                }
            }
            EpsilonSchedule::Exponential { start, end, half_life_steps } => {
                if half_life_steps <= 0.0 {
                    return end;
                }
                end + (start - end) * 0.5f64.powf(step as f64 / half_life_steps)
            }
        }
    }

    /// Checks that the ε values are probabilities.
    pub fn validate(&self) -> Result<(), super::RlError> {
        let (s, e) = match *self {
            EpsilonSchedule::Linear { start, end, .. } => (start, end),
            EpsilonSchedule::Exponential { start, end, .. } => (start, end),
        };
        if !(0.0..=1.0).contains(&s) || !(0.0..=1.0).contains(&e) {
            return Err(super::RlError::Config(format!("epsilon start {s} and end {e} must lie in [0, 1]")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_hits_endpoints_and_midpoint() {
        let s = EpsilonSchedule::Linear { start: 1.0, end: 0.1, steps: 100 };
        assert_eq!(s.value(0), 1.0);
        assert!((s.value(50) - 0.55).abs() < 1e-12);
        assert_eq!(s.value(100), 0.1);
        assert_eq!(s.value(10_000), 0.1);
    }

    #[test]
    fn exponential_halves_distance() {
        let s = EpsilonSchedule::Exponential { start: 1.0, end: 0.0, half_life_steps: 10.0 };
        assert!((s.value(10) - 0.5).abs() < 1e-12);
        assert!((s.value(20) - 0.25).abs() < 1e-12);
        assert!(s.value(1000) >= 0.0);
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(EpsilonSchedule::Linear { start: 1.5, end: 0.0, steps: 1 }.validate().is_err());
    }
}
