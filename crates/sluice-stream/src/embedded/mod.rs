//! The embedded backend of `EventLog` (`embedded:PATH`): a durable on-disk log in one data
//! directory, built on the fjall LSM key-value store, with the same semantics as the Redis
//! Streams backend (shards, consumer groups, pending entries, claims, dead letters, trimming,
//! backpressure) for the single-binary mode. One process owns a directory at a time.
//!
//! - `config`: [`EmbeddedLogConfig`], [`Durability`] and the `embedded:` URL parser.
//! - `keys`: the byte layout of every key and value in fjall (`docs/log-format.md`).
//! - `store`: the fjall database, recovery at open, and the consumer-side operations.
//! - `recent`: the newest entries of each shard in memory, for consumers reading near the head.
//! - `writer`: the coalescing append path (one batch and one fsync for many appends).
//!
//! This module is the async face: it runs the blocking store calls on tokio's blocking pool,
//! and implements blocking reads with a `Notify` the writer signals after every batch.

mod config;
mod keys;
mod recent;
mod store;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::log::{
    DeadLetter, Entry, EventLog, GroupLag, LogError, RangeStart, Record, StartFrom, TailCursor,
};
use tokio::sync::{mpsc, oneshot};

pub use config::{Durability, EmbeddedLogConfig};

use keys::Id;
use store::Store;
use writer::AppendRequest;

/// Retry-After given with `Overloaded` when the backlog is above the high-water mark.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counters of the append path (monotonic since open) and the current backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedLogStats {
    /// fjall write batches committed by the writer (one per group of coalesced appends).
    pub batches: u64,
    /// Journal fsyncs made by the writer (one per batch with `Durability::Fsync`, else 0).
    pub syncs: u64,
    /// Records written by successful batches.
    pub records: u64,
    /// Backlog of the slowest required group (or the retained entries when none exists).
    pub backlog: u64,
}

/// The embedded event log. Dropping it stops the writer after the appends already queued (and
/// waits for it); [`EmbeddedLog::close`] does the same without blocking the async runtime, syncs
/// the journal, and returns once the directory is released.
pub struct EmbeddedLog {
    config: EmbeddedLogConfig,
    store: Arc<Store>,
    queue: Option<mpsc::Sender<AppendRequest>>,
    writer: Option<std::thread::JoinHandle<()>>,
    rotation: AtomicUsize,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("dir", &self.config.dir)
            .field("shards", &self.store.shards)
            .field("durability", &self.config.durability)
            .finish_non_exhaustive()
    }
}

impl EmbeddedLog {
    /// Open (creating if needed) the log in `config.dir`. Fails with a clear error when another
    /// process has the directory open, when it is not writable, or when it was created with
    /// another shard count. Must be called inside a tokio runtime.
    pub async fn open(config: EmbeddedLogConfig) -> Result<EmbeddedLog, LogError> {
        config.validate()?;
        let store = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Store::open(&config))
                .await
                .map_err(|e| LogError::Other(format!("opening the embedded log failed: {e}")))??
        };
        let store = Arc::new(store);
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let writer = writer::spawn(store.clone(), rx, config.durability, config.max_batch)?;
        tracing::info!(dir = %config.dir.display(), shards = store.shards,
            durability = ?config.durability, "embedded event log open");
        Ok(EmbeddedLog {
            config,
            store,
            queue: Some(queue),
            writer: Some(writer),
            rotation: AtomicUsize::new(0),
        })
    }

    /// Parse an `embedded:PATH?…` URL (see [`EmbeddedLogConfig::from_url`]) and open it.
    pub async fn from_url(url: &str) -> Result<EmbeddedLog, LogError> {
        EmbeddedLog::open(EmbeddedLogConfig::from_url(url)?).await
    }

    pub fn config(&self) -> &EmbeddedLogConfig {
        &self.config
    }

    pub fn stats(&self) -> EmbeddedLogStats {
        let s = &self.store.stats;
        EmbeddedLogStats {
            batches: s.batches.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            backlog: self.store.backlog(),
        }
    }

    /// Stop accepting appends, let the writer finish what is queued, sync everything to disk
    /// and release the data directory (another `open` of it succeeds once this returns).
    pub async fn close(mut self) -> Result<(), LogError> {
        drop(self.queue.take());
        let writer = self.writer.take();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(w) = writer {
                if w.join().is_err() {
                    tracing::error!("the embedded log writer panicked");
                }
            }
            store
                .db
                .persist(fjall::PersistMode::SyncAll)
                .map_err(|e| store.err(&e))
        })
        .await
        .map_err(|e| LogError::Other(format!("closing the embedded log failed: {e}")))?
        // `self` (the last handle on the store, now that the writer has ended) drops here and
        // fjall releases its lock file.
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| LogError::Other(format!("embedded log task failed: {e}")))?
    }

    fn check_shards(&self, records: &[Record]) -> Result<(), LogError> {
        match records.iter().find(|r| r.shard >= self.store.shards) {
            Some(bad) => Err(LogError::Other(format!(
                "shard {} out of range (the log has {} shards)",
                bad.shard, self.store.shards
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has answered what was queued (bounded by
        // the queue capacity); wait for it, so that the directory is no longer written to once
        // the log is gone. `close` does the same off the runtime threads, and syncs.
        drop(self.queue.take());
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                tracing::error!("the embedded log writer panicked");
            }
        }
    }
}

impl EmbeddedLog {
    /// `read_new`, recording the entries as pending or not.
    async fn read_new_mode(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
        record_pending: bool,
    ) -> Result<Vec<Entry>, LogError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Register for the wake-up before looking, so an append landing in between is not
            // missed.
            let appended = self.store.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();

            let first_shard =
                (self.rotation.fetch_add(1, Ordering::Relaxed) % self.store.shards as usize) as u32;
            let (g, c) = (group.to_owned(), consumer.to_owned());
            let entries = self
                .blocking(move |s| s.read_new(&g, &c, count, first_shard, record_pending))
                .await?;
            if !entries.is_empty() || block.is_zero() {
                return Ok(entries);
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn shards(&self) -> u32 {
        self.store.shards
    }

    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        self.check_shards(&records)?;
        let backlog = self.store.backlog();
        if backlog > self.config.high_water_mark {
            return Err(LogError::Overloaded {
                backlog,
                retry_after: RETRY_AFTER,
            });
        }
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| LogError::Other("the embedded log is closed".to_owned()))?;
        let timeout = self.config.append_timeout;
        let (reply, answer) = oneshot::channel();
        let outcome = tokio::time::timeout(timeout, async {
            queue
                .send(AppendRequest { records, reply })
                .await
                .map_err(|_| LogError::Other("the embedded log writer stopped".to_owned()))?;
            answer
                .await
                .map_err(|_| LogError::Unavailable("the embedded log writer stopped".to_owned()))?
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(LogError::Unavailable(format!(
                "embedded log append not durable within {} ms",
                timeout.as_millis()
            )))
        })
    }

    async fn ensure_group(&self, group: &str, start: StartFrom) -> Result<(), LogError> {
        let group = group.to_owned();
        self.blocking(move |s| s.ensure_group(&group, start)).await
    }

    async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.read_new_mode(group, consumer, count, block, true)
            .await
    }

    async fn read_new_unacked(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.read_new_mode(group, consumer, count, block, false)
            .await
    }

    async fn rewind_group(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError> {
        let (g, p) = (group.to_owned(), positions.to_vec());
        self.blocking(move |s| s.rewind_group(&g, &p)).await
    }

    async fn confirm(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError> {
        let (g, p) = (group.to_owned(), positions.to_vec());
        self.blocking(move |s| s.confirm(&g, &p)).await
    }

    async fn read_own_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (g, c) = (group.to_owned(), consumer.to_owned());
        self.blocking(move |s| s.read_own_pending(&g, &c, count))
            .await
    }

    async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (g, c) = (group.to_owned(), consumer.to_owned());
        self.blocking(move |s| s.claim_idle(&g, &c, min_idle, count))
            .await
    }

    async fn ack(&self, group: &str, entries: &[Entry]) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let g = group.to_owned();
        let ids: Vec<(u32, String)> = entries.iter().map(|e| (e.shard, e.id.clone())).collect();
        self.blocking(move |s| s.ack(&g, &ids, &[])).await
    }

    async fn dead_letter(&self, group: &str, entries: &[(Entry, String)]) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let g = group.to_owned();
        let ids: Vec<(u32, String)> = entries
            .iter()
            .map(|(e, _)| (e.shard, e.id.clone()))
            .collect();
        let dead: Vec<_> = entries
            .iter()
            .map(|(e, reason)| (e.shard, e.id.clone(), e.payload.clone(), reason.clone()))
            .collect();
        self.blocking(move |s| s.ack(&g, &ids, &dead)).await
    }

    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, LogError> {
        self.blocking(move |s| s.dead_letters(count)).await
    }

    async fn trim(&self) -> Result<u64, LogError> {
        self.blocking(Store::trim).await
    }

    async fn lag(&self) -> Result<Vec<GroupLag>, LogError> {
        self.blocking(|s| Ok(s.lag())).await
    }

    async fn len(&self) -> Result<u64, LogError> {
        Ok(self.store.len())
    }

    async fn tail(
        &self,
        cursor: &TailCursor,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Entry>, TailCursor), LogError> {
        let shards = self.store.shards as usize;
        let mut last: Vec<Option<Id>> = (0..shards)
            .map(|i| match cursor.last.get(i).cloned().flatten() {
                Some(id) => parse_id(&id).map(Some),
                None => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let appended = self.store.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();

            let first_shard = (self.rotation.fetch_add(1, Ordering::Relaxed) % shards) as u32;
            let (entries, moved) = self
                .blocking(move |s| {
                    let entries = s.tail(&mut last, count, first_shard)?;
                    Ok((entries, last))
                })
                .await?;
            last = moved;
            if !entries.is_empty() || block.is_zero() || count == 0 {
                let cursor = TailCursor {
                    last: last.iter().map(|id| id.map(|id| id.to_string())).collect(),
                };
                return Ok((entries, cursor));
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                let cursor = TailCursor {
                    last: last.iter().map(|id| id.map(|id| id.to_string())).collect(),
                };
                return Ok((Vec::new(), cursor));
            }
        }
    }

    async fn read_range(
        &self,
        shard: u32,
        start: RangeStart<'_>,
        through: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        if shard >= self.store.shards {
            return Err(LogError::Other(format!(
                "shard {shard} out of range (the log has {} shards)",
                self.store.shards
            )));
        }
        let from = match start {
            RangeStart::At(id) => parse_id(id)?,
            RangeStart::After(id) => parse_id(id)?.successor(),
            RangeStart::AppendedSinceMs(ms) => Id { ms, seq: 0 },
        };
        let through = parse_id(through)?;
        self.blocking(move |s| s.read_range(shard, from, through, count, 0))
            .await
    }

    async fn ping(&self) -> Result<(), LogError> {
        match &self.queue {
            Some(q) if !q.is_closed() => Ok(()),
            _ => Err(LogError::Unavailable(
                "the embedded log writer stopped".to_owned(),
            )),
        }
    }
}

fn parse_id(id: &str) -> Result<Id, LogError> {
    Id::parse(id).ok_or_else(|| LogError::Other(format!("not an entry id (ms-seq): `{id}`")))
}
