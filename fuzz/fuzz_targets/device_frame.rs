//! Any bytes as a device's or the server's frame, in JSON and in postcard (the server's
//! decoders, with std): every decoder returns, and what decodes encodes back to the same
//! message.
#![no_main]

use conclave_protocol::{DeviceMessage, from_binary, from_json, to_binary, to_json};

libfuzzer_sys::fuzz_target!(|frame: &[u8]| {
    conclave_protocol::fuzz_all_decoders(frame);
    if let Ok(message) = from_json::<DeviceMessage>(frame) {
        let again = to_json(&message).expect("a decoded message encodes");
        assert_eq!(from_json::<DeviceMessage>(&again).ok(), Some(message));
    }
    if let Ok(message) = from_binary::<DeviceMessage>(frame) {
        let again = to_binary(&message).expect("a decoded message encodes");
        assert_eq!(from_binary::<DeviceMessage>(&again).ok(), Some(message));
    }
});
