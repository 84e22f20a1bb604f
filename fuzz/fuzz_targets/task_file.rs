//! Fuzz target `task_file`: see `xxcapture_model::fuzzing::task_file` for the input and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xxcapture_model::fuzzing::task_file(data));
