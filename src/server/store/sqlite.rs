//! The embedded default store: one SQLite file in WAL mode, one writer connection and a small pool
//! of readers.

use super::{
    AccountStore, Appended, CommitFeed, Credentials, NewMessage, Store, StoreError, TokenInfo,
    User, COMMIT_FEED_LEN,
};
use crate::protocol::ChatMessage;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "hubbub.sqlite3";

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: SQLite has a single writer, and a queue in the pool beats `SQLITE_BUSY` retries.
    writer: SqlitePool,
    /// Readers run beside the writer thanks to WAL.
    readers: SqlitePool,
    /// Appends go to the group-commit task, which owns the writer for them.
    appends: mpsc::Sender<PendingAppend>,
    /// What the group-commit task committed, in order.
    commits: broadcast::Sender<Arc<ChatMessage>>,
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
        let (commits, _) = broadcast::channel(COMMIT_FEED_LEN);
        tokio::spawn(group_commit(writer.clone(), pending, commits.clone()));
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

/// The single writer: takes every append that is waiting (up to [`GROUP_MAX`]), stores them in one
/// transaction with one fsync, then answers each. An append is answered only after the commit
/// that holds it, so "ack only after stored" still holds; under load many share one fsync.
/// New messages then go to the commit feed, in seq order.
async fn group_commit(
    pool: SqlitePool,
    mut pending: mpsc::Receiver<PendingAppend>,
    commits: broadcast::Sender<Arc<ChatMessage>>,
) {
    let mut batch: Vec<PendingAppend> = Vec::with_capacity(GROUP_MAX);
    while pending.recv_many(&mut batch, GROUP_MAX).await > 0 {
        match append_batch(&pool, &batch).await {
            Ok(results) => {
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    if let Ok(Appended {
                        message,
                        created: true,
                    }) = &result
                    {
                        // No receiver (no server yet) is fine: the history has it.
                        let _ = commits.send(Arc::new(message.clone()));
                    }
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, appends = batch.len(), "group commit failed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Batch(message.clone())));
                }
            }
        }
    }
}

/// Stores a batch in one transaction. An unknown room fails only its own append; a database
/// error fails the whole batch, which is rolled back.
async fn append_batch(
    pool: &SqlitePool,
    batch: &[PendingAppend],
) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for (msg, _) in batch {
        match append_one(&mut tx, msg).await {
            Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
            other => results.push(other),
        }
    }
    tx.commit().await?;
    Ok(results)
}

async fn append_one(
    conn: &mut sqlx::SqliteConnection,
    msg: &NewMessage,
) -> Result<Appended, StoreError> {
    let room_id: i64 = sqlx::query_scalar("SELECT id FROM rooms WHERE name = ?")
        .bind(&msg.room)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::RoomNotFound)?;
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
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
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
    ) -> Result<User, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, display_name, password_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::UserExists
            } else {
                StoreError::Database(e)
            }
        })?;
        Ok(User {
            id,
            username: username.to_owned(),
            display_name: display_name.to_owned(),
        })
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        let row: Option<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, username, display_name, password_hash FROM users WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.readers)
        .await?;
        Ok(
            row.map(|(id, username, display_name, password_hash)| Credentials {
                user: User {
                    id,
                    username,
                    display_name,
                },
                password_hash,
            }),
        )
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

    async fn session_user(&self, id_hash: &str, now: i64) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT u.id, u.username, u.display_name FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires_at > ?",
        )
        .bind(id_hash)
        .bind(now)
        // The writer: a session created a moment ago must be visible at once.
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.writer)
            .await?;
        Ok(())
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
    ) -> Result<Option<(i64, User)>, StoreError> {
        let row: Option<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT t.id, u.id, u.username, u.display_name FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND t.expires_at > ? AND t.revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|(tid, id, username, display_name)| {
            (
                tid,
                User {
                    id,
                    username,
                    display_name,
                },
            )
        }))
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
        .fetch_all(&self.writer)
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
}
