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
/// Longest quote of the message a reply answers, in characters.
pub const QUOTE_CHARS: usize = 120;
/// Most usernames a message's reaction lists per emoji.
pub const REACTION_NAMES: usize = 100;
/// Longest reaction, in bytes (an emoji with its modifiers and joiners).
pub const MAX_EMOJI_BYTES: usize = 32;

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
    /// A close frame without a code (never sent; what the server records when a client's
    /// close says none).
    pub const NO_STATUS: u16 = 1005;
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

/// What an event in a room's seq stream records. A client ignores kinds it does not know (they
/// parse as [`EventKind::Other`]): the stream can gain kinds without breaking deployed clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A chat message: `body` is its text.
    #[default]
    Message,
    /// The room was made; the author is its creator.
    RoomCreated,
    /// `member` joined (the author is the member).
    MemberJoined,
    /// `member` left.
    MemberLeft,
    /// The author added `member` to the room.
    MemberInvited,
    /// The author removed `member` from the room.
    MemberRemoved,
    /// The room's title is now `body`.
    RoomRenamed,
    /// The room's topic is now `body`.
    TopicChanged,
    /// The room is archived: read-only from this event on.
    RoomArchived,
    /// The author changed the text of message `target` to `body`.
    MessageEdited,
    /// Message `target` was deleted (by its author or the room's owner); its text is gone.
    MessageDeleted,
    /// The author reacted to message `target` with the emoji in `body`; `count` is how many have.
    ReactionAdded,
    /// The author took back their reaction `body` to message `target`.
    ReactionRemoved,
    /// A kind this build does not know.
    #[serde(other)]
    Other,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::RoomCreated => "room_created",
            EventKind::MemberJoined => "member_joined",
            EventKind::MemberLeft => "member_left",
            EventKind::MemberInvited => "member_invited",
            EventKind::MemberRemoved => "member_removed",
            EventKind::RoomRenamed => "room_renamed",
            EventKind::TopicChanged => "topic_changed",
            EventKind::RoomArchived => "room_archived",
            EventKind::MessageEdited => "message_edited",
            EventKind::MessageDeleted => "message_deleted",
            EventKind::ReactionAdded => "reaction_added",
            EventKind::ReactionRemoved => "reaction_removed",
            EventKind::Other => "other",
        }
    }

    /// The kind stored under `s` (an unknown one is [`EventKind::Other`]).
    pub fn parse(s: &str) -> Self {
        match s {
            "message" => EventKind::Message,
            "room_created" => EventKind::RoomCreated,
            "member_joined" => EventKind::MemberJoined,
            "member_left" => EventKind::MemberLeft,
            "member_invited" => EventKind::MemberInvited,
            "member_removed" => EventKind::MemberRemoved,
            "room_renamed" => EventKind::RoomRenamed,
            "topic_changed" => EventKind::TopicChanged,
            "room_archived" => EventKind::RoomArchived,
            "message_edited" => EventKind::MessageEdited,
            "message_deleted" => EventKind::MessageDeleted,
            "reaction_added" => EventKind::ReactionAdded,
            "reaction_removed" => EventKind::ReactionRemoved,
            _ => EventKind::Other,
        }
    }

    /// Whether the event adds its `member` to the room.
    pub fn adds_member(self) -> bool {
        matches!(self, EventKind::MemberJoined | EventKind::MemberInvited)
    }

    /// Whether the event takes its `member` out of the room.
    pub fn removes_member(self) -> bool {
        matches!(self, EventKind::MemberLeft | EventKind::MemberRemoved)
    }

    /// Whether the event changes an earlier message (its `target`) rather than adding one.
    pub fn changes_message(self) -> bool {
        matches!(
            self,
            EventKind::MessageEdited
                | EventKind::MessageDeleted
                | EventKind::ReactionAdded
                | EventKind::ReactionRemoved
        )
    }
}

/// The message a reply answers, as the reply shows it: one line of it (its current text, or
/// nothing once deleted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The start of its text, at most [`QUOTE_CHARS`] characters.
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

/// One emoji's reactions to a message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub emoji: String,
    pub count: u64,
    /// Who reacted, the first [`REACTION_NAMES`] usernames (for "who reacted" on hover).
    #[serde(default)]
    pub users: Vec<String>,
}

/// A file attached to a message. The type is the server's reading of the file's first bytes,
/// never what the uploader claimed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where it is served: `/api/attachments/{id}`.
    pub id: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    /// Pixels, for images, so the list does not jump when they load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

impl Attachment {
    /// Whether the page shows it inline (only the image types the server recognised).
    pub fn is_image(&self) -> bool {
        matches!(
            self.mime.as_str(),
            "image/png" | "image/jpeg" | "image/gif" | "image/webp"
        )
    }
}

fn is_message(k: &EventKind) -> bool {
    *k == EventKind::Message
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

/// How present a person is: active if any of their sessions is, idle if all are, offline when
/// none is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Idle,
    #[default]
    Offline,
}

/// A person's presence: their status and when they were last active (ms; `0` if not since the
/// server started). The client shows "active", "idle" or "last seen 5 min ago" from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub username: String,
    pub status: Status,
    #[serde(default)]
    pub last_active: i64,
}

/// One event of a room's seq stream as it travels on the wire (the `message` frame) and renders
/// in the page. Most are chat messages; `kind` says otherwise. Fields a client does not know are
/// ignored, so events can grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    /// Position in the room: 1, 2, 3, … with no gaps. The client's resume cursor.
    pub seq: u64,
    /// Server-wide identity of the row.
    pub id: i64,
    /// The sender's idempotency key; a resend with the same key returns this message.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "is_message")]
    pub kind: EventKind,
    /// The author's display name at the time.
    pub user: String,
    /// The author's account id; absent for guests and for messages older than accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// The author's username: the handle that tells two people with one display name apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The author had no account (anonymous mode).
    #[serde(default, skip_serializing_if = "is_false")]
    pub guest: bool,
    /// For a message, its text; for a rename or topic change, the new title or topic.
    pub body: String,
    /// For a membership event, the username of the member it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Milliseconds since the Unix epoch, set by the server when it stored the message.
    pub ts: i64,
    /// For an edit, delete or reaction: the seq of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// For a reply: the seq of the message it answers, and a line of that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Quote>,
    /// On a message whose text was changed: when it last was (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<i64>,
    /// On a deleted message: its text is gone, it shows as deleted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// On a message or an edit: the account ids of the members it mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<i64>,
    /// On an edit: who it mentions that the text before did not (only they are notified).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<i64>,
    /// On a message: its reactions, by emoji in the order they first came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// On a reaction event: how many have reacted to the target with that emoji now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// On a message: the file it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

impl ChatMessage {
    /// Whether this is a chat message (the only kind classic clients see and unread counts).
    pub fn is_message(&self) -> bool {
        self.kind == EventKind::Message
    }
}

/// `room` for a chat room, `dm` for a direct conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    #[default]
    Room,
    Dm,
}

/// Who may find and join a room: anyone with an account, or only whom its members invite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Public,
    Private,
}

/// A room as its members (and, for public rooms, anyone browsing) see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room's address: in `/r/NAME`, the API and the protocol. It never changes.
    pub name: String,
    /// What people see; the owner may change it. For a DM, the other members' names.
    pub title: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub kind: RoomKind,
    #[serde(default)]
    pub visibility: Visibility,
    /// How many members it has.
    #[serde(default)]
    pub members: u64,
    /// The room's last seq.
    #[serde(default)]
    pub head: u64,
    /// The username of the room's owner, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub archived: bool,
    /// Whether the caller is a member.
    #[serde(default)]
    pub member: bool,
    /// The last seq the caller has read (members only).
    #[serde(default)]
    pub last_read: u64,
    /// Chat messages by others after `last_read` (members only).
    #[serde(default)]
    pub unread: u64,
    /// Of those, the ones that mention the caller.
    #[serde(default)]
    pub mentions: u64,
    /// For a DM, the usernames of its people (for their presence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub people: Vec<String>,
}

/// A member of a room, as the member list shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub username: String,
    pub display_name: String,
    /// `owner` or `member`.
    pub role: String,
    /// How present they are now, and when they were last active (ms; `0` if not since the
    /// server started).
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub last_active: i64,
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
        /// The seq of the message (in the same room) this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    /// Changes the text of one's own message `target`; answered by `ack` once durable.
    Edit {
        room: String,
        client_id: String,
        target: u64,
        body: String,
    },
    /// Deletes message `target` (one's own, or any as the room's owner); answered by `ack`.
    Delete {
        room: String,
        client_id: String,
        target: u64,
    },
    /// Adds (`on`) or takes back a reaction to message `target`. Doing what is already done
    /// changes nothing and is not answered.
    React {
        room: String,
        target: u64,
        emoji: String,
        #[serde(default = "yes")]
        on: bool,
    },
    /// The user is typing in `room` (at most every few seconds), or stopped (`stop`). Never
    /// stored; shown to the room's other members for a few seconds.
    Typing {
        room: String,
        #[serde(default, skip_serializing_if = "is_false")]
        stop: bool,
    },
    /// This tab's user is `active` or `idle`; the account is shown active if any of its tabs is.
    Presence {
        status: Status,
    },
    Ping {
        #[serde(default)]
        nonce: Option<u64>,
    },
    /// The reader has seen the room up to `seq`: unread counts drop in every tab of the account.
    Read {
        room: String,
        seq: u64,
    },
}

/// Frames the server sends on `hubbub.v1`: a JSON object whose first key is `type`, then the
/// fields of the variant's struct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A frame lives only to be encoded or handled at once, and most are messages: boxing them would
// cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
pub enum ServerFrame {
    Welcome(Welcome),
    Message(ChatMessage),
    /// The message with this `client_id` is durably stored at `seq`.
    Ack(Ack),
    /// The server cannot replay from `from`; the client must fetch history over HTTP.
    HistoryGap(HistoryGap),
    /// A room is joined and its replay is complete: live messages follow.
    Joined(Joined),
    Error(ErrorReply),
    Pong(Pong),
    /// The account was added to a room, or a room it is in changed: the connection is subscribed
    /// (its events follow from the one that added the account).
    Room(RoomUpdate),
    /// The account is no longer in the room (it left, or was removed): nothing more of it comes.
    Left(Left),
    /// The account has read `room` up to `seq` (in this tab or another); `unread` is what remains.
    Read(ReadPosition),
    /// Someone is typing in a room, or stopped (`stop`). Ephemeral: never stored or replayed.
    Typing(TypingNote),
    /// How present people are: on joining a room, everyone of it who is not offline (`room`
    /// set); after that, changes of anyone who shares a room with the account. Ephemeral.
    Presence(PresenceUpdate),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingNote {
    pub room: String,
    pub user: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// The room this is a snapshot of; `None` for a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub users: Vec<PresenceInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub user: String,
    pub session: String,
    pub protocol: String,
    /// The account's username; absent for guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The account's id (the `mentions` of a message name accounts by id); absent for guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// Every room and DM the account is in, with unread counts. The connection is subscribed
    /// to all of them (those `hello` did not resume go on live from their head).
    #[serde(default)]
    pub rooms: Vec<RoomInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub client_id: String,
    pub room: String,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryGap {
    pub room: String,
    pub from: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub room: String,
    pub head: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    /// The `client_id` or room the error refers to, when there is one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdate {
    pub room: RoomInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub room: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPosition {
    pub room: String,
    pub seq: u64,
    pub unread: u64,
    /// Messages after `seq` that mention the account.
    #[serde(default)]
    pub mentions: u64,
}

/// Reads a frame without buffering it: the server always writes `type` first, so the variant is
/// known before its fields and they are read straight into its struct. (The derived form of an
/// internally tagged enum buffers every frame in a generic tree first, which costs the WASM
/// client a great deal of code.) An unknown `type` is an error the client skips.
impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> serde::de::Visitor<'de> for FrameVisitor {
    type Value = ServerFrame;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a frame object whose first key is \"type\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ServerFrame, A::Error> {
        use serde::de::{value::MapAccessDeserializer as Rest, Error};
        let key: Option<std::borrow::Cow<'de, str>> = map.next_key()?;
        if key.as_deref() != Some("type") {
            return Err(A::Error::custom(
                "the first key of a frame must be \"type\"",
            ));
        }
        let kind: std::borrow::Cow<'de, str> = map.next_value()?;
        let rest = Rest::new(map);
        Ok(match &*kind {
            "message" => ServerFrame::Message(ChatMessage::deserialize(rest)?),
            "welcome" => ServerFrame::Welcome(Welcome::deserialize(rest)?),
            "ack" => ServerFrame::Ack(Ack::deserialize(rest)?),
            "history_gap" => ServerFrame::HistoryGap(HistoryGap::deserialize(rest)?),
            "joined" => ServerFrame::Joined(Joined::deserialize(rest)?),
            "error" => ServerFrame::Error(ErrorReply::deserialize(rest)?),
            "pong" => ServerFrame::Pong(Pong::deserialize(rest)?),
            "room" => ServerFrame::Room(RoomUpdate::deserialize(rest)?),
            "left" => ServerFrame::Left(Left::deserialize(rest)?),
            "read" => ServerFrame::Read(ReadPosition::deserialize(rest)?),
            "typing" => ServerFrame::Typing(TypingNote::deserialize(rest)?),
            "presence" => ServerFrame::Presence(PresenceUpdate::deserialize(rest)?),
            other => return Err(A::Error::unknown_variant(other, FRAME_TYPES)),
        })
    }
}

/// The `type`s of [`ServerFrame`].
const FRAME_TYPES: &[&str] = &[
    "welcome",
    "message",
    "ack",
    "history_gap",
    "joined",
    "error",
    "pong",
    "room",
    "left",
    "read",
    "typing",
    "presence",
];

/// Bodies and answers of the HTTP API, shared by the server and the browser client.
pub mod api {
    use super::{ChatMessage, ErrorCode, MemberInfo, RoomInfo, Visibility};
    use serde::{Deserialize, Serialize};

    /// Body of `POST /api/rooms`.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CreateRoom {
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub topic: Option<String>,
        #[serde(default)]
        pub visibility: Visibility,
    }

    /// Body of `PATCH /api/rooms/{room}`: each field given is changed.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UpdateRoom {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub archived: Option<bool>,
    }

    /// Body of `POST /api/rooms/{room}/members`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Invite {
        pub username: String,
    }

    /// Body of `POST /api/dms`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OpenDm {
        pub usernames: Vec<String>,
    }

    /// `{"room": …}`: what the room endpoints answer.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct RoomAnswer {
        pub room: RoomInfo,
    }

    /// `{"rooms": […]}`: the answer of `GET /api/rooms`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct RoomsAnswer {
        pub rooms: Vec<RoomInfo>,
    }

    /// The answer of `GET /api/rooms/{room}`: the room and its members.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct RoomDetail {
        pub room: RoomInfo,
        pub members: Vec<MemberInfo>,
    }

    /// A page of a room's history (`GET /api/rooms/{room}/messages`).
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct HistoryPage {
        pub room: String,
        /// The room's last seq when the page was read.
        pub head: u64,
        pub messages: Vec<ChatMessage>,
    }

    /// A message found by `GET /api/search`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SearchHit {
        pub room: String,
        /// The room's title, as the caller sees it (for a DM, its people's names).
        pub room_title: String,
        pub seq: u64,
        pub id: i64,
        pub user: String,
        #[serde(default)]
        pub username: Option<String>,
        pub ts: i64,
        /// The part of the text around the match: runs of plain text, and of the words found
        /// (`hit`). Text, never markup.
        pub snippet: Vec<Snippet>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Snippet {
        pub text: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub hit: bool,
    }

    /// The answer of `GET /api/search`: newest first; `next` is the `before` of the next page.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct SearchAnswer {
        pub hits: Vec<SearchHit>,
        #[serde(default)]
        pub next: Option<i64>,
    }

    /// `{"error": {"code", "message"}}`: how every endpoint refuses.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct ErrorAnswer {
        pub error: ErrorBody,
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub struct ErrorBody {
        pub code: ErrorCode,
        pub message: String,
    }
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
    /// The caller may not do this in the room (only its owner may).
    Forbidden,
    /// The room is archived: it can be read, not written.
    RoomArchived,
    /// A room of that name exists already.
    RoomExists,
    /// No account has that username.
    UnknownUser,
    /// A room is full, or the caller made too many rooms lately.
    LimitReached,
    /// The caller is not a member of the room.
    NotMember,
    /// The room has no message at that seq (or only an event that is not a message).
    UnknownMessage,
    /// The message can no longer be edited: its edit window has passed.
    EditWindowClosed,
    /// The message was deleted: it can no longer be edited, answered or reacted to.
    MessageDeleted,
    /// A body or file over its size limit.
    TooLarge,
    /// The account's files would take more than its quota.
    QuotaExceeded,
    /// A code this build does not know (a newer server's).
    #[serde(other)]
    Other,
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
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomArchived => "room_archived",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::NotMember => "not_member",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::EditWindowClosed => "edit_window_closed",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Other => "other",
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
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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

/// Most people one message can mention.
pub const MAX_MENTIONS: usize = 50;

/// The usernames a text mentions (`@name`, lower-cased, each once, in order, at most
/// [`MAX_MENTIONS`]); whether each names a member is for the server to say.
pub fn mentioned_usernames(body: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let bytes = body.as_bytes();
    let handle = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    let mut i = 0;
    while i < bytes.len() && out.len() < MAX_MENTIONS {
        let starts = bytes[i] == b'@' && (i == 0 || !handle(bytes[i - 1]));
        if !starts {
            i += 1;
            continue;
        }
        let from = i + 1;
        let mut to = from;
        while to < bytes.len() && handle(bytes[to]) {
            to += 1;
        }
        // A full stop or dash after a name ends the sentence, not the name.
        let name = body[from..to]
            .trim_end_matches(['.', '-'])
            .to_ascii_lowercase();
        if (3..=32).contains(&name.len()) && !out.contains(&name) {
            out.push(name);
        }
        i = to.max(from);
    }
    out
}

/// Checks a reaction: a short emoji (at most [`MAX_EMOJI_BYTES`] bytes, 8 characters), with no
/// spaces, control or invisible characters other than the joiners emoji are built of, and not
/// plain text.
pub fn validate_emoji(emoji: &str) -> Result<(), Invalid> {
    let fine = |c: char| {
        matches!(c, '\u{200D}' | '\u{FE0F}' | '\u{FE0E}' | '\u{20E3}')
            || !(c.is_whitespace() || hidden_char(c))
    };
    let ok = !emoji.is_empty()
        && emoji.len() <= MAX_EMOJI_BYTES
        && emoji.chars().count() <= 8
        && emoji.chars().all(fine)
        && !emoji.is_ascii();
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            ErrorCode::InvalidFrame,
            format!("a reaction is one emoji of at most {MAX_EMOJI_BYTES} bytes"),
        ))
    }
}

/// The start of a text, as a reply quotes it: at most [`QUOTE_CHARS`] characters, one line.
pub fn quote_of(body: &str) -> String {
    let line = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut q: String = line.trim().chars().take(QUOTE_CHARS).collect();
    if line.trim().chars().count() > QUOTE_CHARS || body.trim().lines().count() > 1 {
        q.push('…');
    }
    q
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
    validate_display_name(name)?;
    Ok(name.to_owned())
}

/// Whether a character could make one name look like another or hide in it: control characters,
/// bidirectional overrides and isolates, zero-width and other invisible format characters.
pub fn hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'                 // soft hyphen
            | '\u{034F}'               // combining grapheme joiner
            | '\u{061C}'               // Arabic letter mark
            | '\u{115F}' | '\u{1160}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' // Mongolian variation selectors and vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space, joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates
            | '\u{3164}'               // Hangul filler
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{FEFF}'               // zero-width no-break space
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}' // tags
        )
}

/// Checks a display name: 1 to [`MAX_NAME_CHARS`] characters, none of them [`hidden_char`]s.
pub fn validate_display_name(name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(hidden_char)
    {
        return Err(Invalid::new(
            ErrorCode::InvalidName,
            format!(
                "a name is 1 to {MAX_NAME_CHARS} characters, without control, invisible or \
                 direction-changing ones"
            ),
        ));
    }
    Ok(())
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
    const KNOWN: [&str; 11] = [
        "hello", "join", "leave", "send", "ping", "read", "edit", "delete", "react", "typing",
        "presence",
    ];
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
        let f = ServerFrame::Ack(Ack {
            client_id: "c".into(),
            room: "general".into(),
            seq: 7,
        });
        let json = serde_json::to_string(&f).expect("serialize");
        assert_eq!(
            json,
            r#"{"type":"ack","client_id":"c","room":"general","seq":7}"#
        );
        let e = ServerFrame::Error(ErrorReply {
            code: ErrorCode::UnknownType,
            message: "x".into(),
            reference: Some("r".into()),
        });
        let json = serde_json::to_string(&e).expect("serialize");
        assert_eq!(
            json,
            r#"{"type":"error","code":"unknown_type","message":"x","ref":"r"}"#
        );
        let back: ServerFrame = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
    }

    #[test]
    fn every_server_frame_reads_back_as_written() {
        let room = RoomInfo {
            name: "r".into(),
            title: "R".into(),
            topic: "t".into(),
            kind: RoomKind::Dm,
            visibility: Visibility::Private,
            members: 2,
            head: 9,
            owner: Some("ann".into()),
            archived: true,
            member: true,
            last_read: 3,
            unread: 4,
            mentions: 1,
            people: vec!["ann".into(), "bob".into()],
        };
        let message = ChatMessage {
            room: "r".into(),
            seq: 2,
            id: 5,
            client_id: "c".into(),
            kind: EventKind::MemberInvited,
            user: "Ann".into(),
            user_id: Some(1),
            username: Some("ann".into()),
            guest: false,
            body: String::new(),
            member: Some("bob".into()),
            ts: 7,
            target: Some(1),
            mentions: vec![2],
            ..Default::default()
        };
        let frames = [
            ServerFrame::Welcome(Welcome {
                user: "Ann".into(),
                session: "c1".into(),
                protocol: SUBPROTOCOL.into(),
                username: Some("ann".into()),
                user_id: Some(1),
                rooms: vec![room.clone()],
            }),
            ServerFrame::Message(message),
            ServerFrame::HistoryGap(HistoryGap {
                room: "r".into(),
                from: 3,
            }),
            ServerFrame::Joined(Joined {
                room: "r".into(),
                head: 4,
            }),
            ServerFrame::Pong(Pong { nonce: Some(1) }),
            ServerFrame::Pong(Pong { nonce: None }),
            ServerFrame::Room(RoomUpdate { room }),
            ServerFrame::Left(Left { room: "r".into() }),
            ServerFrame::Read(ReadPosition {
                room: "r".into(),
                seq: 4,
                unread: 0,
                mentions: 0,
            }),
            ServerFrame::Typing(TypingNote {
                room: "r".into(),
                user: "Ann".into(),
                username: "ann".into(),
                stop: true,
            }),
            ServerFrame::Presence(PresenceUpdate {
                room: Some("r".into()),
                users: vec![PresenceInfo {
                    username: "ann".into(),
                    status: Status::Idle,
                    last_active: 5,
                }],
            }),
        ];
        for f in frames {
            let json = serde_json::to_string(&f).expect("serialize");
            assert!(json.starts_with(r#"{"type":"#), "{json}");
            assert_eq!(serde_json::from_str::<ServerFrame>(&json).expect(&json), f);
        }
        // A type this build does not know, and a frame not written by the server, are errors
        // the client skips; fields it does not know are ignored.
        assert!(serde_json::from_str::<ServerFrame>(r#"{"type":"poll","q":1}"#).is_err());
        assert!(serde_json::from_str::<ServerFrame>(r#"{"room":"r","type":"left"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<ServerFrame>(r#"{"type":"left","room":"r","why":"x"}"#)
                .expect("parse"),
            ServerFrame::Left(Left { room: "r".into() })
        );
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
    fn display_names_refuse_what_could_disguise_them() {
        assert!(validate_display_name("Zoë Ångström").is_ok());
        assert!(validate_display_name("李小龍").is_ok());
        for bad in [
            "ann\u{202E}nimda",
            "a\u{200B}nn",
            "ann\u{2066}",
            "\u{FEFF}ann",
            "ann\n",
            "   ",
            &"x".repeat(MAX_NAME_CHARS + 1),
        ] {
            assert_eq!(
                validate_display_name(bad).map_err(|e| e.code),
                Err(ErrorCode::InvalidName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_event_kinds_and_fields_are_ignored() {
        let m: ChatMessage = serde_json::from_str(
            r#"{"room":"r","seq":3,"id":1,"client_id":"c","kind":"poll_opened","user":"A","body":"","ts":1,"poll":{"q":"?"}}"#,
        )
        .expect("parse");
        assert_eq!(m.kind, EventKind::Other);
        let plain: ChatMessage = serde_json::from_str(
            r#"{"room":"r","seq":3,"id":1,"client_id":"c","user":"A","body":"hi","ts":1}"#,
        )
        .expect("parse");
        assert!(plain.is_message());
        assert_eq!(
            serde_json::to_value(&plain).expect("json").get("kind"),
            None,
            "a message's kind is implied"
        );
    }

    #[test]
    fn mentions_are_handles_after_an_at_sign() {
        assert_eq!(
            mentioned_usernames("hi @Ann, @bob.smith and @ann. mail x@y.com @zz @carol-"),
            vec!["ann", "bob.smith", "carol"]
        );
        assert!(mentioned_usernames(&"@".repeat(10_000)).is_empty());
        let many: String = (0..200).map(|i| format!("@user{i:03} ")).collect();
        assert_eq!(mentioned_usernames(&many).len(), MAX_MENTIONS);
    }

    #[test]
    fn reactions_are_short_emoji() {
        for ok in ["👍", "🎉", "❤️", "👩‍💻", "🇫🇷", "1️⃣"] {
            assert!(validate_emoji(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lol", "👍 👍", "👍\u{202E}", &"🎉".repeat(9), "a\n"] {
            assert!(validate_emoji(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quotes_are_one_short_line() {
        assert_eq!(quote_of("hello"), "hello");
        assert_eq!(quote_of("\n first\nsecond"), "first…");
        assert_eq!(quote_of(&"x".repeat(200)).chars().count(), QUOTE_CHARS + 1);
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
