//! The fraud/anomaly processor: consumer group [`GROUP`] (`fraud`), independent of the warehouse
//! group, raising alerts from per-subject sliding event-time windows ([`detector`] has the rules
//! and their exact semantics, [`config`] the thresholds). Operator documentation: `docs/fraud.md`.
//!
//! ## Exactly-once alerts
//! Each batch's new alerts and the group's positions are stored by
//! `Warehouse::commit_alerts` in one transaction (alerts unique by
//! `(source, rule, subject, window_start)`), then the runtime acknowledges the entries. The
//! processor's in-memory state tracks, per shard, the last entry id it applied to its windows:
//! - an entry at or below it is a redelivery of something already applied (a crash after commit,
//!   before ack; or the retry of a failed commit) and is skipped;
//! - alerts raised by applied entries stay pending until a commit succeeds, so a retried commit
//!   stores them with the positions;
//! - the processor declares `max_commit_concurrency() == 1`: batches commit in reading order.
//!
//! ## Restart: rebuild from the log
//! Before its first batch the processor
//! 1. reads the group's committed positions (`Warehouse::positions("fraud")`);
//! 2. re-reads, per shard, the entries appended during the last `rebuild_horizon` (the longest
//!    window + `rebuild_slack_secs`, by append time) up to and including the committed id
//!    (`EventLog::read_range`, no group involved) and replays them into the windows without
//!    evaluating any rule;
//! 3. for each source, before evaluating its first event, loads its committed alerts of the
//!    recent past (`Warehouse::alerts`) and restores the cooldowns they imply.
//!
//! The alerts table is thus the persisted part of the state (which subjects are in cooldown, and
//! until when), committed atomically with the positions; the windows' contents are re-read from
//! the log. A burst that spans the restart is counted whole (its early events are replayed), and
//! one that had already raised its alert is in cooldown, so it raises nothing twice; a replayed
//! alert that was committed anyway is deduplicated by its key.
//!
//! This needs the log to keep `rebuild_horizon` of entries below the fraud group's position:
//! the trim policy (`trim_keep` of the Redis and the embedded log) does; it also keeps what the
//! processor has read but not committed, which no pending entry protects (see below) — on the
//! embedded log the group's committed floor does as well (`EventLog::confirm`, called by the
//! runtime after each commit). One fraud consumer runs per log (its windows must see every
//! shard).
//!
//! ## Reading without acknowledgements
//! The positions committed with the alerts say what the processor has done, so the log's
//! pending bookkeeping would only repeat them: the processor reads with
//! `EventLog::read_new_unacked` (Redis `NOACK`: no pending entry per read, no `XACK`, a third of
//! the Redis CPU per entry) and, before its first read, rewinds the group to its committed
//! positions (`EventLog::rewind_group`), so whatever was read but not committed before a crash
//! or a stop is read again, in order. Entries the group still holds pending (from a version that
//! acknowledged) are acknowledged at that point: the rewind reads them again.
//!
//! ## Live push
//! After a commit, each alert is given to the [`AlertHook`] when one is attached; the binary
//! attaches `LiveHub::push_alert`, for the dashboard and `/v1/live`.

pub mod config;
pub mod detector;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sluice_core::log::{Entry, EventLog, LogError, RangeStart};
use sluice_core::warehouse::{ShardPosition, TimeRange, Warehouse};

use crate::runtime::{rewind_to_committed, ConsumerConfig, ProcessError, Processor, WorkerStats};

pub use config::FraudConfig;
pub use detector::{Detector, FraudStats, Signal};

/// Called with each alert after its commit (live push). Must not block.
pub type AlertHook = Arc<dyn Fn(sluice_core::warehouse::Alert) + Send + Sync>;

/// Consumer group of the fraud processor.
pub const GROUP: &str = "fraud";

/// Metric names (Prometheus, via the `metrics` facade; no labels).
pub const METRIC_SUBJECTS: &str = "sluice_fraud_subjects";
pub const METRIC_EVICTIONS_TOTAL: &str = "sluice_fraud_evictions_total";
pub const METRIC_ALERTS_TOTAL: &str = "sluice_fraud_alerts_total";

/// Entries per range read while rebuilding.
const REBUILD_PAGE: usize = 5_000;
/// Most committed alerts loaded per source to restore cooldowns.
const SEED_LIMIT: u32 = 1_000_000;

/// The mutable part, behind one async lock (batches are processed one at a time anyway).
struct State {
    detector: Detector,
    /// Whether the windows were rebuilt since start.
    ready: bool,
    /// Per shard: the last entry id applied to the windows.
    applied: BTreeMap<u32, (u64, u64)>,
    /// Per shard: the last committed id (what the warehouse has).
    committed: BTreeMap<u32, String>,
    /// Alerts raised by applied entries whose commit has not succeeded yet.
    pending: Vec<sluice_core::warehouse::Alert>,
    /// Sources whose cooldowns were loaded from the warehouse.
    seeded: HashSet<String>,
}

pub struct FraudProcessor {
    store: Arc<dyn Warehouse>,
    log: Arc<dyn EventLog>,
    config: FraudConfig,
    stats: Arc<FraudStats>,
    on_alert: Option<AlertHook>,
    state: tokio::sync::Mutex<State>,
}

impl FraudProcessor {
    pub fn new(
        store: Arc<dyn Warehouse>,
        log: Arc<dyn EventLog>,
        config: FraudConfig,
    ) -> FraudProcessor {
        let stats = Arc::new(FraudStats::default());
        FraudProcessor {
            state: tokio::sync::Mutex::new(State {
                detector: Detector::new(config.clone(), stats.clone()),
                ready: false,
                applied: BTreeMap::new(),
                committed: BTreeMap::new(),
                pending: Vec::new(),
                seeded: HashSet::new(),
            }),
            store,
            log,
            config,
            stats,
            on_alert: None,
        }
    }

    /// Call `hook` with every alert once it is committed (the binary pushes them to the live
    /// hub, `LiveHub::push_alert`, for the dashboard and `/v1/live`).
    pub fn with_alert_hook(mut self, hook: AlertHook) -> FraudProcessor {
        self.on_alert = Some(hook);
        self
    }

    pub fn stats(&self) -> Arc<FraudStats> {
        self.stats.clone()
    }

    /// Rebuild the windows from the log entries just before the committed positions.
    async fn rebuild(&self, st: &mut State) -> Result<(), ProcessError> {
        let positions = self
            .store
            .positions(GROUP)
            .await
            .map_err(|e| ProcessError::Retryable(format!("reading fraud positions: {e}")))?;
        st.detector = Detector::new(self.config.clone(), self.stats.clone());
        st.applied.clear();
        st.committed.clear();
        st.pending.clear();
        st.seeded.clear();
        let horizon = u64::try_from(self.config.rebuild_horizon().as_millis()).unwrap_or(u64::MAX);
        let started = std::time::Instant::now();
        let mut replayed = 0u64;
        for p in &positions {
            let Some(last) = parse_id(&p.last_id) else {
                continue;
            };
            st.applied.insert(p.shard, last);
            st.committed.insert(p.shard, p.last_id.clone());
            let mut after: Option<String> = None;
            loop {
                let start = match &after {
                    Some(id) => RangeStart::After(id),
                    None => RangeStart::AppendedSinceMs(last.0.saturating_sub(horizon)),
                };
                let page = match self
                    .log
                    .read_range(p.shard, start, &p.last_id, REBUILD_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(e @ LogError::Other(_)) => {
                        // A backend without range reads: start with empty windows rather than
                        // never. Alerts spanning this restart may be missed; none is raised twice
                        // (cooldowns come from the warehouse).
                        tracing::warn!(error = %e, shard = p.shard, "cannot re-read the log to rebuild fraud windows; starting this shard empty");
                        break;
                    }
                    Err(e) => {
                        return Err(ProcessError::Retryable(format!(
                            "re-reading the log to rebuild fraud windows: {e}"
                        )))
                    }
                };
                let full = page.len() == REBUILD_PAGE;
                for entry in &page {
                    if let Ok(event) = Signal::from_json(&entry.payload) {
                        st.detector.replay(&event);
                        replayed += 1;
                    }
                }
                match page.last() {
                    Some(e) if full => after = Some(e.id.clone()),
                    _ => break,
                }
            }
        }
        st.detector.maintain();
        self.stats.rebuilt.fetch_add(replayed, Ordering::Relaxed);
        tracing::info!(
            events = replayed,
            subjects = st.detector.subjects(),
            took_ms = started.elapsed().as_millis() as u64,
            "fraud windows rebuilt from the log"
        );
        st.ready = true;
        Ok(())
    }

    /// Restore the cooldowns of `source` from its committed alerts (once per source per start).
    async fn seed(
        &self,
        st: &mut State,
        source: &str,
        earliest: DateTime<Utc>,
    ) -> Result<(), ProcessError> {
        let lookback = chrono::Duration::from_std(self.config.cooldown_lookback())
            .unwrap_or(chrono::Duration::days(1));
        let from = earliest - lookback;
        let to = DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let alerts = self
            .store
            .alerts(source, TimeRange { from, to }, SEED_LIMIT)
            .await
            .map_err(|e| {
                ProcessError::Retryable(format!("loading committed alerts of {source}: {e}"))
            })?;
        if alerts.len() as u64 >= u64::from(SEED_LIMIT) {
            tracing::warn!(
                source,
                "more committed alerts than loaded; older cooldowns not restored"
            );
        }
        for a in &alerts {
            st.detector.seed(a);
        }
        st.seeded.insert(source.to_owned());
        Ok(())
    }
}

/// A `ms-seq` id (Redis and embedded) as a comparable pair; a plain number as `(n, 0)`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

#[async_trait]
impl Processor for FraudProcessor {
    type Item = Signal;

    fn group(&self) -> &str {
        GROUP
    }

    fn decode(&self, payload: &[u8]) -> Result<Signal, String> {
        Signal::from_json(payload).map_err(|e| e.to_string())
    }

    fn max_commit_concurrency(&self) -> usize {
        1
    }

    fn keeps_own_positions(&self) -> bool {
        true
    }

    /// Rewind the group to the committed positions ([`rewind_to_committed`]).
    async fn prepare(&self, config: &ConsumerConfig) -> Result<(), ProcessError> {
        rewind_to_committed(self.log.as_ref(), self.store.as_ref(), GROUP, config).await
    }

    async fn process(
        &self,
        entries: &[Entry],
        events: &[Signal],
        positions: &[ShardPosition],
        stats: &WorkerStats,
    ) -> Result<(), ProcessError> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        if !st.ready {
            self.rebuild(st).await?;
        }

        // Which entries are new to the windows.
        let mut fresh: Vec<usize> = Vec::with_capacity(events.len());
        let mut applied = st.applied.clone();
        for (i, entry) in entries.iter().enumerate() {
            let Some(id) = parse_id(&entry.id) else {
                continue;
            };
            match applied.get(&entry.shard) {
                Some(last) if id <= *last => {}
                _ => {
                    applied.insert(entry.shard, id);
                    fresh.push(i);
                }
            }
        }
        let skipped = (events.len() - fresh.len()) as u64;
        if skipped > 0 {
            self.stats.redelivered.fetch_add(skipped, Ordering::Relaxed);
            stats.duplicates.fetch_add(skipped, Ordering::Relaxed);
        }

        // Cooldowns of sources not seen since start, before evaluating their events.
        let mut earliest: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        for &i in &fresh {
            let e = &events[i];
            if !st.seeded.contains(&e.source) {
                let t = e.timestamp.min(e.received_at);
                earliest
                    .entry(e.source.as_str())
                    .and_modify(|x| *x = (*x).min(t))
                    .or_insert(t);
            }
        }
        for (source, t) in earliest {
            self.seed(st, source, t).await?;
        }

        let now = Utc::now();
        for &i in &fresh {
            st.detector.observe(&events[i], now, &mut st.pending);
        }
        st.applied = applied;
        st.detector.maintain();

        // Positions never move back (claimed or redelivered entries may be older).
        let mut merged = Vec::with_capacity(positions.len());
        for p in positions {
            let newer = match st.committed.get(&p.shard) {
                Some(c) => parse_id(&p.last_id) > parse_id(c),
                None => true,
            };
            if newer {
                merged.push(p.clone());
            }
        }

        match self.store.commit_alerts(GROUP, &st.pending, &merged).await {
            Ok(new) => {
                for p in merged {
                    st.committed.insert(p.shard, p.last_id);
                }
                self.stats.alerts.fetch_add(new, Ordering::Relaxed);
                metrics::counter!(METRIC_ALERTS_TOTAL).increment(new);
                let alerts = std::mem::take(&mut st.pending);
                if let Some(hook) = &self.on_alert {
                    for a in alerts {
                        hook(a);
                    }
                }
                metrics::gauge!(METRIC_SUBJECTS).set(st.detector.subjects() as f64);
                metrics::counter!(METRIC_EVICTIONS_TOTAL)
                    .absolute(self.stats.evicted.load(Ordering::Relaxed));
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(ProcessError::Retryable(e.to_string())),
            Err(e) => {
                // Not retryable: keeping the alerts would fail every later batch too.
                tracing::error!(error = %e, dropped = st.pending.len(), "the warehouse refused fraud alerts; dropping them");
                st.pending.clear();
                Err(ProcessError::Rejected(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests;
