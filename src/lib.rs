//! Conclave: one self-hosted binary where people, AI assistants and devices share secure rooms.
//!
//! The library holds every module; `main.rs` only parses the command line. Integration tests
//! build the same `startup::Application` the binary runs.

pub mod admin;
pub mod api_docs;
pub mod assistant;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod billing;
pub mod chat;
pub mod cli;
pub mod crypto;
pub mod db;
pub mod devices;
pub mod edge;
pub mod error;
pub mod history;
pub mod jobs;
pub mod mail;
pub mod metrics;
pub mod schema;
pub use conclave_core::settings;
pub mod startup;
pub mod telemetry;
pub mod tenancy;
pub mod time;
pub mod web;
