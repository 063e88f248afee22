//! Fuzz target `kernels`: see [`emberlm_fuzz::kernels::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::kernels::run(data));
