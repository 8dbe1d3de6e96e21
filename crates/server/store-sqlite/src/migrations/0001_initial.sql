-- CloudSync metadata, SQLite. Ids are UUID bytes, times are Unix milliseconds. Never edit a landed migration:
-- add a new file instead.
CREATE TABLE users (
    id BLOB PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE sessions (
    id BLOB PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE,
    device_name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    last_ip TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE workspaces (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    e2ee INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    journal_seq INTEGER NOT NULL DEFAULT 0
);

-- Kept apart from `workspaces` so that destroying a workspace's keys (crypto-shredding) is one obvious delete.
CREATE TABLE workspace_keys (
    workspace_id BLOB PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    wrapped_data_key BLOB NOT NULL,
    wrapped_chunk_key BLOB NOT NULL
);

CREATE TABLE members (
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE chunks (
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    chunk_id BLOB NOT NULL,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, chunk_id)
);

CREATE TABLE files (
    id BLOB PRIMARY KEY,
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    current_version INTEGER NOT NULL,
    current_version_id BLOB NOT NULL,
    deleted_ms INTEGER
);
CREATE UNIQUE INDEX files_live_path ON files(workspace_id, path) WHERE deleted_ms IS NULL;
CREATE INDEX files_by_path ON files(workspace_id, path, deleted_ms);

CREATE TABLE versions (
    id BLOB PRIMARY KEY,
    file_id BLOB NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    workspace_id BLOB NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    manifest BLOB NOT NULL,
    mtime_ms INTEGER,
    created_by BLOB,
    created_ms INTEGER NOT NULL,
    UNIQUE (file_id, version)
);

CREATE TABLE journal (
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    file_id BLOB NOT NULL,
    path TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, seq)
);

-- Append-only. No foreign keys: rows outlive the users and workspaces they mention.
CREATE TABLE audit (
    id BLOB PRIMARY KEY,
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    outcome TEXT NOT NULL,
    actor BLOB,
    workspace_id BLOB,
    ip TEXT,
    target TEXT,
    details TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX audit_time ON audit(at_ms);

CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL
);

CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY,
    window_start_ms INTEGER NOT NULL,
    count INTEGER NOT NULL
);
