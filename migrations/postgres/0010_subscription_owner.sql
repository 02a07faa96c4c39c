-- Who each Subscription acts for: the principal that last created or updated it through the
-- API (issuer, subject, client, patient in context, the scopes as granted). Its criteria are
-- matched, and each notification re-checked at delivery, within that principal's reach, so a
-- Subscription never tells its endpoint about a resource its owner could not read. A
-- Subscription without an owner row (written before this migration) notifies nothing until it
-- is updated.
CREATE TABLE subscription_owner (
    id          TEXT    NOT NULL PRIMARY KEY,
    issuer      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    client_id   TEXT,
    patient     TEXT,
    scopes      TEXT    NOT NULL,
    recorded_us BIGINT  NOT NULL
);
