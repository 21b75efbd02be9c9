-- Alerts raised by the fraud/anomaly processor, stored exactly once per
-- (source, rule, subject, window_start). `details` is a JSON object as TEXT.
CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY,
    source          TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    window_start    INTEGER NOT NULL,
    window_end      INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    first_event_id  TEXT    NOT NULL,
    last_event_id   TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    details         TEXT    NOT NULL DEFAULT '{}',
    UNIQUE (source, rule, subject, window_start)
);

CREATE INDEX alerts_source_window_idx ON alerts (source, window_start);
