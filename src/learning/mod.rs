//! Learning in the cluster: what the operator records of the traffic it serves, how a
//! record becomes a trace the twin replays, and the rule that judges a retrained policy
//! before it acts and undoes it when it degrades.
//!
//! - [`record`]: one [`record::TrafficWindow`] per workload and window (arrival rate,
//!   prompt and output token distributions from vLLM's per-request token histograms, the
//!   SLO and the fleet in force), built by [`record::WindowRecorder`] from the same
//!   [`crate::metrics::scrape::PodSample`]s the operator's direct scrape reads.
//! - [`store`]: the bounded, crash-safe store of those windows (append-only JSON-lines
//!   segments, sealed by rename, size limit and retention by whole segments).
//! - [`sink`]: [`sink::RecordSink`], the non-blocking hand-off from a reconcile to a
//!   writer thread (a bounded channel; a full channel drops and counts the window).
//! - [`export`]: a record as an Azure-format CSV trace (seeded, deterministic).
//! - [`promote`]: the pure state machine of training, evaluation, shadow, promotion and
//!   rollback, with the reasons and the policy history it produces.
//! - [`job`]: what the Pods of an `LLMPolicyTraining`'s Jobs run: `llmos train-job` (one
//!   seed's candidate, written atomically to the shared volume) and `llmos
//!   evaluate-candidates` (every candidate against the incumbent in the twin).
//! - [`cli`]: `llmos records` (list a record, or export it with `--export`).
//!
//! `docs/learning.md` describes the record format, the limits, the export route and the
//! promotion rule.

pub mod cli;
pub mod export;
pub mod job;
pub mod promote;
pub mod record;
pub mod sink;
pub mod store;

use std::path::Path;

/// Errors of recording, reading and exporting records. Every variant names the file (and
/// line, where one is at fault) or the field.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file or directory could not be read, written, synced or renamed.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// A line of a segment is not a valid record (and is not a torn last line).
    #[error("{file}, line {line}: {message}")]
    Corrupt {
        /// The segment file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("{field}: {message}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A record cannot be exported (no token distribution anywhere, no windows).
    #[error("export: {0}")]
    Export(String),
}

impl RecordError {
    /// An [`RecordError::Io`] for `path` from an I/O error.
    pub fn io(path: &Path, e: impl std::fmt::Display) -> RecordError {
        RecordError::Io { path: path.display().to_string(), message: e.to_string() }
    }
}
