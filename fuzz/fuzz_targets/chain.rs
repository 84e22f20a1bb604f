//! Fuzz target `chain`: see `xxcapd::fuzzing::chain` for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xxcapd::fuzzing::chain(data));
