-- Garbage collection of chunks no version names. A chunk found unreferenced is first condemned (the time is
-- kept here): from then on it counts as missing, so no new commit can name it, and an upload of the same chunk
-- records it again (clearing the mark). Only a chunk condemned for a whole grace period is deleted.
ALTER TABLE chunks ADD COLUMN condemned_ms INTEGER;
-- Which rows are in a pack: a pack is removed when none is left.
CREATE INDEX chunks_pack ON chunks(workspace_id, pack);
