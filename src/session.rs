//! The client session: one object per tab that owns the account's view of the chat — its rooms
//! with their unread counts, one state per room (history loaded, cursor, draft, scroll position),
//! the connection state — and, in the browser, the one WebSocket that serves all of them
//! (`crate::client`). The view only reads its signals and calls its methods.
//!
//! Everything here is reactive handles, so `Session` and `RoomState` are `Copy` and go into every
//! closure. It compiles for the server too: the server renders the first page from it.

use crate::protocol::{
    self, Attachment, ChatMessage, EventKind, PresenceInfo, Quote, Reaction, RoomInfo, RoomKind,
    PAGE_HISTORY,
};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What the first page is rendered from: who is signed in, their rooms, and the room in the URL.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PageData {
    /// The signed-in user's display name; `None` in anonymous mode.
    pub me: Option<String>,
    /// The signed-in user's username; `None` in anonymous mode.
    pub me_username: Option<String>,
    /// The signed-in user's account id (mentions name accounts by id).
    #[serde(default)]
    pub me_id: Option<i64>,
    /// Settings of the server that the page follows.
    #[serde(default)]
    pub settings: ClientSettings,
    /// The browser's CSRF token, for the forms.
    pub csrf: String,
    /// The rooms and DMs the account is in, with unread counts.
    pub rooms: Vec<RoomInfo>,
    /// The room the URL asked for.
    pub requested: String,
    /// The room the page opened on: the room, its head and last page; `None` if there is no such
    /// room (or the user may not see it).
    pub room: Option<RoomPage>,
}

/// What the server tells the page about how it is set up.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientSettings {
    /// After how long without input (or hidden) the tab reports its user idle (ms).
    pub idle_after_ms: u64,
    /// The largest file that may be attached (bytes).
    pub max_upload: u64,
    /// How long after sending a message its author may edit it (ms; 0: any time).
    pub edit_window_ms: u64,
}

/// A room and its newest messages, read in one snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomPage {
    pub info: RoomInfo,
    pub head: u64,
    pub messages: Vec<ChatMessage>,
}

/// Delivery state of a message in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Typed here, not yet acknowledged by the server.
    Pending,
    /// Acknowledged: durably stored, waiting for its place in the room's order.
    Acked,
    /// In the room's history at its seq.
    Stored,
    /// Refused by the server (see the entry's `error`); the user may retry or discard it.
    Failed,
}

/// A row of the message list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub client_id: String,
    /// What the row is: a chat message, or a change to the room shown as one line.
    pub kind: EventKind,
    /// The author's handle (`None` for guests and for messages older than accounts).
    pub username: Option<String>,
    pub guest: bool,
    /// Who a membership event is about.
    pub member: Option<String>,
    pub seq: Option<u64>,
    pub user: String,
    pub body: String,
    pub ts: i64,
    pub status: Status,
    /// Why the server refused it, for a failed entry.
    pub error: Option<String>,
    /// The message it answers, and a line of it.
    pub reply_to: Option<u64>,
    pub reply: Option<Quote>,
    /// When its text was last changed.
    pub edited: Option<i64>,
    /// Deleted: shown as a tombstone.
    pub deleted: bool,
    /// Who it mentions, by account id.
    pub mentions: Vec<i64>,
    pub reactions: Vec<Reaction>,
    pub attachment: Option<Attachment>,
    /// Bumped by every change applied to it, so the list redraws the row.
    pub rev: u32,
}

impl From<ChatMessage> for Entry {
    fn from(m: ChatMessage) -> Self {
        Entry {
            client_id: m.client_id,
            kind: m.kind,
            username: m.username,
            guest: m.guest,
            member: m.member,
            seq: Some(m.seq),
            user: m.user,
            body: m.body,
            ts: m.ts,
            status: Status::Stored,
            error: None,
            reply_to: m.reply_to,
            reply: m.reply,
            edited: m.edited,
            deleted: m.deleted,
            mentions: m.mentions,
            reactions: m.reactions,
            attachment: m.attachment,
            rev: 0,
        }
    }
}

impl Entry {
    /// A message typed here, not yet sent.
    pub fn pending(client_id: String, user: String, body: String, ts: i64) -> Self {
        Entry {
            client_id,
            kind: EventKind::Message,
            username: None,
            guest: false,
            member: None,
            seq: None,
            user,
            body,
            ts,
            status: Status::Pending,
            error: None,
            reply_to: None,
            reply: None,
            edited: None,
            deleted: false,
            mentions: Vec::new(),
            reactions: Vec::new(),
            attachment: None,
            rev: 0,
        }
    }

    /// Applies a change to this message that an event records (an edit, a delete, a reaction).
    /// Each is idempotent, so one applied twice (a replay after a page load) changes nothing.
    fn apply(&mut self, change: &ChatMessage) {
        self.rev = self.rev.wrapping_add(1);
        match change.kind {
            EventKind::MessageEdited if !self.deleted => {
                self.body = change.body.clone();
                self.edited = Some(change.ts);
                self.mentions = change.mentions.clone();
            }
            EventKind::MessageDeleted => {
                self.deleted = true;
                self.body.clear();
                self.edited = None;
                self.mentions.clear();
                self.reactions.clear();
                self.attachment = None;
            }
            EventKind::ReactionAdded | EventKind::ReactionRemoved if !self.deleted => {
                let emoji = &change.body;
                let who = change.username.clone().unwrap_or_default();
                let at = self.reactions.iter().position(|r| r.emoji == *emoji);
                let r = match at {
                    Some(at) => &mut self.reactions[at],
                    None => {
                        self.reactions.push(Reaction {
                            emoji: emoji.clone(),
                            ..Default::default()
                        });
                        let last = self.reactions.len() - 1;
                        &mut self.reactions[last]
                    }
                };
                r.count = change.count.unwrap_or(r.count);
                r.users.retain(|u| *u != who);
                if change.kind == EventKind::ReactionAdded {
                    r.users.push(who);
                }
                self.reactions.retain(|r| r.count > 0);
            }
            _ => {}
        }
    }

    /// A reply's quote of this message, kept as its text changes.
    fn requote(&self, quote: &mut Quote) {
        quote.deleted = self.deleted;
        quote.body = if self.deleted {
            String::new()
        } else {
            protocol::quote_of(&self.body)
        };
    }
}

/// A file on its way up, as the composer shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Upload {
    pub key: u32,
    pub name: String,
    pub sent: f64,
    pub total: f64,
    /// Why it was refused or failed.
    pub error: Option<String>,
}

/// Someone typing in a room, until when (ms) the indicator shows without renewal.
#[derive(Clone, Debug, PartialEq)]
pub struct Typist {
    pub username: String,
    pub user: String,
    pub until: f64,
}

/// Connection state as the user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Connected,
    /// Lost unexpectedly; the next attempt is at `Session::retry_at`.
    Reconnecting,
    /// The browser says it has no network; the next attempt is when it comes back.
    Offline,
    /// Closed by the user.
    Disconnected,
    /// The session was logged out (here or in another tab): log in again.
    SignedOut,
}

impl Conn {
    pub fn label(self) -> &'static str {
        match self {
            Conn::Connecting => "connecting",
            Conn::Connected => "connected",
            Conn::Reconnecting => "reconnecting",
            Conn::Offline => "offline",
            Conn::Disconnected => "disconnected",
            Conn::SignedOut => "signed out",
        }
    }
}

/// A dialog over the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    CreateRoom,
    BrowseRooms,
    NewMessage,
    Switcher,
    Search,
}

/// One room as this tab holds it.
#[derive(Clone, Copy)]
pub struct RoomState {
    pub room: StoredValue<String>,
    /// Stored events in seq order, then the user's own pending messages.
    pub messages: RwSignal<Vec<Entry>>,
    /// Highest seq in the list: the resume cursor.
    pub last_seq: RwSignal<u64>,
    /// Whether the room's history has been read (the page's, or over HTTP).
    pub loaded: RwSignal<bool>,
    /// The server has no such room for this user.
    pub missing: RwSignal<bool>,
    /// Whether older history can still be loaded.
    pub has_older: RwSignal<bool>,
    /// Messages that arrived while the user was scrolled up.
    pub unseen: RwSignal<usize>,
    pub at_bottom: RwSignal<bool>,
    /// The reader's read position when the room was opened: the "new messages" divider goes
    /// above the first message after it.
    pub divider: RwSignal<Option<u64>>,
    /// What the user was typing here.
    pub draft: RwSignal<String>,
    /// Where the list was scrolled when the user left the room.
    pub scroll: StoredValue<Option<i32>>,
    /// Events replayed since the hello (first seq, count), for the catch-up divider.
    pub replay: StoredValue<Option<(u64, usize)>>,
    /// The message the composer answers, if any.
    pub replying: RwSignal<Option<(u64, Quote)>>,
    /// The message the composer is editing, if any.
    pub editing: RwSignal<Option<u64>>,
    /// Who is typing here now.
    pub typing: RwSignal<Vec<Typist>>,
    /// A message to bring into view and mark (from a reply's quote or a search result).
    pub focus: RwSignal<Option<u64>>,
    /// Files being uploaded to the room from this tab.
    pub uploads: RwSignal<Vec<Upload>>,
    /// The room's people, once the composer needed them to complete an `@name` (and whether
    /// they were asked for). Signal types the client has anyway: each new one costs it size.
    pub people: RwSignal<Vec<crate::protocol::MemberInfo>>,
    pub people_asked: RwSignal<bool>,
}

impl RoomState {
    fn new(room: &str) -> Self {
        RoomState {
            room: StoredValue::new(room.to_owned()),
            messages: RwSignal::new(Vec::new()),
            last_seq: RwSignal::new(0),
            loaded: RwSignal::new(false),
            missing: RwSignal::new(false),
            has_older: RwSignal::new(false),
            unseen: RwSignal::new(0),
            at_bottom: RwSignal::new(true),
            divider: RwSignal::new(None),
            draft: RwSignal::new(String::new()),
            scroll: StoredValue::new(None),
            replay: StoredValue::new(None),
            replying: RwSignal::new(None),
            editing: RwSignal::new(None),
            typing: RwSignal::new(Vec::new()),
            focus: RwSignal::new(None),
            uploads: RwSignal::new(Vec::new()),
            people: RwSignal::new(Vec::new()),
            people_asked: RwSignal::new(false),
        }
    }

    /// The loaded message at `seq`.
    pub fn entry(&self, seq: u64) -> Option<Entry> {
        self.messages
            .with_untracked(|l| l.iter().find(|e| e.seq == Some(seq)).cloned())
    }

    /// Applies an edit, delete or reaction to its target (if loaded), and to the quotes of the
    /// replies to it.
    fn change(&self, m: &ChatMessage) {
        let Some(target) = m.target else {
            return;
        };
        self.messages.update(|list| {
            let Some(at) = list.iter().position(|e| e.seq == Some(target)) else {
                return;
            };
            list[at].apply(m);
            if matches!(m.kind, EventKind::MessageEdited | EventKind::MessageDeleted) {
                let original = list[at].clone();
                for e in list.iter_mut().filter(|e| e.reply_to == Some(target)) {
                    if let Some(q) = e.reply.as_mut() {
                        original.requote(q);
                        e.rev = e.rev.wrapping_add(1);
                    }
                }
            }
        });
    }

    /// Someone is typing here (or stopped); `now` in ms.
    pub fn typist(&self, username: String, user: String, stop: bool, now: f64) {
        self.typing.update(|t| {
            t.retain(|x| x.username != username);
            if !stop {
                t.push(Typist {
                    username,
                    user,
                    // Shown for 6 s without renewal (the typist renews every 3 s).
                    until: now + 6_000.0,
                });
            }
        });
    }

    /// Drops indicators that were not renewed in time.
    pub fn expire_typing(&self, now: f64) {
        if self
            .typing
            .with_untracked(|t| t.iter().any(|x| x.until <= now))
        {
            self.typing.update(|t| t.retain(|x| x.until > now));
        }
    }

    pub fn name(&self) -> String {
        self.room.get_value()
    }

    /// Puts the first page of history in: what is already here (live events, pending sends) is
    /// merged by seq.
    pub fn load(&self, head: u64, messages: Vec<ChatMessage>) {
        self.has_older
            .set(messages.first().is_some_and(|m| m.seq > 1) && messages.len() >= PAGE_HISTORY);
        let top = messages.iter().map(|m| m.seq).max().unwrap_or(0).max(head);
        self.messages.update(|list| {
            // A page holds each message as it is now: the changes among it are applied already.
            let mut stored: Vec<Entry> = messages
                .into_iter()
                .filter(|m| m.kind != EventKind::Other && !m.kind.changes_message())
                .map(Entry::from)
                .collect();
            for e in list.drain(..) {
                match e.seq {
                    Some(s) if stored.iter().any(|x| x.seq == Some(s)) => {}
                    _ => stored.push(e),
                }
            }
            stored.sort_by_key(|e| e.seq.unwrap_or(u64::MAX));
            *list = stored;
        });
        if top > self.last_seq.get_untracked() {
            self.last_seq.set(top);
        }
        self.loaded.set(true);
    }

    /// Puts a stored event in its place: after the stored ones, before pending ones, replacing
    /// the pending copy with the same `client_id`. Events at or below the cursor are duplicates.
    pub fn receive(&self, m: ChatMessage) -> bool {
        if m.seq <= self.last_seq.get_untracked() {
            return false;
        }
        self.last_seq.set(m.seq);
        if m.kind == EventKind::Other {
            // A kind this build does not know: its seq counts, it shows nothing.
            return true;
        }
        if m.kind.changes_message() {
            self.change(&m);
            return true;
        }
        if m.is_message() {
            // Their message is in: they stopped typing.
            if let Some(who) = &m.username {
                if self
                    .typing
                    .with_untracked(|t| t.iter().any(|x| x.username == *who))
                {
                    self.typing.update(|t| t.retain(|x| x.username != *who));
                }
            }
        }
        self.messages.update(|list| {
            list.retain(|e| !(e.seq.is_none() && e.client_id == m.client_id));
            let at = list
                .iter()
                .position(|e| e.seq.is_none())
                .unwrap_or(list.len());
            list.insert(at, Entry::from(m));
        });
        true
    }

    /// Marks the user's message as stored by the server.
    pub fn acked(&self, client_id: &str) {
        self.messages.update(|list| {
            if let Some(e) = list
                .iter_mut()
                .find(|e| e.client_id == client_id && e.status == Status::Pending)
            {
                e.status = Status::Acked;
            }
        });
    }

    /// Adds older history above what is shown.
    pub fn prepend(&self, older: Vec<ChatMessage>) {
        self.has_older
            .set(older.first().is_some_and(|m| m.seq > 1) && older.len() >= PAGE_HISTORY);
        self.messages.update(|list| {
            let first = list.iter().find_map(|e| e.seq).unwrap_or(u64::MAX);
            let mut merged: Vec<Entry> = older
                .into_iter()
                .filter(|m| {
                    m.seq < first && m.kind != EventKind::Other && !m.kind.changes_message()
                })
                .map(Entry::from)
                .collect();
            merged.append(list);
            *list = merged;
        });
    }

    /// The user's messages not yet stored, in the order they were typed.
    pub fn pending(&self) -> Vec<Entry> {
        self.messages.with_untracked(|l| {
            l.iter()
                .filter(|e| e.seq.is_none() && e.status == Status::Pending)
                .cloned()
                .collect()
        })
    }
}

/// The tab's chat session. See the module documentation.
#[derive(Clone, Copy)]
pub struct Session {
    /// The signed-in user's display name; `None` in anonymous mode, where the name field is used.
    pub me: StoredValue<Option<String>>,
    /// The signed-in user's username.
    pub username: StoredValue<Option<String>>,
    /// The signed-in user's account id.
    pub me_id: StoredValue<Option<i64>>,
    pub settings: StoredValue<ClientSettings>,
    /// How present the people who share a room with the user are, by username.
    pub presence: RwSignal<HashMap<String, PresenceInfo>>,
    /// Whose unsent messages this browser keeps here: the username, or `guest` in anonymous
    /// mode. On a shared browser one account's outbox is never sent as another's.
    pub owner: StoredValue<String>,
    pub csrf: StoredValue<String>,
    /// The rooms and DMs of the account, with unread counts: the sidebar.
    pub rooms: RwSignal<Vec<RoomInfo>>,
    /// The room on screen.
    pub current: RwSignal<String>,
    states: StoredValue<HashMap<String, RoomState>>,
    /// The reactive owner the room states live under (the session's, not a route's).
    owner_scope: StoredValue<Owner>,
    pub conn: RwSignal<Conn>,
    /// False after the user pressed Disconnect: no automatic reconnect then.
    pub want_connected: RwSignal<bool>,
    /// The name typed in anonymous mode.
    pub name: RwSignal<String>,
    /// Set once the page is hydrated: times switch from UTC to the browser's zone.
    pub hydrated: RwSignal<bool>,
    pub last_error: RwSignal<Option<String>>,
    /// When the next reconnect attempt is due (ms since the epoch).
    pub retry_at: RwSignal<Option<f64>>,
    /// The clock, ticking each second, for the reconnect countdown.
    pub now: RwSignal<f64>,
    pub dialog: RwSignal<Option<Dialog>>,
    /// Whether the sidebar is shown on a narrow screen.
    pub sidebar_open: RwSignal<bool>,
    /// The latest message for screen readers (a polite live region).
    pub announce: RwSignal<String>,
    /// The one WebSocket and what the protocol keeps beside it (browser only).
    #[cfg(feature = "hydrate")]
    pub wire: StoredValue<crate::client::Wire, LocalStorage>,
}

impl Session {
    /// The session for a page: its rooms, and the room it opened on with its history.
    pub fn new(data: PageData) -> Self {
        let current = data.requested.clone();
        let session = Session {
            me: StoredValue::new(data.me.clone()),
            username: StoredValue::new(data.me_username.clone()),
            me_id: StoredValue::new(data.me_id),
            settings: StoredValue::new(data.settings),
            presence: RwSignal::new(HashMap::new()),
            owner: StoredValue::new(data.me_username.unwrap_or_else(|| "guest".to_owned())),
            csrf: StoredValue::new(data.csrf),
            rooms: RwSignal::new(data.rooms),
            current: RwSignal::new(current.clone()),
            states: StoredValue::new(HashMap::new()),
            owner_scope: StoredValue::new(Owner::current().unwrap_or_default()),
            conn: RwSignal::new(Conn::Connecting),
            want_connected: RwSignal::new(true),
            name: RwSignal::new(data.me.unwrap_or_default()),
            hydrated: RwSignal::new(false),
            last_error: RwSignal::new(None),
            retry_at: RwSignal::new(None),
            now: RwSignal::new(0.0),
            dialog: RwSignal::new(None),
            sidebar_open: RwSignal::new(false),
            announce: RwSignal::new(String::new()),
            #[cfg(feature = "hydrate")]
            wire: StoredValue::new_local(crate::client::Wire::default()),
        };
        let st = session.state(&current);
        match data.room {
            Some(page) => {
                session.place_divider(st, &page.info);
                st.load(page.head, page.messages);
            }
            None => {
                st.missing.set(true);
                st.loaded.set(true);
            }
        }
        session
    }

    pub fn signed_in(&self) -> bool {
        self.me.with_value(Option::is_some)
    }

    /// The state of `room`, made (empty, not loaded) on first use.
    pub fn state(&self, room: &str) -> RoomState {
        if let Some(st) = self.states.with_value(|s| s.get(room).copied()) {
            return st;
        }
        // Under the session's owner: a room's state outlives the route that first showed it.
        let st = self
            .owner_scope
            .with_value(|o| o.with(|| RoomState::new(room)));
        self.states.update_value(|s| {
            s.insert(room.to_owned(), st);
        });
        st
    }

    /// The room states made so far.
    pub fn states(&self) -> Vec<RoomState> {
        self.states.with_value(|s| s.values().copied().collect())
    }

    pub fn loaded_state(&self, room: &str) -> Option<RoomState> {
        self.states.with_value(|s| s.get(room).copied())
    }

    /// The room as the sidebar knows it.
    pub fn info(&self, room: &str) -> Option<RoomInfo> {
        self.rooms
            .with(|rooms| rooms.iter().find(|r| r.name == room).cloned())
    }

    /// Puts the "new messages" divider at the reader's read position, if anything is unread.
    pub fn place_divider(&self, st: RoomState, info: &RoomInfo) {
        if info.unread > 0 {
            st.divider.set(Some(info.last_read));
        }
    }

    /// Whether the user owns `room` (and so may delete any message in it).
    pub fn owns(&self, room: &str) -> bool {
        let me = self.username.get_value();
        me.is_some()
            && self.rooms.with_untracked(|rooms| {
                rooms
                    .iter()
                    .any(|r| r.name == room && r.owner.is_some() && r.owner == me)
            })
    }

    /// All unread messages, for the tab title.
    pub fn total_unread(&self) -> u64 {
        self.rooms.with(|r| r.iter().map(|r| r.unread).sum())
    }

    /// The rooms, then the DMs, each in title order.
    pub fn sidebar(&self, kind: RoomKind) -> Vec<RoomInfo> {
        self.rooms.with(|rooms| {
            let mut list: Vec<RoomInfo> =
                rooms.iter().filter(|r| r.kind == kind).cloned().collect();
            // Case folded in ASCII only: enough to sort titles, and no Unicode tables in the client.
            list.sort_by_key(|r| r.title.to_ascii_lowercase());
            list
        })
    }

    /// Adds or updates a room of the sidebar.
    pub fn upsert_room(&self, info: RoomInfo) {
        self.rooms.update(
            |rooms| match rooms.iter_mut().find(|r| r.name == info.name) {
                Some(r) => *r = info,
                None => rooms.push(info),
            },
        );
    }

    pub fn remove_room(&self, room: &str) {
        self.rooms.update(|rooms| rooms.retain(|r| r.name != room));
    }

    /// Applies a change to a room that an event in its stream records.
    pub fn apply_event(&self, m: &ChatMessage) {
        match m.kind {
            EventKind::RoomRenamed => self.rooms.update(|rooms| {
                if let Some(r) = rooms.iter_mut().find(|r| r.name == m.room) {
                    r.title = m.body.clone();
                }
            }),
            EventKind::TopicChanged => self.rooms.update(|rooms| {
                if let Some(r) = rooms.iter_mut().find(|r| r.name == m.room) {
                    r.topic = m.body.clone();
                }
            }),
            EventKind::RoomArchived => self.remove_room(&m.room),
            k if k.adds_member() || k.removes_member() => self.rooms.update(|rooms| {
                if let Some(r) = rooms.iter_mut().find(|r| r.name == m.room) {
                    if k.adds_member() {
                        r.members += 1;
                    } else {
                        r.members = r.members.saturating_sub(1);
                    }
                }
            }),
            _ => {}
        }
        self.rooms.update(|rooms| {
            if let Some(r) = rooms.iter_mut().find(|r| r.name == m.room) {
                r.head = r.head.max(m.seq);
            }
        });
    }

    /// Counts a message by someone else as unread in its room.
    pub fn count_unread(&self, room: &str) {
        self.rooms.update(|rooms| {
            if let Some(r) = rooms.iter_mut().find(|r| r.name == room) {
                r.unread += 1;
            }
        });
    }

    /// Counts a message that mentions the user as a mention in its room.
    pub fn count_mention(&self, room: &str) {
        self.rooms.update(|rooms| {
            if let Some(r) = rooms.iter_mut().find(|r| r.name == room) {
                r.mentions += 1;
            }
        });
    }

    /// Whether the message (or edit) names the user among the newly mentioned.
    pub fn mentions_me(&self, m: &ChatMessage) -> bool {
        let Some(me) = self.me_id.get_value() else {
            return false;
        };
        let list = match m.kind {
            EventKind::Message => &m.mentions,
            EventKind::MessageEdited => &m.notify,
            _ => return false,
        };
        list.contains(&me)
    }

    /// The server says the account has read `room` up to `seq`.
    pub fn read_up_to(&self, room: &str, seq: u64, unread: u64, mentions: u64) {
        self.rooms.update(|rooms| {
            if let Some(r) = rooms.iter_mut().find(|r| r.name == room) {
                r.last_read = r.last_read.max(seq);
                r.unread = unread;
                r.mentions = mentions;
            }
        });
    }

    /// Takes in presence: a room's snapshot, or changes.
    pub fn take_presence(&self, users: Vec<PresenceInfo>) {
        self.presence.update(|p| {
            for u in users {
                p.insert(u.username.clone(), u);
            }
        });
    }

    /// The status line: the connection state, with the countdown while reconnecting.
    pub fn conn_text(&self) -> String {
        match (self.conn.get(), self.retry_at.get()) {
            (Conn::Reconnecting, Some(at)) => {
                // Whole seconds, as an integer: the client never formats floats.
                let secs = ((at - self.now.get()) / 1000.0).ceil().max(0.0) as u64;
                format!("reconnecting in {secs} s")
            }
            (c, _) => c.label().to_owned(),
        }
    }
}
