-- The signature each plugin version was uploaded with (Ed25519 over the component's and the
-- manifest's SHA-256; NULL if unsigned), so every load, reload and rollback re-verifies it
-- against the trust keys the server runs with now: a version stored unsigned, or signed by a
-- key no longer trusted, does not load once trust keys are configured.
ALTER TABLE plugin_version ADD COLUMN signature BLOB;
