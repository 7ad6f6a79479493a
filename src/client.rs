//! Browser-only: the one WebSocket of a tab, owned by the [`Session`]. Opens `/ws` on the page's
//! own host with the `hubbub.v1` subprotocol; the `hello` resumes every room this tab holds from
//! its cursor, and the server subscribes the socket to all the account's rooms, so badges stay
//! live. Keeps the user's unsent messages in an outbox in localStorage per account and room (so
//! they survive a reload) and sends them, with the same `client_id`, until acknowledged;
//! reconnects with backoff after an unexpected close, at once when the browser comes back online
//! or the page becomes visible; and pings the server to notice a dead connection, since browsers
//! do not expose WebSocket pings. Frame types, event kinds and fields it does not know are
//! ignored.

use crate::protocol::api::{ErrorAnswer, HistoryPage};
use crate::protocol::{
    Ack, ErrorReply, HistoryGap, Joined, Left, Pong, PresenceUpdate, Quote, ReadPosition,
    RoomUpdate, TypingNote, Welcome,
};
use crate::protocol::{ChatMessage, ClientFrame, RoomInfo, ServerFrame, SUBPROTOCOL};
use crate::session::{Conn, Entry, RoomState, Session, Status};
use leptos::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

const NAME_KEY: &str = "hubbub.name";
/// Send an application ping after this long without hearing from the server (ms).
const PING_AFTER: f64 = 15_000.0;
/// Give the connection up after this long without hearing from the server (ms).
const DEAD_AFTER: f64 = 25_000.0;
/// Longest wait between reconnect attempts (ms).
const MAX_BACKOFF: f64 = 30_000.0;
/// Unacknowledged sends in flight at once when an outbox is resent: a long outbox goes out as
/// acks come back, within the account's message rate, instead of in one burst.
const SEND_WINDOW: usize = 5;
/// Least time between two `read` reports for one room (ms).
const READ_EVERY: f64 = 1_000.0;

/// The open socket and the callbacks it holds, kept alive together.
struct Live {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

/// The session's connection: the socket and what the protocol keeps beside it.
#[derive(Default)]
pub struct Wire {
    live: Option<Live>,
    /// Reconnect attempts since the last successful hello.
    attempts: u32,
    /// Bumped by every connect, so a reconnect scheduled earlier knows it is stale.
    generation: u64,
    /// When a frame last came from the server, and when we last pinged (ms).
    last_rx: f64,
    last_ping: f64,
    /// `client_id`s sent on this connection and not yet acknowledged.
    in_flight: Vec<String>,
    /// Per room, the last read position reported and when; and one waiting to go.
    read_sent: HashMap<String, (u64, f64)>,
    read_due: HashMap<String, u64>,
    /// Rooms whose `joined` has not come since the hello.
    joining: Vec<String>,
    /// Per room, when this tab last said the user was typing there (ms).
    typing_sent: HashMap<String, f64>,
    /// What this tab last told the server of the user's presence, and when the user last did
    /// something (ms).
    told_idle: bool,
    last_input: f64,
    /// Uploads started in this tab, to tell them apart.
    uploads: u32,
}

/// The session's wire, for a change or a look.
fn wire<R>(session: Session, f: impl FnOnce(&mut Wire) -> R) -> Option<R> {
    session.wire.try_update_value(f)
}

/// A message the server has not yet acknowledged, as kept in localStorage.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OutboxItem {
    client_id: String,
    user: String,
    body: String,
    ts: i64,
    #[serde(default)]
    failed: Option<String>,
    #[serde(default)]
    reply_to: Option<u64>,
    #[serde(default)]
    reply: Option<Quote>,
}

fn now() -> f64 {
    js_sys::Date::now()
}

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

pub fn load_name() -> Option<String> {
    local_storage()?.get_item(NAME_KEY).ok().flatten()
}

pub fn save_name(name: &str) {
    if let Some(s) = local_storage() {
        let _ = s.set_item(NAME_KEY, name);
    }
}

/// The outbox of this account in this room: keyed by user, so a shared browser never sends one
/// account's unsent messages as another's.
fn outbox_key(session: Session, st: RoomState) -> String {
    format!(
        "hubbub.outbox.{}.{}",
        session.owner.get_value(),
        st.room.get_value()
    )
}

/// Forgets this account's unsent messages (at log-out).
pub fn forget_outbox(session: Session) {
    let Some(storage) = local_storage() else {
        return;
    };
    let prefix = format!("hubbub.outbox.{}.", session.owner.get_value());
    let keys: Vec<String> = (0..storage.length().unwrap_or(0))
        .filter_map(|i| storage.key(i).ok().flatten())
        .filter(|k| k.starts_with(&prefix))
        .collect();
    for key in keys {
        let _ = storage.remove_item(&key);
    }
}

/// Writes the room's unacknowledged messages to localStorage.
fn save_outbox(session: Session, st: RoomState) {
    let items: Vec<OutboxItem> = st
        .messages
        .get_untracked()
        .into_iter()
        .filter(|e| e.seq.is_none() && matches!(e.status, Status::Pending | Status::Failed))
        .map(|e| OutboxItem {
            client_id: e.client_id,
            user: e.user,
            body: e.body,
            ts: e.ts,
            failed: e.error,
            reply_to: e.reply_to,
            reply: e.reply,
        })
        .collect();
    if let (Some(s), Ok(json)) = (local_storage(), serde_json::to_string(&items)) {
        let key = outbox_key(session, st);
        let _ = if items.is_empty() {
            s.remove_item(&key)
        } else {
            s.set_item(&key, &json)
        };
    }
}

/// Puts the outbox an earlier page left for this room back into its list, as pending or failed.
pub fn restore_outbox(session: Session, st: RoomState) {
    let Some(json) =
        local_storage().and_then(|s| s.get_item(&outbox_key(session, st)).ok().flatten())
    else {
        return;
    };
    let Ok(items) = serde_json::from_str::<Vec<OutboxItem>>(&json) else {
        return;
    };
    st.messages.update(|list| {
        for item in items {
            // Already in the history the page was rendered with: it was stored.
            if list.iter().any(|e| e.client_id == item.client_id) {
                continue;
            }
            let mut e = Entry::pending(item.client_id, item.user, item.body, item.ts);
            e.reply_to = item.reply_to;
            e.reply = item.reply;
            if item.failed.is_some() {
                e.status = Status::Failed;
                e.error = item.failed;
            }
            list.push(e);
        }
    });
    save_outbox(session, st);
}

fn online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}

fn visible() -> bool {
    web_sys::window()
        .and_then(|w| w.document())
        .is_none_or(|d| d.visibility_state() == web_sys::VisibilityState::Visible)
}

fn socket_url() -> Option<String> {
    let location = web_sys::window()?.location();
    let scheme = if location.protocol().ok()? == "https:" {
        "wss:"
    } else {
        "ws:"
    };
    Some(format!("{scheme}//{}/ws", location.host().ok()?))
}

fn send_frame(session: Session, frame: &ClientFrame) -> bool {
    let Ok(text) = serde_json::to_string(frame) else {
        return false;
    };
    wire(session, |w| match &w.live {
        Some(live) if live.ws.ready_state() == WebSocket::OPEN => {
            live.ws.send_with_str(&text).is_ok()
        }
        _ => false,
    })
    .unwrap_or(false)
}

fn listen(target: &web_sys::EventTarget, event: &str, f: impl FnMut() + 'static) {
    let cb = Closure::<dyn FnMut()>::new(f);
    let _ = target.add_event_listener_with_callback(event, cb.as_ref().unchecked_ref());
    // The page lives as long as the listener: let it go.
    cb.forget();
}

/// Starts the session once, after hydration: restores the outboxes, connects, and wires the
/// browser's online/offline/visibility events and the heartbeat clock.
pub fn start(session: Session) {
    for st in session.states() {
        restore_outbox(session, st);
    }
    session.now.set(now());
    if let Some(window) = web_sys::window() {
        listen(&window, "online", move || {
            if session.want_connected.get_untracked() {
                connect(session);
            }
        });
        listen(&window, "offline", move || {
            if session.want_connected.get_untracked() {
                drop_socket(session, 1000);
                session.conn.set(Conn::Offline);
                session.retry_at.set(None);
            }
        });
        listen(&window, "focus", move || {
            input(session);
            seen(session);
        });
        for event in ["keydown", "pointerdown", "wheel"] {
            listen(&window, event, move || input(session));
        }
        if let Some(document) = window.document() {
            listen(&document, "visibilitychange", move || {
                if visible()
                    && session.want_connected.get_untracked()
                    && matches!(
                        session.conn.get_untracked(),
                        Conn::Reconnecting | Conn::Offline
                    )
                {
                    connect(session);
                }
                if visible() {
                    input(session);
                } else {
                    report_presence(session, now());
                }
                seen(session);
            });
        }
    }
    wire(session, |w| w.last_input = now());
    set_interval(move || tick(session), Duration::from_secs(1));
    connect(session);
}

/// Each second: advance the clock, send a due read report, ping a quiet server, give up on a
/// silent one.
fn tick(session: Session) {
    let t = now();
    session.now.set(t);
    for st in session.states() {
        st.expire_typing(t);
    }
    if session.conn.get_untracked() != Conn::Connected {
        return;
    }
    flush_reads(session);
    report_presence(session, t);
    let (quiet, since_ping) =
        wire(session, |w| (t - w.last_rx, t - w.last_ping)).unwrap_or_default();
    if quiet > DEAD_AFTER {
        leptos::logging::warn!(
            "no word from the server for {} ms: reconnecting",
            quiet as u64
        );
        drop_socket(session, 4000);
        session.conn.set(Conn::Reconnecting);
        schedule_reconnect(session);
    } else if quiet > PING_AFTER && since_ping > PING_AFTER {
        wire(session, |w| w.last_ping = t);
        send_frame(session, &ClientFrame::Ping { nonce: None });
    }
}

/// The user did something: they are active (told at once if this tab had said idle).
fn input(session: Session) {
    let t = now();
    wire(session, |w| w.last_input = t);
    report_presence(session, t);
}

/// Tells the server whether this tab's user is idle (no input for the configured while, or the
/// tab hidden) or active, when that changed.
fn report_presence(session: Session, t: f64) {
    if session.conn.get_untracked() != Conn::Connected || !session.signed_in() {
        return;
    }
    let after = session.settings.with_value(|s| s.idle_after_ms) as f64;
    let idle = !visible() || wire(session, |w| t - w.last_input >= after).unwrap_or(false);
    let changed = wire(session, |w| {
        let changed = w.told_idle != idle;
        w.told_idle = idle;
        changed
    })
    .unwrap_or(false);
    if changed {
        let status = if idle {
            crate::protocol::Status::Idle
        } else {
            crate::protocol::Status::Active
        };
        send_frame(session, &ClientFrame::Presence { status });
    }
}

/// Opens the socket (closing any previous one) and resumes every room held here.
pub fn connect(session: Session) {
    session.want_connected.set(true);
    wire(session, |w| w.generation += 1);
    drop_socket(session, 1000);
    session.retry_at.set(None);
    if !online() {
        session.conn.set(Conn::Offline);
        return;
    }
    let Some(url) = socket_url() else { return };
    let ws = match WebSocket::new_with_str(&url, SUBPROTOCOL) {
        Ok(ws) => ws,
        Err(_) => {
            session.conn.set(Conn::Reconnecting);
            schedule_reconnect(session);
            return;
        }
    };
    session.conn.set(Conn::Connecting);

    let on_open = {
        let ws = ws.clone();
        Closure::<dyn FnMut()>::new(move || {
            let mut resume = BTreeMap::new();
            for st in session.states() {
                st.replay.set_value(None);
                if st.loaded.get_untracked() {
                    resume.insert(st.name(), st.last_seq.get_untracked());
                }
            }
            wire(session, |w| {
                w.last_rx = now();
                w.joining = resume.keys().cloned().collect();
                // Nothing sent on an earlier socket counts as in flight on this one.
                w.in_flight.clear();
            });
            let name = session.name.get_untracked();
            let hello = ClientFrame::Hello {
                resume,
                user: Some(name).filter(|n| !n.trim().is_empty()),
            };
            if let Ok(text) = serde_json::to_string(&hello) {
                let _ = ws.send_with_str(&text);
            }
        })
    };
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        wire(session, |w| w.last_rx = now());
        let Some(text) = ev.data().as_string() else {
            return;
        };
        match serde_json::from_str::<ServerFrame>(&text) {
            Ok(frame) => on_frame(session, frame),
            // A frame type this build does not know: the protocol grew; skip it.
            Err(e) => leptos::logging::warn!("skipping a frame this client cannot read: {e}"),
        }
    });
    let on_close = {
        let ws = ws.clone();
        Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
            // Ignore the close of a socket that was already replaced.
            let current =
                wire(session, |w| w.live.as_ref().is_some_and(|l| l.ws == ws)).unwrap_or(false);
            if !current {
                return;
            }
            wire(session, |w| w.live.take());
            leptos::logging::log!("socket closed: {} {}", ev.code(), ev.reason());
            if ev.code() == crate::protocol::close::REVOKED {
                session.want_connected.set(false);
                session.conn.set(Conn::SignedOut);
            } else if !session.want_connected.get_untracked() {
                session.conn.set(Conn::Disconnected);
            } else if !online() {
                session.conn.set(Conn::Offline);
            } else {
                session.conn.set(Conn::Reconnecting);
                schedule_reconnect(session);
            }
        })
    };
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    wire(session, |w| {
        w.live = Some(Live {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    });
}

fn drop_socket(session: Session, code: u16) {
    if let Some(live) = wire(session, |w| w.live.take()).flatten() {
        live.ws.set_onopen(None);
        live.ws.set_onmessage(None);
        live.ws.set_onclose(None);
        let _ = live.ws.close_with_code(code);
    }
}

/// Closes the socket on the user's request; no automatic reconnect follows.
pub fn disconnect(session: Session) {
    session.want_connected.set(false);
    wire(session, |w| w.generation += 1);
    drop_socket(session, 1000);
    session.retry_at.set(None);
    session.conn.set(Conn::Disconnected);
}

/// Exponential backoff with full jitter: the first try within a second, then up to 2, 4, … 30 s.
fn schedule_reconnect(session: Session) {
    let (attempt, generation) = wire(session, |w| {
        w.attempts = w.attempts.saturating_add(1);
        (w.attempts, w.generation)
    })
    .unwrap_or_default();
    let ceiling = (1000.0 * 2f64.powi(attempt.min(16) as i32 - 1)).min(MAX_BACKOFF);
    let delay = js_sys::Math::random() * ceiling;
    session.retry_at.set(Some(now() + delay));
    set_timeout(
        move || {
            if wire(session, |w| w.generation) == Some(generation)
                && session.want_connected.get_untracked()
                && session.conn.get_untracked() == Conn::Reconnecting
            {
                connect(session);
            }
        },
        Duration::from_millis(delay as u64),
    );
}

/// Whether this message is the user's own (not unread to them).
fn mine(session: Session, m: &ChatMessage) -> bool {
    match (&m.username, session.username.get_value()) {
        (Some(a), Some(b)) => *a == b,
        _ => false,
    }
}

fn on_frame(session: Session, frame: ServerFrame) {
    match frame {
        ServerFrame::Welcome(Welcome { rooms, .. }) => {
            // The server's view of the account's rooms is the truth now.
            let open: Vec<RoomInfo> = rooms;
            session.rooms.set(open);
            // A new session starts active on the server: say so if it is not.
            wire(session, |w| {
                w.attempts = 0;
                w.told_idle = false;
            });
            session.conn.set(Conn::Connected);
            session.last_error.set(None);
            report_presence(session, now());
            // Rooms not resumed (none held here) are live from their head: sends can go.
            for st in session.states() {
                if !st.loaded.get_untracked() {
                    continue;
                }
                send_more(session, st);
            }
        }
        ServerFrame::Joined(Joined { room, .. }) => {
            wire(session, |w| w.joining.retain(|r| *r != room));
            if let Some(st) = session.loaded_state(&room) {
                if let Some((first, n)) = st.replay.get_value().filter(|(_, n)| *n > 0) {
                    // A catch-up after a reconnect: mark where it began.
                    let _ = (first, n);
                    if st.divider.get_untracked().is_none() {
                        st.divider.set(Some(first.saturating_sub(1)));
                    }
                }
                st.replay.set_value(None);
                // Anything typed while offline or not yet acknowledged goes (again) with its
                // client_id, a window at a time: each ack sends the next.
                send_more(session, st);
                seen(session);
            }
        }
        ServerFrame::Message(m) => on_event(session, m),
        ServerFrame::Ack(Ack {
            client_id, room, ..
        }) => {
            wire(session, |w| w.in_flight.retain(|c| *c != client_id));
            if let Some(st) = session.loaded_state(&room) {
                st.acked(&client_id);
                save_outbox(session, st);
                send_more(session, st);
            }
        }
        ServerFrame::Room(RoomUpdate { room }) => session.upsert_room(room),
        ServerFrame::Left(Left { room }) => {
            session.remove_room(&room);
            if session.current.get_untracked() == room {
                session
                    .last_error
                    .set(Some("You are no longer a member of this room.".to_owned()));
            }
        }
        ServerFrame::Read(ReadPosition {
            room,
            seq,
            unread,
            mentions,
        }) => session.read_up_to(&room, seq, unread, mentions),
        ServerFrame::Typing(TypingNote {
            room,
            user,
            username,
            stop,
        }) => {
            if Some(&username) != session.username.get_value().as_ref() {
                if let Some(st) = session.loaded_state(&room) {
                    st.typist(username, user, stop, now());
                }
            }
        }
        ServerFrame::Presence(PresenceUpdate { users, .. }) => session.take_presence(users),
        ServerFrame::HistoryGap(HistoryGap { room, .. }) => {
            // The server cannot replay from our cursor: load the room's newest page afresh.
            if let Some(st) = session.loaded_state(&room) {
                st.messages.update(|l| l.retain(|e| e.seq.is_none()));
                st.last_seq.set(0);
                st.loaded.set(false);
                load_room(session, st);
            }
        }
        ServerFrame::Error(ErrorReply {
            message, reference, ..
        }) => on_error(session, message, reference),
        ServerFrame::Pong(Pong { .. }) => {}
    }
}

/// Raises a browser notification, if the user allowed them.
fn notify(text: &str) {
    if web_sys::Notification::permission() != web_sys::NotificationPermission::Granted {
        return;
    }
    let options = web_sys::NotificationOptions::new();
    options.set_body(text);
    let _ = web_sys::Notification::new_with_options("hubbub: you were mentioned", &options);
}

/// Asks the browser for permission to notify of mentions.
pub fn ask_to_notify() {
    let _ = web_sys::Notification::request_permission();
}

/// Whether to offer to turn notifications on (the user has not decided yet).
pub fn may_ask_to_notify() -> bool {
    web_sys::Notification::permission() == web_sys::NotificationPermission::Default
}

/// An event of a room's stream: into the room's list if this tab holds it, into the sidebar's
/// counts and the screen reader's live region either way.
fn on_event(session: Session, m: ChatMessage) {
    session.apply_event(&m);
    let room = m.room.clone();
    let is_message = m.is_message();
    let own = mine(session, &m);
    let mentioned = !own && session.mentions_me(&m);
    let announce = format!("{}: {}", m.user, m.body);
    // What a resume replays was counted in the welcome's unread numbers already.
    let replaying = wire(session, |w| w.joining.contains(&room)).unwrap_or(false);
    let fresh = match session.loaded_state(&room) {
        Some(st) => {
            let seq = m.seq;
            let pending_mine = st.messages.with_untracked(|l| {
                l.iter()
                    .any(|e| e.seq.is_none() && e.client_id == m.client_id)
            });
            let fresh = st.receive(m);
            if fresh {
                if replaying {
                    let (first, n) = st.replay.get_value().unwrap_or((seq, 0));
                    st.replay.set_value(Some((first, n + 1)));
                }
                if pending_mine {
                    save_outbox(session, st);
                }
            }
            fresh
        }
        None => true,
    };
    if !fresh || !(is_message || mentioned) || own {
        return;
    }
    let viewing = session.current.get_untracked() == room
        && visible()
        && session
            .loaded_state(&room)
            .is_some_and(|st| st.at_bottom.get_untracked());
    if viewing {
        seen(session);
    } else if !replaying {
        if is_message {
            session.count_unread(&room);
        }
        if mentioned {
            session.count_mention(&room);
        }
    }
    if mentioned && !replaying && !visible() {
        notify(&announce);
    }
    if !is_message {
        return;
    }
    if session.current.get_untracked() == room {
        session.announce.set(announce);
    }
}

fn on_error(session: Session, message: String, reference: Option<String>) {
    if let Some(r) = &reference {
        wire(session, |w| w.in_flight.retain(|c| c != r));
    }
    let Some(r) = reference else {
        session.last_error.set(Some(message));
        return;
    };
    for st in session.states() {
        let mut hit = false;
        st.messages.update(|l| {
            for e in l.iter_mut().filter(|e| e.client_id == r && e.seq.is_none()) {
                e.status = Status::Failed;
                e.error = Some(message.clone());
                hit = true;
            }
        });
        if hit {
            save_outbox(session, st);
            send_more(session, st);
            return;
        }
    }
    session.last_error.set(Some(message));
}

/// Sends the room's pending messages, oldest first, until [`SEND_WINDOW`] are in flight.
fn send_more(session: Session, st: RoomState) {
    if session.conn.get_untracked() != Conn::Connected {
        return;
    }
    let room = st.name();
    if wire(session, |w| w.joining.contains(&room)).unwrap_or(false) {
        return;
    }
    for e in st.pending() {
        let (sent, full) = wire(session, |w| {
            (
                w.in_flight.contains(&e.client_id),
                w.in_flight.len() >= SEND_WINDOW,
            )
        })
        .unwrap_or((false, true));
        if sent {
            continue;
        }
        let frame = ClientFrame::Send {
            room: room.clone(),
            client_id: e.client_id.clone(),
            body: e.body.clone(),
            user: Some(e.user.clone()),
            reply_to: e.reply_to,
        };
        if full || !send_frame(session, &frame) {
            return;
        }
        wire(session, |w| w.in_flight.push(e.client_id.clone()));
    }
}

fn new_client_id() -> String {
    web_sys::window()
        .and_then(|w| w.crypto().ok())
        .map(|c| c.random_uuid())
        .unwrap_or_else(|| {
            let noise = (js_sys::Math::random() * 1e15) as u64;
            format!("c-{}-{noise}", now() as u64)
        })
}

/// Shows the message as pending at once, keeps it in the outbox, and sends it if connected.
pub fn send(session: Session, st: RoomState, body: String) {
    let name = session.name.get_untracked();
    let user = if name.trim().is_empty() {
        "anonymous".to_owned()
    } else {
        name.trim().to_owned()
    };
    let mut entry = Entry::pending(new_client_id(), user, body, now() as i64);
    if let Some((seq, quote)) = st.replying.get_untracked() {
        entry.reply_to = Some(seq);
        entry.reply = Some(quote);
        st.replying.set(None);
    }
    st.messages.update(|l| l.push(entry));
    save_outbox(session, st);
    send_more(session, st);
    stopped_typing(session, st);
}

/// Sends a change to a stored message (an edit, a delete, a reaction) if connected; changes are
/// not kept for later like messages are, so offline the user is told to try again.
fn change(session: Session, frame: ClientFrame) {
    if !send_frame(session, &frame) {
        session.last_error.set(Some(
            "Not connected: try again once the connection is back.".to_owned(),
        ));
    }
}

/// Saves new text for the user's own message `target`.
pub fn edit(session: Session, st: RoomState, target: u64, body: String) {
    let frame = ClientFrame::Edit {
        room: st.name(),
        client_id: new_client_id(),
        target,
        body,
    };
    change(session, frame);
    stopped_typing(session, st);
}

/// Deletes message `target`.
pub fn delete(session: Session, st: RoomState, target: u64) {
    let frame = ClientFrame::Delete {
        room: st.name(),
        client_id: new_client_id(),
        target,
    };
    change(session, frame);
}

/// Adds (`on`) or takes back the user's reaction to message `target`.
pub fn react(session: Session, st: RoomState, target: u64, emoji: &str, on: bool) {
    let frame = ClientFrame::React {
        room: st.name(),
        target,
        emoji: emoji.to_owned(),
        on,
    };
    change(session, frame);
}

/// Sends a file to the room, showing its progress; one over the size limit is refused here,
/// before a byte is sent.
pub fn upload(session: Session, st: RoomState, file: web_sys::File) {
    use crate::session::Upload;
    let max = session.settings.with_value(|s| s.max_upload);
    let name = file.name();
    let size = file.size();
    if size > max as f64 {
        session.last_error.set(Some(format!(
            "{name} is {}; files may be at most {}.",
            crate::app::human_size(size as u64),
            crate::app::human_size(max)
        )));
        return;
    }
    let key = wire(session, |w| {
        w.uploads = w.uploads.wrapping_add(1);
        w.uploads
    })
    .unwrap_or_default();
    st.uploads.update(|u| {
        u.push(Upload {
            key,
            name: name.clone(),
            sent: 0.0,
            total: size,
            error: None,
        })
    });
    let fail = move |why: String| {
        st.uploads.update(|u| {
            if let Some(x) = u.iter_mut().find(|x| x.key == key) {
                x.error = Some(why);
            }
        })
    };
    let Ok(xhr) = web_sys::XmlHttpRequest::new() else {
        fail("this browser cannot upload".to_owned());
        return;
    };
    let url = format!(
        "/api/rooms/{}/attachments?name={}&client_id={}",
        st.name(),
        encode(&name),
        new_client_id()
    );
    if xhr.open_with_async("POST", &url, true).is_err() {
        fail("the upload could not start".to_owned());
        return;
    }
    let progress =
        Closure::<dyn FnMut(web_sys::ProgressEvent)>::new(move |ev: web_sys::ProgressEvent| {
            st.uploads.update(|u| {
                if let Some(x) = u.iter_mut().find(|x| x.key == key) {
                    x.sent = ev.loaded();
                }
            })
        });
    if let Ok(up) = xhr.upload() {
        up.set_onprogress(Some(progress.as_ref().unchecked_ref()));
    }
    let done = {
        let xhr = xhr.clone();
        Closure::<dyn FnMut()>::new(move || {
            let status = xhr.status().unwrap_or(0);
            if status == 200 || status == 201 {
                // The message comes over the socket like any other.
                st.uploads.update(|u| u.retain(|x| x.key != key));
                return;
            }
            let text = xhr.response_text().ok().flatten().unwrap_or_default();
            let why = serde_json::from_str::<ErrorAnswer>(&text)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| format!("the upload failed ({status})"));
            fail(why);
        })
    };
    let broken =
        Closure::<dyn FnMut()>::new(move || fail("the upload failed: no connection".to_owned()));
    xhr.set_onload(Some(done.as_ref().unchecked_ref()));
    xhr.set_onerror(Some(broken.as_ref().unchecked_ref()));
    if xhr.send_with_opt_blob(Some(&file)).is_err() {
        fail("the upload could not start".to_owned());
    }
    // They live as long as the request, which holds no other reference to them.
    progress.forget();
    done.forget();
    broken.forget();
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Least time between two `typing` frames for one room (ms).
const TYPING_EVERY: f64 = 3_000.0;

/// The composer of `st` changed: tells the room the user is typing, at most every 3 s, or that
/// they stopped when it is empty again.
pub fn typed(session: Session, st: RoomState, text: &str) {
    if text.trim().is_empty() {
        stopped_typing(session, st);
        return;
    }
    let room = st.name();
    let t = now();
    let due = wire(session, |w| {
        let due = w
            .typing_sent
            .get(&room)
            .is_none_or(|at| t - at >= TYPING_EVERY);
        if due {
            w.typing_sent.insert(room.clone(), t);
        }
        due
    })
    .unwrap_or(false);
    if due {
        send_frame(session, &ClientFrame::Typing { room, stop: false });
    }
}

/// Tells the room the user stopped typing, if they had been.
fn stopped_typing(session: Session, st: RoomState) {
    let room = st.name();
    let was = wire(session, |w| w.typing_sent.remove(&room).is_some()).unwrap_or(false);
    if was {
        send_frame(session, &ClientFrame::Typing { room, stop: true });
    }
}

/// Sends a failed message again, with the same `client_id`.
pub fn retry(session: Session, st: RoomState, client_id: &str) {
    let mut again = false;
    st.messages.update(|l| {
        if let Some(e) = l.iter_mut().find(|e| e.client_id == client_id) {
            e.status = Status::Pending;
            e.error = None;
            again = true;
        }
    });
    save_outbox(session, st);
    if again {
        wire(session, |w| w.in_flight.retain(|c| c != client_id));
        send_more(session, st);
    }
}

/// Drops a failed message for good.
pub fn discard(session: Session, st: RoomState, client_id: &str) {
    st.messages
        .update(|l| l.retain(|e| !(e.client_id == client_id && e.seq.is_none())));
    save_outbox(session, st);
}

/// The reader is looking at the current room, scrolled to its end: report it read (throttled;
/// what is due goes with the next tick).
pub fn seen(session: Session) {
    if !visible() {
        return;
    }
    let room = session.current.get_untracked();
    let Some(st) = session.loaded_state(&room) else {
        return;
    };
    if !st.at_bottom.get_untracked() || session.info(&room).is_none() {
        return;
    }
    let seq = st.last_seq.get_untracked();
    if session
        .info(&room)
        .is_some_and(|i| i.unread == 0 && i.last_read >= seq)
    {
        return;
    }
    wire(session, |w| {
        w.read_due.insert(room, seq);
    });
    flush_reads(session);
}

/// Sends the read reports that are due and not too soon after the last one for their room.
fn flush_reads(session: Session) {
    let t = now();
    let due: Vec<(String, u64)> = wire(session, |w| {
        let ready: Vec<(String, u64)> = w
            .read_due
            .iter()
            .filter(|(room, seq)| {
                w.read_sent
                    .get(*room)
                    .is_none_or(|(sent, at)| *sent < **seq && t - at >= READ_EVERY)
            })
            .map(|(r, s)| (r.clone(), *s))
            .collect();
        for (room, _) in &ready {
            w.read_due.remove(room);
        }
        ready
    })
    .unwrap_or_default();
    for (room, seq) in due {
        if send_frame(
            session,
            &ClientFrame::Read {
                room: room.clone(),
                seq,
            },
        ) {
            wire(session, |w| {
                w.read_sent.insert(room, (seq, t));
            });
        } else {
            wire(session, |w| {
                w.read_due.insert(room, seq);
            });
        }
    }
}

/// Opens a room in this tab: its state, its history over HTTP if not loaded yet, and a
/// subscription for a public room the account is not in (a preview).
pub fn open_room(session: Session, room: &str) -> RoomState {
    let st = session.state(room);
    if !st.loaded.get_untracked() {
        if let Some(info) = session.info(room) {
            session.place_divider(st, &info);
        }
        restore_outbox(session, st);
        load_room(session, st);
    }
    st
}

/// Reads the newest page of a room over HTTP into its state.
fn load_room(session: Session, st: RoomState) {
    let room = st.name();
    let url = format!(
        "/api/rooms/{room}/messages?limit={}",
        crate::protocol::PAGE_HISTORY
    );
    leptos::task::spawn_local(async move {
        match request("GET", &url, None).await {
            Ok(text) => {
                let Ok(p) = serde_json::from_str::<HistoryPage>(&text) else {
                    session
                        .last_error
                        .set(Some("could not read the room's history".to_owned()));
                    return;
                };
                st.load(p.head, p.messages);
                // Follow it live: a room the account is in is followed already; a public room
                // is followed from the page's head (a preview).
                if session.info(&room).is_none() {
                    send_frame(
                        session,
                        &ClientFrame::Join {
                            room: room.clone(),
                            after: Some(p.head),
                        },
                    );
                }
                send_more(session, st);
                seen(session);
            }
            Err((404, _)) => {
                st.loaded.set(true);
                st.missing.set(true);
            }
            Err((_, e)) => session
                .last_error
                .set(Some(format!("could not load the room: {e}"))),
        }
    });
}

/// Fetches the page of history before the oldest shown message.
pub fn load_older(session: Session, st: RoomState) {
    leptos::task::spawn_local(async move {
        if let Err(e) = older_page(st).await {
            session
                .last_error
                .set(Some(format!("could not load older messages: {e}")));
        }
    });
}

/// Reads the page of history before the oldest loaded message into the room.
async fn older_page(st: RoomState) -> Result<(), String> {
    let oldest = st
        .messages
        .get_untracked()
        .iter()
        .find_map(|e| e.seq)
        .unwrap_or(1);
    let url = format!(
        "/api/rooms/{}/messages?before={oldest}&limit={}",
        st.name(),
        crate::protocol::MAX_PAGE
    );
    st.prepend(history(&url).await?);
    Ok(())
}

/// Reads the room's people once, for the composer to complete `@names` with.
pub fn load_people(st: RoomState) {
    st.people_asked.set(true);
    leptos::task::spawn_local(async move {
        let url = format!("/api/rooms/{}", st.name());
        match api::<crate::protocol::api::RoomDetail>("GET", &url, None).await {
            Ok(detail) => st.people.set(detail.members),
            // Asked again at the next `@`.
            Err(_) => st.people_asked.set(false),
        }
    });
}

/// Most pages of history read to bring one message into view.
const REVEAL_PAGES: usize = 25;

/// Brings message `seq` of the room into view and marks it a moment, reading older history
/// until it is loaded (up to [`REVEAL_PAGES`] pages of 200).
pub fn reveal(session: Session, st: RoomState, seq: u64) {
    leptos::task::spawn_local(async move {
        let loaded = |st: RoomState| {
            st.messages
                .with_untracked(|l| l.iter().any(|e| e.seq == Some(seq)))
        };
        for _ in 0..REVEAL_PAGES {
            let oldest = st
                .messages
                .with_untracked(|l| l.iter().find_map(|e| e.seq))
                .unwrap_or(1);
            if loaded(st) || oldest <= seq || !st.has_older.get_untracked() {
                break;
            }
            if let Err(e) = older_page(st).await {
                session
                    .last_error
                    .set(Some(format!("could not load the message: {e}")));
                break;
            }
        }
        st.focus.set(None);
        if !loaded(st) {
            session.last_error.set(Some(
                "That message is too far back to show here.".to_owned(),
            ));
            return;
        }
        st.at_bottom.set(false);
        request_animation_frame(move || {
            let selector = format!(r#"li[data-seq="{seq}"]"#);
            if let Some(el) = document().query_selector(&selector).ok().flatten() {
                el.scroll_into_view();
                let _ = el.set_attribute("data-flash", "");
                set_timeout(
                    move || {
                        let _ = el.remove_attribute("data-flash");
                    },
                    Duration::from_millis(2_000),
                );
            }
        });
    });
}

/// A page of a room's history (`url` says which): one function for every such read, so the
/// client holds the code of one.
async fn history(url: &str) -> Result<Vec<ChatMessage>, String> {
    Ok(api::<HistoryPage>("GET", url, None).await?.messages)
}

/// A JSON request to the API with the page's cookie (the browser adds the Origin), with `body`
/// serialised as JSON when given: the answer's body, or the server's error message.
async fn request(method: &str, url: &str, body: Option<String>) -> Result<String, (u16, String)> {
    use gloo_net::http::Request;
    let req = match method {
        "PATCH" => Request::patch(url),
        "PUT" => Request::put(url),
        "DELETE" => Request::delete(url),
        "GET" => Request::get(url),
        _ => Request::post(url),
    };
    let resp = match body {
        Some(b) => {
            req.header("Content-Type", "application/json")
                .body(b)
                .map_err(|e| (0, e.to_string()))?
                .send()
                .await
        }
        None => req.send().await,
    }
    .map_err(|e| (0, e.to_string()))?;
    let text = resp.text().await.unwrap_or_default();
    if resp.ok() {
        Ok(text)
    } else {
        let message = serde_json::from_str::<ErrorAnswer>(&text)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| "the server refused".to_owned());
        Err((resp.status(), message))
    }
}

/// A request's JSON body. Bodies are made before the request, and answers read after it, so
/// the request's code is in the client once, not once for each type of body and answer.
pub fn json<B: Serialize>(body: &B) -> Option<String> {
    serde_json::to_string(body).ok()
}

/// An API call whose answer is JSON of type `T`.
pub async fn api<T: DeserializeOwned>(
    method: &str,
    url: &str,
    body: Option<String>,
) -> Result<T, String> {
    let text = api_text(method, url, body).await?;
    serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))
}

/// An API call's answer as text, or the server's message.
async fn api_text(method: &str, url: &str, body: Option<String>) -> Result<String, String> {
    request(method, url, body).await.map_err(|(_, e)| e)
}

/// An API call whose answer carries nothing the caller needs.
pub async fn api_do(method: &str, url: &str, body: Option<String>) -> Result<(), String> {
    api_text(method, url, body).await.map(|_| ())
}
