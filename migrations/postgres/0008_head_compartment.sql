-- The access predicate is a condition on the head row: each head carries the data key (the
-- patient compartment, `patient/<id>`, or `type/<Type>`) of its current version, NULL for a
-- deletion, so "only patient X's records" is `h.key_id = 'patient/X'` in every query a request
-- causes (search, chains, _has, includes, counts, history).
--
-- `deleted` gains a third state, 2: erased (the data key was destroyed). Every search, count,
-- chain and include asks for `deleted = 0`, so erased records drop out of all of them, as
-- their search rows already did.
ALTER TABLE resource_head ADD COLUMN key_id TEXT;
UPDATE resource_head h SET key_id = v.key_id
FROM resource_version v
WHERE v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version;
UPDATE resource_head SET deleted = 2
WHERE deleted = 0 AND key_id IN (SELECT key_id FROM data_key WHERE wrapped IS NULL);
CREATE INDEX resource_head_key ON resource_head (key_id, res_type) WHERE key_id IS NOT NULL;
