-- hubbub on PostgreSQL: the same data model as the SQLite store's migrations 0001–0005, in one
-- step (there are no PostgreSQL installs of the earlier schemas to bring along).
--
-- A room's `head_seq` is the last seq given out in it; an event takes `head_seq + 1` by updating
-- the room's row in the transaction that stores it (never a SEQUENCE: an aborted transaction
-- would leave a hole), so seqs are gapless and, within a room, in commit order.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE rooms (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    head_seq    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    kind        TEXT   NOT NULL DEFAULT 'room',
    visibility  TEXT   NOT NULL DEFAULT 'public',
    title       TEXT   NOT NULL DEFAULT '',
    topic       TEXT   NOT NULL DEFAULT '',
    owner_id    BIGINT REFERENCES users (id) ON DELETE SET NULL,
    archived_at BIGINT,
    dm_key      TEXT,
    created_by  BIGINT REFERENCES users (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX rooms_dm_key ON rooms (dm_key) WHERE dm_key IS NOT NULL;
CREATE INDEX rooms_created_by ON rooms (created_by, created_at);

CREATE TABLE messages (
    id         BIGSERIAL PRIMARY KEY,
    room_id    BIGINT  NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq        BIGINT  NOT NULL,
    client_id  TEXT    NOT NULL,
    kind       TEXT    NOT NULL DEFAULT 'message',
    "user"     TEXT    NOT NULL,
    user_id    BIGINT,
    username   TEXT,
    guest      BOOLEAN NOT NULL DEFAULT FALSE,
    body       TEXT    NOT NULL,
    member     TEXT,
    ts         BIGINT  NOT NULL,
    target     BIGINT,
    reply_to   BIGINT,
    edited_at  BIGINT,
    deleted_at BIGINT,
    mentions   TEXT    NOT NULL DEFAULT '',
    count      BIGINT,
    -- Full-text search over the text of chat messages that are not deleted: kept by the
    -- database itself, in the same transaction as each message, edit and delete.
    search     TSVECTOR GENERATED ALWAYS AS (
        CASE WHEN kind = 'message' AND deleted_at IS NULL
             THEN to_tsvector('simple', body) END
    ) STORED,
    UNIQUE (room_id, seq),
    UNIQUE (room_id, client_id)
);
CREATE INDEX messages_target ON messages (room_id, target) WHERE target IS NOT NULL;
CREATE INDEX messages_search ON messages USING GIN (search);

CREATE TABLE members (
    room_id   BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT   NOT NULL DEFAULT 'member',
    joined_at BIGINT NOT NULL,
    last_read BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE sessions (
    id_hash    TEXT   PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE api_tokens (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT   NOT NULL,
    token_hash TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
CREATE INDEX api_tokens_expiry ON api_tokens (expires_at);

CREATE TABLE invites (
    id         BIGSERIAL PRIMARY KEY,
    code_hash  TEXT   NOT NULL UNIQUE,
    created_by BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    uses_left  BIGINT NOT NULL
);

CREATE TABLE reactions (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    emoji   TEXT   NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at      BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq, emoji, user_id)
);

CREATE TABLE mentions (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at_seq  BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, at_seq)
);
CREATE INDEX mentions_message ON mentions (room_id, seq);

CREATE TABLE attachments (
    id          TEXT   PRIMARY KEY,
    room_id     BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq         BIGINT,
    uploader_id BIGINT REFERENCES users (id) ON DELETE SET NULL,
    sha256      TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    mime        TEXT   NOT NULL,
    width       BIGINT,
    height      BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX attachments_message ON attachments (room_id, seq);
CREATE INDEX attachments_sha ON attachments (sha256);
CREATE INDEX attachments_uploader ON attachments (uploader_id);

-- Files' bytes, for every node to read: chunks of a blob, by its SHA-256.
CREATE TABLE blob_chunks (
    sha256 TEXT  NOT NULL,
    n      INT   NOT NULL,
    data   BYTEA NOT NULL,
    PRIMARY KEY (sha256, n)
);

INSERT INTO rooms (name, head_seq, created_at, title) VALUES ('general', 0, 0, 'general');
