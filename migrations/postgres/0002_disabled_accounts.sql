-- An admin may disable an account (it can no longer log in; its sessions and tokens end with it).
-- `disabled_at` is when, in ms since the epoch; NULL for an account in use.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
