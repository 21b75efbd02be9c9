//! Every SQL statement of the embedded backend (migrations aside, which are `.sql` files under
//! `migrations/sqlite/`). Nothing here is built from input: values are always bound parameters.
//!
//! Times are INTEGER microseconds since the Unix epoch (UTC); `day` is TEXT `YYYY-MM-DD`.

/// The page size of a new database: 16 KiB instead of SQLite's 4 KiB. Larger pages make
/// shallower trees and fewer splits: `commit_throughput` (1M events, 5,000 users, batches of
/// 20,000) committed ~25 % faster than with 4 KiB, and 4 KiB was no faster at 2M events either
/// (both measured with the per-row user indexes that `0006_deferred_user_index.sql` replaced).
pub(crate) const NEW_DATABASE_PRAGMAS: &str = "PRAGMA page_size = 16384;";

/// Connection settings of every connection. `journal_mode = WAL` is persistent in the file;
/// `synchronous` is per connection and set separately from `SqliteOptions`.
pub(crate) const CONNECTION_PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = OFF;
PRAGMA temp_store = MEMORY;
";

/// The writer: an 8 MiB page cache (with the user index outside SQLite, commits touch few
/// pages besides the appended ones: `commit_throughput` of 2M events in batches of 5,000 was no
/// slower than with 16 MiB, and 32 MiB no faster at 50,000 events/s); no checkpoints of its own
/// (a separate thread runs them, see `Checkpointer`), and the WAL file truncated back to 64 MB
/// after a checkpoint resets it.
pub(crate) const WRITER_PRAGMAS: &str = "
PRAGMA cache_size = -8192;
PRAGMA wal_autocheckpoint = 0;
PRAGMA journal_size_limit = 67108864;
";

/// Readers never write.
pub(crate) const READER_PRAGMAS: &str = "
PRAGMA query_only = 1;
PRAGMA cache_size = -8192;
";

// --- migrations -------------------------------------------------------------------------------

pub(crate) const CREATE_SCHEMA_MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL
)";

pub(crate) const APPLIED_MIGRATIONS: &str =
    "SELECT version, name FROM schema_migrations ORDER BY version";

pub(crate) const RECORD_MIGRATION: &str =
    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)";

// --- commit_batch -----------------------------------------------------------------------------

pub(crate) const INSERT_EVENT: &str = "
INSERT INTO events (event_id, source, kind, name, user_id, anonymous_id, group_id, previous_id,
    ts, original_ts, sent_at, received_at, properties, traits, context, integrations)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

/// Add a batch's count for one `(bucket, source, name)`.
pub(crate) const ADD_COUNT: &str = "
INSERT INTO event_counts_1m (bucket, source, name, count) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (source, bucket, name) DO UPDATE SET count = count + excluded.count";

pub(crate) const ADD_DAU: &str = "
INSERT INTO daily_active_users (day, source, user_key) VALUES (?1, ?2, ?3)
ON CONFLICT DO NOTHING";

/// Forward-only upsert of one shard's position: ?1 group, ?2 shard, ?3 id, ?4 ms, ?5 seq, ?6 now.
pub(crate) const UPSERT_OFFSET: &str = "
INSERT INTO consumer_offsets (group_name, shard, last_id, last_ms, last_seq, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (group_name, shard) DO UPDATE
SET last_id = excluded.last_id, last_ms = excluded.last_ms, last_seq = excluded.last_seq,
    updated_at = excluded.updated_at
WHERE (last_ms, last_seq) < (excluded.last_ms, excluded.last_seq)";

pub(crate) const SELECT_POSITIONS: &str =
    "SELECT shard, last_id FROM consumer_offsets WHERE group_name = ?1 ORDER BY shard";

// --- alerts -----------------------------------------------------------------------------------

pub(crate) const INSERT_ALERT: &str = "
INSERT INTO alerts (source, rule, subject, window_start, window_end, count, first_event_id,
    last_event_id, created_at, details)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (source, rule, subject, window_start) DO NOTHING";

/// Alerts of ?1 whose window `[window_start, window_end)` overlaps `[?2, ?3)`, newest first.
pub(crate) const SELECT_ALERTS: &str = "
SELECT source, rule, subject, window_start, window_end, count, first_event_id, last_event_id,
    created_at, details
FROM alerts
WHERE source = ?1 AND window_start < ?3 AND window_end > ?2
ORDER BY window_start DESC, id DESC
LIMIT ?4";

// --- keys -------------------------------------------------------------------------------------

pub(crate) const INSERT_KEY: &str = "
INSERT INTO api_keys (source, kind, key_hash, hint, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
RETURNING id, source, kind, key_hash, hint, created_at, revoked_at";

pub(crate) const LIST_KEYS: &str = "
SELECT id, source, kind, key_hash, hint, created_at, revoked_at FROM api_keys ORDER BY id";

/// Revoke by id (?1, may be NULL) or by hash (?2, may be NULL) at ?3. Revoking twice keeps the
/// first revocation time.
pub(crate) const REVOKE_KEY: &str = "
UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?3)
WHERE id = ?1 OR key_hash = ?2
RETURNING id, source, kind, key_hash, hint, created_at, revoked_at";

// --- queries ----------------------------------------------------------------------------------

/// Counts of ?1 per bucket of ?2 microseconds (aligned to the epoch, UTC), from the minutes in
/// `[?3, ?4)`; all names.
/// The bucket is floored (also before 1970, where `%` truncates toward zero).
pub(crate) const COUNTS_ALL: &str = "
SELECT bucket - (((bucket % ?2) + ?2) % ?2) AS b, sum(count)
FROM event_counts_1m
WHERE source = ?1 AND bucket >= ?3 AND bucket < ?4
GROUP BY b";

/// As [`COUNTS_ALL`], for one name ?5.
pub(crate) const COUNTS_NAME: &str = "
SELECT bucket - (((bucket % ?2) + ?2) % ?2) AS b, sum(count)
FROM event_counts_1m
WHERE source = ?1 AND bucket >= ?3 AND bucket < ?4 AND name = ?5
GROUP BY b";

/// Most frequent names of ?1 over the minutes in `[?2, ?3)`; ties by name.
pub(crate) const TOP_EVENTS: &str = "
SELECT name, sum(count) AS c
FROM event_counts_1m
WHERE source = ?1 AND bucket >= ?2 AND bucket < ?3
GROUP BY name
ORDER BY c DESC, name ASC
LIMIT ?4";

/// DAU of ?1 per day in `[?2, ?3]` (inclusive day strings).
pub(crate) const DAU_PER_DAY: &str = "
SELECT day, count(*) FROM daily_active_users
WHERE source = ?1 AND day >= ?2 AND day <= ?3
GROUP BY day";

pub(crate) const DAU_DISTINCT: &str = "
SELECT count(DISTINCT user_key) FROM daily_active_users
WHERE source = ?1 AND day >= ?2 AND day <= ?3";

/// Columns of an event row, in the order `commit::read_event` expects.
macro_rules! event_columns {
    () => {
        "event_id, source, kind, name, user_id, anonymous_id, group_id, previous_id, ts, \
         original_ts, sent_at, received_at, properties, traits, context, integrations"
    };
}

/// The events of a user not in the user index yet (rowid > ?3, see `ids.rs`): ?1 source, ?2
/// the user's `user_id` (`anonymous_id` for the `…_ANONYMOUS_ID` form). Scanned by rowid: the
/// rows not indexed are only those of a commit being indexed, or all of them in a warehouse
/// opened shared.
macro_rules! user_events_after {
    ($column:literal) => {
        concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE rowid > ?3 AND source = ?1 AND ",
            $column,
            " = ?2"
        )
    };
}

pub(crate) const USER_EVENTS_AFTER_BY_USER_ID: &str = user_events_after!("user_id");

pub(crate) const USER_EVENTS_AFTER_BY_ANONYMOUS_ID: &str = user_events_after!("anonymous_id");

/// One event by rowid (a user-index entry's).
pub(crate) const EVENT_BY_ROWID: &str =
    concat!("SELECT ", event_columns!(), " FROM events WHERE rowid = ?1");

/// The ids of ?1's events (a scan: a warehouse opened shared has no dedupe index to ask).
pub(crate) const SCAN_EVENT_IDS: &str = "SELECT event_id FROM events WHERE source = ?1";

/// The ids of ?1's events with `ts >= ?2`.
pub(crate) const SCAN_EVENT_IDS_SINCE: &str =
    "SELECT event_id FROM events INDEXED BY events_ts_idx WHERE ts >= ?2 AND source = ?1";

/// Rows and distinct ids of ?1 with ids in `[?2, ?3)`: a scan of `events` (there is no index on
/// the id, see `0007_no_event_id_index.sql`; this runs once per `sluice bench --verify`).
pub(crate) const COUNT_ID_RANGE: &str = "
SELECT count(*), count(DISTINCT event_id) FROM events
WHERE source = ?1 AND event_id >= ?2 AND event_id < ?3";

/// Rows and distinct ids of ?1 with ids `>= ?2` (a prefix with no upper bound).
pub(crate) const COUNT_ID_FROM: &str = "
SELECT count(*), count(DISTINCT event_id) FROM events
WHERE source = ?1 AND event_id >= ?2";

// --- the dedupe index (`ids.rs`) --------------------------------------------------------------

/// The largest rowid of `events` (0: none): how far the dedupe index must cover.
pub(crate) const LAST_EVENT_ROWID: &str = "SELECT coalesce(max(rowid), 0) FROM events";

/// What the indexes (`ids.rs`) keep of the events with rowids in `(?1, ?2]` (catching them up):
/// the columns of `ids::row_user_entries`, then the event id and when it was received.
pub(crate) const EVENTS_BETWEEN_ROWIDS: &str = "
SELECT source, user_id, anonymous_id, ts, rowid, event_id, received_at FROM events
WHERE rowid > ?1 AND rowid <= ?2";

// --- maintenance ------------------------------------------------------------------------------

/// Retention, one small batch per transaction: the rowids of up to ?2 events older than ?1 go
/// into `temp.doomed`; what their user-index entries are made of is read, then the events are
/// deleted.
pub(crate) const PRUNE_EVENTS_START: &str = "
CREATE TEMP TABLE IF NOT EXISTS doomed (rid INTEGER PRIMARY KEY);
DELETE FROM temp.doomed;";

pub(crate) const PRUNE_EVENTS_COLLECT: &str =
    "INSERT INTO temp.doomed (rid) SELECT rowid FROM events WHERE ts < ?1 LIMIT ?2";

/// The largest rowid not in `temp.doomed` (0 when none): from the end, stopping at the first.
pub(crate) const PRUNE_EVENTS_LAST_KEPT: &str = "
SELECT coalesce((SELECT rowid FROM events WHERE rowid NOT IN (SELECT rid FROM temp.doomed)
                 ORDER BY rowid DESC LIMIT 1), 0)";

/// The columns of `ids::row_user_entries`.
pub(crate) const PRUNE_EVENTS_USERS: &str = "
SELECT source, user_id, anonymous_id, ts, rowid FROM events
WHERE rowid IN (SELECT rid FROM temp.doomed)";

pub(crate) const PRUNE_EVENTS_DELETE: &str = "
DELETE FROM events WHERE rowid IN (SELECT rid FROM temp.doomed);
DELETE FROM temp.doomed;";

/// Rows deleted per pruning statement; each is its own short transaction.
pub(crate) const PRUNE_BATCH: i64 = 10_000;
