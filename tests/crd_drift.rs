//! The checked-in CRD YAML must be exactly what `llmos crdgen` prints from the code.
//!
//! Three copies are checked: `crds/` (the source of truth: one file per CRD,
//! `llmworkloads.llmos.dev.yaml`, `gpupools.llmos.dev.yaml` and
//! `llmpolicytrainings.llmos.dev.yaml`), the Helm chart's `crds/` (the same files) and
//! `manifests/00-crd.yaml` (every CRD as one YAML stream, for the plain install).
//! Regenerate all with:
//!
//! ```sh
//! cargo run -- crdgen > manifests/00-crd.yaml
//! for c in llmworkloads.llmos.dev gpupools.llmos.dev llmpolicytrainings.llmos.dev; do
//!   cargo run -- crdgen $c > crds/$c.yaml
//!   cp crds/$c.yaml charts/llmos-operator/crds/$c.yaml
//! done
//! ```

use std::path::Path;

/// The folders that hold one file per CRD, `<name>.yaml`.
const PER_CRD_DIRS: [&str; 2] = ["crds", "charts/llmos-operator/crds"];
/// The file that holds every CRD as one stream.
const STREAM: &str = "manifests/00-crd.yaml";

fn read(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}; regenerate it as tests/crd_drift.rs says"))
}

#[test]
fn checked_in_crds_match_the_code() {
    let crds = llmos::controller::cli::crd_yamls().expect("CRDs serialise");
    let names: Vec<&str> = crds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["llmworkloads.llmos.dev", "gpupools.llmos.dev", "llmpolicytrainings.llmos.dev"]);
    for dir in PER_CRD_DIRS {
        for (name, generated) in &crds {
            let rel = format!("{dir}/{name}.yaml");
            assert!(
                read(&rel) == *generated,
                "{rel} drifted from the CRD the code generates; regenerate it with `cargo run -- crdgen {name} > {rel}` and review the diff"
            );
        }
        // No stale CRD file of a resource that no longer exists.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in std::fs::read_dir(&root).expect("CRD folder") {
            let file = e.expect("entry").file_name().to_string_lossy().into_owned();
            assert!(
                crds.iter().any(|(n, _)| format!("{n}.yaml") == file),
                "{dir}/{file} is not a CRD the code generates; remove it"
            );
        }
    }
    let generated = llmos::controller::cli::crd_yaml().expect("CRDs serialise");
    assert!(
        read(STREAM) == generated,
        "{STREAM} drifted from the CRDs the code generates; regenerate it with `cargo run -- crdgen > {STREAM}` and review the diff"
    );
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&generated)
        .map(|d| serde::Deserialize::deserialize(d).expect("a CRD document"))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["spec"]["names"]["kind"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["LLMWorkload", "GPUPool", "LLMPolicyTraining"]);
    assert_eq!(docs[0]["spec"]["scope"], "Namespaced");
    assert_eq!(docs[1]["spec"]["scope"], "Cluster");
    assert_eq!(docs[2]["spec"]["scope"], "Namespaced");
}

#[test]
fn crd_schema_is_structural_for_kubernetes_1_20() {
    // What a 1.20 API server rejects or ignores, checked without a server: no CEL rules,
    // no oneOf/anyOf/allOf carrying types, every object node typed; for every CRD.
    let crds = llmos::controller::cli::crd_yamls().expect("CRDs serialise");
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
    for (name, yaml) in &crds {
        let doc: serde_json::Value = serde_yaml::from_str(yaml).expect("CRD YAML parses");
        for (i, version) in doc["spec"]["versions"].as_array().expect("versions").iter().enumerate() {
            walk(&version["schema"]["openAPIV3Schema"], &format!("{name}: versions[{i}]"), &mut problems);
        }
    }
    assert!(problems.is_empty(), "schema not structural for 1.20:\n{}", problems.join("\n"));
}
