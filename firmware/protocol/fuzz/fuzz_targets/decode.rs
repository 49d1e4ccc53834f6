//! Any bytes as a frame, through the firmware's decoders (no_std: serde-json-core and
//! postcard): every decoder returns, never panics, and a server message the device accepts
//! encodes back to the same message.
#![no_main]

use conclave_protocol::{ServerMessage, from_binary, from_json, to_binary, to_json};

libfuzzer_sys::fuzz_target!(|frame: &[u8]| {
    conclave_protocol::fuzz_all_decoders(frame);
    if let Ok(message) = from_json::<ServerMessage>(frame) {
        let again = to_json(&message).expect("a decoded message encodes");
        assert_eq!(from_json::<ServerMessage>(&again).ok(), Some(message));
    }
    if let Ok(message) = from_binary::<ServerMessage>(frame) {
        let again = to_binary(&message).expect("a decoded message encodes");
        assert_eq!(from_binary::<ServerMessage>(&again).ok(), Some(message));
    }
});
