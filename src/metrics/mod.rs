//! metrics (under construction).
