//! The PostgreSQL warehouse: connection pool, options, error mapping, and the `Warehouse` /
//! `KeyStore` implementation, whose parts live in the submodules:
//!
//! - `sql`: every SQL statement (the only place SQL text is written);
//! - `migrate`: embedded migrations and the native/TimescaleDB branch;
//! - `keys`: API keys;
//! - `commit`: the one-transaction batch commit (COPY → dedupe → events → rollups → offsets), and
//!   the alerts commit (alerts → offsets);
//! - `query`: the query API's reads (rollups, a user's raw events, alerts) and the verification
//!   lookups;
//! - `maintain`: day partitions ahead, retention, dedupe-window pruning.

mod bootstrap;
mod commit;
mod keys;
mod maintain;
mod migrate;
mod query;
mod sql;

use std::time::Duration;

pub use bootstrap::create_database_if_missing;

use async_trait::async_trait;
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use sluice_core::keys::{KeyKind, KeyRecord};
use sluice_core::warehouse::{
    ActiveUsers, Alert, CommitOutcome, CountPoint, Interval, KeyStore, NameCount, ShardPosition,
    StoreError, TimeRange, UserRef, Warehouse,
};
use sluice_core::Event;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Per-connection `work_mem`.
const WORK_MEM: &str = "32MB";

/// Whether the raw `events` table is a TimescaleDB hypertable. Only matters the first time the
/// schema is created; afterwards the recorded migration decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimescaleMode {
    /// Use TimescaleDB when the extension is available and can be created, else native
    /// partitioning.
    #[default]
    Auto,
    /// Always native declarative partitioning.
    Off,
    /// Fail migration if TimescaleDB cannot be used.
    Require,
}

/// Connection and housekeeping settings.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Maximum connections in the pool.
    pub pool_size: usize,
    /// Bound on establishing a connection and on waiting for a free one: an unreachable server
    /// gives `StoreError::Unavailable` after about this long.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every connection (migrations and maintenance lift it).
    pub statement_timeout: Duration,
    /// Drop raw events older than this many days (whole day partitions / chunks). `None` keeps
    /// everything.
    pub retention_days: Option<u32>,
    /// How long `(source, event_id)` is remembered for deduplication.
    pub dedupe_window: Duration,
    /// Native partitioning or TimescaleDB.
    pub timescaledb: TimescaleMode,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(60),
            retention_days: None,
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            timescaledb: TimescaleMode::Auto,
        }
    }
}

/// The PostgreSQL `Warehouse` and `KeyStore`. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgWarehouse {
    pool: Pool,
    opts: PgOptions,
}

impl std::fmt::Debug for PgWarehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may hold a password.
        f.debug_struct("PgWarehouse")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl PgWarehouse {
    /// Build the pool and check that the server answers. Does not migrate: call
    /// [`PgWarehouse::migrate`] (the binary does at start-up and in `sluice migrate`).
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgWarehouse, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        let statement_ms = opts.statement_timeout.as_millis();
        config
            .connect_timeout(opts.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // work_mem: a 10,000-event batch sorts in memory instead of spilling to disk.
            .options(format!(
                "-c statement_timeout={statement_ms} -c work_mem={WORK_MEM}"
            ));
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // `Fast` keeps the session: the per-connection temp staging table and the
                // statement cache survive between uses. (`Clean` would DISCARD ALL.)
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(sql::CREATE_STAGING)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StoreError::Other(format!("building the connection pool: {e}")))?;
        let warehouse = PgWarehouse { pool, opts };
        warehouse.ping().await?;
        Ok(warehouse)
    }

    /// The options this warehouse was opened with.
    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Map a pool error: every way of not getting a connection is retryable.
fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::PostCreateHook(HookError::Backend(e)) => pg_error(e),
        PoolError::Timeout(t) => {
            StoreError::Unavailable(format!("timed out getting a connection ({t:?})"))
        }
        PoolError::Closed => StoreError::Unavailable("connection pool closed".into()),
        other => StoreError::Other(other.to_string()),
    }
}

/// The one mapping from PostgreSQL errors to `StoreError`: connection trouble, server shutdown,
/// serialization failures, deadlocks and timeouts are retryable (`Unavailable`); everything else
/// is `Other`.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let retryable = code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::QUERY_CANCELED,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(code);
        let msg = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), code.code()),
            None => format!("{e} ({})", code.code()),
        };
        return if retryable {
            StoreError::Unavailable(msg)
        } else {
            StoreError::Other(msg)
        };
    }
    if is_transport_error(&e) {
        StoreError::Unavailable(error_chain(&e))
    } else {
        StoreError::Other(error_chain(&e))
    }
}

/// Closed connection, IO error, connect failure or client-side timeout.
fn is_transport_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || e.to_string().starts_with("timeout") {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[async_trait]
impl KeyStore for PgWarehouse {
    async fn create_key(
        &self,
        source: &str,
        kind: KeyKind,
    ) -> Result<(String, KeyRecord), StoreError> {
        keys::create_key(self, source, kind).await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        keys::list_keys(self).await
    }

    async fn revoke_key(&self, id_or_key: &str) -> Result<KeyRecord, StoreError> {
        keys::revoke_key(self, id_or_key).await
    }
}

#[async_trait]
impl Warehouse for PgWarehouse {
    async fn commit_batch(
        &self,
        group: &str,
        events: &[Event],
        positions: &[ShardPosition],
    ) -> Result<CommitOutcome, StoreError> {
        commit::commit_batch(self, group, events, positions).await
    }

    async fn positions(&self, group: &str) -> Result<Vec<ShardPosition>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::SELECT_POSITIONS)
            .await
            .map_err(pg_error)?;
        let rows = client.query(&stmt, &[&group]).await.map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let shard: i32 = row.try_get(0).map_err(pg_error)?;
                Ok(ShardPosition {
                    shard: u32::try_from(shard)
                        .map_err(|_| StoreError::Other(format!("negative shard {shard}")))?,
                    last_id: row.try_get(1).map_err(pg_error)?,
                })
            })
            .collect()
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        maintain::maintain(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(pg_error)?;
        Ok(())
    }

    async fn commit_alerts(
        &self,
        group: &str,
        alerts: &[Alert],
        positions: &[ShardPosition],
    ) -> Result<u64, StoreError> {
        commit::commit_alerts(self, group, alerts, positions).await
    }

    async fn stored_event_ids(
        &self,
        source: &str,
        event_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        query::stored_event_ids(self, source, event_ids).await
    }

    async fn count_by_id_prefix(
        &self,
        source: &str,
        prefix: &str,
    ) -> Result<(u64, u64), StoreError> {
        query::count_by_id_prefix(self, source, prefix).await
    }

    async fn counts(
        &self,
        source: &str,
        event: Option<&str>,
        range: TimeRange,
        interval: Interval,
    ) -> Result<Vec<CountPoint>, StoreError> {
        query::counts(self, source, event, range, interval).await
    }

    async fn top_events(
        &self,
        source: &str,
        range: TimeRange,
        limit: u32,
    ) -> Result<Vec<NameCount>, StoreError> {
        query::top_events(self, source, range, limit).await
    }

    async fn active_users(
        &self,
        source: &str,
        range: TimeRange,
    ) -> Result<ActiveUsers, StoreError> {
        query::active_users(self, source, range).await
    }

    async fn user_events(
        &self,
        source: &str,
        user: &UserRef,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        query::user_events(self, source, user, limit).await
    }

    async fn alerts(
        &self,
        source: &str,
        range: TimeRange,
        limit: u32,
    ) -> Result<Vec<Alert>, StoreError> {
        query::alerts(self, source, range, limit).await
    }
}
