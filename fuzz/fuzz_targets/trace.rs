//! Fuzz target `trace`: see `llmos::fuzz::trace`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::trace(data);
});
