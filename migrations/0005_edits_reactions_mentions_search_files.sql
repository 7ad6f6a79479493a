-- Team chat, part 2: edits and deletes, reactions, replies, mentions, full-text search and files.
-- Each change to a message is an event of its own in the room's stream (kinds `message_edited`,
-- `message_deleted`, `reaction_added`, `reaction_removed`) naming the message it changes in
-- `target`; the message's row holds its current state, so history answers with the latest text.

-- On an edit, delete or reaction event: the seq of the message it changes.
ALTER TABLE messages ADD COLUMN target INTEGER;
-- On a reply: the seq of the message (in the same room) it answers.
ALTER TABLE messages ADD COLUMN reply_to INTEGER;
-- On a message: when its text last changed, and when it was deleted (its text is then erased,
-- here, in its edit events and in the search index).
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
-- On a message or an edit: the ids of the members it mentions, comma-separated.
ALTER TABLE messages ADD COLUMN mentions TEXT NOT NULL DEFAULT '';
-- On a reaction event: how many had reacted with that emoji once it was applied.
ALTER TABLE messages ADD COLUMN count INTEGER;
CREATE INDEX messages_target ON messages (room_id, target) WHERE target IS NOT NULL;

-- One reaction per (message, emoji, person).
CREATE TABLE reactions (
    room_id INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    emoji   TEXT    NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    PRIMARY KEY (room_id, seq, emoji, user_id)
) WITHOUT ROWID;

-- Who was mentioned where: `at_seq` is the event that mentioned them (the message, or the edit
-- that added them), so a member's mention count is what came after their read position.
CREATE TABLE mentions (
    room_id INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at_seq  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, at_seq)
) WITHOUT ROWID;
CREATE INDEX mentions_message ON mentions (room_id, seq);

-- Files attached to messages. The bytes live in the blob store under their SHA-256; a blob goes
-- when no attachment refers to it any more.
CREATE TABLE attachments (
    id          TEXT    PRIMARY KEY,
    room_id     INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq         INTEGER,
    uploader_id INTEGER REFERENCES users (id) ON DELETE SET NULL,
    sha256      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    mime        TEXT    NOT NULL,
    width       INTEGER,
    height      INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX attachments_message ON attachments (room_id, seq);
CREATE INDEX attachments_sha ON attachments (sha256);
CREATE INDEX attachments_uploader ON attachments (uploader_id);

-- Full-text search over the text of chat messages that are not deleted, kept in step with the
-- messages by triggers, so within the same transaction as each message, edit and delete.
CREATE VIEW message_texts AS
    SELECT id, body FROM messages WHERE kind = 'message' AND deleted_at IS NULL;
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body,
    content = 'message_texts',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2',
    -- Prefix indexes, so a word being typed (the last of a search matches as a prefix) is
    -- looked up, not expanded over every word it starts.
    prefix = '2 3'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
    WHEN new.kind = 'message' AND new.deleted_at IS NULL
BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body, deleted_at ON messages
    WHEN old.kind = 'message'
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
        SELECT 'delete', old.id, old.body WHERE old.deleted_at IS NULL;
    INSERT INTO messages_fts (rowid, body)
        SELECT new.id, new.body WHERE new.deleted_at IS NULL;
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
    WHEN old.kind = 'message' AND old.deleted_at IS NULL
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
