-- A keyed check value of the audit key the database was first opened with: a server or tool started with
-- another master key is refused at once, instead of appending audit rows that would later fail verification.
CREATE TABLE audit_key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    mac BLOB NOT NULL
);
