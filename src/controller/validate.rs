//! Semantic checks of an LLMWorkload spec that the CRD schema cannot express on a
//! Kubernetes 1.20 API server (no CEL there): references between fields, uniqueness,
//! `min ≤ max` (all from [`crate::policy::shield::validate_spec`]), plus what only the
//! controller cares about: names that must fit Kubernetes' 63-character limits and a
//! policy section whose parameters do not fit its kind ([`crate::policy::build::validate_policy_spec`]). Each problem names the field and says what to fix;
//! the controller turns them into a `Degraded` condition and a Warning Event and changes
//! no Deployment.

use crate::crd::LLMWorkloadSpec;
pub use crate::policy::shield::SpecProblem;

use super::desired::{deployment_name, slots};

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
    for slot in slots(spec) {
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

    #[test]
    fn too_long_deployment_names_are_rejected() {
        let s = spec();
        let p = validate_spec(&"x".repeat(60), &s);
        assert!(p.iter().any(|p| p.message.contains("more than 63")), "{p:?}");
    }
}
