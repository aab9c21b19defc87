//! Fuzz target `workload`: see `llmos::fuzz::workload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::workload(data);
});
