//! Host tests: every message round-trips in both encodings; serde_json (the server) and
//! serde-json-core (the firmware) read each other's text; limits are enforced; and no input —
//! random, truncated or mutated frames — makes a decoder panic.

extern crate std;

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use super::*;

fn device_messages() -> Vec<DeviceMessage> {
    vec![
        DeviceMessage::Hello(Hello {
            protocol: VERSION,
            firmware: "1.4.2".into(),
            chip: "esp32c3".into(),
            capabilities: vec!["telemetry".into(), "commands".into(), "ota".into()],
            dropped_readings: 12,
        }),
        DeviceMessage::Telemetry(Telemetry {
            seq: 41,
            at_ms: 1_796_031_468_112,
            readings: vec![
                Reading {
                    metric: "temperature".into(),
                    value: 21.5,
                },
                Reading {
                    metric: "rssi".into(),
                    value: -67.0,
                },
            ],
        }),
        DeviceMessage::CommandResult(CommandResult {
            id: 7,
            status: CommandStatus::Succeeded,
            output: Some("relay \"on\"\nok".into()),
        }),
        DeviceMessage::CommandResult(CommandResult {
            id: 8,
            status: CommandStatus::Unknown,
            output: None,
        }),
        DeviceMessage::OtaStatus(OtaStatus {
            rollout: 3,
            version: "1.5.0".into(),
            state: OtaState::Downloading,
            received: 65_536,
            detail: None,
        }),
    ]
}

fn server_messages() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome(Welcome {
            protocol: VERSION,
            device_id: 12,
            telemetry_interval_secs: 30,
            last_seq: 40,
            settings: vec![Setting {
                name: "threshold.temperature".into(),
                value: "28.5".into(),
            }],
            time_ms: 1_796_031_468_000,
        }),
        ServerMessage::TelemetryAck(TelemetryAck { seq: 41 }),
        ServerMessage::Command(Command {
            id: 7,
            name: "relay".into(),
            args: vec!["on".into(), "for 5 s".into()],
        }),
        ServerMessage::OtaOffer(OtaOffer {
            rollout: 3,
            version: "1.5.0".into(),
            url: "https://chat.example.com/api/v1/devices/firmware/9".into(),
            size: 540_000,
            sha256: "ab".repeat(32),
            signature: "cd".repeat(64),
        }),
        ServerMessage::Error(ErrorFrame {
            code: "rate_limited".into(),
            message: "telemetry faster than 1 batch/s".into(),
        }),
    ]
}

#[test]
fn every_message_round_trips_in_json_and_binary() {
    for message in device_messages() {
        let json = to_json(&message).expect("encodes");
        assert_eq!(from_json::<DeviceMessage>(&json), Ok(message.clone()));
        let binary = to_binary(&message).expect("encodes");
        assert_eq!(from_binary::<DeviceMessage>(&binary), Ok(message.clone()));
        assert!(binary.len() < json.len(), "binary is the compact one");
    }
    for message in server_messages() {
        let json = to_json(&message).expect("encodes");
        assert_eq!(from_json::<ServerMessage>(&json), Ok(message.clone()));
        let binary = to_binary(&message).expect("encodes");
        assert_eq!(from_binary::<ServerMessage>(&binary), Ok(message.clone()));
    }
}

/// Found by fuzzing: a long decimal that serde_json's default (fast) parser rounded one ulp
/// away from the nearest double, so re-encoding the reading changed it.
#[cfg(feature = "std")]
#[test]
fn a_reading_with_many_digits_survives_decoding_and_encoding_again() {
    let frame = br#"{"telemetry":{"seq":10,"at_ms":1796031460,"readings":[{"metric":"temperature","value":21.555555555555544444444444444444444444444444444444444444444444444444461}]}}"#;
    let decoded = from_json::<DeviceMessage>(frame).expect("decodes");
    let again = to_json(&decoded).expect("encodes");
    assert_eq!(from_json::<DeviceMessage>(&again), Ok(decoded));
}

#[test]
fn the_firmware_json_reader_and_writer_agree_with_the_servers() {
    // The firmware (serde-json-core) reads what the server (serde_json) writes, escapes too…
    for message in server_messages() {
        let text = serde_json::to_vec(&message).expect("serde_json writes");
        let mut scratch = [0u8; MAX_TEXT];
        let (read, _) = serde_json_core::from_slice_escaped::<ServerMessage>(&text, &mut scratch)
            .expect("serde-json-core reads it");
        assert_eq!(read, message);
    }
    // …and the server reads what the firmware writes.
    for message in device_messages() {
        let mut buffer = [0u8; MAX_FRAME];
        let used =
            serde_json_core::to_slice(&message, &mut buffer).expect("serde-json-core writes");
        let read: DeviceMessage =
            serde_json::from_slice(&buffer[..used]).expect("serde_json reads it");
        assert_eq!(read, message);
    }
}

#[test]
fn the_json_form_is_externally_tagged_snake_case() {
    let text = to_json(&ServerMessage::TelemetryAck(TelemetryAck { seq: 5 })).expect("encodes");
    assert_eq!(text, br#"{"telemetry_ack":{"seq":5}}"#);
    let frame = br#"{"telemetry":{"seq":1,"at_ms":0,"readings":[{"metric":"t","value":1}]}}"#;
    let read: DeviceMessage = from_json(frame).expect("a device's frame");
    assert!(matches!(read, DeviceMessage::Telemetry(t) if t.readings[0].value == 1.0));
}

#[test]
fn limits_are_enforced_after_parsing() {
    let too_many = DeviceMessage::Telemetry(Telemetry {
        seq: 1,
        at_ms: 0,
        readings: (0..=MAX_READINGS)
            .map(|_| Reading {
                metric: "t".into(),
                value: 1.0,
            })
            .collect(),
    });
    let binary = to_binary(&too_many).expect("encodes");
    assert_eq!(
        from_binary::<DeviceMessage>(&binary),
        Err(ProtocolError::Invalid(
            "telemetry.readings",
            "too many entries"
        ))
    );
    for bad in [
        br#"{"telemetry":{"seq":1,"at_ms":0,"readings":[]}}"#.as_slice(),
        br#"{"telemetry":{"seq":1,"at_ms":0,"readings":[{"metric":"a b","value":1}]}}"#,
        br#"{"hello":{"protocol":1,"firmware":"","chip":"c3","capabilities":[]}}"#,
        br#"{"hello":{"protocol":1,"firmware":"1","chip":"c3","capabilities":[],"extra":1}} x"#,
        br#"{"shout":{}}"#,
        b"",
        b"null",
    ] {
        assert!(
            from_json::<DeviceMessage>(bad).is_err(),
            "{}",
            std::string::String::from_utf8_lossy(bad)
        );
    }
    let huge = vec![b' '; MAX_FRAME + 1];
    assert_eq!(
        from_json::<DeviceMessage>(&huge),
        Err(ProtocolError::TooLarge(MAX_FRAME + 1))
    );
    let offer = ServerMessage::OtaOffer(OtaOffer {
        rollout: 1,
        version: "1".into(),
        url: "https://x".into(),
        size: 1,
        sha256: "XYZ".into(),
        signature: "cd".repeat(64),
    });
    assert!(from_json::<ServerMessage>(&to_json(&offer).expect("encodes")).is_err());
    assert_eq!(
        ProtocolError::Invalid("ota_offer.sha256", "64 lower-case hex digits").to_string(),
        "ota_offer.sha256: 64 lower-case hex digits"
    );
}

/// A small deterministic generator (xorshift), so the no-panic property runs on stable in
/// `make test`; `fuzz/` runs the same decoders under libFuzzer with `cargo +nightly fuzz`.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn decode_everything(frame: &[u8]) {
    fuzz_all_decoders(frame);
}

#[test]
fn no_input_panics() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for message in device_messages() {
        seeds.push(to_json(&message).expect("encodes"));
        seeds.push(to_binary(&message).expect("encodes"));
    }
    for message in server_messages() {
        seeds.push(to_json(&message).expect("encodes"));
        seeds.push(to_binary(&message).expect("encodes"));
    }
    for seed in &seeds {
        // Every truncation.
        for end in 0..seed.len() {
            decode_everything(&seed[..end]);
        }
        // Random mutations: flipped bits, replaced and inserted bytes.
        for _ in 0..300 {
            let mut frame = seed.clone();
            for _ in 0..=(noise.next() % 4) {
                let at = (noise.next() as usize) % frame.len().max(1);
                match noise.next() % 3 {
                    0 if !frame.is_empty() => frame[at] ^= 1 << (noise.next() % 8),
                    1 if !frame.is_empty() => frame[at] = noise.next() as u8,
                    _ => frame.insert(at.min(frame.len()), noise.next() as u8),
                }
            }
            decode_everything(&frame);
        }
    }
    // Pure noise, including lengths that postcard reads as huge collections.
    for len in 0..200 {
        let frame: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
        decode_everything(&frame);
    }
    decode_everything(&[0x01, 0xff, 0xff, 0xff, 0xff, 0x0f]);
}

#[test]
fn fields_added_within_version_1_may_be_absent_in_json() {
    let hello: DeviceMessage = from_json(
        br#"{"hello":{"protocol":1,"firmware":"1.0.0","chip":"esp32c3","capabilities":[]}}"#,
    )
    .expect("a hello without dropped_readings");
    assert!(matches!(
        hello,
        DeviceMessage::Hello(Hello {
            dropped_readings: 0,
            ..
        })
    ));
    let welcome: ServerMessage = from_json(
        br#"{"welcome":{"protocol":1,"device_id":3,"telemetry_interval_secs":60,"last_seq":0,"settings":[]}}"#,
    )
    .expect("a welcome without time_ms");
    assert!(matches!(
        welcome,
        ServerMessage::Welcome(Welcome { time_ms: 0, .. })
    ));
}
