//! Fuzz target `train_config`: see `llmos::fuzz::train_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = llmos::fuzz::train_config(data);
});
