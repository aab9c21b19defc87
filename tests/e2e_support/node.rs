//! A real node for the end-to-end tests (`scripts/node/start.sh`): starting and stopping
//! it, the image it runs, and polling helpers with the node's logs on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::Client;

use super::{free_port, k8s_bin, missing_prerequisites, operator_kubeconfig, repo, skip_requested, Stack, OPERATOR_NS};

/// The node's name.
pub const NODE: &str = "llmos-node-e2e";
/// The GPU product its Node is labelled with (`nvidia.com/gpu.product`).
pub const GPU_PRODUCT: &str = "NVIDIA-A100-SXM4-80GB";
/// How long anything may take before a test gives up: minutes, not seconds.
pub const PATIENCE: Duration = Duration::from_secs(600);

/// A node started by `scripts/node/start.sh`, stopped (containers, mounts, bridge,
/// cgroups) when dropped.
pub struct RealNode {
    /// The node's run directory (logs, sockets, state).
    pub dir: PathBuf,
}

impl Drop for RealNode {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("scripts/node/stop.sh")).arg(&self.dir).status();
    }
}

/// Whether the test runs as root (a real node needs it).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs `images/build.sh llmos OUT BIN`; panics with its output on failure.
pub fn build_image(out: &Path, bin: &Path) -> Duration {
    let t = Instant::now();
    let o = Command::new("bash")
        .arg(repo().join("images/build.sh"))
        .arg("llmos")
        .arg(out)
        .arg(bin)
        .output()
        .expect("running images/build.sh");
    assert!(
        o.status.success(),
        "images/build.sh llmos failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed()
}

/// Bytes of the files under `dir` (the image's layers and metadata).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    total
}

/// Polls `f` every 250 ms until it returns `Some`, for at most [`PATIENCE`]; panics with
/// `what` and the node's log tails.
pub async fn wait_for<T, F, Fut>(what: &str, node_dir: &Path, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    while t.elapsed() < PATIENCE {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let tail = |name: &str| super::tail(&std::fs::read_to_string(node_dir.join(name)).unwrap_or_default());
    panic!(
        "timed out after {PATIENCE:?} waiting for {what}\n--- kubelet.log ---\n{}\n--- containerd.log ---\n{}",
        tail("kubelet.log"),
        tail("containerd.log")
    );
}

/// Whether the Pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        .unwrap_or(false)
}

/// The messages of the Events about Pod `name` in `ns`.
pub async fn pod_events(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.kind=Pod,involvedObject.name={name}"));
    api.list(&lp)
        .await
        .map(|l| {
            l.items
                .into_iter()
                .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// What [`start_node`] started: the node (stopped when dropped), its pod subnet's third
/// octet, the node's address on the bridge, and the script's output.
pub struct Started {
    /// The node; dropping it stops it.
    pub node: RealNode,
    /// The pod subnet is `10.244.<subnet>.0/24`.
    pub subnet: u32,
    /// The node's address on the pod bridge.
    pub node_ip: String,
}

/// Starts a node with `gpus` GPUs under `dir`, registered with the API server of
/// `kubeconfig`, with the images of `images` imported. `Err(refusal)` when the machine
/// refuses (the script's exit status 3); panics on any other failure.
pub fn start_node(dir: &Path, kubeconfig: &Path, images: &Path, gpus: u32) -> Result<Started, String> {
    // The pod subnet and bridge are the test's own, so a node started by hand (default
    // 10.244.0.0/24) does not collide.
    let subnet = 100 + std::process::id() % 150;
    let node = RealNode { dir: dir.to_path_buf() };
    let t_node = Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("scripts/node/start.sh"))
        .arg(dir)
        .env("KUBECONFIG", kubeconfig)
        .env("NODE_NAME", NODE)
        .env("GPU_PRODUCT", GPU_PRODUCT)
        .env("GPU_COUNT", gpus.to_string())
        .env("POD_CIDR", format!("10.244.{subnet}.0/24"))
        .env("KUBELET_PORT", free_port().to_string())
        .env("KUBELET_HEALTHZ_PORT", free_port().to_string())
        .env("IMAGES", images)
        .env("WATCH_PID", std::process::id().to_string())
        .env("READY_TIMEOUT", PATIENCE.as_secs().to_string())
        .output()
        .expect("running scripts/node/start.sh");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(3) {
        let refusal = said.lines().find(|l| l.starts_with("node refused:")).unwrap_or(said.trim());
        return Err(refusal.to_string());
    }
    assert!(out.status.success(), "scripts/node/start.sh failed ({:?}):\n{said}", out.status.code());
    eprint!("{said}");
    eprintln!(
        "measured: node start-up (containerd, image import, kubelet Ready) {:.1} s",
        t_node.elapsed().as_secs_f64()
    );
    Ok(Started { node, subnet, node_ip: format!("10.244.{subnet}.1") })
}

/// Whether a real-node test runs: false (saying why) with `LLMOS_SKIP_E2E=1` or when not
/// root; panics naming what is missing when a prerequisite (a binary of
/// `scripts/k8s/build.sh`, the kubelet included) is absent.
pub fn node_test_runs() -> bool {
    if skip_requested() {
        eprintln!("LLMOS_SKIP_E2E=1: skipping the end-to-end test");
        return false;
    }
    if !is_root() {
        eprintln!(
            "SKIPPED: a real node needs root (containerd, runc and the kubelet), and this test does not run as root"
        );
        return false;
    }
    let mut missing = missing_prerequisites(true);
    if !k8s_bin().join("kubelet").exists() {
        missing.push(format!("{} (build with scripts/k8s/build.sh)", k8s_bin().join("kubelet").display()));
    }
    assert!(missing.is_empty(), "end-to-end prerequisites missing (set LLMOS_SKIP_E2E=1 to skip): {missing:?}");
    true
}

/// The operator Pods' kubeconfig (the ServiceAccount identity of manifests/, a static
/// token as `scripts/k8s/start.sh` sets it up, and the cluster's CA) as the ConfigMap
/// `llmos-kube` in the operator's namespace, to mount at `/etc/llmos-kube`.
pub fn operator_config(stack: &Stack) {
    let kubeconfig = std::fs::read_to_string(operator_kubeconfig(stack)).expect("operator kubeconfig");
    let ca_path = stack.path("k8s/pki/ca.crt");
    let kubeconfig = kubeconfig.replace(&ca_path.display().to_string(), "/etc/llmos-kube/ca.crt");
    std::fs::write(stack.path("kubeconfig-pod"), &kubeconfig).expect("write the Pods' kubeconfig");
    std::fs::copy(&ca_path, stack.path("ca.crt")).expect("copy the CA");
    stack.kubectl(
        &[
            "-n",
            OPERATOR_NS,
            "create",
            "configmap",
            "llmos-kube",
            &format!("--from-file=kubeconfig={}", stack.path("kubeconfig-pod").display()),
            &format!("--from-file=ca.crt={}", stack.path("ca.crt").display()),
        ],
        None,
    );
}

/// The exit codes of the Pods' first containers as the kubelet reports them, by Pod
/// name, from a watch of the Pods `selector` picks (a field or label selector; `field`
/// says which) started now. A deleted Pod's object goes as soon as its containers have
/// stopped, so polling can miss the short time its status shows them terminated; the
/// watch sees every status the kubelet writes. Abort the returned task when done.
pub async fn watch_exit_codes(
    pods: &Api<Pod>,
    selector: &str,
    field: bool,
) -> (std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, i32>>>, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    use kube::ResourceExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let lp = if field { ListParams::default().fields(selector) } else { ListParams::default().labels(selector) };
    let rv =
        pods.list_metadata(&lp).await.expect("list the watched Pods").metadata.resource_version.unwrap_or_default();
    let wp = if field { WatchParams::default().fields(selector) } else { WatchParams::default().labels(selector) };
    let stream = pods.watch(&wp, &rv).await.expect("watch the Pods");
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let pod = match ev {
                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p)) => p,
                Ok(_) => continue,
                Err(_) => break,
            };
            if let Some(code) = first_container_exit(&pod) {
                out.lock().unwrap().insert(pod.name_any(), code);
            }
        }
    });
    (seen, task)
}

/// The exit code of the Pod's first container, once its status shows it terminated.
pub fn first_container_exit(pod: &Pod) -> Option<i32> {
    let state = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?;
    state.terminated.as_ref().map(|t| t.exit_code)
}

/// The id of the Pod's first container as containerd knows it (its status's
/// `containerID` without the `containerd://` scheme), once the kubelet reported it.
pub fn first_container_id(pod: &Pod) -> Option<String> {
    let id = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.container_id.as_ref()?;
    Some(id.strip_prefix("containerd://").unwrap_or(id).to_string())
}

/// Containers' exit statuses from containerd's own event stream (`ctr events`, topic
/// `/tasks/exit`) on the node, from when [`ContainerExits::start`] ran. The kubelet of
/// Kubernetes 1.20 may delete a deleted Pod's object before it ever writes the
/// terminated status of its containers, so a Pod watch can miss an exit; containerd
/// publishes every one. Stops the subscription when dropped.
pub struct ContainerExits {
    child: std::process::Child,
    file: PathBuf,
}

impl ContainerExits {
    /// Subscribes to the events of the containerd of the node in `node_dir`.
    pub fn start(node_dir: &Path) -> ContainerExits {
        let file = node_dir.join("containerd-events.log");
        let out = std::fs::File::create(&file).expect("create containerd-events.log");
        let child = Command::new("ctr")
            .arg("--address")
            .arg(node_dir.join("containerd.sock"))
            .arg("events")
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start `ctr events`");
        // The subscription is in place once ctr has connected; it prints nothing until
        // an event comes, so give it a moment rather than a signal.
        std::thread::sleep(Duration::from_millis(500));
        ContainerExits { child, file }
    }

    /// The exit statuses seen so far, by container id.
    pub fn exits(&self) -> std::collections::BTreeMap<String, i32> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        parse_task_exits(&text)
    }
}

impl Drop for ContainerExits {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exits in `ctr events` output: lines `<time> <namespace> /tasks/exit {json}`, whose
/// JSON leaves out `exit_status` when it is 0. The exit of a container's own task has
/// `id` equal to `container_id` (an exec's does not).
pub fn parse_task_exits(text: &str) -> std::collections::BTreeMap<String, i32> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some((_, json)) = line.split_once(" /tasks/exit ") else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else { continue };
        let (Some(cid), Some(id)) = (v["container_id"].as_str(), v["id"].as_str()) else { continue };
        if cid == id {
            out.insert(cid.to_string(), v["exit_status"].as_i64().unwrap_or(0) as i32);
        }
    }
    out
}
