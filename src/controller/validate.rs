//! Semantic checks of an LLMWorkload spec that the CRD schema cannot express on a
//! Kubernetes 1.20 API server (no CEL there): references between fields, uniqueness,
//! `min ≤ max` (all from [`crate::policy::shield::validate_spec`]), plus what only the
//! controller cares about: names that must fit Kubernetes' 63-character limits and a
//! policy section whose parameters do not fit its kind ([`crate::policy::build::validate_policy_spec`]). It checks the
//! spec as written: `poolRefs` count as pools (slot names unique over `gpuPools` and
//! `poolRefs`, each a DNS label of at most 20 characters); whether their GPUPools exist is
//! [`crate::crd::pool::resolve_pools`]'s to say. Each problem names the field and says what to fix;
//! the controller turns them into a `Degraded` condition and a Warning Event and changes
//! no Deployment.

use crate::crd::LLMWorkloadSpec;
pub use crate::policy::shield::SpecProblem;

use super::desired::{deployment_name, Slot};

/// Checks `spec` of the workload `name`; an empty list means it can be reconciled.
pub fn validate_spec(name: &str, spec: &LLMWorkloadSpec) -> Vec<SpecProblem> {
    let mut out = crate::policy::shield::validate_spec(spec);
    let mut p = |field: String, message: String| out.push(SpecProblem { field, message });
    if name.len() > 63 {
        p(
            "metadata.name".into(),
            "the workload name must be at most 63 characters (it is used as a label value)".into(),
        );
    }
    // Every slot, over inline pools and poolRefs alike (`slots` sees inline pools only
    // until the poolRefs are resolved).
    let all_slots = spec.variants.iter().flat_map(|v| spec.pool_names_of(v).into_iter().map(|p| Slot::new(&v.name, p)));
    for slot in all_slots {
        let dn = deployment_name(name, &slot);
        if dn.len() > 63 {
            p(
                "metadata.name".into(),
                format!("Deployment name {dn:?} would be {} characters, more than 63; shorten the workload, variant or pool name", dn.len()),
            );
        }
    }
    if let Err(e) = crate::policy::build::validate_policy_spec(&spec.policy) {
        p("spec.policy".into(), e.to_string());
    }
    for (field, message) in spec.learning.record.problems() {
        p(format!("spec.learning.record.{field}"), message);
    }
    for (field, message) in spec.learning.promotion.problems() {
        p(format!("spec.learning.promotion.{field}"), message);
    }
    for (field, message) in spec.learning.retrain.problems() {
        p(format!("spec.learning.retrain.{field}"), message);
    }
    let retrain = &spec.learning.retrain;
    if retrain.enabled && retrain.min_recorded_seconds > 0 && !spec.learning.record.enabled {
        p(
            "spec.learning.retrain.minRecordedSeconds".into(),
            format!(
                "{} s of recorded traffic are asked for, but spec.learning.record is not enabled: enable it, or set 0",
                retrain.min_recorded_seconds
            ),
        );
    }
    out
}

/// One line that lists every problem, for a condition message or an Event note.
pub fn summary(problems: &[SpecProblem]) -> String {
    let mut s = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ");
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{GpuPoolSpec, VariantSpec};

    fn spec() -> LLMWorkloadSpec {
        serde_json::from_value(serde_json::json!({
            "variants": [{"name": "small", "model": "m", "image": "i", "pools": ["a100"]}],
            "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
        }))
        .expect("valid spec")
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        assert!(validate_spec("w", &spec()).is_empty());
    }

    fn with_record(record: serde_json::Value) -> LLMWorkloadSpec {
        let mut s = serde_json::to_value(spec()).expect("spec serialises");
        s["learning"] = serde_json::json!({ "record": record });
        serde_json::from_value(s).expect("spec with learning.record")
    }

    #[test]
    fn record_section_out_of_bounds_names_the_field() {
        let ok = with_record(serde_json::json!({"enabled": true, "windowSeconds": 10}));
        assert!(validate_spec("w", &ok).is_empty(), "{:?}", validate_spec("w", &ok));
        assert_eq!(ok.learning.record.max_bytes, 128 << 20, "defaults fill the rest");
        let cases = [
            (serde_json::json!({"enabled": true, "windowSeconds": 1}), "spec.learning.record.windowSeconds", "5..="),
            (serde_json::json!({"windowSeconds": 100000}), "spec.learning.record.windowSeconds", "86400"),
            (serde_json::json!({"maxBytes": 1000}), "spec.learning.record.maxBytes", "65536"),
            (serde_json::json!({"retentionSeconds": 60}), "spec.learning.record.retentionSeconds", "one hour"),
            (
                serde_json::json!({"windowSeconds": 7200, "retentionSeconds": 3600}),
                "spec.learning.record.retentionSeconds",
                "shorter than one window",
            ),
        ];
        for (record, field, says) in cases {
            let p = validate_spec("w", &with_record(record.clone()));
            assert_eq!(p.len(), 1, "{record}: {p:?}");
            assert_eq!(p[0].field, field, "{record}");
            assert!(p[0].message.contains(says), "{record}: {}", p[0]);
        }
        let typo = serde_json::json!({"learning": {"record": {"windowSecs": 10}}});
        let mut s = serde_json::to_value(spec()).expect("spec serialises");
        s["learning"] = typo["learning"].clone();
        let err = serde_json::from_value::<LLMWorkloadSpec>(s).expect_err("unknown field");
        assert!(err.to_string().contains("windowSecs"), "{err}");
    }

    fn with_promotion(promotion: serde_json::Value) -> LLMWorkloadSpec {
        let mut s = serde_json::to_value(spec()).expect("spec serialises");
        s["learning"] = serde_json::json!({ "promotion": promotion });
        serde_json::from_value(s).expect("spec with learning.promotion")
    }

    #[test]
    fn promotion_section_out_of_bounds_names_the_field() {
        let ok = with_promotion(
            serde_json::json!({"enabled": true, "shadowSeconds": 30, "rollbackWindowSeconds": 300, "watchSeconds": 600}),
        );
        assert!(validate_spec("w", &ok).is_empty(), "{:?}", validate_spec("w", &ok));
        assert_eq!(ok.learning.promotion.min_seeds, 3, "defaults fill the rest");
        let cases = [
            (serde_json::json!({"margin": -0.1}), "spec.learning.promotion.margin", "at least 0"),
            (serde_json::json!({"minSeeds": 1}), "spec.learning.promotion.minSeeds", "two seeds"),
            (serde_json::json!({"shadowSeconds": 0}), "spec.learning.promotion.shadowSeconds", "1..="),
            (
                serde_json::json!({"minShadowDecisions": 2000000}),
                "spec.learning.promotion.minShadowDecisions",
                "1000000",
            ),
            (
                serde_json::json!({"maxShieldOverrideFraction": 1.5}),
                "spec.learning.promotion.maxShieldOverrideFraction",
                "fraction",
            ),
            (serde_json::json!({"rollbackMargin": -0.01}), "spec.learning.promotion.rollbackMargin", "fraction"),
            (serde_json::json!({"rollbackWindowSeconds": 0}), "spec.learning.promotion.rollbackWindowSeconds", "1..="),
            (
                serde_json::json!({"rollbackWindowSeconds": 600, "watchSeconds": 60}),
                "spec.learning.promotion.watchSeconds",
                "shorter than rollbackWindowSeconds",
            ),
        ];
        for (promotion, field, says) in cases {
            let p = validate_spec("w", &with_promotion(promotion.clone()));
            assert_eq!(p.len(), 1, "{promotion}: {p:?}");
            assert_eq!(p[0].field, field, "{promotion}");
            assert!(p[0].message.contains(says), "{promotion}: {}", p[0]);
        }
        let mut s = serde_json::to_value(spec()).expect("spec serialises");
        s["learning"] = serde_json::json!({"promotion": {"shadowSecs": 10}});
        let err = serde_json::from_value::<LLMWorkloadSpec>(s).expect_err("unknown field");
        assert!(err.to_string().contains("shadowSecs"), "{err}");
    }

    #[test]
    fn retrain_section_names_its_fields_and_needs_a_record_to_wait_for() {
        let with = |learning: serde_json::Value| {
            let mut s = serde_json::to_value(spec()).expect("spec serialises");
            s["learning"] = learning;
            serde_json::from_value::<LLMWorkloadSpec>(s).expect("spec with learning.retrain")
        };
        let ok = with(serde_json::json!({"record": {"enabled": true}, "retrain": {"enabled": true, "from": "first"}}));
        assert!(validate_spec("w", &ok).is_empty(), "{:?}", validate_spec("w", &ok));
        let public_only = with(serde_json::json!({"retrain": {"enabled": true, "from": "t", "minRecordedSeconds": 0}}));
        assert!(validate_spec("w", &public_only).is_empty(), "{:?}", validate_spec("w", &public_only));
        let p = validate_spec("w", &with(serde_json::json!({"retrain": {"enabled": true, "from": "first"}})));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "spec.learning.retrain.minRecordedSeconds");
        assert!(p[0].message.contains("spec.learning.record"), "{}", p[0]);
        let p = validate_spec("w", &with(serde_json::json!({"retrain": {"enabled": true, "minRecordedSeconds": 0}})));
        assert_eq!(p.iter().map(|p| p.field.as_str()).collect::<Vec<_>>(), ["spec.learning.retrain.from"]);
    }

    #[test]
    fn unknown_pool_is_named_with_the_fix() {
        let mut s = spec();
        s.variants[0].pools = vec!["h100".into()];
        let p = validate_spec("w", &s);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.variants[0].pools[0]");
        assert!(p[0].message.contains("h100") && p[0].message.contains("a100"), "{}", p[0]);
    }

    #[test]
    fn duplicates_and_min_over_max_are_reported() {
        let mut s = spec();
        let mut v: VariantSpec = s.variants[0].clone();
        v.min_replicas = 5;
        v.max_replicas = 2;
        s.variants.push(v);
        let g: GpuPoolSpec = s.gpu_pools[0].clone();
        s.gpu_pools.push(g);
        let fields: Vec<String> = validate_spec("w", &s).into_iter().map(|p| p.field).collect();
        assert!(fields.contains(&"spec.variants[1].name".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.variants[1].minReplicas".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.gpuPools[1].name".to_string()), "{fields:?}");
    }

    fn with_refs(refs: serde_json::Value) -> LLMWorkloadSpec {
        let mut s = serde_json::to_value(spec()).expect("spec serialises");
        s["poolRefs"] = refs;
        serde_json::from_value(s).expect("spec with poolRefs")
    }

    #[test]
    fn pool_refs_count_as_pools_and_variants_may_name_their_slots() {
        let mut s =
            with_refs(serde_json::json!([{"pool": "shared-a100", "maxGpus": 8}, {"name": "l4", "pool": "cheap.l4"}]));
        s.variants[0].pools = vec!["a100".into(), "shared-a100".into(), "l4".into()];
        assert!(validate_spec("w", &s).is_empty(), "{:?}", validate_spec("w", &s));
        s.gpu_pools.clear();
        s.variants[0].pools = vec!["l4".into()];
        assert!(validate_spec("w", &s).is_empty(), "{:?}", validate_spec("w", &s));
        s.pool_refs.clear();
        let p = validate_spec("w", &s);
        assert!(p.iter().any(|p| p.field == "spec.gpuPools" && p.message.contains("poolRefs")), "{p:?}");
    }

    #[test]
    fn pool_ref_slot_names_are_unique_over_both_lists_and_dns_labels() {
        let s =
            with_refs(serde_json::json!([{"pool": "a100"}, {"name": "x", "pool": "p"}, {"name": "x", "pool": "q"}]));
        let p = validate_spec("w", &s);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.poolRefs[0].pool", "spec.poolRefs[2].name"], "{p:?}");
        assert!(p[0].message.contains("spec.gpuPools[0].name"), "{}", p[0]);
        assert!(p[1].message.contains("spec.poolRefs[1].name"), "{}", p[1]);
        let s = with_refs(serde_json::json!([{"pool": "shared.a100"}, {"pool": "a-pool-name-of-more-than-20"}]));
        let fields: Vec<String> = validate_spec("w", &s).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["spec.poolRefs[0].pool", "spec.poolRefs[1].pool"]);
    }

    #[test]
    fn guarantees_beyond_every_refs_max_gpus_are_reported() {
        let mut s = with_refs(serde_json::json!([{"pool": "p", "maxGpus": 4}]));
        s.scheduling.guaranteed_gpus = 4;
        assert!(validate_spec("w", &s).is_empty());
        s.scheduling.guaranteed_gpus = 5;
        let p = validate_spec("w", &s);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "spec.scheduling.guaranteedGpus");
    }

    #[test]
    fn deployment_names_of_pool_ref_slots_are_checked() {
        let mut s = with_refs(serde_json::json!([{"name": "a-twenty-char-slot-x", "pool": "p"}]));
        s.variants[0].pools.clear();
        let p = validate_spec(&"x".repeat(40), &s);
        assert!(p.iter().any(|p| p.message.contains("a-twenty-char-slot-x")), "{p:?}");
    }

    /// The documents of a YAML stream whose `kind` is `kind`.
    fn docs_of(yaml: &str, kind: &str) -> Vec<serde_json::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).expect("a YAML document"))
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    #[test]
    fn the_shared_pool_examples_resolve_and_validate() {
        let pools: std::collections::BTreeMap<String, crate::crd::GPUPoolSpec> =
            docs_of(include_str!("../../manifests/examples/shared-pools/gpupools.yaml"), "GPUPool")
                .into_iter()
                .map(|d| {
                    let p: crate::crd::GPUPool = serde_json::from_value(d).expect("the example GPUPool parses");
                    (p.metadata.name.clone().expect("named"), p.spec)
                })
                .collect();
        assert_eq!(pools.len(), 2);
        let wls = docs_of(include_str!("../../manifests/examples/shared-pools/llmworkload-shared.yaml"), "LLMWorkload");
        let wl: crate::crd::LLMWorkload = serde_json::from_value(wls[0].clone()).expect("the example workload parses");
        assert!(validate_spec("chat-prod", &wl.spec).is_empty(), "{:?}", validate_spec("chat-prod", &wl.spec));
        let resolved = crate::crd::pool::resolve_pools(&wl.spec, &pools).expect("the example's poolRefs resolve");
        assert!(validate_spec("chat-prod", &resolved).is_empty(), "{:?}", validate_spec("chat-prod", &resolved));
        let names: Vec<&str> = resolved.gpu_pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["reserved", "a100", "l4"]);
        assert_eq!(crate::crd::pool::shared_pool_of(&wl.spec, "l4"), Some("shared-l4"));
        assert_eq!(wl.spec.scheduling.priority_class_name.as_deref(), Some("llm-production"));
    }

    #[test]
    fn too_long_deployment_names_are_rejected() {
        let s = spec();
        let p = validate_spec(&"x".repeat(60), &s);
        assert!(p.iter().any(|p| p.message.contains("more than 63")), "{p:?}");
    }
}
