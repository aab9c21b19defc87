//! The checked-in CRD YAML must be exactly what `llmos crdgen` prints from the code.
//!
//! Three copies are checked: `crds/` (the source of truth), `manifests/` (plain install)
//! and the Helm chart's `crds/`. Regenerate all with:
//!
//! ```sh
//! cargo run -- crdgen > crds/llmworkloads.llmos.dev.yaml
//! cp crds/llmworkloads.llmos.dev.yaml manifests/00-crd.yaml
//! cp crds/llmworkloads.llmos.dev.yaml charts/llmos-operator/crds/llmworkloads.llmos.dev.yaml
//! ```

use std::path::Path;

const COPIES: [&str; 3] = [
    "crds/llmworkloads.llmos.dev.yaml",
    "manifests/00-crd.yaml",
    "charts/llmos-operator/crds/llmworkloads.llmos.dev.yaml",
];

#[test]
fn checked_in_crd_matches_the_code() {
    let generated = llmos::controller::cli::crd_yaml().expect("CRD serialises");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for rel in COPIES {
        let on_disk = std::fs::read_to_string(root.join(rel))
            .unwrap_or_else(|e| panic!("cannot read {rel}: {e}; regenerate it with `cargo run -- crdgen > {rel}`"));
        assert!(
            on_disk == generated,
            "{rel} drifted from the CRD the code generates; regenerate it with `cargo run -- crdgen > {rel}` and review the diff"
        );
    }
}

#[test]
fn crd_schema_is_structural_for_kubernetes_1_20() {
    // What a 1.20 API server rejects or ignores, checked without a server: no CEL rules,
    // no oneOf/anyOf/allOf carrying types, every object node typed.
    let generated = llmos::controller::cli::crd_yaml().expect("CRD serialises");
    let doc: serde_json::Value = serde_yaml::from_str(&generated).expect("CRD YAML parses");
    fn walk(v: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
        let Some(obj) = v.as_object() else { return };
        for bad in ["x-kubernetes-validations", "oneOf", "anyOf", "allOf", "$ref", "const"] {
            if obj.contains_key(bad) {
                problems.push(format!("{path}: has {bad}"));
            }
        }
        if obj.contains_key("properties") && obj.get("type").and_then(|t| t.as_str()) != Some("object") {
            problems.push(format!("{path}: properties without type: object"));
        }
        if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
            for (k, p) in props {
                if !p.as_object().is_some_and(|o| {
                    o.contains_key("type")
                        || o.contains_key("x-kubernetes-int-or-string")
                        || o.contains_key("x-kubernetes-preserve-unknown-fields")
                }) {
                    problems.push(format!("{path}.{k}: no type"));
                }
                walk(p, &format!("{path}.{k}"), problems);
            }
        }
        if let Some(items) = obj.get("items") {
            walk(items, &format!("{path}[]"), problems);
        }
        if let Some(ap) = obj.get("additionalProperties") {
            walk(ap, &format!("{path}{{}}"), problems);
        }
    }
    let mut problems = Vec::new();
    for (i, version) in doc["spec"]["versions"].as_array().expect("versions").iter().enumerate() {
        walk(&version["schema"]["openAPIV3Schema"], &format!("versions[{i}]"), &mut problems);
    }
    assert!(problems.is_empty(), "schema not structural for 1.20:\n{}", problems.join("\n"));
}
