//! The `Warehouse` and `KeyStore` traits: where processed events, rollups, consumer offsets and
//! API keys live.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyKind, KeyRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection lost, server restarting, serialization failure: retry the whole batch.
    #[error("warehouse unavailable: {0}")]
    Unavailable(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("warehouse error: {0}")]
    Other(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// API keys, stored as hashes.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Create a key for `source`; returns the key itself (shown once) and its record.
    async fn create_key(
        &self,
        source: &str,
        kind: KeyKind,
    ) -> Result<(String, KeyRecord), StoreError>;
    /// Every key, revoked ones included.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revoke by id or by the key itself. Returns the revoked record.
    async fn revoke_key(&self, id_or_key: &str) -> Result<KeyRecord, StoreError>;
}

/// The last log position of a consumer group in one shard, committed with the batch's effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPosition {
    pub shard: u32,
    pub last_id: String,
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Events stored for the first time.
    pub inserted: u64,
    /// Events dropped because their `(source, event_id)` was already stored (or repeated in the
    /// batch).
    pub duplicates: u64,
}

/// Where processed events and rollups live. One `commit_batch` is one transaction: raw events,
/// rollups and the consumer positions change together or not at all.
#[async_trait]
pub trait Warehouse: KeyStore {
    /// Store a batch exactly once: dedupe by `(source, event_id)`, insert new events, add them to
    /// the rollups, record `positions` for `group`, in one transaction.
    async fn commit_batch(
        &self,
        group: &str,
        events: &[crate::Event],
        positions: &[ShardPosition],
    ) -> Result<CommitOutcome, StoreError>;

    /// The committed positions of a group.
    async fn positions(&self, group: &str) -> Result<Vec<ShardPosition>, StoreError>;

    /// Housekeeping: create partitions ahead, apply retention, prune the dedupe window.
    async fn maintain(&self) -> Result<(), StoreError>;

    /// Whether the warehouse answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Store alerts exactly once (unique by `(source, rule, subject, window_start)`) and record
    /// `positions` for `group`, in one transaction. Returns how many were new.
    async fn commit_alerts(
        &self,
        group: &str,
        alerts: &[Alert],
        positions: &[ShardPosition],
    ) -> Result<u64, StoreError>;

    /// Which of `event_ids` of `source` are stored (verification: `sluice bench --verify`).
    async fn stored_event_ids(
        &self,
        source: &str,
        event_ids: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// [`Warehouse::stored_event_ids`] for events whose time (`timestamp`) is at or after
    /// `since`: a backend that cannot look ids up directly (an embedded warehouse opened beside
    /// the process serving it) scans only the events from `since` on. Polled by `sluice bench
    /// --verify` for its freshness samples.
    async fn stored_event_ids_since(
        &self,
        source: &str,
        event_ids: &[String],
        _since: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        self.stored_event_ids(source, event_ids).await
    }

    /// Rows in `events` of `source` whose id starts with `prefix`, and how many distinct ids
    /// they have (rows − distinct = duplicates; verification).
    async fn count_by_id_prefix(
        &self,
        source: &str,
        prefix: &str,
    ) -> Result<(u64, u64), StoreError>;

    // --- Queries (read key scoped to one source). Time ranges are half-open `[from, to)`. ---

    /// Event counts per bucket from the per-minute rollup, for one event name or all; buckets
    /// with no events are included with 0.
    async fn counts(
        &self,
        source: &str,
        event: Option<&str>,
        range: TimeRange,
        interval: Interval,
    ) -> Result<Vec<CountPoint>, StoreError>;

    /// The most frequent event names over the range, most frequent first.
    async fn top_events(
        &self,
        source: &str,
        range: TimeRange,
        limit: u32,
    ) -> Result<Vec<NameCount>, StoreError>;

    /// Daily active users per day of the range (UTC days overlapping it), and distinct users over
    /// all those days.
    async fn active_users(&self, source: &str, range: TimeRange)
        -> Result<ActiveUsers, StoreError>;

    /// A user's most recent raw events, newest first.
    async fn user_events(
        &self,
        source: &str,
        user: &UserRef,
        limit: u32,
    ) -> Result<Vec<crate::Event>, StoreError>;

    /// Alerts whose window overlaps the range, newest first.
    async fn alerts(
        &self,
        source: &str,
        range: TimeRange,
        limit: u32,
    ) -> Result<Vec<Alert>, StoreError>;
}

/// A half-open time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Bucket width of a count series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Interval {
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl Interval {
    pub fn parse(s: &str) -> Option<Interval> {
        match s {
            "1m" => Some(Interval::Minute),
            "1h" => Some(Interval::Hour),
            "1d" => Some(Interval::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Interval::Minute => 60,
            Interval::Hour => 3_600,
            Interval::Day => 86_400,
        }
    }

    /// The start of the bucket holding `t` (UTC, aligned to the epoch).
    pub fn bucket_of(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let secs = t.timestamp();
        let start = secs - secs.rem_euclid(self.seconds());
        DateTime::from_timestamp(start, 0).unwrap_or(t)
    }

    /// Every bucket start of `range`: from the bucket holding `from` up to before `to`.
    pub fn buckets(self, range: TimeRange) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = self.bucket_of(range.from);
        while t < range.to {
            out.push(t);
            t += chrono::Duration::seconds(self.seconds());
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountPoint {
    pub bucket: DateTime<Utc>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    pub day: NaiveDate,
    pub users: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveUsers {
    pub daily: Vec<DayCount>,
    /// Distinct users over every day of the range.
    pub distinct: u64,
}

/// Whose events to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    UserId(String),
    AnonymousId(String),
}

/// An alert raised by the fraud/anomaly processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub source: String,
    /// Rule name, e.g. `user_rate`, `ip_many_users`, `name_burst`, `clock_skew`.
    pub rule: String,
    /// The user key or IP the alert is about.
    pub subject: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Events (or distinct users) counted in the window.
    pub count: u64,
    pub first_event_id: String,
    pub last_event_id: String,
    /// When the processor raised it.
    pub created_at: DateTime<Utc>,
    /// Rule-specific facts (threshold, event name, …).
    #[serde(default)]
    pub details: serde_json::Value,
}
