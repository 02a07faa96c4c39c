-- Every version of every resource is one immutable row; deletions are versions with no body.
CREATE TABLE resource_version (
    res_type        TEXT     NOT NULL,
    res_id          TEXT     NOT NULL,
    version         BIGINT   NOT NULL,
    last_updated_us BIGINT   NOT NULL,  -- microseconds since the Unix epoch, UTC
    deleted         SMALLINT NOT NULL,  -- 1 for a deletion marker
    body            BYTEA,              -- the resource JSON as served; NULL for a deletion
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
