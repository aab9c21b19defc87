//! The chart's Grafana dashboard without Grafana: `llmos dashboard` runs every panel's
//! PromQL over a time range against a Prometheus server and draws the panels as one PNG.
//!
//! The dashboard is the chart's own `files/dashboard.json`, compiled in ([`DASHBOARD_JSON`]),
//! so what is drawn is what a Grafana with the chart's ConfigMap shows: the same queries,
//! titles, legends (`{{label}}` formats) and units. The dashboard's variables are filled
//! with regular expressions (`$namespace`, `$workload`; `.*` for all). A table panel is
//! drawn as the label sets of its series with their last value.
//!
//! Used by the end-to-end test to render the panels of its run for docs/operator.md, and
//! by users who want a picture of a run with only Prometheus at hand.

use std::path::Path;

use plotters::prelude::*;
use serde::Deserialize;

/// The chart's dashboard (`charts/llmos-operator/files/dashboard.json`).
pub const DASHBOARD_JSON: &str = include_str!("../../charts/llmos-operator/files/dashboard.json");

/// One query of a panel.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The query's id within the panel (`A`, `B`, …).
    #[serde(default)]
    pub ref_id: String,
    /// The PromQL, with the dashboard's variables.
    pub expr: String,
    /// Grafana's legend format (`{{slot}} {{state}}`); empty: the label set.
    #[serde(default)]
    pub legend_format: String,
}

/// One panel of the dashboard.
#[derive(Clone, Debug, Deserialize)]
pub struct Panel {
    /// The title.
    pub title: String,
    /// `timeseries` or `table`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The queries.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Field configuration, for the unit.
    #[serde(default, rename = "fieldConfig")]
    field_config: serde_json::Value,
}

impl Panel {
    /// Grafana's unit of the panel (`percentunit`, `currencyUSD`, `reqps`, `s`, …), empty if none.
    pub fn unit(&self) -> &str {
        self.field_config["defaults"]["unit"].as_str().unwrap_or("")
    }
}

#[derive(Deserialize)]
struct Dashboard {
    title: String,
    panels: Vec<Panel>,
}

/// The title and panels of a Grafana dashboard's JSON.
pub fn panels(json: &str) -> anyhow::Result<(String, Vec<Panel>)> {
    let d: Dashboard = serde_json::from_str(json).map_err(|e| anyhow::anyhow!("dashboard JSON: {e}"))?;
    Ok((d.title, d.panels))
}

/// `expr` with the dashboard's variables set (`$namespace`, `$workload` as regular expressions).
pub fn fill(expr: &str, namespace: &str, workload: &str) -> String {
    expr.replace("$namespace", namespace).replace("$workload", workload)
}

/// One series of a range query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeSeries {
    /// Its legend (the target's legend format filled from the labels, or the label set).
    pub legend: String,
    /// (Unix seconds, value) points; NaN and infinite values are left out.
    pub points: Vec<(f64, f64)>,
}

/// A legend from Grafana's `{{label}}` format, or the label set when the format is empty.
pub fn legend(format: &str, labels: &serde_json::Map<String, serde_json::Value>) -> String {
    let label = |k: &str| labels.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    if format.is_empty() {
        let parts: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != "__name__" && *k != "instance" && *k != "job")
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        return if parts.is_empty() { label("__name__") } else { parts.join(", ") };
    }
    let mut out = String::new();
    let mut rest = format;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find("}}") else { break };
        out.push_str(&label(rest[i + 2..i + j].trim()));
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    // A series without the format's labels (`or vector(0)`) still needs a name.
    if out.trim().is_empty() {
        "value".into()
    } else {
        out
    }
}

/// Parses a Prometheus `query_range` answer (`resultType: matrix`).
pub fn parse_matrix(body: &serde_json::Value, legend_format: &str) -> anyhow::Result<Vec<RangeSeries>> {
    if body["status"] != "success" {
        anyhow::bail!("Prometheus answered {}: {}", body["status"], body["error"]);
    }
    let result = body["data"]["result"].as_array().ok_or_else(|| anyhow::anyhow!("no data.result array"))?;
    let mut out = Vec::new();
    for s in result {
        let labels = s["metric"].as_object().cloned().unwrap_or_default();
        let points = s["values"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|p| {
                        let t = p[0].as_f64()?;
                        let y = p[1].as_str().and_then(crate::metrics::prometheus::parse_value)?;
                        y.is_finite().then_some((t, y))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(RangeSeries { legend: legend(legend_format, &labels), points });
    }
    Ok(out)
}

/// A panel with the series its queries returned.
#[derive(Clone, Debug)]
pub struct PanelData {
    /// The panel.
    pub panel: Panel,
    /// Every target's series, in target order.
    pub series: Vec<RangeSeries>,
    /// Queries that failed, with the error.
    pub errors: Vec<String>,
}

/// Where and what to query.
#[derive(Clone, Debug)]
pub struct RangeQuery {
    /// Prometheus base URL.
    pub prometheus: String,
    /// `$namespace` (a regular expression).
    pub namespace: String,
    /// `$workload` (a regular expression).
    pub workload: String,
    /// Start and end, Unix seconds.
    pub start: f64,
    /// End, Unix seconds.
    pub end: f64,
    /// Resolution, seconds.
    pub step: f64,
}

/// Runs every target of every panel over the range.
pub async fn query_panels(panels: Vec<Panel>, q: &RangeQuery) -> anyhow::Result<Vec<PanelData>> {
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let url = format!("{}/api/v1/query_range", q.prometheus.trim_end_matches('/'));
    let mut out = Vec::new();
    for panel in panels {
        let mut series = Vec::new();
        let mut errors = Vec::new();
        for t in &panel.targets {
            let expr = fill(&t.expr, &q.namespace, &q.workload);
            let params = [
                ("query", expr.clone()),
                ("start", format!("{:.3}", q.start)),
                ("end", format!("{:.3}", q.end)),
                ("step", format!("{}", q.step)),
            ];
            let answer = async { client.get(&url).query(&params).send().await?.json::<serde_json::Value>().await };
            match answer.await.map_err(anyhow::Error::from).and_then(|b| parse_matrix(&b, &t.legend_format)) {
                Ok(s) => series.extend(s),
                Err(e) => errors.push(format!("{expr}: {e}")),
            }
        }
        out.push(PanelData { panel, series, errors });
    }
    Ok(out)
}

/// Scale and axis label of a Grafana unit.
fn unit_scale(unit: &str) -> (f64, &'static str) {
    match unit {
        "percentunit" => (100.0, "%"),
        "currencyUSD" => (1.0, "USD/h"),
        "reqps" => (1.0, "req/s"),
        "ops" => (1.0, "per second"),
        "s" => (1.0, "seconds"),
        _ => (1.0, ""),
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws the panels as a grid (two per row, in dashboard order) into a PNG at `path`;
/// times are shown in minutes from `start`.
pub fn render(title: &str, data: &[PanelData], start: f64, end: f64, path: &Path) -> anyhow::Result<()> {
    crate::eval::plots::register_font();
    let rows = data.len().div_ceil(2).max(1) as u32;
    let (w, h) = (1400u32, 60 + 300 * rows);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(60);
    head.draw_text(title, &("sans-serif", 26).into_font().color(&BLACK), (20, 15))?;
    let cells = body.split_evenly((rows as usize, 2));
    for (cell, d) in cells.iter().zip(data) {
        if d.panel.kind == "table" {
            draw_table(cell, d)?;
        } else {
            draw_timeseries(cell, d, start, end)?;
        }
    }
    root.present()?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_table(cell: &Area<'_>, d: &PanelData) -> anyhow::Result<()> {
    cell.draw_text(&d.panel.title, &("sans-serif", 18).into_font().color(&BLACK), (15, 10))?;
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    for (i, s) in d.series.iter().take(12).enumerate() {
        let last = s.points.last().map_or("n/a".to_string(), |p| format!("{}", p.1));
        cell.draw_text(&format!("{}  =  {last}", s.legend), &font, (25, 45 + 20 * i as i32))?;
    }
    if d.series.is_empty() {
        cell.draw_text("no series", &font, (25, 45))?;
    }
    Ok(())
}

fn draw_timeseries(cell: &Area<'_>, d: &PanelData, start: f64, end: f64) -> anyhow::Result<()> {
    let (scale, unit) = unit_scale(d.panel.unit());
    let x_max = ((end - start) / 60.0).max(1e-3);
    let ys = d.series.iter().flat_map(|s| s.points.iter().map(|p| p.1 * scale));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo.min(0.0), hi.max(lo + 1e-6)) } else { (0.0, 1.0) };
    let mut chart = ChartBuilder::on(cell)
        .caption(&d.panel.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, lo..hi + 0.08 * (hi - lo))?;
    chart.configure_mesh().x_desc("minutes").y_desc(unit).light_line_style(WHITE).draw()?;
    for (i, s) in d.series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts = s.points.iter().map(|p| ((p.0 - start) / 60.0, p.1 * scale));
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(s.legend.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
    }
    if !d.series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

/// Arguments of `llmos dashboard`.
#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// Prometheus base URL (the one the operator's metrics are scraped into).
    #[arg(long)]
    pub prometheus: String,
    /// The PNG to write.
    #[arg(long, default_value = "dashboard.png")]
    pub out: std::path::PathBuf,
    /// `$namespace`, a regular expression.
    #[arg(long, default_value = ".*")]
    pub namespace: String,
    /// `$workload`, a regular expression.
    #[arg(long, default_value = ".*")]
    pub workload: String,
    /// How far back from now, minutes.
    #[arg(long, default_value_t = 15.0)]
    pub minutes: f64,
    /// Resolution, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub step: f64,
}

/// Runs `llmos dashboard`: queries every panel over the last `--minutes` and writes the PNG;
/// prints how many series each panel got and any query that failed.
pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.step > 0.0) {
        anyhow::bail!("--minutes and --step must be positive (got {} and {})", args.minutes, args.step);
    }
    let (title, panels) = panels(DASHBOARD_JSON)?;
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let q = RangeQuery {
        prometheus: args.prometheus,
        namespace: args.namespace,
        workload: args.workload,
        start: end - 60.0 * args.minutes,
        end,
        step: args.step,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let data = rt.block_on(query_panels(panels, &q))?;
    for d in &data {
        println!("{:<40} {:>3} series", d.panel.title, d.series.len());
        for e in &d.errors {
            println!("  failed: {e}");
        }
    }
    render(&title, &data, q.start, q.end, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_dashboard_parses_and_legends_fill() {
        let (title, p) = panels(DASHBOARD_JSON).expect("dashboard");
        assert!(!title.is_empty());
        assert!(p.len() >= 10 && p.iter().all(|p| !p.targets.is_empty()));
        let labels = serde_json::json!({"kind": "scale_up", "__name__": "x"});
        assert_eq!(legend("{{kind}} decisions", labels.as_object().unwrap()), "scale_up decisions");
        assert_eq!(legend("", labels.as_object().unwrap()), "kind=scale_up");
        let body = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"kind": "hold"}, "values": [[1.0, "2"], [2.0, "NaN"], [3.0, "4"]]}]}});
        let s = parse_matrix(&body, "{{kind}}").expect("matrix");
        assert_eq!(s, vec![RangeSeries { legend: "hold".into(), points: vec![(1.0, 2.0), (3.0, 4.0)] }]);
        let err = serde_json::json!({"status": "error", "error": "parse error"});
        assert!(parse_matrix(&err, "").unwrap_err().to_string().contains("parse error"));
    }
}
