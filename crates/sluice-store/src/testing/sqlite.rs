//! [`SqliteProbe`]: reads an embedded (SQLite) warehouse's tables directly for assertions, on a
//! connection of its own (WAL lets it read while the warehouse writes).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use sluice_core::warehouse::StoreError;

use super::conformance::Probe;
use crate::embedded::{sqlite_error, WeakWarehouse};
use crate::SqliteWarehouse;

pub struct SqliteProbe {
    conn: Mutex<Connection>,
    /// For the dedupe index, which only the warehouse's process can open; weak, so that the
    /// probe does not keep the data directory locked.
    warehouse: WeakWarehouse,
}

impl SqliteProbe {
    /// Open the warehouse's database file on a connection of the probe's own.
    pub fn open(wh: &SqliteWarehouse) -> Result<SqliteProbe, StoreError> {
        let conn = Connection::open(wh.database_path()).map_err(sqlite_error)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sqlite_error)?;
        Ok(SqliteProbe {
            conn: Mutex::new(conn),
            warehouse: wh.downgrade(),
        })
    }

    /// The user index (`embedded/ids.rs`): its entries, its `through` and the largest rowid
    /// of `events`.
    pub async fn user_index(&self) -> Result<(usize, i64, i64), StoreError> {
        let (entries, through) = self.warehouse()?.user_index_state().await?;
        let last = self.with(|c| {
            c.query_row("SELECT coalesce(max(rowid), 0) FROM events", [], |r| {
                r.get(0)
            })
        })?;
        Ok((entries, through, last))
    }

    fn warehouse(&self) -> Result<SqliteWarehouse, StoreError> {
        self.warehouse
            .upgrade()
            .ok_or_else(|| StoreError::Other("the probed warehouse is closed".into()))
    }

    /// Run `f` on the probe's connection, for backend-specific checks.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn).map_err(sqlite_error)
    }
}

fn time(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Other(format!("time {us} out of range")))
}

#[async_trait]
impl Probe for SqliteProbe {
    async fn events_count(&self, source: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT count(*) FROM events WHERE source = ?1",
                params![source],
                |r| r.get(0),
            )
        })
    }

    async fn copies(&self, source: &str, event_id: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT count(*) FROM events WHERE source = ?1 AND event_id = ?2",
                params![source, event_id],
                |r| r.get(0),
            )
        })
    }

    async fn stored_ts(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let us: Option<i64> = self.with(|c| {
            c.query_row(
                "SELECT ts FROM events WHERE source = ?1 AND event_id = ?2",
                params![source, event_id],
                |r| r.get(0),
            )
            .optional()
        })?;
        us.map(time).transpose()
    }

    async fn minute_count(
        &self,
        bucket: DateTime<Utc>,
        source: &str,
        name: &str,
    ) -> Result<i64, StoreError> {
        let n: Option<i64> = self.with(|c| {
            c.query_row(
                "SELECT count FROM event_counts_1m WHERE bucket = ?1 AND source = ?2 AND name = ?3",
                params![bucket.timestamp_micros(), source, name],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(n.unwrap_or(0))
    }

    async fn dau(&self, source: &str) -> Result<Vec<(NaiveDate, String)>, StoreError> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT day, user_key FROM daily_active_users WHERE source = ?1 ORDER BY 1, 2",
            )?;
            let rows = stmt.query_map(params![source], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(d, u)| {
                let day = NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                    .map_err(|e| StoreError::Other(format!("stored day {d:?}: {e}")))?;
                Ok((day, u))
            })
            .collect()
    }

    async fn rollup_mismatches(&self) -> Result<Vec<String>, StoreError> {
        // Minute and day of `ts` floored (SQLite's % truncates toward zero before 1970).
        self.with(|c| {
            let mut out = Vec::new();
            let mut counts = c.prepare(
                "WITH e AS (
                     SELECT ts - (((ts % 60000000) + 60000000) % 60000000) AS b, source,
                            coalesce(name, kind) AS n, count(*) AS c
                     FROM events GROUP BY 1, 2, 3
                 )
                 SELECT coalesce(e.b, r.bucket), coalesce(e.source, r.source),
                        coalesce(e.n, r.name), e.c, r.count
                 FROM e FULL JOIN event_counts_1m r
                   ON r.bucket = e.b AND r.source = e.source AND r.name = e.n
                 WHERE e.c IS NOT r.count
                 LIMIT 20",
            )?;
            let rows = counts.query_map([], |r| {
                Ok(format!(
                    "event_counts_1m {} {} {}: GROUP BY {:?}, rollup {:?}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?
                ))
            })?;
            for row in rows {
                out.push(row?);
            }
            let mut dau = c.prepare(
                "WITH e AS (
                     SELECT DISTINCT
                         date((ts - (((ts % 86400000000) + 86400000000) % 86400000000))
                              / 1000000, 'unixepoch') AS d,
                         source, coalesce(user_id, anonymous_id) AS u
                     FROM events WHERE coalesce(user_id, anonymous_id) IS NOT NULL
                 )
                 SELECT coalesce(e.d, r.day), coalesce(e.source, r.source),
                        coalesce(e.u, r.user_key), e.d IS NOT NULL, r.day IS NOT NULL
                 FROM e FULL JOIN daily_active_users r
                   ON r.day = e.d AND r.source = e.source AND r.user_key = e.u
                 WHERE e.d IS NULL OR r.day IS NULL
                 LIMIT 20",
            )?;
            let rows = dau.query_map([], |r| {
                Ok(format!(
                    "daily_active_users {} {} {}: in events {}, in rollup {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, bool>(4)?
                ))
            })?;
            for row in rows {
                out.push(row?);
            }
            Ok(out)
        })
    }

    async fn age_dedupe(&self, by: Duration) -> Result<(), StoreError> {
        self.warehouse()?.age_dedupe_records(by).await
    }
}
