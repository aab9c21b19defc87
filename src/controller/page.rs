//! The decision page: "why did it scale?", served read-only on the metrics port.
//!
//! - `/decisions`: the workloads this operator replica has decided for, with their last
//!   decision;
//! - `/decisions/<namespace>/<name>`: that workload's recent ticks, newest first, and a
//!   plot of replicas (desired, ready, and what the policy asked for) against the arrival
//!   rate; each tick shows what was observed, what the policy proposed and why (a learned
//!   policy's Q-values or action probabilities per branch, the chosen option marked, the
//!   options the limits masked greyed), what the shield changed and which rule made it,
//!   what was applied (nothing, in shadow mode: the proposal is what the shadow policy
//!   would have done), and the SLO attainment and cost that followed;
//! - `/decisions/<namespace>/<name>/json`: the same entries as JSON.
//!
//! Pages are plain HTML with an inline SVG plot (drawn with plotters); no script, no
//! form, nothing that writes. Text from the cluster (names, reasons) is escaped.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::journal::{Entry, Proposal};
use crate::crd::TargetStatus;
use crate::policy::observation::Explanation;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}\
th{background:#f3f3f3}.k{font-weight:bold;padding:.1em .4em;border-radius:.3em;background:#eee}\
.scale_up{background:#d7f0d7}.scale_down{background:#f7e3c8}.shadow{background:#dde6f7}.hold{background:#eee}\
.masked{color:#aaa}.chosen{font-weight:bold;background:#fff3b0}.warn{color:#a33}small{color:#666}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}

/// The index page: one row per workload with its last decision.
pub fn index_html(workloads: &[(String, usize, Option<Entry>)]) -> String {
    let mut b = String::from(
        "<p>Recent control ticks of the workloads this operator replica decides for (memory only, \
         newest last tick per workload).</p><table><tr><th>workload</th><th>ticks kept</th><th>last tick</th>\
         <th>policy</th><th>mode</th><th>decision</th></tr>",
    );
    for (key, n, last) in workloads {
        let (time, policy, mode, kind) = match last {
            Some(e) => (
                e.time.as_str(),
                e.proposal.as_ref().map_or("(none)", |p| p.policy.as_str()),
                e.mode.as_str(),
                e.kind.as_str(),
            ),
            None => ("", "", "", ""),
        };
        let _ = write!(
            b,
            "<tr><td><a href=\"/decisions/{k}\">{k}</a></td><td>{n}</td><td>{t}</td><td>{p}</td><td>{m}</td>\
             <td><span class=\"k {c}\">{c}</span></td></tr>",
            k = escape(key),
            t = escape(time),
            p = escape(policy),
            m = escape(mode),
            c = escape(kind)
        );
    }
    b.push_str("</table>");
    if workloads.is_empty() {
        b.push_str("<p>No control tick yet (is this replica the leader?).</p>");
    }
    page("llmos decisions", &b)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(x) if x < 1.0 => format!("{:.0} ms", 1000.0 * x),
        Some(x) => format!("{x:.2} s"),
        None => "n/a".into(),
    }
}

fn targets(t: &[TargetStatus]) -> String {
    t.iter().map(|t| format!("{}/{}: {}", t.variant, t.pool, t.replicas)).collect::<Vec<_>>().join(", ")
}

fn seen_cell(e: &Entry) -> String {
    let s = &e.seen;
    let mut c = format!(
        "{:.2} req/s ({:+.3}/s) · SLO {} · TTFT p99 {} · TPOT p99 {} · ${:.2}/h",
        s.arrival_rate_rps,
        s.arrival_rate_trend_rps_per_s,
        pct(s.slo_attainment),
        secs(s.latency.ttft_p99_s),
        secs(s.latency.tpot_p99_s),
        s.cost_usd_per_hour
    );
    for sl in &s.slots {
        let _ = write!(
            c,
            "<br><small>{}: {} desired, {} ready, {:.0} waiting, {:.0} running, KV {:.0}%</small>",
            escape(&sl.slot),
            sl.desired,
            sl.ready,
            sl.waiting,
            sl.running,
            100.0 * sl.kv_cache_usage
        );
    }
    if !s.missing.is_empty() || !e.metrics.starts_with("read from") {
        let _ = write!(c, "<br><span class=\"warn\">metrics {}</span>", escape(&e.metrics));
    }
    c
}

fn scores_table(x: &Explanation) -> String {
    let mut b = format!("<table><tr><th>branch ({})</th><th>options</th></tr>", escape(&x.score));
    for br in &x.branches {
        let mut cells = String::new();
        for (i, o) in br.options.iter().enumerate() {
            let class = if i == br.chosen {
                "chosen"
            } else if !br.allowed.get(i).copied().unwrap_or(false) {
                "masked"
            } else {
                ""
            };
            let v = br.scores.get(i).copied().unwrap_or(f64::NAN);
            let _ = write!(cells, "<span class=\"{class}\">{}: {v:.3}</span> ", escape(o));
        }
        let _ = write!(b, "<tr><td>{}</td><td>{cells}</td></tr>", escape(&br.name));
    }
    b.push_str("</table>");
    if let Some(n) = &x.note {
        let _ = write!(b, "<span class=\"warn\">{}</span>", escape(n));
    }
    b
}

fn proposal_cell(p: &Proposal, mode: &str) -> String {
    let mut c = format!("<b>{}</b>: {}", escape(&p.policy), escape(&p.reason));
    let _ = write!(c, "<br>asked {}", escape(&targets(&p.asked)));
    if p.shield.is_empty() {
        c.push_str("<br><small>the shield changed nothing</small>");
    }
    for s in &p.shield {
        let _ = write!(
            c,
            "<br><span class=\"warn\">shield {}</span> on {}: {} → {} <small>({})</small>",
            escape(&s.rule),
            escape(&s.slot),
            s.asked,
            s.applied,
            escape(&s.why)
        );
    }
    if mode == "shadow" {
        let _ = write!(c, "<br>shadow: would set {}; not applied", escape(&targets(&p.shielded)));
    }
    for w in &p.warnings {
        let _ = write!(c, "<br><span class=\"warn\">{}</span>", escape(w));
    }
    if let Some(x) = &p.explanation {
        c.push_str(&scores_table(x));
    }
    c
}

fn row(e: &Entry) -> String {
    let proposal = match &e.proposal {
        Some(p) => proposal_cell(p, &e.mode),
        None => {
            format!("<small>not asked: {}</small>", escape(e.held_because.as_deref().unwrap_or("the operator held")))
        }
    };
    let followed = match &e.followed {
        Some(f) => format!(
            "after {:.0} s: SLO {} · ${:.2}/h · {} ready",
            f.after_s,
            pct(f.slo_attainment),
            f.cost_usd_per_hour,
            f.ready
        ),
        None => "<small>next tick not seen yet</small>".into(),
    };
    format!(
        "<tr><td title=\"{full}\">{t}<br><span class=\"k {k}\">{k}</span></td><td>{seen}</td><td>{proposal}</td><td>{applied}</td><td>{followed}</td></tr>",
        full = escape(&e.time),
        t = escape(&clock_time(&e.time)),
        k = escape(&e.kind),
        seen = seen_cell(e),
        applied = escape(&targets(&e.applied)),
    )
}

/// `HH:MM:SS` of an RFC 3339 time (the whole text when it has no `T`).
fn clock_time(t: &str) -> String {
    match t.split_once('T') {
        Some((_, rest)) => rest.chars().take(8).collect(),
        None => t.to_string(),
    }
}

/// The page of one workload (`key` is `namespace/name`), entries oldest first.
pub fn workload_html(key: &str, entries: &[Entry]) -> String {
    let mut b = String::new();
    if let Some(last) = entries.last() {
        let policy = last.proposal.as_ref().map_or("(none)".to_string(), |p| p.policy.clone());
        let _ = write!(
            b,
            "<p>{} ticks kept · policy <b>{}</b> ({}) · <a href=\"/decisions/{}/json\">JSON</a> · \
             <a href=\"/decisions\">all workloads</a></p>",
            entries.len(),
            escape(&policy),
            escape(&last.mode),
            escape(key)
        );
    }
    b.push_str(&plot_svg(entries));
    b.push_str(
        "<table><tr><th>tick</th><th>observed</th><th>policy proposed, shield changed</th><th>applied</th>\
         <th>what followed</th></tr>",
    );
    for e in entries.iter().rev() {
        b.push_str(&row(e));
    }
    b.push_str("</table>");
    page(&format!("Why did {key} scale?"), &b)
}

/// Per entry: minutes since the first, desired (applied) total, ready total, asked total
/// (the policy's proposal, when it was asked) and the arrival rate.
fn series(entries: &[Entry]) -> Vec<(f64, f64, f64, Option<f64>, f64)> {
    let t0 = entries.first().map_or(0.0, |e| e.time_s);
    entries
        .iter()
        .map(|e| {
            let total = |t: &[TargetStatus]| t.iter().map(|x| x.replicas as f64).sum::<f64>();
            (
                (e.time_s - t0) / 60.0,
                total(&e.applied),
                e.seen.slots.iter().map(|s| s.ready as f64).sum(),
                e.proposal.as_ref().map(|p| total(&p.shielded)),
                e.seen.arrival_rate_rps,
            )
        })
        .collect()
}

/// The replicas-and-load plot as inline SVG (empty with fewer than two entries).
pub fn plot_svg(entries: &[Entry]) -> String {
    if entries.len() < 2 {
        return "<p><small>The plot appears after two ticks.</small></p>".into();
    }
    crate::eval::plots::register_font();
    let s = series(entries);
    let mut svg = String::new();
    let drawn = draw(&s, &mut svg);
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p class=\"warn\">plot not drawn: {}</p>", escape(&e)),
    }
}

fn draw(s: &[(f64, f64, f64, Option<f64>, f64)], svg: &mut String) -> Result<(), String> {
    let x_max = s.last().map_or(1.0, |p| p.0).max(1e-3);
    let r_max = s.iter().map(|p| p.1.max(p.2).max(p.3.unwrap_or(0.0))).fold(1.0, f64::max) * 1.15;
    let l_max = s.iter().map(|p| p.4).fold(1e-3, f64::max) * 1.15;
    let root = SVGBackend::with_string(svg, (1000, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..r_max)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0.0..x_max, 0.0..l_max);
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("replicas")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| e.to_string())?;
    chart.configure_secondary_axes().y_desc("arrivals (req/s)").draw().map_err(|e| e.to_string())?;
    let load = RGBColor(160, 160, 160);
    chart
        .draw_secondary_series(LineSeries::new(s.iter().map(|p| (p.0, p.4)), load.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("arrivals (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], load));
    let lines: [(&str, RGBColor, Box<dyn Fn(&(f64, f64, f64, Option<f64>, f64)) -> Option<f64>>); 3] = [
        ("desired", BLUE, Box::new(|p| Some(p.1))),
        ("ready", GREEN, Box::new(|p| Some(p.2))),
        ("policy proposed (after shield)", RED, Box::new(|p| p.3)),
    ];
    // Wide lines under narrow ones, so coinciding series stay visible.
    for ((name, color, f), width) in lines.into_iter().zip([5, 3, 1]) {
        let pts: Vec<(f64, f64)> = s.iter().filter_map(|p| f(p).map(|v| (p.0, v))).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(width)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::journal::{Seen, ShieldChange};
    use crate::policy::observation::{BranchScores, LatencyObservation};

    fn entry(t: f64, reason: &str) -> Entry {
        Entry {
            time: format!("2026-01-01T00:00:{t:02}Z"),
            time_s: t,
            mode: "active".into(),
            kind: "scale_up".into(),
            metrics: "read from prometheus".into(),
            seen: Seen {
                arrival_rate_rps: 3.0 + t,
                arrival_rate_trend_rps_per_s: 0.1,
                slo_attainment: Some(0.97),
                latency: LatencyObservation { ttft_p99_s: Some(0.4), ..Default::default() },
                cost_usd_per_hour: 4.0,
                slots: vec![],
                missing: vec![],
            },
            proposal: Some(Proposal {
                policy: "dqn".into(),
                reason: reason.into(),
                asked: vec![TargetStatus { variant: "v".into(), pool: "p".into(), replicas: 9 }],
                shielded: vec![TargetStatus { variant: "v".into(), pool: "p".into(), replicas: 5 }],
                shield: vec![ShieldChange {
                    rule: "MaxStepChange".into(),
                    why: "at most".into(),
                    slot: "v/p".into(),
                    asked: 9,
                    applied: 5,
                }],
                explanation: Some(Explanation {
                    score: "q-value".into(),
                    branches: vec![BranchScores {
                        name: "replicas[v/p]".into(),
                        options: vec!["-1".into(), "+0".into(), "+4".into()],
                        scores: vec![0.1, 0.5, 0.9],
                        allowed: vec![false, true, true],
                        chosen: 2,
                    }],
                    note: None,
                }),
                warnings: vec![],
            }),
            held_because: None,
            applied: vec![TargetStatus { variant: "v".into(), pool: "p".into(), replicas: 5 }],
            followed: None,
        }
    }

    #[test]
    fn the_page_escapes_cluster_text_and_shows_scores_shield_and_plot() {
        let html = workload_html("ns/w", &[entry(0.0, "first"), entry(30.0, "<script>x</script>")]);
        assert!(!html.contains("<script>"), "reasons are escaped");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("<span class=\"chosen\">+4: 0.900</span>"), "the chosen option is marked");
        assert!(html.contains("<span class=\"masked\">-1: 0.100</span>"), "a masked option is greyed");
        assert!(html.contains("shield MaxStepChange"));
        assert!(html.contains("<svg"), "the plot is inline SVG");
        assert!(html.contains("SLO 97.0%"));
        let idx = index_html(&[("ns/w".into(), 2, Some(entry(30.0, "r")))]);
        assert!(idx.contains("href=\"/decisions/ns/w\""));
    }
}
