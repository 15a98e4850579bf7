#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rauta_proxy::fuzz::http1_chunked(data));
