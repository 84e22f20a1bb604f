//! Fuzz target `backend`: see `xxcapd::fuzzing::backend` for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xxcapd::fuzzing::backend(data));
