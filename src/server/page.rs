//! What the chat page is rendered from, read before the page renders: the middleware in front of
//! `/` and `/r/{room}` identifies the visitor (sending one without a session to the log-in page),
//! reads their rooms and the room in the URL through the chat's one authorisation point, and hands
//! the result to the Leptos app as a request extension. The app shares it with the browser in the
//! page itself (`SharedValue`), so hydration needs no second request and no async boundary.

use crate::nav::room_of_path;
use crate::protocol::{self, PAGE_HISTORY};
use crate::server::chat::ChatError;
use crate::server::store::User;
use crate::server::AppState;
use crate::session::{PageData, RoomPage};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// Whether a path is the chat page.
fn is_chat_page(path: &str) -> bool {
    path == "/" || path.starts_with("/r/")
}

/// In front of the chat page: the visitor, their rooms and the room in the URL (its last events
/// and head seq, the cursor the client resumes from, so nothing posted between render and connect
/// is missed). A visitor without a session goes to the log-in page (unless anonymous mode is on);
/// a room they may not see renders as one that does not exist, with status 404.
pub async fn page_data(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if !is_chat_page(&path) {
        return next.run(req).await;
    }
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let ip = state.auth.client_ip(peer, req.headers());
    let user = match state.auth.identify(req.headers(), ip, false).await {
        Ok(identity) if identity.user.is_some() || state.auth.allow_anonymous => identity.user,
        _ => {
            return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
        }
    };
    let (csrf, new_csrf) = state.auth.csrf_token(req.headers());
    let data = match load(&state, user, csrf.clone(), &room_of_path(&path)).await {
        Ok(data) => data,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the page's rooms");
            return (StatusCode::INTERNAL_SERVER_ERROR, "storage unavailable").into_response();
        }
    };
    let missing = data.room.is_none();
    req.extensions_mut().insert(Arc::new(data));
    let mut resp = next.run(req).await;
    if new_csrf {
        resp.headers_mut()
            .append(header::SET_COOKIE, state.auth.csrf_cookie(&csrf));
    }
    if missing && resp.status() == StatusCode::OK {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    resp
}

/// Reads the page's data; every read goes through the chat's one authorisation point.
async fn load(
    state: &AppState,
    user: Option<User>,
    csrf: String,
    room: &str,
) -> Result<PageData, ChatError> {
    let rooms = match &user {
        Some(u) => state.chat.rooms(u).await?,
        None => Vec::new(),
    };
    // No room has a name that is not a room name: it is shown as missing.
    let room: String = room.chars().take(protocol::MAX_ROOM_BYTES).collect();
    let page = match state.chat.recent(user.as_ref(), &room, PAGE_HISTORY).await {
        Ok((info, page)) => Some(RoomPage {
            info,
            head: page.head,
            messages: page.messages,
        }),
        Err(ChatError::Store(e)) => return Err(ChatError::Store(e)),
        // A room this user may not see renders as one that does not exist.
        Err(_) => None,
    };
    Ok(PageData {
        me: user.as_ref().map(|u| u.display_name.clone()),
        me_id: user.as_ref().map(|u| u.id),
        me_username: user.map(|u| u.username),
        settings: state.client_settings.clone(),
        csrf,
        rooms,
        requested: room,
        room: page,
    })
}

/// The page's data inside the app, on the server: what [`page_data`] read for this request.
pub fn current() -> Option<PageData> {
    let parts = leptos::prelude::use_context::<axum::http::request::Parts>()?;
    parts
        .extensions
        .get::<Arc<PageData>>()
        .map(|d| PageData::clone(d))
}
