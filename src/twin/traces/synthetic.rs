//! Synthetic traffic: arrival processes ([`ArrivalProcess`]: Poisson, Gamma with a given
//! CV, on/off bursts, diurnal, steps) and request lengths ([`LengthSampler`]: a trace's
//! empirical distribution or a given one, [`LengthDist`]).

use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};

use super::readers::Trace;
use crate::twin::TwinError;

/// How arrivals of a synthetic workload are spaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ArrivalProcess {
    /// Poisson arrivals at `rate_rps`.
    Poisson {
        /// Mean requests per second.
        rate_rps: f64,
    },
    /// Renewal process with Gamma inter-arrival times: mean rate `rate_rps`, coefficient of variation `cv` (1 = Poisson, > 1 bursty).
    Gamma {
        /// Mean requests per second.
        rate_rps: f64,
        /// Coefficient of variation of the inter-arrival times.
        cv: f64,
    },
    /// On/off bursts: Poisson at `on_rate_rps` for `on_s` seconds, then `off_rate_rps` for `off_s` seconds, repeating.
    Onoff {
        /// Rate during an on period.
        on_rate_rps: f64,
        /// Rate during an off period.
        #[serde(default)]
        off_rate_rps: f64,
        /// Length of an on period, seconds.
        on_s: f64,
        /// Length of an off period, seconds.
        off_s: f64,
    },
    /// Diurnal (sinusoidal) rate: `mean_rps × (1 + amplitude × sin(2π t / period_s))`.
    Diurnal {
        /// Mean rate.
        mean_rps: f64,
        /// Relative amplitude, 0..=1.
        amplitude: f64,
        /// Period, seconds (86400 for a day).
        period_s: f64,
    },
    /// Piecewise-constant Poisson rate: `rates_rps[i]` from `at_s[i]` on (`at_s[0]` must be 0).
    Steps {
        /// Start time of each step, seconds, increasing, first 0.
        at_s: Vec<f64>,
        /// Rate of each step.
        rates_rps: Vec<f64>,
    },
}

impl ArrivalProcess {
    /// Checks the parameters; `field` names the scenario field in errors.
    pub fn validate(&self, field: &str) -> Result<(), TwinError> {
        let bad = |m: String| Err(TwinError::Config { field: field.to_string(), message: m });
        let pos = |v: f64, n: &str| -> Result<(), TwinError> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(TwinError::Config {
                    field: format!("{field}.{n}"),
                    message: format!("must be a finite number >= 0, got {v}"),
                })
            }
        };
        match self {
            ArrivalProcess::Poisson { rate_rps } => pos(*rate_rps, "rate_rps"),
            ArrivalProcess::Gamma { rate_rps, cv } => {
                pos(*rate_rps, "rate_rps")?;
                if !(cv.is_finite() && *cv > 0.0) {
                    return bad(format!("cv must be > 0, got {cv}"));
                }
                Ok(())
            }
            ArrivalProcess::Onoff { on_rate_rps, off_rate_rps, on_s, off_s } => {
                pos(*on_rate_rps, "on_rate_rps")?;
                pos(*off_rate_rps, "off_rate_rps")?;
                pos(*on_s, "on_s")?;
                pos(*off_s, "off_s")?;
                if on_s + off_s <= 0.0 {
                    return bad("on_s + off_s must be > 0".into());
                }
                Ok(())
            }
            ArrivalProcess::Diurnal { mean_rps, amplitude, period_s } => {
                pos(*mean_rps, "mean_rps")?;
                if !(0.0..=1.0).contains(amplitude) {
                    return bad(format!("amplitude must be in 0..=1, got {amplitude}"));
                }
                if !(period_s.is_finite() && *period_s > 0.0) {
                    return bad(format!("period_s must be > 0, got {period_s}"));
                }
                Ok(())
            }
            ArrivalProcess::Steps { at_s, rates_rps } => {
                if at_s.is_empty() || at_s.len() != rates_rps.len() {
                    return bad("at_s and rates_rps must be non-empty and of equal length".into());
                }
                if at_s[0] != 0.0 || at_s.windows(2).any(|w| !(w[1] > w[0])) {
                    return bad("at_s must start at 0 and increase".into());
                }
                for r in rates_rps {
                    pos(*r, "rates_rps")?;
                }
                Ok(())
            }
        }
    }

    /// Rate at time `t` seconds (for the inhomogeneous kinds), and its maximum.
    pub(super) fn rate_at(&self, t: f64) -> f64 {
        match self {
            ArrivalProcess::Poisson { rate_rps } | ArrivalProcess::Gamma { rate_rps, .. } => *rate_rps,
            ArrivalProcess::Onoff { on_rate_rps, off_rate_rps, on_s, off_s } => {
                if (t % (on_s + off_s)) < *on_s {
                    *on_rate_rps
                } else {
                    *off_rate_rps
                }
            }
            ArrivalProcess::Diurnal { mean_rps, amplitude, period_s } => {
                mean_rps * (1.0 + amplitude * (2.0 * std::f64::consts::PI * t / period_s).sin())
            }
            ArrivalProcess::Steps { at_s, rates_rps } => {
                let i = at_s.partition_point(|&a| a <= t).saturating_sub(1);
                rates_rps[i]
            }
        }
    }
    pub(super) fn max_rate(&self) -> f64 {
        match self {
            ArrivalProcess::Poisson { rate_rps } | ArrivalProcess::Gamma { rate_rps, .. } => *rate_rps,
            ArrivalProcess::Onoff { on_rate_rps, off_rate_rps, .. } => on_rate_rps.max(*off_rate_rps),
            ArrivalProcess::Diurnal { mean_rps, amplitude, .. } => mean_rps * (1.0 + amplitude),
            ArrivalProcess::Steps { rates_rps, .. } => rates_rps.iter().cloned().fold(0.0, f64::max),
        }
    }
}

/// Distribution of request lengths for synthetic workloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LengthDist {
    /// Every request has the same lengths.
    Fixed {
        /// Prompt tokens.
        input_tokens: u32,
        /// Output tokens.
        output_tokens: u32,
    },
    /// Log-normal lengths with the given means and coefficients of variation, clamped to `[1, max]`.
    Lognormal {
        /// Mean prompt tokens.
        input_mean: f64,
        /// CV of prompt tokens.
        input_cv: f64,
        /// Mean output tokens.
        output_mean: f64,
        /// CV of output tokens.
        output_cv: f64,
        /// Largest length drawn (tokens).
        #[serde(default = "default_max_len")]
        max_tokens: u32,
    },
    /// (prompt, output) pairs drawn jointly from a trace's rows (path relative to the scenario).
    Trace {
        /// The trace file.
        path: PathBuf,
    },
}

fn default_max_len() -> u32 {
    8192
}

/// Lengths ready to sample.
#[derive(Clone, Debug)]
pub enum LengthSampler {
    /// Fixed lengths.
    Fixed(u32, u32),
    /// Log-normal pairs (independent), clamped to max.
    Lognormal(LogNormal<f64>, LogNormal<f64>, u32),
    /// Empirical (input, output) pairs.
    Empirical(Vec<(u32, u32)>),
}

fn lognormal(mean: f64, cv: f64, field: &str) -> Result<LogNormal<f64>, TwinError> {
    if !(mean.is_finite() && mean > 0.0 && cv.is_finite() && cv >= 0.0) {
        return Err(TwinError::Config {
            field: field.into(),
            message: format!("mean must be > 0 and cv >= 0, got mean {mean}, cv {cv}"),
        });
    }
    let sigma2 = (1.0 + cv * cv).ln();
    LogNormal::new(mean.ln() - sigma2 / 2.0, sigma2.sqrt())
        .map_err(|e| TwinError::Config { field: field.into(), message: e.to_string() })
}

impl LengthSampler {
    /// Builds a sampler; trace paths resolve against `base`.
    pub fn new(dist: &LengthDist, base: &Path, field: &str) -> Result<LengthSampler, TwinError> {
        Ok(match dist {
            LengthDist::Fixed { input_tokens, output_tokens } => {
                LengthSampler::Fixed((*input_tokens).max(1), (*output_tokens).max(1))
            }
            LengthDist::Lognormal { input_mean, input_cv, output_mean, output_cv, max_tokens } => {
                LengthSampler::Lognormal(
                    lognormal(*input_mean, *input_cv, &format!("{field}.input"))?,
                    lognormal(*output_mean, *output_cv, &format!("{field}.output"))?,
                    (*max_tokens).max(1),
                )
            }
            LengthDist::Trace { path } => {
                let t = Trace::load(&base.join(path), None)?;
                LengthSampler::Empirical(t.records.iter().map(|r| (r.input_tokens, r.output_tokens)).collect())
            }
        })
    }
    pub(super) fn sample(&self, rng: &mut ChaCha8Rng) -> (u32, u32) {
        match self {
            LengthSampler::Fixed(i, o) => (*i, *o),
            LengthSampler::Lognormal(a, b, m) => {
                let c = |x: f64| (x.round().max(1.0) as u64).min(*m as u64) as u32;
                (c(a.sample(rng)), c(b.sample(rng)))
            }
            LengthSampler::Empirical(v) => v[rng.random_range(0..v.len())],
        }
    }
}
