-- Finding a phone's events (`phone-auth admin audit --phone`) by a BRIN bloom index instead of a btree.
--
-- Why: every code sent and every failed code check is a row, and its phone digest is a random
-- 32-byte key: the btree took an insert at a random leaf for each of them, which measured at half
-- of PostgreSQL's cost per audit row (COPY of 200,000 code rows: 1.20-1.32 s with the btree,
-- 0.56-0.64 s with this index, plus 0.26 us a row to summarize; docs/BENCHMARKS.md, session 7).
-- A bloom summary per 16 heap pages answers "may this range hold that phone?" (1% false positives):
-- a lookup reads the summaries (about 1.5 bytes a row: 150 MB at 100 million rows) and the few
-- ranges that may match, instead of 3 btree pages. That is an operator's command, not a request.
--
-- n_distinct_per_range: a range of 16 pages holds about 700 rows of this table; 1000 keeps the
-- false positive rate at its target when rows are shorter. autosummarize: each range is summarized
-- by autovacuum as soon as the next one is started; rows not yet summarized are always read, so a
-- lookup never misses one (PostgreSQL docs, "BRIN Indexes", "Bloom operator classes", PostgreSQL 14+).
drop index if exists audit_events_by_phone;
create index audit_events_by_phone on audit_events
    using brin (phone_digest bytea_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.01))
    with (pages_per_range = 16, autosummarize = on);
