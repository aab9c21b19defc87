//! An LLMPolicyTraining end to end on a real node: the operator turns it into train Jobs
//! whose Pods (the llmos image running `llmos train-job`) write two candidates to a
//! hostPath volume, then an evaluation Job whose Pod scores them against the workload's
//! policy in the twin and leaves the result in its termination message, which the
//! operator reads into the training's status.
//!
//! The stack: etcd, kube-apiserver, kube-controller-manager (its Job controller creates the
//! Pods, its garbage collector owns the Jobs' fate) and kube-scheduler on loopback, one
//! node (`scripts/node/start.sh`: containerd, runc, the kubelet), the image built from the
//! binary under test (`images/build.sh`), and `llmos run` as a process with the shipped
//! RBAC's identity and leader election.
//!
//! What it shows, in order:
//! 1. a training naming a workload that does not exist gets `SpecValid=False` naming
//!    `spec.workload`, and no Job;
//! 2. the workload's traffic is on the volume (a record written with `learning::store`, as
//!    the operator writes it); the training (seeds 2) makes the phase Training and a
//!    `TrainingStarted` Event; the API server here is 1.20, which has no Indexed Jobs, so
//!    the train Job is one Job per index (`JobMode::PerIndex`; the Indexed Job's rendering
//!    is unit-tested);
//! 3. the operator is SIGKILLed while the indexes train and started again: it creates no
//!    second Job (the same Jobs, by uid);
//! 4. both indexes ran as Pods on the node and succeeded; both candidates are on the
//!    volume with `candidate.json` and digests that match the files and the status;
//! 5. the evaluation Job ran; the training is `Evaluated`, its evaluation is the Pod's
//!    result and the volume's `evaluation.json`, its mean the mean of its paired
//!    differences and its ci95 `eval::stats::Estimate`'s; an `Evaluated` Event;
//! 6. nothing the operator asked for was refused by RBAC.
//!
//! The wall time of the round (training applied to Evaluated) is printed and quoted in
//! docs/learning.md. Skipped where the machine cannot run a node; `LLMOS_SKIP_E2E=1` skips.

mod e2e_support;
mod training_support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use e2e_support::node::{build_image, node_test_runs, start_node, wait_for, NODE};
use e2e_support::{apply_operator_rbac, audited_requests, free_port, operator_kubeconfig, Stack, OPERATOR_NS};
use llmos::crd::training::{LLMPolicyTraining, TrainingPhase};
use training_support::{write_record_of, TINY_DQN};

const NS: &str = "default";
const WORKLOAD: &str = "code";
const TRAINING: &str = "code-retrain";
const MOUNT: &str = "/var/lib/llmos";

fn workload_yaml() -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMWorkload
metadata: {{name: {WORKLOAD}, namespace: {NS}}}
spec:
  variants:
    - name: llama3-8b
      model: llama-3-8b
      image: llmos.local/llmos:dev
      args: ["vllm-sim", "--model", "llama-3-8b", "--gpu", "A100-80GB", "--port", "8000", "--load-seconds", "1"]
      port: 8000
      minReplicas: 1
      maxReplicas: 4
  gpuPools:
    - {{name: a100, gpuType: A100-80GB, pricePerGpuHour: 3.0, capacityGpus: 8}}
  limits: {{minTotalReplicas: 1, maxTotalReplicas: 4, maxStepChange: 2, scaleDownCooldownSeconds: 10}}
  metrics: {{source: scrape, windowSeconds: 10, staleAfterSeconds: 20}}
  policy: {{kind: hpa, intervalSeconds: 5}}
  learning:
    record: {{enabled: true, windowSeconds: 15}}
"#
    )
}

fn training_yaml(name: &str, workload: &str, host_path: &Path) -> String {
    format!(
        r#"apiVersion: llmos.dev/v1alpha1
kind: LLMPolicyTraining
metadata: {{name: {name}, namespace: {NS}}}
spec:
  workload: {workload}
  algorithm: dqn
  config: {MOUNT}/tiny-dqn.toml
  steps: 200
  seeds: 2
  baseSeed: 10
  evaluation: {{seeds: 3, window: all}}
  volume: {{hostPath: {}, mountPath: {MOUNT}, recordsPath: records}}
"#,
        host_path.display()
    )
}

async fn training(client: &Client, name: &str) -> Option<LLMPolicyTraining> {
    Api::<LLMPolicyTraining>::namespaced(client.clone(), NS).get_opt(name).await.ok().flatten()
}

async fn jobs_of(client: &Client, name: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), NS);
    api.list(&ListParams::default().labels(&format!("llmos.dev/training={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn event_reasons(client: &Client, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let lp = ListParams::default().fields(&format!("involvedObject.kind=LLMPolicyTraining,involvedObject.name={name}"));
    api.list(&lp)
        .await
        .map(|l| l.items.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect())
        .unwrap_or_default()
}

fn operator_args(port: u16) -> Vec<String> {
    ["run", "--lease-namespace", OPERATOR_NS, "--job-image", "llmos.local/llmos:dev", "--metrics-addr"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("127.0.0.1:{port}")])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_runs_as_jobs_on_a_real_node_and_is_evaluated() {
    if !node_test_runs() {
        return;
    }
    let t_all = Instant::now();
    let (mut stack, client) = Stack::start_with(true, true).await;
    stack.install_crd();
    stack.kubectl(
        &["wait", "--for", "condition=established", "--timeout=60s", "crd/llmpolicytrainings.llmos.dev"],
        None,
    );
    apply_operator_rbac(&stack);
    let image_dir = stack.path("images/llmos");
    build_image(&image_dir, Path::new(env!("CARGO_BIN_EXE_llmos")));
    let node_dir = stack.path("node");
    let started = match start_node(&node_dir, &stack.kubeconfig, &image_dir, 8) {
        Ok(s) => s,
        Err(refusal) => {
            eprintln!("SKIPPED: this machine cannot run a real node: {refusal}");
            return;
        }
    };
    let _node = started.node;

    // The shared volume: the workload's record, a tiny training config; writable by the
    // image's user (uid 65532).
    let volume = stack.path("volume");
    write_record_of(&volume.join("records"), NS, WORKLOAD, 40);
    std::fs::write(volume.join("tiny-dqn.toml"), TINY_DQN).expect("config");
    for p in [volume.clone(), volume.join("records")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    // The example passes the API server's schema.
    stack.kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            NS,
            "-f",
            &e2e_support::repo().join("manifests/examples/training").display().to_string(),
        ],
        None,
    );

    let op_env = [("KUBECONFIG", operator_kubeconfig(&stack))];
    let op_env: Vec<(&str, &str)> = op_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = operator_args(free_port());
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    stack.spawn("operator", &args_ref, &op_env);

    // 1. A training of a workload that does not exist: a condition naming the field, no Job.
    stack.kubectl(&["apply", "-f", "-"], Some(&training_yaml("orphan", "nope", &volume)));
    let cond = wait_for("the orphan training's SpecValid=False", &node_dir, || {
        let client = client.clone();
        async move {
            let t = training(&client, "orphan").await?;
            let c = t.status?.conditions.into_iter().find(|c| c.type_ == "SpecValid" && c.status == "False")?;
            Some(c.message)
        }
    })
    .await;
    assert!(cond.starts_with("spec.workload"), "{cond}");
    assert!(jobs_of(&client, "orphan").await.is_empty(), "no Job for a spec that cannot run");

    // 2. The workload and its training.
    stack.kubectl(&["apply", "-f", "-"], Some(&workload_yaml()));
    stack.kubectl(&["apply", "-f", "-"], Some(&training_yaml(TRAINING, WORKLOAD, &volume)));
    let t_apply = Instant::now();
    wait_for("the training's phase Training", &node_dir, || {
        let client = client.clone();
        async move {
            let s = training(&client, TRAINING).await?.status?;
            (s.phase == TrainingPhase::Training).then_some(())
        }
    })
    .await;
    let before: BTreeSet<String> = jobs_of(&client, TRAINING).await.iter().filter_map(|j| j.uid()).collect();
    assert!(!before.is_empty(), "train Jobs exist");

    // 3. SIGKILL the operator mid-training; a new one finds the same Jobs.
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let holder = |leases: Api<Lease>| async move {
        leases.get_opt("llmos-operator-leader").await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
    };
    let first_leader = holder(leases.clone()).await.expect("the first operator holds the Lease");
    stack.kill("operator");
    let killed_at = t_apply.elapsed().as_secs_f64();
    let args = operator_args(free_port());
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    stack.spawn("operator-2", &args_ref, &op_env);
    wait_for("the restarted operator to take the Lease", &node_dir, || {
        let (leases, first) = (leases.clone(), first_leader.clone());
        async move { holder(leases).await.filter(|h| *h != first) }
    })
    .await;
    let led_at = t_apply.elapsed().as_secs_f64();

    // 4-5. The round ends Evaluated.
    let status = wait_for("the training Evaluated (or Failed)", &node_dir, || {
        let client = client.clone();
        async move {
            let s = training(&client, TRAINING).await?.status?;
            s.phase.is_final().then_some(s)
        }
    })
    .await;
    let round_s = t_apply.elapsed().as_secs_f64();
    assert_eq!(
        status.phase,
        TrainingPhase::Evaluated,
        "{:?}\n--- operator-2 log ---\n{}",
        status.message,
        e2e_support::tail(&stack.log("operator-2"))
    );
    let jobs = jobs_of(&client, TRAINING).await;
    let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    let uids: BTreeSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    assert!(before.is_subset(&uids), "the Jobs made before the kill are still the ones: {names:?}");
    let train_jobs: Vec<&Job> =
        jobs.iter().filter(|j| j.labels().get("llmos.dev/job-kind").map(String::as_str) == Some("train")).collect();
    let eval_jobs = jobs.len() - train_jobs.len();
    assert_eq!(eval_jobs, 1, "one evaluation Job: {names:?}");
    let mode = status.job_mode.clone().unwrap_or_default();
    match mode.as_str() {
        "Indexed" => assert_eq!(train_jobs.len(), 1, "{names:?}"),
        _ => assert_eq!(train_jobs.len(), 2, "one Job per index and no second one: {names:?}"),
    }

    // The train Pods ran on the node, one per index, and succeeded.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let tp = pods
        .list(&ListParams::default().labels(&format!("llmos.dev/training={TRAINING},llmos.dev/job-kind=train")))
        .await
        .expect("pods")
        .items;
    let mut indexes = BTreeSet::new();
    for p in &tp {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
            assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(NODE));
            indexes.insert(llmos::controller::training::pod_index(p).expect("an index"));
        }
    }
    assert_eq!(indexes, BTreeSet::from([0, 1]), "both indexes ran as Pods");
    // How long each Pod's container ran (started to finished, as the kubelet reports it).
    let ran = |p: &Pod| -> Option<f64> {
        let t = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.clone()?;
        Some(t.finished_at?.0.duration_since(t.started_at?.0).as_secs_f64())
    };
    let train_ran: Vec<String> = tp.iter().filter_map(ran).map(|s| format!("{s:.0}")).collect();
    let ep = pods
        .list(&ListParams::default().labels(&format!("llmos.dev/training={TRAINING},llmos.dev/job-kind=eval")))
        .await
        .expect("pods")
        .items;
    let eval_ran: Vec<String> = ep.iter().filter_map(ran).map(|s| format!("{s:.0}")).collect();

    // Both candidates on the volume, as the status lists them.
    let root = volume.join(format!("trainings/{TRAINING}"));
    let (found, skipped) = llmos::learning::job::read_candidates(&root).expect("candidates");
    assert_eq!(found.iter().map(|c| c.file.index).collect::<Vec<_>>(), [0, 1], "skipped: {skipped:?}");
    assert_ne!(found[0].file.digest, found[1].file.digest);
    assert_eq!(status.candidates.len(), 2);
    for c in &status.candidates {
        let f = &found[c.index as usize];
        assert_eq!((c.digest.as_str(), c.seed), (f.file.digest.as_str(), 10 + u64::from(c.index)));
        assert_eq!(c.checkpoint, format!("{MOUNT}/trainings/{TRAINING}/candidate-{}", c.index));
    }
    let e = status.evaluation.clone().expect("status.evaluation");
    let on_volume: llmos::crd::training::TrainingEvaluation =
        serde_json::from_slice(&std::fs::read(root.join("evaluation.json")).expect("evaluation.json")).expect("JSON");
    assert_eq!(on_volume.paired_differences, e.paired_differences);
    assert_eq!(on_volume.candidate, e.candidate);
    assert_eq!(e.seeds, 3);
    assert_eq!(e.paired_differences.len(), 3);
    let est = llmos::eval::stats::Estimate::of(&e.paired_differences);
    assert!((e.mean - est.mean).abs() < 1e-9 && (e.ci95 - est.ci95).abs() < 1e-9, "{e:?}");
    assert!(found.iter().any(|c| c.file.digest == e.candidate.digest));
    assert_eq!(e.incumbent.policy, "hpa");

    // The Events tell the story.
    let events = event_reasons(&client, TRAINING).await;
    let reasons: Vec<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
    for want in ["TrainingStarted", "Evaluated"] {
        assert!(reasons.contains(&want), "Event {want} missing: {events:?}");
    }
    assert!(!reasons.contains(&"TrainingFailed"), "{events:?}");
    let started_events = reasons.iter().filter(|r| **r == "TrainingStarted").count();

    // 6. RBAC refused nothing.
    let used = audited_requests(&stack);
    let refused: Vec<_> = used.iter().filter(|(_, (_, r))| *r > 0).collect();
    assert!(refused.is_empty(), "requests of the operator refused by RBAC: {refused:?}");

    let summary = format!(
        "e2e training: {:.0}s in all; round (applied to Evaluated) {round_s:.1}s, {mode} Jobs {names:?}, operator \
         SIGKILLed at {killed_at:.1}s, the restarted one leading at {led_at:.1}s (the killed one's Lease expired), no \
         second Job; train Pods ran {train_ran:?} s, evaluation Pod \
         {eval_ran:?} s (kubelet's whole seconds); TrainingStarted Events {started_events}; candidate {} {:+.3} ± {:.3} over {} seeds against {}",
        t_all.elapsed().as_secs_f64(),
        e.candidate.checkpoint,
        e.mean,
        e.ci95,
        e.seeds,
        e.incumbent.policy
    );
    eprintln!("{summary}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_training_summary.txt"), summary);
    let _ = &mut stack;
}
