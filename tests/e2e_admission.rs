//! The validating admission webhook on a real API server: etcd + kube-apiserver 1.20 on
//! loopback (`scripts/k8s/start.sh`; ValidatingAdmissionWebhook is among 1.20's default
//! admission plugins, which the script leaves on), and `llmos run` serving the webhook.
//!
//! The webhook's objects are the chart's (`--set webhook.enabled=true`, rendered by
//! `scripts/chart/render.sh`): the empty Secret, the Role and ClusterRole that let the
//! operator fill that Secret and patch that configuration (resourceNames), and the
//! ValidatingWebhookConfiguration, whose `clientConfig` is turned from the Service (no
//! kube-proxy here) into `url: https://127.0.0.1:<port>/validate`. The operator runs as
//! the chart's ServiceAccount with exactly `manifests/02-rbac.yaml` and those grants,
//! makes its CA, stores it in the Secret and sets it as the caBundle.
//!
//! 1. Operator down, `failurePolicy: Ignore` (the chart's default): an invalid workload
//!    is admitted at once (connection refused; the controller refuses it at reconcile);
//!    with `Fail` it is refused naming the webhook.
//! 2. Operators up: `kubectl apply` of an invalid LLMWorkload is refused, the message
//!    naming each field as the reconcile-time Warning does; a valid one passes; changing
//!    it to an invalid spec is refused; a label added to the workload admitted while the
//!    webhook was down passes (its spec is unchanged). An LLMPolicyTraining naming both
//!    a claim and a host path is refused naming `spec.volume`; a valid one passes.
//!    Two replicas run (under leader election; the standby serves the webhook too),
//!    started together: one makes the CA, both serve it (the configuration pointed at the
//!    second once the first is killed still verifies it).
//! 3. Operators killed: with `Ignore` an invalid workload is admitted at once.
//! 4. Every request of the operator's identity to the Secret and the configuration was
//!    allowed (the audit log).
//! 5. A replica that cannot read its Secret (one it has no grant for) says so, retries,
//!    and exits promptly on SIGTERM.
//!
//! `LLMOS_SKIP_E2E=1` skips; a missing prerequisite (the control plane binaries, etcd, Go
//! for the chart renderer) fails it.

mod e2e_support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use e2e_support::{apply_operator_rbac, audited_requests, free_port, operator_kubeconfig, tail, Stack};

const NS: &str = "default";
const CONFIG: &str = "llmos-operator";

/// kubectl with `stdin`: (succeeded, stdout + stderr, seconds it took).
fn kubectl(stack: &Stack, args: &[&str], stdin: Option<&str>) -> (bool, String, f64) {
    let started = Instant::now();
    let out = stack.kubectl_output(args, stdin);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text, started.elapsed().as_secs_f64())
}

fn workload(name: &str, pool: &str, min: u32) -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata: {{name: {name}, namespace: {NS}}}
spec:
  variants:
    - {{name: llama8b, model: m, image: vllm/vllm-openai:v0.6.3, pools: [{pool}], minReplicas: {min}, maxReplicas: 2}}
  gpuPools:
    - {{name: a100, gpuType: A100-80GB, pricePerGpuHour: 2.0, capacityGpus: 4}}
  policy: {{kind: hpa, intervalSeconds: 5}}
"#
    )
}

fn training(name: &str, volume: &str) -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMPolicyTraining
metadata: {{name: {name}, namespace: {NS}}}
spec:
  workload: absent
  algorithm: ppo
  steps: 1000
  traces: {{recorded: true}}
  volume: {volume}
"#
    )
}

/// The chart's webhook objects (`webhook.enabled=true`), the configuration calling
/// `https://127.0.0.1:<port>/validate` instead of the Service.
fn webhook_objects(port: u16) -> String {
    let text =
        e2e_support::render_chart("llmos-operator", e2e_support::OPERATOR_NS, &["--set", "webhook.enabled=true"]);
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let mut v = <Value as serde::Deserialize>::deserialize(d).expect("a rendered document");
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        if kind == "ValidatingWebhookConfiguration" {
            for w in v["webhooks"].as_array_mut().expect("webhooks") {
                w["clientConfig"] = serde_json::json!({"url": format!("https://127.0.0.1:{port}/validate")});
            }
            docs.push(v);
        } else if name.contains("-webhook") && kind != "Service" {
            docs.push(v);
        }
    }
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 6, "Secret, Role, RoleBinding, ClusterRole, ClusterRoleBinding, configuration: {kinds:?}");
    docs.iter().map(|d| serde_yaml::to_string(d).expect("yaml")).collect::<Vec<_>>().join("---\n")
}

fn set_failure_policy(stack: &Stack, policy: &str) {
    let ops: Vec<Value> = (0..2)
        .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/failurePolicy"), "value": policy}))
        .collect();
    let patch = serde_json::to_string(&ops).expect("json");
    stack.kubectl(&["patch", "validatingwebhookconfiguration", CONFIG, "--type=json", "-p", &patch], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_at_admission() {
    if !e2e_support::e2e_wanted(false) {
        return;
    }
    let started = Instant::now();
    let port = free_port();
    let objects = webhook_objects(port);
    let (mut stack, _client) = Stack::start(false).await;
    stack.install_crd();
    stack.kubectl(
        &["wait", "--for", "condition=established", "--timeout=60s", "crd/llmpolicytrainings.llmos.dev"],
        None,
    );
    apply_operator_rbac(&stack);
    stack.kubectl(&["apply", "-f", "-"], Some(&objects));

    // 1. Down: Ignore admits, Fail refuses.
    let (ok, out, ignore_s) = kubectl(&stack, &["apply", "-f", "-"], Some(&workload("down", "h100", 1)));
    assert!(ok, "with Ignore and no webhook the write goes through: {out}");
    set_failure_policy(&stack, "Fail");
    let (ok, out, fail_s) = kubectl(&stack, &["apply", "-f", "-"], Some(&workload("down-fail", "h100", 1)));
    assert!(!ok && out.contains("failed calling webhook"), "with Fail and no webhook the write is refused: {out}");
    eprintln!("operator down: Ignore admitted in {ignore_s:.2} s, Fail refused in {fail_s:.2} s");

    // 2. Up: two replicas under leader election, started together, each serving the
    // webhook on its own port; the configuration calls the first.
    let op_kubeconfig = operator_kubeconfig(&stack);
    let port2 = free_port();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    for (name, p) in [("operator", port), ("operator-2", port2)] {
        let metrics = if name == "operator" { metrics_addr.clone() } else { format!("127.0.0.1:{}", free_port()) };
        let port_s = p.to_string();
        let secret = format!("{}/llmos-operator-webhook-tls", e2e_support::OPERATOR_NS);
        let args = [
            "run",
            "--leader-election",
            "--lease-namespace",
            e2e_support::OPERATOR_NS,
            "--metrics-addr",
            &metrics,
            "--webhook-port",
            &port_s,
            "--webhook-secret",
            &secret,
            "--webhook-configuration",
            CONFIG,
            "--webhook-dns-name",
            "127.0.0.1",
            "--job-image",
            "llmos.local/llmos:dev",
        ];
        stack.spawn(name, &args, &[("KUBECONFIG", &op_kubeconfig)]);
    }
    let up = Instant::now();
    let valid = workload("chat", "a100", 1);
    loop {
        let (ok, out, _) = kubectl(&stack, &["apply", "-f", "-"], Some(&valid));
        if ok {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(90),
            "the valid workload was never admitted: {out}\noperator log:\n{}",
            tail(&stack.log("operator"))
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("webhook answering {:.1} s after the operator started", up.elapsed().as_secs_f64());
    let ca = stack.kubectl(
        &["get", "validatingwebhookconfiguration", CONFIG, "-o", "jsonpath={.webhooks[*].clientConfig.caBundle}"],
        None,
    );
    assert_eq!(ca.split_whitespace().count(), 2, "both webhooks carry the operator's CA: {ca:?}");

    let (ok, out, deny_s) = kubectl(&stack, &["apply", "-f", "-"], Some(&workload("bad", "h100", 3)));
    assert!(!ok, "an invalid workload is refused: {out}");
    for says in ["denied the request", "spec.variants[0].pools[0]", "h100", "spec.variants[0].minReplicas"] {
        assert!(out.contains(says), "the denial says {says:?}: {out}");
    }
    eprintln!("denial ({deny_s:.2} s): {}", out.trim());
    let (ok, out, _) = kubectl(&stack, &["apply", "-f", "-"], Some(&workload("chat", "h100", 1)));
    assert!(!ok && out.contains("spec.variants[0].pools[0]"), "a change to an invalid spec is refused: {out}");
    let (ok, out, _) = kubectl(&stack, &["label", "llmworkload", "down", "-n", NS, "team=a"], None);
    assert!(ok, "a label on a workload admitted while the webhook was down passes: {out}");
    let (ok, out, _) =
        kubectl(&stack, &["apply", "-f", "-"], Some(&training("t-bad", "{claimName: c, hostPath: /data}")));
    assert!(!ok && out.contains("spec.volume") && out.contains("not both"), "an invalid training is refused: {out}");
    let (ok, out, _) = kubectl(&stack, &["apply", "-f", "-"], Some(&training("t-ok", "{claimName: c}")));
    assert!(ok, "a valid training passes: {out}");
    // The replica the configuration calls counted what it answered.
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("the operator's /metrics")
        .text()
        .await
        .expect("text");
    let count = |labels: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("llmos_admission_reviews_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let denied = count(r#"kind="LLMWorkload",operation="CREATE",verdict="denied""#);
    let allowed = count(r#"kind="LLMWorkload",operation="CREATE",verdict="allowed""#);
    let training_denied = count(r#"kind="LLMPolicyTraining",operation="CREATE",verdict="denied""#);
    eprintln!("webhook metrics: LLMWorkload CREATE allowed {allowed}, denied {denied}; LLMPolicyTraining denied {training_denied}");
    assert!(allowed >= 1.0 && denied >= 1.0 && training_denied >= 1.0, "reviews counted by verdict:\n{text}");
    assert!(text.contains("llmos_admission_review_duration_seconds_count"), "review time measured");

    // Both replicas serve the one certificate of the Secret: with the first gone, the
    // configuration pointed at the second still verifies it.
    let made = [stack.log("operator"), stack.log("operator-2")]
        .iter()
        .map(|l| l.matches("made the webhook's CA and certificate").count())
        .sum::<usize>();
    assert_eq!(made, 1, "one replica made the CA, the other used it");
    stack.kill("operator");
    let url = serde_json::json!({"url": format!("https://127.0.0.1:{port2}/validate")});
    let ops: Vec<Value> = (0..2)
        .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/url"), "value": url["url"]}))
        .collect();
    let patch = serde_json::to_string(&ops).expect("json");
    stack.kubectl(&["patch", "validatingwebhookconfiguration", CONFIG, "--type=json", "-p", &patch], None);
    let (ok, out, _) = kubectl(&stack, &["apply", "-f", "-"], Some(&workload("bad-2", "h100", 1)));
    assert!(!ok && out.contains("denied the request"), "the second replica serves the same certificate: {out}");

    // 3. Down again, Ignore.
    stack.kill("operator-2");
    set_failure_policy(&stack, "Ignore");
    let (ok, out, down_s) = kubectl(&stack, &["apply", "-f", "-"], Some(&workload("bad-later", "h100", 3)));
    assert!(ok, "with Ignore and the operator gone the write goes through: {out}");
    eprintln!("operators killed: Ignore admitted in {down_s:.2} s");

    // 4. The operator's requests for its certificate were all allowed.
    let used = audited_requests(&stack);
    for (key, want) in [
        (("", "secrets", "get"), true),
        (("", "secrets", "update"), true),
        (("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"), true),
    ] {
        let k = (key.0.to_string(), key.1.to_string(), key.2.to_string());
        let (ok, refused) = used.get(&k).copied().unwrap_or((0, 0));
        assert_eq!((ok > 0, refused), (want, 0), "{key:?}: {ok} allowed, {refused} refused");
    }
    // A replica that cannot load its certificate (a Secret it has no grant for) keeps
    // retrying, and still exits promptly on SIGTERM.
    let metrics = format!("127.0.0.1:{}", free_port());
    let port3 = free_port().to_string();
    let args = [
        "run",
        "--leader-election",
        "--lease-namespace",
        e2e_support::OPERATOR_NS,
        "--metrics-addr",
        &metrics,
        "--webhook-port",
        &port3,
        "--webhook-secret",
        "llmos-system/not-granted",
        "--webhook-dns-name",
        "127.0.0.1",
    ];
    let pid = stack.spawn("operator-3", &args, &[("KUBECONFIG", &op_kubeconfig)]);
    let waited = Instant::now();
    while !stack.log("operator-3").contains("certificate cannot be loaded") {
        assert!(waited.elapsed() < Duration::from_secs(30), "no load error:\n{}", tail(&stack.log("operator-3")));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = stack.log("operator-3");
    assert!(
        log.contains("not-granted") && log.contains("forbidden"),
        "the error names the Secret and the refusal: {}",
        tail(&log)
    );
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
    let term = Instant::now();
    let child = stack.children.get_mut("operator-3").expect("operator-3");
    while child.try_wait().expect("try_wait").is_none() {
        assert!(term.elapsed() < Duration::from_secs(10), "operator-3 still runs 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("a replica retrying its certificate exited {:.1} s after SIGTERM", term.elapsed().as_secs_f64());

    eprintln!("e2e_admission: {:.1} s in all", started.elapsed().as_secs_f64());
}
