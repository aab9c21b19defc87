//! Fuzz target `servegen`: see `llmos::fuzz::servegen`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::servegen(data);
});
