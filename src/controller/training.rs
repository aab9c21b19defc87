//! The `LLMPolicyTraining` reconciler: one training becomes a train Job (one index per
//! seed) and, once every index has finished, an evaluation Job; their outcome is the
//! training's status and Events.
//!
//! - **Jobs** ([`render_train_job`], [`render_eval_job`]): `batch/v1` Jobs owned by the
//!   training (owner reference with `controller: true`, so deleting the training deletes
//!   them), labelled `llmos.dev/training`, `llmos.dev/workload` and `llmos.dev/job-kind`,
//!   named deterministically (`<training>-train`, `<training>-eval`; longer names are cut
//!   and get a hash), created only when absent: a reconcile after an operator restart
//!   finds the Jobs of the one before and reads the state back from them, never
//!   creating a second one. The train Job is an Indexed Job (`completionMode: Indexed`,
//!   `completions` = seeds, `parallelism` = the spec's, default seeds); each Pod runs
//!   `llmos train-job` (`learning::job`) with `$JOB_COMPLETION_INDEX`. API servers before
//!   1.22 have no Indexed Jobs (the field is dropped): there the train Job is one Job per
//!   index, `<training>-train-<i>`, each with its index in the environment, at most
//!   `parallelism` running at once ([`JobMode::PerIndex`]).
//! - **Status** ([`observe`]): Pending → Training (train Job created) → Evaluating (every
//!   index succeeded; the evaluation Job created) → Evaluated (its Pod's termination
//!   message holds the result) or Failed (a Job's `Failed` condition, with the failed
//!   index and the Pod's reason). A spec the operator cannot run (a bad field, a missing
//!   workload) creates no Job: the `SpecValid` condition names the field.
//! - **Events**: `TrainingStarted`, `TrainingFailed`, `Evaluated` (with the numbers),
//!   `InvalidSpec`.
//!
//! It runs in `llmos run` next to the workload controller, on the leader only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use crate::crd::training::{
    CandidateStatus, EvaluationWindow, LLMPolicyTraining, LLMPolicyTrainingSpec, LLMPolicyTrainingStatus,
    TrainingEvaluation, TrainingPhase, MAX_EVALUATION_SEEDS, MAX_SEEDS, MAX_STEPS,
};
use crate::crd::{Condition, LLMWorkload, LLMWorkloadSpec};
use crate::learning::job::{CandidateFile, COMPLETION_INDEX_ENV, WORKLOAD_SPEC_ENV};

/// The label every object the reconciler creates carries with the training's name.
pub const TRAINING_LABEL: &str = "llmos.dev/training";
/// The label naming the Job's part: `train` or `eval`.
pub const JOB_KIND_LABEL: &str = "llmos.dev/job-kind";
/// The annotation an Indexed Job's Pods carry their index in.
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The label a per-index train Job (and its Pods) carry their index in.
pub const INDEX_LABEL: &str = "llmos.dev/index";
/// The Jobs' working directory in the image (scenarios/, data/traces/, policies/).
pub const IMAGE_WORKDIR: &str = "/opt/llmos";
/// The environment variable of the Jobs' default image (`llmos run --job-image`).
pub const JOB_IMAGE_ENV: &str = "LLMOS_JOB_IMAGE";
/// The uid the llmos image runs as (the volume must be writable by it).
pub const IMAGE_UID: i64 = 65532;

/// How a train Job is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobMode {
    /// One Indexed Job (API servers from 1.22).
    Indexed,
    /// One Job per index, each with one completion (API servers without Indexed Jobs).
    PerIndex,
}

impl JobMode {
    /// The name the status gives the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            JobMode::Indexed => "Indexed",
            JobMode::PerIndex => "PerIndex",
        }
    }

    /// The mode an API server of version `major.minor` supports (`minor` may end in `+`).
    pub fn for_server(major: &str, minor: &str) -> JobMode {
        let num = |s: &str| s.trim_end_matches('+').parse::<u32>().unwrap_or(0);
        if num(major) > 1 || (num(major) == 1 && num(minor) >= 22) {
            JobMode::Indexed
        } else {
            JobMode::PerIndex
        }
    }
}

/// Settings of the reconciler.
#[derive(Clone, Debug, Default)]
pub struct TrainingConfig {
    /// The Jobs' image when the spec names none (the operator's own).
    pub job_image: Option<String>,
    /// The train Job layout; `None`: from the API server's version.
    pub mode: Option<JobMode>,
    /// The operator's identity, for Events.
    pub instance: String,
}

/// What is wrong with a training's spec: the field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecProblem {
    /// The field, from `spec.` (e.g. `spec.seeds`).
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
    /// Whether it may fix itself (a workload not created yet) rather than needing a new spec.
    pub transient: bool,
}

fn problem(field: &str, message: impl Into<String>) -> SpecProblem {
    SpecProblem { field: field.into(), message: message.into(), transient: false }
}

/// Checks the fields the schema bounds again (a spec that did not pass an API server, an
/// old server that ignores the schema) and those it cannot: the volume's choice, paths.
pub fn validate(spec: &LLMPolicyTrainingSpec, default_image: Option<&str>) -> Result<(), SpecProblem> {
    if spec.workload.is_empty() {
        return Err(problem("spec.workload", "is empty; name an LLMWorkload of this namespace"));
    }
    if !(1..=MAX_STEPS).contains(&spec.steps) {
        return Err(problem("spec.steps", format!("{} is outside 1..={MAX_STEPS}", spec.steps)));
    }
    if !(1..=MAX_SEEDS).contains(&spec.seeds) {
        return Err(problem("spec.seeds", format!("{} is outside 1..={MAX_SEEDS}", spec.seeds)));
    }
    if spec.base_seed.checked_add(u64::from(spec.seeds)).is_none() {
        return Err(problem("spec.baseSeed", "baseSeed + seeds overflows"));
    }
    if let Some(p) = spec.parallelism {
        if !(1..=MAX_SEEDS).contains(&p) {
            return Err(problem("spec.parallelism", format!("{p} is outside 1..={MAX_SEEDS}")));
        }
    }
    if !(1..=MAX_EVALUATION_SEEDS).contains(&spec.evaluation.seeds) {
        return Err(problem(
            "spec.evaluation.seeds",
            format!("{} is outside 1..={MAX_EVALUATION_SEEDS}", spec.evaluation.seeds),
        ));
    }
    if let Some(d) = spec.evaluation.max_duration_seconds {
        if !(d.is_finite() && d >= 1.0) {
            return Err(problem("spec.evaluation.maxDurationSeconds", format!("{d} is not a number ≥ 1")));
        }
    }
    if !spec.traces.recorded && spec.traces.public.is_empty() && spec.scenario.is_none() {
        return Err(problem(
            "spec.traces",
            "no traffic: set traces.recorded, name public traces or give spec.scenario",
        ));
    }
    for (i, p) in spec.traces.public.iter().enumerate() {
        if p.trim().is_empty() {
            return Err(problem(&format!("spec.traces.public[{i}]"), "is empty"));
        }
    }
    let v = &spec.volume;
    match (&v.claim_name, &v.host_path) {
        (Some(_), Some(_)) => return Err(problem("spec.volume", "give claimName or hostPath, not both")),
        (None, None) => return Err(problem("spec.volume", "give claimName (a PersistentVolumeClaim) or hostPath")),
        (None, Some(h)) if !h.starts_with('/') => {
            return Err(problem("spec.volume.hostPath", format!("{h:?} is not an absolute path")))
        }
        _ => {}
    }
    if !v.mount_path.starts_with('/') || v.mount_path.split('/').any(|c| c == "..") {
        return Err(problem("spec.volume.mountPath", format!("{:?} is not an absolute path without ..", v.mount_path)));
    }
    if v.records_path.starts_with('/') || v.records_path.split('/').any(|c| c == "..") {
        return Err(problem(
            "spec.volume.recordsPath",
            format!("{:?} must be relative to the volume and without ..", v.records_path),
        ));
    }
    for (k, q) in spec.resources.requests.iter().chain(&spec.resources.limits) {
        if q.trim().is_empty() {
            return Err(problem("spec.resources", format!("{k} has an empty quantity")));
        }
    }
    if spec.image.is_none() && default_image.is_none() {
        return Err(problem(
            "spec.image",
            "no image given and the operator has no default (llmos run --job-image or $LLMOS_JOB_IMAGE)",
        ));
    }
    Ok(())
}

/// A Job name `<training>-<suffix>` of at most 63 characters (a label value): longer
/// training names are cut and get 8 hex digits of their SHA-256, so names stay unique
/// and the same for the same training.
pub fn job_name(training: &str, suffix: &str) -> String {
    let full = format!("{training}-{suffix}");
    if full.len() <= 63 {
        return full;
    }
    use sha2::{Digest, Sha256};
    let h = format!("{:x}", Sha256::digest(training.as_bytes()));
    let keep = 63 - suffix.len() - 10;
    let mut cut = training[..keep.min(training.len())].trim_end_matches(['-', '.']).to_string();
    cut.push('-');
    cut.push_str(&h[..8]);
    format!("{cut}-{suffix}")
}

/// The training's directory in the Pods: `<mountPath>/trainings/<name>`.
pub fn training_root(spec: &LLMPolicyTrainingSpec, name: &str) -> String {
    training_dir(&spec.volume.mount_path, name)
}

/// The directory of training `name` under a volume mounted at `mount_path`.
pub fn training_dir(mount_path: &str, name: &str) -> String {
    format!("{}/trainings/{name}", mount_path.trim_end_matches('/'))
}

/// The workload's record directory in the Pods.
pub fn records_dir(spec: &LLMPolicyTrainingSpec, namespace: &str) -> String {
    let base = spec.volume.mount_path.trim_end_matches('/');
    let rel = spec.volume.records_path.trim_matches('/');
    let dir = format!("{namespace}_{}", spec.workload);
    if rel.is_empty() {
        format!("{base}/{dir}")
    } else {
        format!("{base}/{rel}/{dir}")
    }
}

/// The objects a training's Jobs are rendered from.
pub struct RenderInput<'a> {
    /// The training.
    pub training: &'a LLMPolicyTraining,
    /// Its workload's spec (given to the Pods as `$LLMOS_WORKLOAD_SPEC`).
    pub workload: &'a LLMWorkloadSpec,
    /// The image when the spec names none.
    pub default_image: Option<&'a str>,
    /// A learned checkpoint acting for the workload instead of its spec's policy.
    pub incumbent_checkpoint: Option<&'a str>,
}

fn labels(t: &LLMPolicyTraining, kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), super::desired::MANAGED_BY.to_string()),
        ("app.kubernetes.io/name".to_string(), "llmos-training".to_string()),
        (TRAINING_LABEL.to_string(), t.name_any()),
        ("llmos.dev/workload".to_string(), t.spec.workload.clone()),
        (JOB_KIND_LABEL.to_string(), kind.to_string()),
    ])
}

fn owner(t: &LLMPolicyTraining) -> OwnerReference {
    OwnerReference {
        api_version: LLMPolicyTraining::api_version(&()).into_owned(),
        kind: LLMPolicyTraining::kind(&()).into_owned(),
        name: t.name_any(),
        uid: t.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The arguments both Jobs share: the traffic, the scenario and the config.
fn traffic_args(spec: &LLMPolicyTrainingSpec, namespace: &str) -> Vec<String> {
    let mut a = Vec::new();
    if spec.traces.recorded {
        a.extend(["--records".to_string(), records_dir(spec, namespace)]);
    }
    for p in &spec.traces.public {
        a.extend(["--public".to_string(), p.clone()]);
    }
    if let Some(s) = &spec.scenario {
        a.extend(["--scenario".to_string(), s.clone()]);
    }
    if let Some(c) = &spec.config {
        a.extend(["--config".to_string(), c.clone()]);
    }
    a
}

fn quantities(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
}

/// The Pod template of one of the training's Jobs: `container` running `args`.
fn pod_template(
    inp: &RenderInput<'_>,
    kind: &str,
    container: &str,
    args: Vec<String>,
    mut env: Vec<EnvVar>,
) -> PodTemplateSpec {
    let t = inp.training;
    let spec = &t.spec;
    let mut limits = quantities(&spec.resources.limits).unwrap_or_default();
    if spec.gpu && kind == "train" {
        limits.insert(crate::crd::pool::DEFAULT_GPU_RESOURCE.into(), Quantity("1".into()));
    }
    let resources = ResourceRequirements {
        requests: quantities(&spec.resources.requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    };
    env.push(EnvVar {
        name: WORKLOAD_SPEC_ENV.into(),
        value: Some(serde_json::to_string(inp.workload).unwrap_or_default()),
        ..Default::default()
    });
    let volume = Volume {
        name: "shared".into(),
        persistent_volume_claim: spec
            .volume
            .claim_name
            .as_ref()
            .map(|c| PersistentVolumeClaimVolumeSource { claim_name: c.clone(), read_only: None }),
        host_path: spec
            .volume
            .host_path
            .as_ref()
            .map(|p| HostPathVolumeSource { path: p.clone(), type_: Some("DirectoryOrCreate".into()) }),
        ..Default::default()
    };
    let tolerations: Vec<Toleration> = spec
        .tolerations
        .iter()
        .map(|x| Toleration {
            key: Some(x.key.clone()),
            operator: x.operator.clone(),
            value: x.value.clone(),
            effect: x.effect.clone(),
            toleration_seconds: None,
        })
        .collect();
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels(t, kind)), ..Default::default() }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: container.into(),
                image: Some(spec.image.clone().or(inp.default_image.map(str::to_string)).unwrap_or_default()),
                image_pull_policy: Some("IfNotPresent".into()),
                args: Some(args),
                env: Some(env),
                working_dir: Some(IMAGE_WORKDIR.into()),
                resources: Some(resources),
                volume_mounts: Some(vec![VolumeMount {
                    name: "shared".into(),
                    mount_path: spec.volume.mount_path.clone(),
                    ..Default::default()
                }]),
                termination_message_path: Some("/dev/termination-log".into()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ..Default::default()
            }],
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            security_context: Some(PodSecurityContext { fs_group: Some(IMAGE_UID), ..Default::default() }),
            volumes: Some(vec![volume]),
            ..Default::default()
        }),
    }
}

/// Renders the train Job: with [`JobMode::Indexed`] the one Indexed Job (`index` is
/// ignored); with [`JobMode::PerIndex`] index `index`'s Job.
pub fn render_train_job(inp: &RenderInput<'_>, mode: JobMode, index: u32) -> Job {
    let t = inp.training;
    let spec = &t.spec;
    let ns = t.namespace().unwrap_or_default();
    let mut args = vec![
        "train-job".to_string(),
        "--root".into(),
        training_root(spec, &t.name_any()),
        "--base-seed".into(),
        spec.base_seed.to_string(),
        "--algorithm".into(),
        spec.algorithm.as_str().into(),
        "--steps".into(),
        spec.steps.to_string(),
        "--termination-log".into(),
        "/dev/termination-log".into(),
    ];
    if !spec.gpu {
        args.push("--cpu".into());
    }
    if let Some(b) = &spec.base_checkpoint {
        args.extend(["--resume".to_string(), b.clone()]);
    }
    args.extend(traffic_args(spec, &ns));
    let index_env = match mode {
        JobMode::Indexed => EnvVar {
            name: COMPLETION_INDEX_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"),
                    api_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        JobMode::PerIndex => {
            EnvVar { name: COMPLETION_INDEX_ENV.into(), value: Some(index.to_string()), ..Default::default() }
        }
    };
    let mut template = pod_template(inp, "train", "train", args, vec![index_env]);
    let mut meta_labels = labels(t, "train");
    let (name, job_spec) = match mode {
        JobMode::Indexed => {
            let parallelism = spec.parallelism.unwrap_or(spec.seeds).min(spec.seeds);
            (
                job_name(&t.name_any(), "train"),
                JobSpec {
                    completion_mode: Some("Indexed".into()),
                    completions: Some(spec.seeds as i32),
                    parallelism: Some(parallelism as i32),
                    // Two retries per index on average.
                    backoff_limit: Some(2 * spec.seeds as i32),
                    template: template.clone(),
                    ..Default::default()
                },
            )
        }
        JobMode::PerIndex => {
            meta_labels.insert(INDEX_LABEL.into(), index.to_string());
            if let Some(m) = template.metadata.as_mut() {
                m.labels.get_or_insert_with(BTreeMap::new).insert(INDEX_LABEL.into(), index.to_string());
            }
            (
                job_name(&t.name_any(), &format!("train-{index}")),
                JobSpec {
                    completions: Some(1),
                    parallelism: Some(1),
                    backoff_limit: Some(2),
                    template: template.clone(),
                    ..Default::default()
                },
            )
        }
    };
    let mut job_spec = job_spec;
    job_spec.template = template;
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns),
            labels: Some(meta_labels),
            owner_references: Some(vec![owner(t)]),
            ..Default::default()
        },
        spec: Some(job_spec),
        status: None,
    }
}

/// Renders the evaluation Job (one Pod).
pub fn render_eval_job(inp: &RenderInput<'_>) -> Job {
    let t = inp.training;
    let spec = &t.spec;
    let ns = t.namespace().unwrap_or_default();
    let mut args = vec![
        "evaluate-candidates".to_string(),
        "--root".into(),
        training_root(spec, &t.name_any()),
        "--candidates".into(),
        spec.seeds.to_string(),
        "--seeds".into(),
        spec.evaluation.seeds.to_string(),
        "--window".into(),
        match spec.evaluation.window {
            EvaluationWindow::Test => "test".into(),
            EvaluationWindow::All => "all".into(),
        },
        "--termination-log".into(),
        "/dev/termination-log".into(),
    ];
    if let Some(d) = spec.evaluation.max_duration_seconds {
        args.extend(["--max-duration-s".to_string(), d.to_string()]);
    }
    if let Some(c) = inp.incumbent_checkpoint {
        args.extend(["--incumbent-checkpoint".to_string(), c.to_string()]);
    }
    args.extend(traffic_args(spec, &ns));
    let template = pod_template(inp, "eval", "evaluate", args, Vec::new());
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&t.name_any(), "eval")),
            namespace: Some(ns),
            labels: Some(labels(t, "eval")),
            owner_references: Some(vec![owner(t)]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions: Some(1),
            parallelism: Some(1),
            backoff_limit: Some(1),
            template,
            ..Default::default()
        }),
        status: None,
    }
}

/// Where a Job is, from its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not finished.
    Running {
        /// Pods (indexes) succeeded.
        succeeded: u32,
    },
    /// Condition `Complete` is True.
    Complete,
    /// Condition `Failed` is True: its reason and message.
    Failed {
        /// e.g. `BackoffLimitExceeded`.
        reason: String,
        /// The Job controller's message.
        message: String,
    },
}

/// The state of `job` from its status.
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.as_ref();
    let conds = status.and_then(|s| s.conditions.as_ref());
    for c in conds.into_iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return JobState::Complete,
            "Failed" => {
                return JobState::Failed {
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                }
            }
            _ => {}
        }
    }
    JobState::Running { succeeded: status.and_then(|s| s.succeeded).unwrap_or(0).max(0) as u32 }
}

/// The train side as a whole: every index complete, one failed, or still running.
pub fn train_state(jobs: &[Job], mode: JobMode, seeds: u32) -> JobState {
    match mode {
        JobMode::Indexed => jobs.first().map(job_state).unwrap_or(JobState::Running { succeeded: 0 }),
        JobMode::PerIndex => {
            let mut done = 0;
            for j in jobs {
                match job_state(j) {
                    JobState::Complete => done += 1,
                    f @ JobState::Failed { .. } => return f,
                    JobState::Running { .. } => {}
                }
            }
            if done >= seeds {
                JobState::Complete
            } else {
                JobState::Running { succeeded: done }
            }
        }
    }
}

/// The index a train Pod ran (its annotation, else the per-index label).
pub fn pod_index(p: &Pod) -> Option<u32> {
    let m = &p.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_ANNOTATION))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(INDEX_LABEL)))
        .and_then(|v| v.parse().ok())
}

/// The termination state of a Pod's first container: (reason, exit code, message).
pub fn terminated(p: &Pod) -> Option<(String, i32, String)> {
    let t = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()?;
    Some((t.reason.clone().unwrap_or_default(), t.exit_code, t.message.clone().unwrap_or_default()))
}

/// Why the train side failed, in words: the Job's reason, and each failed Pod's index,
/// reason and exit code (and the last line of its message).
pub fn failure_message(job_reason: &str, job_message: &str, pods: &[Pod]) -> String {
    let mut parts = vec![format!("{job_reason}: {job_message}").trim_matches([' ', ':']).to_string()];
    for p in pods {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed") {
            continue;
        }
        let idx = pod_index(p).map(|i| format!("index {i}")).unwrap_or_else(|| "a Pod".into());
        match terminated(p) {
            Some((reason, code, msg)) => {
                let last = msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                parts.push(format!("{idx} ({}) {reason} exit {code}: {last}", p.name_any()));
            }
            None => {
                let r = p.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_else(|| "Failed".into());
                parts.push(format!("{idx} ({}) {r}", p.name_any()));
            }
        }
    }
    let mut m = parts.join("; ");
    if m.len() > 1500 {
        let mut cut = 1500;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// The candidates the succeeded train Pods reported in their termination messages
/// (`candidate.json` of `llmos train-job`), by index; the checkpoint is where the Pods
/// wrote it.
pub fn candidates_from_pods(pods: &[Pod], root: &str) -> Vec<CandidateStatus> {
    let mut out: BTreeMap<u32, CandidateStatus> = BTreeMap::new();
    for p in pods {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded") {
            continue;
        }
        let Some((_, 0, msg)) = terminated(p) else { continue };
        let Ok(c) = serde_json::from_str::<CandidateFile>(msg.trim()) else { continue };
        out.insert(
            c.index,
            CandidateStatus {
                index: c.index,
                seed: c.seed,
                checkpoint: crate::learning::job::candidate_dir(std::path::Path::new(root), c.index)
                    .display()
                    .to_string(),
                digest: c.digest,
                mean_score: None,
            },
        );
    }
    out.into_values().collect()
}

/// The evaluation an evaluation Pod left in its termination message.
pub fn evaluation_from_pods(pods: &[Pod]) -> Option<TrainingEvaluation> {
    pods.iter().filter_map(terminated).find_map(|(_, code, msg)| {
        if code != 0 {
            return None;
        }
        serde_json::from_str::<TrainingEvaluation>(msg.trim()).ok()
    })
}

/// Whether the evaluation's numbers hold together: as many differences as seeds, all
/// finite, and the mean their mean.
pub fn evaluation_consistent(e: &TrainingEvaluation) -> Result<(), String> {
    if e.paired_differences.len() != e.seeds as usize || e.seeds == 0 {
        return Err(format!("{} paired differences for {} seeds", e.paired_differences.len(), e.seeds));
    }
    if e.paired_differences.iter().any(|d| !d.is_finite()) {
        return Err("a paired difference is not finite".into());
    }
    let est = crate::eval::stats::Estimate::of(&e.paired_differences);
    if (est.mean - e.mean).abs() > 1e-9 * est.mean.abs().max(1.0) {
        return Err(format!("mean {} is not the mean of the differences ({})", e.mean, est.mean));
    }
    if e.candidate.digest.is_empty() || e.candidate.checkpoint.is_empty() {
        return Err("the candidate has no digest or checkpoint".into());
    }
    Ok(())
}

/// What the cluster shows of a training: its Jobs and their Pods.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The train Job(s) that exist.
    pub train_jobs: Vec<Job>,
    /// The train Jobs' Pods.
    pub train_pods: Vec<Pod>,
    /// The evaluation Job, if it exists.
    pub eval_job: Option<Job>,
    /// Its Pods.
    pub eval_pods: Vec<Pod>,
}

/// What the reconcile should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Create the train Job(s) of these indexes (all of them for an Indexed Job: `[0]`).
    CreateTrain(Vec<u32>),
    /// Create the evaluation Job.
    CreateEval,
    /// Wait for the Jobs.
    Wait,
    /// Nothing more to do.
    Done,
}

/// The status a training has given what the cluster shows, and what to do next. Pure:
/// the reconcile's decisions, unit-tested without an API server. `now` is RFC 3339.
pub fn observe(t: &LLMPolicyTraining, mode: JobMode, obs: &Observed, now: &str) -> (LLMPolicyTrainingStatus, Next) {
    let spec = &t.spec;
    let prev = t.status.clone().unwrap_or_default();
    let mut s = LLMPolicyTrainingStatus {
        observed_generation: t.metadata.generation,
        phase: prev.phase,
        conditions: prev.conditions.clone(),
        train_job: Some(job_name(&t.name_any(), "train")),
        job_mode: Some(mode.as_str().into()),
        eval_job: prev.eval_job.clone(),
        started_at: prev.started_at.clone(),
        finished_at: prev.finished_at.clone(),
        succeeded_indexes: prev.succeeded_indexes,
        candidates: prev.candidates.clone(),
        evaluation: prev.evaluation.clone(),
        message: prev.message.clone(),
    };
    // A spec that could not run failed before any Job; a fixed spec starts now.
    let spec_failed = prev.conditions.iter().any(|c| c.type_ == "SpecValid" && c.status == "False");
    set_condition(&mut s.conditions, "SpecValid", "True", "Valid", "the spec can run", now, t.metadata.generation);
    // A final phase reached through the Jobs stays: they may be gone (deleted by hand, TTL).
    if prev.phase.is_final() && !spec_failed {
        return (s, Next::Done);
    }
    let root = training_root(spec, &t.name_any());
    let reported = candidates_from_pods(&obs.train_pods, &root);
    if !reported.is_empty() {
        s.candidates = reported;
    }
    if obs.train_jobs.is_empty() {
        s.phase = TrainingPhase::Pending;
        s.message = Some("creating the train Job".into());
        let all = match mode {
            JobMode::Indexed => vec![0],
            JobMode::PerIndex => (0..spec.parallelism.unwrap_or(spec.seeds).min(spec.seeds)).collect(),
        };
        return (s, Next::CreateTrain(all));
    }
    if s.started_at.is_none() {
        s.started_at = obs
            .train_jobs
            .iter()
            .filter_map(|j| j.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.to_string())
            .min()
            .or_else(|| Some(now.to_string()));
    }
    match train_state(&obs.train_jobs, mode, spec.seeds) {
        JobState::Failed { reason, message } => {
            let m = failure_message(&reason, &message, &obs.train_pods);
            s.phase = TrainingPhase::Failed;
            s.message = Some(format!("the train Job failed: {m}"));
            s.finished_at.get_or_insert_with(|| now.to_string());
            set_condition(&mut s.conditions, "Trained", "False", "TrainJobFailed", &m, now, t.metadata.generation);
            return (s, Next::Done);
        }
        JobState::Running { succeeded } => {
            s.phase = TrainingPhase::Training;
            s.succeeded_indexes = succeeded;
            s.message = Some(format!("training: {succeeded} of {} indexes done", spec.seeds));
            set_condition(
                &mut s.conditions,
                "Trained",
                "False",
                "Training",
                &format!("{succeeded} of {} indexes done", spec.seeds),
                now,
                t.metadata.generation,
            );
            let more = if mode == JobMode::PerIndex { more_indexes(spec, obs) } else { Vec::new() };
            return (s, if more.is_empty() { Next::Wait } else { Next::CreateTrain(more) });
        }
        JobState::Complete => {
            s.succeeded_indexes = spec.seeds;
            set_condition(
                &mut s.conditions,
                "Trained",
                "True",
                "TrainJobComplete",
                &format!("{} indexes done", spec.seeds),
                now,
                t.metadata.generation,
            );
        }
    }
    observe_eval(t, obs, s, now)
}

/// The evaluation's part of [`observe`], once every index has trained.
fn observe_eval(
    t: &LLMPolicyTraining,
    obs: &Observed,
    mut s: LLMPolicyTrainingStatus,
    now: &str,
) -> (LLMPolicyTrainingStatus, Next) {
    let eval_name = job_name(&t.name_any(), "eval");
    s.eval_job = Some(eval_name);
    let Some(eval) = &obs.eval_job else {
        s.phase = TrainingPhase::Evaluating;
        s.message = Some("every index trained; creating the evaluation Job".into());
        return (s, Next::CreateEval);
    };
    match job_state(eval) {
        JobState::Running { .. } => {
            s.phase = TrainingPhase::Evaluating;
            s.message = Some("evaluating the candidates against the incumbent".into());
            (s, Next::Wait)
        }
        JobState::Failed { reason, message } => {
            let m = failure_message(&reason, &message, &obs.eval_pods);
            s.phase = TrainingPhase::Failed;
            s.message = Some(format!("the evaluation Job failed: {m}"));
            s.finished_at.get_or_insert_with(|| now.to_string());
            set_condition(&mut s.conditions, "Evaluated", "False", "EvalJobFailed", &m, now, t.metadata.generation);
            (s, Next::Done)
        }
        JobState::Complete => match evaluation_from_pods(&obs.eval_pods) {
            Some(e) => match evaluation_consistent(&e) {
                Ok(()) => {
                    let m = format!(
                        "best candidate {} (sha256 {}): score difference {:+.4} ± {:.4} (95 %, {} seeds) against {}",
                        e.candidate.checkpoint,
                        &e.candidate.digest[..e.candidate.digest.len().min(12)],
                        e.mean,
                        e.ci95,
                        e.seeds,
                        e.incumbent.policy
                    );
                    if !e.candidates.is_empty() {
                        s.candidates = e.candidates.clone();
                    }
                    s.phase = TrainingPhase::Evaluated;
                    s.message = Some(m.clone());
                    s.finished_at.get_or_insert_with(|| now.to_string());
                    s.evaluation = Some(e);
                    set_condition(&mut s.conditions, "Evaluated", "True", "Evaluated", &m, now, t.metadata.generation);
                    (s, Next::Done)
                }
                Err(why) => {
                    s.phase = TrainingPhase::Failed;
                    s.message = Some(format!("the evaluation's result is inconsistent: {why}"));
                    s.finished_at.get_or_insert_with(|| now.to_string());
                    set_condition(
                        &mut s.conditions,
                        "Evaluated",
                        "False",
                        "BadResult",
                        &why,
                        now,
                        t.metadata.generation,
                    );
                    (s, Next::Done)
                }
            },
            None if obs.eval_pods.is_empty() => {
                // The Pod is gone (garbage-collected) before its message was read.
                s.phase = TrainingPhase::Failed;
                let m = "the evaluation Job completed but its Pod, with the result, is gone; read evaluation.json on the volume";
                s.message = Some(m.into());
                s.finished_at.get_or_insert_with(|| now.to_string());
                set_condition(&mut s.conditions, "Evaluated", "False", "ResultLost", m, now, t.metadata.generation);
                (s, Next::Done)
            }
            None => {
                s.phase = TrainingPhase::Evaluating;
                s.message = Some("the evaluation Job completed; waiting for its Pod's termination message".into());
                (s, Next::Wait)
            }
        },
    }
}

/// Per-index Jobs: the indexes to start now, within `parallelism` running at once.
fn more_indexes(spec: &crate::crd::training::LLMPolicyTrainingSpec, obs: &Observed) -> Vec<u32> {
    let parallelism = spec.parallelism.unwrap_or(spec.seeds).min(spec.seeds);
    let running = obs.train_jobs.iter().filter(|j| matches!(job_state(j), JobState::Running { .. })).count();
    let have: Vec<u32> =
        obs.train_jobs.iter().filter_map(|j| j.labels().get(INDEX_LABEL).and_then(|v| v.parse().ok())).collect();
    let room = (parallelism as usize).saturating_sub(running);
    (0..spec.seeds).filter(|i| !have.contains(i)).take(room).collect()
}

/// Sets condition `type_` (its transition time changes only when its status does).
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
    generation: Option<i64>,
) {
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now.into(),
        observed_generation: generation,
    };
    match conds.iter_mut().find(|x| x.type_ == type_) {
        Some(x) => {
            let time = if x.status == status { x.last_transition_time.clone() } else { now.to_string() };
            *x = Condition { last_transition_time: time, ..c };
        }
        None => conds.push(c),
    }
}

/// The reconciler's shared state.
pub struct TrainingContext {
    client: Client,
    recorder: Recorder,
    config: TrainingConfig,
    mode: tokio::sync::OnceCell<JobMode>,
}

impl TrainingContext {
    /// A context for `client` with `config`.
    pub fn new(client: Client, config: TrainingConfig) -> TrainingContext {
        let reporter = Reporter { controller: "llmos".into(), instance: Some(config.instance.clone()) };
        TrainingContext { recorder: Recorder::new(client.clone(), reporter), client, config, mode: Default::default() }
    }

    async fn mode(&self) -> JobMode {
        if let Some(m) = self.config.mode {
            return m;
        }
        *self
            .mode
            .get_or_init(|| async {
                match self.client.apiserver_version().await {
                    Ok(v) => {
                        let m = JobMode::for_server(&v.major, &v.minor);
                        tracing::info!(major = %v.major, minor = %v.minor, mode = m.as_str(), "training Jobs layout");
                        m
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the API server's version; one Job per index");
                        JobMode::PerIndex
                    }
                }
            })
            .await
    }
}

/// Errors of a training reconcile (retried with a back-off).
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// An API request failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was requested.
        what: String,
        /// The error.
        source: kube::Error,
    },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> TrainingError {
    let what = what.into();
    move |source| TrainingError::Kube { what, source }
}

async fn publish(ctx: &TrainingContext, t: &LLMPolicyTraining, type_: EventType, reason: &str, note: String) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let ev = KubeEvent { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &t.object_ref(&())).await {
        tracing::warn!(training = %t.name_any(), reason, error = %e, "cannot publish event");
    }
}

/// The learned checkpoint acting for the workload instead of its spec's policy, from
/// its status (`status.learning.active.checkpoint`, written by the promotion logic), read
/// from the raw object so that this does not depend on that status's Rust type.
fn active_checkpoint(raw: &serde_json::Value) -> Option<String> {
    raw.pointer("/status/learning/active/checkpoint").and_then(|v| v.as_str()).map(str::to_string)
}

async fn create_if_absent(api: &Api<Job>, job: &Job) -> Result<bool, TrainingError> {
    let name = job.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(kube_err(format!("creating Job {name}"))(e)),
    }
}

/// Writes `status`, computed from `t` as read, on the condition that nobody wrote the
/// training since (`metadata.resourceVersion` in the patch): a reconcile that started from
/// a cached object older than the last write (the controller's own or anyone's) must not
/// put an older phase back. On a conflict nothing is written (`false`: the Events of the
/// transition wait for the reconcile that writes it); the newer object's watch event
/// starts a reconcile from it.
async fn write_status(
    ctx: &TrainingContext,
    t: &LLMPolicyTraining,
    status: &LLMPolicyTrainingStatus,
) -> Result<bool, TrainingError> {
    if t.status.as_ref() == Some(status) {
        return Ok(true);
    }
    let api: Api<LLMPolicyTraining> = Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let mut patch = serde_json::json!({ "status": status });
    if let Some(rv) = t.resource_version() {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    match api.patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(training = %t.name_any(), "status written by someone else since it was read; reconciling from the newer object");
            Ok(false)
        }
        r => r.map(|_| true).map_err(kube_err(format!("writing the status of training {}", t.name_any()))),
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The training's spec checked, then the workload it names read: its spec and the learned
/// checkpoint acting for it (the incumbent), or the problem (outer error: the API failed).
async fn check_spec(
    t: &LLMPolicyTraining,
    ctx: &TrainingContext,
    ns: &str,
) -> Result<Result<(LLMWorkloadSpec, Option<String>), SpecProblem>, TrainingError> {
    let default_image = ctx.config.job_image.as_deref();
    let raw_workload = {
        let ar = kube::api::ApiResource::erase::<LLMWorkload>(&());
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
        api.get_opt(&t.spec.workload).await.map_err(kube_err(format!("reading LLMWorkload {}", t.spec.workload)))?
    };
    Ok(validate(&t.spec, default_image).and_then(|()| {
        let raw = raw_workload.as_ref().ok_or_else(|| SpecProblem {
            field: "spec.workload".into(),
            message: format!("no LLMWorkload named `{}` in namespace {ns}", t.spec.workload),
            transient: true,
        })?;
        let spec: LLMWorkloadSpec =
            serde_json::from_value(raw.data.get("spec").cloned().unwrap_or_default()).map_err(|e| {
                problem("spec.workload", format!("LLMWorkload `{}` has an unreadable spec: {e}", t.spec.workload))
            })?;
        Ok((spec, serde_json::to_value(raw).ok().and_then(|v| active_checkpoint(&v))))
    }))
}

/// Never a Job for a spec that cannot run: the status and a Warning say which field.
async fn refuse_spec(
    t: &LLMPolicyTraining,
    ctx: &TrainingContext,
    prev: &LLMPolicyTrainingStatus,
    p: &SpecProblem,
    now: &str,
) -> Result<Action, TrainingError> {
    let mut s = prev.clone();
    s.observed_generation = t.metadata.generation;
    let before = s.message.clone();
    s.message = Some(p.to_string());
    s.phase = if p.transient { TrainingPhase::Pending } else { TrainingPhase::Failed };
    set_condition(&mut s.conditions, "SpecValid", "False", "InvalidSpec", &p.to_string(), now, t.metadata.generation);
    let written = write_status(ctx, t, &s).await?;
    if written && before.as_deref() != Some(p.to_string().as_str()) {
        publish(ctx, t, EventType::Warning, "InvalidSpec", p.to_string()).await;
    }
    Ok(if p.transient { Action::requeue(Duration::from_secs(30)) } else { Action::await_change() })
}

/// The Jobs and Pods the training owns, as the API server has them now.
async fn read_observed(t: &LLMPolicyTraining, ctx: &TrainingContext, ns: &str) -> Result<Observed, TrainingError> {
    let name = t.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let sel = |kind: &str| ListParams::default().labels(&format!("{TRAINING_LABEL}={name},{JOB_KIND_LABEL}={kind}"));
    let owned = |j: &Job| j.owner_references().iter().any(|o| Some(&o.uid) == t.metadata.uid.as_ref());
    let train_jobs: Vec<Job> = jobs
        .list(&sel("train"))
        .await
        .map_err(kube_err("listing train Jobs"))?
        .items
        .into_iter()
        .filter(owned)
        .collect();
    let eval_job = jobs
        .list(&sel("eval"))
        .await
        .map_err(kube_err("listing evaluation Jobs"))?
        .items
        .into_iter()
        .find(|j| owned(j));
    let train_pods = pods.list(&sel("train")).await.map_err(kube_err("listing train Pods"))?.items;
    let eval_pods = match eval_job {
        Some(_) => pods.list(&sel("eval")).await.map_err(kube_err("listing evaluation Pods"))?.items,
        None => Vec::new(),
    };
    Ok(Observed { train_jobs, train_pods, eval_job, eval_pods })
}

/// Reconciles one training (see the module docs).
pub async fn reconcile(t: Arc<LLMPolicyTraining>, ctx: Arc<TrainingContext>) -> Result<Action, TrainingError> {
    let ns = t.namespace().unwrap_or_default();
    let now = now();
    if t.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let prev = t.status.clone().unwrap_or_default();
    if prev.phase.is_final() && prev.observed_generation == t.metadata.generation {
        return Ok(Action::await_change());
    }
    let default_image = ctx.config.job_image.as_deref();
    let (workload, incumbent) = match check_spec(&t, &ctx, &ns).await? {
        Ok(x) => x,
        Err(p) => return refuse_spec(&t, &ctx, &prev, &p, &now).await,
    };
    let mode = ctx.mode().await;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let obs = read_observed(&t, &ctx, &ns).await?;
    let (mut status, next) = observe(&t, mode, &obs, &now);
    let inp =
        RenderInput { training: &t, workload: &workload, default_image, incumbent_checkpoint: incumbent.as_deref() };
    match &next {
        Next::CreateTrain(indexes) => {
            let mut created = 0;
            for &i in indexes {
                created += usize::from(create_if_absent(&jobs, &render_train_job(&inp, mode, i)).await?);
            }
            status.phase = TrainingPhase::Training;
            status.started_at.get_or_insert_with(|| now.clone());
            status.message = Some(format!("training: 0 of {} indexes done", t.spec.seeds));
            if created > 0 && prev.started_at.is_none() {
                publish(
                    &ctx,
                    &t,
                    EventType::Normal,
                    "TrainingStarted",
                    format!(
                        "{} {} steps × {} seeds (from seed {}, {} at once) for LLMWorkload {}: Job {} ({})",
                        t.spec.algorithm.as_str(),
                        t.spec.steps,
                        t.spec.seeds,
                        t.spec.base_seed,
                        t.spec.parallelism.unwrap_or(t.spec.seeds).min(t.spec.seeds),
                        t.spec.workload,
                        status.train_job.clone().unwrap_or_default(),
                        mode.as_str()
                    ),
                )
                .await;
            }
        }
        Next::CreateEval => {
            create_if_absent(&jobs, &render_eval_job(&inp)).await?;
        }
        Next::Wait | Next::Done => {}
    }
    let written = write_status(&ctx, &t, &status).await?;
    if written && status.phase != prev.phase {
        match status.phase {
            TrainingPhase::Failed => {
                publish(&ctx, &t, EventType::Warning, "TrainingFailed", status.message.clone().unwrap_or_default())
                    .await
            }
            TrainingPhase::Evaluated => {
                publish(&ctx, &t, EventType::Normal, "Evaluated", status.message.clone().unwrap_or_default()).await
            }
            _ => {}
        }
    }
    Ok(match next {
        Next::Done => Action::await_change(),
        // The Job and Pod watches wake the reconcile; this is a safety net.
        _ => Action::requeue(Duration::from_secs(60)),
    })
}

fn error_policy(t: Arc<LLMPolicyTraining>, e: &TrainingError, _ctx: Arc<TrainingContext>) -> Action {
    tracing::warn!(training = %t.name_any(), error = %e, "training reconcile failed; retrying in 10 s");
    Action::requeue(Duration::from_secs(10))
}

/// Waits until the `LLMPolicyTraining` CRD is served (`true`) or `shutdown` resolves
/// (`false`). An operator upgraded without its new CRD keeps running its workloads: it
/// says once, as a warning, that trainings are not reconciled and how to fix it, and
/// checks again every minute, instead of a watch failing in a loop.
async fn training_crd_installed(
    trainings: &Api<LLMPolicyTraining>,
    mut shutdown: impl std::future::Future<Output = ()> + Unpin,
) -> bool {
    let mut warned = false;
    loop {
        match trainings.list_metadata(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if !warned {
                    tracing::warn!(
                        "the LLMPolicyTraining CRD (llmpolicytrainings.llmos.dev) is not installed: trainings are \
                         not reconciled until it is (kubectl apply -f crds/llmpolicytrainings.llmos.dev.yaml)"
                    );
                    warned = true;
                }
            }
            _ => {
                if warned {
                    tracing::info!("the LLMPolicyTraining CRD is installed now; reconciling trainings");
                }
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = &mut shutdown => return false,
        }
    }
}

/// Runs the training reconciler until `shutdown` resolves: LLMPolicyTrainings (of
/// `namespace`, or all), woken by their Jobs and Pods.
pub async fn run_training_controller(
    ctx: Arc<TrainingContext>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    use kube::runtime::{watcher, Controller};
    let client = ctx.client.clone();
    let (trainings, jobs, pods): (Api<LLMPolicyTraining>, Api<Job>, Api<Pod>) = match &namespace {
        Some(ns) => {
            (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns), Api::namespaced(client, ns))
        }
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client)),
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    if !training_crd_installed(&trainings, shutdown.clone()).await {
        return;
    }
    let ours = watcher::Config::default().labels(TRAINING_LABEL);
    Controller::new(trainings, watcher::Config::default())
        .owns(jobs, ours.clone())
        .watches(pods, ours, |p: Pod| {
            let ns = p.namespace();
            p.labels().get(TRAINING_LABEL).map(|n| {
                kube::runtime::reflector::ObjectRef::<LLMPolicyTraining>::new(n).within(ns.as_deref().unwrap_or(""))
            })
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(training = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "training reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::training::LLMPolicyTrainingSpec;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn training(extra: serde_json::Value) -> LLMPolicyTraining {
        let mut spec = serde_json::json!({
            "workload": "code", "algorithm": "ppo", "steps": 500, "seeds": 3,
            "volume": {"hostPath": "/srv/llmos"}
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            spec[k] = v;
        }
        let spec: LLMPolicyTrainingSpec = serde_json::from_value(spec).expect("spec");
        let mut t = LLMPolicyTraining::new("retrain-1", spec);
        t.metadata.namespace = Some("prod".into());
        t.metadata.uid = Some("uid-1".into());
        t.metadata.generation = Some(1);
        t
    }

    fn workload() -> LLMWorkloadSpec {
        crate::twin::Scenario::from_toml_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/azure-code-llama3-8b-a100.toml"))
                .expect("scenario"),
            "test",
        )
        .map(|s| s.spec)
        .unwrap_or_else(|_| serde_json::from_value(serde_json::json!({"variants": [
            {"name": "v", "model": "llama-3-8b", "image": "i"}], "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 3.0}]}))
            .expect("spec"))
    }

    fn render(t: &LLMPolicyTraining, mode: JobMode, index: u32) -> Job {
        let w = workload();
        render_train_job(
            &RenderInput {
                training: t,
                workload: &w,
                default_image: Some("llmos.local/llmos:dev"),
                incumbent_checkpoint: None,
            },
            mode,
            index,
        )
    }

    fn env<'a>(j: &'a Job, name: &str) -> Option<&'a EnvVar> {
        j.spec.as_ref()?.template.spec.as_ref()?.containers[0].env.as_ref()?.iter().find(|e| e.name == name)
    }

    fn args(j: &Job) -> Vec<String> {
        j.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
    }

    #[test]
    fn the_train_job_is_indexed_with_one_completion_per_seed() {
        let t = training(serde_json::json!({}));
        let j = render(&t, JobMode::Indexed, 0);
        let spec = j.spec.as_ref().unwrap();
        assert_eq!(j.metadata.name.as_deref(), Some("retrain-1-train"));
        assert_eq!(j.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(3));
        assert_eq!(spec.parallelism, Some(3), "parallelism defaults to seeds");
        let o = &j.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str(), o.controller),
            ("LLMPolicyTraining", "retrain-1", "uid-1", Some(true))
        );
        let labels = j.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get(TRAINING_LABEL).map(String::as_str), Some("retrain-1"));
        assert_eq!(labels.get(JOB_KIND_LABEL).map(String::as_str), Some("train"));
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(pod_labels.get(TRAINING_LABEL).map(String::as_str), Some("retrain-1"));
        let idx = env(&j, COMPLETION_INDEX_ENV).unwrap();
        assert_eq!(
            idx.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
            format!("metadata.annotations['{INDEX_ANNOTATION}']")
        );
        let w: LLMWorkloadSpec =
            serde_json::from_str(env(&j, WORKLOAD_SPEC_ENV).unwrap().value.as_ref().unwrap()).unwrap();
        assert_eq!(w, workload());
        let a = args(&j);
        assert_eq!(a[0], "train-job");
        let after = |flag: &str| a.iter().position(|x| x == flag).map(|i| a[i + 1].clone());
        assert_eq!(after("--root").as_deref(), Some("/var/lib/llmos/trainings/retrain-1"));
        assert_eq!(after("--records").as_deref(), Some("/var/lib/llmos/records/prod_code"));
        assert_eq!(after("--steps").as_deref(), Some("500"));
        assert_eq!(after("--algorithm").as_deref(), Some("ppo"));
        assert!(a.contains(&"--cpu".to_string()));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let vol = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(vol.host_path.as_ref().unwrap().path, "/srv/llmos");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("llmos.local/llmos:dev"), "the operator's image by default");
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/var/lib/llmos");
        assert_eq!(c.termination_message_path.as_deref(), Some("/dev/termination-log"));
        assert!(c.resources.as_ref().unwrap().limits.is_none(), "no GPU unless asked");
    }

    #[test]
    fn gpu_parallelism_claim_selector_and_image_reach_the_pods() {
        let t = training(serde_json::json!({
            "gpu": true, "parallelism": 8, "image": "registry/llmos:1",
            "volume": {"claimName": "llmos-data", "mountPath": "/data"},
            "nodeSelector": {"pool": "train"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "resources": {"requests": {"cpu": "2"}}, "baseCheckpoint": "/data/ckpt"
        }));
        let j = render(&t, JobMode::Indexed, 0);
        let spec = j.spec.as_ref().unwrap();
        assert_eq!(spec.parallelism, Some(3), "never more than the completions");
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry/llmos:1"));
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap().get("nvidia.com/gpu"), Some(&Quantity("1".into())));
        assert_eq!(r.requests.as_ref().unwrap().get("cpu"), Some(&Quantity("2".into())));
        assert_eq!(pod.volumes.as_ref().unwrap()[0].persistent_volume_claim.as_ref().unwrap().claim_name, "llmos-data");
        assert_eq!(pod.node_selector.as_ref().unwrap().get("pool").map(String::as_str), Some("train"));
        assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("gpu"));
        let a = args(&j);
        assert!(!a.contains(&"--cpu".to_string()));
        assert!(a.windows(2).any(|w| w[0] == "--resume" && w[1] == "/data/ckpt"));
        assert!(a.windows(2).any(|w| w[0] == "--root" && w[1] == "/data/trainings/retrain-1"));
        let t2 = training(serde_json::json!({"parallelism": 2}));
        assert_eq!(render(&t2, JobMode::Indexed, 0).spec.unwrap().parallelism, Some(2));
    }

    #[test]
    fn per_index_jobs_carry_their_index() {
        let t = training(serde_json::json!({}));
        let j = render(&t, JobMode::PerIndex, 2);
        assert_eq!(j.metadata.name.as_deref(), Some("retrain-1-train-2"));
        let spec = j.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.completion_mode.as_deref()), (Some(1), None));
        assert_eq!(env(&j, COMPLETION_INDEX_ENV).unwrap().value.as_deref(), Some("2"));
        assert_eq!(j.metadata.labels.as_ref().unwrap().get(INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(JobMode::for_server("1", "20"), JobMode::PerIndex);
        assert_eq!(JobMode::for_server("1", "21+"), JobMode::PerIndex);
        assert_eq!(JobMode::for_server("1", "22"), JobMode::Indexed);
        assert_eq!(JobMode::for_server("1", "33+"), JobMode::Indexed);
    }

    #[test]
    fn the_eval_job_names_candidates_seeds_and_the_incumbent() {
        let t = training(
            serde_json::json!({"evaluation": {"seeds": 5, "window": "all"}, "traces": {"recorded": true, "public": ["data/traces/AzureLLMInferenceTrace_conv.csv"]}}),
        );
        let w = workload();
        let j = render_eval_job(&RenderInput {
            training: &t,
            workload: &w,
            default_image: Some("img"),
            incumbent_checkpoint: Some("/var/lib/llmos/trainings/old/candidate-1"),
        });
        assert_eq!(j.metadata.name.as_deref(), Some("retrain-1-eval"));
        assert_eq!(j.spec.as_ref().unwrap().completions, Some(1));
        let a = args(&j);
        assert_eq!(a[0], "evaluate-candidates");
        for (flag, v) in [
            ("--candidates", "3"),
            ("--seeds", "5"),
            ("--window", "all"),
            ("--incumbent-checkpoint", "/var/lib/llmos/trainings/old/candidate-1"),
            ("--public", "data/traces/AzureLLMInferenceTrace_conv.csv"),
            ("--termination-log", "/dev/termination-log"),
        ] {
            assert!(a.windows(2).any(|w| w[0] == flag && w[1] == v), "{flag} {v} missing from {a:?}");
        }
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_stable() {
        let long = "a".repeat(80);
        let n = job_name(&long, "train-12");
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-train-12"));
        assert_eq!(n, job_name(&long, "train-12"));
        assert_ne!(job_name(&format!("{long}b"), "train"), job_name(&format!("{long}c"), "train"));
    }

    #[test]
    fn bad_specs_name_their_field() {
        let cases = [
            (serde_json::json!({"seeds": 0}), "spec.seeds"),
            (serde_json::json!({"seeds": 65}), "spec.seeds"),
            (serde_json::json!({"steps": 0}), "spec.steps"),
            (serde_json::json!({"parallelism": 0}), "spec.parallelism"),
            (serde_json::json!({"evaluation": {"seeds": 0}}), "spec.evaluation.seeds"),
            (serde_json::json!({"volume": {}}), "spec.volume"),
            (serde_json::json!({"volume": {"hostPath": "/a", "claimName": "c"}}), "spec.volume"),
            (serde_json::json!({"volume": {"hostPath": "rel"}}), "spec.volume.hostPath"),
            (serde_json::json!({"volume": {"hostPath": "/a", "mountPath": "x"}}), "spec.volume.mountPath"),
            (serde_json::json!({"volume": {"hostPath": "/a", "recordsPath": "../x"}}), "spec.volume.recordsPath"),
            (serde_json::json!({"traces": {"recorded": false}}), "spec.traces"),
            (serde_json::json!({"workload": ""}), "spec.workload"),
        ];
        for (extra, field) in cases {
            let t = training(extra.clone());
            let e = validate(&t.spec, Some("img")).expect_err(&format!("{extra} must be refused"));
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(e.to_string().starts_with(field));
        }
        let t = training(serde_json::json!({}));
        assert_eq!(validate(&t.spec, None).unwrap_err().field, "spec.image");
        validate(&t.spec, Some("img")).expect("a good spec");
    }

    fn job(name: &str, cond: Option<(&str, &str)>, succeeded: i32) -> Job {
        Job {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: None,
            status: Some(JobStatus {
                succeeded: Some(succeeded),
                conditions: cond.map(|(t, r)| {
                    vec![JobCondition {
                        type_: t.into(),
                        status: "True".into(),
                        reason: Some(r.into()),
                        message: Some("Job has reached the specified backoff limit".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn pod(phase: &str, index: u32, code: i32, reason: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{index}"), "annotations": {INDEX_ANNOTATION: index.to_string()}},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "train", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}]}
        }))
        .expect("pod")
    }

    #[test]
    fn status_follows_the_jobs() {
        let t = training(serde_json::json!({}));
        let now = "2026-12-02T01:00:00Z";
        // No Job: create it.
        let (s, next) = observe(&t, JobMode::Indexed, &Observed::default(), now);
        assert_eq!(next, Next::CreateTrain(vec![0]));
        assert_eq!(s.phase, TrainingPhase::Pending);
        // Running, one index done and reported.
        let msg = serde_json::to_string(&CandidateFile {
            index: 1,
            seed: 1,
            digest: "d1".into(),
            algorithm: "ppo".into(),
            steps: 500,
        })
        .unwrap();
        let obs = Observed {
            train_jobs: vec![job("retrain-1-train", None, 1)],
            train_pods: vec![pod("Succeeded", 1, 0, "Completed", &msg)],
            ..Default::default()
        };
        let (s, next) = observe(&t, JobMode::Indexed, &obs, now);
        assert_eq!((s.phase, next), (TrainingPhase::Training, Next::Wait));
        assert_eq!(s.succeeded_indexes, 1);
        assert_eq!(s.candidates.len(), 1);
        assert_eq!(s.candidates[0].checkpoint, "/var/lib/llmos/trainings/retrain-1/candidate-1");
        // Failed: the index and the Pod's reason are in the message.
        let obs = Observed {
            train_jobs: vec![job("retrain-1-train", Some(("Failed", "BackoffLimitExceeded")), 1)],
            train_pods: vec![pod("Failed", 2, 137, "OOMKilled", "")],
            ..Default::default()
        };
        let (s, next) = observe(&t, JobMode::Indexed, &obs, now);
        assert_eq!((s.phase, next), (TrainingPhase::Failed, Next::Done));
        let m = s.message.unwrap();
        assert!(m.contains("BackoffLimitExceeded") && m.contains("index 2") && m.contains("OOMKilled"), "{m}");
        // Complete: the evaluation Job next, then its result.
        let mut obs =
            Observed { train_jobs: vec![job("retrain-1-train", Some(("Complete", "")), 3)], ..Default::default() };
        let (s, next) = observe(&t, JobMode::Indexed, &obs, now);
        assert_eq!((s.phase, next), (TrainingPhase::Evaluating, Next::CreateEval));
        obs.eval_job = Some(job("retrain-1-eval", None, 0));
        assert_eq!(observe(&t, JobMode::Indexed, &obs, now).1, Next::Wait);
        let e = TrainingEvaluation {
            candidate: crate::crd::training::CandidateRef { digest: "d1".into(), checkpoint: "/c1".into() },
            paired_differences: vec![1.0, 2.0, 3.0],
            mean: 2.0,
            ci95: crate::eval::stats::Estimate::of(&[1.0, 2.0, 3.0]).ci95,
            seeds: 3,
            ..Default::default()
        };
        obs.eval_job = Some(job("retrain-1-eval", Some(("Complete", "")), 1));
        obs.eval_pods = vec![pod("Succeeded", 0, 0, "Completed", &serde_json::to_string(&e).unwrap())];
        let (s, next) = observe(&t, JobMode::Indexed, &obs, now);
        assert_eq!((s.phase, next), (TrainingPhase::Evaluated, Next::Done));
        assert_eq!(s.evaluation.as_ref(), Some(&e));
        assert!(s.conditions.iter().any(|c| c.type_ == "Evaluated" && c.status == "True"));
        // A result whose mean is not its differences' is refused.
        let bad = TrainingEvaluation { mean: 5.0, ..e.clone() };
        obs.eval_pods = vec![pod("Succeeded", 0, 0, "Completed", &serde_json::to_string(&bad).unwrap())];
        assert_eq!(observe(&t, JobMode::Indexed, &obs, now).0.phase, TrainingPhase::Failed);
        // A failed evaluation Job.
        obs.eval_job = Some(job("retrain-1-eval", Some(("Failed", "BackoffLimitExceeded")), 0));
        obs.eval_pods = vec![pod("Failed", 0, 1, "Error", "Error: no complete candidate of index(es) [2]")];
        let (s, _) = observe(&t, JobMode::Indexed, &obs, now);
        assert_eq!(s.phase, TrainingPhase::Failed);
        assert!(s.message.unwrap().contains("no complete candidate"));
    }

    #[test]
    fn per_index_jobs_respect_parallelism_and_a_final_phase_stays() {
        let t = training(serde_json::json!({"parallelism": 2}));
        let now = "2026-12-02T01:00:00Z";
        assert_eq!(observe(&t, JobMode::PerIndex, &Observed::default(), now).1, Next::CreateTrain(vec![0, 1]));
        let mut j0 = job("retrain-1-train-0", Some(("Complete", "")), 1);
        j0.metadata.labels = Some(BTreeMap::from([(INDEX_LABEL.to_string(), "0".to_string())]));
        let mut j1 = job("retrain-1-train-1", None, 0);
        j1.metadata.labels = Some(BTreeMap::from([(INDEX_LABEL.to_string(), "1".to_string())]));
        let obs = Observed { train_jobs: vec![j0, j1], ..Default::default() };
        let (s, next) = observe(&t, JobMode::PerIndex, &obs, now);
        assert_eq!(next, Next::CreateTrain(vec![2]), "index 0 done: room for index 2");
        assert_eq!(s.succeeded_indexes, 1);
        let mut done = t.clone();
        done.status = Some(LLMPolicyTrainingStatus { phase: TrainingPhase::Failed, ..Default::default() });
        assert_eq!(
            observe(&done, JobMode::PerIndex, &Observed::default(), now).1,
            Next::Done,
            "never a Job after the end"
        );
        // A training that failed on its spec runs once the spec is fixed.
        let mut conds = Vec::new();
        set_condition(&mut conds, "SpecValid", "False", "InvalidSpec", "spec.seeds: 0 is outside 1..=64", now, Some(1));
        done.status =
            Some(LLMPolicyTrainingStatus { phase: TrainingPhase::Failed, conditions: conds, ..Default::default() });
        let (s, next) = observe(&done, JobMode::PerIndex, &Observed::default(), now);
        assert_eq!(next, Next::CreateTrain(vec![0, 1]));
        assert!(s.conditions.iter().any(|c| c.type_ == "SpecValid" && c.status == "True"));
    }
}
