//! Shared pieces of the end-to-end tests and the control-loop benchmark: the loopback
//! control plane (`scripts/k8s/start.sh`), Prometheus (`scripts/prometheus/start.sh`),
//! `llmos` child processes with their logs, `kubectl`, and polling helpers.
//!
//! Everything started here is stopped when the [`Stack`] is dropped, also when a test
//! panics.

#![allow(dead_code)]

pub mod chaos;
pub mod node;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde::Deserialize;

/// The chart's alert rules (a Prometheus rule file).
pub const ALERT_RULES: &str = "charts/llmos-operator/files/alerts.yaml";
/// The chart's Grafana dashboard.
pub const DASHBOARD: &str = "charts/llmos-operator/files/dashboard.json";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory with kube-apiserver, kube-controller-manager and kubectl.
pub fn k8s_bin() -> PathBuf {
    std::env::var_os("LLMOS_K8S_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/llmos/k8s-1.20.2/bin")
    })
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `LLMOS_SKIP_E2E=1` asks to skip the end-to-end tests.
pub fn skip_requested() -> bool {
    std::env::var("LLMOS_SKIP_E2E").as_deref() == Ok("1")
}

/// Whether an end-to-end test runs: `false` (said on stderr) when `LLMOS_SKIP_E2E=1`;
/// panics naming what is missing when a prerequisite is.
pub fn e2e_wanted(with_kcm: bool) -> bool {
    if skip_requested() {
        eprintln!("LLMOS_SKIP_E2E=1: skipping the end-to-end test");
        return false;
    }
    let missing = missing_prerequisites(with_kcm);
    assert!(missing.is_empty(), "end-to-end prerequisites missing (set LLMOS_SKIP_E2E=1 to skip): {missing:?}");
    true
}

/// What the end-to-end tests need and this machine lacks.
pub fn missing_prerequisites(with_kcm: bool) -> Vec<String> {
    let mut missing = Vec::new();
    let bins: &[&str] = if with_kcm {
        &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
    } else {
        &["kube-apiserver", "kubectl"]
    };
    for b in bins {
        if !k8s_bin().join(b).exists() {
            missing.push(format!("{} (build with scripts/k8s/build.sh)", k8s_bin().join(b).display()));
        }
    }
    if Command::new("sh").args(["-c", "command -v etcd"]).output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("etcd on PATH (apt-get install etcd-server)".into());
    }
    missing
}

/// Processes and servers started by a test, stopped on drop (also when a test fails).
pub struct Stack {
    /// Working directory: logs, kubeconfig, Prometheus data, scenario files.
    pub dir: tempfile::TempDir,
    /// The kubeconfig of the loopback API server.
    pub kubeconfig: PathBuf,
    /// Port Prometheus listens on (when started).
    pub prom_port: u16,
    /// Running `llmos` children by name.
    pub children: BTreeMap<String, Child>,
}

impl Stack {
    /// Starts etcd + kube-apiserver (+ kube-controller-manager with `with_kcm`) on free
    /// loopback ports and returns the stack with a client for it.
    pub async fn start(with_kcm: bool) -> (Stack, Client) {
        Stack::start_with(with_kcm, false).await
    }

    /// [`Stack::start`], with kube-scheduler too when `with_scheduler` (it binds Pods to
    /// the Nodes a test creates).
    pub async fn start_with(with_kcm: bool, with_scheduler: bool) -> (Stack, Client) {
        let dir = tempfile::tempdir().expect("temp dir");
        let k8s_dir = dir.path().join("k8s");
        let pid = std::process::id().to_string();
        let (etcd, peer, api, kcm) = (free_port(), free_port(), free_port(), free_port());
        let out = Command::new("bash")
            .arg(repo().join("scripts/k8s/start.sh"))
            .arg(&k8s_dir)
            .env("WITH_KCM", if with_kcm { "1" } else { "0" })
            .env("WATCH_PID", &pid)
            .env("ETCD_PORT", etcd.to_string())
            .env("ETCD_PEER_PORT", peer.to_string())
            .env("API_PORT", api.to_string())
            .env("KCM_PORT", kcm.to_string())
            .env("WITH_SCHEDULER", if with_scheduler { "1" } else { "0" })
            .env("SCHED_PORT", free_port().to_string())
            .output()
            .expect("running scripts/k8s/start.sh");
        let stack =
            Stack { kubeconfig: k8s_dir.join("kubeconfig"), prom_port: free_port(), dir, children: BTreeMap::new() };
        assert!(
            out.status.success(),
            "control plane did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let client = stack.client().await;
        (stack, client)
    }

    /// A fresh client for the stack's API server.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("client config");
        Client::try_from(cfg).expect("client")
    }

    /// A path in the stack's working directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Starts `llmos ARGS` as child `name`, logging to `<name>.log`.
    pub fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        self.spawn_bin(std::path::Path::new(env!("CARGO_BIN_EXE_llmos")), name, args, env)
    }

    /// Starts the `llmos` binary at `bin` (e.g. a release build) as child `name`.
    pub fn spawn_bin(&mut self, bin: &std::path::Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting llmos {name}: {e}"));
        let id = child.id();
        self.children.insert(name.to_string(), child);
        id
    }

    /// Kills child `name` (SIGKILL) and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log of child `name` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts Prometheus on `prom_port`, scraping the replicas in `targets.json` and the
    /// operators in `operator-targets.json` (job `llmos-operator`), with the chart's alert
    /// rules loaded.
    pub fn start_prometheus(&self) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/prometheus/start.sh"))
            .arg(self.path("prom"))
            .arg(self.path("targets.json"))
            .arg(self.prom_port.to_string())
            .env("OPERATOR_TARGETS", self.path("operator-targets.json"))
            .env("RULE_FILES", repo().join(ALERT_RULES))
            .output()
            .expect("running scripts/prometheus/start.sh");
        assert!(out.status.success(), "Prometheus did not start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Lists the operators' metrics addresses for Prometheus to scrape (file_sd).
    pub fn scrape_operators(&self, addrs: &[&str]) {
        let targets = serde_json::json!([{ "targets": addrs, "labels": { "job_role": "operator" } }]);
        std::fs::write(self.path("operator-targets.json"), targets.to_string()).expect("operator targets file");
    }

    /// Stops Prometheus (no-op when it does not run).
    pub fn stop_prometheus(&self) {
        let _ = Command::new("bash").arg(repo().join("scripts/prometheus/stop.sh")).arg(self.path("prom")).status();
    }

    /// Runs kubectl against the stack, feeding `stdin`; panics with kubectl's stderr on failure.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl against the stack, feeding `stdin`, and returns what it did, failed or not.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(k8s_bin().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(s) = stdin {
            child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("writing to kubectl");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl output")
    }

    /// Installs the CRDs with `llmos crdgen | kubectl apply` and waits until they are established.
    pub fn install_crd(&self) {
        let crd = Command::new(env!("CARGO_BIN_EXE_llmos")).arg("crdgen").output().expect("llmos crdgen");
        assert!(crd.status.success(), "llmos crdgen failed");
        self.kubectl(&["apply", "-f", "-"], Some(&String::from_utf8_lossy(&crd.stdout)));
        self.kubectl(
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "crd/llmworkloads.llmos.dev",
                "crd/gpupools.llmos.dev",
            ],
            None,
        );
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
        self.stop_prometheus();
        let _ = Command::new("bash").arg(repo().join("scripts/k8s/stop.sh")).arg(self.path("k8s")).status();
    }
}

/// Sum of `spec.replicas` over the Deployments of `workload` in `ns` (-1 when the list fails).
pub async fn desired_total(client: &Client, ns: &str, workload: &str) -> i32 {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default().labels(&format!("llmos.dev/workload={workload}"))).await {
        Ok(l) => l.items.iter().filter_map(|d| d.spec.as_ref()?.replicas).sum(),
        Err(_) => -1,
    }
}

/// Sum of `status.readyReplicas` over the Deployments of `workload` (-1 when the list fails).
pub async fn ready_total(client: &Client, ns: &str, workload: &str) -> i32 {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default().labels(&format!("llmos.dev/workload={workload}"))).await {
        Ok(l) => l.items.iter().filter_map(|d| d.status.as_ref()?.ready_replicas).sum(),
        Err(_) => -1,
    }
}

/// The last 40 lines of `s`.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `check` every 500 ms until it holds; panics after `deadline` with the tails of
/// the logs of `logs` (children of `stack`).
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F, stack: &Stack, logs: &[&str])
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut msg = format!("timed out after {deadline:?} waiting for: {what}");
    for l in logs {
        msg.push_str(&format!("\n--- {l} log (tail) ---\n{}", tail(&stack.log(l))));
    }
    panic!("{msg}");
}

/// A `histogram_quantile`-style estimate of quantile `q` from cumulative buckets
/// `(upper bound, count)` sorted by bound (the last one `+Inf`): linear interpolation
/// inside the bucket holding the rank; `None` without observations.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = c - prev.1;
            let frac = if width > 0.0 { (rank - prev.1) / width } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, c);
    }
    Some(prev.0)
}

/// Cumulative buckets of histogram `name` (e.g. `llmos_reconcile_duration_seconds`) in a
/// Prometheus text exposition, sorted by bound.
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, tail) = rest.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, tail.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The value of a plain sample `name` (e.g. `llmos_reconciles_total`) in an exposition.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A scenario for a tiny DQN, trained in and replayed by the twin: 2 requests/s, ten
/// times that from t = 20 s. Its `[spec]` has the layout of the workloads the tests and
/// the benchmark apply (one variant `llama3-8b` on pool `a100`) and a 2 s control interval.
pub fn dqn_scenario() -> String {
    step_scenario(
        "e2e-dqn-step",
        600.0,
        &[0.0, 20.0],
        &[2.0, 20.0],
        10.0,
        "slo = { ttftMs = 2000.0, tpotMs = 100.0, percentile = 90.0, targetAttainment = 0.95 }\n\
         limits = { minTotalReplicas = 1, maxTotalReplicas = 6, maxStepChange = 4, scaleDownCooldownSeconds = 4 }\n",
    )
}

/// Trains a tiny DQN (600 control ticks of `scenario`, on the CPU, about 2 s) into `out`
/// with the library, as `llmos train` would.
pub fn train_tiny_dqn(scenario: &std::path::Path, out: &std::path::Path) -> llmos::rl::train::TrainSummary {
    use llmos::rl::dqn::{DeviceChoice, DqnConfig, TargetUpdate};
    use llmos::rl::encoding::ActionLayoutKind;
    use llmos::rl::env::{EpisodeConfig, RewardConfig};
    use llmos::rl::schedule::EpsilonSchedule;
    use llmos::rl::train::{train, TrainConfig};
    let cfg = TrainConfig {
        scenario: scenario.to_path_buf(),
        steps: 600,
        seed: 7,
        out: out.to_path_buf(),
        action_layout: ActionLayoutKind::Factored,
        deltas: vec![-1, 0, 1, 2],
        reward: RewardConfig { cost_weight_per_usd: 1_000.0, ..Default::default() },
        // 60 s windows (30 ticks) anywhere in the first 300 s: most see the high load,
        // some the step itself.
        episodes: EpisodeConfig { train_window: (0.0, 0.5), episode_frac: 0.1, ..Default::default() },
        dqn: DqnConfig {
            hidden: vec![32, 32],
            gamma: 0.95,
            n_step: 3,
            learning_rate: 1e-3,
            learning_starts: 100,
            batch_size: 32,
            device: DeviceChoice::Cpu,
            epsilon: EpsilonSchedule::Linear { start: 1.0, end: 0.1, steps: 400 },
            target: TargetUpdate::Hard { every: 100 },
            ..Default::default()
        },
        ..Default::default()
    };
    train(&cfg).unwrap_or_else(|e| panic!("training the tiny DQN: {e}"))
}

/// The LLMWorkload every end-to-end test and the control-loop benchmark apply: one
/// Llama-3-8B variant on one A100 pool (1..=6 replicas), the default SLO, a 10 s metrics
/// window read through Prometheus, and the given policy block.
pub struct StepWorkload<'a> {
    /// Workload name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Variant name (a checkpoint's layout names it).
    pub variant: &'a str,
    /// `coldStartSeconds` of the variant, if set.
    pub cold_start_s: Option<u32>,
    /// `limits.scaleDownCooldownSeconds`.
    pub scale_down_cooldown_s: u32,
    /// Prometheus base URL.
    pub prom_url: &'a str,
    /// The lines under `policy:`, each indented by four spaces and ending in a newline.
    pub policy_block: String,
}

impl StepWorkload<'_> {
    /// The workload as YAML.
    pub fn yaml(&self) -> String {
        let cold = self.cold_start_s.map(|s| format!("      coldStartSeconds: {s}\n")).unwrap_or_default();
        format!(
            r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata:
  name: {name}
  namespace: {ns}
spec:
  variants:
    - name: {variant}
      model: llama-3-8b
      image: vllm/vllm-openai:v0.6.3
      minReplicas: 1
      maxReplicas: 6
{cold}  gpuPools:
    - name: a100
      gpuType: A100-80GB
      pricePerGpuHour: 3.0
      capacityGpus: 8
  slo: {{ttftMs: 2000, tpotMs: 100, percentile: 90, targetAttainment: 0.95}}
  limits: {{minTotalReplicas: 1, maxTotalReplicas: 6, maxStepChange: 4, scaleDownCooldownSeconds: {cooldown}}}
  metrics: {{source: prometheus, prometheusUrl: "{prom}", windowSeconds: 10, staleAfterSeconds: 15}}
  policy:
{policy}"#,
            name = self.name,
            ns = self.namespace,
            variant = self.variant,
            cooldown = self.scale_down_cooldown_s,
            prom = self.prom_url,
            policy = self.policy_block,
        )
    }
}

/// Every PromQL expression of the chart's Grafana dashboard (its panels' targets and its
/// template variables' metrics), with the dashboard's `$namespace` and `$workload`
/// variables set to match everything.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).expect("reading the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let fill = |e: &str| e.replace("$namespace", ".*").replace("$workload", ".*");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let title = format!("panel `{}` target {}", p["title"].as_str().unwrap_or("?"), t["refId"]);
            out.push((title, fill(t["expr"].as_str().expect("expr"))));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(METRIC{...}, label): the metric must have series.
            let inner = q.trim_start_matches("label_values(").rsplit_once(',').map(|(m, _)| m).unwrap_or(q);
            out.push((format!("variable `{}`", v["name"].as_str().unwrap_or("?")), fill(inner)));
        }
    }
    out
}

/// Runs every dashboard query against Prometheus; returns what failed to parse or
/// returned no series (empty when all is well), and how many queries ran.
pub async fn check_dashboard(prom_url: &str) -> (Vec<String>, usize) {
    let queries = dashboard_queries();
    let client = reqwest::Client::new();
    let mut failed = Vec::new();
    for (what, expr) in &queries {
        let resp = client.get(format!("{prom_url}/api/v1/query")).query(&[("query", expr.as_str())]).send().await;
        let body: serde_json::Value = match resp {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(e) => {
                failed.push(format!("{what}: {expr}: {e}"));
                continue;
            }
        };
        if body["status"] != "success" {
            failed.push(format!("{what}: {expr}: {}", body["error"]));
        } else if body["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            failed.push(format!("{what}: {expr}: no series"));
        }
    }
    (failed, queries.len())
}

/// Checks the chart's alert rules as the test Prometheus loaded them: every rule has been
/// evaluated, without error. (That every metric family a rule reads is one the operator
/// exposes is checked by `tests/chart_monitoring.rs`; here labelled counters such as
/// `llmos_reconcile_errors_total` may have no series yet.) Returns the problems and the
/// number of rules.
pub async fn check_alerts(prom_url: &str) -> (Vec<String>, usize) {
    let body: serde_json::Value = reqwest::get(format!("{prom_url}/api/v1/rules"))
        .await
        .expect("Prometheus rules API")
        .json()
        .await
        .expect("rules JSON");
    let mut problems = Vec::new();
    let mut n = 0;
    for g in body["data"]["groups"].as_array().cloned().unwrap_or_default() {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            n += 1;
            let name = r["name"].as_str().unwrap_or("?");
            if r["health"] != "ok" {
                problems.push(format!("rule {name}: health {} ({})", r["health"], r["lastError"]));
            }
        }
    }
    (problems, n)
}

/// Debian's Chromium, if installed (`scripts/test.sh` installs it).
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists())
}

/// Runs headless Chromium on `url` with `extra` arguments (`--dump-dom`, `--screenshot=…`)
/// in a fresh profile under `dir`, with the flags that keep it off the network; returns
/// stdout.
pub fn headless_chromium(dir: &std::path::Path, url: &str, extra: &[&str]) -> String {
    let bin = chromium().expect("chromium (apt-get install chromium)");
    let profile = dir.join(format!("chromium-profile-{}", extra.len()));
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies `file` to `$LLMOS_DOCS_FIGURES/<name>` when that variable is set (how the
/// pictures in docs/operator.md are refreshed from a test run).
pub fn docs_figure(file: &std::path::Path, name: &str) {
    if let Some(dir) = std::env::var_os("LLMOS_DOCS_FIGURES") {
        let dest = PathBuf::from(dir).join(name);
        std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("copying {} to {}: {e}", file.display(), dest.display()));
        eprintln!("wrote {}", dest.display());
    }
}

/// Warning Events in `ns`: how many llmos raised, and the others by (component, reason).
pub async fn warning_events(client: &Client, ns: &str) -> (usize, BTreeMap<String, usize>) {
    use k8s_openapi::api::core::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await.expect("listing Events");
    let mut ours = 0;
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    for e in list.items.iter().filter(|e| e.type_.as_deref() == Some("Warning")) {
        let n = e.count.unwrap_or(1).max(1) as usize;
        let component = e
            .reporting_component
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
            .unwrap_or_default();
        if component == "llmos" {
            ours += n;
        } else {
            *others.entry(format!("{component}/{}", e.reason.clone().unwrap_or_default())).or_default() += n;
        }
    }
    (ours, others)
}

/// Warnings not raised by llmos that docs/e2e.md explains: the endpoints controllers
/// refuse the simulated Pods' loopback IPs as endpoint addresses, whether they update the
/// Endpoints object or create it.
pub const EXPLAINED_WARNINGS: [&str; 3] =
    ["FailedToUpdateEndpoint", "FailedToUpdateEndpointSlices", "FailedToCreateEndpoint"];

/// Asserts every Warning Event in `ns` not raised by llmos is one docs/e2e.md explains,
/// and returns a line with the measured share.
pub async fn check_event_noise(client: &Client, ns: &str) -> String {
    let (ours, others) = warning_events(client, ns).await;
    let unexplained: Vec<&String> =
        others.keys().filter(|k| !EXPLAINED_WARNINGS.iter().any(|r| k.ends_with(&format!("/{r}")))).collect();
    assert!(unexplained.is_empty(), "Warning Events nobody explains: {unexplained:?} (all others: {others:?})");
    let theirs: usize = others.values().sum();
    let share = if ours + theirs == 0 { 0.0 } else { theirs as f64 / (ours + theirs) as f64 };
    format!("warning events: {ours} from llmos, {theirs} from others ({:.0}%: {others:?})", 100.0 * share)
}

/// Draws the chart's dashboard from Prometheus over [`start`, now] into `out` (the
/// library's `llmos dashboard`); returns (panel title, series) per panel and the failed
/// queries.
pub async fn render_dashboard(
    prom_url: &str,
    start: f64,
    out: &std::path::Path,
) -> (Vec<(String, usize)>, Vec<String>) {
    use llmos::eval::dashboard::{panels, query_panels, render, RangeQuery, DASHBOARD_JSON};
    let (title, panels) = panels(DASHBOARD_JSON).expect("the chart's dashboard");
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let q = RangeQuery {
        prometheus: prom_url.into(),
        namespace: ".*".into(),
        workload: ".*".into(),
        start,
        end,
        step: 2.0,
    };
    let data = query_panels(panels, &q).await.expect("querying the panels");
    render(&title, &data, start, end, out).expect("drawing the dashboard");
    let counts = data.iter().map(|d| (d.panel.title.clone(), d.series.len())).collect();
    let errors = data.iter().flat_map(|d| d.errors.clone()).collect();
    (counts, errors)
}

/// The namespace of the operator's own objects (its ServiceAccount and Lease) in
/// manifests/02-rbac.yaml.
pub const OPERATOR_NS: &str = "llmos-system";

/// Grants of manifests/02-rbac.yaml that a run may not exercise as a request of their
/// own, each with why it is still needed. Anything else granted and never used fails
/// [`check_rbac_audit`]: the ClusterRole stays least-privilege.
pub const GRANTED_NOT_REQUESTED: &[(&str, &str, &[&str], &str)] = &[
    ("apps", "deployments", &["create"], "server-side apply of a Deployment that does not exist yet is authorised as create"),
    ("", "services", &["create"], "server-side apply of a Service that does not exist yet is authorised as create"),
    ("", "services", &["get", "delete"], "cleanup reads the Service it owns and deletes it; this run's Service goes with the namespace's garbage collection"),
    ("llmos.dev", "llmworkloads/finalizers", &["update"], "owner references with blockOwnerDeletion need it where OwnerReferencesPermissionEnforcement is on"),
    ("", "configmaps", &["get", "create", "patch"], "the forecast planner's saved state (tests/policy_forecast_state.rs); this run uses HPA"),
    ("apps", "deployments", &["get"], "not requested by this run: Deployments are listed by label"),
    ("", "pods", &["get", "list", "watch"], "listed only for spec.metrics.source = scrape (the pods' addresses); this run reads Prometheus"),
    ("llmos.dev", "llmworkloads/status", &["get", "update"], "not requested by this run: status is patched"),
    ("llmos.dev", "llmworkloads", &["get", "update"], "not requested by this run: the finalizer is patched"),
    ("events.k8s.io", "events", &["patch"], "a repeated Event is patched into its series; a run may only create first ones"),
    ("llmos.dev", "gpupools", &["get", "list", "watch"], "shared GPU pools are read for workloads with poolRefs; this run's workloads have inline pools only"),
    ("llmos.dev", "gpupools/status", &["get", "patch", "update"], "a GPUPool's status is written when one exists; this run has none"),
    ("", "nodes", &["get", "list", "watch"], "Nodes are read to count a GPUPool's allocatable GPUs; this run has no GPUPool"),
    ("llmos.dev", "llmpolicytrainings/status", &["patch"], "a training's status is written when one exists; this run has none (tests/e2e_training.rs)"),
    ("llmos.dev", "llmpolicytrainings/finalizers", &["update"], "the training Jobs' owner references with blockOwnerDeletion need it where OwnerReferencesPermissionEnforcement is on"),
    ("batch", "jobs", &["create"], "a training's Jobs are created when one exists; this run has none (tests/e2e_training.rs)"),
    ("llmos.dev", "llmpolicytrainings", &["create", "delete"], "the retraining schedule creates rounds and deletes old ones (tests/e2e_promotion.rs); this run has no spec.learning.retrain"),
];

/// The chart rendered by `scripts/chart/render.sh` as release `release` in `namespace`
/// with the renderer's further arguments `extra` (`--set ...`, `--include-crds`): its YAML
/// stream. Panics with the renderer's stderr when it fails (exit 3: Go or its Debian
/// packages cannot be had).
pub fn render_chart(release: &str, namespace: &str, extra: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/chart/render.sh"))
        .args(["--name", release, "--namespace", namespace])
        .args(extra)
        .arg(repo().join("charts/llmos-operator"))
        .output()
        .expect("running scripts/chart/render.sh");
    assert!(
        out.status.success(),
        "rendering the chart failed (exit {:?}; 3: Go or its Debian packages cannot be had):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies manifests/02-rbac.yaml (with its namespace) so that an operator started with
/// `KUBECONFIG=<k8s>/kubeconfig-operator` has exactly the shipped rights.
pub fn apply_operator_rbac(stack: &Stack) {
    stack.kubectl(&["create", "namespace", OPERATOR_NS], None);
    let rbac = std::fs::read_to_string(repo().join("manifests/02-rbac.yaml")).expect("manifests/02-rbac.yaml");
    stack.kubectl(&["apply", "-f", "-"], Some(&rbac));
}

/// The kubeconfig of the operator's ServiceAccount identity (scripts/k8s/start.sh).
pub fn operator_kubeconfig(stack: &Stack) -> String {
    stack.path("k8s/kubeconfig-operator").display().to_string()
}

/// (apiGroup, resource[/subresource], verb) → (answered, refused with 403) counts of the
/// operator's requests in the API server's audit log. A non-resource URL (`/version` at
/// start-up) has the group "" and the resource `url:<path>`.
pub fn audited_requests(stack: &Stack) -> BTreeMap<(String, String, String), (usize, usize)> {
    let text = std::fs::read_to_string(stack.path("k8s/audit.log")).unwrap_or_default();
    let mut used = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["stage"] != "ResponseComplete" {
            continue;
        }
        let verb = v["verb"].as_str().unwrap_or("").to_string();
        let code = v["responseStatus"]["code"].as_i64().unwrap_or(0);
        let o = &v["objectRef"];
        let key = match o["resource"].as_str() {
            Some(resource) => {
                let res = match o["subresource"].as_str() {
                    Some(sub) => format!("{resource}/{sub}"),
                    None => resource.to_string(),
                };
                (o["apiGroup"].as_str().unwrap_or("").to_string(), res, verb)
            }
            None => {
                let path = v["requestURI"].as_str().unwrap_or("").split('?').next().unwrap_or("").to_string();
                (String::new(), format!("url:{path}"), verb)
            }
        };
        let e: &mut (usize, usize) = used.entry(key).or_insert((0, 0));
        if code == 403 {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    used
}

/// The (apiGroup, resource, verb) grants of the ClusterRole and Role in
/// manifests/02-rbac.yaml.
pub fn shipped_grants() -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(repo().join("manifests/02-rbac.yaml")).expect("manifests/02-rbac.yaml");
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).expect("RBAC YAML");
        let kind = v["kind"].as_str().unwrap_or("");
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        for rule in v["rules"].as_sequence().into_iter().flatten() {
            let strs = |k: &str| -> Vec<String> {
                rule[k].as_sequence().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for verb in strs("verbs") {
                        out.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

/// Checks the operator's audited requests against the shipped RBAC: nothing refused, and
/// every grant either requested in the run or listed in [`GRANTED_NOT_REQUESTED`] with
/// its reason. Returns a table of requests per (group, resource, verb) for the log.
pub fn check_rbac_audit(stack: &Stack) -> String {
    let grants = shipped_grants();
    // The API server writes a request's audit event after it has answered it, so the
    // last requests of a run (the cleanup's deletes) can reach the log a moment after
    // the test saw their effect: read it again until every grant is accounted for, for
    // at most 20 s.
    let started = Instant::now();
    let mut used = audited_requests(stack);
    while !unexplained_grants(&grants, &used).is_empty() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        used = audited_requests(stack);
    }
    assert!(!used.is_empty(), "the audit log holds no request of the operator's identity");
    // A request the RBAC grants can still be refused for a moment after an API server
    // restart, before its authorizer has read the roles again; a missing grant is
    // refused every time. So: refused and not granted fails; a non-resource URL (allowed
    // to every authenticated user by the default discovery roles) fails when it never
    // got through.
    for ((g, r, verb), (ok, refused)) in &used {
        if let Some(path) = r.strip_prefix("url:") {
            assert!(*ok > 0 || *refused == 0, "{verb} {path} was refused every time ({refused} requests)");
            continue;
        }
        assert!(
            grants.contains(&(g.clone(), r.clone(), verb.clone())),
            "the operator used {verb} on {g}/{r} ({ok} answered, {refused} refused), which manifests/02-rbac.yaml does not grant"
        );
    }
    let unexplained = unexplained_grants(&grants, &used);
    assert!(
        unexplained.is_empty(),
        "granted by manifests/02-rbac.yaml but never requested and not explained in GRANTED_NOT_REQUESTED (least privilege):\n{}",
        unexplained.join("\n")
    );
    let mut table = String::from(
        "operator requests by (group, resource, verb): answered, refused while the API server's authorizer started:\n",
    );
    for ((g, r, verb), (ok, refused)) in &used {
        let what = if g.is_empty() { r.clone() } else { format!("{g}/{r}") };
        table.push_str(&format!("  {verb:<7} {what:<40} {ok} {refused}\n"));
    }
    table
}

/// Grants never requested in `used` and not explained in [`GRANTED_NOT_REQUESTED`], as
/// "verb group/resource" lines.
fn unexplained_grants(
    grants: &BTreeSet<(String, String, String)>,
    used: &BTreeMap<(String, String, String), (usize, usize)>,
) -> Vec<String> {
    let requested: BTreeSet<(String, String, String)> = used.keys().cloned().collect();
    grants
        .difference(&requested)
        .filter(|(g, r, verb)| {
            !GRANTED_NOT_REQUESTED.iter().any(|(gg, rr, verbs, _)| gg == g && rr == r && verbs.contains(&verb.as_str()))
        })
        .map(|(g, r, verb)| format!("{verb} {g}/{r}"))
        .collect()
}

/// A load-step scenario for `twin-serve` with the layout of the workloads the end-to-end
/// tests apply (one variant `llama3-8b` on pool `a100`, HPA every 2 s): arrivals at
/// `rates_rps[i]` requests/s from `at_s[i]`, over `duration_s` of simulated time; the
/// variant's cold start is `cold_start_s`, and `extra_spec` (TOML lines) joins `[spec]`.
pub fn step_scenario(
    name: &str,
    duration_s: f64,
    at_s: &[f64],
    rates_rps: &[f64],
    cold_start_s: f64,
    extra_spec: &str,
) -> String {
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
    format!(
        r#"name = "{name}"
description = "Load step for an end-to-end test"

[workload.synthetic]
duration_s = {duration_s:.1}
arrival = {{ kind = "steps", at_s = [{}], rates_rps = [{}] }}
lengths = {{ kind = "lognormal", input_mean = 1024.0, input_cv = 0.6, output_mean = 256.0, output_cv = 0.6, max_tokens = 4096 }}

[engine]
max_num_batched_tokens = 8192
max_num_seqs = 256

[cluster]
load_balancer = "least-outstanding"

[spec]
variants = [{{ name = "llama3-8b", model = "llama-3-8b", image = "vllm/vllm-openai:v0.6.3", minReplicas = 1, maxReplicas = 6, coldStartSeconds = {cold_start_s:.1} }}]
gpuPools = [{{ name = "a100", gpuType = "A100-80GB", pricePerGpuHour = 3.0, capacityGpus = 8 }}]
{extra_spec}policy = {{ kind = "hpa", intervalSeconds = 2 }}
"#,
        list(at_s),
        list(rates_rps)
    )
}

/// Decodes one `application/x-www-form-urlencoded` value (a query string's PromQL).
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates Nodes `names` with `gpus` GPUs each (`nvidia.com/gpu` in their status, as a
/// device plugin would advertise it), labelled `llmos.dev/test-pool: a100`, Ready, and
/// the GPUPool `a100` selecting them at `price` per GPU-hour, with no capacity cap. No
/// kubelet runs for these Nodes: the test lifts the not-ready taint the API server puts
/// on a new Node (the node lifecycle controller would, once a kubelet reports Ready).
pub async fn gpu_nodes_and_pool(client: &Client, names: &[&str], gpus: u32, price: f64) {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Patch, PatchParams, PostParams};
    let nodes: Api<Node> = Api::all(client.clone());
    for n in names {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n, "labels": {"llmos.dev/test-pool": "a100", "kubernetes.io/hostname": n}},
            "status": {
                "capacity": {"nvidia.com/gpu": gpus.to_string(), "cpu": "64", "memory": "512Gi", "pods": "110"},
                "allocatable": {"nvidia.com/gpu": gpus.to_string(), "cpu": "64", "memory": "512Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "a Node of the test", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}]
            }
        }))
        .expect("Node object");
        nodes.create(&PostParams::default(), &node).await.expect("Node created");
        let untaint = serde_json::json!({"spec": {"taints": null}});
        nodes.patch(n, &PatchParams::default(), &Patch::Merge(&untaint)).await.expect("Node untainted");
    }
    let pools: Api<llmos::crd::GPUPool> = Api::all(client.clone());
    let gp: llmos::crd::GPUPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "GPUPool", "metadata": {"name": "a100"},
        "spec": {"gpuType": "A100-80GB", "pricePerGpuHour": price, "nodeSelector": {"llmos.dev/test-pool": "a100"}}
    }))
    .expect("GPUPool object");
    pools.create(&PostParams::default(), &gp).await.expect("GPUPool created");
}
