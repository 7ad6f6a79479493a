//! The store for several nodes: one PostgreSQL database that every node shares. Each node has
//! one writer connection, owned by its group-commit task, and a pool for everything else.
//!
//! A room's seq comes from its row (`head_seq + 1`, updated in the transaction that stores the
//! event), so seqs are gapless and in commit order however many nodes write: the row lock
//! orders them. A batch takes its rooms' locks in name order, so two nodes' batches never wait
//! on each other in a cycle. A plain chat message is stored by one statement; every other event
//! takes the general path (lock the room, check, apply, store) in its own savepoint.

use super::rows::{
    activity, add_reactions, admin_user, contains_pattern, ids_of, ids_text, kind_str,
    reaction_bounds, seq_of, snippet_of, to_i64, visibility_str, words_of, ActivityRow,
    AdminUserRow, RoomRow, Row, UserRow,
};
use super::writer::{self, Batches, Fed, PendingAppend};
use super::{
    AccountStore, AdminUser, Appended, Change, CommitFeed, Credentials, InviteInfo, NewMessage,
    NewRoom, ReadScope, ReadState, RoomAccess, RoomActivity, RoomImport, Search, Store, StoreError,
    StoredAttachment, Term, TokenInfo, User,
};
use crate::protocol::api::SearchHit;
use crate::protocol::{self, Attachment, ChatMessage, EventKind, MemberInfo, Quote, RoomInfo};
use crate::server::faults;
use crate::server::tasks::Tasks;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Connections each node keeps for reads, accounts and read positions (the writer has its own).
const POOL_SIZE: u32 = 16;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The group commit's own connection (kept here for its metrics).
    writer: PgPool,
    appends: mpsc::Sender<PendingAppend>,
    commits: super::feed::FeedSender,
}

const SELECT: &str = "SELECT m.id, m.room_id, r.name AS room, m.seq, m.client_id, m.kind, \
     m.\"user\" AS \"user\", m.user_id, m.username, m.guest, m.body, m.member, m.ts, m.target, \
     m.reply_to, m.edited_at, m.deleted_at IS NOT NULL AS deleted, m.mentions, m.count, \
     q.\"user\" AS q_user, q.username AS q_username, q.body AS q_body, \
     q.deleted_at IS NOT NULL AS q_deleted, \
     a.id AS attachment, a.name AS a_name, a.size AS a_size, a.mime AS a_mime, \
     a.width AS a_width, a.height AS a_height \
     FROM messages m JOIN rooms r ON r.id = m.room_id \
     LEFT JOIN messages q ON m.reply_to IS NOT NULL AND q.room_id = m.room_id AND q.seq = m.reply_to \
     LEFT JOIN attachments a ON m.kind = 'message' AND a.room_id = m.room_id AND a.seq = m.seq";

/// Selects [`RoomRow`]s for the user bound as `$1`; the caller adds `WHERE` and `ORDER BY`.
const ROOM_SELECT: &str = "SELECT r.name, r.title, r.topic, r.kind, r.visibility, r.head_seq, \
     r.owner_id, o.username AS owner, r.archived_at IS NOT NULL AS archived, \
     (SELECT COUNT(*) FROM members c WHERE c.room_id = r.id) AS members, \
     me.role, me.last_read, \
     CASE WHEN me.user_id IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM messages m \
       WHERE m.room_id = r.id AND m.seq > me.last_read AND m.kind = 'message' \
       AND m.deleted_at IS NULL AND m.user_id IS DISTINCT FROM me.user_id) END AS unread, \
     CASE WHEN me.user_id IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM mentions x \
       WHERE x.room_id = r.id AND x.user_id = me.user_id AND x.at_seq > me.last_read) END \
       AS mentions, \
     CASE WHEN r.kind = 'dm' THEN (SELECT string_agg(u.username, ',' ORDER BY u.username) \
       FROM members p JOIN users u ON u.id = p.user_id WHERE p.room_id = r.id) END AS people \
     FROM rooms r LEFT JOIN users o ON o.id = r.owner_id \
     LEFT JOIN members me ON me.room_id = r.id AND me.user_id = $1";

/// Like [`ROOM_SELECT`] without the counts, for authorisation on every post and read.
const ACCESS_SELECT: &str = "SELECT r.name, r.title, r.topic, r.kind, r.visibility, r.head_seq, \
     r.owner_id, NULL::TEXT AS owner, r.archived_at IS NOT NULL AS archived, 0::BIGINT AS members, \
     me.role, me.last_read, 0::BIGINT AS unread, 0::BIGINT AS mentions, NULL::TEXT AS people \
     FROM rooms r LEFT JOIN members me ON me.room_id = r.id AND me.user_id = $1";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A failure that another try of the same transaction may not meet: a unique key that a
/// concurrent transaction took first, a deadlock, a serialisation failure.
fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => {
            matches!(d.code().as_deref(), Some("23505" | "40P01" | "40001"))
        }
        _ => false,
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`) and brings its schema up to date (the
    /// migrations hold a lock, so nodes that start together migrate once).
    pub async fn connect(url: &str, tasks: Tasks) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("hubbub")
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let (appends, commits) = writer::start(
            PgBatches {
                pool: writer.clone(),
            },
            tasks,
        );
        Ok(PgStore {
            pool,
            writer,
            appends,
            commits,
        })
    }

    /// The pool, for the blob store that keeps files in the same database.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// What tells this database apart from every other (the server's system identifier and
    /// the database's name): the nodes that share it are one cluster, and their bus subject
    /// is made from it, so two clusters on one bus never hear each other.
    pub async fn identity(&self) -> Result<String, StoreError> {
        let system: Result<(i64, String), _> = sqlx::query_as(
            "SELECT system_identifier, current_database()::text FROM pg_control_system()",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok((system, name)) = system {
            return Ok(format!("{system}/{name}"));
        }
        // A role that may not read the control data: the server's address and the name.
        let (name,): (String,) = sqlx::query_as(
            "SELECT current_database()::text || '@' || coalesce(host(inet_server_addr()), 'local') \
             || ':' || coalesce(inet_server_port(), 0)::text",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(name)
    }
}

struct PgBatches {
    pool: PgPool,
}

#[async_trait]
impl Batches for PgBatches {
    async fn append_batch(
        &self,
        batch: &[PendingAppend],
        fed: &mut Fed,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        // A transaction another node's raced (a resend of the same client_id, a deadlock that
        // the lock order should prevent) is rolled back whole; the second try sees its result.
        match append_batch(&self.pool, batch, fed).await {
            Err(e) if is_retryable(&e) => {
                tracing::info!(error = %e, "retrying a group commit");
                append_batch(&self.pool, batch, fed).await
            }
            other => other,
        }
    }

    async fn committed_after(
        &self,
        room: &str,
        after: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = $1 AND m.seq > $2 ORDER BY m.seq"
        ))
        .bind(room)
        .bind(to_i64(after))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ChatMessage::from).collect())
    }

    async fn stored(&self, msg: &NewMessage) -> Option<ChatMessage> {
        stored(&self.pool, &msg.room, &msg.client_id).await
    }
}

async fn stored(pool: &PgPool, room: &str, client_id: &str) -> Option<ChatMessage> {
    let row: Option<Row> =
        sqlx::query_as(&format!("{SELECT} WHERE r.name = $1 AND m.client_id = $2"))
            .bind(room)
            .bind(client_id)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
    row.map(Into::into)
}

async fn append_batch(
    pool: &PgPool,
    batch: &[PendingAppend],
    fed: &mut Fed,
) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch[a].0.room.cmp(&batch[b].0.room));
    let mut results: Vec<Option<Result<Appended, StoreError>>> =
        (0..batch.len()).map(|_| None).collect();
    let mut tx = pool.begin().await?;
    // Every room of the batch locked first, in name order: batches of two nodes that share
    // rooms wait for each other instead of deadlocking.
    let mut rooms: Vec<&str> = batch.iter().map(|(m, _)| m.room.as_str()).collect();
    rooms.sort_unstable();
    rooms.dedup();
    sqlx::query("SELECT id FROM rooms WHERE name = ANY($1) ORDER BY name FOR UPDATE")
        .bind(&rooms)
        .fetch_all(&mut *tx)
        .await?;
    // The plain messages of each room up to its first other event, all in one statement.
    let fast = plain_prefix(batch, &order);
    let stored = append_plain(&mut tx, batch, &fast).await?;
    for (room, seq) in stored.values().map(|(_, m)| (&m.room, m.seq)) {
        let head = fed.heads.entry(room.clone()).or_insert(seq - 1);
        *head = (*head).min(seq - 1);
    }
    let mut stored = stored;
    for i in order {
        let msg = &batch[i].0;
        if faults::hit("writer-panic", &msg.body) {
            panic!("injected fault: writer-panic");
        }
        if let Some((index, message)) = stored.remove(&(msg.room.clone(), msg.client_id.clone())) {
            if index == i {
                results[i] = Some(Ok(Appended {
                    message,
                    more: Vec::new(),
                    created: true,
                    freed: Vec::new(),
                }));
                continue;
            }
            stored.insert((msg.room.clone(), msg.client_id.clone()), (index, message));
        }
        // Anything else, or a message the one statement did not store (a resend, a room it may
        // not post in): the general path, in a savepoint, says what and why.
        sqlx::query("SAVEPOINT one").execute(&mut *tx).await?;
        match append_one(&mut tx, msg, fed).await {
            Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
            Ok(done) => {
                sqlx::query("RELEASE SAVEPOINT one")
                    .execute(&mut *tx)
                    .await?;
                results[i] = Some(Ok(done));
            }
            Err(refused) => {
                sqlx::query("ROLLBACK TO SAVEPOINT one")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT one")
                    .execute(&mut *tx)
                    .await?;
                results[i] = Some(Err(refused));
            }
        }
    }
    tx.commit().await?;
    if batch
        .iter()
        .any(|(m, _)| faults::hit("commit-error", &m.body))
    {
        return Err(StoreError::Batch("injected fault: commit-error".into()));
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Err(StoreError::Batch("append left out".into()))))
        .collect())
}

/// A chat message with no reply, file or mention: what [`append_plain`] stores.
fn is_plain(msg: &NewMessage) -> bool {
    msg.kind == EventKind::Message
        && matches!(msg.change, Change::None)
        && msg.reply_to.is_none()
        && msg.attachment.is_none()
        && protocol::mentioned_usernames(&msg.body).is_empty()
}

/// The batch indices (in `order`, grouped by room) of the plain messages that come before any
/// other event of their room, each `(room, client_id)` once: storing them first keeps every
/// room's events in the order they arrived.
fn plain_prefix(batch: &[PendingAppend], order: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut blocked: Option<&str> = None;
    for &i in order {
        let msg = &batch[i].0;
        if blocked == Some(msg.room.as_str()) {
            continue;
        }
        if !is_plain(msg) || !seen.insert((msg.room.as_str(), msg.client_id.as_str())) {
            blocked = Some(msg.room.as_str());
            continue;
        }
        out.push(i);
    }
    out
}

/// Stores the plain messages at `which` in one statement: each that is new and whose author
/// may post in its room gets its room's next seq (in the order given). Returns them by
/// (room, client_id), with their batch index; those it did not store are left to the general
/// path, which says why.
async fn append_plain(
    conn: &mut PgConnection,
    batch: &[PendingAppend],
    which: &[usize],
) -> Result<HashMap<(String, String), (usize, ChatMessage)>, StoreError> {
    let mut out = HashMap::new();
    if which.is_empty() {
        return Ok(out);
    }
    let msgs: Vec<&NewMessage> = which.iter().map(|&i| &batch[i].0).collect();
    let rooms: Vec<&str> = msgs.iter().map(|m| m.room.as_str()).collect();
    let client_ids: Vec<&str> = msgs.iter().map(|m| m.client_id.as_str()).collect();
    let users: Vec<&str> = msgs
        .iter()
        .map(|m| m.author.display_name.as_str())
        .collect();
    let user_ids: Vec<Option<i64>> = msgs.iter().map(|m| m.author.user_id).collect();
    let usernames: Vec<Option<&str>> = msgs.iter().map(|m| m.author.username.as_deref()).collect();
    let bodies: Vec<&str> = msgs.iter().map(|m| m.body.as_str()).collect();
    let ts = now_ms();
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], \
             $6::TEXT[]) WITH ORDINALITY AS t(room, client_id, \"user\", user_id, username, body, n)), \
         ok AS ( \
           SELECT i.*, r.id AS room_id, row_number() OVER (PARTITION BY r.id ORDER BY i.n) AS k \
           FROM input i JOIN rooms r ON r.name = i.room AND r.archived_at IS NULL \
           WHERE CASE WHEN i.user_id IS NULL THEN r.visibility = 'public' \
                 ELSE EXISTS (SELECT 1 FROM members m WHERE m.room_id = r.id AND m.user_id = i.user_id) END \
             AND NOT EXISTS (SELECT 1 FROM messages x WHERE x.room_id = r.id AND x.client_id = i.client_id)), \
         counts AS (SELECT room_id, count(*) AS c FROM ok GROUP BY room_id), \
         bumped AS ( \
           UPDATE rooms SET head_seq = rooms.head_seq + counts.c FROM counts \
           WHERE rooms.id = counts.room_id RETURNING rooms.id, rooms.head_seq, counts.c), \
         ins AS ( \
           INSERT INTO messages (room_id, seq, client_id, kind, \"user\", user_id, username, guest, \
             body, ts, mentions) \
           SELECT ok.room_id, b.head_seq - b.c + ok.k, ok.client_id, 'message', ok.\"user\", \
             ok.user_id, ok.username, ok.user_id IS NULL, ok.body, $7, '' \
           FROM ok JOIN bumped b ON b.id = ok.room_id \
           RETURNING room_id, client_id, id, seq) \
         SELECT ok.room, ins.client_id, ins.id, ins.seq FROM ins \
         JOIN ok ON ok.room_id = ins.room_id AND ok.client_id = ins.client_id",
    )
    .bind(&rooms)
    .bind(&client_ids)
    .bind(&users)
    .bind(&user_ids)
    .bind(&usernames)
    .bind(&bodies)
    .bind(ts)
    .fetch_all(&mut *conn)
    .await?;
    let by_key: HashMap<(&str, &str), usize> = which
        .iter()
        .map(|&i| ((batch[i].0.room.as_str(), batch[i].0.client_id.as_str()), i))
        .collect();
    for (room, client_id, id, seq) in rows {
        let Some(&i) = by_key.get(&(room.as_str(), client_id.as_str())) else {
            continue;
        };
        let msg = &batch[i].0;
        let message = ChatMessage {
            room: room.clone(),
            seq: seq_of(seq),
            id,
            client_id: client_id.clone(),
            kind: EventKind::Message,
            user: msg.author.display_name.clone(),
            user_id: msg.author.user_id,
            username: msg.author.username.clone(),
            guest: msg.author.user_id.is_none(),
            body: msg.body.clone(),
            ts,
            ..Default::default()
        };
        out.insert((room, client_id), (i, message));
    }
    Ok(out)
}

async fn append_one(
    conn: &mut PgConnection,
    msg: &NewMessage,
    fed: &mut Fed,
) -> Result<Appended, StoreError> {
    if let Change::Create(room) = &msg.change {
        return create_room(conn, msg, room, fed).await;
    }
    // The room's row lock first: every check below holds until this transaction commits, on
    // every node (a member count, a membership, the edit's target).
    let (room_id, head, archived, visibility): (i64, i64, bool, String) = sqlx::query_as(
        "SELECT id, head_seq, archived_at IS NOT NULL, visibility FROM rooms WHERE name = $1 \
         FOR UPDATE",
    )
    .bind(&msg.room)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::RoomNotFound)?;
    fed.heads
        .entry(msg.room.clone())
        .or_insert_with(|| seq_of(head));
    let existing: Option<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE m.room_id = $1 AND m.client_id = $2"
    ))
    .bind(room_id)
    .bind(&msg.client_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = existing {
        return Ok(Appended {
            message: row.into(),
            more: Vec::new(),
            created: false,
            freed: Vec::new(),
        });
    }
    if archived && msg.kind != EventKind::MemberLeft {
        return Err(StoreError::RoomArchived);
    }
    if msg.kind == EventKind::Message || msg.kind.changes_message() {
        let member = match msg.author.user_id {
            Some(user) => is_member(conn, room_id, user).await?,
            None => false,
        };
        let guest_here = msg.author.user_id.is_none() && visibility == "public";
        if !(member || guest_here && msg.kind == EventKind::Message) {
            return Err(StoreError::NotMember);
        }
    }
    let mut extra = Extra::default();
    if let Some(target) = msg.reply_to {
        let original = target_message(conn, room_id, target).await?;
        extra.reply = Some(original.quote());
    }
    let freed = apply(conn, room_id, msg, &mut extra).await?;
    let mut message = insert_event(conn, room_id, msg, &extra).await?;
    if let (Some(a), EventKind::Message) = (&msg.attachment, msg.kind) {
        sqlx::query(
            "INSERT INTO attachments (id, room_id, seq, uploader_id, sha256, name, size, mime, \
             width, height, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&a.id)
        .bind(room_id)
        .bind(to_i64(message.seq))
        .bind(msg.author.user_id)
        .bind(&a.sha256)
        .bind(&a.name)
        .bind(to_i64(a.size))
        .bind(&a.mime)
        .bind(a.width.map(i64::from))
        .bind(a.height.map(i64::from))
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        message.attachment = Some(Attachment {
            id: a.id.clone(),
            name: a.name.clone(),
            size: a.size,
            mime: a.mime.clone(),
            width: a.width,
            height: a.height,
        });
    }
    let target = msg.target.map_or(message.seq, |t| t);
    for user in &extra.notify {
        sqlx::query(
            "INSERT INTO mentions (room_id, user_id, at_seq, seq) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(user)
        .bind(to_i64(message.seq))
        .bind(to_i64(target))
        .execute(&mut *conn)
        .await?;
    }
    Ok(Appended {
        message,
        more: Vec::new(),
        created: true,
        freed,
    })
}

/// What an event carries besides what was asked, worked out in its transaction.
#[derive(Default)]
struct Extra {
    mentions: Vec<i64>,
    notify: Vec<i64>,
    count: Option<u64>,
    reply: Option<Quote>,
}

/// A chat message as an edit, delete, reaction or reply finds it.
struct Target {
    id: i64,
    user_id: Option<i64>,
    user: String,
    username: Option<String>,
    body: String,
    ts: i64,
    mentions: String,
}

impl Target {
    fn quote(&self) -> Quote {
        Quote {
            user: self.user.clone(),
            username: self.username.clone(),
            body: protocol::quote_of(&self.body),
            deleted: false,
        }
    }
}

async fn target_message(
    conn: &mut PgConnection,
    room_id: i64,
    seq: u64,
) -> Result<Target, StoreError> {
    type TargetRow = (
        i64,
        String,
        Option<i64>,
        String,
        Option<String>,
        String,
        i64,
        bool,
        String,
    );
    let row: Option<TargetRow> = sqlx::query_as(
        "SELECT id, kind, user_id, \"user\", username, body, ts, deleted_at IS NOT NULL, mentions \
         FROM messages WHERE room_id = $1 AND seq = $2",
    )
    .bind(room_id)
    .bind(to_i64(seq))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, kind, user_id, user, username, body, ts, deleted, mentions)) = row else {
        return Err(StoreError::UnknownMessage);
    };
    if kind != EventKind::Message.as_str() {
        return Err(StoreError::UnknownMessage);
    }
    if deleted {
        return Err(StoreError::MessageDeleted);
    }
    Ok(Target {
        id,
        user_id,
        user,
        username,
        body,
        ts,
        mentions,
    })
}

async fn resolve_mentions(
    conn: &mut PgConnection,
    room_id: i64,
    body: &str,
    author: Option<i64>,
) -> Result<Vec<i64>, StoreError> {
    let names = protocol::mentioned_usernames(body);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT u.id FROM users u JOIN members m ON m.user_id = u.id AND m.room_id = $1 \
         WHERE u.username = ANY($2) ORDER BY u.id",
    )
    .bind(room_id)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids.into_iter().filter(|id| Some(*id) != author).collect())
}

async fn is_member(conn: &mut PgConnection, room_id: i64, user: i64) -> Result<bool, StoreError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM members WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(found.is_some())
}

async fn apply(
    conn: &mut PgConnection,
    room_id: i64,
    msg: &NewMessage,
    extra: &mut Extra,
) -> Result<Vec<String>, StoreError> {
    let mut freed = Vec::new();
    let member = msg.member.as_ref().map(|m| m.user_id);
    match &msg.change {
        Change::None if msg.kind == EventKind::Message => {
            extra.mentions = resolve_mentions(conn, room_id, &msg.body, msg.author.user_id).await?;
            extra.notify = extra.mentions.clone();
        }
        Change::None | Change::Create(_) => {}
        Change::AddMember { max_members } => {
            let user = member.ok_or(StoreError::NotMember)?;
            if is_member(conn, room_id, user).await? {
                return Err(StoreError::AlreadyMember);
            }
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE room_id = $1")
                .bind(room_id)
                .fetch_one(&mut *conn)
                .await?;
            if seq_of(count) >= *max_members {
                return Err(StoreError::RoomFull);
            }
            sqlx::query(
                "INSERT INTO members (room_id, user_id, role, joined_at, last_read) \
                 SELECT id, $1, 'member', $2, head_seq FROM rooms WHERE id = $3",
            )
            .bind(user)
            .bind(now_ms())
            .bind(room_id)
            .execute(&mut *conn)
            .await?;
        }
        Change::RemoveMember => {
            let user = member.ok_or(StoreError::NotMember)?;
            let gone = sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
                .bind(room_id)
                .bind(user)
                .execute(&mut *conn)
                .await?;
            if gone.rows_affected() == 0 {
                return Err(StoreError::NotMember);
            }
        }
        Change::Title | Change::Topic => {
            let sql = if matches!(msg.change, Change::Title) {
                "UPDATE rooms SET title = $1 WHERE id = $2"
            } else {
                "UPDATE rooms SET topic = $1 WHERE id = $2"
            };
            sqlx::query(sql)
                .bind(&msg.body)
                .bind(room_id)
                .execute(&mut *conn)
                .await?;
        }
        Change::Archive => {
            sqlx::query("UPDATE rooms SET archived_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(room_id)
                .execute(&mut *conn)
                .await?;
        }
        Change::Edit { window_ms } => {
            let target = target_message(conn, room_id, msg.target.unwrap_or_default()).await?;
            if target.user_id.is_none() || target.user_id != msg.author.user_id {
                return Err(StoreError::NotAuthor);
            }
            if window_ms.is_some_and(|w| now_ms() - target.ts > w) {
                return Err(StoreError::EditWindowClosed);
            }
            let before = ids_of(&target.mentions);
            extra.mentions = resolve_mentions(conn, room_id, &msg.body, msg.author.user_id).await?;
            extra.notify = extra
                .mentions
                .iter()
                .filter(|id| !before.contains(id))
                .copied()
                .collect();
            sqlx::query(
                "UPDATE messages SET body = $1, edited_at = $2, mentions = $3 WHERE id = $4",
            )
            .bind(&msg.body)
            .bind(now_ms())
            .bind(ids_text(&extra.mentions))
            .bind(target.id)
            .execute(&mut *conn)
            .await?;
        }
        Change::Delete { any_author } => {
            let seq = msg.target.unwrap_or_default();
            let target = target_message(conn, room_id, seq).await?;
            let own = target.user_id.is_some() && target.user_id == msg.author.user_id;
            if !own && !any_author {
                return Err(StoreError::NotAuthor);
            }
            // The text goes from the message, from every edit of it, from the search index (a
            // generated column), and with it its reactions and mentions.
            sqlx::query(
                "UPDATE messages SET body = '', deleted_at = $1, mentions = '', edited_at = NULL \
                 WHERE id = $2",
            )
            .bind(now_ms())
            .bind(target.id)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE messages SET body = '', mentions = '' \
                 WHERE room_id = $1 AND target = $2 AND kind = 'message_edited'",
            )
            .bind(room_id)
            .bind(to_i64(seq))
            .execute(&mut *conn)
            .await?;
            let files: Vec<String> = sqlx::query_scalar(
                "DELETE FROM attachments WHERE room_id = $1 AND seq = $2 RETURNING sha256",
            )
            .bind(room_id)
            .bind(to_i64(seq))
            .fetch_all(&mut *conn)
            .await?;
            for sha in files {
                let used: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM attachments WHERE sha256 = $1 LIMIT 1")
                        .bind(&sha)
                        .fetch_optional(&mut *conn)
                        .await?;
                if used.is_none() {
                    freed.push(sha);
                }
            }
            for table in ["reactions", "mentions"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE room_id = $1 AND seq = $2"
                ))
                .bind(room_id)
                .bind(to_i64(seq))
                .execute(&mut *conn)
                .await?;
            }
        }
        Change::React { add, max_emoji } => {
            let seq = to_i64(msg.target.unwrap_or_default());
            target_message(conn, room_id, msg.target.unwrap_or_default()).await?;
            let user = msg.author.user_id.ok_or(StoreError::NotMember)?;
            let emoji = &msg.body;
            let changed = if *add {
                let known: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT emoji FROM reactions WHERE room_id = $1 AND seq = $2",
                )
                .bind(room_id)
                .bind(seq)
                .fetch_all(&mut *conn)
                .await?;
                if !known.contains(emoji) && known.len() as u64 >= *max_emoji {
                    return Err(StoreError::TooManyReactions);
                }
                sqlx::query(
                    "INSERT INTO reactions (room_id, seq, emoji, user_id, at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(room_id)
                .bind(seq)
                .bind(emoji)
                .bind(user)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?
            } else {
                sqlx::query(
                    "DELETE FROM reactions WHERE room_id = $1 AND seq = $2 AND emoji = $3 \
                     AND user_id = $4",
                )
                .bind(room_id)
                .bind(seq)
                .bind(emoji)
                .bind(user)
                .execute(&mut *conn)
                .await?
            };
            if changed.rows_affected() == 0 {
                return Err(StoreError::Unchanged);
            }
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM reactions WHERE room_id = $1 AND seq = $2 AND emoji = $3",
            )
            .bind(room_id)
            .bind(seq)
            .bind(emoji)
            .fetch_one(&mut *conn)
            .await?;
            extra.count = Some(seq_of(count));
        }
    }
    Ok(freed)
}

async fn insert_event(
    conn: &mut PgConnection,
    room_id: i64,
    msg: &NewMessage,
    extra: &Extra,
) -> Result<ChatMessage, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE rooms SET head_seq = head_seq + 1 WHERE id = $1 RETURNING head_seq",
    )
    .bind(room_id)
    .fetch_one(&mut *conn)
    .await?;
    let ts = now_ms();
    let member = msg.member.as_ref().map(|m| m.username.clone());
    let guest = msg.author.user_id.is_none();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (room_id, seq, client_id, kind, \"user\", user_id, username, guest, \
         body, member, ts, target, reply_to, mentions, count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
    )
    .bind(room_id)
    .bind(seq)
    .bind(&msg.client_id)
    .bind(msg.kind.as_str())
    .bind(&msg.author.display_name)
    .bind(msg.author.user_id)
    .bind(&msg.author.username)
    .bind(guest)
    .bind(&msg.body)
    .bind(&member)
    .bind(ts)
    .bind(msg.target.map(to_i64))
    .bind(msg.reply_to.map(to_i64))
    .bind(ids_text(&extra.mentions))
    .bind(extra.count.map(to_i64))
    .fetch_one(&mut *conn)
    .await?;
    Ok(ChatMessage {
        room: msg.room.clone(),
        seq: seq_of(seq),
        id,
        client_id: msg.client_id.clone(),
        kind: msg.kind,
        user: msg.author.display_name.clone(),
        user_id: msg.author.user_id,
        username: msg.author.username.clone(),
        guest,
        body: msg.body.clone(),
        member,
        ts,
        target: msg.target,
        reply_to: msg.reply_to,
        reply: extra.reply.clone(),
        mentions: extra.mentions.clone(),
        notify: if msg.kind == EventKind::MessageEdited {
            extra.notify.clone()
        } else {
            Vec::new()
        },
        count: extra.count,
        ..Default::default()
    })
}

/// The DM with these people, as its first event, if there is one.
async fn existing_dm(conn: &mut PgConnection, key: &str) -> Result<Option<Appended>, StoreError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE r.dm_key = $1 ORDER BY m.seq LIMIT 1"
    ))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|row| Appended {
        message: row.into(),
        more: Vec::new(),
        created: false,
        freed: Vec::new(),
    }))
}

async fn create_room(
    conn: &mut PgConnection,
    msg: &NewMessage,
    room: &NewRoom,
    fed: &mut Fed,
) -> Result<Appended, StoreError> {
    if let Some(key) = &room.dm_key {
        if let Some(found) = existing_dm(conn, key).await? {
            return Ok(found);
        }
    }
    let creator = msg.author.user_id;
    // A name or DM taken meanwhile (by another node, say) makes no row and no error, which
    // would end the transaction here.
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO rooms (name, head_seq, created_at, kind, visibility, title, topic, owner_id, \
         dm_key, created_by) VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(&msg.room)
    .bind(now_ms())
    .bind(kind_str(room.kind))
    .bind(visibility_str(room.visibility))
    .bind(&room.title)
    .bind(&room.topic)
    .bind(if room.owned { creator } else { None })
    .bind(&room.dm_key)
    .bind(creator)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(room_id) = inserted else {
        if let Some(key) = &room.dm_key {
            if let Some(found) = existing_dm(conn, key).await? {
                return Ok(found);
            }
        }
        return Err(StoreError::RoomExists);
    };
    fed.heads.insert(msg.room.clone(), 0);
    let mut members = Vec::with_capacity(room.invited.len() + 1);
    if let Some(creator) = creator {
        members.push((creator, if room.owned { "owner" } else { "member" }));
    }
    members.extend(room.invited.iter().map(|m| (m.user_id, "member")));
    for (user, role) in members {
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, joined_at, last_read) \
             VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(user)
        .bind(role)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    }
    let message = insert_event(conn, room_id, msg, &Extra::default()).await?;
    let mut more = Vec::with_capacity(room.invited.len());
    for (i, member) in room.invited.iter().enumerate() {
        let invite = NewMessage {
            room: msg.room.clone(),
            client_id: format!("{}:invite:{i}", msg.client_id),
            kind: EventKind::MemberInvited,
            author: msg.author.clone(),
            body: String::new(),
            member: Some(member.clone()),
            change: Change::None,
            target: None,
            reply_to: None,
            attachment: None,
        };
        more.push(insert_event(conn, room_id, &invite, &Extra::default()).await?);
    }
    Ok(Appended {
        message,
        more,
        created: true,
        freed: Vec::new(),
    })
}

/// Turns rows of one room into messages with their reactions (read in one query for the lot).
async fn messages_of(
    conn: &mut PgConnection,
    rows: Vec<Row>,
) -> Result<Vec<ChatMessage>, StoreError> {
    let bounds = reaction_bounds(&rows);
    let mut out: Vec<ChatMessage> = rows.into_iter().map(ChatMessage::from).collect();
    let Some((room_id, lo, hi)) = bounds else {
        return Ok(out);
    };
    let given: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT x.seq, x.emoji, u.username FROM reactions x JOIN users u ON u.id = x.user_id \
         WHERE x.room_id = $1 AND x.seq BETWEEN $2 AND $3 ORDER BY x.seq, x.at, x.user_id",
    )
    .bind(room_id)
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *conn)
    .await?;
    add_reactions(&mut out, given);
    Ok(out)
}

/// The text-search query of a search, as SQL over bound parameters (numbered from `first`),
/// and the values to bind: every word and phrase required, each read by the database's own
/// parser (nothing a user types is query syntax), the last word also as a prefix.
fn ts_query(terms: &[Term], first: usize) -> Option<(String, Vec<String>)> {
    let mut parts = Vec::new();
    let mut binds = Vec::new();
    let kept: Vec<&Term> = terms
        .iter()
        .filter(|t| match t {
            Term::Word(w) | Term::Phrase(w) => !words_of(w).is_empty(),
        })
        .collect();
    for (i, term) in kept.iter().enumerate() {
        let (Term::Word(text) | Term::Phrase(text)) = term;
        binds.push(text.clone());
        let exact = format!("phraseto_tsquery('simple', ${})", first + binds.len() - 1);
        if i + 1 == kept.len() && matches!(term, Term::Word(_)) {
            // Quoted lexemes (letters and digits only) joined in order, the last as a prefix.
            let words = words_of(text);
            let last = words.len() - 1;
            let prefix = words
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    if j == last {
                        format!("'{w}':*")
                    } else {
                        format!("'{w}'")
                    }
                })
                .collect::<Vec<_>>()
                .join(" <-> ");
            binds.push(prefix);
            parts.push(format!(
                "({exact} || to_tsquery('simple', ${}))",
                first + binds.len() - 1
            ));
        } else {
            parts.push(exact);
        }
    }
    (!parts.is_empty()).then(|| (parts.join(" && "), binds))
}

#[async_trait]
impl Store for PgStore {
    async fn head(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let head: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE name = $1")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        Ok(head.map(seq_of))
    }

    async fn heads(&self, rooms: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, head_seq FROM rooms WHERE name = ANY($1)")
                .bind(rooms)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(n, h)| (n, seq_of(h))).collect())
    }

    async fn create_room(&self, room: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO rooms (name, head_seq, created_at) VALUES ($1, 0, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(room)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::RoomExists);
        }
        Ok(())
    }

    async fn room_access(
        &self,
        room: &str,
        user: Option<i64>,
    ) -> Result<Option<RoomAccess>, StoreError> {
        let row: Option<RoomRow> = sqlx::query_as(&format!("{ACCESS_SELECT} WHERE r.name = $2"))
            .bind(user)
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(RoomRow::access))
    }

    async fn room_info(
        &self,
        room: &str,
        user: Option<i64>,
    ) -> Result<Option<RoomInfo>, StoreError> {
        let row: Option<RoomRow> = sqlx::query_as(&format!("{ROOM_SELECT} WHERE r.name = $2"))
            .bind(user)
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(RoomRow::info))
    }

    async fn rooms_of(&self, user: i64) -> Result<Vec<RoomInfo>, StoreError> {
        let rows: Vec<RoomRow> = sqlx::query_as(&format!(
            "{ROOM_SELECT} WHERE me.user_id IS NOT NULL AND r.archived_at IS NULL \
             ORDER BY r.kind = 'dm', r.title"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(RoomRow::info).collect())
    }

    async fn public_rooms(&self, user: i64) -> Result<Vec<RoomInfo>, StoreError> {
        let rows: Vec<RoomRow> = sqlx::query_as(&format!(
            "{ROOM_SELECT} WHERE r.visibility = 'public' AND r.kind = 'room' \
             AND r.archived_at IS NULL ORDER BY r.title"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(RoomRow::info).collect())
    }

    async fn members(&self, room: &str) -> Result<Vec<MemberInfo>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT u.username, u.display_name, m.role FROM members m \
             JOIN rooms r ON r.id = m.room_id JOIN users u ON u.id = m.user_id \
             WHERE r.name = $1 ORDER BY m.role = 'owner' DESC, u.username",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(username, display_name, role)| MemberInfo {
                username,
                display_name,
                role,
                status: Default::default(),
                last_active: 0,
            })
            .collect())
    }

    async fn mark_read(
        &self,
        room: &str,
        user: i64,
        seq: u64,
    ) -> Result<Option<ReadState>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let read: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE members SET last_read = GREATEST(last_read, \
               LEAST($1, (SELECT head_seq FROM rooms WHERE id = members.room_id))) \
             WHERE user_id = $2 AND room_id = (SELECT id FROM rooms WHERE name = $3) \
             RETURNING last_read, room_id",
        )
        .bind(to_i64(seq))
        .bind(user)
        .bind(room)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((read, room_id)) = read else {
            return Ok(None);
        };
        let (unread, mentions): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM messages m WHERE m.room_id = $1 AND m.seq > $2 \
               AND m.kind = 'message' AND m.deleted_at IS NULL \
               AND m.user_id IS DISTINCT FROM $3), \
             (SELECT COUNT(*) FROM mentions x WHERE x.room_id = $1 AND x.user_id = $3 \
               AND x.at_seq > $2)",
        )
        .bind(room_id)
        .bind(read)
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(ReadState {
            seq: seq_of(read),
            unread: seq_of(unread),
            mentions: seq_of(mentions),
        }))
    }

    async fn users_named(&self, usernames: &[String]) -> Result<Vec<User>, StoreError> {
        let rows: Vec<UserRow> = sqlx::query_as(
            "SELECT id, username, display_name, is_admin FROM users WHERE username = ANY($1)",
        )
        .bind(usernames)
        .fetch_all(&self.pool)
        .await?;
        // In the order asked, as the other store answers.
        let mut users: Vec<User> = rows.into_iter().map(User::from).collect();
        users.sort_by_key(|u| usernames.iter().position(|n| *n == u.username));
        Ok(users)
    }

    async fn rooms_made_since(&self, user: i64, since: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rooms WHERE created_by = $1 AND created_at >= $2 \
             AND kind = 'room'",
        )
        .bind(user)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(seq_of(n))
    }

    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        writer::append_via(&self.appends, msg).await
    }

    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3"
        ))
        .bind(room)
        .bind(to_i64(after))
        .bind(limit_of(limit))
        .fetch_all(&mut *conn)
        .await?;
        messages_of(&mut conn, rows).await
    }

    async fn before(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
        ))
        .bind(room)
        .bind(before.map_or(i64::MAX, to_i64))
        .bind(limit_of(limit))
        .fetch_all(&mut *conn)
        .await?;
        let mut out = messages_of(&mut conn, rows).await?;
        out.reverse();
        Ok(out)
    }

    async fn recent(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<(u64, Vec<ChatMessage>)>, StoreError> {
        // One snapshot for both reads, so the head and the page agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE name = $1")
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(head) = head else {
            return Ok(None);
        };
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = $1 ORDER BY m.seq DESC LIMIT $2"
        ))
        .bind(room)
        .bind(limit_of(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = messages_of(&mut tx, rows).await?;
        tx.rollback().await?;
        out.reverse();
        Ok(Some((seq_of(head), out)))
    }

    async fn search(
        &self,
        scope: ReadScope,
        search: &Search,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let Some((query, binds)) = ts_query(&search.terms, 7) else {
            return Ok(Vec::new());
        };
        type HitRow = (
            String,
            String,
            String,
            i64,
            i64,
            String,
            Option<String>,
            i64,
            String,
        );
        let sql = format!(
            "SELECT r.name, r.title, r.kind, m.seq, m.id, m.\"user\", m.username, m.ts, m.body \
             FROM messages m JOIN rooms r ON r.id = m.room_id, (SELECT {query} AS q) AS tq \
             WHERE m.search @@ tq.q AND m.id < $1 \
               AND (EXISTS (SELECT 1 FROM members me WHERE me.room_id = r.id AND me.user_id = $2) \
                    OR ($6 AND r.visibility = 'public' AND r.kind = 'room')) \
               AND ($3::TEXT IS NULL OR m.username = $3) AND ($4::TEXT IS NULL OR r.name = $4) \
             ORDER BY m.id DESC LIMIT $5"
        );
        let mut q = sqlx::query_as::<_, HitRow>(&sql)
            .bind(before.unwrap_or(i64::MAX))
            .bind(scope.member)
            .bind(&search.from)
            .bind(&search.room)
            .bind(limit_of(limit))
            .bind(scope.public_rooms);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(
                |(room, title, kind, seq, id, user, username, ts, body)| SearchHit {
                    room,
                    room_title: if kind == "dm" {
                        title
                    } else {
                        format!("#{title}")
                    },
                    seq: seq_of(seq),
                    id,
                    user,
                    username,
                    ts,
                    snippet: snippet_of(&body, &search.terms),
                },
            )
            .collect())
    }

    async fn attachment(&self, id: &str) -> Result<Option<StoredAttachment>, StoreError> {
        let row: Option<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT r.name, a.sha256, a.name, a.size, a.mime FROM attachments a \
             JOIN rooms r ON r.id = a.room_id WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(room, sha256, name, size, mime)| StoredAttachment {
                room,
                sha256,
                name,
                size: seq_of(size),
                mime,
            }),
        )
    }

    async fn uploaded_bytes(&self, user: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM attachments WHERE uploader_id = $1",
        )
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        Ok(seq_of(n))
    }

    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        let used: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM attachments WHERE sha256 = $1 LIMIT 1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(used.is_some())
    }

    fn commits(&self) -> CommitFeed {
        self.commits.subscribe()
    }

    async fn import_room(&self, room: &RoomImport) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<(i64, i64)> =
            sqlx::query_as("SELECT id, head_seq FROM rooms WHERE name = $1 FOR UPDATE")
                .bind(&room.name)
                .fetch_optional(&mut *tx)
                .await?;
        let head = room.events.last().map_or(0, |m| to_i64(m.seq));
        match existing {
            Some((_, seq)) if seq > 0 => return Err(StoreError::RoomExists),
            // An empty room of that name (a new install's `general`) gives way to the import.
            Some((id, _)) => {
                sqlx::query("DELETE FROM rooms WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {}
        }
        let room_id: i64 = sqlx::query_scalar(
            "INSERT INTO rooms (name, head_seq, created_at, kind, visibility, title, \
             topic, owner_id, archived_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8) RETURNING id",
        )
        .bind(&room.name)
        .bind(head)
        .bind(room.created_at)
        .bind(kind_str(room.kind))
        .bind(visibility_str(room.visibility))
        .bind(&room.title)
        .bind(&room.topic)
        .bind(room.owner)
        .bind(room.archived_at)
        .fetch_one(&mut *tx)
        .await?;
        for m in &room.events {
            sqlx::query(
                "INSERT INTO messages (room_id, seq, client_id, kind, \"user\", user_id, username, \
                 guest, body, member, ts, target, reply_to, edited_at, deleted_at, mentions, count) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(room_id)
            .bind(to_i64(m.seq))
            .bind(&m.client_id)
            .bind(m.kind.as_str())
            .bind(&m.user)
            .bind(m.user_id)
            .bind(&m.username)
            .bind(m.guest)
            .bind(&m.body)
            .bind(&m.member)
            .bind(m.ts)
            .bind(m.target.map(to_i64))
            .bind(m.reply_to.map(to_i64))
            .bind(m.edited)
            .bind(m.deleted.then_some(m.ts))
            .bind(ids_text(&m.mentions))
            .bind(m.count.map(to_i64))
            .execute(&mut *tx)
            .await?;
        }
        for (user, role, joined_at, last_read) in &room.members {
            sqlx::query(
                "INSERT INTO members (room_id, user_id, role, joined_at, last_read) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(room_id)
            .bind(user)
            .bind(role)
            .bind(joined_at)
            .bind(to_i64(*last_read))
            .execute(&mut *tx)
            .await?;
        }
        for (seq, emoji, user, at) in &room.reactions {
            sqlx::query(
                "INSERT INTO reactions (room_id, seq, emoji, user_id, at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(room_id)
            .bind(to_i64(*seq))
            .bind(emoji)
            .bind(user)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn room_activity(
        &self,
        since: i64,
        scan: usize,
        limit: usize,
    ) -> Result<Vec<RoomActivity>, StoreError> {
        let rows: Vec<ActivityRow> = sqlx::query_as(
            "SELECT r.name, r.title, r.kind, \
               (SELECT count(*) FROM members x WHERE x.room_id = r.id), count(*), max(m.ts) \
             FROM (SELECT room_id, ts, kind FROM messages ORDER BY id DESC LIMIT $1) m \
             JOIN rooms r ON r.id = m.room_id \
             WHERE m.ts >= $2 AND m.kind = 'message' \
             GROUP BY r.id, r.name, r.title, r.kind ORDER BY count(*) DESC, max(m.ts) DESC LIMIT $3",
        )
        .bind(i64::try_from(scan).unwrap_or(i64::MAX))
        .bind(since)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(activity).collect())
    }

    fn pool_use(&self) -> Vec<(&'static str, u64, u64)> {
        [("read", &self.pool), ("write", &self.writer)]
            .into_iter()
            .map(|(name, pool)| {
                let idle = pool.num_idle() as u64;
                (name, idle, u64::from(pool.size()).saturating_sub(idle))
            })
            .collect()
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        invite: Option<(&str, i64)>,
    ) -> Result<User, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some((code_hash, now)) = invite {
            let used = sqlx::query(
                "UPDATE invites SET uses_left = uses_left - 1 \
                 WHERE code_hash = $1 AND uses_left > 0 AND expires_at > $2",
            )
            .bind(code_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if used.rows_affected() == 0 {
                return Err(StoreError::InviteInvalid);
            }
        }
        // The first account is the admin: the lock makes "no account yet" true for one only.
        sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let row: Option<(i64, bool)> = sqlx::query_as(
            "INSERT INTO users (username, display_name, password_hash, created_at, is_admin) \
             VALUES ($1, $2, $3, $4, NOT EXISTS (SELECT 1 FROM users)) \
             ON CONFLICT (username) DO NOTHING RETURNING id, is_admin",
        )
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, is_admin)) = row else {
            return Err(StoreError::UserExists);
        };
        tx.commit().await?;
        Ok(User {
            id,
            username: username.to_owned(),
            display_name: display_name.to_owned(),
            is_admin,
        })
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        let row: Option<(i64, String, String, bool, String, bool)> = sqlx::query_as(
            "SELECT id, username, display_name, is_admin, password_hash, disabled_at IS NOT NULL \
             FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(id, username, display_name, is_admin, password_hash, disabled)| Credentials {
                user: User {
                    id,
                    username,
                    display_name,
                    is_admin,
                },
                password_hash,
                disabled,
            },
        ))
    }

    async fn has_users(&self) -> Result<bool, StoreError> {
        let any: Option<i64> = sqlx::query_scalar("SELECT id FROM users LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(any.is_some())
    }

    async fn create_session(
        &self,
        id_hash: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session_user(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<(User, i64)>, StoreError> {
        let row: Option<(i64, String, String, bool, i64)> = sqlx::query_as(
            "SELECT u.id, u.username, u.display_name, u.is_admin, s.expires_at FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, username, display_name, is_admin, expires)| {
            (
                User {
                    id,
                    username,
                    display_name,
                    is_admin,
                },
                expires,
            )
        }))
    }

    async fn delete_session(&self, id_hash: &str) -> Result<Option<i64>, StoreError> {
        let user: Option<i64> =
            sqlx::query_scalar("DELETE FROM sessions WHERE id_hash = $1 RETURNING user_id")
                .bind(id_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(user)
    }

    async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO api_tokens (user_id, name, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(name)
        .bind(token_hash)
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn token_user(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<(i64, User, i64)>, StoreError> {
        let row: Option<(i64, i64, String, String, bool, i64)> = sqlx::query_as(
            "SELECT t.id, u.id, u.username, u.display_name, u.is_admin, t.expires_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND t.expires_at > $2 AND t.revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(tid, id, username, display_name, is_admin, expires)| {
                (
                    tid,
                    User {
                        id,
                        username,
                        display_name,
                        is_admin,
                    },
                    expires,
                )
            }),
        )
    }

    async fn token_valid(&self, token_id: i64, now: i64) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM api_tokens WHERE id = $1 AND expires_at > $2 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn revoke_token(
        &self,
        user_id: i64,
        token_id: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 \
             AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(token_id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn tokens(&self, user_id: i64) -> Result<Vec<TokenInfo>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, name, created_at, expires_at, revoked_at FROM api_tokens \
             WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, created_at, expires_at, revoked)| TokenInfo {
                id,
                name,
                created_at,
                expires_at,
                revoked: revoked.is_some(),
            })
            .collect())
    }

    async fn purge_expired(&self, now: i64, keep_until: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut n = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM api_tokens WHERE expires_at <= $1 OR revoked_at <= $1")
            .bind(keep_until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM invites WHERE expires_at <= $1 OR uses_left <= 0")
            .bind(keep_until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn create_invite(
        &self,
        code_hash: &str,
        created_by: i64,
        expires_at: i64,
        uses: i64,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO invites (code_hash, created_by, created_at, expires_at, uses_left) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(code_hash)
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at)
        .bind(uses)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn invite_valid(&self, code_hash: &str, now: i64) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM invites WHERE code_hash = $1 AND uses_left > 0 AND expires_at > $2",
        )
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn invites(&self) -> Result<Vec<InviteInfo>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT i.id, u.username, i.created_at, i.expires_at, i.uses_left FROM invites i \
             JOIN users u ON u.id = i.created_by ORDER BY i.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, created_by, created_at, expires_at, uses_left)| InviteInfo {
                    id,
                    created_by,
                    created_at,
                    expires_at,
                    uses_left,
                },
            )
            .collect())
    }

    async fn admin_users(
        &self,
        filter: Option<&str>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<AdminUser>, StoreError> {
        let pattern = filter.map(contains_pattern);
        let rows: Vec<AdminUserRow> = sqlx::query_as(
            "SELECT u.id, u.username, u.display_name, u.is_admin, u.created_at, \
               u.disabled_at IS NOT NULL, \
               (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND s.expires_at > $1) \
             FROM users u \
             WHERE $2::text IS NULL OR u.username LIKE lower($2) \
               OR lower(u.display_name) LIKE lower($2) \
             ORDER BY u.id LIMIT $3",
        )
        .bind(now)
        .bind(&pattern)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(admin_user).collect())
    }

    async fn set_disabled(
        &self,
        username: &str,
        at: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET disabled_at = $1 WHERE username = $2 RETURNING id",
        )
        .bind(at)
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?;
        if let (Some(id), Some(now)) = (id, at) {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    async fn end_sessions(&self, user_id: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn set_admin(&self, username: &str, admin: bool) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("UPDATE users SET is_admin = $1 WHERE username = $2 RETURNING id")
                .bind(admin)
                .bind(username)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
