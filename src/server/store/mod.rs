//! Durable history behind one trait, so the hub and the HTTP layer never see SQL and a second
//! database can be added beside SQLite without touching them.

mod feed;
mod rows;
mod sqlite;

pub use feed::{CommitFeed, FeedError, FeedSender, COMMIT_FEED_BYTES, COMMIT_FEED_LEN};
pub use sqlite::{SqliteStore, WRITER_TASK};

use crate::protocol::{ChatMessage, EventKind, MemberInfo, RoomInfo, RoomKind, Visibility};
use async_trait::async_trait;
use std::sync::Arc;

/// Who wrote an event: an account (id, handle and display name at the time) or a guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Author {
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub display_name: String,
}

impl Author {
    pub fn guest(display_name: String) -> Self {
        Author {
            user_id: None,
            username: None,
            display_name,
        }
    }

    pub fn of(user: &User) -> Self {
        Author {
            user_id: Some(user.id),
            username: Some(user.username.clone()),
            display_name: user.display_name.clone(),
        }
    }
}

/// An account a membership event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user_id: i64,
    pub username: String,
}

/// A room to make, with its first event (`room_created`, by its creator).
#[derive(Clone, Debug)]
pub struct NewRoom {
    pub kind: RoomKind,
    pub visibility: Visibility,
    pub title: String,
    pub topic: String,
    /// For a DM, the sorted member ids: a second DM with the same people finds this one.
    pub dm_key: Option<String>,
    /// Besides the creator, who is in it from the start (each gets a `member_invited` event).
    pub invited: Vec<Member>,
    /// Whether the creator owns it (rooms) or is one member among equals (DMs).
    pub owned: bool,
}

/// What an event changes besides the stream, in the same transaction.
#[derive(Clone, Debug, Default)]
pub enum Change {
    /// Nothing (a chat message).
    #[default]
    None,
    /// Makes the room.
    Create(NewRoom),
    /// Adds `member` to the room, unless it has `max_members` already.
    AddMember { max_members: u64 },
    /// Takes `member` out of the room.
    RemoveMember,
    /// The title becomes the body.
    Title,
    /// The topic becomes the body.
    Topic,
    /// Archives the room.
    Archive,
    /// Makes the body the new text of the author's own message `target`, if it was posted no
    /// longer than `window_ms` ago (`None`: any time).
    Edit { window_ms: Option<i64> },
    /// Deletes message `target`: the author's own, or any when `any_author` (the room's owner).
    Delete { any_author: bool },
    /// Adds (`add`) or takes back the author's reaction `body` to message `target`; a message
    /// has at most `max_emoji` different ones.
    React { add: bool, max_emoji: u64 },
}

/// An event to store, already validated and authorised. A chat message has kind `message` and
/// no change.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub room: String,
    pub client_id: String,
    pub kind: EventKind,
    pub author: Author,
    pub body: String,
    pub member: Option<Member>,
    pub change: Change,
    /// For an edit, delete or reaction: the seq of the message it changes.
    pub target: Option<u64>,
    /// For a reply: the seq of the message it answers.
    pub reply_to: Option<u64>,
    /// A file the message carries (its bytes already kept in the blob store).
    pub attachment: Option<NewAttachment>,
}

/// A file to attach to a new message.
#[derive(Clone, Debug)]
pub struct NewAttachment {
    pub id: String,
    pub sha256: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// An attachment as the server looks it up to serve it.
#[derive(Clone, Debug)]
pub struct StoredAttachment {
    pub room: String,
    pub sha256: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
}

impl NewMessage {
    /// A chat message.
    pub fn chat(room: &str, client_id: String, author: Author, body: String) -> Self {
        NewMessage {
            room: room.to_owned(),
            client_id,
            kind: EventKind::Message,
            author,
            body,
            member: None,
            change: Change::None,
            target: None,
            reply_to: None,
            attachment: None,
        }
    }
}

/// What [`Store::append`] did.
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: ChatMessage,
    /// Further events the same write made (a DM's invitations), in seq order.
    pub more: Vec<ChatMessage>,
    /// False when the `(room, client_id)` was already stored (or the DM existed): `message` is
    /// then the original.
    pub created: bool,
    /// Blobs nothing refers to any more since this event (a deleted message's files).
    pub freed: Vec<String>,
}

/// A member's read position in a room and what is left after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub seq: u64,
    /// Chat messages by others after it.
    pub unread: u64,
    /// Messages after it that mention the member.
    pub mentions: u64,
}

/// A room and the caller's place in it, as the authorisation point reads it.
#[derive(Clone, Debug)]
pub struct RoomAccess {
    pub info: RoomInfo,
    pub owner_id: Option<i64>,
    /// `owner` or `member` when the caller is a member.
    pub role: Option<String>,
}

/// An account as the rest of the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    /// May make invite links (the first account of an installation is the admin).
    pub is_admin: bool,
}

/// An invite link as listed to the admins (the code itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteInfo {
    pub id: i64,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: i64,
}

/// An account with its password hash, for logging in.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A personal API token as listed to its owner (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("room not found")]
    RoomNotFound,
    #[error("that username is taken")]
    UserExists,
    #[error("room already exists")]
    RoomExists,
    #[error("the invite is unknown, used up or expired")]
    InviteInvalid,
    #[error("the room is archived")]
    RoomArchived,
    #[error("already a member")]
    AlreadyMember,
    #[error("not a member")]
    NotMember,
    #[error("the room is full")]
    RoomFull,
    #[error("no such message")]
    UnknownMessage,
    #[error("not the author of the message")]
    NotAuthor,
    #[error("the edit window has passed")]
    EditWindowClosed,
    #[error("the message was deleted")]
    MessageDeleted,
    #[error("the message has as many different reactions as it may")]
    TooManyReactions,
    /// What was asked is already so (a reaction given twice, taken back twice): no event.
    #[error("nothing to change")]
    Unchanged,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A group commit failed; every append in it gets this.
    #[error("database error: {0}")]
    Batch(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// A search, as the store runs it: the words and phrases, each of which a message must have,
/// and the filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search {
    /// Words and quoted phrases (the last may match as a prefix).
    pub terms: Vec<Term>,
    /// Only messages by this username.
    pub from: Option<String>,
    /// Only messages in this room.
    pub room: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Word(String),
    Phrase(String),
}

/// The storage contract. Every implementation passes the same contract tests.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The room's last seq (0 for an empty room), or `None` if there is no such room.
    async fn head(&self, room: &str) -> Result<Option<u64>, StoreError>;

    /// Creates a bare room (tests and set-up; people make rooms with a `Change::Create` event).
    async fn create_room(&self, room: &str) -> Result<(), StoreError>;

    /// The room `room` and `user`'s membership of it, for authorisation (its member and unread
    /// counts are left at zero; see `room_info`); `None` if there is no such room.
    async fn room_access(
        &self,
        room: &str,
        user: Option<i64>,
    ) -> Result<Option<RoomAccess>, StoreError>;

    /// The room as `user` sees it, with its member count and `user`'s unread count; `None` if
    /// there is no such room. (`room_access` leaves the counts at zero.)
    async fn room_info(
        &self,
        room: &str,
        user: Option<i64>,
    ) -> Result<Option<RoomInfo>, StoreError>;

    /// The rooms and DMs `user` is in (archived ones left out), with unread counts.
    async fn rooms_of(&self, user: i64) -> Result<Vec<RoomInfo>, StoreError>;

    /// The public rooms that are not archived, marked with `user`'s membership.
    async fn public_rooms(&self, user: i64) -> Result<Vec<RoomInfo>, StoreError>;

    /// The room's members, owners first, then by username.
    async fn members(&self, room: &str) -> Result<Vec<MemberInfo>, StoreError>;

    /// Moves `user`'s read position in `room` forward to `seq` (never back, never past the head);
    /// returns it, or `None` if `user` is not a member.
    async fn mark_read(
        &self,
        room: &str,
        user: i64,
        seq: u64,
    ) -> Result<Option<ReadState>, StoreError>;

    /// The accounts with these usernames (unknown ones are left out).
    async fn users_named(&self, usernames: &[String]) -> Result<Vec<User>, StoreError>;

    /// How many rooms `user` has made since `since` (ms).
    async fn rooms_made_since(&self, user: i64, since: i64) -> Result<u64, StoreError>;

    /// Stores an event with the room's next seq and applies its change in the same transaction,
    /// or returns the original for a known `client_id`. It returns only once durably committed.
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError>;

    /// Up to `limit` messages with `seq > after`, oldest first.
    async fn after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` messages with `seq < before` (all when `None`), the newest ones, oldest first.
    async fn before(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// The room's head and its newest `limit` messages (oldest first), read in one snapshot so
    /// the two agree; `None` if there is no such room.
    async fn recent(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<(u64, Vec<ChatMessage>)>, StoreError>;

    /// The newest messages (`id` below `before`, at most `limit`) that match `search` in the rooms
    /// `user` may read (those they are in, and public rooms), newest first.
    async fn search(
        &self,
        user: i64,
        search: &Search,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<crate::protocol::api::SearchHit>, StoreError>;

    /// The attachment with this id, if its message is not deleted.
    async fn attachment(&self, id: &str) -> Result<Option<StoredAttachment>, StoreError>;

    /// Bytes of the attachments `user` has uploaded and not deleted.
    async fn uploaded_bytes(&self, user: i64) -> Result<u64, StoreError>;

    /// Whether any attachment refers to the blob.
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError>;

    /// Every message committed from now on, once, in commit order (so in seq order within a
    /// room); a resent `client_id` is not in it. The server fans out from this feed: deliveries
    /// leave in seq order, and a message is delivered even if the request that posted it is gone.
    /// A receiver that falls more than [`COMMIT_FEED_LEN`] messages or [`COMMIT_FEED_BYTES`]
    /// behind gets `Lagged`. A commit that reported an error but landed is on it all the same.
    fn commits(&self) -> CommitFeed;
}

/// Accounts, sessions, tokens and invites, in the same database as the messages. Look-ups of
/// credentials read committed data without waiting on the writer.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates an account; the first one of an installation is its admin. With `invite` (the
    /// digest of an invite code), one use of that invite is spent in the same transaction, and
    /// the account is not made if the invite is unknown, used up or expired at `now`.
    async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        invite: Option<(&str, i64)>,
    ) -> Result<User, StoreError>;

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError>;

    /// Whether any account exists.
    async fn has_users(&self) -> Result<bool, StoreError>;

    /// Stores a session under the digest of its id, valid until `expires_at` (ms).
    async fn create_session(
        &self,
        id_hash: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// The user of an unexpired session, and when it expires.
    async fn session_user(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<(User, i64)>, StoreError>;

    /// Deletes a session; returns its user if there was one.
    async fn delete_session(&self, id_hash: &str) -> Result<Option<i64>, StoreError>;

    /// Stores a token under its digest; returns its id.
    async fn create_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<i64, StoreError>;

    /// The token id, user and expiry of an unexpired, unrevoked token.
    async fn token_user(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<(i64, User, i64)>, StoreError>;

    /// Whether the token with this id is unexpired and unrevoked.
    async fn token_valid(&self, token_id: i64, now: i64) -> Result<bool, StoreError>;

    /// Revokes one of the user's tokens; false if it has no such live token.
    async fn revoke_token(&self, user_id: i64, token_id: i64, now: i64)
        -> Result<bool, StoreError>;

    async fn tokens(&self, user_id: i64) -> Result<Vec<TokenInfo>, StoreError>;

    /// Deletes sessions that have expired by `now`, and tokens and invites that expired or were
    /// revoked or used up before `keep_until` (they stay listed to their owner until then).
    /// Returns how many rows went.
    async fn purge_expired(&self, now: i64, keep_until: i64) -> Result<u64, StoreError>;

    /// Stores an invite under the digest of its code.
    async fn create_invite(
        &self,
        code_hash: &str,
        created_by: i64,
        expires_at: i64,
        uses: i64,
    ) -> Result<i64, StoreError>;

    /// Whether an invite can still be used at `now`.
    async fn invite_valid(&self, code_hash: &str, now: i64) -> Result<bool, StoreError>;

    async fn invites(&self) -> Result<Vec<InviteInfo>, StoreError>;
}

/// The store as the rest of the server holds it.
pub type DynStore = Arc<dyn Store>;
pub type DynAccounts = Arc<dyn AccountStore>;

#[cfg(test)]
mod contract {
    //! The contract every store must keep, run here on SQLite in a temporary directory.

    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open store");
        (dir, store)
    }

    fn msg(room: &str, client_id: &str, body: &str) -> NewMessage {
        NewMessage::chat(
            room,
            client_id.into(),
            Author::guest("ann".into()),
            body.into(),
        )
    }

    #[tokio::test]
    async fn seqs_count_up_per_room_without_gaps() {
        let (_dir, s) = store().await;
        s.create_room("other").await.expect("create");
        for i in 1..=5u64 {
            let a = s
                .append(msg("general", &format!("g{i}"), "hi"))
                .await
                .expect("append");
            assert_eq!(a.message.seq, i);
            assert!(a.created);
        }
        let o = s.append(msg("other", "o1", "x")).await.expect("append");
        assert_eq!(o.message.seq, 1);
        assert_eq!(s.head("general").await.expect("head"), Some(5));
        assert_eq!(s.head("nowhere").await.expect("head"), None);
    }

    #[tokio::test]
    async fn the_commit_feed_has_each_new_message_once_in_order() {
        let (_dir, s) = store().await;
        let mut feed = s.commits();
        // Concurrent appends share group commits; the feed still has them in seq order.
        let appends = (0..50).map(|i| s.append(msg("general", &format!("c{i}"), "hi")));
        for a in futures_util::future::join_all(appends).await {
            a.expect("append");
        }
        s.append(msg("general", "c7", "again"))
            .await
            .expect("resend");
        for want in 1..=50u64 {
            let m = feed.recv().await.expect("committed message");
            assert_eq!(m.seq, want);
        }
        assert!(feed.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_resent_client_id_returns_the_original() {
        let (_dir, s) = store().await;
        let first = s
            .append(msg("general", "same", "one"))
            .await
            .expect("append");
        let again = s
            .append(msg("general", "same", "two"))
            .await
            .expect("append");
        assert!(!again.created);
        assert_eq!(again.message, first.message);
        assert_eq!(s.head("general").await.expect("head"), Some(1));
    }

    #[tokio::test]
    async fn paging_both_ways() {
        let (_dir, s) = store().await;
        for i in 1..=10 {
            s.append(msg("general", &format!("c{i}"), &format!("m{i}")))
                .await
                .expect("append");
        }
        let seqs = |v: Vec<ChatMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(s.after("general", 7, 10).await.expect("after")),
            vec![8, 9, 10]
        );
        assert_eq!(
            seqs(s.after("general", 0, 2).await.expect("after")),
            vec![1, 2]
        );
        assert_eq!(
            seqs(s.before("general", None, 3).await.expect("before")),
            vec![8, 9, 10]
        );
        assert_eq!(
            seqs(s.before("general", Some(3), 5).await.expect("before")),
            vec![1, 2]
        );
    }

    #[tokio::test]
    async fn accounts_sessions_and_tokens() {
        let (_dir, s) = store().await;
        let ann = s
            .create_user("ann", "Ann", "$argon2id$x", None)
            .await
            .expect("user");
        assert!(ann.is_admin, "the first account is the admin");
        assert!(matches!(
            s.create_user("ann", "Other", "h", None).await,
            Err(StoreError::UserExists)
        ));
        let bob = s.create_user("bob", "Bob", "h", None).await.expect("user");
        assert!(!bob.is_admin);
        let c = s.credentials("ann").await.expect("q").expect("found");
        assert_eq!(
            (c.user.clone(), c.password_hash.as_str()),
            (ann.clone(), "$argon2id$x")
        );
        assert!(s.credentials("carol").await.expect("q").is_none());

        s.create_session("sess", ann.id, 2_000)
            .await
            .expect("session");
        assert_eq!(
            s.session_user("sess", 1_000).await.expect("q"),
            Some((ann.clone(), 2_000))
        );
        assert_eq!(
            s.session_user("sess", 3_000).await.expect("q"),
            None,
            "expired"
        );
        assert_eq!(
            s.delete_session("sess").await.expect("delete"),
            Some(ann.id)
        );
        assert_eq!(s.delete_session("sess").await.expect("delete"), None);
        assert_eq!(s.session_user("sess", 1_000).await.expect("q"), None);

        let t = s
            .create_token(ann.id, "bot", "tok", 2_000)
            .await
            .expect("token");
        assert_eq!(
            s.token_user("tok", 1_000).await.expect("q"),
            Some((t, ann.clone(), 2_000))
        );
        assert!(s.token_valid(t, 1_000).await.expect("q"));
        assert_eq!(
            s.token_user("tok", 3_000).await.expect("q"),
            None,
            "expired"
        );
        assert!(!s.token_valid(t, 3_000).await.expect("q"));
        assert!(
            !s.revoke_token(bob.id, t, 1_500).await.expect("revoke"),
            "not bob's"
        );
        assert!(s.revoke_token(ann.id, t, 1_500).await.expect("revoke"));
        assert!(!s.revoke_token(ann.id, t, 1_600).await.expect("revoke"));
        assert_eq!(
            s.token_user("tok", 1_000).await.expect("q"),
            None,
            "revoked"
        );
        assert!(!s.token_valid(t, 1_000).await.expect("q"));
        let list = s.tokens(ann.id).await.expect("list");
        assert_eq!(list.len(), 1);
        assert!(list[0].revoked);
    }

    #[tokio::test]
    async fn invites_are_spent_with_the_account_they_make() {
        let (_dir, s) = store().await;
        let admin = s
            .create_user("admin", "Admin", "h", None)
            .await
            .expect("user");
        s.create_invite("code", admin.id, 5_000, 1)
            .await
            .expect("invite");
        assert!(s.invite_valid("code", 1_000).await.expect("q"));
        assert!(!s.invite_valid("code", 6_000).await.expect("q"), "expired");
        assert!(matches!(
            s.create_user("x", "X", "h", Some(("nope", 1_000))).await,
            Err(StoreError::InviteInvalid)
        ));
        s.create_user("ann", "Ann", "h", Some(("code", 1_000)))
            .await
            .expect("invited");
        assert!(!s.invite_valid("code", 1_000).await.expect("q"), "used up");
        assert!(matches!(
            s.create_user("bob", "Bob", "h", Some(("code", 1_000)))
                .await,
            Err(StoreError::InviteInvalid)
        ));
        assert!(s.credentials("bob").await.expect("q").is_none());
        let list = s.invites().await.expect("list");
        assert_eq!((list.len(), list[0].uses_left), (1, 0));
    }

    #[tokio::test]
    async fn purging_drops_expired_sessions_and_old_tokens() {
        let (_dir, s) = store().await;
        let ann = s.create_user("ann", "Ann", "h", None).await.expect("user");
        s.create_session("old", ann.id, 1_000)
            .await
            .expect("session");
        s.create_session("new", ann.id, 9_000)
            .await
            .expect("session");
        s.create_token(ann.id, "old", "t1", 1_000)
            .await
            .expect("token");
        s.create_token(ann.id, "new", "t2", 9_000)
            .await
            .expect("token");
        // Sessions go once expired; tokens stay listed until `keep_until`.
        assert_eq!(s.purge_expired(2_000, 500).await.expect("purge"), 1);
        assert_eq!(s.tokens(ann.id).await.expect("list").len(), 2);
        assert_eq!(s.purge_expired(2_000, 2_000).await.expect("purge"), 1);
        assert_eq!(s.tokens(ann.id).await.expect("list").len(), 1);
        assert!(s.session_user("new", 2_000).await.expect("q").is_some());
    }

    #[tokio::test]
    async fn recent_reads_the_head_and_the_last_page_together() {
        let (_dir, s) = store().await;
        for i in 1..=5 {
            s.append(msg("general", &format!("c{i}"), "x"))
                .await
                .expect("append");
        }
        let (head, page) = s.recent("general", 3).await.expect("q").expect("room");
        assert_eq!(head, 5);
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(s.recent("nowhere", 3).await.expect("q").is_none());
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_keep_seqs_gapless() {
        let (_dir, s) = store().await;
        let s = std::sync::Arc::new(s);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let room = if i % 50 == 7 { "nowhere" } else { "general" };
                    s.append(msg(room, &format!("c{i}"), "x")).await
                })
            })
            .collect();
        let mut seqs = Vec::new();
        let mut missing_rooms = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(a) => seqs.push(a.message.seq),
                Err(StoreError::RoomNotFound) => missing_rooms += 1,
                Err(e) => panic!("{e}"),
            }
        }
        seqs.sort_unstable();
        assert_eq!(missing_rooms, 4, "only the appends to an unknown room fail");
        assert_eq!(seqs, (1..=196).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn unknown_rooms_are_not_found() {
        let (_dir, s) = store().await;
        assert!(matches!(
            s.append(msg("nowhere", "c", "x")).await,
            Err(StoreError::RoomNotFound)
        ));
        assert!(matches!(
            s.create_room("general").await,
            Err(StoreError::RoomExists)
        ));
    }
}
