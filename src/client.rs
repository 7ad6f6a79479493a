//! Browser-only: the WebSocket session of the chat view. Opens `/ws` on the page's own host with
//! the `hubbub.v1` subprotocol and resumes from the list's cursor; keeps the user's unsent messages
//! in an outbox in localStorage (so they survive a reload) and sends them, with the same
//! `client_id`, until acknowledged; reconnects with backoff after an unexpected close, at once when
//! the browser comes back online or the page becomes visible; and pings the server to notice a
//! dead connection, since browsers do not expose WebSocket pings.

use crate::app::{ChatState, Conn, Entry, Status};
use crate::protocol::{ClientFrame, ServerFrame, SUBPROTOCOL};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
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

/// The open socket and the callbacks it holds, kept alive together.
struct Live {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
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
}

thread_local! {
    static SOCKET: RefCell<Option<Live>> = const { RefCell::new(None) };
    /// Reconnect attempts since the last successful join.
    static ATTEMPTS: Cell<u32> = const { Cell::new(0) };
    /// Bumped by every connect, so a reconnect scheduled earlier knows it is stale.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// When a frame last came from the server, and when we last pinged (ms).
    static LAST_RX: Cell<f64> = const { Cell::new(0.0) };
    static LAST_PING: Cell<f64> = const { Cell::new(0.0) };
    /// Messages replayed since the hello, and the first one's seq, for the divider.
    static REPLAY: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
    /// `client_id`s sent on this connection and not yet acknowledged.
    static IN_FLIGHT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Sends pending messages, oldest first, until [`SEND_WINDOW`] are in flight.
fn send_more(st: ChatState) {
    if st.conn.get_untracked() != Conn::Connected {
        return;
    }
    for e in st.pending() {
        let (sent, full) = IN_FLIGHT.with(|f| {
            let f = f.borrow();
            (f.contains(&e.client_id), f.len() >= SEND_WINDOW)
        });
        if sent {
            continue;
        }
        if full || !send_entry(st, &e) {
            return;
        }
        IN_FLIGHT.with(|f| f.borrow_mut().push(e.client_id.clone()));
    }
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
fn outbox_key(st: ChatState) -> String {
    format!(
        "hubbub.outbox.{}.{}",
        st.owner.get_value(),
        st.room.get_value()
    )
}

/// Forgets this account's unsent messages (at log-out), and any outbox of an earlier version that
/// was kept without an owner.
pub fn forget_outbox(st: ChatState) {
    let Some(storage) = local_storage() else {
        return;
    };
    let prefix = format!("hubbub.outbox.{}.", st.owner.get_value());
    let keys: Vec<String> = (0..storage.length().unwrap_or(0))
        .filter_map(|i| storage.key(i).ok().flatten())
        .filter(|k| k.starts_with(&prefix))
        .collect();
    for key in keys {
        let _ = storage.remove_item(&key);
    }
}

/// Writes every unacknowledged message of the list to localStorage.
fn save_outbox(st: ChatState) {
    let items: Vec<OutboxItem> = st
        .messages
        .get_untracked()
        .into_iter()
        .filter(|e| matches!(e.status, Status::Pending | Status::Failed))
        .map(|e| OutboxItem {
            client_id: e.client_id,
            user: e.user,
            body: e.body,
            ts: e.ts,
            failed: e.error,
        })
        .collect();
    if let (Some(s), Ok(json)) = (local_storage(), serde_json::to_string(&items)) {
        let key = outbox_key(st);
        let _ = if items.is_empty() {
            s.remove_item(&key)
        } else {
            s.set_item(&key, &json)
        };
    }
}

/// Puts the outbox left by an earlier page back into the list, as pending or failed.
fn restore_outbox(st: ChatState) {
    // An outbox of an earlier version was kept by room only: whose it was cannot be known, so it
    // is not sent as this account's.
    if let Some(storage) = local_storage() {
        let _ = storage.remove_item(&format!("hubbub.outbox.{}", st.room.get_value()));
    }
    let Some(json) = local_storage().and_then(|s| s.get_item(&outbox_key(st)).ok().flatten())
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
            list.push(Entry {
                client_id: item.client_id,
                seq: None,
                user: item.user,
                body: item.body,
                ts: item.ts,
                status: if item.failed.is_some() {
                    Status::Failed
                } else {
                    Status::Pending
                },
                error: item.failed,
            });
        }
    });
    // Forget what was found stored.
    save_outbox(st);
}

fn online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
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

fn send_frame(frame: &ClientFrame) -> bool {
    let Ok(text) = serde_json::to_string(frame) else {
        return false;
    };
    SOCKET.with(|s| match s.borrow().as_ref() {
        Some(live) if live.ws.ready_state() == WebSocket::OPEN => {
            live.ws.send_with_str(&text).is_ok()
        }
        _ => false,
    })
}

fn listen(target: &web_sys::EventTarget, event: &str, f: impl FnMut() + 'static) {
    let cb = Closure::<dyn FnMut()>::new(f);
    let _ = target.add_event_listener_with_callback(event, cb.as_ref().unchecked_ref());
    // The page lives as long as the listener: let it go.
    cb.forget();
}

/// Starts the session once, after hydration: restores the outbox, connects, and wires the
/// browser's online/offline/visibility events and the heartbeat clock.
pub fn start(st: ChatState) {
    restore_outbox(st);
    st.now.set(now());
    if let Some(window) = web_sys::window() {
        listen(&window, "online", move || {
            if st.want_connected.get_untracked() {
                connect(st);
            }
        });
        listen(&window, "offline", move || {
            if st.want_connected.get_untracked() {
                drop_socket(1000);
                st.conn.set(Conn::Offline);
                st.retry_at.set(None);
            }
        });
        if let Some(document) = window.document() {
            let doc = document.clone();
            listen(&document, "visibilitychange", move || {
                let visible = doc.visibility_state() == web_sys::VisibilityState::Visible;
                if visible
                    && st.want_connected.get_untracked()
                    && matches!(st.conn.get_untracked(), Conn::Reconnecting | Conn::Offline)
                {
                    connect(st);
                }
            });
        }
    }
    set_interval(move || tick(st), Duration::from_secs(1));
    connect(st);
}

/// Each second: advance the clock, ping a quiet server, give up on a silent one.
fn tick(st: ChatState) {
    let t = now();
    st.now.set(t);
    if st.conn.get_untracked() != Conn::Connected {
        return;
    }
    let quiet = t - LAST_RX.get();
    if quiet > DEAD_AFTER {
        leptos::logging::warn!("no word from the server for {quiet} ms: reconnecting");
        drop_socket(4000);
        st.conn.set(Conn::Reconnecting);
        schedule_reconnect(st);
    } else if quiet > PING_AFTER && t - LAST_PING.get() > PING_AFTER {
        LAST_PING.set(t);
        send_frame(&ClientFrame::Ping { nonce: None });
    }
}

/// Opens the socket (closing any previous one) and resumes the room from the list's cursor.
pub fn connect(st: ChatState) {
    st.want_connected.set(true);
    GENERATION.set(GENERATION.get() + 1);
    drop_socket(1000);
    st.retry_at.set(None);
    if !online() {
        st.conn.set(Conn::Offline);
        return;
    }
    let Some(url) = socket_url() else { return };
    let ws = match WebSocket::new_with_str(&url, SUBPROTOCOL) {
        Ok(ws) => ws,
        Err(_) => {
            st.conn.set(Conn::Reconnecting);
            schedule_reconnect(st);
            return;
        }
    };
    st.conn.set(Conn::Connecting);

    let on_open = {
        let ws = ws.clone();
        Closure::<dyn FnMut()>::new(move || {
            LAST_RX.set(now());
            REPLAY.set(None);
            let mut resume = BTreeMap::new();
            resume.insert(st.room.get_value(), st.last_seq.get_untracked());
            let name = st.name.get_untracked();
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
        LAST_RX.set(now());
        let Some(text) = ev.data().as_string() else {
            return;
        };
        match serde_json::from_str::<ServerFrame>(&text) {
            Ok(frame) => on_frame(st, frame),
            Err(e) => leptos::logging::warn!("unreadable frame from server: {e}"),
        }
    });
    let on_close = {
        let ws = ws.clone();
        Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
            // Ignore the close of a socket that was already replaced.
            let current = SOCKET.with(|s| s.borrow().as_ref().is_some_and(|l| l.ws == ws));
            if !current {
                return;
            }
            SOCKET.with(|s| s.borrow_mut().take());
            leptos::logging::log!("socket closed: {} {}", ev.code(), ev.reason());
            if ev.code() == crate::protocol::close::REVOKED {
                st.want_connected.set(false);
                st.conn.set(Conn::SignedOut);
            } else if !st.want_connected.get_untracked() {
                st.conn.set(Conn::Disconnected);
            } else if !online() {
                st.conn.set(Conn::Offline);
            } else {
                st.conn.set(Conn::Reconnecting);
                schedule_reconnect(st);
            }
        })
    };
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    SOCKET.with(|s| {
        *s.borrow_mut() = Some(Live {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    });
}

fn drop_socket(code: u16) {
    if let Some(live) = SOCKET.with(|s| s.borrow_mut().take()) {
        live.ws.set_onopen(None);
        live.ws.set_onmessage(None);
        live.ws.set_onclose(None);
        let _ = live.ws.close_with_code(code);
    }
}

/// Closes the socket on the user's request; no automatic reconnect follows.
pub fn disconnect(st: ChatState) {
    st.want_connected.set(false);
    GENERATION.set(GENERATION.get() + 1);
    drop_socket(1000);
    st.retry_at.set(None);
    st.conn.set(Conn::Disconnected);
}

/// Exponential backoff with full jitter: the first try within a second, then up to 2, 4, … 30 s.
fn schedule_reconnect(st: ChatState) {
    let attempt = ATTEMPTS.get().saturating_add(1);
    ATTEMPTS.set(attempt);
    let ceiling = (1000.0 * 2f64.powi(attempt.min(16) as i32 - 1)).min(MAX_BACKOFF);
    let delay = js_sys::Math::random() * ceiling;
    st.retry_at.set(Some(now() + delay));
    let generation = GENERATION.get();
    set_timeout(
        move || {
            if GENERATION.get() == generation
                && st.want_connected.get_untracked()
                && st.conn.get_untracked() == Conn::Reconnecting
            {
                connect(st);
            }
        },
        Duration::from_millis(delay as u64),
    );
}

fn on_frame(st: ChatState, frame: ServerFrame) {
    match frame {
        ServerFrame::Welcome { .. } => {}
        ServerFrame::Joined { .. } => {
            ATTEMPTS.set(0);
            st.conn.set(Conn::Connected);
            st.last_error.set(None);
            if let Some((first, n)) = REPLAY.take() {
                st.divider.set(Some((first, n)));
            }
            // Anything typed while offline or not yet acknowledged goes (again) with its
            // client_id, a window at a time: each ack sends the next.
            IN_FLIGHT.with(|f| f.borrow_mut().clear());
            send_more(st);
        }
        ServerFrame::Message(m) => {
            let seq = m.seq;
            let mine = st.messages.with_untracked(|l| {
                l.iter()
                    .any(|e| e.seq.is_none() && e.client_id == m.client_id)
            });
            if st.receive(m) {
                if st.conn.get_untracked() != Conn::Connected {
                    // Still replaying what was missed.
                    let (first, n) = REPLAY.get().unwrap_or((seq, 0));
                    REPLAY.set(Some((first, n + 1)));
                }
                if mine {
                    save_outbox(st);
                }
            }
        }
        ServerFrame::Ack { client_id, .. } => {
            st.acked(&client_id);
            save_outbox(st);
            IN_FLIGHT.with(|f| f.borrow_mut().retain(|c| *c != client_id));
            send_more(st);
        }
        ServerFrame::HistoryGap { .. } => {
            // The server cannot replay from our cursor: start over from the page's history.
            if let Some(w) = web_sys::window() {
                let _ = w.location().reload();
            }
        }
        ServerFrame::Error {
            message, reference, ..
        } => {
            if let Some(r) = &reference {
                IN_FLIGHT.with(|f| f.borrow_mut().retain(|c| c != r));
            }
            let failed = reference.is_some_and(|r| {
                let mut hit = false;
                st.messages.update(|l| {
                    for e in l.iter_mut().filter(|e| e.client_id == r && e.seq.is_none()) {
                        e.status = Status::Failed;
                        e.error = Some(message.clone());
                        hit = true;
                    }
                });
                hit
            });
            if failed {
                save_outbox(st);
                send_more(st);
            } else {
                st.last_error.set(Some(message));
            }
        }
        ServerFrame::Pong { .. } => {}
    }
}

fn send_entry(st: ChatState, e: &Entry) -> bool {
    send_frame(&ClientFrame::Send {
        room: st.room.get_value(),
        client_id: e.client_id.clone(),
        body: e.body.clone(),
        user: Some(e.user.clone()),
    })
}

fn new_client_id() -> String {
    web_sys::window()
        .and_then(|w| w.crypto().ok())
        .map(|c| c.random_uuid())
        .unwrap_or_else(|| format!("c-{}-{}", now(), js_sys::Math::random()))
}

/// Shows the message as pending at once, keeps it in the outbox, and sends it if connected.
pub fn send(st: ChatState, body: String) {
    let name = st.name.get_untracked();
    let entry = Entry {
        client_id: new_client_id(),
        seq: None,
        user: if name.trim().is_empty() {
            "anonymous".to_owned()
        } else {
            name.trim().to_owned()
        },
        body,
        ts: now() as i64,
        status: Status::Pending,
        error: None,
    };
    st.messages.update(|l| l.push(entry));
    save_outbox(st);
    send_more(st);
}

/// Sends a failed message again, with the same `client_id`.
pub fn retry(st: ChatState, client_id: &str) {
    let mut again = None;
    st.messages.update(|l| {
        if let Some(e) = l.iter_mut().find(|e| e.client_id == client_id) {
            e.status = Status::Pending;
            e.error = None;
            again = Some(e.clone());
        }
    });
    save_outbox(st);
    if again.is_some() {
        IN_FLIGHT.with(|f| f.borrow_mut().retain(|c| c != client_id));
        send_more(st);
    }
}

/// Drops a failed message for good.
pub fn discard(st: ChatState, client_id: &str) {
    st.messages
        .update(|l| l.retain(|e| !(e.client_id == client_id && e.seq.is_none())));
    save_outbox(st);
}

/// Fetches the page of history before the oldest shown message.
pub fn load_older(st: ChatState) {
    let oldest = st
        .messages
        .get_untracked()
        .iter()
        .find_map(|e| e.seq)
        .unwrap_or(1);
    let url = format!(
        "/api/rooms/{}/messages?before={oldest}&limit={}",
        st.room.get_value(),
        crate::protocol::PAGE_HISTORY
    );
    leptos::task::spawn_local(async move {
        #[derive(Deserialize)]
        struct Page {
            messages: Vec<crate::protocol::ChatMessage>,
        }
        let page = async {
            gloo_net::http::Request::get(&url)
                .send()
                .await?
                .json::<Page>()
                .await
        };
        match page.await {
            Ok(p) => st.prepend(p.messages),
            Err(e) => st
                .last_error
                .set(Some(format!("could not load older messages: {e}"))),
        }
    });
}
