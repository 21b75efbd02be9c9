//! The `Warehouse` and `KeyStore` traits: where processed events, rollups, consumer offsets and
//! API keys live.

use async_trait::async_trait;

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
}
