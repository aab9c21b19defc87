//! Plots of a comparison, as PNG and SVG (plotters): replicas over time against the
//! arrival rate, latency CDFs, SLO attainment against offered load, and cost against SLO
//! attainment (the Pareto view), and GPU-hours against SLO attainment with the clairvoyant
//! frontier (one panel per load).
//!
//! Text is drawn with DejaVu Sans shipped in `assets/fonts/` (licence next to it), so PNGs
//! render without system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::eval::{CompareReport, EpisodeResult, CDF_LEVELS};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the bundled DejaVu Sans as `sans-serif` for plotters (once per process);
/// every plot that draws text calls it first.
pub fn register_font() {
    REGISTER.call_once(|| {
        // The bundled font is valid; a failure would only lose text, not the plot.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// A figure could not be drawn or written (plotters' drawing and backend errors, which
/// are generic over the backend, carried as their message).
#[derive(Debug, thiserror::Error)]
#[error("drawing a figure: {0}")]
pub struct PlotError(String);

type DrawResult = Result<(), PlotError>;

/// Draws the series legend of `c` at `pos`, on a translucent white box.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    c: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> DrawResult {
    c.configure_series_labels()
        .legend_area_size(34)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(pos)
        .draw()
        .map_err(e)
}

/// A policy name short enough for a legend: a `dqn:` checkpoint path keeps only what
/// follows its `checkpoints/` folder, or its last component.
fn short_label(name: &str) -> String {
    match name.split_once(':') {
        Some((kind, path)) if path.contains('/') => {
            let tail = match path.rfind("checkpoints/") {
                Some(i) => &path[i + "checkpoints/".len()..],
                None => path.trim_end_matches('/').rsplit('/').next().unwrap_or(path),
            };
            format!("{kind}:{tail}")
        }
        _ => name.to_string(),
    }
}

fn e<E: std::fmt::Display>(x: E) -> PlotError {
    PlotError(x.to_string())
}

/// Writes every plot of `report` under `dir` as PNG and SVG; returns the files written.
pub fn write_all(report: &CompareReport, dir: &Path) -> Result<Vec<String>, PlotError> {
    register_font();
    let mut files = Vec::new();
    let mut both = |name: &str,
                    f: &dyn Fn(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
                    g: &dyn Fn(&DrawingArea<BitMapBackend, Shift>) -> DrawResult|
     -> DrawResult {
        let svg = dir.join(format!("{name}.svg"));
        let png = dir.join(format!("{name}.png"));
        {
            let root = SVGBackend::new(&svg, (1000, 700)).into_drawing_area();
            f(&root)?;
            root.present().map_err(e)?;
        }
        {
            let root = BitMapBackend::new(&png, (1000, 700)).into_drawing_area();
            g(&root)?;
            root.present().map_err(e)?;
        }
        files.push(svg.display().to_string());
        files.push(png.display().to_string());
        Ok(())
    };
    both("replicas_over_time", &|r| replicas_over_time(r, report), &|r| replicas_over_time(r, report))?;
    both("latency_cdf", &|r| latency_cdf(r, report), &|r| latency_cdf(r, report))?;
    both("slo_vs_load", &|r| slo_vs_load(r, report), &|r| slo_vs_load(r, report))?;
    both("cost_vs_slo", &|r| cost_vs_slo(r, report), &|r| cost_vs_slo(r, report))?;
    both("frontier", &|r| frontier(r, report), &|r| frontier(r, report))?;
    Ok(files)
}

/// The load shown in single-load plots: 1.0 if compared, else the first.
fn main_load(report: &CompareReport) -> f64 {
    report.loads.iter().copied().find(|l| (*l - 1.0).abs() < 1e-9).unwrap_or(report.loads[0])
}

fn episode<'a>(report: &'a CompareReport, policy: &str, load: f64) -> Option<&'a EpisodeResult> {
    report.episodes.iter().find(|e| e.policy == policy && e.load == load && e.seed == 0)
}

fn replicas_over_time<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &CompareReport) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let load = main_load(report);
    let root = root
        .titled(
            &format!("Replicas over time vs arrival rate — {} (load ×{load}, seed 0)", report.scenario),
            ("sans-serif", 22),
        )
        .map_err(e)?;
    let (top, bottom) = root.split_vertically(220);
    let eps: Vec<&EpisodeResult> = report.policies.iter().filter_map(|p| episode(report, p, load)).collect();
    let t_max = eps.iter().flat_map(|e| e.series.last()).map(|p| p.time_s / 60.0).fold(1.0, f64::max);
    let rate_max = eps.iter().flat_map(|e| e.series.iter()).map(|p| p.arrival_rps).fold(0.1, f64::max);
    let mut c = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max * 1.1)
        .map_err(e)?;
    c.configure_mesh().x_desc("time (min)").y_desc("arrivals (req/s)").draw().map_err(e)?;
    if let Some(ep) = eps.first() {
        c.draw_series(LineSeries::new(
            ep.series.iter().map(|p| (p.time_s / 60.0, p.arrival_rps)),
            BLACK.stroke_width(1),
        ))
        .map_err(e)?
        .label("arrival rate")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    draw_legend(&mut c, SeriesLabelPosition::UpperRight)?;
    let r_max = eps.iter().flat_map(|e| e.series.iter()).map(|p| p.desired_replicas).max().unwrap_or(1) as f64;
    let mut c = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..r_max * 1.15 + 1.0)
        .map_err(e)?;
    c.configure_mesh().x_desc("time (min)").y_desc("desired replicas").draw().map_err(e)?;
    for (i, ep) in eps.iter().enumerate() {
        let col = color(i);
        c.draw_series(LineSeries::new(
            ep.series.iter().map(|p| (p.time_s / 60.0, p.desired_replicas as f64)),
            col.stroke_width(2),
        ))
        .map_err(e)?
        .label(ep.policy.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    draw_legend(&mut c, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

fn latency_cdf<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &CompareReport) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let load = main_load(report);
    let root = root
        .titled(&format!("Latency CDFs — {} (load ×{load}, seed 0)", report.scenario), ("sans-serif", 22))
        .map_err(e)?;
    let panels = root.split_evenly((1, 3));
    let names = ["TTFT (s)", "TPOT (ms)", "E2E latency (s)"];
    let scale = [1.0, 1000.0, 1.0];
    let eps: Vec<&EpisodeResult> = report.policies.iter().filter_map(|p| episode(report, p, load)).collect();
    for (k, area) in panels.iter().enumerate() {
        let x_max = eps.iter().flat_map(|e| e.cdf[k].iter()).map(|x| x * scale[k]).fold(1e-3, f64::max);
        let mut c = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max * 1.05, 0.0..1.0)
            .map_err(e)?;
        c.configure_mesh().x_desc(names[k]).y_desc("fraction of requests").draw().map_err(e)?;
        for (i, ep) in eps.iter().enumerate() {
            let col = color(i);
            let pts: Vec<(f64, f64)> = ep.cdf[k]
                .iter()
                .enumerate()
                .map(|(j, x)| (x * scale[k], (j + 1) as f64 / (CDF_LEVELS + 1) as f64))
                .collect();
            c.draw_series(LineSeries::new(pts, col.stroke_width(2)))
                .map_err(e)?
                .label(ep.policy.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        }
        if k == 0 {
            draw_legend(&mut c, SeriesLabelPosition::LowerRight)?;
        }
    }
    Ok(())
}

fn mean_of(report: &CompareReport, policy: &str, load: f64, col: &str) -> Option<(f64, f64)> {
    let row = report.rows.iter().find(|r| r.policy == policy && r.load == load)?;
    let i = row.columns.iter().position(|c| *c == col)?;
    let v = row.values[i];
    (v.n > 0).then_some((v.mean, v.ci95))
}

fn slo_vs_load<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &CompareReport) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let lmin = report.loads.iter().copied().fold(f64::INFINITY, f64::min);
    let lmax = report.loads.iter().copied().fold(0.0, f64::max);
    let pad = ((lmax - lmin) * 0.1).max(0.1);
    let mut c = ChartBuilder::on(root)
        .caption(
            format!("SLO attainment vs offered load — {} (mean ±95% CI over {} seeds)", report.scenario, report.seeds),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lmin - pad)..(lmax + pad), 0.0..105.0)
        .map_err(e)?;
    c.configure_mesh().x_desc("offered load (× recorded trace rate)").y_desc("SLO attainment (%)").draw().map_err(e)?;
    for (i, p) in report.policies.iter().enumerate() {
        let col = color(i);
        let pts: Vec<(f64, f64, f64)> =
            report.loads.iter().filter_map(|&l| mean_of(report, p, l, "SLO %").map(|(m, ci)| (l, m, ci))).collect();
        c.draw_series(LineSeries::new(pts.iter().map(|&(l, m, _)| (l, m)), col.stroke_width(2)))
            .map_err(e)?
            .label(p.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(
            pts.iter().map(|&(l, m, ci)| PathElement::new(vec![(l, m - ci), (l, m + ci)], col.stroke_width(2))),
        )
        .map_err(e)?;
        c.draw_series(pts.iter().map(|&(l, m, _)| Circle::new((l, m), 4, col.filled()))).map_err(e)?;
    }
    draw_legend(&mut c, SeriesLabelPosition::LowerLeft)?;
    Ok(())
}

fn cost_vs_slo<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &CompareReport) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let load = main_load(report);
    let pts: Vec<(usize, f64, f64)> = report
        .policies
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, mean_of(report, p, load, "cost USD")?.0, mean_of(report, p, load, "SLO %")?.0)))
        .collect();
    let c_max = pts.iter().map(|p| p.1).fold(0.01, f64::max) * 1.15;
    let s_min = pts.iter().map(|p| p.2).fold(100.0, f64::min);
    let mut c = ChartBuilder::on(root)
        .caption(
            format!(
                "Cost vs SLO attainment (Pareto view) — {} (load ×{load}, mean over {} seeds)",
                report.scenario, report.seeds
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..c_max, (s_min - 5.0).max(0.0)..100.5)
        .map_err(e)?;
    c.configure_mesh().x_desc("cost of the run (USD)").y_desc("SLO attainment (%)").draw().map_err(e)?;
    for &(i, cost, slo) in &pts {
        let col = color(i);
        let label = report.policies[i].clone();
        c.draw_series(std::iter::once(Circle::new((cost, slo), 7, col.filled())))
            .map_err(e)?
            .label(label.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, col.filled()));
        c.draw_series(std::iter::once(Text::new(label, (cost, slo), ("sans-serif", 15).into_font().color(&BLACK))))
            .map_err(e)?;
    }
    // The Pareto front: no other point is both cheaper and better.
    let mut front: Vec<(f64, f64)> = pts
        .iter()
        .filter(|&&(_, c1, s1)| !pts.iter().any(|&(_, c2, s2)| (c2 <= c1 && s2 >= s1) && (c2 < c1 || s2 > s1)))
        .map(|&(_, c1, s1)| (c1, s1))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    c.draw_series(LineSeries::new(front, BLACK.mix(0.5).stroke_width(1)))
        .map_err(e)?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    draw_legend(&mut c, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

/// One panel per load: the clairvoyant frontier (every clairvoyant run's mean point, the
/// monotone front through them as a line) and every other policy's mean point over seeds.
fn frontier<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &CompareReport) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "GPU-hours vs SLO attainment with the clairvoyant frontier — {} (mean over {} seeds)",
                report.scenario, report.seeds
            ),
            ("sans-serif", 20),
        )
        .map_err(e)?;
    let panels = root.split_evenly((1, report.loads.len().max(1)));
    for (k, (area, &load)) in panels.iter().zip(&report.loads).enumerate() {
        let pts: Vec<(usize, f64, f64)> = report
            .policies
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, mean_of(report, p, load, "GPU-h")?.0, mean_of(report, p, load, "SLO %")?.0)))
            .collect();
        let g_max = pts.iter().map(|p| p.1).fold(0.01, f64::max) * 1.15;
        let s_min = pts.iter().map(|p| p.2).fold(100.0, f64::min);
        let mut c = ChartBuilder::on(area)
            .caption(format!("load ×{load}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..g_max, (s_min - 2.0).max(0.0)..100.5)
            .map_err(e)?;
        c.configure_mesh().x_desc("GPU-hours").y_desc("SLO attainment (%)").draw().map_err(e)?;
        let front: Vec<(f64, f64)> = report
            .frontiers
            .iter()
            .find(|f| f.load == load)
            .map(|f| f.points.iter().map(|&(s, g)| (g, s)).collect())
            .unwrap_or_default();
        if !front.is_empty() {
            c.draw_series(LineSeries::new(front.clone(), BLACK.stroke_width(2)))
                .map_err(e)?
                .label("clairvoyant frontier")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        }
        let mut n = 0;
        // Names next to the points only while they can be read; the legend always.
        let named =
            pts.iter().filter(|p| !crate::eval::stats::is_clairvoyant_kind(report.kinds.get(p.0).copied())).count()
                <= 8;
        for &(i, gpu, slo) in &pts {
            let label = short_label(&report.policies[i]);
            if crate::eval::stats::is_clairvoyant_kind(report.kinds.get(i).copied()) {
                c.draw_series(std::iter::once(Cross::new((gpu, slo), 5, BLACK.stroke_width(2)))).map_err(e)?;
                continue;
            }
            let col = color(n);
            n += 1;
            c.draw_series(std::iter::once(Circle::new((gpu, slo), 6, col.filled())))
                .map_err(e)?
                .label(label.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, col.filled()));
            if named && (k == 0 || report.loads.len() == 1) {
                c.draw_series(std::iter::once(Text::new(
                    label,
                    (gpu, slo),
                    ("sans-serif", 13).into_font().color(&BLACK),
                )))
                .map_err(e)?;
            }
        }
        draw_legend(&mut c, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

/// Draws the hourly arrival rate of a ServeGen folder over its days (`llmos trace-stats
/// DIR --plot FILE.png`), with the scenario's day split marked: `splits` are
/// `(first day, last day (exclusive), label)`, e.g. training, validation, test. Writes a
/// PNG when `path` ends in `.png`, else an SVG.
pub fn rate_over_days(
    hourly_rps: &[f64],
    splits: &[(f64, f64, &str)],
    title: &str,
    path: &Path,
) -> Result<(), PlotError> {
    register_font();
    if path.extension().is_some_and(|x| x == "png") {
        let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
        rate_chart(&root, hourly_rps, splits, title)?;
        root.present().map_err(e)
    } else {
        let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
        rate_chart(&root, hourly_rps, splits, title)?;
        root.present().map_err(e)
    }
}

fn rate_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    hourly_rps: &[f64],
    splits: &[(f64, f64, &str)],
    title: &str,
) -> DrawResult {
    root.fill(&WHITE).map_err(e)?;
    let days = (hourly_rps.len() as f64 / 24.0).max(1.0);
    let y_max = hourly_rps.iter().copied().fold(0.1, f64::max) * 1.15;
    let mut c = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..days, 0.0..y_max)
        .map_err(e)?;
    c.configure_mesh().x_desc("day").y_desc("mean arrival rate per hour (req/s)").x_labels(15).draw().map_err(e)?;
    for (i, &(a, b, label)) in splits.iter().enumerate() {
        let shade = color(i).mix(0.12);
        c.draw_series(std::iter::once(Rectangle::new([(a, 0.0), (b, y_max)], shade.filled())))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color(i).mix(0.4).filled()));
    }
    let line = hourly_rps.iter().enumerate().map(|(h, &r)| ((h as f64 + 0.5) / 24.0, r));
    c.draw_series(LineSeries::new(line, BLACK.stroke_width(1)))
        .map_err(e)?
        .label("arrival rate (hourly mean)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
    draw_legend(&mut c, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checkpoint_paths_shorten_to_what_names_them() {
        assert_eq!(super::short_label("dqn:docs/figures/x/checkpoints/ens-012/s0"), "dqn:ens-012/s0");
        assert_eq!(super::short_label("dqn:ckpt/run7/"), "dqn:run7");
        assert_eq!(super::short_label("hpa:target=0.5"), "hpa:target=0.5");
    }

    #[test]
    fn the_rate_over_days_is_drawn_with_its_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rate.svg");
        let hourly: Vec<f64> = (0..72).map(|h| 10.0 + (h % 24) as f64).collect();
        let splits = [(0.0, 2.0, "training days 1-2"), (2.0, 3.0, "test days 3-3")];
        super::rate_over_days(&hourly, &splits, "three days", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("three days") && svg.contains("training days 1-2") && svg.contains("test days 3-3"));
        assert!(svg.contains("<polyline"), "the rate is drawn as a line");
    }
}
