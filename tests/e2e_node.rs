//! A real node: Pods from llmos's own image run on containerd + runc under a kubelet 1.20.
//!
//! The stack: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback
//! (`scripts/k8s/start.sh`), and one node (`scripts/node/start.sh`): containerd and runc
//! from Debian, the kubelet built with the control plane, a bridge pod network, the Node
//! labelled `nvidia.com/gpu.product` with 8 `nvidia.com/gpu` advertised on its status. The
//! image is built in the test from the `llmos` binary under test (`images/build.sh`: a
//! Debian bookworm base from debootstrap, libtorch's libraries, the binary) and imported
//! into containerd's local store; nothing is pulled from a registry.
//!
//! What it shows:
//! - the operator, run from that image as a Pod (host network: the API server listens on
//!   loopback only) with the ServiceAccount identity and RBAC of `manifests/`, is
//!   scheduled, started from the local store ("already present on machine"), becomes
//!   Ready through the kubelet's probe of its `/readyz` and takes the leader Lease;
//! - a simulated vLLM replica (the same image running `llmos vllm-sim`: the twin's engine
//!   for Llama-3-8B on an A100 behind vLLM's HTTP API), selected by GPU product, is bound
//!   to the node, runs with an address on the pod bridge, stays not Ready until its
//!   simulated weights are loaded (the kubelet probes its `/health`), then answers
//!   OpenAI-style completions from the host through the bridge and counts them in vLLM's
//!   `/metrics`; a Pod asking more GPUs than are left stays Pending for
//!   `Insufficient nvidia.com/gpu`;
//! - deleted, the Pods terminate: the replica gets SIGTERM from the kubelet with requests
//!   in flight, finishes them (every one answered 200) and exits 0 (containerd's task
//!   exit event says so, and the kubelet's status where it wrote one), the operator's exit
//!   status is read from its Pod's last status, and containerd is left with no running
//!   task.
//!
//! Skipped, naming what refused, where the machine cannot run containers or a kubelet
//! (not root, no cgroup v1, runc refused, no bridge: `scripts/node/start.sh` exits 3);
//! `LLMOS_SKIP_E2E=1` skips. Waits are generous: a slow machine makes it slower, not red.
//! Everything started is stopped when the test ends, also on a panic (drop guards, and
//! watchdogs on the test's process id for a killed run). Figures it prints are in
//! docs/benchmarks.md ("A real node").

mod e2e_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};

use e2e_support::node::{
    build_image, dir_bytes, first_container_id, node_test_runs, operator_config, pod_events, pod_ready, start_node,
    wait_for, watch_exit_codes, ContainerExits, GPU_PRODUCT, NODE,
};
use e2e_support::{apply_operator_rbac, free_port, Stack, OPERATOR_NS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_from_the_local_image_run_on_a_real_node() {
    if !node_test_runs() {
        return;
    }

    let (stack, client) = Stack::start_with(true, true).await;
    stack.install_crd();
    apply_operator_rbac(&stack);

    // The image, from the binary under test.
    let image_dir = stack.path("images/llmos");
    let build = build_image(&image_dir, Path::new(env!("CARGO_BIN_EXE_llmos")));
    let image_mib = dir_bytes(&image_dir) as f64 / 1_048_576.0;
    eprintln!("measured: image llmos.local/llmos:dev {image_mib:.0} MiB, built in {:.1} s", build.as_secs_f64());

    // The node.
    let node_dir = stack.path("node");
    let started = match start_node(&node_dir, &stack.kubeconfig, &image_dir, 8) {
        Ok(s) => s,
        Err(refusal) => {
            eprintln!("SKIPPED: this machine cannot run a real node: {refusal}");
            return;
        }
    };
    let (_node, subnet, node_ip) = (started.node, started.subnet, started.node_ip);
    let pod_cidr = format!("10.244.{subnet}.0/24");

    // The Node as the kubelet registered it, with the GPUs a device plugin would advertise.
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(NODE).await.expect("the Node is registered");
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("nvidia.com/gpu.product").map(String::as_str), Some(GPU_PRODUCT), "labels: {labels:?}");
    let status = n.status.clone().expect("Node status");
    let gpus = status.allocatable.as_ref().and_then(|a| a.get("nvidia.com/gpu")).map(|q| q.0.clone());
    assert_eq!(gpus.as_deref(), Some("8"), "allocatable: {:?}", status.allocatable);
    let info = status.node_info.expect("node info");
    assert!(info.container_runtime_version.starts_with("containerd://"), "{}", info.container_runtime_version);
    assert_eq!(info.kubelet_version, "v1.20.2");

    // The operator as a Pod of its image, with the ServiceAccount identity of manifests/
    // (a static token, as scripts/k8s/start.sh sets it up) in a kubeconfig from a ConfigMap.
    operator_config(&stack);
    let port = free_port();
    let operator = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: llmos-operator, namespace: {OPERATOR_NS}, labels: {{app.kubernetes.io/name: llmos-operator}}}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 30
  containers:
    - name: operator
      image: llmos.local/llmos:dev
      imagePullPolicy: IfNotPresent
      args: ["run", "--metrics-addr=0.0.0.0:{port}", "--log-format=json"]
      env:
        - {{name: KUBECONFIG, value: /etc/llmos-kube/kubeconfig}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
      readinessProbe:
        httpGet: {{path: /readyz, port: {port}}}
        periodSeconds: 1
      volumeMounts: [{{name: kube, mountPath: /etc/llmos-kube, readOnly: true}}]
  volumes: [{{name: kube, configMap: {{name: llmos-kube}}}}]
"#
    );
    // A simulated vLLM replica on the pod network, placed by GPU product and count: the
    // same image running `llmos vllm-sim`, not Ready (the kubelet probes /health through
    // the bridge) until its simulated weights are loaded after LOAD_S. The one asking
    // too many GPUs is the pause image (it never starts).
    let gpu_pod = |name: &str, gpus: u32| {
        let container = if gpus <= 2 {
            r#"image: llmos.local/llmos:dev
      imagePullPolicy: IfNotPresent
      args: ["vllm-sim", "--model", "llama-3-8b", "--gpu", "A100-80GB", "--port", "8000", "--load-seconds", "4"]
      ports: [{name: http, containerPort: 8000}]
      readinessProbe: {httpGet: {path: /health, port: 8000}, periodSeconds: 1}"#
        } else {
            "image: llmos.local/pause:3.4.1\n      imagePullPolicy: IfNotPresent"
        };
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeSelector: {{nvidia.com/gpu.product: {GPU_PRODUCT}}}
  terminationGracePeriodSeconds: 30
  containers:
    - name: replica
      {container}
      resources: {{limits: {{nvidia.com/gpu: {gpus}}}}}
"#
        )
    };
    let t_pods = Instant::now();
    stack.kubectl(&["apply", "-f", "-"], Some(&operator));
    stack.kubectl(&["apply", "-f", "-"], Some(&gpu_pod("replica-0", 2)));

    let pods_op: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let op = wait_for("the operator Pod to be Ready", &node_dir, || {
        let pods_op = pods_op.clone();
        async move { pods_op.get("llmos-operator").await.ok().filter(pod_ready) }
    })
    .await;
    let op_ready = t_pods.elapsed();
    let replica = wait_for("the GPU Pod to be Ready", &node_dir, || {
        let pods = pods.clone();
        async move { pods.get("replica-0").await.ok().filter(pod_ready) }
    })
    .await;
    let replica_ready = t_pods.elapsed();
    eprintln!(
        "measured: Pod created to Ready: operator {:.1} s, GPU Pod {:.1} s",
        op_ready.as_secs_f64(),
        replica_ready.as_secs_f64()
    );

    for p in [&op, &replica] {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "bound by kube-scheduler to the real node");
    }
    let op_ip = op.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    assert_eq!(op_ip, node_ip, "a host-network Pod has the node's address");
    let replica_ip = replica.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    assert!(
        replica_ip.starts_with(&format!("10.244.{subnet}.")) && replica_ip != node_ip,
        "the GPU Pod has an address on the pod bridge ({pod_cidr}), got {replica_ip:?}"
    );
    // The kubelet's Events (written a moment after the fact): the image came from the local
    // store and the container was started.
    for (ns, name) in [(OPERATOR_NS, "llmos-operator"), ("default", "replica-0")] {
        let events = wait_for(&format!("the kubelet's Pulled and Started Events of {ns}/{name}"), &node_dir, || {
            let client = client.clone();
            async move {
                let ev = pod_events(&client, ns, name).await;
                let pulled = ev.iter().any(|e| e.starts_with("Pulled:") && e.contains("already present on machine"));
                let started = ev.iter().any(|e| e.starts_with("Started:"));
                (pulled && started).then_some(ev)
            }
        })
        .await;
        eprintln!("{ns}/{name}: {}", events.join("; "));
    }

    // The replica was not Ready while its simulated weights loaded: Ready came at least
    // the load time after its container started.
    let st = replica.status.as_ref().expect("replica status");
    let started = st
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
        .expect("the replica's container started");
    let ready_at = st
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready")?.last_transition_time.clone())
        .expect("the replica's Ready condition");
    let loading = ready_at.0.duration_since(started.0).as_secs_f64();
    assert!(loading >= 3.0, "Ready {loading:.1} s after the container started: before its 4 s of loading");
    eprintln!("the simulated replica became Ready {loading:.1} s after its container started (4 s of loading)");

    // It serves completions from the host through the bridge and counts them.
    let base = format!("http://{replica_ip}:8000");
    let http = reqwest::Client::new();
    let complete = |max_tokens: u32| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let body = serde_json::json!({"model": "llama-3-8b", "prompt": "p".repeat(1200), "max_tokens": max_tokens});
            let r = http.post(format!("{base}/v1/completions")).json(&body).send().await.expect("POST a completion");
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    for (code, v) in futures::future::join_all((0..4).map(|_| complete(16))).await {
        assert_eq!((code, &v["usage"]["completion_tokens"]), (200, &serde_json::json!(16)), "{v}");
    }
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("GET /metrics").text().await.unwrap_or_default();
    let served = llmos::metrics::scrape::parse_exposition(&metrics);
    assert_eq!(served.counters.get(&llmos::metrics::vllm::Field::RequestSuccess), Some(&4.0), "{metrics}");
    // Requests in flight when the Pod is deleted: the kubelet's SIGTERM must let them finish.
    let in_flight: Vec<_> = (0..3).map(|_| tokio::spawn(complete(600))).collect();
    let t_busy = Instant::now();
    loop {
        let text =
            http.get(format!("{base}/metrics")).send().await.expect("GET /metrics").text().await.unwrap_or_default();
        let p = llmos::metrics::scrape::parse_exposition(&text);
        if p.gauges.get(&llmos::metrics::vllm::Field::RunningRequests) == Some(&3.0) {
            break;
        }
        assert!(t_busy.elapsed() < Duration::from_secs(60), "the three long requests never ran:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The operator in the Pod answers and leads.
    let url = format!("http://{node_ip}:{port}/readyz");
    let body = reqwest::get(&url).await.expect("GET /readyz").text().await.unwrap_or_default();
    assert_eq!(body, "ready", "{url}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let holder = wait_for("the operator Pod to hold the leader Lease", &node_dir, || {
        let leases = leases.clone();
        async move {
            let l = leases.list(&ListParams::default()).await.ok()?;
            l.items.into_iter().find_map(|l| l.spec?.holder_identity.filter(|h| !h.is_empty()))
        }
    })
    .await;
    eprintln!("the operator Pod holds the leader Lease as {holder}");

    // 8 GPUs, 2 taken: a Pod asking 7 cannot be placed.
    stack.kubectl(&["apply", "-f", "-"], Some(&gpu_pod("replica-too-big", 7)));
    let why = wait_for("kube-scheduler to refuse the 7-GPU Pod", &node_dir, || {
        let client = client.clone();
        async move {
            pod_events(&client, "default", "replica-too-big")
                .await
                .into_iter()
                .find(|e| e.starts_with("FailedScheduling:") && e.contains("Insufficient nvidia.com/gpu"))
        }
    })
    .await;
    eprintln!("{why}");

    // Deleted, the Pods terminate: their containers stop and the objects go.
    let replica_cid = first_container_id(&replica).expect("the GPU Pod's container id");
    let (exits, exit_watch) = watch_exit_codes(&pods, "metadata.name=replica-0", true).await;
    let task_exits = ContainerExits::start(&node_dir);
    let t_del = Instant::now();
    let dp = DeleteParams::default();
    pods_op.delete("llmos-operator", &dp).await.expect("delete the operator Pod");
    pods.delete("replica-0", &dp).await.expect("delete the GPU Pod");
    pods.delete("replica-too-big", &dp).await.expect("delete the pending Pod");
    for r in in_flight {
        let (code, v) = r.await.expect("request task");
        assert_eq!(code, 200, "a request in flight when the Pod was deleted must finish: {v}");
        assert_eq!(v["usage"]["completion_tokens"], 600, "{v}");
    }
    let drained = t_del.elapsed();
    // The replica's exit status (0: drained), from containerd's task exit event; the
    // kubelet's terminated status, when it wrote one before the Pod's object went, must
    // say the same.
    let replica_exit = wait_for("the replica's container to terminate", &node_dir, || {
        let code = task_exits.exits().get(&replica_cid).copied();
        async move { code }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    exit_watch.abort();
    assert_eq!(replica_exit, 0, "the simulated replica must exit 0 after draining");
    match exits.lock().unwrap().get("replica-0") {
        Some(code) => assert_eq!(*code, replica_exit, "the kubelet's terminated status against containerd's exit"),
        None => eprintln!("the kubelet wrote no terminated status before the replica's Pod object went"),
    }
    eprintln!(
        "the replica drained its 3 requests in flight in {:.1} s after the delete and exited 0",
        drained.as_secs_f64()
    );
    let exit_code = std::sync::Arc::new(std::sync::Mutex::new(None::<i32>));
    wait_for("the deleted Pods to be gone", &node_dir, || {
        let (pods_op, exit_code) = (pods_op.clone(), exit_code.clone());
        async move {
            match pods_op.get_opt("llmos-operator").await.ok()? {
                Some(p) => {
                    let term = p
                        .status
                        .and_then(|s| s.container_statuses)
                        .and_then(|c| c.into_iter().next())
                        .and_then(|c| c.state)
                        .and_then(|s| s.terminated);
                    if let Some(t) = term {
                        *exit_code.lock().unwrap() = Some(t.exit_code);
                    }
                    None
                }
                None => Some(()),
            }
        }
    })
    .await;
    let op_gone = t_del.elapsed();
    wait_for("the deleted GPU Pods to be gone", &node_dir, || {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default()).await.ok().filter(|l| l.items.is_empty()).map(|_| ()) }
    })
    .await;
    let exit_code = *exit_code.lock().unwrap();
    eprintln!(
        "measured: deletion to Pods gone: operator {:.1} s, all {:.1} s; the operator container exited with {}",
        op_gone.as_secs_f64(),
        t_del.elapsed().as_secs_f64(),
        exit_code.map(|c| c.to_string()).unwrap_or_else(|| "(not seen before the Pod went)".into())
    );
    let tasks = Command::new("ctr")
        .args(["--address"])
        .arg(node_dir.join("containerd.sock"))
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()
        .expect("ctr tasks ls");
    let running: Vec<String> = String::from_utf8_lossy(&tasks.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.contains("RUNNING"))
        .map(str::to_string)
        .collect();
    assert!(running.is_empty(), "containerd still runs tasks after the Pods were deleted: {running:?}");
    let _ = std::fs::remove_file(stack.path("kubeconfig-pod"));
}

/// `ctr events` output is read as containerd prints it: a 0 exit status is left out, and an
/// exec's exit is not its container's.
#[test]
fn task_exits_are_read_from_ctr_events_output() {
    let text = "2026-12-02 11:58:41.79 +0000 UTC k8s.io /tasks/exit {\"container_id\":\"abc\",\"id\":\"abc\",\"pid\":25200,\"exited_at\":\"2026-12-02T11:58:41Z\"}\n\
                2026-12-02 11:58:41.86 +0000 UTC k8s.io /tasks/exit {\"container_id\":\"pause\",\"id\":\"pause\",\"pid\":25100,\"exit_status\":137}\n\
                2026-12-02 11:58:41.87 +0000 UTC k8s.io /tasks/exit {\"container_id\":\"abc\",\"id\":\"exec1\",\"exit_status\":1}\n\
                2026-12-02 11:58:41.88 +0000 UTC k8s.io /containers/delete {\"id\":\"abc\"}\n";
    let exits = e2e_support::node::parse_task_exits(text);
    assert_eq!(exits.len(), 2, "{exits:?}");
    assert_eq!(exits["abc"], 0);
    assert_eq!(exits["pause"], 137);
}
