//! Backends chosen by URL, in one place: `redis://` (and later `kafka://`, `embedded:`) for the
//! event log, `postgres://` for the warehouse. A URL of a backend this build does not have is a
//! clear error at start-up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sluice_core::log::EventLog;
use sluice_core::warehouse::Warehouse;
use sluice_store::postgres::{create_database_if_missing, PgOptions, PgWarehouse};
use sluice_stream::redis::{RedisLog, RedisLogConfig};

/// Event log settings shared by every role.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Event log URL: redis://HOST:PORT/DB (query options: prefix, shards).
    #[arg(
        long = "log",
        env = "SLUICE_LOG_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub log_url: String,
    /// Key prefix of the Redis streams.
    #[arg(long, env = "SLUICE_LOG_PREFIX")]
    pub log_prefix: Option<String>,
    /// Number of shards (streams); must be the same for every process on one log.
    #[arg(long, env = "SLUICE_SHARDS")]
    pub shards: Option<u32>,
    /// Backlog (events not yet processed by the slowest required group) above which ingest
    /// answers 503.
    #[arg(long, env = "SLUICE_HIGH_WATER_MARK")]
    pub high_water_mark: Option<u64>,
    /// Bound on an append; past it the API answers 503.
    #[arg(long, env = "SLUICE_APPEND_TIMEOUT_MS")]
    pub append_timeout_ms: Option<u64>,
}

/// Warehouse settings shared by every role.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreUrlArgs {
    /// Warehouse URL: postgres://USER@HOST:PORT/DB. The database is created if missing.
    #[arg(
        long = "store",
        env = "SLUICE_STORE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sluice"
    )]
    pub store_url: String,
    /// Drop raw events older than this many days (default: keep everything).
    #[arg(long, env = "SLUICE_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// How long an event id is remembered for deduplication, in hours.
    #[arg(long, env = "SLUICE_DEDUPE_WINDOW_HOURS", default_value_t = 24 * 7)]
    pub dedupe_window_hours: u64,
}

fn scheme(url: &str) -> &str {
    url.split_once(':').map_or(url, |(s, _)| s)
}

/// Open the event log named by `args.log_url`.
pub async fn open_log(
    args: &LogArgs,
    required_groups: &[&str],
) -> anyhow::Result<Arc<dyn EventLog>> {
    match scheme(&args.log_url) {
        "redis" | "rediss" => {
            let mut config = RedisLogConfig::from_url(&args.log_url).context("invalid --log URL")?;
            if let Some(p) = &args.log_prefix {
                config.prefix = p.clone();
            }
            if let Some(s) = args.shards {
                config.shards = s;
            }
            if let Some(h) = args.high_water_mark {
                config.high_water_mark = h;
            }
            if let Some(ms) = args.append_timeout_ms {
                config.append_timeout = Duration::from_millis(ms);
            }
            config.required_groups = required_groups.iter().map(|s| s.to_string()).collect();
            let log = RedisLog::connect(config).await.context("cannot open the Redis event log")?;
            Ok(Arc::new(log))
        }
        "kafka" => bail!("this sluice was built without the `kafka` feature; rebuild with `--features kafka` to use {}", args.log_url),
        "embedded" => bail!("the embedded event log is not available in this build yet; use --log redis://HOST:PORT"),
        other => bail!("unknown event log URL scheme {other:?}: use redis://HOST:PORT/DB"),
    }
}

/// Open a warehouse by URL with default options (verification, tools).
pub async fn open_store_url(url: &str) -> anyhow::Result<Store> {
    open_store(&StoreUrlArgs {
        store_url: url.to_string(),
        retention_days: None,
        dedupe_window_hours: 24 * 7,
    })
    .await
}

/// The warehouse backends this build has.
pub enum Store {
    Postgres(PgWarehouse),
}

impl Store {
    pub fn into_warehouse(self) -> Arc<dyn Warehouse> {
        match self {
            Store::Postgres(pg) => Arc::new(pg),
        }
    }
}

/// Open the warehouse named by `args.store_url` and apply its migrations.
pub async fn open_store(args: &StoreUrlArgs) -> anyhow::Result<Store> {
    match scheme(&args.store_url) {
        "postgres" | "postgresql" => {
            let opts = PgOptions {
                retention_days: args.retention_days,
                dedupe_window: Duration::from_secs(args.dedupe_window_hours * 3600),
                ..PgOptions::default()
            };
            match create_database_if_missing(&args.store_url).await {
                Ok(true) => tracing::info!("created the warehouse database"),
                Ok(false) => {}
                // Maybe no access to the maintenance database: connecting below says more.
                Err(e) => tracing::debug!(error = %e, "could not check for the warehouse database"),
            }
            let pg = PgWarehouse::connect(&args.store_url, opts)
                .await
                .context("cannot connect to PostgreSQL")?;
            pg.migrate()
                .await
                .context("applying warehouse migrations")?;
            Ok(Store::Postgres(pg))
        }
        "embedded" => bail!(
            "the embedded warehouse is not available in this build yet; use --store postgres://…"
        ),
        other => bail!("unknown warehouse URL scheme {other:?}: use postgres://USER@HOST:PORT/DB"),
    }
}
