//! The validating admission webhook: `llmos run` answers admission.k8s.io/v1
//! `AdmissionReview`s for LLMWorkload and LLMPolicyTraining creates and updates over TLS,
//! so a spec the reconciler would refuse is refused when it is written instead of at its
//! first reconcile.
//!
//! It calls the checks the reconcilers call, nothing else, so admission and reconcile
//! never disagree: [`super::validate::validate_spec`] for an LLMWorkload (the denial lists
//! every problem as the reconcile-time Warning does, through [`super::validate::summary`])
//! and [`super::training::validate`] for an LLMPolicyTraining (with the operator's default
//! Job image). Rules that need cluster state are left to reconcile: whether the GPUPools
//! of `poolRefs` exist, whether the LLMWorkload a training names exists. Objects may be
//! applied in any order (a GPUPool after the workload that uses it), as Kubernetes allows
//! for Pods and the ConfigMaps they mount, and the reconcilers check them at every pass.
//!
//! An update that leaves `spec` as it was is admitted, and so is any update of an object
//! being deleted: a workload admitted before the webhook existed (or while it was down)
//! keeps its finalizer and metadata writable and can always be deleted. GPUPools have no
//! rule beyond their schema, so they are not sent here.
//!
//! Bad requests never panic: a body that is not an AdmissionReview is answered 400 with
//! the parse error, a body over [`MAX_BODY_BYTES`] 413, a kind this webhook does not
//! validate is denied naming the kind.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The path the API server posts reviews to.
pub const PATH: &str = "/validate";

/// The largest AdmissionReview read: an object and its old version, each at most etcd's
/// 1.5 MiB, with room for the rest. Larger bodies are answered 413.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What the checks need besides the object.
#[derive(Clone, Debug, Default)]
pub struct AdmissionConfig {
    /// The operator's default Job image (`--job-image` or `$LLMOS_JOB_IMAGE`): an
    /// LLMPolicyTraining without `spec.image` is valid only when there is one.
    pub job_image: Option<String>,
    /// Where answered reviews are counted (the operator's `/metrics`).
    pub metrics: super::telemetry::AdmissionMetrics,
}

/// The parts of an admission.k8s.io/v1 AdmissionReview that are read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

/// The parts of an AdmissionRequest that are read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    operation: String,
    #[serde(default)]
    object: Value,
    #[serde(default)]
    old_object: Value,
}

#[derive(Debug, Default, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// The answer to one request: admitted, or denied with a message and HTTP-like code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the write may proceed.
    pub allowed: bool,
    /// Why it is denied (empty when allowed).
    pub message: String,
    /// The code the API server returns to the writer when denied (422: invalid spec,
    /// 400: a request this webhook does not handle).
    pub code: u16,
}

impl Verdict {
    fn allow() -> Self {
        Verdict { allowed: true, message: String::new(), code: 200 }
    }

    fn deny(code: u16, message: String) -> Self {
        Verdict { allowed: false, message, code }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    code: u16,
    message: &'a str,
}

/// Answers one AdmissionReview body: the response review as JSON, or the HTTP status and
/// reason for a body that is not an admission.k8s.io/v1 AdmissionReview with a request.
pub fn review(body: &[u8], config: &AdmissionConfig) -> Result<Vec<u8>, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let r: Review =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not an AdmissionReview: {e}")))?;
    if r.api_version != "admission.k8s.io/v1" || r.kind != "AdmissionReview" {
        return Err(bad(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got {} {} (set admissionReviewVersions: [v1])",
            r.api_version, r.kind
        )));
    }
    let req = r.request.ok_or_else(|| bad("the AdmissionReview has no request".into()))?;
    let verdict = decide(&req, config);
    config.metrics.review(&req.kind.kind, &req.operation, if verdict.allowed { "allowed" } else { "denied" });
    if !verdict.allowed {
        tracing::info!(
            kind = %req.kind.kind, namespace = %req.namespace, name = %req.name, operation = %req.operation,
            message = %verdict.message, "admission denied"
        );
    }
    let out = ReviewOut {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: ResponseOut {
            uid: &req.uid,
            allowed: verdict.allowed,
            status: (!verdict.allowed).then_some(StatusOut { code: verdict.code, message: &verdict.message }),
        },
    };
    serde_json::to_vec(&out).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The verdict on one request.
fn decide(req: &Request, config: &AdmissionConfig) -> Verdict {
    let known = req.kind.group == "llmos.dev" && matches!(req.kind.kind.as_str(), "LLMWorkload" | "LLMPolicyTraining");
    if !known {
        return Verdict::deny(
            400,
            format!(
                "this webhook validates llmos.dev LLMWorkload and LLMPolicyTraining, not {:?} of group {:?}; check the ValidatingWebhookConfiguration's rules",
                req.kind.kind, req.kind.group
            ),
        );
    }
    if !matches!(req.operation.as_str(), "CREATE" | "UPDATE") {
        return Verdict::allow();
    }
    if req.operation == "UPDATE" {
        // Finalizers, labels, status written through the main resource: never blocked by
        // a spec that was admitted before (or while the webhook was away).
        if !req.object["metadata"]["deletionTimestamp"].is_null()
            || req.object.get("spec") == req.old_object.get("spec")
        {
            return Verdict::allow();
        }
    }
    let name = req.object["metadata"]["name"].as_str().filter(|n| !n.is_empty()).unwrap_or(&req.name);
    let problems = match req.kind.kind.as_str() {
        "LLMWorkload" => workload_problems(name, &req.object),
        _ => training_problems(&req.object, config),
    };
    match problems {
        None => Verdict::allow(),
        Some(p) => Verdict::deny(422, format!("{} {name:?}: spec not applied, fix: {p}", req.kind.kind)),
    }
}

/// The problems of an LLMWorkload object as one line (the reconcile-time Warning's), or
/// `None` when it is valid.
fn workload_problems(name: &str, object: &Value) -> Option<String> {
    let wl: crate::crd::LLMWorkload = match serde_json::from_value(object.clone()) {
        Ok(wl) => wl,
        Err(e) => return Some(format!("spec: cannot be read: {e}")),
    };
    let problems = super::validate::validate_spec(name, &wl.spec);
    (!problems.is_empty()).then(|| super::validate::summary(&problems))
}

/// The problem of an LLMPolicyTraining object, or `None` when it is valid.
fn training_problems(object: &Value, config: &AdmissionConfig) -> Option<String> {
    let t: crate::crd::training::LLMPolicyTraining = match serde_json::from_value(object.clone()) {
        Ok(t) => t,
        Err(e) => return Some(format!("spec: cannot be read: {e}")),
    };
    super::training::validate(&t.spec, config.job_image.as_deref()).err().map(|p| p.to_string())
}

/// The webhook's HTTP routes: `POST /validate`, bodies limited to [`MAX_BODY_BYTES`].
pub fn router(config: AdmissionConfig) -> axum::Router {
    let config = Arc::new(config);
    axum::Router::new()
        .route(
            PATH,
            axum::routing::post(move |body: Bytes| {
                let config = config.clone();
                async move { answer(&body, &config) }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

fn answer(body: &[u8], config: &AdmissionConfig) -> Response {
    let started = std::time::Instant::now();
    let out = match review(body, config) {
        Ok(json) => ([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err((code, why)) => {
            config.metrics.review("", "", "bad_request");
            tracing::warn!(status = code.as_u16(), error = %why, "bad admission request");
            (code, why).into_response()
        }
    };
    config.metrics.duration.observe(started.elapsed().as_secs_f64());
    out
}

/// Flags of `llmos run` for the webhook.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WebhookArgs {
    /// Port of the validating admission webhook (HTTPS, `POST /validate`), served by every
    /// replica, leader or not; 0 turns it off. Served only with a certificate source:
    /// `--webhook-cert-dir` or `--webhook-secret`.
    #[arg(long, default_value_t = 9443)]
    pub webhook_port: u16,
    /// A directory holding `tls.crt` and `tls.key` (a cert-manager Secret, mounted), read
    /// again every minute.
    #[arg(long)]
    pub webhook_cert_dir: Option<std::path::PathBuf>,
    /// A Secret (`NAME`, in the operator's namespace, or `NAMESPACE/NAME`) in which the
    /// operator keeps a CA and serving certificate of its own, shared by every replica.
    #[arg(long, conflicts_with = "webhook_cert_dir")]
    pub webhook_secret: Option<String>,
    /// The ValidatingWebhookConfiguration whose webhooks get the operator's CA as
    /// `caBundle` (with `--webhook-secret`).
    #[arg(long, requires = "webhook_secret")]
    pub webhook_configuration: Option<String>,
    /// A DNS name (or IP address) the operator's certificate is for, e.g. the webhook
    /// Service's `NAME.NAMESPACE.svc`; repeat for more (with `--webhook-secret`).
    #[arg(long = "webhook-dns-name", requires = "webhook_secret")]
    pub webhook_dns_names: Vec<String>,
}

impl WebhookArgs {
    /// The certificate source the flags name, `own_ns` being the operator's namespace;
    /// `None` when the webhook is off.
    pub fn source(&self, own_ns: &str) -> Option<super::webhook_cert::CertSource> {
        use super::webhook_cert::CertSource;
        if self.webhook_port == 0 {
            return None;
        }
        if let Some(dir) = &self.webhook_cert_dir {
            return Some(CertSource::Dir(dir.clone()));
        }
        let secret = self.webhook_secret.as_ref()?;
        let (namespace, secret) = match secret.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (own_ns.to_string(), secret.clone()),
        };
        Some(CertSource::SelfSigned {
            namespace,
            secret,
            configuration: self.webhook_configuration.clone(),
            names: self.webhook_dns_names.clone(),
        })
    }
}

/// Binds the webhook's port and serves it in a task until `shutdown`, once its
/// certificate is loaded (tried again every 10 s while it cannot be: an RBAC or Secret
/// problem is logged, and the controller still refuses invalid specs at reconcile); the
/// task ends on `shutdown` whatever it is doing.
/// `Ok(None)` when the flags turn it off; an error when the port cannot be bound.
pub async fn start(
    args: &WebhookArgs,
    client: kube::Client,
    own_ns: &str,
    config: AdmissionConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use anyhow::Context as _;
    let Some(source) = args.source(own_ns) else {
        tracing::info!("the validating webhook is not served (no --webhook-cert-dir or --webhook-secret, or port 0)");
        return Ok(None);
    };
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], args.webhook_port));
    let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the webhook port {addr}"))?;
    // A stop ends the task also while the certificate is still being loaded or waited for.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    Ok(Some(tokio::spawn(async move {
        let cert = loop {
            let attempt = tokio::select! {
                r = super::webhook_cert::load(&source, &client) => r,
                _ = shutdown.clone() => return,
            };
            match attempt {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the webhook's certificate cannot be loaded; retrying in 10 s");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                        _ = shutdown.clone() => return,
                    }
                }
            }
        };
        let listener = match super::webhook_cert::TlsListener::new(tcp, cert) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %format!("{e:#}"), "the webhook cannot serve TLS"),
        };
        tracing::info!(addr = %addr, path = PATH, "serving the validating admission webhook");
        if let Err(e) = axum::serve(listener, router(config)).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the webhook server stopped");
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload(spec: Value) -> Value {
        json!({"apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload", "metadata": {"name": "w", "namespace": "ns"}, "spec": spec})
    }

    fn good_spec() -> Value {
        json!({
            "variants": [{"name": "small", "model": "m", "image": "i", "pools": ["a100"], "minReplicas": 1, "maxReplicas": 2}],
            "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
        })
    }

    fn bad_spec() -> Value {
        let mut s = good_spec();
        s["variants"][0]["pools"] = json!(["h100"]);
        s["variants"][0]["minReplicas"] = json!(3);
        s
    }

    fn request(kind: &str, operation: &str, object: Value, old: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "llmos.dev", "version": "v1alpha1", "kind": kind},
                        "name": "w", "namespace": "ns", "operation": operation, "object": object, "oldObject": old}
        }))
        .expect("json")
    }

    fn response(body: &[u8]) -> Value {
        let out = review(body, &AdmissionConfig::default()).expect("a review");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1", "the uid is echoed");
        v["response"].clone()
    }

    #[test]
    fn a_valid_workload_is_admitted() {
        let r = response(&request("LLMWorkload", "CREATE", workload(good_spec()), Value::Null));
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("status").is_none());
    }

    #[test]
    fn an_invalid_workload_is_denied_naming_the_fields_as_reconcile_does() {
        let r = response(&request("LLMWorkload", "CREATE", workload(bad_spec()), Value::Null));
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 422);
        let msg = r["status"]["message"].as_str().expect("a message");
        let wl: crate::crd::LLMWorkload = serde_json::from_value(workload(bad_spec())).expect("parses");
        let reconcile = super::super::validate::summary(&super::super::validate::validate_spec("w", &wl.spec));
        assert!(msg.ends_with(&reconcile), "admission {msg:?} and reconcile {reconcile:?} agree");
        assert!(msg.contains("spec.variants[0].pools[0]") && msg.contains("spec.variants[0].minReplicas"), "{msg}");
    }

    #[test]
    fn updates_that_keep_the_spec_or_delete_are_admitted() {
        let mut obj = workload(bad_spec());
        obj["metadata"]["finalizers"] = json!(["llmos.dev/cleanup"]);
        let r = response(&request("LLMWorkload", "UPDATE", obj.clone(), workload(bad_spec())));
        assert_eq!(r["allowed"], true, "a finalizer added to an invalid workload: {r}");
        let mut deleting = workload(bad_spec());
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        let r = response(&request("LLMWorkload", "UPDATE", deleting, workload(good_spec())));
        assert_eq!(r["allowed"], true, "{r}");
        let r = response(&request("LLMWorkload", "UPDATE", workload(bad_spec()), workload(good_spec())));
        assert_eq!(r["allowed"], false, "a spec change to an invalid spec: {r}");
        let r = response(&request("LLMWorkload", "DELETE", Value::Null, workload(bad_spec())));
        assert_eq!(r["allowed"], true, "{r}");
    }

    #[test]
    fn an_unreadable_object_is_denied_with_the_parse_error() {
        let mut s = good_spec();
        s["variants"][0]["maxReplicass"] = json!(3);
        let r = response(&request("LLMWorkload", "CREATE", workload(s), Value::Null));
        assert_eq!(r["allowed"], false);
        assert!(r["status"]["message"].as_str().is_some_and(|m| m.contains("maxReplicass")), "{r}");
        let r = response(&request("LLMWorkload", "CREATE", json!("not an object"), Value::Null));
        assert_eq!(r["allowed"], false, "{r}");
    }

    #[test]
    fn trainings_are_checked_with_the_operators_default_image() {
        let t = |volume: Value| {
            json!({"apiVersion": "llmos.dev/v1alpha1", "kind": "LLMPolicyTraining", "metadata": {"name": "t"},
                   "spec": {"workload": "w", "algorithm": "ppo", "steps": 1000, "traces": {"recorded": true}, "volume": volume}})
        };
        let body = request("LLMPolicyTraining", "CREATE", t(json!({"claimName": "c", "hostPath": "/x"})), Value::Null);
        let r = response(&body);
        assert_eq!(r["allowed"], false);
        assert!(r["status"]["message"].as_str().is_some_and(|m| m.contains("spec.volume")), "{r}");
        let body = request("LLMPolicyTraining", "CREATE", t(json!({"claimName": "c"})), Value::Null);
        let r = response(&body);
        assert!(r["status"]["message"].as_str().is_some_and(|m| m.contains("spec.image")), "no default image: {r}");
        let config = AdmissionConfig { job_image: Some("llmos:dev".into()), ..Default::default() };
        let out: Value = serde_json::from_slice(&review(&body, &config).expect("review")).expect("json");
        assert_eq!(out["response"]["allowed"], true, "{out}");
    }

    #[test]
    fn bad_requests_get_a_clear_answer_never_a_panic() {
        for (body, says) in [
            (&b"{not json"[..], "not an AdmissionReview"),
            (b"", "not an AdmissionReview"),
            (b"[]", "not an AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#, "v1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#, "kind"),
        ] {
            let (code, why) = review(body, &AdmissionConfig::default()).expect_err("refused");
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(why.contains(says), "{why}");
        }
        let mut body: Value = serde_json::from_slice(&request("Pod", "CREATE", json!({}), Value::Null)).expect("json");
        body["request"]["kind"]["group"] = json!("");
        let r = response(&serde_json::to_vec(&body).expect("json"));
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        assert!(r["status"]["message"].as_str().is_some_and(|m| m.contains("\"Pod\"")), "{r}");
    }

    #[tokio::test]
    async fn the_router_answers_413_over_the_limit_and_400_on_garbage() {
        use tower::ServiceExt;
        let call = |body: Vec<u8>| async move {
            let req = axum::http::Request::post(PATH).body(axum::body::Body::from(body)).expect("request");
            router(AdmissionConfig::default()).oneshot(req).await.expect("infallible").status()
        };
        assert_eq!(call(vec![b' '; MAX_BODY_BYTES + 1]).await, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(call(b"garbage".to_vec()).await, StatusCode::BAD_REQUEST);
        let ok = call(request("LLMWorkload", "CREATE", workload(good_spec()), Value::Null)).await;
        assert_eq!(ok, StatusCode::OK);
    }

    #[tokio::test]
    async fn answered_reviews_are_counted_by_kind_operation_and_verdict() {
        use super::super::telemetry::AdmissionLabels;
        use tower::ServiceExt;
        let config = AdmissionConfig::default();
        let metrics = config.metrics.clone();
        let app = router(config);
        for body in [
            request("LLMWorkload", "CREATE", workload(good_spec()), Value::Null),
            request("LLMWorkload", "CREATE", workload(bad_spec()), Value::Null),
            request("LLMWorkload", "CREATE", workload(bad_spec()), Value::Null),
            b"garbage".to_vec(),
        ] {
            let req = axum::http::Request::post(PATH).body(axum::body::Body::from(body)).expect("request");
            app.clone().oneshot(req).await.expect("infallible");
        }
        let count = |kind: &str, operation: &str, verdict: &str| {
            let l = AdmissionLabels { kind: kind.into(), operation: operation.into(), verdict: verdict.into() };
            metrics.reviews.get_or_create(&l).get()
        };
        assert_eq!(count("LLMWorkload", "CREATE", "allowed"), 1);
        assert_eq!(count("LLMWorkload", "CREATE", "denied"), 2);
        assert_eq!(count("", "", "bad_request"), 1);
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "review time", metrics.duration.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("d_count 4"), "every answer timed: {text}");
    }
}
