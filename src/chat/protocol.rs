//! The realtime protocol, version 1 (`conclave.v1`): JSON text frames with a `type`. This
//! module parses what clients send and builds what the server sends; docs/protocol.md is the
//! reference for client authors and must change with it.
//!
//! Unknown fields are ignored (so a newer client can talk to an older server); an unknown
//! `type` or a malformed frame gets an `error` frame, not a close.

use serde::Deserialize;
use serde_json::{Value, json};

use super::hub::Presence;
use super::rooms::MessageView;

/// The WebSocket subprotocol of this version.
pub const PROTOCOL: &str = "conclave.v1";
/// Longest `ref` a client may attach to a frame (it is echoed back).
pub const MAX_REF_CHARS: usize = 64;

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Follow a room. With `since`, first receive every message after that id (resume).
    Subscribe {
        room: i64,
        since: Option<i64>,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Unsubscribe {
        room: i64,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Post {
        room: i64,
        body: String,
        reply_to: Option<i64>,
        idempotency_key: Option<String>,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Edit {
        room: i64,
        message_id: i64,
        body: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Delete {
        room: i64,
        message_id: i64,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Typing {
        room: i64,
    },
    Presence {
        state: ClientPresence,
    },
    Read {
        room: i64,
        message_id: i64,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Ping {
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
}

/// The states a client may set; `offline` is what closing the connection means.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientPresence {
    Online,
    Away,
}

impl From<ClientPresence> for Presence {
    fn from(state: ClientPresence) -> Self {
        match state {
            ClientPresence::Online => Presence::Online,
            ClientPresence::Away => Presence::Away,
        }
    }
}

impl ClientFrame {
    /// The client's `ref`, echoed in the answer.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Self::Subscribe { reference, .. }
            | Self::Unsubscribe { reference, .. }
            | Self::Post { reference, .. }
            | Self::Edit { reference, .. }
            | Self::Delete { reference, .. }
            | Self::Read { reference, .. }
            | Self::Ping { reference } => reference.as_deref(),
            Self::Typing { .. } | Self::Presence { .. } => None,
        }
    }
}

/// Parses a text frame. The error is the message for the client's `error` frame.
pub fn parse(text: &str) -> Result<ClientFrame, (&'static str, String)> {
    let frame: ClientFrame = serde_json::from_str(text).map_err(|e| {
        let kind = if text.trim_start().starts_with('{') {
            "bad_frame"
        } else {
            "not_json"
        };
        (kind, format!("frame: {e}"))
    })?;
    if frame
        .reference()
        .is_some_and(|r| r.chars().count() > MAX_REF_CHARS)
    {
        return Err((
            "bad_frame",
            format!("ref: must be at most {MAX_REF_CHARS} characters"),
        ));
    }
    Ok(frame)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_bad_ones_say_why() {
        match parse(r#"{"type":"subscribe","room":4,"since":10,"ref":"a","extra":1}"#) {
            Ok(ClientFrame::Subscribe {
                room: 4,
                since: Some(10),
                reference: Some(r),
            }) => assert_eq!(r, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse("hello").err().map(|e| e.0), Some("not_json"));
        let (code, message) = parse(r#"{"type":"dance"}"#).expect_err("unknown type");
        assert_eq!(code, "bad_frame");
        assert!(message.contains("dance"), "{message}");
        let (_, message) = parse(r#"{"type":"post","room":"x","body":"hi"}"#).expect_err("type");
        assert!(message.contains("invalid type"), "{message}");
        let long = "r".repeat(MAX_REF_CHARS + 1);
        assert!(parse(&format!(r#"{{"type":"ping","ref":"{long}"}}"#)).is_err());
    }
}
