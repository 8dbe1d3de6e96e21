-- End-to-end encrypted workspaces: the signed membership log (entries as the clients signed them, in order)
-- and the workspace keys wrapped to each member, per key epoch. The server checks both when they arrive but
-- cannot open a wrapped key; clients verify everything again.
CREATE TABLE e2ee_log (
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (workspace_id, seq)
);

CREATE TABLE e2ee_wrapped_keys (
    workspace_id BLOB NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    recipient_id BLOB NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (workspace_id, recipient_id, epoch)
);
