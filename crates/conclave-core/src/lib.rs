//! Conclave's I/O-free core: the code that turns untrusted text and bytes into values, kept
//! apart from the server so that it can be fuzzed cheaply (`make fuzz`, targets in `fuzz/`).
//! The server re-exports each module where it used to live (`conclave::settings`,
//! `conclave::chat::markdown`, …), so nothing else needs to know about this crate.

pub mod keys;
pub mod markdown;
pub mod realtime;
pub mod settings;
pub mod sse;
pub mod webhook;
