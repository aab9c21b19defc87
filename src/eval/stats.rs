//! Aggregates over seeds: mean and 95 % confidence interval (Student's t), the comparison
//! table with the best value per column marked, and CSV.

use serde::Serialize;

use crate::eval::EpisodeResult;
use crate::policy::clairvoyant::ClairvoyantKind;
use crate::policy::hpa::Hpa;
use crate::policy::kpa::Kpa;
use crate::policy::registry::{KindId, PolicyKindDef, Registry};

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
        Column {
            name: "large-variant changes",
            higher_better: Some(false),
            digits: 0,
            get: |e| e.large_variant_changes.map(|c| c as f64),
        },
        Column { name: "overrides", higher_better: None, digits: 0, get: |e| Some(e.shield_overrides as f64) },
        Column { name: "rejected", higher_better: Some(false), digits: 0, get: |e| Some(e.report.rejected as f64) },
        Column { name: "quality", higher_better: Some(true), digits: 3, get: |e| e.report.mean_quality },
        Column { name: "good quality/$", higher_better: Some(true), digits: 1, get: |e| e.report.good_quality_per_usd },
        Column { name: "objective", higher_better: Some(true), digits: 1, get: |e| Some(e.objective) },
        Column { name: "blind ticks", higher_better: None, digits: 0, get: |e| Some(e.blind_ticks as f64) },
    ]
}

/// Aggregates of one (policy, load) over seeds; `values` follow [`columns`].
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Policy label.
    pub policy: String,
    /// The policy's kind (from its episodes; `None` when they do not say).
    pub kind: Option<KindId>,
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
            let kind = eps.iter().find_map(|e| e.kind);
            rows.push(Row { policy: p.clone(), kind, load, columns: cols.iter().map(|c| c.name).collect(), values });
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
        out.push_str(&format!("load ×{load}  (mean ±95% CI over seeds; * = best)\n"));
        push_table(&mut out, &cells, &[0]);
        out.push('\n');
    }
    out
}

/// Appends `rows` as an aligned text table (first row the header, followed by a rule):
/// the columns in `left` are left-aligned, the others right-aligned; widths in characters.
fn push_table<R: AsRef<[String]>>(out: &mut String, rows: &[R], left: &[usize]) {
    let n = rows.first().map(|r| r.as_ref().len()).unwrap_or(0);
    let widths: Vec<usize> =
        (0..n).map(|i| rows.iter().map(|r| r.as_ref()[i].chars().count()).max().unwrap_or(0)).collect();
    for (k, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .as_ref()
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
                if left.contains(&i) {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if k == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * n.saturating_sub(1)));
            out.push('\n');
        }
    }
}

/// The aggregates as CSV: `policy,load,<column>_mean,<column>_ci95,...`.
pub fn csv(rows: &[Row]) -> String {
    csv_impl(rows, None)
}

/// [`csv`] with the [`PolicyFigures`] appended to each row: `hpa_kpa_reference`,
/// `saved_vs_hpa_kpa` (fraction), `frontier_gpu_h`, `frontier_captured` (empty: not
/// supported by the data).
pub fn csv_with_figures(rows: &[Row], figures: &[PolicyFigures]) -> String {
    csv_impl(rows, Some(figures))
}

fn csv_impl(rows: &[Row], figures: Option<&[PolicyFigures]>) -> String {
    let cols = columns();
    let key = |n: &str| n.to_lowercase().replace(['%'], "pct").replace(['/', ' ', '-'], "_").replace('$', "usd");
    let mut out = String::from("policy,load");
    for c in &cols {
        out.push_str(&format!(",{k}_mean,{k}_ci95", k = key(c.name)));
    }
    if figures.is_some() {
        out.push_str(",hpa_kpa_reference,saved_vs_hpa_kpa,frontier_gpu_h,frontier_captured");
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{}", r.policy.replace(',', ";"), r.load));
        for v in &r.values {
            let f = |x: f64| if x.is_finite() { format!("{x}") } else { String::new() };
            out.push_str(&format!(",{},{}", f(v.mean), f(v.ci95)));
        }
        if let Some(figs) = figures {
            let g = |x: Option<f64>| x.filter(|v| v.is_finite()).map(|v| format!("{v}")).unwrap_or_default();
            match figs.iter().find(|x| x.policy == r.policy && x.load == r.load) {
                Some(x) => out.push_str(&format!(
                    ",{},{},{},{}",
                    x.reference.as_deref().unwrap_or("").replace(',', ";"),
                    g(x.saved),
                    g(x.frontier_gpu_h),
                    g(x.captured)
                )),
                None => out.push_str(",,,,"),
            }
        }
        out.push('\n');
    }
    out
}

/// How one policy compares with a family of baselines at one load, on the two axes the
/// reports judge: SLO attainment and GPU-hours (means over seeds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Load multiplier.
    pub load: f64,
    /// The judged policy.
    pub policy: String,
    /// Its SLO attainment, %.
    pub slo_pct: f64,
    /// Its GPU-hours.
    pub gpu_h: f64,
    /// The baseline compared with: the cheapest whose SLO attainment (to 0.1 pt) is at least
    /// the policy's or, when none reaches it, the one with the highest SLO attainment.
    pub baseline: String,
    /// The baseline's SLO attainment, %.
    pub baseline_slo_pct: f64,
    /// The baseline's GPU-hours.
    pub baseline_gpu_h: f64,
    /// Whether some baseline reaches the policy's SLO attainment.
    pub baseline_reaches: bool,
    /// GPU-hours saved against that baseline, as a fraction (negative: more used).
    pub saved: f64,
    /// GPU-hours of the baselines' Pareto front linearly interpolated at the policy's SLO
    /// (what alternating between two neighbouring settings would cost); `None` outside
    /// the front's range.
    pub frontier_gpu_h: Option<f64>,
    /// The workload's SLO attainment target, % (`spec.slo.targetAttainment`).
    pub target_pct: f64,
    /// The highest SLO attainment of any baseline at this load, %.
    pub best_baseline_slo_pct: f64,
    /// GPU-hours the baselines need at the policy's SLO attainment (the iso-SLO
    /// reference): the front interpolated there, or, outside the front's range, its
    /// nearest end (above it: the cheapest setting of the best SLO, which still has a
    /// lower SLO than the policy; below it: the cheapest setting, which has a higher one).
    pub iso_gpu_h: f64,
    /// Where the policy's SLO attainment lies against the baselines' front.
    pub iso_where: FrontPosition,
    /// GPU-hours saved against `iso_gpu_h`, as a fraction (negative: more used).
    pub iso_saved: f64,
    /// Whether the cell counts: the policy's SLO attainment is at least the target, or
    /// within [`ISO_SLO_SLACK_PT`] of the best baseline's.
    pub counts: bool,
}

/// Where a policy's SLO attainment lies against a front of baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FrontPosition {
    /// Between the front's lowest and highest SLO attainment: the front is interpolated.
    Within,
    /// Above every baseline's SLO attainment.
    Above,
    /// Below every baseline's SLO attainment.
    Below,
}

/// A cell counts when the policy's SLO attainment is within this many points of the best
/// baseline's (or at least the workload's target).
pub const ISO_SLO_SLACK_PT: f64 = 1.0;

/// Whether a cell counts, for every verdict: the policy's SLO attainment `slo_pct` is at
/// least the target, or within [`ISO_SLO_SLACK_PT`] of `best_baseline_pct` (to 0.1 pt).
pub fn cell_counts(slo_pct: f64, target_pct: f64, best_baseline_pct: f64) -> bool {
    round1(slo_pct) >= round1(target_pct) || round1(slo_pct) >= round1(best_baseline_pct - ISO_SLO_SLACK_PT)
}

impl Verdict {
    /// The verdict of the project, defined here once: the cell counts
    /// ([`Verdict::counts`]), and the policy uses at least `min_saving` fewer GPU-hours
    /// than the baselines' front at its own SLO attainment ([`Verdict::iso_saved`]).
    pub fn meets(&self, min_saving: f64) -> bool {
        self.counts && self.iso_saved >= min_saving
    }
}

/// `x` rounded to 0.1 (SLO attainments are compared at the precision the tables show).
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The SLO attainment (%) and GPU-hours of a row (means over seeds), when both are finite.
pub fn slo_and_gpu_h(r: &Row) -> Option<(f64, f64)> {
    let val = |col: &str| r.columns.iter().position(|c| *c == col).map(|i| r.values[i].mean);
    match (val("SLO %"), val("GPU-h")) {
        (Some(s), Some(g)) if s.is_finite() && g.is_finite() => Some((s, g)),
        _ => None,
    }
}

/// The cheapest of `candidates` `(label, SLO %, GPU-h)` whose SLO attainment (to 0.1 pt) is
/// at least `slo_pct`.
fn cheapest_reaching<'a>(candidates: &[(&'a str, f64, f64)], slo_pct: f64) -> Option<(&'a str, f64, f64)> {
    candidates.iter().filter(|b| round1(b.1) >= round1(slo_pct)).min_by(|a, b| a.2.total_cmp(&b.2)).copied()
}

/// The monotone front of `(SLO %, GPU-h)` points: the Pareto-optimal ones (no other point
/// has both more SLO attainment and fewer GPU-hours), SLO compared to 0.1 pt (and returned
/// rounded so), sorted by SLO. GPU-hours strictly increase along it.
pub fn front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, f64)> =
        points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|p| (round1(p.0), p.1)).collect();
    let mut front: Vec<(f64, f64)> = pts
        .iter()
        .filter(|b| !pts.iter().any(|o| o.0 >= b.0 && o.1 <= b.1 && (o.0 > b.0 || o.1 < b.1)))
        .copied()
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    front.dedup_by(|a, b| a.0 == b.0);
    front
}

/// GPU-hours of `front` (from [`front`]) at `slo_pct` (to 0.1 pt): linear between the two
/// neighbouring points (what alternating between the two settings would cost); `None`
/// outside the front's SLO range.
pub fn front_at(front: &[(f64, f64)], slo_pct: f64) -> Option<f64> {
    let at = round1(slo_pct);
    if let Some(p) = front.iter().find(|p| p.0 == at) {
        return Some(p.1);
    }
    front.windows(2).find(|w| w[0].0 <= at && at <= w[1].0).map(|w| {
        let span = w[1].0 - w[0].0;
        if span <= 0.0 {
            w[0].1.min(w[1].1)
        } else {
            w[0].1 + (at - w[0].0) / span * (w[1].1 - w[0].1)
        }
    })
}

/// The verdicts of `policy` against the rows that satisfy `is_baseline` (e.g.
/// [`Row::is_hpa_kpa`]), per load, for a workload whose SLO attainment target is
/// `target_pct` %. Loads where the policy or every baseline lacks SLO or GPU-hour values
/// are skipped.
pub fn verdicts(rows: &[Row], policy: &str, is_baseline: &dyn Fn(&Row) -> bool, target_pct: f64) -> Vec<Verdict> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.policy == policy) {
        let Some((slo, gpu)) = slo_and_gpu_h(r) else { continue };
        let base: Vec<(&str, f64, f64)> = rows
            .iter()
            .filter(|b| b.load == r.load && b.policy != policy && is_baseline(b))
            .filter_map(|b| slo_and_gpu_h(b).map(|(s, g)| (b.policy.as_str(), s, g)))
            .collect();
        if base.is_empty() {
            continue;
        }
        let (reference, reaches) = match cheapest_reaching(&base, slo) {
            Some(b) => (b, true),
            None => (*base.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or(&base[0]), false),
        };
        let pts: Vec<(f64, f64)> = base.iter().map(|b| (b.1, b.2)).collect();
        let fr = front(&pts);
        let frontier_gpu_h = front_at(&fr, slo);
        let best = base.iter().map(|b| b.1).fold(f64::NEG_INFINITY, f64::max);
        let (iso_gpu_h, iso_where) = match (frontier_gpu_h, fr.first(), fr.last()) {
            (Some(g), _, _) => (g, FrontPosition::Within),
            (None, Some(lo), _) if round1(slo) < lo.0 => (lo.1, FrontPosition::Below),
            (None, _, Some(hi)) => (hi.1, FrontPosition::Above),
            (None, _, None) => (f64::NAN, FrontPosition::Within),
        };
        let counts = cell_counts(slo, target_pct, best);
        out.push(Verdict {
            load: r.load,
            policy: policy.to_string(),
            slo_pct: slo,
            gpu_h: gpu,
            baseline: reference.0.to_string(),
            baseline_slo_pct: reference.1,
            baseline_gpu_h: reference.2,
            baseline_reaches: reaches,
            saved: if reference.2 > 0.0 { (reference.2 - gpu) / reference.2 } else { f64::NAN },
            frontier_gpu_h,
            target_pct,
            best_baseline_slo_pct: best,
            iso_gpu_h,
            iso_where,
            iso_saved: if iso_gpu_h > 0.0 { (iso_gpu_h - gpu) / iso_gpu_h } else { f64::NAN },
            counts,
        });
    }
    out
}

/// The plain question per load: of the policies run (clairvoyant references excluded),
/// which meets the workload's SLO attainment target with the fewest GPU-hours.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetWinner {
    /// Load multiplier.
    pub load: f64,
    /// The target, %.
    pub target_pct: f64,
    /// The policies that meet the target (to 0.1 pt), cheapest first, as
    /// `(policy, SLO %, GPU-h)`; empty when none does.
    pub meeting: Vec<(String, f64, f64)>,
}

/// [`TargetWinner`] per load.
pub fn target_winners(rows: &[Row], loads: &[f64], target_pct: f64) -> Vec<TargetWinner> {
    loads
        .iter()
        .map(|&load| {
            let mut meeting: Vec<(String, f64, f64)> = rows
                .iter()
                .filter(|r| r.load == load && !r.is_clairvoyant())
                .filter_map(|r| slo_and_gpu_h(r).map(|(s, g)| (r.policy.clone(), s, g)))
                .filter(|(_, s, _)| round1(*s) >= round1(target_pct))
                .collect();
            meeting.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
            TargetWinner { load, target_pct, meeting }
        })
        .collect()
}

/// One line per load: the policy that meets the target with the fewest GPU-hours, and the
/// next two.
pub fn target_text(winners: &[TargetWinner]) -> String {
    let mut s = String::new();
    for w in winners {
        match w.meeting.split_first() {
            None => s.push_str(&format!("load ×{}: no policy meets the {:.1} % SLO target\n", w.load, w.target_pct)),
            Some((first, rest)) => {
                let next: Vec<String> =
                    rest.iter().take(2).map(|(p, sl, g)| format!("{p} ({sl:.1} % at {g:.2} GPU-h)")).collect();
                s.push_str(&format!(
                    "load ×{}: fewest GPU-hours meeting the {:.1} % SLO target: {} ({:.1} % at {:.2} GPU-h){}\n",
                    w.load,
                    w.target_pct,
                    first.0,
                    first.1,
                    first.2,
                    if next.is_empty() { String::new() } else { format!("; then {}", next.join(", ")) }
                ));
            }
        }
    }
    s
}

/// The kinds the saving is measured against: HPA and KPA.
pub const HPA_KPA: [KindId; 2] = [Hpa::ID, Kpa::ID];

/// An HPA or KPA kind: the family the saving is measured against.
pub fn is_hpa_kpa_kind(kind: Option<KindId>) -> bool {
    kind.is_some_and(|k| HPA_KPA.contains(&k))
}

/// The clairvoyant kind: the points of the clairvoyant frontier.
pub fn is_clairvoyant_kind(kind: Option<KindId>) -> bool {
    kind == Some(ClairvoyantKind::ID)
}

/// Whether the policy labelled `label` (a command-line name, as in reports) is an HPA or
/// KPA setting, its kind resolved by the registry.
pub fn is_hpa_kpa(label: &str) -> bool {
    is_hpa_kpa_kind(Registry::builtin().kind_of(label))
}

impl Row {
    /// An HPA or KPA setting.
    pub fn is_hpa_kpa(&self) -> bool {
        is_hpa_kpa_kind(self.kind)
    }

    /// A clairvoyant run.
    pub fn is_clairvoyant(&self) -> bool {
        is_clairvoyant_kind(self.kind)
    }
}

/// The frontier's saving against the reference must be at least this fraction of the
/// reference's GPU-hours for the captured fraction to be printed (below, the ratio divides
/// by a difference the seeds' noise could make up).
pub const MIN_FRONTIER_SAVING: f64 = 0.01;

/// The clairvoyant frontier of one load: the monotone [`front`] of every clairvoyant run's
/// `(SLO %, GPU-h)` (means over seeds), SLO rounded to 0.1 pt, sorted by SLO.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frontier {
    /// Load multiplier.
    pub load: f64,
    /// The front's points, `(SLO %, GPU-h)`.
    pub points: Vec<(f64, f64)>,
}

/// The clairvoyant frontier per load (empty points where no clairvoyant run has values).
pub fn frontiers(rows: &[Row], loads: &[f64]) -> Vec<Frontier> {
    loads
        .iter()
        .map(|&load| {
            let pts: Vec<(f64, f64)> =
                rows.iter().filter(|r| r.load == load && r.is_clairvoyant()).filter_map(slo_and_gpu_h).collect();
            Frontier { load, points: front(&pts) }
        })
        .collect()
}

/// Two figures of one policy at one load (means over seeds), against the HPA/KPA settings
/// and the clairvoyant runs of the same comparison. A figure the data does not support is
/// `None`, with the reason beside it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyFigures {
    /// Load multiplier.
    pub load: f64,
    /// The policy.
    pub policy: String,
    /// Its SLO attainment, %.
    pub slo_pct: f64,
    /// Its GPU-hours.
    pub gpu_h: f64,
    /// The reference: the cheapest HPA/KPA setting (the policy itself included when it is
    /// one) whose SLO attainment, to 0.1 pt, is at least the policy's.
    pub reference: Option<String>,
    /// The reference's SLO attainment, %.
    pub reference_slo_pct: Option<f64>,
    /// The reference's GPU-hours.
    pub reference_gpu_h: Option<f64>,
    /// GPU-hours saved against the reference, as a fraction of its GPU-hours (negative:
    /// more used).
    pub saved: Option<f64>,
    /// Why `saved` is `None`.
    pub saved_why: Option<String>,
    /// The clairvoyant frontier's GPU-hours interpolated at the policy's SLO attainment.
    pub frontier_gpu_h: Option<f64>,
    /// (reference − policy) / (reference − frontier) GPU-hours: the share of the frontier's
    /// saving the policy captures (1: as cheap as the frontier; 0: as the reference; above
    /// 1: cheaper than the frontier, which is approximate; negative: dearer than the
    /// reference).
    pub captured: Option<f64>,
    /// Why `captured` is `None`.
    pub captured_why: Option<String>,
}

/// The [`PolicyFigures`] of every row with SLO and GPU-hour values, in row order.
pub fn policy_figures(rows: &[Row]) -> Vec<PolicyFigures> {
    let mut loads: Vec<f64> = Vec::new();
    for r in rows {
        if !loads.contains(&r.load) {
            loads.push(r.load);
        }
    }
    let fronts = frontiers(rows, &loads);
    let mut out = Vec::new();
    for r in rows {
        let Some((slo, gpu)) = slo_and_gpu_h(r) else { continue };
        let hk: Vec<(&str, f64, f64)> = rows
            .iter()
            .filter(|b| b.load == r.load && b.is_hpa_kpa())
            .filter_map(|b| slo_and_gpu_h(b).map(|(s, g)| (b.policy.as_str(), s, g)))
            .collect();
        let reference = cheapest_reaching(&hk, slo);
        let front = fronts.iter().find(|f| f.load == r.load).map(|f| f.points.as_slice()).unwrap_or(&[]);
        let frontier_gpu_h = front_at(front, slo);
        let mut f = PolicyFigures {
            load: r.load,
            policy: r.policy.clone(),
            slo_pct: slo,
            gpu_h: gpu,
            reference: reference.map(|b| b.0.to_string()),
            reference_slo_pct: reference.map(|b| b.1),
            reference_gpu_h: reference.map(|b| b.2),
            saved: None,
            saved_why: None,
            frontier_gpu_h,
            captured: None,
            captured_why: None,
        };
        match reference {
            None if hk.is_empty() => f.saved_why = Some("no HPA/KPA setting in the run".into()),
            None => f.saved_why = Some(format!("no HPA/KPA setting reaches {:.1} % SLO", slo)),
            Some(b) if b.2 <= 0.0 => f.saved_why = Some(format!("{} used no GPU-hours", b.0)),
            Some(b) => f.saved = Some((b.2 - gpu) / b.2),
        }
        f.captured_why = match (f.saved, reference, frontier_gpu_h) {
            (None, _, _) => f.saved_why.clone(),
            (Some(_), _, _) if front.is_empty() => Some("no clairvoyant run (--clairvoyant-sweep)".into()),
            (Some(_), _, None) => Some(format!(
                "{:.1} % SLO is outside the frontier's range [{:.1}, {:.1}] %",
                slo,
                front[0].0,
                front[front.len() - 1].0
            )),
            (Some(_), Some(b), Some(fg)) if b.2 - fg < MIN_FRONTIER_SAVING * b.2 => Some(format!(
                "the frontier ({fg:.2} GPU-h) saves less than {:.0} % against {} ({:.2} GPU-h)",
                MIN_FRONTIER_SAVING * 100.0,
                b.0,
                b.2
            )),
            (Some(_), Some(b), Some(fg)) => {
                f.captured = Some((b.2 - gpu) / (b.2 - fg));
                None
            }
            (Some(_), None, Some(_)) => Some("no reference".into()),
        };
        out.push(f);
    }
    out
}

/// `–` for a figure the data does not support.
pub const NO_FIGURE: &str = "–";

fn pct_or_dash(x: Option<f64>) -> String {
    x.map(|v| format!("{:+.0} %", v * 100.0)).unwrap_or_else(|| NO_FIGURE.to_string())
}

fn frac_or_dash(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| NO_FIGURE.to_string())
}

/// The per-policy figures as a table, one block per load (`–`: not supported by the data;
/// the verdict lines say why).
pub fn figures_table(figures: &[PolicyFigures], loads: &[f64]) -> String {
    let mut out = String::new();
    for &load in loads {
        let fs: Vec<&PolicyFigures> = figures.iter().filter(|f| f.load == load).collect();
        if fs.is_empty() {
            continue;
        }
        let mut cells = vec![[
            "policy".to_string(),
            "SLO %".into(),
            "GPU-h".into(),
            "HPA/KPA reference".into(),
            "ref GPU-h".into(),
            "saved vs HPA/KPA".into(),
            "frontier GPU-h".into(),
            "captured".into(),
        ]];
        for f in fs {
            cells.push([
                f.policy.clone(),
                format!("{:.1}", f.slo_pct),
                format!("{:.2}", f.gpu_h),
                f.reference.clone().unwrap_or_else(|| NO_FIGURE.into()),
                f.reference_gpu_h.map(|g| format!("{g:.2}")).unwrap_or_else(|| NO_FIGURE.into()),
                pct_or_dash(f.saved),
                f.frontier_gpu_h.map(|g| format!("{g:.2}")).unwrap_or_else(|| NO_FIGURE.into()),
                frac_or_dash(f.captured),
            ]);
        }
        out.push_str(&format!(
            "load ×{load}  GPU-hours saved against the cheapest HPA/KPA setting at equal or better SLO, and the share of the clairvoyant frontier's saving captured (– = not supported, see below)\n"
        ));
        push_table(&mut out, &cells, &[0, 3]);
        out.push('\n');
    }
    out
}

/// One verdict line per policy and load with the two figures, or `–` and the reason.
pub fn figures_text(figures: &[PolicyFigures]) -> String {
    let mut s = String::new();
    for f in figures {
        let saved = match (f.saved, &f.reference) {
            (Some(v), Some(r)) => format!(
                "{} against {r} ({:.1} % at {:.2} GPU-h)",
                if v >= 0.0 {
                    format!("{:.0} % fewer GPU-hours", v * 100.0)
                } else {
                    format!("{:.0} % more GPU-hours", -v * 100.0)
                },
                f.reference_slo_pct.unwrap_or(f64::NAN),
                f.reference_gpu_h.unwrap_or(f64::NAN)
            ),
            _ => format!("saved vs HPA/KPA {NO_FIGURE} ({})", f.saved_why.as_deref().unwrap_or("")),
        };
        let captured = match (f.captured, f.frontier_gpu_h) {
            (Some(c), Some(fg)) => {
                format!("captures {:.0} % of the clairvoyant frontier's saving (frontier {fg:.2} GPU-h)", c * 100.0)
            }
            _ => format!("frontier share {NO_FIGURE} ({})", f.captured_why.as_deref().unwrap_or("")),
        };
        s.push_str(&format!(
            "load ×{}: {} {:.1} % SLO at {:.2} GPU-h: {saved}; {captured}\n",
            f.load, f.policy, f.slo_pct, f.gpu_h
        ));
    }
    s
}

/// One line per verdict, saying whether `min_saving` fewer GPU-hours at equal or better
/// SLO attainment was reached.
pub fn verdict_text(verdicts: &[Verdict], family: &str, min_saving: f64) -> String {
    let mut s = String::new();
    for v in verdicts {
        let against = if v.baseline_reaches {
            format!("the cheapest {family} setting with SLO ≥ {:.1} % is", v.slo_pct)
        } else {
            format!("no {family} setting reaches {:.1} % SLO; the highest is", v.slo_pct)
        };
        let saved = if v.saved >= 0.0 {
            format!("{:.0} % fewer GPU-hours", v.saved * 100.0)
        } else {
            format!("{:.0} % more GPU-hours", -v.saved * 100.0)
        };
        let iso = match v.iso_where {
            FrontPosition::Within => format!("the {family} front at that SLO costs {:.2} GPU-h", v.iso_gpu_h),
            FrontPosition::Above => {
                format!("above the {family} front; its best-SLO end costs {:.2} GPU-h", v.iso_gpu_h)
            }
            FrontPosition::Below => {
                format!("below the {family} front; its cheapest end costs {:.2} GPU-h", v.iso_gpu_h)
            }
        };
        let judged = if !v.counts {
            format!(
                "not counted (SLO below the {:.1} % target and more than {ISO_SLO_SLACK_PT} pt below the best {family} setting's {:.1} %)",
                v.target_pct, v.best_baseline_slo_pct
            )
        } else if v.meets(min_saving) {
            format!("target (≥ {:.0} % fewer at iso-SLO) met", min_saving * 100.0)
        } else {
            format!("target (≥ {:.0} % fewer at iso-SLO) not met", min_saving * 100.0)
        };
        s.push_str(&format!(
            "load ×{}: {} {:.1} % SLO at {:.2} GPU-h; {against} {} ({:.1} % at {:.2} GPU-h): {saved}; {iso} ({:+.0} %) → {judged}\n",
            v.load,
            v.policy,
            v.slo_pct,
            v.gpu_h,
            v.baseline,
            v.baseline_slo_pct,
            v.baseline_gpu_h,
            v.iso_saved * 100.0,
        ));
    }
    s
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

    fn row(policy: &str, slo: f64, gpu: f64) -> Row {
        let mut values = vec![Estimate::default(); columns().len()];
        let names: Vec<&'static str> = columns().iter().map(|c| c.name).collect();
        values[names.iter().position(|c| *c == "SLO %").unwrap()].mean = slo;
        values[names.iter().position(|c| *c == "GPU-h").unwrap()].mean = gpu;
        Row { policy: policy.into(), kind: crate::rl::registry().kind_of(policy), load: 1.0, columns: names, values }
    }

    #[test]
    fn verdict_judges_at_iso_slo_in_cells_that_count() {
        let rows = vec![
            row("hpa:target=0.5", 95.0, 4.0),
            row("hpa:target=1", 92.0, 3.0),
            row("kpa", 60.0, 1.0),
            row("queue", 99.0, 0.5),
            row("dqn:a", 93.5, 2.0),
            row("dqn:b", 97.0, 3.0),
            row("dqn:c", 90.0, 1.0),
        ];
        let hk = |r: &Row| r.is_hpa_kpa();
        // Target 95 %; the best HPA/KPA setting reaches 95 %.
        let a = &verdicts(&rows, "dqn:a", &hk, 95.0)[0];
        assert_eq!(a.baseline, "hpa:target=0.5");
        assert!(a.baseline_reaches && (a.saved - 0.5).abs() < 1e-12);
        // Front between (92, 3) and (95, 4): 3.5 GPU-h at 93.5 %; 2.0 saves 43 % at iso-SLO,
        // but 93.5 % is below the target and 1.5 pt below the best setting: not counted.
        assert!((a.frontier_gpu_h.unwrap() - 3.5).abs() < 1e-12);
        assert!((a.iso_gpu_h - 3.5).abs() < 1e-12 && a.iso_where == FrontPosition::Within);
        assert!((a.iso_saved - 1.5 / 3.5).abs() < 1e-12);
        assert!(!a.counts && !a.meets(0.25));
        // With a 93 % target the same cell counts, and meets the bar.
        let a93 = &verdicts(&rows, "dqn:a", &hk, 93.0)[0];
        assert!(a93.counts && a93.meets(0.25) && !a93.meets(0.45));
        // Within 1 pt of the best setting counts even below the target.
        let rows2 = vec![row("hpa:target=0.5", 95.0, 4.0), row("hpa:target=1", 92.0, 3.0), row("dqn:d", 94.0, 2.0)];
        let d = &verdicts(&rows2, "dqn:d", &hk, 99.0)[0];
        assert!(d.counts && d.meets(0.25), "{d:?}");
        // Nobody reaches 97 %: above the front, judged against its best-SLO end.
        let b = &verdicts(&rows, "dqn:b", &hk, 95.0)[0];
        assert!(!b.baseline_reaches && b.baseline == "hpa:target=0.5");
        assert_eq!(b.iso_where, FrontPosition::Above);
        assert!((b.iso_saved - 0.25).abs() < 1e-12 && b.counts && b.meets(0.25) && !b.meets(0.3));
        assert!(b.frontier_gpu_h.is_none());
        // Far below every setting that matters: not counted, however cheap.
        let c = &verdicts(&rows, "dqn:c", &hk, 95.0)[0];
        assert!(!c.counts && !c.meets(0.0));
        // Equal SLO (to 0.1 pt) and half the GPU-hours: met.
        let rows3 = vec![row("hpa:target=0.5", 95.0, 4.0), row("dqn:e", 95.04, 2.0)];
        let e = &verdicts(&rows3, "dqn:e", &hk, 95.0)[0];
        assert!(e.baseline_reaches && e.meets(0.25));
        assert!(verdict_text(&[e.clone()], "HPA/KPA", 0.25).contains("target (≥ 25 % fewer at iso-SLO) met"));
        assert!(verdict_text(&[a.clone()], "HPA/KPA", 0.25).contains("not counted"));
        assert!(verdict_text(&[b.clone()], "HPA/KPA", 0.25).contains("above the HPA/KPA front"));
    }

    #[test]
    fn the_cheapest_policy_meeting_the_target_is_named() {
        let rows = vec![
            row("hpa", 96.0, 4.0),
            row("ray", 95.0, 3.0),
            row("dqn:a", 94.0, 1.0),
            row("clairvoyant:capacity=2", 99.0, 0.5),
        ];
        let w = &target_winners(&rows, &[1.0], 95.0)[0];
        let names: Vec<&str> = w.meeting.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["ray", "hpa"], "the clairvoyant reference and a policy below the target are left out");
        assert!(target_text(&[w.clone()]).contains("fewest GPU-hours meeting the 95.0 % SLO target: ray"));
        let none = &target_winners(&rows, &[1.0], 99.5)[0];
        assert!(none.meeting.is_empty() && target_text(&[none.clone()]).contains("no policy meets"));
    }
}
