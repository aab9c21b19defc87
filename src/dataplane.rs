//! `llmos twin-serve`: the twin as the data plane of a real API server.
//!
//! It lives outside [`crate::twin`] so that the simulator itself does not depend on kube:
//! this module is the kube-facing side (a client of the API server, an HTTP server per
//! simulated replica), the twin is the model behind it.
//!
//! What a kubelet and vLLM do for real Deployments, this command does in simulation (the
//! way kwok fakes nodes):
//!
//! 1. It watches (polls every `--sync-ms`) the Deployments labelled
//!    `llmos.dev/workload` in `--namespace`, which the operator creates, and reads each
//!    workload's `LLMWorkload` for its variants, pools and SLO.
//! 2. Per workload it runs a [`Twin`] of the `--scenario`, or of the workload's own
//!    `--workload-scenario NAME=FILE` (its trace or synthetic arrivals, catalog, engine
//!    and cluster settings; the spec is the cluster's, `poolRefs` resolved from the
//!    GPUPools they name), starting
//!    with no replicas. Whenever a Deployment's `spec.replicas` changes, the twin gets the
//!    same desired count for that (variant, pool): new replicas go through the cold start
//!    of their variant and pool, removed ones drain.
//! 3. Simulated time runs `--speed` times faster than wall time: the twin steps one
//!    control interval (`spec.policy.intervalSeconds` of simulated time) whenever wall
//!    time × speed has caught up with it. Counters and histograms are exposed divided by
//!    the speed (`--raw-counters` turns that off), so a rate read over wall time is the
//!    rate per simulated second; gauges are exposed as they are.
//! 4. Every replica that serves gets its own loopback address `--ip-base + 1 + id` on the
//!    variant's port, with `/metrics` answering the twin's Prometheus text (vLLM's names);
//!    the `file_sd` targets file (`--targets-file`) lists these addresses with the labels
//!    `llmos_workload`, `llmos_variant`, `llmos_pool`, `namespace`, `pod` (what
//!    Prometheus' relabelling produces from pod labels in a real cluster).
//! 5. Status goes back to the API server so `kubectl get` shows progress: when Pods exist
//!    (kube-controller-manager running), the i-th Pod of a slot (oldest first) mirrors the
//!    twin's i-th replica: `Running`/`Ready` with the replica's address as `podIP` once it
//!    serves, `Pending` while it cold-starts; the ReplicaSet and Deployment controllers
//!    then count ready replicas themselves. Without Pods, the Deployment's status is
//!    patched directly. With `--scheduled-only` (a kube-scheduler runs), only Pods bound
//!    to a Node serve: a slot's replicas are capped by its bound Pods, and a bound Pod
//!    being deleted is removed at once, as its kubelet would confirm (the twin drains
//!    its replica).
//!
//! Stops on SIGINT/SIGTERM, removing its targets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::crd::pool::resolve_pools;
use crate::crd::{GPUPool, GPUPoolSpec, LLMWorkload};
use crate::metrics::vllm::{
    POD_LABEL_POOL, POD_LABEL_VARIANT, POD_LABEL_WORKLOAD, SERIES_LABEL_NAMESPACE, SERIES_LABEL_POOL,
    SERIES_LABEL_VARIANT, SERIES_LABEL_WORKLOAD,
};
use crate::policy::observation::{Decision, SlotTarget};
use crate::twin::{ReplicaState, Scenario, Twin};

/// Arguments of `llmos twin-serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Scenario TOML: the trace or synthetic arrivals to replay, catalogs, engine and
    /// cluster settings. Its spec is replaced by each LLMWorkload's spec from the cluster.
    #[arg(long)]
    pub scenario: PathBuf,
    /// Replay this trace file instead of the scenario's workload.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Namespace whose Deployments are served.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Serve only this LLMWorkload (default: every workload with Deployments).
    #[arg(long)]
    pub workload: Option<String>,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Expose counters and histograms as the simulation counts them, so that rates read
    /// over wall time are `--speed` times the simulated rates. By default they are divided
    /// by `--speed`: a rate Prometheus computes over wall time is then the rate per
    /// simulated second, what policies would see at real speed.
    #[arg(long)]
    pub raw_counters: bool,
    /// Seed of the twin.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the Prometheus `file_sd` targets (JSON).
    #[arg(long)]
    pub targets_file: PathBuf,
    /// Replica `id` listens on this address + 1 + id (a loopback address; 127/8 is all loopback on Linux).
    #[arg(long, default_value = "127.20.0.0")]
    pub ip_base: Ipv4Addr,
    /// Milliseconds between looks at the API server.
    #[arg(long, default_value_t = 250)]
    pub sync_ms: u64,
    /// `NAME=FILE`: the LLMWorkload NAME replays the scenario FILE (its trace or synthetic
    /// arrivals, catalogs, engine and cluster settings) instead of `--scenario`, so
    /// workloads that share a cluster see different traffic. Repeatable.
    #[arg(long = "workload-scenario", value_parser = parse_workload_scenario)]
    pub workload_scenarios: Vec<(String, PathBuf)>,
    /// A kube-scheduler places the Pods: a Pod serves only once it is bound to a Node (a
    /// slot runs as many replicas as its Deployment asks, capped by its bound Pods), and a
    /// bound Pod marked for deletion is removed once the twin has let its replica go (the
    /// kubelet's confirmation). Without it, every Pod the ReplicaSet creates serves.
    #[arg(long)]
    pub scheduled_only: bool,
}

/// Parses `NAME=FILE` of `--workload-scenario`.
fn parse_workload_scenario(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_string(), PathBuf::from(file))),
        _ => Err(format!("expected NAME=FILE (an LLMWorkload's name and a scenario TOML), got {s:?}")),
    }
}

/// The scenarios served: the default one and those named per workload.
struct Scenarios {
    default: Scenario,
    per_workload: BTreeMap<String, Scenario>,
}

impl Scenarios {
    fn for_workload(&self, name: &str) -> &Scenario {
        self.per_workload.get(name).unwrap_or(&self.default)
    }
}

/// One simulated replica's HTTP server.
struct ReplicaServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A served workload: its twin and what was last written for it.
struct Served {
    name: String,
    twin: Twin,
    started: Instant,
    desired: BTreeMap<(String, String), u32>,
    texts: Arc<RwLock<HashMap<usize, String>>>,
    servers: HashMap<usize, ReplicaServer>,
    pod_written: HashMap<String, (bool, String)>,
    deployment_written: HashMap<String, (u32, u32)>,
}

/// Runs `llmos twin-serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .try_init();
    anyhow::ensure!(args.speed.is_finite() && args.speed > 0.0, "--speed must be > 0, got {}", args.speed);
    let mut scenario =
        Scenario::load(&args.scenario).with_context(|| format!("loading scenario {}", args.scenario.display()))?;
    if let Some(t) = &args.trace {
        scenario.set_trace(t).with_context(|| format!("loading trace {}", t.display()))?;
    }
    scenario.file.initial_replicas.clear();
    let mut per_workload = BTreeMap::new();
    for (name, file) in &args.workload_scenarios {
        let mut sc = Scenario::load(file).with_context(|| {
            format!("loading the scenario of workload {name} (--workload-scenario {})", file.display())
        })?;
        sc.file.initial_replicas.clear();
        per_workload.insert(name.clone(), sc);
    }
    let scenarios = Scenarios { default: scenario, per_workload };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(serve(args, scenarios))
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(args: ServeArgs, scenarios: Scenarios) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("no Kubernetes configuration ($KUBECONFIG or ~/.kube/config)")?;
    client.apiserver_version().await.context("the Kubernetes API server does not answer")?;
    tracing::info!(namespace = %args.namespace, speed = args.speed, targets = %args.targets_file.display(), "twin-serve started");
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut last_targets = String::new();
    write_targets(&args.targets_file, "[]\n", &mut last_targets)?;
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        if let Err(e) = sync_once(&args, &scenarios, &client, &mut served).await {
            tracing::warn!(error = %format!("{e:#}"), "sync with the API server failed; retrying");
        }
        let targets = targets_json(&args, &served);
        if let Err(e) = write_targets(&args.targets_file, &targets, &mut last_targets) {
            tracing::warn!(error = %format!("{e:#}"), "writing targets file");
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(args.sync_ms.max(10))) => {}
        }
    }
    tracing::info!("twin-serve stopping");
    // Each workload's run so far (simulated time, requests, SLO attainment, GPU-hours),
    // so a run of the twin as the data plane can be set beside an offline one.
    for s in served.values() {
        let report = serde_json::to_string(&s.twin.report()).unwrap_or_default();
        tracing::info!(workload = %s.name, report = %report, "twin report");
    }
    served.clear();
    let _ = write_targets(&args.targets_file, "[]\n", &mut last_targets);
    Ok(())
}

/// Writes the targets file atomically when its content changed.
fn write_targets(path: &Path, content: &str, last: &mut String) -> anyhow::Result<()> {
    if content == last.as_str() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    *last = content.to_string();
    Ok(())
}

fn replica_addr(args: &ServeArgs, id: usize, port: u16) -> SocketAddr {
    let ip = Ipv4Addr::from(u32::from(args.ip_base).wrapping_add(1 + id as u32));
    SocketAddr::from((ip, port))
}

fn pod_name_for(name: &str, variant: &str, pool: &str, index: u32) -> String {
    format!("{name}-{variant}-{pool}-twin-{index}")
}

fn targets_json(args: &ServeArgs, served: &BTreeMap<String, Served>) -> String {
    let mut groups = Vec::new();
    for s in served.values() {
        let texts = s.texts.read().map(|t| t.keys().copied().collect::<BTreeSet<_>>()).unwrap_or_default();
        for r in s.twin.replicas() {
            let Some(server) = s.servers.get(&r.id) else { continue };
            if !texts.contains(&r.id) {
                continue;
            }
            groups.push(serde_json::json!({
                "targets": [server.addr.to_string()],
                "labels": {
                    SERIES_LABEL_WORKLOAD: s.name,
                    SERIES_LABEL_VARIANT: r.variant,
                    SERIES_LABEL_POOL: r.pool,
                    SERIES_LABEL_NAMESPACE: args.namespace,
                    "pod": pod_name_for(&s.name, &r.variant, &r.pool, r.index),
                }
            }));
        }
    }
    let mut out = serde_json::to_string_pretty(&groups).unwrap_or_else(|_| "[]".into());
    out.push('\n');
    out
}

async fn sync_once(
    args: &ServeArgs,
    scenarios: &Scenarios,
    client: &Client,
    served: &mut BTreeMap<String, Served>,
) -> anyhow::Result<()> {
    let wanted = wanted_slots(args, client).await?;
    let bound = match args.scheduled_only {
        true => Some(bound_pods(args, client).await?),
        false => None,
    };
    // Workloads whose Deployments are all gone stop.
    served.retain(|name, _| {
        let keep = wanted.contains_key(name);
        if !keep {
            tracing::info!(workload = %name, "Deployments gone; stopping its replicas");
        }
        keep
    });
    for (name, slots) in &wanted {
        if !served.contains_key(name) {
            match start_workload(args, scenarios.for_workload(name), client, name).await {
                Ok(s) => {
                    served.insert(name.clone(), s);
                }
                Err(e) => {
                    tracing::warn!(workload = %name, error = %format!("{e:#}"), "cannot simulate this workload; skipping");
                    continue;
                }
            }
        }
        let Some(s) = served.get_mut(name) else { continue };
        // A slot runs what its Deployment asks, capped by its bound Pods under a scheduler.
        let desired: BTreeMap<(String, String), u32> = slots
            .iter()
            .map(|(k, (_, r))| {
                let cap = bound
                    .as_ref()
                    .map_or(*r, |b| b.get(&(name.clone(), k.0.clone(), k.1.clone())).copied().unwrap_or(0));
                (k.clone(), (*r).min(cap))
            })
            .collect();
        if desired != s.desired {
            let decision = Decision {
                targets: desired
                    .iter()
                    .map(|((v, p), r)| SlotTarget { variant: v.clone(), pool: p.clone(), replicas: *r })
                    .collect(),
                reason: "Deployment replicas".into(),
                warnings: Vec::new(),
            };
            tracing::info!(workload = %name, targets = ?decision.targets, "applying Deployment replicas to the twin");
            s.twin.apply(&decision);
            s.desired = desired;
        }
        advance(s, args.speed);
        refresh_servers(args, s).await;
        if let Err(e) = write_status(args, client, s, slots).await {
            tracing::debug!(workload = %name, error = %format!("{e:#}"), "status write failed");
        }
    }
    Ok(())
}

/// Desired replicas per workload and (variant, pool), with the Deployment's name, from
/// the Deployments labelled with a workload.
async fn wanted_slots(args: &ServeArgs, client: &Client) -> anyhow::Result<BTreeMap<String, Slots>> {
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
    let list = deps.list(&ListParams::default().labels(POD_LABEL_WORKLOAD)).await.context("listing Deployments")?;
    let mut wanted: BTreeMap<String, Slots> = BTreeMap::new();
    for d in &list.items {
        let labels = d.labels();
        let (Some(w), Some(v), Some(p)) =
            (labels.get(POD_LABEL_WORKLOAD), labels.get(POD_LABEL_VARIANT), labels.get(POD_LABEL_POOL))
        else {
            continue;
        };
        if args.workload.as_ref().is_some_and(|only| only != w) || d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
        wanted.entry(w.clone()).or_default().insert((v.clone(), p.clone()), (d.name_any(), replicas));
    }
    Ok(wanted)
}

/// A workload's slots: (variant, pool) → (Deployment name, desired replicas).
type Slots = BTreeMap<(String, String), (String, u32)>;

/// Bound Pods per (workload, variant, pool), under `--scheduled-only`. A bound Pod marked
/// for deletion is removed (grace 0): the twin let its replica go when the Deployment
/// shrank, which is what a kubelet confirms after the drain.
async fn bound_pods(args: &ServeArgs, client: &Client) -> anyhow::Result<BTreeMap<(String, String, String), u32>> {
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let pods = pods_api.list(&ListParams::default().labels(POD_LABEL_WORKLOAD)).await.context("listing Pods")?;
    let mut out = BTreeMap::new();
    for p in &pods.items {
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
            continue;
        }
        if p.metadata.deletion_timestamp.is_some() {
            let dp = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            if let Err(e) = pods_api.delete(&p.name_any(), &dp).await {
                tracing::debug!(pod = %p.name_any(), error = %e, "removing a terminated Pod");
            }
            continue;
        }
        let l = p.labels();
        if let (Some(w), Some(v), Some(pl)) =
            (l.get(POD_LABEL_WORKLOAD), l.get(POD_LABEL_VARIANT), l.get(POD_LABEL_POOL))
        {
            *out.entry((w.clone(), v.clone(), pl.clone())).or_default() += 1;
        }
    }
    Ok(out)
}

/// Starts simulating workload `name`: its LLMWorkload's spec (poolRefs resolved from the
/// GPUPools they name) replaces the scenario's.
async fn start_workload(args: &ServeArgs, scenario: &Scenario, client: &Client, name: &str) -> anyhow::Result<Served> {
    let wl_api: Api<LLMWorkload> = Api::namespaced(client.clone(), &args.namespace);
    let wl = wl_api.get(name).await.context("Deployments without a readable LLMWorkload")?;
    let mut spec = wl.spec.clone();
    if !spec.pool_refs.is_empty() {
        let api: Api<GPUPool> = Api::all(client.clone());
        let pools = api.list(&ListParams::default()).await.context("listing GPUPools")?;
        let by_name: BTreeMap<String, GPUPoolSpec> = pools.items.into_iter().map(|p| (p.name_any(), p.spec)).collect();
        spec = resolve_pools(&spec, &by_name).context("resolving spec.poolRefs")?;
    }
    let mut sc = scenario.clone();
    sc.spec = spec;
    let twin = Twin::new(&sc, args.seed)?;
    tracing::info!(workload = %name, "simulating workload");
    Ok(Served {
        name: name.to_string(),
        twin,
        started: Instant::now(),
        desired: BTreeMap::new(),
        texts: Arc::new(RwLock::new(HashMap::new())),
        servers: HashMap::new(),
        pod_written: HashMap::new(),
        deployment_written: HashMap::new(),
    })
}

/// Steps the twin until simulated time has caught up with wall time × speed.
fn advance(s: &mut Served, speed: f64) {
    let target = s.started.elapsed().as_secs_f64() * speed;
    let dt = s.twin.control_interval_s().max(1e-3);
    let mut guard = 0;
    while !s.twin.is_done() && s.twin.now_s() + dt <= target && guard < 10_000 {
        s.twin.step();
        guard += 1;
    }
}

/// Refreshes every replica's metrics text and starts/stops their HTTP servers.
async fn refresh_servers(args: &ServeArgs, s: &mut Served) {
    let replicas = s.twin.replicas();
    let mut texts = HashMap::new();
    for r in &replicas {
        // Counters and histograms divided by the speed (unless `--raw-counters`), so rates
        // over wall time are per simulated second.
        let factor = if args.raw_counters { 1.0 } else { 1.0 / args.speed };
        if let Some(t) = s.twin.replica_metrics_text_scaled(r.id, factor) {
            texts.insert(r.id, t);
        }
    }
    if let Ok(mut w) = s.texts.write() {
        *w = texts;
    }
    let live: BTreeSet<usize> = replicas.iter().map(|r| r.id).collect();
    s.servers.retain(|id, _| live.contains(id));
    for r in &replicas {
        if s.servers.contains_key(&r.id) {
            continue;
        }
        let port = s.twin.spec().variants.iter().find(|v| v.name == r.variant).map_or(8000, |v| v.port);
        match start_server(replica_addr(args, r.id, port), r.id, s.texts.clone()).await {
            Ok(server) => {
                tracing::info!(workload = %s.name, variant = %r.variant, pool = %r.pool, addr = %server.addr, "replica created");
                s.servers.insert(r.id, server);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot serve replica {}", r.id),
        }
    }
}

async fn start_server(
    addr: SocketAddr,
    id: usize,
    texts: Arc<RwLock<HashMap<usize, String>>>,
) -> anyhow::Result<ReplicaServer> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        // The variant's port is taken on this address: any free port still serves Prometheus.
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .with_context(|| format!("binding {}", addr.ip()))?,
    };
    let bound = listener.local_addr().context("local address")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let texts = texts.clone();
            async move {
                match texts.read().ok().and_then(|t| t.get(&id).cloned()) {
                    Some(body) => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        body,
                    ),
                    None => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        "replica not serving yet\n".to_string(),
                    ),
                }
            }
        }),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(ReplicaServer { addr: bound, stop: Some(tx) })
}

/// Mirrors the twin's replicas onto Pods (or, without Pods, onto Deployment status).
async fn write_status(args: &ServeArgs, client: &Client, s: &mut Served, slots: &Slots) -> anyhow::Result<()> {
    let replicas = s.twin.replicas();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let pods = pods_api
        .list(&ListParams::default().labels(&format!("{POD_LABEL_WORKLOAD}={}", s.name)))
        .await
        .context("listing Pods")?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut by_slot: BTreeMap<(String, String), Vec<&Pod>> = BTreeMap::new();
    for p in &pods.items {
        let unbound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none();
        if p.metadata.deletion_timestamp.is_some() || (args.scheduled_only && unbound) {
            continue;
        }
        let l = p.labels();
        if let (Some(v), Some(pl)) = (l.get(POD_LABEL_VARIANT), l.get(POD_LABEL_POOL)) {
            by_slot.entry((v.clone(), pl.clone())).or_default().push(p);
        }
    }
    let pp = PatchParams::default();
    for ((v, pl), (dep_name, _)) in slots {
        let mut mine: Vec<_> =
            replicas.iter().filter(|r| &r.variant == v && &r.pool == pl && r.state != ReplicaState::Draining).collect();
        mine.sort_by_key(|r| r.index);
        let ready =
            mine.iter().filter(|r| matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring)).count() as u32;
        let live = mine.len() as u32;
        match by_slot.get_mut(&(v.clone(), pl.clone())) {
            Some(pods) if !pods.is_empty() => {
                pods.sort_by(|a, b| {
                    (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
                        .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
                });
                for (i, pod) in pods.iter().enumerate() {
                    let Some(r) = mine.get(i) else { break };
                    let is_ready = matches!(r.state, ReplicaState::Ready | ReplicaState::Retiring);
                    let port = s.twin.spec().variants.iter().find(|x| &x.name == v).map_or(8000, |x| x.port);
                    let ip = s
                        .servers
                        .get(&r.id)
                        .map(|x| x.addr.ip().to_string())
                        .unwrap_or_else(|| replica_addr(args, r.id, port).ip().to_string());
                    let name = pod.name_any();
                    if s.pod_written.get(&name) == Some(&(is_ready, ip.clone())) {
                        continue;
                    }
                    let ready_s = if is_ready { "True" } else { "False" };
                    let patch = serde_json::json!({ "status": {
                        "phase": if is_ready { "Running" } else { "Pending" },
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "hostIP": "127.0.0.1",
                        "startTime": now,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                            {"type": "ContainersReady", "status": ready_s, "lastTransitionTime": now},
                            {"type": "Ready", "status": ready_s, "lastTransitionTime": now,
                             "reason": if is_ready { "TwinReplicaReady" } else { "TwinColdStart" }},
                        ],
                    }});
                    pods_api
                        .patch_status(&name, &pp, &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("patching Pod {name} status"))?;
                    s.pod_written.insert(name, (is_ready, ip));
                }
            }
            _ => {
                if s.deployment_written.get(dep_name) == Some(&(live, ready)) {
                    continue;
                }
                let deps: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
                let patch = serde_json::json!({ "status": {
                    "replicas": live, "updatedReplicas": live, "readyReplicas": ready, "availableReplicas": ready,
                    "unavailableReplicas": live.saturating_sub(ready),
                }});
                deps.patch_status(dep_name, &pp, &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("patching Deployment {dep_name} status"))?;
                s.deployment_written.insert(dep_name.clone(), (live, ready));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_addresses_are_distinct_loopback() {
        let args = ServeArgs {
            scenario: PathBuf::new(),
            trace: None,
            namespace: "default".into(),
            workload: None,
            speed: 10.0,
            raw_counters: false,
            seed: 1,
            targets_file: PathBuf::new(),
            ip_base: Ipv4Addr::new(127, 20, 0, 0),
            sync_ms: 250,
            workload_scenarios: Vec::new(),
            scheduled_only: false,
        };
        assert_eq!(replica_addr(&args, 0, 8000).to_string(), "127.20.0.1:8000");
        assert_eq!(replica_addr(&args, 255, 8000).to_string(), "127.20.1.0:8000");
        assert!(replica_addr(&args, 7, 9).ip().is_loopback());
    }

    #[test]
    fn a_workload_scenario_is_name_equals_file() {
        assert_eq!(parse_workload_scenario("chat=a/b.toml"), Ok(("chat".into(), PathBuf::from("a/b.toml"))));
        for bad in ["chat", "=x.toml", "chat="] {
            let e = parse_workload_scenario(bad).unwrap_err();
            assert!(e.contains("NAME=FILE"), "{e}");
        }
    }
}
