//! Integration tests through the real HTTP surface and the real binary. One test binary (one
//! link) with a module per area. Run on SQLite by default, on PostgreSQL with
//! TEST_BACKEND=postgres (see helpers.rs and the Makefile).

#![expect(
    clippy::unwrap_used,
    reason = "a test that cannot proceed should fail right there"
)]

mod accounts_cli;
mod admin;
mod assistant;
mod assistant_chats;
mod backup;
mod billing;
mod captcha;
mod cli;
mod client_errors;
mod cluster;
mod database;
mod device_fleet;
mod device_gateway;
mod devices;
mod edge;
mod fake_llm;
mod faults;
mod firmware;
mod guests;
mod helpers;
mod injection;
mod isolation;
mod jobs;
mod login;
mod mail;
mod members;
mod observability;
mod oidc;
mod openapi;
mod packaging;
mod passwords;
mod preferences;
mod privacy;
mod realtime;
mod revolut_stub;
mod rooms;
mod schema;
mod sessions;
mod settings;
mod signup;
mod sweep;
mod tenants;
mod tokens;
mod two_factor;
mod vault;
mod web;
