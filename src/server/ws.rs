//! The WebSocket endpoint: the upgrade, then one task per connection that reads client frames,
//! writes deliveries from the hub, and keeps a per-room cursor so that what the client sees is the
//! room's history in seq order with no gap and no duplicate, whatever the hub dropped or reordered.

use crate::protocol::{
    self, close, ClassicMessage, ClientFrame, ErrorCode, ServerFrame, DEFAULT_ROOM,
    MAX_FRAME_BYTES, SUBPROTOCOL,
};
use crate::server::auth::Auth;
use crate::server::auth::{Identity, Revoked};
use crate::server::chat::{encode, server_client_id, Chat};
use crate::server::error::AppError;
use crate::server::hub::{Delivery, Event, Subscriber};
use crate::server::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Messages read from storage per query during a replay, so a client far behind never makes the
/// server build one huge reply.
const REPLAY_BATCH: usize = 256;
/// Deliveries written before one flush.
const WRITE_BATCH: usize = 64;
/// Initial read buffer per connection; the default (128 KiB) dominates idle memory.
const READ_BUFFER: usize = 512;
/// How long to wait for the peer's close reply after the server closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a slow consumer's close frame may wait behind its backlog. The connection has left the
/// hub by then, so it holds only its socket buffers meanwhile.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(60);

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `hubbub.v1`: hello, join, send with acks, replay.
    Rich,
    /// No subprotocol: `{"user","message"}` in and out, room `general` only.
    Classic,
}

/// Heartbeat and stall limits, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub ping_interval: Duration,
    pub send_timeout: Duration,
    /// Frames per second a client may send.
    pub message_rate: u32,
}

/// `GET /ws` (and `GET /` with an Upgrade header).
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if *state.shutdown.borrow() {
        // Shutting down: tell the client to come back to the next process.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "server is restarting",
        )
            .into_response();
    }
    // Listen for log-outs and revocations before the credential is checked, so one that lands
    // between the check and the socket's first wait is not missed.
    let revocations = state.auth.revocations();
    // Authenticate before the 101: no socket, and no task, for a request that fails.
    let ip = state.auth.client_ip(peer.ip(), &headers);
    let too_many = |wait: Duration| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            "too many connections",
        )
            .into_response()
    };
    let identity = match state.auth.identify(&headers, true).await {
        Ok(identity) => identity,
        Err(denied) => {
            if let Err(wait) = state.auth.unauthenticated_handshake(ip) {
                return too_many(wait);
            }
            return denied.into_response();
        }
    };
    let slot = match &identity.user {
        Some(user) => match state.auth.socket_slot(user.id) {
            Some(slot) => Some(slot),
            None => return too_many(Duration::from_secs(1)),
        },
        None => {
            if let Err(wait) = state.auth.unauthenticated_handshake(ip) {
                return too_many(wait);
            }
            None
        }
    };
    let ws = configure(ws).protocols([SUBPROTOCOL]);
    let mode = if ws.selected_protocol().is_some() {
        Mode::Rich
    } else {
        Mode::Classic
    };
    // Everything the task needs is made here and captured boxed: what the task's future captures
    // stays in it for the socket's whole life.
    let guard = state.connections.enter();
    let limit = state.ws_limits.send_timeout;
    let conn = Box::new(Connection::new(state, mode, identity, revocations));
    ws.on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| SEND_TIMEOUT.scope(limit, conn.run(socket, (guard, slot))))
}

/// The WebSocket settings every endpoint shares: buffers and size limits.
fn configure(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// `GET /autobahn/echo`, built only with the `autobahn` feature: echoes every data frame, with the
/// same configuration and close handling as `/ws`, for the Autobahn conformance suite.
#[cfg(feature = "autobahn")]
pub async fn echo(ws: WebSocketUpgrade) -> Response {
    configure(ws).on_upgrade(|mut socket| async move {
        let end = loop {
            match socket.recv().await {
                None => break End::Gone,
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(m).await.is_err() {
                        break End::Gone;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break close_for(e),
            }
        };
        finish(socket, end).await;
    })
}

/// Why a connection ends.
enum End {
    /// The peer went away or closed; nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

struct Connection {
    /// Only the handles a connection uses, not the whole `AppState`: this struct lives as long as
    /// the socket, so its size is paid per idle connection.
    chat: Chat,
    auth: Auth,
    limits: Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Subscribed before the credential was checked; taken by the connection's loop.
    revocations: Option<tokio::sync::broadcast::Receiver<Revoked>>,
    mode: Mode,
    sub: Subscriber,
    /// Last seq this client has been sent (or told of) in each joined room.
    cursors: HashMap<Arc<str>, u64>,
    /// Who opened the socket; every message it sends is theirs.
    identity: Identity,
    /// The name an anonymous client gave in `hello`.
    user: Option<String>,
    said_hello: bool,
    bucket: Bucket,
}

/// A token bucket over the frames a client sends.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: tokio::time::Instant,
    /// Frames refused since the bucket was last full; too many and the client is closed.
    refused: u32,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Bucket {
            tokens: rate * 2.0,
            rate,
            burst: rate * 2.0,
            last: tokio::time::Instant::now(),
            refused: 0,
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= self.burst {
            // Calm again: forget earlier refusals.
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

fn text(bytes: Utf8Bytes) -> Message {
    Message::Text(bytes)
}

fn error_frame(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Message {
    text(encode(&ServerFrame::Error {
        code,
        message: message.into(),
        reference,
    }))
}

/// Maps a read error to the close code the peer deserves; tungstenite itself would just drop TCP.
fn close_for(err: axum::Error) -> End {
    let Ok(inner) = err.into_inner().downcast::<tungstenite::Error>() else {
        return End::Gone;
    };
    match *inner {
        tungstenite::Error::Capacity(_) => End::Close(close::TOO_BIG, "message too big"),
        tungstenite::Error::Utf8(_) => End::Close(close::INVALID_PAYLOAD, "invalid UTF-8"),
        tungstenite::Error::Protocol(_) => End::Close(close::PROTOCOL_ERROR, "protocol error"),
        _ => End::Gone,
    }
}

impl Connection {
    fn new(
        state: AppState,
        mode: Mode,
        identity: Identity,
        revocations: tokio::sync::broadcast::Receiver<Revoked>,
    ) -> Self {
        let sub = state.chat.hub.subscribe();
        let rate = state.ws_limits.message_rate;
        Connection {
            shutdown: state.shutdown.subscribe(),
            revocations: Some(revocations),
            chat: state.chat,
            auth: state.auth,
            limits: state.ws_limits,
            mode,
            sub,
            identity,
            bucket: Bucket::new(rate),
            cursors: HashMap::new(),
            user: None,
            said_hello: false,
        }
    }

    /// Serves the socket to its end. Boxed, so the task's future holds a pointer to it.
    ///
    /// `held` (the connection count and socket slot) is dropped when the task ends. Not an
    /// `async fn`: an async fn keeps its arguments twice (as captured and as local), and the
    /// socket is 368 bytes that every idle connection would pay again.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    fn run<H: Send>(
        mut self: Box<Self>,
        mut socket: WebSocket,
        held: H,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let id = self.sub.id();
            tracing::debug!(conn = id, mode = ?self.mode, "connected");
            let end = match self.serve(&mut socket).await {
                Ok(()) => End::Gone,
                Err(end) => end,
            };
            // Leave the hub before the close handshake: nothing more is queued for this client.
            drop(self);
            Box::pin(finish(socket, end)).await;
            drop(held);
            tracing::debug!(conn = id, "disconnected");
        }
    }

    /// The connection's loop. An idle connection waits here, so the state kept across its waits is
    /// what every connection costs: each branch's work is boxed (allocated only while it runs).
    async fn serve(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        // The signals that rarely fire stay registered across wake-ups instead of being set up and
        // torn down for every delivery (the shutdown and revocation ones are shared by every
        // connection).
        let mut shutdown = self.shutdown.clone();
        let stop = stopping(&mut shutdown);
        tokio::pin!(stop);
        let receiver = match self.revocations.take() {
            Some(receiver) => receiver,
            None => self.auth.revocations(),
        };
        let mut revoked = Box::pin(next_revocation(receiver));
        let mut revocations_open = true;
        let every = self.limits.ping_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether a ping is out that the client has not answered (any frame counts as an answer).
        let mut awaiting_pong = false;
        if self.mode == Mode::Classic {
            Box::pin(self.join(socket, DEFAULT_ROOM, None)).await?;
        }
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    return Err(End::Close(close::GOING_AWAY, "server shutting down"));
                }
                (notice, receiver) = &mut revoked, if revocations_open => {
                    revoked.set(next_revocation(receiver));
                    match notice {
                        Ok(Revoked(c)) if c == self.identity.credential => {
                            return Err(End::Close(close::REVOKED, "logged out"));
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            // Notices were missed: check our own credential directly.
                            let check = self.auth.still_valid(&self.identity.credential);
                            if !Box::pin(check).await {
                                return Err(End::Close(close::REVOKED, "logged out"));
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            // No more notices will come.
                            revocations_open = false;
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    if awaiting_pong {
                        return Err(End::Close(close::HEARTBEAT_TIMEOUT, "no answer to ping"));
                    }
                    awaiting_pong = true;
                    Box::pin(send(socket, Message::Ping(Default::default()))).await?;
                }
                incoming = socket.recv() => {
                    if matches!(incoming, Some(Ok(_))) {
                        awaiting_pong = false;
                    }
                    match incoming {
                        None => return Ok(()),
                        Some(Ok(Message::Text(t))) => Box::pin(self.on_text(socket, t)).await?,
                        Some(Ok(Message::Binary(_))) => {
                            return Err(End::Close(
                                close::UNSUPPORTED_DATA,
                                "binary frames are not supported",
                            ));
                        }
                        // tungstenite answers pings and replies to a close; keep reading until
                        // the end.
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(close_for(e)),
                    }
                }
                event = self.sub.recv() => match event {
                    Event::Delivery(d) => Box::pin(self.deliver_batch(socket, d)).await?,
                    Event::Lagged => Box::pin(self.resync(socket)).await?,
                },
            }
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes them in one go.
    async fn deliver_batch(
        &mut self,
        socket: &mut WebSocket,
        first: Arc<Delivery>,
    ) -> Result<(), End> {
        self.deliver(socket, first).await?;
        let mut n = 1;
        while n < WRITE_BATCH {
            match self.sub.try_recv() {
                Some(Event::Delivery(d)) => self.deliver(socket, d).await?,
                Some(Event::Lagged) => return self.resync(socket).await,
                None => break,
            }
            n += 1;
        }
        flush(socket).await
    }

    /// After the hub dropped deliveries for this connection: re-reads every joined room from its
    /// cursor.
    async fn resync(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let rooms: Vec<Arc<str>> = self.cursors.keys().cloned().collect();
        for room in rooms {
            self.replay(socket, &room).await?;
        }
        flush(socket).await
    }

    /// Queues one delivery for the socket, first replaying from storage any seqs it skipped.
    async fn deliver(&mut self, socket: &mut WebSocket, d: Arc<Delivery>) -> Result<(), End> {
        let Some(cursor) = self.cursors.get_mut(&d.room) else {
            return Ok(()); // left the room since it was queued
        };
        if d.seq <= *cursor {
            return Ok(()); // already sent by a replay
        }
        if d.seq == *cursor + 1 {
            *cursor = d.seq;
            let bytes = match self.mode {
                Mode::Rich => d.rich.clone(),
                Mode::Classic => d.classic.clone(),
            };
            return feed(socket, text(bytes)).await;
        }
        Box::pin(self.replay(socket, &d.room)).await
    }

    /// Sends every stored message after the room's cursor, in batches, and moves the cursor.
    async fn replay(&mut self, socket: &mut WebSocket, room: &Arc<str>) -> Result<(), End> {
        let Some(mut cursor) = self.cursors.get(room).copied() else {
            return Ok(());
        };
        loop {
            let batch = self
                .chat
                .store
                .after(room, cursor, REPLAY_BATCH)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "replay failed");
                    End::Close(close::INTERNAL, "storage unavailable")
                })?;
            let len = batch.len();
            for m in batch {
                cursor = m.seq;
                let frame = match self.mode {
                    Mode::Rich => encode(&ServerFrame::Message(m)),
                    Mode::Classic => Utf8Bytes::from(
                        serde_json::to_string(&ClassicMessage {
                            user: m.user,
                            message: m.body,
                        })
                        .expect("BUG: classic frames always serialise"),
                    ),
                };
                feed(socket, text(frame)).await?;
            }
            self.cursors.insert(Arc::clone(room), cursor);
            if len < REPLAY_BATCH {
                return Ok(());
            }
            flush(socket).await?;
        }
    }

    /// Joins a room: subscribe first, then replay from the cursor, so nothing falls in between.
    async fn join(
        &mut self,
        socket: &mut WebSocket,
        room: &str,
        after: Option<u64>,
    ) -> Result<(), End> {
        let head = if protocol::valid_room_name(room) {
            self.head(room).await?
        } else {
            None
        };
        let Some(_) = head else {
            send(
                socket,
                error_frame(
                    ErrorCode::UnknownRoom,
                    format!("no room named {room:?}"),
                    Some(room.to_owned()),
                ),
            )
            .await?;
            return Ok(());
        };
        self.sub.join(room);
        // Read the head again now that live deliveries are queued for us.
        let head = self.head(room).await?.unwrap_or_default();
        let room: Arc<str> = Arc::from(room);
        let cursor = match after {
            None => head,
            Some(after) if after > head => {
                // The client has seen seqs this room never had (its history was reset): say so.
                if self.mode == Mode::Rich {
                    feed(
                        socket,
                        text(encode(&ServerFrame::HistoryGap {
                            room: room.to_string(),
                            from: after,
                        })),
                    )
                    .await?;
                }
                head
            }
            Some(after) => after,
        };
        self.cursors.insert(Arc::clone(&room), cursor);
        self.replay(socket, &room).await?;
        if self.mode == Mode::Rich {
            let head = self.cursors.get(&room).copied().unwrap_or(cursor);
            feed(
                socket,
                text(encode(&ServerFrame::Joined {
                    room: room.to_string(),
                    head,
                })),
            )
            .await?;
        }
        flush(socket).await
    }

    async fn head(&self, room: &str) -> Result<Option<u64>, End> {
        self.chat.store.head(room).await.map_err(|e| {
            tracing::error!(error = %e, "reading room head failed");
            End::Close(close::INTERNAL, "storage unavailable")
        })
    }

    async fn on_text(&mut self, socket: &mut WebSocket, t: Utf8Bytes) -> Result<(), End> {
        if !self.bucket.take() {
            // A client that keeps going after being told is closed.
            if self.bucket.refused > self.bucket.burst as u32 {
                return Err(End::Close(close::POLICY, "rate limit exceeded"));
            }
            let message = format!(
                "more than {} frames per second: slow down",
                self.bucket.rate
            );
            return send(socket, error_frame(ErrorCode::RateLimited, message, None)).await;
        }
        match self.mode {
            Mode::Rich => self.on_rich(socket, &t).await,
            Mode::Classic => self.on_classic(socket, &t).await,
        }
    }

    async fn on_classic(&mut self, socket: &mut WebSocket, t: &str) -> Result<(), End> {
        let msg: ClassicMessage = match serde_json::from_str(t) {
            Ok(m) => m,
            Err(e) => {
                let code = if serde_json::from_str::<serde_json::Value>(t).is_ok() {
                    ErrorCode::InvalidFrame
                } else {
                    ErrorCode::MalformedJson
                };
                let message = format!("expected {{\"user\":\"…\",\"message\":\"…\"}}: {e}");
                return send(socket, error_frame(code, message, None)).await;
            }
        };
        let client_id = server_client_id();
        let author = match self.identity.author(Some(&msg.user)) {
            Ok(a) => a,
            Err(inv) => return send(socket, error_frame(inv.code, inv.message, None)).await,
        };
        match self
            .chat
            .post(DEFAULT_ROOM, client_id, author, msg.message)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => send(socket, app_error(&e, None)).await,
        }
    }

    async fn on_rich(&mut self, socket: &mut WebSocket, t: &str) -> Result<(), End> {
        let frame = match protocol::parse_client_frame(t) {
            Ok(f) => f,
            Err(inv) => return send(socket, error_frame(inv.code, inv.message, None)).await,
        };
        match frame {
            ClientFrame::Hello { resume, user } => {
                if self.said_hello {
                    return send(
                        socket,
                        error_frame(ErrorCode::BadSequence, "hello was already sent", None),
                    )
                    .await;
                }
                let user = match self.identity.author(user.as_deref()) {
                    Ok(u) => u,
                    Err(inv) => {
                        return send(socket, error_frame(inv.code, inv.message, None)).await
                    }
                };
                self.said_hello = true;
                self.user = Some(user.clone());
                feed(
                    socket,
                    text(encode(&ServerFrame::Welcome {
                        user,
                        session: format!("c{}", self.sub.id()),
                        protocol: SUBPROTOCOL.to_owned(),
                    })),
                )
                .await?;
                for (room, after) in resume {
                    self.join(socket, &room, Some(after)).await?;
                }
                flush(socket).await
            }
            ClientFrame::Join { room, after } => self.join(socket, &room, after).await,
            ClientFrame::Leave { room } => {
                self.sub.leave(&room);
                self.cursors.remove(room.as_str());
                Ok(())
            }
            ClientFrame::Send {
                room,
                client_id,
                body,
                user,
            } => {
                if !self.cursors.contains_key(room.as_str()) {
                    let message = format!("join {room:?} before sending to it");
                    return send(
                        socket,
                        error_frame(ErrorCode::NotJoined, message, Some(client_id)),
                    )
                    .await;
                }
                let claimed = user.or_else(|| self.user.clone());
                let author = match self.identity.author(claimed.as_deref()) {
                    Ok(a) => a,
                    Err(inv) => {
                        return send(socket, error_frame(inv.code, inv.message, Some(client_id)))
                            .await
                    }
                };
                match self.chat.post(&room, client_id.clone(), author, body).await {
                    Ok(a) => {
                        let ack = ServerFrame::Ack {
                            client_id,
                            room,
                            seq: a.message.seq,
                        };
                        send(socket, text(encode(&ack))).await
                    }
                    Err(e) => send(socket, app_error(&e, Some(client_id))).await,
                }
            }
            ClientFrame::Ping { nonce } => {
                send(socket, text(encode(&ServerFrame::Pong { nonce }))).await
            }
        }
    }
}

/// The next notice of a logged-out session or revoked token, with the receiver to wait for the
/// one after.
async fn next_revocation(
    mut receiver: tokio::sync::broadcast::Receiver<Revoked>,
) -> (
    Result<Revoked, tokio::sync::broadcast::error::RecvError>,
    tokio::sync::broadcast::Receiver<Revoked>,
) {
    let notice = receiver.recv().await;
    (notice, receiver)
}

/// Resolves once the server starts shutting down.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Ends a connection: for a close, sends the close frame and, where the peer can answer, waits
/// for its reply so the closing handshake completes.
async fn finish(mut socket: WebSocket, end: End) {
    let End::Close(code, reason) = end else {
        return;
    };
    tracing::debug!(code, reason, "closing");
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    // A slow consumer gets its close frame after its backlog, if it ever reads it; a frozen peer
    // will not answer; everyone else gets a proper close handshake.
    let (grace, await_reply) = match code {
        close::SLOW_CONSUMER => (SLOW_CLOSE_GRACE, false),
        close::HEARTBEAT_TIMEOUT => (CLOSE_GRACE, false),
        _ => (CLOSE_GRACE, true),
    };
    let sent = tokio::time::timeout(grace, socket.send(Message::Close(Some(frame))));
    if matches!(sent.await, Ok(Ok(()))) && await_reply {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

fn app_error(e: &AppError, reference: Option<String>) -> Message {
    if let AppError::Store(inner) = e {
        tracing::error!(error = %inner, "storing a message failed");
    }
    error_frame(e.code(), e.public_message(), reference)
}

/// Runs a write, bounded by the send timeout: a client whose socket stays full that long is a slow
/// consumer.
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), End> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(
            close::SLOW_CONSUMER,
            "slow consumer: resume from your last seq",
        )),
    }
}

async fn feed(socket: &mut WebSocket, msg: Message) -> Result<(), End> {
    bounded(send_timeout(), socket.feed(msg)).await
}

async fn flush(socket: &mut WebSocket) -> Result<(), End> {
    bounded(send_timeout(), socket.flush()).await
}

async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), End> {
    bounded(send_timeout(), socket.send(msg)).await
}

tokio::task_local! {
    /// The send timeout of the connection the current task serves.
    static SEND_TIMEOUT: Duration;
}

fn send_timeout() -> Duration {
    SEND_TIMEOUT
        .try_with(|t| *t)
        .unwrap_or(Duration::from_secs(10))
}
