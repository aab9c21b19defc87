//! What the chaos tests share: a fault-injecting proxy in front of Prometheus's query API,
//! the operator replicas started again with the same identity when they exit (as a
//! Pod's container with `restartPolicy: Always` would be), the Lease's holder, and what
//! they read of a workload's status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::routing::get;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use llmos::crd::LLMWorkloadStatus;

use super::{free_port, tail, Stack, OPERATOR_NS};

/// What the proxy in front of Prometheus does to the operator's queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Forward unchanged.
    Pass = 0,
    /// Answer HTTP 503 with a Prometheus error body.
    Error = 1,
    /// Wait 8 s (longer than the operator's 5 s query timeout), then forward.
    Slow = 2,
    /// Forward, with every sample value replaced by NaN.
    NaN = 3,
    /// Forward, with the staleness query answering that the newest sample is 600 s old.
    Stale = 4,
}

impl Fault {
    /// The fault stored as `v` in [`FaultProxy::mode`].
    pub fn from_u8(v: u8) -> Fault {
        match v {
            1 => Fault::Error,
            2 => Fault::Slow,
            3 => Fault::NaN,
            4 => Fault::Stale,
            _ => Fault::Pass,
        }
    }
}

/// Applies `fault` to one query's answer from `upstream`.
async fn proxied(fault: Fault, client: &reqwest::Client, upstream: &str, query: &str) -> (u16, String) {
    match fault {
        Fault::Error => {
            return (
                503,
                r#"{"status":"error","errorType":"unavailable","error":"injected by the chaos proxy"}"#.into(),
            )
        }
        Fault::Slow => tokio::time::sleep(Duration::from_secs(8)).await,
        _ => {}
    }
    let resp = match client.get(format!("{upstream}/api/v1/query?{query}")).send().await {
        Ok(r) => r,
        Err(e) => return (502, format!(r#"{{"status":"error","errorType":"proxy","error":"{e}"}}"#)),
    };
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let rewrite = |f: &dyn Fn(&mut serde_json::Value)| -> String {
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&body) else { return body.clone() };
        if let Some(results) = v["data"]["result"].as_array_mut() {
            for r in results {
                f(&mut r["value"][1]);
            }
        }
        v.to_string()
    };
    let decoded = super::form_decode(query);
    let body = match fault {
        Fault::NaN => rewrite(&|x| *x = serde_json::Value::String("NaN".into())),
        Fault::Stale if decoded.contains("timestamp(") => rewrite(&|x| *x = serde_json::Value::String("600".into())),
        _ => body,
    };
    (status, body)
}

/// The fault-injecting proxy: its URL, the fault it applies now (a [`Fault`] as `u8`),
/// and how many queries it answered.
pub struct FaultProxy {
    /// Where the operator sends its queries.
    pub url: String,
    /// The fault applied to every query from now on.
    pub mode: Arc<AtomicU8>,
    /// Queries answered so far.
    pub queries: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Applies `fault` from now on.
    pub fn set(&self, fault: Fault) {
        self.mode.store(fault as u8, Ordering::SeqCst);
    }
}

/// Starts the fault-injecting proxy in front of Prometheus at `upstream`, passing
/// queries unchanged until told otherwise.
pub async fn start_fault_proxy(upstream: String) -> FaultProxy {
    let mode = Arc::new(AtomicU8::new(Fault::Pass as u8));
    let queries = Arc::new(AtomicU64::new(0));
    let (m, n) = (mode.clone(), queries.clone());
    let client = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/api/v1/query",
        get(move |RawQuery(q): RawQuery| {
            let (m, n, client, upstream) = (m.clone(), n.clone(), client.clone(), upstream.clone());
            async move {
                n.fetch_add(1, Ordering::Relaxed);
                let fault = Fault::from_u8(m.load(Ordering::SeqCst));
                let (code, body) = proxied(fault, &client, &upstream, &q.unwrap_or_default()).await;
                (
                    axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FaultProxy { url: format!("http://127.0.0.1:{port}"), mode, queries }
}

/// The operator replicas (`llmos run` under leader election on one Lease), started again
/// with the same identity when they exit.
pub struct Operators {
    /// The kubeconfig every replica uses.
    pub kubeconfig: String,
    /// The Prometheus URL every replica queries.
    pub prom_url: String,
    /// The Lease they compete for (in the operator's namespace).
    pub lease: String,
    /// identity → (metrics address, starts so far); a replica is listed once started.
    pub replicas: BTreeMap<String, (String, usize)>,
    /// Replicas not started again while listed (a Pod whose node is gone).
    pub held_down: BTreeSet<String>,
    /// (seconds since the run started, identity) of every restart.
    pub restarts: Vec<(f64, String)>,
}

impl Operators {
    /// No replica started yet.
    pub fn new(kubeconfig: String, prom_url: String, lease: &str) -> Operators {
        Operators {
            kubeconfig,
            prom_url,
            lease: lease.into(),
            replicas: BTreeMap::new(),
            held_down: BTreeSet::new(),
            restarts: Vec::new(),
        }
    }

    /// The child-process name of `identity`'s current start.
    pub fn child(&self, identity: &str) -> String {
        format!("{identity}.{}", self.replicas[identity].1)
    }

    /// Starts (or starts again) replica `identity`, with the metrics address it had.
    pub fn start(&mut self, stack: &mut Stack, identity: &str) {
        let entry =
            self.replicas.entry(identity.to_string()).or_insert_with(|| (format!("127.0.0.1:{}", free_port()), 0));
        entry.1 += 1;
        let addr = entry.0.clone();
        let name = self.child(identity);
        stack.spawn(
            &name,
            &["run", "--metrics-addr", &addr, "--lease-namespace", OPERATOR_NS, "--lease-name", &self.lease],
            &[("POD_NAME", identity), ("LLMOS_PROMETHEUS_URL", &self.prom_url), ("KUBECONFIG", &self.kubeconfig)],
        );
    }

    /// Starts again every started replica whose process exited (a container restart),
    /// except those held down.
    pub fn supervise(&mut self, stack: &mut Stack, t0: Instant) {
        let ids: Vec<String> = self.replicas.keys().filter(|id| !self.held_down.contains(*id)).cloned().collect();
        for id in ids {
            let name = self.child(&id);
            let exited = stack.children.get_mut(&name).is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.restarts.push((t0.elapsed().as_secs_f64(), id.clone()));
                self.start(stack, &id);
            }
        }
    }

    /// The tails of the current logs of every replica.
    pub fn logs(&self, stack: &Stack) -> String {
        let mut out = String::new();
        for id in self.replicas.keys() {
            out.push_str(&format!("\n--- {} (tail) ---\n{}", self.child(id), tail(&stack.log(&self.child(id)))));
        }
        out
    }
}

/// The holder of Lease `lease` in the operator's namespace, when the API server answers
/// within `limit` and someone holds it.
pub async fn lease_holder(client: &Client, lease: &str, limit: Duration) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let got = tokio::time::timeout(limit, leases.get(lease)).await.ok()?.ok()?;
    got.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// What the chaos tests read of a sampled workload's status.
pub trait StatusView {
    /// The status, when it was read.
    fn status(&self) -> Option<&LLMWorkloadStatus>;

    /// The `MetricsAvailable` condition, when the status has one.
    fn metrics_available(&self) -> Option<bool> {
        let s = self.status()?;
        s.conditions.iter().find(|c| c.type_ == "MetricsAvailable").map(|c| c.status == "True")
    }

    /// When the last recorded decision was made.
    fn decision_time(&self) -> Option<String> {
        self.status()?.last_decision.as_ref().map(|d| d.time.clone())
    }

    /// Replicas over all slots of the last recorded decision.
    fn decided_total(&self) -> Option<u32> {
        Some(self.status()?.last_decision.as_ref()?.targets.iter().map(|t| t.replicas).sum())
    }
}
