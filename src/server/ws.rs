//! The WebSocket endpoint: the upgrade, then one task per connection that reads client frames,
//! writes deliveries from the hub, and keeps a per-room cursor so that what the client sees is the
//! room's history in seq order with no gap and no duplicate, whatever the hub dropped or reordered.

use crate::protocol::{
    self, close, ClassicMessage, ClientFrame, ErrorCode, Invalid, RoomInfo, ServerFrame,
    DEFAULT_ROOM, MAX_FRAME_BYTES, MAX_RESUME_ROOMS, SUBPROTOCOL,
};
use crate::protocol::{
    Ack, ErrorReply, HistoryGap, Joined, Left, Pong, PresenceUpdate, RoomUpdate, Welcome,
};
use crate::server::access::Action;
use crate::server::api::rate_key;
use crate::server::auth::{self, Auth, Denied, Identity};
use crate::server::chat::{classic_frame, encode, server_client_id, Chat, ChatError};
use crate::server::error::AppError;
use crate::server::hub::{personal_channel, Delivery, Event, Personal, Subscriber};
use crate::server::limits::{RateKey, Rates};
use crate::server::metrics::{metrics, Out};
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
use tokio::sync::Notify;
use tokio::time::Instant;

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
/// How long a client may stay over its message rate (its frames read ever later) before it is
/// closed with 1008: long enough for a burst of a few hundred to arrive whole.
pub const RATE_PATIENCE: Duration = Duration::from_secs(10);
/// Most messages a join replays over the socket; a client further behind is told
/// `history_gap` and pages over HTTP, so no socket streams a whole history again and again.
pub const MAX_JOIN_REPLAY: u64 = 10_000;
/// Heartbeats between checks of the socket's credential in the database (its end is normally
/// signalled at once; this catches an end that was not, and the expiry is checked every beat).
const RECHECK_EVERY: u32 = 3;

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
}

/// `GET /ws` (and `GET /` with an Upgrade header): the answer, counted by its status.
pub async fn upgrade(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let answer = answer_upgrade(state, peer, headers, ws).await;
    metrics().handshake(answer.status().as_u16());
    answer
}

async fn answer_upgrade(
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
    // Authenticate before the 101: no socket, and no task, for a request that fails.
    let ip = state.auth.client_ip(peer.ip(), &headers);
    let too_many = |wait: Duration| auth::too_many(wait, "too many connections");
    let epoch = state.auth.revocation_epoch();
    let identity = match state.auth.identify(&headers, ip, true).await {
        Ok(identity) => identity,
        Err(denied) => {
            if let Err(wait) = state.auth.unauthenticated_handshake(ip) {
                return too_many(wait);
            }
            return denied.into_response();
        }
    };
    // An account's socket is registered with its credential before the 101, so a log-out from
    // this moment on closes it.
    let slot = match &identity.user {
        Some(user) => match state.auth.socket_slot(user.id, &identity.credential) {
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
    // A log-out between the look-up and the registration signalled nobody: if any credential
    // ended meanwhile (rare), look this one up once more.
    if slot.is_some()
        && state.auth.revocations_since(epoch)
        && !state.auth.still_valid(&identity).await
    {
        return Denied::Unauthorized.into_response();
    }
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
    let revoked = slot.as_ref().map(|s| Arc::clone(&s.revoked));
    let key = rate_key(&identity, ip);
    let mut conn = Box::new(Connection::new(state, mode, identity, revoked, key));
    // A classic client has no `hello`: it is in the default room from its handshake on, so a
    // message posted right after the 101 reaches it.
    if mode == Mode::Classic {
        if let Err(refused) = conn.enter_default_room().await {
            return refused;
        }
    }
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

/// Counts an open socket in `hubbub_connections` for as long as it lives.
struct OpenSocket(&'static prometheus::IntGauge);

impl OpenSocket {
    fn count(mode: Mode) -> Self {
        let gauge = match mode {
            Mode::Rich => &metrics().rich,
            Mode::Classic => &metrics().classic,
        };
        gauge.inc();
        OpenSocket(gauge)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
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
    /// Notified when the socket's session or token ends (accounts only).
    revoked: Option<Arc<Notify>>,
    mode: Mode,
    sub: Subscriber,
    /// Last seq this client has been sent (or told of) in each joined room.
    cursors: HashMap<Arc<str>, u64>,
    /// Who opened the socket; every message it sends is theirs.
    identity: Identity,
    /// The name an anonymous client gave in `hello`.
    user: Option<String>,
    said_hello: bool,
    rates: Rates,
    rate_key: RateKey,
    /// A frame read while the budget was empty, waiting for it; no more is read meanwhile.
    held: Option<Box<Input>>,
    /// When the held frame may go.
    paused_until: Option<Instant>,
    /// Since when the client has been over its rate without a break.
    over_since: Option<Instant>,
    /// When a frame was last admitted.
    last_pass: Option<Instant>,
    /// The account's presence through this session (accounts on `hubbub.v1`, from `hello`).
    presence: Option<crate::server::presence::Session>,
    /// Typing and presence frames have an allowance of their own, apart from the message
    /// budget: [`SIGNAL_BURST`] at once, one more each [`SIGNAL_EVERY`]. Past it they are
    /// dropped.
    signal_tokens: u8,
    signal_at: Option<Instant>,
    /// Since when signals have come past their allowance without a break.
    signals_over_since: Option<Instant>,
    /// Frames the client sent, and events sent to it, for the close line of the log.
    frames_in: u32,
    messages_out: u32,
    /// The code of the client's close frame, when it closed.
    peer_close: Option<u16>,
}

/// Typing and presence frames a client may send at once without touching its message budget.
const SIGNAL_BURST: u8 = 4;
/// How often the signal allowance grows back by one.
const SIGNAL_EVERY: Duration = Duration::from_secs(1);

/// A client frame, parsed.
enum Input {
    Rich(Result<ClientFrame, Invalid>),
    Classic(Result<ClassicMessage, String>),
}

impl Input {
    /// The frame's type, as `hubbub_frames_in_total` counts it.
    fn kind(&self) -> &'static str {
        match self {
            Input::Rich(Ok(frame)) => match frame {
                ClientFrame::Hello { .. } => "hello",
                ClientFrame::Join { .. } => "join",
                ClientFrame::Leave { .. } => "leave",
                ClientFrame::Send { .. } => "send",
                ClientFrame::Edit { .. } => "edit",
                ClientFrame::Delete { .. } => "delete",
                ClientFrame::React { .. } => "react",
                ClientFrame::Typing { .. } => "typing",
                ClientFrame::Presence { .. } => "presence",
                ClientFrame::Ping { .. } => "ping",
                ClientFrame::Read { .. } => "read",
            },
            Input::Classic(Ok(_)) => "classic",
            Input::Rich(Err(_)) | Input::Classic(Err(_)) => "invalid",
        }
    }

    /// Whether the frame is an ephemeral signal (typing, presence).
    fn is_signal(&self) -> bool {
        matches!(
            self,
            Input::Rich(Ok(ClientFrame::Typing { .. } | ClientFrame::Presence { .. }))
        )
    }

    /// What the frame costs of the message budget: one, and one per room a `hello` resumes (a
    /// `hello` with too many rooms is refused outright, so it costs one).
    fn cost(&self) -> u32 {
        match self {
            Input::Rich(Ok(ClientFrame::Hello { resume, .. }))
                if resume.len() <= MAX_RESUME_ROOMS =>
            {
                u32::try_from(resume.len()).unwrap_or(1).max(1)
            }
            _ => 1,
        }
    }
}

fn text(bytes: Utf8Bytes) -> Message {
    Message::Text(bytes)
}

fn error_frame(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Message {
    text(encode(&ServerFrame::Error(ErrorReply {
        code,
        message: message.into(),
        reference,
    })))
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
        revoked: Option<Arc<Notify>>,
        rate_key: RateKey,
    ) -> Self {
        let sub = state.chat.hub.subscribe();
        Connection {
            shutdown: state.shutdown.subscribe(),
            revoked,
            chat: state.chat,
            auth: state.auth,
            limits: state.ws_limits,
            mode,
            sub,
            identity,
            rates: state.rates,
            rate_key,
            held: None,
            paused_until: None,
            over_since: None,
            last_pass: None,
            presence: None,
            signal_tokens: SIGNAL_BURST,
            signal_at: None,
            signals_over_since: None,
            cursors: HashMap::new(),
            user: None,
            said_hello: false,
            frames_in: 0,
            messages_out: 0,
            peer_close: None,
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
            let started = std::time::Instant::now();
            let mode = self.mode;
            let user = self.identity.user.as_ref().map(|u| u.username.clone());
            tracing::info!(conn = id, user, protocol = ?mode, "socket open");
            let _open = OpenSocket::count(mode);
            let end = match self.serve(&mut socket).await {
                Ok(()) => End::Gone,
                Err(end) => end,
            };
            let (frames_in, messages_out) = (self.frames_in, self.messages_out);
            let peer_close = self.peer_close;
            // Leave the hub before the close handshake: nothing more is queued for this client.
            drop(self);
            // The server's close code, or else the client's.
            let code = match end {
                End::Gone => peer_close,
                End::Close(code, _) => Some(code),
            };
            metrics().closed(code);
            Box::pin(finish(socket, end)).await;
            drop(held);
            tracing::info!(
                conn = id,
                user,
                protocol = ?mode,
                duration_ms = started.elapsed().as_millis() as u64,
                code,
                frames_in,
                messages_out,
                "socket closed"
            );
        }
    }

    /// The connection's loop. An idle connection waits here, so the state kept across its waits is
    /// what every connection costs: each branch's work is boxed (allocated only while it runs).
    async fn serve(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        // The signals that rarely fire stay registered across wake-ups instead of being set up and
        // torn down for every delivery.
        let mut shutdown = self.shutdown.clone();
        let stop = stopping(&mut shutdown);
        tokio::pin!(stop);
        let signal = self.revoked.clone();
        let revoked = async {
            match &signal {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(revoked);
        let every = self.limits.ping_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        // Whether a ping is out that the client has not answered (any frame counts as an answer).
        let mut awaiting_pong = false;
        loop {
            let paused_until = self.paused_until;
            tokio::select! {
                biased;
                _ = &mut stop => {
                    return Err(End::Close(close::GOING_AWAY, "server shutting down"));
                }
                _ = &mut revoked => {
                    return Err(End::Close(close::REVOKED, "logged out"));
                }
                _ = heartbeat.tick() => {
                    // A client whose frames are held back is evidently alive, and its pong may be
                    // among what is not read yet.
                    if awaiting_pong && paused_until.is_none() {
                        return Err(End::Close(close::HEARTBEAT_TIMEOUT, "no answer to ping"));
                    }
                    awaiting_pong = paused_until.is_none();
                    beats = beats.wrapping_add(1);
                    if !Box::pin(self.credential_holds(beats)).await {
                        return Err(End::Close(close::REVOKED, "session ended"));
                    }
                    Box::pin(send(socket, Message::Ping(Default::default()))).await?;
                }
                _ = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)),
                    if paused_until.is_some() => {
                    self.paused_until = None;
                    if let Some(input) = self.held.take() {
                        Box::pin(self.admit(socket, *input, true)).await?;
                    }
                }
                incoming = socket.recv(), if paused_until.is_none() => {
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
                        // The client closes: its code is the connection's (for the log and
                        // the metrics); tungstenite replies, and the stream ends.
                        Some(Ok(Message::Close(frame))) => {
                            self.peer_close = Some(frame.map_or(close::NO_STATUS, |f| f.code));
                        }
                        // tungstenite answers pings; keep reading until the end.
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

    /// Whether the socket's session or token still holds: its expiry on every beat, the
    /// database every few.
    async fn credential_holds(&self, beats: u32) -> bool {
        if self
            .identity
            .expires_at
            .is_some_and(|t| t <= crate::server::auth::now_ms())
        {
            return false;
        }
        if !beats.is_multiple_of(RECHECK_EVERY) {
            return true;
        }
        self.auth.still_valid(&self.identity).await
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
        metrics().resyncs.inc();
        // Notes on the account's own channel may be among what was dropped: read its rooms
        // again, and follow what changed.
        if self.said_hello {
            self.refresh_rooms(socket).await?;
        }
        let rooms: Vec<Arc<str>> = self.cursors.keys().cloned().collect();
        for room in rooms {
            self.replay(socket, &room).await?;
        }
        flush(socket).await
    }

    /// Brings the subscriptions in line with the account's rooms: joins the new ones (telling
    /// the client with a `room` frame), leaves the ones it is no longer in (a `left` frame).
    async fn refresh_rooms(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let Some(user) = self.identity.user.clone() else {
            return Ok(());
        };
        let rooms = self.chat.rooms(&user).await.map_err(storage_failed)?;
        let gone: Vec<Arc<str>> = self
            .cursors
            .keys()
            .filter(|r| !rooms.iter().any(|i| *i.name == ***r))
            .cloned()
            .collect();
        for room in gone {
            // A public room joined as a preview stays; one the account may no longer read goes.
            if self
                .chat
                .authorize(Some(&user), &room, Action::Read)
                .await
                .is_err()
            {
                self.drop_room(socket, &room).await?;
            }
        }
        for info in rooms {
            if !self.cursors.contains_key(info.name.as_str()) {
                let (name, head) = (info.name.clone(), info.head);
                feed(
                    socket,
                    text(encode(&ServerFrame::Room(RoomUpdate { room: info }))),
                )
                .await?;
                self.subscribe(socket, &name, head).await?;
            }
        }
        Ok(())
    }

    /// Stops following a room and tells the client.
    async fn drop_room(&mut self, socket: &mut WebSocket, room: &str) -> Result<(), End> {
        self.sub.leave(room);
        if let Some(p) = &mut self.presence {
            p.unfollow(room);
        }
        if self.cursors.remove(room).is_some() && self.mode == Mode::Rich {
            let left = ServerFrame::Left(Left {
                room: room.to_owned(),
            });
            feed(socket, text(encode(&left))).await?;
        }
        Ok(())
    }

    /// What the account's own channel asks: follow a room it is now in, drop one it left, or
    /// pass a frame on.
    async fn on_personal(
        &mut self,
        socket: &mut WebSocket,
        d: &Delivery,
        note: &Personal,
    ) -> Result<(), End> {
        if self.mode != Mode::Rich {
            return Ok(());
        }
        match note {
            Personal::Frame => feed(socket, text(d.rich.clone())).await,
            Personal::Left { room } => self.drop_room(socket, room).await,
            Personal::Joined { room, from } => {
                let Some(user) = self.identity.user.clone() else {
                    return Ok(());
                };
                // Read as this account sees it now: a removal may already have followed.
                let info = match self.chat.room(Some(&user), room).await {
                    Ok(info) if info.member => info,
                    Ok(_) | Err(ChatError::UnknownRoom(_)) => return Ok(()),
                    Err(e) => return Err(storage_failed(e)),
                };
                feed(
                    socket,
                    text(encode(&ServerFrame::Room(RoomUpdate { room: info }))),
                )
                .await?;
                // A public room it was following as a preview goes on from its cursor.
                if self.cursors.contains_key(room) {
                    return Ok(());
                }
                self.subscribe(socket, room, from.saturating_sub(1)).await
            }
        }
    }

    /// Subscribes to a room and replays it from `cursor`, then says `joined`.
    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        room: &str,
        cursor: u64,
    ) -> Result<(), End> {
        self.sub.join(room);
        let room: Arc<str> = Arc::from(room);
        self.cursors.insert(Arc::clone(&room), cursor);
        self.replay(socket, &room).await?;
        if self.mode == Mode::Rich {
            let head = self.cursors.get(&room).copied().unwrap_or(cursor);
            let joined = ServerFrame::Joined(Joined {
                room: room.to_string(),
                head,
            });
            feed(socket, text(encode(&joined))).await?;
        }
        // Who of the room is here, then their changes as they come.
        if let Some(p) = &mut self.presence {
            p.follow(&room);
            let users = self.chat.presence.snapshot(&room);
            let snapshot = ServerFrame::Presence(PresenceUpdate {
                room: Some(room.to_string()),
                users,
            });
            feed(socket, text(encode(&snapshot))).await?;
        }
        Ok(())
    }

    /// Queues one delivery for the socket, first replaying from storage any seqs it skipped.
    async fn deliver(&mut self, socket: &mut WebSocket, d: Arc<Delivery>) -> Result<(), End> {
        if let Some(note) = &d.personal {
            return Box::pin(self.on_personal(socket, &d, note)).await;
        }
        if d.ephemeral {
            // Typing and presence: passed on as they are, to rich clients only.
            if self.mode == Mode::Rich {
                return feed(socket, text(d.rich.clone())).await;
            }
            return Ok(());
        }
        let Some(cursor) = self.cursors.get_mut(&d.room) else {
            return Ok(()); // left the room since it was queued
        };
        if d.seq <= *cursor {
            return Ok(()); // already sent by a replay
        }
        if d.seq == *cursor + 1 {
            *cursor = d.seq;
            self.messages_out = self.messages_out.saturating_add(1);
            let m = metrics();
            m.deliveries.inc();
            m.delivery_seconds.observe(d.at.elapsed().as_secs_f64());
            let bytes = match self.mode {
                Mode::Rich => d.rich.clone(),
                // Classic clients see chat messages only.
                Mode::Classic if d.classic.is_empty() => return Ok(()),
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
        let mut sent = 0u64;
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
            sent += len as u64;
            for m in batch {
                cursor = m.seq;
                self.messages_out = self.messages_out.saturating_add(1);
                let frame = match self.mode {
                    Mode::Rich => encode(&ServerFrame::Message(m)),
                    Mode::Classic => match classic_frame(&m) {
                        Some(frame) => frame,
                        None => continue,
                    },
                };
                feed(socket, text(frame)).await?;
            }
            self.cursors.insert(Arc::clone(room), cursor);
            if len < REPLAY_BATCH {
                self.chat.hub.note_replayed(room, cursor);
                metrics().replays.observe(sent as f64);
                return Ok(());
            }
            flush(socket).await?;
        }
    }

    /// Subscribes a classic connection to the default room at its head, before the 101.
    async fn enter_default_room(&mut self) -> Result<(), Response> {
        match self
            .chat
            .authorize(self.identity.user.as_ref(), DEFAULT_ROOM, Action::Read)
            .await
        {
            Ok(_) => {}
            Err(ChatError::Store(e)) => {
                tracing::error!(error = %e, "cannot read the default room");
                return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
            }
            Err(e) => return Err(AppError::Chat(e).into_response()),
        }
        self.sub.join(DEFAULT_ROOM);
        // Read the head now that live deliveries are queued for it.
        let head = match self.chat.store.head(DEFAULT_ROOM).await {
            Ok(h) => h.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the default room");
                return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
            }
        };
        self.cursors.insert(Arc::from(DEFAULT_ROOM), head);
        Ok(())
    }

    /// Joins a room the caller may read: subscribe first, then replay from the cursor, so
    /// nothing falls in between. Rooms the caller may not read are answered as unknown.
    async fn join(
        &mut self,
        socket: &mut WebSocket,
        room: &str,
        after: Option<u64>,
    ) -> Result<(), End> {
        let access = self
            .chat
            .authorize(self.identity.user.as_ref(), room, Action::Read)
            .await;
        match access {
            Ok(_) => {}
            Err(ChatError::Store(e)) => return Err(storage_failed(ChatError::Store(e))),
            Err(e) => {
                let reference = Some(room.chars().take(64).collect());
                return send(socket, chat_error(&e, reference)).await;
            }
        }
        if let Some(&cursor) = self.cursors.get(room) {
            // Already joined: its cursor stands (moving it would skip or repeat messages).
            if self.mode == Mode::Rich {
                let joined = ServerFrame::Joined(Joined {
                    room: room.to_owned(),
                    head: cursor,
                });
                send(socket, text(encode(&joined))).await?;
            }
            return Ok(());
        }
        self.sub.join(room);
        // Read the head now that live deliveries are queued for us.
        let head = self.head(room).await?.unwrap_or_default();
        let cursor = match after {
            None => head,
            Some(after) if after > head || head - after > MAX_JOIN_REPLAY => {
                // The client has seen seqs this room never had (its history was reset), or is so
                // far behind that it should page over HTTP: say so, and go on live from the head.
                if self.mode == Mode::Rich {
                    feed(
                        socket,
                        text(encode(&ServerFrame::HistoryGap(HistoryGap {
                            room: room.to_owned(),
                            from: after,
                        }))),
                    )
                    .await?;
                }
                head
            }
            Some(after) => after,
        };
        self.subscribe(socket, room, cursor).await?;
        flush(socket).await
    }

    /// The connection's account; a guest is told the frame is for accounts only.
    async fn account(
        &self,
        socket: &mut WebSocket,
        reference: &str,
    ) -> Result<Option<crate::server::store::User>, End> {
        match &self.identity.user {
            Some(u) => Ok(Some(u.clone())),
            None => {
                let e = ChatError::Forbidden("guests cannot do that; sign up first");
                send(socket, chat_error(&e, Some(reference.to_owned()))).await?;
                Ok(None)
            }
        }
    }

    async fn head(&self, room: &str) -> Result<Option<u64>, End> {
        self.chat.store.head(room).await.map_err(|e| {
            tracing::error!(error = %e, "reading room head failed");
            End::Close(close::INTERNAL, "storage unavailable")
        })
    }

    /// Parses a frame and admits it under the account's message budget.
    async fn on_text(&mut self, socket: &mut WebSocket, t: Utf8Bytes) -> Result<(), End> {
        self.frames_in = self.frames_in.saturating_add(1);
        let input = match self.mode {
            Mode::Rich => Input::Rich(protocol::parse_client_frame(&t)),
            Mode::Classic => Input::Classic(
                serde_json::from_str::<ClassicMessage>(&t)
                    .map_err(|e| format!("expected {{\"user\",\"message\"}} JSON: {e}")),
            ),
        };
        metrics().frame_in(input.kind());
        self.admit(socket, input, false).await
    }

    /// Handles a frame if the budget allows; otherwise holds it and stops reading until it does
    /// (the client feels TCP back-pressure, and what it sent arrives late but whole). A client
    /// that stays over its rate for [`RATE_PATIENCE`] is closed with 1008.
    async fn admit(
        &mut self,
        socket: &mut WebSocket,
        input: Input,
        waited: bool,
    ) -> Result<(), End> {
        let now = Instant::now();
        // Typing and presence have an allowance of their own and never touch the message
        // budget: past it they are dropped, and a client that keeps sending them past it for
        // [`RATE_PATIENCE`] is closed.
        if input.is_signal() {
            if self.signal_allowed(now) {
                self.signals_over_since = None;
                return match input {
                    Input::Rich(frame) => self.on_rich(socket, frame).await,
                    Input::Classic(msg) => self.on_classic(msg).await,
                };
            }
            let since = *self.signals_over_since.get_or_insert(now);
            if now.duration_since(since) >= RATE_PATIENCE {
                return Err(End::Close(
                    close::POLICY,
                    "typing signals too fast for too long",
                ));
            }
            // A presence status is state: the latest must win, so it is applied even past the
            // allowance (it only sets a value; the flush sends at most one change a second).
            // Typing past it is dropped.
            if let Input::Rich(frame @ Ok(ClientFrame::Presence { .. })) = input {
                return self.on_rich(socket, frame).await;
            }
            return Ok(());
        }
        let taken = self.rates.take(self.rate_key, input.cost());
        match taken {
            Ok(()) => {
                if !waited {
                    // Within its rate again.
                    self.over_since = None;
                }
                self.last_pass = Some(now);
                match input {
                    Input::Rich(frame) => self.on_rich(socket, frame).await,
                    Input::Classic(msg) => self.on_classic(msg).await,
                }
            }
            Err(wait) => {
                // Over the rate "without a break" means each frame came right after the last one
                // was let through; a client that paused since starts a new count.
                // A held frame tried again is the same stretch over the rate, however late the
                // server got to it (a loaded server must not reset the clock by being slow).
                let paused = !waited
                    && self
                        .last_pass
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(1));
                if paused || self.over_since.is_none() {
                    self.over_since = Some(now);
                }
                let since = self.over_since.unwrap_or(now);
                if now.duration_since(since) >= RATE_PATIENCE {
                    return Err(End::Close(
                        close::POLICY,
                        "message rate exceeded for too long",
                    ));
                }
                self.held = Some(Box::new(input));
                self.paused_until = Some(now + wait);
                Ok(())
            }
        }
    }

    /// Takes one from the signal allowance, if there is one.
    fn signal_allowed(&mut self, now: Instant) -> bool {
        if let Some(at) = self.signal_at {
            let grown = now.duration_since(at).as_millis() / SIGNAL_EVERY.as_millis().max(1);
            if grown > 0 {
                let grown = u8::try_from(grown).unwrap_or(u8::MAX);
                self.signal_tokens = self.signal_tokens.saturating_add(grown).min(SIGNAL_BURST);
                self.signal_at = Some(now);
            }
        } else {
            self.signal_at = Some(now);
        }
        if self.signal_tokens == 0 {
            return false;
        }
        self.signal_tokens -= 1;
        true
    }

    /// A classic client only ever gets classic frames: what it cannot be told in one (a bad
    /// frame, a refused message) ends the connection with a close code and a reason.
    async fn on_classic(&mut self, msg: Result<ClassicMessage, String>) -> Result<(), End> {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "bad classic frame");
                return Err(End::Close(
                    close::INVALID_PAYLOAD,
                    "expected {\"user\",\"message\"} JSON",
                ));
            }
        };
        if msg.message.trim().is_empty() {
            return Ok(()); // nothing to store, nothing lost
        }
        let author = self
            .identity
            .author(Some(&msg.user))
            .map_err(|_| End::Close(close::INVALID_PAYLOAD, "invalid user name"))?;
        match self
            .chat
            .post(
                self.identity.user.as_ref(),
                DEFAULT_ROOM,
                server_client_id(),
                author,
                msg.message,
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ChatError::Invalid(inv)) if inv.code == ErrorCode::MessageTooLong => {
                Err(End::Close(close::TOO_BIG, "message too long"))
            }
            Err(ChatError::Invalid(_)) => {
                Err(End::Close(close::INVALID_PAYLOAD, "invalid message"))
            }
            Err(ChatError::Store(e)) => {
                tracing::error!(error = %e, "storing a classic message failed");
                Err(End::Close(close::INTERNAL, "storage unavailable"))
            }
            Err(e) => {
                tracing::debug!(error = %e, "a classic message was refused");
                Err(End::Close(close::POLICY, "not allowed in this room"))
            }
        }
    }

    async fn on_rich(
        &mut self,
        socket: &mut WebSocket,
        frame: Result<ClientFrame, Invalid>,
    ) -> Result<(), End> {
        let frame = match frame {
            Ok(f) => f,
            Err(inv) => return send(socket, error_frame(inv.code, inv.message, None)).await,
        };
        match frame {
            ClientFrame::Hello { resume, user } => {
                if resume.len() > MAX_RESUME_ROOMS {
                    let message = format!("hello may resume at most {MAX_RESUME_ROOMS} rooms");
                    return send(socket, error_frame(ErrorCode::InvalidFrame, message, None)).await;
                }
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
                let user = user.display_name;
                self.user = Some(user.clone());
                // An account follows its own channel first (so no membership change falls
                // between reading its rooms and subscribing), then every room it is in.
                let account = self.identity.user.clone();
                let rooms: Vec<RoomInfo> = match &account {
                    Some(me) => {
                        self.sub.join(&personal_channel(&me.username));
                        let now = crate::server::auth::now_ms();
                        self.presence =
                            Some(self.chat.presence.connect(&me.username, self.sub.id(), now));
                        self.chat.rooms(me).await.map_err(storage_failed)?
                    }
                    None => Vec::new(),
                };
                feed(
                    socket,
                    text(encode(&ServerFrame::Welcome(Welcome {
                        user,
                        session: format!("c{}", self.sub.id()),
                        protocol: SUBPROTOCOL.to_owned(),
                        user_id: account.as_ref().map(|u| u.id),
                        username: account.map(|u| u.username),
                        rooms: rooms.clone(),
                    }))),
                )
                .await?;
                for (room, after) in resume {
                    self.join(socket, &room, Some(after)).await?;
                }
                // The rooms it did not resume go on live from their head.
                for info in rooms {
                    if !self.cursors.contains_key(info.name.as_str()) {
                        self.subscribe(socket, &info.name, info.head).await?;
                    }
                }
                flush(socket).await
            }
            ClientFrame::Join { room, after } => self.join(socket, &room, after).await,
            ClientFrame::Leave { room } => {
                self.sub.leave(&room);
                if let Some(p) = &mut self.presence {
                    p.unfollow(&room);
                }
                self.cursors.remove(room.as_str());
                Ok(())
            }
            ClientFrame::Send {
                room,
                client_id,
                body,
                user,
                reply_to,
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
                let posted = self
                    .chat
                    .post(
                        self.identity.user.as_ref(),
                        &room,
                        client_id.clone(),
                        author,
                        body,
                        reply_to,
                    )
                    .await;
                acked(socket, posted, client_id, room).await
            }
            ClientFrame::Edit {
                room,
                client_id,
                target,
                body,
            } => {
                let Some(user) = self.account(socket, &client_id).await? else {
                    return Ok(());
                };
                let edited = self
                    .chat
                    .edit(&user, &room, client_id.clone(), target, body)
                    .await;
                acked(socket, edited, client_id, room).await
            }
            ClientFrame::Delete {
                room,
                client_id,
                target,
            } => {
                let Some(user) = self.account(socket, &client_id).await? else {
                    return Ok(());
                };
                let deleted = self
                    .chat
                    .delete(&user, &room, client_id.clone(), target)
                    .await;
                acked(socket, deleted, client_id, room).await
            }
            ClientFrame::React {
                room,
                target,
                emoji,
                on,
            } => {
                let Some(user) = self.account(socket, &room).await? else {
                    return Ok(());
                };
                match self.chat.react(&user, &room, target, &emoji, on).await {
                    // The reaction's event comes back like any other; nothing to add.
                    Ok(_) => Ok(()),
                    Err(ChatError::Store(e)) => Err(storage_failed(ChatError::Store(e))),
                    Err(e) => send(socket, chat_error(&e, Some(room))).await,
                }
            }
            ClientFrame::Typing { room, stop } => {
                // Only where the session is, only for accounts; beyond that nothing is said (a
                // typing indicator is not worth an error frame).
                let Some(user) = self.identity.user.clone() else {
                    return Ok(());
                };
                if !self.cursors.contains_key(room.as_str()) {
                    return Ok(());
                }
                self.chat
                    .typing(&user, &room, stop)
                    .await
                    .map_err(storage_failed)
            }
            ClientFrame::Presence { status } => {
                if let Some(p) = &self.presence {
                    p.set(status, crate::server::auth::now_ms());
                }
                Ok(())
            }
            ClientFrame::Read { room, seq } => {
                let Some(user) = self.identity.user.clone() else {
                    let e = ChatError::Forbidden("guests have no read positions");
                    return send(socket, chat_error(&e, Some(room))).await;
                };
                match self.chat.mark_read(&user, &room, seq).await {
                    // Every socket of the account, this one included, hears of it on its own
                    // channel.
                    Ok(_) => Ok(()),
                    Err(ChatError::Store(e)) => Err(storage_failed(ChatError::Store(e))),
                    Err(e) => send(socket, chat_error(&e, Some(room))).await,
                }
            }
            ClientFrame::Ping { nonce } => {
                send(socket, text(encode(&ServerFrame::Pong(Pong { nonce })))).await
            }
        }
    }
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

/// Answers a durable change the client asked for: `ack` once stored, or the error.
async fn acked(
    socket: &mut WebSocket,
    done: Result<crate::server::store::Appended, ChatError>,
    client_id: String,
    room: String,
) -> Result<(), End> {
    match done {
        Ok(a) => {
            let ack = ServerFrame::Ack(Ack {
                client_id,
                room,
                seq: a.message.seq,
            });
            send(socket, text(encode(&ack))).await
        }
        Err(e) => send(socket, chat_error(&e, Some(client_id))).await,
    }
}

fn chat_error(e: &ChatError, reference: Option<String>) -> Message {
    if let ChatError::Store(inner) = e {
        tracing::error!(error = %inner, "storing a message failed");
    }
    error_frame(e.code(), e.public_message(), reference)
}

/// The close for a connection whose storage failed under it.
fn storage_failed(e: ChatError) -> End {
    tracing::error!(error = %e, "storage failed under a connection");
    End::Close(close::INTERNAL, "storage unavailable")
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
    count_out(&msg);
    bounded(send_timeout(), socket.feed(msg)).await
}

async fn flush(socket: &mut WebSocket) -> Result<(), End> {
    bounded(send_timeout(), socket.flush()).await
}

async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), End> {
    count_out(&msg);
    bounded(send_timeout(), socket.send(msg)).await
}

/// Counts a text frame in `hubbub_frames_out_total` by its type, which every `hubbub.v1` frame
/// names first; a frame without one is a classic client's.
fn count_out(msg: &Message) {
    let Message::Text(t) = msg else {
        return;
    };
    let kind = match t.as_str().strip_prefix("{\"type\":\"") {
        None => Out::Classic,
        Some(rest) if rest.starts_with("message\"") => Out::Event,
        Some(rest) if rest.starts_with("typing\"") => Out::Typing,
        Some(rest) if rest.starts_with("presence\"") => Out::Presence,
        Some(rest) if rest.starts_with("ack\"") => Out::Ack,
        Some(rest) if rest.starts_with("error\"") => Out::Error,
        Some(_) => Out::Control,
    };
    metrics().frame_out(kind);
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
