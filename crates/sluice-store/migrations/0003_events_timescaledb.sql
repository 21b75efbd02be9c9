-- Raw events as a TimescaleDB hypertable on ts: one chunk per day, chunks older than 7 days
-- compressed (segmented by source). Retention is applied by maintain() from PgOptions.
-- Chosen instead of 0003_events_native.sql when the timescaledb extension can be created.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE events (
    event_id      text        NOT NULL,
    source        text        NOT NULL,
    kind          text        NOT NULL,
    name          text,
    user_id       text,
    anonymous_id  text,
    group_id      text,
    previous_id   text,
    ts            timestamptz NOT NULL,
    original_ts   timestamptz,
    sent_at       timestamptz,
    received_at   timestamptz NOT NULL,
    properties    jsonb       NOT NULL DEFAULT '{}',
    traits        jsonb       NOT NULL DEFAULT '{}',
    context       jsonb       NOT NULL DEFAULT '{}',
    integrations  jsonb       NOT NULL DEFAULT '{}'
);

SELECT create_hypertable(
    'events', 'ts',
    chunk_time_interval => INTERVAL '1 day',
    create_default_indexes => false
);

CREATE INDEX events_source_user_ts_idx ON events (source, user_id, ts);
CREATE INDEX events_source_anon_ts_idx ON events (source, anonymous_id, ts);
-- BRIN: events arrive roughly in time order, so a block-range index serves time-range scans at a
-- fraction of a btree's insert cost.
CREATE INDEX events_ts_idx ON events USING brin (ts);

ALTER TABLE events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'source',
    timescaledb.compress_orderby = 'ts DESC'
);

SELECT add_compression_policy('events', compress_after => INTERVAL '7 days');
