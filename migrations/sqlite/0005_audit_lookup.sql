-- Lookups into the audit chain, so an auditor's questions ("who saw patient X", "what did
-- this user do last Tuesday", "which accesses were denied") are index range scans, not a walk
-- over the whole log. The chain (audit_entry) stays the record; these rows only find entries,
-- are written in the same transaction as the entries they point at, and hold what the entries
-- hold (ids and codes, no clinical content). `hearth audit verify` checks the chain itself.
CREATE TABLE audit_time (
    seq   INTEGER NOT NULL PRIMARY KEY,
    at_us INTEGER NOT NULL
);
CREATE INDEX audit_time_at ON audit_time (at_us, seq);

-- One row per searchable fact of an entry: param is a short name (agent, patient, entity,
-- entity-type, subtype, outcome, purpose, reviews), value its value.
CREATE TABLE audit_term (
    param TEXT    NOT NULL,
    value TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (param, value, seq)
) WITHOUT ROWID;
