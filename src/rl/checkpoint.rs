//! Checkpoints: weights plus a JSON sidecar, written atomically, validated on load.
//!
//! A checkpoint is a directory holding
//!
//! - `model.safetensors`: the online network's weights (tch `VarStore`, safetensors
//!   format, readable on CPU and GPU alike);
//! - `checkpoint.json`: [`CheckpointMeta`]: format version, observation feature names
//!   and the frozen normaliser statistics, action branches (and, for twin policies, the
//!   workload and action layouts), the DQN config, counters, seed, and a checksum and
//!   size of the weights file.
//!
//! Each file is written to a temporary file in the same directory, flushed to disk
//! (`fsync`), then renamed over the old one, and the directory is synced; the sidecar is
//! written last and names the checksum of the weights it belongs to, so a reader never
//! pairs a sidecar with weights from another write. Loading checks, in order: both files
//! exist, the sidecar parses and has a known version, the weights match the checksum,
//! the layout matches what the caller needs (naming the first difference), and the
//! tensors match the network's shapes. Every failure is an [`RlError`], never a panic.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dqn::{DeviceChoice, DqnAgent, DqnConfig, QNetwork};
use super::encoding::{ActionLayout, Normaliser, WorkloadLayout};
use super::env::BranchSpec;
use super::RlError;

/// Version of the checkpoint format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the weights file in a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the sidecar in a checkpoint directory.
pub const META_FILE: &str = "checkpoint.json";

/// The JSON sidecar of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointMeta {
    /// [`FORMAT_VERSION`] at write time.
    pub format_version: u32,
    /// Observation feature names, in input order.
    pub feature_names: Vec<String>,
    /// Observation statistics, frozen.
    pub normaliser: Normaliser,
    /// Action branches, in output order.
    pub branches: Vec<BranchSpec>,
    /// The workload layout, for policies over the twin or the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadLayout>,
    /// The action layout, for policies over the twin or the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_layout: Option<ActionLayout>,
    /// The DQN hyperparameters (the network shape is rebuilt from them).
    pub dqn: DqnConfig,
    /// Environment steps trained.
    pub env_steps: u64,
    /// Gradient updates done.
    pub updates: u64,
    /// Training seed.
    pub seed: u64,
    /// Free-form training configuration (scenario, reward weights), for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<serde_json::Value>,
    /// libtorch's CPU numeric path the weights were trained on (see [`crate::numerics`]),
    /// e.g. `reproducible (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE)`; absent in
    /// checkpoints written before it was recorded. Only `reproducible` CPU training gives
    /// the same weights on another processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerics: Option<String>,
    /// The algorithm that trained the weights: absent or `dqn` for a DQN, `ppo` for a PPO
    /// actor (its logits are read as the DQN's Q-values: the greedy choice is the masked
    /// argmax either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// FNV-1a 64 checksum of the weights file, hex.
    pub weights_fnv1a64: String,
    /// Size of the weights file in bytes.
    pub weights_bytes: u64,
}

/// The numeric path an agent's weights come from: the process's pinned CPU path, or CUDA.
fn numerics_of(agent: &DqnAgent) -> Option<String> {
    if agent.device.is_cuda() {
        return Some("cuda".into());
    }
    crate::numerics::pinned().map(|p| p.settings())
}

/// What a caller needs a checkpoint to match.
#[derive(Clone, Debug, Default)]
pub struct Expected<'a> {
    /// Feature names the caller will feed.
    pub feature_names: Option<&'a [String]>,
    /// Branches the caller will read.
    pub branches: Option<&'a [BranchSpec]>,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn io_err(path: &Path, source: std::io::Error) -> RlError {
    RlError::Io { path: path.display().to_string(), source }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, dir fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RlError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves `agent` (with its normaliser frozen in the sidecar) into `dir`.
pub fn save(
    dir: &Path,
    agent: &DqnAgent,
    feature_names: Vec<String>,
    branches: Vec<BranchSpec>,
    workload: Option<WorkloadLayout>,
    action_layout: Option<ActionLayout>,
    train: Option<serde_json::Value>,
) -> Result<CheckpointMeta, RlError> {
    save_as(dir, agent, None, feature_names, branches, workload, action_layout, train)
}

/// [`save`] with the training algorithm named in the sidecar (`ppo` for a PPO actor
/// given as [`crate::rl::ppo::PpoAgent::greedy_agent`]).
#[allow(clippy::too_many_arguments)]
pub fn save_as(
    dir: &Path,
    agent: &DqnAgent,
    algorithm: Option<&str>,
    feature_names: Vec<String>,
    branches: Vec<BranchSpec>,
    workload: Option<WorkloadLayout>,
    action_layout: Option<ActionLayout>,
    train: Option<serde_json::Value>,
) -> Result<CheckpointMeta, RlError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    // The weights go through a temp file whose extension tells tch the format.
    let tmp_weights = dir.join(".model.tmp.safetensors");
    agent.vs.save(&tmp_weights)?;
    let bytes = fs::read(&tmp_weights).map_err(|e| io_err(&tmp_weights, e))?;
    let _ = fs::remove_file(&tmp_weights);
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let mut normaliser = agent.normaliser.clone();
    normaliser.frozen = true;
    let meta = CheckpointMeta {
        format_version: FORMAT_VERSION,
        feature_names,
        normaliser,
        branches,
        workload,
        action_layout,
        dqn: agent.cfg.clone(),
        env_steps: agent.env_steps,
        updates: agent.updates,
        seed: agent.cfg.seed,
        train,
        numerics: numerics_of(agent),
        algorithm: algorithm.map(str::to_string),
        weights_fnv1a64: format!("{:016x}", fnv1a64(&bytes)),
        weights_bytes: bytes.len() as u64,
    };
    let json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| RlError::Json { path: dir.join(META_FILE).display().to_string(), source: e })?;
    write_atomic(&dir.join(META_FILE), &json)?;
    Ok(meta)
}

/// Reads and checks the sidecar of the checkpoint in `dir`.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, RlError> {
    let path = dir.join(META_FILE);
    if !dir.is_dir() {
        return Err(RlError::Checkpoint {
            path: dir.display().to_string(),
            message: "no such checkpoint directory".into(),
        });
    }
    let text = fs::read(&path).map_err(|e| RlError::Checkpoint {
        path: dir.display().to_string(),
        message: format!("cannot read {META_FILE}: {e}"),
    })?;
    parse_meta(&dir.display().to_string(), &text)
}

/// Parses and checks a sidecar's bytes (`origin` names the checkpoint in errors): the
/// JSON, the format version, that the normaliser and the feature names agree, and that
/// the network it describes is well formed (positive widths, at least one branch, no
/// empty branch).
pub fn parse_meta(origin: &str, bytes: &[u8]) -> Result<CheckpointMeta, RlError> {
    let ck = |m: String| RlError::Checkpoint { path: origin.to_string(), message: m };
    let meta: CheckpointMeta = serde_json::from_slice(bytes)
        .map_err(|e| RlError::Json { path: format!("{origin}/{META_FILE}"), source: e })?;
    if meta.format_version != FORMAT_VERSION {
        return Err(ck(format!("format version {} (this build reads {FORMAT_VERSION})", meta.format_version)));
    }
    if meta.normaliser.dim() != meta.feature_names.len() {
        return Err(ck(format!(
            "normaliser has {} features but the layout names {}",
            meta.normaliser.dim(),
            meta.feature_names.len()
        )));
    }
    meta.normaliser.check().map_err(|m| ck(format!("normaliser: {m}")))?;
    if meta.feature_names.is_empty() {
        return Err(ck("featureNames: empty (a network needs at least one input)".into()));
    }
    if meta.branches.is_empty() {
        return Err(ck("branches: empty (a policy needs at least one action branch)".into()));
    }
    if let Some(b) = meta.branches.iter().find(|b| b.options.is_empty()) {
        return Err(ck(format!("branches: `{}` has no options", b.name)));
    }
    meta.dqn.validate().map_err(|e| ck(format!("dqn: {e}")))?;
    Ok(meta)
}

/// The variables of the network `meta` describes, as [`QNetwork::shapes`] gives them.
fn network_shapes(origin: &str, meta: &CheckpointMeta) -> Result<Vec<(String, Vec<i64>)>, RlError> {
    let sizes: Vec<usize> = meta.branches.iter().map(|b| b.options.len()).collect();
    QNetwork::shapes(meta.feature_names.len(), &meta.dqn.hidden, &sizes, meta.dqn.dueling).ok_or_else(|| {
        RlError::Checkpoint {
            path: origin.to_string(),
            message: format!(
                "dqn.hidden {:?} with {} features and {} branches describes no network that fits in memory",
                meta.dqn.hidden,
                meta.feature_names.len(),
                sizes.len()
            ),
        }
    })
}

/// Checks a weights file's bytes against its sidecar: size and checksum, then the
/// safetensors header (read without libtorch): every tensor of the network the sidecar
/// describes is present, 32-bit float, with the network's shape, and there is no other.
/// Only weights that pass are handed to libtorch, so a corrupt or hostile file is an
/// error naming the tensor, never an allocation the sidecar did not announce.
pub fn check_weights(origin: &str, meta: &CheckpointMeta, bytes: &[u8]) -> Result<(), RlError> {
    let sum = format!("{:016x}", fnv1a64(bytes));
    if sum != meta.weights_fnv1a64 || bytes.len() as u64 != meta.weights_bytes {
        return Err(RlError::Checkpoint {
            path: origin.to_string(),
            message: format!(
                "{WEIGHTS_FILE} ({} bytes, checksum {sum}) does not match the sidecar ({} bytes, checksum {}): corrupt or from another write",
                bytes.len(),
                meta.weights_bytes,
                meta.weights_fnv1a64
            ),
        });
    }
    check_tensors(origin, meta, bytes)
}

/// The header part of [`check_weights`]: the tensors in `bytes` are exactly the network's.
pub fn check_tensors(origin: &str, meta: &CheckpointMeta, bytes: &[u8]) -> Result<(), RlError> {
    let ck = |m: String| RlError::Checkpoint { path: origin.to_string(), message: format!("{WEIGHTS_FILE}: {m}") };
    let expected = network_shapes(origin, meta)?;
    let file =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| ck(format!("not a safetensors file: {e:?}")))?;
    let mut found: std::collections::BTreeMap<String, safetensors::tensor::TensorView<'_>> =
        file.tensors().into_iter().collect();
    for (name, shape) in &expected {
        let t = found.remove(name).ok_or_else(|| ck(format!("tensor `{name}` is missing")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(ck(format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
        }
        let got: Vec<i64> = t.shape().iter().map(|d| i64::try_from(*d).unwrap_or(-1)).collect();
        if &got != shape {
            return Err(ck(format!("tensor `{name}` has shape {got:?}, the network needs {shape:?}")));
        }
    }
    if let Some(extra) = found.keys().next() {
        return Err(ck(format!("tensor `{extra}` is not part of the network the sidecar describes")));
    }
    Ok(())
}

fn check_layout(dir: &Path, meta: &CheckpointMeta, expected: &Expected<'_>) -> Result<(), RlError> {
    let mismatch = |what: String, c: String, w: String| RlError::LayoutMismatch {
        path: dir.display().to_string(),
        what,
        checkpoint: c,
        workload: w,
    };
    if let Some(names) = expected.feature_names {
        if names.len() != meta.feature_names.len() {
            let first = names.iter().zip(&meta.feature_names).position(|(a, b)| a != b);
            let detail = first
                .map(|i| format!(" (first difference at {i}: `{}` vs `{}`)", meta.feature_names[i], names[i]))
                .unwrap_or_default();
            return Err(mismatch(
                format!("number of observation features{detail}"),
                meta.feature_names.len().to_string(),
                names.len().to_string(),
            ));
        }
        if let Some(i) = names.iter().zip(&meta.feature_names).position(|(a, b)| a != b) {
            return Err(mismatch(format!("observation feature {i}"), meta.feature_names[i].clone(), names[i].clone()));
        }
    }
    if let Some(branches) = expected.branches {
        let show = |b: &[BranchSpec]| b.iter().map(|x| x.name.clone()).collect::<Vec<_>>().join(", ");
        if branches.len() != meta.branches.len() {
            return Err(mismatch("action branches".into(), show(&meta.branches), show(branches)));
        }
        for (i, (c, w)) in meta.branches.iter().zip(branches).enumerate() {
            if c != w {
                return Err(mismatch(
                    format!("action branch {i}"),
                    format!("{} {:?}", c.name, c.options),
                    format!("{} {:?}", w.name, w.options),
                ));
            }
        }
    }
    Ok(())
}

/// Loads the checkpoint in `dir` onto `device`, checking it against `expected`.
pub fn load(dir: &Path, expected: &Expected<'_>, device: DeviceChoice) -> Result<(DqnAgent, CheckpointMeta), RlError> {
    let meta = read_meta(dir)?;
    check_layout(dir, &meta, expected)?;
    let ck = |m: String| RlError::Checkpoint { path: dir.display().to_string(), message: m };
    let wpath: PathBuf = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&wpath).map_err(|e| ck(format!("cannot read {WEIGHTS_FILE}: {e}")))?;
    check_weights(&dir.display().to_string(), &meta, &bytes)?;
    let sizes: Vec<usize> = meta.branches.iter().map(|b| b.options.len()).collect();
    let mut cfg = meta.dqn.clone();
    cfg.device = device;
    let mut agent = DqnAgent::new(meta.feature_names.len(), &sizes, cfg)?;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.vs.load(&wpath)));
    match loaded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ck(format!("weights do not fit the network described by the sidecar: {e}"))),
        Err(_) => return Err(ck("libtorch failed while reading the weights".into())),
    }
    agent.sync_target()?;
    agent.normaliser = meta.normaliser.clone();
    agent.normaliser.frozen = true;
    agent.env_steps = meta.env_steps;
    agent.updates = meta.updates;
    Ok((agent, meta))
}
