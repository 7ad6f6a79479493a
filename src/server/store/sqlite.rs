//! The embedded default store: one SQLite file in WAL mode, one writer connection (owned by the
//! group-commit task) and a small pool of readers, which also serve every credential look-up so
//! that a flood of them never waits on, or holds up, the writer's fsyncs.

use super::feed::FeedSender;
use super::{
    AccountStore, Appended, CommitFeed, Credentials, InviteInfo, NewMessage, Store, StoreError,
    TokenInfo, User,
};
use crate::protocol::ChatMessage;
use crate::server::faults;
use crate::server::tasks::{panic_message, Tasks};
use async_trait::async_trait;
use futures_util::FutureExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "hubbub.sqlite3";

/// The name `/healthz` gives the group-commit task.
pub const WRITER_TASK: &str = "writer";

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

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    room: String,
    seq: i64,
    client_id: String,
    user: String,
    body: String,
    ts: i64,
}

impl From<Row> for ChatMessage {
    fn from(r: Row) -> Self {
        ChatMessage {
            room: r.room,
            seq: u64::try_from(r.seq).unwrap_or_default(),
            id: r.id,
            client_id: r.client_id,
            user: r.user,
            body: r.body,
            ts: r.ts,
        }
    }
}

const SELECT: &str =
    "SELECT m.id, r.name AS room, m.seq, m.client_id, m.user, m.body, m.ts FROM messages m JOIN rooms r ON r.id = m.room_id";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

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
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsynced before `append` returns, so an ack survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
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
        let (appends, pending) = mpsc::channel(4 * GROUP_MAX);
        let commits = FeedSender::default();
        tokio::spawn(group_commit(
            writer.clone(),
            pending,
            commits.clone(),
            tasks,
        ));
        Ok(SqliteStore {
            writer,
            readers,
            appends,
            commits,
        })
    }
}

/// An append waiting for the group commit, and where its answer goes.
type PendingAppend = (NewMessage, oneshot::Sender<Result<Appended, StoreError>>);

/// Most appends committed in one transaction.
const GROUP_MAX: usize = 256;

/// What the writer remembers across batches, and across a panic of its loop: what it has put
/// on the commit feed, and which rooms may hold commits it has not.
#[derive(Default)]
struct Fed {
    /// Per room, the last seq put on the feed (or the head when the room was first written).
    heads: HashMap<String, u64>,
    /// Rooms of a batch whose outcome is unknown (a commit that reported an error, or a panic):
    /// what landed there is read back and fed before anything else is written.
    suspect: HashSet<String>,
}

/// The single writer: takes every append that is waiting (up to [`GROUP_MAX`]), stores them in one
/// transaction with one fsync, then answers each. An append is answered only after the commit
/// that holds it, so "ack only after stored" still holds; under load many share one fsync.
/// New messages then go to the commit feed, in seq order, each exactly once: a commit that
/// reports an error is checked against the database, and what did land is fed and acked.
///
/// A panic in the loop is caught: the appends of that batch fail (their senders retry with the
/// same `client_id`), the rooms are reconciled, and the loop goes on with the same queue.
async fn group_commit(
    pool: SqlitePool,
    mut pending: mpsc::Receiver<PendingAppend>,
    commits: FeedSender,
    tasks: Tasks,
) {
    let mut fed = Fed::default();
    loop {
        tasks.started(WRITER_TASK);
        let run = AssertUnwindSafe(writer_loop(&pool, &mut pending, &commits, &mut fed))
            .catch_unwind()
            .await;
        match run {
            Ok(()) => break,
            Err(payload) => {
                tasks.panicked(WRITER_TASK, panic_message(&*payload));
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Whatever the lost batch committed is delivered now, not at the next append.
                if let Err(e) = reconcile(&pool, &commits, &mut fed).await {
                    tracing::error!(error = %e, "cannot read back an uncertain commit");
                }
            }
        }
    }
    tasks.stopped(WRITER_TASK);
    commits.close();
}

async fn writer_loop(
    pool: &SqlitePool,
    pending: &mut mpsc::Receiver<PendingAppend>,
    commits: &FeedSender,
    fed: &mut Fed,
) {
    let mut batch: Vec<PendingAppend> = Vec::with_capacity(GROUP_MAX);
    while pending.recv_many(&mut batch, GROUP_MAX).await > 0 {
        if let Err(e) = reconcile(pool, commits, fed).await {
            let message = e.to_string();
            tracing::error!(error = %message, "cannot read back an uncertain commit");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StoreError::Batch(message.clone())));
            }
            continue;
        }
        fed.suspect
            .extend(batch.iter().map(|(m, _)| m.room.clone()));
        match append_batch(pool, &batch, fed).await {
            Ok(results) => {
                if batch
                    .iter()
                    .any(|(m, _)| faults::hit("panic-after-commit", &m.body))
                {
                    panic!("injected fault: panic-after-commit");
                }
                for result in results.iter().flatten().filter(|a| a.created) {
                    feed(commits, fed, &result.message);
                }
                for room in batch.iter().map(|(m, _)| &m.room) {
                    fed.suspect.remove(room);
                }
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, appends = batch.len(), "group commit failed");
                // The commit may have landed all the same: read back what is there.
                let landed = match reconcile(pool, commits, fed).await {
                    Ok(landed) => landed,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read back an uncertain commit");
                        HashMap::new()
                    }
                };
                for (msg, reply) in batch.drain(..) {
                    let key = (msg.room.clone(), msg.client_id.clone());
                    let answer = match landed.get(&key) {
                        Some(message) => Ok(Appended {
                            message: message.clone(),
                            created: true,
                        }),
                        // Stored before (a resend): the original is the answer, as always.
                        None => match stored(pool, &msg).await {
                            Some(original) => Ok(Appended {
                                message: original,
                                created: false,
                            }),
                            None => Err(StoreError::Batch(message.clone())),
                        },
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

fn feed(commits: &FeedSender, fed: &mut Fed, message: &ChatMessage) {
    fed.heads.insert(message.room.clone(), message.seq);
    commits.send(Arc::new(message.clone()));
}

/// Feeds what committed in the suspect rooms after what was fed, and returns it by
/// (room, client_id). Nothing to do (and no query) when no room is suspect.
async fn reconcile(
    pool: &SqlitePool,
    commits: &FeedSender,
    fed: &mut Fed,
) -> Result<HashMap<(String, String), ChatMessage>, StoreError> {
    let mut landed = HashMap::new();
    let rooms: Vec<String> = fed.suspect.iter().cloned().collect();
    for room in rooms {
        let Some(&after) = fed.heads.get(&room) else {
            // Never written by this writer: nothing of it can be uncertain.
            fed.suspect.remove(&room);
            continue;
        };
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? AND m.seq > ? ORDER BY m.seq"
        ))
        .bind(&room)
        .bind(to_i64(after))
        .fetch_all(pool)
        .await?;
        for row in rows {
            let message = ChatMessage::from(row);
            tracing::warn!(room = %message.room, seq = message.seq, "a commit reported as failed had landed; delivering it");
            feed(commits, fed, &message);
            landed.insert((message.room.clone(), message.client_id.clone()), message);
        }
        fed.suspect.remove(&room);
    }
    Ok(landed)
}

/// The stored message with this `(room, client_id)`, if the database answers and has it.
async fn stored(pool: &SqlitePool, msg: &NewMessage) -> Option<ChatMessage> {
    let row: Option<Row> =
        sqlx::query_as(&format!("{SELECT} WHERE r.name = ? AND m.client_id = ?"))
            .bind(&msg.room)
            .bind(&msg.client_id)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
    row.map(Into::into)
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
        match append_one(&mut tx, msg, fed).await {
            Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
            other => results.push(other),
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
    let (room_id, head): (i64, i64) =
        sqlx::query_as("SELECT id, head_seq FROM rooms WHERE name = ?")
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
            created: false,
        });
    }
    let seq: i64 = sqlx::query_scalar(
        "UPDATE rooms SET head_seq = head_seq + 1 WHERE id = ? RETURNING head_seq",
    )
    .bind(room_id)
    .fetch_one(&mut *conn)
    .await?;
    let ts = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (room_id, seq, client_id, user, body, ts) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(room_id)
    .bind(seq)
    .bind(&msg.client_id)
    .bind(&msg.user)
    .bind(&msg.body)
    .bind(ts)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Appended {
        message: ChatMessage {
            room: msg.room.clone(),
            seq: u64::try_from(seq).unwrap_or_default(),
            id,
            client_id: msg.client_id.clone(),
            user: msg.user.clone(),
            body: msg.body.clone(),
            ts,
        },
        created: true,
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

    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send((msg, reply))
            .await
            .map_err(|_| StoreError::Batch("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Batch("the writer has stopped".into()))?
    }

    fn commits(&self) -> CommitFeed {
        self.commits.subscribe()
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
        tx.rollback().await?;
        let mut out: Vec<ChatMessage> = rows.into_iter().map(Into::into).collect();
        out.reverse();
        Ok(Some((u64::try_from(head).unwrap_or_default(), out)))
    }

    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? AND m.seq > ? ORDER BY m.seq LIMIT ?"
        ))
        .bind(room)
        .bind(to_i64(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn before(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE r.name = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"
        ))
        .bind(room)
        .bind(before.map_or(i64::MAX, to_i64))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?;
        let mut out: Vec<ChatMessage> = rows.into_iter().map(Into::into).collect();
        out.reverse();
        Ok(out)
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    display_name: String,
    is_admin: bool,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            is_admin: r.is_admin,
        }
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
        let row: Option<(i64, String, String, bool, String)> = sqlx::query_as(
            "SELECT id, username, display_name, is_admin, password_hash FROM users WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(
            |(id, username, display_name, is_admin, password_hash)| Credentials {
                user: User {
                    id,
                    username,
                    display_name,
                    is_admin,
                },
                password_hash,
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
}
