//! What realtime clients send (`conclave.v1`, JSON text frames with a `type`), parsed.
//!
//! Unknown fields are ignored (so a newer client can talk to an older server); an unknown
//! `type` or a malformed frame is an error for the client's `error` frame, not a close.

use serde::Deserialize;

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
