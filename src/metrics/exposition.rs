//! Renders one pod's metrics ([`PodSample`]) in the Prometheus text format, with vLLM's
//! family names, help texts and types from the one table in [`super::vllm`].
//!
//! The twin exposes its simulated engines through this function (`llmos twin-serve`
//! serves the text on each replica's `/metrics`), so what a scraper or Prometheus reads
//! from a simulated pod is written by the same table the live parser reads with, and
//! [`super::scrape::parse_exposition`] of the rendered text gives back the sample it was
//! rendered from (the parity test in `tests/observation_parity.rs` pins that).

use std::fmt::Write;

use super::scrape::PodSample;
use super::vllm::{MetricKind, LABEL_LE, METRICS};

/// Escapes a label value for the text format (`\`, `"` and newlines).
pub fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Formats a sample value so that parsing it gives back the same `f64` (Rust's shortest
/// round-trip form; `+Inf`, `-Inf` and `NaN` as Prometheus writes them).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The sample in the text format: every family of the table the sample has, in the
/// table's order, each series carrying `labels` (name, value) pairs.
pub fn render(sample: &PodSample, labels: &[(&str, &str)]) -> String {
    let base: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v))).collect();
    let with = |extra: Option<String>| -> String {
        let mut all = base.clone();
        all.extend(extra);
        if all.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", all.join(","))
        }
    };
    let mut s = String::new();
    for row in METRICS {
        let name = row.name;
        match row.kind {
            MetricKind::Gauge | MetricKind::Counter => {
                let v = match row.kind {
                    MetricKind::Gauge => sample.gauges.get(&row.field),
                    _ => sample.counters.get(&row.field),
                };
                let Some(v) = v else { continue };
                let kind = if row.kind == MetricKind::Gauge { "gauge" } else { "counter" };
                let _ =
                    writeln!(s, "# HELP {name} {}\n# TYPE {name} {kind}\n{name}{} {}", row.help, with(None), value(*v));
            }
            MetricKind::Histogram => {
                let Some(h) = sample.histograms.get(&row.field) else { continue };
                let _ = writeln!(s, "# HELP {name} {}\n# TYPE {name} histogram", row.help);
                for (le, count) in &h.buckets {
                    let _ = writeln!(
                        s,
                        "{name}_bucket{} {}",
                        with(Some(format!("{LABEL_LE}=\"{}\"", value(*le)))),
                        value(*count)
                    );
                }
                let _ = writeln!(s, "{name}_sum{} {}", with(None), value(h.sum));
                let _ = writeln!(s, "{name}_count{} {}", with(None), value(h.total()));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::Histogram;
    use crate::metrics::scrape::parse_exposition;
    use crate::metrics::vllm::Field;

    #[test]
    fn rendered_text_parses_back_to_the_same_sample() {
        let mut s = PodSample::default();
        s.gauges.insert(Field::WaitingRequests, 3.0);
        s.gauges.insert(Field::RunningRequests, 17.0);
        s.gauges.insert(Field::KvCacheUsage, 0.123456789012345);
        s.counters.insert(Field::RequestSuccess, 1234.0);
        s.counters.insert(Field::Preemptions, 2.0);
        s.histograms.insert(
            Field::TimeToFirstToken,
            Histogram::from_buckets(vec![(0.001, 0.0), (0.1, 5.0), (2.5, 9.0), (f64::INFINITY, 10.0)], 0.0),
        );
        let text = render(&s, &[("model_name", "m\"x")]);
        assert!(text.contains("# TYPE vllm:num_requests_waiting gauge"), "{text}");
        assert!(
            text.contains("vllm:time_to_first_token_seconds_bucket{model_name=\"m\\\"x\",le=\"+Inf\"} 10"),
            "{text}"
        );
        assert_eq!(parse_exposition(&text), s);
    }
}
