//! The chart's Grafana dashboard and alert rules, checked without a cluster: the dashboard
//! is Grafana JSON whose every query names only metric families the operator exposes, and
//! the rule file passes `promtool check rules` (Debian's `prometheus` package ships it).
//! The end-to-end test (`tests/e2e_operator.rs`) then runs every query against a live
//! Prometheus and checks that each returns series and each rule evaluates.

use std::path::Path;
use std::process::Command;

use llmos::controller::telemetry::{OperatorMetrics, WorkloadLabels, WorkloadReading};

const DASHBOARD: &str = "charts/llmos-operator/files/dashboard.json";
const ALERTS: &str = "charts/llmos-operator/files/alerts.yaml";

/// The operator's exposition with one workload, one decision, one error and one shield
/// override recorded, so every family has its `# TYPE` line (a labelled family appears
/// once it has a series).
fn exposition() -> String {
    let spec: llmos::crd::LLMWorkloadSpec = serde_json::from_value(serde_json::json!({
        "variants": [{"name": "small", "model": "m", "image": "i", "pools": ["a100"]}],
        "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
    }))
    .expect("valid spec");
    let slot =
        llmos::crd::SlotStatus { variant: "small".into(), pool: "a100".into(), desired_replicas: 2, ready_replicas: 1 };
    let status = llmos::crd::LLMWorkloadStatus { slo_attainment: Some(0.9), slots: vec![slot], ..Default::default() };
    let m = OperatorMetrics::new();
    m.decision("scale_up");
    m.error("KubeApi");
    m.shield_override("MaxStepChange");
    m.workloads.record(&WorkloadReading {
        labels: WorkloadLabels { namespace: "ns".into(), workload: "w".into() },
        spec: &spec,
        status: &status,
        metrics_available: true,
        policy_ready: true,
    });
    m.encode()
}

/// The `llmos_` metric names in a PromQL expression, with the counter and histogram
/// suffixes removed (the family names of `# TYPE` lines).
fn families(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("llmos_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name =
            ["_total", "_bucket", "_sum", "_count"].iter().fold(&tail[..end], |m, s| m.strip_suffix(s).unwrap_or(m));
        out.push(name.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_dashboard_query_reads_families_the_operator_exposes() {
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboard file");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exposed = exposition();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut seen = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let fams = families(expr);
            assert!(!fams.is_empty(), "panel {title}: {expr} reads no llmos_ metric");
            for f in fams {
                assert!(exposed.contains(&format!("# TYPE {f} ")), "panel {title}: {f} is not exposed:\n{exposed}");
                seen.insert(f);
            }
        }
    }
    // What the issue asks the dashboard to show, by the family that carries it.
    for needed in [
        "llmos_workload_slo_attainment_ratio",
        "llmos_workload_slo_target_ratio",
        "llmos_workload_cost_per_hour_usd",
        "llmos_slot_replicas",
        "llmos_workload_arrival_rate_rps",
        "llmos_decisions",
        "llmos_shield_overrides",
        "llmos_workload_policy_info",
        "llmos_policy_decision_duration_seconds",
    ] {
        assert!(seen.contains(needed), "no panel reads {needed}");
    }
}

#[test]
fn alert_rules_pass_promtool_and_read_exposed_families() {
    let text = std::fs::read_to_string(ALERTS).expect("alerts file");
    let exposed = exposition();
    for f in families(&text) {
        assert!(exposed.contains(&format!("# TYPE {f} ")), "an alert reads {f}, which is not exposed");
    }
    for alert in
        ["LLMOSSLOBudgetBurnFast", "LLMOSMetricsUnavailable", "LLMOSShieldOverridesOften", "LLMOSPolicyNotReady"]
    {
        assert!(text.contains(&format!("alert: {alert}")), "missing alert {alert}");
    }
    promtool(&["check", "rules", ALERTS], "rule syntax checked only end to end");
}

/// Runs `promtool ARGS` and asserts it succeeds; without promtool (Debian's `prometheus`
/// package has it) says what goes untested (`untested`) and returns.
fn promtool(args: &[&str], untested: &str) {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].into_iter().find(|p| Path::new(p).exists());
    let Some(promtool) = promtool else {
        eprintln!("promtool not installed: {untested}");
        return;
    };
    let out = Command::new(promtool).args(args).output().expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each alert fires on the series that should raise it, after its `for`, with its labels
/// and annotations, and stays silent on a healthy workload (`promtool test rules` over
/// `tests/data/alerts_test.yaml`, which must cover every alert of the file).
#[test]
fn every_alert_fires_when_it_should_and_not_before() {
    const TESTS: &str = "tests/data/alerts_test.yaml";
    let rules = std::fs::read_to_string(ALERTS).expect("alerts file");
    let tests = std::fs::read_to_string(TESTS).expect("alert tests");
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let fires = tests.split("alertname: ").skip(1).any(|case| {
            case.starts_with(&format!("{line}\n")) && case.lines().nth(1).is_some_and(|l| !l.contains("exp_alerts: []"))
        });
        assert!(fires, "{TESTS} has no case where {line} fires");
    }
    promtool(&["test", "rules", TESTS], "alert firing not tested");
}

#[test]
fn the_chart_templates_carry_the_files() {
    let dashboard = std::fs::read_to_string("charts/llmos-operator/templates/dashboard.yaml").expect("template");
    assert!(dashboard.contains(".Files.Get \"files/dashboard.json\""));
    assert!(dashboard.contains(".Values.grafanaDashboard.label"));
    let rule = std::fs::read_to_string("charts/llmos-operator/templates/prometheusrule.yaml").expect("template");
    assert!(rule.contains("kind: PrometheusRule") && rule.contains(".Files.Get \"files/alerts.yaml\""));
}
