#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wasm_filter_core::fuzzing::grpc_web(data));
