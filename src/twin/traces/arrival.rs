//! The request the twin's arrival sources produce: what every trace reader
//! ([`super::readers`] through [`super::stream`], [`super::servegen`]) yields and the simulator consumes.

use crate::twin::time::Nanos;

/// One arriving request, as the twin sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    /// Arrival time in twin time.
    pub at: Nanos,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Output tokens.
    pub output_tokens: u32,
    /// Prefix-block hashes (may be empty).
    pub hash_ids: Vec<u32>,
}
