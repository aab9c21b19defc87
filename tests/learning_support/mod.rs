//! Shared by the learning tests: which training seeds a test judges.

/// Training seeds a learning test judges: `default`, or the inclusive range in
/// `LLMOS_TEST_SEEDS` (e.g. `1-8`, or `5` for one seed) to check how often a property holds.
pub fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("LLMOS_TEST_SEEDS") {
        Ok(v) => {
            let (a, b) = v.split_once('-').unwrap_or((&v, &v));
            let parse = |x: &str| x.trim().parse::<u64>().expect("LLMOS_TEST_SEEDS: expected N or A-B");
            (parse(a)..=parse(b)).collect()
        }
        Err(_) => default.to_vec(),
    }
}
