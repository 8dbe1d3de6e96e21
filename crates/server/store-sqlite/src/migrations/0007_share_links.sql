-- Share links: a file reachable without an account through a random token, of which only a hash is kept.
-- A password is an Argon2id hash; downloads are counted against max_downloads in the same statement that
-- grants one, so two racing downloads cannot both take the last. A link serves the file it was made for
-- (file_id), not whatever later lives at its path, and dies with its maker's access (and with the API key
-- that made it, if one did).
CREATE TABLE share_links (
    id BLOB PRIMARY KEY,
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE,
    path TEXT NOT NULL,
    file_id BLOB NOT NULL,
    created_by BLOB NOT NULL,
    api_key_id TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    password_hash TEXT,
    max_downloads INTEGER,
    downloads INTEGER NOT NULL DEFAULT 0,
    revoked_ms INTEGER
);
CREATE INDEX share_links_ws ON share_links(workspace_id);
