//! Twin time: integer nanoseconds since the start of a run.
//!
//! Time is never a float inside the simulator, so the same seed replays the same events in
//! the same order, byte for byte. Events at the same instant are ordered by insertion.

use serde::{Deserialize, Serialize};

/// A point in twin time, or a duration, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero.
    pub const ZERO: Nanos = Nanos(0);
    /// The far future.
    pub const MAX: Nanos = Nanos(u64::MAX);
    /// From seconds (rounded to the nearest nanosecond; negative and NaN give zero).
    pub fn from_secs_f64(s: f64) -> Nanos {
        if s.is_nan() || s <= 0.0 {
            Nanos(0)
        } else if s >= u64::MAX as f64 / 1e9 {
            Nanos::MAX
        } else {
            Nanos((s * 1e9).round() as u64)
        }
    }
    /// As seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    /// `self + d`, saturating.
    pub fn plus(self, d: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(d.0))
    }
    /// `self - earlier`, zero if negative.
    pub fn since(self, earlier: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }
}
