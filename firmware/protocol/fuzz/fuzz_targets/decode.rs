//! Any bytes, as a JSON or binary frame from a device or the server: every decoder returns.
#![no_main]

libfuzzer_sys::fuzz_target!(|frame: &[u8]| {
    conclave_protocol::fuzz_all_decoders(frame);
});
