-- A workspace whose Owners require two-factor authentication of every member, and whether a session was
-- opened with a second factor (or had one proven on it): the policy asks for both.
ALTER TABLE workspaces ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN mfa INTEGER NOT NULL DEFAULT 0;
