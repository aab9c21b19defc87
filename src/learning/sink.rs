//! [`RecordSink`]: how a reconcile hands a [`TrafficWindow`] to the store without waiting
//! for a disk. The sink puts the window on a bounded channel (`try_send`, never blocks);
//! one writer thread drains it into a [`RecordStore`] per workload under a root directory
//! (`<root>/<namespace>_<name>/`). When the channel is full the window is dropped and
//! counted; a write that fails is logged and counted, and the writer goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::record::TrafficWindow;
use super::store::{RecordStore, StoreConfig};
use super::RecordError;

/// Counters of a sink and its writer.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Windows accepted onto the channel.
    pub sent: AtomicU64,
    /// Windows dropped because the channel was full (or the writer had stopped).
    pub dropped: AtomicU64,
    /// Windows written and synced.
    pub written: AtomicU64,
    /// Windows whose write failed.
    pub write_errors: AtomicU64,
    /// Segments deleted by the limits.
    pub segments_deleted: AtomicU64,
    /// The last write error or recovery warning, for a status message.
    pub last_problem: Mutex<Option<String>>,
}

/// A plain copy of [`SinkCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Windows accepted onto the channel.
    pub sent: u64,
    /// Windows dropped (channel full or writer gone).
    pub dropped: u64,
    /// Windows written and synced.
    pub written: u64,
    /// Windows whose write failed.
    pub write_errors: u64,
    /// Segments deleted by the limits.
    pub segments_deleted: u64,
    /// The last write error or recovery warning.
    pub last_problem: Option<String>,
}

impl SinkCounters {
    fn snapshot(&self) -> SinkStats {
        SinkStats {
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            segments_deleted: self.segments_deleted.load(Ordering::Relaxed),
            last_problem: self.last_problem.lock().ok().and_then(|p| p.clone()),
        }
    }

    fn problem(&self, p: String) {
        tracing::warn!(problem = %p, "traffic record");
        if let Ok(mut slot) = self.last_problem.lock() {
            *slot = Some(p);
        }
    }
}

/// The sending side: cheap to clone, safe to call from async code (never blocks).
#[derive(Clone)]
pub struct RecordSink {
    tx: SyncSender<(TrafficWindow, Option<StoreConfig>)>,
    counters: Arc<SinkCounters>,
}

/// The writer thread; [`RecordWriter::join`] waits for it to drain the channel once every
/// [`RecordSink`] clone is dropped.
pub struct RecordWriter {
    handle: JoinHandle<()>,
    counters: Arc<SinkCounters>,
}

/// The directory of a workload's record under `root`: `namespace/name` becomes
/// `namespace_name` (Kubernetes names hold no `_`); other characters outside
/// `[A-Za-z0-9.-]` become `_` too.
pub fn workload_dir(root: &Path, workload: &str) -> PathBuf {
    let name: String =
        workload.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    root.join(if name.is_empty() || name.chars().all(|c| c == '.') { "_".to_string() } else { name })
}

impl RecordSink {
    /// Starts the writer thread over `root` with `capacity` windows of buffer.
    pub fn spawn(root: &Path, config: StoreConfig, capacity: usize) -> Result<(RecordSink, RecordWriter), RecordError> {
        config.validate()?;
        std::fs::create_dir_all(root).map_err(|e| RecordError::io(root, e))?;
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(SinkCounters::default());
        let (root, c) = (root.to_path_buf(), counters.clone());
        let handle = std::thread::Builder::new()
            .name("llmos-record".into())
            .spawn(move || drain(rx, &root, &config, &c))
            .map_err(|e| RecordError::Io { path: "record writer thread".into(), message: e.to_string() })?;
        Ok((RecordSink { tx, counters: counters.clone() }, RecordWriter { handle, counters }))
    }

    /// Hands a window to the writer; `false` (and the window counted as dropped) when the
    /// channel is full or the writer has stopped.
    pub fn record(&self, w: TrafficWindow) -> bool {
        self.record_with(w, None)
    }

    /// [`RecordSink::record`] with the limits of the window's workload (its spec's);
    /// `None` keeps the limits its store has (at first, those the sink was spawned with).
    pub fn record_with(&self, w: TrafficWindow, config: Option<StoreConfig>) -> bool {
        match self.tx.try_send((w, config)) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The counters now.
    pub fn stats(&self) -> SinkStats {
        self.counters.snapshot()
    }
}

impl RecordWriter {
    /// Waits until every sink clone is dropped and the channel is drained; the final
    /// counters.
    pub fn join(self) -> SinkStats {
        let _ = self.handle.join();
        self.counters.snapshot()
    }
}

fn drain(rx: Receiver<(TrafficWindow, Option<StoreConfig>)>, root: &Path, config: &StoreConfig, c: &SinkCounters) {
    let mut stores: BTreeMap<String, (RecordStore, StoreConfig)> = BTreeMap::new();
    while let Ok((w, limits)) = rx.recv() {
        let limits = limits.or_else(|| stores.get(&w.workload).map(|s| s.1.clone())).unwrap_or_else(|| config.clone());
        if !stores.contains_key(&w.workload) {
            match RecordStore::open(&workload_dir(root, &w.workload), limits.clone()) {
                Ok((store, warnings)) => {
                    for warning in warnings {
                        c.problem(warning);
                    }
                    stores.insert(w.workload.clone(), (store, limits.clone()));
                }
                Err(e) => {
                    c.write_errors.fetch_add(1, Ordering::Relaxed);
                    c.problem(e.to_string());
                    continue;
                }
            }
        }
        let Some((store, current)) = stores.get_mut(&w.workload) else { continue };
        if *current != limits {
            match store.set_config(limits.clone()) {
                Ok(()) => *current = limits,
                Err(e) => c.problem(format!("{}: limits not changed: {e}", w.workload)),
            }
        }
        match store.append(&w) {
            Ok(deleted) => {
                c.written.fetch_add(1, Ordering::Relaxed);
                c.segments_deleted.fetch_add(deleted.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
                c.problem(e.to_string());
            }
        }
    }
    // Dropping the stores seals their open segments.
}
