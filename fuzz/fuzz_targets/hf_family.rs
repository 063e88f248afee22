//! Fuzz target `hf_family`: see [`emberlm_fuzz::hf_family::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::hf_family::run(data));
