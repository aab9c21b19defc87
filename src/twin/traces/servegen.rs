//! ServeGen traffic: a reader for Alibaba's 14-day per-client traces and a lazy, seeded
//! arrival generator that replays days of real traffic in the twin.
//!
//! ServeGen (Alibaba Cloud Model Studio, arXiv 2505.09999) publishes, per service and client,
//! one row per 10-minute window: the client's request rate, the coefficient of variation of
//! its inter-arrival times and the distribution fitted to them (Gamma or Weibull, with shape
//! and scale), plus for some clients the token-length distributions of every 6-hour block.
//! See `data/traces/SOURCES.md` for where the files live and their exact format.
//!
//! - [`ServegenData::load`] reads a service folder (`chunk-<id>-trace.csv`, optional
//!   `chunk-<id>-dataset.json`), all clients or a filter; errors name file, line and field
//!   (trace rows) or file, line and key (length files). Nothing here panics on bad input.
//! - [`ServegenStream`] generates the arrivals of a slice of the recording (seconds from its
//!   start), at a load factor, window by window; see its documentation for the exact
//!   sampling (request counts, first arrival, lengths). Memory holds one 10-minute window
//!   of the selected clients at a time, never the whole recording.
//! - [`ServegenStats`] summarises a folder (hourly profile, peak/trough per day) for
//!   `llmos trace-stats`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, Weibull};
use serde::Serialize;

use super::arrival::Arrival;
use crate::twin::time::Nanos;
use crate::twin::TwinError;

/// Length of one trace window, seconds.
pub const WINDOW_S: u64 = 600;
/// Length of one token-length block of a dataset file, seconds (6 h).
pub const BLOCK_S: u64 = 21_600;
/// Windows beyond this index are rejected as malformed (about 19 years).
pub const MAX_WINDOWS: u64 = 1_000_000;
/// Most requests one 10-minute window of the selected clients may hold after the load
/// factor (the generator's memory bound: about 24 bytes per request).
pub const MAX_WINDOW_REQUESTS: u64 = 10_000_000;

const WINDOW_NS: u64 = WINDOW_S * 1_000_000_000;

/// The columns of a trace row, in order (named in errors).
pub const TRACE_FIELDS: [&str; 6] =
    ["window_start_s", "rate_req_per_s", "cv_of_interarrival", "family", "shape", "scale"];

fn err(file: &str, line: usize, message: impl Into<String>) -> TwinError {
    TwinError::Trace { file: file.to_string(), line, message: message.into() }
}

/// The distribution fitted to a window's inter-arrival times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Family {
    /// Gamma(shape, scale): `scipy.stats.gamma(a=shape, scale=scale)`.
    Gamma,
    /// Weibull(shape, scale): `scipy.stats.weibull_min(c=shape, scale=scale)`.
    Weibull,
}

impl Family {
    /// The family of a trace row's `family` field (`Gamma`, `Weibull`), if known.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "Gamma" => Some(Family::Gamma),
            "Weibull" => Some(Family::Weibull),
            _ => None,
        }
    }

    /// Raw moment `E[X^r]` of the distribution with this `shape` and scale 1:
    /// Gamma `Γ(k + r) / Γ(k)`, Weibull `Γ(1 + r / k)`.
    pub fn moment(self, shape: f64, r: f64) -> f64 {
        match self {
            Family::Gamma => (ln_gamma(shape + r) - ln_gamma(shape)).exp(),
            Family::Weibull => ln_gamma(1.0 + r / shape).exp(),
        }
    }

    /// Coefficient of variation of the distribution with this `shape` (independent of the
    /// scale): Gamma `1/√k`; Weibull `√(Γ(1 + 2/k) / Γ(1 + 1/k)² − 1)`.
    ///
    /// For Gamma fits this equals the trace's `cv_of_interarrival` column; for Weibull fits
    /// the column holds the measured CV, which the fitted shape often does not reproduce
    /// (the generator follows the fitted distribution, as upstream does).
    pub fn cv(self, shape: f64) -> f64 {
        match self {
            Family::Gamma => 1.0 / shape.sqrt(),
            Family::Weibull => {
                let r = (ln_gamma(1.0 + 2.0 / shape) - 2.0 * ln_gamma(1.0 + 1.0 / shape)).exp();
                (r - 1.0).max(0.0).sqrt()
            }
        }
    }
}

/// Natural logarithm of the Gamma function for `x > 0` (Lanczos, g = 7, 9 terms; relative
/// error below 1e-13 over the range the fitted shapes need).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let s = (std::f64::consts::PI * x).sin();
        return (std::f64::consts::PI / s.abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// One 10-minute window of one client, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize)]
pub struct WindowFit {
    /// Mean request rate over the window, requests per second (0 when silent).
    pub rate_rps: f64,
    /// Measured coefficient of variation of the inter-arrival times.
    pub cv: f64,
    /// Fitted inter-arrival distribution (`None` when the client was silent).
    pub family: Option<Family>,
    /// Fitted shape (> 0 when `family` is set).
    pub shape: f64,
    /// Fitted scale, seconds (> 0 when `family` is set; it cancels in the rescaling).
    pub scale: f64,
}

impl WindowFit {
    /// Requests this window holds at `load`: `round(rate_rps × 600 × load)`, rounding half
    /// away from zero (`f64::round`); 0 for silent windows.
    pub fn requests(&self, load: f64) -> u64 {
        if self.family.is_none() {
            return 0;
        }
        let n = (self.rate_rps * WINDOW_S as f64 * load).round();
        if n.is_finite() && n > 0.0 {
            n.min(u64::MAX as f64) as u64
        } else {
            0
        }
    }
}

fn parse_f64(field: &str, file: &str, line: usize, col: usize) -> Result<f64, TwinError> {
    let f = field.trim();
    f.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
        err(file, line, format!("field `{}` (column {}): `{f}` is not a finite number", TRACE_FIELDS[col], col + 1))
    })
}

/// Parses a `chunk-<id>-trace.csv` file (no header; CRLF or LF line endings; blank lines
/// skipped) into windows indexed by `window_start_s / 600`. Windows missing from the file
/// are silent. `file` names the file in errors, which give its line and the field.
pub fn parse_trace(text: &str, file: &str) -> Result<Vec<WindowFit>, TwinError> {
    let mut out: Vec<WindowFit> = Vec::new();
    let mut last: Option<u64> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let row = raw.trim_end_matches('\r');
        if row.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = row.split(',').collect();
        if f.len() != TRACE_FIELDS.len() {
            return Err(err(
                file,
                line,
                format!("expected {} fields ({}), found {}", TRACE_FIELDS.len(), TRACE_FIELDS.join(", "), f.len()),
            ));
        }
        let ts = parse_f64(f[0], file, line, 0)?;
        let fname = |c: usize| format!("field `{}` (column {})", TRACE_FIELDS[c], c + 1);
        if ts < 0.0 || ts.fract() != 0.0 || ts % WINDOW_S as f64 != 0.0 || ts / WINDOW_S as f64 >= MAX_WINDOWS as f64 {
            return Err(err(
                file,
                line,
                format!(
                    "{}: `{}` is not a non-negative multiple of {WINDOW_S} s below {} s",
                    fname(0),
                    f[0].trim(),
                    MAX_WINDOWS * WINDOW_S
                ),
            ));
        }
        let w = (ts / WINDOW_S as f64) as u64;
        if last.is_some_and(|l| w <= l) {
            return Err(err(file, line, format!("{}: {} s does not follow the previous row's window", fname(0), ts)));
        }
        last = Some(w);
        let rate = parse_f64(f[1], file, line, 1)?;
        if rate < 0.0 {
            return Err(err(file, line, format!("{}: rate {rate} is negative", fname(1))));
        }
        let cv = parse_f64(f[2], file, line, 2)?;
        if cv < 0.0 {
            return Err(err(file, line, format!("{}: {cv} is negative", fname(2))));
        }
        let fam = f[3].trim();
        let family = if fam.is_empty() {
            None
        } else {
            Some(Family::parse(fam).ok_or_else(|| {
                err(file, line, format!("{}: unknown family `{fam}` (expected `Gamma`, `Weibull` or empty)", fname(3)))
            })?)
        };
        let shape = parse_f64(f[4], file, line, 4)?;
        let scale = parse_f64(f[5], file, line, 5)?;
        match family {
            Some(_) => {
                if shape <= 0.0 {
                    return Err(err(file, line, format!("{}: {shape} must be > 0 for a fitted window", fname(4))));
                }
                if scale <= 0.0 {
                    return Err(err(file, line, format!("{}: {scale} must be > 0 for a fitted window", fname(5))));
                }
            }
            None if rate > 0.0 => {
                return Err(err(
                    file,
                    line,
                    format!(
                        "{}: empty, but the rate is {rate} req/s: a window with traffic needs a fitted family",
                        fname(3)
                    ),
                ));
            }
            None => {}
        }
        let w = w as usize;
        if out.len() <= w {
            out.resize(w + 1, WindowFit::default());
        }
        out[w] = WindowFit { rate_rps: rate, cv, family, shape, scale };
    }
    if out.is_empty() {
        return Err(err(file, 0, "no rows"));
    }
    Ok(out)
}

/// A token-length distribution (probability mass function), ready to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Pmf {
    tokens: Vec<u32>,
    cum: Vec<f64>,
}

impl Pmf {
    /// Parses a Python dict literal `{tokens: probability, ...}` (integer keys, float values
    /// as Python prints them, e.g. `1e-05`; whitespace and a trailing comma allowed; `{}` is
    /// the empty distribution). Probabilities must be finite and >= 0; they are normalised
    /// by their sum. `what` names the file, line and key in errors.
    pub fn parse_py_dict(text: &str, file: &str, line: usize, what: &str) -> Result<Pmf, TwinError> {
        let bad = |m: String| err(file, line, format!("{what}: {m}"));
        let t = text.trim();
        let inner = t
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(|| bad(format!("`{}` is not a dict literal `{{tokens: probability, ...}}`", clip(t))))?;
        let mut pairs: Vec<(u32, f64)> = Vec::new();
        let entries: Vec<&str> = inner.split(',').map(str::trim).collect();
        let last = entries.iter().rposition(|e| !e.is_empty());
        for (i, &e) in entries.iter().enumerate() {
            if e.is_empty() {
                // `{}` and a trailing comma; an empty entry in the middle is an error.
                if last.is_none_or(|l| i > l) {
                    continue;
                }
                return Err(bad(format!("entry {} is empty", i + 1)));
            }
            let (k, v) = e.split_once(':').ok_or_else(|| bad(format!("entry {} (`{}`) has no `:`", i + 1, clip(e))))?;
            let (k, v) = (k.trim(), v.trim());
            let key = k
                .parse::<u32>()
                .ok()
                .or_else(|| {
                    k.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0 && x.fract() == 0.0 && *x <= u32::MAX as f64)
                        .map(|x| x as u32)
                })
                .ok_or_else(|| bad(format!("entry {}: key `{}` is not a token count", i + 1, clip(k))))?;
            let p = v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
                bad(format!(
                    "entry {} (token count {key}): probability `{}` is not a finite number >= 0",
                    i + 1,
                    clip(v)
                ))
            })?;
            pairs.push((key, p));
        }
        pairs.sort_by_key(|p| p.0);
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(bad(format!("token count {} appears twice", w[0].0)));
        }
        let mut cum = Vec::with_capacity(pairs.len());
        let mut s = 0.0;
        for (_, p) in &pairs {
            s += p;
            cum.push(s);
        }
        if !pairs.is_empty() && !(s > 0.0 && s.is_finite()) {
            return Err(bad(format!("probabilities sum to {s}, need > 0")));
        }
        Ok(Pmf { tokens: pairs.into_iter().map(|p| p.0).collect(), cum })
    }

    /// A distribution from `(tokens, weight)` pairs (weights >= 0, not all zero).
    pub fn from_pairs(pairs: &[(u32, f64)]) -> Option<Pmf> {
        let mut v: Vec<(u32, f64)> = pairs.to_vec();
        v.sort_by_key(|p| p.0);
        let mut cum = Vec::with_capacity(v.len());
        let mut s = 0.0;
        for (_, p) in &v {
            if !(p.is_finite() && *p >= 0.0) {
                return None;
            }
            s += p;
            cum.push(s);
        }
        (s > 0.0).then(|| Pmf { tokens: v.into_iter().map(|p| p.0).collect(), cum })
    }

    /// True for `{}`.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Mean tokens. Each probability is divided by the total before it is weighed, so
    /// weights near `f64::MAX` (the file's probabilities need not sum to 1) cannot
    /// overflow the sum.
    pub fn mean(&self) -> f64 {
        let total = self.cum.last().copied().unwrap_or(0.0);
        if total <= 0.0 {
            return 0.0;
        }
        let mut prev = 0.0;
        let mut m = 0.0;
        for (t, c) in self.tokens.iter().zip(&self.cum) {
            m += *t as f64 * ((c - prev) / total);
            prev = *c;
        }
        m
    }

    /// Draws a token count (0 for an empty distribution).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let Some(&total) = self.cum.last() else { return 0 };
        let u = rng.random::<f64>() * total;
        let i = self.cum.partition_point(|&c| c <= u).min(self.tokens.len() - 1);
        self.tokens[i]
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Prompt and output token distributions of one client in one 6-hour block.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthBlock {
    /// Prompt tokens.
    pub input: Pmf,
    /// Output tokens.
    pub output: Pmf,
}

/// Parses a `chunk-<id>-dataset.json` file: `{window_start_s: {"input_tokens": "<pmf>",
/// "output_tokens": "<pmf>"}}`, one entry per 6-hour block, each pmf a Python dict literal
/// string (see [`Pmf::parse_py_dict`]). Keys must be multiples of 21,600 s. Blocks where
/// either pmf is `{}` (the client was silent) are left out. Other fields are ignored.
/// Errors name the file, the line of the key and the key.
pub fn parse_dataset(text: &str, file: &str) -> Result<BTreeMap<u64, LengthBlock>, TwinError> {
    let v: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| err(file, e.line(), format!("not a JSON object of blocks: {e}")))?;
    let line_of =
        |key: &str| text.find(&format!("\"{key}\"")).map(|p| text[..p].matches('\n').count() + 1).unwrap_or(0);
    let mut out = BTreeMap::new();
    for (key, block) in &v {
        let line = line_of(key);
        let t: u64 = key
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|t: &u64| *t % BLOCK_S == 0 && *t / WINDOW_S < MAX_WINDOWS)
            .ok_or_else(|| {
                err(
                    file,
                    line,
                    format!("key \"{}\" is not a window start that is a multiple of {BLOCK_S} s", clip(key)),
                )
            })?;
        let obj = block.as_object().ok_or_else(|| {
            err(file, line, format!("key \"{key}\": expected an object with input_tokens and output_tokens"))
        })?;
        let get = |name: &str| -> Result<Pmf, TwinError> {
            let s = obj
                .get(name)
                .ok_or_else(|| err(file, line, format!("key \"{key}\": field \"{name}\" is missing")))?
                .as_str()
                .ok_or_else(|| err(file, line, format!("key \"{key}\": field \"{name}\" is not a string")))?;
            Pmf::parse_py_dict(s, file, line, &format!("key \"{key}\", field \"{name}\""))
        };
        let input = get("input_tokens")?;
        let output = get("output_tokens")?;
        if !input.is_empty() && !output.is_empty() {
            out.insert(t, LengthBlock { input, output });
        }
    }
    Ok(out)
}

/// One client of a service: its windows and, where a dataset file exists, its lengths.
#[derive(Clone, Debug)]
pub struct Client {
    /// The `<id>` of `chunk-<id>-trace.csv`.
    pub id: u32,
    /// Windows by index (`window_start_s / 600`).
    pub windows: Vec<WindowFit>,
    /// Token lengths by block start (seconds), non-empty blocks only; `None` when the
    /// client has no dataset file.
    pub lengths: Option<BTreeMap<u64, LengthBlock>>,
}

impl Client {
    /// Requests (at ×1) the client sent in `[t0, t1)` seconds, by whole windows.
    pub fn requests_between(&self, t0: u64, t1: u64) -> f64 {
        let (a, b) = ((t0 / WINDOW_S) as usize, (t1.div_ceil(WINDOW_S) as usize).min(self.windows.len()));
        self.windows.get(a..b).map(|w| w.iter().map(|x| x.rate_rps * WINDOW_S as f64).sum()).unwrap_or(0.0)
    }
}

/// Request-weighted choice of a donor (client, block) for pooled lengths.
#[derive(Clone, Debug, Default)]
struct Pool {
    entries: Vec<(usize, u64)>,
    cum: Vec<f64>,
}

impl Pool {
    fn build(entries: Vec<((usize, u64), f64)>) -> Pool {
        let total: f64 = entries.iter().map(|e| e.1).sum();
        let equal = !(total > 0.0 && total.is_finite());
        let mut cum = Vec::with_capacity(entries.len());
        let mut s = 0.0;
        for (_, w) in &entries {
            s += if equal { 1.0 } else { *w };
            cum.push(s);
        }
        Pool { entries: entries.into_iter().map(|e| e.0).collect(), cum }
    }
    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<(usize, u64)> {
        let total = *self.cum.last()?;
        let u = rng.random::<f64>() * total;
        let i = self.cum.partition_point(|&c| c <= u).min(self.entries.len() - 1);
        Some(self.entries[i])
    }
}

/// Where a client's lengths come from in a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LengthSource {
    /// The client's own distribution for that block.
    Own,
    /// The pooled distribution of that block (the client has no file, or `{}` there).
    PooledBlock,
    /// The pooled distribution of the whole recording (no client has lengths for the block).
    PooledRecording,
    /// Nothing to draw from: the folder has no token lengths at all.
    None,
}

/// A loaded ServeGen service folder (e.g. `language/m-small`).
pub struct ServegenData {
    /// The folder (for messages).
    pub origin: String,
    /// Loaded clients sorted by id: the selected ones and every client with a dataset file
    /// (the donors of pooled lengths).
    pub clients: Vec<Client>,
    /// Indices into `clients` of the selected clients, by id.
    pub selected: Vec<usize>,
    pools: BTreeMap<u64, Pool>,
    pool_all: Pool,
    windows: usize,
}

impl std::fmt::Debug for ServegenData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServegenData")
            .field("origin", &self.origin)
            .field("clients", &self.clients.len())
            .field("selected", &self.selected.len())
            .field("windows", &self.windows)
            .finish()
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TwinError {
    TwinError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// `chunk-<id>-<suffix>` → id.
fn chunk_id(name: &str, suffix: &str) -> Option<u32> {
    name.strip_prefix("chunk-")?.strip_suffix(suffix)?.parse().ok()
}

impl ServegenData {
    /// Reads a service folder. `clients` selects client ids (empty: every client with a
    /// trace file); an id without a trace file is a [`TwinError::Config`] error with field
    /// `clients` naming it. Dataset files of all
    /// clients are read (they feed the pooled lengths), with the trace files of those
    /// clients (their request counts weight the pool).
    pub fn load(dir: &Path, clients: &[u32]) -> Result<ServegenData, TwinError> {
        let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, format!("cannot read ServeGen folder: {e}")))?;
        let mut traces: BTreeMap<u32, PathBuf> = BTreeMap::new();
        let mut datasets: BTreeMap<u32, PathBuf> = BTreeMap::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(id) = chunk_id(&name, "-trace.csv") {
                traces.insert(id, entry.path());
            } else if let Some(id) = chunk_id(&name, "-dataset.json") {
                datasets.insert(id, entry.path());
            }
        }
        if traces.is_empty() {
            return Err(io_err(dir, "no chunk-<id>-trace.csv files: not a ServeGen service folder"));
        }
        for id in datasets.keys() {
            if !traces.contains_key(id) {
                return Err(io_err(&datasets[id], format!("client {id} has no chunk-{id}-trace.csv")));
            }
        }
        let want: Vec<u32> = if clients.is_empty() { traces.keys().copied().collect() } else { clients.to_vec() };
        for id in &want {
            if !traces.contains_key(id) {
                return Err(TwinError::Config {
                    field: "clients".into(),
                    message: format!("client {id}: no chunk-{id}-trace.csv in {}", dir.display()),
                });
            }
        }
        let mut ids: Vec<u32> = want.iter().chain(datasets.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut loaded = Vec::with_capacity(ids.len());
        for id in ids {
            let p = &traces[&id];
            let text = std::fs::read_to_string(p).map_err(|e| io_err(p, e))?;
            let windows = parse_trace(&text, &p.display().to_string())?;
            let lengths = match datasets.get(&id) {
                Some(d) => {
                    let text = std::fs::read_to_string(d).map_err(|e| io_err(d, e))?;
                    Some(parse_dataset(&text, &d.display().to_string())?)
                }
                None => None,
            };
            loaded.push(Client { id, windows, lengths });
        }
        let mut selected: Vec<usize> =
            loaded.iter().enumerate().filter(|(_, c)| want.contains(&c.id)).map(|(i, _)| i).collect();
        selected.sort_by_key(|&i| loaded[i].id);
        Ok(Self::from_clients(dir.display().to_string(), loaded, selected))
    }

    /// Builds the data from parsed clients (`selected` indexes `clients`); pools are built
    /// from every client with lengths.
    pub fn from_clients(origin: String, clients: Vec<Client>, selected: Vec<usize>) -> ServegenData {
        let mut per_block: BTreeMap<u64, Vec<((usize, u64), f64)>> = BTreeMap::new();
        let mut all = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            if let Some(l) = &c.lengths {
                for &b in l.keys() {
                    let w = c.requests_between(b, b + BLOCK_S);
                    per_block.entry(b).or_default().push(((i, b), w));
                    all.push(((i, b), w));
                }
            }
        }
        let pools = per_block.into_iter().map(|(b, e)| (b, Pool::build(e))).collect();
        let windows = clients.iter().map(|c| c.windows.len()).max().unwrap_or(0);
        ServegenData { origin, clients, selected, pools, pool_all: Pool::build(all), windows }
    }

    /// Windows of the recording (the longest client's).
    pub fn windows(&self) -> usize {
        self.windows
    }

    /// Length of the recording, seconds.
    pub fn span_s(&self) -> f64 {
        (self.windows as u64 * WINDOW_S) as f64
    }

    /// The selected clients, by id.
    pub fn selected_clients(&self) -> impl Iterator<Item = &Client> + '_ {
        self.selected.iter().map(move |&i| &self.clients[i])
    }

    /// A loaded client by id.
    pub fn client(&self, id: u32) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    /// Aggregate rate of the selected clients in window `w` at ×1, requests per second.
    pub fn rate_rps(&self, w: usize) -> f64 {
        self.selected_clients().filter_map(|c| c.windows.get(w)).map(|x| x.rate_rps).sum()
    }

    /// Where client `clients[ci]`'s lengths come from in the block starting at `block_s`.
    pub fn length_source(&self, ci: usize, block_s: u64) -> LengthSource {
        if self.clients[ci].lengths.as_ref().is_some_and(|l| l.contains_key(&block_s)) {
            LengthSource::Own
        } else if self.pools.contains_key(&block_s) {
            LengthSource::PooledBlock
        } else if !self.pool_all.entries.is_empty() {
            LengthSource::PooledRecording
        } else {
            LengthSource::None
        }
    }

    fn block(&self, ci: usize, b: u64) -> Option<&LengthBlock> {
        self.clients.get(ci)?.lengths.as_ref()?.get(&b)
    }

    /// Draws (prompt, output) tokens for client `clients[ci]` in the block starting at
    /// `block_s`; both at least 1.
    fn sample_lengths<R: Rng + ?Sized>(&self, ci: usize, block_s: u64, rng: &mut R) -> (u32, u32) {
        let lb = match self.block(ci, block_s) {
            Some(lb) => Some(lb),
            None => self.pools.get(&block_s).unwrap_or(&self.pool_all).pick(rng).and_then(|(d, b)| self.block(d, b)),
        };
        match lb {
            Some(lb) => (lb.input.sample(rng).max(1), lb.output.sample(rng).max(1)),
            None => (1, 1),
        }
    }
}

/// The seeded generator of one ServeGen slice: arrivals of the selected clients, in time
/// order, generated lazily one 10-minute window at a time.
///
/// For each selected client and each window `w` (start `600 w` s) with a fitted family:
///
/// 1. **Count.** The window holds exactly `n = round(rate × 600 × load)` requests
///    ([`WindowFit::requests`]: `f64::round`, halves away from zero), as upstream ServeGen
///    does; a silent window holds none.
/// 2. **Times.** `n + 1` inter-arrival gaps `g₀ … gₙ` are drawn i.i.d. from the fitted
///    family with the fitted shape (Gamma(shape) or Weibull(shape); the scale is set to 1
///    because it cancels) and rescaled so that they fill the window exactly: arrival `k`
///    (`k = 1 … n`) is at `600 w + 600 · (g₀ + … + g_{k−1}) / (g₀ + … + gₙ)` seconds. So the
///    **first arrival comes one (rescaled) gap after the window start**, like upstream's
///    `cumsum(iats) + ts`, and the last gap `gₙ` ends at the window's end, so all `n`
///    arrivals fall inside the window (upstream rescales `n` gaps to fill it, which puts the
///    last arrival on the boundary, where its filter drops it). The gaps between
///    consecutive arrivals keep the fitted distribution's CV. Should every gap underflow
///    to 0 (shapes near 0.01), the arrivals are spread evenly instead.
///    Times are rounded to whole nanoseconds (and kept inside the window).
/// 3. **Lengths.** Prompt and output tokens are drawn independently from the client's
///    pmfs for the 6-hour block holding the window. A client without a dataset file, or
///    with `{}` in that block, draws from the **pooled** distribution of the block: the
///    request-weighted mixture of every client of the folder that has lengths for that
///    block (a donor client is picked with probability proportional to its requests in the
///    block at ×1, then both lengths come from its pmfs). If no client has lengths for the
///    block, the mixture over all blocks of the recording is used. Lengths are at least 1.
///
/// Clients are superposed in time order; equal nanoseconds keep client-id order. Every
/// (client, window) has its own ChaCha8 stream keyed by (seed, client id, window index), so
/// the same seed gives identical arrivals, and a slice or a client subset gives exactly the
/// arrivals the full run gives in that slice for those clients. Times are relative to the
/// slice start; arrivals outside `[start_s, end_s)` are dropped. Memory: the arrivals of one
/// window of the selected clients (at most [`MAX_WINDOW_REQUESTS`]).
#[derive(Debug)]
pub struct ServegenStream {
    data: Arc<ServegenData>,
    seed: u64,
    load: f64,
    start_ns: u64,
    end_ns: u64,
    next_window: usize,
    end_window: usize,
    /// (absolute ns, position in `data.selected`, prompt, output), sorted by time.
    buf: Vec<(u64, u32, u32, u32)>,
    pos: usize,
    gaps: Vec<f64>,
    remaining: Option<u64>,
}

fn window_rng(seed: u64, client: u32, window: u64) -> ChaCha8Rng {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_le_bytes());
    k[8..12].copy_from_slice(&client.to_le_bytes());
    k[12..20].copy_from_slice(&window.to_le_bytes());
    k[24..32].copy_from_slice(b"servegen");
    ChaCha8Rng::from_seed(k)
}

impl ServegenStream {
    /// Arrivals of the selected clients in `[start_s, end_s)` seconds of the recording
    /// (clamped to its span), counts scaled by `load`, seeded by `seed`.
    pub fn new(
        data: Arc<ServegenData>,
        seed: u64,
        start_s: f64,
        end_s: f64,
        load: f64,
    ) -> Result<ServegenStream, TwinError> {
        let cfg = |field: &str, message: String| TwinError::Config { field: field.into(), message };
        if !(load.is_finite() && load > 0.0) {
            return Err(cfg("load", format!("load factor must be > 0, got {load}")));
        }
        if !(start_s.is_finite() && end_s.is_finite() && start_s >= 0.0 && end_s > start_s) {
            return Err(cfg("window", format!("need 0 <= start < end seconds, got [{start_s}, {end_s})")));
        }
        let span = data.span_s();
        let start_ns = Nanos::from_secs_f64(start_s.min(span)).0;
        let end_ns = Nanos::from_secs_f64(end_s.min(span)).0;
        let first = (start_ns / WINDOW_NS) as usize;
        let last = (end_ns.div_ceil(WINDOW_NS) as usize).min(data.windows);
        let mut total = 0u64;
        let mut needs_pool = false;
        for w in first..last {
            let mut n = 0u64;
            for &ci in &data.selected {
                let c = &data.clients[ci];
                let k = c.windows.get(w).map(|x| x.requests(load)).unwrap_or(0);
                if k > 0
                    && c.lengths.as_ref().is_none_or(|l| !l.contains_key(&(w as u64 * WINDOW_S / BLOCK_S * BLOCK_S)))
                {
                    needs_pool = true;
                }
                n = n.saturating_add(k);
            }
            if n > MAX_WINDOW_REQUESTS {
                return Err(cfg(
                    "load",
                    format!(
                        "{}: window {w} ({} s) would hold {n} requests at load {load}, more than {MAX_WINDOW_REQUESTS}: lower the load or select fewer clients",
                        data.origin,
                        w as u64 * WINDOW_S
                    ),
                ));
            }
            total = total.saturating_add(n);
        }
        if needs_pool && data.pool_all.entries.is_empty() {
            return Err(TwinError::Io {
                path: data.origin.clone(),
                message: "a selected client has no token lengths (no chunk-<id>-dataset.json or `{}` blocks) and no client of the folder has any to pool".into(),
            });
        }
        let aligned = start_ns % WINDOW_NS == 0 && (end_ns % WINDOW_NS == 0 || last == data.windows);
        Ok(ServegenStream {
            data,
            seed,
            load,
            start_ns,
            end_ns,
            next_window: first,
            end_window: last,
            buf: Vec::new(),
            pos: 0,
            gaps: Vec::new(),
            remaining: aligned.then_some(total),
        })
    }

    fn fill(&mut self, w: usize) {
        self.buf.clear();
        self.pos = 0;
        let data = &self.data;
        let w0 = w as u64 * WINDOW_NS;
        let block = w as u64 * WINDOW_S / BLOCK_S * BLOCK_S;
        for (si, &ci) in data.selected.iter().enumerate() {
            let c = &data.clients[ci];
            let Some(fit) = c.windows.get(w) else { continue };
            let n = fit.requests(self.load) as usize;
            let Some(family) = fit.family else { continue };
            if n == 0 {
                continue;
            }
            let mut rng = window_rng(self.seed, c.id, w as u64);
            self.gaps.clear();
            let mut s = 0.0f64;
            match family {
                Family::Gamma => {
                    if let Ok(d) = Gamma::new(fit.shape, 1.0) {
                        for _ in 0..=n {
                            self.gaps.push(s);
                            s += d.sample(&mut rng);
                        }
                    }
                }
                Family::Weibull => {
                    if let Ok(d) = Weibull::new(1.0, fit.shape) {
                        for _ in 0..=n {
                            self.gaps.push(s);
                            s += d.sample(&mut rng);
                        }
                    }
                }
            }
            // `gaps[k]` now holds g₀ + … + g_{k−1} (gaps[0] = 0) and `s` the sum of all n + 1.
            if self.gaps.len() != n + 1 || !(s > 0.0 && s.is_finite()) {
                self.gaps.clear();
                self.gaps.extend((0..=n).map(|k| k as f64));
                s = (n + 1) as f64;
            }
            let scale = WINDOW_NS as f64 / s;
            for k in 1..=n {
                let off = ((self.gaps[k] * scale).round() as u64).min(WINDOW_NS - 1);
                let (i, o) = data.sample_lengths(ci, block, &mut rng);
                self.buf.push((w0 + off, si as u32, i, o));
            }
        }
        // Stable: each client's arrivals are in order and clients were appended by id.
        self.buf.sort_by_key(|a| a.0);
        let (a, b) = (self.start_ns, self.end_ns);
        if w0 < a || w0 + WINDOW_NS > b {
            self.buf.retain(|x| x.0 >= a && x.0 < b);
        }
    }

    /// The next arrival with the id of the client that sent it, or `None` at the end.
    pub fn next_with_client(&mut self) -> Option<(u32, Arrival)> {
        while self.pos >= self.buf.len() {
            if self.next_window >= self.end_window {
                return None;
            }
            let w = self.next_window;
            self.next_window += 1;
            self.fill(w);
        }
        let (t, si, i, o) = self.buf[self.pos];
        self.pos += 1;
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(1);
        }
        let id = self.data.clients[self.data.selected[si as usize]].id;
        Some((id, Arrival { at: Nanos(t - self.start_ns), input_tokens: i, output_tokens: o, hash_ids: Vec::new() }))
    }

    /// The next arrival, or `None` at the end.
    pub fn next_arrival(&mut self) -> Option<Arrival> {
        self.next_with_client().map(|x| x.1)
    }

    /// Requests left, when the slice starts and ends on window boundaries (otherwise the
    /// arrivals of the partial windows are known only once generated).
    pub fn len_hint(&self) -> Option<u64> {
        self.remaining
    }
}

/// Peak and trough of one day's hourly rates.
#[derive(Clone, Debug, Serialize)]
pub struct DayStats {
    /// Day of the recording, from 0.
    pub day: usize,
    /// Mean rate over the day, req/s.
    pub mean_rps: f64,
    /// Busiest hour's mean rate, req/s.
    pub peak_hour_rps: f64,
    /// Quietest hour's mean rate, req/s.
    pub trough_hour_rps: f64,
    /// Peak over trough (`None` when the trough is 0).
    pub peak_over_trough: Option<f64>,
}

/// Summary of a ServeGen folder at ×1 (what `llmos trace-stats DIR` prints).
#[derive(Clone, Debug, Serialize)]
pub struct ServegenStats {
    /// Selected clients.
    pub clients: usize,
    /// Of those, clients with a token-length file.
    pub clients_with_lengths: usize,
    /// Share of the requests sent by clients with a token-length file.
    pub request_share_with_lengths: f64,
    /// 10-minute windows.
    pub windows: usize,
    /// Recording length, seconds.
    pub span_s: f64,
    /// Requests in the recording (sum of rate × 600).
    pub requests: f64,
    /// Mean aggregate rate, req/s.
    pub mean_rps: f64,
    /// Busiest 10-minute window's aggregate rate, req/s.
    pub max_window_rps: f64,
    /// Quietest 10-minute window's aggregate rate, req/s.
    pub min_window_rps: f64,
    /// Mean aggregate rate of each hour of the recording, req/s.
    pub hourly_rps: Vec<f64>,
    /// Mean over days of each hour of the day (hours counted from the start of the
    /// recording; its wall-clock hour is not published), req/s.
    pub hour_of_day_rps: Vec<f64>,
    /// Per day: mean, hourly peak and trough.
    pub days: Vec<DayStats>,
    /// Request-weighted mean prompt tokens of the clients with lengths.
    pub mean_input_tokens: f64,
    /// Request-weighted mean output tokens of the clients with lengths.
    pub mean_output_tokens: f64,
}

impl ServegenStats {
    /// Computes the statistics of the selected clients.
    pub fn of(d: &ServegenData) -> ServegenStats {
        let nw = d.windows();
        let rates: Vec<f64> = (0..nw).map(|w| d.rate_rps(w)).collect();
        let per_hour = (3600 / WINDOW_S) as usize;
        let hourly_rps: Vec<f64> =
            rates.chunks(per_hour).map(|c| c.iter().sum::<f64>() / c.len().max(1) as f64).collect();
        let mut hour_of_day = vec![(0.0, 0usize); 24];
        for (h, r) in hourly_rps.iter().enumerate() {
            hour_of_day[h % 24].0 += r;
            hour_of_day[h % 24].1 += 1;
        }
        let days = hourly_rps
            .chunks(24)
            .enumerate()
            .map(|(day, hs)| {
                let peak = hs.iter().copied().fold(0.0, f64::max);
                let trough = hs.iter().copied().fold(f64::INFINITY, f64::min);
                DayStats {
                    day,
                    mean_rps: hs.iter().sum::<f64>() / hs.len() as f64,
                    peak_hour_rps: peak,
                    trough_hour_rps: trough,
                    peak_over_trough: (trough > 0.0).then(|| peak / trough),
                }
            })
            .collect();
        let total: f64 = rates.iter().sum::<f64>() * WINDOW_S as f64;
        let (mut wl, mut mi, mut mo) = (0.0, 0.0, 0.0);
        let mut with = 0;
        for c in d.selected_clients() {
            if let Some(l) = &c.lengths {
                with += 1;
                for (b, lb) in l {
                    let w = c.requests_between(*b, b + BLOCK_S);
                    wl += w;
                    mi += w * lb.input.mean();
                    mo += w * lb.output.mean();
                }
            }
        }
        let span = d.span_s();
        ServegenStats {
            clients: d.selected.len(),
            clients_with_lengths: with,
            request_share_with_lengths: if total > 0.0 { wl / total } else { 0.0 },
            windows: nw,
            span_s: span,
            requests: total,
            mean_rps: if span > 0.0 { total / span } else { 0.0 },
            max_window_rps: rates.iter().copied().fold(0.0, f64::max),
            min_window_rps: if rates.is_empty() { 0.0 } else { rates.iter().copied().fold(f64::INFINITY, f64::min) },
            hourly_rps,
            hour_of_day_rps: hour_of_day.iter().map(|(s, n)| if *n > 0 { s / *n as f64 } else { 0.0 }).collect(),
            days,
            mean_input_tokens: if wl > 0.0 { mi / wl } else { 0.0 },
            mean_output_tokens: if wl > 0.0 { mo / wl } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        // Exponential: Gamma(1) and Weibull(1) both have CV 1.
        assert!((Family::Gamma.cv(1.0) - 1.0).abs() < 1e-12);
        assert!((Family::Weibull.cv(1.0) - 1.0).abs() < 1e-10);
        // Weibull k = 0.5: Γ(5) / Γ(3)² − 1 = 5.
        assert!((Family::Weibull.cv(0.5) - 5f64.sqrt()).abs() < 1e-10);
    }

    #[test]
    fn py_dict_literals() {
        let p = Pmf::parse_py_dict("{13: 0.5, 14: 2.5e-01, 15:0.25,}", "f", 1, "k").unwrap();
        assert_eq!(p.tokens, vec![13, 14, 15]);
        assert!((p.mean() - 13.75).abs() < 1e-12);
        assert!(Pmf::parse_py_dict(" {} ", "f", 1, "k").unwrap().is_empty());
        for bad in
            ["{1: 0.5,, 2: 0.5}", "{a: 1}", "{1: -0.5}", "{1: nan}", "[1, 2]", "{1 0.5}", "{1: 0.5, 1: 0.5}", "{1: 0}"]
        {
            let e = Pmf::parse_py_dict(bad, "d.json", 7, "key \"0\"").unwrap_err().to_string();
            assert!(e.contains("d.json") && e.contains("line 7") && e.contains("key \"0\""), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn readers_never_panic(s in "\\PC{0,300}") {
            let _ = parse_trace(&s, "f");
            let _ = parse_dataset(&s, "f");
            let _ = Pmf::parse_py_dict(&s, "f", 1, "k");
        }
        #[test]
        fn trace_like_rows_never_panic(a in "[-0-9.e]{0,8}", b in "[-0-9.eNa]{0,8}", f in "(Gamma|Weibull|x|)", c in "[-0-9.e]{0,6}") {
            let s = format!("0,0,0,,0,0\r\n{a},{b},1,{f},{c},{c}\r\n");
            let _ = parse_trace(&s, "f");
        }
    }
}
