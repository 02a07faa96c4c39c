-- Search index: what FHIR search needs of each resource's current version, rewritten in the
-- same transaction as every write (and removed by deletes). Values of identifying elements
-- (names, identifiers, telecom, addresses, birth dates) are never stored here: only their
-- HMAC blind-index tokens (hex, in `val`). Codes, references to opaque ids and clinical dates
-- and quantities are stored plain so they can be range-searched and sorted. See docs/search.md.
-- The value, date and number indexes are partial: a row is in only the ones its values need.
CREATE TABLE search_index (
    res_type TEXT    COLLATE "C" NOT NULL,
    res_id   TEXT    COLLATE "C" NOT NULL,
    param    TEXT    COLLATE "C" NOT NULL, -- the search parameter's code, e.g. 'code', 'subject', 'family'
    sys      TEXT    COLLATE "C",         -- token/composite: code system; reference: target type; quantity: unit system
    val      TEXT    COLLATE "C",         -- token: code; reference: target id; string: normalised text; blind: token
    unit     TEXT    COLLATE "C",         -- quantity: unit code
    num      DOUBLE PRECISION,            -- number and quantity values
    date_lo  BIGINT,                      -- date ranges, microseconds since the epoch, inclusive
    date_hi  BIGINT
);
CREATE INDEX search_index_value ON search_index (res_type, param, val, sys) WHERE val IS NOT NULL;
CREATE INDEX search_index_date ON search_index (res_type, param, date_lo, date_hi) WHERE date_lo IS NOT NULL;
CREATE INDEX search_index_number ON search_index (res_type, param, num) WHERE num IS NOT NULL;
CREATE INDEX search_index_resource ON search_index (res_type, res_id, param);

-- Type- and system-level history read versions newest first.
CREATE INDEX resource_version_changed ON resource_version (last_updated_us);
CREATE INDEX resource_version_type_changed ON resource_version (res_type, last_updated_us);

-- Which registry of search parameters the index was built with; a different fingerprint at
-- start-up means the index is rebuilt from the stored resources.
CREATE TABLE search_index_state (
    id          SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT    NOT NULL
);

-- Resource ids are compared byte-wise, as on SQLite, so paging cursors order the same way.
ALTER TABLE resource_head ALTER COLUMN res_id TYPE TEXT COLLATE "C";
