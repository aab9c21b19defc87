//! The verdict of a workload with several variants: good quality per dollar (the summed
//! quality of the requests that met the SLO, divided by the GPU cost) against the best
//! heuristic at equal or better SLO attainment, with the changes of the largest variant
//! counted so that a policy cannot win by flapping its most expensive replicas.
//!
//! Defined here once (the comparison prints it, docs/results.md quotes it):
//! - **the reference**: of the heuristics (every policy run that is neither learned nor
//!   clairvoyant), those whose SLO attainment (to 0.1 pt) is at least the policy's; of
//!   them the one with the most good quality per dollar. When none reaches the policy's
//!   SLO attainment, the one with the highest SLO attainment (the nearest on that axis;
//!   taking the most good quality per dollar of all instead would let a heuristic far
//!   below the target set the bar, and a policy could lose by serving better).
//! - **the cell counts** as the GPU-hour verdict's does ([`cell_counts`]): the policy's SLO
//!   attainment is at least the workload's target, or within [`ISO_SLO_SLACK_PT`] of the
//!   best heuristic's.
//! - **met**: the cell counts, the policy delivers more good quality per dollar than the
//!   reference, and it changes the largest variant's replicas no more often than the
//!   reference does (means over seeds).

use serde::Serialize;

use super::stats::{cell_counts, round1, Row, ISO_SLO_SLACK_PT};

/// One learned policy against the heuristics at one load (means over seeds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QualityVerdict {
    /// Load multiplier.
    pub load: f64,
    /// The judged policy.
    pub policy: String,
    /// Its SLO attainment, %.
    pub slo_pct: f64,
    /// Its good quality per dollar.
    pub quality_per_usd: f64,
    /// Its changes of the largest variant's replicas.
    pub large_changes: f64,
    /// The reference heuristic (see the module's rule).
    pub baseline: String,
    /// The reference's SLO attainment, %.
    pub baseline_slo_pct: f64,
    /// The reference's good quality per dollar.
    pub baseline_quality_per_usd: f64,
    /// The reference's changes of the largest variant's replicas.
    pub baseline_large_changes: f64,
    /// Whether some heuristic reaches the policy's SLO attainment.
    pub baseline_reaches: bool,
    /// The workload's SLO attainment target, %.
    pub target_pct: f64,
    /// The highest SLO attainment of any heuristic at this load, %.
    pub best_baseline_slo_pct: f64,
    /// Whether the cell counts (see the module's rule).
    pub counts: bool,
}

impl QualityVerdict {
    /// The bar, defined here once (see the module's rule).
    pub fn meets(&self) -> bool {
        self.counts
            && self.quality_per_usd > self.baseline_quality_per_usd
            && self.large_changes <= self.baseline_large_changes
    }
}

/// `(SLO %, good quality/$, large-variant changes)` of a row, when all three are finite.
fn figures(r: &Row) -> Option<(f64, f64, f64)> {
    let val =
        |col: &str| r.columns.iter().position(|c| *c == col).map(|i| &r.values[i]).filter(|e| e.n > 0).map(|e| e.mean);
    match (val("SLO %"), val("good quality/$"), val("large-variant changes")) {
        (Some(s), Some(q), Some(c)) if s.is_finite() && q.is_finite() && c.is_finite() => Some((s, q, c)),
        _ => None,
    }
}

/// The verdicts of `policy` against the rows that satisfy `is_heuristic`, per load, for
/// a workload whose SLO attainment target is `target_pct` %. Loads where the policy or
/// every heuristic lacks a figure (one variant: no large-variant count; no quality: no
/// good quality per dollar) are skipped.
pub fn quality_verdicts(
    rows: &[Row],
    policy: &str,
    is_heuristic: &dyn Fn(&Row) -> bool,
    target_pct: f64,
) -> Vec<QualityVerdict> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.policy == policy) {
        let Some((slo, q, c)) = figures(r) else { continue };
        let base: Vec<(&str, (f64, f64, f64))> = rows
            .iter()
            .filter(|b| b.load == r.load && b.policy != policy && is_heuristic(b))
            .filter_map(|b| figures(b).map(|f| (b.policy.as_str(), f)))
            .collect();
        let best_slo = base.iter().map(|b| b.1 .0).fold(f64::NEG_INFINITY, f64::max);
        let by_quality = |a: &&(&str, (f64, f64, f64)), b: &&(&str, (f64, f64, f64))| a.1 .1.total_cmp(&b.1 .1);
        let (reference, reaches) = match base.iter().filter(|b| round1(b.1 .0) >= round1(slo)).max_by(by_quality) {
            Some(b) => (b, true),
            None => match base.iter().max_by(|a, b| a.1 .0.total_cmp(&b.1 .0)) {
                Some(b) => (b, false),
                None => continue,
            },
        };
        out.push(QualityVerdict {
            load: r.load,
            policy: policy.to_string(),
            slo_pct: slo,
            quality_per_usd: q,
            large_changes: c,
            baseline: reference.0.to_string(),
            baseline_slo_pct: reference.1 .0,
            baseline_quality_per_usd: reference.1 .1,
            baseline_large_changes: reference.1 .2,
            baseline_reaches: reaches,
            target_pct,
            best_baseline_slo_pct: best_slo,
            counts: cell_counts(slo, target_pct, best_slo),
        });
    }
    out
}

/// One line per verdict, saying whether the bar is met and, when not, why.
pub fn quality_verdict_text(verdicts: &[QualityVerdict]) -> String {
    let mut s = String::new();
    for v in verdicts {
        let against = if v.baseline_reaches {
            format!("the heuristic with the most good quality/$ at SLO ≥ {:.1} % is", v.slo_pct)
        } else {
            format!("no heuristic reaches {:.1} % SLO; the one with the highest is", v.slo_pct)
        };
        let judged = if !v.counts {
            format!(
                "not counted (SLO below the {:.1} % target and more than {ISO_SLO_SLACK_PT} pt below the best heuristic's {:.1} %)",
                v.target_pct, v.best_baseline_slo_pct
            )
        } else if v.meets() {
            "met".to_string()
        } else if v.large_changes > v.baseline_large_changes {
            "not met (more changes of the largest variant)".to_string()
        } else {
            "not met".to_string()
        };
        s.push_str(&format!(
            "load ×{}: {} {:.1} % SLO, {:.0} good quality/$, {:.1} changes of the largest variant; {against} {} ({:.1} %, {:.0}, {:.1}): {:.2}× → {judged}\n",
            v.load,
            v.policy,
            v.slo_pct,
            v.quality_per_usd,
            v.large_changes,
            v.baseline,
            v.baseline_slo_pct,
            v.baseline_quality_per_usd,
            v.baseline_large_changes,
            if v.baseline_quality_per_usd > 0.0 { v.quality_per_usd / v.baseline_quality_per_usd } else { f64::NAN },
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::stats::{columns, Estimate};

    fn row(policy: &str, slo: f64, q: f64, changes: f64) -> Row {
        let names: Vec<&'static str> = columns().iter().map(|c| c.name).collect();
        let mut values = vec![Estimate::default(); names.len()];
        let mut set = |col: &str, v: f64| {
            values[names.iter().position(|c| *c == col).unwrap()] = Estimate { mean: v, ci95: 0.0, n: 1 };
        };
        set("SLO %", slo);
        set("good quality/$", q);
        set("large-variant changes", changes);
        Row { policy: policy.into(), kind: None, load: 1.0, columns: names, values }
    }

    fn judge(rows: &[Row]) -> QualityVerdict {
        quality_verdicts(rows, "learned", &|r: &Row| r.policy != "learned", 95.0).remove(0)
    }

    #[test]
    fn the_reference_is_the_best_heuristic_at_equal_or_better_slo() {
        let h = [row("cheap-low", 90.0, 2000.0, 1.0), row("good", 97.0, 800.0, 2.0), row("better", 96.0, 900.0, 1.0)];
        let mut rows = h.to_vec();
        rows.push(row("learned", 96.0, 1500.0, 1.0));
        let v = judge(&rows);
        assert_eq!((v.baseline.as_str(), v.baseline_reaches, v.counts), ("better", true, true));
        assert!(v.meets(), "{v:?}");
        assert!(quality_verdict_text(&[v]).contains("→ met"));
    }

    #[test]
    fn flapping_the_large_variant_or_a_low_slo_fails_the_bar() {
        let mut rows = vec![row("h", 97.0, 800.0, 1.0), row("learned", 97.0, 1500.0, 6.0)];
        let v = judge(&rows);
        assert!(!v.meets() && quality_verdict_text(&[v]).contains("more changes of the largest variant"));
        // Below the target and more than a point below the best heuristic: not counted.
        rows[1] = row("learned", 94.0, 5000.0, 0.0);
        let v = judge(&rows);
        assert!(!v.counts && !v.meets());
        assert!(quality_verdict_text(&[v]).contains("not counted"));
        // Above every heuristic's SLO: judged against the one of highest SLO, however much
        // good quality per dollar a heuristic far below the target delivers.
        rows.push(row("cheap-low", 80.0, 6000.0, 0.0));
        rows[1] = row("learned", 99.0, 900.0, 0.0);
        let v = judge(&rows);
        assert_eq!((v.baseline.as_str(), v.baseline_reaches, v.counts), ("h", false, true));
        assert!(v.meets());
        assert!(quality_verdict_text(&[v]).contains("no heuristic reaches 99.0 % SLO"));
        rows[1] = row("learned", 99.0, 700.0, 0.0);
        assert!(!judge(&rows).meets());
    }

    #[test]
    fn rows_without_the_figures_are_skipped() {
        let mut one_variant = row("learned", 97.0, 800.0, 0.0);
        let i = one_variant.columns.iter().position(|c| *c == "large-variant changes").unwrap();
        one_variant.values[i] = Estimate::default();
        assert!(quality_verdicts(&[one_variant, row("h", 97.0, 1.0, 0.0)], "learned", &|_| true, 95.0).is_empty());
    }
}
