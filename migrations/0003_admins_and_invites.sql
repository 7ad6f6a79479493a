-- Admins (the first account of an installation is one) and invite links, for
-- `--registration invite`. Invite codes are stored only as SHA-256 digests.
ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
UPDATE users SET is_admin = 1 WHERE id = (SELECT MIN(id) FROM users);

CREATE TABLE invites (
    id         INTEGER PRIMARY KEY,
    code_hash  TEXT    NOT NULL UNIQUE,
    created_by INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL
);

CREATE INDEX sessions_expiry ON sessions (expires_at);
CREATE INDEX api_tokens_expiry ON api_tokens (expires_at);
