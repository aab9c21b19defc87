//! Training across traffic: episodes drawn from several scenarios at once, each episode's
//! workload perturbed within stated ranges, so one policy sees many kinds of traffic and
//! many deployments instead of memorising one hour of one trace (domain randomisation).
//!
//! A source (`super::env::Source`) is one scenario of the mix with its weight (how often
//! its episodes are drawn) and its episode windows. Every source must describe the same workload *shape*
//! as the one the policy is trained for (the same variant and pool names, so the same
//! slots and features); its trace, engine, prices, SLO and limits may differ.
//!
//! [`Randomisation`] scales, per episode, the load, every variant's cold start, every
//! pool's price and the SLO's TTFT and TPOT targets by factors drawn log-uniformly from
//! the stated ranges (1 = off). The policy sees the price and the latencies relative to
//! the episode's SLO as features, so it can learn how they change the best fleet; the
//! cold start it cannot see and must be robust to.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::twin::Scenario;

use super::RlError;

/// Per-episode scale factors, each a range `[low, high]` drawn log-uniformly; `[1, 1]`
/// (the default) leaves the quantity as the scenario has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Randomisation {
    /// Multiplies the load drawn from the source's `episodes.loads`.
    pub load_scale: (f64, f64),
    /// Multiplies each variant's cold start (pod start plus weight load).
    pub cold_start_scale: (f64, f64),
    /// Multiplies each pool's price per GPU-hour.
    pub price_scale: (f64, f64),
    /// Multiplies the SLO's TTFT target.
    pub ttft_scale: (f64, f64),
    /// Multiplies the SLO's TPOT target.
    pub tpot_scale: (f64, f64),
}

impl Default for Randomisation {
    fn default() -> Self {
        Randomisation {
            load_scale: (1.0, 1.0),
            cold_start_scale: (1.0, 1.0),
            price_scale: (1.0, 1.0),
            ttft_scale: (1.0, 1.0),
            tpot_scale: (1.0, 1.0),
        }
    }
}

/// The factors of one episode (1 where not randomised).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpisodeFactors {
    /// Load multiplier on top of the source's drawn load.
    pub load: f64,
    /// Cold-start multiplier.
    pub cold_start: f64,
    /// Price multiplier.
    pub price: f64,
    /// TTFT-target multiplier.
    pub ttft: f64,
    /// TPOT-target multiplier.
    pub tpot: f64,
}

impl Default for EpisodeFactors {
    /// Every factor 1: the scenario as written.
    fn default() -> Self {
        EpisodeFactors { load: 1.0, cold_start: 1.0, price: 1.0, ttft: 1.0, tpot: 1.0 }
    }
}

impl Randomisation {
    fn ranges(&self) -> [(&'static str, (f64, f64)); 5] {
        [
            ("loadScale", self.load_scale),
            ("coldStartScale", self.cold_start_scale),
            ("priceScale", self.price_scale),
            ("ttftScale", self.ttft_scale),
            ("tpotScale", self.tpot_scale),
        ]
    }

    /// Checks every range: finite, `0 < low ≤ high`; the error names the field.
    pub fn check(&self) -> Result<(), RlError> {
        for (name, (lo, hi)) in self.ranges() {
            if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                return Err(RlError::Config(format!(
                    "randomise.{name} [{lo}, {hi}] must satisfy 0 < low ≤ high (finite); [1, 1] is off"
                )));
            }
        }
        Ok(())
    }

    /// Whether every range is `[1, 1]`.
    pub fn is_off(&self) -> bool {
        self.ranges().iter().all(|(_, r)| *r == (1.0, 1.0))
    }

    /// Draws the factors of one episode (five draws, always in the same order).
    pub fn draw(&self, rng: &mut impl Rng) -> EpisodeFactors {
        let mut d = |(lo, hi): (f64, f64)| {
            let u: f64 = rng.random();
            if lo == hi {
                lo
            } else {
                (lo.ln() + u * (hi.ln() - lo.ln())).exp()
            }
        };
        EpisodeFactors {
            load: d(self.load_scale),
            cold_start: d(self.cold_start_scale),
            price: d(self.price_scale),
            ttft: d(self.ttft_scale),
            tpot: d(self.tpot_scale),
        }
    }
}

/// `base` with the episode's cold starts, prices and SLO targets (the load factor is
/// applied where the run window is made). Cold starts become explicit per variant.
pub fn perturbed(base: &Scenario, f: &EpisodeFactors) -> Result<Scenario, RlError> {
    let mut s = base.clone();
    for v in 0..s.spec.variants.len() {
        let cold = base.cold_start_s(v)?;
        s.spec.variants[v].cold_start_seconds = Some(cold * f.cold_start);
    }
    for p in &mut s.spec.gpu_pools {
        p.price_per_gpu_hour *= f.price;
    }
    s.spec.slo.ttft_ms *= f.ttft;
    s.spec.slo.tpot_ms *= f.tpot;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn draws_stay_in_range_and_off_is_identity() {
        let r = Randomisation {
            load_scale: (0.5, 2.0),
            price_scale: (0.7, 1.4),
            ttft_scale: (3.0, 3.0),
            ..Default::default()
        };
        r.check().unwrap();
        assert!(!r.is_off() && Randomisation::default().is_off());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (mut lo, mut hi) = (f64::MAX, 0.0f64);
        for _ in 0..2000 {
            let f = r.draw(&mut rng);
            assert!((0.5..=2.0).contains(&f.load) && (0.7..=1.4).contains(&f.price));
            assert_eq!((f.ttft, f.cold_start, f.tpot), (3.0, 1.0, 1.0));
            lo = lo.min(f.load);
            hi = hi.max(f.load);
        }
        // Log-uniform: both ends are reached, and the median is the geometric mean.
        assert!(lo < 0.52 && hi > 1.9, "{lo} {hi}");
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let below = (0..4000).filter(|_| r.draw(&mut rng).load < 1.0).count();
        assert!((1800..2200).contains(&below), "{below}");
    }

    #[test]
    fn bad_ranges_name_the_field() {
        for (r, field) in [
            (Randomisation { price_scale: (2.0, 1.0), ..Default::default() }, "priceScale"),
            (Randomisation { load_scale: (0.0, 1.0), ..Default::default() }, "loadScale"),
            (Randomisation { tpot_scale: (1.0, f64::NAN), ..Default::default() }, "tpotScale"),
        ] {
            let e = r.check().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn perturbed_scales_prices_slo_and_cold_starts() {
        let s = crate::twin::Scenario::load(std::path::Path::new("scenarios/azure-code-llama3-8b-a100.toml")).unwrap();
        let cold = s.cold_start_s(0).unwrap();
        let f = EpisodeFactors { load: 1.0, cold_start: 2.0, price: 0.5, ttft: 1.5, tpot: 0.8 };
        let p = perturbed(&s, &f).unwrap();
        assert!((p.cold_start_s(0).unwrap() - 2.0 * cold).abs() < 1e-9);
        assert!((p.spec.gpu_pools[0].price_per_gpu_hour - 0.5 * s.spec.gpu_pools[0].price_per_gpu_hour).abs() < 1e-12);
        assert!((p.spec.slo.ttft_ms - 1.5 * s.spec.slo.ttft_ms).abs() < 1e-9);
        assert!((p.spec.slo.tpot_ms - 0.8 * s.spec.slo.tpot_ms).abs() < 1e-9);
    }
}
