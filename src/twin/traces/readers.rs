//! Readers for real request traces: Azure LLM inference 2023 CSV, Mooncake JSONL and
//! BurstGPT CSV into one time-ordered [`Trace`], with statistics ([`TraceStats`]).
//!
//! A trace is a list of [`TraceRecord`]s (arrival time relative to the first request,
//! prompt tokens, output tokens and, where the trace has them, prefix-block hashes):
//!
//! - **Azure LLM inference 2023** CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`, CRLF line
//!   endings, timestamps like `2023-11-16 18:17:03.9799600` with 7 fractional digits);
//! - **Mooncake** JSONL (`timestamp` in ms, `input_length`, `output_length`, `hash_ids`
//!   with one id per 512-token prefix block);
//! - **BurstGPT** CSV (`Timestamp` in s, `Model`, `Request tokens`, `Response tokens`, ...;
//!   failed rows with zero response tokens are skipped).
//!
//! Every error names the file, the line and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::twin::TwinError;

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

/// The data lines of a CSV text, the positions of the `wanted` columns in its header
/// (matched without case) and the header's column count; an error naming the columns
/// (`expected`) when one is missing.
fn csv_columns<'a>(
    text: &'a str,
    file: &str,
    wanted: [&str; 3],
    expected: &str,
) -> Result<(impl Iterator<Item = (usize, &'a str)>, [usize; 3], usize), TwinError> {
    let mut lines = csv_lines(text);
    let (hl, header) = lines.next().ok_or_else(|| err(file, 1, "empty file"))?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let idx = |name: &str| cols.iter().position(|c| c == name);
    let (Some(a), Some(b), Some(c)) = (idx(wanted[0]), idx(wanted[1]), idx(wanted[2])) else {
        return Err(err(file, hl, format!("header must have {expected} columns")));
    };
    Ok((lines, [a, b, c], cols.len()))
}

fn parse_azure(text: &str, file: &str) -> Result<Vec<TraceRecord>, TwinError> {
    let wanted = ["timestamp", "contexttokens", "generatedtokens"];
    let (lines, [ti, ci, gi], n_cols) =
        csv_columns(text, file, wanted, "TIMESTAMP, ContextTokens and GeneratedTokens")?;
    let mut out = Vec::new();
    let mut t0: Option<i128> = None;
    for (ln, line) in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != n_cols {
            return Err(err(file, ln, format!("expected {n_cols} fields, found {}", f.len())));
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
    let wanted = ["timestamp", "request tokens", "response tokens"];
    let (lines, [ti, ri, si], n_cols) =
        csv_columns(text, file, wanted, "Timestamp, Request tokens and Response tokens")?;
    let mut out = Vec::new();
    for (ln, line) in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != n_cols {
            return Err(err(file, ln, format!("expected {n_cols} fields, found {}", f.len())));
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
