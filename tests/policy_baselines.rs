//! Each baseline follows its published definition on small hand-built observations.

use std::collections::BTreeMap;

use llmos::crd::{GpuPoolSpec, LLMWorkloadSpec, VariantSpec};
use llmos::policy::build::build_policy;
use llmos::policy::config::{
    HpaParams, KpaParams, PlacementKind, PolicyKind, PolicySpec, QueueParams, RayParams, VariantSelection,
};
use llmos::policy::hpa::HpaScaler;
use llmos::policy::kpa::KpaScaler;
use llmos::policy::placement::{Placement, WorkloadInfo};
use llmos::policy::queue::QueueScaler;
use llmos::policy::ray::RayScaler;
use llmos::policy::scaled::{Scaler, UnitMetrics};
use llmos::policy::{Decision, Observation, PoolObservation, SlotObservation};

/// Metrics of a unit with `current` replicas, all ready, and `ongoing` running requests.
fn m(t: f64, current: u32, ongoing: f64) -> UnitMetrics {
    UnitMetrics {
        time_s: t,
        current_replicas: current,
        ready_replicas: current,
        running_requests: ongoing,
        arrival_rate_rps: 1.0,
        ..Default::default()
    }
}

// ---------------- HPA ----------------

#[test]
fn hpa_holds_within_tolerance() {
    let mut hpa = HpaScaler::new(HpaParams::default()); // target 16 ongoing per replica, 10 %
                                                        // 4 replicas × 16 = 64 at target; ±10 % keeps 4.
    assert_eq!(hpa.recommend(&m(0.0, 4, 70.0)), 4);
    assert_eq!(hpa.recommend(&m(15.0, 4, 58.0)), 4);
    // 20 % over: ceil(4 × 1.2) = 5.
    assert_eq!(hpa.recommend(&m(30.0, 4, 76.8)), 5);
}

#[test]
fn hpa_waits_out_its_stabilisation_window_before_scaling_down() {
    let mut hpa = HpaScaler::new(HpaParams::default()); // window 300 s
    assert_eq!(hpa.recommend(&m(0.0, 8, 128.0)), 8);
    // Load drops to a quarter: raw recommendation 2, but the window still holds 8.
    let mut t = 15.0;
    while t < 300.0 {
        assert_eq!(hpa.recommend(&m(t, 8, 32.0)), 8, "scaled down at t={t} inside the window");
        t += 15.0;
    }
    // The sample of 8 at t=0 has left the 300 s window at t=315.
    assert_eq!(hpa.recommend(&m(315.0, 8, 32.0)), 2);
}

#[test]
fn hpa_keeps_its_stabilisation_window_across_a_restart() {
    // A leader saw 8 replicas' worth of load at t=0 and a quarter of it at t=15.
    let mut old = HpaScaler::new(HpaParams::default()); // window 300 s
    assert_eq!(old.recommend(&m(0.0, 8, 128.0)), 8);
    assert_eq!(old.recommend(&m(15.0, 8, 32.0)), 8);
    let state = old.export_state().expect("the HPA has a state");
    // A new leader with that state keeps the window, and, as the Kubernetes controller does
    // on its first sync, records the count it finds: it holds 8 for a window from then.
    let mut restored = HpaScaler::new(HpaParams::default());
    restored.import_state(state.clone()).expect("state restored");
    assert_eq!(restored.recommend(&m(30.0, 8, 32.0)), 8, "the restored window holds 8");
    assert_eq!(restored.recommend(&m(315.0, 8, 32.0)), 8, "the count found at t=30 is in the window");
    assert_eq!(restored.recommend(&m(331.0, 8, 32.0)), 2, "and lets go when the window has passed");
    // Without a state the first tick holds what it found all the same.
    let mut fresh = HpaScaler::new(HpaParams::default());
    assert_eq!(fresh.recommend(&m(30.0, 8, 32.0)), 8, "a fresh HPA holds what it found");
    assert_eq!(fresh.recommend(&m(331.0, 8, 32.0)), 2, "for one window");
    // The scale-up period is what only the saved state carries: a leader scaled 2 -> 6 at
    // t=0 (+4, the most in 15 s); a new leader at t=5 with the state may not add more
    // within the period, one without it may double again.
    let mut up = HpaScaler::new(HpaParams::default());
    assert_eq!(up.recommend(&m(0.0, 2, 640.0)), 6);
    let up_state = up.export_state().expect("state");
    let mut restored_up = HpaScaler::new(HpaParams::default());
    restored_up.import_state(up_state).expect("state restored");
    assert_eq!(restored_up.recommend(&m(5.0, 6, 640.0)), 6, "the saved scale-up counts in the period");
    let mut fresh_up = HpaScaler::new(HpaParams::default());
    assert_eq!(fresh_up.recommend(&m(5.0, 6, 640.0)), 12, "without it the period starts again");
    // Bad states are refused with the field, and the scaler keeps its own.
    for (bad, says) in [
        (serde_json::json!({"recommendations": [[-1.0, 3]]}), "recommendations[0]"),
        (serde_json::json!({"recommendations": [[10.0, 3], [5.0, 4]]}), "must not decrease"),
        (serde_json::json!({"scaleUps": "x"}), "scaleUps"),
    ] {
        let e = restored.import_state(bad).unwrap_err();
        assert!(e.contains(says), "{e}");
    }
    // Through the policy: the workload's HPA exports its units and a rebuilt one imports them.
    let spec = spec(vec![variant("small", 1, 0.0, 8)], vec![pool("l4", 1.0, None)]);
    let mut spec = spec;
    spec.policy = PolicySpec { kind: PolicyKind::Hpa, ..Default::default() };
    let mut p = build_policy(&spec).expect("hpa");
    assert!(p.export_state().is_none(), "no unit yet, no state");
    let mut rebuilt = build_policy(&spec).expect("hpa");
    let wrapped = serde_json::json!({"units": {"small": state}});
    rebuilt.import_state(wrapped).expect("policy state restored");
    assert!(rebuilt.export_state().is_some_and(|v| v["units"]["small"]["recommendations"].as_array().is_some()));
    let e = p.import_state(serde_json::json!({"units": {"small": {"scaleUps": 5}}})).unwrap_err();
    assert!(e.to_string().contains("units.small: scaleUps"), "{e}");
}

#[test]
fn hpa_scale_up_is_rate_limited() {
    let mut hpa = HpaScaler::new(HpaParams::default()); // max(+100 %, +4) per 15 s
                                                        // 2 replicas under 20× the target load: raw 40, limit max(4, 2 + 4) = 6.
    assert_eq!(hpa.recommend(&m(0.0, 2, 640.0)), 6);
    // 5 s later, same period: already +4 from 2, so still at most 6.
    let mut mm = m(5.0, 6, 640.0);
    mm.ready_replicas = 6;
    assert_eq!(hpa.recommend(&mm), 6);
    // Next period: from 6, max(12, 10) = 12.
    assert_eq!(hpa.recommend(&m(15.0, 6, 640.0)), 12);
}

#[test]
fn hpa_counts_starting_replicas_as_idle_on_scale_up() {
    let mut hpa = HpaScaler::new(HpaParams::default());
    // 2 ready at 24 ongoing each (ratio 1.5), 2 more starting: over 4 replicas the ratio is
    // 0.75, which does not ask for more, so no scale-up.
    let mut mm = m(0.0, 4, 48.0);
    mm.ready_replicas = 2;
    mm.starting_replicas = 2;
    assert_eq!(hpa.recommend(&mm), 4);
}

#[test]
fn hpa_with_no_ready_replica_holds_or_starts_one() {
    let mut hpa = HpaScaler::new(HpaParams::default());
    let mut mm = m(0.0, 0, 0.0);
    mm.arrival_rate_rps = 2.0;
    assert_eq!(hpa.recommend(&mm), 1);
    let mut mm = m(15.0, 3, 0.0);
    mm.ready_replicas = 0;
    mm.starting_replicas = 3;
    assert_eq!(hpa.recommend(&mm), 3);
}

// ---------------- KPA ----------------

fn kpa() -> KpaScaler {
    // target 10 × 1.0 = 10 concurrent per replica, 60 s stable, 6 s panic window.
    KpaScaler::new(KpaParams { container_concurrency_target: 10.0, target_utilization: 1.0, ..KpaParams::default() })
}

#[test]
fn kpa_enters_panic_on_a_load_step_and_does_not_scale_down_in_panic() {
    let mut k = kpa();
    let mut t = 0.0;
    for _ in 0..30 {
        assert_eq!(k.recommend(&m(t, 2, 20.0)), 2);
        t += 2.0;
    }
    assert!(!k.in_panic());
    // Step to 200 concurrent: the 6 s panic window (samples at t-6..t) averages
    // (3 × 20 + 200) / 4 = 65, i.e. 7 replicas wanted ≥ 2 × 2 ready: panic, while the 60 s
    // stable mean barely moves.
    let d = k.recommend(&m(t, 2, 200.0));
    assert!(k.in_panic());
    assert_eq!(d, 7);
    // The burst ends; in panic the count does not go down.
    t += 2.0;
    for _ in 0..20 {
        let d = k.recommend(&m(t, 7, 10.0));
        assert!(k.in_panic());
        assert_eq!(d, 7, "scaled down in panic at t={t}");
        t += 2.0;
    }
    // 60 s after the last panic condition, panic ends and the stable window rules.
    for _ in 0..20 {
        k.recommend(&m(t, 7, 10.0));
        t += 2.0;
    }
    assert!(!k.in_panic());
}

#[test]
fn kpa_scales_down_at_most_by_half_per_step() {
    let mut k = kpa();
    let mut t = 0.0;
    for _ in 0..40 {
        k.recommend(&m(t, 16, 160.0));
        t += 2.0;
    }
    // Load vanishes; after the stable window drains, at most halving each tick.
    let mut current = 16;
    let mut seen = vec![];
    for _ in 0..60 {
        let d = k.recommend(&m(t, current, 0.0));
        assert!(d * 2 >= current, "{current} -> {d} more than halves");
        seen.push(d);
        current = d;
        t += 2.0;
    }
    assert_eq!(current, 1, "{seen:?}");
}

// ---------------- queue (KEDA-style) ----------------

fn queue_m(t: f64, current: u32, waiting: f64, rate: f64) -> UnitMetrics {
    UnitMetrics {
        time_s: t,
        current_replicas: current,
        ready_replicas: current,
        waiting_requests: waiting,
        arrival_rate_rps: rate,
        ..Default::default()
    }
}

#[test]
fn queue_scales_up_at_once_and_respects_its_cooldown() {
    let p = QueueParams {
        queue_length_per_replica: 4.0,
        polling_interval_seconds: 15,
        cooldown_seconds: 120,
        allow_scale_to_zero: false,
    };
    let mut q = QueueScaler::new(p);
    assert_eq!(q.recommend(&queue_m(0.0, 2, 20.0, 5.0)), 5); // ceil(20 / 4)
                                                             // Queue drains: no scale-down until 120 s after the last active poll.
    let mut t = 15.0;
    while t < 120.0 {
        assert_eq!(q.recommend(&queue_m(t, 5, 0.0, 5.0)), 5, "scaled down at t={t} during cooldown");
        t += 15.0;
    }
    assert_eq!(q.recommend(&queue_m(120.0, 5, 0.0, 5.0)), 1, "floor is 1 without scale to zero");
}

#[test]
fn queue_polls_only_on_its_interval() {
    let p = QueueParams {
        queue_length_per_replica: 1.0,
        polling_interval_seconds: 30,
        cooldown_seconds: 0,
        allow_scale_to_zero: false,
    };
    let mut q = QueueScaler::new(p);
    assert_eq!(q.recommend(&queue_m(0.0, 1, 3.0, 1.0)), 3);
    // 15 s later a large queue is not seen until the next poll at 30 s.
    assert_eq!(q.recommend(&queue_m(15.0, 3, 10.0, 1.0)), 3);
    assert_eq!(q.recommend(&queue_m(30.0, 3, 10.0, 1.0)), 10);
}

#[test]
fn queue_scales_to_zero_only_when_allowed() {
    for allow in [false, true] {
        let p = QueueParams {
            queue_length_per_replica: 4.0,
            polling_interval_seconds: 10,
            cooldown_seconds: 60,
            allow_scale_to_zero: allow,
        };
        let mut q = QueueScaler::new(p);
        let mut last = q.recommend(&queue_m(0.0, 2, 0.0, 0.0));
        let mut t = 10.0;
        while t <= 120.0 {
            last = q.recommend(&queue_m(t, last, 0.0, 0.0));
            t += 10.0;
        }
        assert_eq!(last, if allow { 0 } else { 1 });
        if allow {
            // A request arrives: activation from zero.
            assert_eq!(q.recommend(&queue_m(t, 0, 1.0, 0.5)), 1);
        }
    }
}

// ---------------- Ray Serve style ----------------

#[test]
fn ray_waits_its_upscale_and_downscale_delays() {
    let mut r = RayScaler::new(RayParams {
        target_ongoing_requests: 10.0,
        upscale_delay_seconds: 30,
        downscale_delay_seconds: 120,
    });
    assert_eq!(r.recommend(&m(0.0, 2, 60.0)), 2); // wants 6, waits
    assert_eq!(r.recommend(&m(15.0, 2, 60.0)), 2);
    assert_eq!(r.recommend(&m(30.0, 2, 60.0)), 6); // need persisted 30 s
                                                   // A dip resets the timer.
    assert_eq!(r.recommend(&m(45.0, 6, 10.0)), 6);
    assert_eq!(r.recommend(&m(60.0, 6, 60.0)), 6);
    let mut t = 75.0;
    while t < 75.0 + 120.0 {
        assert_eq!(r.recommend(&m(t, 6, 10.0)), 6, "scaled down early at t={t}");
        t += 15.0;
    }
    assert_eq!(r.recommend(&m(t, 6, 10.0)), 1);
}

// ---------------- placement and variant selection ----------------

fn variant(name: &str, gpus: u32, quality: f64, max: u32) -> VariantSpec {
    VariantSpec {
        name: name.into(),
        model: "m".into(),
        image: "i".into(),
        args: vec![],
        port: 8000,
        gpus_per_replica: gpus,
        quality: Some(quality),
        pools: vec![],
        min_replicas: 0,
        max_replicas: max,
        cold_start_seconds: None,
    }
}

fn pool(name: &str, price: f64, cap: Option<u32>) -> GpuPoolSpec {
    GpuPoolSpec {
        name: name.into(),
        gpu_type: "A100".into(),
        node_selector: BTreeMap::new(),
        tolerations: vec![],
        price_per_gpu_hour: price,
        capacity_gpus: cap,
    }
}

fn spec(variants: Vec<VariantSpec>, pools: Vec<GpuPoolSpec>) -> LLMWorkloadSpec {
    LLMWorkloadSpec {
        variants,
        gpu_pools: pools,
        pool_refs: vec![],
        scheduling: Default::default(),
        learning: Default::default(),
        slo: Default::default(),
        limits: Default::default(),
        metrics: Default::default(),
        policy: Default::default(),
    }
}

fn obs_with_free(free: &[(&str, Option<u32>)]) -> Observation {
    Observation {
        pools: free
            .iter()
            .map(|&(n, f)| PoolObservation { name: n.into(), free_gpus: f, price_per_gpu_hour_usd: 0.0 })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn placement_prefers_the_cheap_pool_with_free_gpus() {
    let s = spec(vec![variant("v", 1, 0.5, 16)], vec![pool("dear", 4.0, None), pool("cheap", 1.0, Some(3))]);
    let info = WorkloadInfo::from_spec(&s);
    let p = Placement::new(PlacementKind::Cheapest, VariantSelection::Fixed);
    let o = obs_with_free(&[("dear", None), ("cheap", Some(3))]);
    let mut free = llmos::policy::placement::free_gpus(&info, &o);
    let mut d = Decision::default();
    p.place(&info, &o, 0, 5, &mut free, &mut d);
    assert_eq!(d.replicas("v", "cheap"), Some(3));
    assert_eq!(d.replicas("v", "dear"), Some(2));
}

#[test]
fn placement_scales_down_the_expensive_pool_first_and_spread_splits_evenly() {
    let s = spec(vec![variant("v", 1, 0.5, 16)], vec![pool("dear", 4.0, None), pool("cheap", 1.0, None)]);
    let info = WorkloadInfo::from_spec(&s);
    let mut o = obs_with_free(&[("dear", None), ("cheap", None)]);
    for (p, n) in [("dear", 3), ("cheap", 3)] {
        o.slots.push(SlotObservation {
            variant: "v".into(),
            pool: p.into(),
            desired_replicas: n,
            ready_replicas: n,
            gpus_per_replica: 1,
            ..Default::default()
        });
    }
    let mut d = Decision::default();
    let mut free = vec![None, None];
    Placement::new(PlacementKind::Cheapest, VariantSelection::Fixed).place(&info, &o, 0, 4, &mut free, &mut d);
    assert_eq!((d.replicas("v", "dear"), d.replicas("v", "cheap")), (Some(1), Some(3)));
    let mut d = Decision::default();
    Placement::new(PlacementKind::Spread, VariantSelection::Fixed).place(&info, &o, 0, 5, &mut free, &mut d);
    assert_eq!((d.replicas("v", "dear"), d.replicas("v", "cheap")), (Some(2), Some(3)));
}

#[test]
fn quality_first_takes_the_best_variant_that_fits_the_budget() {
    let mut s = spec(vec![variant("small", 1, 0.6, 16), variant("big", 4, 0.9, 16)], vec![pool("a", 2.0, None)]);
    s.limits.max_cost_per_hour = Some(40.0);
    let info = WorkloadInfo::from_spec(&s);
    let mut p = Placement::new(PlacementKind::Cheapest, VariantSelection::QualityFirst);
    let o = Observation::default();
    // 4 replicas of big cost 4 × 4 × 2 = 32 ≤ 40; 6 cost 48 > 40.
    assert_eq!(p.select_variant(&info, &o, 4), Some(1));
    assert_eq!(p.select_variant(&info, &o, 6), Some(0));
}

#[test]
fn cost_first_moves_up_only_when_the_cheap_variant_is_stuck() {
    let s = spec(vec![variant("big", 4, 0.9, 16), variant("small", 1, 0.6, 4)], vec![pool("a", 2.0, None)]);
    let info = WorkloadInfo::from_spec(&s);
    let mut p = Placement::new(PlacementKind::Cheapest, VariantSelection::CostFirst);
    let mut o = Observation { slo_attainment: Some(0.5), ..Default::default() };
    // Missing the SLO but small is not at its max: stay on small.
    assert_eq!(p.select_variant(&info, &o, 2), Some(1));
    // At its max and still missing: switch to big.
    o.time_s = 10.0;
    assert_eq!(p.select_variant(&info, &o, 4), Some(0));
    // Meeting the SLO and the fleet would fit small again, but within the dwell time: stay.
    o.slo_attainment = Some(0.99);
    o.time_s = 100.0;
    assert_eq!(p.select_variant(&info, &o, 2), Some(0));
    o.time_s = 400.0;
    assert_eq!(p.select_variant(&info, &o, 2), Some(1));
}

// ---------------- built policies ----------------

#[test]
fn built_policies_hold_when_metrics_are_missing_and_scale_per_variant() {
    let mut s = spec(vec![variant("v", 1, 0.5, 16)], vec![pool("a", 1.0, None)]);
    s.policy = PolicySpec { kind: PolicyKind::Hpa, ..PolicySpec::default() };
    let mut p = build_policy(&s).unwrap();
    let mut o = Observation {
        arrival_rate_rps: 5.0,
        slots: vec![SlotObservation {
            variant: "v".into(),
            pool: "a".into(),
            desired_replicas: 2,
            ready_replicas: 2,
            running_requests: 96.0,
            gpus_per_replica: 1,
            ..Default::default()
        }],
        pools: vec![PoolObservation { name: "a".into(), free_gpus: None, price_per_gpu_hour_usd: 1.0 }],
        ..Default::default()
    };
    assert_eq!(p.decide(&o).replicas("v", "a"), Some(6)); // ceil(96/16)
    o.missing = vec!["vllm:num_requests_running".into()];
    o.time_s = 15.0;
    assert_eq!(p.decide(&o).replicas("v", "a"), Some(2));
    s.policy.kind = PolicyKind::Dqn;
    let e = build_policy(&s).err().unwrap().to_string();
    assert!(e.contains("dqn"), "{e}");
}
