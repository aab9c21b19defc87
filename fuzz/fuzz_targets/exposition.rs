//! Fuzz target `exposition`: see `llmos::fuzz::exposition`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::exposition(data);
});
