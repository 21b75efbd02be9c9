//! Embedded migrations (`crates/sluice-store/migrations/*.sql`), applied in order in one
//! transaction under `pg_advisory_xact_lock`, recorded in `schema_migrations`. Two processes
//! starting at once serialize on the lock; the second finds everything applied.
//!
//! Version 3 (the raw `events` table) has two branches chosen when it is first applied:
//! `events_timescaledb` when the extension is available and can be created, else
//! `events_native`. The recorded name tells later runs (and `maintain`) which one is in place.

use sluice_core::warehouse::StoreError;

use super::{pg_error, sql, PgWarehouse, TimescaleMode};

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const COMMON: &[Migration] = &[
    Migration {
        version: 1,
        name: "api_keys",
        sql: include_str!("../../migrations/0001_api_keys.sql"),
    },
    Migration {
        version: 2,
        name: "rollups_offsets_dedupe",
        sql: include_str!("../../migrations/0002_rollups_offsets_dedupe.sql"),
    },
];

/// Applied after the events branch (version 3), in order.
const LATER: &[Migration] = &[
    Migration {
        version: 4,
        name: "alerts",
        sql: include_str!("../../migrations/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "leaner_indexes",
        sql: include_str!("../../migrations/0005_leaner_indexes.sql"),
    },
];

const EVENTS_NATIVE: Migration = Migration {
    version: 3,
    name: "events_native",
    sql: include_str!("../../migrations/0003_events_native.sql"),
};

const EVENTS_TIMESCALEDB: Migration = Migration {
    version: 3,
    name: "events_timescaledb",
    sql: include_str!("../../migrations/0003_events_timescaledb.sql"),
};

/// How the raw events table is stored, as recorded by the applied migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    Native,
    TimescaleDb,
}

impl Flavour {
    fn from_name(name: &str) -> Option<Flavour> {
        match name {
            n if n == EVENTS_NATIVE.name => Some(Flavour::Native),
            n if n == EVENTS_TIMESCALEDB.name => Some(Flavour::TimescaleDb),
            _ => None,
        }
    }
}

impl PgWarehouse {
    /// Apply every pending migration (idempotent, safe to run concurrently), then create the day
    /// partitions around today so the first batches do not land in the default partition.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // Migrations may legitimately take long (index builds); the lock wait too.
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(pg_error)?;
        tx.execute(sql::LOCK_XACT, &[&sql::MIGRATION_LOCK])
            .await
            .map_err(pg_error)?;
        tx.batch_execute(sql::CREATE_SCHEMA_MIGRATIONS)
            .await
            .map_err(pg_error)?;
        let applied: Vec<i32> = tx
            .query(sql::APPLIED_MIGRATIONS, &[])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg_error)?;

        for m in COMMON {
            if !applied.contains(&m.version) {
                apply(&tx, m).await?;
            }
        }
        if !applied.contains(&EVENTS_NATIVE.version) {
            let events = if self.use_timescaledb(&tx).await? {
                &EVENTS_TIMESCALEDB
            } else {
                &EVENTS_NATIVE
            };
            apply(&tx, events).await?;
        }
        for m in LATER {
            if !applied.contains(&m.version) {
                apply(&tx, m).await?;
            }
        }
        tx.commit().await.map_err(pg_error)?;
        drop(client);

        if self.flavour().await? == Flavour::Native {
            super::maintain::ensure_partitions(self).await?;
        }
        Ok(())
    }

    /// Decide the events branch: try `CREATE EXTENSION` in a savepoint so that an extension that
    /// is listed but not loadable (missing `shared_preload_libraries`) falls back cleanly.
    async fn use_timescaledb(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<bool, StoreError> {
        let mode = self.opts.timescaledb;
        if mode == TimescaleMode::Off {
            return Ok(false);
        }
        let available: bool = tx
            .query_one(sql::TIMESCALE_AVAILABLE, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)?;
        if !available {
            return match mode {
                TimescaleMode::Require => Err(StoreError::Other(
                    "the timescaledb extension is not available on this server".into(),
                )),
                _ => Ok(false),
            };
        }
        tx.batch_execute("SAVEPOINT sluice_timescaledb")
            .await
            .map_err(pg_error)?;
        match tx
            .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .await
        {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT sluice_timescaledb")
                    .await
                    .map_err(pg_error)?;
                Ok(true)
            }
            Err(e) if mode == TimescaleMode::Auto => {
                tracing::warn!(error = %e, "timescaledb is listed but cannot be created; using native partitioning");
                tx.batch_execute("ROLLBACK TO SAVEPOINT sluice_timescaledb")
                    .await
                    .map_err(pg_error)?;
                Ok(false)
            }
            Err(e) => Err(pg_error(e)),
        }
    }

    /// Which events branch is installed (after `migrate`).
    pub(crate) async fn flavour(&self) -> Result<Flavour, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(sql::EVENTS_FLAVOUR, &[])
            .await
            .map_err(pg_error)?
            .ok_or_else(|| StoreError::Other("the warehouse is not migrated".into()))?;
        let name: String = row.try_get(0).map_err(pg_error)?;
        Flavour::from_name(&name)
            .ok_or_else(|| StoreError::Other(format!("unknown events migration {name:?}")))
    }

    /// Whether the `events` table is a TimescaleDB hypertable in this database.
    pub async fn uses_timescaledb(&self) -> Result<bool, StoreError> {
        Ok(self.flavour().await? == Flavour::TimescaleDb)
    }
}

async fn apply(tx: &deadpool_postgres::Transaction<'_>, m: &Migration) -> Result<(), StoreError> {
    tracing::info!(version = m.version, name = m.name, "applying migration");
    tx.batch_execute(m.sql).await.map_err(|e| {
        let e = pg_error(e);
        StoreError::Other(format!("migration {} {}: {e}", m.version, m.name))
    })?;
    tx.execute(sql::RECORD_MIGRATION, &[&m.version, &m.name])
        .await
        .map_err(pg_error)?;
    Ok(())
}
