//! Shared harness of the controller tests: a real etcd + kube-apiserver 1.20 on loopback
//! (started once per test binary by `scripts/k8s/start.sh`), a fake metrics source, a
//! scripted policy and helpers to read objects and Events.
//!
//! The API server is found in `$LLMOS_K8S_BIN` or `~/.cache/llmos/k8s-1.20.2/bin`. When it
//! is missing the tests fail and say to run `scripts/k8s/build.sh`, unless
//! `LLMOS_SKIP_K8S=1`, in which case they print "skipped" and pass.
//!
//! One control plane serves every test of the binary (each test works in its own
//! namespace). It is stopped by [`TestCluster`]'s `Drop` where a test owns it, and in any
//! case by the watchdog `start.sh` leaves behind (`WATCH_PID`), which stops it once the
//! test process has exited, also after a panic or an abort.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use llmos::metrics::{MetricsError, MetricsQuery, MetricsSnapshot, MetricsSource, SlotMetrics};
use llmos::policy::{Decision, Observation, Policy};

/// A running control plane.
pub struct TestCluster {
    /// Run directory (kubeconfig, logs, pid files).
    pub run_dir: PathBuf,
    /// Path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory of the Kubernetes binaries (kubectl too).
    pub bin: PathBuf,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/k8s/stop.sh")).arg(&self.run_dir).status();
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the Kubernetes test binaries are expected.
pub fn k8s_bin() -> PathBuf {
    match std::env::var_os("LLMOS_K8S_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llmos/k8s-1.20.2/bin"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts a control plane in a fresh run directory.
pub fn start_cluster(tag: &str) -> Result<TestCluster, String> {
    let bin = k8s_bin();
    if !bin.join("kube-apiserver").exists() {
        return Err(format!(
            "kube-apiserver not found in {} (set LLMOS_K8S_BIN or build it): run scripts/k8s/build.sh \
             (about 5-12 minutes once per machine), or set LLMOS_SKIP_K8S=1 to skip these tests",
            bin.display()
        ));
    }
    let run_dir = std::env::temp_dir().join(format!("llmos-k8s-{tag}-{}", std::process::id()));
    let out = Command::new(repo().join("scripts/k8s/start.sh"))
        .arg(&run_dir)
        .env("LLMOS_K8S_BIN", &bin)
        .env("ETCD_PORT", free_port().to_string())
        .env("ETCD_PEER_PORT", free_port().to_string())
        .env("API_PORT", free_port().to_string())
        .env("WATCH_PID", std::process::id().to_string())
        .output()
        .map_err(|e| format!("cannot run scripts/k8s/start.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/k8s/start.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let cluster = TestCluster { kubeconfig: run_dir.join("kubeconfig"), run_dir, bin };
    // Install the checked-in CRDs the way a user would.
    cluster.kubectl(&["apply", "-f", "crds/"])?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/llmworkloads.llmos.dev",
        "crd/gpupools.llmos.dev",
    ])?;
    Ok(cluster)
}

impl TestCluster {
    /// Runs kubectl against this cluster from the repository root.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(repo())
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("kubectl {} failed: {text}", args.join(" ")))
        }
    }

    /// A client for this cluster (one per test: clients belong to a runtime).
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig readable");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig valid");
        Client::try_from(cfg).expect("client")
    }
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The control plane shared by the tests of this binary; `None` when skipped
/// (`LLMOS_SKIP_K8S=1`). Panics with what to do when the binaries are missing.
pub fn cluster() -> Option<&'static TestCluster> {
    if std::env::var("LLMOS_SKIP_K8S").is_ok_and(|v| v == "1") {
        eprintln!("skipped: LLMOS_SKIP_K8S=1 (these tests need a real kube-apiserver)");
        return None;
    }
    match SHARED.get_or_init(|| start_cluster("shared")) {
        Ok(c) => Some(c),
        Err(e) => panic!("{e}"),
    }
}

/// Creates a fresh namespace and returns its name.
pub async fn namespace(client: &Client, name: &str) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
    name.to_string()
}

/// Events (events.k8s.io/v1) in `ns` with `reason`.
pub async fn events(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// A metrics source whose answer the test sets.
#[derive(Clone)]
pub struct FakeSource {
    answer: Arc<Mutex<Result<MetricsSnapshot, String>>>,
}

impl FakeSource {
    /// A source that answers with complete metrics: `rps` requests/s, every slot quiet.
    pub fn healthy(rps: f64) -> Self {
        let s = FakeSource { answer: Arc::new(Mutex::new(Ok(MetricsSnapshot::default()))) };
        s.set_healthy(rps);
        s
    }
    /// Answers with complete metrics from now on.
    pub fn set_healthy(&self, rps: f64) {
        *self.answer.lock().unwrap() = Ok(MetricsSnapshot {
            arrival_rate_rps: Some(rps),
            arrival_rate_trend_rps_per_s: Some(0.0),
            slo_attainment: Some(0.99),
            slots: Vec::<SlotMetrics>::new(),
            ..Default::default()
        });
    }
    /// Answers with a snapshot that lacks `series`.
    pub fn set_missing(&self, series: &str) {
        *self.answer.lock().unwrap() =
            Ok(MetricsSnapshot { arrival_rate_rps: None, missing: vec![series.to_string()], ..Default::default() });
    }
    /// Fails to answer.
    pub fn set_unreachable(&self, why: &str) {
        *self.answer.lock().unwrap() = Err(why.to_string());
    }
}

impl MetricsSource for FakeSource {
    fn name(&self) -> &str {
        "fake"
    }
    fn observe<'a>(&'a self, _q: &'a MetricsQuery<'a>) -> BoxFuture<'a, Result<MetricsSnapshot, MetricsError>> {
        let a = self.answer.lock().unwrap().clone();
        Box::pin(async move { a.map_err(|m| MetricsError::Unreachable { source_name: "fake".into(), message: m }) })
    }
}

/// Scripted (variant, pool, replicas) targets.
type Targets = Vec<(String, String, u32)>;

/// A policy that answers what the test scripted (or holds).
#[derive(Clone, Default)]
pub struct Script {
    targets: Arc<Mutex<Option<Targets>>>,
    /// Observations the policy was asked about.
    pub seen: Arc<Mutex<Vec<Observation>>>,
}

impl Script {
    /// From now on the policy asks for these (variant, pool, replicas).
    pub fn set(&self, t: &[(&str, &str, u32)]) {
        *self.targets.lock().unwrap() = Some(t.iter().map(|(v, p, r)| (v.to_string(), p.to_string(), *r)).collect());
    }
    /// A policy builder for a `Context`.
    pub fn builder(&self) -> llmos::controller::PolicyBuilder {
        let s = self.clone();
        Arc::new(move |_spec| Ok(Box::new(ScriptedPolicy(s.clone())) as Box<dyn Policy>))
    }
}

struct ScriptedPolicy(Script);

impl Policy for ScriptedPolicy {
    fn name(&self) -> &str {
        "scripted"
    }
    fn decide(&mut self, obs: &Observation) -> Decision {
        self.0.seen.lock().unwrap().push(obs.clone());
        match self.0.targets.lock().unwrap().clone() {
            None => Decision::hold(obs, "scripted: hold"),
            Some(t) => {
                let mut d = Decision::new("scripted decision");
                for (v, p, r) in t {
                    d.set(&v, &p, r);
                }
                d
            }
        }
    }
}

/// Path of a file in the repository.
pub fn repo_file(rel: &str) -> PathBuf {
    repo().join(Path::new(rel))
}
