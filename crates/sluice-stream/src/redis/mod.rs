//! The Redis Streams backend of `EventLog` (`redis://…`): `RedisLog` owns the shard streams
//! `{prefix}:events:{shard}`, the dead-letter stream `{prefix}:dead`, the coalescing append path
//! (`writer`), the backpressure poller (`backpressure`), group-less tailing (`tail`) and the
//! consumer-group commands below.
//! The on-Redis format is documented in `docs/log-format.md`.

mod backpressure;
mod config;
mod conn;
mod reply;
mod tail;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{RedisResult, Value};
use sluice_core::log::{
    DeadLetter, Entry, EventLog, GroupLag, LogError, RangeStart, Record, StartFrom, TailCursor,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use config::RedisLogConfig;

use backpressure::Poller;
use conn::{BlockingPool, Connector, SharedConn};
use reply::RawEntry;
use writer::{AppendRequest, WriterSettings, WriterStats};

/// Retry-After given with `Overloaded` when the backlog is above the high-water mark.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counters of the append path (monotonic since start) and the last polled backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisLogStats {
    /// Append pipelines (round trips) sent to Redis, failed ones included.
    pub pipelines_sent: u64,
    /// Records written by successful pipelines.
    pub records_sent: u64,
    /// Backlog of the slowest required group, as last polled.
    pub backlog: u64,
    /// Times `trim` went past a group lagging more than `trim_max_lag` (per group and shard).
    pub trim_lagging_skips: u64,
}

/// The Redis Streams event log. Dropping it stops its background tasks (the writers finish the
/// requests already queued, the backpressure poller is aborted).
pub struct RedisLog {
    config: RedisLogConfig,
    keys: Arc<[String]>,
    dead_key: String,
    queue: mpsc::Sender<AppendRequest>,
    conn: Arc<SharedConn>,
    blocking: BlockingPool,
    backlog: Arc<AtomicU64>,
    stats: Arc<WriterStats>,
    rotation: AtomicUsize,
    trim_lagging_skips: AtomicU64,
    poller: JoinHandle<()>,
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog")
            .field("url", &config::redact(&self.config.url))
            .field("prefix", &self.config.prefix)
            .field("shards", &self.config.shards)
            .finish_non_exhaustive()
    }
}

impl RedisLog {
    /// Connect and check that Redis answers (bounded by `append_timeout`). Must be called inside
    /// a tokio runtime: it spawns the writer tasks and the backpressure poller.
    pub async fn connect(config: RedisLogConfig) -> Result<RedisLog, LogError> {
        let log = RedisLog::connect_lazy(config)?;
        log.ping().await?;
        Ok(log)
    }

    /// Like [`RedisLog::connect`] but without checking that Redis answers: connections are made
    /// on first use, so a process can start while Redis is still down.
    pub fn connect_lazy(config: RedisLogConfig) -> Result<RedisLog, LogError> {
        config.validate()?;
        let connector = Connector::new(&config.url, config.append_timeout)?;
        let keys: Arc<[String]> = (0..config.shards)
            .map(|shard| stream_key(&config.prefix, shard))
            .collect();
        let conn = Arc::new(SharedConn::new(connector.clone(), config.command_timeout));
        let stats = Arc::new(WriterStats::default());
        let backlog = Arc::new(AtomicU64::new(0));

        let (queue, rx) = mpsc::channel(config.queue_capacity);
        // The writers end by themselves when `queue` (owned by the RedisLog) is dropped.
        drop(writer::spawn(
            config.writers,
            rx,
            Arc::new(WriterSettings {
                connector: connector.clone(),
                keys: keys.clone(),
                max_pipeline: config.max_pipeline,
                timeout: config.append_timeout,
                stats: stats.clone(),
            }),
        ));
        let poller = Poller {
            conn: conn.clone(),
            keys: keys.clone(),
            required: config.required_groups.clone(),
            interval: config.backpressure_poll,
            backlog: backlog.clone(),
        }
        .spawn();

        Ok(RedisLog {
            dead_key: format!("{}:dead", config.prefix),
            blocking: BlockingPool::new(connector, 16),
            keys,
            queue,
            conn,
            backlog,
            stats,
            rotation: AtomicUsize::new(0),
            trim_lagging_skips: AtomicU64::new(0),
            poller,
            config,
        })
    }

    /// Parse a `redis://host:port/db?prefix=…&shards=…` URL (see [`RedisLogConfig::from_url`])
    /// and connect.
    pub async fn from_url(url: &str) -> Result<RedisLog, LogError> {
        RedisLog::connect(RedisLogConfig::from_url(url)?).await
    }

    pub fn config(&self) -> &RedisLogConfig {
        &self.config
    }

    /// The stream key of a shard: `{prefix}:events:{shard}`.
    pub fn stream_key(&self, shard: u32) -> String {
        stream_key(&self.config.prefix, shard)
    }

    /// The dead-letter stream key: `{prefix}:dead`.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead_key
    }

    pub fn stats(&self) -> RedisLogStats {
        RedisLogStats {
            pipelines_sent: self.stats.pipelines_sent.load(Ordering::Relaxed),
            records_sent: self.stats.records_sent.load(Ordering::Relaxed),
            backlog: self.backlog.load(Ordering::Relaxed),
            trim_lagging_skips: self.trim_lagging_skips.load(Ordering::Relaxed),
        }
    }

    fn key(&self, shard: u32) -> Result<&str, LogError> {
        self.keys
            .get(shard as usize)
            .map(String::as_str)
            .ok_or_else(|| {
                LogError::Other(format!(
                    "shard {shard} out of range (the log has {} shards)",
                    self.config.shards
                ))
            })
    }

    fn shard_of_key(&self, key: &str) -> Option<u32> {
        let shard: u32 = key
            .strip_prefix(self.config.prefix.as_str())?
            .strip_prefix(":events:")?
            .parse()
            .ok()?;
        (shard < self.config.shards).then_some(shard)
    }

    /// Shard keys starting at a rotating offset, so no shard is always served last.
    fn rotated_keys(&self) -> Vec<String> {
        let n = self.keys.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n.max(1);
        (0..n).map(|i| self.keys[(start + i) % n].clone()).collect()
    }

    /// Group the entries of a stream reply by shard, setting aside deleted ones (nil payload).
    fn collect(
        &self,
        streams: Vec<(String, Vec<RawEntry>)>,
        deliveries: u64,
    ) -> (Vec<Entry>, Vec<(u32, String)>) {
        let mut live = Vec::new();
        let mut deleted = Vec::new();
        for (key, raws) in streams {
            let Some(shard) = self.shard_of_key(&key) else {
                tracing::warn!(key, "stream reply for a key that is not one of our shards");
                continue;
            };
            for raw in raws {
                match raw.payload {
                    Some(payload) => live.push(Entry {
                        shard,
                        id: raw.id,
                        payload,
                        deliveries,
                    }),
                    None => deleted.push((shard, raw.id)),
                }
            }
        }
        (live, deleted)
    }

    /// Read pending-or-new entries across shards, up to an exact total `count` (whatever is
    /// there, never more). XREADGROUP's COUNT is per stream, so each round asks every stream that
    /// may hold more for an equal share of what is still wanted, in one multi-stream command; a
    /// stream that returns less than its share is exhausted. An even backlog takes one round trip,
    /// a skewed one a few. `id` is `>` (new entries) or `0` (own pending; later rounds go on after
    /// the last id returned). A Lua script doing the same in one call cost Redis ~4× the CPU per
    /// entry (the replies are converted to Lua tables and back), which a second consumer group
    /// such as the fraud worker's then took from everything else.
    async fn sweep(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        id: &str,
        noack: bool,
    ) -> Result<Vec<(String, Vec<RawEntry>)>, LogError> {
        let mut out = Vec::new();
        // Streams that may hold more, each with the id to read after.
        let mut open: Vec<(String, String)> = self
            .rotated_keys()
            .into_iter()
            .map(|k| (k, id.to_owned()))
            .collect();
        let mut remaining = count;
        while remaining > 0 && !open.is_empty() {
            let asked = open.len().min(remaining);
            let share = remaining / asked;
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(share);
            if noack {
                cmd.arg("NOACK");
            }
            cmd.arg("STREAMS");
            for (key, _) in &open[..asked] {
                cmd.arg(key);
            }
            for (_, after) in &open[..asked] {
                cmd.arg(after);
            }
            let reply: Value = self
                .conn
                .run("XREADGROUP", |mut c| async move {
                    cmd.query_async(&mut c).await
                })
                .await
                .map_err(|e| group_error(e, group))?;
            let mut next: Vec<(String, String)> = open.split_off(asked);
            for (key, raws) in reply::streams(&reply) {
                remaining = remaining.saturating_sub(raws.len());
                if raws.len() >= share {
                    if let Some(last) = raws.last() {
                        let after = if id == ">" {
                            id.to_owned()
                        } else {
                            last.id.clone()
                        };
                        next.push((key.clone(), after));
                    }
                }
                out.push((key, raws));
            }
            open = next;
        }
        Ok(out)
    }

    /// `read_new`, recording the entries as pending or not (`NOACK`).
    async fn read_new_mode(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
        noack: bool,
    ) -> Result<Vec<Entry>, LogError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // First whatever is there, with an exact total count.
        let streams = self.sweep(group, consumer, count, ">", noack).await?;
        let (entries, _) = self.collect(streams, 1);
        if !entries.is_empty() || block.is_zero() {
            return Ok(entries);
        }

        // Nothing yet: block on the shards until something arrives. COUNT is per stream, so
        // `count` is split over the shards we wait on, never to return more than `count`. With
        // `count` below the shard count we wait on `count` shards (rotating), and the next
        // call's sweep picks up the others.
        let keys = self.rotated_keys();
        let waited = keys.len().min(count);
        let per_stream = (count / waited).max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(per_stream)
            // BLOCK 0 would mean "forever": `block` is non-zero here, and at least 1 ms.
            .arg("BLOCK")
            .arg(millis(block).max(1));
        if noack {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS").arg(&keys[..waited]);
        for _ in 0..waited {
            cmd.arg(">");
        }
        let reply: Value = self
            .blocking
            .run(
                "a blocking XREADGROUP",
                block + self.config.command_timeout,
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await
            .map_err(|e| group_error(e, group))?;
        let (entries, _) = self.collect(reply::streams(&reply), 1);
        Ok(entries)
    }

    /// Acknowledge entries that were deleted (trimmed or XDEL'd) while pending: they can never be
    /// processed, and would otherwise stay pending forever.
    async fn ack_deleted(&self, group: &str, deleted: Vec<(u32, String)>) -> Result<(), LogError> {
        if deleted.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            group,
            count = deleted.len(),
            "acknowledging pending entries that no longer exist"
        );
        self.ack_ids(group, deleted).await
    }

    async fn ack_ids(&self, group: &str, ids: Vec<(u32, String)>) -> Result<(), LogError> {
        let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (shard, id) in ids {
            self.key(shard)?;
            by_shard.entry(shard).or_default().push(id);
        }
        if by_shard.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (shard, ids) in &by_shard {
            pipe.cmd("XACK")
                .arg(self.key(*shard)?)
                .arg(group)
                .arg(ids)
                .ignore();
        }
        self.conn
            .run("XACK", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
            .map_err(|e| group_error(e, group))
    }
}

fn stream_key(prefix: &str, shard: u32) -> String {
    format!("{prefix}:events:{shard}")
}

/// Make the "no such group" server error say what to do.
fn group_error(e: LogError, group: &str) -> LogError {
    match e {
        LogError::Other(m) if m.contains("NOGROUP") => LogError::Other(format!(
            "consumer group `{group}` does not exist (call ensure_group first): {m}"
        )),
        e => e,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl EventLog for RedisLog {
    fn shards(&self) -> u32 {
        self.config.shards
    }

    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(bad) = records.iter().find(|r| r.shard >= self.config.shards) {
            self.key(bad.shard)?;
        }
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog > self.config.high_water_mark {
            return Err(LogError::Overloaded {
                backlog,
                retry_after: self.config.backpressure_poll.max(MIN_RETRY_AFTER),
            });
        }
        let timeout = self.config.append_timeout;
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest { records, reply };
        let outcome = tokio::time::timeout(timeout, async {
            self.queue
                .send(request)
                .await
                .map_err(|_| LogError::Other("the redis log writers stopped".to_owned()))?;
            answer
                .await
                .map_err(|_| LogError::Unavailable("the redis log writer stopped".to_owned()))?
        })
        .await;
        outcome.unwrap_or_else(|_| Err(conn::timeout_error("an append", timeout)))
    }

    async fn ensure_group(&self, group: &str, start: StartFrom) -> Result<(), LogError> {
        let id = match start {
            StartFrom::Beginning => "0",
            StartFrom::End => "$",
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in self.keys.iter() {
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(group)
                .arg(id)
                .arg("MKSTREAM");
        }
        let results: Vec<RedisResult<Value>> = self
            .conn
            .run("XGROUP CREATE", |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        for result in results {
            match result {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(conn::map_error(&e)),
            }
        }
        Ok(())
    }

    async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.read_new_mode(group, consumer, count, block, false)
            .await
    }

    async fn read_new_unacked(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.read_new_mode(group, consumer, count, block, true)
            .await
    }

    async fn rewind_group(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (shard, id) in positions {
            pipe.cmd("XGROUP")
                .arg("SETID")
                .arg(self.key(*shard)?)
                .arg(group)
                .arg(id)
                .ignore();
        }
        self.conn
            .run("XGROUP SETID", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
            .map_err(|e| group_error(e, group))
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
        let streams = self.sweep(group, consumer, count, "0", false).await?;
        let (mut entries, deleted) = self.collect(streams, 1);
        self.ack_deleted(group, deleted).await?;
        if entries.is_empty() {
            return Ok(entries);
        }

        // Re-reading history counts as a delivery; fetch the counts of exactly these ids.
        let mut ranges: BTreeMap<u32, (String, String, usize)> = BTreeMap::new();
        for e in &entries {
            let range = ranges
                .entry(e.shard)
                .or_insert_with(|| (e.id.clone(), e.id.clone(), 0));
            if reply::parse_id(&e.id) < reply::parse_id(&range.0) {
                range.0 = e.id.clone();
            }
            if reply::parse_id(&e.id) > reply::parse_id(&range.1) {
                range.1 = e.id.clone();
            }
            range.2 += 1;
        }
        let mut pipe = redis::pipe();
        for (shard, (first, last, n)) in &ranges {
            pipe.cmd("XPENDING")
                .arg(self.key(*shard)?)
                .arg(group)
                .arg(first)
                .arg(last)
                .arg(*n)
                .arg(consumer);
        }
        let replies: Vec<Value> = self
            .conn
            .run(
                "XPENDING",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await
            .map_err(|e| group_error(e, group))?;
        let mut counts: HashMap<(u32, String), u64> = HashMap::new();
        for ((shard, _), v) in ranges.iter().zip(&replies) {
            for row in reply::pending_rows(v) {
                counts.insert((*shard, row.id), row.deliveries);
            }
        }
        for e in &mut entries {
            if let Some(n) = counts.get(&(e.shard, e.id.clone())) {
                e.deliveries = (*n).max(1);
            }
        }
        Ok(entries)
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
        let idle_ms = millis(min_idle);
        // Which entries are idle long enough, and how often they were delivered.
        let mut pipe = redis::pipe();
        for key in self.keys.iter() {
            pipe.cmd("XPENDING")
                .arg(key)
                .arg(group)
                .arg("IDLE")
                .arg(idle_ms)
                .arg("-")
                .arg("+")
                .arg(count);
        }
        let replies: Vec<Value> = self
            .conn
            .run(
                "XPENDING",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await
            .map_err(|e| group_error(e, group))?;
        let mut candidates: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
        let mut taken = 0;
        for (shard, v) in (0u32..).zip(&replies) {
            for row in reply::pending_rows(v) {
                // Our own pending entries are being processed by us right now.
                if row.consumer == consumer || taken >= count {
                    continue;
                }
                candidates
                    .entry(shard)
                    .or_default()
                    .push((row.id, row.deliveries));
                taken += 1;
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }

        // XCLAIM re-checks the idle time atomically, so an entry its owner touched meanwhile is
        // not stolen; it increments the delivery count of what it claims.
        let mut pipe = redis::pipe();
        for (shard, ids) in &candidates {
            pipe.cmd("XCLAIM")
                .arg(self.key(*shard)?)
                .arg(group)
                .arg(consumer)
                .arg(idle_ms);
            for (id, _) in ids {
                pipe.arg(id);
            }
        }
        let replies: Vec<Value> = self
            .conn
            .run(
                "XCLAIM",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await
            .map_err(|e| group_error(e, group))?;
        let mut entries = Vec::new();
        let mut deleted = Vec::new();
        for ((shard, ids), v) in candidates.iter().zip(&replies) {
            let before: HashMap<&str, u64> = ids.iter().map(|(id, n)| (id.as_str(), *n)).collect();
            for raw in reply::entries(v) {
                let deliveries = before.get(raw.id.as_str()).map_or(1, |n| n + 1);
                match raw.payload {
                    Some(payload) => entries.push(Entry {
                        shard: *shard,
                        id: raw.id,
                        payload,
                        deliveries,
                    }),
                    None => deleted.push((*shard, raw.id)),
                }
            }
        }
        self.ack_deleted(group, deleted).await?;
        Ok(entries)
    }

    async fn ack(&self, group: &str, entries: &[Entry]) -> Result<(), LogError> {
        self.ack_ids(
            group,
            entries.iter().map(|e| (e.shard, e.id.clone())).collect(),
        )
        .await
    }

    async fn dead_letter(&self, group: &str, entries: &[(Entry, String)]) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (entry, reason) in entries {
            let key = self.key(entry.shard)?;
            let xadd = pipe.cmd("XADD").arg(&self.dead_key);
            if self.config.dead_letter_max_len > 0 {
                xadd.arg("MAXLEN")
                    .arg("~")
                    .arg(self.config.dead_letter_max_len);
            }
            xadd.arg("*")
                .arg("group")
                .arg(group)
                .arg("shard")
                .arg(entry.shard)
                .arg("id")
                .arg(&entry.id)
                .arg("reason")
                .arg(reason)
                .arg("payload")
                .arg(entry.payload.as_ref())
                .ignore();
            pipe.cmd("XACK").arg(key).arg(group).arg(&entry.id).ignore();
        }
        self.conn
            .run("MULTI/EXEC dead letter", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
    }

    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, LogError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.dead_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let reply: Value = self
            .conn
            .run(
                "XRANGE",
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;
        Ok(reply::array(&reply)
            .iter()
            .filter_map(|entry| {
                let fields = reply::pairs(reply::array(entry).get(1)?);
                let field = |name: &[u8]| {
                    fields
                        .iter()
                        .find(|(k, _)| reply::bytes(k) == Some(name))
                        .and_then(|(_, v)| reply::bytes(v))
                };
                let text = |name: &[u8]| {
                    field(name)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default()
                };
                Some(DeadLetter {
                    group: text(b"group"),
                    shard: text(b"shard").parse().unwrap_or(0),
                    id: text(b"id"),
                    reason: text(b"reason"),
                    payload: field(b"payload")
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn trim(&self) -> Result<u64, LogError> {
        let states = backpressure::shard_states(&self.conn, &self.keys).await?;

        // The smallest pending id of every group that has pending entries.
        let mut pipe = redis::pipe();
        let mut asked = Vec::new();
        for (shard, state) in states.iter().enumerate() {
            for g in state.groups.iter().filter(|g| g.pending > 0) {
                pipe.cmd("XPENDING").arg(&self.keys[shard]).arg(&g.name);
                asked.push((shard, g.name.clone()));
            }
        }
        let smallest: Vec<Value> = if asked.is_empty() {
            Vec::new()
        } else {
            self.conn
                .run(
                    "XPENDING",
                    |mut c| async move { pipe.query_async(&mut c).await },
                )
                .await?
        };
        let mut smallest_pending: HashMap<(usize, &str), String> = HashMap::new();
        for ((shard, group), v) in asked.iter().zip(&smallest) {
            if let Some(id) = reply::pending_smallest(v) {
                smallest_pending.insert((*shard, group.as_str()), id);
            }
        }

        // Per shard: below what every group has processed. A group has processed everything
        // before its smallest pending id, or, with nothing pending, up to its last-delivered id.
        // A group lagging more than `trim_max_lag` counts as if it were at that age; then
        // `trim_keep` of processed entries stays.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, millis);
        let lag_floor = self
            .config
            .trim_max_lag
            .map(|lag| now_ms.saturating_sub(millis(lag)));
        let keep_ms = millis(self.config.trim_keep);
        let mut pipe = redis::pipe();
        let mut trims = 0;
        for (shard, state) in states.iter().enumerate() {
            let mut min: Option<(u64, u64)> = None;
            for g in &state.groups {
                let id = smallest_pending
                    .get(&(shard, g.name.as_str()))
                    .map_or(g.last_delivered.as_str(), String::as_str);
                let Some(mut parsed) = reply::parse_id(id) else {
                    // Unreadable position: do not guess, keep this shard.
                    min = Some((0, 0));
                    break;
                };
                let has_work = g.pending > 0 || g.lag != Some(0);
                if let Some(floor) = lag_floor {
                    if has_work && parsed.0 < floor {
                        tracing::warn!(
                            group = %g.name,
                            shard,
                            position = id,
                            max_lag_secs = self.config.trim_max_lag.map_or(0, |d| d.as_secs()),
                            "consumer group lags more than the trim retention; trimming past it (it skips what is removed)"
                        );
                        self.trim_lagging_skips.fetch_add(1, Ordering::Relaxed);
                        parsed = (floor, 0);
                    }
                }
                if min.is_none_or(|m| parsed < m) {
                    min = Some(parsed);
                }
            }
            // No group at all, or a group that has processed nothing: trim nothing.
            let Some(min) = min.filter(|m| *m > (0, 0)) else {
                continue;
            };
            let minid = if keep_ms == 0 {
                format!("{}-{}", min.0, min.1)
            } else if min.0 > keep_ms {
                format!("{}-0", min.0 - keep_ms)
            } else {
                continue;
            };
            pipe.cmd("XTRIM")
                .arg(&self.keys[shard])
                .arg("MINID")
                .arg(minid);
            trims += 1;
        }
        if trims == 0 {
            return Ok(0);
        }
        let removed: Vec<u64> = self
            .conn
            .run(
                "XTRIM",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(removed.iter().sum())
    }

    async fn lag(&self) -> Result<Vec<GroupLag>, LogError> {
        let states = backpressure::shard_states(&self.conn, &self.keys).await?;
        Ok(backpressure::group_lags(&states))
    }

    async fn len(&self) -> Result<u64, LogError> {
        let mut pipe = redis::pipe();
        for key in self.keys.iter() {
            pipe.cmd("XLEN").arg(key);
        }
        let lens: Vec<u64> = self
            .conn
            .run(
                "XLEN",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(lens.iter().sum())
    }

    async fn tail(
        &self,
        cursor: &TailCursor,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Entry>, TailCursor), LogError> {
        self.tail_streams(cursor, count, block).await
    }

    async fn read_range(
        &self,
        shard: u32,
        start: RangeStart<'_>,
        through: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        let key = self.key(shard)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        // XRANGE bounds: `id` is inclusive, `(id` exclusive (Redis >= 6.2); `ms` alone means
        // `ms-0`.
        let from = match start {
            RangeStart::At(id) => id.to_owned(),
            RangeStart::After(id) => format!("({id}"),
            RangeStart::AppendedSinceMs(ms) => format!("{ms}-0"),
        };
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(key).arg(from).arg(through).arg("COUNT").arg(count);
        let reply: Value = self
            .conn
            .run(
                "XRANGE",
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;
        Ok(reply::entries(&reply)
            .into_iter()
            .map(|raw| Entry {
                shard,
                id: raw.id,
                payload: raw.payload.unwrap_or_default(),
                deliveries: 0,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), LogError> {
        let pong: String = self
            .conn
            .run("PING", |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(LogError::Other(format!("unexpected PING reply: {pong}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::shard::{fnv1a_64, shard_for};

    /// The reference values published in docs/log-format.md.
    #[test]
    fn documented_shard_vectors() {
        let vectors = [
            ("web", "user-42", 0xdc2b_8271_d0c5_1331_u64, 1),
            ("ios", "anon-1f3c", 0xe046_98c5_46ad_b08a, 2),
            ("src", "user-7", 0xa484_30f5_e31a_d458, 0),
        ];
        for (source, user, hash, shard) in vectors {
            assert_eq!(fnv1a_64(&[source.as_bytes(), user.as_bytes()]), hash);
            assert_eq!(shard_for(source, user, 8), shard);
        }
    }

    #[test]
    fn stream_keys() {
        assert_eq!(super::stream_key("sluice", 3), "sluice:events:3");
    }
}
