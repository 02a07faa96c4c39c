-- Every version of every resource is one immutable row; deletions are versions with no body.
-- Bodies are sealed (AES-256-GCM, nonce || ciphertext || tag) under the data key `key_id`,
-- with the row's type, id, version and key id as associated data.
CREATE TABLE resource_version (
    res_type        TEXT     NOT NULL,
    res_id          TEXT     NOT NULL,
    version         BIGINT   NOT NULL,
    last_updated_us BIGINT   NOT NULL,  -- microseconds since the Unix epoch, UTC
    deleted         SMALLINT NOT NULL,  -- 1 for a deletion marker
    key_id          TEXT,               -- the data key sealing `body`; NULL for a deletion
    body            BYTEA,              -- the sealed resource JSON; NULL for a deletion
    PRIMARY KEY (res_type, res_id, version)
);

-- The current version of each resource. Writers move it with a compare-and-set on `version`,
-- which is what makes If-Match free of lost updates on both databases.
CREATE TABLE resource_head (
    res_type        TEXT     NOT NULL,
    res_id          TEXT     NOT NULL,
    version         BIGINT   NOT NULL,
    last_updated_us BIGINT   NOT NULL,
    deleted         SMALLINT NOT NULL,
    PRIMARY KEY (res_type, res_id)
);

-- Data keys, one per patient compartment ('patient/<id>') or per resource type outside any
-- compartment ('type/<Type>'), stored only wrapped by a key-encryption key (KEK).
-- `wrapped` is NULL once the key was destroyed (crypto-shredded).
CREATE TABLE data_key (
    key_id       TEXT   NOT NULL PRIMARY KEY,
    kek_version  BIGINT NOT NULL,
    wrapped      BYTEA,
    created_us   BIGINT NOT NULL,
    destroyed_us BIGINT
);

-- KEK versions seen by this database; a version is retired once no data key is wrapped by it.
-- `check_value` is an empty message sealed under the KEK: it tells at start-up whether the
-- keyring holds the right key for this database, before any record is touched.
CREATE TABLE kek_version (
    version     BIGINT NOT NULL PRIMARY KEY,
    created_us  BIGINT NOT NULL,
    retired_us  BIGINT,
    check_value BYTEA NOT NULL
);

-- Crypto-shredding record: which data key was destroyed, when, and the stated reason.
CREATE TABLE erasure (
    key_id    TEXT   NOT NULL,
    erased_us BIGINT NOT NULL,
    reason    TEXT   NOT NULL
);
