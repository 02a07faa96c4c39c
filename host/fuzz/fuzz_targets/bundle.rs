#![no_main]
// See hearth_server::fuzzing::bundle for the input format and the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth_server::fuzzing::bundle(data));
