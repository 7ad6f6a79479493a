//! The wire protocol shared by the server and the browser client: frame types, error codes, close
//! codes and limits. It depends on serde alone, so it compiles unchanged into the WASM build.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The subprotocol that selects the rich protocol; without it a connection speaks the classic format.
pub const SUBPROTOCOL: &str = "hubbub.v1";
/// The room every classic client talks in, and the room the page opens by default.
pub const DEFAULT_ROOM: &str = "general";
/// Longest message body, in characters (Unicode scalar values).
pub const MAX_BODY_CHARS: usize = 4_000;
/// Longest WebSocket message or frame the server accepts, in bytes; larger ones are closed with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest `client_id`, in bytes. A UUID needs 36.
pub const MAX_CLIENT_ID_BYTES: usize = 64;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 64;
/// How many messages the room page renders on the server.
pub const PAGE_HISTORY: usize = 50;
/// Most messages one history request returns.
pub const MAX_PAGE: usize = 200;
/// Most rooms one `hello` may resume.
pub const MAX_RESUME_ROOMS: usize = 100;

/// WebSocket close codes the server sends.
pub mod close {
    /// The client or server ends the conversation normally.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; reconnect and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame on a text-only protocol.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was broken (auth, origin, rate).
    pub const POLICY: u16 = 1008;
    /// A frame or message over [`super::MAX_FRAME_BYTES`].
    pub const TOO_BIG: u16 = 1009;
    /// The server failed; reconnect and resume.
    pub const INTERNAL: u16 = 1011;
    /// The client read too slowly; reconnect and resume from your last seq.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The session was logged out or the token revoked.
    pub const REVOKED: u16 = 4001;
    /// The client did not answer the server's ping in time.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
}

/// A stored chat message as it travels on the wire and renders in the page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    /// Position in the room: 1, 2, 3, … with no gaps. The client's resume cursor.
    pub seq: u64,
    /// Server-wide identity of the row.
    pub id: i64,
    /// The sender's idempotency key; a resend with the same key returns this message.
    pub client_id: String,
    pub user: String,
    pub body: String,
    /// Milliseconds since the Unix epoch, set by the server when it stored the message.
    pub ts: i64,
}

/// Frames a client sends on `hubbub.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Opens the session: joins each room in `resume` and replays what came after its cursor.
    Hello {
        #[serde(default)]
        resume: BTreeMap<String, u64>,
        /// Display name for this connection (anonymous mode).
        #[serde(default)]
        user: Option<String>,
    },
    /// Joins a room; with `after`, replays what came after that seq, else starts at the head.
    Join {
        room: String,
        #[serde(default)]
        after: Option<u64>,
    },
    Leave {
        room: String,
    },
    /// Stores a message; answered by `ack` once it is durable.
    Send {
        room: String,
        client_id: String,
        body: String,
        /// Display name, overriding the one given in `hello`.
        #[serde(default)]
        user: Option<String>,
    },
    Ping {
        #[serde(default)]
        nonce: Option<u64>,
    },
}

/// Frames the server sends on `hubbub.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: String,
        session: String,
        protocol: String,
    },
    Message(ChatMessage),
    /// The message with this `client_id` is durably stored at `seq`.
    Ack {
        client_id: String,
        room: String,
        seq: u64,
    },
    /// The server cannot replay from `from`; the client must fetch history over HTTP.
    HistoryGap {
        room: String,
        from: u64,
    },
    /// A room is joined and its replay is complete: live messages follow.
    Joined {
        room: String,
        head: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The `client_id` or room the error refers to, when there is one.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

/// The classic broadcast-chat format, used by connections without a subprotocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicMessage {
    pub user: String,
    pub message: String,
}

/// Machine-readable error codes, shared by the WebSocket protocol and the HTTP API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not JSON, or not an object.
    MalformedJson,
    /// The `type` is not one the server knows.
    UnknownType,
    /// A field is missing or has the wrong type.
    InvalidFrame,
    EmptyMessage,
    MessageTooLong,
    InvalidClientId,
    InvalidName,
    UnknownRoom,
    NotJoined,
    /// The `hello` came twice, or after other frames.
    BadSequence,
    InvalidQuery,
    Unauthorized,
    /// The client sends faster than its rate limit.
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::EmptyMessage => "empty_message",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::InvalidClientId => "invalid_client_id",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::BadSequence => "bad_sequence",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A rule a client input broke, with the code it maps to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: ErrorCode,
    pub message: String,
}

impl Invalid {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Checks a message body: not blank, at most [`MAX_BODY_CHARS`] characters.
pub fn validate_body(body: &str) -> Result<(), Invalid> {
    if body.trim().is_empty() {
        return Err(Invalid::new(ErrorCode::EmptyMessage, "message is empty"));
    }
    let chars = body.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err(Invalid::new(
            ErrorCode::MessageTooLong,
            format!("message has {chars} characters; the limit is {MAX_BODY_CHARS}"),
        ));
    }
    Ok(())
}

/// Checks a `client_id`: 1 to [`MAX_CLIENT_ID_BYTES`] printable ASCII characters.
pub fn validate_client_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Invalid::new(
            ErrorCode::InvalidClientId,
            format!("client_id must be 1 to {MAX_CLIENT_ID_BYTES} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// Normalises a display name: trimmed, "anonymous" when blank, at most [`MAX_NAME_CHARS`] characters.
pub fn normalize_name(name: Option<&str>) -> Result<String, Invalid> {
    let name = name.map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Ok("anonymous".to_owned());
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Invalid::new(
            ErrorCode::InvalidName,
            format!("name must be at most {MAX_NAME_CHARS} characters, without control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Checks a room name: 1 to [`MAX_ROOM_BYTES`] of `a-z`, `0-9`, `-` and `_`.
pub fn valid_room_name(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_BYTES
        && room
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Parses a client frame, telling malformed JSON, unknown types and bad fields apart.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, Invalid> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Invalid::new(ErrorCode::MalformedJson, format!("not valid JSON: {e}")))?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err(Invalid::new(
            ErrorCode::InvalidFrame,
            "a frame must be a JSON object with a string \"type\"",
        ));
    };
    const KNOWN: [&str; 5] = ["hello", "join", "leave", "send", "ping"];
    if !KNOWN.contains(&kind.as_str()) {
        let kind = kind.chars().take(32).collect::<String>();
        return Err(Invalid::new(
            ErrorCode::UnknownType,
            format!("unknown frame type {kind:?}"),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        Invalid::new(
            ErrorCode::InvalidFrame,
            format!("invalid {kind} frame: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_wire_names() {
        let f = ServerFrame::Ack {
            client_id: "c".into(),
            room: "general".into(),
            seq: 7,
        };
        let json = serde_json::to_string(&f).expect("serialize");
        assert_eq!(
            json,
            r#"{"type":"ack","client_id":"c","room":"general","seq":7}"#
        );
        let e = ServerFrame::Error {
            code: ErrorCode::UnknownType,
            message: "x".into(),
            reference: Some("r".into()),
        };
        let json = serde_json::to_string(&e).expect("serialize");
        assert_eq!(
            json,
            r#"{"type":"error","code":"unknown_type","message":"x","ref":"r"}"#
        );
        let back: ServerFrame = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
    }

    #[test]
    fn parse_tells_errors_apart() {
        assert_eq!(
            parse_client_frame("{").map_err(|e| e.code),
            Err(ErrorCode::MalformedJson)
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"dance"}"#).map_err(|e| e.code),
            Err(ErrorCode::UnknownType)
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"send","room":"general"}"#).map_err(|e| e.code),
            Err(ErrorCode::InvalidFrame)
        );
        assert_eq!(
            parse_client_frame("[1]").map_err(|e| e.code),
            Err(ErrorCode::InvalidFrame)
        );
        assert!(matches!(
            parse_client_frame(r#"{"type":"hello","resume":{"general":3}}"#),
            Ok(ClientFrame::Hello { .. })
        ));
    }

    #[test]
    fn body_limits_count_characters() {
        assert!(validate_body(&"é".repeat(MAX_BODY_CHARS)).is_ok());
        assert_eq!(
            validate_body(&"a".repeat(MAX_BODY_CHARS + 1)).map_err(|e| e.code),
            Err(ErrorCode::MessageTooLong)
        );
        assert_eq!(
            validate_body("  \n").map_err(|e| e.code),
            Err(ErrorCode::EmptyMessage)
        );
    }

    #[test]
    fn room_names() {
        assert!(valid_room_name("general"));
        assert!(valid_room_name("team-42_x"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("General"));
        assert!(!valid_room_name("a/b"));
    }
}
