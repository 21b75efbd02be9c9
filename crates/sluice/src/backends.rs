//! Backends chosen by URL, in one place: `redis://` or `embedded:DIR` (and `kafka://` when built
//! with it) for the event log, `postgres://` or `embedded:DIR` for the warehouse. A URL of a
//! backend this build does not have is a clear error at start-up.
//!
//! Defaults: `sluice serve` runs on the embedded backends in `--data-dir` (no services needed);
//! the scale-out roles (`api`, `worker`) default to Redis and PostgreSQL on localhost.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sluice_core::log::EventLog;
use sluice_core::warehouse::Warehouse;
use sluice_store::embedded::{SqliteOptions, SqliteWarehouse};
use sluice_store::postgres::{create_database_if_missing, PgOptions, PgWarehouse};
use sluice_stream::embedded::{EmbeddedLog, EmbeddedLogConfig};
use sluice_stream::redis::{RedisLog, RedisLogConfig};

/// Event log settings shared by every role.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Event log URL: redis://HOST:PORT/DB (query options: prefix, shards, …) or embedded:DIR.
    /// Default: embedded:DATA_DIR/log for `serve`, redis://127.0.0.1:6379/0 otherwise.
    #[arg(long = "log", env = "SLUICE_LOG_URL")]
    pub log_url: Option<String>,
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
    /// Trimming keeps entries appended this long below the slowest consumer group (the fraud
    /// worker re-reads them at start to rebuild its windows, and reads ahead of its commits).
    /// Redis and embedded; default 5m.
    #[arg(long, env = "SLUICE_TRIM_KEEP", value_parser = crate::commands::bench::parse_duration)]
    pub trim_keep: Option<Duration>,
    /// A consumer group lagging more than this no longer holds trimming back: what it has not
    /// processed past it is trimmed (a warning and a counter say so). Redis; default 6h; 0 waits
    /// for every group forever.
    #[arg(long, env = "SLUICE_TRIM_MAX_LAG", value_parser = crate::commands::bench::parse_duration)]
    pub trim_max_lag: Option<Duration>,
}

/// `--trim-keep` when neither the flag nor the URL sets it.
const DEFAULT_TRIM_KEEP: Duration = Duration::from_secs(300);
/// The flag, else the URL's value, else the default.
fn trim_keep(flag: Option<Duration>, from_url: Duration) -> Duration {
    match flag {
        Some(keep) => keep,
        None if from_url.is_zero() => DEFAULT_TRIM_KEEP,
        None => from_url,
    }
}

/// `--trim-max-lag` when neither the flag nor the URL sets it.
const DEFAULT_TRIM_MAX_LAG: Duration = Duration::from_secs(6 * 3600);

/// Warehouse settings shared by every role.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreUrlArgs {
    /// Warehouse URL: postgres://USER@HOST:PORT/DB (the database is created if missing) or
    /// embedded:DIR. Default: embedded:DATA_DIR for `serve` and `keys`,
    /// postgres://postgres@127.0.0.1:5432/sluice otherwise.
    #[arg(long = "store", env = "SLUICE_STORE_URL")]
    pub store_url: Option<String>,
    /// Data directory of the embedded backends.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
    pub data_dir: PathBuf,
    /// Drop raw events older than this many days (default: keep everything).
    #[arg(long, env = "SLUICE_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// How long an event id is remembered for deduplication, in hours.
    #[arg(long, env = "SLUICE_DEDUPE_WINDOW_HOURS", default_value_t = 24 * 7)]
    pub dedupe_window_hours: u64,
}

pub const DEFAULT_LOG_URL: &str = "redis://127.0.0.1:6379/0";
pub const DEFAULT_STORE_URL: &str = "postgres://postgres@127.0.0.1:5432/sluice";

impl StoreUrlArgs {
    /// Fill in the embedded defaults (for `serve` and `keys`): the log in `DATA_DIR/log`, the
    /// warehouse in `DATA_DIR`.
    pub fn default_to_embedded(&mut self, log: Option<&mut LogArgs>) {
        let dir = self.data_dir.display().to_string();
        self.store_url
            .get_or_insert_with(|| format!("embedded:{dir}"));
        if let Some(log) = log {
            log.log_url
                .get_or_insert_with(|| format!("embedded:{dir}/log"));
        }
    }

    pub fn url(&self) -> &str {
        self.store_url.as_deref().unwrap_or(DEFAULT_STORE_URL)
    }

    /// Whether the warehouse is the embedded one.
    pub fn is_embedded(&self) -> bool {
        scheme(self.url()) == "embedded"
    }
}

impl LogArgs {
    pub fn url(&self) -> &str {
        self.log_url.as_deref().unwrap_or(DEFAULT_LOG_URL)
    }

    /// Whether the log is the embedded one (then this process is its only writer: one process
    /// per data directory).
    pub fn is_embedded(&self) -> bool {
        scheme(self.url()) == "embedded"
    }
}

fn scheme(url: &str) -> &str {
    url.split_once(':').map_or(url, |(s, _)| s)
}

/// Open the event log named by `--log` (or the default).
pub async fn open_log(
    args: &LogArgs,
    required_groups: &[&str],
) -> anyhow::Result<Arc<dyn EventLog>> {
    let url = args.url();
    let required: Vec<String> = required_groups.iter().map(|s| s.to_string()).collect();
    match scheme(url) {
        "redis" | "rediss" => {
            let mut config = RedisLogConfig::from_url(url).context("invalid --log URL")?;
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
            config.trim_keep = trim_keep(args.trim_keep, config.trim_keep);
            match args.trim_max_lag {
                Some(lag) => config.trim_max_lag = (!lag.is_zero()).then_some(lag),
                None if config.trim_max_lag.is_none() => {
                    config.trim_max_lag = Some(DEFAULT_TRIM_MAX_LAG);
                }
                None => {}
            }
            config.required_groups = required;
            let log = RedisLog::connect(config)
                .await
                .context("cannot open the Redis event log")?;
            Ok(Arc::new(log))
        }
        "embedded" => {
            let mut config = EmbeddedLogConfig::from_url(url).context("invalid --log URL")?;
            if let Some(s) = args.shards {
                config.shards = Some(s);
            }
            if let Some(h) = args.high_water_mark {
                config.high_water_mark = h;
            }
            if let Some(ms) = args.append_timeout_ms {
                config.append_timeout = Duration::from_millis(ms);
            }
            config.trim_keep = trim_keep(args.trim_keep, config.trim_keep);
            config.required_groups = required;
            let dir = config.dir.display().to_string();
            let log = EmbeddedLog::open(config)
                .await
                .with_context(|| format!("cannot open the embedded event log in {dir}"))?;
            Ok(Arc::new(log))
        }
        "kafka" => bail!(
            "this sluice was built without a Kafka event log (the `kafka` backend is not compiled in); use redis://HOST:PORT/DB or embedded:DIR instead of {url}"
        ),
        other => bail!(
            "unknown event log URL scheme {other:?}: use redis://HOST:PORT/DB or embedded:DIR"
        ),
    }
}

/// Open a warehouse by URL with default options, shared (an embedded one may be served by a
/// running `sluice serve` at the same time): for verification and tools.
pub async fn open_store_url(url: &str) -> anyhow::Result<Store> {
    let args = StoreUrlArgs {
        store_url: Some(url.to_string()),
        data_dir: PathBuf::from("sluice-data"),
        retention_days: None,
        dedupe_window_hours: 24 * 7,
    };
    open_store_with(&args, false).await
}

/// The warehouse backends this build has.
pub enum Store {
    Postgres(PgWarehouse),
    Embedded(SqliteWarehouse),
}

impl Store {
    pub fn into_warehouse(self) -> Arc<dyn Warehouse> {
        match self {
            Store::Postgres(pg) => Arc::new(pg),
            Store::Embedded(sqlite) => Arc::new(sqlite),
        }
    }
}

/// Open the warehouse named by `--store` (or the default) and apply its migrations.
pub async fn open_store(args: &StoreUrlArgs) -> anyhow::Result<Store> {
    open_store_with(args, true).await
}

/// Like [`open_store`]; `exclusive: false` opens an embedded warehouse beside a running
/// `sluice serve` (for key management).
pub async fn open_store_with(args: &StoreUrlArgs, exclusive: bool) -> anyhow::Result<Store> {
    let url = args.url();
    let dedupe_window = Duration::from_secs(args.dedupe_window_hours * 3600);
    match scheme(url) {
        "postgres" | "postgresql" => {
            let opts = PgOptions {
                retention_days: args.retention_days,
                dedupe_window,
                ..PgOptions::default()
            };
            match create_database_if_missing(url).await {
                Ok(true) => tracing::info!("created the warehouse database"),
                Ok(false) => {}
                // Maybe no access to the maintenance database: connecting below says more.
                Err(e) => tracing::debug!(error = %e, "could not check for the warehouse database"),
            }
            let pg = PgWarehouse::connect(url, opts)
                .await
                .context("cannot connect to PostgreSQL")?;
            pg.migrate()
                .await
                .context("applying warehouse migrations")?;
            Ok(Store::Postgres(pg))
        }
        "embedded" => {
            let opts = SqliteOptions {
                retention_days: args.retention_days,
                dedupe_window,
                exclusive,
                ..SqliteOptions::default()
            };
            let sqlite = SqliteWarehouse::from_url(url, opts)
                .await
                .with_context(|| format!("cannot open the embedded warehouse ({url})"))?;
            Ok(Store::Embedded(sqlite))
        }
        other => bail!(
            "unknown warehouse URL scheme {other:?}: use postgres://USER@HOST:PORT/DB or embedded:DIR"
        ),
    }
}
