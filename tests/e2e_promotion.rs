//! Shadow, promote, roll back end to end (`spec.learning.promotion`): the real components
//! of tests/e2e_operator.rs (etcd + kube-apiserver 1.20 + kube-controller-manager,
//! Prometheus, `llmos twin-serve` as the data plane, `llmos run`), a checkpoint trained by
//! the test itself (the tiny DQN of tests/e2e_dqn.rs, seconds), and an `LLMPolicyTraining`
//! object whose status the test writes itself.
//!
//! The training and evaluation Jobs that would write that status do not run here (they
//! are the training controller's part, tested by its own tests; this control plane has no
//! node to run their Pods): the training controller, when the operator has it, creates
//! the Jobs and sets phase `Training` (else the test writes it), and the test then plays
//! the evaluation Job's part: phase `Evaluated` with the candidate's checkpoint, its
//! digest and paired score differences (and `observedGeneration`, so the training
//! controller leaves the final phase alone). It checks what the workload controller does
//! with that:
//!
//! 1. `Training` → a `TrainingStarted` Event; `Evaluated` with a better candidate →
//!    `ShadowStarted`, the candidate's shadow decisions in `status.learning.shadow` (never
//!    applied: the spec's HPA keeps deciding), then after `shadowSeconds` `Promoted`: the
//!    history entry in status, `status.lastDecision.policy == "dqn"` (the learned policy
//!    now drives the Deployment), `PolicyReady` naming the promoted checkpoint, and
//!    `llmos policy-history` printing it; the metrics count it.
//! 2. The SLO attainment then falls: the test tightens `spec.slo` to a TTFT target no
//!    request meets (the operator judges attainment against the spec's SLO; a load step
//!    in the twin would need the promotion to land at a known simulated time). After
//!    `rollbackWindowSeconds` the operator rolls back (`RolledBack`, history
//!    `[Promoted, RolledBack]`) and the spec's HPA decides again.
//! 3. A second evaluated training with a worse candidate is rejected
//!    (`CandidateRejected` with the numbers) and nothing changes.
//!
//! When the LLMPolicyTraining CRD is not among `llmos crdgen`'s (its types are written
//! separately), the test installs a minimal schema-less one with a status subresource.
//! `LLMOS_SKIP_E2E=1` skips.

mod e2e_support;

use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use llmos::crd::{LLMWorkload, LLMWorkloadStatus};

use e2e_support::{dqn_scenario, e2e_wanted, free_port, sample_value, tail, train_tiny_dqn, wait_until, Stack};

const NS: &str = "default";
const WL: &str = "chat-promo";

fn workload_yaml(prom_url: &str, ttft_ms: u32) -> String {
    let mut y = e2e_support::StepWorkload {
        name: WL,
        namespace: NS,
        variant: "llama3-8b",
        cold_start_s: Some(10),
        scale_down_cooldown_s: 4,
        prom_url,
        policy_block: "    kind: hpa\n    intervalSeconds: 2\n".into(),
    }
    .yaml();
    y = y.replace("slo: {ttftMs: 2000,", &format!("slo: {{ttftMs: {ttft_ms},"));
    y.push_str(
        "  learning:\n    promotion: {enabled: true, minSeeds: 3, shadowSeconds: 8, minShadowDecisions: 3, \
         maxShieldOverrideFraction: 1.0, rollbackMargin: 0.05, rollbackWindowSeconds: 8, watchSeconds: 600}\n",
    );
    y
}

const TRAINING_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: llmpolicytrainings.llmos.dev}
spec:
  group: llmos.dev
  names: {kind: LLMPolicyTraining, plural: llmpolicytrainings, singular: llmpolicytraining}
  scope: Namespaced
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn trainings(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("llmos.dev", "v1alpha1", "LLMPolicyTraining");
    Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk_with_plural(&gvk, "llmpolicytrainings"))
}

/// Creates the training `name` for the workload (a spec the shipped CRD takes; its Jobs'
/// Pods are never scheduled here).
async fn create_training(api: &Api<DynamicObject>, name: &str, checkpoint: &str, volume: &str) {
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1",
        "kind": "LLMPolicyTraining",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "workload": WL, "algorithm": "dqn", "baseCheckpoint": checkpoint, "steps": 600, "seeds": 2,
            "image": "llmos.local/llmos:dev", "volume": {"hostPath": volume}
        }
    }))
    .expect("training object");
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("creating training {name}: {e}"));
}

/// Writes the training's status as its Jobs would (with `observedGeneration`).
async fn set_training_status(api: &Api<DynamicObject>, name: &str, mut status: serde_json::Value) {
    let generation = api.get(name).await.ok().and_then(|t| t.metadata.generation);
    status["observedGeneration"] = serde_json::json!(generation);
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(name, &PatchParams::default(), &patch)
        .await
        .unwrap_or_else(|e| panic!("writing the status of training {name}: {e}"));
}

/// Waits (10 s at most) for the training controller to set phase `Training` on `name`
/// (it has created the Jobs; their Pods never run here) and writes it when it did not,
/// so that the evaluated status written next is not overwritten by its first write.
async fn training_phase(api: &Api<DynamicObject>, name: &str) {
    let phase = || async {
        let t = api.get_opt(name).await.ok().flatten();
        t.and_then(|t| t.data.pointer("/status/phase").and_then(|p| p.as_str()).map(str::to_string))
    };
    let t0 = Instant::now();
    while phase().await.as_deref() != Some("Training") && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let by_controller = phase().await.as_deref() == Some("Training");
    eprintln!("{name}: phase Training set by the training controller: {by_controller}");
    if !by_controller {
        set_training_status(api, name, serde_json::json!({"phase": "Training"})).await;
    }
}

async fn status(api: &Api<LLMWorkload>) -> LLMWorkloadStatus {
    api.get(WL).await.ok().and_then(|w| w.status).unwrap_or_default()
}

/// The reasons of the Events about the workload, oldest first, with their notes.
async fn events(client: &Client) -> Vec<(String, String)> {
    use k8s_openapi::api::core::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let mut list: Vec<Event> = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(WL))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.first_timestamp.as_ref().map(|t| t.0)));
    list.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect()
}

async fn wait_event(client: &Client, reason: &str, stack: &Stack, deadline: Duration) {
    wait_until(
        &format!("a {reason} Event"),
        deadline,
        || async { events(client).await.iter().any(|(r, _)| r == reason) },
        stack,
        &["operator"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrained_policy_is_shadowed_promoted_and_rolled_back() {
    if !e2e_wanted(true) {
        return;
    }
    let t_all = Instant::now();
    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    let crds = stack.kubectl(&["get", "crd", "-o", "name"], None);
    if !crds.contains("llmpolicytrainings.llmos.dev") {
        stack.kubectl(&["apply", "-f", "-"], Some(TRAINING_CRD));
    }
    stack.kubectl(
        &["wait", "--for", "condition=established", "--timeout=60s", "crd/llmpolicytrainings.llmos.dev"],
        None,
    );
    std::fs::write(stack.path("targets.json"), "[]\n").expect("targets file");
    stack.start_prometheus();
    let prom_url = format!("http://127.0.0.1:{}", stack.prom_port);

    // The candidate: a tiny DQN trained on the scenario twin-serve replays.
    std::fs::write(stack.path("scenario.toml"), dqn_scenario()).expect("scenario file");
    let (scenario, ckpt) = (stack.path("scenario.toml"), stack.path("ckpt"));
    let (sc, ck) = (scenario.clone(), ckpt.clone());
    tokio::task::spawn_blocking(move || train_tiny_dqn(&sc, &ck)).await.expect("training task");
    let digest = llmos::rl::policy::checkpoint_digest(&ckpt).expect("the checkpoint's digest");
    let ckpt_s = ckpt.display().to_string();

    let (targets, scenario_s) = (stack.path("targets.json").display().to_string(), scenario.display().to_string());
    let twin = ["twin-serve", "--scenario", &scenario_s, "--namespace", NS, "--speed", "1"];
    let twin: Vec<&str> = twin.into_iter().chain(["--targets-file", &targets, "--ip-base", "127.34.0.0"]).collect();
    stack.spawn("twin", &twin, &[]);
    let op_addr = format!("127.0.0.1:{}", free_port());
    let op_args = ["run", "--metrics-addr", &op_addr, "--no-leader-election"];
    stack.spawn("operator", &op_args, &[("LLMOS_PROMETHEUS_URL", &prom_url)]);
    stack.kubectl(&["apply", "-f", "-"], Some(&workload_yaml(&prom_url, 2000)));
    let wl: Api<LLMWorkload> = Api::namespaced(client.clone(), NS);
    let logs = ["operator", "twin"];

    // The spec's HPA decides on complete metrics before anything is trained.
    wait_until(
        "an hpa decision with SLO attainment",
        Duration::from_secs(90),
        || async {
            let st = status(&wl).await;
            st.last_decision.is_some_and(|d| d.policy == "hpa") && st.slo_attainment.is_some()
        },
        &stack,
        &logs,
    )
    .await;

    // --- 1. training, evaluation, shadow, promotion ---
    let tr = trainings(&client);
    let volume = stack.path("training-volume").display().to_string();
    create_training(&tr, "retrain-1", &ckpt_s, &volume).await;
    training_phase(&tr, "retrain-1").await;
    wait_event(&client, "TrainingStarted", &stack, Duration::from_secs(30)).await;
    let evaluated = serde_json::json!({
        "phase": "Evaluated",
        "evaluation": {"candidate": {"digest": digest, "checkpoint": ckpt_s}, "pairedDifferences": [0.05, 0.06, 0.04], "mean": 0.05, "ci95": 0.0248, "seeds": 3,
                       "incumbent": {"policy": "hpa"}}
    });
    set_training_status(&tr, "retrain-1", evaluated).await;
    wait_event(&client, "ShadowStarted", &stack, Duration::from_secs(30)).await;
    wait_until(
        "shadow decisions in status.learning.shadow",
        Duration::from_secs(30),
        || async {
            let st = status(&wl).await;
            let l = st.learning.unwrap_or_default();
            l.phase == "Promoted" || l.shadow.is_some_and(|s| s.decisions >= 1 && s.last_decision.is_some())
        },
        &stack,
        &logs,
    )
    .await;
    let st = status(&wl).await;
    if st.learning.as_ref().is_some_and(|l| l.phase == "Shadow") {
        assert_eq!(st.last_decision.as_ref().map(|d| d.policy.as_str()), Some("hpa"), "the candidate acts in shadow");
    }
    wait_event(&client, "Promoted", &stack, Duration::from_secs(40)).await;
    // The Event is published before the status is written.
    wait_until(
        "phase Watching in status.learning",
        Duration::from_secs(10),
        || async { status(&wl).await.learning.is_some_and(|l| l.phase == "Watching") },
        &stack,
        &logs,
    )
    .await;
    let t_promoted = Instant::now();
    let st = status(&wl).await;
    let l = st.learning.clone().expect("status.learning");
    eprintln!("after the promotion: {l:?}");
    assert_eq!(l.active.as_ref().map(|a| a.digest.as_str()), Some(digest.as_str()));
    assert_eq!(l.history.len(), 1, "{l:?}");
    assert_eq!((l.history[0].action.as_str(), l.history[0].digest.as_str()), ("Promoted", digest.as_str()));
    assert!(l.history[0].why.contains("evaluation +0.0500"), "{}", l.history[0].why);
    assert!(l.consumed.iter().any(|c| c.starts_with("retrain-1@")), "{l:?}");
    assert!(l.shadow.is_none() && l.evaluation.is_none(), "what the shadow had is cleared: {l:?}");
    wait_until(
        "a dqn decision in status.lastDecision",
        Duration::from_secs(20),
        || async { status(&wl).await.last_decision.is_some_and(|d| d.policy == "dqn") },
        &stack,
        &logs,
    )
    .await;
    let st = status(&wl).await;
    let ready = st.conditions.iter().find(|c| c.type_ == "PolicyReady").expect("PolicyReady");
    assert!(ready.message.contains("promoted from") && ready.message.contains(&ckpt_s), "{}", ready.message);
    assert!(st.summary.as_ref().is_some_and(|s| s.policy.starts_with("dqn (promoted")), "{:?}", st.summary);
    let promoted_in = t_promoted.elapsed();

    let history = std::process::Command::new(env!("CARGO_BIN_EXE_llmos"))
        .args(["policy-history", "--namespace", NS, WL])
        .env("KUBECONFIG", &stack.kubeconfig)
        .output()
        .expect("llmos policy-history");
    let out = String::from_utf8_lossy(&history.stdout);
    assert!(history.status.success(), "llmos policy-history failed: {}", String::from_utf8_lossy(&history.stderr));
    eprintln!("llmos policy-history:\n{out}");
    assert!(out.contains(&digest) && out.contains("Promoted"), "{out}");

    let text =
        reqwest::get(format!("http://{op_addr}/metrics")).await.expect("operator /metrics").text().await.unwrap();
    let promoted_metric =
        format!("llmos_policy_promotions_total{{namespace=\"{NS}\",workload=\"{WL}\",action=\"Promoted\"}}");
    assert_eq!(sample_value(&text, &promoted_metric), Some(1.0), "{promoted_metric} in\n{}", tail(&text));
    let shadow_metric =
        format!("llmos_shadow_decisions_total{{namespace=\"{NS}\",workload=\"{WL}\",shielded=\"false\"}}");
    let shielded_metric =
        format!("llmos_shadow_decisions_total{{namespace=\"{NS}\",workload=\"{WL}\",shielded=\"true\"}}");
    let shadow_n =
        sample_value(&text, &shadow_metric).unwrap_or(0.0) + sample_value(&text, &shielded_metric).unwrap_or(0.0);
    assert!(shadow_n >= 3.0, "at least minShadowDecisions shadow decisions counted, got {shadow_n}");

    // --- 2. the SLO attainment falls: rolled back ---
    stack.kubectl(&["apply", "-f", "-"], Some(&workload_yaml(&prom_url, 1)));
    wait_event(&client, "RolledBack", &stack, Duration::from_secs(60)).await;
    wait_until(
        "the rollback in status.learning.history",
        Duration::from_secs(10),
        || async { status(&wl).await.learning.is_some_and(|l| l.history.len() == 2) },
        &stack,
        &logs,
    )
    .await;
    let st = status(&wl).await;
    let l = st.learning.clone().expect("status.learning");
    let actions: Vec<&str> = l.history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["Promoted", "RolledBack"], "{l:?}");
    assert!(l.active.is_none(), "the spec's policy acts again: {l:?}");
    assert_eq!(l.history[1].digest, "", "rolled back to the spec's policy");
    assert!(l.history[1].why.contains("live SLO attainment"), "{}", l.history[1].why);
    wait_until(
        "an hpa decision after the rollback",
        Duration::from_secs(20),
        || async { status(&wl).await.last_decision.is_some_and(|d| d.policy == "hpa") },
        &stack,
        &logs,
    )
    .await;

    // --- 3. a worse candidate is rejected ---
    create_training(&tr, "retrain-2", &ckpt_s, &volume).await;
    training_phase(&tr, "retrain-2").await;
    let worse = serde_json::json!({
        "phase": "Evaluated",
        "evaluation": {"candidate": {"digest": digest, "checkpoint": ckpt_s}, "pairedDifferences": [-0.05, -0.04, -0.06], "mean": -0.05, "ci95": 0.0248, "seeds": 3,
                       "incumbent": {"policy": "hpa"}}
    });
    set_training_status(&tr, "retrain-2", worse).await;
    wait_event(&client, "CandidateRejected", &stack, Duration::from_secs(30)).await;
    let evs = events(&client).await;
    let rejected = evs.iter().find(|(r, _)| r == "CandidateRejected").map(|(_, m)| m.clone()).unwrap_or_default();
    assert!(rejected.contains("score difference -0.0500"), "{rejected}");
    let reasons: Vec<&str> = evs.iter().map(|(r, _)| r.as_str()).collect();
    eprintln!("events of the workload: {reasons:?}");
    let first = |r: &str| reasons.iter().position(|x| *x == r).unwrap_or(usize::MAX);
    let story = ["TrainingStarted", "ShadowStarted", "Promoted", "RolledBack", "CandidateRejected"];
    let at: Vec<usize> = story.iter().map(|r| first(r)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]) && at[4] < usize::MAX,
        "the Events tell {story:?} in order: {reasons:?}"
    );
    let st = status(&wl).await;
    assert!(st.learning.as_ref().is_some_and(|l| l.active.is_none() && l.history.len() == 2));
    let cond = st.conditions.iter().find(|c| c.type_ == "PolicyPromotion").expect("PolicyPromotion condition");
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "Idle"), "{cond:?}");
    eprintln!(
        "e2e_promotion: promoted, dqn deciding {:.1} s later; whole test {:.0} s",
        promoted_in.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
}

/// Workload of the schedule test: no data plane (its ticks hold for want of metrics; the
/// schedule's step runs at every tick all the same), retraining every 3 s, one finished
/// round kept.
const SCHEDULED: &str = "chat-sched";

fn scheduled_yaml() -> String {
    let mut y = e2e_support::StepWorkload {
        name: SCHEDULED,
        namespace: NS,
        variant: "llama3-8b",
        cold_start_s: None,
        scale_down_cooldown_s: 4,
        prom_url: "http://127.0.0.1:1",
        policy_block: "    kind: hpa\n    intervalSeconds: 1\n".into(),
    }
    .yaml();
    y.push_str(
        "  learning:\n    retrain: {enabled: true, from: sched-first, intervalSeconds: 3, minRecordedSeconds: 0, \
         historyLimit: 1}\n",
    );
    y
}

/// The phase of training `name`, if it exists and has one.
async fn phase_of(api: &Api<DynamicObject>, name: &str) -> Option<String> {
    let t = api.get_opt(name).await.ok().flatten()?;
    t.data.pointer("/status/phase").and_then(|p| p.as_str()).map(str::to_string)
}

/// Events about `workload` with `reason`, their notes.
async fn notes(client: &Client, workload: &str, reason: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let list = api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(workload) && e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

/// `spec.learning.retrain` on the real API server, with the operator under the shipped
/// RBAC: a missing template is refused with a Warning; once the template exists and has
/// finished, round 1 is created from it (fresh seeds, owner, labels); no round starts
/// while one runs; when round 2 has finished, round 1 (historyLimit 1) is deleted with its
/// directory on the volume, and the template applied by hand is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rounds_start_when_due_and_old_ones_are_deleted() {
    if !e2e_wanted(true) {
        return;
    }
    let t_all = Instant::now();
    let (mut stack, client) = Stack::start(true).await;
    stack.install_crd();
    stack.kubectl(
        &["wait", "--for", "condition=established", "--timeout=60s", "crd/llmpolicytrainings.llmos.dev"],
        None,
    );
    e2e_support::apply_operator_rbac(&stack);
    let op_kubeconfig = e2e_support::operator_kubeconfig(&stack);
    let op_addr = format!("127.0.0.1:{}", free_port());
    let op_args = ["run", "--metrics-addr", &op_addr, "--no-leader-election"];
    stack.spawn("operator", &op_args, &[("KUBECONFIG", &op_kubeconfig)]);
    let logs = ["operator"];
    stack.kubectl(&["apply", "-f", "-"], Some(&scheduled_yaml()));
    let tr = trainings(&client);

    // No template yet: the due round is refused, once.
    wait_until(
        "a RetrainRefused Event",
        Duration::from_secs(60),
        || async { !notes(&client, SCHEDULED, "RetrainRefused").await.is_empty() },
        &stack,
        &logs,
    )
    .await;
    let refused = notes(&client, SCHEDULED, "RetrainRefused").await;
    assert!(refused[0].contains("spec.learning.retrain.from") && refused[0].contains("sched-first"), "{refused:?}");

    // The template, trained by hand; the operator mounts the volume at the same path.
    let volume = stack.path("volume").display().to_string();
    let template: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMPolicyTraining",
        "metadata": {"name": "sched-first", "namespace": NS},
        "spec": {"workload": SCHEDULED, "algorithm": "ppo", "steps": 500, "seeds": 3, "baseSeed": 7,
                 "image": "llmos.local/llmos:dev", "volume": {"hostPath": volume, "mountPath": volume}}
    }))
    .expect("template object");
    tr.create(&PostParams::default(), &template).await.expect("creating the template");
    training_phase(&tr, "sched-first").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(tr.get_opt(&format!("{SCHEDULED}-retrain-1")).await.unwrap().is_none(), "no round while the template runs");
    set_training_status(&tr, "sched-first", serde_json::json!({"phase": "Failed", "message": "by the test"})).await;

    // Round 1: a copy with fresh seeds, owned by the workload.
    let r1 = format!("{SCHEDULED}-retrain-1");
    wait_until(
        "round 1",
        Duration::from_secs(30),
        || async { tr.get_opt(&r1).await.ok().flatten().is_some() },
        &stack,
        &logs,
    )
    .await;
    let round1 = tr.get(&r1).await.expect("round 1");
    assert_eq!(round1.data.pointer("/spec/baseSeed"), Some(&serde_json::json!(10)), "7 + 1 × 3 seeds");
    assert_eq!(round1.data.pointer("/spec/algorithm"), Some(&serde_json::json!("ppo")));
    assert_eq!(round1.labels().get("llmos.dev/retrain-round").map(String::as_str), Some("1"));
    let owner = round1.metadata.owner_references.clone().unwrap_or_default();
    assert!(owner.iter().any(|o| o.kind == "LLMWorkload" && o.name == SCHEDULED), "{owner:?}");
    // The Event follows the create: wait for it rather than read it once.
    wait_until(
        "a RetrainStarted Event naming round 1 and its seeds",
        Duration::from_secs(30),
        || async {
            let started = notes(&client, SCHEDULED, "RetrainStarted").await;
            started.iter().any(|n| n.contains(&r1) && n.contains("seeds 10..12"))
        },
        &stack,
        &logs,
    )
    .await;

    // No round 2 while round 1 runs, however long past the interval.
    training_phase(&tr, &r1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r2 = format!("{SCHEDULED}-retrain-2");
    assert!(tr.get_opt(&r2).await.unwrap().is_none(), "no round 2 while round 1 runs");
    let r1_dir = std::path::Path::new(&volume).join("trainings").join(&r1).join("cand-0");
    std::fs::create_dir_all(&r1_dir).expect("round 1's directory");
    std::fs::write(r1_dir.join("weights"), b"w").expect("a file of round 1");
    set_training_status(&tr, &r1, serde_json::json!({"phase": "Failed", "message": "by the test"})).await;
    wait_until(
        "round 2",
        Duration::from_secs(30),
        || async { tr.get_opt(&r2).await.ok().flatten().is_some() },
        &stack,
        &logs,
    )
    .await;
    training_phase(&tr, &r2).await;
    set_training_status(&tr, &r2, serde_json::json!({"phase": "Failed", "message": "by the test"})).await;

    // Round 2 finished: round 1 goes (historyLimit 1), with its files; the template stays.
    // The operator deletes the object, then the files, then posts the Event: wait for the
    // Event, which comes last, not for the deletion alone.
    wait_until(
        "round 1 deleted and a RetrainPruned Event naming it",
        Duration::from_secs(30),
        || async {
            tr.get_opt(&r1).await.ok().flatten().is_none()
                && notes(&client, SCHEDULED, "RetrainPruned").await.iter().any(|n| n.contains(&r1))
        },
        &stack,
        &logs,
    )
    .await;
    assert!(!r1_dir.parent().unwrap().exists(), "round 1's directory is deleted");
    assert!(tr.get_opt("sched-first").await.unwrap().is_some(), "a training applied by hand is never deleted");
    assert!(tr.get_opt(&r2).await.unwrap().is_some(), "the newest finished round is kept");
    assert_eq!(phase_of(&tr, &r2).await.as_deref(), Some("Failed"));
    let log = stack.log("operator");
    assert!(!log.contains("forbidden"), "a request of the operator was refused:\n{}", tail(&log));
    // The ticks (one a second) read the trainings from the watch's cache: the lists are the
    // watches' own (the training controller's, the cache's, and their relists), not one per tick.
    let used = e2e_support::audited_requests(&stack);
    let lists = used.get(&("llmos.dev".into(), "llmpolicytrainings".into(), "list".into())).map_or(0, |u| u.0);
    eprintln!(
        "e2e_promotion: {lists} lists of llmpolicytrainings by the operator in {:.0} s",
        t_all.elapsed().as_secs_f64()
    );
    assert!(lists <= 8, "{lists} lists of llmpolicytrainings: the ticks list instead of reading the cache");
    eprintln!("e2e_promotion: retraining schedule, whole test {:.0} s", t_all.elapsed().as_secs_f64());
}
