//! Fuzz target `hf_config`: see [`emberlm_fuzz::hf_config::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::hf_config::run(data));
