-- Resource types and ids compare byte-wise (COLLATE "C") in every table that joins on them.
-- 0004 gave search_index and resource_head.res_id the "C" collation but left the other
-- columns in the database's default one: a join between the two (a read by id joins
-- resource_head to resource_version; every search condition joins search_index to
-- resource_head) then cannot use the other table's index on the id, and scanned every
-- version of the type for each row. At 220,000 resources a read of 10 Observations by id
-- took 227 ms and an Observation search 0.6 s.
ALTER TABLE resource_head ALTER COLUMN res_type TYPE TEXT COLLATE "C";
ALTER TABLE resource_version
    ALTER COLUMN res_type TYPE TEXT COLLATE "C",
    ALTER COLUMN res_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox
    ALTER COLUMN res_type TYPE TEXT COLLATE "C",
    ALTER COLUMN res_id TYPE TEXT COLLATE "C";
