//! Reads of the PostgreSQL warehouse: the query API's time series (from the rollups), a user's
//! raw events, alerts, and the verification lookups of `sluice bench --verify`. Every statement
//! is in `sql.rs`; parameters are always bound.

use chrono::{DateTime, Duration, NaiveDate, Utc};

use sluice_core::warehouse::{
    ActiveUsers, Alert, CountPoint, DayCount, Interval, NameCount, StoreError, TimeRange, UserRef,
};
use sluice_core::{Event, EventKind, JsonObject};
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::{pg_error, sql, PgWarehouse};

/// A count series longer than this is refused (the HTTP API allows far fewer).
const MAX_BUCKETS: i64 = 100_000;

/// Ids looked up per statement by `stored_event_ids`.
const IDS_PER_LOOKUP: usize = 10_000;

fn check_range(range: TimeRange) -> Result<(), StoreError> {
    if range.from >= range.to {
        return Err(StoreError::Invalid(format!(
            "empty time range: from {} is not before to {}",
            range.from, range.to
        )));
    }
    Ok(())
}

fn limit_param(limit: u32) -> i64 {
    i64::from(limit)
}

pub(crate) async fn counts(
    wh: &PgWarehouse,
    source: &str,
    event: Option<&str>,
    range: TimeRange,
    interval: Interval,
) -> Result<Vec<CountPoint>, StoreError> {
    check_range(range)?;
    let span = (range.to - range.from).num_seconds() / interval.seconds();
    if span > MAX_BUCKETS {
        return Err(StoreError::Invalid(format!(
            "{span} buckets requested; at most {MAX_BUCKETS}"
        )));
    }
    let client = wh.client().await?;
    let secs = interval.seconds();
    let rows = match event {
        None => {
            let stmt = client
                .prepare_cached(sql::COUNTS_ALL)
                .await
                .map_err(pg_error)?;
            client
                .query(&stmt, &[&source, &secs, &range.from, &range.to])
                .await
        }
        Some(name) => {
            let stmt = client
                .prepare_cached(sql::COUNTS_NAME)
                .await
                .map_err(pg_error)?;
            client
                .query(&stmt, &[&source, &secs, &range.from, &range.to, &name])
                .await
        }
    }
    .map_err(pg_error)?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let bucket: DateTime<Utc> = row.try_get(0).map_err(pg_error)?;
        let count: i64 = row.try_get(1).map_err(pg_error)?;
        found.insert(bucket, to_u64(count));
    }
    // Every bucket of the range, the empty ones as 0.
    Ok(interval
        .buckets(range)
        .into_iter()
        .map(|bucket| CountPoint {
            bucket,
            count: found.get(&bucket).copied().unwrap_or(0),
        })
        .collect())
}

pub(crate) async fn top_events(
    wh: &PgWarehouse,
    source: &str,
    range: TimeRange,
    limit: u32,
) -> Result<Vec<NameCount>, StoreError> {
    check_range(range)?;
    let client = wh.client().await?;
    let stmt = client
        .prepare_cached(sql::TOP_EVENTS)
        .await
        .map_err(pg_error)?;
    let rows = client
        .query(
            &stmt,
            &[&source, &range.from, &range.to, &limit_param(limit)],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            Ok(NameCount {
                name: row.try_get(0).map_err(pg_error)?,
                count: to_u64(row.try_get(1).map_err(pg_error)?),
            })
        })
        .collect()
}

/// The UTC days overlapping `[from, to)`: from `from`'s day to the day of the last instant
/// before `to`.
pub(crate) fn days_of(range: TimeRange) -> (NaiveDate, NaiveDate) {
    let first = range.from.date_naive();
    let last = (range.to - Duration::nanoseconds(1))
        .date_naive()
        .max(first);
    (first, last)
}

pub(crate) async fn active_users(
    wh: &PgWarehouse,
    source: &str,
    range: TimeRange,
) -> Result<ActiveUsers, StoreError> {
    check_range(range)?;
    let (first, last) = days_of(range);
    let client = wh.client().await?;
    let stmt = client
        .prepare_cached(sql::ACTIVE_USERS)
        .await
        .map_err(pg_error)?;
    let rows = client
        .query(&stmt, &[&source, &first, &last])
        .await
        .map_err(pg_error)?;
    let mut per_day = std::collections::HashMap::with_capacity(rows.len());
    let mut distinct = 0;
    for row in rows {
        let day: Option<NaiveDate> = row.try_get(0).map_err(pg_error)?;
        let users = to_u64(row.try_get(1).map_err(pg_error)?);
        match day {
            Some(day) => {
                per_day.insert(day, users);
            }
            None => distinct = users,
        }
    }
    // Every day of the range, the quiet ones as 0.
    let daily = first
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|day| DayCount {
            day,
            users: per_day.get(&day).copied().unwrap_or(0),
        })
        .collect();
    Ok(ActiveUsers { daily, distinct })
}

pub(crate) async fn user_events(
    wh: &PgWarehouse,
    source: &str,
    user: &UserRef,
    limit: u32,
) -> Result<Vec<Event>, StoreError> {
    let client = wh.client().await?;
    let (statement, id) = match user {
        UserRef::UserId(id) => (sql::USER_EVENTS_BY_USER_ID, id),
        UserRef::AnonymousId(id) => (sql::USER_EVENTS_BY_ANONYMOUS_ID, id),
    };
    let stmt = client.prepare_cached(statement).await.map_err(pg_error)?;
    let rows = client
        .query(&stmt, &[&source, id, &limit_param(limit)])
        .await
        .map_err(pg_error)?;
    rows.iter().map(event_from_row).collect()
}

/// An `events` row (columns in `sql::event_columns!` order) as the canonical event.
fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    let kind: String = row.try_get(2).map_err(pg_error)?;
    Ok(Event {
        event_id: row.try_get(0).map_err(pg_error)?,
        source: row.try_get(1).map_err(pg_error)?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Other(format!("unknown event kind {kind:?} stored")))?,
        name: row.try_get(3).map_err(pg_error)?,
        user_id: row.try_get(4).map_err(pg_error)?,
        anonymous_id: row.try_get(5).map_err(pg_error)?,
        group_id: row.try_get(6).map_err(pg_error)?,
        previous_id: row.try_get(7).map_err(pg_error)?,
        timestamp: row.try_get(8).map_err(pg_error)?,
        original_timestamp: row.try_get(9).map_err(pg_error)?,
        sent_at: row.try_get(10).map_err(pg_error)?,
        received_at: row.try_get(11).map_err(pg_error)?,
        properties: object(row, 12)?,
        traits: object(row, 13)?,
        context: object(row, 14)?,
        integrations: object(row, 15)?,
    })
}

fn object(row: &Row, idx: usize) -> Result<JsonObject, StoreError> {
    let Json(object) = row.try_get::<_, Json<JsonObject>>(idx).map_err(pg_error)?;
    Ok(object)
}

pub(crate) async fn alerts(
    wh: &PgWarehouse,
    source: &str,
    range: TimeRange,
    limit: u32,
) -> Result<Vec<Alert>, StoreError> {
    check_range(range)?;
    let client = wh.client().await?;
    let stmt = client
        .prepare_cached(sql::SELECT_ALERTS)
        .await
        .map_err(pg_error)?;
    let rows = client
        .query(
            &stmt,
            &[&source, &range.from, &range.to, &limit_param(limit)],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            Ok(Alert {
                source: row.try_get(0).map_err(pg_error)?,
                rule: row.try_get(1).map_err(pg_error)?,
                subject: row.try_get(2).map_err(pg_error)?,
                window_start: row.try_get(3).map_err(pg_error)?,
                window_end: row.try_get(4).map_err(pg_error)?,
                count: to_u64(row.try_get(5).map_err(pg_error)?),
                first_event_id: row.try_get(6).map_err(pg_error)?,
                last_event_id: row.try_get(7).map_err(pg_error)?,
                created_at: row.try_get(8).map_err(pg_error)?,
                details: row.try_get(9).map_err(pg_error)?,
            })
        })
        .collect()
}

pub(crate) async fn stored_event_ids(
    wh: &PgWarehouse,
    source: &str,
    event_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = wh.client().await?;
    let stmt = client
        .prepare_cached(sql::STORED_EVENT_IDS)
        .await
        .map_err(pg_error)?;
    let mut stored = Vec::new();
    for chunk in event_ids.chunks(IDS_PER_LOOKUP) {
        let rows = client
            .query(&stmt, &[&source, &chunk])
            .await
            .map_err(pg_error)?;
        for row in rows {
            stored.push(row.try_get(0).map_err(pg_error)?);
        }
    }
    Ok(stored)
}

pub(crate) async fn count_by_id_prefix(
    wh: &PgWarehouse,
    source: &str,
    prefix: &str,
) -> Result<(u64, u64), StoreError> {
    let client = wh.client().await?;
    let stmt = client
        .prepare_cached(sql::COUNT_BY_ID_PREFIX)
        .await
        .map_err(pg_error)?;
    let pattern = like_prefix(prefix);
    let row = client
        .query_one(&stmt, &[&source, &pattern])
        .await
        .map_err(pg_error)?;
    let rows: i64 = row.try_get(0).map_err(pg_error)?;
    let distinct: i64 = row.try_get(1).map_err(pg_error)?;
    Ok((to_u64(rows), to_u64(distinct)))
}

/// A LIKE pattern matching every string that starts with `prefix`: the prefix's own `\`, `%` and
/// `_` are escaped (with `\`, the statement's `ESCAPE`), then `%`.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn like_prefix_escapes_metacharacters() {
        assert_eq!(like_prefix("run-1"), "run-1%");
        assert_eq!(like_prefix("a_b%c\\d"), "a\\_b\\%c\\\\d%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn days_of_a_half_open_range() {
        let t = |d, h| {
            Utc.with_ymd_and_hms(2024, 5, d, h, 0, 0)
                .single()
                .expect("time")
        };
        let day = |d| NaiveDate::from_ymd_opt(2024, 5, d).expect("date");
        // Ending exactly at midnight: that day is not part of the range.
        assert_eq!(
            days_of(TimeRange {
                from: t(1, 10),
                to: t(3, 0)
            }),
            (day(1), day(2))
        );
        assert_eq!(
            days_of(TimeRange {
                from: t(1, 10),
                to: t(1, 11)
            }),
            (day(1), day(1))
        );
    }
}
