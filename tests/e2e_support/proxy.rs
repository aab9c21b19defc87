//! A fault-injecting proxy between one operator replica and the test's kube-apiserver,
//! in two layers (`tests/e2e_chaos_api.rs`):
//!
//! - **TCP**: what the operator's kubeconfig names (`http://127.0.0.1:<port>`). It relays
//!   bytes both ways; while [`ApiProxy::partition`] holds, it accepts connections but
//!   relays nothing in either direction (a black hole: the operator's requests and open
//!   watches hang, nothing fails fast), and when [`ApiProxy::heal`] ends it, what was held
//!   is delivered in order, as TCP retransmission would deliver it after a real partition
//!   (also a request whose sender has given up or exited meanwhile).
//! - **HTTP**: plain HTTP from the TCP layer, forwarded over TLS to the API server with the
//!   operator's own token (so the API server still sees the operator's ServiceAccount).
//!   Every request is logged ([`ApiProxy::requests`]); with [`ApiProxy::throttle`] a share
//!   is answered `429 Too Many Requests` with `Retry-After`, and another share is held for
//!   a delay before it is forwarded. Response bodies are streamed (watches).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the HTTP layer throttles: of every `every` requests (counted over the proxy's
/// life), the first is answered 429 with `Retry-After: retry_after_s`, the second waits
/// `delay` before it is forwarded, the rest pass. A retried request is a new request, so
/// no request is refused twice in a row.
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    /// Cycle length (at least 2).
    pub every: u64,
    /// The `Retry-After` header of a 429, seconds.
    pub retry_after_s: u64,
    /// How long a delayed request waits.
    pub delay: Duration,
}

/// One request the HTTP layer saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Seconds since the proxy started, when the request arrived.
    pub at_s: f64,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The status answered (the API server's, 429 when refused here, 502 when the API
    /// server could not be reached; 0 while unanswered).
    pub status: u16,
    /// How the proxy treated it: `pass`, `throttled` or `delayed`.
    pub treated: &'static str,
}

impl Seen {
    /// A request that changes something (anything but GET, HEAD, OPTIONS).
    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }

    /// A request about the leader-election Lease.
    pub fn is_lease(&self) -> bool {
        self.uri.contains("/leases")
    }
}

struct Shared {
    t0: Instant,
    partitioned: tokio::sync::watch::Sender<bool>,
    throttle: Mutex<Option<Throttle>>,
    counter: AtomicU64,
    log: Mutex<Vec<Seen>>,
    upstream: String,
    client: reqwest::Client,
}

/// The proxy in front of the API server for one operator replica; runs until the test's
/// runtime ends.
#[derive(Clone)]
pub struct ApiProxy {
    /// What the operator's kubeconfig names: `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
}

impl ApiProxy {
    /// Starts both layers in front of `upstream` (`https://127.0.0.1:<port>`), trusting the
    /// CA in `ca_pem`.
    pub async fn start(upstream: &str, ca_pem: &[u8]) -> ApiProxy {
        let ca = reqwest::Certificate::from_pem(ca_pem).expect("the API server's CA");
        let client = reqwest::Client::builder().add_root_certificate(ca).build().expect("proxy client");
        let (partitioned, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            partitioned,
            throttle: Mutex::new(None),
            counter: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
        });
        let http = TcpListener::bind("127.0.0.1:0").await.expect("proxy HTTP port");
        let http_addr = http.local_addr().expect("proxy HTTP address");
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("proxy TCP port");
        let url = format!("http://{}", tcp.local_addr().expect("proxy TCP address"));
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = tcp.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(http_addr).await else { return };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = pump(dr, uw, s.partitioned.subscribe());
                    let b = pump(ur, dw, s.partitioned.subscribe());
                    futures::future::join(a, b).await;
                });
            }
        });
        ApiProxy { url, shared }
    }

    /// Starts the black hole: nothing passes either way until [`ApiProxy::heal`].
    pub fn partition(&self) {
        self.shared.partitioned.send_replace(true);
    }

    /// Ends the black hole; what was held is delivered.
    pub fn heal(&self) {
        self.shared.partitioned.send_replace(false);
    }

    /// Throttles from now on (`None`: stops throttling).
    pub fn throttle(&self, t: Option<Throttle>) {
        *self.shared.throttle.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Seconds since the proxy started (the clock of [`Seen::at_s`]).
    pub fn now_s(&self) -> f64 {
        self.shared.t0.elapsed().as_secs_f64()
    }

    /// Every request the HTTP layer saw so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Copies `from` to `to`, holding what it read while the partition is on; an end of
/// stream is passed on (after a partition, too) as a shutdown of the write side.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut partitioned: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if partitioned.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The HTTP layer: throttles as set, forwards, logs.
async fn forward(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let at_s = s.t0.elapsed().as_secs_f64();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let throttle = *s.throttle.lock().unwrap_or_else(|e| e.into_inner());
    let n = s.counter.fetch_add(1, Ordering::SeqCst);
    let mut treated = "pass";
    if let Some(t) = throttle {
        match n % t.every.max(2) {
            0 => {
                let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too many requests (injected by the test proxy)","reason":"TooManyRequests","code":429}"#;
                log(&s, at_s, &method, &uri, 429, "throttled");
                return Response::builder()
                    .status(429)
                    .header("content-type", "application/json")
                    .header("retry-after", t.retry_after_s.to_string())
                    .body(Body::from(body))
                    .expect("a 429 response");
            }
            1 => {
                treated = "delayed";
                tokio::time::sleep(t.delay).await;
            }
            _ => {}
        }
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = s.client.request(parts.method.clone(), format!("{}{pq}", s.upstream)).body(body);
    for (k, v) in &parts.headers {
        if !matches!(k.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
            out = out.header(k, v);
        }
    }
    // Logged on arrival (status 0 until answered), and sent from a task of its own: a
    // request whose sender has hung up (it gave up, or exited) still reaches the API
    // server, as one delivered by the network after the sender is gone would.
    let i = log(&s, at_s, &method, &uri, 0, treated);
    let s2 = s.clone();
    let sent = tokio::spawn(async move {
        let r = out.send().await;
        let status = r.as_ref().map_or(502, |r| r.status().as_u16());
        s2.log.lock().unwrap_or_else(|e| e.into_inner())[i].status = status;
        r
    });
    let resp = match sent.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Response::builder().status(502).body(Body::from(format!("proxy: {e}"))).expect("a 502 response")
        }
        Err(e) => {
            return Response::builder().status(502).body(Body::from(format!("proxy: {e}"))).expect("a 502 response")
        }
    };
    let status = resp.status().as_u16();
    let mut builder = Response::builder().status(status);
    for (k, v) in resp.headers() {
        if !matches!(k.as_str(), "content-length" | "connection" | "transfer-encoding") {
            builder = builder.header(k, v);
        }
    }
    let stream = futures::stream::unfold(Some(resp), |r| async move {
        let mut r = r?;
        match r.chunk().await {
            Ok(Some(b)) => Some((Ok::<_, std::io::Error>(b), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    builder.body(Body::from_stream(stream)).expect("a forwarded response")
}

/// Appends a request to the log; returns its index.
fn log(s: &Shared, at_s: f64, method: &http::Method, uri: &http::Uri, status: u16, treated: &'static str) -> usize {
    let mut l = s.log.lock().unwrap_or_else(|e| e.into_inner());
    l.push(Seen { at_s, method: method.to_string(), uri: uri.to_string(), status, treated });
    l.len() - 1
}

/// A kubeconfig for the operator's identity that names `proxy` (plain HTTP) instead of
/// the API server; written next to `operator_kubeconfig` as `<file>-<suffix>`.
pub fn kubeconfig_via(operator_kubeconfig: &str, proxy: &ApiProxy, suffix: &str) -> String {
    let text = std::fs::read_to_string(operator_kubeconfig).expect("the operator's kubeconfig");
    let out: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("certificate-authority:"))
        .map(|l| match l.split_once("server:") {
            Some((indent, _)) => format!("{indent}server: {}", proxy.url),
            None => l.to_string(),
        })
        .collect();
    let path = format!("{operator_kubeconfig}-{suffix}");
    std::fs::write(&path, out.join("\n") + "\n").expect("writing the proxied kubeconfig");
    path
}

/// The API server URL and CA file a kubeconfig of scripts/k8s/start.sh names.
pub fn upstream_of(kubeconfig: &str) -> (String, String) {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in {kubeconfig}"))
    };
    (field("server:"), field("certificate-authority:"))
}
