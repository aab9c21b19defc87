//! Command-line entry points of the controller module: `llmos run` and `llmos crdgen`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::journal::DecisionJournal;
use super::leader::{default_identity, LeaderElector, LeaseConfig};
use super::telemetry::{init_tracing, serve, Health, LogFormat, OperatorMetrics};
use super::{run_controller, Context, ControllerConfig, PolicyBuilder, UnavailableSource};

/// Arguments of `llmos run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Watch LLMWorkloads in this namespace only (default: $LLMOS_NAMESPACE, else all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Address of the HTTP server with /metrics, /healthz, /readyz and the read-only
    /// decision pages (/decisions).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Control ticks kept per workload for the decision pages (memory only; about 2 KB
    /// each).
    #[arg(long, default_value_t = super::journal::DEFAULT_CAPACITY)]
    pub decisions_kept: usize,
    /// Most reconciles running at once (0: no limit); it also bounds the connections to
    /// the API server and to Prometheus that a burst of due ticks opens.
    #[arg(long, default_value_t = super::DEFAULT_MAX_CONCURRENT_RECONCILES)]
    pub max_concurrent_reconciles: u16,
    /// Take part in leader election (a Lease), so only one replica reconciles.
    #[arg(long = "leader-election", default_value_t = true, overrides_with = "no_leader_election")]
    pub leader_election: bool,
    /// Reconcile without leader election (a single replica, or local development).
    #[arg(long = "no-leader-election")]
    pub no_leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "llmos-operator-leader")]
    pub lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the kubeconfig's namespace).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// Prometheus base URL for workloads whose `spec.metrics.prometheusUrl` is empty
    /// (default: $LLMOS_PROMETHEUS_URL).
    #[arg(long)]
    pub prometheus_url: Option<String>,
    /// A file holding a bearer token for Prometheus (a mounted Secret or a projected
    /// ServiceAccount token); read again at every tick.
    #[arg(long)]
    pub prometheus_bearer_token_file: Option<std::path::PathBuf>,
    /// A PEM file of CA certificates that verify an `https://` Prometheus (e.g. a mounted
    /// ConfigMap with the cluster's CA).
    #[arg(long)]
    pub prometheus_ca_file: Option<std::path::PathBuf>,
    /// Directory of the traffic record (a PersistentVolume's mount in a cluster): workloads
    /// with `spec.learning.record.enabled` get one store each, `DIR/<namespace>_<name>/`.
    /// Without it nothing is recorded.
    #[arg(long)]
    pub record_dir: Option<std::path::PathBuf>,
    /// Image of the Jobs of LLMPolicyTrainings that name none (the operator's own image;
    /// default: $LLMOS_JOB_IMAGE). Without either, such a training is refused (spec.image).
    #[arg(long)]
    pub job_image: Option<String>,
    /// The validating admission webhook.
    #[command(flatten)]
    pub webhook: super::admission::WebhookArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `llmos=debug,kube=info`); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// The controller's settings from `llmos run`'s arguments.
fn controller_config(args: &RunArgs, identity: &str) -> ControllerConfig {
    let max_concurrent_reconciles = args.max_concurrent_reconciles;
    ControllerConfig { instance: identity.to_string(), max_concurrent_reconciles, ..Default::default() }
}

/// The policy builder of the operator: every registered kind ([`crate::rl::registry`]: the
/// policy module's and the rl module's, `kind: dqn` included).
pub fn default_policy_builder() -> PolicyBuilder {
    Arc::new(|spec| crate::rl::registry().build(spec).map_err(|e| e.to_string()))
}

/// Runs `llmos run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format, &args.log_level)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = rt.block_on(run_async(args));
    // Nothing left behind (a record writer still draining) may hold the exit up.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

async fn run_async(mut args: RunArgs) -> anyhow::Result<()> {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    args.namespace = args.namespace.or_else(|| from_env("LLMOS_NAMESPACE"));
    args.lease_namespace = args.lease_namespace.or_else(|| from_env("POD_NAMESPACE"));
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config)")?;
    let default_ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let identity = default_identity();
    let metrics = OperatorMetrics::new();
    let health = Health::default();

    // Shutdown fan-out: one signal stops the HTTP server, the controller and the lease.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let journal = DecisionJournal::with_capacity(args.decisions_kept);
    let http = tokio::spawn(serve(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        journal.clone(),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz and /decisions");

    // The API server must answer before the operator calls itself ready. An API server
    // that is down at start-up (a control-plane restart) is waited for, every 2 s, not
    // a reason to exit: /healthz answers meanwhile, /readyz does not.
    let mut waited = 0u32;
    loop {
        match client.apiserver_version().await {
            Ok(_) => break,
            Err(e) => {
                if waited % 15 == 0 {
                    tracing::warn!(error = %e, waited_s = waited * 2, "the Kubernetes API server does not answer; waiting for it");
                }
                waited += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stopped(stop_rx.clone()) => return Ok(()),
                }
            }
        }
    }
    health.set_ready(true);
    let job_image = args.job_image.clone().or_else(|| from_env(super::training::JOB_IMAGE_ENV));
    let webhook = start_webhook(&args, client.clone(), &default_ns, job_image.clone(), &metrics, &stop_rx).await?;

    let mut ctx = Context::new(
        client.clone(),
        metrics_source(&args),
        default_policy_builder(),
        controller_config(&args, &identity),
    )
    .with_metrics(metrics)
    .with_journal(journal);
    let writer = match &args.record_dir {
        Some(dir) => {
            let (recording, writer) = start_recording(dir)?;
            ctx = ctx.with_recording(recording);
            Some(writer)
        }
        None => None,
    };
    let ctx = Arc::new(ctx);
    let training = Arc::new(super::training::TrainingContext::new(
        client.clone(),
        super::training::TrainingConfig { job_image, mode: None, instance: identity.clone() },
    ));

    let elect = args.leader_election && !args.no_leader_election;
    let overdue = overdue(stop_rx.clone());
    if !elect {
        tracing::info!(namespace = ?args.namespace, "starting the controller without leader election");
        let trainings =
            super::training::run_training_controller(training, args.namespace.clone(), stopped(stop_rx.clone()));
        tokio::select! {
            _ = futures::future::join(run_controller(ctx, args.namespace.clone(), stopped(stop_rx.clone())), trainings) => {}
            _ = overdue => {}
        }
    } else {
        let lease_ns = args.lease_namespace.clone().unwrap_or(default_ns);
        tokio::select! {
            r = run_as_leader((ctx, training), client, &args, &lease_ns, &identity, stop_rx) => r?,
            _ = overdue => {}
        }
    }
    let _ = http.await;
    let _ = futures::future::OptionFuture::from(webhook).await;
    if let Some(writer) = writer {
        stop_recording(writer).await;
    }
    Ok(())
}

/// Starts the validating admission webhook as `args.webhook` says (`None` when off), in
/// the operator's namespace (`$POD_NAMESPACE`, else `default_ns`), checking trainings
/// against `job_image` as the training controller does and counting its answers in
/// `metrics`.
async fn start_webhook(
    args: &RunArgs,
    client: kube::Client,
    default_ns: &str,
    job_image: Option<String>,
    metrics: &OperatorMetrics,
    stop_rx: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let own_ns = args.lease_namespace.clone().unwrap_or_else(|| default_ns.to_string());
    let config = super::admission::AdmissionConfig { job_image, metrics: metrics.admission.clone() };
    super::admission::start(&args.webhook, client, &own_ns, config, stopped(stop_rx.clone())).await
}

/// The operator's metrics source: per workload, as its `spec.metrics.source` says; the
/// default Prometheus URL from `--prometheus-url`, else `$LLMOS_PROMETHEUS_URL`.
fn metrics_source(args: &RunArgs) -> Arc<dyn crate::metrics::MetricsSource> {
    match crate::metrics::SpecSource::with_prometheus(crate::metrics::PrometheusConfig {
        default_url: args.prometheus_url.clone(),
        bearer_token_file: args.prometheus_bearer_token_file.clone(),
        ca_file: args.prometheus_ca_file.clone(),
        ..Default::default()
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the metrics sources; every workload will hold its replicas");
            Arc::new(UnavailableSource { why: e.to_string() })
        }
    }
}

/// Capacity of the queue between reconciles and the record writer, in windows.
const RECORD_QUEUE: usize = 1024;

/// Starts the record writer over `dir` (the default limits apply until a workload's spec
/// sends its own).
fn start_recording(
    dir: &std::path::Path,
) -> anyhow::Result<(super::record::Recording, crate::learning::sink::RecordWriter)> {
    let config = crate::learning::store::StoreConfig::default();
    let (sink, writer) = crate::learning::sink::RecordSink::spawn(dir, config, RECORD_QUEUE)
        .with_context(|| format!("starting the traffic record in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "recording the traffic of workloads with spec.learning.record.enabled");
    Ok((super::record::Recording { sink, root: dir.to_path_buf() }, writer))
}

/// Waits (at most 5 s) for the writer to write what is queued once the controller,
/// and with it every sink, is gone; what is left is lost, and every window written so
/// far is already synced.
async fn stop_recording(writer: crate::learning::sink::RecordWriter) {
    match tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || writer.join())).await {
        Ok(Ok(stats)) => tracing::info!(
            written = stats.written,
            dropped = stats.dropped,
            errors = stats.write_errors,
            "traffic record closed"
        ),
        _ => tracing::warn!("the traffic record writer did not finish in 5 s"),
    }
}

/// The longest a stop waits for in-flight reconciles (Kubernetes' default grace period
/// is 30 s).
const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long, after a stop, the leader's controllers may take to finish their in-flight
/// reconciles before they are cancelled so the Lease is released within [`STOP_GRACE`]
/// (the release itself has 5 s).
const CONTROLLER_STOP_GRACE: Duration = Duration::from_secs(12);

/// Resolves [`STOP_GRACE`] after `rx` says stop. A stop lets in-flight reconciles
/// finish, but not for longer: a controller whose watches are backing off (no CRD
/// installed, say) would otherwise outlive the Pod's grace period and be killed.
async fn overdue(rx: tokio::sync::watch::Receiver<bool>) {
    stopped(rx).await;
    tokio::time::sleep(STOP_GRACE).await;
    tracing::warn!(grace_s = STOP_GRACE.as_secs(), "the controller did not stop in time after the signal; exiting");
}

/// Resolves once `rx` says stop (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// With leader election: waits for the Lease `lease_ns/args.lease_name` (returns at once
/// when told to stop first), runs the controller while it is held and releases it on a
/// stop. Losing the Lease is an error, so the process exits and comes back as a standby.
async fn run_as_leader(
    (ctx, training): (Arc<Context>, Arc<super::training::TrainingContext>),
    client: kube::Client,
    args: &RunArgs,
    lease_ns: &str,
    identity: &str,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let elector = LeaderElector::new(client, LeaseConfig::new(&args.lease_name, lease_ns, identity));
    tracing::info!(lease = %format!("{lease_ns}/{}", args.lease_name), identity = %identity, "waiting to become leader");
    tokio::select! {
        r = elector.acquire() => r.context("leader election")?,
        _ = stopped(stop_rx.clone()) => return Ok(()),
    }
    tracing::info!(identity = %identity, "became leader; starting the controller");
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    let renewer = {
        let e = elector.clone();
        tokio::spawn(async move {
            e.keep_renewing().await;
            let _ = lost_tx.send(true);
        })
    };
    // A stop (SIGTERM) lets in-flight reconciles finish; a lost Lease does not: the
    // controller is dropped at once, cancelling every request still in flight, so a
    // former leader cannot write after its successor has started (its requests may have
    // been hanging on an API server whose etcd is down).
    let mut stop = stop_rx.clone();
    let shutdown = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    let mut lost = lost_rx.clone();
    let trainings =
        super::training::run_training_controller(training, args.namespace.clone(), stopped(stop_rx.clone()));
    // The Lease is released before the process is overdue, even when a controller does
    // not stop in time: it is dropped (its requests cancelled, as on a lost Lease) so the
    // standby takes over at once instead of waiting for the Lease to expire.
    let late = async move {
        stopped(stop_rx).await;
        tokio::time::sleep(CONTROLLER_STOP_GRACE).await;
    };
    tokio::select! {
        _ = futures::future::join(run_controller(ctx, args.namespace.clone(), shutdown), trainings) => {}
        _ = lost.wait_for(|v| *v) => {}
        _ = late => tracing::warn!(
            grace_s = CONTROLLER_STOP_GRACE.as_secs(),
            "the controllers did not stop in time after the signal; cancelling them and releasing the lease"
        ),
    }
    renewer.abort();
    if *lost_rx.borrow() {
        anyhow::bail!(
            "lost leadership of lease {lease_ns}/{}; exiting so a fresh process can compete again",
            args.lease_name
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), elector.release()).await {
        Ok(Ok(())) => tracing::info!("released the lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease"),
        Err(_) => tracing::warn!("releasing the lease timed out"),
    }
    Ok(())
}

/// Arguments of `llmos crdgen`.
#[derive(clap::Args, Debug)]
pub struct CrdgenArgs {
    /// Print only this CRD (`llmworkloads.llmos.dev`, `gpupools.llmos.dev` or
    /// `llmpolicytrainings.llmos.dev`), as
    /// `crds/<name>.yaml` holds it.
    pub name: Option<String>,
}

/// Prints the CRDs' YAML (`llmos crdgen`): all of them as one stream, or the one named.
pub fn crdgen(args: CrdgenArgs) -> anyhow::Result<()> {
    let Some(name) = args.name else {
        print!("{}", crd_yaml()?);
        return Ok(());
    };
    let all = crd_yamls()?;
    let Some((_, yaml)) = all.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        anyhow::bail!("no CRD named {name:?}; the CRDs are {}", known.join(", "));
    };
    print!("{yaml}");
    Ok(())
}

/// Every CRD of llmos as (name, YAML), in the order `llmos crdgen` prints them:
/// `llmworkloads.llmos.dev`, `gpupools.llmos.dev`, then `llmpolicytrainings.llmos.dev`.
/// `crds/<name>.yaml` holds each.
pub fn crd_yamls() -> anyhow::Result<Vec<(String, String)>> {
    use kube::CustomResourceExt;
    [crate::crd::LLMWorkload::crd(), crate::crd::GPUPool::crd(), crate::crd::training::LLMPolicyTraining::crd()]
        .into_iter()
        .map(|crd| Ok((crd.metadata.name.clone().unwrap_or_default(), serde_yaml::to_string(&crd)?)))
        .collect()
}

/// The CRDs as one YAML stream (documents separated by `---`), exactly as `llmos crdgen`
/// prints it and `manifests/00-crd.yaml` holds it.
pub fn crd_yaml() -> anyhow::Result<String> {
    Ok(crd_yamls()?.into_iter().map(|(_, yaml)| yaml).collect::<Vec<_>>().join("---\n"))
}
