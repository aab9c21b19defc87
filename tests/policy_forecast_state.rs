//! Inputs a policy must survive. A saved forecast state is input a person can edit (a
//! ConfigMap): whatever it holds, the planner either refuses it with an error or takes it
//! and keeps deciding, never panics, and never asks for more replicas than placement
//! allows (property test over mutations of a real exported state: numbers replaced by
//! extreme values, arrays cut). Absurd metric samples give bounded decisions at once.
//! (Before `placement::MAX_PLACED_REPLICAS`, an edited state forecasting 1e300 req/s made
//! placement loop over billions of replicas: this test hung.)

use proptest::prelude::*;
use serde_json::Value;

use llmos::crd::LLMWorkloadSpec;
use llmos::policy::config::ForecastParams;
use llmos::policy::forecast::ForecastPolicy;
use llmos::policy::placement::Placement;
use llmos::policy::{Observation, Policy, SlotObservation};

fn spec() -> LLMWorkloadSpec {
    serde_json::from_value(serde_json::json!({
        "variants": [{ "name": "v", "model": "m", "image": "i", "maxReplicas": 50 }],
        "gpuPools": [{ "name": "p", "gpuType": "A100-80GB", "pricePerGpuHour": 1.0 }],
        "slo": { "ttftMs": 2000.0, "tpotMs": 100.0 },
        "policy": { "kind": "forecast" }
    }))
    .expect("spec")
}

fn planner() -> ForecastPolicy {
    let spec = spec();
    let params = ForecastParams { season_seconds: 3600.0, season_bins: 24, ..Default::default() };
    ForecastPolicy::new(params, &spec, Placement::new(spec.policy.placement, spec.policy.variant_selection))
}

fn obs(t: f64, rate: f64) -> Observation {
    Observation {
        time_s: t,
        window_s: 60.0,
        arrival_rate_rps: rate,
        slots: vec![SlotObservation {
            variant: "v".into(),
            pool: "p".into(),
            ready_replicas: 2,
            desired_replicas: 2,
            gpus_per_replica: 1,
            arrival_rate_rps: rate,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A state exported after a season and a half of a varying rate.
fn exported() -> Value {
    let mut p = planner();
    for i in 0..400 {
        let t = i as f64 * 15.0;
        p.decide(&obs(t, 5.0 + 4.0 * (t / 600.0).sin()));
    }
    p.export_state().expect("exported")
}

/// Every numeric leaf and every array of `v`, as JSON pointers.
fn leaves(v: &Value, path: String, nums: &mut Vec<String>, arrays: &mut Vec<String>) {
    match v {
        Value::Number(_) => nums.push(path),
        Value::Array(a) => {
            arrays.push(path.clone());
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{path}/{i}"), nums, arrays);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                leaves(x, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), nums, arrays);
            }
        }
        _ => {}
    }
}

const EXTREMES: [f64; 9] = [0.0, -1.0, 1e-300, 1e300, -1e300, 4294967296.0, 1e12, -0.5, 7.25];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn an_edited_state_is_refused_or_used_without_panicking(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0..EXTREMES.len()), 1..6),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), 0usize..3), 0..3),
    ) {
        let base = exported();
        let (mut nums, mut arrays) = (Vec::new(), Vec::new());
        leaves(&base, String::new(), &mut nums, &mut arrays);
        let mut state = base.clone();
        for (i, e) in &edits {
            let p = &nums[i.index(nums.len())];
            if let Some(x) = state.pointer_mut(p) {
                *x = serde_json::json!(EXTREMES[*e]);
            }
        }
        for (i, keep) in &cuts {
            let p = &arrays[i.index(arrays.len())];
            if let Some(Value::Array(a)) = state.pointer_mut(p) {
                a.truncate(*keep);
            }
        }
        let mut p = planner();
        match p.import_state(state) {
            Err(e) => prop_assert!(e.to_string().contains("policy state of `forecast` rejected"), "{e}"),
            Ok(()) => {
                for k in 0..40 {
                    let d = p.decide(&obs(6000.0 + 15.0 * k as f64, 6.0));
                    let n = d.replicas("v", "p").unwrap_or(0);
                    prop_assert!((1..=llmos::policy::placement::MAX_PLACED_REPLICAS).contains(&n), "{n} replicas: {}", d.reason);
                }
            }
        }
    }
}

/// Absurd metric samples (a rate and a queue of 1e12) do not stall a policy: every
/// built-in kind decides at once and asks for at most what any spec could allow.
#[test]
fn absurd_metrics_give_bounded_decisions_at_once() {
    let spec = spec();
    let registry = llmos::policy::Registry::builtin();
    let mut o = obs(100.0, 1e12);
    o.slots[0].waiting_requests = 1e12;
    o.slots[0].running_requests = 1e12;
    for name in ["hpa", "kpa", "queue", "ray", "forecast"] {
        let choice = registry.parse(name, &spec.policy).expect("a built-in name");
        let mut p = choice.build(&llmos::policy::registry::BuildContext::of_spec(&spec, name)).expect("builds");
        for k in 0..3 {
            o.time_s = 100.0 + 15.0 * k as f64;
            let d = p.decide(&o);
            let n = d.replicas("v", "p").unwrap_or(0);
            assert!(n <= llmos::policy::placement::MAX_PLACED_REPLICAS, "{name}: {n} replicas ({})", d.reason);
        }
    }
}
