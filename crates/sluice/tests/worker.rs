//! The warehouse worker against the real Redis and PostgreSQL: exactly-once effects under
//! redelivery, crashes (the real binary, `kill -9`), two workers in one group, PostgreSQL
//! connections dropped mid-run, poison entries, and trimming; and the runtime's group commit (on
//! the embedded log).

mod common;

use common::ChildGuard;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use rand::{Rng, SeedableRng};
use sluice_core::log::{
    DeadLetter, Entry, EventLog, GroupLag, LogError, RangeStart, Record, StartFrom, TailCursor,
};
use sluice_core::Event;
use sluice_store::testing::conformance::{event, Probe};
use sluice_store::PgWarehouse;
use sluice_stream::redis::RedisLog;
use sluice_worker::warehouse::{WarehouseProcessor, GROUP};
use sluice_worker::{ConsumerConfig, Worker};
use tokio::sync::oneshot;

const SHARDS: u32 = common::PIPELINE_SHARDS;
const SOURCE: &str = "worker-test";

type Env = common::Pipeline;

/// Warehouse-specific checks on the shared test bed.
trait WarehouseChecks {
    async fn wait_drained(&self, expected: i64, within: Duration);
    async fn assert_exact(&self, unique: i64);
    fn spawn_warehouse_worker(&self, consumer: &str) -> ChildGuard;
}

impl WarehouseChecks for Env {
    /// Wait until the warehouse group has processed everything and `events` holds `expected`
    /// rows for the source.
    async fn wait_drained(&self, expected: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let stored = self.probe.events_count(SOURCE).await.expect("count");
            let backlog = self.backlog(GROUP).await;
            if stored >= expected && backlog == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not drained in {within:?}: {stored}/{expected} stored, backlog {backlog}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn assert_exact(&self, unique: i64) {
        assert_eq!(
            self.probe.events_count(SOURCE).await.expect("count"),
            unique,
            "every event exactly once"
        );
        let distinct: i64 = self
            .probe
            .client()
            .query_one(
                "SELECT count(DISTINCT event_id) FROM events WHERE source = $1",
                &[&SOURCE],
            )
            .await
            .expect("distinct")
            .get(0);
        assert_eq!(distinct, unique, "no event stored twice");
        let diffs = self.probe.rollup_mismatches().await.expect("rollups");
        assert!(
            diffs.is_empty(),
            "rollups differ from GROUP BY over events:\n{}",
            diffs.join("\n")
        );
    }

    fn spawn_warehouse_worker(&self, consumer: &str) -> ChildGuard {
        self.spawn_worker("warehouse", consumer, "2000")
    }
}

/// `n` events over many users, names and minutes (some late: hours or days old).
fn events(prefix: &str, n: usize, names: usize, seed: u64) -> Vec<Event> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let base = Utc
        .with_ymd_and_hms(2026, 11, 20, 12, 0, 0)
        .single()
        .expect("time");
    (0..n)
        .map(|i| {
            let ts = base + chrono::Duration::seconds(rng.random_range(-3 * 86_400..3_600));
            let user = format!("user-{}", rng.random_range(0..500));
            let name = format!("event-{}", rng.random_range(0..names));
            event(SOURCE, &format!("{prefix}-{i}"), &name, Some(&user), ts)
        })
        .collect()
}

fn consumer(name: &str) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(name);
    c.batch_size = 1_000;
    c.max_wait = Duration::from_millis(20);
    c.claim_idle = Duration::from_secs(1);
    c.claim_every = Duration::from_millis(200);
    c
}

/// Run an in-process worker over `log` until the returned sender fires.
fn run_worker(
    log: Arc<dyn EventLog>,
    store: Arc<PgWarehouse>,
    name: &str,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    common::spawn_warehouse_worker(log, store, consumer(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_equal_group_by_with_duplicates_late_events_and_many_names() {
    let env = Env::new().await;
    // 45,000 distinct names, each event twice in the log (a client retry), plus late events.
    let mut evs = events("many", 45_000, 1_000_000, 1);
    for (i, e) in evs.iter_mut().enumerate() {
        e.name = Some(format!("name-{i}"));
    }
    let retries: Vec<Event> = evs
        .iter()
        .step_by(3)
        .cloned()
        .map(|mut e| {
            e.sent_at = Some(e.sent_at.unwrap_or(e.timestamp) + chrono::Duration::seconds(30));
            e.timestamp += chrono::Duration::seconds(5);
            e
        })
        .collect();
    env.append(&evs).await;
    env.append(&retries).await;
    let (stop, handle) = run_worker(env.log.clone(), env.store.clone(), "w1");
    env.wait_drained(45_000, Duration::from_secs(120)).await;
    let _ = stop.send(());
    handle.await.expect("join");
    env.assert_exact(45_000).await;
    let distinct_names: i64 = env
        .probe
        .client()
        .query_one(
            "SELECT count(DISTINCT name) FROM event_counts_1m WHERE source = $1",
            &[&SOURCE],
        )
        .await
        .expect("names")
        .get(0);
    assert_eq!(distinct_names, 45_000);
}

/// An `EventLog` whose acks are lost: the effect of a crash after commit, before XACK.
struct LosesAcks(Arc<RedisLog>);

#[async_trait]
impl EventLog for LosesAcks {
    fn shards(&self) -> u32 {
        self.0.shards()
    }
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        self.0.append(records).await
    }
    async fn ensure_group(&self, group: &str, start: StartFrom) -> Result<(), LogError> {
        self.0.ensure_group(group, start).await
    }
    async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.0.read_new(group, consumer, count, block).await
    }
    async fn read_new_unacked(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.0.read_new_unacked(group, consumer, count, block).await
    }
    async fn rewind_group(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError> {
        self.0.rewind_group(group, positions).await
    }
    async fn read_own_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.0.read_own_pending(group, consumer, count).await
    }
    async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.0.claim_idle(group, consumer, min_idle, count).await
    }
    async fn ack(&self, _group: &str, _entries: &[Entry]) -> Result<(), LogError> {
        Ok(())
    }
    async fn dead_letter(&self, group: &str, entries: &[(Entry, String)]) -> Result<(), LogError> {
        self.0.dead_letter(group, entries).await
    }
    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, LogError> {
        self.0.dead_letters(count).await
    }
    async fn trim(&self) -> Result<u64, LogError> {
        Ok(0)
    }
    async fn lag(&self) -> Result<Vec<GroupLag>, LogError> {
        self.0.lag().await
    }
    async fn len(&self) -> Result<u64, LogError> {
        self.0.len().await
    }
    async fn ping(&self) -> Result<(), LogError> {
        self.0.ping().await
    }
    async fn tail(
        &self,
        cursor: &TailCursor,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Entry>, TailCursor), LogError> {
        self.0.tail(cursor, count, block).await
    }
    async fn read_range(
        &self,
        shard: u32,
        start: RangeStart<'_>,
        through: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.0.read_range(shard, start, through, count).await
    }
}

/// Run consumer `name` over a log whose acks are all lost until `n` events are stored, then
/// stop it: everything it read stays pending for it.
async fn commit_losing_acks(env: &Env, name: &str, n: i64) {
    let (stop, handle) = run_worker(
        Arc::new(LosesAcks(env.log.clone())),
        env.store.clone(),
        name,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.probe.events_count(SOURCE).await.expect("count") < n {
        assert!(
            Instant::now() < deadline,
            "{name} did not commit {n} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    handle.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_of_a_committed_batch_adds_nothing() {
    let env = Env::new().await;
    env.append(&events("redeliver", 5_000, 20, 2)).await;
    // First run commits everything but every ack is lost.
    commit_losing_acks(&env, "w1", 5_000).await;
    let pending: u64 = env
        .log
        .lag()
        .await
        .expect("lag")
        .iter()
        .filter(|g| g.group == GROUP)
        .map(|g| g.pending)
        .sum();
    assert_eq!(
        pending, 5_000,
        "all entries still pending: the acks were lost"
    );
    // The same consumer restarts: its pending entries are redelivered and committed again.
    let worker = Worker::new(
        env.log.clone() as Arc<dyn EventLog>,
        Arc::new(WarehouseProcessor::new(env.store.clone())),
        consumer("w1"),
    );
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    env.wait_drained(5_000, Duration::from_secs(60)).await;
    let _ = stop.send(());
    handle.await.expect("join").expect("worker");
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        5_000,
        "every redelivered event was recognised"
    );
    env.assert_exact(5_000).await;
}

/// A consumer that died with many batches pending has them taken over one full batch after
/// another, not one batch per `claim_every`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_batches_are_claimed_back_to_back() {
    let env = Env::new().await;
    env.append(&events("takeover", 5_000, 20, 5)).await;
    // The first consumer commits everything, but every ack is lost: 5 batches stay pending.
    commit_losing_acks(&env, "dead", 5_000).await;

    // Another consumer claims every 10 s: one batch per claim would take 50 s.
    let mut config = consumer("heir");
    config.claim_idle = Duration::from_millis(100);
    config.claim_every = Duration::from_secs(10);
    let (stop, handle) = common::spawn_warehouse_worker(env.log.clone(), env.store.clone(), config);
    // The first claim comes after 10 s; the other four follow at once.
    env.wait_drained(5_000, Duration::from_secs(25)).await;
    let _ = stop.send(());
    handle.await.expect("join");
    env.assert_exact(5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_worker_binary_repeatedly() {
    let env = Env::new().await;
    const N: usize = 200_000;
    env.append(&events("kill", N, 50, 3)).await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut kills = 0;
    let mut worker = env.spawn_warehouse_worker("killed");
    let deadline = Instant::now() + Duration::from_secs(300);
    while kills < 12 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        worker.kill9();
        kills += 1;
        let stored = env.probe.events_count(SOURCE).await.expect("count");
        assert!(
            Instant::now() < deadline,
            "too slow: {stored} stored after {kills} kills"
        );
        // Alternate: restart with the same name (resumes its pending entries at once) or a new
        // name (claims the dead consumer's entries once idle).
        let name = if kills % 3 == 0 {
            format!("fresh-{kills}")
        } else {
            "killed".to_string()
        };
        worker = env.spawn_warehouse_worker(&name);
        if stored as usize >= N && env.backlog(GROUP).await == 0 {
            break;
        }
    }
    env.wait_drained(N as i64, Duration::from_secs(240)).await;
    drop(worker);
    assert!(
        kills >= 10,
        "only {kills} kills happened before the backlog drained; feed more events"
    );
    env.assert_exact(N as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_in_one_group() {
    let env = Env::new().await;
    const N: usize = 60_000;
    env.append(&events("two", N, 30, 4)).await;
    let a = env.spawn_warehouse_worker("a");
    let b = env.spawn_warehouse_worker("b");
    env.wait_drained(N as i64, Duration::from_secs(180)).await;
    drop((a, b));
    env.assert_exact(N as i64).await;
    let consumers: Vec<String> = {
        let mut conn = redis::Client::open(common::redis_url())
            .expect("client")
            .get_connection()
            .expect("conn");
        let info: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("{}:events:0", env.prefix))
            .arg(GROUP)
            .query(&mut conn)
            .expect("xinfo");
        info.iter().map(|v| format!("{v:?}")).collect()
    };
    assert_eq!(consumers.len(), 2, "both workers consumed: {consumers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_dropped_mid_run() {
    let env = Env::new().await;
    const N: usize = 60_000;
    env.append(&events("pgdrop", N, 30, 5)).await;
    let (stop, handle) = run_worker(env.log.clone(), env.store.clone(), "w1");
    let mut terminated = 0i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored = env.probe.events_count(SOURCE).await.expect("count");
        if stored as usize >= N {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {stored}/{N}");
        let row = env
            .probe
            .client()
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("terminate");
        terminated += row.get::<_, i64>(0);
        // Let the worker reconnect and commit a batch before the next cut (a fixed pause can be
        // shorter than one commit on a slow machine, and then nothing would ever commit).
        let cut_at = Instant::now();
        while env.probe.events_count(SOURCE).await.expect("count") <= stored
            && cut_at.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    env.wait_drained(N as i64, Duration::from_secs(60)).await;
    let _ = stop.send(());
    handle.await.expect("join");
    assert!(
        terminated > 0,
        "no connection was terminated; the test proved nothing"
    );
    env.assert_exact(N as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_go_to_the_dead_letter_stream() {
    let env = Env::new().await;
    let good = events("poison", 100, 5, 6);
    env.append(&good[..50]).await;
    env.log
        .append(vec![
            Record {
                shard: 1,
                payload: Bytes::from_static(b"{not json"),
            },
            Record {
                shard: 2,
                payload: Bytes::from_static(br#"{"kind":"track","event_id":"x"}"#),
            },
        ])
        .await
        .expect("append poison");
    // A NUL character PostgreSQL's jsonb refuses: valid JSON, rejected by the warehouse.
    let mut nul = event(SOURCE, "poison-nul", "has\u{0}nul", Some("u"), Utc::now());
    nul.properties
        .insert("bad".into(), serde_json::Value::String("a\u{0}b".into()));
    env.append(&[nul]).await;
    env.append(&good[50..]).await;
    let (stop, handle) = run_worker(env.log.clone(), env.store.clone(), "w1");
    env.wait_drained(100, Duration::from_secs(60)).await;
    let _ = stop.send(());
    handle.await.expect("join");
    env.assert_exact(100).await;
    let dead = env.log.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter().any(
            |d| &d.payload[..] == b"{not json" && d.reason.contains("not a valid sluice event")
        ),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|d| d.payload.starts_with(br#"{"kind":"track""#)),
        "{dead:?}"
    );
    // Its payload as appended: decoding let go of it, the dead letter reads it again.
    assert!(
        dead.iter()
            .any(|d| d.reason.contains("rejected by warehouse")
                && d.payload.windows(10).any(|w| w == b"poison-nul")),
        "{dead:?}"
    );
    assert!(dead.iter().all(|d| d.group == GROUP));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_a_slow_group_has_not_processed() {
    let env = Env::new().await;
    env.log
        .ensure_group("slow", StartFrom::Beginning)
        .await
        .expect("slow group");
    env.append(&events("trim", 3_000, 5, 8)).await;
    let (stop, handle) = run_worker(env.log.clone(), env.store.clone(), "w1");
    env.wait_drained(3_000, Duration::from_secs(60)).await;
    let _ = stop.send(());
    handle.await.expect("join");
    env.log.trim().await.expect("trim");
    assert_eq!(
        env.log.len().await.expect("len"),
        3_000,
        "the slow group has processed nothing, so nothing may go"
    );
    // Once the slow group has read and acked everything, trimming removes (nearly) all of it.
    loop {
        let batch = env
            .log
            .read_new("slow", "s", 1_000, Duration::from_millis(10))
            .await
            .expect("read");
        if batch.is_empty() {
            break;
        }
        env.log.ack("slow", &batch).await.expect("ack");
    }
    env.log.trim().await.expect("trim");
    let left = env.log.len().await.expect("len");
    assert!(left <= SHARDS as u64, "processed entries remain: {left}");
}

/// Records `process` calls; the first one waits until the test opens the gate.
struct GatedProcessor {
    gate: tokio::sync::watch::Receiver<bool>,
    decoded: tokio::sync::watch::Sender<usize>,
    /// Commits begun (held at the gate or past it).
    entered: tokio::sync::watch::Sender<usize>,
    commits: std::sync::Mutex<Vec<Vec<u64>>>,
}

impl GatedProcessor {
    /// The processor, the sender that opens its gate, and receivers of how many entries it
    /// decoded and how many commits began.
    fn new() -> (
        Arc<GatedProcessor>,
        tokio::sync::watch::Sender<bool>,
        tokio::sync::watch::Receiver<usize>,
        tokio::sync::watch::Receiver<usize>,
    ) {
        let (open, gate) = tokio::sync::watch::channel(false);
        let (decoded, decoded_rx) = tokio::sync::watch::channel(0usize);
        let (entered, entered_rx) = tokio::sync::watch::channel(0usize);
        let processor = Arc::new(GatedProcessor {
            gate,
            decoded,
            entered,
            commits: std::sync::Mutex::new(Vec::new()),
        });
        (processor, open, decoded_rx, entered_rx)
    }
}

#[async_trait]
impl sluice_worker::Processor for GatedProcessor {
    type Item = u64;

    fn group(&self) -> &str {
        "gated"
    }

    fn decode(&self, payload: &[u8]) -> Result<u64, String> {
        self.decoded.send_modify(|n| *n += 1);
        std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "not a number".to_string())
    }

    async fn process(
        &self,
        _entries: &[Entry],
        items: &[u64],
        _positions: &[sluice_core::warehouse::ShardPosition],
        _stats: &sluice_worker::WorkerStats,
    ) -> Result<(), sluice_worker::ProcessError> {
        self.entered.send_modify(|n| *n += 1);
        let _ = self.gate.clone().wait_for(|open| *open).await;
        self.commits.lock().expect("commits").push(items.to_vec());
        Ok(())
    }
}

/// An embedded log of one shard in `dir`.
async fn one_shard_log(dir: &tempfile::TempDir) -> Arc<dyn EventLog> {
    let mut log_config = sluice_stream::EmbeddedLogConfig::new(dir.path().join("log"));
    log_config.shards = Some(1);
    Arc::new(
        sluice_stream::EmbeddedLog::open(log_config)
            .await
            .expect("open log"),
    )
}

/// Append the numbers of `range` (what [`GatedProcessor`] decodes), each zero-padded to `width`
/// digits.
async fn append_numbers(log: &Arc<dyn EventLog>, range: std::ops::Range<u64>, width: usize) {
    log.append(
        range
            .map(|i| Record {
                shard: 0,
                payload: Bytes::from(format!("{i:0width$}")),
            })
            .collect(),
    )
    .await
    .expect("append");
}

/// Run a worker of `processor` over `log` until the returned sender fires.
fn spawn_gated(
    log: &Arc<dyn EventLog>,
    processor: &Arc<GatedProcessor>,
    config: ConsumerConfig,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), LogError>>,
) {
    let worker = Worker::new(log.clone(), processor.clone(), config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// The committed numbers once `total` are, in commit order.
async fn wait_committed(processor: &GatedProcessor, total: u64) -> Vec<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let commits = processor.commits.lock().expect("commits").clone();
        let done: usize = commits.iter().map(Vec::len).sum();
        if done as u64 >= total {
            return commits;
        }
        assert!(
            Instant::now() < deadline,
            "only {done}/{total} committed in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Group commit: while a commit is slow, the batches decoded meanwhile queue, and the next
/// commit takes them together (at most `commit_batches` batches), in log order; every entry is
/// committed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_queued_behind_a_slow_commit_are_committed_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = one_shard_log(&dir).await;
    let total = 2_000u64;
    let append = |range| append_numbers(&log, range, 0);
    // One batch first: the first commit cannot take more than it, however the tasks are
    // scheduled.
    append(0..100).await;

    let (processor, open, mut decoded_rx, mut entered_rx) = GatedProcessor::new();
    let mut config = consumer("gated-1");
    config.batch_size = 100;
    config.commit_concurrency = 1;
    config.commit_batches = 4;
    let (stop, task) = spawn_gated(&log, &processor, config);

    // The first batch is held in its commit; the rest arrive, and once four batches are
    // decoded, the second and third at least are queued behind it.
    tokio::time::timeout(Duration::from_secs(20), entered_rx.wait_for(|n| *n >= 1))
        .await
        .expect("the first commit began within 20 s")
        .expect("commit counter");
    append(100..total).await;
    tokio::time::timeout(Duration::from_secs(20), decoded_rx.wait_for(|n| *n >= 400))
        .await
        .expect("four batches decoded within 20 s")
        .expect("decoded counter");
    open.send(true).expect("open the gate");
    let commits = wait_committed(&processor, total).await;
    let _ = stop.send(());
    task.await.expect("join").expect("worker");

    let sizes: Vec<usize> = commits.iter().map(Vec::len).collect();
    assert_eq!(sizes[0], 100, "the first batch commits alone: {sizes:?}");
    assert!(
        (200..=400).contains(&sizes[1]),
        "the commit after the slow one takes the 2–4 queued batches: {sizes:?}"
    );
    assert!(sizes.iter().all(|&s| s <= 400), "{sizes:?}");
    let all: Vec<u64> = commits.into_iter().flatten().collect();
    assert_eq!(all, (0..total).collect::<Vec<_>>(), "in order, each once");
}

/// `max_inflight_bytes`: while a commit is held, the reader takes only as many entries as fit in
/// the budget (here three batches of ~98 KiB in 300 KiB), however far ahead the log is; once
/// commits free room, everything is committed in order, each entry once, no commit larger than
/// the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_waits_for_room_while_commits_hold_the_in_flight_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = one_shard_log(&dir).await;
    let total = 2_000u64;
    append_numbers(&log, 0..total, 1_000).await;

    let (processor, open, mut decoded_rx, _) = GatedProcessor::new();
    let mut config = consumer("budget-1");
    config.batch_size = 100;
    config.commit_concurrency = 1;
    config.commit_batches = 8;
    config.max_inflight_bytes = 300 * 1024;
    let (stop, task) = spawn_gated(&log, &processor, config);

    tokio::time::timeout(Duration::from_secs(20), decoded_rx.wait_for(|n| *n >= 300))
        .await
        .expect("three batches decoded within 20 s")
        .expect("decoded counter");
    // Without the budget the channels alone let in up to eleven batches.
    let more = tokio::time::timeout(Duration::from_secs(1), decoded_rx.wait_for(|n| *n > 300));
    assert!(
        more.await.is_err(),
        "read past the budget while the commit is held: {} decoded",
        *decoded_rx.borrow()
    );
    open.send(true).expect("open the gate");
    let commits = wait_committed(&processor, total).await;
    let _ = stop.send(());
    task.await.expect("join").expect("worker");

    let sizes: Vec<usize> = commits.iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|&s| s <= 300), "{sizes:?}");
    let all: Vec<u64> = commits.into_iter().flatten().collect();
    assert_eq!(all, (0..total).collect::<Vec<_>>(), "in order, each once");
}
