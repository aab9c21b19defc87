//! Aggregates over seeds: mean and 95 % confidence interval (Student's t), the comparison
//! table with the best value per column marked, and CSV.

use serde::Serialize;

use crate::eval::EpisodeResult;

/// Mean and 95 % confidence half-width over seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Mean over the seeds that had a value.
    pub mean: f64,
    /// Half-width of the 95 % confidence interval (t-distribution); 0 with one seed.
    pub ci95: f64,
    /// Seeds with a value.
    pub n: usize,
}

/// Two-sided 95 % critical value of Student's t with `df` degrees of freedom.
pub fn t_critical_95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

impl Estimate {
    /// The estimate of `values` (non-finite values are skipped).
    pub fn of(values: &[f64]) -> Estimate {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return Estimate { mean: f64::NAN, ci95: f64::NAN, n: 0 };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Estimate { mean, ci95: 0.0, n };
        }
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Estimate { mean, ci95: t_critical_95(n - 1) * (var / n as f64).sqrt(), n }
    }
}

/// The columns of the comparison: name, unit, whether higher is better, and how to read
/// the value from an episode.
pub struct Column {
    /// Header.
    pub name: &'static str,
    /// Higher is better (for the best-value mark); `None` when no best is marked.
    pub higher_better: Option<bool>,
    /// Digits after the point.
    pub digits: usize,
    /// The value of an episode.
    pub get: fn(&EpisodeResult) -> Option<f64>,
}

/// The columns, in table order.
pub fn columns() -> Vec<Column> {
    fn ms(x: Option<f64>) -> Option<f64> {
        x.map(|s| s * 1000.0)
    }
    vec![
        Column {
            name: "SLO %",
            higher_better: Some(true),
            digits: 1,
            get: |e| e.report.slo_attainment.map(|x| x * 100.0),
        },
        Column { name: "TTFT mean ms", higher_better: Some(false), digits: 0, get: |e| ms(e.report.ttft_s.mean) },
        Column { name: "TTFT p50 ms", higher_better: Some(false), digits: 0, get: |e| ms(e.report.ttft_s.p50) },
        Column { name: "TTFT p99 ms", higher_better: Some(false), digits: 0, get: |e| ms(e.report.ttft_s.p99) },
        Column { name: "TPOT mean ms", higher_better: Some(false), digits: 1, get: |e| ms(e.report.tpot_s.mean) },
        Column { name: "TPOT p50 ms", higher_better: Some(false), digits: 1, get: |e| ms(e.report.tpot_s.p50) },
        Column { name: "TPOT p99 ms", higher_better: Some(false), digits: 1, get: |e| ms(e.report.tpot_s.p99) },
        Column { name: "E2E mean s", higher_better: Some(false), digits: 2, get: |e| e.report.e2e_s.mean },
        Column { name: "E2E p50 s", higher_better: Some(false), digits: 2, get: |e| e.report.e2e_s.p50 },
        Column { name: "E2E p99 s", higher_better: Some(false), digits: 2, get: |e| e.report.e2e_s.p99 },
        Column { name: "GPU-h", higher_better: Some(false), digits: 2, get: |e| Some(e.report.gpu_hours) },
        Column { name: "cost USD", higher_better: Some(false), digits: 2, get: |e| Some(e.report.cost_usd) },
        Column {
            name: "USD/1k req",
            higher_better: Some(false),
            digits: 3,
            get: |e| e.report.cost_per_1k_requests_usd,
        },
        Column { name: "changes", higher_better: Some(false), digits: 0, get: |e| Some(e.replica_changes as f64) },
        Column { name: "overrides", higher_better: None, digits: 0, get: |e| Some(e.shield_overrides as f64) },
        Column { name: "rejected", higher_better: Some(false), digits: 0, get: |e| Some(e.report.rejected as f64) },
        Column { name: "quality", higher_better: Some(true), digits: 3, get: |e| e.report.mean_quality },
    ]
}

/// Aggregates of one (policy, load) over seeds; `values` follow [`columns`].
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Policy label.
    pub policy: String,
    /// Load multiplier.
    pub load: f64,
    /// Column names.
    pub columns: Vec<&'static str>,
    /// One estimate per column.
    pub values: Vec<Estimate>,
}

/// Aggregates episodes per (policy, load), in the order of `policies` then `loads`.
pub fn aggregate(episodes: &[EpisodeResult], policies: &[String], loads: &[f64]) -> Vec<Row> {
    let cols = columns();
    let mut rows = Vec::new();
    for &load in loads {
        for p in policies {
            let eps: Vec<&EpisodeResult> = episodes.iter().filter(|e| &e.policy == p && e.load == load).collect();
            let values = cols
                .iter()
                .map(|c| Estimate::of(&eps.iter().map(|e| (c.get)(e).unwrap_or(f64::NAN)).collect::<Vec<_>>()))
                .collect();
            rows.push(Row { policy: p.clone(), load, columns: cols.iter().map(|c| c.name).collect(), values });
        }
    }
    rows
}

fn fmt_est(e: &Estimate, digits: usize) -> String {
    if e.n == 0 {
        return "-".into();
    }
    format!("{:.*} ±{:.*}", digits, e.mean, digits, e.ci95)
}

/// The comparison table as text: one block per load, `*` marks the best mean per column.
/// Columns with no value for any policy (e.g. quality with one variant) are left out.
pub fn table(rows: &[Row], loads: &[f64]) -> String {
    let cols = columns();
    let mut out = String::new();
    for &load in loads {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.load == load).collect();
        let shown: Vec<usize> = (0..cols.len()).filter(|&c| rs.iter().any(|r| r.values[c].n > 0)).collect();
        let mut best = vec![None; cols.len()];
        for &c in &shown {
            if let Some(hb) = cols[c].higher_better {
                let means = rs.iter().map(|r| r.values[c].mean).filter(|m| m.is_finite());
                best[c] = if hb {
                    means.fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.max(m))))
                } else {
                    means.fold(None, |a: Option<f64>, m| Some(a.map_or(m, |a| a.min(m))))
                };
            }
        }
        let mut cells: Vec<Vec<String>> = vec![std::iter::once("policy".to_string())
            .chain(shown.iter().map(|&c| cols[c].name.to_string()))
            .collect()];
        for r in &rs {
            let mut line = vec![r.policy.clone()];
            for &c in &shown {
                let e = &r.values[c];
                let mut s = fmt_est(e, cols[c].digits);
                // Mark the best (rounded to the shown precision, so ties are all marked).
                if let Some(b) = best[c] {
                    let round = |x: f64| format!("{:.*}", cols[c].digits, x);
                    if e.n > 0 && round(e.mean) == round(b) {
                        s.push('*');
                    }
                }
                line.push(s);
            }
            cells.push(line);
        }
        let widths: Vec<usize> =
            (0..cells[0].len()).map(|i| cells.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
        out.push_str(&format!("load ×{load}  (mean ±95% CI over seeds; * = best)\n"));
        for (k, l) in cells.iter().enumerate() {
            let line: Vec<String> = l
                .iter()
                .enumerate()
                .map(
                    |(i, s)| if i == 0 { format!("{s:<w$}", w = widths[i]) } else { format!("{s:>w$}", w = widths[i]) },
                )
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
            if k == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

/// The aggregates as CSV: `policy,load,<column>_mean,<column>_ci95,...`.
pub fn csv(rows: &[Row]) -> String {
    let cols = columns();
    let key = |n: &str| n.to_lowercase().replace(['%'], "pct").replace(['/', ' ', '-'], "_");
    let mut out = String::from("policy,load");
    for c in &cols {
        out.push_str(&format!(",{k}_mean,{k}_ci95", k = key(c.name)));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{}", r.policy.replace(',', ";"), r.load));
        for v in &r.values {
            let f = |x: f64| if x.is_finite() { format!("{x}") } else { String::new() };
            out.push_str(&format!(",{},{}", f(v.mean), f(v.ci95)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_matches_a_hand_computation() {
        // mean 2, sample sd 1, n 3: half-width = 4.303 × 1/√3.
        let e = Estimate::of(&[1.0, 2.0, 3.0]);
        assert!((e.mean - 2.0).abs() < 1e-12);
        assert!((e.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(Estimate::of(&[5.0]).ci95, 0.0);
        assert_eq!(Estimate::of(&[f64::NAN]).n, 0);
    }
}
