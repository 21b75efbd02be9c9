//! `sluice bench --verify`: after the load, prove what the warehouse holds.
//!
//! While the load runs, a sample of acknowledged events (their ids and ack instants) streams into
//! a [`Freshness`] poller that asks the warehouse which of them are visible yet (every 50 ms), so
//! `freshness_ms` is ack → visible, to within the poll period. After the load, [`settle`] waits
//! until the warehouse holds as many distinct events of the run as were acked, then counts rows
//! and distinct ids of the run: `duplicates = rows − distinct`, and `missing` = acked events not
//! stored (events of failed requests that landed anyway are looked up and not counted as acked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sluice_core::keys::hash_key;
use sluice_core::warehouse::Warehouse;
use tokio::sync::{mpsc, watch};

const POLL: Duration = Duration::from_millis(50);

/// The source a write key belongs to, read from the key store.
pub async fn source_of(store: &dyn Warehouse, write_key: &str) -> anyhow::Result<String> {
    let hash = hash_key(write_key);
    let keys = store
        .list_keys()
        .await
        .context("listing keys to find the write key's source")?;
    keys.into_iter()
        .find(|k| k.hash == hash && k.revoked_at.is_none())
        .map(|k| k.source)
        .context("the write key is not an active key of this warehouse (--store)")
}

/// One acknowledged event whose arrival in the warehouse is timed.
pub struct Sample {
    pub id: String,
    pub acked_at: Instant,
    /// Before the event's `timestamp` was written: its stored time is at or after this.
    pub generated_at: DateTime<Utc>,
}

/// Polls the warehouse for sampled events until each is visible.
pub struct Freshness {
    histogram: Histogram<u64>,
    unseen: usize,
}

impl Freshness {
    /// Run until `done` is true and every sample is seen, or `timeout` after `done`.
    pub async fn run(
        store: Arc<dyn Warehouse>,
        source: String,
        mut samples: mpsc::Receiver<Sample>,
        mut done: watch::Receiver<bool>,
        timeout: Duration,
    ) -> Freshness {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        let mut pending: Vec<Sample> = Vec::new();
        let mut done_at: Option<Instant> = None;
        loop {
            while let Ok(s) = samples.try_recv() {
                pending.push(s);
            }
            if done_at.is_none() && *done.borrow_and_update() {
                done_at = Some(Instant::now());
            }
            if let Some(at) = done_at {
                if pending.is_empty() || at.elapsed() > timeout {
                    break;
                }
            }
            for chunk in pending.chunks_mut(2_000) {
                let ids: Vec<String> = chunk.iter().map(|s| s.id.clone()).collect();
                // A second of slack: the stored time is the timestamp to the millisecond.
                let since = chunk
                    .iter()
                    .map(|s| s.generated_at)
                    .min()
                    .unwrap_or_default()
                    - chrono::Duration::seconds(1);
                let Ok(found) = store.stored_event_ids_since(&source, &ids, since).await else {
                    continue;
                };
                let now = Instant::now();
                let found: std::collections::HashSet<String> = found.into_iter().collect();
                for s in chunk.iter_mut() {
                    if found.contains(s.id.as_str()) {
                        let _ = histogram
                            .record(now.duration_since(s.acked_at).as_millis().max(1) as u64);
                        s.id.clear();
                    }
                }
            }
            pending.retain(|s| !s.id.is_empty());
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = done.changed(), if done_at.is_none() => {}
            }
        }
        Freshness {
            histogram,
            unseen: pending.len(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "p50": self.histogram.value_at_quantile(0.50),
            "p99": self.histogram.value_at_quantile(0.99),
            "max": self.histogram.max(),
            "samples": self.histogram.len(),
            "unseen_samples": self.unseen,
        })
    }
}

/// What the warehouse holds of a run.
pub struct Settled {
    pub landed: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unacked_landed: u64,
}

/// Wait until the warehouse holds every acked event of the run (or `timeout`), then count.
/// The answer is the first count that finds them all, or else the first one begun after the
/// deadline: counting tens of millions of events can take minutes, and a count begun before the
/// deadline shows the warehouse as it was then.
pub async fn settle(
    store: &dyn Warehouse,
    source: &str,
    run_id: &str,
    acked: u64,
    unacked: &[String],
    timeout: Duration,
) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let prefix = format!("{run_id}-");
    // One look-up of all of them: on an embedded warehouse opened beside `serve` each look-up
    // is a scan of the events (the backends split long lists themselves).
    let unacked_stored = || async {
        Ok::<u64, anyhow::Error>(
            store
                .stored_event_ids(source, unacked)
                .await
                .context("looking up unacked events")?
                .len() as u64,
        )
    };
    let unacked_landed = unacked_stored().await?;
    loop {
        let past_deadline = started.elapsed() > timeout;
        let (rows, distinct) = store
            .count_by_id_prefix(source, &prefix)
            .await
            .context("counting the run's events")?;
        // Unacked events may still land late; recount them at the end.
        if distinct >= acked + unacked_landed || past_deadline {
            let late_unacked = unacked_stored().await?;
            let landed_acked = distinct.saturating_sub(late_unacked);
            return Ok(Settled {
                landed: distinct,
                missing: acked.saturating_sub(landed_acked),
                duplicates: rows - distinct,
                unacked_landed: late_unacked,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
