-- The retention purge deletes by time, and events arrive in time order: a BRIN index on `at` (a few
-- pages for millions of rows, next to nothing to maintain per insert) serves `at < now() - interval`
-- as well as the btree did, which was one more btree insert for every code sent or checked
-- (PostgreSQL docs, "BRIN Indexes": for columns that correlate with the physical order).
drop index audit_events_at;
create index audit_events_at on audit_events using brin (at);
