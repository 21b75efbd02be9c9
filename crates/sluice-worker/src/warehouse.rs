//! The warehouse processor: each batch goes to `Warehouse::commit_batch`, which stores new events,
//! updates the rollups and records the group's positions in one transaction. Deduplication by
//! `(source, event_id)` inside that transaction makes redelivery harmless, so the runtime's
//! "commit, then ack" gives exactly-once effects.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_core::log::Entry;
use sluice_core::metrics as names;
use sluice_core::warehouse::{ShardPosition, Warehouse};
use sluice_core::Event;

use crate::runtime::{ProcessError, Processor, WorkerStats};

/// Consumer group of the warehouse processor.
pub const GROUP: &str = "warehouse";

pub struct WarehouseProcessor {
    store: Arc<dyn Warehouse>,
}

impl WarehouseProcessor {
    pub fn new(store: Arc<dyn Warehouse>) -> WarehouseProcessor {
        WarehouseProcessor { store }
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
