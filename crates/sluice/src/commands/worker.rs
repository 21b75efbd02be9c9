//! `sluice worker --processor …`: one processor alone, for scaling out.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sluice_core::log::EventLog;
use sluice_core::warehouse::Warehouse;
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
    /// Deliveries after which an entry goes to the dead-letter stream.
    #[arg(long, env = "SLUICE_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
}

impl ConsumerArgs {
    pub fn config(&self) -> anyhow::Result<ConsumerConfig> {
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
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signals();
    let store = open_store(&args.store).await?.into_warehouse();
    let log = open_log(&args.log, &[]).await?;
    match args.processor {
        ProcessorKind::Warehouse => {
            run_warehouse(log, store, args.consumer.config()?, shutdown).await
        }
    }
}

/// The warehouse worker plus its housekeeping, until shutdown.
pub async fn run_warehouse(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Warehouse>,
    config: ConsumerConfig,
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
    let worker = Worker::new(log, Arc::new(WarehouseProcessor::new(store)), config);
    worker.run(shutdown.wait()).await?;
    let _ = housekeeping.await;
    Ok(())
}
