//! Fuzz target `safetensors_import`: see [`emberlm_fuzz::safetensors_import::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::safetensors_import::run(data));
