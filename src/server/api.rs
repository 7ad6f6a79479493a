//! The JSON HTTP API: post a message, page through history, health.

use crate::protocol::{self, ChatMessage, MAX_PAGE, PAGE_HISTORY};
use crate::server::chat::server_client_id;
use crate::server::error::AppError;
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

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
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, AppError> {
    state.auth.identify(&headers, false).await?;
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
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let who = state.auth.identify(&headers, true).await?;
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
    Ok((status, Json(json!({ "message": appended.message }))))
}

pub async fn healthz(State(state): State<AppState>) -> Result<impl IntoResponse, AppError> {
    state.chat.store.head(protocol::DEFAULT_ROOM).await?;
    Ok(Json(json!({
        "status": "ok",
        "websockets": state.connections.count(),
        "queue_overflows": state.chat.hub.overflows(),
    })))
}
