//! Any text frame a realtime client may send: parsing answers a frame or a reason, never
//! panics, and a parsed frame keeps to the protocol's limits.
#![no_main]

use conclave_core::realtime::{MAX_REF_CHARS, parse};

libfuzzer_sys::fuzz_target!(|text: &str| {
    match parse(text) {
        Ok(frame) => assert!(
            frame
                .reference()
                .is_none_or(|r| r.chars().count() <= MAX_REF_CHARS)
        ),
        Err((code, message)) => {
            assert!(code == "bad_frame" || code == "not_json");
            assert!(!message.is_empty());
        }
    }
});
