//! The namespaced `LLMPolicyTraining` custom resource: one retraining run of a workload's
//! policy, which the operator turns into Kubernetes Jobs (`controller::training`): a train
//! Job of one index per seed, each writing a candidate checkpoint to a shared volume, then
//! an evaluation Job that scores every candidate and the incumbent in the twin on the
//! workload's recorded traffic and picks the best.
//!
//! A training is a resource of its own, not a section of the `LLMWorkload`: it is a run
//! with its own lifecycle (Pending → Training → Evaluating → Evaluated or Failed), and a
//! workload has many of them over time (one per retraining, each with its own seeds,
//! steps and result), which a section of the workload's spec could only hold as its latest
//! request. The workload's `spec.learning` says what is recorded; a training names the
//! workload it retrains (`spec.workload`).
//!
//! The status is read by the promotion logic of the workload controller: `status.phase`
//! is `Evaluated` once `status.evaluation` holds the best candidate (`candidate.digest`,
//! `candidate.checkpoint`), the `incumbent`, the per-seed `pairedDifferences`
//! (candidate − incumbent), their `mean`, `ci95` and the number of `seeds`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, TolerationSpec};

/// Most seeds (train Job completions) of one training.
pub const MAX_SEEDS: u32 = 64;
/// Most evaluation seeds.
pub const MAX_EVALUATION_SEEDS: u32 = 100;
/// Most training steps of one index.
pub const MAX_STEPS: u64 = 100_000_000;
/// Default mount path of the shared volume in the Jobs' Pods.
pub const DEFAULT_MOUNT_PATH: &str = "/var/lib/llmos";
/// Default records directory under the shared volume's mount (the operator's
/// `--record-dir` when it mounts the same volume at the same path).
pub const DEFAULT_RECORDS_PATH: &str = "records";

/// One retraining run of an LLMWorkload's policy.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmos.dev",
    version = "v1alpha1",
    kind = "LLMPolicyTraining",
    doc = "One retraining run of an LLMWorkload's policy, run by the operator as a train Job (one index per seed) and an evaluation Job.",
    plural = "llmpolicytrainings",
    shortname = "llmpt",
    namespaced,
    status = "LLMPolicyTrainingStatus",
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Seeds","type":"integer","jsonPath":".spec.seeds"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Mean","type":"number","jsonPath":".status.evaluation.mean"}"#,
    printcolumn = r#"{"name":"CI95","type":"number","jsonPath":".status.evaluation.ci95"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LLMPolicyTrainingSpec {
    /// The LLMWorkload (in this namespace) whose policy is retrained: its spec is the
    /// twin's workload (variants, pools, SLO, limits, control interval), its recorded
    /// traffic the training and evaluation traffic, its policy the incumbent.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub workload: String,
    /// The learner: `dqn` or `ppo`.
    pub algorithm: TrainingAlgorithm,
    /// Resume every index from this checkpoint (a directory on the shared volume or in
    /// the image, or a shipped policy's name); absent: fresh weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub base_checkpoint: Option<String>,
    /// A training config in the image or on the volume (a TOML file of `llmos train
    /// --config`: actions, reward, episodes, hyperparameters); absent: the built-in
    /// defaults of the algorithm. `algorithm` overrides the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub config: Option<String>,
    /// Environment steps (control ticks) each index trains for (1..100000000).
    #[schemars(range(min = 1, max = 100000000))]
    pub steps: u64,
    /// Training seeds: the train Job's completions, one index per seed; index `i` trains
    /// with seed `baseSeed + i` (1..64, default 2).
    #[serde(default = "default_seeds")]
    #[schemars(range(min = 1, max = 64))]
    pub seeds: u32,
    /// The seed of index 0 (default 0).
    #[serde(default)]
    pub base_seed: u64,
    /// Indexes that run at once (the train Job's parallelism; default: `seeds`, all at
    /// once). A bigger cluster raises it and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: Option<u32>,
    /// The traffic trained and evaluated on.
    #[serde(default)]
    pub traces: TracesSpec,
    /// A twin scenario TOML in the image or on the volume (engine, cluster, initial
    /// fleet) whose trace is replaced by the recorded traffic; absent: a scenario built
    /// from the workload's spec with the twin's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub scenario: Option<String>,
    /// How candidates are judged against the incumbent.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// Container image of both Jobs (default: the operator's own image, `llmos run
    /// --job-image` or `$LLMOS_JOB_IMAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each Pod (e.g. `{requests: {cpu: "2"}}`).
    #[serde(default, skip_serializing_if = "ResourcesSpec::is_empty")]
    pub resources: ResourcesSpec,
    /// Train on a GPU: each train Pod asks for `nvidia.com/gpu: 1`.
    #[serde(default)]
    pub gpu: bool,
    /// Node labels the Jobs' Pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the Jobs' Pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<TolerationSpec>,
    /// The volume shared with the operator: records are read from it, checkpoints and
    /// the evaluation written to it (`<mountPath>/trainings/<name>/`).
    pub volume: TrainingVolume,
}

fn default_seeds() -> u32 {
    2
}

/// The learner of a training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainingAlgorithm {
    /// Deep Q-learning (`llmos train --algorithm dqn`).
    Dqn,
    /// Proximal policy optimisation (`llmos train --algorithm ppo`).
    #[default]
    Ppo,
}

impl TrainingAlgorithm {
    /// The name `llmos train --algorithm` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingAlgorithm::Dqn => "dqn",
            TrainingAlgorithm::Ppo => "ppo",
        }
    }
}

/// The traffic a training learns from and is judged on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TracesSpec {
    /// Train and evaluate on the workload's recorded traffic (its `spec.learning.record`
    /// store under the volume's `recordsPath`, exported as a trace; default true).
    pub recorded: bool,
    /// Public traces (Azure-format CSV paths in the image, e.g.
    /// `data/traces/AzureLLMInferenceTrace_conv.csv`, or on the volume) or scenario TOMLs
    /// (`.toml`) added to the training mix and to the evaluation.
    #[schemars(length(max = 16))]
    pub public: Vec<String>,
}

impl Default for TracesSpec {
    fn default() -> Self {
        TracesSpec { recorded: true, public: Vec::new() }
    }
}

/// How the candidates are judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EvaluationSpec {
    /// Paired seeds: every candidate and the incumbent run on the same traffic per seed
    /// (seed 0 replays the trace as recorded, the others are seeded resamples; 1..100,
    /// default 3).
    #[schemars(range(min = 1, max = 100))]
    pub seeds: u32,
    /// The part of each trace judged on: `test` (the last 40 %, which training's
    /// episodes never see; default) or `all`.
    pub window: EvaluationWindow,
    /// Stop each evaluation episode after this many simulated seconds (absent: the
    /// whole window).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub max_duration_seconds: Option<f64>,
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        EvaluationSpec { seeds: 3, window: EvaluationWindow::Test, max_duration_seconds: None }
    }
}

/// The part of a trace an evaluation judges on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvaluationWindow {
    /// The last 40 % of the trace's span (`eval::TRAIN_FRACTION`).
    #[default]
    Test,
    /// The whole trace.
    All,
}

/// Requests and limits of a Job's Pods, as quantities (`cpu: "2"`, `memory: 4Gi`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourcesSpec {
    /// Requests by resource name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Limits by resource name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl ResourcesSpec {
    /// Whether neither requests nor limits are set.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// The volume the Jobs share with the operator: exactly one of `claimName` and
/// `hostPath`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingVolume {
    /// A PersistentVolumeClaim (ReadWriteMany when the Pods may land on several nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// A directory of the node (single-node clusters and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub host_path: Option<String>,
    /// Where the volume is mounted in the Jobs' Pods (default `/var/lib/llmos`).
    #[serde(default = "default_mount_path")]
    #[schemars(length(min = 1))]
    pub mount_path: String,
    /// The operator's record directory (`llmos run --record-dir`) relative to the
    /// volume's root (default `records`): the workload's record is
    /// `<mountPath>/<recordsPath>/<namespace>_<workload>/`.
    #[serde(default = "default_records_path")]
    pub records_path: String,
}

fn default_mount_path() -> String {
    DEFAULT_MOUNT_PATH.into()
}

fn default_records_path() -> String {
    DEFAULT_RECORDS_PATH.into()
}

/// Where a training is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrainingPhase {
    /// Accepted, no Job yet (or the spec is being fixed: see the conditions).
    #[default]
    Pending,
    /// The train Job runs.
    Training,
    /// Every index finished; the evaluation Job runs.
    Evaluating,
    /// The evaluation is in `status.evaluation`.
    Evaluated,
    /// A Job failed, or the spec cannot run; `status.message` says why.
    Failed,
}

impl TrainingPhase {
    /// The phase's name as the status holds it.
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingPhase::Pending => "Pending",
            TrainingPhase::Training => "Training",
            TrainingPhase::Evaluating => "Evaluating",
            TrainingPhase::Evaluated => "Evaluated",
            TrainingPhase::Failed => "Failed",
        }
    }

    /// Whether the training is over (Evaluated or Failed).
    pub fn is_final(self) -> bool {
        matches!(self, TrainingPhase::Evaluated | TrainingPhase::Failed)
    }
}

/// Observed state of a training, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMPolicyTrainingStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Training, Evaluating, Evaluated or Failed.
    #[serde(default)]
    pub phase: TrainingPhase,
    /// Conditions: SpecValid, Trained, Evaluated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The train Job's name (with one Job per index, on API servers without Indexed
    /// Jobs, the names' common prefix: `<trainJob>-<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_job: Option<String>,
    /// `Indexed` (one Indexed Job) or `PerIndex` (one Job per index, for API servers
    /// older than 1.22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_mode: Option<String>,
    /// The evaluation Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_job: Option<String>,
    /// When the train Job was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the training reached Evaluated or Failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Indexes finished so far.
    #[serde(default)]
    pub succeeded_indexes: u32,
    /// The candidates every index wrote (filled from the evaluation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateStatus>,
    /// The evaluation of the best candidate against the incumbent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<TrainingEvaluation>,
    /// What is happening or went wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One index's candidate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateStatus {
    /// The train Job's completion index.
    pub index: u32,
    /// The seed it trained with (`baseSeed + index`).
    pub seed: u64,
    /// Its checkpoint directory on the shared volume.
    pub checkpoint: String,
    /// Its SHA-256 digest (`llmos digest`).
    pub digest: String,
    /// Its mean evaluation score over the evaluation seeds (higher is better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_score: Option<f64>,
}

/// A trained policy the evaluation picked: its digest and checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateRef {
    /// SHA-256 of the checkpoint (`llmos digest`).
    pub digest: String,
    /// The checkpoint directory on the shared volume.
    pub checkpoint: String,
}

/// The policy a candidate was judged against: the workload's spec policy, or the learned
/// checkpoint active when the training started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncumbentRef {
    /// Its policy kind (`hpa`, `dqn`, ...).
    pub policy: String,
    /// A learned incumbent's checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// A learned incumbent's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The evaluation of the best candidate against the incumbent, as the evaluation Job
/// writes it (to the volume and its termination message) and the status holds it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingEvaluation {
    /// The best candidate (highest mean score).
    pub candidate: CandidateRef,
    /// The incumbent.
    pub incumbent: IncumbentRef,
    /// Per evaluation seed `0..seeds`, the candidate's score minus the incumbent's
    /// (higher is better), summed over the evaluation traces.
    pub paired_differences: Vec<f64>,
    /// Mean of `pairedDifferences`.
    pub mean: f64,
    /// 95 % half-width of the mean (Student's t, `eval::stats::Estimate`).
    pub ci95: f64,
    /// Paired seeds.
    pub seeds: u32,
    /// The score: what each run's score is (the harness's `objective`: the summed
    /// per-tick reward training maximises).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub score: String,
    /// Every candidate with its digest and mean score, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateStatus>,
    /// The incumbent's mean score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incumbent_mean_score: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names_are_as_documented() {
        let t: LLMPolicyTrainingSpec = serde_json::from_value(serde_json::json!({
            "workload": "code", "algorithm": "dqn", "steps": 100, "volume": {"hostPath": "/data"}
        }))
        .expect("a minimal spec");
        assert_eq!(t.seeds, 2);
        assert!(t.traces.recorded);
        assert_eq!(t.evaluation.seeds, 3);
        assert_eq!(t.volume.mount_path, DEFAULT_MOUNT_PATH);
        assert_eq!(t.volume.records_path, DEFAULT_RECORDS_PATH);
        let status = LLMPolicyTrainingStatus {
            phase: TrainingPhase::Evaluated,
            evaluation: Some(TrainingEvaluation {
                candidate: CandidateRef { digest: "d".into(), checkpoint: "/c".into() },
                paired_differences: vec![1.0],
                mean: 1.0,
                seeds: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&status).expect("status serialises");
        assert_eq!(v["phase"], "Evaluated");
        for k in ["candidate", "incumbent", "pairedDifferences", "mean", "ci95", "seeds"] {
            assert!(v["evaluation"].get(k).is_some(), "status.evaluation.{k} missing: {v}");
        }
        assert_eq!(v["evaluation"]["candidate"]["digest"], "d");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<LLMPolicyTrainingSpec, _> = serde_json::from_value(serde_json::json!({
            "workload": "code", "algorithm": "dqn", "steps": 100, "volume": {"hostPath": "/data"}, "seed": 3
        }));
        assert!(r.is_err());
    }
}
