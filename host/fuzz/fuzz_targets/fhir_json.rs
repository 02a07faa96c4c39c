#![no_main]
// See hearth::fuzzing::fhir_json for the input format and the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| hearth::fuzzing::fhir_json(data));
