//! The Leptos application: the page shell, the layout (sidebar of rooms and DMs, dialogs), and the
//! room view. The same code renders on the server and hydrates in the browser; all state lives in
//! the tab's [`Session`], and only `crate::client` (browser-only) touches the WebSocket.

use crate::nav::{room_link, Nav};
#[allow(unused_imports)] // the calls that use them are browser-only
use crate::protocol::api::{
    CreateRoom, Invite, OpenDm, RoomAnswer, RoomDetail, RoomsAnswer, UpdateRoom,
};
use crate::protocol::{EventKind, RoomKind, Visibility, DEFAULT_ROOM};
use crate::session::{Conn, Dialog, Entry, PageData, RoomState, Session, Status};
use leptos::prelude::*;

/// The HTML document around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <AutoReload options=options.clone()/>
                <link rel="stylesheet" id="leptos" href="/pkg/hubbub.css"/>
                <title>"hubbub"</title>
                <HydrationScripts options/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    // The session's data is read by the server before rendering (`server::page`) and travels
    // in the page to the browser, which hydrates from it without asking again. Only the chat's
    // pages have it: any other path is not a page of the app.
    match SharedValue::new(page_data).into_inner() {
        Some(d) => {
            let nav = Nav::new(d.requested.clone());
            provide_context(nav);
            // Whether the user was offered browser notifications in this page.
            provide_context(RwSignal::new(false));
            let session = Session::new(d);
            view! { <Workspace session nav/> }.into_any()
        }
        None => view! { <p class="notice">"Page not found."</p> }.into_any(),
    }
}

/// The page's data: on the server what the request read; in the browser it always comes from the
/// page (this runs only if it is missing there).
fn page_data() -> Option<PageData> {
    #[cfg(feature = "ssr")]
    return crate::server::page::current();
    #[cfg(not(feature = "ssr"))]
    None
}

/// The page around every room, made once (moving between rooms changes only the room view): the
/// sidebar, the room, the dialogs, the tab title and the screen readers' live region.
#[component]
fn Workspace(session: Session, nav: Nav) -> impl IntoView {
    // Browser only: effects do not run during server rendering.
    Effect::new(move |_| {
        session.hydrated.set(true);
        #[cfg(feature = "hydrate")]
        {
            if !session.signed_in() {
                if let Some(name) = crate::client::load_name() {
                    session.name.set(name);
                }
            }
            crate::client::start(session);
        }
    });
    #[cfg(feature = "hydrate")]
    keyboard(session, nav);
    // The tab title counts what is unread (the server renders the plain one).
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let title = match session.total_unread() {
            0 => "hubbub".to_owned(),
            n => format!("({n}) hubbub"),
        };
        document().set_title(&title);
    });
    view! {
        <div class="app" class:sidebar-open=move || session.sidebar_open.get()>
            <Show when=move || session.signed_in()>
                <Sidebar session nav/>
            </Show>
            // Only the room in the address re-renders the room view (not what it reads).
            {move || {
                let room = nav.room();
                untrack(move || room_view(session, room))
            }}
            <Dialogs session nav/>
            <div class="sr-only" aria-live="polite" aria-atomic="true">
                {move || session.announce.get()}
            </div>
        </div>
    }
}

/// Ctrl/Cmd+K opens the quick switcher, Alt+Up/Down moves to the previous/next room, Esc closes
/// a dialog.
#[cfg(feature = "hydrate")]
fn keyboard(session: Session, nav: Nav) {
    use wasm_bindgen::JsCast;
    let handler = wasm_bindgen::closure::Closure::<dyn FnMut(web_sys::KeyboardEvent)>::new(
        move |ev: web_sys::KeyboardEvent| {
            let key = ev.key();
            if (ev.ctrl_key() || ev.meta_key()) && key.eq_ignore_ascii_case("k") {
                ev.prevent_default();
                session.dialog.set(Some(Dialog::Switcher));
            } else if key == "Escape" && session.dialog.get_untracked().is_some() {
                session.dialog.set(None);
            } else if ev.alt_key() && (key == "ArrowUp" || key == "ArrowDown") {
                ev.prevent_default();
                let order: Vec<String> = session
                    .sidebar(RoomKind::Room)
                    .into_iter()
                    .chain(session.sidebar(RoomKind::Dm))
                    .map(|r| r.name)
                    .collect();
                let current = session.current.get_untracked();
                let at = order.iter().position(|r| *r == current).unwrap_or(0);
                let next = if key == "ArrowUp" {
                    at.checked_sub(1).unwrap_or(order.len().saturating_sub(1))
                } else {
                    (at + 1) % order.len().max(1)
                };
                if let Some(room) = order.get(next) {
                    nav.go(room);
                }
            }
        },
    );
    if let Some(w) = web_sys::window() {
        let _ = w.add_event_listener_with_callback("keydown", handler.as_ref().unchecked_ref());
    }
    handler.forget();
}

#[component]
fn Sidebar(session: Session, nav: Nav) -> impl IntoView {
    let item = move |r: crate::protocol::RoomInfo| {
        let name = r.name.clone();
        let private = r.kind == RoomKind::Room && r.visibility == Visibility::Private;
        let label = match r.kind {
            RoomKind::Room if private => r.title.clone(),
            RoomKind::Room => format!("# {}", r.title),
            RoomKind::Dm => dm_title(session, &r.title),
        };
        let unread = r.unread;
        let mentions = r.mentions;
        // A conversation shows how present the others in it are.
        let others = match r.kind {
            RoomKind::Dm => {
                let me = session.username.get_value();
                let others: Vec<String> = r
                    .people
                    .iter()
                    .filter(|p| Some(*p) != me.as_ref())
                    .cloned()
                    .collect();
                (!others.is_empty()).then_some(others)
            }
            RoomKind::Room => None,
        };
        let current = {
            let name = name.clone();
            move || session.current.get() == name
        };
        let current2 = current.clone();
        let inside = view! {
            {others.map(|people| presence_dot(session, people))}
            <span class="room-name">{private.then(lock_icon)} {label}</span>
            {(mentions > 0)
                .then(|| {
                    view! {
                        <span class="badge mention" aria-label=format!("{mentions} mentioning you")>
                            "@" {mentions}
                        </span>
                    }
                })}
            {(unread > 0)
                .then(|| {
                    view! {
                        <span class="badge" aria-label=format!("{unread} unread")>
                            {unread}
                        </span>
                    }
                })}
        };
        let close = move || session.sidebar_open.set(false);
        view! {
            <li class="room-item" class:unread={unread > 0} class:current=current2>
                {room_link(nav, name.clone(), "", current, close, inside)}
            </li>
        }
    };
    view! {
        <nav class="sidebar" aria-label="Rooms and direct messages">
            <div class="sidebar-head">
                <span class="brand">"hubbub"</span>
                <button
                    class="icon"
                    title="Quick switcher (Ctrl+K)"
                    aria-label="Quick switcher"
                    on:click=click(move |_| session.dialog.set(Some(Dialog::Switcher)))
                >
                    "⌕"
                </button>
            </div>
            <button class="search-open" on:click=click(move |_| session.dialog.set(Some(Dialog::Search)))>
                "Search messages"
            </button>
            <div class="section">
                <h2>"Rooms"</h2>
                <button
                    class="icon add-room"
                    title="Create a room"
                    aria-label="Create a room"
                    on:click=click(move |_| session.dialog.set(Some(Dialog::CreateRoom)))
                >
                    "+"
                </button>
            </div>
            <ul class="rooms">{move || session.sidebar(RoomKind::Room).into_iter().map(item).collect_view()}</ul>
            <button class="link browse" on:click=click(move |_| session.dialog.set(Some(Dialog::BrowseRooms)))>
                "Browse rooms"
            </button>
            <div class="section">
                <h2>"Direct messages"</h2>
                <button
                    class="icon new-dm"
                    title="New message"
                    aria-label="New message"
                    on:click=click(move |_| session.dialog.set(Some(Dialog::NewMessage)))
                >
                    "+"
                </button>
            </div>
            <ul class="rooms dms">{move || session.sidebar(RoomKind::Dm).into_iter().map(item).collect_view()}</ul>
        </nav>
    }
}

/// A dot that shows how present someone is, with "last seen…" on hover.
fn presence_dot(session: Session, people: Vec<String>) -> impl IntoView {
    // One person: how present they are (or when last seen); several: the most present of them,
    // and how many are active and idle. One set of closures for both keeps the client small.
    let info = Memo::new(move |_| {
        session.presence.with(|p| {
            let (mut active, mut idle, mut last) = (0u32, 0u32, 0i64);
            for who in &people {
                if let Some(x) = p.get(who) {
                    match x.status {
                        crate::protocol::Status::Active => active += 1,
                        crate::protocol::Status::Idle => idle += 1,
                        crate::protocol::Status::Offline => {}
                    }
                    last = last.max(x.last_active);
                }
            }
            (active, idle, last, people.len() > 1)
        })
    });
    let label = move || match info.get() {
        (a, 0, _, true) if a > 0 => format!("{a} active"),
        (0, i, _, true) if i > 0 => format!("{i} idle"),
        (a, i, _, true) if a + i > 0 => format!("{a} active, {i} idle"),
        (_, _, _, true) => "everyone away".to_owned(),
        (a, _, _, false) if a > 0 => "active".to_owned(),
        (_, i, _, false) if i > 0 => "idle".to_owned(),
        (_, _, last, false) => last_seen(last, session.now.get()),
    };
    let state = move || match info.get() {
        (a, _, _, _) if a > 0 => "active",
        (_, i, _, _) if i > 0 => "idle",
        _ => "offline",
    };
    view! { <span class="dot" data-status=state title=label role="img" aria-label=label></span> }
}

/// "last seen 5 min ago", from a time in ms and the clock.
fn last_seen(at: i64, now: f64) -> String {
    if at <= 0 || now <= 0.0 {
        return "offline".to_owned();
    }
    let mins = ((now - at as f64) / 60_000.0).max(0.0) as u64;
    match mins {
        0 => "last seen just now".to_owned(),
        1..=59 => format!("last seen {mins} min ago"),
        60..=1_439 => format!("last seen {} h ago", mins / 60),
        _ => format!("last seen {} days ago", mins / 1_440),
    }
}

/// A DM's title as the reader sees it: the other people's names.
fn dm_title(session: Session, title: &str) -> String {
    let me = session.me.get_value().unwrap_or_default();
    let others: Vec<&str> = title.split(", ").filter(|n| *n != me).collect();
    if others.is_empty() {
        title.to_owned()
    } else {
        others.join(", ")
    }
}

/// The padlock shown before a private room's name.
fn lock_icon() -> impl IntoView {
    view! {
        <svg class="lock" viewBox="0 0 16 16" width="12" height="12" role="img" aria-label="private">
            <path
                fill="currentColor"
                d="M4 7V5a4 4 0 1 1 8 0v2h1v8H3V7h1zm2 0h4V5a2 2 0 1 0-4 0v2z"
            ></path>
        </svg>
    }
}

/// The room on screen: opened in the session (its state made and loaded once, kept when the
/// reader moves on).
fn room_view(session: Session, name: String) -> impl IntoView {
    session.current.set(name.clone());
    session.last_error.set(None);
    #[cfg(feature = "hydrate")]
    let st = crate::client::open_room(session, &name);
    #[cfg(not(feature = "hydrate"))]
    let st = session.state(&name);
    view! { <ChatView session st/> }
}

/// Times render in UTC on the server and in the browser's zone once hydrated; both as HH:MM.
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

/// The one line a change to the room shows as.
fn event_text(e: &Entry) -> String {
    let who = &e.user;
    let member = e.member.as_deref().unwrap_or("someone");
    match e.kind {
        EventKind::RoomCreated => format!("{who} created the room"),
        EventKind::MemberJoined => format!("{who} joined"),
        EventKind::MemberLeft => format!("{who} left"),
        EventKind::MemberInvited => format!("{who} added @{member}"),
        EventKind::MemberRemoved => format!("{who} removed @{member}"),
        EventKind::RoomRenamed => format!("{who} renamed the room to {}", e.body),
        EventKind::TopicChanged if e.body.is_empty() => format!("{who} cleared the topic"),
        EventKind::TopicChanged => format!("{who} set the topic: {}", e.body),
        EventKind::RoomArchived => format!("{who} archived the room"),
        // Changes to a message show on the message, not as lines of their own.
        EventKind::MessageEdited
        | EventKind::MessageDeleted
        | EventKind::ReactionAdded
        | EventKind::ReactionRemoved
        | EventKind::Message
        | EventKind::Other => String::new(),
    }
}

#[component]
fn ChatView(session: Session, st: RoomState) -> impl IntoView {
    let signed_in = session.signed_in();
    let csrf = session.csrf.get_value();
    let list_ref: NodeRef<leptos::html::Div> = NodeRef::new();
    let room = st.name();
    let members_open = RwSignal::new(false);

    // Keep the list at the bottom unless the user scrolled up; count what they have not seen.
    // On opening: back where the reader left it, or at the "new messages" divider.
    Effect::new(move |prev: Option<usize>| {
        let len = st.messages.with(Vec::len);
        match prev {
            Some(prev) if len > prev => {
                if st.at_bottom.get_untracked() {
                    scroll_to_bottom(list_ref);
                } else {
                    st.unseen.update(|n| *n += len - prev);
                }
            }
            Some(_) => {}
            None => restore_scroll(st, list_ref),
        }
        len
    });

    // Opening a room the reader sees to its end reads it (after the scroll above is settled).
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| request_animation_frame(move || crate::client::seen(session)));

    // Only the reader's own upward scroll unpins the list: content growing under a pending
    // scroll-to-bottom must not count as "scrolled up".
    let last_top = StoredValue::new(0);
    let on_scroll = move |_| {
        if let Some(el) = list_ref.get_untracked() {
            let top = el.scroll_top();
            let bottom = el.scroll_height() - top - el.client_height() < 40;
            st.scroll.set_value(if bottom { None } else { Some(top) });
            if bottom {
                st.at_bottom.set(true);
                st.unseen.set(0);
                #[cfg(feature = "hydrate")]
                crate::client::seen(session);
            } else if top < last_top.get_value() {
                st.at_bottom.set(false);
            }
            last_top.set_value(top);
        }
    };

    let submit = move || {
        let body = st.draft.get_untracked();
        if body.trim().is_empty() {
            return;
        }
        if let Some(target) = st.editing.get_untracked() {
            #[cfg(feature = "hydrate")]
            crate::client::edit(session, st, target, body);
            let _ = target;
            st.editing.set(None);
            st.draft.set(String::new());
            return;
        }
        #[cfg(feature = "hydrate")]
        crate::client::send(session, st, body);
        st.draft.set(String::new());
        st.at_bottom.set(true);
        scroll_to_bottom(list_ref);
    };
    // The `@name` being typed where the caret is (where its `@` is, and what is typed up to
    // the caret), the people it may name, and which of them is picked.
    let mention = RwSignal::new(None::<u64>);
    let typed = RwSignal::new(String::new());
    let pick = RwSignal::new(0usize);
    let candidates = move || -> Vec<crate::protocol::MemberInfo> {
        // None once the text no longer reaches the `@` (the message went, or was cut).
        let Some(at) = mention.get() else {
            return Vec::new();
        };
        if st.draft.with(|d| d.len() as u64 <= at) {
            return Vec::new();
        }
        // ASCII case only: Unicode's case tables would cost the client 15 KB.
        let typed = typed.get().to_ascii_lowercase();
        let me = session.username.get_value();
        st.people.with(|people| {
            people
                .iter()
                .filter(|p| Some(&p.username) != me.as_ref())
                .filter(|p| {
                    p.username.starts_with(&typed)
                        || p.display_name.to_ascii_lowercase().contains(&typed)
                })
                .take(6)
                .cloned()
                .collect()
        })
    };
    // The name picked in place of what was typed of it, and a space after it.
    let complete = move |username: String| {
        let Some(at) = mention.get_untracked() else {
            return;
        };
        st.draft.update(|d| {
            d.truncate(at as usize);
            d.push('@');
            d.push_str(&username);
            d.push(' ');
        });
        mention.set(None);
    };
    // Esc leaves a reply or an edit; Up in an empty composer edits the user's last message.
    // While names are offered, Up and Down choose, Enter or Tab takes one, Esc closes them.
    let composer_keys = move |ev: leptos::ev::KeyboardEvent| {
        let key = ev.key();
        let offered = candidates();
        if !offered.is_empty() {
            let n = offered.len();
            match key.as_str() {
                "ArrowDown" => {
                    ev.prevent_default();
                    pick.update(|p| *p = (*p + 1) % n);
                    return;
                }
                "ArrowUp" => {
                    ev.prevent_default();
                    pick.update(|p| *p = (*p + n - 1) % n);
                    return;
                }
                "Enter" | "Tab" if !ev.shift_key() => {
                    ev.prevent_default();
                    let chosen = offered[pick.get_untracked().min(n - 1)].username.clone();
                    complete(chosen);
                    return;
                }
                "Escape" => {
                    ev.prevent_default();
                    mention.set(None);
                    return;
                }
                _ => {}
            }
        }
        if key == "Enter" && !ev.shift_key() && !ev.is_composing() {
            ev.prevent_default();
            submit();
        } else if key == "Escape"
            && (st.editing.get_untracked().is_some() || st.replying.get_untracked().is_some())
        {
            ev.prevent_default();
            if st.editing.get_untracked().is_some() {
                st.draft.set(String::new());
            }
            st.editing.set(None);
            st.replying.set(None);
        } else if key == "ArrowUp" && st.draft.get_untracked().is_empty() {
            let me = session.username.get_value();
            let last = st.messages.with_untracked(|l| {
                l.iter()
                    .rev()
                    .find(|e| {
                        e.seq.is_some()
                            && !e.deleted
                            && e.kind == EventKind::Message
                            && e.username.is_some()
                            && e.username == me
                    })
                    .map(|e| (e.seq.unwrap_or_default(), e.ts, e.body.clone()))
            });
            if let Some((target, ts, body)) = last {
                ev.prevent_default();
                start_edit(session, st, target, ts, body);
            }
        }
    };
    let composing = move || {
        if st.editing.get().is_some() {
            return Some(("Editing your message".to_owned(), String::new()));
        }
        st.replying.get().map(|(_, q)| {
            (
                format!("Replying to {}", q.user),
                crate::markup::plain(&q.body),
            )
        })
    };
    let typing_line = move || {
        let names: Vec<String> = st
            .typing
            .with(|t| t.iter().map(|x| x.user.clone()).collect());
        match names.as_slice() {
            [] => String::new(),
            [one] => format!("{one} is typing…"),
            [a, b] => format!("{a} and {b} are typing…"),
            _ => "Several people are typing…".to_owned(),
        }
    };
    // A message to bring into view (a reply's original, a search result), once the room's
    // history is in.
    Effect::new(move |_| {
        if let Some(seq) = st.focus.get().filter(|_| st.loaded.get()) {
            #[cfg(feature = "hydrate")]
            crate::client::reveal(session, st, seq);
            let _ = seq;
        }
    });

    let toggle = move |_| {
        #[cfg(feature = "hydrate")]
        if session.want_connected.get_untracked() {
            crate::client::disconnect(session);
        } else {
            crate::client::connect(session);
        }
    };
    let retry_now = move |_| {
        #[cfg(feature = "hydrate")]
        crate::client::connect(session);
    };
    let load_older = move |_| {
        #[cfg(feature = "hydrate")]
        crate::client::load_older(session, st);
    };
    // Whatever this account left unsent stays with it, not with the browser.
    let log_out = move |_: leptos::ev::SubmitEvent| {
        #[cfg(feature = "hydrate")]
        crate::client::forget_outbox(session);
    };

    let info = {
        let room = room.clone();
        move || session.info(&room)
    };
    let heading = {
        let info = info.clone();
        let room = room.clone();
        move || match info() {
            Some(i) if i.kind == RoomKind::Dm => dm_title(session, &i.title).into_any(),
            Some(i) if i.visibility == Visibility::Private => {
                view! { {lock_icon()} " " {i.title} }.into_any()
            }
            Some(i) => format!("# {}", i.title).into_any(),
            None => format!("# {room}").into_any(),
        }
    };
    let topic = {
        let info = info.clone();
        move || info().map(|i| i.topic).unwrap_or_default()
    };
    let member_count = {
        let info = info.clone();
        move || {
            info().map(|i| match i.members {
                1 => "1 member".to_owned(),
                n => format!("{n} members"),
            })
        }
    };

    view! {
        <main class="chat" aria-label="Conversation"
            on:dragover=move |ev: leptos::ev::DragEvent| ev.prevent_default()
            on:drop=move |ev: leptos::ev::DragEvent| {
                ev.prevent_default();
                #[cfg(feature = "hydrate")]
                if signed_in {
                    if let Some(files) = ev.data_transfer().and_then(|d| d.files()) {
                        upload_all(session, st, files);
                    }
                }
            }>
            <header class="bar">
                <button
                    class="icon menu"
                    aria-label="Room list"
                    on:click=click(move |_| session.sidebar_open.update(|o| *o = !*o))
                    hidden=!signed_in
                >
                    "☰"
                </button>
                <div class="room-head">
                    <h1 class="room">{heading}</h1>
                    <Show when={let topic = topic.clone(); move || !topic().is_empty()}>
                        <span class="topic">{topic.clone()}</span>
                    </Show>
                </div>
                <Show when={
                    let c = member_count.clone();
                    move || c().is_some()
                }>
                    <button
                        class="members-toggle"
                        aria-expanded=move || members_open.get().to_string()
                        on:click=click(move |_| members_open.update(|o| *o = !*o))
                    >
                        {
                            let c = member_count.clone();
                            move || c().unwrap_or_default()
                        }
                    </button>
                </Show>
                <span class="conn" data-state=move || session.conn.get().label()>
                    {move || session.conn_text()}
                </span>
                {move || matches!(session.conn.get(), Conn::Reconnecting | Conn::Offline)
                    .then(|| view! { <button class="retry" on:click=click(retry_now)>"Retry now"</button> })}
                <button class="toggle" on:click=click(toggle) disabled=move || !session.hydrated.get()>
                    {move || if session.want_connected.get() { "Disconnect" } else { "Connect" }}
                </button>
                {signed_in
                    .then(|| {
                        view! {
                            <span class="me">{session.me.get_value()}</span>
                            {move || notify_offer(session)}
                            <a class="tokens-link" href="/tokens">"Tokens"</a>
                            <form class="logout" method="post" action="/auth/logout" on:submit=submitted(log_out)>
                                <input type="hidden" name="csrf" value=csrf.clone()/>
                                <button type="submit">"Log out"</button>
                            </form>
                        }
                    })}
            </header>
            {move || (session.conn.get() == Conn::SignedOut).then(|| view! {
                <p class="error" role="alert">
                    "You were logged out. " <a href="/login">"Log in again"</a>
                </p>
            })}
            <div class="body-row">
                <div class="messages" node_ref=list_ref on:scroll=on_scroll tabindex="0" aria-label="Messages">
                    {move || st.missing.get().then(|| view! { <p class="notice">"There is no such room."</p> })}
                    {move || st.has_older.get().then(|| view! {
                        <button class="older" on:click=click(load_older)>"Load older messages"</button>
                    })}
                    <ol class="list">
                        <For
                            each=move || st.messages.get()
                            key=|e| (e.client_id.clone(), e.seq, e.status, e.error.clone(), e.rev)
                            children=move |e: Entry| entry_view(session, st, e)
                        />
                    </ol>
                </div>
                <Show when=move || members_open.get()>
                    <MembersPanel session room=room.clone()/>
                </Show>
            </div>
            <Show when=move || { st.unseen.get() > 0 }>
                <button
                    class="new-marker"
                    on:click=click(move |_| {
                        st.at_bottom.set(true);
                        st.unseen.set(0);
                        scroll_to_bottom(list_ref);
                    })
                >
                    {move || {
                        let n = st.unseen.get();
                        if n == 1 { "1 new message ↓".to_owned() } else { format!("{n} new messages ↓") }
                    }}
                </button>
            </Show>
            {move || session.last_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <ul class="uploads" aria-live="polite">
                {move || st.uploads.get().into_iter().map(|u| {
                    let key = u.key;
                    let percent = if u.total > 0.0 { (u.sent / u.total * 100.0) as u32 } else { 0 };
                    let is_failed = u.error.is_some();
                    view! {
                        <li class:failed=is_failed>
                            <span class="name">{u.name}</span>
                            {u.error.map(|why| view! { <span class="why" role="alert">{why}</span> })}
                            {(!is_failed).then(|| view! { <progress max="100" value=percent.to_string()></progress> })}
                            {is_failed.then(|| view! {
                                <button class="link" on:click=click(move |_| st.uploads.update(|l| l.retain(|x| x.key != key)))>"Dismiss"</button>
                            })}
                        </li>
                    }
                }).collect_view()}
            </ul>
            <p class="typing" aria-hidden="true">{typing_line}</p>
            <Show when=move || composing().is_some()>
                <div class="composing">
                    <span class="what">{move || composing().map(|c| c.0)}</span>
                    <span class="quoted">{move || composing().map(|c| c.1)}</span>
                    <button class="link" aria-label="Cancel" on:click=click(move |_| {
                        if st.editing.get_untracked().is_some() {
                            st.draft.set(String::new());
                        }
                        st.editing.set(None);
                        st.replying.set(None);
                    })>"Cancel"</button>
                </div>
            </Show>
            // The names offered for an `@name` being typed (empty, and not shown, otherwise).
            <ul class="mention-pick" role="listbox" id="mention-pick" aria-label="People to mention">
                {move || candidates().into_iter().enumerate().map(|(i, p)| {
                    let chosen = i == pick.get();
                    let username = p.username.clone();
                    view! {
                        <li
                            role="option"
                            id=format!("mention-{i}")
                            aria-selected=chosen.to_string()
                            class:current=chosen
                            on:click=click(move |_| {
                                complete(username.clone());
                                focus_composer();
                            })
                        >
                            <span class="author">{p.display_name}</span>
                            " "
                            <span class="handle">"@"{p.username}</span>
                        </li>
                    }
                }).collect_view()}
            </ul>
            <form
                class="composer"
                class:signed-in=signed_in
                on:submit=submitted(move |ev| {
                    ev.prevent_default();
                    submit();
                })
            >
                <input
                    class="name"
                    hidden=signed_in
                    name="name"
                    aria-label="Your name"
                    placeholder="Your name"
                    maxlength="64"
                    prop:value=move || session.name.get()
                    on:input=move |ev| {
                        let name = event_target_value(&ev);
                        #[cfg(feature = "hydrate")]
                        crate::client::save_name(&name);
                        session.name.set(name);
                    }
                />
                <textarea
                    class="body"
                    name="body"
                    rows="2"
                    aria-label="Message"
                    placeholder="Message (Enter sends, Shift+Enter for a new line)"
                    maxlength="4000"
                    aria-autocomplete="list"
                    aria-controls="mention-pick"
                    prop:value=move || st.draft.get()
                    on:input=move |ev| {
                        let text = event_target_value(&ev);
                        #[cfg(feature = "hydrate")]
                        if st.editing.get_untracked().is_none() {
                            crate::client::typed(session, st, &text);
                        }
                        #[cfg(feature = "hydrate")]
                        {
                            // Names are offered for an `@name` at the end of the text, where
                            // one is typed.
                            match crate::markup::mention_at_end(&text) {
                                Some((at, name)) => {
                                    if !st.people_asked.get_untracked() {
                                        crate::client::load_people(st);
                                    }
                                    if typed.with_untracked(|t| t != name) {
                                        pick.set(0);
                                        typed.set(name.to_owned());
                                    }
                                    mention.set(Some(at as u64));
                                }
                                None => mention.set(None),
                            }
                        }
                        st.draft.set(text);
                    }
                    on:keydown=composer_keys
                    on:paste=move |ev: leptos::ev::ClipboardEvent| {
                        #[cfg(feature = "hydrate")]
                        if let Some(files) = ev.clipboard_data().and_then(|d| d.files()) {
                            if files.length() > 0 {
                                ev.prevent_default();
                                upload_all(session, st, files);
                            }
                        }
                        let _ = ev;
                    }
                ></textarea>
                <label class="attach" title="Attach a file" hidden=!signed_in>
                    <input type="file" class="sr-only" aria-label="Attach a file" multiple
                        on:change=move |ev| {
                            #[cfg(feature = "hydrate")]
                            {
                                use wasm_bindgen::JsCast;
                                if let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) {
                                    if let Some(files) = input.files() {
                                        upload_all(session, st, files);
                                    }
                                    input.set_value("");
                                }
                            }
                            let _ = ev;
                        }/>
                </label>
                <button type="submit" class="send" disabled=move || !session.hydrated.get()>
                    {move || if st.editing.get().is_some() { "Save" } else { "Send" }}
                </button>
            </form>
        </main>
    }
}

/// One row of the list: a message (with its delivery state and the author's handle) or a change
/// to the room; the "new messages" divider goes above the first one after the read position.
fn entry_view(session: Session, st: RoomState, e: Entry) -> AnyView {
    let seq = e.seq;
    let divider = move || {
        let at = st.divider.get()?;
        let first = st
            .messages
            .with(|l| l.iter().filter_map(|x| x.seq).find(|s| *s > at))?;
        (Some(first) == seq).then(|| {
            let n = st.messages.with(|l| {
                l.iter()
                    .filter(|x| x.kind == EventKind::Message && x.seq.is_some_and(|s| s > at))
                    .count()
            });
            let text = match n {
                1 => "1 new message".to_owned(),
                n => format!("{n} new messages"),
            };
            view! { <div class="divider" role="separator">{text}</div> }
        })
    };
    let ts = e.ts;
    if e.kind != EventKind::Message {
        return view! {
            <li class="event" data-seq=seq.map(|s| s.to_string())>
                {divider}
                <span class="what">{event_text(&e)}</span>
                <time class="time">{move || clock(ts, session.hydrated.get())}</time>
            </li>
        }
        .into_any();
    }
    let status = match e.status {
        Status::Pending => "pending",
        Status::Acked => "sent",
        Status::Stored => "stored",
        Status::Failed => "failed",
    };
    let handle = match (&e.username, e.guest) {
        (Some(u), _) => Some(format!("@{u}")),
        (None, true) => Some("guest".to_owned()),
        (None, false) => None,
    };
    let state_text = match &e.error {
        Some(err) => format!("failed: {err}"),
        None => status.to_owned(),
    };
    let me = session.username.get_value();
    let mine = e.username.is_some() && e.username == me;
    let mentioned = session
        .me_id
        .get_value()
        .is_some_and(|id| e.mentions.contains(&id));
    let stored = seq.is_some() && !e.deleted && session.signed_in();
    let quote = e.reply.clone().zip(e.reply_to).map(|(q, to)| {
        // One line of the original as plain text: its format would be noise in a quote.
        let text = if q.deleted {
            "the original message was deleted".to_owned()
        } else {
            crate::markup::plain(&q.body)
        };
        view! {
            <button
                class="quote"
                title="Show the message this answers"
                on:click=click(move |_| st.focus.set(Some(to)))
            >
                <span class="who">{q.user.clone()}</span>
                " "
                {text}
            </button>
        }
    });
    let failed = (status == "failed").then(|| {
        let (id, id2) = (e.client_id.clone(), e.client_id.clone());
        view! {
            <button class="retry-send" on:click=click(move |_| {
                #[cfg(feature = "hydrate")]
                crate::client::retry(session, st, &id);
                let _ = &id;
            })>"Retry"</button>
            <button class="discard" on:click=click(move |_| {
                #[cfg(feature = "hydrate")]
                crate::client::discard(session, st, &id2);
                let _ = &id2;
            })>"Discard"</button>
        }
    });
    let picking = RwSignal::new(false);
    let actions = stored.then(|| {
        let target = seq.unwrap_or_default();
        let (body, quote_of) = (e.body.clone(), e.clone());
        let ts = e.ts;
        view! {
            <span class="actions">
                <button title="Reply" aria-label="Reply" on:click=click(move |_| {
                    st.replying.set(Some((target, crate::protocol::Quote {
                        user: quote_of.user.clone(),
                        username: quote_of.username.clone(),
                        body: crate::protocol::quote_of(&quote_of.body),
                        deleted: false,
                    })));
                    st.editing.set(None);
                    focus_composer();
                })>"↩"</button>
                <button title="React" aria-label="React" aria-expanded=move || picking.get().to_string()
                    on:click=click(move |_| picking.update(|p| *p = !*p))>"☺"</button>
                {mine.then(|| view! {
                    <button title="Edit" aria-label="Edit" on:click=click(move |_| {
                        start_edit(session, st, target, ts, body.clone());
                    })>"✎"</button>
                })}
                {(mine || session.owns(&st.name())).then(|| view! {
                    <button title="Delete" aria-label="Delete" on:click=click(move |_| {
                        #[cfg(feature = "hydrate")]
                        if confirm("Delete this message? Its text is removed for everyone.") {
                            crate::client::delete(session, st, target);
                        }
                    })>"🗑"</button>
                })}
            </span>
        }
    });
    let reactions = (!e.reactions.is_empty() || stored).then(|| {
        let target = seq.unwrap_or_default();
        let me = me.clone().unwrap_or_default();
        let chips = e
            .reactions
            .iter()
            .map(|r| {
                let on = r.users.contains(&me);
                let emoji = r.emoji.clone();
                let who = if r.count as usize > r.users.len() {
                    format!(
                        "{} and {} more",
                        r.users.join(", "),
                        r.count as usize - r.users.len()
                    )
                } else {
                    r.users.join(", ")
                };
                view! {
                    <button class="chip" class:mine=on aria-pressed=on.to_string() title=who
                        on:click=click(move |_| {
                            #[cfg(feature = "hydrate")]
                            crate::client::react(session, st, target, &emoji, !on);
                            let _ = (&emoji, on, target);
                        })>
                        {r.emoji.clone()} " " {r.count}
                    </button>
                }
            })
            .collect_view();
        view! {
            <div class="reactions">
                {chips}
                <Show when=move || picking.get()>
                    <span class="picker" role="group" aria-label="Add a reaction">
                        {QUICK_EMOJI.iter().map(|emoji| view! {
                            <button on:click=click(move |_| {
                                picking.set(false);
                                #[cfg(feature = "hydrate")]
                                crate::client::react(session, st, target, emoji, true);
                                let _ = (emoji, target);
                            })>{*emoji}</button>
                        }).collect_view()}
                    </span>
                </Show>
            </div>
        }
    });
    let body = if e.deleted {
        view! { <p class="body tombstone">"message deleted"</p> }.into_any()
    } else {
        view! { <div class="body">{rich_text(&e.body, me.as_deref())}</div> }.into_any()
    };
    let attachment = e.attachment.clone().map(attachment_view);
    view! {
        <li class="msg" class:mentioned=mentioned class:deleted=e.deleted data-status=status
            data-seq=seq.map(|s| s.to_string())>
            {divider}
            {quote}
            <span class="author">{e.user}</span>
            {handle.map(|h| view! { <span class="handle">{h}</span> })}
            <time class="time">{move || clock(ts, session.hydrated.get())}</time>
            {e.edited.map(|_| view! { <span class="edited">"(edited)"</span> })}
            {(status != "stored").then(|| view! { <span class="state">{state_text}</span> })}
            {failed}
            {actions}
            {body}
            {attachment}
            {reactions}
        </li>
    }
    .into_any()
}

/// A button to let the browser notify of mentions in a hidden tab, shown until the user decides.
fn notify_offer(session: Session) -> Option<impl IntoView> {
    let asked = use_context::<RwSignal<bool>>()?;
    if !session.hydrated.get() || asked.get() {
        return None;
    }
    #[cfg(feature = "hydrate")]
    if !crate::client::may_ask_to_notify() {
        return None;
    }
    Some(view! {
        <button class="link notify" on:click=click(move |_| {
            #[cfg(feature = "hydrate")]
            crate::client::ask_to_notify();
            asked.set(true);
        })>"Notify me of mentions"</button>
    })
}

/// Runs the search in the box a moment after the typing stops (the last one typed wins).
#[cfg(feature = "hydrate")]
fn search_soon(
    query: RwSignal<String>,
    hits: RwSignal<(Vec<crate::protocol::api::SearchHit>, Option<i64>)>,
    error: RwSignal<Option<String>>,
) {
    let asked = query.get_untracked();
    set_timeout(
        move || {
            if query.get_untracked() != asked {
                return;
            }
            if asked.trim().is_empty() {
                hits.set((Vec::new(), None));
                return;
            }
            leptos::task::spawn_local(async move {
                let url = format!("/api/search?q={}", crate::client::encode(&asked));
                match crate::client::api::<crate::protocol::api::SearchAnswer>("GET", &url, None)
                    .await
                {
                    Ok(a) if query.get_untracked() == asked => {
                        error.set(None);
                        hits.set((a.hits, a.next));
                    }
                    Ok(_) => {}
                    Err(e) => error.set(Some(e)),
                }
            });
        },
        std::time::Duration::from_millis(250),
    );
}

/// The next page of the search's results.
#[cfg(feature = "hydrate")]
fn search_more(
    query: RwSignal<String>,
    hits: RwSignal<(Vec<crate::protocol::api::SearchHit>, Option<i64>)>,
    error: RwSignal<Option<String>>,
) {
    let Some(before) = hits.get_untracked().1 else {
        return;
    };
    let asked = query.get_untracked();
    leptos::task::spawn_local(async move {
        let url = format!(
            "/api/search?q={}&before={before}",
            crate::client::encode(&asked)
        );
        match crate::client::api::<crate::protocol::api::SearchAnswer>("GET", &url, None).await {
            Ok(a) => hits.update(|(h, next)| {
                h.extend(a.hits);
                *next = a.next;
            }),
            Err(e) => error.set(Some(e)),
        }
    });
}

/// Uploads each of the files to the room.
#[cfg(feature = "hydrate")]
fn upload_all(session: Session, st: RoomState, files: web_sys::FileList) {
    for i in 0..files.length() {
        if let Some(f) = files.get(i) {
            crate::client::upload(session, st, f);
        }
    }
}

/// Every click handler of the page has this one type: each closure type would otherwise bring
/// its own copy of the event-handling code into the client (a measurable part of its size).
type OnClick = Box<dyn FnMut(leptos::ev::MouseEvent)>;

fn click(f: impl FnMut(leptos::ev::MouseEvent) + 'static) -> OnClick {
    Box::new(f)
}

/// An input that types into `text`: one handler type for all of them.
fn field(text: RwSignal<String>) -> Box<dyn FnMut(leptos::ev::Event)> {
    Box::new(move |ev| text.set(event_target_value(&ev)))
}

/// The same for form submissions.
type OnSubmit = Box<dyn FnMut(leptos::ev::SubmitEvent)>;

fn submitted(f: impl FnMut(leptos::ev::SubmitEvent) + 'static) -> OnSubmit {
    Box::new(f)
}

/// The reactions offered in one click.
const QUICK_EMOJI: [&str; 8] = ["👍", "❤️", "😂", "🎉", "😮", "😢", "👀", "✅"];

/// Asks the user to confirm something that cannot be undone.
#[cfg(feature = "hydrate")]
fn confirm(question: &str) -> bool {
    window().confirm_with_message(question).unwrap_or(false)
}

/// Puts the cursor in the composer.
fn focus_composer() {
    #[cfg(feature = "hydrate")]
    if let Some(el) = document().query_selector("textarea.body").ok().flatten() {
        use wasm_bindgen::JsCast;
        if let Some(el) = el.dyn_ref::<web_sys::HtmlElement>() {
            let _ = el.focus();
        }
    }
}

/// Puts one of the user's messages in the composer to be edited, if its edit window is open.
fn start_edit(session: Session, st: RoomState, target: u64, ts: i64, body: String) {
    let window = session.settings.with_value(|s| s.edit_window_ms) as f64;
    let age = session.now.get_untracked() - ts as f64;
    if window > 0.0 && age > window {
        session.last_error.set(Some(format!(
            "A message can be edited only in the {} minutes after it was sent.",
            (window / 60_000.0) as u64
        )));
        return;
    }
    st.replying.set(None);
    st.editing.set(Some(target));
    st.draft.set(body);
    focus_composer();
}

/// A message's text as the format renders it: elements, never an HTML string.
fn rich_text(body: &str, me: Option<&str>) -> impl IntoView {
    use crate::markup::Block;
    let me = me.map(str::to_owned);
    crate::markup::parse(body)
        .into_iter()
        .map(|b| match b {
            Block::Paragraph(s) => view! { <p>{spans(s, &me)}</p> }.into_any(),
            Block::Code(code) => view! { <pre><code>{code}</code></pre> }.into_any(),
            Block::Quote(s) => view! { <blockquote>{spans(s, &me)}</blockquote> }.into_any(),
            Block::List { ordered, items } => {
                let items = items
                    .into_iter()
                    .map(|s| view! { <li>{spans(s, &me)}</li> })
                    .collect_view();
                if ordered {
                    view! { <ol>{items}</ol> }.into_any()
                } else {
                    view! { <ul>{items}</ul> }.into_any()
                }
            }
        })
        .collect_view()
}

fn spans(list: Vec<crate::markup::Span>, me: &Option<String>) -> impl IntoView {
    use crate::markup::SpanKind;
    list.into_iter()
        .map(|s| {
            // Styles as classes on the one element a span is: far less code in the client than
            // an element per style, for the same look.
            let class = match (s.bold, s.italic, s.strike) {
                (false, false, false) => "",
                (true, false, false) => "b",
                (false, true, false) => "i",
                (false, false, true) => "s",
                (true, true, false) => "b i",
                (true, false, true) => "b s",
                (false, true, true) => "i s",
                (true, true, true) => "b i s",
            };
            match s.kind {
                SpanKind::Text => view! { <span class=class>{s.text}</span> }.into_any(),
                SpanKind::Code => view! { <code class=class>{s.text}</code> }.into_any(),
                SpanKind::Link => {
                    let href = s.text.clone();
                    view! {
                        <a class=class href=href target="_blank" rel="noopener noreferrer nofollow">{s.text}</a>
                    }
                    .into_any()
                }
                SpanKind::Mention(name) => {
                    let class = if me.as_deref() == Some(name.as_str()) {
                        format!("mention me {class}")
                    } else {
                        format!("mention {class}")
                    };
                    view! { <span class=class>{s.text}</span> }.into_any()
                }
            }
        })
        .collect_view()
}

/// A file on a message: an image shown at its size (so the list does not jump), anything else
/// a link that downloads it.
fn attachment_view(a: crate::protocol::Attachment) -> AnyView {
    let url = format!("/api/attachments/{}", a.id);
    if a.is_image() {
        let src = url.clone();
        view! {
            <a class="attachment image" href=url target="_blank" rel="noopener">
                <img src=src alt=a.name.clone() width=a.width.map(|w| w.to_string())
                    height=a.height.map(|h| h.to_string()) loading="lazy"/>
            </a>
        }
        .into_any()
    } else {
        view! {
            <a class="attachment file" href=url download=a.name.clone()>
                <span class="name">{a.name.clone()}</span>
                <span class="size">{human_size(a.size)}</span>
            </a>
        }
        .into_any()
    }
}

/// A size as people read it: 12 KB, 3.4 MB.
pub fn human_size(bytes: u64) -> String {
    if bytes < 1_000 {
        format!("{bytes} B")
    } else if bytes < 1_000_000 {
        format!("{} KB", bytes.div_ceil(1_000))
    } else {
        let tenths = bytes.div_ceil(100_000);
        format!("{}.{} MB", tenths / 10, tenths % 10)
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

/// On opening a room: where the reader left it, else at the "new messages" divider, else at the
/// end.
fn restore_scroll(st: RoomState, list: NodeRef<leptos::html::Div>) {
    #[cfg(feature = "hydrate")]
    request_animation_frame(move || {
        use wasm_bindgen::JsCast;
        let Some(el) = list.get_untracked() else {
            return;
        };
        if let Some(top) = st.scroll.get_value() {
            el.set_scroll_top(top);
            st.at_bottom.set(false);
            return;
        }
        if let Ok(Some(divider)) = el.query_selector(".divider") {
            if let Some(row) = divider.parent_element() {
                let row: &web_sys::Element = &row;
                let offset = row
                    .dyn_ref::<web_sys::HtmlElement>()
                    .map(|r| r.offset_top())
                    .unwrap_or_default();
                el.set_scroll_top((offset - 40).max(0));
                st.at_bottom
                    .set(el.scroll_height() - el.scroll_top() - el.client_height() < 40);
                return;
            }
        }
        el.set_scroll_top(el.scroll_height());
    });
    let _ = (st, list);
}

/// The member list of a room, with the owner's tools (rename, topic, archive, remove) and, for
/// members of a room, adding people.
#[component]
fn MembersPanel(session: Session, room: String) -> impl IntoView {
    let members = RwSignal::new(Vec::<crate::protocol::MemberInfo>::new());
    let note = RwSignal::new(None::<String>);
    let invitee = RwSignal::new(String::new());
    let reload = {
        let room = room.clone();
        move || {
            let _room = room.clone();
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let url = format!("/api/rooms/{_room}");
                match crate::client::api::<RoomDetail>("GET", &url, None).await {
                    Ok(detail) => members.set(detail.members),
                    Err(e) => note.set(Some(e)),
                }
            });
        }
    };
    let me = session.username.get_value();
    let info = {
        let room = room.clone();
        move || session.info(&room)
    };
    // Loaded on opening, and again whenever someone joins or leaves (the member count moves with
    // each membership event of the room's stream).
    Effect::new({
        let info = info.clone();
        let reload = reload.clone();
        move |_| {
            let _ = info().map(|i| i.members);
            reload();
        }
    });
    let is_owner = {
        let info = info.clone();
        let me = me.clone();
        move || info().is_some_and(|i| i.owner.is_some() && i.owner == me)
    };
    let can_invite = {
        let info = info.clone();
        move || info().is_some_and(|i| i.kind == RoomKind::Room && i.member)
    };
    let invite = {
        let room = room.clone();
        let reload = reload.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let _who = invitee.get_untracked().trim().to_owned();
            let _room = room.clone();
            let _reload = reload.clone();
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let body = Invite {
                    username: _who.clone(),
                };
                let url = format!("/api/rooms/{_room}/members");
                match crate::client::api_do("POST", &url, crate::client::json(&body)).await {
                    Ok(_) => {
                        invitee.set(String::new());
                        note.set(Some(format!("Added @{_who}.")));
                        _reload();
                    }
                    Err(e) => note.set(Some(e)),
                }
            });
        }
    };
    let leave = {
        let room = room.clone();
        move |_| {
            let _room = room.clone();
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let url = format!("/api/rooms/{_room}/leave");
                if let Err(e) = crate::client::api_do("POST", &url, None).await {
                    note.set(Some(e));
                }
            });
        }
    };
    let new_title = RwSignal::new(String::new());
    let new_topic = RwSignal::new(String::new());
    let edit = {
        let room = room.clone();
        move |field: &'static str, value: RwSignal<String>| {
            let room = room.clone();
            move |ev: leptos::ev::SubmitEvent| {
                ev.prevent_default();
                let _value = value.get_untracked();
                let _room = room.clone();
                let _ = field;
                #[cfg(feature = "hydrate")]
                leptos::task::spawn_local(async move {
                    let body = match field {
                        "title" => UpdateRoom {
                            title: Some(_value),
                            ..Default::default()
                        },
                        _ => UpdateRoom {
                            topic: Some(_value),
                            ..Default::default()
                        },
                    };
                    let url = format!("/api/rooms/{_room}");
                    match crate::client::api_do("PATCH", &url, crate::client::json(&body)).await {
                        Ok(_) => note.set(Some("Saved.".to_owned())),
                        Err(e) => note.set(Some(e)),
                    }
                });
            }
        }
    };
    let archive = {
        let room = room.clone();
        move |_| {
            let _room = room.clone();
            #[cfg(feature = "hydrate")]
            {
                let sure = web_sys::window()
                    .and_then(|w| {
                        w.confirm_with_message(
                            "Archive this room? It becomes read-only and leaves everyone's list.",
                        )
                        .ok()
                    })
                    .unwrap_or(false);
                if sure {
                    leptos::task::spawn_local(async move {
                        let body = UpdateRoom {
                            archived: Some(true),
                            ..Default::default()
                        };
                        let url = format!("/api/rooms/{_room}");
                        if let Err(e) =
                            crate::client::api_do("PATCH", &url, crate::client::json(&body)).await
                        {
                            note.set(Some(e));
                        }
                    });
                }
            }
        }
    };
    let remove = {
        let room = room.clone();
        let reload = reload.clone();
        move |who: String| {
            let _room = room.clone();
            let _reload = reload.clone();
            let _ = &who;
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let url = format!("/api/rooms/{_room}/members/{who}");
                match crate::client::api_do("DELETE", &url, None).await {
                    Ok(_) => _reload(),
                    Err(e) => note.set(Some(e)),
                }
            });
        }
    };
    // A person's name opens the direct message with them.
    let _nav = expect_context::<Nav>();
    let message_to = move |who: String| {
        let _ = &who;
        #[cfg(feature = "hydrate")]
        leptos::task::spawn_local(async move {
            let body = OpenDm {
                usernames: vec![who],
            };
            match crate::client::api::<RoomAnswer>("POST", "/api/dms", crate::client::json(&body))
                .await
            {
                Ok(RoomAnswer { room: info }) => {
                    let name = info.name.clone();
                    session.upsert_room(info);
                    _nav.go(&name);
                }
                Err(e) => note.set(Some(e)),
            }
        });
    };
    let not_general = room != DEFAULT_ROOM;
    view! {
        <aside class="members" aria-label="Members">
            <h2>"Members"</h2>
            <ul>
                {let is_owner = is_owner.clone(); move || {
                    let owner = is_owner();
                    let me = me.clone();
                    members
                        .get()
                        .into_iter()
                        .map(|m| {
                            let who = m.username.clone();
                            let remove = remove.clone();
                            let someone_else = Some(&m.username) != me.as_ref();
                            let removable = owner && someone_else;
                            let message = message_to;
                            let to = m.username.clone();
                            let dot = presence_dot(session, vec![m.username.clone()]);
                            view! {
                                <li>
                                    {dot}
                                    {if someone_else {
                                        view! {
                                            <button
                                                class="link author"
                                                title=format!("Message @{}", m.username)
                                                on:click=click(move |_| message(to.clone()))
                                            >
                                                {m.display_name.clone()}
                                            </button>
                                        }
                                            .into_any()
                                    } else {
                                        view! { <span class="author">{m.display_name.clone()}</span> }.into_any()
                                    }}
                                    <span class="handle">"@" {m.username.clone()}</span>
                                    {(m.role == "owner").then(|| view! { <span class="role">"owner"</span> })}
                                    {removable.then(|| view! {
                                        <button class="link remove" on:click=click(move |_| remove(who.clone()))>"Remove"</button>
                                    })}
                                </li>
                            }
                        })
                        .collect_view()
                }}
            </ul>
            <Show when=can_invite.clone()>
                <form class="invite" on:submit=submitted(invite.clone())>
                    <label>"Add someone" <input name="username" placeholder="username" prop:value=move || invitee.get() on:input=field(invitee)/></label>
                    <button type="submit">"Add"</button>
                </form>
            </Show>
            <Show when=is_owner.clone()>
                <form class="edit" on:submit=submitted(edit("title", new_title))>
                    <label>"Name" <input name="title" maxlength="80" prop:value=move || new_title.get() on:input=field(new_title)/></label>
                    <button type="submit">"Rename"</button>
                </form>
                <form class="edit" on:submit=submitted(edit("topic", new_topic))>
                    <label>"Topic" <input name="topic" maxlength="250" prop:value=move || new_topic.get() on:input=field(new_topic)/></label>
                    <button type="submit">"Set topic"</button>
                </form>
                <button class="danger" on:click=click(archive.clone())>"Archive room"</button>
            </Show>
            {not_general.then(|| view! { <button class="link leave" on:click=click(leave.clone())>"Leave room"</button> })}
            <p class="note" role="status">{move || note.get()}</p>
        </aside>
    }
}

/// The dialogs: create a room, browse public rooms, start a direct message, switch rooms.
#[component]
fn Dialogs(session: Session, nav: Nav) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let query = RwSignal::new(String::new());
    // Search results, and where the next page starts.
    let hits = RwSignal::new((Vec::<crate::protocol::api::SearchHit>::new(), None::<i64>));
    let public = RwSignal::new(Vec::<crate::protocol::RoomInfo>::new());
    let go = move |room: String| {
        session.dialog.set(None);
        nav.go(&room);
    };
    // Opening a dialog clears what the last one left; browsing loads the public rooms.
    Effect::new(move |_| {
        let d = session.dialog.get();
        error.set(None);
        query.set(String::new());
        if d == Some(Dialog::BrowseRooms) {
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let url = "/api/rooms?public=true";
                match crate::client::api::<RoomsAnswer>("GET", url, None).await {
                    Ok(list) => public.set(list.rooms),
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    });
    let new_name = RwSignal::new(String::new());
    let new_topic = RwSignal::new(String::new());
    let new_private = RwSignal::new(false);
    let create = {
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let _body = CreateRoom {
                name: new_name.get_untracked().trim().to_owned(),
                topic: Some(new_topic.get_untracked()),
                visibility: if new_private.get_untracked() {
                    Visibility::Private
                } else {
                    Visibility::Public
                },
                ..Default::default()
            };
            let _go = go;
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                match crate::client::api::<RoomAnswer>(
                    "POST",
                    "/api/rooms",
                    crate::client::json(&_body),
                )
                .await
                {
                    Ok(RoomAnswer { room: info }) => {
                        let name = info.name.clone();
                        session.upsert_room(info);
                        new_name.set(String::new());
                        new_topic.set(String::new());
                        new_private.set(false);
                        _go(name);
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    let dm = {
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let people: Vec<String> = query
                .get_untracked()
                .split([',', ' '])
                .map(|s| s.trim().trim_start_matches('@').to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            let _body = OpenDm { usernames: people };
            let _go = go;
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                match crate::client::api::<RoomAnswer>(
                    "POST",
                    "/api/dms",
                    crate::client::json(&_body),
                )
                .await
                {
                    Ok(RoomAnswer { room: info }) => {
                        let name = info.name.clone();
                        session.upsert_room(info);
                        _go(name);
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    let join = {
        move |room: String| {
            let _go = go;
            let _ = &room;
            #[cfg(feature = "hydrate")]
            leptos::task::spawn_local(async move {
                let url = format!("/api/rooms/{room}/join");
                match crate::client::api::<RoomAnswer>("POST", &url, None).await {
                    Ok(RoomAnswer { room: info }) => {
                        session.upsert_room(info);
                        _go(room);
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    let matches = move || {
        let q = query.get().to_ascii_lowercase();
        session
            .rooms
            .get()
            .into_iter()
            .filter(|r| {
                q.is_empty() || r.title.to_ascii_lowercase().contains(&q) || r.name.contains(&q)
            })
            .collect::<Vec<_>>()
    };
    let switch = {
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            if let Some(r) = matches().into_iter().next() {
                go(r.name);
            }
        }
    };
    let close = move |_| session.dialog.set(None);
    view! {
        <Show when=move || session.dialog.get().is_some()>
            <div class="backdrop" on:click=click(close)></div>
            <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="dialog-title">
                {
                    let create = create;
                    let dm = dm;
                    let join = join;
                    let switch = switch;
                    move || match session.dialog.get() {
                        Some(Dialog::CreateRoom) => view! {
                            <h2 id="dialog-title">"Create a room"</h2>
                            <form on:submit=submitted(create)>
                                <label>"Name" <input name="name" required maxlength="64" placeholder="design-team" autofocus prop:value=move || new_name.get() on:input=field(new_name)/></label>
                                <small>"Lower-case letters, digits, - and _. It is the room's address."</small>
                                <label>"Topic" <input name="topic" maxlength="250" prop:value=move || new_topic.get() on:input=field(new_topic)/></label>
                                <label class="check"><input type="checkbox" name="private" prop:checked=move || new_private.get() on:change=move |ev| new_private.set(event_target_checked(&ev))/> "Private: only people added by a member can see it"</label>
                                <div class="actions">
                                    <button type="button" on:click=click(close)>"Cancel"</button>
                                    <button type="submit" class="primary">"Create"</button>
                                </div>
                            </form>
                        }.into_any(),
                        Some(Dialog::BrowseRooms) => view! {
                            <h2 id="dialog-title">"Browse rooms"</h2>
                            <ul class="browse-list">
                                {move || public.get().into_iter().map(|r| {
                                    let name = r.name.clone();
                                    let member = r.member;
                                    view! {
                                        <li>
                                            <span class="room-name">"# " {r.title.clone()}</span>
                                            <span class="topic">{r.topic.clone()}</span>
                                            <span class="count">{format!("{} members", r.members)}</span>
                                            {if member {
                                                view! { <button on:click=click(move |_| go(name.clone()))>"Open"</button> }.into_any()
                                            } else {
                                                view! { <button class="primary" on:click=click(move |_| join(name.clone()))>"Join"</button> }.into_any()
                                            }}
                                        </li>
                                    }
                                }).collect_view()}
                            </ul>
                            <div class="actions"><button type="button" on:click=click(close)>"Close"</button></div>
                        }.into_any(),
                        Some(Dialog::NewMessage) => view! {
                            <h2 id="dialog-title">"New message"</h2>
                            <form on:submit=submitted(dm)>
                                <label>"To" <input name="to" placeholder="usernames, separated by commas" autofocus prop:value=move || query.get() on:input=field(query)/></label>
                                <small>"Up to 7 people besides you."</small>
                                <div class="actions">
                                    <button type="button" on:click=click(close)>"Cancel"</button>
                                    <button type="submit" class="primary">"Open"</button>
                                </div>
                            </form>
                        }.into_any(),
                        Some(Dialog::Search) => view! {
                            <h2 id="dialog-title">"Search messages"</h2>
                            <input name="q" type="search" aria-label="Search messages"
                                placeholder={"Words, \"a phrase\", from:@someone, in:#room"} autofocus
                                prop:value=move || query.get()
                                on:input=move |ev| {
                                    query.set(event_target_value(&ev));
                                    #[cfg(feature = "hydrate")]
                                    search_soon(query, hits, error);
                                }/>
                            <ol class="search-results">
                                {move || hits.get().0.into_iter().map(|h| {
                                    let (room, seq) = (h.room.clone(), h.seq);
                                    let snippet = h.snippet.into_iter().map(|s| if s.hit {
                                        view! { <mark>{s.text}</mark> }.into_any()
                                    } else {
                                        s.text.into_any()
                                    }).collect_view();
                                    view! {
                                        <li><button class="hit" on:click=click(move |_| {
                                            go(room.clone());
                                            session.state(&room).focus.set(Some(seq));
                                        })>
                                            <span class="where">{h.room_title} " · " {h.user} " · "
                                                <time>{clock(h.ts, true)}</time></span>
                                            <span class="snippet">{snippet}</span>
                                        </button></li>
                                    }
                                }).collect_view()}
                            </ol>
                            <p class="note">{move || match (query.get().trim().is_empty(), hits.get()) {
                                (true, _) => String::new(),
                                (false, (h, _)) if h.is_empty() => "No messages found.".to_owned(),
                                (false, (h, more)) => format!("{} found{}", h.len(), if more.is_some() { ", more below" } else { "" }),
                            }}</p>
                            <Show when=move || hits.get().1.is_some()>
                                <button on:click=click(move |_| {
                                    #[cfg(feature = "hydrate")]
                                    search_more(query, hits, error);
                                })>"More results"</button>
                            </Show>
                        }.into_any(),
                        Some(Dialog::Switcher) => view! {
                            <h2 id="dialog-title">"Switch to…"</h2>
                            <form on:submit=submitted(switch)>
                                <input name="q" aria-label="Room or person" placeholder="Room or person" autofocus prop:value=move || query.get() on:input=field(query)/>
                            </form>
                            <ul class="switch-list">
                                {move || matches().into_iter().take(8).map(|r| {
                                    let name = r.name.clone();
                                    view! { <li><button class="link" on:click=click(move |_| go(name.clone()))>{r.title.clone()}</button></li> }
                                }).collect_view()}
                            </ul>
                        }.into_any(),
                        None => ().into_any(),
                    }
                }
                {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            </div>
        </Show>
    }
}
