//! Fuzz target `serve_request`: see [`emberlm_fuzz::serve_request::run`] (the body, shared with the regression test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emberlm_fuzz::serve_request::run(data));
