-- End-to-end encryption: each account's public identity (signing and agreement keys with the account's
-- self-signature) and its secret keys sealed on the client, under the passphrase and under the recovery key.
-- The server never holds anything that opens them.
CREATE TABLE user_keys (
    user_id BLOB PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    identity BLOB NOT NULL,
    sealed_by_passphrase BLOB NOT NULL,
    sealed_by_recovery BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
