//! Fuzz target `prometheus`: see `llmos::fuzz::prometheus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::prometheus(data);
});
