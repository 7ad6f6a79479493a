//! Uploading files to a room and serving them to its members. An upload is streamed to disk
//! while it is hashed (never held whole in memory), refused early when it announces more than
//! the limit, and cut off when it sends more; what it is comes from its first bytes. Files are
//! served only to those who may read the room, in a way no browser will run them.

use crate::protocol::MAX_CLIENT_ID_BYTES;
use crate::server::access::Action;
use crate::server::api::{account, caller, rate_key};
use crate::server::auth;
use crate::server::chat::{server_client_id, ChatError};
use crate::server::error::AppError;
use crate::server::files::{self, SNIFF_BYTES};
use crate::server::store::NewAttachment;
use crate::server::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Query of `POST /api/rooms/{room}/attachments`.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// The file's name, as the uploader's computer had it.
    name: Option<String>,
    /// Idempotency key of the message; the server makes one when the caller does not care.
    client_id: Option<String>,
    /// A caption, the text of the message.
    body: Option<String>,
}

fn megabytes(bytes: u64) -> String {
    format!("{}.{} MB", bytes / 1_000_000, bytes % 1_000_000 / 100_000)
}

fn too_large(size: Option<u64>, max: u64) -> ChatError {
    ChatError::TooLarge(match size {
        Some(size) => format!(
            "the file is {}; the limit is {}",
            megabytes(size),
            megabytes(max)
        ),
        None => format!("the file is over the limit of {}", megabytes(max)),
    })
}

/// `POST /api/rooms/{room}/attachments?name=…`: the file is the request body. Answers `201`
/// with the message that carries it.
pub async fn upload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Response, AppError> {
    let (who, ip) = caller(&state, peer, &headers, true).await?;
    let user = account(&who)?.clone();
    if let Err(wait) = state.rates.take(rate_key(&who, ip), 1) {
        return Ok(auth::too_many(wait, "too many uploads: slow down"));
    }
    // Everything that can refuse is asked before a byte of the body is read.
    state
        .chat
        .authorize(Some(&user), &room, Action::Post)
        .await?;
    let limits = state.uploads;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|n| *n > limits.max) {
        return Err(too_large(Some(n), limits.max).into());
    }
    let used = state.chat.store.uploaded_bytes(user.id).await?;
    let quota_left = limits.quota.saturating_sub(used);
    let over_quota = || {
        ChatError::Quota(format!(
            "your files would take more than your quota of {}",
            megabytes(limits.quota)
        ))
    };
    if announced.is_some_and(|n| n > quota_left) {
        return Err(over_quota().into());
    }
    let client_id = match q.client_id {
        Some(id) if id.len() <= MAX_CLIENT_ID_BYTES => id,
        Some(_) => {
            return Err(AppError::BadRequest("client_id is too long".to_owned()));
        }
        None => server_client_id(),
    };
    let name = files::clean_name(q.name.as_deref().unwrap_or("file"));

    // Stream it to a scratch file, hashing as it goes.
    let scratch = state.chat.blobs.scratch();
    // However long the whole takes, it may not stall for longer than a request may take.
    let idle = state.request_timeout;
    let received = receive(body, &scratch, limits.max.min(quota_left), idle).await;
    let (sha256, size, head) = match received {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&scratch).await;
            return Err(match e {
                Received::TooLarge if quota_left < limits.max => over_quota().into(),
                Received::TooLarge => too_large(None, limits.max).into(),
                Received::Stalled => AppError::Timeout,
                Received::Gone => AppError::BadRequest("the upload was cut short".to_owned()),
                Received::Disk(e) => AppError::Io(e),
            });
        }
    };
    if size == 0 {
        let _ = tokio::fs::remove_file(&scratch).await;
        return Err(AppError::BadRequest("the file is empty".to_owned()));
    }
    let kind = files::sniff(&head);
    state
        .chat
        .blobs
        .keep(&scratch, &sha256)
        .await
        .map_err(AppError::Io)?;
    let file = NewAttachment {
        id: uuid::Uuid::now_v7().simple().to_string(),
        sha256,
        name,
        size,
        mime: kind.mime.to_owned(),
        width: kind.width,
        height: kind.height,
    };
    let caption = q.body.unwrap_or_default();
    let done = state
        .chat
        .post_file(&user, &room, client_id, caption, file)
        .await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "message": done.message }))).into_response())
}

/// Why an upload was not received.
enum Received {
    TooLarge,
    Stalled,
    Gone,
    Disk(std::io::Error),
}

/// Writes the body to `path` (at most `max` bytes, with no pause longer than `idle`): its
/// SHA-256, its size, and its first [`SNIFF_BYTES`] bytes.
async fn receive(
    body: Body,
    path: &std::path::Path,
    max: u64,
    idle: Duration,
) -> Result<(String, u64, Vec<u8>), Received> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(Received::Disk)?;
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut head = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(Received::Stalled),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Received::Gone),
            Ok(Some(Ok(chunk))) => chunk,
        };
        size += chunk.len() as u64;
        if size > max {
            return Err(Received::TooLarge);
        }
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(Received::Disk)?;
    }
    file.sync_all().await.map_err(Received::Disk)?;
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sha256, size, head))
}

/// `GET /api/attachments/{id}`: the file, to those who may read its room (anyone else: 404,
/// as for no file). Images are shown inline; everything else is a download. Either way the
/// browser is told never to guess a type, and the file runs nothing (a sandboxing policy).
pub async fn download(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let (who, _) = caller(&state, peer, &headers, false).await?;
    let missing = || AppError::NotFound("no such file".to_owned());
    let Some(a) = state.chat.store.attachment(&id).await? else {
        return Err(missing());
    };
    match state
        .chat
        .authorize(who.user.as_ref(), &a.room, Action::Read)
        .await
    {
        Ok(_) => {}
        Err(ChatError::Store(e)) => return Err(AppError::Store(e)),
        Err(_) => return Err(missing()),
    }
    let Some(file) = state
        .chat
        .blobs
        .open(&a.sha256)
        .await
        .map_err(AppError::Io)?
    else {
        tracing::error!(sha256 = %a.sha256, "an attachment's blob is missing");
        return Err(missing());
    };
    // Only the image types the server recognised are served as what they are.
    let (mime, disposition) = match a.mime.as_str() {
        "image/png" => ("image/png", "inline"),
        "image/jpeg" => ("image/jpeg", "inline"),
        "image/gif" => ("image/gif", "inline"),
        "image/webp" => ("image/webp", "inline"),
        _ => ("application/octet-stream", "attachment"),
    };
    let encoded: String = a
        .name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let disposition = format!("{disposition}; filename*=UTF-8''{encoded}");
    let mut resp = Body::from_stream(file).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(resp)
}
