//! sluice-store: the `Warehouse` / `KeyStore` backends.
//!
//! - [`embedded`]: SQLite in the data directory for the single-binary mode (`embedded:PATH`):
//!   the same tables, exactly-once commit and query results as PostgreSQL.
//! - [`postgres`]: PostgreSQL (native daily partitions, or TimescaleDB when the extension can be
//!   created), migrations embedded from `migrations/*.sql`, API keys, the exactly-once
//!   `commit_batch`, housekeeping (`maintain`).
//! - `testing` (cargo feature `testing`): a fresh database per test ([`testing::TestDb`]) and the
//!   conformance suite every backend runs.
//!
//! The warehouse schema is a public interface for analysts; it is documented table by table in
//! `docs/warehouse.md`.

mod common;
pub mod embedded;
pub mod postgres;
#[cfg(feature = "testing")]
pub mod testing;

pub use embedded::{SqliteOptions, SqliteWarehouse, Synchronous};
pub use postgres::{PgOptions, PgWarehouse, TimescaleMode};
/// Keys are stored as this hash; the API hashes presented keys the same way.
pub use sluice_core::keys::hash_key;
