-- As PostgreSQL's 0005: a user's events are looked up by `user_id` or `anonymous_id`, never by
-- NULL, so the two user indexes skip the events that lack one (most identified users send no
-- anonymous id, and vice versa) — one index entry less per event. SQLite uses a partial index
-- `WHERE c IS NOT NULL` for any query with `c = ?`.
DROP INDEX IF EXISTS events_source_user_ts_idx;
DROP INDEX IF EXISTS events_source_anon_ts_idx;
CREATE INDEX events_source_user_ts_idx ON events (source, user_id, ts) WHERE user_id IS NOT NULL;
CREATE INDEX events_source_anon_ts_idx ON events (source, anonymous_id, ts)
    WHERE anonymous_id IS NOT NULL;
