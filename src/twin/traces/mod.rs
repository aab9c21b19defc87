//! Where a run's requests come from: readers for real traces ([`readers`]: Azure LLM
//! inference 2023, Mooncake, BurstGPT), ServeGen's 14 days of per-client traffic
//! ([`servegen`]), synthetic arrival processes and length distributions ([`synthetic`]),
//! and the [`ArrivalStream`] a run replays ([`stream`]), yielding [`Arrival`]s.
//!
//! Every reader names the file, line and field of a bad row; the simulator consumes only
//! [`Arrival`]s, so a new trace format is a new reader here and nothing else.

pub mod arrival;
pub mod readers;
pub mod servegen;
pub mod stream;
pub mod synthetic;

pub use arrival::Arrival;
pub use readers::{detect_format, Trace, TraceFormat, TraceRecord, TraceStats};
pub use stream::{ArrivalStream, Resampler};
pub use synthetic::{ArrivalProcess, LengthDist, LengthSampler};

#[cfg(test)]
mod tests;
