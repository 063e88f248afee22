//! Fuzz target `session`: see [`emberlm_fuzz::session::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::session::run(data));
