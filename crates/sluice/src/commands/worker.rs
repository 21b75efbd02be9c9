//! `sluice worker --processor …`: one processor alone, for scaling out.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sluice_core::log::EventLog;
use sluice_core::warehouse::Warehouse;
use sluice_worker::fraud::{AlertHook, FraudConfig, FraudProcessor};
use sluice_worker::warehouse::WarehouseProcessor;
use sluice_worker::{ConsumerConfig, Worker};

use crate::backends::{open_log, open_store, LogArgs, StoreUrlArgs};
use crate::commands::bench::parse_duration;
use crate::shutdown::{self, Shutdown};

/// How often the worker process runs warehouse housekeeping (partitions ahead, retention, dedupe
/// window).
const MAINTAIN_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProcessorKind {
    /// Raw events and rollups into the warehouse, exactly once.
    Warehouse,
    /// Fraud/anomaly rules over sliding windows; alerts into the warehouse, exactly once.
    Fraud,
}

/// The fraud rules (see `docs/fraud.md`). A rule fires when the count in its window is above
/// its threshold.
#[derive(Debug, Clone, Args)]
pub struct FraudArgs {
    /// user_rate: events per user (user_id, else anonymous_id) above this within the window.
    #[arg(long, env = "SLUICE_FRAUD_USER_RATE_THRESHOLD", default_value_t = 100)]
    pub fraud_user_rate_threshold: u32,
    #[arg(long, env = "SLUICE_FRAUD_USER_RATE_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub fraud_user_rate_window: Duration,
    /// ip_many_users: distinct users per IP (context.ip) above this within the window.
    #[arg(long, env = "SLUICE_FRAUD_IP_USERS_THRESHOLD", default_value_t = 20)]
    pub fraud_ip_users_threshold: u32,
    #[arg(long, env = "SLUICE_FRAUD_IP_USERS_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub fraud_ip_users_window: Duration,
    /// Also watch loopback and private addresses (a proxy or a load generator by default).
    #[arg(long, env = "SLUICE_FRAUD_IP_INCLUDE_PRIVATE")]
    pub fraud_ip_include_private: bool,
    /// name_burst: one event name from one user above this within the window.
    #[arg(long, env = "SLUICE_FRAUD_NAME_BURST_THRESHOLD", default_value_t = 20)]
    pub fraud_name_burst_threshold: u32,
    #[arg(long, env = "SLUICE_FRAUD_NAME_BURST_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub fraud_name_burst_window: Duration,
    /// Watch only these event names for name_burst (comma-separated; default all names).
    #[arg(long, env = "SLUICE_FRAUD_NAME_BURST_NAMES", value_delimiter = ',')]
    pub fraud_name_burst_names: Vec<String>,
    /// clock_skew: client clock or event time more than this behind received_at.
    #[arg(long, env = "SLUICE_FRAUD_SKEW_MAX_PAST", default_value = "24h", value_parser = parse_duration)]
    pub fraud_skew_max_past: Duration,
    /// clock_skew: client clock or event time more than this ahead of received_at.
    #[arg(long, env = "SLUICE_FRAUD_SKEW_MAX_FUTURE", default_value = "10m", value_parser = parse_duration)]
    pub fraud_skew_max_future: Duration,
    /// clock_skew: one alert per subject per this much server time.
    #[arg(long, env = "SLUICE_FRAUD_SKEW_COOLDOWN", default_value = "1h", value_parser = parse_duration)]
    pub fraud_skew_cooldown: Duration,
    /// Rules to turn off (comma-separated: user_rate, ip_many_users, name_burst, clock_skew).
    #[arg(long, env = "SLUICE_FRAUD_DISABLE", value_delimiter = ',')]
    pub fraud_disable: Vec<String>,
    /// Most subjects (users, IPs, user+name pairs) kept in memory; the least recently seen are
    /// evicted past it.
    #[arg(long, env = "SLUICE_FRAUD_MAX_SUBJECTS", default_value_t = 1_000_000)]
    pub fraud_max_subjects: usize,
}

impl FraudArgs {
    pub fn config(&self) -> anyhow::Result<FraudConfig> {
        let mut c = FraudConfig::default();
        c.user_rate.threshold = self.fraud_user_rate_threshold;
        c.user_rate.window_secs = self.fraud_user_rate_window.as_secs();
        c.ip_many_users.threshold = self.fraud_ip_users_threshold;
        c.ip_many_users.window_secs = self.fraud_ip_users_window.as_secs();
        c.ip_many_users.include_private = self.fraud_ip_include_private;
        c.name_burst.threshold = self.fraud_name_burst_threshold;
        c.name_burst.window_secs = self.fraud_name_burst_window.as_secs();
        c.name_burst.names = self
            .fraud_name_burst_names
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        c.clock_skew.max_past_secs = self.fraud_skew_max_past.as_secs();
        c.clock_skew.max_future_secs = self.fraud_skew_max_future.as_secs();
        c.clock_skew.cooldown_secs = self.fraud_skew_cooldown.as_secs();
        c.max_subjects = self.fraud_max_subjects;
        for rule in self.fraud_disable.iter().filter(|r| !r.is_empty()) {
            match rule.as_str() {
                "user_rate" => c.user_rate.enabled = false,
                "ip_many_users" => c.ip_many_users.enabled = false,
                "name_burst" => c.name_burst.enabled = false,
                "clock_skew" => c.clock_skew.enabled = false,
                other => anyhow::bail!(
                    "--fraud-disable: unknown rule {other:?} (user_rate, ip_many_users, name_burst, clock_skew)"
                ),
            }
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Most events per batch (one warehouse transaction each).
    #[arg(long, env = "SLUICE_BATCH_SIZE", default_value_t = 5_000)]
    pub batch_size: usize,
    /// Longest wait to fill a batch: 200ms, 1s, …
    #[arg(long, env = "SLUICE_MAX_WAIT", default_value = "200ms", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Consumer name (default: host name and pid). Restarting with the same name resumes its
    /// pending entries at once.
    #[arg(long, env = "SLUICE_CONSUMER")]
    pub consumer: Option<String>,
    /// Take over entries pending this long in another consumer.
    #[arg(long, env = "SLUICE_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub claim_idle: Duration,
    /// Batches committed concurrently (each on its own warehouse connection).
    #[arg(long, env = "SLUICE_COMMIT_CONCURRENCY", default_value_t = 2)]
    pub commit_concurrency: usize,
    /// Group commit: most batches one commit takes when a backlog has queued them (1: every
    /// batch is its own transaction).
    #[arg(long, env = "SLUICE_COMMIT_BATCHES", default_value_t = 4)]
    pub commit_batches: usize,
    /// Most megabytes of event payloads read from the log and not yet committed; the reader
    /// waits for room. Bounds the consumer's memory when the warehouse falls behind.
    /// [default: 16; 8 with the embedded warehouse]
    #[arg(long, env = "SLUICE_MAX_INFLIGHT_MB")]
    pub max_inflight_mb: Option<usize>,
    /// Deliveries after which an entry goes to the dead-letter stream.
    #[arg(long, env = "SLUICE_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
}

impl ConsumerArgs {
    /// The consumer's settings. `embedded_store`: the warehouse is the embedded one, which
    /// shares the process (and its memory budget) with the API and the log; a smaller in-flight
    /// window lowered `sluice serve`'s memory peaks at the same CPU per event
    /// (docs/benchmarks.md, sessions 22 and 23).
    pub fn config(&self, embedded_store: bool) -> anyhow::Result<ConsumerConfig> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            anyhow::bail!("--batch-size must be between 1 and 100000");
        }
        let name = self.consumer.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        });
        let mut c = ConsumerConfig::new(name);
        c.batch_size = self.batch_size;
        c.max_wait = self.max_wait;
        c.claim_idle = self.claim_idle;
        c.max_deliveries = self.max_deliveries;
        c.commit_concurrency = self.commit_concurrency.clamp(1, 16);
        if self.commit_batches == 0 || self.commit_batches > 64 {
            anyhow::bail!("--commit-batches must be between 1 and 64");
        }
        c.commit_batches = self.commit_batches;
        let inflight_mb = self
            .max_inflight_mb
            .unwrap_or(if embedded_store { 8 } else { 16 });
        if inflight_mb == 0 || inflight_mb > 4096 {
            anyhow::bail!("--max-inflight-mb must be between 1 and 4096");
        }
        c.max_inflight_bytes = inflight_mb * 1024 * 1024;
        Ok(c)
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Which processor to run.
    #[arg(long, value_enum, env = "SLUICE_PROCESSOR")]
    pub processor: ProcessorKind,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub store: StoreUrlArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub fraud: FraudArgs,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signals();
    let store = open_store(&args.store).await?.into_warehouse();
    let log = open_log(&args.log, &[]).await?;
    match args.processor {
        ProcessorKind::Warehouse => {
            let sole_consumer = args.log.is_embedded();
            let config = args.consumer.config(args.store.is_embedded())?;
            run_warehouse(log, store, config, sole_consumer, shutdown).await
        }
        ProcessorKind::Fraud => {
            let config = fraud_consumer(&args.consumer, args.store.is_embedded())?;
            run_fraud(log, store, config, args.fraud.config()?, None, shutdown).await
        }
    }
}

/// The fraud worker's consumer settings: a stable default name (`fraud-HOST`, so a restart
/// resumes its own pending entries), batches committed one at a time (its windows depend on the
/// order).
pub fn fraud_consumer(args: &ConsumerArgs, embedded_store: bool) -> anyhow::Result<ConsumerConfig> {
    let mut config = args.config(embedded_store)?;
    if args.consumer.is_none() {
        config.consumer = format!("fraud-{}", gethostname::gethostname().to_string_lossy());
    }
    config.commit_concurrency = 1;
    Ok(config)
}

/// The fraud worker until shutdown. `on_alert` receives every committed alert (the live hub).
pub async fn run_fraud(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Warehouse>,
    config: ConsumerConfig,
    rules: FraudConfig,
    on_alert: Option<AlertHook>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // One fraud consumer per log. It reads without acknowledgements; at start the processor
    // rewinds the group to the positions committed with its alerts (`Processor::prepare`).
    let mut processor = FraudProcessor::new(store, log.clone(), rules);
    if let Some(hook) = on_alert {
        processor = processor.with_alert_hook(hook);
    }
    let worker = Worker::new(log, Arc::new(processor), config);
    worker.run(shutdown.wait()).await?;
    Ok(())
}

/// The warehouse worker plus its housekeeping, until shutdown. `sole_consumer`: no other process
/// reads the log (the embedded log, one process per data directory), so the worker keeps its
/// positions in the warehouse only and the log keeps no pending entries for it.
pub async fn run_warehouse(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Warehouse>,
    config: ConsumerConfig,
    sole_consumer: bool,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let housekeeping = {
        let store = store.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTAIN_EVERY);
            let stop = stop.wait();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {
                        if let Err(e) = store.maintain().await {
                            tracing::warn!(error = %e, "warehouse housekeeping failed");
                        }
                    }
                }
            }
        })
    };
    let processor = if sole_consumer {
        WarehouseProcessor::new(store).keeping_own_positions(log.clone())
    } else {
        WarehouseProcessor::new(store)
    };
    let worker = Worker::new(log, Arc::new(processor), config);
    worker.run(shutdown.wait()).await?;
    let _ = housekeeping.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        consumer: ConsumerArgs,
    }

    fn inflight(args: &[&str], embedded_store: bool) -> anyhow::Result<usize> {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))?;
        Ok(cli.consumer.config(embedded_store)?.max_inflight_bytes)
    }

    #[test]
    fn inflight_window_defaults_by_warehouse_and_follows_the_flag() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(inflight(&[], true).expect("embedded"), 8 * MIB);
        assert_eq!(inflight(&[], false).expect("postgres"), 16 * MIB);
        let flag = ["--max-inflight-mb", "32"];
        assert_eq!(inflight(&flag, true).expect("flag"), 32 * MIB);
        assert_eq!(inflight(&flag, false).expect("flag"), 32 * MIB);
        assert!(inflight(&["--max-inflight-mb", "0"], true).is_err());
    }
}
