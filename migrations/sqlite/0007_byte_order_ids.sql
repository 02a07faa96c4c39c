-- Nothing to do on SQLite: its text columns compare byte-wise (BINARY) already. On
-- PostgreSQL this migration gives every resource type and id column the "C" collation.
SELECT 1;
