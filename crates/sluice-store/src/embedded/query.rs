//! The query API's reads (from the rollups where possible) and the verification look-ups, each
//! on a read connection. Ranges are half-open `[from, to)` and must not be empty; the rollup's
//! resolution is one minute, so a range selects the minutes whose start lies in it (as the
//! PostgreSQL backend does: `bucket >= from AND bucket < to`).

use std::collections::{HashMap, HashSet};

use chrono::Duration;
use rusqlite::{params, Connection};
use sluice_core::warehouse::{
    ActiveUsers, Alert, CountPoint, DayCount, Interval, NameCount, StoreError, TimeRange, UserRef,
};
use sluice_core::Event;

use super::commit::{day_text, micros, read_alert, read_event};
use super::ids::{self, IdIndex};
use super::{sql, sqlite_error};

/// A count series (or a day series) longer than this is refused (the HTTP API allows far
/// fewer); the same bound as PostgreSQL's.
pub(crate) const MAX_POINTS: i64 = 100_000;

fn check_range(range: TimeRange) -> Result<(), StoreError> {
    if range.from >= range.to {
        return Err(StoreError::Invalid(format!(
            "empty time range: from {} is not before to {}",
            range.from, range.to
        )));
    }
    Ok(())
}

/// `[from, to)` in microseconds, compared with the minute rows' starts.
fn minute_bounds(range: TimeRange) -> (i64, i64) {
    (micros(range.from), micros(range.to))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(crate) fn counts(
    conn: &Connection,
    source: &str,
    event: Option<&str>,
    range: TimeRange,
    interval: Interval,
) -> Result<Vec<CountPoint>, StoreError> {
    check_range(range)?;
    let points = (range.to - range.from).num_seconds() / interval.seconds();
    if points > MAX_POINTS {
        return Err(StoreError::Invalid(format!(
            "the range holds {points} buckets of {}s, more than {MAX_POINTS}",
            interval.seconds()
        )));
    }
    let width = interval.seconds() * 1_000_000;
    let (from, to) = minute_bounds(range);
    let mut stmt = conn
        .prepare_cached(if event.is_some() {
            sql::COUNTS_NAME
        } else {
            sql::COUNTS_ALL
        })
        .map_err(sqlite_error)?;
    let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?));
    let rows = match event {
        Some(name) => stmt.query_map(params![source, width, from, to, name], map),
        None => stmt.query_map(params![source, width, from, to], map),
    }
    .map_err(sqlite_error)?;
    let mut by_bucket: HashMap<i64, i64> = HashMap::new();
    for row in rows {
        let (bucket, n) = row.map_err(sqlite_error)?;
        *by_bucket.entry(bucket).or_default() += n;
    }
    Ok(interval
        .buckets(range)
        .into_iter()
        .map(|b| CountPoint {
            bucket: b,
            count: count(by_bucket.get(&micros(b)).copied().unwrap_or(0)),
        })
        .collect())
}

pub(crate) fn top_events(
    conn: &Connection,
    source: &str,
    range: TimeRange,
    limit: u32,
) -> Result<Vec<NameCount>, StoreError> {
    check_range(range)?;
    let (from, to) = minute_bounds(range);
    let mut stmt = conn.prepare_cached(sql::TOP_EVENTS).map_err(sqlite_error)?;
    let rows = stmt
        .query_map(params![source, from, to, i64::from(limit)], |r| {
            Ok(NameCount {
                name: r.get(0)?,
                count: count(r.get(1)?),
            })
        })
        .map_err(sqlite_error)?;
    rows.collect::<Result<_, _>>().map_err(sqlite_error)
}

pub(crate) fn active_users(
    conn: &Connection,
    source: &str,
    range: TimeRange,
) -> Result<ActiveUsers, StoreError> {
    check_range(range)?;
    // UTC days overlapping [from, to): the day of `from` through the day of the last instant
    // before `to`.
    let first = range.from.date_naive();
    let last = (range.to - Duration::nanoseconds(1))
        .date_naive()
        .max(first);
    let days = (last - first).num_days() + 1;
    if days > MAX_POINTS {
        return Err(StoreError::Invalid(format!(
            "the range spans {days} days, more than {MAX_POINTS}"
        )));
    }
    let (first_text, last_text) = (day_text(first), day_text(last));
    let mut per_day: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = conn
            .prepare_cached(sql::DAU_PER_DAY)
            .map_err(sqlite_error)?;
        let rows = stmt
            .query_map(params![source, first_text, last_text], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(sqlite_error)?;
        for row in rows {
            let (day, n) = row.map_err(sqlite_error)?;
            per_day.insert(day, n);
        }
    }
    let distinct: i64 = conn
        .prepare_cached(sql::DAU_DISTINCT)
        .and_then(|mut s| s.query_row(params![source, first_text, last_text], |r| r.get(0)))
        .map_err(sqlite_error)?;
    let daily = first
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|day| DayCount {
            day,
            users: count(per_day.get(&day_text(day)).copied().unwrap_or(0)),
        })
        .collect();
    Ok(ActiveUsers {
        daily,
        distinct: count(distinct),
    })
}

/// A user's newest `limit` events, newest first (ties by event id, descending, as PostgreSQL
/// orders them). Two parts (see `ids.rs`): the entries of the user index up to its `through`,
/// newest first, each event read by rowid and checked against the entry — until `limit` of
/// them are found and the next entry is older than the last found (ties go on); and the events
/// after `through`, scanned. One read transaction: both parts see the same snapshot, which is
/// at least as new as `through`. Without an index (opened shared), all of `events` is the scan.
pub(crate) fn user_events(
    conn: &Connection,
    index: Option<&IdIndex>,
    source: &str,
    user: &UserRef,
    limit: u32,
) -> Result<Vec<Event>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let (after_sql, key, anonymous) = match user {
        UserRef::UserId(id) => (sql::USER_EVENTS_AFTER_BY_USER_ID, id, false),
        UserRef::AnonymousId(id) => (sql::USER_EVENTS_AFTER_BY_ANONYMOUS_ID, id, true),
    };
    let through = index.map(IdIndex::through).transpose()?.unwrap_or(0);
    let tx = conn.unchecked_transaction().map_err(sqlite_error)?;
    let mut out = Vec::new();
    {
        let mut stmt = tx.prepare_cached(after_sql).map_err(sqlite_error)?;
        let mut rows = stmt
            .query(params![source, key, through])
            .map_err(sqlite_error)?;
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            out.push(read_event(row)?);
        }
    }
    if let Some(index) = index {
        let mut by_rowid = tx
            .prepare_cached(sql::EVENT_BY_ROWID)
            .map_err(sqlite_error)?;
        let (mut found, mut last_ts) = (0u32, i64::MAX);
        for entry in index.newest_user_entries(&ids::user_prefix(source, anonymous, key)) {
            let (ts, rowid) = entry?;
            if rowid > through {
                continue; // committed after `through` was read: the scan above has it
            }
            if found >= limit && ts < last_ts {
                break;
            }
            let mut rows = by_rowid.query(params![rowid]).map_err(sqlite_error)?;
            let Some(row) = rows.next().map_err(sqlite_error)? else {
                continue; // deleted by retention
            };
            let event = read_event(row)?;
            let owner = if anonymous {
                &event.anonymous_id
            } else {
                &event.user_id
            };
            if event.source == source
                && owner.as_ref() == Some(key)
                && micros(event.timestamp) == ts
            {
                out.push(event);
                found += 1;
                last_ts = ts;
            }
        }
    }
    tx.finish().map_err(sqlite_error)?;
    out.sort_unstable_by(|a, b| (b.timestamp, &b.event_id).cmp(&(a.timestamp, &a.event_id)));
    out.truncate(limit as usize);
    Ok(out)
}

pub(crate) fn alerts(
    conn: &Connection,
    source: &str,
    range: TimeRange,
    limit: u32,
) -> Result<Vec<Alert>, StoreError> {
    check_range(range)?;
    let mut stmt = conn
        .prepare_cached(sql::SELECT_ALERTS)
        .map_err(sqlite_error)?;
    let mut rows = stmt
        .query(params![
            source,
            micros(range.from),
            micros(range.to),
            i64::from(limit)
        ])
        .map_err(sqlite_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        out.push(read_alert(row)?);
    }
    Ok(out)
}

/// The ids of `event_ids` stored for `source` within the dedupe window, in the order asked,
/// each once: answered by the dedupe index, as PostgreSQL answers from `event_dedupe`.
pub(crate) fn stored_event_ids(
    index: &IdIndex,
    source: &str,
    event_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let since = index.window_start();
    for id in event_ids {
        if seen.insert(id.as_str()) && index.contains(&ids::key(source, id), since)? {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// [`stored_event_ids`] without the index (a warehouse opened shared): one scan of `source`'s
/// events (whatever their age), or with `since` (µs) of those with `ts >= since`, through the
/// `ts` index.
pub(crate) fn scan_event_ids(
    conn: &Connection,
    source: &str,
    event_ids: &[String],
    since: Option<i64>,
) -> Result<Vec<String>, StoreError> {
    let wanted: HashSet<&str> = event_ids.iter().map(String::as_str).collect();
    let mut found: HashSet<String> = HashSet::new();
    if !wanted.is_empty() {
        let mut stmt = conn
            .prepare_cached(if since.is_some() {
                sql::SCAN_EVENT_IDS_SINCE
            } else {
                sql::SCAN_EVENT_IDS
            })
            .map_err(sqlite_error)?;
        let mut rows = match since {
            Some(since) => stmt.query(params![source, since]),
            None => stmt.query(params![source]),
        }
        .map_err(sqlite_error)?;
        while let Some(r) = rows.next().map_err(sqlite_error)? {
            let id = r
                .get_ref(0)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(sqlite_error)?;
            if wanted.contains(id) && !found.contains(id) {
                found.insert(id.to_string());
            }
        }
    }
    let mut seen = HashSet::new();
    Ok(event_ids
        .iter()
        .filter(|id| found.contains(id.as_str()) && seen.insert(id.as_str()))
        .cloned()
        .collect())
}

/// `(rows, distinct ids)` of `source` whose id starts with `prefix` (ids in
/// `[prefix, successor(prefix))`), by a scan of the raw events: a verification look-up, run
/// once at the end of a benchmark, that must count the rows themselves to see a duplicate.
pub(crate) fn count_by_id_prefix(
    conn: &Connection,
    source: &str,
    prefix: &str,
) -> Result<(u64, u64), StoreError> {
    let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?));
    let (rows, distinct) = match prefix_successor(prefix) {
        Some(upper) => conn
            .prepare_cached(sql::COUNT_ID_RANGE)
            .and_then(|mut s| s.query_row(params![source, prefix, upper], row)),
        None => conn
            .prepare_cached(sql::COUNT_ID_FROM)
            .and_then(|mut s| s.query_row(params![source, prefix], row)),
    }
    .map_err(sqlite_error)?;
    Ok((count(rows), count(distinct)))
}

/// The smallest string greater than every string starting with `prefix` (SQLite compares TEXT
/// bytewise, and UTF-8 byte order is code point order): the prefix with its last incrementable
/// character incremented. `None` when there is no such string (empty prefix, or only U+10FFFF).
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successors() {
        assert_eq!(prefix_successor("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_successor("run-7-").as_deref(), Some("run-7."));
        assert_eq!(prefix_successor(""), None);
        assert_eq!(
            prefix_successor("a\u{10FFFF}").as_deref(),
            Some("b"),
            "the maximal last character is dropped"
        );
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }
}
