//! Every SQL statement of the PostgreSQL backend (migrations aside, which are `.sql` files).
//! Nothing here is built from input; the only generated SQL is partition DDL whose names and
//! bounds come from dates (see `maintain.rs`).

/// Per-connection staging table for `commit_batch`, created once when the pool opens the
/// connection. `ON COMMIT DELETE ROWS`: it is empty at the start of every transaction.
pub(crate) const CREATE_STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS sluice_staging (
    ord           int4        NOT NULL,
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
    properties    jsonb       NOT NULL,
    traits        jsonb       NOT NULL,
    context       jsonb       NOT NULL,
    integrations  jsonb       NOT NULL
) ON COMMIT DELETE ROWS";

pub(crate) const COPY_STAGING: &str = "
COPY sluice_staging (ord, event_id, source, kind, name, user_id, anonymous_id, group_id,
    previous_id, ts, original_ts, sent_at, received_at, properties, traits, context, integrations)
FROM STDIN (FORMAT binary)";

/// The heart of exactly-once: claim the batch's `(source, event_id)` keys in `event_dedupe`
/// (sorted, so concurrent transactions lock keys in the same order and cannot deadlock; a key
/// held by a concurrent transaction makes this one wait, then skip it), then insert only the
/// claimed events (first occurrence in the batch) and add exactly those to the rollups. Returns
/// the number of events inserted. Only the narrow `(source, event_id, ord)` is sorted; wide rows
/// are joined back by `ord`.
///
/// Rollup name rule, used everywhere: `coalesce(name, kind)`.
pub(crate) const COMMIT_STAGED: &str = "
WITH firsts AS (
    SELECT DISTINCT ON (source, event_id) source, event_id, ord
    FROM sluice_staging
    ORDER BY source, event_id, ord
),
claimed AS (
    INSERT INTO event_dedupe (source, event_id)
    SELECT source, event_id FROM firsts
    ORDER BY source, event_id
    ON CONFLICT DO NOTHING
    RETURNING source, event_id
),
new_events AS MATERIALIZED (
    SELECT s.*
    FROM claimed c
    JOIN firsts f ON f.source = c.source AND f.event_id = c.event_id
    JOIN sluice_staging s ON s.ord = f.ord
),
ins_events AS (
    INSERT INTO events (event_id, source, kind, name, user_id, anonymous_id, group_id,
        previous_id, ts, original_ts, sent_at, received_at, properties, traits, context,
        integrations)
    SELECT event_id, source, kind, name, user_id, anonymous_id, group_id, previous_id, ts,
        original_ts, sent_at, received_at, properties, traits, context, integrations
    FROM new_events
),
ins_counts AS (
    INSERT INTO event_counts_1m AS c (bucket, source, name, count)
    SELECT date_trunc('minute', ts), source, coalesce(name, kind), count(*)
    FROM new_events
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (bucket, source, name) DO UPDATE SET count = c.count + EXCLUDED.count
),
ins_dau AS (
    -- ON CONFLICT's pre-check makes an already-counted user a single index probe.
    INSERT INTO daily_active_users (day, source, user_key)
    SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date, source, coalesce(user_id, anonymous_id)
    FROM new_events
    WHERE coalesce(user_id, anonymous_id) IS NOT NULL
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM new_events";

/// Forward-only upsert of a group's positions. $1 group, $2 shards, $3 ids, $4 ms, $5 seq.
pub(crate) const UPSERT_OFFSETS: &str = "
INSERT INTO consumer_offsets AS o (group_name, shard, last_id, last_ms, last_seq, updated_at)
SELECT $1, p.shard, p.last_id, p.ms, p.seq, now()
FROM unnest($2::int4[], $3::text[], $4::int8[], $5::int8[]) AS p(shard, last_id, ms, seq)
ORDER BY p.shard
ON CONFLICT (group_name, shard) DO UPDATE
SET last_id = EXCLUDED.last_id, last_ms = EXCLUDED.last_ms, last_seq = EXCLUDED.last_seq,
    updated_at = EXCLUDED.updated_at
WHERE (o.last_ms, o.last_seq) < (EXCLUDED.last_ms, EXCLUDED.last_seq)";

pub(crate) const SELECT_POSITIONS: &str =
    "SELECT shard, last_id FROM consumer_offsets WHERE group_name = $1 ORDER BY shard";

// --- alerts -----------------------------------------------------------------------------------

/// Insert alerts given as column arrays, each `(source, rule, subject, window_start)` once: an
/// alert already stored (a redelivered fraud batch) is skipped. Sorted by the unique key so
/// concurrent commits lock in the same order. Returns one row per new alert.
pub(crate) const INSERT_ALERTS: &str = "
INSERT INTO alerts (source, rule, subject, window_start, window_end, count, first_event_id,
    last_event_id, created_at, details)
SELECT a.source, a.rule, a.subject, a.window_start, a.window_end, a.count, a.first_event_id,
    a.last_event_id, a.created_at, a.details
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
    $6::int8[], $7::text[], $8::text[], $9::timestamptz[], $10::jsonb[])
    AS a(source, rule, subject, window_start, window_end, count, first_event_id, last_event_id,
         created_at, details)
ORDER BY a.source, a.rule, a.subject, a.window_start
ON CONFLICT (source, rule, subject, window_start) DO NOTHING
RETURNING id";

/// Alerts of $1 whose window `[window_start, window_end)` overlaps `[$2, $3)`, newest first,
/// at most $4.
pub(crate) const SELECT_ALERTS: &str = "
SELECT source, rule, subject, window_start, window_end, count, first_event_id, last_event_id,
    created_at, details
FROM alerts
WHERE source = $1 AND window_start < $3 AND window_end > $2
ORDER BY window_start DESC, id DESC
LIMIT $4";

// --- queries ----------------------------------------------------------------------------------
//
// Time series come from the rollups; only `user_events` and the verification counts read raw
// events. Ranges are half-open `[$from, $to)` over the per-minute buckets.

/// Counts of $1 per bucket of $2 seconds, from the minutes in `[$3, $4)`, all names.
/// `date_bin` from the Unix epoch: buckets are aligned in UTC whatever the session time zone.
pub(crate) const COUNTS_ALL: &str = "
SELECT date_bin($2::int8 * INTERVAL '1 second', bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b,
    sum(count)::int8
FROM event_counts_1m
WHERE source = $1 AND bucket >= $3 AND bucket < $4
GROUP BY b";

/// As [`COUNTS_ALL`], for the one rollup name $5 (`coalesce(events.name, events.kind)`).
pub(crate) const COUNTS_NAME: &str = "
SELECT date_bin($2::int8 * INTERVAL '1 second', bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b,
    sum(count)::int8
FROM event_counts_1m
WHERE source = $1 AND bucket >= $3 AND bucket < $4 AND name = $5
GROUP BY b";

/// Most frequent rollup names of $1 over the minutes in `[$2, $3)`, ties by name, at most $4.
pub(crate) const TOP_EVENTS: &str = "
SELECT name, sum(count)::int8 AS c
FROM event_counts_1m
WHERE source = $1 AND bucket >= $2 AND bucket < $3
GROUP BY name
ORDER BY c DESC, name ASC
LIMIT $4";

/// Active users of $1 for the days `[$2, $3]` (inclusive dates): one row per day that has any
/// (`day`, users), plus the grand total row (`day` NULL, distinct users over all those days).
pub(crate) const ACTIVE_USERS: &str = "
SELECT day, count(DISTINCT user_key)::int8
FROM daily_active_users
WHERE source = $1 AND day >= $2 AND day <= $3
GROUP BY GROUPING SETS ((day), ())";

/// The columns of an event row, in the order `query::event_from_row` reads them.
macro_rules! event_columns {
    () => {
        "event_id, source, kind, name, user_id, anonymous_id, group_id, previous_id, ts, \
         original_ts, sent_at, received_at, properties, traits, context, integrations"
    };
}

/// A user's newest raw events (index `events_source_user_ts_idx`, scanned backwards).
pub(crate) const USER_EVENTS_BY_USER_ID: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE source = $1 AND user_id = $2 ORDER BY ts DESC, event_id DESC LIMIT $3"
);

/// An anonymous visitor's newest raw events (index `events_source_anon_ts_idx`).
pub(crate) const USER_EVENTS_BY_ANONYMOUS_ID: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE source = $1 AND anonymous_id = $2 \
     ORDER BY ts DESC, event_id DESC LIMIT $3"
);

/// Which of the ids $2 of $1 are stored: `event_dedupe` is written in the same transaction as
/// the event, and its primary key answers without touching the raw events.
pub(crate) const STORED_EVENT_IDS: &str = "
SELECT event_id FROM event_dedupe WHERE source = $1 AND event_id = ANY($2::text[])";

/// Rows and distinct ids in `events` of $1 whose id matches the LIKE pattern $2 (the prefix with
/// `\`, `%` and `_` escaped, then `%`; see `query::like_prefix`).
pub(crate) const COUNT_BY_ID_PREFIX: &str = "
SELECT count(*)::int8, count(DISTINCT event_id)::int8
FROM events
WHERE source = $1 AND event_id LIKE $2 ESCAPE '\\'";

// --- keys -------------------------------------------------------------------------------------

pub(crate) const INSERT_KEY: &str = "
INSERT INTO api_keys (source, kind, key_hash, hint) VALUES ($1, $2, $3, $4)
RETURNING id, source, kind, key_hash, hint, created_at, revoked_at";

pub(crate) const LIST_KEYS: &str = "
SELECT id, source, kind, key_hash, hint, created_at, revoked_at FROM api_keys ORDER BY id";

/// Revoke by id ($1, may be NULL) or by hash ($2, may be NULL). Revoking twice keeps the first
/// revocation time.
pub(crate) const REVOKE_KEY: &str = "
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 OR key_hash = $2
RETURNING id, source, kind, key_hash, hint, created_at, revoked_at";

// --- migrations -------------------------------------------------------------------------------

/// Arbitrary constant advisory-lock keys ("sluice" in ASCII, plus a suffix per purpose).
pub(crate) const MIGRATION_LOCK: i64 = 0x736c_7569_6365_0001;
pub(crate) const MAINTAIN_LOCK: i64 = 0x736c_7569_6365_0002;

pub(crate) const LOCK_XACT: &str = "SELECT pg_advisory_xact_lock($1)";

pub(crate) const CREATE_SCHEMA_MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

pub(crate) const APPLIED_MIGRATIONS: &str =
    "SELECT version, name FROM schema_migrations ORDER BY version";

pub(crate) const RECORD_MIGRATION: &str =
    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";

pub(crate) const TIMESCALE_AVAILABLE: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')";

pub(crate) const EVENTS_FLAVOUR: &str = "SELECT name FROM schema_migrations WHERE version = 3";

// --- maintenance ------------------------------------------------------------------------------

/// Names of the partitions of `events` in the current schema.
pub(crate) const LIST_PARTITIONS: &str = "
SELECT c.relname::text
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE p.relname = 'events' AND n.nspname = current_schema()";

/// Delete one small batch of dedupe records older than the window ($1 seconds). TID scan, no
/// long lock.
pub(crate) const PRUNE_DEDUPE: &str = "
DELETE FROM event_dedupe
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM event_dedupe
    WHERE seen_at < now() - make_interval(secs => $1)
    LIMIT 10000
))";

pub(crate) const PRUNE_BATCH: u64 = 10_000;

/// Whether the TimescaleDB retention job already matches $1 days (NULL = no policy wanted).
pub(crate) const TIMESCALE_RETENTION_MATCHES: &str = "
SELECT (
    SELECT (config->>'drop_after')::interval
    FROM timescaledb_information.jobs
    WHERE proc_name = 'policy_retention' AND hypertable_name = 'events'
      AND hypertable_schema = current_schema()
    LIMIT 1
) IS NOT DISTINCT FROM make_interval(days => $1::int)";

pub(crate) const TIMESCALE_REMOVE_RETENTION: &str =
    "SELECT remove_retention_policy('events', if_exists => true)";

pub(crate) const TIMESCALE_ADD_RETENTION: &str =
    "SELECT add_retention_policy('events', drop_after => make_interval(days => $1::int))";

/// Partition DDL for day `day` (names and bounds from the date only, never from input).
pub(crate) fn day_partition_name(day: chrono::NaiveDate) -> String {
    format!("events_p{}", day.format("%Y%m%d"))
}

/// Create the day partition standalone, move that day's rows out of `events_default` into it,
/// attach it. Runs inside a transaction that already holds `events_default` exclusively, so no
/// row of that day can slip into the default partition between the move and the attach.
pub(crate) fn create_day_partition(day: chrono::NaiveDate) -> Option<String> {
    let name = day_partition_name(day);
    let next = day.succ_opt()?;
    let from = format!("{} 00:00:00+00", day.format("%Y-%m-%d"));
    let to = format!("{} 00:00:00+00", next.format("%Y-%m-%d"));
    Some(format!(
        "CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         WITH moved AS (
             DELETE FROM events_default WHERE ts >= '{from}' AND ts < '{to}' RETURNING *
         )
         INSERT INTO {name} SELECT * FROM moved;
         ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}');"
    ))
}

pub(crate) fn drop_day_partition(day: chrono::NaiveDate) -> String {
    format!("DROP TABLE IF EXISTS {}", day_partition_name(day))
}

/// Start of a maintenance transaction: bounded lock waits, no statement timeout (moving a day's
/// rows may take a while), and one maintainer at a time.
pub(crate) const MAINTAIN_TX_SETTINGS: &str =
    "SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = 0";

pub(crate) const LOCK_DEFAULT_PARTITION: &str =
    "LOCK TABLE events_default IN ACCESS EXCLUSIVE MODE";

pub(crate) const RELATION_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";
