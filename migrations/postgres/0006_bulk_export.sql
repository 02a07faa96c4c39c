-- FHIR Bulk Data export jobs. A job fixes what it exports when it is kicked off: the kind
-- (system, patient or group), the types, _since, the group's members, and the transaction
-- time. Its files are produced when they are downloaded, from the resources as they stood at
-- the transaction time, decrypted in memory and streamed: nothing decrypted is ever written to
-- disk. `outputs` is the JSON list of resource types with a file, set when the job completes.
CREATE TABLE export_job (
    id             TEXT    NOT NULL PRIMARY KEY,
    owner          TEXT    NOT NULL,  -- the token subject that kicked it off (only it downloads)
    request        TEXT    NOT NULL,  -- the kick-off URL
    kind           TEXT    NOT NULL,  -- system | patient | group
    types          TEXT    NOT NULL,  -- JSON list; empty: every type the token reaches
    since_us       BIGINT,
    members        TEXT,              -- JSON list of patient ids (group exports)
    transaction_us BIGINT NOT NULL,
    status         TEXT    NOT NULL,  -- in-progress | complete | failed | cancelled
    outputs        TEXT,
    error          TEXT,
    created_us     BIGINT NOT NULL
);
