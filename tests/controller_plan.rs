//! The reconcile plan and its executor, without an API server.
//!
//! The plan ([`llmos::controller::plan::plan`]) is pure, so each branch of reconcile is a
//! row of a table: a workload, the Deployments it owns, the control tick's outcome, and
//! what the plan must say (decision, Events, replicas per slot, deletions, conditions).
//! The executor is run against a scripted API server (`tower-test`), which checks every
//! HTTP call it makes for one plan, in order: method, path, and the fields that matter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

use llmos::controller::decide::{build_observation, floor_without_metrics};
use llmos::controller::desired::{self, Slot};
use llmos::controller::execute::execute;
use llmos::controller::plan::{
    self, Decided, DecisionKind, EventReason, MetricsRead, Observed, Plan, PlanInput, Settings, TickOutcome,
};
use llmos::controller::{Context, ControllerConfig, UnavailableSource};
use llmos::crd::LLMWorkload;
use llmos::metrics::MetricsSnapshot;
use llmos::policy::shield::{Shield, ShieldRule};
use llmos::policy::Decision;

const NOW: i64 = 1_750_000_000;
const SETTINGS: Settings = Settings { invalid_spec_requeue: Duration::from_secs(300) };

fn now() -> Timestamp {
    Timestamp::from_second(NOW).expect("valid time")
}

/// Workload `chat` in namespace `ml`: a small variant (1 GPU, L4 or A100, at least
/// `small_min` replicas) and a large one (4 GPUs, A100 only); `extra` is merged into the spec.
fn workload(small_min: u32, extra: Value) -> LLMWorkload {
    let mut spec = json!({
        "variants": [
            {"name": "small", "model": "m8", "image": "vllm:1", "minReplicas": small_min, "pools": ["l4", "a100"]},
            {"name": "large", "model": "m70", "image": "vllm:1", "gpusPerReplica": 4, "pools": ["a100"]}
        ],
        "gpuPools": [
            {"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 3.0, "capacityGpus": 16},
            {"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8}
        ],
        "policy": {"kind": "static", "intervalSeconds": 10}
    });
    merge(&mut spec, extra);
    serde_json::from_value(json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "uid-chat", "generation": 2},
        "spec": spec
    }))
    .expect("test workload parses")
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// The Deployment of `variant/pool` as the operator wrote it with `replicas`, `ready` of them ready.
fn deployment(wl: &LLMWorkload, variant: &str, pool: &str, replicas: u32, ready: u32) -> Deployment {
    let mut d = desired::deployment(wl, &Slot::new(variant, pool), replicas).expect("slot of the spec");
    d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        replicas: Some(ready as i32),
        ready_replicas: Some(ready as i32),
        ..Default::default()
    });
    d
}

/// An owned Deployment of a slot the spec does not have (its variant `medium` was removed).
fn stale_deployment(wl: &LLMWorkload) -> Deployment {
    let mut d = deployment(wl, "small", "l4", 2, 2);
    d.metadata.name = Some("chat-medium-l4".into());
    d
}

/// What the control tick produced.
#[derive(Clone, Copy)]
enum Tick<'a> {
    /// No tick was due.
    None,
    /// Metrics complete; the policy asks for these (variant, pool, replicas).
    Decide(&'a [(&'a str, &'a str, u32)]),
    /// Metrics complete; the policy cannot be built.
    NoPolicy,
    /// The source answered without the queue depth.
    Missing,
    /// The source could not be reached.
    Unreachable,
}

fn tick_outcome(wl: &LLMWorkload, observed: &Observed, tick: Tick<'_>) -> Option<TickOutcome> {
    let mut obs = build_observation(&wl.spec, &observed.current, &observed.states, NOW as f64, None);
    let healthy = MetricsSnapshot { arrival_rate_rps: Some(5.0), slo_attainment: Some(0.99), ..Default::default() };
    let read = MetricsRead::Read { source: "fake".into() };
    let (metrics, decided) = match tick {
        Tick::None => return None,
        Tick::Missing => {
            MetricsSnapshot { missing: vec!["vllm:num_requests_waiting (stale)".into()], ..Default::default() }
                .fill(&mut obs);
            (read, None)
        }
        Tick::Unreachable => (MetricsRead::Failed("metrics source fake unreachable: connection refused".into()), None),
        Tick::NoPolicy => {
            healthy.fill(&mut obs);
            (read, None)
        }
        Tick::Decide(targets) => {
            healthy.fill(&mut obs);
            let mut decision = Decision::new("scripted decision");
            for (v, p, r) in targets {
                decision.set(v, p, *r);
            }
            let outcome = Shield::new(&wl.spec).clamp(&obs, &decision);
            (read, Some(Decided { policy: "scripted".into(), decision, outcome }))
        }
    };
    let floor = match decided {
        None => floor_without_metrics(&Shield::new(&wl.spec), &obs),
        Some(_) => None,
    };
    Some(TickOutcome { observation: obs, metrics, decided, floor })
}

/// Plans one reconcile of `wl` owning `deployments` with the given tick.
fn plan_for(wl: &LLMWorkload, deployments: Vec<Deployment>, tick: Tick<'_>, policy_error: Option<&str>) -> Plan {
    let observed = Observed::new(wl, deployments);
    let outcome = tick_outcome(wl, &observed, tick);
    let last_tick = Some(now().checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(4)).unwrap());
    plan::plan(&PlanInput {
        workload: wl,
        observed: &observed,
        now: now(),
        policy_error,
        tick: outcome.as_ref(),
        last_tick,
        settings: SETTINGS,
        grants: None,
    })
}

/// One row of the table.
struct Case {
    name: &'static str,
    wl: LLMWorkload,
    deployments: Vec<Deployment>,
    tick: Tick<'static>,
    policy_error: Option<&'static str>,
    /// The decision counted.
    decision: Option<DecisionKind>,
    /// Events before the writes, then after them (Deletion events not included).
    notices: Vec<(EventType, EventReason)>,
    events: Vec<EventReason>,
    /// Replicas per `variant/pool` after the reconcile (every slot of the spec).
    targets: Vec<(&'static str, u32)>,
    /// Deployments deleted.
    deletes: Vec<&'static str>,
    /// Conditions that must be set: (type, status, reason).
    conditions: Vec<(&'static str, &'static str, &'static str)>,
    /// Further checks of this row.
    check: fn(&Plan),
}

fn targets(p: &Plan) -> Vec<(String, u32)> {
    p.targets.iter().map(|(s, r)| (s.key(), *r)).collect()
}

fn replicas_applied(p: &Plan) -> BTreeMap<String, i32> {
    p.apply.iter().map(|d| (d.name_any(), d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1))).collect()
}

fn condition<'a>(p: &'a Plan, t: &str) -> &'a llmos::crd::Condition {
    p.status.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"))
}

fn cases() -> Vec<Case> {
    let wl = workload(1, json!({}));
    let running = |small_l4: u32, ready: u32| {
        vec![
            deployment(&wl, "small", "a100", 0, 0),
            deployment(&wl, "small", "l4", small_l4, ready),
            deployment(&wl, "large", "a100", 0, 0),
        ]
    };
    let invalid = {
        let mut w = workload(1, json!({}));
        w.spec.variants[1].pools = vec!["h100".into()];
        w
    };
    let invalid_reported = {
        let mut w = invalid.clone();
        let first = plan_for(&w, Vec::new(), Tick::None, None);
        w.status = Some(first.status);
        w
    };
    let switch_wl = workload(0, json!({}));
    vec![
        Case {
            name: "invalid spec: Degraded, a Warning, no Deployment written",
            wl: invalid,
            deployments: Vec::new(),
            tick: Tick::Decide(&[("small", "l4", 3)]),
            policy_error: None,
            decision: None,
            notices: vec![(EventType::Warning, EventReason::InvalidSpec)],
            events: vec![],
            targets: vec![],
            deletes: vec![],
            conditions: vec![("Degraded", "True", "InvalidSpec"), ("Ready", "False", "InvalidSpec")],
            check: |p| {
                assert!(p.apply.is_empty() && p.delete.is_empty() && p.service.is_none(), "nothing written");
                assert!(condition(p, "Degraded").message.contains("h100"), "{}", condition(p, "Degraded").message);
                assert!(p.notices[0].note.starts_with("spec not applied, fix: "), "{}", p.notices[0].note);
                assert_eq!(p.requeue_after, Duration::from_secs(300));
                assert_eq!(p.status.observed_generation, Some(2));
            },
        },
        Case {
            name: "invalid spec already reported: no second Warning",
            wl: invalid_reported,
            deployments: Vec::new(),
            tick: Tick::None,
            policy_error: None,
            decision: None,
            notices: vec![],
            events: vec![],
            targets: vec![],
            deletes: vec![],
            conditions: vec![("Degraded", "True", "InvalidSpec")],
            check: |p| assert!(p.apply.is_empty()),
        },
        Case {
            name: "first reconcile: the minimum is placed on the cheapest pool",
            wl: wl.clone(),
            deployments: Vec::new(),
            tick: Tick::Decide(&[("small", "l4", 1)]),
            policy_error: None,
            decision: Some(DecisionKind::Hold),
            notices: vec![],
            events: vec![EventReason::Placed],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec![],
            conditions: vec![
                ("Ready", "False", "ReplicasNotReady"),
                ("Degraded", "False", "AsExpected"),
                ("MetricsAvailable", "True", "MetricsRead"),
                ("PolicyReady", "True", "PolicyBuilt"),
            ],
            check: |p| {
                assert_eq!(p.apply.len(), 3);
                assert!(p.service.is_some());
                assert_eq!(p.events[0].note, "placed 1 replica(s) of small on pool l4 (L4)");
                assert_eq!(p.events[0].action, "Scale small/l4 0->1");
                assert_eq!(p.status.last_action_time, None, "creation is no action");
                // The next tick is on the workload's phase, half to one and a half intervals on.
                assert!(
                    (Duration::from_secs(5)..Duration::from_secs(15)).contains(&p.requeue_after),
                    "a tick ran now: {:?}",
                    p.requeue_after
                );
            },
        },
        Case {
            name: "metrics missing: replicas held, MetricsUnavailable",
            wl: wl.clone(),
            deployments: running(1, 1),
            tick: Tick::Missing,
            policy_error: None,
            decision: Some(DecisionKind::Hold),
            notices: vec![(EventType::Warning, EventReason::MetricsUnavailable)],
            events: vec![],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec![],
            conditions: vec![("MetricsAvailable", "False", "MetricsMissing")],
            check: |p| {
                assert!(condition(p, "MetricsAvailable").message.contains("vllm:num_requests_waiting"));
                assert_eq!(p.notices[0].action, "Hold MetricsMissing");
                assert!(p.notices[0].note.starts_with("holding 1 replicas: missing or stale: "));
                assert!(p.changes.is_empty() && p.status.last_decision.is_none());
            },
        },
        Case {
            name: "metrics missing below the minimum (preempted to zero): raised to the floor, nothing lowered",
            wl: wl.clone(),
            deployments: running(0, 0),
            tick: Tick::Missing,
            policy_error: None,
            decision: Some(DecisionKind::ScaleUp),
            notices: vec![(EventType::Warning, EventReason::MetricsUnavailable)],
            events: vec![EventReason::Placed],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec![],
            conditions: vec![("MetricsAvailable", "False", "MetricsMissing")],
            check: |p| {
                assert!(
                    p.notices[0].note.starts_with("holding 0 replicas, raised to the spec's minimum of 1: "),
                    "{}",
                    p.notices[0].note
                );
                assert!(p.status.last_decision.is_none(), "no policy decision was made");
            },
        },
        Case {
            name: "metrics source unreachable: replicas held, MetricsSourceError",
            wl: wl.clone(),
            deployments: running(1, 1),
            tick: Tick::Unreachable,
            policy_error: None,
            decision: Some(DecisionKind::Hold),
            notices: vec![(EventType::Warning, EventReason::MetricsUnavailable)],
            events: vec![],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec![],
            conditions: vec![("MetricsAvailable", "False", "MetricsSourceError")],
            check: |p| assert!(condition(p, "MetricsAvailable").message.contains("connection refused")),
        },
        Case {
            name: "policy cannot be built: PolicyReady=False, a Warning, hold",
            wl: wl.clone(),
            deployments: running(1, 1),
            tick: Tick::NoPolicy,
            policy_error: Some("cannot load checkpoint /models/dqn.ot"),
            decision: Some(DecisionKind::Hold),
            notices: vec![(EventType::Warning, EventReason::PolicyBuildFailed)],
            events: vec![],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec![],
            conditions: vec![
                ("PolicyReady", "False", "PolicyBuildFailed"),
                ("MetricsAvailable", "True", "MetricsRead"),
            ],
            check: |p| assert_eq!(p.notices[0].note, "holding replicas: cannot load checkpoint /models/dqn.ot"),
        },
        Case {
            name: "shadow mode: the decision is recorded, nothing is scaled",
            wl: workload(1, json!({"policy": {"mode": "shadow"}})),
            deployments: running(1, 1),
            tick: Tick::Decide(&[("small", "l4", 3)]),
            policy_error: None,
            decision: Some(DecisionKind::Shadow),
            notices: vec![(EventType::Normal, EventReason::ShadowDecision)],
            events: vec![],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec![],
            conditions: vec![("MetricsAvailable", "True", "MetricsRead")],
            check: |p| {
                let shadow = p.status.shadow_decision.as_ref().expect("shadowDecision");
                assert!(shadow.targets.iter().any(|t| t.variant == "small" && t.pool == "l4" && t.replicas == 3));
                assert_eq!(shadow.policy, "scripted");
                assert!(p.status.last_decision.is_none() && p.changes.is_empty() && p.shield_applied.is_none());
                assert_eq!(replicas_applied(p)["chat-small-l4"], 1, "the Deployment keeps its replicas");
                assert!(p.notices[0].note.ends_with("not applied (shadow mode)"), "{}", p.notices[0].note);
            },
        },
        Case {
            name: "scale-up: ScaledUp and the new replicas",
            wl: wl.clone(),
            deployments: running(1, 1),
            tick: Tick::Decide(&[("small", "l4", 3)]),
            policy_error: None,
            decision: Some(DecisionKind::ScaleUp),
            notices: vec![],
            events: vec![EventReason::ScaledUp],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 3)],
            deletes: vec![],
            conditions: vec![("Progressing", "True", "Scaling")],
            check: |p| {
                assert_eq!(replicas_applied(p)["chat-small-l4"], 3);
                assert_eq!(p.events[0].action, "Scale small/l4 1->3");
                assert_eq!(p.events[0].note, "small/l4: 1 → 3 replicas (scripted decision)");
                assert_eq!(p.status.desired_replicas, 3);
                assert_eq!(p.status.last_action_time.as_deref(), Some(now().to_string().as_str()));
                let last = p.status.last_decision.as_ref().expect("lastDecision");
                assert_eq!((last.policy.as_str(), last.shielded), ("scripted", false));
                let applied = p.shield_applied.as_ref().expect("the shield records the applied decision");
                assert_eq!(applied.decision.replicas("small", "l4"), Some(3));
            },
        },
        Case {
            name: "scale-down: ScaledDown starts the slot's cooldown",
            wl: wl.clone(),
            deployments: running(3, 3),
            tick: Tick::Decide(&[("small", "l4", 2)]),
            policy_error: None,
            decision: Some(DecisionKind::ScaleDown),
            notices: vec![],
            events: vec![EventReason::ScaledDown],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 2)],
            deletes: vec![],
            conditions: vec![],
            check: |p| {
                assert_eq!(p.status.last_scale_down.get("small/l4"), Some(&now().to_string()));
            },
        },
        Case {
            name: "the shield changes a decision: ShieldOverride, counted",
            wl: workload(1, json!({"limits": {"maxStepChange": 1}})),
            deployments: running(1, 1),
            tick: Tick::Decide(&[("small", "l4", 4)]),
            policy_error: None,
            decision: Some(DecisionKind::ScaleUp),
            notices: vec![(EventType::Normal, EventReason::ShieldOverride)],
            events: vec![EventReason::ScaledUp],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 2)],
            deletes: vec![],
            conditions: vec![],
            check: |p| {
                assert_eq!(p.shield_overrides, vec![ShieldRule::MaxStepChange]);
                assert_eq!(p.status.shield_overrides, 1);
                assert_eq!(p.notices[0].action, "Shield MaxStepChange");
                assert!(p.notices[0].note.contains("MaxStepChange small/l4 4→2"), "{}", p.notices[0].note);
                assert!(p.status.last_decision.as_ref().is_some_and(|d| d.shielded));
            },
        },
        Case {
            // The policy moves one replica from small to large: large starts, and small
            // keeps both of its replicas until large has a ready one.
            name: "variant switch: make-before-break holds the old variant",
            wl: switch_wl.clone(),
            deployments: vec![
                deployment(&switch_wl, "small", "a100", 0, 0),
                deployment(&switch_wl, "small", "l4", 2, 2),
                deployment(&switch_wl, "large", "a100", 0, 0),
            ],
            tick: Tick::Decide(&[("small", "l4", 1), ("large", "a100", 1)]),
            policy_error: None,
            decision: Some(DecisionKind::Switch),
            notices: vec![],
            events: vec![EventReason::Placed, EventReason::VariantSwitched],
            targets: vec![("large/a100", 1), ("small/a100", 0), ("small/l4", 2)],
            deletes: vec![],
            conditions: vec![],
            check: |p| {
                assert_eq!(p.events[1].action, "Start large");
                assert_eq!(
                    p.events[1].note,
                    "switching to large: it starts first; small keep(s) serving, drained as its replicas become ready"
                );
            },
        },
        Case {
            name: "variant switch, new variant ready: the old one drains",
            wl: switch_wl.clone(),
            deployments: vec![
                deployment(&switch_wl, "small", "a100", 0, 0),
                deployment(&switch_wl, "small", "l4", 1, 1),
                deployment(&switch_wl, "large", "a100", 1, 1),
            ],
            tick: Tick::Decide(&[("small", "l4", 0), ("large", "a100", 1)]),
            policy_error: None,
            decision: Some(DecisionKind::ScaleDown),
            notices: vec![],
            events: vec![EventReason::ScaledDown, EventReason::VariantSwitched],
            targets: vec![("large/a100", 1), ("small/a100", 0), ("small/l4", 0)],
            deletes: vec![],
            conditions: vec![],
            check: |p| assert_eq!(p.events[1].note, "drained small; now serving: large"),
        },
        Case {
            name: "a slot left the spec: its Deployment is deleted (between ticks)",
            wl: wl.clone(),
            deployments: {
                let mut d = running(1, 1);
                d.push(stale_deployment(&wl));
                d
            },
            tick: Tick::None,
            policy_error: None,
            decision: None,
            notices: vec![],
            events: vec![],
            targets: vec![("large/a100", 0), ("small/a100", 0), ("small/l4", 1)],
            deletes: vec!["chat-medium-l4"],
            conditions: vec![("Ready", "True", "AllReplicasReady"), ("MetricsAvailable", "Unknown", "NotReadYet")],
            check: |p| {
                let del = &p.delete[0];
                assert_eq!((del.event.reason, del.event.type_), (EventReason::DeploymentDeleted, EventType::Normal));
                assert_eq!(del.event.note, "deleted chat-medium-l4: its variant or pool left the spec");
                assert_eq!(p.apply.len(), 3, "the spec's slots are still applied");
                assert!(
                    (Duration::from_secs(1)..Duration::from_secs(11)).contains(&p.requeue_after),
                    "the next tick, on the workload's phase, at least half an interval after the last 4 s ago: {:?}",
                    p.requeue_after
                );
            },
        },
    ]
}

#[test]
fn plan_table() {
    for c in cases() {
        let p = plan_for(&c.wl, c.deployments, c.tick, c.policy_error);
        let n = c.name;
        assert_eq!(p.decision, c.decision, "{n}: decision");
        let notices: Vec<(EventType, EventReason)> = p.notices.iter().map(|e| (e.type_, e.reason)).collect();
        assert_eq!(notices, c.notices, "{n}: notices");
        let events: Vec<EventReason> = p.events.iter().map(|e| e.reason).collect();
        assert_eq!(events, c.events, "{n}: events");
        assert!(p.events.iter().all(|e| e.type_ == EventType::Normal), "{n}: change events are Normal");
        let want: Vec<(String, u32)> = c.targets.iter().map(|(k, r)| (k.to_string(), *r)).collect();
        assert_eq!(targets(&p), want, "{n}: targets");
        if !p.apply.is_empty() {
            let applied: Vec<(String, i32)> = replicas_applied(&p).into_iter().collect();
            let want: Vec<(String, i32)> =
                c.targets.iter().map(|(k, r)| (format!("chat-{}", k.replace('/', "-")), *r as i32)).collect();
            let mut want = want;
            want.sort();
            assert_eq!(applied, want, "{n}: Deployments applied with the targets");
        }
        let deletes: Vec<&str> = p.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deletes, c.deletes, "{n}: deletions");
        for (t, status, reason) in &c.conditions {
            let got = condition(&p, t);
            assert_eq!((got.status.as_str(), got.reason.as_str()), (*status, *reason), "{n}: condition {t}");
        }
        assert!(p.status.summary.is_some(), "{n}: the status carries its summary");
        (c.check)(&p);
    }
}

#[test]
fn a_policy_warning_becomes_a_warning_event() {
    let wl = workload(1, json!({}));
    let deps = vec![
        deployment(&wl, "small", "a100", 0, 0),
        deployment(&wl, "small", "l4", 1, 1),
        deployment(&wl, "large", "a100", 0, 0),
    ];
    let observed = Observed::new(&wl, deps);
    let mut tick = tick_outcome(&wl, &observed, Tick::Decide(&[("small", "l4", 2)])).expect("a tick");
    tick.decided.as_mut().expect("decided").decision.warnings.push("forecast for small is poor".into());
    let p = plan::plan(&PlanInput {
        workload: &wl,
        observed: &observed,
        now: now(),
        policy_error: None,
        tick: Some(&tick),
        last_tick: None,
        settings: SETTINGS,
        grants: None,
    });
    let ev = p.notices.iter().find(|e| e.reason == EventReason::PolicyWarning).expect("a PolicyWarning notice");
    assert_eq!((ev.type_, ev.note.as_str()), (EventType::Warning, "forecast for small is poor"));
    assert_eq!(targets(&p).iter().find(|(k, _)| k == "small/l4").map(|t| t.1), Some(2), "the decision still applies");
}

#[test]
fn reasons_and_kinds_keep_their_strings() {
    let reasons = [
        (EventReason::InvalidSpec, "InvalidSpec"),
        (EventReason::PolicyBuildFailed, "PolicyBuildFailed"),
        (EventReason::MetricsUnavailable, "MetricsUnavailable"),
        (EventReason::ShadowDecision, "ShadowDecision"),
        (EventReason::ShieldOverride, "ShieldOverride"),
        (EventReason::DeploymentDeleted, "DeploymentDeleted"),
        (EventReason::Placed, "Placed"),
        (EventReason::ScaledUp, "ScaledUp"),
        (EventReason::ScaledDown, "ScaledDown"),
        (EventReason::VariantSwitched, "VariantSwitched"),
        (EventReason::Deleted, "Deleted"),
        (EventReason::PolicyWarning, "PolicyWarning"),
        (EventReason::PolicyStateRestored, "PolicyStateRestored"),
        (EventReason::PolicyStateRejected, "PolicyStateRejected"),
    ];
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operator.md")).expect("operator doc");
    for (r, s) in reasons {
        assert_eq!(r.as_str(), s);
        assert!(doc.contains(&format!("`{s}`")), "docs/operator.md lists the Event reason {s}");
    }
    let kinds = [
        (DecisionKind::Hold, "hold"),
        (DecisionKind::Shadow, "shadow"),
        (DecisionKind::ScaleUp, "scale_up"),
        (DecisionKind::ScaleDown, "scale_down"),
        (DecisionKind::Rebalance, "rebalance"),
        (DecisionKind::Switch, "switch"),
    ];
    for (k, s) in kinds {
        assert_eq!(k.as_str(), s);
        assert!(doc.contains(&format!("`{s}`")), "docs/operator.md lists the decision kind {s}");
    }
}

// ---- The executor against a scripted API server ----

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// The next call the executor makes; checks its method and path, returns its query
/// pairs, content type and JSON body, and the handle to answer it with.
async fn expect_call(
    api: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (BTreeMap<String, String>, String, Value, SendResponse<Response<Body>>) {
    let (req, send) = api.next_request().await.unwrap_or_else(|| panic!("expected {method} {path}; no further call"));
    let (parts, body) = req.into_parts();
    assert_eq!((&parts.method, parts.uri.path()), (&method, path), "the next call");
    let query = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let content_type =
        parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let bytes = body.collect_bytes().await.expect("request body");
    let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
    (query, content_type, json, send)
}

fn answer(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    let body = Body::from(serde_json::to_vec(body).expect("JSON"));
    send.send_response(Response::builder().status(code).body(body).expect("response"));
}

/// Expects a server-side apply of `path` by the `llmos` field manager, answers with the
/// object, and returns what was applied.
async fn expect_apply(api: &mut ApiHandle, path: &str) -> Value {
    let (query, content_type, body, send) = expect_call(api, Method::PATCH, path).await;
    assert_eq!(content_type, "application/apply-patch+yaml", "{path}: server-side apply");
    assert_eq!(query.get("fieldManager").map(String::as_str), Some("llmos"), "{path}: field manager");
    assert_eq!(query.get("force").map(String::as_str), Some("true"), "{path}: forced");
    answer(send, 200, &body);
    body
}

/// Expects an Event to be created in `ml`, answers with it, and returns it.
async fn expect_event(api: &mut ApiHandle) -> Value {
    let (_, _, body, send) = expect_call(api, Method::POST, "/apis/events.k8s.io/v1/namespaces/ml/events").await;
    answer(send, 201, &body);
    body
}

fn context(client: Client) -> Arc<Context> {
    let builder: llmos::controller::PolicyBuilder = Arc::new(|_| Err("no policy in this test".to_string()));
    let source = Arc::new(UnavailableSource { why: "not used".into() });
    Arc::new(Context::new(client, source, builder, ControllerConfig { instance: "test".into(), ..Default::default() }))
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/ml/deployments";

#[tokio::test]
async fn executor_makes_the_calls_of_the_plan_in_order() {
    let wl = workload(1, json!({}));
    // A first reconcile of a workload whose policy cannot be built, that still owns the
    // Deployment of a variant removed from the spec.
    let p = plan_for(&wl, vec![stale_deployment(&wl)], Tick::None, Some("no checkpoint"));
    assert_eq!(p.notices.len(), 1);
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "ml"));

    let server = async {
        let ev = expect_event(&mut api).await;
        assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("PolicyBuildFailed"), Some("Warning")));
        assert_eq!(ev["note"], "holding replicas: no checkpoint");
        assert_eq!(ev["regarding"]["name"], "chat");
        assert_eq!(ev["reportingController"], "llmos");
        for (name, replicas) in [("chat-small-a100", 0), ("chat-small-l4", 1), ("chat-large-a100", 0)] {
            let d = expect_apply(&mut api, &format!("{DEPLOYMENTS}/{name}")).await;
            assert_eq!((d["kind"].as_str(), d["metadata"]["name"].as_str()), (Some("Deployment"), Some(name)));
            assert_eq!(d["spec"]["replicas"], replicas, "{name}: replicas");
            assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "uid-chat");
        }
        let (_, _, body, send) = expect_call(&mut api, Method::DELETE, &format!("{DEPLOYMENTS}/chat-medium-l4")).await;
        assert_eq!(body["propagationPolicy"], "Background");
        answer(send, 200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        let ev = expect_event(&mut api).await;
        assert_eq!(
            (ev["reason"].as_str(), ev["action"].as_str()),
            (Some("DeploymentDeleted"), Some("Delete chat-medium-l4"))
        );
        let svc = expect_apply(&mut api, "/api/v1/namespaces/ml/services/chat").await;
        assert_eq!(svc["spec"]["selector"], json!({"llmos.dev/workload": "chat"}));
        let ev = expect_event(&mut api).await;
        assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("Placed"), Some("Normal")));
        assert_eq!(ev["action"], "Scale small/l4 0->1");
        let path = "/apis/llmos.dev/v1alpha1/namespaces/ml/llmworkloads/chat/status";
        let (_, content_type, body, send) = expect_call(&mut api, Method::PATCH, path).await;
        assert_eq!(content_type, "application/merge-patch+json");
        let st = &body["status"];
        assert_eq!((st["desiredReplicas"].as_u64(), st["observedGeneration"].as_i64()), (Some(1), Some(2)));
        assert!(st["lastDecision"].is_null() && st.as_object().is_some_and(|o| o.contains_key("lastDecision")));
        let policy = st["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "PolicyReady")).cloned();
        assert_eq!(policy.map(|c| c["reason"].clone()), Some(json!("PolicyBuildFailed")));
        assert_eq!(st["summary"]["slots"], "small/a100 0/0, small/l4 0/1, large/a100 0/0");
        answer(send, 200, &serde_json::to_value(&wl).expect("workload JSON"));
    };
    let run = async { tokio::join!(execute(&ctx, &wl, &p), server).0 };
    let action = tokio::time::timeout(Duration::from_secs(30), run).await.expect("the executor finished");
    assert_eq!(action.expect("executed"), Action::requeue(p.requeue_after));
    drop(ctx);
    let more = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await;
    assert!(matches!(more, Ok(None)), "no call after the status write");
}

#[tokio::test]
async fn executor_stops_at_the_first_failed_write() {
    let wl = workload(1, json!({}));
    let p = plan_for(&wl, Vec::new(), Tick::None, None);
    assert!(p.notices.is_empty());
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "ml"));
    let server = async {
        let (_, _, _, send) = expect_call(&mut api, Method::PATCH, &format!("{DEPLOYMENTS}/chat-small-a100")).await;
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                            "message": "deployments is forbidden", "code": 403});
        answer(send, 403, &status);
    };
    let run = async { tokio::join!(execute(&ctx, &wl, &p), server).0 };
    let err = tokio::time::timeout(Duration::from_secs(30), run).await.expect("finished").expect_err("a failed write");
    assert_eq!(err.metric_label(), "KubeApi");
    assert!(err.to_string().contains("applying Deployment ml/chat-small-a100"), "{err}");
    drop(ctx);
    let more = tokio::time::timeout(Duration::from_secs(5), api.next_request()).await;
    assert!(matches!(more, Ok(None)), "nothing written after the failure");
}

/// Ticks keep to each workload's phase of the interval: exactly one interval apart once on
/// it, not moved by a late tick, and a thousand workloads that tick at one instant (an
/// operator start) spread over the interval instead of ticking together again.
#[test]
fn ticks_spread_over_the_interval_and_keep_their_phase() {
    let base = workload(1, json!({}));
    let at = |ms: i64| Timestamp::from_millisecond(ms).unwrap();
    let t0 = now().as_millisecond();
    let first = plan::next_tick(&base, now());
    let gap = first.as_millisecond() - t0;
    assert!((5_000..15_000).contains(&gap), "first tick {gap} ms after the last");
    let second = plan::next_tick(&base, first);
    assert_eq!(second.as_millisecond() - first.as_millisecond(), 10_000, "once on its phase, every interval");
    let late = plan::next_tick(&base, at(first.as_millisecond() + 3_000));
    assert_eq!(late, second, "a tick 3 s late does not move the next one");
    assert!(
        plan::tick_due(&base, second, Some(first))
            && !plan::tick_due(&base, at(second.as_millisecond() - 1), Some(first))
    );
    // 1,000 workloads whose last tick was the same instant.
    let mut per_second = [0u32; 10];
    for i in 0..1000 {
        let mut wl = base.clone();
        wl.metadata.uid = Some(format!("7f3c2a10-0000-4000-8000-{i:012}"));
        let next = plan::next_tick(&wl, now());
        assert_eq!(plan::next_tick(&wl, now()), next, "the phase is stable");
        per_second[(next.as_millisecond().rem_euclid(10_000) / 1_000) as usize] += 1;
    }
    let busiest = *per_second.iter().max().unwrap();
    assert!(busiest <= 150, "ticks per second of the interval: {per_second:?}");
}
