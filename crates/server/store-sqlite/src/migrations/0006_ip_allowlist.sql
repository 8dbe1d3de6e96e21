-- Per-workspace IP allowlist: canonical CIDR networks joined by commas; empty allows every address.
ALTER TABLE workspaces ADD COLUMN ip_allowlist TEXT NOT NULL DEFAULT '';
