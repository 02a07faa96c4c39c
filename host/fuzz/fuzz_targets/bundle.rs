#![no_main]
// See hearth::fuzzing::bundle for the input format and the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzzing::bundle(data));
