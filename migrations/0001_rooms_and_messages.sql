-- Rooms and their messages. `head_seq` is the last sequence number given out in the room; a message's
-- `seq` is taken from it in the same transaction that stores the message, so seqs have no gaps.
CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    head_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE messages (
    id        INTEGER PRIMARY KEY,
    room_id   INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    client_id TEXT    NOT NULL,
    user      TEXT    NOT NULL,
    body      TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    UNIQUE (room_id, seq),
    UNIQUE (room_id, client_id)
);

INSERT INTO rooms (name, head_seq, created_at) VALUES ('general', 0, 0);
