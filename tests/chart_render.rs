//! The Helm chart rendered without a cluster, by `scripts/chart/render.sh` (Go's
//! text/template + sprig + Helm's functions, built from Debian's packages: no `helm`
//! binary can be had here).
//!
//! What it checks:
//! - the default values render, and every document parses as YAML with apiVersion, kind
//!   and metadata.name;
//! - what the chart installs with the defaults (release `llmos-operator` in
//!   `llmos-system`) is equivalent to `manifests/`: the same kinds and names, the same
//!   RBAC rules and bindings, the same Deployment (replicas, container args, env, probes,
//!   ports, resources, security contexts: the whole Pod spec) and Service ports, the CRDs
//!   of `crds/` (with `--include-crds`) equal to `manifests/00-crd.yaml`. The differences
//!   that are meant are listed in [`INTENDED_DIFFERENCES`] with their reasons and checked
//!   to be exactly those;
//! - value sets that switch features on (serviceMonitor, prometheusRule, networkPolicy,
//!   the Grafana dashboard, the record PVC, policy checkpoints, Prometheus token and CA,
//!   a GPU, replica counts, leader election off, the admission webhook with the
//!   operator's own CA or cert-manager's) render what they say;
//! - a template error fails: a required value left out, an unknown function, a document
//!   that is not YAML, each named with its template and line.
//!
//! Skipped, saying so, only where Go and the Go packages cannot be had (the script exits
//! 3: not root and the Debian packages missing, or apt failing). `scripts/test.sh`
//! prepares the renderer on a clean machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const CHART: &str = "charts/llmos-operator";
const RELEASE: &str = "llmos-operator";
const NAMESPACE: &str = "llmos-system";

/// Differences between the chart's default rendering and `manifests/` that are meant, and
/// why. [`the_defaults_are_equivalent_to_the_manifests`] fails on any other, and on one of
/// these that no longer occurs.
const INTENDED_DIFFERENCES: &[(&str, &str)] = &[
    (
        "Namespace/llmos-system only in manifests/",
        "Helm installs a release into a namespace it is given (`helm install -n llmos-system --create-namespace`); a chart that made its own release namespace would fail on a second release there",
    ),
    (
        "labels: the chart adds app.kubernetes.io/instance, app.kubernetes.io/version, app.kubernetes.io/managed-by and helm.sh/chart",
        "Helm's standard labels: which release and chart version made an object",
    ),
    (
        "selectors: the chart's Deployment selector, Pod labels and Service selector add app.kubernetes.io/instance",
        "two releases of the chart in one namespace must not select each other's Pods",
    ),
];

/// The renderer's binary, built once (`render.sh --build-only`); `None` (said on stderr)
/// when Go or its packages cannot be had.
fn renderer() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("scripts/chart/render.sh"))
        .arg("--build-only")
        .output()
        .expect("running scripts/chart/render.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        eprintln!("SKIPPED: the chart renderer cannot be built here: {}", err.trim());
        return None;
    }
    assert!(out.status.success(), "scripts/chart/render.sh --build-only failed: {err}");
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Renders `chart` with release `llmos-operator` in `llmos-system` and `args`; the
/// renderer's stderr on failure.
fn try_render(bin: &Path, chart: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(["--name", RELEASE, "--namespace", NAMESPACE])
        .args(args)
        .arg(chart)
        .output()
        .expect("running the renderer");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Renders the chart with `args` and parses every document, checking each has
/// apiVersion, kind and metadata.name; panics with the renderer's error otherwise.
fn render(bin: &Path, args: &[&str]) -> Vec<Value> {
    let text = try_render(bin, &repo().join(CHART), args)
        .unwrap_or_else(|e| panic!("rendering the chart with {args:?} failed:\n{e}"));
    let docs = parse_docs(&text);
    assert!(!docs.is_empty(), "{args:?} rendered nothing");
    for d in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(d[field].as_str().is_some_and(|s| !s.is_empty()), "{args:?}: a document without {field}: {d}");
        }
        assert!(
            d["metadata"]["name"].as_str().is_some_and(|s| !s.is_empty()),
            "{args:?}: a document without metadata.name: {d}"
        );
    }
    docs
}

/// The non-empty YAML documents of a stream, as JSON values.
fn parse_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("a document that is not YAML: {e}\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn manifest_docs(files: &[&str]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| parse_docs(&std::fs::read_to_string(repo().join(f)).expect("a file of manifests/")))
        .collect()
}

/// (kind, namespace, name) of a document.
fn key(d: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (s(&d["kind"]), s(&d["metadata"]["namespace"]), s(&d["metadata"]["name"]))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// A rule list expanded to (apiGroup, resource, verb) triples.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
    };
    for r in rules.as_array().expect("rules") {
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    out.insert((g.clone(), res.clone(), v));
                }
            }
        }
    }
    out
}

/// Whether every label of `sub` is in `sup` with the same value; the extra keys of `sup`.
fn extra_labels(sub: &Value, sup: &Value) -> Result<BTreeSet<String>, String> {
    let empty = serde_json::Map::new();
    let sub = sub.as_object().unwrap_or(&empty);
    let sup = sup.as_object().unwrap_or(&empty);
    for (k, v) in sub {
        if sup.get(k) != Some(v) {
            return Err(format!("{k}: {v} in manifests/, {:?} in the chart", sup.get(k)));
        }
    }
    Ok(sup.keys().filter(|k| !sub.contains_key(*k)).cloned().collect())
}

#[test]
fn the_defaults_are_equivalent_to_the_manifests() {
    let Some(bin) = renderer() else { return };
    let chart = render(&bin, &["--include-crds"]);
    let manifests = manifest_docs(&[
        "manifests/00-crd.yaml",
        "manifests/01-namespace.yaml",
        "manifests/02-rbac.yaml",
        "manifests/03-operator.yaml",
    ]);
    let mut seen: BTreeSet<&str> = BTreeSet::new();

    // The same objects, but for the namespace.
    let chart_keys: BTreeSet<_> = chart.iter().map(key).collect();
    let mut manifest_keys: BTreeSet<_> = manifests.iter().map(key).collect();
    if manifest_keys.remove(&("Namespace".into(), String::new(), NAMESPACE.into())) {
        seen.insert(INTENDED_DIFFERENCES[0].0);
    }
    assert_eq!(chart_keys, manifest_keys, "the chart's objects (left) and manifests/' (right) differ");

    // CRDs: the same documents.
    for m in find(&manifests, "CustomResourceDefinition") {
        let c = chart.iter().find(|c| key(c) == key(m)).expect("the CRD in the chart");
        assert_eq!(c, m, "CRD {} differs from manifests/00-crd.yaml", key(m).2);
    }

    // Every object: manifests/' labels kept, only Helm's standard ones added.
    let helm_labels: BTreeSet<String> =
        ["app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for m in manifests.iter().filter(|m| m["kind"] != "CustomResourceDefinition" && m["kind"] != "Namespace") {
        let c = chart.iter().find(|c| key(c) == key(m)).expect("matched above");
        let extra = extra_labels(&m["metadata"]["labels"], &c["metadata"]["labels"])
            .unwrap_or_else(|e| panic!("{:?}: label {e}", key(m)));
        assert_eq!(extra, helm_labels, "{:?}: labels the chart adds", key(m));
        seen.insert(INTENDED_DIFFERENCES[1].0);
    }

    // RBAC: the same grants, roles and subjects.
    for kind in ["ClusterRole", "Role"] {
        for m in find(&manifests, kind) {
            let c = chart.iter().find(|c| key(c) == key(m)).expect("matched above");
            let (gc, gm) = (grants(&c["rules"]), grants(&m["rules"]));
            assert!(
                gc == gm,
                "{kind} {}: granted by the chart only: {:?}; by manifests/ only: {:?}",
                key(m).2,
                gc.difference(&gm).collect::<Vec<_>>(),
                gm.difference(&gc).collect::<Vec<_>>()
            );
        }
    }
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for m in find(&manifests, kind) {
            let c = chart.iter().find(|c| key(c) == key(m)).expect("matched above");
            assert_eq!(c["roleRef"], m["roleRef"], "{kind} {}: roleRef", key(m).2);
            assert_eq!(c["subjects"], m["subjects"], "{kind} {}: subjects", key(m).2);
        }
    }

    // The Deployment: the whole Pod spec is the same; selectors only add the instance.
    let (cd, md) = (one(&chart, "Deployment"), one(&manifests, "Deployment"));
    assert_eq!(cd["spec"]["replicas"], md["spec"]["replicas"], "replicas");
    let (cpod, mpod) = (&cd["spec"]["template"]["spec"], &md["spec"]["template"]["spec"]);
    for field in ["serviceAccountName", "securityContext", "terminationGracePeriodSeconds"] {
        assert_eq!(cpod[field], mpod[field], "Deployment: pod {field}");
    }
    let (cc, mc) = (&cpod["containers"][0], &mpod["containers"][0]);
    for field in [
        "name",
        "image",
        "imagePullPolicy",
        "args",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
    ] {
        assert_eq!(cc[field], mc[field], "Deployment: container {field}");
    }
    assert_eq!(cpod, mpod, "Deployment: the rest of the Pod spec");
    let instance: BTreeSet<String> = ["app.kubernetes.io/instance".to_string()].into();
    let sel = extra_labels(&md["spec"]["selector"]["matchLabels"], &cd["spec"]["selector"]["matchLabels"])
        .unwrap_or_else(|e| panic!("Deployment selector: {e}"));
    assert_eq!(sel, instance, "Deployment selector");
    let pod_labels =
        extra_labels(&md["spec"]["template"]["metadata"]["labels"], &cd["spec"]["template"]["metadata"]["labels"])
            .unwrap_or_else(|e| panic!("Pod labels: {e}"));
    assert_eq!(pod_labels, instance, "Pod labels");
    let (cs, ms) = (one(&chart, "Service"), one(&manifests, "Service"));
    assert_eq!(cs["spec"]["ports"], ms["spec"]["ports"], "Service ports");
    let svc = extra_labels(&ms["spec"]["selector"], &cs["spec"]["selector"])
        .unwrap_or_else(|e| panic!("Service selector: {e}"));
    assert_eq!(svc, instance, "Service selector");
    seen.insert(INTENDED_DIFFERENCES[2].0);

    let listed: BTreeSet<&str> = INTENDED_DIFFERENCES.iter().map(|d| d.0).collect();
    assert_eq!(seen, listed, "every listed intended difference occurs");
    eprintln!("chart (defaults) = manifests/ but for {} intended differences:", listed.len());
    for (what, why) in INTENDED_DIFFERENCES {
        eprintln!("  {what}: {why}");
    }
}

/// The operator's container in a rendering.
fn container(docs: &[Value]) -> Value {
    one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args_of(docs: &[Value]) -> Vec<String> {
    container(docs)["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("arg").to_string()).collect()
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in docs {
        *out.entry(d["kind"].as_str().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    out
}

#[test]
fn feature_values_render_what_they_say() {
    let Some(bin) = renderer() else { return };
    let defaults = render(&bin, &[]);
    let base_kinds = kinds(&defaults);
    for absent in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"] {
        assert!(!base_kinds.contains_key(absent), "{absent} rendered with the defaults");
    }
    let selector = one(&defaults, "Deployment")["spec"]["selector"]["matchLabels"].clone();
    let with_one = |docs: &[Value], kind: &str| {
        let k = kinds(docs);
        assert_eq!(k.get(kind), Some(&1), "one {kind}: {k:?}");
        let mut rest = k.clone();
        rest.remove(kind);
        assert_eq!(rest, base_kinds, "nothing else changes");
    };

    // serviceMonitor: scrapes the metrics Service's port, with the given labels.
    let d = render(
        &bin,
        &["--set", "serviceMonitor.enabled=true,serviceMonitor.interval=15s,serviceMonitor.labels.release=kps"],
    );
    with_one(&d, "ServiceMonitor");
    let sm = one(&d, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kps");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(sm["spec"]["endpoints"], json!([{"port": "http-metrics", "path": "/metrics", "interval": "15s"}]));
    assert_eq!(one(&d, "Service")["spec"]["ports"][0]["name"], "http-metrics", "the port the ServiceMonitor names");

    // prometheusRule: the alert rules of files/alerts.yaml, labelled for the ruleSelector.
    let d = render(&bin, &["--set", "prometheusRule.enabled=true,prometheusRule.labels.release=kps"]);
    with_one(&d, "PrometheusRule");
    let pr = one(&d, "PrometheusRule");
    let alerts: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join(CHART).join("files/alerts.yaml")).expect("alerts"))
            .expect("alerts YAML");
    assert_eq!(pr["spec"], alerts, "the PrometheusRule's spec is files/alerts.yaml");
    assert!(pr["spec"]["groups"][0]["rules"].as_array().is_some_and(|r| !r.is_empty()), "rules present");
    assert_eq!(pr["metadata"]["labels"]["release"], "kps");

    // networkPolicy: ingress to the metrics port from the labelled namespaces only.
    let d = render(&bin, &["--set", "networkPolicy.enabled=true"]);
    with_one(&d, "NetworkPolicy");
    let np = one(&d, "NetworkPolicy");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"port": "http-metrics", "protocol": "TCP"}]}])
    );

    // grafanaDashboard: files/dashboard.json in a ConfigMap the sidecar picks up.
    let d = render(&bin, &["--set", "grafanaDashboard.enabled=true,grafanaDashboard.namespace=monitoring"]);
    with_one(&d, "ConfigMap");
    let cm = one(&d, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("files/dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let inside: Value = serde_json::from_str(cm["data"]["llmos-workloads.json"].as_str().expect("the dashboard key"))
        .expect("JSON inside");
    assert_eq!(inside, shipped, "the ConfigMap carries files/dashboard.json");

    // record.persistentVolumeClaim: the claim mounted read-write and passed as --record-dir.
    let d = render(&bin, &["--set", "record.persistentVolumeClaim=llmos-records"]);
    assert_eq!(kinds(&d), base_kinds);
    assert!(args_of(&d).contains(&"--record-dir=/var/lib/llmos/records".to_string()), "{:?}", args_of(&d));
    assert_eq!(container(&d)["volumeMounts"], json!([{"name": "records", "mountPath": "/var/lib/llmos/records"}]));
    let pod = &one(&d, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"], json!([{"name": "records", "persistentVolumeClaim": {"claimName": "llmos-records"}}]));

    // policyCheckpoint: the configured volume, mounted read-only where checkpoints are named.
    let d = render(
        &bin,
        &[
            "--set",
            "policyCheckpoint.enabled=true",
            "--set",
            "policyCheckpoint.volume.persistentVolumeClaim.claimName=ckpt",
        ],
    );
    assert_eq!(
        container(&d)["volumeMounts"],
        json!([{"name": "policy-checkpoints", "mountPath": "/var/lib/llmos/checkpoints", "readOnly": true}])
    );
    assert_eq!(
        one(&d, "Deployment")["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "policy-checkpoints", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": true}}])
    );

    // Prometheus: the URL, a bearer token from a Secret and a CA from a ConfigMap.
    let d = render(
        &bin,
        &["--set", "prometheus.url=https://prom:9091,prometheus.bearerTokenSecret.name=prom-token,prometheus.caConfigMap.name=prom-ca"],
    );
    let a = args_of(&d);
    for want in [
        "--prometheus-url=https://prom:9091",
        "--prometheus-bearer-token-file=/var/run/llmos/prometheus-token/token",
        "--prometheus-ca-file=/var/run/llmos/prometheus-ca/ca.crt",
    ] {
        assert!(a.contains(&want.to_string()), "{want} in {a:?}");
    }
    assert_eq!(
        one(&d, "Deployment")["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "prometheus-token", "secret": {"secretName": "prom-token", "items": [{"key": "token", "path": "token"}]}},
               {"name": "prometheus-ca", "configMap": {"name": "prom-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}])
    );

    // gpu: the GPU resource added to the limits, the memory limit kept.
    let d = render(&bin, &["--set", "gpu.enabled=true,gpu.count=2"]);
    assert_eq!(container(&d)["resources"]["limits"], json!({"memory": "1Gi", "nvidia.com/gpu": "2"}));

    // replicaCount with leader election (the default): that many replicas, one Lease.
    for n in ["2", "3"] {
        let d = render(&bin, &["--set", &format!("replicaCount={n}")]);
        assert_eq!(one(&d, "Deployment")["spec"]["replicas"], json!(n.parse::<u32>().unwrap()));
        assert!(args_of(&d).contains(&"--leader-election".to_string()));
        assert_eq!(one(&d, "Role")["rules"][0]["resources"], json!(["leases"]));
    }
    // leaderElection off: one replica whatever replicaCount says, no Lease rights.
    let d = render(&bin, &["--set", "leaderElection.enabled=false,replicaCount=2"]);
    assert_eq!(one(&d, "Deployment")["spec"]["replicas"], json!(1));
    assert!(args_of(&d).contains(&"--no-leader-election".to_string()));
    assert!(find(&d, "Role").is_empty() && find(&d, "RoleBinding").is_empty(), "no leader-election Role");
    // leaderElection with another Lease name.
    let d = render(&bin, &["--set", "leaderElection.leaseName=other-lease"]);
    assert!(args_of(&d).contains(&"--lease-name=other-lease".to_string()));

    // watchNamespace, log settings and an image of one's own, from a values file.
    let dir = tempfile::tempdir().expect("temp dir");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "watchNamespace: team-a\nlogFormat: text\nimage: {repository: registry.local/llmos, tag: dev}\nserviceAccount: {name: custom-sa}\n",
    )
    .expect("values file");
    let d = render(&bin, &["-f", values.to_str().unwrap()]);
    let a = args_of(&d);
    assert!(a.contains(&"--namespace=team-a".to_string()) && a.contains(&"--log-format=text".to_string()), "{a:?}");
    assert_eq!(container(&d)["image"], "registry.local/llmos:dev");
    assert_eq!(container(&d)["imagePullPolicy"], "IfNotPresent", "a values file keeps the defaults it does not name");
    assert_eq!(one(&d, "ServiceAccount")["metadata"]["name"], "custom-sa");
    assert_eq!(one(&d, "ClusterRoleBinding")["subjects"][0]["name"], "custom-sa");
    assert_eq!(one(&d, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"], "custom-sa");
}

/// The documents of `kind` named `name`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendering"))
}

#[test]
fn the_webhook_renders_with_grants_on_its_own_objects_only() {
    let Some(bin) = renderer() else { return };
    let defaults = render(&bin, &[]);
    assert!(find(&defaults, "ValidatingWebhookConfiguration").is_empty(), "off by default (docs/chart.md)");
    assert!(!args_of(&defaults).iter().any(|a| a.starts_with("--webhook")), "{:?}", args_of(&defaults));

    // The operator's own CA: an empty Secret, get/update on it, patch on the configuration.
    let d = render(&bin, &["--set", "webhook.enabled=true"]);
    let a = args_of(&d);
    for want in [
        "--webhook-port=9443",
        "--webhook-secret=llmos-operator-webhook-tls",
        "--webhook-configuration=llmos-operator",
        "--webhook-dns-name=llmos-operator-webhook.llmos-system.svc",
        "--webhook-dns-name=llmos-operator-webhook.llmos-system.svc.cluster.local",
    ] {
        assert!(a.contains(&want.to_string()), "{want} in {a:?}");
    }
    assert_eq!(container(&d)["ports"][1], json!({"name": "https-webhook", "containerPort": 9443}));
    let svc = named(&d, "Service", "llmos-operator-webhook");
    assert_eq!(svc["spec"]["ports"], json!([{"name": "https-webhook", "port": 443, "targetPort": "https-webhook"}]));
    let secret = named(&d, "Secret", "llmos-operator-webhook-tls");
    assert!(secret.get("data").is_none(), "created empty, so an upgrade leaves the operator's data: {secret}");
    assert_eq!(
        named(&d, "Role", "llmos-operator-webhook")["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["llmos-operator-webhook-tls"], "verbs": ["get", "update"]}])
    );
    assert_eq!(
        named(&d, "ClusterRole", "llmos-operator-webhook")["rules"],
        json!([{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                "resourceNames": ["llmos-operator"], "verbs": ["patch"]}])
    );
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        let b = named(&d, kind, "llmos-operator-webhook");
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "llmos-operator", "namespace": NAMESPACE}])
        );
    }
    let vwc = one(&d, "ValidatingWebhookConfiguration");
    let hooks = vwc["webhooks"].as_array().expect("webhooks");
    let names: Vec<&str> = hooks.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, llmos::controller::webhook_cert::WEBHOOK_NAMES, "the names whose caBundle the operator sets");
    for (h, resource) in hooks.iter().zip(["llmworkloads", "llmpolicytrainings"]) {
        assert_eq!(h["failurePolicy"], "Ignore");
        assert_eq!(h["timeoutSeconds"], 5);
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(
            h["clientConfig"],
            json!({"service": {"name": "llmos-operator-webhook", "namespace": NAMESPACE, "path": "/validate", "port": 443}})
        );
        assert_eq!(h["rules"][0]["resources"], json!([resource]));
        assert_eq!(h["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    }

    // cert-manager: a Certificate mounted, the CA injected, no Secret or grants of ours.
    let d =
        render(&bin, &["--set", "webhook.enabled=true,webhook.certManager.enabled=true,webhook.failurePolicy=Fail"]);
    assert!(args_of(&d).contains(&"--webhook-cert-dir=/var/run/llmos/webhook-tls".to_string()));
    assert!(!args_of(&d).iter().any(|a| a.starts_with("--webhook-secret")));
    assert!(
        find(&d, "Secret").is_empty()
            && find(&d, "Role").iter().all(|r| r["metadata"]["name"] != "llmos-operator-webhook")
    );
    let cert = one(&d, "Certificate");
    assert_eq!(cert["spec"]["secretName"], "llmos-operator-webhook-tls");
    assert_eq!(cert["spec"]["issuerRef"], json!({"name": "llmos-operator-webhook", "kind": "Issuer"}));
    assert_eq!(one(&d, "Issuer")["spec"], json!({"selfSigned": {}}));
    let vwc = one(&d, "ValidatingWebhookConfiguration");
    assert_eq!(vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "llmos-system/llmos-operator-webhook");
    assert_eq!(vwc["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        container(&d)["volumeMounts"],
        json!([{"name": "webhook-tls", "mountPath": "/var/run/llmos/webhook-tls", "readOnly": true}])
    );
    let d = render(
        &bin,
        &["--set", "webhook.enabled=true,webhook.certManager.enabled=true,webhook.certManager.issuerRef.name=ca,webhook.certManager.issuerRef.kind=ClusterIssuer"],
    );
    assert!(find(&d, "Issuer").is_empty());
    assert_eq!(one(&d, "Certificate")["spec"]["issuerRef"], json!({"name": "ca", "kind": "ClusterIssuer"}));

    // The NetworkPolicy opens the webhook port; bad values are refused.
    let d = render(&bin, &["--set", "webhook.enabled=true,networkPolicy.enabled=true"]);
    assert_eq!(
        one(&d, "NetworkPolicy")["spec"]["ingress"][1],
        json!({"ports": [{"port": "https-webhook", "protocol": "TCP"}]})
    );
    let chart = repo().join(CHART);
    let err = try_render(&bin, &chart, &["--set", "webhook.enabled=true,webhook.failurePolicy=Sometimes"])
        .expect_err("an unknown failurePolicy fails");
    assert!(err.contains("webhook.failurePolicy must be Ignore or Fail"), "{err}");
    let err = try_render(&bin, &chart, &["--set", "webhook.enabled=true,webhook.timeoutSeconds=31"])
        .expect_err("a timeout over 30 s fails");
    assert!(err.contains("webhook.timeoutSeconds must be within 1..30"), "{err}");
}

#[test]
fn template_errors_fail_and_name_the_template() {
    let Some(bin) = renderer() else { return };
    let chart = repo().join(CHART);
    // A required value left out.
    let err =
        try_render(&bin, &chart, &["--set", "image.repository="]).expect_err("an empty image.repository must fail");
    assert!(
        err.contains("templates/deployment.yaml:") && err.contains("image.repository is required"),
        "the error names the template, its line and the value: {err}"
    );
    let err = try_render(&bin, &chart, &["--set", "policyCheckpoint.enabled=true,policyCheckpoint.volume=null"])
        .expect_err("policyCheckpoint without a volume must fail");
    assert!(err.contains("policyCheckpoint.volume is required"), "{err}");

    // A copy of the chart with a broken template of each kind.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("llmos-operator");
    copy_dir(&chart, &copy);
    let cases = [
        (
            "{{ .Values.image.repository | nosuchfunc }}\n",
            "templates/broken.yaml:1: function \"nosuchfunc\" not defined",
        ),
        (
            "kind: ConfigMap\nmetadata: {name: x}\ndata: [a\n",
            "YAML parse error on llmos-operator/templates/broken.yaml",
        ),
        ("{{ fail \"this chart refuses\" }}\n", "templates/broken.yaml:1:3"),
        ("{{ include \"llmos.nosuchhelper\" . }}\n", "no template \"llmos.nosuchhelper\""),
    ];
    for (text, want) in cases {
        std::fs::write(copy.join("templates/broken.yaml"), text).expect("broken template");
        let err = try_render(&bin, &copy, &[]).expect_err("a broken template must fail");
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }
    std::fs::remove_file(copy.join("templates/broken.yaml")).expect("remove");
    assert!(try_render(&bin, &copy, &[]).is_ok(), "the copy renders once the broken template is gone");

    // Helm's value semantics: a null deletes a default, --set-string keeps a string.
    let text = try_render(&bin, &chart, &["--set", "resources.limits=null", "--set-string", "image.tag=1.10"]);
    let d = parse_docs(&text.expect("renders"));
    assert_eq!(container(&d)["resources"], json!({"requests": {"cpu": "100m", "memory": "256Mi"}}));
    assert_eq!(container(&d)["image"], "ghcr.io/llmos/llmos-operator:1.10");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}
