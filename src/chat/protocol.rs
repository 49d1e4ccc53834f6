//! The realtime protocol, version 1 (`conclave.v1`): JSON text frames with a `type`. This
//! module parses what clients send and builds what the server sends; docs/protocol.md is the
//! reference for client authors and must change with it.
//!
//! Unknown fields are ignored (so a newer client can talk to an older server); an unknown
//! `type` or a malformed frame gets an `error` frame, not a close.

use serde_json::{Value, json};

use super::hub::Presence;
use super::rooms::MessageView;

/// The WebSocket subprotocol of this version.
pub const PROTOCOL: &str = "conclave.v1";
pub use conclave_core::realtime::{ClientFrame, ClientPresence, MAX_REF_CHARS, parse};

impl From<ClientPresence> for Presence {
    fn from(state: ClientPresence) -> Self {
        match state {
            ClientPresence::Online => Presence::Online,
            ClientPresence::Away => Presence::Away,
        }
    }
}

fn with_ref(mut frame: Value, reference: Option<&str>) -> String {
    if let Some(reference) = reference {
        frame["ref"] = json!(reference);
    }
    frame.to_string()
}

pub fn hello(connection_id: u64, user_id: i64, name: &str, heartbeat_secs: u64) -> String {
    json!({
        "type": "hello",
        "protocol": PROTOCOL,
        "connection_id": connection_id,
        "user": { "id": user_id, "name": name },
        "heartbeat_secs": heartbeat_secs,
    })
    .to_string()
}

pub fn error(code: &str, message: &str, reference: Option<&str>) -> String {
    with_ref(
        json!({ "type": "error", "code": code, "message": message }),
        reference,
    )
}

/// A message that is new to the client: live (`replay: false`) or from history on resume.
pub fn message(message: &MessageView, replay: bool) -> String {
    json!({ "type": "message", "room": message.room_id, "message": message, "replay": replay })
        .to_string()
}

pub fn message_edited(message: &MessageView) -> String {
    json!({ "type": "message_edited", "room": message.room_id, "message": message }).to_string()
}

pub fn message_deleted(room: i64, message_id: i64) -> String {
    json!({ "type": "message_deleted", "room": room, "message_id": message_id }).to_string()
}

pub fn subscribed(
    room: i64,
    replayed: usize,
    last_id: Option<i64>,
    read: Option<i64>,
    present: &[(i64, String, Presence)],
    reference: Option<&str>,
) -> String {
    let presence: Vec<Value> = present
        .iter()
        .map(|(id, name, state)| json!({ "user": { "id": id, "name": name }, "state": state }))
        .collect();
    with_ref(
        json!({
            "type": "subscribed",
            "room": room,
            "replayed": replayed,
            "last_id": last_id,
            "read": read,
            "presence": presence,
        }),
        reference,
    )
}

pub fn unsubscribed(room: i64, reason: &str, reference: Option<&str>) -> String {
    with_ref(
        json!({ "type": "unsubscribed", "room": room, "reason": reason }),
        reference,
    )
}

/// The answer to `post`, `edit` and `delete`: the stored message.
pub fn ack(message: &MessageView, duplicate: bool, reference: Option<&str>) -> String {
    with_ref(
        json!({ "type": "ack", "message": message, "duplicate": duplicate }),
        reference,
    )
}

pub fn typing(room: i64, user_id: i64, name: &str) -> String {
    json!({ "type": "typing", "room": room, "user": { "id": user_id, "name": name } }).to_string()
}

pub fn presence(room: i64, user_id: i64, name: &str, state: Presence) -> String {
    json!({
        "type": "presence",
        "room": room,
        "user": { "id": user_id, "name": name },
        "state": state,
    })
    .to_string()
}

pub fn read(room: i64, user_id: i64, message_id: i64, reference: Option<&str>) -> String {
    with_ref(
        json!({ "type": "read", "room": room, "user_id": user_id, "message_id": message_id }),
        reference,
    )
}

pub fn pong(reference: Option<&str>) -> String {
    with_ref(json!({ "type": "pong" }), reference)
}
