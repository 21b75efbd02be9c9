//! The live aggregator: per-second counts of what the log receives, for `GET /v1/live` and the
//! dashboard. Every API process runs one; it tails the log without a consumer group
//! (`EventLog::tail`), so each instance sees every new event and none of them moves any
//! processor's position. Over the embedded log, which only its own process writes to,
//! `sluice serve` runs it fed instead ([`LiveHub::spawn_fed`]): the API records each request's
//! events once their append succeeded, and nothing is read back from the log.
//!
//! ```text
//!  tailer task ── tail(cursor) ─▶ decode source/kind/name ─▶ [current second, Mutex]
//!  ticker task ── every wall-clock second: swap the current second out, fold it into the
//!                 5-minute window, publish an Arc<Snapshot> on a watch channel
//!  lag task    ── every few seconds: log.lag() → backlog/pending per group (+ gauges)
//! ```
//!
//! Seconds are those of this process's clock when the tailer saw the events (arrival time), so a
//! published second is final: every event is counted in exactly one published second.
//!
//! Memory is bounded whatever the cardinality: per source and second at most
//! `max_names_per_second` distinct names are counted (later new names go to [`OTHER`]), and a
//! closed second keeps only its `top_names` names plus [`OTHER`]; at most `max_sources` sources
//! are tracked (events of further sources are counted in the totals of no source, only in
//! [`LiveStats::untracked`]); at most `max_alerts` alerts are kept.
//!
//! The tasks hold only a weak reference to the hub: they end on their own once the last
//! [`LiveHub`] handle is dropped (the server stopped), and a subscriber's `changed()` then fails.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sluice_core::log::{EventLog, GroupLag, TailCursor};
use sluice_core::metrics as names;
use sluice_core::warehouse::Alert;
use sluice_core::Event;
use tokio::sync::watch;

/// The name under which counts beyond the top names are summed.
pub const OTHER: &str = "(other)";

/// How the aggregator counts. `LiveConfig::default()` is what the binary uses.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Seconds of history kept and sent (`last_5m`).
    pub window_secs: usize,
    /// Names kept per closed second and per window summary; the rest is summed as [`OTHER`].
    pub top_names: usize,
    /// Distinct names counted per source within one second before new ones go to [`OTHER`].
    pub max_names_per_second: usize,
    /// Sources tracked at once.
    pub max_sources: usize,
    /// Alerts kept (newest first).
    pub max_alerts: usize,
    /// Most entries per tail read.
    pub tail_batch: usize,
    /// Longest wait of one tail read.
    pub tail_block: Duration,
    /// How often consumer-group lag is polled.
    pub lag_every: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            window_secs: 300,
            top_names: 20,
            max_names_per_second: 1_000,
            max_sources: 256,
            max_alerts: 50,
            tail_batch: 2_000,
            tail_block: Duration::from_millis(500),
            lag_every: Duration::from_secs(3),
        }
    }
}

/// One name and its count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCount {
    pub name: Arc<str>,
    pub count: u64,
}

/// One closed second of one source.
#[derive(Debug, Clone, Default)]
struct SecondCounts {
    total: u64,
    /// Top names by count (ties by name), then [`OTHER`] when anything was left out.
    by_name: Vec<NameCount>,
}

/// What one source looks like at a snapshot.
#[derive(Debug, Clone)]
pub struct SourceView {
    /// Events in the second just closed.
    pub total: u64,
    /// The second's top names (+ [`OTHER`]); the counts add up to `total`.
    pub by_name: Vec<NameCount>,
    /// Events per second over the window, oldest first; the last one is `total`.
    pub last_5m: Arc<[u64]>,
    /// Events over the whole window.
    pub total_5m: u64,
    /// Top names over the window (+ [`OTHER`]); the counts add up to `total_5m`.
    pub by_name_5m: Vec<NameCount>,
}

/// Lag of one consumer group, as last polled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupBacklog {
    pub backlog: u64,
    pub pending: u64,
}

/// Everything published once per second. Cheap to share (`Arc`), filtered per client.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The second these counts are for (Unix seconds); 0 before the first tick.
    pub ts: i64,
    /// Seconds in the window.
    pub window_secs: usize,
    /// Sources with events in the window.
    pub sources: HashMap<String, SourceView>,
    /// Consumer-group lag by group, as last polled (empty until then or when polling fails).
    pub lag: BTreeMap<String, GroupBacklog>,
    /// The latest alerts, newest first.
    pub alerts: Vec<Alert>,
}

/// The JSON message `/v1/live` sends for one source and one second.
#[derive(Debug, Clone, Serialize)]
pub struct LiveMessage<'a> {
    pub ts: i64,
    pub total: u64,
    pub by_name: &'a [NameCount],
    pub total_5m: u64,
    pub by_name_5m: &'a [NameCount],
    /// Per-second totals over the window, oldest first, ending with `ts`: sent in a client's
    /// first message and after any second it missed; otherwise the client appends `total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_5m: Option<&'a [u64]>,
    /// Backlog per consumer group.
    pub backlog: BTreeMap<&'a str, u64>,
    /// Pending (delivered, not acknowledged) per consumer group.
    pub pending: BTreeMap<&'a str, u64>,
    /// The latest alerts of this source, newest first.
    pub alerts: Vec<&'a Alert>,
}

impl Snapshot {
    /// The message for `source`, with the window's per-second history when `with_history`.
    pub fn message<'a>(&'a self, source: &str, with_history: bool) -> LiveMessage<'a> {
        let view = self.sources.get(source);
        let empty: &'a [u64] = &[];
        let zeros;
        let history = match view {
            Some(v) => &v.last_5m[..],
            None => {
                zeros = ZEROS.get(..self.window_secs).unwrap_or(empty);
                zeros
            }
        };
        LiveMessage {
            ts: self.ts,
            total: view.map_or(0, |v| v.total),
            by_name: view.map_or(&[], |v| &v.by_name),
            total_5m: view.map_or(0, |v| v.total_5m),
            by_name_5m: view.map_or(&[], |v| &v.by_name_5m),
            last_5m: with_history.then_some(history),
            backlog: self
                .lag
                .iter()
                .map(|(g, l)| (g.as_str(), l.backlog))
                .collect(),
            pending: self
                .lag
                .iter()
                .map(|(g, l)| (g.as_str(), l.pending))
                .collect(),
            alerts: self.alerts.iter().filter(|a| a.source == source).collect(),
        }
    }
}

/// A window of zeros for sources with no events (windows longer than this send a shorter one).
static ZEROS: [u64; 3600] = [0; 3600];

/// Counters of the aggregator, for tests and operators.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Events counted.
    pub events: AtomicU64,
    /// Entries whose payload could not be decoded (ignored).
    pub undecodable: AtomicU64,
    /// Events of sources beyond `max_sources` (counted nowhere else).
    pub untracked: AtomicU64,
    /// Failed tail reads.
    pub tail_errors: AtomicU64,
    /// Seconds published.
    pub ticks: AtomicU64,
}

/// A request's events counted by name, for [`LiveHub::record`] after their append.
#[derive(Debug, Default)]
pub struct Tally(Vec<(String, u64)>);

/// The second being counted, per source.
#[derive(Debug, Default)]
struct Current {
    sources: HashMap<String, CurrentSource>,
}

#[derive(Debug, Default)]
struct CurrentSource {
    total: u64,
    names: HashMap<Arc<str>, u64>,
    other: u64,
}

/// Only the fields the aggregator needs from the canonical event JSON.
#[derive(Deserialize)]
struct Lite<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

struct Shared {
    config: LiveConfig,
    /// Counts what the API records instead of tailing the log.
    fed: bool,
    current: Mutex<Current>,
    alerts: Mutex<VecDeque<Alert>>,
    lag: Mutex<BTreeMap<String, GroupBacklog>>,
    tx: watch::Sender<Arc<Snapshot>>,
    clients: AtomicUsize,
    stats: LiveStats,
}

/// Handle to the live aggregator of this process. Cheap to clone; the aggregator's tasks stop
/// once every handle is dropped.
#[derive(Clone)]
pub struct LiveHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("clients", &self.clients())
            .finish_non_exhaustive()
    }
}

impl LiveHub {
    /// Start tailing `log` from its end and publishing a snapshot every second. Must be called
    /// inside a tokio runtime.
    pub fn spawn(log: Arc<dyn EventLog>, config: LiveConfig) -> LiveHub {
        let shared = Shared::new(config, false);
        tokio::spawn(tailer(Arc::downgrade(&shared), log.clone()));
        LiveHub::start(shared, log)
    }

    /// Like [`LiveHub::spawn`], but counting only what is given to [`LiveHub::record`] instead
    /// of tailing the log: for a log this process alone writes to (the embedded log), where the
    /// API records what it appended and no entry has to be read back and decoded.
    pub fn spawn_fed(log: Arc<dyn EventLog>, config: LiveConfig) -> LiveHub {
        let shared = Shared::new(config, true);
        LiveHub::start(shared, log)
    }

    fn start(shared: Arc<Shared>, log: Arc<dyn EventLog>) -> LiveHub {
        tokio::spawn(ticker(Arc::downgrade(&shared)));
        tokio::spawn(lag_poller(Arc::downgrade(&shared), log));
        LiveHub { shared }
    }

    /// What a fed hub will count of `events` once they are appended: one entry per distinct
    /// name (the warehouse's rollup name: the event's name, else its kind), so that the events
    /// themselves need not outlive the append. Empty for a tailing hub (it reads them back).
    pub fn tally(&self, events: &[Event]) -> Tally {
        let mut names: Vec<(String, u64)> = Vec::new();
        if self.shared.fed {
            for e in events {
                let name = e.name.as_deref().unwrap_or(e.kind.as_str());
                match names.iter_mut().find(|(n, _)| n == name) {
                    Some((_, count)) => *count += 1,
                    None => names.push((name.to_owned(), 1)),
                }
            }
        }
        Tally(names)
    }

    /// Count a tally of `source`'s events that were just durably appended.
    pub fn record(&self, source: &str, tally: Tally) {
        self.shared
            .count(tally.0.iter().map(|(name, n)| (source, name.as_str(), *n)));
    }

    /// A receiver of the per-second snapshots (it sees only the latest: a slow reader skips).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.tx.subscribe()
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.shared.tx.borrow().clone()
    }

    /// Show an alert live (the fraud processor's hook); the newest `max_alerts` are kept and go
    /// out with the next second's snapshot.
    pub fn push_alert(&self, alert: Alert) {
        metrics::counter!(names::ALERTS_TOTAL).increment(1);
        if let Ok(mut alerts) = self.shared.alerts.lock() {
            alerts.push_front(alert);
            alerts.truncate(self.shared.config.max_alerts);
        }
    }

    /// Count a connected live client until the guard is dropped.
    pub fn client_guard(&self) -> ClientGuard {
        let n = self.shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(names::LIVE_CLIENTS).set(n as f64);
        ClientGuard {
            shared: self.shared.clone(),
        }
    }

    /// Live clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &LiveStats {
        &self.shared.stats
    }

    pub fn config(&self) -> &LiveConfig {
        &self.shared.config
    }
}

/// Keeps a live client counted; see [`LiveHub::client_guard`].
pub struct ClientGuard {
    shared: Arc<Shared>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let n = self
            .shared
            .clients
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(names::LIVE_CLIENTS).set(n as f64);
    }
}

impl Shared {
    /// Count decoded entries into the current second.
    fn new(config: LiveConfig, fed: bool) -> Arc<Shared> {
        let (tx, _) = watch::channel(Arc::new(Snapshot {
            window_secs: config.window_secs,
            ..Snapshot::default()
        }));
        Arc::new(Shared {
            config,
            fed,
            current: Mutex::new(Current::default()),
            alerts: Mutex::new(VecDeque::new()),
            lag: Mutex::new(BTreeMap::new()),
            tx,
            clients: AtomicUsize::new(0),
            stats: LiveStats::default(),
        })
    }

    /// Count log payloads (canonical event JSON) read by the tailer.
    fn count_payloads(&self, payloads: impl Iterator<Item = bytes::Bytes>) {
        let payloads: Vec<bytes::Bytes> = payloads.collect();
        let lites: Vec<Lite<'_>> = payloads
            .iter()
            .filter_map(|p| match serde_json::from_slice::<Lite<'_>>(p) {
                Ok(lite) => Some(lite),
                Err(_) => {
                    self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    None
                }
            })
            .collect();
        // The warehouse's rollup name rule: the name, else the kind.
        self.count(
            lites
                .iter()
                .map(|l| (l.source.as_ref(), l.name.as_deref().unwrap_or(&l.kind), 1)),
        );
    }

    /// Count events by `(source, name)` into the current second.
    /// Count `n` events of `(source, name)` into the current second, for each item.
    fn count<'a>(&self, events: impl Iterator<Item = (&'a str, &'a str, u64)>) {
        let config = &self.config;
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        let mut counted = 0u64;
        for (source, name, n) in events {
            let tracked = current.sources.len();
            let source = match current.sources.get_mut(source) {
                Some(s) => s,
                None if tracked < config.max_sources => {
                    current.sources.entry(source.to_owned()).or_default()
                }
                None => {
                    self.stats.untracked.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
            };
            counted += n;
            source.total += n;
            if let Some(count) = source.names.get_mut(name) {
                *count += n;
            } else if source.names.len() < config.max_names_per_second {
                source.names.insert(Arc::from(name), n);
            } else {
                source.other += n;
            }
        }
        drop(current);
        self.stats.events.fetch_add(counted, Ordering::Relaxed);
        metrics::counter!(names::LIVE_EVENTS_TOTAL).increment(counted);
    }

    fn take_current(&self) -> Current {
        self.current
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// Top `n` by count (ties by name), the rest summed as [`OTHER`].
fn top(
    counts: impl IntoIterator<Item = (Arc<str>, u64)>,
    extra_other: u64,
    n: usize,
) -> Vec<NameCount> {
    let mut all: Vec<NameCount> = counts
        .into_iter()
        .filter(|(_, c)| *c > 0)
        .map(|(name, count)| NameCount { name, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    let mut other = extra_other;
    if all.len() > n {
        other += all.drain(n..).map(|c| c.count).sum::<u64>();
    }
    if other > 0 {
        // An event really named like the bucket merges into it.
        if let Some(o) = all.iter_mut().find(|c| &*c.name == OTHER) {
            o.count += other;
        } else {
            all.push(NameCount {
                name: Arc::from(OTHER),
                count: other,
            });
        }
    }
    all
}

/// The window of one source: per-second history and running per-name sums.
#[derive(Debug)]
struct SourceWindow {
    seconds: VecDeque<SecondCounts>,
    total: u64,
    names: HashMap<Arc<str>, u64>,
}

impl SourceWindow {
    fn new(window: usize) -> SourceWindow {
        SourceWindow {
            seconds: std::iter::repeat_with(SecondCounts::default)
                .take(window)
                .collect(),
            total: 0,
            names: HashMap::new(),
        }
    }

    fn push(&mut self, second: SecondCounts, window: usize) {
        self.total += second.total;
        for c in &second.by_name {
            *self.names.entry(c.name.clone()).or_default() += c.count;
        }
        self.seconds.push_back(second);
        while self.seconds.len() > window {
            if let Some(old) = self.seconds.pop_front() {
                self.total -= old.total;
                for c in &old.by_name {
                    if let Some(n) = self.names.get_mut(&c.name) {
                        *n -= c.count;
                        if *n == 0 {
                            self.names.remove(&c.name);
                        }
                    }
                }
            }
        }
    }
}

/// The ticker's state: the window of every source.
struct Window {
    size: usize,
    sources: HashMap<String, SourceWindow>,
}

impl Window {
    /// Fold one closed second (and `gap` empty seconds before it) into the window.
    fn close(&mut self, current: Current, gap: usize, top_names: usize, max_sources: usize) {
        let gap = gap.min(self.size);
        for w in self.sources.values_mut() {
            for _ in 0..gap {
                w.push(SecondCounts::default(), self.size);
            }
        }
        let mut seen: HashMap<String, SecondCounts> = current
            .sources
            .into_iter()
            .map(|(source, c)| {
                let by_name = top(c.names, c.other, top_names);
                (
                    source,
                    SecondCounts {
                        total: c.total,
                        by_name,
                    },
                )
            })
            .collect();
        for (source, w) in self.sources.iter_mut() {
            let second = seen.remove(source).unwrap_or_default();
            w.push(second, self.size);
        }
        for (source, second) in seen {
            if self.sources.len() >= max_sources {
                break;
            }
            let mut w = SourceWindow::new(self.size - 1);
            w.push(second, self.size);
            self.sources.insert(source, w);
        }
        self.sources.retain(|_, w| w.total > 0);
    }

    fn views(&self, top_names: usize) -> HashMap<String, SourceView> {
        self.sources
            .iter()
            .map(|(source, w)| {
                let last = w.seconds.back().cloned().unwrap_or_default();
                let view = SourceView {
                    total: last.total,
                    by_name: last.by_name,
                    last_5m: w.seconds.iter().map(|s| s.total).collect(),
                    total_5m: w.total,
                    by_name_5m: top(w.names.iter().map(|(n, c)| (n.clone(), *c)), 0, top_names),
                };
                (source.clone(), view)
            })
            .collect()
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Publish one snapshot per wall-clock second.
async fn ticker(shared: Weak<Shared>) {
    let Some(size) = shared.upgrade().map(|s| s.config.window_secs.max(1)) else {
        return;
    };
    let mut window = Window {
        size,
        sources: HashMap::new(),
    };
    let until_next = 1000 - unix_millis().rem_euclid(1000);
    let start = tokio::time::Instant::now() + Duration::from_millis(until_next as u64);
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_ts: Option<i64> = None;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // The second that just ended (rounded: a tick may fire a little early or late).
        let ts = (unix_millis() + 500).div_euclid(1000) - 1;
        if last_ts.is_some_and(|last| ts <= last) {
            continue;
        }
        let gap = last_ts.map_or(0, |last| usize::try_from(ts - last - 1).unwrap_or(0));
        last_ts = Some(ts);
        let config = &shared.config;
        window.close(
            shared.take_current(),
            gap,
            config.top_names,
            config.max_sources,
        );
        let snapshot = Snapshot {
            ts,
            window_secs: size,
            sources: window.views(config.top_names),
            lag: shared.lag.lock().map(|l| l.clone()).unwrap_or_default(),
            alerts: shared
                .alerts
                .lock()
                .map(|a| a.iter().cloned().collect())
                .unwrap_or_default(),
        };
        shared.tx.send_replace(Arc::new(snapshot));
        shared.stats.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Tail the log from its end for as long as the hub lives.
async fn tailer(shared: Weak<Shared>, log: Arc<dyn EventLog>) {
    let mut cursor = TailCursor::default();
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let Some((batch, block)) = shared
            .upgrade()
            .map(|s| (s.config.tail_batch, s.config.tail_block))
        else {
            return;
        };
        match log.tail(&cursor, batch, block).await {
            Ok((entries, next)) => {
                if failing_since.take().is_some() {
                    tracing::info!("live aggregator: tailing the log again");
                }
                cursor = next;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.count_payloads(entries.into_iter().map(|e| e.payload));
            }
            Err(e) => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.stats.tail_errors.fetch_add(1, Ordering::Relaxed);
                // Warn once per outage (and every minute while it lasts), not once per retry.
                let now = std::time::Instant::now();
                match failing_since {
                    None => {
                        tracing::warn!(error = %e, "live aggregator: tailing the log failed; retrying");
                        failing_since = Some(now);
                    }
                    Some(since) if now.duration_since(since) > Duration::from_secs(60) => {
                        tracing::warn!(error = %e, "live aggregator: tailing the log still fails");
                        failing_since = Some(now);
                    }
                    Some(_) => {}
                }
                drop(shared);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Poll consumer-group lag every `lag_every`, for the live view and the backlog gauges.
async fn lag_poller(shared: Weak<Shared>, log: Arc<dyn EventLog>) {
    let Some(every) = shared.upgrade().map(|s| s.config.lag_every) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        if shared.strong_count() == 0 {
            return;
        }
        let lags: Vec<GroupLag> = match log.lag().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "live aggregator: polling the log lag failed");
                continue;
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let view: BTreeMap<String, GroupBacklog> = lags
            .iter()
            .map(|l| {
                (
                    l.group.clone(),
                    GroupBacklog {
                        backlog: l.backlog(),
                        pending: l.pending,
                    },
                )
            })
            .collect();
        for (group, l) in &view {
            metrics::gauge!(names::LOG_BACKLOG, "group" => group.clone()).set(l.backlog as f64);
            metrics::gauge!(names::LOG_PENDING, "group" => group.clone()).set(l.pending as f64);
        }
        // A group that disappeared reads 0 rather than its last value forever.
        for gone in known.iter().filter(|g| !view.contains_key(*g)) {
            metrics::gauge!(names::LOG_BACKLOG, "group" => gone.clone()).set(0.0);
            metrics::gauge!(names::LOG_PENDING, "group" => gone.clone()).set(0.0);
        }
        known = view.keys().cloned().collect();
        if let Ok(mut lag) = shared.lag.lock() {
            *lag = view;
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn event(source: &str, name: Option<&str>) -> bytes::Bytes {
        let mut v = serde_json::json!({"source": source, "kind": "track", "event_id": "x"});
        if let Some(n) = name {
            v["name"] = n.into();
        }
        serde_json::to_vec(&v).unwrap_or_default().into()
    }

    fn shared(config: LiveConfig) -> Arc<Shared> {
        Shared::new(config, false)
    }

    #[test]
    fn top_keeps_n_and_sums_the_rest() {
        let counts = [("a", 5), ("b", 9), ("c", 1), ("d", 5)]
            .into_iter()
            .map(|(n, c)| (name(n), c));
        let t = top(counts, 2, 2);
        let got: Vec<(&str, u64)> = t.iter().map(|c| (&*c.name, c.count)).collect();
        assert_eq!(got, [("b", 9), ("a", 5), (OTHER, 8)]);
    }

    #[test]
    fn counts_are_bounded_and_add_up() {
        let s = shared(LiveConfig {
            max_names_per_second: 3,
            max_sources: 2,
            ..LiveConfig::default()
        });
        let mut payloads = Vec::new();
        for i in 0..10 {
            payloads.push(event("s1", Some(&format!("n{i}"))));
        }
        payloads.push(event("s1", None));
        payloads.push(event("s2", Some("x")));
        payloads.push(event("s3", Some("y")));
        payloads.push(bytes::Bytes::from_static(b"not json"));
        s.count_payloads(payloads.into_iter());
        let current = s.take_current();
        let s1 = &current.sources["s1"];
        assert_eq!(s1.total, 11);
        assert_eq!(s1.names.len(), 3);
        assert_eq!(s1.names.values().sum::<u64>() + s1.other, 11);
        assert!(!current.sources.contains_key("s3"));
        assert_eq!(s.stats.untracked.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.undecodable.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.events.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn window_slides_and_forgets() {
        let mut w = Window {
            size: 3,
            sources: HashMap::new(),
        };
        let mut c = Current::default();
        c.sources.insert(
            "s".into(),
            CurrentSource {
                total: 4,
                names: [(name("a"), 3), (name("track"), 1)].into_iter().collect(),
                other: 0,
            },
        );
        w.close(c, 0, 20, 10);
        let v = &w.views(20)["s"];
        assert_eq!(&v.last_5m[..], &[0, 0, 4]);
        assert_eq!(v.total, 4);
        assert_eq!(v.total_5m, 4);
        w.close(Current::default(), 1, 20, 10);
        let v = &w.views(20)["s"];
        assert_eq!(&v.last_5m[..], &[4, 0, 0]);
        assert_eq!(v.total, 0);
        assert_eq!(v.total_5m, 4);
        assert_eq!(v.by_name_5m[0].name.as_ref(), "a");
        w.close(Current::default(), 0, 20, 10);
        assert!(
            w.views(20).is_empty(),
            "a source with nothing left is forgotten"
        );
    }

    #[test]
    fn message_for_an_unknown_source_is_empty_but_complete() {
        let snap = Snapshot {
            ts: 5,
            window_secs: 300,
            ..Snapshot::default()
        };
        let m = serde_json::to_value(snap.message("nobody", true)).unwrap_or_default();
        assert_eq!(m["total"], 0);
        assert_eq!(m["last_5m"].as_array().map(Vec::len), Some(300));
        let m = serde_json::to_value(snap.message("nobody", false)).unwrap_or_default();
        assert!(m.get("last_5m").is_none());
    }
}
