-- The audit log: an append-only SHA-256 hash chain. `entry` is the canonical JSON that was
-- hashed (it repeats `seq`); hash = SHA-256(prev_hash || entry).
CREATE TABLE audit_entry (
    seq       INTEGER NOT NULL PRIMARY KEY,
    entry     TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL
);

-- The end of the chain, one row; appenders lock it, so concurrent hosts extend one chain.
CREATE TABLE audit_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- Signed checkpoints: an Ed25519 signature over (seq, hash) by a key kept outside the
-- database, so rewriting history (even with recomputed hashes) is detected.
CREATE TABLE audit_checkpoint (
    seq       INTEGER NOT NULL PRIMARY KEY,
    hash      BLOB    NOT NULL,
    at_us     INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL
);
