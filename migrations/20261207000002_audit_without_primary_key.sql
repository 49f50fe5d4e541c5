-- The audit trail is append-only: rows are inserted, read by user or phone, and purged by time.
-- Nothing refers to an event by its id (`phone-auth admin audit` prints it, and it breaks ties of
-- `at` when events are read in order), so its primary key was a btree insert, and its identity a
-- locked `nextval` (with a WAL record every 32 values), for every code sent or checked, for a
-- uniqueness that nothing needs. COPY of 200,000 code rows in batches of 2,000 into the table as it
-- was and as it is after this migration, PostgreSQL's CPU (all its processes), eight runs of each,
-- interleaved: 1.21-1.64 s (mean 1.42) before, 0.78-1.22 s (mean 1.04) after: about a quarter less
-- (docs/BENCHMARKS.md, session 9).
--
-- `id` stays: generated always from its sequence (so still unique unless someone overrides it), and
-- still the order of events inserted by one connection. With a cache of 1,000 values per
-- connection, ids of different connections interleave out of time order: readers order by `at`
-- first (services/audit.rs `read`).
alter table audit_events drop constraint audit_events_pkey;
alter table audit_events alter column id set cache 1000;
-- Logical replication must still carry the retention purge's DELETEs (a table in a publication
-- that publishes deletes and has no replica identity refuses them): without a key, the old row in
-- full. It costs nothing unless wal_level is logical, and then only on delete.
alter table audit_events replica identity full;
