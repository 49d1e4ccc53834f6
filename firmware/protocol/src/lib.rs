//! The device wire protocol of Conclave, shared by the server and the firmware.
//!
//! Devices speak it over the realtime WebSocket (`/api/v1/ws`) as JSON text frames
//! (subprotocol [`SUBPROTOCOL_JSON`]) or as postcard binary frames (subprotocol
//! [`SUBPROTOCOL_BINARY`]) — the same messages, two encodings. docs/protocol.md ("Devices")
//! describes every message; this crate is its definition.
//!
//! `no_std` with `alloc` (the firmware has a heap). With the `std` feature (the server), JSON is
//! read and written with serde_json; without it, with serde-json-core — both produce and accept
//! the same text, which the tests check in both directions. Enums use serde's default
//! externally tagged form (`{"telemetry": {…}}`), the one both JSON crates and postcard share.
//!
//! Every decoder checks the frame's size before parsing and the message's limits after
//! ([`Validate`]): any input, however malformed, is an `Err`, never a panic (the `fuzz/`
//! target and the `no_input_panics` test).

#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The protocol's version; a device says which it speaks in [`Hello::protocol`].
pub const VERSION: u16 = 1;
/// JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "conclave.v1";
/// postcard binary frames, for constrained devices and large payloads.
pub const SUBPROTOCOL_BINARY: &str = "conclave.v1.bin";
/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 16 * 1024;
/// Readings in one telemetry batch.
pub const MAX_READINGS: usize = 256;
/// Names (metrics, commands, capabilities, versions).
pub const MAX_NAME: usize = 64;
/// Free text (command output, error details).
pub const MAX_TEXT: usize = 2_048;
/// Arguments of one command, capabilities of one device, settings in one welcome.
pub const MAX_ITEMS: usize = 32;

/// What a device sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceMessage {
    /// The first frame after connecting.
    Hello(Hello),
    /// A batch of readings, acknowledged by its `seq` ([`ServerMessage::TelemetryAck`]).
    Telemetry(Telemetry),
    /// The answer to a [`Command`].
    CommandResult(CommandResult),
    /// Progress of an offered firmware update.
    OtaStatus(OtaStatus),
}

/// What the server sends to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to [`Hello`]: who the device is and how to behave.
    Welcome(Welcome),
    /// Every batch up to and including `seq` is stored: the device may drop them.
    TelemetryAck(TelemetryAck),
    Command(Command),
    OtaOffer(OtaOffer),
    /// A frame was refused; the connection stays open unless the code says otherwise.
    Error(ErrorFrame),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`VERSION`] as the device knows it.
    pub protocol: u16,
    /// The running firmware's version, e.g. `1.4.2`.
    pub firmware: String,
    /// e.g. `esp32c3`, `esp32c6`, `simulator`.
    pub chip: String,
    /// What the device can do: `telemetry`, `commands`, `ota`, …
    pub capabilities: Vec<String>,
    /// Readings the device had to drop since its last answered `hello` because its offline
    /// buffer was full (oldest first). Absent in JSON means 0.
    #[serde(default)]
    pub dropped_readings: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Increases by one per batch, across reconnects; the server ignores a `seq` it stored.
    pub seq: u64,
    /// When the batch was taken: Unix time in milliseconds, or 0 when the device has no
    /// clock (the server uses its arrival time).
    pub at_ms: u64,
    pub readings: Vec<Reading>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// `temperature`, `humidity`, `rssi`, … (letters, digits, `_ . -`).
    pub metric: String,
    /// A finite number.
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The [`Command::id`] answered.
    pub id: u64,
    pub status: CommandStatus,
    /// What the command printed or returned, if anything.
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Received; a result follows.
    Accepted,
    Succeeded,
    Failed,
    /// The device has no such command.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaStatus {
    /// The [`OtaOffer::rollout`] this is about.
    pub rollout: u64,
    /// The offered image's version.
    pub version: String,
    pub state: OtaState,
    /// Bytes downloaded so far (while downloading).
    pub received: u32,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaState {
    Downloading,
    Verifying,
    Installed,
    /// Rebooted into the new image and it reported healthy.
    BootedOk,
    /// The new image did not come up; the previous one runs again.
    RolledBack,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's [`VERSION`].
    pub protocol: u16,
    /// The device's id in the registry.
    pub device_id: u64,
    /// How often to send telemetry.
    pub telemetry_interval_secs: u32,
    /// The last telemetry `seq` stored, so a device that lost its counter starts above it.
    pub last_seq: u64,
    /// Settings for the device, as name/value pairs.
    pub settings: Vec<Setting>,
    /// The server's clock, Unix time in milliseconds, so a device without a clock can date
    /// its readings (including those it took while offline). Absent in JSON means 0: unknown.
    #[serde(default)]
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryAck {
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub name: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaOffer {
    pub rollout: u64,
    pub version: String,
    /// Where to download the image (HTTPS, with the device token; Range requests resume).
    pub url: String,
    pub size: u32,
    /// SHA-256 of the image, lower-case hex.
    pub sha256: String,
    /// The ed25519 signature of the image, lower-case hex; the firmware checks it against the
    /// public key compiled into it before installing.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// A stable code: `bad_frame`, `rate_limited`, `unsupported_version`, …
    pub code: String,
    pub message: String,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Larger than [`MAX_FRAME`].
    TooLarge(usize),
    /// Not a message of this protocol (the parser's reason).
    Malformed(String),
    /// Well-formed, but a value is out of bounds: the field and why.
    Invalid(&'static str, &'static str),
    /// The buffer given to an encoder is too small.
    BufferFull,
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "frame of {n} bytes is larger than {MAX_FRAME}"),
            Self::Malformed(why) => write!(f, "not a conclave.v1 message: {why}"),
            Self::Invalid(field, why) => write!(f, "{field}: {why}"),
            Self::BufferFull => f.write_str("the output buffer is too small"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ProtocolError {}

/// The limits a decoded message must keep.
pub trait Validate {
    fn validate(&self) -> Result<(), ProtocolError>;
}

fn name(field: &'static str, value: &str) -> Result<(), ProtocolError> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(ProtocolError::Invalid(field, "1 to 64 bytes"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ProtocolError::Invalid(
            field,
            "letters, digits, '_', '.' and '-' only",
        ));
    }
    Ok(())
}

fn text(field: &'static str, value: &str) -> Result<(), ProtocolError> {
    if value.len() > MAX_TEXT {
        return Err(ProtocolError::Invalid(field, "at most 2048 bytes"));
    }
    Ok(())
}

fn items<T>(field: &'static str, list: &[T], max: usize) -> Result<(), ProtocolError> {
    if list.len() > max {
        return Err(ProtocolError::Invalid(field, "too many entries"));
    }
    Ok(())
}

impl Validate for DeviceMessage {
    fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Self::Hello(hello) => {
                name("hello.firmware", &hello.firmware)?;
                name("hello.chip", &hello.chip)?;
                items("hello.capabilities", &hello.capabilities, MAX_ITEMS)?;
                for capability in &hello.capabilities {
                    name("hello.capabilities", capability)?;
                }
                Ok(())
            }
            Self::Telemetry(batch) => {
                if batch.readings.is_empty() {
                    return Err(ProtocolError::Invalid(
                        "telemetry.readings",
                        "at least one reading",
                    ));
                }
                items("telemetry.readings", &batch.readings, MAX_READINGS)?;
                for reading in &batch.readings {
                    name("telemetry.readings.metric", &reading.metric)?;
                    if !reading.value.is_finite() {
                        return Err(ProtocolError::Invalid(
                            "telemetry.readings.value",
                            "a finite number",
                        ));
                    }
                }
                Ok(())
            }
            Self::CommandResult(result) => match &result.output {
                Some(output) => text("command_result.output", output),
                None => Ok(()),
            },
            Self::OtaStatus(status) => {
                name("ota_status.version", &status.version)?;
                match &status.detail {
                    Some(detail) => text("ota_status.detail", detail),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Validate for ServerMessage {
    fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Self::Welcome(welcome) => {
                items("welcome.settings", &welcome.settings, MAX_ITEMS)?;
                for setting in &welcome.settings {
                    name("welcome.settings.name", &setting.name)?;
                    text("welcome.settings.value", &setting.value)?;
                }
                Ok(())
            }
            Self::TelemetryAck(_) => Ok(()),
            Self::Command(command) => {
                name("command.name", &command.name)?;
                items("command.args", &command.args, MAX_ITEMS)?;
                for arg in &command.args {
                    text("command.args", arg)?;
                }
                Ok(())
            }
            Self::OtaOffer(offer) => {
                name("ota_offer.version", &offer.version)?;
                text("ota_offer.url", &offer.url)?;
                let hex = |s: &str, len: usize| {
                    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                };
                if !hex(&offer.sha256, 64) {
                    return Err(ProtocolError::Invalid(
                        "ota_offer.sha256",
                        "64 lower-case hex digits",
                    ));
                }
                if !hex(&offer.signature, 128) {
                    return Err(ProtocolError::Invalid(
                        "ota_offer.signature",
                        "128 lower-case hex digits",
                    ));
                }
                Ok(())
            }
            Self::Error(error) => {
                name("error.code", &error.code)?;
                text("error.message", &error.message)
            }
        }
    }
}

fn check_size(frame: &[u8]) -> Result<(), ProtocolError> {
    if frame.len() > MAX_FRAME {
        Err(ProtocolError::TooLarge(frame.len()))
    } else {
        Ok(())
    }
}

/// Reads a JSON text frame: size, then syntax and shape, then limits.
pub fn from_json<T>(frame: &[u8]) -> Result<T, ProtocolError>
where
    T: serde::de::DeserializeOwned + Validate,
{
    check_size(frame)?;
    #[cfg(feature = "std")]
    let message: T = serde_json::from_slice(frame)
        .map_err(|e| ProtocolError::Malformed(alloc::format!("{e}")))?;
    #[cfg(not(feature = "std"))]
    let message: T = {
        // Escaped strings (`\"`, `\n`, `\u00e9`) are unescaped into this scratch buffer.
        let mut scratch = [0u8; MAX_TEXT];
        let (message, used) = serde_json_core::from_slice_escaped(frame, &mut scratch)
            .map_err(|e| ProtocolError::Malformed(alloc::format!("{e}")))?;
        if frame[used..].iter().any(|b| !b.is_ascii_whitespace()) {
            return Err(ProtocolError::Malformed("trailing characters".into()));
        }
        message
    };
    message.validate()?;
    Ok(message)
}

/// Writes a message as a JSON text frame.
pub fn to_json<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    #[cfg(feature = "std")]
    let bytes =
        serde_json::to_vec(message).map_err(|e| ProtocolError::Malformed(alloc::format!("{e}")))?;
    #[cfg(not(feature = "std"))]
    let bytes = {
        let mut buffer = alloc::vec![0u8; MAX_FRAME];
        let used = serde_json_core::to_slice(message, &mut buffer)
            .map_err(|_| ProtocolError::BufferFull)?;
        buffer.truncate(used);
        buffer
    };
    check_size(&bytes)?;
    Ok(bytes)
}

/// Reads a postcard binary frame: size, then shape (the whole frame), then limits.
pub fn from_binary<T>(frame: &[u8]) -> Result<T, ProtocolError>
where
    T: serde::de::DeserializeOwned + Validate,
{
    check_size(frame)?;
    let (message, rest): (T, &[u8]) = postcard::take_from_bytes(frame)
        .map_err(|e| ProtocolError::Malformed(alloc::format!("{e}")))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed("trailing bytes".into()));
    }
    message.validate()?;
    Ok(message)
}

/// Writes a message as a postcard binary frame.
pub fn to_binary<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let bytes = postcard::to_allocvec(message)
        .map_err(|e| ProtocolError::Malformed(alloc::format!("{e}")))?;
    check_size(&bytes)?;
    Ok(bytes)
}

/// Runs every decoder on `frame`; each must return, never panic. The fuzz target
/// (`fuzz/fuzz_targets/decode.rs`) and the `no_input_panics` test call it.
#[doc(hidden)]
pub fn fuzz_all_decoders(frame: &[u8]) {
    let _ = from_json::<DeviceMessage>(frame);
    let _ = from_json::<ServerMessage>(frame);
    let _ = from_binary::<DeviceMessage>(frame);
    let _ = from_binary::<ServerMessage>(frame);
}

#[cfg(test)]
mod tests;
