-- A deleted or edited message's old words leave the search index for real (FTS5 removes them
-- from its segments at once instead of marking them deleted until a merge).
INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1);
