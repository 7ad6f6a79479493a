//! The Leptos application: the page shell, the room page, and the reactive chat view. The same code
//! renders on the server and hydrates in the browser; only `crate::client` (browser-only) touches
//! the WebSocket.

use crate::protocol::{ChatMessage, DEFAULT_ROOM, PAGE_HISTORY};
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::hooks::use_params_map;
use leptos_router::{path, SsrMode};
use serde::{Deserialize, Serialize};

/// The HTML document around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/hubbub.css"/>
        <Title text="hubbub"/>
        <Router>
            <Routes fallback=|| view! { <p class="notice">"Page not found."</p> }>
                <Route
                    path=path!("/")
                    view=|| view! { <RoomPage room=DEFAULT_ROOM.to_owned()/> }
                    ssr=SsrMode::Async
                />
                <Route path=path!("/r/:room") view=RoomRoute ssr=SsrMode::Async/>
            </Routes>
        </Router>
    }
}

/// What the room page renders first: the room's last messages and its head seq, the cursor the
/// client resumes from, so nothing posted between render and connect is missed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub room: String,
    pub head: u64,
    pub messages: Vec<ChatMessage>,
    /// The signed-in user's display name; `None` in anonymous mode.
    pub me: Option<String>,
    /// The signed-in user's username (their unsent messages are kept under it); `None` in
    /// anonymous mode.
    #[serde(default)]
    pub me_username: Option<String>,
    /// The browser's CSRF token, for the log-out form.
    pub csrf: String,
}

#[server]
pub async fn room_snapshot(room: String) -> Result<Option<Snapshot>, ServerFnError> {
    use crate::server::AppState;
    let state =
        use_context::<AppState>().ok_or_else(|| ServerFnError::new("server state is missing"))?;
    let parts = use_context::<axum::http::request::Parts>();
    let headers = parts
        .as_ref()
        .map(|p| p.headers.clone())
        .unwrap_or_default();
    let peer = parts
        .as_ref()
        .and_then(|p| {
            p.extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        })
        .map(|c| c.0.ip())
        .ok_or_else(|| ServerFnError::new("no peer address"))?;
    let ip = state.auth.client_ip(peer, &headers);
    let user = state
        .auth
        .identify(&headers, ip, false)
        .await
        .map_err(|_| ServerFnError::new("log in first"))?
        .user;
    let me = user.as_ref().map(|u| u.display_name.clone());
    let me_username = user.map(|u| u.username);
    let (csrf, new) = state.auth.csrf_token(&headers);
    if new {
        if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
            resp.append_header(
                axum::http::header::SET_COOKIE,
                state.auth.csrf_cookie(&csrf),
            );
        }
    }
    if !crate::protocol::valid_room_name(&room) {
        return Ok(None);
    }
    // The head and the page in one snapshot: a commit between two reads would show twice.
    let Some((head, messages)) = state
        .chat
        .store
        .recent(&room, PAGE_HISTORY)
        .await
        .map_err(ServerFnError::new)?
    else {
        return Ok(None);
    };
    Ok(Some(Snapshot {
        room,
        head,
        messages,
        me,
        me_username,
        csrf,
    }))
}

#[component]
fn RoomRoute() -> impl IntoView {
    let params = use_params_map();
    move || {
        let room = params
            .read()
            .get("room")
            .unwrap_or_else(|| DEFAULT_ROOM.to_owned());
        view! { <RoomPage room/> }
    }
}

#[component]
fn RoomPage(room: String) -> impl IntoView {
    let snapshot = Resource::new(move || room.clone(), room_snapshot);
    view! {
        <Suspense fallback=|| view! { <p class="notice">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match snapshot.await {
                    Ok(Some(s)) => view! { <ChatView snapshot=s/> }.into_any(),
                    Ok(None) => view! { <p class="notice">"There is no such room."</p> }.into_any(),
                    Err(e) => {
                        view! { <p class="notice">"Could not load the room: " {e.to_string()}</p> }
                            .into_any()
                    }
                }
            })}
        </Suspense>
    }
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
    pub seq: Option<u64>,
    pub user: String,
    pub body: String,
    pub ts: i64,
    pub status: Status,
    /// Why the server refused it, for a failed entry.
    pub error: Option<String>,
}

impl From<ChatMessage> for Entry {
    fn from(m: ChatMessage) -> Self {
        Entry {
            client_id: m.client_id,
            seq: Some(m.seq),
            user: m.user,
            body: m.body,
            ts: m.ts,
            status: Status::Stored,
            error: None,
        }
    }
}

/// Connection state as the user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Connected,
    /// Lost unexpectedly; the next attempt is at `ChatState::retry_at`.
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

/// The chat's reactive state: all handles, so it is `Copy` and can go into every closure.
#[derive(Clone, Copy)]
pub struct ChatState {
    pub room: StoredValue<String>,
    /// The signed-in user's display name; `None` in anonymous mode, where the name field is used.
    pub me: StoredValue<Option<String>>,
    /// Whose unsent messages this browser keeps here: the username, or `guest` in anonymous
    /// mode. On a shared browser one account's outbox is never sent as another's.
    pub owner: StoredValue<String>,
    /// Stored messages in seq order, then the user's own pending ones.
    pub messages: RwSignal<Vec<Entry>>,
    /// Highest seq in the list: the resume cursor.
    pub last_seq: RwSignal<u64>,
    pub conn: RwSignal<Conn>,
    /// False after the user pressed Disconnect: no automatic reconnect then.
    pub want_connected: RwSignal<bool>,
    pub name: RwSignal<String>,
    /// Messages that arrived while the user was scrolled up.
    pub unseen: RwSignal<usize>,
    pub at_bottom: RwSignal<bool>,
    /// Whether older history can still be loaded.
    pub has_older: RwSignal<bool>,
    /// Set once the page is hydrated: times switch from UTC to the browser's zone.
    pub hydrated: RwSignal<bool>,
    pub last_error: RwSignal<Option<String>>,
    /// When the next reconnect attempt is due (ms since the epoch).
    pub retry_at: RwSignal<Option<f64>>,
    /// The clock, ticking each second, for the reconnect countdown.
    pub now: RwSignal<f64>,
    /// After a catch-up: the first seq it brought and how many messages came.
    pub divider: RwSignal<Option<(u64, usize)>>,
}

impl ChatState {
    fn new(s: Snapshot) -> Self {
        let has_older = s.messages.first().is_some_and(|m| m.seq > 1);
        ChatState {
            room: StoredValue::new(s.room),
            me: StoredValue::new(s.me.clone()),
            owner: StoredValue::new(s.me_username.unwrap_or_else(|| "guest".to_owned())),
            messages: RwSignal::new(s.messages.into_iter().map(Entry::from).collect()),
            last_seq: RwSignal::new(s.head),
            conn: RwSignal::new(Conn::Connecting),
            want_connected: RwSignal::new(true),
            name: RwSignal::new(s.me.unwrap_or_default()),
            unseen: RwSignal::new(0),
            at_bottom: RwSignal::new(true),
            has_older: RwSignal::new(has_older),
            hydrated: RwSignal::new(false),
            last_error: RwSignal::new(None),
            retry_at: RwSignal::new(None),
            now: RwSignal::new(0.0),
            divider: RwSignal::new(None),
        }
    }

    /// Puts a stored message in its place: after the stored ones, before pending ones, replacing
    /// the pending copy with the same `client_id`. Messages at or below the cursor are duplicates.
    pub fn receive(&self, m: ChatMessage) -> bool {
        if m.seq <= self.last_seq.get_untracked() {
            return false;
        }
        self.last_seq.set(m.seq);
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
                .filter(|m| m.seq < first)
                .map(Entry::from)
                .collect();
            merged.append(list);
            *list = merged;
        });
    }

    /// The status line: the connection state, with the countdown while reconnecting.
    pub fn conn_text(&self) -> String {
        match (self.conn.get(), self.retry_at.get()) {
            (Conn::Reconnecting, Some(at)) => {
                let secs = ((at - self.now.get()) / 1000.0).ceil().max(0.0);
                format!("reconnecting in {secs} s")
            }
            (c, _) => c.label().to_owned(),
        }
    }

    /// The user's messages not yet acknowledged, to send (again) once connected.
    pub fn pending(&self) -> Vec<Entry> {
        self.messages
            .get_untracked()
            .into_iter()
            .filter(|e| e.status == Status::Pending)
            .collect()
    }
}

/// `HH:MM`, in UTC on the server and in the browser's zone once hydrated.
fn clock(ts: i64, local: bool) -> String {
    #[cfg(feature = "hydrate")]
    if local {
        let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts as f64));
        return format!("{:02}:{:02}", d.get_hours(), d.get_minutes());
    }
    let _ = local;
    let minutes = ts.div_euclid(60_000);
    format!(
        "{:02}:{:02}",
        minutes.div_euclid(60).rem_euclid(24),
        minutes.rem_euclid(60)
    )
}

#[component]
fn ChatView(snapshot: Snapshot) -> impl IntoView {
    let csrf = snapshot.csrf.clone();
    let st = ChatState::new(snapshot);
    let signed_in = st.me.get_value().is_some();
    let draft = RwSignal::new(String::new());
    let list_ref: NodeRef<leptos::html::Div> = NodeRef::new();

    // Browser only: effects do not run during server rendering.
    Effect::new(move |_| {
        st.hydrated.set(true);
        #[cfg(feature = "hydrate")]
        {
            if st.me.get_value().is_none() {
                if let Some(name) = crate::client::load_name() {
                    st.name.set(name);
                }
            }
            crate::client::start(st);
        }
    });

    // Keep the list at the bottom unless the user scrolled up; count what they have not seen.
    Effect::new(move |prev: Option<usize>| {
        let len = st.messages.with(Vec::len);
        if let Some(prev) = prev {
            if len > prev {
                if st.at_bottom.get_untracked() {
                    scroll_to_bottom(list_ref);
                } else {
                    st.unseen.update(|n| *n += len - prev);
                }
            }
        } else {
            scroll_to_bottom(list_ref);
        }
        len
    });

    // Only the reader's own upward scroll unpins the list: content growing under a pending
    // scroll-to-bottom must not count as "scrolled up".
    let last_top = StoredValue::new(0);
    let on_scroll = move |_| {
        if let Some(el) = list_ref.get_untracked() {
            let top = el.scroll_top();
            let bottom = el.scroll_height() - top - el.client_height() < 40;
            if bottom {
                st.at_bottom.set(true);
                st.unseen.set(0);
            } else if top < last_top.get_value() {
                st.at_bottom.set(false);
            }
            last_top.set_value(top);
        }
    };

    let submit = move || {
        let body = draft.get_untracked();
        if body.trim().is_empty() {
            return;
        }
        #[cfg(feature = "hydrate")]
        crate::client::send(st, body);
        draft.set(String::new());
        st.at_bottom.set(true);
        scroll_to_bottom(list_ref);
    };

    let toggle = move |_| {
        #[cfg(feature = "hydrate")]
        if st.want_connected.get_untracked() {
            crate::client::disconnect(st);
        } else {
            crate::client::connect(st);
        }
    };

    let retry_now = move |_| {
        #[cfg(feature = "hydrate")]
        crate::client::connect(st);
    };

    let load_older = move |_| {
        #[cfg(feature = "hydrate")]
        crate::client::load_older(st);
    };

    // Whatever this account left unsent stays with it, not with the browser.
    let log_out = move |_: leptos::ev::SubmitEvent| {
        #[cfg(feature = "hydrate")]
        crate::client::forget_outbox(st);
    };

    view! {
        <main class="chat">
            <header class="bar">
                <h1>"hubbub"</h1>
                <span class="room">"# " {st.room.get_value()}</span>
                <span class="conn" data-state=move || st.conn.get().label()>
                    {move || st.conn_text()}
                </span>
                <Show when=move || matches!(st.conn.get(), Conn::Reconnecting | Conn::Offline)>
                    <button class="retry" on:click=retry_now>"Retry now"</button>
                </Show>
                <button class="toggle" on:click=toggle disabled=move || !st.hydrated.get()>
                    {move || if st.want_connected.get() { "Disconnect" } else { "Connect" }}
                </button>
                {signed_in
                    .then(|| {
                        view! {
                            <span class="me">{st.me.get_value()}</span>
                            <a class="tokens-link" href="/tokens">"Tokens"</a>
                            <form class="logout" method="post" action="/auth/logout" on:submit=log_out>
                                <input type="hidden" name="csrf" value=csrf.clone()/>
                                <button type="submit">"Log out"</button>
                            </form>
                        }
                    })}
            </header>
            <Show when=move || st.conn.get() == Conn::SignedOut>
                <p class="error" role="alert">
                    "You were logged out. " <a href="/login">"Log in again"</a>
                </p>
            </Show>
            <div class="messages" node_ref=list_ref on:scroll=on_scroll>
                <Show when=move || st.has_older.get()>
                    <button class="older" on:click=load_older>"Load older messages"</button>
                </Show>
                <ol class="list">
                    <For
                        each=move || st.messages.get()
                        key=|e| (e.client_id.clone(), e.seq, e.status, e.error.clone())
                        children=move |e: Entry| {
                            let status = match e.status {
                                Status::Pending => "pending",
                                Status::Acked => "sent",
                                Status::Stored => "stored",
                                Status::Failed => "failed",
                            };
                            let ts = e.ts;
                            let seq = e.seq;
                            let id = e.client_id.clone();
                            let id2 = e.client_id.clone();
                            let state_text = match &e.error {
                                Some(err) => format!("failed: {err}"),
                                None => status.to_owned(),
                            };
                            let divider = move || {
                                st.divider.get().filter(|(first, _)| Some(*first) == seq).map(|(_, n)| {
                                    let text = if n == 1 {
                                        "1 new message".to_owned()
                                    } else {
                                        format!("{n} new messages")
                                    };
                                    view! { <div class="divider" role="separator">{text}</div> }
                                })
                            };
                            view! {
                                <li class="msg" data-status=status data-seq=seq.map(|s| s.to_string())>
                                    {divider}
                                    <span class="author">{e.user}</span>
                                    <time class="time">{move || clock(ts, st.hydrated.get())}</time>
                                    <Show when=move || status != "stored">
                                        <span class="state">{state_text.clone()}</span>
                                    </Show>
                                    <Show when=move || status == "failed">
                                        <button
                                            class="retry-send"
                                            on:click={
                                                let id = id.clone();
                                                move |_| {
                                                    #[cfg(feature = "hydrate")]
                                                    crate::client::retry(st, &id);
                                                    let _ = &id;
                                                }
                                            }
                                        >
                                            "Retry"
                                        </button>
                                        <button
                                            class="discard"
                                            on:click={
                                                let id = id2.clone();
                                                move |_| {
                                                    #[cfg(feature = "hydrate")]
                                                    crate::client::discard(st, &id);
                                                    let _ = &id;
                                                }
                                            }
                                        >
                                            "Discard"
                                        </button>
                                    </Show>
                                    <p class="body">{e.body}</p>
                                </li>
                            }
                        }
                    />
                </ol>
            </div>
            <Show when=move || { st.unseen.get() > 0 }>
                <button
                    class="new-marker"
                    on:click=move |_| {
                        st.at_bottom.set(true);
                        st.unseen.set(0);
                        scroll_to_bottom(list_ref);
                    }
                >
                    {move || {
                        let n = st.unseen.get();
                        if n == 1 { "1 new message ↓".to_owned() } else { format!("{n} new messages ↓") }
                    }}
                </button>
            </Show>
            <Show when=move || st.last_error.get().is_some()>
                <p class="error" role="alert">{move || st.last_error.get().unwrap_or_default()}</p>
            </Show>
            <form
                class="composer"
                class:signed-in=signed_in
                on:submit=move |ev| {
                    ev.prevent_default();
                    submit();
                }
            >
                <input
                    class="name"
                    hidden=signed_in
                    name="name"
                    placeholder="Your name"
                    maxlength="64"
                    prop:value=move || st.name.get()
                    on:input=move |ev| {
                        let name = event_target_value(&ev);
                        #[cfg(feature = "hydrate")]
                        crate::client::save_name(&name);
                        st.name.set(name);
                    }
                />
                <textarea
                    class="body"
                    name="body"
                    rows="2"
                    placeholder="Message (Enter sends, Shift+Enter for a new line)"
                    maxlength="4000"
                    prop:value=move || draft.get()
                    on:input=move |ev| draft.set(event_target_value(&ev))
                    on:keydown=move |ev| {
                        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                            ev.prevent_default();
                            submit();
                        }
                    }
                ></textarea>
                <button type="submit" class="send" disabled=move || !st.hydrated.get()>
                    "Send"
                </button>
            </form>
        </main>
    }
}

fn scroll_to_bottom(list: NodeRef<leptos::html::Div>) {
    // After the DOM has the new rows.
    request_animation_frame(move || {
        if let Some(el) = list.get_untracked() {
            el.set_scroll_top(el.scroll_height());
        }
    });
}
