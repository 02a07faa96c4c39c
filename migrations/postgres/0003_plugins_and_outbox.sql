-- Plugins (every version kept, one active), their key-value stores, and the outbox of
-- integration events written in the same transaction as the change they report.

CREATE TABLE plugin_version (
    name        TEXT    NOT NULL,
    seq         BIGINT   NOT NULL,  -- 1, 2, ... per plugin, in upload order
    version     TEXT    NOT NULL,  -- the author's version label from the manifest
    world       TEXT    NOT NULL,  -- policy | integration
    manifest    TEXT    NOT NULL,  -- JSON
    component   BYTEA    NOT NULL,
    sha256      TEXT    NOT NULL,
    signed_by   TEXT,              -- the trusted key that signed it; NULL if unsigned
    uploaded_us BIGINT NOT NULL,
    uploaded_by TEXT    NOT NULL,
    PRIMARY KEY (name, seq)
);

CREATE TABLE plugin (
    name       TEXT    NOT NULL PRIMARY KEY,
    active_seq BIGINT NOT NULL,
    enabled    SMALLINT NOT NULL,  -- 0: calls fail closed (policies deny, events wait)
    changed_us BIGINT NOT NULL
);

-- One row; bumped by every plugin change so other hosts on the same database reload.
CREATE TABLE plugin_generation (
    id         BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO plugin_generation (id, generation) VALUES (1, 0);

-- Values are sealed under the data key `plugin-kv/<name>`, like resource bodies.
CREATE TABLE plugin_kv (
    plugin TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BYTEA NOT NULL,
    PRIMARY KEY (plugin, key)
);

CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    plugin           TEXT    NOT NULL,
    res_type         TEXT    NOT NULL,
    res_id           TEXT    NOT NULL,
    version          BIGINT NOT NULL,
    kind             TEXT    NOT NULL,  -- created | updated | deleted
    created_us       BIGINT NOT NULL,
    state            TEXT    NOT NULL,  -- pending | dead (delivered events are removed)
    attempts         BIGINT NOT NULL,
    next_attempt_us  BIGINT NOT NULL,
    claimed_until_us BIGINT NOT NULL,  -- a worker's lease; 0 when unclaimed
    last_error       TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_us);

-- Resources by compartment key (consent lookups, erasure reports).
CREATE INDEX resource_version_key ON resource_version (key_id, res_type);
