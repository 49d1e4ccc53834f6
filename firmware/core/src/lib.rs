//! The firmware's logic that does not need a chip: everything a device decides, buffers,
//! parses or verifies, so that it is tested on the host (`make firmware-test`) and, through
//! the server's test suite, against the real server (`tests/api/firmware_link.rs`).
//!
//! - [`outbox`]: the bounded offline buffer of telemetry batches, dropped only after the
//!   server's ack (oldest first when full, counted and reported in the next `hello`);
//! - [`link`]: the connection state machine (sans I/O): what to send after connecting, what a
//!   server frame means, which frame goes next;
//! - [`ota`]: streaming SHA-256 + ed25519 verification of a downloaded image and the boot
//!   guard that confirms or rolls back a new image;
//! - [`provision`]: the provisioning record kept in flash and the serial line protocol that
//!   writes it (`conclave device provision --port …`);
//! - [`websocket`]: the WebSocket client over any embedded-io-async connection;
//! - [`http`], [`endpoint`]: the few HTTP/1.1 and URL pieces the device needs (claim
//!   exchange, Range downloads);
//! - [`store`]: the framed, checksummed records kept in flash;
//! - [`backoff`]: reconnect delays.
//!
//! The ESP32 application (`firmware/app`) owns the peripherals, the network and the flash and
//! calls into this crate; it holds no decisions of its own that a test could not reach.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod backoff;
pub mod endpoint;
pub mod http;
pub mod link;
pub mod ota;
pub mod outbox;
pub mod provision;
pub mod store;
pub mod websocket;

pub use conclave_protocol as wire;
