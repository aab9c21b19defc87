//! Workload traces: readers for real request traces and seeded synthetic arrivals.
//!
//! A trace is a time-ordered list of [`TraceRecord`]s (arrival time relative to the first
//! request, prompt tokens, output tokens and, where the trace has them, prefix-block
//! hashes). Three public formats are read:
//!
//! - **Azure LLM inference 2023** CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`, CRLF line
//!   endings, timestamps like `2023-11-16 18:17:03.9799600` with 7 fractional digits);
//! - **Mooncake** JSONL (`timestamp` in ms, `input_length`, `output_length`, `hash_ids`
//!   with one id per 512-token prefix block);
//! - **BurstGPT** CSV (`Timestamp` in s, `Model`, `Request tokens`, `Response tokens`, ...;
//!   failed rows with zero response tokens are skipped).
//!
//! Every error names the file and line. [`ArrivalStream`] turns a trace window (a fraction of
//! its span) with a load factor into arrivals, or generates synthetic arrivals
//! ([`ArrivalProcess`]: Poisson, Gamma with a given CV, on/off bursts, diurnal, steps) with
//! lengths from a trace's empirical distribution or a given distribution ([`LengthDist`]),
//! or generates ServeGen's per-client traffic ([`super::servegen`]).
//! Synthetic streams are generated lazily, so a million requests need no memory up front.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma, LogNormal};
use serde::{Deserialize, Serialize};

use super::time::Nanos;
use super::TwinError;

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Arrival time since the first request of the trace, in nanoseconds.
    pub arrival_ns: u64,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Output tokens to generate (at least 1).
    pub output_tokens: u32,
    /// Prefix-block hash ids (Mooncake: one per 512 prompt tokens); empty when unknown.
    pub hash_ids: Vec<u32>,
}

/// Format of a trace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Azure LLM inference trace 2023 CSV.
    Azure,
    /// Mooncake JSONL with hash ids.
    Mooncake,
    /// BurstGPT CSV.
    Burstgpt,
}

/// A loaded trace: records sorted by arrival.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Where it came from (for messages).
    pub origin: String,
    /// The requests, sorted by arrival time (stable for equal times).
    pub records: Vec<TraceRecord>,
}

fn err(file: &str, line: usize, message: impl Into<String>) -> TwinError {
    TwinError::Trace { file: file.to_string(), line, message: message.into() }
}

/// Guesses a trace's format from its extension and first line.
pub fn detect_format(path: &Path, first_line: &str) -> Option<TraceFormat> {
    if path.extension().and_then(|e| e.to_str()) == Some("jsonl") || first_line.trim_start().starts_with('{') {
        return Some(TraceFormat::Mooncake);
    }
    let l = first_line.to_ascii_lowercase();
    if l.contains("contexttokens") {
        Some(TraceFormat::Azure)
    } else if l.contains("request tokens") {
        Some(TraceFormat::Burstgpt)
    } else {
        None
    }
}

impl Trace {
    /// Reads a trace file, detecting its format unless `format` is given.
    pub fn load(path: &Path, format: Option<TraceFormat>) -> Result<Trace, TwinError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| err(&name, 0, format!("cannot read: {e}")))?;
        let first = text.lines().next().unwrap_or("");
        let fmt =
            match format.or_else(|| detect_format(path, first)) {
                Some(f) => f,
                None => return Err(err(
                    &name,
                    1,
                    "unknown trace format: expected an Azure CSV header (TIMESTAMP,ContextTokens,GeneratedTokens), \
                     a BurstGPT CSV header (Timestamp,Model,Request tokens,Response tokens,...) or Mooncake JSONL",
                )),
            };
        Self::parse(&text, fmt, &name)
    }

    /// Parses trace text of a known format; `origin` names it in errors.
    pub fn parse(text: &str, format: TraceFormat, origin: &str) -> Result<Trace, TwinError> {
        let mut records = match format {
            TraceFormat::Azure => parse_azure(text, origin)?,
            TraceFormat::Mooncake => parse_mooncake(text, origin)?,
            TraceFormat::Burstgpt => parse_burstgpt(text, origin)?,
        };
        if records.is_empty() {
            return Err(err(origin, 0, "trace has no requests"));
        }
        records.sort_by_key(|r| r.arrival_ns); // stable: equal times keep file order
        let t0 = records[0].arrival_ns;
        for r in records.iter_mut() {
            r.arrival_ns -= t0;
        }
        Ok(Trace { origin: origin.to_string(), records })
    }

    /// Span from the first to the last arrival, in seconds.
    pub fn span_s(&self) -> f64 {
        self.records.last().map(|r| r.arrival_ns as f64 / 1e9).unwrap_or(0.0)
    }
}

fn parse_u32(field: &str, file: &str, line: usize, name: &str) -> Result<u32, TwinError> {
    let f = field.trim();
    f.parse::<u32>()
        .or_else(|_| {
            // Some exports write integers as floats ("123.0").
            f.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v <= u32::MAX as f64 && v.fract() == 0.0)
                .map(|v| v as u32)
                .ok_or(())
        })
        .map_err(|_| err(file, line, format!("field `{name}`: `{f}` is not a non-negative integer")))
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fffffff]` into nanoseconds since the Unix epoch (UTC, naive).
fn parse_timestamp_ns(s: &str) -> Option<i128> {
    let s = s.trim();
    let (date, time) = s.split_once(' ').or_else(|| s.split_once('T'))?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: u32 = d.next()?.parse().ok()?;
    let da: u32 = d.next()?.parse().ok()?;
    if d.next().is_some() {
        return None;
    }
    let nd = chrono::NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, mo, da)?;
    let time = time.trim_end_matches('Z');
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let h: u32 = t.next()?.parse().ok()?;
    let mi: u32 = t.next()?.parse().ok()?;
    let se: u32 = t.next()?.parse().ok()?;
    if t.next().is_some() || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let frac = frac.split(['+', '-']).next().unwrap_or("");
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ns: i128 =
        if frac.is_empty() { 0 } else { frac.parse::<i128>().ok()? * 10i128.pow(9 - frac.len() as u32) };
    let days = nd.signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i128;
    Some(((days * 86400 + (h * 3600 + mi * 60 + se) as i128) * 1_000_000_000) + frac_ns)
}

fn csv_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n').enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty())
}

fn parse_azure(text: &str, file: &str) -> Result<Vec<TraceRecord>, TwinError> {
    let mut lines = csv_lines(text);
    let (hl, header) = lines.next().ok_or_else(|| err(file, 1, "empty file"))?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let idx = |name: &str| cols.iter().position(|c| c == name);
    let (Some(ti), Some(ci), Some(gi)) = (idx("timestamp"), idx("contexttokens"), idx("generatedtokens")) else {
        return Err(err(file, hl, "header must have TIMESTAMP, ContextTokens and GeneratedTokens columns"));
    };
    let mut out = Vec::new();
    let mut t0: Option<i128> = None;
    for (ln, line) in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != cols.len() {
            return Err(err(file, ln, format!("expected {} fields, found {}", cols.len(), f.len())));
        }
        let t = parse_timestamp_ns(f[ti]).ok_or_else(|| {
            err(file, ln, format!("field `TIMESTAMP`: `{}` is not `YYYY-MM-DD HH:MM:SS.fffffff`", f[ti].trim()))
        })?;
        let base = *t0.get_or_insert(t);
        let rel = t - base;
        // Rows are sorted in the published files; tolerate disorder by shifting, but not
        // absurd values (more than a year before the first row).
        if !(-(365 * 86400 * 1_000_000_000i128)..=(100 * 365 * 86400 * 1_000_000_000i128)).contains(&rel) {
            return Err(err(file, ln, "field `TIMESTAMP`: more than a year away from the first row"));
        }
        let input = parse_u32(f[ci], file, ln, "ContextTokens")?;
        let output = parse_u32(f[gi], file, ln, "GeneratedTokens")?;
        out.push((rel, input, output));
    }
    let min = out.iter().map(|r| r.0).min().unwrap_or(0);
    Ok(out
        .into_iter()
        .map(|(rel, i, o)| TraceRecord {
            arrival_ns: (rel - min) as u64,
            input_tokens: i.max(1),
            output_tokens: o.max(1),
            hash_ids: Vec::new(),
        })
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MooncakeRow {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u32>,
}

fn parse_mooncake(text: &str, file: &str) -> Result<Vec<TraceRecord>, TwinError> {
    let mut out = Vec::new();
    for (ln, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: MooncakeRow =
            serde_json::from_str(line).map_err(|e| err(file, ln + 1, format!("bad JSON row: {e}")))?;
        if !row.timestamp.is_finite() || row.timestamp < 0.0 || row.timestamp > 1e13 {
            return Err(err(file, ln + 1, format!("field `timestamp`: {} is not a time in ms >= 0", row.timestamp)));
        }
        out.push(TraceRecord {
            arrival_ns: (row.timestamp * 1e6).round() as u64,
            input_tokens: row.input_length.max(1),
            output_tokens: row.output_length.max(1),
            hash_ids: row.hash_ids,
        });
    }
    Ok(out)
}

fn parse_burstgpt(text: &str, file: &str) -> Result<Vec<TraceRecord>, TwinError> {
    let mut lines = csv_lines(text);
    let (hl, header) = lines.next().ok_or_else(|| err(file, 1, "empty file"))?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let idx = |name: &str| cols.iter().position(|c| c == name);
    let (Some(ti), Some(ri), Some(si)) = (idx("timestamp"), idx("request tokens"), idx("response tokens")) else {
        return Err(err(file, hl, "header must have Timestamp, Request tokens and Response tokens columns"));
    };
    let mut out = Vec::new();
    for (ln, line) in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != cols.len() {
            return Err(err(file, ln, format!("expected {} fields, found {}", cols.len(), f.len())));
        }
        let t: f64 = f[ti]
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0 && *v < 1e10)
            .ok_or_else(|| err(file, ln, format!("field `Timestamp`: `{}` is not seconds >= 0", f[ti].trim())))?;
        let input = parse_u32(f[ri], file, ln, "Request tokens")?;
        let output = parse_u32(f[si], file, ln, "Response tokens")?;
        if output == 0 {
            continue; // a failed request: nothing was generated
        }
        out.push(TraceRecord {
            arrival_ns: (t * 1e9).round() as u64,
            input_tokens: input.max(1),
            output_tokens: output,
            hash_ids: Vec::new(),
        });
    }
    Ok(out)
}

/// Summary statistics of a trace (what `llmos trace-stats` prints).
#[derive(Clone, Debug, Serialize)]
pub struct TraceStats {
    /// Number of requests.
    pub rows: usize,
    /// First to last arrival, seconds.
    pub span_s: f64,
    /// (rows − 1) / span, requests per second.
    pub rate_rps: f64,
    /// Coefficient of variation of inter-arrival times (1 for Poisson).
    pub interarrival_cv: f64,
    /// Prompt tokens: mean, p50, p90, p99, max.
    pub input_tokens: [f64; 5],
    /// Output tokens: mean, p50, p90, p99, max.
    pub output_tokens: [f64; 5],
    /// Rows with prefix hashes.
    pub rows_with_hashes: usize,
}

fn summary(mut v: Vec<f64>) -> [f64; 5] {
    if v.is_empty() {
        return [0.0; 5];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let q = |p: f64| {
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    [mean, q(0.5), q(0.9), q(0.99), v[v.len() - 1]]
}

impl TraceStats {
    /// Computes the statistics of a trace.
    pub fn of(trace: &Trace) -> TraceStats {
        let n = trace.records.len();
        let span = trace.span_s();
        let iat: Vec<f64> =
            trace.records.windows(2).map(|w| (w[1].arrival_ns - w[0].arrival_ns) as f64 / 1e9).collect();
        let cv = if iat.len() > 1 {
            let m = iat.iter().sum::<f64>() / iat.len() as f64;
            let var = iat.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / iat.len() as f64;
            if m > 0.0 {
                var.sqrt() / m
            } else {
                0.0
            }
        } else {
            0.0
        };
        TraceStats {
            rows: n,
            span_s: span,
            rate_rps: if span > 0.0 { (n as f64 - 1.0) / span } else { 0.0 },
            interarrival_cv: cv,
            input_tokens: summary(trace.records.iter().map(|r| r.input_tokens as f64).collect()),
            output_tokens: summary(trace.records.iter().map(|r| r.output_tokens as f64).collect()),
            rows_with_hashes: trace.records.iter().filter(|r| !r.hash_ids.is_empty()).count(),
        }
    }
}

/// How arrivals of a synthetic workload are spaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ArrivalProcess {
    /// Poisson arrivals at `rate_rps`.
    Poisson {
        /// Mean requests per second.
        rate_rps: f64,
    },
    /// Renewal process with Gamma inter-arrival times: mean rate `rate_rps`, coefficient of variation `cv` (1 = Poisson, > 1 bursty).
    Gamma {
        /// Mean requests per second.
        rate_rps: f64,
        /// Coefficient of variation of the inter-arrival times.
        cv: f64,
    },
    /// On/off bursts: Poisson at `on_rate_rps` for `on_s` seconds, then `off_rate_rps` for `off_s` seconds, repeating.
    Onoff {
        /// Rate during an on period.
        on_rate_rps: f64,
        /// Rate during an off period.
        #[serde(default)]
        off_rate_rps: f64,
        /// Length of an on period, seconds.
        on_s: f64,
        /// Length of an off period, seconds.
        off_s: f64,
    },
    /// Diurnal (sinusoidal) rate: `mean_rps × (1 + amplitude × sin(2π t / period_s))`.
    Diurnal {
        /// Mean rate.
        mean_rps: f64,
        /// Relative amplitude, 0..=1.
        amplitude: f64,
        /// Period, seconds (86400 for a day).
        period_s: f64,
    },
    /// Piecewise-constant Poisson rate: `rates_rps[i]` from `at_s[i]` on (`at_s[0]` must be 0).
    Steps {
        /// Start time of each step, seconds, increasing, first 0.
        at_s: Vec<f64>,
        /// Rate of each step.
        rates_rps: Vec<f64>,
    },
}

impl ArrivalProcess {
    /// Checks the parameters; `field` names the scenario field in errors.
    pub fn validate(&self, field: &str) -> Result<(), TwinError> {
        let bad = |m: String| Err(TwinError::Config { field: field.to_string(), message: m });
        let pos = |v: f64, n: &str| -> Result<(), TwinError> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(TwinError::Config {
                    field: format!("{field}.{n}"),
                    message: format!("must be a finite number >= 0, got {v}"),
                })
            }
        };
        match self {
            ArrivalProcess::Poisson { rate_rps } => pos(*rate_rps, "rate_rps"),
            ArrivalProcess::Gamma { rate_rps, cv } => {
                pos(*rate_rps, "rate_rps")?;
                if !(cv.is_finite() && *cv > 0.0) {
                    return bad(format!("cv must be > 0, got {cv}"));
                }
                Ok(())
            }
            ArrivalProcess::Onoff { on_rate_rps, off_rate_rps, on_s, off_s } => {
                pos(*on_rate_rps, "on_rate_rps")?;
                pos(*off_rate_rps, "off_rate_rps")?;
                pos(*on_s, "on_s")?;
                pos(*off_s, "off_s")?;
                if on_s + off_s <= 0.0 {
                    return bad("on_s + off_s must be > 0".into());
                }
                Ok(())
            }
            ArrivalProcess::Diurnal { mean_rps, amplitude, period_s } => {
                pos(*mean_rps, "mean_rps")?;
                if !(0.0..=1.0).contains(amplitude) {
                    return bad(format!("amplitude must be in 0..=1, got {amplitude}"));
                }
                if !(period_s.is_finite() && *period_s > 0.0) {
                    return bad(format!("period_s must be > 0, got {period_s}"));
                }
                Ok(())
            }
            ArrivalProcess::Steps { at_s, rates_rps } => {
                if at_s.is_empty() || at_s.len() != rates_rps.len() {
                    return bad("at_s and rates_rps must be non-empty and of equal length".into());
                }
                if at_s[0] != 0.0 || at_s.windows(2).any(|w| !(w[1] > w[0])) {
                    return bad("at_s must start at 0 and increase".into());
                }
                for r in rates_rps {
                    pos(*r, "rates_rps")?;
                }
                Ok(())
            }
        }
    }

    /// Rate at time `t` seconds (for the inhomogeneous kinds), and its maximum.
    fn rate_at(&self, t: f64) -> f64 {
        match self {
            ArrivalProcess::Poisson { rate_rps } | ArrivalProcess::Gamma { rate_rps, .. } => *rate_rps,
            ArrivalProcess::Onoff { on_rate_rps, off_rate_rps, on_s, off_s } => {
                if (t % (on_s + off_s)) < *on_s {
                    *on_rate_rps
                } else {
                    *off_rate_rps
                }
            }
            ArrivalProcess::Diurnal { mean_rps, amplitude, period_s } => {
                mean_rps * (1.0 + amplitude * (2.0 * std::f64::consts::PI * t / period_s).sin())
            }
            ArrivalProcess::Steps { at_s, rates_rps } => {
                let i = at_s.partition_point(|&a| a <= t).saturating_sub(1);
                rates_rps[i]
            }
        }
    }
    fn max_rate(&self) -> f64 {
        match self {
            ArrivalProcess::Poisson { rate_rps } | ArrivalProcess::Gamma { rate_rps, .. } => *rate_rps,
            ArrivalProcess::Onoff { on_rate_rps, off_rate_rps, .. } => on_rate_rps.max(*off_rate_rps),
            ArrivalProcess::Diurnal { mean_rps, amplitude, .. } => mean_rps * (1.0 + amplitude),
            ArrivalProcess::Steps { rates_rps, .. } => rates_rps.iter().cloned().fold(0.0, f64::max),
        }
    }
}

/// Distribution of request lengths for synthetic workloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LengthDist {
    /// Every request has the same lengths.
    Fixed {
        /// Prompt tokens.
        input_tokens: u32,
        /// Output tokens.
        output_tokens: u32,
    },
    /// Log-normal lengths with the given means and coefficients of variation, clamped to `[1, max]`.
    Lognormal {
        /// Mean prompt tokens.
        input_mean: f64,
        /// CV of prompt tokens.
        input_cv: f64,
        /// Mean output tokens.
        output_mean: f64,
        /// CV of output tokens.
        output_cv: f64,
        /// Largest length drawn (tokens).
        #[serde(default = "default_max_len")]
        max_tokens: u32,
    },
    /// (prompt, output) pairs drawn jointly from a trace's rows (path relative to the scenario).
    Trace {
        /// The trace file.
        path: PathBuf,
    },
}

fn default_max_len() -> u32 {
    8192
}

/// Lengths ready to sample.
#[derive(Clone, Debug)]
pub enum LengthSampler {
    /// Fixed lengths.
    Fixed(u32, u32),
    /// Log-normal pairs (independent), clamped to max.
    Lognormal(LogNormal<f64>, LogNormal<f64>, u32),
    /// Empirical (input, output) pairs.
    Empirical(Vec<(u32, u32)>),
}

fn lognormal(mean: f64, cv: f64, field: &str) -> Result<LogNormal<f64>, TwinError> {
    if !(mean.is_finite() && mean > 0.0 && cv.is_finite() && cv >= 0.0) {
        return Err(TwinError::Config {
            field: field.into(),
            message: format!("mean must be > 0 and cv >= 0, got mean {mean}, cv {cv}"),
        });
    }
    let sigma2 = (1.0 + cv * cv).ln();
    LogNormal::new(mean.ln() - sigma2 / 2.0, sigma2.sqrt())
        .map_err(|e| TwinError::Config { field: field.into(), message: e.to_string() })
}

impl LengthSampler {
    /// Builds a sampler; trace paths resolve against `base`.
    pub fn new(dist: &LengthDist, base: &Path, field: &str) -> Result<LengthSampler, TwinError> {
        Ok(match dist {
            LengthDist::Fixed { input_tokens, output_tokens } => {
                LengthSampler::Fixed((*input_tokens).max(1), (*output_tokens).max(1))
            }
            LengthDist::Lognormal { input_mean, input_cv, output_mean, output_cv, max_tokens } => {
                LengthSampler::Lognormal(
                    lognormal(*input_mean, *input_cv, &format!("{field}.input"))?,
                    lognormal(*output_mean, *output_cv, &format!("{field}.output"))?,
                    (*max_tokens).max(1),
                )
            }
            LengthDist::Trace { path } => {
                let t = Trace::load(&base.join(path), None)?;
                LengthSampler::Empirical(t.records.iter().map(|r| (r.input_tokens, r.output_tokens)).collect())
            }
        })
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> (u32, u32) {
        match self {
            LengthSampler::Fixed(i, o) => (*i, *o),
            LengthSampler::Lognormal(a, b, m) => {
                let c = |x: f64| (x.round().max(1.0) as u64).min(*m as u64) as u32;
                (c(a.sample(rng)), c(b.sample(rng)))
            }
            LengthSampler::Empirical(v) => v[rng.random_range(0..v.len())],
        }
    }
}

pub use super::arrival::Arrival;

/// A source of arrivals in time order.
#[derive(Debug)]
pub enum ArrivalStream {
    /// Replay of a trace window, times divided by the load factor.
    Replay {
        /// The trace.
        trace: std::sync::Arc<Trace>,
        /// Next index.
        next: usize,
        /// One past the last index.
        end: usize,
        /// Arrival time of the window start in trace time.
        t0_ns: u64,
        /// Load factor (times are divided by it).
        load: f64,
        /// Seeded resampling of the replay (`None` replays the trace as recorded).
        resample: Option<Box<Resampler>>,
    },
    /// Synthetic arrivals, generated lazily.
    Synthetic {
        /// The process.
        process: ArrivalProcess,
        /// Lengths.
        lengths: LengthSampler,
        /// RNG.
        rng: Box<ChaCha8Rng>,
        /// Time of the last arrival, seconds.
        t_s: f64,
        /// Stop after this time, seconds.
        duration_s: f64,
        /// Stop after this many requests.
        max_requests: Option<u64>,
        /// Requests emitted.
        emitted: u64,
        /// Load factor multiplying the rate.
        load: f64,
    },
    /// ServeGen per-client traffic, generated lazily window by window ([`super::servegen`]).
    Servegen(Box<super::servegen::ServegenStream>),
}

impl ArrivalStream {
    /// Replays `[start_frac, end_frac)` of the trace's span with arrival times divided by `load`.
    pub fn replay(
        trace: std::sync::Arc<Trace>,
        start_frac: f64,
        end_frac: f64,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        check_window(start_frac, end_frac, load)?;
        let span = trace.records.last().map(|r| r.arrival_ns).unwrap_or(0) as f64;
        let (a, b) = ((span * start_frac) as u64, (span * end_frac) as u64);
        let start = trace.records.partition_point(|r| r.arrival_ns < a);
        let end =
            if end_frac >= 1.0 { trace.records.len() } else { trace.records.partition_point(|r| r.arrival_ns < b) };
        Ok(ArrivalStream::Replay { trace, next: start, end, t0_ns: a, load, resample: None })
    }

    /// Like [`ArrivalStream::replay`], but for `seed > 0` replays a seeded resample of the
    /// window (see [`Resampler`]); seed 0 replays the trace as recorded.
    ///
    /// This is what gives several seeds of a trace-driven run different, equally
    /// plausible traffic with the same rate profile, so confidence intervals over seeds
    /// mean something.
    pub fn replay_resampled(
        trace: std::sync::Arc<Trace>,
        start_frac: f64,
        end_frac: f64,
        load: f64,
        seed: u64,
    ) -> Result<ArrivalStream, TwinError> {
        let mut s = Self::replay(trace, start_frac, end_frac, load)?;
        if seed != 0 {
            if let ArrivalStream::Replay { resample, .. } = &mut s {
                *resample = Some(Box::new(Resampler::new(seed)));
            }
        }
        Ok(s)
    }

    /// Synthetic arrivals for `duration_s` seconds (or `max_requests`), rate multiplied by `load`.
    pub fn synthetic(
        process: ArrivalProcess,
        lengths: LengthSampler,
        seed: u64,
        duration_s: f64,
        max_requests: Option<u64>,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        process.validate("workload.synthetic.arrival")?;
        check_window(0.0, 1.0, load)?;
        Ok(ArrivalStream::Synthetic {
            process,
            lengths,
            rng: Box::new(ChaCha8Rng::seed_from_u64(seed)),
            t_s: 0.0,
            duration_s,
            max_requests,
            emitted: 0,
            load,
        })
    }

    /// Arrivals of a ServeGen slice: `[start_s, end_s)` seconds of the recording, request
    /// counts scaled by `load` (see [`super::servegen::ServegenStream`]).
    pub fn servegen(
        data: std::sync::Arc<super::servegen::ServegenData>,
        seed: u64,
        start_s: f64,
        end_s: f64,
        load: f64,
    ) -> Result<ArrivalStream, TwinError> {
        Ok(ArrivalStream::Servegen(Box::new(super::servegen::ServegenStream::new(data, seed, start_s, end_s, load)?)))
    }

    /// The next arrival, or `None` when the stream is exhausted.
    pub fn next_arrival(&mut self) -> Option<Arrival> {
        match self {
            ArrivalStream::Servegen(s) => s.next_arrival(),
            ArrivalStream::Replay { trace, next, end, t0_ns, load, resample } => {
                let Some(rs) = resample else {
                    if *next >= *end {
                        return None;
                    }
                    let r = &trace.records[*next];
                    *next += 1;
                    let rel = r.arrival_ns.saturating_sub(*t0_ns) as f64 / *load;
                    return Some(Arrival {
                        at: Nanos(rel.round() as u64),
                        input_tokens: r.input_tokens,
                        output_tokens: r.output_tokens,
                        hash_ids: r.hash_ids.clone(),
                    });
                };
                loop {
                    if let Some((at_ns, i)) = rs.pending.pop() {
                        let r = &trace.records[i];
                        let rel = at_ns.saturating_sub(*t0_ns) as f64 / *load;
                        return Some(Arrival {
                            at: Nanos(rel.round() as u64),
                            input_tokens: r.input_tokens,
                            output_tokens: r.output_tokens,
                            hash_ids: r.hash_ids.clone(),
                        });
                    }
                    if *next >= *end {
                        return None;
                    }
                    rs.expand(&trace.records, *next, *end, *t0_ns);
                    *next += 1;
                }
            }
            ArrivalStream::Synthetic { process, lengths, rng, t_s, duration_s, max_requests, emitted, load } => {
                if max_requests.is_some_and(|m| *emitted >= m) {
                    return None;
                }
                let lmax = process.max_rate() * *load;
                if lmax <= 0.0 {
                    return None;
                }
                loop {
                    let gap = match process {
                        ArrivalProcess::Gamma { cv, .. } => {
                            let shape = 1.0 / (*cv * *cv);
                            let g = Gamma::new(shape, 1.0 / (shape * lmax)).ok()?;
                            g.sample(rng.as_mut())
                        }
                        _ => Exp::new(lmax).ok()?.sample(rng.as_mut()),
                    };
                    *t_s += gap;
                    if *t_s >= *duration_s {
                        return None;
                    }
                    // Thinning for time-varying rates (accept with rate(t)/max).
                    let accept = process.rate_at(*t_s) * *load / lmax;
                    if accept >= 1.0 || rng.random::<f64>() < accept {
                        break;
                    }
                }
                *emitted += 1;
                let (i, o) = lengths.sample(rng.as_mut());
                Some(Arrival {
                    at: Nanos((*t_s * 1e9).round() as u64),
                    input_tokens: i,
                    output_tokens: o,
                    hash_ids: Vec::new(),
                })
            }
        }
    }

    /// Requests in the stream, if known up front.
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            ArrivalStream::Replay { next, end, .. } => Some((*end - *next) as u64),
            ArrivalStream::Synthetic { max_requests, .. } => *max_requests,
            ArrivalStream::Servegen(s) => s.len_hint(),
        }
    }
}

/// Seeded resampling of a trace replay: a Poisson bootstrap with in-gap jitter.
///
/// Each request of the window is replayed `k ~ Poisson(1)` times (so on average as
/// often as recorded; some are dropped, some repeated), and each copy arrives at a time
/// drawn uniformly between the midpoints to its neighbours in the trace. The rate profile
/// of the trace is kept at every time scale above the inter-arrival gaps, lengths (and
/// prefix hashes) stay those of real requests, and arrivals stay in time order because
/// the jitter intervals of consecutive requests do not overlap.
#[derive(Debug)]
pub struct Resampler {
    rng: ChaCha8Rng,
    /// Copies of the current request: (trace time ns, record index), latest first.
    pending: Vec<(u64, usize)>,
}

impl Resampler {
    /// A resampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Resampler { rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5851_f42d_4c95_7f2d), pending: Vec::new() }
    }

    /// Draws the copies of record `i` (within `[start.., end)`) into `pending`.
    fn expand(&mut self, records: &[TraceRecord], i: usize, end: usize, t0_ns: u64) {
        let t = records[i].arrival_ns;
        let lo = if i > 0 { t - (t - records[i - 1].arrival_ns) / 2 } else { t };
        let lo = lo.max(t0_ns.min(t));
        let hi = if i + 1 < end { t + (records[i + 1].arrival_ns - t) / 2 } else { t };
        // Poisson(1) by inversion: small k, exact, no allocation.
        let u: f64 = self.rng.random();
        let (mut k, mut p, mut cdf) = (0u32, (-1.0f64).exp(), (-1.0f64).exp());
        while u > cdf && k < 16 {
            k += 1;
            p /= k as f64;
            cdf += p;
        }
        for _ in 0..k {
            let at = if hi > lo { self.rng.random_range(lo..=hi) } else { t };
            self.pending.push((at, i));
        }
        // Pop from the back: latest first in the vector, so sort descending.
        self.pending.sort_unstable_by(|a, b| b.cmp(a));
    }
}

fn check_window(start_frac: f64, end_frac: f64, load: f64) -> Result<(), TwinError> {
    if !(0.0..=1.0).contains(&start_frac) || !(0.0..=1.0).contains(&end_frac) || start_frac >= end_frac {
        return Err(TwinError::Config {
            field: "window".into(),
            message: format!("need 0 <= start_frac < end_frac <= 1, got [{start_frac}, {end_frac})"),
        });
    }
    if !(load.is_finite() && load > 0.0) {
        return Err(TwinError::Config {
            field: "load".into(),
            message: format!("load factor must be > 0, got {load}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_crlf_and_seven_decimals() {
        let t = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:50.9951690,396,109";
        let tr = Trace::parse(t, TraceFormat::Azure, "x.csv").unwrap();
        assert_eq!(tr.records.len(), 2);
        assert_eq!(tr.records[1].arrival_ns, 4_314_579_000);
        assert_eq!(tr.records[1].output_tokens, 109);
    }

    #[test]
    fn azure_bad_row_names_line_and_field() {
        let t = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:50.9951690,-3,109";
        let e = Trace::parse(t, TraceFormat::Azure, "x.csv").unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains("line 3") && e.contains("ContextTokens"), "{e}");
    }

    #[test]
    fn mooncake_rows() {
        let t = "{\"timestamp\": 3000, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [0, 1]}\n{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [0]}\n";
        let tr = Trace::parse(t, TraceFormat::Mooncake, "m.jsonl").unwrap();
        assert_eq!(tr.records[0].input_tokens, 10);
        assert_eq!(tr.records[1].arrival_ns, 3_000_000_000);
        let e = Trace::parse("{\"timestamp\": 1}\n", TraceFormat::Mooncake, "m.jsonl").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn burstgpt_skips_failures() {
        let t = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,100,0,100,Conversation log\n7,GPT-4,50,20,70,API log\n";
        let tr = Trace::parse(t, TraceFormat::Burstgpt, "b.csv").unwrap();
        assert_eq!(tr.records.len(), 1);
        assert_eq!(tr.records[0].input_tokens, 50);
    }

    #[test]
    fn synthetic_is_seeded_and_rate_is_right() {
        let mk = || {
            ArrivalStream::synthetic(
                ArrivalProcess::Poisson { rate_rps: 10.0 },
                LengthSampler::Fixed(10, 10),
                7,
                1000.0,
                None,
                1.0,
            )
            .unwrap()
        };
        let (mut a, mut b) = (mk(), mk());
        let mut n = 0;
        while let Some(x) = a.next_arrival() {
            assert_eq!(Some(x), b.next_arrival());
            n += 1;
        }
        assert!((9000..11000).contains(&n), "{n}");
    }

    #[test]
    fn steps_change_rate() {
        let p = ArrivalProcess::Steps { at_s: vec![0.0, 100.0], rates_rps: vec![1.0, 10.0] };
        let mut s = ArrivalStream::synthetic(p, LengthSampler::Fixed(1, 1), 1, 200.0, None, 1.0).unwrap();
        let (mut lo, mut hi) = (0, 0);
        while let Some(a) = s.next_arrival() {
            if a.at.as_secs_f64() < 100.0 {
                lo += 1
            } else {
                hi += 1
            }
        }
        assert!(hi > 5 * lo, "{lo} {hi}");
    }

    #[test]
    fn window_and_load() {
        let recs = (0..100)
            .map(|i| TraceRecord { arrival_ns: i * 1_000_000_000, input_tokens: 1, output_tokens: 1, hash_ids: vec![] })
            .collect();
        let tr = std::sync::Arc::new(Trace { origin: "t".into(), records: recs });
        let mut s = ArrivalStream::replay(tr, 0.5, 1.0, 2.0).unwrap();
        // Span 99 s: the window starts at 49.5 s; the first record (50 s) arrives 0.5 s / 2 later.
        let first = s.next_arrival().unwrap();
        assert_eq!(first.at, Nanos(250_000_000));
        let second = s.next_arrival().unwrap();
        assert_eq!(second.at, Nanos(750_000_000));
        assert_eq!(s.len_hint(), Some(48));
        assert!(ArrivalStream::replay(std::sync::Arc::new(Trace::default()), 0.5, 0.2, 1.0).is_err());
    }

    fn drain(mut s: ArrivalStream) -> Vec<(u64, u32)> {
        std::iter::from_fn(|| s.next_arrival()).map(|a| (a.at.0, a.input_tokens)).collect()
    }

    #[test]
    fn resampled_replay_is_seeded_ordered_and_keeps_the_rate() {
        // 2,000 requests at irregular times over ~1,000 s.
        let mut t = 0u64;
        let recs: Vec<TraceRecord> = (0..2000u64)
            .map(|i| {
                t += 1 + (i * 7919 % 997) * 1_000_000;
                TraceRecord { arrival_ns: t, input_tokens: i as u32, output_tokens: 1, hash_ids: vec![] }
            })
            .collect();
        let tr = std::sync::Arc::new(Trace { origin: "t".into(), records: recs });
        let exact = drain(ArrivalStream::replay(tr.clone(), 0.0, 1.0, 1.0).unwrap());
        // Seed 0 is the trace as recorded.
        assert_eq!(drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 0).unwrap()), exact);
        let a = drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 1).unwrap());
        let b = drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 1).unwrap());
        let c = drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 2).unwrap());
        assert_eq!(a, b, "same seed, same arrivals");
        assert_ne!(a, c, "another seed, other arrivals");
        assert_ne!(a, exact);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "arrivals in time order");
        // Poisson(1) copies: the count stays within a few standard deviations (sqrt(2000) ≈ 45).
        assert!((a.len() as i64 - 2000).abs() < 200, "{} arrivals", a.len());
        // Each copy stays within half a gap of its original request.
        let span = exact.last().unwrap().0;
        assert!(a.last().unwrap().0 <= span);
        // The rate profile is kept: arrivals per 100 s bin differ little from the trace's.
        let bins = |v: &[(u64, u32)]| {
            let mut h = vec![0i64; 11];
            for (at, _) in v {
                h[(*at / 100_000_000_000) as usize] += 1;
            }
            h
        };
        let (he, ha) = (bins(&exact), bins(&a));
        for (x, y) in he.iter().zip(&ha) {
            assert!((x - y).abs() <= 4 * (*x as f64).sqrt() as i64 + 5, "bins {he:?} vs {ha:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn readers_never_panic(s in "\\PC{0,300}") {
            let _ = Trace::parse(&s, TraceFormat::Azure, "f");
            let _ = Trace::parse(&s, TraceFormat::Mooncake, "f");
            let _ = Trace::parse(&s, TraceFormat::Burstgpt, "f");
        }
        #[test]
        fn azure_like_rows_never_panic(ts in "[0-9: .-]{0,30}", a in "[-0-9.e]{0,12}", b in "[-0-9.e]{0,12}") {
            let s = format!("TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1,1\r\n{ts},{a},{b}");
            let _ = Trace::parse(&s, TraceFormat::Azure, "f");
        }
    }
}
