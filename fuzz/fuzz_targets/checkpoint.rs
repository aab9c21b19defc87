//! Fuzz target `checkpoint`: see `llmos::fuzz::checkpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::checkpoint(data);
});
