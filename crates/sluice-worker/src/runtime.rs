//! The consumer runtime shared by every processor.
//!
//! ```text
//!  reader task               decoder task                      committer (the caller's task)
//!  read_new / claim_idle ─▶ [chan 1] ─▶ processor.decode ─▶ [chan 1] ─▶ processor.process ─▶ ack
//!                                  └─ poison, or delivered > max ─▶ dead_letter (reason, acked)
//! ```
//! Reading the next batch, decoding the one before and committing the one before that overlap;
//! the entries read and not yet committed hold at most `max_inflight_bytes` of payload between
//! them (the reader waits for room), so memory is bounded whatever the backlog and however large
//! the events — and small, should the warehouse pause while the log is far ahead. An
//! entry is acknowledged only after the processor committed its effects; a crash anywhere before
//! the ack means redelivery, which processors make harmless (the warehouse dedupes inside its
//! transaction).
//!
//! At start a consumer first finishes its own pending entries (a restart with the same consumer
//! name resumes at once); entries of dead consumers are claimed once idle for `claim_idle`,
//! looked for every `claim_every` — and again at once while claims come back full, so a crashed
//! consumer's many read-ahead batches are taken over back to back.
//! A batch the processor rejects as invalid (not a transient failure) is split in halves until
//! the offending entries are isolated and dead-lettered, so one bad event never stops the rest.
//!
//! A processor that commits its own positions (`Processor::keeps_own_positions`, the fraud
//! processor) skips the pending machinery: it reads without acknowledgements, claims and acks
//! nothing, and rewinds the group to its committed positions in `Processor::prepare`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sluice_core::log::{Entry, EventLog, LogError, RangeStart, StartFrom};
use sluice_core::metrics as names;
use sluice_core::warehouse::{ShardPosition, Warehouse};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// How a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Consumer name within the group; restarting with the same name resumes its pending entries.
    pub consumer: String,
    /// Most entries per batch.
    pub batch_size: usize,
    /// Longest wait to fill a batch once its first entry arrived.
    pub max_wait: Duration,
    /// Entries pending this long in another consumer are taken over.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_every: Duration,
    /// An entry delivered more often than this goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// How often to trim the log below what every group processed (None: never). Often, so that
    /// each trim is small: the embedded log deletes entry by entry, and trimming 10 s of entries
    /// at once (500,000 at 50,000 events/s) paused this worker's reads for the trim and put
    /// a burst of tombstones through fjall's memtables, a memory spike every 10 s.
    pub trim_every: Option<Duration>,
    /// Longest pause between retries of a failing commit.
    pub max_backoff: Duration,
    /// Where a new group starts.
    pub start_from: StartFrom,
    /// Batches committed at once (in order of reading; each acked after its own commit).
    pub commit_concurrency: usize,
    /// Group commit: most read batches one commit takes. When every commit slot is busy,
    /// decoded batches queue (up to this many); the next free slot commits all of them as one
    /// transaction. An idle pipeline commits each batch alone (no added latency); a backlog is
    /// worked off in fewer, larger transactions, which a single-writer warehouse (SQLite, whose
    /// cost per commit grows with the pages it touches, not the rows) needs to keep up.
    pub commit_batches: usize,
    /// Most payload bytes of entries read and not yet committed (whether waiting to be decoded,
    /// decoded and queued, or committing); the reader waits until a commit frees room. A batch
    /// larger than all of it is read alone.
    pub max_inflight_bytes: usize,
}

impl ConsumerConfig {
    pub fn new(consumer: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            consumer: consumer.into(),
            batch_size: 5_000,
            max_wait: Duration::from_millis(200),
            claim_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            max_deliveries: 5,
            trim_every: Some(Duration::from_secs(1)),
            max_backoff: Duration::from_secs(5),
            start_from: StartFrom::Beginning,
            commit_concurrency: 2,
            commit_batches: 4,
            max_inflight_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Counters a worker keeps, read by `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_letters: AtomicU64,
    pub retries: AtomicU64,
    pub last_batch_size: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub trimmed: AtomicU64,
}

/// Why a processor could not commit a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// Transient (connection lost, server restarting): retry the same batch after a pause.
    #[error("transient failure: {0}")]
    Retryable(String),
    /// Something in the batch is unacceptable: isolate and dead-letter it.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// A processor: one consumer group, effects committed per batch.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// What one entry decodes to: the whole [`sluice_core::Event`] for the warehouse, only the
    /// fields its rules read for the fraud processor (decoding is a large part of a consumer's
    /// CPU).
    type Item: Send + Sync + 'static;

    /// The consumer group, also the processor's name.
    fn group(&self) -> &str;

    /// Decode an entry's payload; an error makes the entry poison (dead-lettered with it).
    fn decode(&self, payload: &[u8]) -> Result<Self::Item, String>;

    /// Commit the effects of `items` (and the group's `positions`) atomically. `entries` are
    /// the items' log entries, aligned by index: stateful processors use their ids to recognise
    /// entries redelivered after their effects were committed.
    async fn process(
        &self,
        entries: &[Entry],
        items: &[Self::Item],
        positions: &[ShardPosition],
        stats: &WorkerStats,
    ) -> Result<(), ProcessError>;

    /// Most batches of this processor committing at once, whatever
    /// `ConsumerConfig::commit_concurrency` says. A processor whose state depends on the order of
    /// batches answers 1.
    fn max_commit_concurrency(&self) -> usize {
        usize::MAX
    }

    /// Whether the processor's committed positions, not the log's pending entries, say what it
    /// has processed. Such a processor reads without acknowledgements
    /// ([`EventLog::read_new_unacked`]) and, in [`Processor::prepare`], rewinds the group to its
    /// committed positions, so whatever was read but not committed before a crash is read again.
    fn keeps_own_positions(&self) -> bool {
        false
    }

    /// Called once before the first read (after the group exists); a failure is retried.
    async fn prepare(&self, config: &ConsumerConfig) -> Result<(), ProcessError> {
        let _ = config;
        Ok(())
    }
}

/// Entries and their decoded items, aligned by index.
struct Batch<T> {
    entries: Vec<Entry>,
    items: Vec<T>,
    /// The batch's share of `max_inflight_bytes`, given back when the batch is dropped (after
    /// its commit and ack). None for batches read outside the pipeline.
    room: Option<OwnedSemaphorePermit>,
}

impl<T> Batch<T> {
    /// Append a later batch (read after this one: order is kept).
    fn append(&mut self, mut later: Batch<T>) {
        self.entries.append(&mut later.entries);
        self.items.append(&mut later.items);
        match (&mut self.room, later.room) {
            (Some(room), Some(more)) => room.merge(more),
            (room @ None, more) => *room = more,
            (Some(_), None) => {}
        }
    }
}

/// Units of `max_inflight_bytes` the reader takes per batch: KiB, at least one, at most all.
const ROOM_UNIT: usize = 1024;

/// How much room a batch of `entries` takes of a budget of `total` units.
fn room_for(entries: &[Entry], total: u32) -> u32 {
    let bytes: usize = entries.iter().map(|e| e.payload.len()).sum();
    u32::try_from(bytes.div_ceil(ROOM_UNIT))
        .unwrap_or(u32::MAX)
        .clamp(1, total)
}

/// Ordering key of a log id (unparseable ids sort first).
fn id_key(id: &str) -> (u64, u64) {
    sluice_core::log::parse_position(id).unwrap_or((0, 0))
}

/// The last id per shard of a set of entries.
pub fn positions(entries: &[Entry]) -> Vec<ShardPosition> {
    let mut last: BTreeMap<u32, &str> = BTreeMap::new();
    for e in entries {
        let slot = last.entry(e.shard).or_insert(&e.id);
        if id_key(&e.id) > id_key(slot) {
            *slot = &e.id;
        }
    }
    last.into_iter()
        .map(|(shard, id)| ShardPosition {
            shard,
            last_id: id.to_string(),
        })
        .collect()
}

/// The start of a processor that keeps its own positions ([`Processor::keeps_own_positions`]):
/// acknowledge whatever `group` still holds pending (entries read with acknowledgements by an
/// earlier version, or another consumer; the rewind covers them), then rewind the group to the
/// positions committed in `store`, so whatever was read but not committed before a stop is read
/// again. A shard with nothing committed starts where a new group starts: the beginning, or
/// with `StartFrom::End` the group's creation point. On the embedded log the rewind also sets
/// the group's committed floor, which the runtime advances after each commit
/// ([`EventLog::confirm`]).
pub async fn rewind_to_committed(
    log: &dyn EventLog,
    store: &dyn Warehouse,
    group: &str,
    config: &ConsumerConfig,
) -> Result<(), ProcessError> {
    let retry = |what: &str, e: LogError| ProcessError::Retryable(format!("{what}: {e}"));
    let mut released = 0u64;
    loop {
        // Other consumers' pending entries become ours, then ours are acknowledged.
        let claimed = log
            .claim_idle(group, &config.consumer, Duration::ZERO, 1_000)
            .await
            .map_err(|e| retry("claiming pending entries", e))?;
        let own = log
            .read_own_pending(group, &config.consumer, 1_000)
            .await
            .map_err(|e| retry("reading pending entries", e))?;
        if claimed.is_empty() && own.is_empty() {
            break;
        }
        log.ack(group, &own)
            .await
            .map_err(|e| retry("acknowledging pending entries", e))?;
        released += own.len() as u64;
    }
    if released > 0 {
        tracing::info!(
            %group,
            count = released,
            "acknowledged entries the group held pending (the rewind reads them again)"
        );
    }
    let committed = store
        .positions(group)
        .await
        .map_err(|e| ProcessError::Retryable(format!("reading {group} positions: {e}")))?;
    let mut rewind: Vec<(u32, String)> = Vec::new();
    for shard in 0..log.shards() {
        match committed.iter().find(|p| p.shard == shard) {
            Some(p) => rewind.push((shard, p.last_id.clone())),
            None if config.start_from == StartFrom::Beginning => {
                rewind.push((shard, "0-0".to_owned()));
            }
            None => {}
        }
    }
    log.rewind_group(group, &rewind)
        .await
        .map_err(|e| retry("rewinding the group to its committed positions", e))
}

pub struct Worker<P: Processor> {
    log: Arc<dyn EventLog>,
    processor: Arc<P>,
    config: ConsumerConfig,
    stats: Arc<WorkerStats>,
}

impl<P: Processor> Worker<P> {
    pub fn new(log: Arc<dyn EventLog>, processor: Arc<P>, config: ConsumerConfig) -> Worker<P> {
        Worker {
            log,
            processor,
            config,
            stats: Arc::new(WorkerStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Consume until `shutdown` resolves. The batch being committed when it does is finished;
    /// a batch read but not started is left pending (redelivered to this consumer on restart).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LogError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let group = self.processor.group().to_string();
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            match self.log.ensure_group(&group, self.config.start_from).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(%group, error = %e, "cannot create the consumer group yet; retrying");
                    if backoff.wait(&stop_rx).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        loop {
            match self.processor.prepare(&self.config).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(%group, error = %e, "preparing the processor failed; retrying");
                    if backoff.wait(&stop_rx).await {
                        return Ok(());
                    }
                }
            }
        }
        let unacked = self.processor.keeps_own_positions();
        tracing::info!(%group, consumer = %self.config.consumer, unacked, "worker started");

        // Own pending entries first, one batch at a time (they are re-read from the start of the
        // pending list until acknowledged, so no read-ahead here).
        loop {
            if unacked {
                break;
            }
            if *stop_rx.borrow() {
                return Ok(());
            }
            let entries = match self
                .log
                .read_own_pending(&group, &self.config.consumer, self.config.batch_size)
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%group, error = %e, "reading own pending entries failed; retrying");
                    if backoff.wait(&stop_rx).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            if entries.is_empty() {
                break;
            }
            tracing::info!(%group, count = entries.len(), "resuming own pending entries");
            let Some(batch) = self.decode(&group, entries, &stop_rx).await else {
                return Ok(());
            };
            if !self.commit_and_ack(&group, batch, &stop_rx).await {
                return Ok(());
            }
        }

        // Reading, decoding and committing are three stages, each one batch ahead of the next
        // (decoded batches queue up to `commit_batches` for group commit), so the log's round
        // trips, the decoding and the commits overlap on separate cores.
        let (raw_tx, mut raw_rx) = mpsc::channel::<(Vec<Entry>, OwnedSemaphorePermit)>(1);
        let commit_batches = self.config.commit_batches.max(1);
        let (tx, mut rx) = mpsc::channel::<Batch<P::Item>>(commit_batches);
        let reader = {
            let me = Reader {
                unacked,
                log: self.log.clone(),
                config: self.config.clone(),
                group: group.clone(),
                stats: self.stats.clone(),
            };
            let stop = stop_rx.clone();
            tokio::spawn(async move { me.run(raw_tx, stop).await })
        };
        let decoder = {
            let (processor, log, stats) =
                (self.processor.clone(), self.log.clone(), self.stats.clone());
            let (group, max_deliveries, stop) =
                (group.clone(), self.config.max_deliveries, stop_rx.clone());
            tokio::spawn(async move {
                while let Some((entries, room)) = raw_rx.recv().await {
                    let Some(mut batch) = decode_batch(
                        processor.as_ref(),
                        log.as_ref(),
                        &group,
                        entries,
                        max_deliveries,
                        &stats,
                        &stop,
                    )
                    .await
                    else {
                        return;
                    };
                    batch.room = Some(room);
                    if !batch.entries.is_empty() && tx.send(batch).await.is_err() {
                        return;
                    }
                }
            })
        };
        // Up to `commit_concurrency` batches commit at once (each on its own warehouse
        // connection); each is acknowledged as soon as its own commit is done.
        let concurrency = self
            .config
            .commit_concurrency
            .min(self.processor.max_commit_concurrency())
            .max(1);
        let me = Arc::new(self);
        let mut inflight = tokio::task::JoinSet::new();
        let mut reading = true;
        loop {
            tokio::select! {
                done = inflight.join_next(), if !inflight.is_empty() => {
                    if !matches!(done, Some(Ok(true))) {
                        break;
                    }
                }
                batch = rx.recv(), if reading && inflight.len() < concurrency => {
                    match batch {
                        Some(mut batch) => {
                            // Group commit: whatever else is waiting goes into the same
                            // transaction (see `ConsumerConfig::commit_batches`).
                            for _ in 1..commit_batches {
                                match rx.try_recv() {
                                    Ok(later) => batch.append(later),
                                    Err(_) => break,
                                }
                            }
                            let (me, group, stop) = (me.clone(), group.clone(), stop_rx.clone());
                            inflight.spawn(async move { me.commit_and_ack(&group, batch, &stop).await });
                        }
                        None => reading = false,
                    }
                }
                else => break,
            }
            if *stop_rx.borrow() {
                reading = false;
            }
        }
        // Finish (or, on shutdown, abandon at the next retry) what is in flight.
        while inflight.join_next().await.is_some() {}
        drop(rx);
        let _ = decoder.await;
        let _ = reader.await;
        tracing::info!(%group, consumer = %me.config.consumer, "worker stopped");
        Ok(())
    }

    async fn decode(
        &self,
        group: &str,
        entries: Vec<Entry>,
        stop: &watch::Receiver<bool>,
    ) -> Option<Batch<P::Item>> {
        decode_batch(
            self.processor.as_ref(),
            self.log.as_ref(),
            group,
            entries,
            self.config.max_deliveries,
            &self.stats,
            stop,
        )
        .await
    }

    /// Give rejected entries back the payloads decoding let go of, read again from the log by
    /// id, for their dead letters. An entry no longer in the log (trimmed by a foreign
    /// producer's length cap) keeps an empty payload.
    async fn read_payloads(&self, dead: &mut [(Entry, String)]) -> Result<(), LogError> {
        for (entry, _) in dead.iter_mut().filter(|(e, _)| e.payload.is_empty()) {
            let found = self
                .log
                .read_range(entry.shard, RangeStart::At(&entry.id), &entry.id, 1)
                .await?;
            if let Some(e) = found.into_iter().find(|e| e.id == entry.id) {
                entry.payload = e.payload;
            }
        }
        Ok(())
    }

    /// Commit a batch (retrying transient failures, isolating rejected entries) and ack it.
    /// Returns false when shutdown interrupted it (the batch stays pending).
    async fn commit_and_ack(
        &self,
        group: &str,
        batch: Batch<P::Item>,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        if batch.entries.is_empty() {
            return true;
        }
        // Work list of index ranges still to commit; a rejected range is split in halves.
        let mut todo = vec![(0usize, batch.entries.len())];
        let mut dead: Vec<(Entry, String)> = Vec::new();
        let mut backoff = Backoff::new(self.config.max_backoff);
        while let Some((lo, hi)) = todo.pop() {
            let entries = &batch.entries[lo..hi];
            let items = &batch.items[lo..hi];
            let started = Instant::now();
            match self
                .processor
                .process(entries, items, &positions(entries), &self.stats)
                .await
            {
                Ok(()) => {
                    self.stats
                        .commit_micros_total
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    self.stats
                        .events
                        .fetch_add((hi - lo) as u64, Ordering::Relaxed);
                    metrics::histogram!(names::WORKER_COMMIT_SECONDS, "group" => group.to_owned())
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(names::WORKER_EVENTS_TOTAL, "group" => group.to_owned())
                        .increment((hi - lo) as u64);
                    backoff.reset();
                }
                Err(ProcessError::Retryable(reason)) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::WORKER_RETRIES_TOTAL, "group" => group.to_owned())
                        .increment(1);
                    tracing::warn!(%group, %reason, "commit failed; retrying the batch");
                    todo.push((lo, hi));
                    if backoff.wait(stop).await {
                        return false;
                    }
                }
                Err(ProcessError::Rejected(reason)) if hi - lo == 1 => {
                    tracing::warn!(%group, id = %batch.entries[lo].id, %reason, "entry rejected; dead-lettering it");
                    dead.push((
                        batch.entries[lo].clone(),
                        format!("rejected by {group}: {reason}"),
                    ));
                }
                Err(ProcessError::Rejected(reason)) => {
                    tracing::warn!(%group, size = hi - lo, %reason, "batch rejected; splitting it to isolate the cause");
                    let mid = lo + (hi - lo) / 2;
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
            }
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_batch_size
            .store(batch.entries.len() as u64, Ordering::Relaxed);
        metrics::histogram!(names::WORKER_BATCH_SIZE, "group" => group.to_owned())
            .record(batch.entries.len() as f64);
        if !dead.is_empty() {
            let n = dead.len() as u64;
            loop {
                let sent = match self.read_payloads(&mut dead).await {
                    Ok(()) => self.log.dead_letter(group, &dead).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(%group, error = %e, "dead-lettering failed; retrying");
                        if backoff.wait(stop).await {
                            return false;
                        }
                    }
                }
            }
            self.stats.dead_letters.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(names::DEAD_LETTERS_TOTAL, "group" => group.to_owned()).increment(n);
        }
        if self.processor.keeps_own_positions() {
            // Nothing to acknowledge; the log may hold trimming at the committed positions.
            let done: Vec<(u32, String)> = positions(&batch.entries)
                .into_iter()
                .map(|p| (p.shard, p.last_id))
                .collect();
            if let Err(e) = self.log.confirm(group, &done).await {
                // Only trimming waits for the next confirm; nothing is lost.
                tracing::warn!(%group, error = %e, "confirming committed positions failed");
            }
            return true;
        }
        loop {
            match self.log.ack(group, &batch.entries).await {
                Ok(()) => return true,
                Err(e) => {
                    // Effects are committed; if the ack never lands the entries are redelivered and
                    // deduplicated, so giving up at shutdown is safe.
                    tracing::warn!(%group, error = %e, "ack failed; retrying");
                    if backoff.wait(stop).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Split entries into decodable items and poison; dead-letter the poison at once.
async fn decode_batch<P: Processor>(
    processor: &P,
    log: &dyn EventLog,
    group: &str,
    entries: Vec<Entry>,
    max_deliveries: u64,
    stats: &WorkerStats,
    stop: &watch::Receiver<bool>,
) -> Option<Batch<P::Item>> {
    let mut batch = Batch {
        entries: Vec::with_capacity(entries.len()),
        items: Vec::with_capacity(entries.len()),
        room: None,
    };
    let mut poison: Vec<(Entry, String)> = Vec::new();
    for mut entry in entries {
        if entry.deliveries > max_deliveries {
            let reason = format!(
                "delivered {} times to group {group} without being processed",
                entry.deliveries
            );
            poison.push((entry, reason));
            continue;
        }
        if entry.payload.is_empty() {
            poison.push((entry, "entry has no event payload (field `e`)".to_string()));
            continue;
        }
        match processor.decode(&entry.payload) {
            Ok(item) => {
                batch.items.push(item);
                // The payload is not needed past decoding (a rejected entry's is read again for
                // its dead letter): letting go of it here halves what a batch in flight holds —
                // the embedded log's payloads are its memtables' own buffers, kept alive by any
                // reference.
                entry.payload = Bytes::new();
                batch.entries.push(entry);
            }
            Err(e) => poison.push((entry, format!("payload is not a valid sluice event: {e}"))),
        }
    }
    if !poison.is_empty() {
        let n = poison.len() as u64;
        tracing::warn!(%group, count = n, reason = %poison[0].1, "dead-lettering poison entries");
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            match log.dead_letter(group, &poison).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(%group, error = %e, "dead-lettering failed; retrying");
                    if backoff.wait(stop).await {
                        return None;
                    }
                }
            }
        }
        stats.dead_letters.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(names::DEAD_LETTERS_TOTAL, "group" => group.to_owned()).increment(n);
    }
    Some(batch)
}

/// The reading stage: fills batches and hands them to the decoder.
struct Reader {
    /// Read without acknowledgements, and never claim (`Processor::keeps_own_positions`).
    unacked: bool,
    log: Arc<dyn EventLog>,
    config: ConsumerConfig,
    group: String,
    stats: Arc<WorkerStats>,
}

impl Reader {
    async fn run(
        self,
        tx: mpsc::Sender<(Vec<Entry>, OwnedSemaphorePermit)>,
        stop: watch::Receiver<bool>,
    ) {
        let total =
            u32::try_from((self.config.max_inflight_bytes / ROOM_UNIT).max(1)).unwrap_or(u32::MAX);
        let room = Arc::new(Semaphore::new(total as usize));
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut next_claim = Instant::now() + self.config.claim_every;
        let mut next_trim = self.config.trim_every.map(|every| Instant::now() + every);
        while !*stop.borrow() {
            let now = Instant::now();
            if let Some(at) = next_trim {
                if now >= at {
                    match self.log.trim().await {
                        Ok(n) => {
                            self.stats.trimmed.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "trimming the log failed"),
                    }
                    next_trim = self.config.trim_every.map(|every| now + every);
                }
            }
            let entries = if now >= next_claim && !self.unacked {
                next_claim = now + self.config.claim_every;
                self.log
                    .claim_idle(&self.group, &self.config.consumer, self.config.claim_idle, self.config.batch_size)
                    .await
                    .inspect(|claimed| {
                        if !claimed.is_empty() {
                            tracing::info!(group = %self.group, count = claimed.len(), "claimed idle entries of another consumer");
                        }
                        // A full batch: a dead consumer left more; take them over without waiting
                        // `claim_every` per batch (a crashed worker can leave many batches).
                        if claimed.len() >= self.config.batch_size {
                            next_claim = now;
                        }
                    })
            } else {
                self.fill().await
            };
            let entries = match entries {
                Ok(e) => {
                    backoff.reset();
                    e
                }
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "reading the log failed; retrying");
                    if backoff.wait(&stop).await {
                        return;
                    }
                    continue;
                }
            };
            if entries.is_empty() {
                continue;
            }
            // Wait for earlier batches' commits to free room (the semaphore is never closed).
            let mut stopping = stop.clone();
            let taken = tokio::select! {
                taken = Arc::clone(&room).acquire_many_owned(room_for(&entries, total)) => taken,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let Ok(taken) = taken else {
                return;
            };
            if tx.send((entries, taken)).await.is_err() {
                return;
            }
        }
    }

    async fn read(&self, count: usize, block: Duration) -> Result<Vec<Entry>, LogError> {
        let (group, consumer) = (&self.group, &self.config.consumer);
        if self.unacked {
            self.log
                .read_new_unacked(group, consumer, count, block)
                .await
        } else {
            self.log.read_new(group, consumer, count, block).await
        }
    }

    /// Read up to `batch_size` new entries, waiting at most `max_wait` once the first arrived.
    async fn fill(&self) -> Result<Vec<Entry>, LogError> {
        let size = self.config.batch_size;
        let mut entries = self.read(size, self.config.max_wait).await?;
        if entries.is_empty() {
            return Ok(entries);
        }
        let deadline = Instant::now() + self.config.max_wait;
        while entries.len() < size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self.read(size - entries.len(), left).await?;
            if more.is_empty() {
                break;
            }
            entries.extend(more);
        }
        Ok(entries)
    }
}

/// Exponential backoff that wakes early on shutdown.
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            current: Duration::from_millis(50),
            max,
        }
    }

    fn reset(&mut self) {
        self.current = Duration::from_millis(50);
    }

    /// Sleep; returns true if shutdown began meanwhile.
    async fn wait(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let mut stop = stop.clone();
        if *stop.borrow() {
            return true;
        }
        let pause = self.current;
        self.current = (self.current * 2).min(self.max);
        let stopped = tokio::select! {
            _ = tokio::time::sleep(pause) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        stopped || *stop.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(shard: u32, id: &str) -> Entry {
        Entry {
            shard,
            id: id.into(),
            payload: Bytes::new(),
            deliveries: 1,
        }
    }

    #[test]
    fn a_batch_takes_room_by_its_payload_kib_within_the_budget() {
        let sized = |n: usize| Entry {
            payload: Bytes::from(vec![b'x'; n]),
            ..entry(0, "1-0")
        };
        assert_eq!(room_for(&[sized(1)], 10), 1);
        assert_eq!(room_for(&[sized(1024), sized(1)], 10), 2);
        assert_eq!(
            room_for(&[], 10),
            1,
            "never nothing: every batch waits its turn"
        );
        assert_eq!(
            room_for(&[sized(100_000)], 10),
            10,
            "a batch larger than the budget takes all of it"
        );
    }

    #[test]
    fn positions_take_the_numerically_last_id_per_shard() {
        let entries = [
            entry(0, "9-0"),
            entry(0, "10-0"),
            entry(1, "5-2"),
            entry(1, "5-10"),
            entry(0, "10-1"),
        ];
        let p = positions(&entries);
        assert_eq!(
            p,
            vec![
                ShardPosition {
                    shard: 0,
                    last_id: "10-1".into()
                },
                ShardPosition {
                    shard: 1,
                    last_id: "5-10".into()
                }
            ]
        );
    }
}
