-- Rollups, consumer offsets and the dedupe window: the same tables and meaning as PostgreSQL's
-- 0002_rollups_offsets_dedupe.sql. Times are INTEGER microseconds since the Unix epoch (UTC).

-- Per-minute event counts by EVENT time. `name` is coalesce(events.name, events.kind). The key is
-- ordered (source, bucket, name) so that the query API's range scans need no second index.
CREATE TABLE event_counts_1m (
    bucket  INTEGER NOT NULL,
    source  TEXT    NOT NULL,
    name    TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (source, bucket, name)
) WITHOUT ROWID;

-- One row per (UTC day of event time, source, user), user_key = coalesce(user_id, anonymous_id).
-- `day` is TEXT 'YYYY-MM-DD'.
CREATE TABLE daily_active_users (
    day       TEXT NOT NULL,
    source    TEXT NOT NULL,
    user_key  TEXT NOT NULL,
    PRIMARY KEY (source, day, user_key)
) WITHOUT ROWID;

-- Log position of each consumer group per shard, committed in the same transaction as the
-- batch's effects; last_ms/last_seq are the numeric parts of `ms-seq` (a plain number n is
-- (n, 0)); the row only moves forward.
CREATE TABLE consumer_offsets (
    group_name  TEXT    NOT NULL,
    shard       INTEGER NOT NULL,
    last_id     TEXT    NOT NULL,
    last_ms     INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (group_name, shard)
) WITHOUT ROWID;

-- (source, event_id) of every event stored within the dedupe window; pruned by maintain().
CREATE TABLE event_dedupe (
    source    TEXT    NOT NULL,
    event_id  TEXT    NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;

CREATE INDEX event_dedupe_seen_at_idx ON event_dedupe (seen_at);
