//! controller (under construction).
/// Command-line entry points.
pub mod cli;
