//! The `EventLog` trait: the durable, sharded, consumer-grouped log between ingest and the
//! processors, and the types its backends share.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// One event ready for the log: its shard and its canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub shard: u32,
    pub payload: Bytes,
}

/// One entry read from the log by a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub shard: u32,
    /// Backend position, ordered within a shard (Redis: `ms-seq`).
    pub id: String,
    /// The canonical event JSON, or whatever a foreign producer wrote (may be invalid).
    pub payload: Bytes,
    /// How many times this entry has been delivered to the group, this delivery included.
    pub deliveries: u64,
}

/// A log position as two comparable numbers: a Redis/embedded stream id `ms-seq`, or a plain
/// number (a Kafka offset) as `(n, 0)`. `None` when it is neither.
pub fn parse_position(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Everything still retained (replay).
    Beginning,
    /// Only entries appended from now on.
    End,
}

/// How far behind one consumer group is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    /// Entries appended but not yet delivered to the group.
    pub undelivered: u64,
    /// Entries delivered but not yet acknowledged.
    pub pending: u64,
}

impl GroupLag {
    /// Entries the group has not yet processed.
    pub fn backlog(&self) -> u64 {
        self.undelivered + self.pending
    }
}

/// A dead-lettered entry as stored in the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub group: String,
    pub shard: u32,
    pub id: String,
    pub reason: String,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The backend did not answer in time or is unreachable. Retryable.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The backlog is above the high-water mark. Retry after the given delay.
    #[error("event log backlog above the high-water mark ({backlog} entries)")]
    Overloaded { backlog: u64, retry_after: Duration },
    /// A bug or a misconfiguration: not retryable.
    #[error("event log error: {0}")]
    Other(String),
}

impl LogError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Unavailable(_) | LogError::Overloaded { .. })
    }
}

/// The durable event log. Every backend (Redis Streams, embedded, Kafka) implements the same
/// contract, checked by the conformance suite in `sluice-stream`.
// `len` counts retained entries across shards; an `is_empty` would be a second round trip with no
// caller, so clippy's pairing rule does not fit here.
#[allow(clippy::len_without_is_empty)]
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Number of shards; `Record::shard` must be below it.
    fn shards(&self) -> u32;

    /// Append records; returns only once the backend durably accepted all of them. Concurrent
    /// appends are coalesced into pipelined round trips by the backend. Fails fast with
    /// `Overloaded` above the high-water mark and with `Unavailable` after a bounded time.
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError>;

    /// Create the group on every shard if it does not exist yet.
    async fn ensure_group(&self, group: &str, start: StartFrom) -> Result<(), LogError>;

    /// New entries for this consumer, at most `count`, waiting up to `block` when there are none.
    async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError>;

    /// [`EventLog::read_new`] without recording the entries as pending (Redis `XREADGROUP …
    /// NOACK`): the log never redelivers them and they need no acknowledgement. For a processor
    /// that commits its own positions with its effects and, at start, rewinds the group to them
    /// ([`EventLog::rewind_group`]): it saves the log the pending bookkeeping and the acks, most
    /// of what a reader costs Redis.
    async fn read_new_unacked(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError>;

    /// Set the group's cursor on each given shard `(shard, last id)`: the next reads deliver the
    /// entries after that id. Pending entries are left as they are.
    async fn rewind_group(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError>;

    /// Tell the log that the group's effects are committed through `(shard, last id)` on each
    /// given shard. A group read without acknowledgements ([`EventLog::read_new_unacked`]) has
    /// no pending entries to hold trimming back from what it read but has not committed; a log
    /// that keeps such a mark (the embedded one, from the group's last rewind on) never trims
    /// past it. The default keeps nothing: Redis relies on `trim_keep` for these groups.
    async fn confirm(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError> {
        let _ = (group, positions);
        Ok(())
    }

    /// Entries delivered earlier to this same consumer and not acknowledged (after a restart).
    async fn read_own_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError>;

    /// Take over entries pending for longer than `min_idle` in other (dead) consumers.
    async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, LogError>;

    /// Acknowledge processed entries.
    async fn ack(&self, group: &str, entries: &[Entry]) -> Result<(), LogError>;

    /// Move entries to the dead-letter stream with a reason, and acknowledge them.
    async fn dead_letter(&self, group: &str, entries: &[(Entry, String)]) -> Result<(), LogError>;

    /// Read back dead letters (oldest first), for operators and tests.
    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, LogError>;

    /// Remove entries every group has processed. Returns how many were removed.
    async fn trim(&self) -> Result<u64, LogError>;

    /// Lag of every group.
    async fn lag(&self) -> Result<Vec<GroupLag>, LogError>;

    /// Total entries retained over all shards.
    async fn len(&self) -> Result<u64, LogError>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), LogError>;

    /// Read entries appended after `cursor` without any consumer group (every API instance tails
    /// the log for live aggregates). `TailCursor::default()` starts at the end. Waits up to
    /// `block` when there is nothing new (a zero `block` does not wait); returns at most `count`
    /// entries, in order within each shard, and the cursor to continue from. The returned cursor
    /// is concrete (a position for every shard, never "the end" again), so nothing appended
    /// between two calls is missed.
    async fn tail(
        &self,
        cursor: &TailCursor,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Entry>, TailCursor), LogError>;

    /// Entries of one shard from `start` up to and including the id `through`, oldest first, at
    /// most `count`, read without any consumer group: no delivery is recorded and no position
    /// moves. The fraud processor rebuilds its windows with it after a restart (the entries
    /// just before its group's committed positions). Page on with `RangeStart::After(last id)`;
    /// fewer than `count` entries means the range is exhausted.
    async fn read_range(
        &self,
        shard: u32,
        start: RangeStart<'_>,
        through: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError>;
}

/// Where [`EventLog::read_range`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeStart<'a> {
    /// At this id (inclusive).
    At(&'a str),
    /// After this id (exclusive).
    After(&'a str),
    /// At the first entry appended at or after this wall-clock time, in milliseconds since the
    /// Unix epoch (ids of the Redis and embedded backends are `{append ms}-{seq}`).
    AppendedSinceMs(u64),
}

/// Where a tail reader is: the last id seen per shard (`None`: start from the end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailCursor {
    pub last: Vec<Option<String>>,
}
