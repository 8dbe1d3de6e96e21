-- TOTP second factor: the secret sealed under a key derived from the server's master key, the last step
-- accepted (codes of that step or earlier are refused), consecutive failures, and hashed recovery codes.
CREATE TABLE user_mfa (
    user_id BLOB PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    sealed_secret BLOB NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER,
    failures INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);

CREATE TABLE recovery_codes (
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    used_ms INTEGER,
    PRIMARY KEY (user_id, code_hash)
);
