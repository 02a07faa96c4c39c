-- The audit log: an append-only SHA-256 hash chain. `entry` is the canonical JSON that was
-- hashed (it repeats `seq`); hash = SHA-256(prev_hash || entry).
CREATE TABLE audit_entry (
    seq       BIGINT NOT NULL PRIMARY KEY,
    entry     TEXT   NOT NULL,
    prev_hash BYTEA  NOT NULL,
    hash      BYTEA  NOT NULL
);

-- The end of the chain, one row; appenders lock it, so concurrent hosts extend one chain.
CREATE TABLE audit_head (
    id   BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA  NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- Signed checkpoints: an Ed25519 signature over (seq, hash) by a key kept outside the
-- database, so rewriting history (even with recomputed hashes) is detected.
CREATE TABLE audit_checkpoint (
    seq       BIGINT NOT NULL PRIMARY KEY,
    hash      BYTEA  NOT NULL,
    at_us     BIGINT NOT NULL,
    key_id    TEXT   NOT NULL,
    signature BYTEA  NOT NULL
);
