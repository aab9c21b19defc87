//! twin (under construction).
/// Command-line entry points.
pub mod cli;
/// The twin as the data plane of a real API server.
pub mod serve;
