//! The JSON HTTP API: rooms, membership, direct messages, read positions, history and posting,
//! health. Every room endpoint goes through the chat's one authorisation point.

use crate::protocol::api::{
    CreateRoom, HistoryPage, Invite, OpenDm, RoomAnswer, RoomDetail, RoomsAnswer, SearchAnswer,
    UpdateRoom,
};
use crate::protocol::{self, MAX_FRAME_BYTES, MAX_PAGE, PAGE_HISTORY};
use crate::server::auth::{self, Identity};
use crate::server::chat::{server_client_id, ChatError, RoomRequest, MAX_DM_MEMBERS};
use crate::server::error::AppError;
use crate::server::limits::{IpKey, RateKey};
use crate::server::store::User;
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};

/// Largest body of a message post: the same as a WebSocket frame.
pub const MAX_POST_BYTES: usize = MAX_FRAME_BYTES;
/// Largest body of the other room requests (names, a topic, a list of usernames).
pub const MAX_ROOM_BODY_BYTES: usize = 8 * 1024;

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
    /// The seq of the message (in the same room) this one answers.
    #[serde(default)]
    pub reply_to: Option<u64>,
}

/// Query of `GET /api/rooms/{room}/messages`; kept as text so a bad value gets our own 400.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    before: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

fn parse_u64(name: &str, v: Option<String>) -> Result<Option<u64>, AppError> {
    v.map(|s| {
        s.parse::<u64>()
            .map_err(|_| AppError::BadRequest(format!("{name} must be a non-negative integer")))
    })
    .transpose()
}

/// The caller of a request: who they are and from where, checked (with the Origin check for
/// cookie-authenticated writes) before anything else.
pub async fn caller(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    write: bool,
) -> Result<(Identity, IpAddr), AppError> {
    let ip = state.auth.client_ip(peer.ip(), headers);
    let who = state.auth.identify(headers, ip, write).await?;
    Ok((who, ip))
}

/// The caller's account: room endpoints are for accounts, not guests.
pub fn account(who: &Identity) -> Result<&User, AppError> {
    who.user.as_ref().ok_or(AppError::Chat(ChatError::Forbidden(
        "guests have the default room only; sign up for the rest",
    )))
}

/// Parses a JSON body into `T`, with our own 400 on failure.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

pub async fn history(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, AppError> {
    let (who, _) = caller(&state, peer, &headers, false).await?;
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
    if before.is_some() && after.is_some() {
        return Err(AppError::BadRequest(
            "give before or after, not both".to_owned(),
        ));
    }
    let page = state
        .chat
        .history(who.user.as_ref(), &room, before, after, limit)
        .await?;
    Ok(Json(HistoryPage {
        room,
        head: page.head,
        messages: page.messages,
    }))
}

pub async fn post_message(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (who, ip) = caller(&state, peer, &headers, true).await?;
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
    let req: PostMessage = json_body(&body)?;
    let client_id = req.client_id.unwrap_or_else(server_client_id);
    let author = who.author(req.user.as_deref())?;
    let appended = state
        .chat
        .post(
            who.user.as_ref(),
            &room,
            client_id,
            author,
            req.body,
            req.reply_to,
        )
        .await?;
    let status = if appended.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "message": appended.message }))).into_response())
}

/// Query of `GET /api/rooms`.
#[derive(Debug, Deserialize)]
pub struct RoomsQuery {
    public: Option<String>,
}

/// `GET /api/rooms`: the caller's rooms and DMs; with `?public=true`, the public rooms to browse.
pub async fn rooms(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<RoomsQuery>,
) -> Result<Json<RoomsAnswer>, AppError> {
    let (who, _) = caller(&state, peer, &headers, false).await?;
    let user = account(&who)?;
    let rooms = match q.public.as_deref() {
        None | Some("false") => state.chat.rooms(user).await?,
        Some("true") => state.chat.public_rooms(user).await?,
        Some(_) => {
            return Err(AppError::BadRequest(
                "public must be true or false".to_owned(),
            ))
        }
    };
    Ok(Json(RoomsAnswer { rooms }))
}

/// `POST /api/rooms`: makes a room owned by the caller.
pub async fn create_room(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    let req: CreateRoom = json_body(&body)?;
    let room = state
        .chat
        .create_room(
            user,
            RoomRequest {
                name: req.name,
                title: req.title,
                topic: req.topic,
                visibility: req.visibility,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(RoomAnswer { room })).into_response())
}

/// `GET /api/rooms/{room}`: the room, with its members.
pub async fn room(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Json<RoomDetail>, AppError> {
    let (who, _) = caller(&state, peer, &headers, false).await?;
    let info = state.chat.room(who.user.as_ref(), &room).await?;
    let members = state.chat.members(who.user.as_ref(), &room).await?;
    Ok(Json(RoomDetail {
        room: info,
        members,
    }))
}

/// `PATCH /api/rooms/{room}`: the owner renames it, sets its topic or archives it.
pub async fn update_room(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Json<RoomAnswer>, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    let req: UpdateRoom = json_body(&body)?;
    if req.archived == Some(false) {
        return Err(AppError::BadRequest(
            "an archived room stays archived".to_owned(),
        ));
    }
    if let Some(title) = &req.title {
        state.chat.rename(user, &room, title).await?;
    }
    if let Some(topic) = &req.topic {
        state.chat.set_topic(user, &room, topic).await?;
    }
    if req.archived == Some(true) {
        state.chat.archive(user, &room).await?;
    }
    let info = state.chat.room(Some(user), &room).await?;
    Ok(Json(RoomAnswer { room: info }))
}

/// `POST /api/rooms/{room}/join`.
pub async fn join(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Json<RoomAnswer>, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    let info = state.chat.join(account(&who)?, &room).await?;
    Ok(Json(RoomAnswer { room: info }))
}

/// `POST /api/rooms/{room}/leave`.
pub async fn leave(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<StatusCode, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    state.chat.leave(account(&who)?, &room).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/rooms/{room}/members`: adds someone to the room.
pub async fn invite(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    let req: Invite = json_body(&body)?;
    state.chat.invite(user, &room, &req.username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/rooms/{room}/members/{username}`: the owner removes a member.
pub async fn remove_member(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((room, username)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    state.chat.remove(account(&who)?, &room, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `PUT /api/rooms/{room}/read`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    pub seq: u64,
}

/// `PUT /api/rooms/{room}/read`: moves the caller's read position.
pub async fn mark_read(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    let req: MarkRead = json_body(&body)?;
    let read = state.chat.mark_read(account(&who)?, &room, req.seq).await?;
    Ok(Json(json!({
        "room": room,
        "last_read": read.seq,
        "unread": read.unread,
        "mentions": read.mentions,
    })))
}

/// `POST /api/dms`: the direct message with these people (made on the first call).
pub async fn open_dm(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RoomAnswer>, AppError> {
    let (who, _) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    let req: OpenDm = json_body(&body)?;
    if req.usernames.len() > 64 {
        return Err(AppError::Chat(ChatError::Limit(format!(
            "a direct message has at most {MAX_DM_MEMBERS} people"
        ))));
    }
    let room = state.chat.open_dm(user, &req.usernames).await?;
    Ok(Json(RoomAnswer { room }))
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
    // Without the bus a cluster node still serves (the other nodes' messages come from the
    // database, a little later): degraded, not failing.
    let bus = state.chat.bus.status();
    let word = match (ok, state.chat.bus.connected()) {
        (false, _) => "failing",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    let body = json!({
        "status": word,
        "bus": bus,
        "database": if database.is_ok() { "ok" } else { "unavailable" },
        "tasks": state.tasks.report(),
        "connections": state.open.total(),
        "websockets": state.connections.count(),
        "queue_overflows": state.chat.hub.overflows(),
        "gap_reads": state.chat.hub.gap_reads(),
    });
    (status, Json(body)).into_response()
}

/// Body of `PATCH /api/rooms/{room}/messages/{seq}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    pub body: String,
    /// Idempotency key; the server makes one when the caller does not care.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Parses the seq of a message in a path.
fn seq_param(seq: &str) -> Result<u64, AppError> {
    seq.parse()
        .map_err(|_| AppError::BadRequest("a message is named by its seq, a number".to_owned()))
}

/// `PATCH /api/rooms/{room}/messages/{seq}`: the author changes their message's text.
pub async fn edit_message(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((room, seq)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (who, ip) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    if let Err(wait) = state.rates.take(rate_key(&who, ip), 1) {
        return Ok(auth::too_many(wait, "too many changes: slow down"));
    }
    let target = seq_param(&seq)?;
    let req: EditMessage = json_body(&body)?;
    let client_id = req.client_id.unwrap_or_else(server_client_id);
    let done = state
        .chat
        .edit(user, &room, client_id, target, req.body)
        .await?;
    Ok(Json(json!({ "event": done.message })).into_response())
}

/// `DELETE /api/rooms/{room}/messages/{seq}`: the author (or the room's owner) deletes it.
pub async fn delete_message(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((room, seq)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (who, ip) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    if let Err(wait) = state.rates.take(rate_key(&who, ip), 1) {
        return Ok(auth::too_many(wait, "too many changes: slow down"));
    }
    let target = seq_param(&seq)?;
    state
        .chat
        .delete(user, &room, server_client_id(), target)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT` (add) and `DELETE` (take back) `/api/rooms/{room}/messages/{seq}/reactions/{emoji}`:
/// 204 once done, and also when it was so already.
pub async fn react(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    headers: HeaderMap,
    Path((room, seq, emoji)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let (who, ip) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?;
    if let Err(wait) = state.rates.take(rate_key(&who, ip), 1) {
        return Ok(auth::too_many(wait, "too many reactions: slow down"));
    }
    let target = seq_param(&seq)?;
    let on = method == axum::http::Method::PUT;
    state.chat.react(user, &room, target, &emoji, on).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of `GET /api/search`.
#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// Most hits one search answers.
pub const MAX_SEARCH_PAGE: u64 = 50;

/// `GET /api/search?q=…`: messages in the rooms the caller may read, newest first, paged with
/// `before` (the `next` of the last answer).
pub async fn search(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Result<Response, AppError> {
    let (who, ip) = caller(&state, peer, &headers, false).await?;
    let user = account(&who)?;
    // A search reads the index: it costs like a message.
    if let Err(wait) = state.rates.take(rate_key(&who, ip), 1) {
        return Ok(auth::too_many(wait, "too many searches: slow down"));
    }
    let limit = match parse_u64("limit", q.limit)? {
        None => 20,
        Some(n) if (1..=MAX_SEARCH_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(AppError::BadRequest(format!(
                "limit must be between 1 and {MAX_SEARCH_PAGE}"
            )))
        }
    };
    let before = parse_u64("before", q.before)?.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    let hits = state
        .chat
        .search(user, q.q.as_deref().unwrap_or(""), before, limit as usize)
        .await?;
    let next = (hits.len() as u64 == limit)
        .then(|| hits.last().map(|h| h.id))
        .flatten();
    Ok(Json(SearchAnswer { hits, next }).into_response())
}
