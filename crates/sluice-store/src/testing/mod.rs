//! Test support (cargo feature `testing`), shared with other crates' tests:
//!
//! - [`TestDb`]: a fresh PostgreSQL database per test on the server at `SLUICE_TEST_PG_URL`
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped (best effort) on drop.
//!   An unreachable server is a loud panic, never a skipped test.
//! - [`PgProbe`]: reads a PostgreSQL warehouse's tables directly for assertions.
//! - [`SqliteProbe`]: the same for the embedded (SQLite) warehouse.
//! - [`conformance`]: the cases every `Warehouse` backend must pass.
//! - [`stat_cpu_seconds`]: CPU time from `/proc`, for the tests and examples that measure it.

pub mod conformance;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rand::RngCore;
use sluice_core::warehouse::StoreError;
use tokio_postgres::{Client, NoTls};

use crate::postgres::pg_error;
use crate::{PgOptions, PgWarehouse};

pub use conformance::Probe;
pub use sqlite::SqliteProbe;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of a process or thread, read from its `stat` file
/// (`/proc/self/stat`, `/proc/self/task/TID/stat`).
pub fn stat_cpu_seconds(stat_path: &std::path::Path) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(stat_path)?;
    let bad = || std::io::Error::other(format!("unexpected format of {}", stat_path.display()));
    // After the command name, which is in parentheses and may hold spaces: utime and stime
    // are fields 14 and 15 of the line, 12 and 13 after the name.
    let rest = stat
        .get(stat.rfind(')').ok_or_else(bad)? + 2..)
        .ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(bad)
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SEC)
}

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A throw-away database. `url` points at it; dropping the value drops the database
/// (`WITH (FORCE)`, so open pools do not keep it alive).
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// Create `sluice_test_<random>`. Panics with a clear message when the server is unreachable.
    pub async fn create() -> TestDb {
        let admin_url =
            std::env::var("SLUICE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        let name = format!("sluice_test_{}", hex::encode(bytes));
        let client = match admin_connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => panic!(
                "PostgreSQL for tests is unreachable at SLUICE_TEST_PG_URL ({}): {e}. \
                 Start it (see DEVELOPERS.md) — tests never skip.",
                redact(&admin_url)
            ),
        };
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
        {
            panic!("creating test database {name}: {e}");
        }
        TestDb {
            url: database_url(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A migrated warehouse on this database.
    pub async fn warehouse(&self, opts: PgOptions) -> PgWarehouse {
        let wh = match PgWarehouse::connect(&self.url, opts).await {
            Ok(wh) => wh,
            Err(e) => panic!("connecting to test database {}: {e}", self.name),
        };
        if let Err(e) = wh.migrate().await {
            panic!("migrating test database {}: {e}", self.name);
        }
        wh
    }

    /// A probe reading this database's tables.
    pub async fn probe(&self) -> PgProbe {
        match PgProbe::connect(&self.url).await {
            Ok(p) => p,
            Err(e) => panic!("probe connection to {}: {e}", self.name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside a runtime, where blocking on another future is not allowed: use a
        // short-lived thread with its own runtime. Best effort: errors are ignored.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = admin_connect(&admin_url).await {
                    let _ = client.batch_execute(&sql).await;
                }
            });
        });
        let _ = handle.join();
    }
}

async fn admin_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `postgres://…/admin_db?opts` → `postgres://…/name?opts`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// Direct SQL access to a PostgreSQL warehouse, for assertions.
pub struct PgProbe {
    client: Client,
}

impl PgProbe {
    pub async fn connect(url: &str) -> Result<PgProbe, StoreError> {
        let client = admin_connect(url).await.map_err(pg_error)?;
        Ok(PgProbe { client })
    }

    /// The underlying client, for backend-specific checks.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait]
impl Probe for PgProbe {
    async fn events_count(&self, source: &str) -> Result<i64, StoreError> {
        self.client
            .query_one("SELECT count(*) FROM events WHERE source = $1", &[&source])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)
    }

    async fn copies(&self, source: &str, event_id: &str) -> Result<i64, StoreError> {
        self.client
            .query_one(
                "SELECT count(*) FROM events WHERE source = $1 AND event_id = $2",
                &[&source, &event_id],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)
    }

    async fn stored_ts(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT ts FROM events WHERE source = $1 AND event_id = $2",
                &[&source, &event_id],
            )
            .await
            .map_err(pg_error)?;
        row.map(|r| r.try_get(0)).transpose().map_err(pg_error)
    }

    async fn minute_count(
        &self,
        bucket: DateTime<Utc>,
        source: &str,
        name: &str,
    ) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT count FROM event_counts_1m WHERE bucket = $1 AND source = $2 AND name = $3",
                &[&bucket, &source, &name],
            )
            .await
            .map_err(pg_error)?;
        Ok(row
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_error)?
            .unwrap_or(0))
    }

    async fn dau(&self, source: &str) -> Result<Vec<(NaiveDate, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT day, user_key FROM daily_active_users WHERE source = $1 ORDER BY 1, 2",
                &[&source],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(pg_error)
    }

    async fn rollup_mismatches(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let counts = self
            .client
            .query(
                "SELECT coalesce(e.b, r.bucket)::text, coalesce(e.source, r.source),
                        coalesce(e.n, r.name), e.c, r.count
                 FROM (SELECT date_trunc('minute', ts) AS b, source, coalesce(name, kind) AS n,
                              count(*) AS c
                       FROM events GROUP BY 1, 2, 3) e
                 FULL JOIN event_counts_1m r
                   ON r.bucket = e.b AND r.source = e.source AND r.name = e.n
                 WHERE e.c IS DISTINCT FROM r.count
                 LIMIT 20",
                &[],
            )
            .await
            .map_err(pg_error)?;
        for r in counts {
            let (b, s, n): (String, String, String) = (
                r.try_get(0).map_err(pg_error)?,
                r.try_get(1).map_err(pg_error)?,
                r.try_get(2).map_err(pg_error)?,
            );
            let (e, c): (Option<i64>, Option<i64>) = (
                r.try_get(3).map_err(pg_error)?,
                r.try_get(4).map_err(pg_error)?,
            );
            out.push(format!(
                "event_counts_1m {b} {s} {n}: GROUP BY {e:?}, rollup {c:?}"
            ));
        }
        let dau = self
            .client
            .query(
                "SELECT coalesce(e.d, r.day)::text, coalesce(e.source, r.source),
                        coalesce(e.u, r.user_key), e.d IS NOT NULL, r.day IS NOT NULL
                 FROM (SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS d, source,
                              coalesce(user_id, anonymous_id) AS u
                       FROM events WHERE coalesce(user_id, anonymous_id) IS NOT NULL) e
                 FULL JOIN daily_active_users r
                   ON r.day = e.d AND r.source = e.source AND r.user_key = e.u
                 WHERE e.d IS NULL OR r.day IS NULL
                 LIMIT 20",
                &[],
            )
            .await
            .map_err(pg_error)?;
        for r in dau {
            let (d, s, u): (String, String, String) = (
                r.try_get(0).map_err(pg_error)?,
                r.try_get(1).map_err(pg_error)?,
                r.try_get(2).map_err(pg_error)?,
            );
            let (in_events, in_rollup): (bool, bool) = (
                r.try_get(3).map_err(pg_error)?,
                r.try_get(4).map_err(pg_error)?,
            );
            out.push(format!(
                "daily_active_users {d} {s} {u}: in events {in_events}, in rollup {in_rollup}"
            ));
        }
        Ok(out)
    }

    async fn age_dedupe(&self, by: Duration) -> Result<(), StoreError> {
        self.client
            .execute(
                "UPDATE event_dedupe SET seen_at = seen_at - make_interval(secs => $1)",
                &[&by.as_secs_f64()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
