//! The bounded, crash-safe store of one workload's [`TrafficWindow`]s: a directory of
//! append-only segment files, one JSON record per line.
//!
//! - The **open segment** `seg-<seq>.open` takes appends: each record is one
//!   `write` of its JSON line and `\n`, followed by `fdatasync`. A kill mid-write can
//!   leave a torn last line there, and only there.
//! - A segment is **sealed** when it reaches `segment_bytes` or spans `segment_age_s`:
//!   synced, renamed to `seg-<seq>-<first start ms>-<last end ms>.jsonl`, and the
//!   directory synced. A sealed segment is never written again, so it never holds a torn
//!   line; its name tells retention its time range without reading it.
//! - **Recovery** ([`RecordStore::open`]): an open segment left by a killed writer is
//!   sealed from its valid lines (copied to `seg-<seq>.tmp`, synced, renamed); a torn last
//!   line is skipped with a warning naming the file and line. Leftover `.tmp` files (a
//!   kill during recovery) are deleted; an open segment whose sealed copy already exists
//!   (a kill between rename and delete) is deleted.
//! - **Limits**: segments whose last record ended more than `retention_s` ago are
//!   deleted, then the oldest sealed segments until the directory holds at most
//!   `max_bytes`. Only whole segments are deleted.
//! - **Reading** ([`read_dir`]) never panics: a torn last line of an open segment is
//!   skipped with a warning; any other bad line is a [`RecordError::Corrupt`] naming the
//!   file and line.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::record::TrafficWindow;
use super::RecordError;

/// Limits of one workload's record.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// Most bytes the workload's segments may hold together.
    pub max_bytes: u64,
    /// Segments whose last window ended longer ago than this (seconds) are deleted.
    pub retention_s: f64,
    /// The open segment is sealed at this size (bytes).
    pub segment_bytes: u64,
    /// The open segment is sealed once its windows span this long (seconds).
    pub segment_age_s: f64,
}

impl Default for StoreConfig {
    /// 128 MiB (14 days of one window per 10 s hold about 93 MiB), 14 days, segments
    /// of 1 MiB or 6 hours.
    fn default() -> Self {
        StoreConfig {
            max_bytes: 128 << 20,
            retention_s: 14.0 * 86_400.0,
            segment_bytes: 1 << 20,
            segment_age_s: 6.0 * 3600.0,
        }
    }
}

impl StoreConfig {
    /// The limits a workload's `spec.learning.record` asks for: its `maxBytes` and
    /// `retentionSeconds`; segments of an eighth of `maxBytes` (4 KiB .. 1 MiB), sealed
    /// after a quarter of the retention at most (6 h at most, one window at least), so
    /// that the limits always have whole sealed segments to delete.
    pub fn from_spec(spec: &crate::crd::RecordSpec) -> StoreConfig {
        let retention_s = spec.retention_seconds as f64;
        StoreConfig {
            max_bytes: spec.max_bytes,
            retention_s,
            segment_bytes: (spec.max_bytes / 8).clamp(4096, 1 << 20),
            segment_age_s: (retention_s / 4.0).min(6.0 * 3600.0).max(f64::from(spec.window_seconds)),
        }
    }

    /// Checks the limits: positive, and `max_bytes` at least two segments (so that the
    /// open segment alone never exceeds it).
    pub fn validate(&self) -> Result<(), RecordError> {
        let bad = |field: &str, message: String| Err(RecordError::Config { field: field.into(), message });
        if self.segment_bytes == 0 {
            return bad("segmentBytes", "must be > 0".into());
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return bad(
                "maxBytes",
                format!("{} is less than two segments ({} bytes each)", self.max_bytes, self.segment_bytes),
            );
        }
        if !(self.retention_s.is_finite() && self.retention_s > 0.0) {
            return bad("retentionSeconds", format!("{} is not > 0", self.retention_s));
        }
        if !(self.segment_age_s.is_finite() && self.segment_age_s > 0.0) {
            return bad("segmentAgeSeconds", format!("{} is not > 0", self.segment_age_s));
        }
        Ok(())
    }
}

/// A segment file of a store directory.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentInfo {
    /// Its path.
    pub path: PathBuf,
    /// Sequence number (segments are ordered by it).
    pub seq: u64,
    /// Sealed (`.jsonl`) or open (`.open`).
    pub sealed: bool,
    /// Size in bytes.
    pub bytes: u64,
    /// End of its last window in Unix milliseconds (sealed segments only).
    pub last_end_ms: Option<i64>,
}

/// What [`read_dir`] found: the windows in segment order and the lines it skipped.
#[derive(Clone, Debug, Default)]
pub struct ReadOutcome {
    /// Every valid window, oldest segment first.
    pub windows: Vec<TrafficWindow>,
    /// Skipped torn lines and ignored files, each naming the file (and line).
    pub warnings: Vec<String>,
}

/// The segments of `dir`, ordered by sequence number; files that are not segments are
/// left out.
pub fn segments(dir: &Path) -> Result<Vec<SegmentInfo>, RecordError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| RecordError::io(dir, e))? {
        let entry = entry.map_err(|e| RecordError::io(dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some((seq, sealed, last_end_ms)) = parse_name(name) else { continue };
        let bytes = entry.metadata().map_err(|e| RecordError::io(&path, e))?.len();
        out.push(SegmentInfo { path, seq, sealed, bytes, last_end_ms });
    }
    out.sort_by_key(|s| (s.seq, !s.sealed));
    Ok(out)
}

/// `(seq, sealed, last end ms)` of a segment file name.
fn parse_name(name: &str) -> Option<(u64, bool, Option<i64>)> {
    let rest = name.strip_prefix("seg-")?;
    if let Some(seq) = rest.strip_suffix(".open") {
        return Some((seq.parse().ok()?, false, None));
    }
    let mut parts = rest.strip_suffix(".jsonl")?.split('-');
    let seq = parts.next()?.parse().ok()?;
    let _first: i64 = parts.next()?.parse().ok()?;
    let last: i64 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((seq, true, Some(last)))
}

fn open_name(seq: u64) -> String {
    format!("seg-{seq:010}.open")
}

fn sealed_name(seq: u64, first_ms: i64, last_ms: i64) -> String {
    format!("seg-{seq:010}-{first_ms}-{last_ms}.jsonl")
}

/// Parses one segment. Torn last lines (no trailing newline, or unreadable) of an open
/// segment become warnings; any other bad line is an error naming file and line.
fn read_segment(path: &Path, sealed: bool, warnings: &mut Vec<String>) -> Result<Vec<TrafficWindow>, RecordError> {
    let bytes = fs::read(path).map_err(|e| RecordError::io(path, e))?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let file = path.display().to_string();
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // `split` yields an empty piece after a trailing newline.
    let n = if complete { lines.len() - 1 } else { lines.len() };
    let mut out = Vec::with_capacity(n);
    for (i, raw) in lines.iter().take(n).enumerate() {
        let line = i + 1;
        let parsed = std::str::from_utf8(raw)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|s| serde_json::from_str::<TrafficWindow>(s).map_err(|e| e.to_string()))
            .and_then(|w| w.check().map(|_| w));
        match parsed {
            Ok(w) => out.push(w),
            // The last line of an open segment, or one without its newline: a write cut short.
            Err(message) if line == n && (!sealed || !complete) => {
                warnings.push(format!("{file}, line {line}: torn last line ({} bytes) skipped: {message}", raw.len()));
            }
            Err(message) => return Err(RecordError::Corrupt { file, line, message }),
        }
    }
    Ok(out)
}

/// Reads every window of a store directory (sealed and open segments), oldest first.
pub fn read_dir(dir: &Path) -> Result<ReadOutcome, RecordError> {
    let mut outcome = ReadOutcome::default();
    let segs = segments(dir)?;
    for (i, s) in segs.iter().enumerate() {
        // An open segment with a sealed copy of the same number was already recovered.
        if !s.sealed && i > 0 && segs[i - 1].seq == s.seq {
            continue;
        }
        let windows = read_segment(&s.path, s.sealed, &mut outcome.warnings)?;
        outcome.windows.extend(windows);
    }
    Ok(outcome)
}

/// Seconds of traffic recorded in `dir` after `since_unix_s` (the parts of windows that
/// end later), for deciding whether enough new traffic exists to retrain on. Sealed
/// segments whose last window ended before `since_unix_s` are not read; a directory that
/// does not exist holds nothing (0 s).
pub fn recorded_seconds_since(dir: &Path, since_unix_s: f64) -> Result<f64, RecordError> {
    if !dir.exists() {
        return Ok(0.0);
    }
    let since_ms = ms(since_unix_s);
    let segs = segments(dir)?;
    let mut total = 0.0;
    let mut warnings = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let old = s.last_end_ms.is_some_and(|last| last <= since_ms);
        let recovered = !s.sealed && i > 0 && segs[i - 1].seq == s.seq;
        if old || recovered {
            continue;
        }
        for w in read_segment(&s.path, s.sealed, &mut warnings)? {
            total += (w.end_unix_s() - w.start_unix_s.max(since_unix_s)).max(0.0);
        }
    }
    Ok(total)
}

fn sync_dir(dir: &Path) -> Result<(), RecordError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| RecordError::io(dir, e))
}

fn ms(t_s: f64) -> i64 {
    (t_s * 1000.0).round() as i64
}

/// The open segment being appended to.
struct OpenSegment {
    path: PathBuf,
    file: File,
    seq: u64,
    first_start_s: f64,
    last_end_s: f64,
    bytes: u64,
}

/// The writer of one workload's record directory.
pub struct RecordStore {
    dir: PathBuf,
    config: StoreConfig,
    open: Option<OpenSegment>,
    next_seq: u64,
}

impl RecordStore {
    /// Opens (creating) `dir`, recovers what a killed writer left, enforces no limits yet.
    /// Returns the store and the recovery's warnings (torn lines skipped, files removed).
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(RecordStore, Vec<String>), RecordError> {
        config.validate()?;
        fs::create_dir_all(dir).map_err(|e| RecordError::io(dir, e))?;
        let mut warnings = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| RecordError::io(dir, e))? {
            let path = entry.map_err(|e| RecordError::io(dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                fs::remove_file(&path).map_err(|e| RecordError::io(&path, e))?;
                warnings.push(format!("{}: unfinished recovery copy removed", path.display()));
            }
        }
        let segs = segments(dir)?;
        let mut next_seq = segs.iter().map(|s| s.seq + 1).max().unwrap_or(0);
        for (i, s) in segs.iter().enumerate() {
            if s.sealed {
                continue;
            }
            if i > 0 && segs[i - 1].seq == s.seq && segs[i - 1].sealed {
                fs::remove_file(&s.path).map_err(|e| RecordError::io(&s.path, e))?;
                warnings.push(format!("{}: already sealed, removed", s.path.display()));
                continue;
            }
            recover_open(dir, s, &mut warnings)?;
            next_seq = next_seq.max(s.seq + 1);
        }
        sync_dir(dir)?;
        Ok((RecordStore { dir: dir.to_path_buf(), config, open: None, next_seq }, warnings))
    }

    /// Replaces the limits (a spec edit); they apply from the next append.
    pub fn set_config(&mut self, config: StoreConfig) -> Result<(), RecordError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one window (one synced line), seals the open segment when it is full or old
    /// enough, and enforces the limits with the window's end as "now". Returns the
    /// segments the limits deleted.
    pub fn append(&mut self, w: &TrafficWindow) -> Result<Vec<PathBuf>, RecordError> {
        w.check().map_err(|message| RecordError::Config { field: "window".into(), message })?;
        let mut line = serde_json::to_vec(w).map_err(|e| RecordError::Export(e.to_string()))?;
        line.push(b'\n');
        if self.open.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let path = self.dir.join(open_name(seq));
            let file =
                OpenOptions::new().create_new(true).append(true).open(&path).map_err(|e| RecordError::io(&path, e))?;
            sync_dir(&self.dir)?;
            let (first_start_s, last_end_s) = (w.start_unix_s, w.end_unix_s());
            self.open = Some(OpenSegment { path, file, seq, first_start_s, last_end_s, bytes: 0 });
        }
        let seg = self.open.as_mut().expect("opened above");
        seg.file.write_all(&line).and_then(|_| seg.file.sync_data()).map_err(|e| RecordError::io(&seg.path, e))?;
        seg.bytes += line.len() as u64;
        seg.last_end_s = seg.last_end_s.max(w.end_unix_s());
        if seg.bytes >= self.config.segment_bytes || seg.last_end_s - seg.first_start_s >= self.config.segment_age_s {
            self.seal()?;
        }
        self.enforce_limits(w.end_unix_s())
    }

    /// Seals the open segment, if any (rename to its final name, directory synced).
    pub fn seal(&mut self) -> Result<(), RecordError> {
        let Some(seg) = self.open.take() else { return Ok(()) };
        seg.file.sync_all().map_err(|e| RecordError::io(&seg.path, e))?;
        let to = self.dir.join(sealed_name(seg.seq, ms(seg.first_start_s), ms(seg.last_end_s)));
        fs::rename(&seg.path, &to).map_err(|e| RecordError::io(&seg.path, e))?;
        sync_dir(&self.dir)
    }

    /// Deletes sealed segments older than the retention (their last window ended before
    /// `now_unix_s - retention_s`), then the oldest sealed segments while the directory
    /// holds more than `max_bytes`. Returns the deleted paths.
    pub fn enforce_limits(&mut self, now_unix_s: f64) -> Result<Vec<PathBuf>, RecordError> {
        let segs = segments(&self.dir)?;
        let horizon_ms = ms(now_unix_s - self.config.retention_s);
        let mut total: u64 = segs.iter().map(|s| s.bytes).sum();
        let mut deleted = Vec::new();
        for s in segs.iter().filter(|s| s.sealed) {
            let expired = s.last_end_ms.is_some_and(|t| t < horizon_ms);
            if expired || total > self.config.max_bytes {
                fs::remove_file(&s.path).map_err(|e| RecordError::io(&s.path, e))?;
                total -= s.bytes;
                deleted.push(s.path.clone());
            }
        }
        if !deleted.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}

impl Drop for RecordStore {
    fn drop(&mut self) {
        // Best effort: a writer that stops cleanly leaves no open segment to recover.
        let _ = self.seal();
    }
}

/// Seals an open segment left by a killed writer from its valid lines.
fn recover_open(dir: &Path, s: &SegmentInfo, warnings: &mut Vec<String>) -> Result<(), RecordError> {
    let windows = match read_segment(&s.path, false, warnings) {
        Ok(w) => w,
        Err(e) => {
            // A bad line before the last: keep the file aside, named, for a person to look at.
            let aside = s.path.with_extension("corrupt");
            fs::rename(&s.path, &aside).map_err(|e| RecordError::io(&s.path, e))?;
            warnings.push(format!("{e}; segment set aside as {}", aside.display()));
            return Ok(());
        }
    };
    if windows.is_empty() {
        fs::remove_file(&s.path).map_err(|e| RecordError::io(&s.path, e))?;
        warnings.push(format!("{}: no complete record, removed", s.path.display()));
        return Ok(());
    }
    let mut body = Vec::new();
    for w in &windows {
        serde_json::to_writer(&mut body, w).map_err(|e| RecordError::Export(e.to_string()))?;
        body.push(b'\n');
    }
    let tmp = dir.join(format!("seg-{:010}.tmp", s.seq));
    let mut f = File::create(&tmp).map_err(|e| RecordError::io(&tmp, e))?;
    f.write_all(&body).and_then(|_| f.sync_all()).map_err(|e| RecordError::io(&tmp, e))?;
    let first = windows.iter().map(|w| w.start_unix_s).fold(f64::INFINITY, f64::min);
    let last = windows.iter().map(|w| w.end_unix_s()).fold(f64::NEG_INFINITY, f64::max);
    let to = dir.join(sealed_name(s.seq, ms(first), ms(last)));
    fs::rename(&tmp, &to).map_err(|e| RecordError::io(&tmp, e))?;
    sync_dir(dir)?;
    fs::remove_file(&s.path).map_err(|e| RecordError::io(&s.path, e))?;
    Ok(())
}
