-- Chunks are written in packs: where each one's sealed bytes are. NULL pack: an object of its own.
ALTER TABLE chunks ADD COLUMN pack BLOB;
ALTER TABLE chunks ADD COLUMN pack_offset INTEGER NOT NULL DEFAULT 0;
