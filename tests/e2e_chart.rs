//! The Helm chart installed for real: rendered by `scripts/chart/render.sh` (no `helm`
//! binary can be had here), applied with kubectl (CRDs first), and the operator running as
//! the chart's Deployment, two Pods of its image under leader election on a real node.
//!
//! The stack: etcd, kube-apiserver (with the ServiceAccount admission plugin, so Pods get
//! their ServiceAccount's token), kube-controller-manager (its token controller signs the
//! tokens, its root CA goes into them) and kube-scheduler on loopback, one node
//! (`scripts/node/start.sh`: containerd, runc, the kubelet, a bridge pod network), and the
//! image built from the binary under test (`images/build.sh`).
//!
//! `LLMOS_OPERATOR_IMAGE_OCI=DIR` runs another image instead: the OCI layout in DIR, whose
//! file `DIR/name` holds its reference, as `images/dockerfile.sh DIR` writes the image
//! built from the Dockerfile (`llmos.local/llmos:dockerfile`); the node imports it and the
//! chart names it. Unset (the default, and CI), the image is `images/build.sh`'s.
//!
//! The chart is installed with its defaults but for the image (`image.repository=llmos.local/llmos`,
//! `image.tag=dev`, the image the node imported): the Pods use the in-cluster
//! configuration (`KUBERNETES_SERVICE_HOST`/`PORT` that the kubelet sets from the
//! `kubernetes` Service, the token and `ca.crt` it mounts), each in its own network
//! namespace on the pod bridge, so the two replicas' metrics ports do not clash and each
//! Pod's host name is its own. No kube-proxy runs, so the test plays its part for the one
//! Service the operator needs: the `kubernetes` Service's cluster IP (10.0.0.1:443, which
//! the API server's serving certificate names) is an address on the node's bridge, and
//! connections to it are forwarded to the API server on loopback (docs/chart.md).
//!
//! What it shows:
//! 1. the chart renders and applies (CRDs, then the rest) with kubectl;
//! 2. the Deployment's two Pods run the image with the chart's ServiceAccount (its token
//!    mounted), are bound to the node, Ready through the kubelet's probes of `/readyz`;
//! 3. one holds the Lease, the other waits (its log says so, and never that it leads);
//! 4. the example workload `manifests/examples/llmworkload-small.yaml` is reconciled: its
//!    Deployment appears with the replicas the leader decided (its minimum, held without
//!    metrics: the example's Prometheus does not exist here);
//! 5. the leader's Pod is deleted: a live Pod takes the Lease (the one standing by, or
//!    the Deployment's replacement when it starts first: the leader gives the Lease up on
//!    SIGTERM, so whoever asks first gets it); the new leader reconciles a change of the
//!    workload's minimum (2 replicas); the other live Pod stands by;
//! 6. every request of the operators' identity (the chart's ServiceAccount) was allowed
//!    by the chart's RBAC (the API server's audit log).
//!
//! Skipped, naming what refused, where the machine cannot run a node (not root, no cgroup
//! v1, runc refused: as tests/e2e_node.rs); `LLMOS_SKIP_E2E=1` skips; a missing
//! prerequisite (the control plane, the kubelet, Go for the renderer) fails it.

mod e2e_support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use e2e_support::node::{build_image, node_test_runs, pod_ready, start_node, wait_for, NODE};
use e2e_support::{audited_requests, repo, Stack, OPERATOR_NS};

const RELEASE: &str = "llmos-operator";
const LEASE: &str = "llmos-operator-leader";
const EXAMPLE: &str = "manifests/examples/llmworkload-small.yaml";
const WORKLOAD: &str = "chat-small";
const WORKLOAD_NS: &str = "default";
const WORKLOAD_DEPLOYMENT: &str = "chat-small-llama8b-l4";
/// The image `images/build.sh llmos` gives the binary under test.
const BUILT_IMAGE: &str = "llmos.local/llmos:dev";
/// Names an OCI layout to run instead of [`BUILT_IMAGE`] (`images/dockerfile.sh DIR`).
const IMAGE_OCI_ENV: &str = "LLMOS_OPERATOR_IMAGE_OCI";

/// The OCI layout named by `LLMOS_OPERATOR_IMAGE_OCI` and the reference in its `name`
/// file, or `None` when the variable is unset or empty.
fn prebuilt_image() -> Option<(PathBuf, String)> {
    let dir = PathBuf::from(std::env::var_os(IMAGE_OCI_ENV).filter(|v| !v.is_empty())?);
    assert!(dir.join("index.json").is_file(), "{IMAGE_OCI_ENV}={}: not an OCI layout (no index.json)", dir.display());
    let name = std::fs::read_to_string(dir.join("name")).unwrap_or_else(|e| {
        panic!("{IMAGE_OCI_ENV}={}: no file 'name' with the image's reference ({e})", dir.display())
    });
    Some((dir, name.trim().to_string()))
}

/// Renders the chart for the test's image (`repository:tag`) with `scripts/chart/render.sh`;
/// returns (the CRDs, the rest) as two YAML streams.
fn render_chart(image: &str) -> (String, String) {
    let (repository, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("image {image} has no tag"));
    let set = format!("image.repository={repository},image.tag={tag}");
    let text = e2e_support::render_chart(RELEASE, OPERATOR_NS, &["--include-crds", "--set", &set]);
    let (mut crds, mut rest) = (String::new(), String::new());
    for doc in text.split("---\n").filter(|d| !d.trim().is_empty()) {
        let target = if doc.starts_with("# Source: llmos-operator/crds/") { &mut crds } else { &mut rest };
        target.push_str("---\n");
        target.push_str(doc);
    }
    assert!(crds.contains("kind: CustomResourceDefinition") && rest.contains("kind: Deployment"), "{text}");
    (crds, rest)
}

/// Plays kube-proxy's part for one Service: connections to `listen` are forwarded to
/// `target`, a pair of threads copying each way. Returns the count of connections.
fn forward(listen: SocketAddr, target: SocketAddr) -> Arc<AtomicU64> {
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        panic!("binding {listen} (the kubernetes Service's address; another run of this test on the machine?): {e}")
    });
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let Ok(outbound) = TcpStream::connect(target) else { return };
                let (Ok(mut in_r), Ok(mut out_r)) = (inbound.try_clone(), outbound.try_clone()) else { return };
                let (mut in_w, mut out_w) = (inbound, outbound);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut in_r, &mut out_w);
                    let _ = out_w.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut out_r, &mut in_w);
                let _ = in_w.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    count
}

/// The API server's loopback address, from the stack's kubeconfig.
fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).expect("server in kubeconfig");
    server.parse().expect("host:port")
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    leases.get(LEASE).await.ok()?.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The operator's Pods of the release that are not being deleted.
async fn operator_pods(pods: &Api<Pod>) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    pods.list(&lp)
        .await
        .map(|l| l.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
        .unwrap_or_default()
}

/// The container log of Pod `p` as the kubelet writes it (no `kubectl logs` here).
fn pod_log(p: &Pod) -> String {
    let dir = PathBuf::from(format!(
        "/var/log/pods/{}_{}_{}/operator",
        p.namespace().unwrap_or_default(),
        p.name_any(),
        p.uid().unwrap_or_default()
    ));
    let mut text = String::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let _ = std::fs::File::open(e.path()).and_then(|mut f| f.read_to_string(&mut text));
    }
    text
}

/// The distinct WARN and ERROR messages of a JSON log (with their error fields and
/// counts), one a line.
fn warnings(log: &str) -> String {
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for line in log.lines() {
        let Some(json) = line.find('{').map(|i| &line[i..]) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { continue };
        if v["level"] == "WARN" || v["level"] == "ERROR" {
            let mut text = format!("{} {}", v["level"].as_str().unwrap_or(""), v["message"].as_str().unwrap_or(""));
            if let Some(e) = v["error"].as_str() {
                text.push_str(&format!(": {e}"));
            }
            *seen.entry(text).or_insert(0) += 1;
        }
    }
    seen.iter().map(|(t, n)| format!("  {n} x {t}")).collect::<Vec<_>>().join("\n")
}

/// (spec.replicas of the workload's Deployment, status.desiredReplicas of the workload).
async fn workload_replicas(client: &Client) -> (Option<i32>, Option<i64>) {
    let deps: Api<Deployment> = Api::namespaced(client.clone(), WORKLOAD_NS);
    let dep = deps.get(WORKLOAD_DEPLOYMENT).await.ok().and_then(|d| d.spec?.replicas);
    let wl: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        WORKLOAD_NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("llmos.dev", "v1alpha1", "LLMWorkload"),
            "llmworkloads",
        ),
    );
    let desired = wl.get(WORKLOAD).await.ok().and_then(|w| w.data["status"]["desiredReplicas"].as_i64());
    (dep, desired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_runs_the_operator_as_pods_under_leader_election() {
    if !node_test_runs() {
        return;
    }
    let t_all = Instant::now();

    // 1. Render first: a chart that does not render fails before anything starts.
    let prebuilt = prebuilt_image();
    let image = prebuilt.as_ref().map_or(BUILT_IMAGE.to_string(), |(_, name)| name.clone());
    let t = Instant::now();
    let (crds, objects) = render_chart(&image);
    let render_s = t.elapsed().as_secs_f64();

    // The control plane, with ServiceAccount tokens mounted into Pods (scripts/k8s/start.sh).
    std::env::set_var("SERVICE_ACCOUNT_ADMISSION", "1");
    let (stack, client) = Stack::start_with(true, true).await;
    let t = Instant::now();
    let (image_dir, image_made) = match &prebuilt {
        Some((dir, _)) => (dir.clone(), format!("{image} from {}", dir.display())),
        None => {
            let dir = stack.path("images/llmos");
            build_image(&dir, Path::new(env!("CARGO_BIN_EXE_llmos")));
            (dir, format!("{image} built in {:.1} s", t.elapsed().as_secs_f64()))
        }
    };
    eprintln!("the operator's image: {image_made}");
    let node_dir = stack.path("node");
    let started = match start_node(&node_dir, &stack.kubeconfig, &image_dir, 0) {
        Ok(s) => s,
        Err(refusal) => {
            eprintln!("SKIPPED: this machine cannot run a real node: {refusal}");
            return;
        }
    };
    let _node = started.node;

    // kube-proxy's part for the `kubernetes` Service: its cluster IP on the node's bridge
    // (removed with the bridge by scripts/node/stop.sh), forwarded to the API server.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services.get("kubernetes").await.expect("the kubernetes Service");
    let spec = svc.spec.expect("Service spec");
    let cluster_ip = spec.cluster_ip.expect("cluster IP");
    let port = spec.ports.expect("ports")[0].port;
    let bridge = std::fs::read_to_string(node_dir.join("bridge")).expect("the node's bridge name");
    let ip = Command::new("ip").args(["addr", "add", &format!("{cluster_ip}/32"), "dev", bridge.trim()]).output();
    assert!(ip.as_ref().is_ok_and(|o| o.status.success()), "adding {cluster_ip} to {}: {ip:?}", bridge.trim());
    let forwarded =
        forward(format!("{cluster_ip}:{port}").parse().expect("address"), apiserver_addr(&stack.kubeconfig));

    // The chart: CRDs first (as Helm installs crds/ before the templates), then the rest.
    let t_install = Instant::now();
    stack.kubectl(&["apply", "-f", "-"], Some(&crds));
    stack.kubectl(&["wait", "--for", "condition=established", "--timeout=60s", "crd", "--all"], None);
    stack.kubectl(&["create", "namespace", OPERATOR_NS], None);
    let applied = stack.kubectl(&["apply", "-f", "-"], Some(&objects));
    eprintln!("chart applied:\n{applied}");

    // 2. Two Pods of the image, with the chart's ServiceAccount, Ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let ready = wait_for("the chart's two operator Pods Ready", &node_dir, || {
        let pods = pods.clone();
        async move {
            let l = operator_pods(&pods).await;
            (l.len() == 2 && l.iter().all(pod_ready)).then_some(l)
        }
    })
    .await;
    let ready_s = t_install.elapsed().as_secs_f64();
    let mut ips = Vec::new();
    for p in &ready {
        let spec = p.spec.as_ref().expect("Pod spec");
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "bound to the real node");
        assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE), "the chart's ServiceAccount");
        assert_ne!(spec.host_network, Some(true), "on the pod network");
        assert_eq!(spec.containers[0].image.as_deref(), Some(image.as_str()));
        let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts.iter().any(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"),
            "the ServiceAccount token is mounted: {mounts:?}"
        );
        let owner = p.owner_references();
        assert!(owner.iter().any(|o| o.kind == "ReplicaSet"), "a Pod of the Deployment's ReplicaSet: {owner:?}");
        ips.push(p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("Pod IP"));
    }
    assert_ne!(ips[0], ips[1], "each Pod has its own address");

    // 3. One leads, the other stands by.
    let names: Vec<String> = ready.iter().map(|p| p.name_any()).collect();
    let leader = wait_for("a chart Pod to hold the Lease", &node_dir, || {
        let (client, names) = (client.clone(), names.clone());
        async move { lease_holder(&client).await.filter(|h| names.contains(h)) }
    })
    .await;
    let standby = ready.iter().find(|p| p.name_any() != leader).expect("the other Pod").clone();
    let log = pod_log(&standby);
    assert!(log.contains("waiting to become leader"), "the standby's log:\n{}", e2e_support::tail(&log));
    assert!(!log.contains("became leader"), "the standby leads too:\n{}", e2e_support::tail(&log));
    eprintln!("{leader} leads, {} stands by ({ready_s:.1} s from apply to both Ready)", standby.name_any());

    // 4. The example workload: its Deployment with the replicas the leader decided.
    let example = std::fs::read_to_string(repo().join(EXAMPLE)).expect("the example");
    stack.kubectl(&["apply", "-n", WORKLOAD_NS, "-f", "-"], Some(&example));
    let t_wl = Instant::now();
    let (replicas, _) = wait_for("the example's Deployment with the decided replicas", &node_dir, || {
        let client = client.clone();
        async move {
            let (dep, desired) = workload_replicas(&client).await;
            (dep.is_some() && dep.map(i64::from) == desired).then_some((dep?, desired?))
        }
    })
    .await;
    assert_eq!(replicas, 1, "the example's minimum, held without metrics (its Prometheus does not exist here)");
    let reconcile_s = t_wl.elapsed().as_secs_f64();

    // 5. The leader's Pod deleted (the kubelet sends SIGTERM; the operator gives the Lease
    //    up): a live Pod takes over and reconciles, the other stands by.
    // The leader's log is read until its Pod is gone (the kubelet removes the file then).
    let leader_pod = ready.iter().find(|p| p.name_any() == leader).expect("the leader's Pod").clone();
    let last_log = Arc::new(std::sync::Mutex::new(String::new()));
    let keep = {
        let last_log = last_log.clone();
        tokio::spawn(async move {
            loop {
                let text = pod_log(&leader_pod);
                if !text.is_empty() {
                    *last_log.lock().unwrap() = text;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    pods.delete(&leader, &DeleteParams::default()).await.expect("delete the leader's Pod");
    let t_kill = Instant::now();
    let next = wait_for("the standby to take the Lease", &node_dir, || {
        let (client, leader) = (client.clone(), leader.clone());
        async move { lease_holder(&client).await.filter(|h| *h != leader) }
    })
    .await;
    let handover_s = t_kill.elapsed().as_secs_f64();
    keep.abort();
    let leader_log = last_log.lock().unwrap().clone();
    let stopping: Vec<&str> = leader_log.lines().skip_while(|l| !l.contains("SIGTERM")).collect();
    eprintln!("the deleted leader's log from SIGTERM on:\n{}", stopping.join("\n"));
    eprintln!("the deleted leader's warnings and errors:\n{}", warnings(&leader_log));
    // The leader gives the Lease up on SIGTERM, so whichever live Pod tries first takes
    // it: the one standing by (it tries every 2 s) or, when it starts within those 2 s,
    // the Deployment's replacement. Either is a handover; which one is reported.
    let taken_by = if next == standby.name_any() { "the standby" } else { "the Deployment's replacement Pod" };
    let live: Vec<String> = operator_pods(&pods).await.iter().map(|p| p.name_any()).collect();
    assert!(live.contains(&next), "the Lease went to {next}, not a live operator Pod of the release ({live:?})");
    eprintln!("{taken_by} ({next}) took the Lease {handover_s:.1} s after the leader's Pod was deleted");
    let wl: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        WORKLOAD_NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("llmos.dev", "v1alpha1", "LLMWorkload"),
            "llmworkloads",
        ),
    );
    let patch = serde_json::json!({"spec": {"variants": [{
        "name": "llama8b", "model": "meta-llama/Llama-3.1-8B-Instruct", "image": "vllm/vllm-openai:v0.6.3",
        "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000"], "port": 8000,
        "gpusPerReplica": 1, "minReplicas": 2, "maxReplicas": 4}]}});
    wl.patch(WORKLOAD, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("raise the workload's minimum");
    wait_for("the new leader to scale the example to its new minimum, 2", &node_dir, || {
        let client = client.clone();
        async move { (workload_replicas(&client).await == (Some(2), Some(2))).then_some(()) }
    })
    .await;
    let replaced = wait_for("the Deployment's replacement Pod Ready", &node_dir, || {
        let (pods, leader) = (pods.clone(), leader.clone());
        async move {
            let l = operator_pods(&pods).await;
            (l.len() == 2 && l.iter().all(pod_ready) && l.iter().all(|p| p.name_any() != leader)).then_some(l)
        }
    })
    .await;
    let waiting = replaced.iter().find(|p| p.name_any() != next).expect("the Pod without the Lease");
    let t_log = Instant::now();
    while !pod_log(waiting).contains("waiting to become leader") && t_log.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = pod_log(waiting);
    assert!(log.contains("waiting to become leader") && !log.contains("became leader"), "{}", e2e_support::tail(&log));
    assert_eq!(lease_holder(&client).await.as_deref(), Some(next.as_str()), "the Lease stays with {next}");

    // 6. The chart's RBAC refused the operators' identity nothing; the identity is the
    //    chart's ServiceAccount (the audit log holds only its requests).
    let used = audited_requests(&stack);
    assert!(used.len() > 5, "the audit log holds the ServiceAccount's requests: {used:?}");
    let refused: Vec<_> = used.iter().filter(|(_, (_, r))| *r > 0).collect();
    assert!(refused.is_empty(), "requests of the chart's ServiceAccount refused by its RBAC: {refused:?}");
    let connections = forwarded.load(Ordering::Relaxed);
    assert!(connections >= 2, "the Pods reached the API server through the kubernetes Service ({connections})");

    let summary = format!(
        "e2e chart: {:.0} s in all; rendered in {render_s:.2} s; image {image_made}; chart applied to two Pods \
         Ready {ready_s:.1} s; example reconciled to {replicas} replica(s) {reconcile_s:.1} s after apply; Lease \
         {leader} -> {next} ({taken_by}) {handover_s:.1} s after the delete; {} audited (group, resource, verb), none refused; \
         {connections} connections through the kubernetes Service",
        t_all.elapsed().as_secs_f64(),
        used.len()
    );
    eprintln!("{summary}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_chart_summary.txt"), summary);
}
