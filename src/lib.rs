//! hubbub: a real-time team chat. One crate compiled twice: with `ssr` it is the axum server (hub,
//! storage, HTTP API, server-rendered pages); with `hydrate` it is the WASM client that hydrates
//! those pages and talks to the hub over a WebSocket.

#![recursion_limit = "256"]

pub mod app;
pub mod markup;
pub mod nav;
pub mod protocol;
pub mod session;

#[cfg(feature = "hydrate")]
pub mod client;

#[cfg(feature = "ssr")]
pub mod server;

/// Entry point of the WASM client: hydrates the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    // A panic's message in the console while developing; release builds do without its code.
    #[cfg(debug_assertions)]
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
