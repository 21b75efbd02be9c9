//! The warehouse processor: each batch goes to `Warehouse::commit_batch`, which stores new events,
//! updates the rollups and records the group's positions in one transaction. Deduplication by
//! `(source, event_id)` inside that transaction makes redelivery harmless, so the runtime's
//! "commit, then ack" gives exactly-once effects.
//!
//! Where this process is the group's only consumer (the embedded log: one process per data
//! directory), [`WarehouseProcessor::keeping_own_positions`] drops the log's per-entry pending
//! bookkeeping: the positions committed with the events say what is done, the group is read
//! without acknowledgements, batches commit in order, and at start the group is rewound to the
//! committed positions (what was read but not committed is read again, and deduplicated if it
//! was in fact stored). The log's committed floor keeps trimming below those positions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_core::log::{Entry, EventLog};
use sluice_core::metrics as names;
use sluice_core::warehouse::{ShardPosition, Warehouse};
use sluice_core::Event;

use crate::runtime::{rewind_to_committed, ConsumerConfig, ProcessError, Processor, WorkerStats};

/// Consumer group of the warehouse processor.
pub const GROUP: &str = "warehouse";

pub struct WarehouseProcessor {
    store: Arc<dyn Warehouse>,
    log: Option<Arc<dyn EventLog>>,
}

impl WarehouseProcessor {
    pub fn new(store: Arc<dyn Warehouse>) -> WarehouseProcessor {
        WarehouseProcessor { store, log: None }
    }

    /// Keep the group's positions in the warehouse only (see the module docs). Only for a log
    /// this worker is the group's sole consumer of: other consumers of the group would neither
    /// see its reads as pending nor be rewound.
    pub fn keeping_own_positions(mut self, log: Arc<dyn EventLog>) -> WarehouseProcessor {
        self.log = Some(log);
        self
    }
}

#[async_trait]
impl Processor for WarehouseProcessor {
    type Item = Event;

    fn group(&self) -> &str {
        GROUP
    }

    fn decode(&self, payload: &[u8]) -> Result<Event, String> {
        Event::from_json(payload).map_err(|e| e.to_string())
    }

    fn keeps_own_positions(&self) -> bool {
        self.log.is_some()
    }

    /// In order when the positions are the warehouse's alone: a later batch committed before
    /// an earlier one would move them past entries not yet stored.
    fn max_commit_concurrency(&self) -> usize {
        if self.log.is_some() {
            1
        } else {
            usize::MAX
        }
    }

    async fn prepare(&self, config: &ConsumerConfig) -> Result<(), ProcessError> {
        match &self.log {
            Some(log) => {
                rewind_to_committed(log.as_ref(), self.store.as_ref(), GROUP, config).await
            }
            None => Ok(()),
        }
    }

    async fn process(
        &self,
        _entries: &[Entry],
        events: &[Event],
        positions: &[ShardPosition],
        stats: &WorkerStats,
    ) -> Result<(), ProcessError> {
        let outcome = self
            .store
            .commit_batch(GROUP, events, positions)
            .await
            .map_err(|e| {
                if e.is_retryable() {
                    ProcessError::Retryable(e.to_string())
                } else {
                    ProcessError::Rejected(e.to_string())
                }
            })?;
        stats
            .duplicates
            .fetch_add(outcome.duplicates, Ordering::Relaxed);
        metrics::counter!(names::WORKER_DEDUPE_HITS_TOTAL, "group" => GROUP)
            .increment(outcome.duplicates);
        Ok(())
    }
}
