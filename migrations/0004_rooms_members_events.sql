-- Team chat: rooms of several kinds, their members and read positions, and every durable change
-- to a room as an event in its seq stream (a message is one kind of event).
--
-- A room's `name` is its address (in `/r/NAME`, the API and the protocol) and never changes; its
-- `title` is what people see, and the owner may change it. A direct message is a room of kind
-- `dm` whose `dm_key` lists its members' ids, so opening the same conversation finds it again.
ALTER TABLE rooms ADD COLUMN kind TEXT NOT NULL DEFAULT 'room';
ALTER TABLE rooms ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public';
ALTER TABLE rooms ADD COLUMN title TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN topic TEXT NOT NULL DEFAULT '';
ALTER TABLE rooms ADD COLUMN owner_id INTEGER REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE rooms ADD COLUMN archived_at INTEGER;
ALTER TABLE rooms ADD COLUMN dm_key TEXT;
ALTER TABLE rooms ADD COLUMN created_by INTEGER REFERENCES users (id) ON DELETE SET NULL;
UPDATE rooms SET title = name;
CREATE UNIQUE INDEX rooms_dm_key ON rooms (dm_key) WHERE dm_key IS NOT NULL;
CREATE INDEX rooms_created_by ON rooms (created_by, created_at);

-- Events: `kind` says which (`message`, `member_joined`, `member_left`, `member_invited`,
-- `member_removed`, `room_created`, `room_renamed`, `topic_changed`, `room_archived`). The author
-- is `user_id` + `username` (the handle) + `user` (the display name at the time); a guest has
-- `guest = 1` and no id. `member` is the username a membership event is about. Messages stored
-- before this migration keep their display name and carry no handle.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE messages ADD COLUMN user_id INTEGER;
ALTER TABLE messages ADD COLUMN username TEXT;
ALTER TABLE messages ADD COLUMN guest INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN member TEXT;

-- Who is in a room, their role (`owner` or `member`) and how far they have read (a seq).
CREATE TABLE members (
    room_id   INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT    NOT NULL DEFAULT 'member',
    joined_at INTEGER NOT NULL,
    last_read INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_user ON members (user_id);

-- Every existing account is a member of `general`, having read what is there.
INSERT INTO members (room_id, user_id, joined_at, last_read)
    SELECT r.id, u.id, u.created_at, r.head_seq FROM rooms r, users u WHERE r.name = 'general';
