-- Alerts raised by the fraud/anomaly processor. Stored exactly once per
-- (source, rule, subject, window_start): a redelivered batch of the fraud consumer group inserts
-- nothing new (commit_alerts writes them and the group's consumer_offsets in one transaction).
CREATE TABLE alerts (
    id              bigserial   PRIMARY KEY,
    source          text        NOT NULL,
    rule            text        NOT NULL,
    subject         text        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    count           bigint      NOT NULL,
    first_event_id  text        NOT NULL,
    last_event_id   text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    details         jsonb       NOT NULL DEFAULT '{}',
    UNIQUE (source, rule, subject, window_start)
);

-- "Alerts of a source over a time range, newest first".
CREATE INDEX alerts_source_window_idx ON alerts (source, window_start);
