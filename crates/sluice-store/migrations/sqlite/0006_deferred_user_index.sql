-- A user's events, indexed in bulk instead of row by row.
--
-- An index on (source, user_id, ts) receives each new event at its user's place: with thousands
-- of users, one commit dirties one leaf page per distinct user, and that share of every commit
-- grows with the table (at 50,000 events/s it was ~40 % of the writer's time, the pipeline's
-- serial stage). So the user look-up index is a table that sluice fills itself: the events
-- inserted since the last pass (the "tail": rowid > user_index_state.through) are added in one
-- sorted INSERT once the tail is large enough (`SqliteOptions::user_index_lag_rows`), and at
-- every maintain(). A query reads the index for rowids up to `through` and scans the tail by
-- rowid, so results are complete whatever the tail's size. Retention deletes an event's entries
-- in the same transaction as the event.
DROP INDEX IF EXISTS events_source_user_ts_idx;
DROP INDEX IF EXISTS events_source_anon_ts_idx;

-- `anonymous` 0: the entry is for user_id; 1: for anonymous_id (an event with both has two).
CREATE TABLE user_index (
    source       TEXT    NOT NULL,
    anonymous    INTEGER NOT NULL,
    user_key     TEXT    NOT NULL,
    ts           INTEGER NOT NULL,
    event_rowid  INTEGER NOT NULL,
    PRIMARY KEY (source, anonymous, user_key, ts, event_rowid)
) WITHOUT ROWID;

-- Every events row with rowid <= through has its entries in user_index.
CREATE TABLE user_index_state (
    id       INTEGER PRIMARY KEY CHECK (id = 0),
    through  INTEGER NOT NULL
);

INSERT INTO user_index (source, anonymous, user_key, ts, event_rowid)
SELECT source, 0, user_id, ts, rowid FROM events WHERE user_id IS NOT NULL
UNION ALL
SELECT source, 1, anonymous_id, ts, rowid FROM events WHERE anonymous_id IS NOT NULL
ORDER BY 1, 2, 3, 4, 5;

INSERT INTO user_index_state (id, through) SELECT 0, coalesce(max(rowid), 0) FROM events;
