-- Tables shared by every warehouse flavour (native partitioning or TimescaleDB).

-- Per-minute event counts by EVENT time. `name` is coalesce(events.name, events.kind): the event
-- name for track, the page/screen name for page/screen, else the kind ('identify', 'page', ...).
CREATE TABLE event_counts_1m (
    bucket  timestamptz NOT NULL,
    source  text        NOT NULL,
    name    text        NOT NULL,
    count   bigint      NOT NULL,
    PRIMARY KEY (bucket, source, name)
);

CREATE INDEX event_counts_1m_source_bucket_idx ON event_counts_1m (source, bucket);

-- One row per (UTC day of event time, source, user), user_key = coalesce(user_id, anonymous_id).
CREATE TABLE daily_active_users (
    day       date NOT NULL,
    source    text NOT NULL,
    user_key  text NOT NULL,
    PRIMARY KEY (day, source, user_key)
);

-- Log position of each consumer group per shard, committed in the same transaction as the
-- batch's effects. last_ms/last_seq are the numeric parts of a Redis stream id `ms-seq` (a plain
-- number, e.g. a Kafka offset, is stored as last_ms with last_seq 0); the row only moves forward.
CREATE TABLE consumer_offsets (
    group_name  text        NOT NULL,
    shard       integer     NOT NULL,
    last_id     text        NOT NULL,
    last_ms     bigint      NOT NULL,
    last_seq    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, shard)
);

-- (source, event_id) of every event stored within the dedupe window; pruned by maintain().
CREATE TABLE event_dedupe (
    source    text        NOT NULL,
    event_id  text        NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);

CREATE INDEX event_dedupe_seen_at_idx ON event_dedupe (seen_at);
