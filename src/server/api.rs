//! The JSON HTTP API: post a message, page through history, health.

use crate::protocol::{self, ChatMessage, MAX_FRAME_BYTES, MAX_PAGE, PAGE_HISTORY};
use crate::server::auth::{self, Identity};
use crate::server::chat::server_client_id;
use crate::server::error::AppError;
use crate::server::limits::{IpKey, RateKey};
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};

/// Largest body of a message post: the same as a WebSocket frame.
pub const MAX_POST_BYTES: usize = MAX_FRAME_BYTES;

/// Whose message budget a caller spends: the account's, or a guest's address's.
pub fn rate_key(who: &Identity, ip: IpAddr) -> RateKey {
    match &who.user {
        Some(u) => RateKey::Account(u.id),
        None => RateKey::Guest(IpKey::of(ip)),
    }
}

/// Body of `POST /api/rooms/{room}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    pub body: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Idempotency key; the server makes one when the caller does not care.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Query of `GET /api/rooms/{room}/messages`; kept as text so a bad value gets our own 400.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    before: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryPage {
    pub room: String,
    /// The room's last seq when the page was read.
    pub head: u64,
    pub messages: Vec<ChatMessage>,
}

fn parse_u64(name: &str, v: Option<String>) -> Result<Option<u64>, AppError> {
    v.map(|s| {
        s.parse::<u64>()
            .map_err(|_| AppError::BadRequest(format!("{name} must be a non-negative integer")))
    })
    .transpose()
}

async fn room_head(state: &AppState, room: &str) -> Result<u64, AppError> {
    if !protocol::valid_room_name(room) {
        return Err(AppError::UnknownRoom(room.to_owned()));
    }
    state
        .chat
        .store
        .head(room)
        .await?
        .ok_or_else(|| AppError::UnknownRoom(room.to_owned()))
}

pub async fn history(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, AppError> {
    let ip = state.auth.client_ip(peer.ip(), &headers);
    state.auth.identify(&headers, ip, false).await?;
    let limit = match parse_u64("limit", q.limit)? {
        None => PAGE_HISTORY,
        Some(n) if (1..=MAX_PAGE as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(AppError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )))
        }
    };
    let before = parse_u64("before", q.before)?;
    let after = parse_u64("after", q.after)?;
    let head = room_head(&state, &room).await?;
    let store = &state.chat.store;
    let messages = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(AppError::BadRequest(
                "give before or after, not both".to_owned(),
            ))
        }
        (None, Some(after)) => store.after(&room, after, limit).await?,
        (before, None) => store.before(&room, before, limit).await?,
    };
    Ok(Json(HistoryPage {
        room,
        head,
        messages,
    }))
}

pub async fn post_message(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let ip = state.auth.client_ip(peer.ip(), &headers);
    let who = state.auth.identify(&headers, ip, true).await?;
    // The same budget as the account's sockets: a loop of posts is no way around it.
    if let Err(wait) = state.rates.take(rate_key(&who, ip), 1) {
        return Ok(auth::too_many(
            wait,
            &format!(
                "more than {} messages per second: slow down",
                state.rates.per_second()
            ),
        ));
    }
    let req: PostMessage = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))?;
    room_head(&state, &room).await?;
    let client_id = req.client_id.unwrap_or_else(server_client_id);
    let author = who.author(req.user.as_deref())?;
    let appended = state.chat.post(&room, client_id, author, req.body).await?;
    let status = if appended.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "message": appended.message }))).into_response())
}

/// `GET /healthz`: 200 when the database answers and every background task runs, else 503 (a
/// supervisor should restart the process); each task's state and restarts are in the body.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let database = state.chat.store.head(protocol::DEFAULT_ROOM).await;
    if let Err(e) = &database {
        tracing::error!(error = %e, "health check: database unavailable");
    }
    let ok = database.is_ok() && state.tasks.healthy();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ok" } else { "failing" },
        "database": if database.is_ok() { "ok" } else { "unavailable" },
        "tasks": state.tasks.report(),
        "connections": state.open.total(),
        "websockets": state.connections.count(),
        "queue_overflows": state.chat.hub.overflows(),
    });
    (status, Json(body)).into_response()
}
