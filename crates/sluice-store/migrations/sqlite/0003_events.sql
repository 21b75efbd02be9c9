-- Raw events, one table (no partitioning: retention deletes old rows in small batches through
-- the ts index). JSON columns are TEXT holding a JSON object ('{}' when absent); SQLite's json
-- functions read them. Times are INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE events (
    event_id      TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    name          TEXT,
    user_id       TEXT,
    anonymous_id  TEXT,
    group_id      TEXT,
    previous_id   TEXT,
    ts            INTEGER NOT NULL,
    original_ts   INTEGER,
    sent_at       INTEGER,
    received_at   INTEGER NOT NULL,
    properties    TEXT    NOT NULL DEFAULT '{}',
    traits        TEXT    NOT NULL DEFAULT '{}',
    context       TEXT    NOT NULL DEFAULT '{}',
    integrations  TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX events_source_user_ts_idx ON events (source, user_id, ts);
CREATE INDEX events_source_anon_ts_idx ON events (source, anonymous_id, ts);
CREATE INDEX events_ts_idx ON events (ts);
-- Verification look-ups by id (stored_event_ids, count_by_id_prefix). Not unique: uniqueness
-- within the dedupe window is enforced through event_dedupe, as on PostgreSQL.
CREATE INDEX events_source_event_id_idx ON events (source, event_id);
