-- API keys: `csk_<id>_<secret>`. Only a hash of the secret is kept; during a rotation's grace period the
-- previous secret's hash stays valid until old_valid_until_ms. A revoked key's row is deleted (its history
-- is in the audit log).
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    workspaces TEXT,
    secret_hash BLOB NOT NULL,
    old_secret_hash BLOB,
    old_valid_until_ms INTEGER,
    mfa INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER,
    last_used_ip TEXT,
    UNIQUE (user_id, name)
);
