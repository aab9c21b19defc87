//! Fuzz target `scenario`: see `llmos::fuzz::scenario`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::scenario(data);
});
