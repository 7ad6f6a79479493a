//! The one path by which a message enters the system, whichever door it came through: validate,
//! store durably, then fan out to the room.

use crate::protocol::api::SearchHit;
use crate::protocol::ReadPosition;
use crate::protocol::{
    self, ChatMessage, ClassicMessage, ErrorCode, EventKind, Invalid, MemberInfo, RoomInfo,
    RoomKind, ServerFrame, TypingNote, Visibility,
};
use crate::server::access::{self, Action};
use crate::server::bus::{Bus, Note};
use crate::server::faults;
use crate::server::files::BlobStore;
use crate::server::hub::{personal_channel, Delivery, Hub, Personal};
use crate::server::presence::Presence;
use crate::server::sequencer::Sequencer;
use crate::server::store::{
    Appended, Author, Change, CommitFeed, DynStore, FeedError, Member, NewAttachment, NewMessage,
    NewRoom, ReadState, RoomAccess, StoreError, User,
};
use crate::server::store::{Search, Term};
use crate::server::tasks::{supervise, Tasks};
use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The name `/healthz` gives the fan-out task.
pub const FANOUT_TASK: &str = "fanout";

/// Storage and fan-out together, behind one cheap handle.
#[derive(Clone)]
pub struct Chat {
    pub store: DynStore,
    /// Where attachments' bytes are kept.
    pub blobs: Arc<dyn BlobStore>,
    pub hub: Hub,
    pub limits: RoomLimits,
    /// Who is here (sessions aggregated per person), sent out through the hub.
    pub presence: Presence,
    /// The bus to the other nodes of a cluster (a no-op on a single node).
    pub bus: Bus,
    /// Rooms' member counts, a little stale at most, for deciding whether typing is relayed.
    sizes: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

/// How long a room's member count is trusted for typing.
const SIZE_FOR: Duration = Duration::from_secs(30);
/// Room sizes kept at most; past it the stale ones go.
const SIZES_KEPT: usize = 10_000;

/// The name `/healthz` gives the presence task.
pub const PRESENCE_TASK: &str = "presence";

/// Hands every committed message to the hub, in commit order: deliveries leave in seq order
/// (members never see a gap they must replay from storage), and a message is delivered even when
/// the request or socket that posted it has gone. Ends when the store does.
async fn fan_out(mut feed: CommitFeed, hub: Hub) {
    loop {
        match feed.recv().await {
            Ok(message) => {
                if faults::hit("fanout-panic", &message.body) {
                    panic!("injected fault: fanout-panic");
                }
                hand_out(&hub, &message);
            }
            Err(FeedError::Lagged(missed)) => {
                // Some commits were never handed out: every member re-reads from storage.
                tracing::warn!(
                    missed,
                    "fan-out fell behind the commits; resyncing every member"
                );
                hub.resync_all();
            }
            Err(FeedError::Closed) => return,
        }
    }
}

/// Hands out one event: to its room's members, and to the account a membership event is about.
fn hand_out(hub: &Hub, message: &ChatMessage) {
    hub.publish(delivery(message));
    if let Some(note) = membership_note(message) {
        hub.publish(note);
    }
}

/// How often a cluster node compares the heads of the rooms it follows with the database.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often a cluster node looks for gaps that waited long enough.
const GAP_TICK: Duration = Duration::from_millis(50);
/// Events read for one gap at most per read.
const FILL_BATCH: usize = 1_000;
/// How long a gap's read may take before it is tried again later.
const FILL_TIMEOUT: Duration = Duration::from_secs(2);

/// The fan-out of a cluster node: its own commits (published on the bus for the other nodes)
/// and the other nodes' commits from the bus, ordered per room by the sequencer; a gap is read
/// from the database once for the node, and a sweep every second finds rooms whose last events
/// never arrived. Ends when the store does.
async fn fan_out_cluster(
    mut feed: CommitFeed,
    hub: Hub,
    store: DynStore,
    bus: Bus,
    remote: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ChatMessage>>>,
) {
    let mut remote = remote.lock().await;
    let mut seq = Sequencer::default();
    let mut gaps = tokio::time::interval(GAP_TICK);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    gaps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropped = 0u64;
    loop {
        let out = tokio::select! {
            local = feed.recv() => match local {
                Ok(message) => {
                    if faults::hit("fanout-panic", &message.body) {
                        panic!("injected fault: fanout-panic");
                    }
                    let message = Arc::unwrap_or_clone(message);
                    bus.publish(Note::Commit {
                        m: Box::new(message.clone()),
                    });
                    let room = message.room.clone();
                    seq.offer(message, Instant::now(), || hub.take_floor(&room))
                }
                Err(FeedError::Lagged(missed)) => {
                    tracing::warn!(missed, "fan-out fell behind the commits; resyncing every member");
                    hub.resync_all();
                    Vec::new()
                }
                Err(FeedError::Closed) => return,
            },
            Some(message) = remote.recv() => {
                // The lossy-bus test drops every Nth note it hears of.
                if let Some(n) = faults::number("bus-drop") {
                    dropped += 1;
                    if dropped.is_multiple_of(n.max(1)) {
                        continue;
                    }
                }
                let room = message.room.clone();
                seq.offer(message, Instant::now(), || hub.take_floor(&room))
            }
            _ = gaps.tick() => {
                let mut out = Vec::new();
                for gap in seq.due(Instant::now()) {
                    out.extend(fill(&mut seq, &hub, &store, gap).await);
                }
                out
            }
            _ = sweep.tick() => {
                let rooms = hub.followed_rooms();
                let floors = hub.take_floors();
                let mut out = Vec::new();
                match tokio::time::timeout(FILL_TIMEOUT, store.heads(&rooms)).await {
                    Ok(Ok(heads)) => {
                        for gap in seq.sweep(&heads, &floors, Instant::now()) {
                            out.extend(fill(&mut seq, &hub, &store, gap).await);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "sweep: reading the rooms' heads failed"),
                    Err(_) => tracing::warn!("sweep: reading the rooms' heads timed out"),
                }
                let now = Instant::now();
                seq.forget_idle(now, |room| hub.member_count(room) > 0);
                out
            }
        };
        for message in &out {
            hand_out(&hub, message);
        }
    }
}

/// Reads a gap's events from the database (once for the node) and puts them in place; a room
/// nobody here follows is not read, its gap skipped.
async fn fill(
    seq: &mut Sequencer,
    hub: &Hub,
    store: &DynStore,
    gap: crate::server::sequencer::Gap,
) -> Vec<ChatMessage> {
    if hub.member_count(&gap.room) == 0 {
        return seq.skip(&gap.room);
    }
    let mut read = Vec::new();
    let mut after = gap.after;
    hub.count_gap_read();
    while after < gap.upto {
        match tokio::time::timeout(FILL_TIMEOUT, store.after(&gap.room, after, FILL_BATCH)).await {
            Ok(Ok(batch)) => {
                let Some(last) = batch.last() else { break };
                after = last.seq;
                let short = batch.len() < FILL_BATCH;
                read.extend(batch);
                if short {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(room = %gap.room, error = %e, "filling a gap from the database failed");
                break;
            }
            Err(_) => {
                tracing::warn!(room = %gap.room, "filling a gap from the database timed out");
                break;
            }
        }
    }
    tracing::debug!(room = %gap.room, after = gap.after, read = read.len(), "gap filled from the database");
    seq.fill(&gap.room, read, Instant::now())
}

/// Encodes a frame the server built itself; serialising these plain structs cannot fail.
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).expect("BUG: server frames always serialise"))
}

/// The classic frame of an event: only chat messages have one.
pub fn classic_frame(m: &ChatMessage) -> Option<Utf8Bytes> {
    m.is_message().then(|| {
        let classic = ClassicMessage {
            user: m.user.clone(),
            message: m.body.clone(),
        };
        Utf8Bytes::from(
            serde_json::to_string(&classic).expect("BUG: classic frames always serialise"),
        )
    })
}

fn delivery(m: &ChatMessage) -> Delivery {
    Delivery {
        room: m.room.as_str().into(),
        seq: m.seq,
        rich: encode(&ServerFrame::Message(m.clone())),
        classic: classic_frame(m).unwrap_or_default(),
        personal: None,
        ephemeral: false,
        at: std::time::Instant::now(),
    }
}

/// What a membership event asks of the sockets of the account it is about: to subscribe to the
/// room (a room made, a join, an invitation) or to leave it (left, removed).
fn membership_note(m: &ChatMessage) -> Option<Delivery> {
    let room: Arc<str> = m.room.as_str().into();
    let (who, personal) = match m.kind {
        EventKind::RoomCreated => (
            m.username.as_deref()?,
            Personal::Joined { room, from: m.seq },
        ),
        k if k.adds_member() => (m.member.as_deref()?, Personal::Joined { room, from: m.seq }),
        k if k.removes_member() => (m.member.as_deref()?, Personal::Left { room }),
        _ => return None,
    };
    Some(Delivery {
        room: personal_channel(who).into(),
        seq: 0,
        rich: Utf8Bytes::default(),
        classic: Utf8Bytes::default(),
        personal: Some(personal),
        ephemeral: false,
        at: std::time::Instant::now(),
    })
}

/// Limits on rooms and messages, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct RoomLimits {
    /// Most members a room may have.
    pub max_members: u64,
    /// Most rooms one account may make in an hour.
    pub rooms_per_hour: u64,
    /// How long after posting a message its author may edit it (`None`: any time).
    pub edit_window: Option<std::time::Duration>,
    /// Most different emoji one message may have as reactions.
    pub max_reactions: u64,
    /// Typing is not relayed in rooms with more members than this.
    pub typing_max_members: u64,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_members: 10_000,
            rooms_per_hour: 10,
            edit_window: Some(std::time::Duration::from_secs(15 * 60)),
            max_reactions: 20,
            typing_max_members: 100,
        }
    }
}

/// Why the chat refused or failed: the domain's own error, mapped to HTTP statuses in
/// `error.rs` and to error frames in `ws.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such room, or one the caller may not see.
    #[error("no room named {0:?}")]
    UnknownRoom(String),
    #[error("you are not a member of {0:?}")]
    NotMember(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0:?} is archived: it can be read, not written")]
    Archived(String),
    #[error("a room named {0:?} exists already")]
    RoomExists(String),
    #[error("no account is named {0:?}")]
    UnknownUser(String),
    /// A size limit: a full room, too many people for a DM.
    #[error("{0}")]
    Limit(String),
    /// The caller did this too often lately (made too many rooms).
    #[error("{0}")]
    TooOften(String),
    #[error("there is no message {0} in this room")]
    UnknownMessage(u64),
    #[error("a message can be edited only in the {0} minutes after it was sent")]
    EditWindowClosed(u64),
    #[error("that message was deleted")]
    MessageDeleted,
    /// A file over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The account's files would pass its quota.
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        ChatError::Store(e)
    }
}

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::Invalid(i) => i.code,
            ChatError::UnknownRoom(_) => ErrorCode::UnknownRoom,
            ChatError::NotMember(_) => ErrorCode::NotMember,
            ChatError::Forbidden(_) => ErrorCode::Forbidden,
            ChatError::Archived(_) => ErrorCode::RoomArchived,
            ChatError::RoomExists(_) => ErrorCode::RoomExists,
            ChatError::UnknownUser(_) => ErrorCode::UnknownUser,
            ChatError::Limit(_) => ErrorCode::LimitReached,
            ChatError::TooOften(_) => ErrorCode::RateLimited,
            ChatError::UnknownMessage(_) => ErrorCode::UnknownMessage,
            ChatError::EditWindowClosed(_) => ErrorCode::EditWindowClosed,
            ChatError::MessageDeleted => ErrorCode::MessageDeleted,
            ChatError::TooLarge(_) => ErrorCode::TooLarge,
            ChatError::Quota(_) => ErrorCode::QuotaExceeded,
            ChatError::Store(_) => ErrorCode::Internal,
        }
    }

    /// The message a client may see: internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            ChatError::Store(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Like [`ChatError::from_store`], for an event about message `target`.
    fn about_message(e: StoreError, room: &str, target: Option<u64>) -> Self {
        match e {
            StoreError::UnknownMessage => ChatError::UnknownMessage(target.unwrap_or_default()),
            other => ChatError::from_store(other, room),
        }
    }

    /// Maps what the store refused in its transaction (a race with another change) to what the
    /// caller is told.
    fn from_store(e: StoreError, room: &str) -> Self {
        match e {
            StoreError::RoomNotFound => ChatError::UnknownRoom(room.to_owned()),
            StoreError::RoomArchived => ChatError::Archived(room.to_owned()),
            StoreError::NotMember => ChatError::NotMember(room.to_owned()),
            StoreError::RoomExists => ChatError::RoomExists(room.to_owned()),
            StoreError::RoomFull => ChatError::Limit(format!("{room:?} is full")),
            StoreError::MessageDeleted => ChatError::MessageDeleted,
            StoreError::NotAuthor => {
                ChatError::Forbidden("only its author (or the room's owner, to delete) may")
            }
            other => ChatError::Store(other),
        }
    }
}

/// A room to make, as the caller asked for it.
#[derive(Clone, Debug)]
pub struct RoomRequest {
    pub name: String,
    pub title: Option<String>,
    pub topic: Option<String>,
    pub visibility: Visibility,
}

/// A page of a room's history.
pub struct Page {
    pub head: u64,
    pub messages: Vec<ChatMessage>,
}

/// Most people in a direct message, the caller included.
pub const MAX_DM_MEMBERS: usize = 8;
/// Longest room title, in characters.
pub const MAX_TITLE_CHARS: usize = 80;
/// Longest topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 250;

impl Chat {
    /// Joins storage and the hub, and starts the fan-out from the store's commit feed under
    /// supervision: if it panics, a new one subscribes and every member resyncs from storage
    /// (what was committed meanwhile is read there).
    pub fn new(store: DynStore, blobs: Arc<dyn BlobStore>, hub: Hub, tasks: Tasks) -> Self {
        Self::with_limits(store, blobs, hub, tasks, RoomLimits::default())
    }

    pub fn with_limits(
        store: DynStore,
        blobs: Arc<dyn BlobStore>,
        hub: Hub,
        tasks: Tasks,
        limits: RoomLimits,
    ) -> Self {
        Self::build(store, blobs, hub, tasks, limits, None)
    }

    /// A chat that is one node of a cluster: its commits go out on `bus`, and the other nodes'
    /// come in from `commits`.
    pub fn in_cluster(
        store: DynStore,
        blobs: Arc<dyn BlobStore>,
        hub: Hub,
        tasks: Tasks,
        limits: RoomLimits,
        bus: Bus,
        commits: tokio::sync::mpsc::Receiver<ChatMessage>,
    ) -> Self {
        Self::build(store, blobs, hub, tasks, limits, Some((bus, commits)))
    }

    fn build(
        store: DynStore,
        blobs: Arc<dyn BlobStore>,
        hub: Hub,
        tasks: Tasks,
        limits: RoomLimits,
        cluster: Option<(Bus, tokio::sync::mpsc::Receiver<ChatMessage>)>,
    ) -> Self {
        let (s, h) = (store.clone(), hub.clone());
        let bus = match cluster {
            None => {
                tokio::spawn(supervise(tasks.clone(), FANOUT_TASK, move |run| {
                    let feed = s.commits();
                    if run > 0 {
                        h.resync_all();
                    }
                    fan_out(feed, h.clone())
                }));
                Bus::none()
            }
            Some((bus, commits)) => {
                hub.set_clustered();
                let remote = Arc::new(tokio::sync::Mutex::new(commits));
                let b = bus.clone();
                tokio::spawn(supervise(tasks.clone(), FANOUT_TASK, move |run| {
                    let feed = s.commits();
                    if run > 0 {
                        h.resync_all();
                    }
                    fan_out_cluster(feed, h.clone(), s.clone(), b.clone(), Arc::clone(&remote))
                }));
                bus
            }
        };
        let presence = Presence::with_bus(hub.clone(), bus.clone());
        tokio::spawn(supervise(tasks, PRESENCE_TASK, {
            let p = presence.clone();
            move |_| p.clone().run()
        }));
        Chat {
            store,
            blobs,
            hub,
            limits,
            presence,
            bus,
            sizes: Arc::default(),
        }
    }

    /// Tells the room's other sessions that `user` is typing there, or stopped; nothing is
    /// stored. Rooms with more members than the limit get no typing at all, and a room the user
    /// may not post in gets none of theirs. The caller has checked that the session follows the
    /// room.
    pub async fn typing(&self, user: &User, room: &str, stop: bool) -> Result<(), ChatError> {
        // Only those who may post there type there (not a public room followed as a preview).
        match self.authorize(Some(user), room, Action::Post).await {
            Ok(_) => {}
            Err(ChatError::Store(e)) => return Err(ChatError::Store(e)),
            Err(_) => return Ok(()),
        }
        if self.room_size(room).await? > self.limits.typing_max_members {
            return Ok(());
        }
        let frame = ServerFrame::Typing(TypingNote {
            room: room.to_owned(),
            user: user.display_name.clone(),
            username: user.username.clone(),
            stop,
        });
        self.relay(Delivery {
            room: room.into(),
            seq: 0,
            rich: encode(&frame),
            classic: Utf8Bytes::default(),
            personal: None,
            ephemeral: true,
            at: std::time::Instant::now(),
        });
        Ok(())
    }

    /// Hands a frame that is not stored (typing, a read position) to the members here, and to
    /// those on the other nodes of a cluster.
    fn relay(&self, d: Delivery) {
        if self.bus.enabled() {
            self.bus.publish(Note::Relay {
                room: d.room.to_string(),
                frame: d.rich.as_str().to_owned(),
                personal: d.personal.is_some(),
            });
        }
        self.hub.publish(d);
    }

    /// Hands a frame relayed by another node to the members here.
    pub fn relayed(&self, room: String, frame: String, personal: bool) {
        self.hub.publish(Delivery {
            room: room.into(),
            seq: 0,
            rich: Utf8Bytes::from(frame),
            classic: Utf8Bytes::default(),
            personal: personal.then_some(Personal::Frame),
            // Typing is ephemeral; a read position is not (it must not be shed).
            ephemeral: !personal,
            at: std::time::Instant::now(),
        });
    }

    /// The room's member count, from a cache refreshed every [`SIZE_FOR`].
    async fn room_size(&self, room: &str) -> Result<u64, ChatError> {
        let cached = {
            let sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
            sizes
                .get(room)
                .filter(|(_, at)| at.elapsed() < SIZE_FOR)
                .map(|(n, _)| *n)
        };
        if let Some(n) = cached {
            return Ok(n);
        }
        let n = self
            .store
            .room_info(room, None)
            .await?
            .map_or(0, |info| info.members);
        let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        if sizes.len() >= SIZES_KEPT {
            sizes.retain(|_, (_, at)| at.elapsed() < SIZE_FOR);
        }
        sizes.insert(room.to_owned(), (n, Instant::now()));
        Ok(n)
    }

    /// The one authorisation point (see [`access::authorize`]).
    pub async fn authorize(
        &self,
        user: Option<&User>,
        room: &str,
        action: Action,
    ) -> Result<RoomAccess, ChatError> {
        access::authorize(&self.store, user, room, action).await
    }

    /// Validates and stores a message by `author` (whom the caller identified), if the caller
    /// may post there; once committed, the fan-out task hands it to every member of the room. A
    /// resend of a known `client_id` returns the stored original and is not fanned out again.
    pub async fn post(
        &self,
        user: Option<&User>,
        room: &str,
        client_id: String,
        author: Author,
        body: String,
        reply_to: Option<u64>,
    ) -> Result<Appended, ChatError> {
        protocol::validate_client_id(&client_id)?;
        protocol::validate_body(&body)?;
        self.authorize(user, room, Action::Post).await?;
        let mut message = NewMessage::chat(room, client_id, author, body);
        message.reply_to = reply_to;
        self.store
            .append(message)
            .await
            .map_err(|e| ChatError::about_message(e, room, reply_to))
    }

    /// Posts a message that carries a file (already kept in the blob store), with an optional
    /// caption. If it is not stored, the blob goes unless something else refers to it.
    pub async fn post_file(
        &self,
        user: &User,
        room: &str,
        client_id: String,
        caption: String,
        file: NewAttachment,
    ) -> Result<Appended, ChatError> {
        let sha = file.sha256.clone();
        let done = self
            .post_file_inner(user, room, client_id, caption, file)
            .await;
        if done.is_err() || done.as_ref().is_ok_and(|a| !a.created) {
            self.forget_blob_if_unused(&sha).await;
        }
        done
    }

    async fn post_file_inner(
        &self,
        user: &User,
        room: &str,
        client_id: String,
        caption: String,
        file: NewAttachment,
    ) -> Result<Appended, ChatError> {
        protocol::validate_client_id(&client_id)?;
        if !caption.trim().is_empty() {
            protocol::validate_body(&caption)?;
        }
        self.authorize(Some(user), room, Action::Post).await?;
        let mut message = NewMessage::chat(room, client_id, Author::of(user), caption);
        message.attachment = Some(file);
        self.store
            .append(message)
            .await
            .map_err(|e| ChatError::from_store(e, room))
    }

    /// Deletes a blob nothing refers to.
    async fn forget_blob_if_unused(&self, sha: &str) {
        match self.store.blob_in_use(sha).await {
            Ok(false) => {
                if let Err(e) = self.blobs.delete(sha).await {
                    tracing::warn!(error = %e, "could not delete an unused blob");
                }
            }
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "could not check whether a blob is used"),
        }
    }

    /// Changes the text of the caller's own message `target`, within the edit window. Those it
    /// now mentions who it did not before are notified.
    pub async fn edit(
        &self,
        user: &User,
        room: &str,
        client_id: String,
        target: u64,
        body: String,
    ) -> Result<Appended, ChatError> {
        protocol::validate_client_id(&client_id)?;
        protocol::validate_body(&body)?;
        self.authorize(Some(user), room, Action::Post).await?;
        let window = self.limits.edit_window;
        let change = Change::Edit {
            window_ms: window.map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX)),
        };
        self.change_message(
            user,
            room,
            client_id,
            EventKind::MessageEdited,
            target,
            body,
            change,
        )
        .await
        .map_err(|e| match e {
            ChatError::Store(StoreError::EditWindowClosed) => {
                ChatError::EditWindowClosed(window.map_or(0, |w| w.as_secs() / 60))
            }
            other => other,
        })
    }

    /// Deletes message `target`: the caller's own, or any in a room the caller owns (or as an
    /// admin). Its text goes from the store, the search index and every later answer.
    pub async fn delete(
        &self,
        user: &User,
        room: &str,
        client_id: String,
        target: u64,
    ) -> Result<Appended, ChatError> {
        protocol::validate_client_id(&client_id)?;
        let access = self.authorize(Some(user), room, Action::Post).await?;
        let any_author = user.is_admin || access.owner_id == Some(user.id);
        let change = Change::Delete { any_author };
        let kind = EventKind::MessageDeleted;
        let done = self
            .change_message(user, room, client_id, kind, target, String::new(), change)
            .await?;
        // Its files go with it, once the delete is committed.
        for sha in &done.freed {
            self.forget_blob_if_unused(sha).await;
        }
        Ok(done)
    }

    /// Adds (`on`) or takes back the caller's reaction to message `target`; `None` when that is
    /// already so (nothing is stored).
    pub async fn react(
        &self,
        user: &User,
        room: &str,
        target: u64,
        emoji: &str,
        on: bool,
    ) -> Result<Option<Appended>, ChatError> {
        protocol::validate_emoji(emoji)?;
        self.authorize(Some(user), room, Action::Post).await?;
        let (kind, max) = (
            if on {
                EventKind::ReactionAdded
            } else {
                EventKind::ReactionRemoved
            },
            self.limits.max_reactions,
        );
        let change = Change::React {
            add: on,
            max_emoji: max,
        };
        let done = self
            .change_message(
                user,
                room,
                server_client_id(),
                kind,
                target,
                emoji.to_owned(),
                change,
            )
            .await;
        match done {
            Ok(a) => Ok(Some(a)),
            Err(ChatError::Store(StoreError::Unchanged)) => Ok(None),
            Err(ChatError::Store(StoreError::TooManyReactions)) => Err(ChatError::Limit(format!(
                "a message has at most {max} different reactions"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Stores an event by `user` that changes message `target` of the room.
    #[allow(clippy::too_many_arguments)] // each is one part of the event
    async fn change_message(
        &self,
        user: &User,
        room: &str,
        client_id: String,
        kind: EventKind,
        target: u64,
        body: String,
        change: Change,
    ) -> Result<Appended, ChatError> {
        let mut event = NewMessage::chat(room, client_id, Author::of(user), body);
        event.kind = kind;
        event.target = Some(target);
        event.change = change;
        self.store
            .append(event)
            .await
            .map_err(|e| ChatError::about_message(e, room, Some(target)))
    }

    /// A page of history: after `after`, or before `before` (the newest when neither).
    pub async fn history(
        &self,
        user: Option<&User>,
        room: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page, ChatError> {
        let access = self.authorize(user, room, Action::Read).await?;
        let messages = match after {
            Some(after) => self.store.after(room, after, limit).await?,
            None => self.store.before(room, before, limit).await?,
        };
        Ok(Page {
            head: access.info.head,
            messages,
        })
    }

    /// The room's head and newest messages in one snapshot, for the room page.
    pub async fn recent(
        &self,
        user: Option<&User>,
        room: &str,
        limit: usize,
    ) -> Result<(RoomInfo, Page), ChatError> {
        self.authorize(user, room, Action::Read).await?;
        let (head, messages) = self
            .store
            .recent(room, limit)
            .await?
            .ok_or_else(|| ChatError::UnknownRoom(room.to_owned()))?;
        // The head of the snapshot, not of the earlier read.
        let mut info = self.info(user, room).await?;
        info.head = head;
        Ok((info, Page { head, messages }))
    }

    /// Messages matching `q` in the rooms `user` may read, newest first (see [`parse_search`]).
    pub async fn search(
        &self,
        user: &User,
        q: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, ChatError> {
        let search = parse_search(q)?;
        let scope = crate::server::access::search_scope(user);
        Ok(self.store.search(scope, &search, before, limit).await?)
    }

    /// The rooms and DMs `user` is in.
    pub async fn rooms(&self, user: &User) -> Result<Vec<RoomInfo>, ChatError> {
        Ok(self.store.rooms_of(user.id).await?)
    }

    /// The public rooms anyone with an account may browse and join.
    pub async fn public_rooms(&self, user: &User) -> Result<Vec<RoomInfo>, ChatError> {
        Ok(self.store.public_rooms(user.id).await?)
    }

    /// The room with its member and unread counts, if the caller may read it.
    pub async fn room(&self, user: Option<&User>, room: &str) -> Result<RoomInfo, ChatError> {
        self.authorize(user, room, Action::Read).await?;
        self.info(user, room).await
    }

    /// The room with its counts, read after an authorisation.
    async fn info(&self, user: Option<&User>, room: &str) -> Result<RoomInfo, ChatError> {
        self.store
            .room_info(room, user.map(|u| u.id))
            .await?
            .ok_or_else(|| ChatError::UnknownRoom(room.to_owned()))
    }

    pub async fn members(
        &self,
        user: Option<&User>,
        room: &str,
    ) -> Result<Vec<MemberInfo>, ChatError> {
        self.authorize(user, room, Action::Read).await?;
        let mut members = self.store.members(room).await?;
        for m in &mut members {
            let p = self.presence.of(&m.username);
            (m.status, m.last_active) = (p.status, p.last_active);
        }
        Ok(members)
    }

    /// Makes a room owned by `user`, who is its first member.
    pub async fn create_room(&self, user: &User, req: RoomRequest) -> Result<RoomInfo, ChatError> {
        if !protocol::valid_room_name(&req.name) || req.name.starts_with("dm-") {
            return Err(Invalid::new(
                ErrorCode::InvalidName,
                format!(
                    "a room name is 1 to {} of a-z, 0-9, '-' and '_', and does not start with \"dm-\"",
                    protocol::MAX_ROOM_BYTES
                ),
            )
            .into());
        }
        let title = match req.title {
            Some(t) => clean_text(&t, MAX_TITLE_CHARS, "title")?,
            None => req.name.clone(),
        };
        let topic = clean_text(req.topic.as_deref().unwrap_or(""), MAX_TOPIC_CHARS, "topic")?;
        let hour_ago = crate::server::auth::now_ms() - 3_600_000;
        let made = self.store.rooms_made_since(user.id, hour_ago).await?;
        if made >= self.limits.rooms_per_hour {
            return Err(ChatError::TooOften(format!(
                "you made {made} rooms in the last hour; the limit is {}",
                self.limits.rooms_per_hour
            )));
        }
        let room = NewRoom {
            kind: RoomKind::Room,
            visibility: req.visibility,
            title,
            topic,
            dm_key: None,
            invited: Vec::new(),
            owned: true,
        };
        self.append_event(
            user,
            &req.name,
            EventKind::RoomCreated,
            String::new(),
            None,
            Change::Create(room),
        )
        .await?;
        self.room(Some(user), &req.name).await
    }

    /// Opens the direct message between `user` and `usernames` (at most [`MAX_DM_MEMBERS`] people
    /// in all): the same room on every call with the same people.
    pub async fn open_dm(&self, user: &User, usernames: &[String]) -> Result<RoomInfo, ChatError> {
        let mut wanted: Vec<String> = usernames
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| *u != user.username)
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Err(
                Invalid::new(ErrorCode::InvalidFrame, "name at least one other person").into(),
            );
        }
        if wanted.len() + 1 > MAX_DM_MEMBERS {
            return Err(ChatError::Limit(format!(
                "a direct message has at most {MAX_DM_MEMBERS} people"
            )));
        }
        let found = self.store.users_named(&wanted).await?;
        if let Some(missing) = wanted
            .iter()
            .find(|w| !found.iter().any(|u| &u.username == *w))
        {
            return Err(ChatError::UnknownUser(clip(missing)));
        }
        let mut ids: Vec<i64> = found.iter().map(|u| u.id).chain([user.id]).collect();
        ids.sort_unstable();
        let key = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let name = format!("dm-{}", dm_slug(&key));
        let mut names: Vec<&str> = found.iter().map(|u| u.display_name.as_str()).collect();
        names.push(&user.display_name);
        let room = NewRoom {
            kind: RoomKind::Dm,
            visibility: Visibility::Private,
            title: names.join(", "),
            topic: String::new(),
            dm_key: Some(key),
            invited: found
                .iter()
                .map(|u| Member {
                    user_id: u.id,
                    username: u.username.clone(),
                })
                .collect(),
            owned: false,
        };
        let done = self
            .store
            .append(NewMessage {
                room: name.clone(),
                client_id: "create".to_owned(),
                kind: EventKind::RoomCreated,
                author: Author::of(user),
                body: String::new(),
                member: None,
                change: Change::Create(room),
                target: None,
                reply_to: None,
                attachment: None,
            })
            .await
            .map_err(|e| ChatError::from_store(e, &name))?;
        self.room(Some(user), &done.message.room).await
    }

    /// Joins a public room; joining one already joined changes nothing. The default room, where
    /// every account starts, has no member limit.
    pub async fn join(&self, user: &User, room: &str) -> Result<RoomInfo, ChatError> {
        let access = self.authorize(Some(user), room, Action::Join).await?;
        if access.role.is_none() {
            let max_members = if room == protocol::DEFAULT_ROOM {
                u64::MAX
            } else {
                self.limits.max_members
            };
            let done = self
                .append_event(
                    user,
                    room,
                    EventKind::MemberJoined,
                    String::new(),
                    Some(user),
                    Change::AddMember { max_members },
                )
                .await;
            match done {
                Ok(_) | Err(ChatError::Store(StoreError::AlreadyMember)) => {}
                Err(e) => return Err(e),
            }
        }
        self.room(Some(user), room).await
    }

    pub async fn leave(&self, user: &User, room: &str) -> Result<(), ChatError> {
        self.authorize(Some(user), room, Action::Leave).await?;
        self.append_event(
            user,
            room,
            EventKind::MemberLeft,
            String::new(),
            Some(user),
            Change::RemoveMember,
        )
        .await
        .map(|_| ())
    }

    /// Adds `username` to the room (a member invites; in a private room, only so can one enter).
    pub async fn invite(&self, user: &User, room: &str, username: &str) -> Result<(), ChatError> {
        self.authorize(Some(user), room, Action::Invite).await?;
        let who = self.named(username).await?;
        match self
            .append_event(
                user,
                room,
                EventKind::MemberInvited,
                String::new(),
                Some(&who),
                Change::AddMember {
                    max_members: self.limits.max_members,
                },
            )
            .await
        {
            // Already in: nothing to do.
            Ok(_) | Err(ChatError::Store(StoreError::AlreadyMember)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes `username` out of the room (the owner's right); their sockets leave it at once.
    pub async fn remove(&self, user: &User, room: &str, username: &str) -> Result<(), ChatError> {
        self.authorize(Some(user), room, Action::Manage).await?;
        let who = self.named(username).await?;
        match self
            .append_event(
                user,
                room,
                EventKind::MemberRemoved,
                String::new(),
                Some(&who),
                Change::RemoveMember,
            )
            .await
        {
            Err(ChatError::NotMember(_)) => Err(ChatError::NotMember(room.to_owned())),
            other => other.map(|_| ()),
        }
    }

    pub async fn rename(&self, user: &User, room: &str, title: &str) -> Result<(), ChatError> {
        self.authorize(Some(user), room, Action::Manage).await?;
        let title = clean_text(title, MAX_TITLE_CHARS, "title")?;
        if title.is_empty() {
            return Err(Invalid::new(ErrorCode::InvalidName, "a title cannot be blank").into());
        }
        self.append_event(
            user,
            room,
            EventKind::RoomRenamed,
            title,
            None,
            Change::Title,
        )
        .await
        .map(|_| ())
    }

    pub async fn set_topic(&self, user: &User, room: &str, topic: &str) -> Result<(), ChatError> {
        self.authorize(Some(user), room, Action::Manage).await?;
        let topic = clean_text(topic, MAX_TOPIC_CHARS, "topic")?;
        self.append_event(
            user,
            room,
            EventKind::TopicChanged,
            topic,
            None,
            Change::Topic,
        )
        .await
        .map(|_| ())
    }

    /// Archives the room: read-only from now on, hidden from room lists, its history kept.
    pub async fn archive(&self, user: &User, room: &str) -> Result<(), ChatError> {
        self.authorize(Some(user), room, Action::Manage).await?;
        self.append_event(
            user,
            room,
            EventKind::RoomArchived,
            String::new(),
            None,
            Change::Archive,
        )
        .await
        .map(|_| ())
    }

    /// Moves `user`'s read position in `room` to `seq` (forward only) and tells every socket of
    /// the account; returns the position and what is still unread.
    pub async fn mark_read(
        &self,
        user: &User,
        room: &str,
        seq: u64,
    ) -> Result<ReadState, ChatError> {
        self.authorize(Some(user), room, Action::MarkRead).await?;
        let read = self
            .store
            .mark_read(room, user.id, seq)
            .await?
            .ok_or_else(|| ChatError::NotMember(room.to_owned()))?;
        let frame = ServerFrame::Read(ReadPosition {
            room: room.to_owned(),
            seq: read.seq,
            unread: read.unread,
            mentions: read.mentions,
        });
        self.relay(Delivery {
            room: personal_channel(&user.username).into(),
            seq: 0,
            rich: encode(&frame),
            classic: Utf8Bytes::default(),
            personal: Some(Personal::Frame),
            ephemeral: false,
            at: std::time::Instant::now(),
        });
        Ok(read)
    }

    async fn named(&self, username: &str) -> Result<User, ChatError> {
        self.store
            .users_named(&[username.to_owned()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ChatError::UnknownUser(clip(username)))
    }

    /// Stores an event by `user` that changes the room.
    async fn append_event(
        &self,
        user: &User,
        room: &str,
        kind: EventKind,
        body: String,
        member: Option<&User>,
        change: Change,
    ) -> Result<Appended, ChatError> {
        self.store
            .append(NewMessage {
                room: room.to_owned(),
                client_id: server_client_id(),
                kind,
                author: Author::of(user),
                body,
                member: member.map(|m| Member {
                    user_id: m.id,
                    username: m.username.clone(),
                }),
                change,
                target: None,
                reply_to: None,
                attachment: None,
            })
            .await
            .map_err(|e| ChatError::from_store(e, room))
    }
}

/// Longest search, in characters, and most terms in one.
pub const MAX_SEARCH_CHARS: usize = 500;
pub const MAX_SEARCH_TERMS: usize = 20;

/// Reads a search: words, `"quoted phrases"`, `from:@username` and `in:#room`. A search needs at
/// least one word or phrase.
pub fn parse_search(q: &str) -> Result<Search, Invalid> {
    let bad = |why: &str| Invalid::new(ErrorCode::InvalidQuery, why.to_owned());
    if q.chars().count() > MAX_SEARCH_CHARS {
        return Err(bad("a search is at most 500 characters"));
    }
    let mut search = Search::default();
    let mut rest = q.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('"') {
            let (phrase, tail) = after.split_once('"').unwrap_or((after, ""));
            search.terms.push(Term::Phrase(phrase.trim().to_owned()));
            rest = tail.trim_start();
            continue;
        }
        let (token, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        rest = tail.trim_start();
        if let Some(who) = token.strip_prefix("from:") {
            search.from = Some(who.trim_start_matches('@').to_ascii_lowercase());
        } else if let Some(room) = token.strip_prefix("in:") {
            search.room = Some(room.trim_start_matches('#').to_owned());
        } else {
            search.terms.push(Term::Word(token.to_owned()));
        }
    }
    search.terms.retain(|t| match t {
        Term::Word(w) | Term::Phrase(w) => !w.is_empty(),
    });
    if search.terms.is_empty() {
        return Err(bad("search for at least one word"));
    }
    if search.terms.len() > MAX_SEARCH_TERMS {
        return Err(bad("a search has at most 20 words and phrases"));
    }
    Ok(search)
}

/// A user-given name, cut short for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a title or topic: trimmed, at most `max` characters, nothing invisible or
/// direction-changing.
fn clean_text(s: &str, max: usize, what: &str) -> Result<String, Invalid> {
    let s = s.trim();
    if s.chars().count() > max || s.chars().any(protocol::hidden_char) {
        return Err(Invalid::new(
            ErrorCode::InvalidName,
            format!("a {what} is at most {max} characters, without control or invisible ones"),
        ));
    }
    Ok(s.to_owned())
}

/// A short, stable name for a DM from its members' ids.
fn dm_slug(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// An idempotency key for messages whose sender gave none (HTTP callers, classic clients): a
/// UUIDv7, unique across restarts and nodes (it does not lean on the process id, which is 1 in
/// every container).
pub fn server_client_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_have_words_phrases_and_filters() {
        let s = parse_search(r#"release "next friday" from:@Ann in:#design notes"#).expect("ok");
        assert_eq!(
            s.terms,
            vec![
                Term::Word("release".into()),
                Term::Phrase("next friday".into()),
                Term::Word("notes".into()),
            ]
        );
        assert_eq!(
            (s.from.as_deref(), s.room.as_deref()),
            (Some("ann"), Some("design"))
        );
        assert_eq!(
            parse_search(r#""unclosed phrase"#).expect("ok").terms,
            vec![Term::Phrase("unclosed phrase".into())]
        );
        for bad in [
            "",
            "   ",
            "from:@ann",
            r#""""#,
            &"x ".repeat(300),
            &"w ".repeat(21),
        ] {
            assert!(parse_search(bad).is_err(), "{bad:?}");
        }
    }
}
