//! Durable history behind one trait, so the hub and the HTTP layer never see SQL and a second
//! database can be added beside SQLite without touching them.

mod feed;
mod postgres;
mod rows;
pub mod scratch;
mod sqlite;
mod writer;

pub use feed::{CommitFeed, FeedError, FeedSender, COMMIT_FEED_BYTES, COMMIT_FEED_LEN};
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, DB_FILE};
pub use writer::WRITER_TASK;

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
    /// An admin disabled the account: it may not log in.
    pub disabled: bool,
}

/// An account as the admin view lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminUser {
    pub user: User,
    pub created_at: i64,
    pub disabled: bool,
    /// Browser sessions that have not ended.
    pub sessions: u64,
}

/// A room's whole history as `hubbub import` writes it into an install: the events as they
/// were exported, their authors' and mentions' ids already those of this install (or none),
/// and what the events leave behind (members, reactions) worked out from them.
#[derive(Clone, Debug, Default)]
pub struct RoomImport {
    pub name: String,
    pub kind: RoomKind,
    pub visibility: Visibility,
    pub title: String,
    pub topic: String,
    pub created_at: i64,
    pub owner: Option<i64>,
    pub archived_at: Option<i64>,
    /// In seq order, from 1 with no gap.
    pub events: Vec<ChatMessage>,
    /// (user, role, joined at, read up to).
    pub members: Vec<(i64, String, i64, u64)>,
    /// (message seq, emoji, user, when).
    pub reactions: Vec<(u64, String, i64, i64)>,
}

/// What a room said lately, for the admin view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomActivity {
    pub name: String,
    pub title: String,
    pub kind: RoomKind,
    pub members: u64,
    /// Chat messages in the window asked for.
    pub messages: u64,
    /// When the last of them was sent (ms since the epoch).
    pub last: i64,
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

/// The rooms a search may look in, as the authorisation point decides them: those `member` is
/// a member of, and the public rooms when `public_rooms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadScope {
    pub member: i64,
    pub public_rooms: bool,
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

    /// The heads of those of `rooms` that exist, in no particular order (one read for many
    /// rooms: how a node checks that it has delivered everything).
    async fn heads(&self, rooms: &[String]) -> Result<Vec<(String, u64)>, StoreError>;

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
    /// of `scope` (which `access::search_scope` decides), newest first.
    async fn search(
        &self,
        scope: ReadScope,
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

    /// Writes a whole room's history (`hubbub import`) in one transaction: the room, its
    /// events with their seqs, its members and reactions. A room of that name that already
    /// has events is refused (`RoomExists`); one without (a new install's `general`) is
    /// filled.
    async fn import_room(&self, room: &RoomImport) -> Result<(), StoreError>;

    /// Each database pool's connections now, as (pool, idle, in use), for the metrics.
    fn pool_use(&self) -> Vec<(&'static str, u64, u64)>;

    /// The rooms with the most chat messages sent since `since` (ms), busiest first, at most
    /// `limit`; only the latest `scan` events are looked at, so the cost stays bounded however
    /// long the history.
    async fn room_activity(
        &self,
        since: i64,
        scan: usize,
        limit: usize,
    ) -> Result<Vec<RoomActivity>, StoreError>;
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

    /// Accounts whose username or display name contains `filter` (every account when `None`),
    /// oldest first, at most `limit`, each with its sessions that have not ended by `now`.
    async fn admin_users(
        &self,
        filter: Option<&str>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<AdminUser>, StoreError>;

    /// Disables the account `username` (`Some(when)`) or lets it back in (`None`). Disabling
    /// also ends its sessions and revokes its tokens, in the same transaction. The account's
    /// id, or `None` when there is no such account.
    async fn set_disabled(
        &self,
        username: &str,
        at: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;

    /// Ends every browser session of `user_id`; how many there were.
    async fn end_sessions(&self, user_id: i64) -> Result<u64, StoreError>;

    /// Makes `username` an admin, or no longer one; its id, or `None` when there is no such
    /// account.
    async fn set_admin(&self, username: &str, admin: bool) -> Result<Option<i64>, StoreError>;
}

/// The store as the rest of the server holds it.
pub type DynStore = Arc<dyn Store>;
pub type DynAccounts = Arc<dyn AccountStore>;

#[cfg(test)]
mod contract {
    //! The contract every store must keep, run on SQLite (in a temporary directory) and on
    //! PostgreSQL (in a database made for each test, dropped after).

    use super::*;
    use crate::protocol::EventKind as K;

    /// Both traits, as one object.
    trait Full: Store + AccountStore {}
    impl<T: Store + AccountStore> Full for T {}

    /// A store under test, with what must live as long as it.
    struct Under {
        store: Box<dyn Full>,
        _dir: Option<tempfile::TempDir>,
        _db: Option<scratch::ScratchDb>,
    }

    impl std::ops::Deref for Under {
        type Target = dyn Full;
        fn deref(&self) -> &Self::Target {
            &*self.store
        }
    }

    async fn sqlite() -> Under {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open store");
        Under {
            store: Box::new(store),
            _dir: Some(dir),
            _db: None,
        }
    }

    async fn postgres() -> Under {
        let db = scratch::ScratchDb::create()
            .await
            .expect("PostgreSQL for the contract tests (HUBBUB_TEST_POSTGRES)");
        let store = PgStore::connect(db.url(), Default::default())
            .await
            .expect("open store");
        Under {
            store: Box::new(store),
            _dir: None,
            _db: Some(db),
        }
    }

    /// Runs each contract test on both stores.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(super::sqlite().await).await
                })*
            }
            mod on_postgres {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(super::postgres().await).await
                })*
            }
        };
    }

    on_both!(
        seqs_count_up_per_room_without_gaps,
        the_commit_feed_has_each_new_message_once_in_order,
        a_resent_client_id_returns_the_original,
        paging_both_ways,
        accounts_sessions_and_tokens,
        invites_are_spent_with_the_account_they_make,
        purging_drops_expired_sessions_and_old_tokens,
        recent_reads_the_head_and_the_last_page_together,
        concurrent_appends_share_commits_and_keep_seqs_gapless,
        unknown_rooms_are_not_found,
        rooms_membership_and_who_sees_what,
        a_dm_with_the_same_people_is_the_same_room,
        unread_counts_and_read_positions,
        edits_deletes_reactions_replies_and_mentions,
        search_words_phrases_prefixes_filters_and_access,
        attachments_and_the_blobs_they_hold,
        heads_of_many_rooms_at_once,
        the_admin_lists_disables_and_sees_activity,
    );

    async fn the_admin_lists_disables_and_sees_activity(s: Under) {
        let v = users(&s, &["ann", "bob", "bo_b"]).await;
        let (ann, bob) = (&v[0], &v[1]);
        let names = |list: Vec<AdminUser>| {
            list.into_iter()
                .map(|a| a.user.username)
                .collect::<Vec<_>>()
        };
        s.create_session("s1", bob.id, 10_000)
            .await
            .expect("session");
        s.create_session("s2", bob.id, 10_000)
            .await
            .expect("session");
        s.create_token(bob.id, "bot", "tok", 10_000)
            .await
            .expect("token");
        let all = s.admin_users(None, 10, 1_000).await.expect("list");
        assert_eq!(names(all.clone()), ["ann", "bob", "bo_b"]);
        assert_eq!(all[1].sessions, 2);
        assert!(!all[1].disabled);
        assert_eq!(all[0].sessions, 0);
        // `_` and `%` are letters in a filter, not wildcards; case does not matter.
        assert_eq!(
            names(s.admin_users(Some("o_"), 10, 0).await.expect("list")),
            ["bo_b"]
        );
        assert_eq!(
            names(s.admin_users(Some("B"), 10, 0).await.expect("list")),
            ["bob", "bo_b"]
        );
        assert!(s
            .admin_users(Some("%"), 10, 0)
            .await
            .expect("list")
            .is_empty());
        assert_eq!(
            names(s.admin_users(None, 1, 0).await.expect("list")),
            ["ann"]
        );

        // Disabled: no log-in, no session, no token; let back in: the password works again,
        // the sessions and tokens stay ended.
        assert_eq!(
            s.set_disabled("bob", Some(2_000)).await.expect("disable"),
            Some(bob.id)
        );
        assert!(
            s.credentials("bob")
                .await
                .expect("q")
                .expect("bob")
                .disabled
        );
        assert_eq!(s.session_user("s1", 1_000).await.expect("q"), None);
        assert_eq!(s.token_user("tok", 1_000).await.expect("q"), None);
        let listed = s.admin_users(Some("bob"), 10, 1_000).await.expect("list");
        assert!(listed[0].disabled);
        assert_eq!(listed[0].sessions, 0);
        assert_eq!(
            s.set_disabled("bob", None).await.expect("enable"),
            Some(bob.id)
        );
        assert!(
            !s.credentials("bob")
                .await
                .expect("q")
                .expect("bob")
                .disabled
        );
        assert_eq!(s.token_user("tok", 1_000).await.expect("q"), None);
        assert_eq!(s.set_disabled("nobody", Some(1)).await.expect("q"), None);

        assert_eq!(s.set_admin("bob", true).await.expect("grant"), Some(bob.id));
        assert!(
            s.credentials("bob")
                .await
                .expect("q")
                .expect("bob")
                .user
                .is_admin
        );
        assert_eq!(s.set_admin("nobody", true).await.expect("grant"), None);
        s.create_session("a1", ann.id, 10_000)
            .await
            .expect("session");
        assert_eq!(s.end_sessions(ann.id).await.expect("end"), 1);
        assert_eq!(s.session_user("a1", 1_000).await.expect("q"), None);

        // Activity: chat messages only, busiest first, within the time and the scan.
        make_room(&s, ann, "busy", Visibility::Public).await;
        for i in 0..3 {
            s.append(said(ann, "busy", &format!("b{i}"), "hi"))
                .await
                .expect("said");
        }
        make_room(&s, ann, "quiet", Visibility::Private).await;
        s.append(said(ann, "quiet", "q0", "hi"))
            .await
            .expect("said");
        let rooms = s.room_activity(0, 1_000, 10).await.expect("activity");
        let seen: Vec<(&str, u64)> = rooms
            .iter()
            .map(|r| (r.name.as_str(), r.messages))
            .collect();
        assert_eq!(seen, [("busy", 3), ("quiet", 1)]);
        assert_eq!(rooms[0].members, 1, "the owner");
        assert!(rooms[0].last > 0);
        assert!(s
            .room_activity(i64::MAX, 1_000, 10)
            .await
            .expect("activity")
            .is_empty());
        // The latest three events: busy's last message, quiet's creation and its message.
        let latest = s.room_activity(0, 3, 10).await.expect("activity");
        let mut seen: Vec<(&str, u64)> = latest
            .iter()
            .map(|r| (r.name.as_str(), r.messages))
            .collect();
        // A tie: the order is by the last message's time, which may be the same millisecond.
        seen.sort_unstable();
        assert_eq!(seen, [("busy", 1), ("quiet", 1)]);
    }

    fn msg(room: &str, client_id: &str, body: &str) -> NewMessage {
        NewMessage::chat(
            room,
            client_id.into(),
            Author::guest("ann".into()),
            body.into(),
        )
    }

    async fn seqs_count_up_per_room_without_gaps(s: Under) {
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

    async fn the_commit_feed_has_each_new_message_once_in_order(s: Under) {
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

    async fn a_resent_client_id_returns_the_original(s: Under) {
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

    async fn paging_both_ways(s: Under) {
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

    async fn accounts_sessions_and_tokens(s: Under) {
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

    async fn invites_are_spent_with_the_account_they_make(s: Under) {
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

    async fn purging_drops_expired_sessions_and_old_tokens(s: Under) {
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

    async fn recent_reads_the_head_and_the_last_page_together(s: Under) {
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

    async fn concurrent_appends_share_commits_and_keep_seqs_gapless(s: Under) {
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

    async fn unknown_rooms_are_not_found(s: Under) {
        assert!(matches!(
            s.append(msg("nowhere", "c", "x")).await,
            Err(StoreError::RoomNotFound)
        ));
        assert!(matches!(
            s.create_room("general").await,
            Err(StoreError::RoomExists)
        ));
    }

    fn event(user: &User, room: &str, id: &str, kind: K, body: &str, change: Change) -> NewMessage {
        NewMessage {
            room: room.into(),
            client_id: id.into(),
            kind,
            author: Author::of(user),
            body: body.into(),
            member: None,
            change,
            target: None,
            reply_to: None,
            attachment: None,
        }
    }

    fn said(user: &User, room: &str, id: &str, body: &str) -> NewMessage {
        event(user, room, id, K::Message, body, Change::None)
    }

    fn about(mut m: NewMessage, target: u64) -> NewMessage {
        m.target = Some(target);
        m
    }

    fn member(u: &User) -> Member {
        Member {
            user_id: u.id,
            username: u.username.clone(),
        }
    }

    async fn users(s: &Under, names: &[&str]) -> Vec<User> {
        let mut out = Vec::new();
        for n in names {
            out.push(
                s.create_user(n, &n.to_uppercase(), "h", None)
                    .await
                    .expect("user"),
            );
        }
        out
    }

    async fn make_room(s: &Under, owner: &User, name: &str, visibility: Visibility) {
        let room = NewRoom {
            kind: RoomKind::Room,
            visibility,
            title: name.into(),
            topic: String::new(),
            dm_key: None,
            invited: Vec::new(),
            owned: true,
        };
        let a = s
            .append(event(
                owner,
                name,
                &format!("create-{name}"),
                K::RoomCreated,
                "",
                Change::Create(room),
            ))
            .await
            .expect("room");
        assert!(a.created);
    }

    fn joining(u: &User, room: &str, max_members: u64) -> NewMessage {
        let mut m = event(
            u,
            room,
            &format!("join-{}-{room}-{max_members}", u.username),
            K::MemberJoined,
            "",
            Change::AddMember { max_members },
        );
        m.member = Some(member(u));
        m
    }

    fn names(rooms: &[RoomInfo]) -> Vec<&str> {
        rooms.iter().map(|r| r.name.as_str()).collect()
    }

    async fn rooms_membership_and_who_sees_what(s: Under) {
        let [ann, bob, carol] =
            <[User; 3]>::try_from(users(&s, &["ann", "bob", "carol"]).await).expect("three");
        make_room(&s, &ann, "design", Visibility::Public).await;
        let a = s
            .room_access("design", Some(ann.id))
            .await
            .expect("q")
            .expect("room");
        assert_eq!(
            (a.role.as_deref(), a.owner_id),
            (Some("owner"), Some(ann.id))
        );
        let b = s
            .room_access("design", Some(bob.id))
            .await
            .expect("q")
            .expect("room");
        assert!(b.role.is_none());
        assert!(s
            .room_access("nowhere", Some(ann.id))
            .await
            .expect("q")
            .is_none());
        let public = s.public_rooms(bob.id).await.expect("q");
        let design = public.iter().find(|r| r.name == "design").expect("listed");
        assert!(!design.member);

        s.append(joining(&bob, "design", 100)).await.expect("join");
        let mut again = joining(&bob, "design", 100);
        again.client_id = "join-again".into();
        assert!(matches!(
            s.append(again).await,
            Err(StoreError::AlreadyMember)
        ));
        let info = s
            .room_info("design", Some(bob.id))
            .await
            .expect("q")
            .expect("room");
        assert_eq!((info.members, info.member, info.head), (2, true, 2));
        let who: Vec<(String, String)> = s
            .members("design")
            .await
            .expect("q")
            .into_iter()
            .map(|m| (m.username, m.role))
            .collect();
        assert_eq!(
            who,
            vec![
                ("ann".into(), "owner".into()),
                ("bob".into(), "member".into())
            ]
        );
        assert!(names(&s.rooms_of(bob.id).await.expect("q")).contains(&"design"));
        assert!(matches!(
            s.append(joining(&carol, "design", 2)).await,
            Err(StoreError::RoomFull)
        ));

        make_room(&s, &ann, "secret", Visibility::Private).await;
        assert!(!names(&s.public_rooms(bob.id).await.expect("q")).contains(&"secret"));
        assert!(names(&s.rooms_of(ann.id).await.expect("q")).contains(&"secret"));
        assert!(matches!(
            s.append(said(&bob, "secret", "b1", "hi")).await,
            Err(StoreError::NotMember)
        ));
        // A guest may post in a public room only.
        s.append(msg("design", "g1", "hi")).await.expect("guest");
        assert!(matches!(
            s.append(msg("secret", "g2", "hi")).await,
            Err(StoreError::NotMember)
        ));

        let mut remove = event(
            &ann,
            "design",
            "rm",
            K::MemberRemoved,
            "",
            Change::RemoveMember,
        );
        remove.member = Some(member(&bob));
        s.append(remove.clone()).await.expect("removed");
        remove.client_id = "rm-again".into();
        assert!(matches!(s.append(remove).await, Err(StoreError::NotMember)));
        assert!(matches!(
            s.append(said(&bob, "design", "b2", "still here?")).await,
            Err(StoreError::NotMember)
        ));

        s.append(event(
            &ann,
            "design",
            "t",
            K::RoomRenamed,
            "Design team",
            Change::Title,
        ))
        .await
        .expect("rename");
        s.append(event(
            &ann,
            "design",
            "p",
            K::TopicChanged,
            "pixels",
            Change::Topic,
        ))
        .await
        .expect("topic");
        let info = s
            .room_info("design", Some(ann.id))
            .await
            .expect("q")
            .expect("room");
        assert_eq!(
            (info.title.as_str(), info.topic.as_str()),
            ("Design team", "pixels")
        );
        s.append(event(
            &ann,
            "design",
            "z",
            K::RoomArchived,
            "",
            Change::Archive,
        ))
        .await
        .expect("archive");
        assert!(matches!(
            s.append(said(&ann, "design", "late", "hello?")).await,
            Err(StoreError::RoomArchived)
        ));
        assert!(!names(&s.rooms_of(ann.id).await.expect("q")).contains(&"design"));
        assert!(
            s.room_info("design", Some(ann.id))
                .await
                .expect("q")
                .expect("room")
                .archived
        );

        assert_eq!(s.rooms_made_since(ann.id, 0).await.expect("q"), 2);
        assert_eq!(s.rooms_made_since(bob.id, 0).await.expect("q"), 0);
        let found = s
            .users_named(&["carol".into(), "nobody".into(), "ann".into()])
            .await
            .expect("q");
        assert_eq!(found, vec![carol, ann]);
    }

    async fn a_dm_with_the_same_people_is_the_same_room(s: Under) {
        let [ann, bob] = <[User; 2]>::try_from(users(&s, &["ann", "bob"]).await).expect("two");
        let dm = |room: &str| {
            event(
                &ann,
                room,
                &format!("dm-{room}"),
                K::RoomCreated,
                "",
                Change::Create(NewRoom {
                    kind: RoomKind::Dm,
                    visibility: Visibility::Private,
                    title: "ann, bob".into(),
                    topic: String::new(),
                    dm_key: Some(format!("{},{}", ann.id, bob.id)),
                    invited: vec![member(&bob)],
                    owned: false,
                }),
            )
        };
        let first = s.append(dm("dm-one")).await.expect("dm");
        assert!(first.created);
        assert_eq!(first.more.len(), 1, "the invitation is an event too");
        assert_eq!((first.message.seq, first.more[0].seq), (1, 2));
        let second = s.append(dm("dm-two")).await.expect("dm");
        assert!(!second.created);
        assert_eq!(second.message.room, "dm-one");
        let mut people = s
            .room_info("dm-one", Some(ann.id))
            .await
            .expect("q")
            .expect("room")
            .people;
        people.sort();
        assert_eq!(people, vec!["ann", "bob"]);
        let bobs = s.rooms_of(bob.id).await.expect("q");
        let room = bobs.iter().find(|r| r.name == "dm-one").expect("bob's DM");
        assert_eq!(room.kind, RoomKind::Dm);
        assert!(s
            .room_info("dm-two", Some(ann.id))
            .await
            .expect("q")
            .is_none());
    }

    async fn unread_counts_and_read_positions(s: Under) {
        let [ann, bob, carol] =
            <[User; 3]>::try_from(users(&s, &["ann", "bob", "carol"]).await).expect("three");
        make_room(&s, &ann, "team", Visibility::Public).await;
        s.append(joining(&bob, "team", 100)).await.expect("join");
        for i in 0..3 {
            s.append(said(&ann, "team", &format!("a{i}"), "hi"))
                .await
                .expect("post");
        }
        s.append(said(&bob, "team", "b0", "hey"))
            .await
            .expect("post");
        let team =
            |rooms: Vec<RoomInfo>| rooms.into_iter().find(|r| r.name == "team").expect("team");
        assert_eq!(
            team(s.rooms_of(bob.id).await.expect("q")).unread,
            3,
            "not counting his own"
        );
        assert_eq!(team(s.rooms_of(ann.id).await.expect("q")).unread, 1);
        let read = s
            .mark_read("team", bob.id, 4)
            .await
            .expect("q")
            .expect("member");
        assert_eq!((read.seq, read.unread, read.mentions), (4, 1, 0));
        let read = s
            .mark_read("team", bob.id, 2)
            .await
            .expect("q")
            .expect("member");
        assert_eq!(read.seq, 4, "never back");
        let read = s
            .mark_read("team", bob.id, 99)
            .await
            .expect("q")
            .expect("member");
        assert_eq!((read.seq, read.unread), (6, 0), "never past the head");
        assert_eq!(team(s.rooms_of(bob.id).await.expect("q")).last_read, 6);
        assert!(s.mark_read("team", carol.id, 3).await.expect("q").is_none());
        assert!(s
            .mark_read("nowhere", bob.id, 3)
            .await
            .expect("q")
            .is_none());
    }

    async fn edits_deletes_reactions_replies_and_mentions(s: Under) {
        let [ann, bob, carol] =
            <[User; 3]>::try_from(users(&s, &["ann", "bob", "carol"]).await).expect("three");
        make_room(&s, &ann, "team", Visibility::Public).await;
        s.append(joining(&bob, "team", 100)).await.expect("join");
        s.append(joining(&carol, "team", 100)).await.expect("join");
        let m = s
            .append(said(&ann, "team", "m1", "hello @bob"))
            .await
            .expect("post")
            .message;
        assert_eq!(m.mentions, vec![bob.id]);
        let mentions = |rooms: Vec<RoomInfo>| {
            rooms
                .into_iter()
                .find(|r| r.name == "team")
                .expect("team")
                .mentions
        };
        assert_eq!(mentions(s.rooms_of(bob.id).await.expect("q")), 1);

        let edit = |who: &User, id: &str, body: &str, window_ms: Option<i64>| {
            about(
                event(
                    who,
                    "team",
                    id,
                    K::MessageEdited,
                    body,
                    Change::Edit { window_ms },
                ),
                m.seq,
            )
        };
        assert!(matches!(
            s.append(edit(&bob, "e0", "mine now", None)).await,
            Err(StoreError::NotAuthor)
        ));
        let e = s
            .append(edit(&ann, "e1", "hello @bob and @carol", None))
            .await
            .expect("edit")
            .message;
        assert_eq!(e.notify, vec![carol.id], "only the newly mentioned");
        let mut both = vec![bob.id, carol.id];
        both.sort_unstable();
        assert_eq!(e.mentions, both);
        let now = s.after("team", m.seq - 1, 1).await.expect("q").remove(0);
        assert_eq!(now.body, "hello @bob and @carol");
        assert!(now.edited.is_some());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(matches!(
            s.append(edit(&ann, "e2", "too late", Some(1))).await,
            Err(StoreError::EditWindowClosed)
        ));

        let react = |who: &User, id: &str, emoji: &str, add: bool, max_emoji: u64| {
            let kind = if add {
                K::ReactionAdded
            } else {
                K::ReactionRemoved
            };
            about(
                event(
                    who,
                    "team",
                    id,
                    kind,
                    emoji,
                    Change::React { add, max_emoji },
                ),
                m.seq,
            )
        };
        let r = s
            .append(react(&bob, "r1", "👍", true, 5))
            .await
            .expect("react");
        assert_eq!(r.message.count, Some(1));
        assert!(matches!(
            s.append(react(&bob, "r2", "👍", true, 5)).await,
            Err(StoreError::Unchanged)
        ));
        let r = s
            .append(react(&carol, "r3", "👍", true, 5))
            .await
            .expect("react");
        assert_eq!(r.message.count, Some(2));
        assert!(matches!(
            s.append(react(&carol, "r4", "🎉", true, 1)).await,
            Err(StoreError::TooManyReactions)
        ));
        let r = s
            .append(react(&bob, "r5", "👍", false, 5))
            .await
            .expect("unreact");
        assert_eq!(r.message.count, Some(1));
        assert!(matches!(
            s.append(react(&bob, "r6", "👍", false, 5)).await,
            Err(StoreError::Unchanged)
        ));
        let now = s.after("team", m.seq - 1, 1).await.expect("q").remove(0);
        assert_eq!(now.reactions.len(), 1);
        assert_eq!(
            (now.reactions[0].emoji.as_str(), now.reactions[0].count),
            ("👍", 1)
        );
        assert_eq!(now.reactions[0].users, vec!["carol"]);

        let mut reply = said(&bob, "team", "re1", "yes");
        reply.reply_to = Some(m.seq);
        let reply = s.append(reply).await.expect("reply").message;
        let quote = reply.reply.clone().expect("a quote");
        assert!(quote.body.contains("hello"), "{quote:?}");
        let mut lost = said(&bob, "team", "re2", "what?");
        lost.reply_to = Some(999);
        assert!(matches!(
            s.append(lost).await,
            Err(StoreError::UnknownMessage)
        ));

        let delete = |who: &User, id: &str, any_author: bool| {
            about(
                event(
                    who,
                    "team",
                    id,
                    K::MessageDeleted,
                    "",
                    Change::Delete { any_author },
                ),
                m.seq,
            )
        };
        assert!(matches!(
            s.append(delete(&bob, "d0", false)).await,
            Err(StoreError::NotAuthor)
        ));
        s.append(delete(&ann, "d1", false)).await.expect("delete");
        let page = s.after("team", m.seq - 1, 100).await.expect("q");
        let gone = &page[0];
        assert!(gone.deleted && gone.body.is_empty() && gone.reactions.is_empty());
        assert!(
            page.iter()
                .filter(|p| p.kind == K::MessageEdited)
                .all(|p| p.body.is_empty()),
            "edits lose their text too"
        );
        let quoted = page.iter().find(|p| p.seq == reply.seq).expect("reply");
        assert!(quoted
            .reply
            .as_ref()
            .is_some_and(|q| q.deleted && q.body.is_empty()));
        assert!(matches!(
            s.append(edit(&ann, "e3", "back", None)).await,
            Err(StoreError::MessageDeleted)
        ));
        assert_eq!(mentions(s.rooms_of(bob.id).await.expect("q")), 0);
        let search = Search {
            terms: vec![Term::Word("hello".into())],
            ..Default::default()
        };
        assert!(s
            .search(everything(ann.id), &search, None, 10)
            .await
            .expect("q")
            .is_empty());
    }

    /// What an account with this id may search: its rooms and the public ones.
    fn everything(member: i64) -> ReadScope {
        ReadScope {
            member,
            public_rooms: true,
        }
    }

    async fn search_words_phrases_prefixes_filters_and_access(s: Under) {
        let [ann, bob] = <[User; 2]>::try_from(users(&s, &["ann", "bob"]).await).expect("two");
        make_room(&s, &ann, "team", Visibility::Public).await;
        make_room(&s, &ann, "secret", Visibility::Private).await;
        s.append(said(&ann, "team", "s1", "the quick brown fox"))
            .await
            .expect("post");
        s.append(said(&ann, "team", "s2", "a lazy dog sleeps"))
            .await
            .expect("post");
        s.append(joining(&bob, "team", 100)).await.expect("join");
        s.append(said(&bob, "team", "s3", "quick thinking"))
            .await
            .expect("post");
        s.append(said(&ann, "secret", "s4", "quick secret plans"))
            .await
            .expect("post");
        let find = |who: &User, terms: Vec<Term>, from: Option<&str>, room: Option<&str>| {
            let search = Search {
                terms,
                from: from.map(str::to_owned),
                room: room.map(str::to_owned),
            };
            let (s, who) = (&s, who.id);
            async move {
                s.search(everything(who), &search, None, 10)
                    .await
                    .expect("search")
                    .into_iter()
                    .map(|h| {
                        h.snippet
                            .iter()
                            .map(|p| p.text.as_str())
                            .collect::<String>()
                    })
                    .collect::<Vec<_>>()
            }
        };
        let w = |t: &str| Term::Word(t.into());
        let p = |t: &str| Term::Phrase(t.into());
        assert_eq!(
            find(&bob, vec![w("quick")], None, None).await,
            vec!["quick thinking", "the quick brown fox"],
            "newest first, and nothing from a room bob may not read"
        );
        assert_eq!(find(&ann, vec![w("QUICK")], None, None).await.len(), 3);
        assert_eq!(find(&ann, vec![p("brown fox")], None, None).await.len(), 1);
        assert!(find(&ann, vec![p("fox brown")], None, None)
            .await
            .is_empty());
        assert_eq!(
            find(&ann, vec![w("sle")], None, None).await,
            vec!["a lazy dog sleeps"],
            "the last word is a prefix"
        );
        assert!(find(&ann, vec![w("sle"), w("dog")], None, None)
            .await
            .is_empty());
        assert_eq!(
            find(&ann, vec![w("quick")], Some("bob"), None).await.len(),
            1
        );
        assert_eq!(
            find(&ann, vec![w("quick")], None, Some("secret"))
                .await
                .len(),
            1
        );
        assert!(find(&bob, vec![w("quick")], None, Some("secret"))
            .await
            .is_empty());
        for hostile in [
            "\"); DROP TABLE messages; --",
            "a:* & !b | (c",
            "'",
            "*",
            "NEAR(a b)",
        ] {
            let _ = find(&ann, vec![w(hostile)], None, None).await;
            let _ = find(&ann, vec![p(hostile)], None, None).await;
        }
        assert_eq!(
            find(&ann, vec![w("fox")], None, None).await.len(),
            1,
            "still there"
        );

        let quick = Search {
            terms: vec![w("quick")],
            ..Default::default()
        };
        let page = s
            .search(everything(ann.id), &quick, None, 2)
            .await
            .expect("q");
        assert_eq!(page.len(), 2);
        let rest = s
            .search(everything(ann.id), &quick, Some(page[1].id), 2)
            .await
            .expect("q");
        assert_eq!(rest.len(), 1);
        assert!(rest[0].id < page[1].id);
        let hit = &page[0];
        assert_eq!(
            (hit.room.as_str(), hit.room_title.as_str()),
            ("secret", "#secret")
        );
        assert!(
            hit.snippet
                .iter()
                .any(|part| part.hit && part.text.eq_ignore_ascii_case("quick")),
            "{:?}",
            hit.snippet
        );
    }

    async fn attachments_and_the_blobs_they_hold(s: Under) {
        let [ann] = <[User; 1]>::try_from(users(&s, &["ann"]).await).expect("one");
        make_room(&s, &ann, "team", Visibility::Public).await;
        let sha = "ab".repeat(32);
        let with_file = |id: &str| {
            let mut m = said(&ann, "team", id, "look");
            m.attachment = Some(NewAttachment {
                id: format!("file-{id}"),
                sha256: sha.clone(),
                name: "cat.png".into(),
                size: 1234,
                mime: "image/png".into(),
                width: Some(10),
                height: Some(20),
            });
            m
        };
        let first = s.append(with_file("f1")).await.expect("post").message;
        let a = first.attachment.clone().expect("attached");
        assert_eq!(
            (a.id.as_str(), a.width, a.height),
            ("file-f1", Some(10), Some(20))
        );
        let read = s
            .after("team", first.seq - 1, 1)
            .await
            .expect("q")
            .remove(0);
        assert_eq!(read.attachment.expect("attached").size, 1234);
        let stored = s.attachment("file-f1").await.expect("q").expect("found");
        assert_eq!((stored.room.as_str(), stored.size), ("team", 1234));
        let second = s.append(with_file("f2")).await.expect("post").message;
        assert_eq!(s.uploaded_bytes(ann.id).await.expect("q"), 2468);
        assert!(s.blob_in_use(&sha).await.expect("q"));
        let delete = |id: &str, seq: u64| {
            about(
                event(
                    &ann,
                    "team",
                    id,
                    K::MessageDeleted,
                    "",
                    Change::Delete { any_author: false },
                ),
                seq,
            )
        };
        let d = s.append(delete("d1", first.seq)).await.expect("delete");
        assert!(d.freed.is_empty(), "the other message still holds it");
        let d = s.append(delete("d2", second.seq)).await.expect("delete");
        assert_eq!(d.freed, vec![sha.clone()]);
        assert!(!s.blob_in_use(&sha).await.expect("q"));
        assert!(s.attachment("file-f1").await.expect("q").is_none());
        assert_eq!(s.uploaded_bytes(ann.id).await.expect("q"), 0);
    }

    async fn heads_of_many_rooms_at_once(s: Under) {
        s.create_room("a").await.expect("room");
        s.create_room("b").await.expect("room");
        for i in 0..2 {
            s.append(msg("a", &format!("h{i}"), "x"))
                .await
                .expect("post");
        }
        let mut heads = s
            .heads(&["a".into(), "b".into(), "nowhere".into(), "general".into()])
            .await
            .expect("q");
        heads.sort();
        assert_eq!(
            heads,
            vec![("a".into(), 2), ("b".into(), 0), ("general".into(), 0)]
        );
    }
}
