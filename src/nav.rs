//! The app's router. The chat has one kind of page, a room (`/` is the default room, `/r/NAME`
//! any other), so routing is one signal: the room in the address bar. Following a link to a room
//! pushes its address onto the browser's history and sets the signal; back and forward set it
//! from the address again; nothing reloads. The server renders the same room from the request's
//! path.
//!
//! It replaces a general-purpose router on purpose: this one is a few dozen lines of the client
//! rather than a tenth of it.

use crate::protocol::DEFAULT_ROOM;
use leptos::prelude::*;

/// The room a path opens on: `/r/NAME`, or the default room.
pub fn room_of_path(path: &str) -> String {
    path.strip_prefix("/r/")
        .map(|r| r.trim_end_matches('/').to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| DEFAULT_ROOM.to_owned())
}

/// The address of a room's page.
pub fn room_path(room: &str) -> String {
    format!("/r/{room}")
}

/// The room on screen, kept in step with the address bar. Cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct Nav {
    room: RwSignal<String>,
}

impl Nav {
    /// The router for a page opened on `room`; in the browser it follows back and forward.
    pub fn new(room: String) -> Self {
        let nav = Nav {
            room: RwSignal::new(room),
        };
        #[cfg(feature = "hydrate")]
        nav.follow_history();
        nav
    }

    /// The room on screen (tracked: a view that reads it follows navigation).
    pub fn room(&self) -> String {
        self.room.get()
    }

    /// Opens `room`, adding it to the browser's history.
    pub fn go(&self, room: &str) {
        if self.room.with_untracked(|r| r == room) {
            return;
        }
        #[cfg(feature = "hydrate")]
        if let Ok(history) = window().history() {
            let _ = history.push_state_with_url(
                &wasm_bindgen::JsValue::NULL,
                "",
                Some(&room_path(room)),
            );
        }
        self.room.set(room.to_owned());
    }

    /// Back and forward: the room is the one the address names.
    #[cfg(feature = "hydrate")]
    fn follow_history(&self) {
        use wasm_bindgen::JsCast;
        let room = self.room;
        let on_pop = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || {
            if let Ok(path) = window().location().pathname() {
                room.set(room_of_path(&path));
            }
        });
        let _ =
            window().add_event_listener_with_callback("popstate", on_pop.as_ref().unchecked_ref());
        // The page lives as long as the listener.
        on_pop.forget();
    }
}

/// A link to a room: a plain left click opens it in place, through [`Nav::go`]; a click with a
/// modifier (new tab, new window) is left to the browser, as is a visitor without the client.
pub fn room_link(
    nav: Nav,
    room: String,
    class: &'static str,
    current: impl Fn() -> bool + Send + Sync + 'static,
    on_open: impl Fn() + Send + Sync + 'static,
    children: impl IntoView + 'static,
) -> impl IntoView {
    let href = room_path(&room);
    view! {
        <a
            class=class
            href=href
            aria-current=move || current().then_some("page")
            on:click=move |ev: leptos::ev::MouseEvent| {
                if ev.button() == 0 && !(ev.ctrl_key() || ev.meta_key() || ev.shift_key() || ev.alt_key()) {
                    ev.prevent_default();
                    nav.go(&room);
                    on_open();
                }
            }
        >
            {children}
        </a>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_room() {
        assert_eq!(room_of_path("/"), "general");
        assert_eq!(room_of_path("/r/plans"), "plans");
        assert_eq!(room_of_path("/r/plans/"), "plans");
        assert_eq!(room_of_path("/r/"), "general");
        assert_eq!(room_path("plans"), "/r/plans");
    }
}
