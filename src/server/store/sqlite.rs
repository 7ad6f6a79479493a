//! The embedded default store: one SQLite file in WAL mode, one writer connection (owned by the
//! group-commit task) and a small pool of readers, which also serve every credential look-up so
//! that a flood of them never waits on, or holds up, the writer's fsyncs.

use super::feed::FeedSender;
use super::rows::{
    activity, add_reactions, admin_user, contains_pattern, ids_of, ids_text, kind_str,
    reaction_bounds, seq_of, to_i64, visibility_str, ActivityRow, AdminUserRow, RoomRow, Row,
    UserRow,
};
use super::writer::{self, Batches, Fed, PendingAppend};
use super::{
    AccountStore, AdminUser, Appended, Change, CommitFeed, Credentials, InviteInfo, NewMessage,
    NewRoom, ReadScope, ReadState, RoomAccess, RoomActivity, RoomImport, Search, Store, StoreError,
    StoredAttachment, Term, TokenInfo, User,
};
use crate::protocol::api::{SearchHit, Snippet};
use crate::protocol::{self, Attachment, ChatMessage, EventKind, MemberInfo, Quote, RoomInfo};
use crate::server::faults;
use crate::server::tasks::Tasks;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "hubbub.sqlite3";

#[derive(Clone)]
pub struct SqliteStore {
    /// One connection: SQLite has a single writer, and a queue in the pool beats `SQLITE_BUSY` retries.
    writer: SqlitePool,
    /// Readers run beside the writer thanks to WAL, and see every committed row.
    readers: SqlitePool,
    /// Appends go to the group-commit task, which owns the writer for them.
    appends: mpsc::Sender<PendingAppend>,
    /// What the group-commit task committed, in order.
    commits: FeedSender,
}

/// The FTS5 expression of a search: every word and phrase quoted (so nothing a user types is
/// query syntax), all required, the last word also as a prefix. `None` when nothing is left.
fn fts_query(terms: &[Term]) -> Option<String> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut parts: Vec<String> = Vec::new();
    for (i, term) in terms.iter().enumerate() {
        match term {
            Term::Word(w) if w.trim().is_empty() => {}
            Term::Phrase(p) if p.trim().is_empty() => {}
            Term::Word(w) if i + 1 == terms.len() => parts.push(format!("{}*", quote(w))),
            Term::Word(w) | Term::Phrase(w) => parts.push(quote(w)),
        }
    }
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

/// Splits a snippet at the markers the index put around the words it found.
fn snippet_parts(snippet: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut hit = false;
    for piece in snippet.split(['\u{2}', '\u{3}']) {
        if !piece.is_empty() {
            out.push(Snippet {
                text: piece.to_owned(),
                hit,
            });
        }
        hit = !hit;
    }
    // A marker the text itself carried would flip the rest: only what the index marked counts.
    let marked = snippet.matches('\u{2}').count() == snippet.matches('\u{3}').count();
    if !marked {
        for part in &mut out {
            part.hit = false;
        }
    }
    out
}

/// Turns rows of one room into messages with their reactions (read in one query for the lot).
async fn messages_of(
    conn: &mut sqlx::SqliteConnection,
    rows: Vec<Row>,
) -> Result<Vec<ChatMessage>, StoreError> {
    let bounds = reaction_bounds(&rows);
    let mut out: Vec<ChatMessage> = rows.into_iter().map(ChatMessage::from).collect();
    let Some((room_id, lo, hi)) = bounds else {
        return Ok(out);
    };
    let given: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT x.seq, x.emoji, u.username FROM reactions x JOIN users u ON u.id = x.user_id \
         WHERE x.room_id = ? AND x.seq BETWEEN ? AND ? ORDER BY x.seq, x.at, x.user_id",
    )
    .bind(room_id)
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *conn)
    .await?;
    add_reactions(&mut out, given);
    Ok(out)
}

const SELECT: &str = "SELECT m.id, m.room_id, r.name AS room, m.seq, m.client_id, m.kind, m.user, m.user_id, \
     m.username, m.guest, m.body, m.member, m.ts, m.target, m.reply_to, m.edited_at, \
     m.deleted_at IS NOT NULL AS deleted, m.mentions, m.count, \
     q.user AS q_user, q.username AS q_username, q.body AS q_body, \
     q.deleted_at IS NOT NULL AS q_deleted, \
     a.id AS attachment, a.name AS a_name, a.size AS a_size, a.mime AS a_mime, \
     a.width AS a_width, a.height AS a_height \
     FROM messages m JOIN rooms r ON r.id = m.room_id \
     LEFT JOIN messages q ON m.reply_to IS NOT NULL AND q.room_id = m.room_id AND q.seq = m.reply_to \
     LEFT JOIN attachments a ON m.kind = 'message' AND a.room_id = m.room_id AND a.seq = m.seq";

/// Selects [`RoomRow`]s for the user bound first; the caller adds `WHERE` and `ORDER BY`.
const ROOM_SELECT: &str = "SELECT r.name, r.title, r.topic, r.kind, r.visibility, r.head_seq, \
     r.owner_id, o.username AS owner, r.archived_at IS NOT NULL AS archived, \
     (SELECT COUNT(*) FROM members c WHERE c.room_id = r.id) AS members, \
     me.role, me.last_read, \
     CASE WHEN me.user_id IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM messages m \
       WHERE m.room_id = r.id AND m.seq > me.last_read AND m.kind = 'message' \
       AND m.deleted_at IS NULL AND m.user_id IS NOT me.user_id) END AS unread, \
     CASE WHEN me.user_id IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM mentions x \
       WHERE x.room_id = r.id AND x.user_id = me.user_id AND x.at_seq > me.last_read) END \
       AS mentions, \
     CASE WHEN r.kind = 'dm' THEN (SELECT group_concat(u.username) FROM members p \
       JOIN users u ON u.id = p.user_id WHERE p.room_id = r.id) END AS people \
     FROM rooms r LEFT JOIN users o ON o.id = r.owner_id \
     LEFT JOIN members me ON me.room_id = r.id AND me.user_id = ?";

/// Like [`ROOM_SELECT`] without the two counts: what an authorisation needs, on every post and
/// read, without counting the room's members and the caller's unread messages each time.
const ACCESS_SELECT: &str = "SELECT r.name, r.title, r.topic, r.kind, r.visibility, r.head_seq, \
     r.owner_id, NULL AS owner, r.archived_at IS NOT NULL AS archived, 0 AS members, \
     me.role, me.last_read, 0 AS unread, 0 AS mentions, NULL AS people \
     FROM rooms r LEFT JOIN members me ON me.room_id = r.id AND me.user_id = ?";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_supervised(data_dir, Tasks::default()).await
    }

    /// Like [`SqliteStore::open`], reporting the writer task's health to `tasks`.
    pub async fn open_supervised(data_dir: &Path, tasks: Tasks) -> Result<Self, StoreError> {
        Self::open_file(&data_dir.join(DB_FILE), tasks).await
    }

    /// Opens (creating if needed) the database file at `path`, reporting the writer task's
    /// health to `tasks`.
    pub async fn open_file(path: &Path, tasks: Tasks) -> Result<Self, StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsynced before `append` returns, so an ack survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // What is deleted (a deleted message's text, an edit's old text) is overwritten
            // with zeros in the file, not only unlinked.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let (appends, commits) = writer::start(
            SqliteBatches {
                pool: writer.clone(),
            },
            tasks,
        );
        Ok(SqliteStore {
            writer,
            readers,
            appends,
            commits,
        })
    }
}

/// The group commit's side of the store: the writer connection.
struct SqliteBatches {
    pool: SqlitePool,
}

#[async_trait]
impl Batches for SqliteBatches {
    async fn append_batch(
        &self,
        batch: &[PendingAppend],
        fed: &mut Fed,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        append_batch(&self.pool, batch, fed).await
    }

    async fn committed_after(
        &self,
        room: &str,
        after: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? AND m.seq > ? ORDER BY m.seq"
        ))
        .bind(room)
        .bind(to_i64(after))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ChatMessage::from).collect())
    }

    async fn stored(&self, msg: &NewMessage) -> Option<ChatMessage> {
        let row: Option<Row> =
            sqlx::query_as(&format!("{SELECT} WHERE r.name = ? AND m.client_id = ?"))
                .bind(&msg.room)
                .bind(&msg.client_id)
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten();
        row.map(Into::into)
    }
}

/// Stores a batch in one transaction. An unknown room fails only its own append; a database
/// error fails the whole batch, which is rolled back.
async fn append_batch(
    pool: &SqlitePool,
    batch: &[PendingAppend],
    fed: &mut Fed,
) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for (msg, _) in batch {
        if faults::hit("writer-panic", &msg.body) {
            panic!("injected fault: writer-panic");
        }
        // Each append in its own savepoint: one refused (an archived room, a full one) leaves
        // nothing half-done, and the others of the batch still commit.
        sqlx::query("SAVEPOINT one").execute(&mut *tx).await?;
        match append_one(&mut tx, msg, fed).await {
            Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
            Ok(done) => {
                sqlx::query("RELEASE one").execute(&mut *tx).await?;
                results.push(Ok(done));
            }
            Err(refused) => {
                sqlx::query("ROLLBACK TO one").execute(&mut *tx).await?;
                sqlx::query("RELEASE one").execute(&mut *tx).await?;
                results.push(Err(refused));
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
    Ok(results)
}

async fn append_one(
    conn: &mut sqlx::SqliteConnection,
    msg: &NewMessage,
    fed: &mut Fed,
) -> Result<Appended, StoreError> {
    if let Change::Create(room) = &msg.change {
        return create_room(conn, msg, room, fed).await;
    }
    let (room_id, head, archived, visibility): (i64, i64, bool, String) = sqlx::query_as(
        "SELECT id, head_seq, archived_at IS NOT NULL, visibility FROM rooms WHERE name = ?",
    )
    .bind(&msg.room)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::RoomNotFound)?;
    // The first write to a room: what came before it is history, not for the feed.
    fed.heads
        .entry(msg.room.clone())
        .or_insert_with(|| u64::try_from(head).unwrap_or_default());
    let existing: Option<Row> =
        sqlx::query_as(&format!("{SELECT} WHERE m.room_id = ? AND m.client_id = ?"))
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
    // Checked again here, where it cannot race a removal: an account writes only to rooms it
    // is in, and nobody but members to a private room or DM.
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
             width, height, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(room_id)
        .bind(to_i64(message.seq))
        .bind(msg.author.user_id)
        .bind(&a.sha256)
        .bind(&a.name)
        .bind(to_i64(a.size))
        .bind(&a.mime)
        .bind(a.width)
        .bind(a.height)
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
    if !extra.notify.is_empty() {
        // Each newly mentioned member counts this event (the message, or the edit that named
        // them) as a mention, until they read past it.
        let target = msg.target.map_or(message.seq, |t| t);
        for user in &extra.notify {
            sqlx::query(
                "INSERT OR IGNORE INTO mentions (room_id, user_id, at_seq, seq) VALUES (?, ?, ?, ?)",
            )
            .bind(room_id)
            .bind(user)
            .bind(to_i64(message.seq))
            .bind(to_i64(target))
            .execute(&mut *conn)
            .await?;
        }
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
    /// The members the text mentions (a message, an edit).
    mentions: Vec<i64>,
    /// Of those, who was not mentioned before (everyone, for a new message).
    notify: Vec<i64>,
    /// A reaction's count once applied.
    count: Option<u64>,
    /// A reply's quote.
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

/// The chat message at `seq` in the room, not deleted.
async fn target_message(
    conn: &mut sqlx::SqliteConnection,
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
        "SELECT id, kind, user_id, user, username, body, ts, deleted_at IS NOT NULL, mentions \
         FROM messages WHERE room_id = ? AND seq = ?",
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

/// The members of the room a text mentions by username, its author left out.
async fn resolve_mentions(
    conn: &mut sqlx::SqliteConnection,
    room_id: i64,
    body: &str,
    author: Option<i64>,
) -> Result<Vec<i64>, StoreError> {
    let names = protocol::mentioned_usernames(body);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; names.len()].join(", ");
    let sql = format!(
        "SELECT u.id FROM users u JOIN members m ON m.user_id = u.id AND m.room_id = ? \
         WHERE u.username IN ({marks}) ORDER BY u.id"
    );
    let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(room_id);
    for n in &names {
        q = q.bind(n);
    }
    let ids = q.fetch_all(&mut *conn).await?;
    Ok(ids.into_iter().filter(|id| Some(*id) != author).collect())
}

async fn is_member(
    conn: &mut sqlx::SqliteConnection,
    room_id: i64,
    user: i64,
) -> Result<bool, StoreError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM members WHERE room_id = ? AND user_id = ?")
            .bind(room_id)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(found.is_some())
}

/// Applies what an event changes in the room, before the event is stored; returns the blobs it
/// left unreferenced (a deleted message's files).
async fn apply(
    conn: &mut sqlx::SqliteConnection,
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
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE room_id = ?")
                .bind(room_id)
                .fetch_one(&mut *conn)
                .await?;
            if u64::try_from(count).unwrap_or_default() >= *max_members {
                return Err(StoreError::RoomFull);
            }
            // A new member has read nothing of what came before: it is history, not unread.
            sqlx::query(
                "INSERT INTO members (room_id, user_id, role, joined_at, last_read) \
                 SELECT id, ?, 'member', ?, head_seq FROM rooms WHERE id = ?",
            )
            .bind(user)
            .bind(now_ms())
            .bind(room_id)
            .execute(&mut *conn)
            .await?;
        }
        Change::RemoveMember => {
            let user = member.ok_or(StoreError::NotMember)?;
            let gone = sqlx::query("DELETE FROM members WHERE room_id = ? AND user_id = ?")
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
                "UPDATE rooms SET title = ? WHERE id = ?"
            } else {
                "UPDATE rooms SET topic = ? WHERE id = ?"
            };
            sqlx::query(sql)
                .bind(&msg.body)
                .bind(room_id)
                .execute(&mut *conn)
                .await?;
        }
        Change::Archive => {
            sqlx::query("UPDATE rooms SET archived_at = ? WHERE id = ?")
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
            sqlx::query("UPDATE messages SET body = ?, edited_at = ?, mentions = ? WHERE id = ?")
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
            // The text goes from the message, from every edit of it, from the search index (by
            // trigger), and with it its reactions and mentions.
            sqlx::query(
                "UPDATE messages SET body = '', deleted_at = ?, mentions = '', edited_at = NULL \
                 WHERE id = ?",
            )
            .bind(now_ms())
            .bind(target.id)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE messages SET body = '', mentions = '' \
                 WHERE room_id = ? AND target = ? AND kind = 'message_edited'",
            )
            .bind(room_id)
            .bind(to_i64(seq))
            .execute(&mut *conn)
            .await?;
            let files: Vec<String> = sqlx::query_scalar(
                "DELETE FROM attachments WHERE room_id = ? AND seq = ? RETURNING sha256",
            )
            .bind(room_id)
            .bind(to_i64(seq))
            .fetch_all(&mut *conn)
            .await?;
            for sha in files {
                let used: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM attachments WHERE sha256 = ? LIMIT 1")
                        .bind(&sha)
                        .fetch_optional(&mut *conn)
                        .await?;
                if used.is_none() {
                    freed.push(sha);
                }
            }
            for table in ["reactions", "mentions"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE room_id = ? AND seq = ?"
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
                    "SELECT DISTINCT emoji FROM reactions WHERE room_id = ? AND seq = ?",
                )
                .bind(room_id)
                .bind(seq)
                .fetch_all(&mut *conn)
                .await?;
                if !known.contains(emoji) && known.len() as u64 >= *max_emoji {
                    return Err(StoreError::TooManyReactions);
                }
                sqlx::query(
                    "INSERT OR IGNORE INTO reactions (room_id, seq, emoji, user_id, at) \
                     VALUES (?, ?, ?, ?, ?)",
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
                    "DELETE FROM reactions WHERE room_id = ? AND seq = ? AND emoji = ? AND user_id = ?",
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
                "SELECT COUNT(*) FROM reactions WHERE room_id = ? AND seq = ? AND emoji = ?",
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

/// Stores an event at the room's next seq.
async fn insert_event(
    conn: &mut sqlx::SqliteConnection,
    room_id: i64,
    msg: &NewMessage,
    extra: &Extra,
) -> Result<ChatMessage, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE rooms SET head_seq = head_seq + 1 WHERE id = ? RETURNING head_seq",
    )
    .bind(room_id)
    .fetch_one(&mut *conn)
    .await?;
    let ts = now_ms();
    let member = msg.member.as_ref().map(|m| m.username.clone());
    let guest = msg.author.user_id.is_none();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (room_id, seq, client_id, kind, user, user_id, username, guest, body, \
         member, ts, target, reply_to, mentions, count) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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

/// Makes a room with its `room_created` event (and a DM's invitations). A DM that exists with
/// the same people is returned as it is.
async fn create_room(
    conn: &mut sqlx::SqliteConnection,
    msg: &NewMessage,
    room: &NewRoom,
    fed: &mut Fed,
) -> Result<Appended, StoreError> {
    if let Some(key) = &room.dm_key {
        let existing: Option<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.dm_key = ? ORDER BY m.seq LIMIT 1"
        ))
        .bind(key)
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
    }
    let creator = msg.author.user_id;
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO rooms (name, head_seq, created_at, kind, visibility, title, topic, owner_id, dm_key, created_by) \
         VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    .fetch_one(&mut *conn)
    .await;
    let room_id = match inserted {
        Ok(id) => id,
        Err(e) if is_unique_violation(&e) => return Err(StoreError::RoomExists),
        Err(e) => return Err(e.into()),
    };
    fed.heads.insert(msg.room.clone(), 0);
    let mut members = Vec::with_capacity(room.invited.len() + 1);
    if let Some(creator) = creator {
        members.push((creator, if room.owned { "owner" } else { "member" }));
    }
    members.extend(room.invited.iter().map(|m| (m.user_id, "member")));
    for (user, role) in members {
        sqlx::query(
            "INSERT INTO members (room_id, user_id, role, joined_at, last_read) VALUES (?, ?, ?, ?, 0) \
             ON CONFLICT DO NOTHING",
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

#[async_trait]
impl Store for SqliteStore {
    async fn head(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let head: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE name = ?")
            .bind(room)
            .fetch_optional(&self.readers)
            .await?;
        Ok(head.map(|h| u64::try_from(h).unwrap_or_default()))
    }

    async fn heads(&self, rooms: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::with_capacity(rooms.len());
        for chunk in rooms.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT name, head_seq FROM rooms WHERE name IN ({marks})");
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
            for r in chunk {
                q = q.bind(r);
            }
            out.extend(
                q.fetch_all(&self.readers)
                    .await?
                    .into_iter()
                    .map(|(n, h)| (n, seq_of(h))),
            );
        }
        Ok(out)
    }

    async fn create_room(&self, room: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO rooms (name, head_seq, created_at) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(room)
        .bind(now_ms())
        .execute(&self.writer)
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
        let row: Option<RoomRow> = sqlx::query_as(&format!("{ACCESS_SELECT} WHERE r.name = ?"))
            .bind(user)
            .bind(room)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(RoomRow::access))
    }

    async fn room_info(
        &self,
        room: &str,
        user: Option<i64>,
    ) -> Result<Option<RoomInfo>, StoreError> {
        let row: Option<RoomRow> = sqlx::query_as(&format!("{ROOM_SELECT} WHERE r.name = ?"))
            .bind(user)
            .bind(room)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(RoomRow::info))
    }

    async fn rooms_of(&self, user: i64) -> Result<Vec<RoomInfo>, StoreError> {
        let rows: Vec<RoomRow> = sqlx::query_as(&format!(
            "{ROOM_SELECT} WHERE me.user_id IS NOT NULL AND r.archived_at IS NULL \
             ORDER BY r.kind = 'dm', r.title"
        ))
        .bind(user)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(RoomRow::info).collect())
    }

    async fn public_rooms(&self, user: i64) -> Result<Vec<RoomInfo>, StoreError> {
        let rows: Vec<RoomRow> = sqlx::query_as(&format!(
            "{ROOM_SELECT} WHERE r.visibility = 'public' AND r.kind = 'room' \
             AND r.archived_at IS NULL ORDER BY r.title"
        ))
        .bind(user)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(RoomRow::info).collect())
    }

    async fn members(&self, room: &str) -> Result<Vec<MemberInfo>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT u.username, u.display_name, m.role FROM members m \
             JOIN rooms r ON r.id = m.room_id JOIN users u ON u.id = m.user_id \
             WHERE r.name = ? ORDER BY m.role = 'owner' DESC, u.username",
        )
        .bind(room)
        .fetch_all(&self.readers)
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
        let mut tx = self.writer.begin().await?;
        let read: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE members SET last_read = MAX(last_read, MIN(?, (SELECT head_seq FROM rooms WHERE id = room_id))) \
             WHERE user_id = ? AND room_id = (SELECT id FROM rooms WHERE name = ?) RETURNING last_read, room_id",
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
            "SELECT (SELECT COUNT(*) FROM messages m WHERE m.room_id = ?1 AND m.seq > ?2 \
               AND m.kind = 'message' AND m.deleted_at IS NULL AND m.user_id IS NOT ?3), \
             (SELECT COUNT(*) FROM mentions x WHERE x.room_id = ?1 AND x.user_id = ?3 AND x.at_seq > ?2)",
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
        let mut users = Vec::with_capacity(usernames.len());
        for name in usernames {
            let row: Option<UserRow> = sqlx::query_as(
                "SELECT id, username, display_name, is_admin FROM users WHERE username = ?",
            )
            .bind(name)
            .fetch_optional(&self.readers)
            .await?;
            users.extend(row.map(User::from));
        }
        Ok(users)
    }

    async fn rooms_made_since(&self, user: i64, since: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rooms WHERE created_by = ? AND created_at >= ? AND kind = 'room'",
        )
        .bind(user)
        .bind(since)
        .fetch_one(&self.readers)
        .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        writer::append_via(&self.appends, msg).await
    }

    async fn search(
        &self,
        scope: ReadScope,
        search: &Search,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let Some(expr) = fts_query(&search.terms) else {
            return Ok(Vec::new());
        };
        // The index is read newest first and stops at `limit`: rows the caller may not read or
        // that the filters leave out are skipped on the way.
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
        let rows: Vec<HitRow> = sqlx::query_as(
            "SELECT r.name, r.title, r.kind, m.seq, m.id, m.user, m.username, m.ts, \
               snippet(messages_fts, 0, char(2), char(3), '…', 16) \
             FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid \
             JOIN rooms r ON r.id = m.room_id \
             WHERE messages_fts MATCH ?1 AND messages_fts.rowid < ?2 \
               AND (EXISTS (SELECT 1 FROM members me WHERE me.room_id = r.id AND me.user_id = ?3) \
                    OR (?7 AND r.visibility = 'public' AND r.kind = 'room')) \
               AND (?4 IS NULL OR m.username = ?4) AND (?5 IS NULL OR r.name = ?5) \
             ORDER BY messages_fts.rowid DESC LIMIT ?6",
        )
        .bind(&expr)
        .bind(before.unwrap_or(i64::MAX))
        .bind(scope.member)
        .bind(&search.from)
        .bind(&search.room)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(scope.public_rooms)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(room, title, kind, seq, id, user, username, ts, snippet)| SearchHit {
                    room,
                    // A DM's title lists its people; the page shows the others.
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
                    snippet: snippet_parts(&snippet),
                },
            )
            .collect())
    }

    async fn attachment(&self, id: &str) -> Result<Option<StoredAttachment>, StoreError> {
        let row: Option<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT r.name, a.sha256, a.name, a.size, a.mime FROM attachments a \
             JOIN rooms r ON r.id = a.room_id WHERE a.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.readers)
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
            "SELECT COALESCE(SUM(size), 0) FROM attachments WHERE uploader_id = ?",
        )
        .bind(user)
        .fetch_one(&self.readers)
        .await?;
        Ok(seq_of(n))
    }

    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM attachments WHERE sha256 = ? LIMIT 1")
                .bind(sha256)
                .fetch_optional(&self.readers)
                .await?;
        Ok(used.is_some())
    }

    fn commits(&self) -> CommitFeed {
        self.commits.subscribe()
    }

    async fn import_room(&self, room: &RoomImport) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let existing: Option<(i64, i64)> =
            sqlx::query_as("SELECT id, head_seq FROM rooms WHERE name = ?")
                .bind(&room.name)
                .fetch_optional(&mut *tx)
                .await?;
        let head = room.events.last().map_or(0, |m| to_i64(m.seq));
        match existing {
            Some((_, seq)) if seq > 0 => return Err(StoreError::RoomExists),
            // An empty room of that name (a new install's `general`) gives way to the import.
            Some((id, _)) => {
                sqlx::query("DELETE FROM rooms WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {}
        }
        let room_id: i64 = sqlx::query_scalar(
            "INSERT INTO rooms (name, head_seq, created_at, kind, visibility, title, \
             topic, owner_id, archived_at, created_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        .bind(room.owner)
        .fetch_one(&mut *tx)
        .await?;
        for m in &room.events {
            sqlx::query(
                "INSERT INTO messages (room_id, seq, client_id, kind, user, user_id, username, \
                 guest, body, member, ts, target, reply_to, edited_at, deleted_at, mentions, count) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                "INSERT INTO members (room_id, user_id, role, joined_at, last_read) VALUES (?, ?, ?, ?, ?)",
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
                "INSERT INTO reactions (room_id, seq, emoji, user_id, at) VALUES (?, ?, ?, ?, ?)",
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
             FROM (SELECT room_id, ts, kind FROM messages ORDER BY id DESC LIMIT ?1) m \
             JOIN rooms r ON r.id = m.room_id \
             WHERE m.ts >= ?2 AND m.kind = 'message' \
             GROUP BY r.id ORDER BY count(*) DESC, max(m.ts) DESC LIMIT ?3",
        )
        .bind(i64::try_from(scan).unwrap_or(i64::MAX))
        .bind(since)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(activity).collect())
    }

    fn pool_use(&self) -> Vec<(&'static str, u64, u64)> {
        [("read", &self.readers), ("write", &self.writer)]
            .into_iter()
            .map(|(name, pool)| {
                let idle = pool.num_idle() as u64;
                (name, idle, u64::from(pool.size()).saturating_sub(idle))
            })
            .collect()
    }

    async fn recent(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<(u64, Vec<ChatMessage>)>, StoreError> {
        // One read transaction: both reads see the same snapshot of the WAL.
        let mut tx = self.readers.begin().await?;
        let head: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE name = ?")
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(head) = head else {
            return Ok(None);
        };
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? ORDER BY m.seq DESC LIMIT ?"
        ))
        .bind(room)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = messages_of(&mut tx, rows).await?;
        tx.rollback().await?;
        out.reverse();
        Ok(Some((u64::try_from(head).unwrap_or_default(), out)))
    }

    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"
        ))
        .bind(room)
        .bind(to_i64(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
        let mut conn = self.readers.acquire().await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"
        ))
        .bind(room)
        .bind(before.map_or(i64::MAX, to_i64))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
        let mut out = messages_of(&mut conn, rows).await?;
        out.reverse();
        Ok(out)
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        invite: Option<(&str, i64)>,
    ) -> Result<User, StoreError> {
        let mut tx = self.writer.begin().await?;
        if let Some((code_hash, now)) = invite {
            let used = sqlx::query(
                "UPDATE invites SET uses_left = uses_left - 1 WHERE code_hash = ? AND uses_left > 0 AND expires_at > ?",
            )
            .bind(code_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if used.rows_affected() == 0 {
                return Err(StoreError::InviteInvalid);
            }
        }
        let row: (i64, bool) = sqlx::query_as(
            "INSERT INTO users (username, display_name, password_hash, created_at, is_admin) \
             VALUES (?, ?, ?, ?, NOT EXISTS (SELECT 1 FROM users)) RETURNING id, is_admin",
        )
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::UserExists
            } else {
                StoreError::Database(e)
            }
        })?;
        tx.commit().await?;
        Ok(User {
            id: row.0,
            username: username.to_owned(),
            display_name: display_name.to_owned(),
            is_admin: row.1,
        })
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        let row: Option<(i64, String, String, bool, String, bool)> = sqlx::query_as(
            "SELECT id, username, display_name, is_admin, password_hash, disabled_at IS NOT NULL \
             FROM users WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.readers)
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
            .fetch_optional(&self.readers)
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
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn session_user(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<(User, i64)>, StoreError> {
        let row: Option<(i64, String, String, bool, i64)> = sqlx::query_as(
            "SELECT u.id, u.username, u.display_name, u.is_admin, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires_at > ?",
        )
        .bind(id_hash)
        .bind(now)
        // A reader: each query sees every commit made before it (WAL), so a session created a
        // moment ago is found, and the writer's fsyncs never hold a look-up up.
        .fetch_optional(&self.readers)
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
            sqlx::query_scalar("DELETE FROM sessions WHERE id_hash = ? RETURNING user_id")
                .bind(id_hash)
                .fetch_optional(&self.writer)
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
            "INSERT INTO api_tokens (user_id, name, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(user_id)
        .bind(name)
        .bind(token_hash)
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn token_user(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<(i64, User, i64)>, StoreError> {
        let row: Option<(i64, i64, String, String, bool, i64)> = sqlx::query_as(
            "SELECT t.id, u.id, u.username, u.display_name, u.is_admin, t.expires_at FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND t.expires_at > ? AND t.revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.readers)
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
            "SELECT id FROM api_tokens WHERE id = ? AND expires_at > ? AND revoked_at IS NULL",
        )
        .bind(token_id)
        .bind(now)
        .fetch_optional(&self.readers)
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
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(token_id)
        .bind(user_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn tokens(&self, user_id: i64) -> Result<Vec<TokenInfo>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, name, created_at, expires_at, revoked_at FROM api_tokens WHERE user_id = ? ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.readers)
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
        let mut tx = self.writer.begin().await?;
        let mut n = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM api_tokens WHERE expires_at <= ? OR revoked_at <= ?")
            .bind(keep_until)
            .bind(keep_until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM invites WHERE expires_at <= ? OR uses_left <= 0")
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
            "INSERT INTO invites (code_hash, created_by, created_at, expires_at, uses_left) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(code_hash)
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at)
        .bind(uses)
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn invite_valid(&self, code_hash: &str, now: i64) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM invites WHERE code_hash = ? AND uses_left > 0 AND expires_at > ?",
        )
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&self.readers)
        .await?;
        Ok(found.is_some())
    }

    async fn invites(&self) -> Result<Vec<InviteInfo>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT i.id, u.username, i.created_at, i.expires_at, i.uses_left FROM invites i JOIN users u ON u.id = i.created_by ORDER BY i.id",
        )
        .fetch_all(&self.readers)
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
               (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND s.expires_at > ?1) \
             FROM users u \
             WHERE ?2 IS NULL OR u.username LIKE ?2 ESCAPE '\\' \
               OR lower(u.display_name) LIKE lower(?2) ESCAPE '\\' \
             ORDER BY u.id LIMIT ?3",
        )
        .bind(now)
        .bind(&pattern)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(admin_user).collect())
    }

    async fn set_disabled(
        &self,
        username: &str,
        at: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let id: Option<i64> =
            sqlx::query_scalar("UPDATE users SET disabled_at = ? WHERE username = ? RETURNING id")
                .bind(at)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
        if let (Some(id), Some(now)) = (id, at) {
            sqlx::query("DELETE FROM sessions WHERE user_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
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
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn set_admin(&self, username: &str, admin: bool) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("UPDATE users SET is_admin = ? WHERE username = ? RETURNING id")
                .bind(admin)
                .bind(username)
                .fetch_optional(&self.writer)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;
    use std::borrow::Cow;

    /// A database as the code before rooms made it (migrations up to 0003, rows as that code
    /// wrote them) opens with its history, its seqs and every account a member of `general`.
    #[tokio::test]
    async fn a_database_from_before_rooms_opens_and_keeps_its_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let options = SqliteConnectOptions::new()
                .filename(dir.path().join(DB_FILE))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .expect("open");
            let mut old = sqlx::migrate!("./migrations");
            old.migrations = Cow::Owned(
                old.migrations
                    .iter()
                    .filter(|m| m.version <= 3)
                    .cloned()
                    .collect(),
            );
            old.run(&pool).await.expect("old schema");
            for (name, display) in [("ann", "Ann"), ("bob", "Bob")] {
                sqlx::query("INSERT INTO users (username, display_name, password_hash, created_at) VALUES (?, ?, 'x', 1)")
                    .bind(name)
                    .bind(display)
                    .execute(&pool)
                    .await
                    .expect("user");
            }
            for seq in 1..=3i64 {
                sqlx::query("UPDATE rooms SET head_seq = ? WHERE name = 'general'")
                    .bind(seq)
                    .execute(&pool)
                    .await
                    .expect("head");
                sqlx::query("INSERT INTO messages (room_id, seq, client_id, user, body, ts) VALUES (1, ?, ?, 'Ann', ?, 5)")
                    .bind(seq)
                    .bind(format!("c{seq}"))
                    .bind(format!("old {seq}"))
                    .execute(&pool)
                    .await
                    .expect("message");
            }
            pool.close().await;
        }
        let store = SqliteStore::open(dir.path()).await.expect("migrates");
        let history = store.after("general", 0, 10).await.expect("history");
        let bodies: Vec<(u64, &str, EventKind)> = history
            .iter()
            .map(|m| (m.seq, m.body.as_str(), m.kind))
            .collect();
        assert_eq!(
            bodies,
            vec![
                (1, "old 1", EventKind::Message),
                (2, "old 2", EventKind::Message),
                (3, "old 3", EventKind::Message),
            ]
        );
        assert!(history.iter().all(|m| m.user == "Ann" && !m.guest));
        let members = store.members("general").await.expect("members");
        assert_eq!(
            members
                .iter()
                .map(|m| m.username.as_str())
                .collect::<Vec<_>>(),
            vec!["ann", "bob"]
        );
        // They had read what was there: nothing old is unread.
        let ann = store.rooms_of(1).await.expect("rooms");
        assert_eq!(ann.len(), 1);
        assert_eq!(
            (ann[0].name.as_str(), ann[0].head, ann[0].unread),
            ("general", 3, 0)
        );
        assert_eq!(ann[0].title, "general");
        // And the stream goes on from where it was.
        let next = store
            .append(NewMessage::chat(
                "general",
                "new".into(),
                crate::server::store::Author::of(&User {
                    id: 2,
                    username: "bob".into(),
                    display_name: "Bob".into(),
                    is_admin: false,
                }),
                "new".into(),
            ))
            .await
            .expect("append");
        assert_eq!(next.message.seq, 4);
        assert_eq!(store.rooms_of(1).await.expect("rooms")[0].unread, 1);
    }
}
