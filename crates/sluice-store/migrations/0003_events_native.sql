-- Raw events, native declarative partitioning by day on ts. Day partitions `events_pYYYYMMDD` are
-- created ahead by maintain(); `events_default` catches everything outside them (a client clock
-- in 1970 or 2090 is stored, never rejected).
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
) PARTITION BY RANGE (ts);

CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE INDEX events_source_user_ts_idx ON events (source, user_id, ts);
CREATE INDEX events_source_anon_ts_idx ON events (source, anonymous_id, ts);
-- BRIN: events arrive roughly in time order, so a block-range index serves time-range scans at a
-- fraction of a btree's insert cost.
CREATE INDEX events_ts_idx ON events USING brin (ts);
