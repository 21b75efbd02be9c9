//! Embedded migrations (`crates/sluice-store/migrations/sqlite/*.sql`), versioned like
//! PostgreSQL's (1 api_keys, 2 rollups/offsets/dedupe, 3 events, 4 alerts, 5 partial user indexes;
//! 6–9 are the embedded backend's own), applied in order in
//! one `BEGIN IMMEDIATE` transaction and recorded in `schema_migrations`. Only one process opens
//! a data directory (its lock file), and the immediate transaction serializes any other
//! connection, so there is no race.

use chrono::Utc;
use rusqlite::{params, Connection, TransactionBehavior};
use sluice_core::warehouse::StoreError;

use super::{sql, sqlite_error};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "api_keys",
        sql: include_str!("../../migrations/sqlite/0001_api_keys.sql"),
    },
    Migration {
        version: 2,
        name: "rollups_offsets_dedupe",
        sql: include_str!("../../migrations/sqlite/0002_rollups_offsets_dedupe.sql"),
    },
    Migration {
        version: 3,
        name: "events",
        sql: include_str!("../../migrations/sqlite/0003_events.sql"),
    },
    Migration {
        version: 4,
        name: "alerts",
        sql: include_str!("../../migrations/sqlite/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "partial_user_indexes",
        sql: include_str!("../../migrations/sqlite/0005_partial_user_indexes.sql"),
    },
    Migration {
        version: 6,
        name: "deferred_user_index",
        sql: include_str!("../../migrations/sqlite/0006_deferred_user_index.sql"),
    },
    Migration {
        version: 7,
        name: "no_event_id_index",
        sql: include_str!("../../migrations/sqlite/0007_no_event_id_index.sql"),
    },
    Migration {
        version: 8,
        name: "dedupe_index",
        sql: include_str!("../../migrations/sqlite/0008_dedupe_index.sql"),
    },
    Migration {
        version: 9,
        name: "user_index_in_fjall",
        sql: include_str!("../../migrations/sqlite/0009_user_index_in_fjall.sql"),
    },
];

/// Apply every pending migration. A database written by a newer sluice (a version this binary
/// does not know) is refused rather than used half-understood.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    tx.execute_batch(sql::CREATE_SCHEMA_MIGRATIONS)
        .map_err(sqlite_error)?;
    let applied: Vec<i64> = {
        let mut stmt = tx.prepare(sql::APPLIED_MIGRATIONS).map_err(sqlite_error)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(sqlite_error)?;
        rows.collect::<Result<_, _>>().map_err(sqlite_error)?
    };
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StoreError::Other(format!(
            "the embedded warehouse has schema version {newer}, newer than this sluice knows \
             ({known}); use a newer sluice"
        )));
    }
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        tracing::info!(
            version = m.version,
            name = m.name,
            "applying embedded migration"
        );
        tx.execute_batch(m.sql).map_err(|e| {
            let e = sqlite_error(e);
            StoreError::Other(format!("migration {} {}: {e}", m.version, m.name))
        })?;
        tx.execute(
            sql::RECORD_MIGRATION,
            params![m.version, m.name, Utc::now().timestamp_micros()],
        )
        .map_err(sqlite_error)?;
    }
    tx.commit().map_err(sqlite_error)
}
