-- A workspace whose Owners require two-factor authentication of every member.
ALTER TABLE workspaces ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0;
