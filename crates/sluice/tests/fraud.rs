//! The fraud worker against the real Redis and PostgreSQL (and once on the embedded log): every
//! rule fires on its crafted attack and nothing else fires on realistic traffic; `kill -9` of the
//! real `sluice worker --processor fraud` in the middle of the attacks leaves exactly the
//! expected alerts; a stopped fraud worker never holds the warehouse back and catches up later;
//! a burst spanning a restart raises its alert once.
//!
//! The expected alerts are computed by the processor's own pure window logic
//! (`fraud::Detector`) over the same events in log order, and the crafted attacks are checked
//! against hand-written expectations (rule, subject, count, window) so that logic is not merely
//! compared with itself.

mod common;

use common::ChildGuard;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use sluice_core::log::{parse_position, EventLog, StartFrom};
use sluice_core::shard::shard_for;
use sluice_core::warehouse::{Alert, Warehouse};
use sluice_core::{Event, EventKind, JsonObject};
use sluice_store::testing::conformance::Probe;
use sluice_store::testing::TestDb;
use sluice_store::PgOptions;
use sluice_worker::fraud::{Detector, FraudConfig, FraudProcessor, FraudStats, GROUP};
use sluice_worker::{ConsumerConfig, Worker};
use tokio::sync::oneshot;

const SHARDS: u32 = common::PIPELINE_SHARDS;
const SOURCE: &str = "fraud-test";
const NAMES: [&str; 10] = [
    "page_view",
    "click",
    "search",
    "add_to_cart",
    "checkout",
    "signup",
    "login",
    "logout",
    "share",
    "purchase",
];

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0)
        .single()
        .expect("time")
}

fn ms(t: i64) -> DateTime<Utc> {
    base() + chrono::Duration::milliseconds(t)
}

/// An event at `t` (ms after `base`) that reached the server at that time, from a client with a
/// correct clock.
fn ev(id: &str, user: &str, name: &str, ip: &str, t: i64) -> Event {
    let at = ms(t);
    let mut context = Map::new();
    context.insert("ip".into(), Value::String(ip.into()));
    let mut properties = Map::new();
    properties.insert("path".into(), Value::String(format!("/p/{}", t % 977)));
    Event {
        event_id: id.into(),
        source: SOURCE.into(),
        kind: EventKind::Track,
        name: Some(name.into()),
        user_id: Some(user.into()),
        anonymous_id: None,
        group_id: None,
        previous_id: None,
        timestamp: at,
        original_timestamp: Some(at),
        sent_at: Some(at),
        received_at: at,
        properties: properties.into(),
        traits: JsonObject::empty(),
        context: context.into(),
        integrations: JsonObject::empty(),
    }
}

/// Traffic like `sluice bench` sends: 5,000 users, 10 names, spread over an hour, each user on
/// its own address.
fn traffic(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let u = rng.random_range(0..5_000u32);
            let t = rng.random_range(0..3_600_000i64);
            ev(
                &format!("n{seed}-{i}"),
                &format!("user-{u}"),
                NAMES[rng.random_range(0..NAMES.len())],
                &format!("198.51.{}.{}", u / 250, u % 250),
                t,
            )
        })
        .collect()
}

/// What one crafted attack must raise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expect {
    rule: String,
    subject: String,
    count: u64,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
}

/// `k` attacks of each rule at distinct times within the hour, and what each must raise.
fn attacks(k: usize) -> (Vec<Event>, Vec<Expect>) {
    let mut events = Vec::new();
    let mut expect = Vec::new();
    let slot = 3_600_000 / (4 * k as i64 + 1);
    let at = |i: usize, kind: i64| slot * (4 * i as i64 + kind) + 1_000;
    for i in 0..k {
        // user_rate: 150 events 20 ms apart, names rotating (no name above 20).
        let t0 = at(i, 0);
        let bot = format!("bot-{i}");
        for j in 0..150 {
            events.push(ev(
                &format!("bot-{i}-{j}"),
                &bot,
                NAMES[j % NAMES.len()],
                &format!("192.0.2.{}", i % 250),
                t0 + j as i64 * 20,
            ));
        }
        expect.push(Expect {
            rule: "user_rate".into(),
            subject: bot,
            count: 101,
            window_start: ms(t0),
            window_end: ms(t0 + 10_000),
        });

        // ip_many_users: 25 users, one sign-up each, 1 s apart, all on one shard (so their order
        // in the log is their order here).
        let t0 = at(i, 1);
        let ip = format!("203.0.113.{}", i % 250);
        let shard = (i as u32) % SHARDS;
        let users: Vec<String> = (0..)
            .map(|j| format!("farm-{i}-{j}"))
            .filter(|u| shard_for(SOURCE, u, SHARDS) == shard)
            .take(25)
            .collect();
        for (j, u) in users.iter().enumerate() {
            events.push(ev(
                &format!("farm-{i}-e{j}"),
                u,
                "signup",
                &ip,
                t0 + j as i64 * 1_000,
            ));
        }
        expect.push(Expect {
            rule: "ip_many_users".into(),
            subject: ip,
            count: 21,
            window_start: ms(t0),
            window_end: ms(t0 + 60_000),
        });

        // name_burst: 30 failed logins 150 ms apart.
        let t0 = at(i, 2);
        let user = format!("stuffer-{i}");
        for j in 0..30 {
            events.push(ev(
                &format!("stuff-{i}-{j}"),
                &user,
                "login_failed",
                &format!("100.64.{}.{}", i / 250, i % 250),
                t0 + j * 150,
            ));
        }
        expect.push(Expect {
            rule: "name_burst".into(),
            subject: format!("{user}/login_failed"),
            count: 21,
            window_start: ms(t0),
            window_end: ms(t0 + 10_000),
        });

        // clock_skew: a client clock 3 h fast, twice (one alert: cooldown).
        let t0 = at(i, 3);
        let user = format!("skewed-{i}");
        for j in 0..2 {
            let mut e = ev(
                &format!("skew-{i}-{j}"),
                &user,
                "page_view",
                "198.18.0.1",
                t0 + j * 1_000,
            );
            e.sent_at = Some(e.received_at + chrono::Duration::hours(3));
            e.original_timestamp = e.sent_at;
            events.push(e);
        }
        expect.push(Expect {
            rule: "clock_skew".into(),
            subject: user,
            count: 1,
            window_start: ms(t0),
            window_end: ms(t0 + 3_600_000),
        });
    }
    expect.sort();
    (events, expect)
}

/// Attacks mixed into traffic, in time order (a stream's order), and the expected alerts.
fn scenario(traffic_n: usize, k: usize, seed: u64) -> (Vec<Event>, Vec<Expect>) {
    let (mut events, expect) = attacks(k);
    events.extend(traffic(traffic_n, seed));
    events.sort_by_key(|e| e.timestamp);
    // The processor's own logic over the same order agrees with the hand-written expectations:
    // the attacks raise exactly these, the traffic nothing.
    let mut d = Detector::new(FraudConfig::default(), Arc::new(FraudStats::default()));
    let mut got = Vec::new();
    for chunk in events.chunks(1_000) {
        for e in chunk {
            d.observe(&e.into(), Utc::now(), &mut got);
        }
        d.maintain();
    }
    let got = rows(&got);
    assert_eq!(
        got, expect,
        "the detector disagrees with the crafted attacks"
    );
    (events, expect)
}

fn rows(alerts: &[Alert]) -> Vec<Expect> {
    let mut v: Vec<Expect> = alerts
        .iter()
        .map(|a| Expect {
            rule: a.rule.clone(),
            subject: a.subject.clone(),
            count: a.count,
            window_start: a.window_start,
            window_end: a.window_end,
        })
        .collect();
    v.sort();
    v
}

type Env = common::Pipeline;

/// Fraud-specific helpers on the shared test bed.
trait FraudChecks {
    fn spawn(&self, processor: &str, consumer: &str, batch: &str) -> ChildGuard;
    async fn alerts(&self) -> Vec<Expect>;
    async fn wait_drained(&self, group: &str, within: Duration);
}

impl FraudChecks for Env {
    fn spawn(&self, processor: &str, consumer: &str, batch: &str) -> ChildGuard {
        self.spawn_worker(processor, consumer, batch)
    }

    /// [`wait_group_drained`] on this test bed's log and warehouse.
    async fn wait_drained(&self, group: &str, within: Duration) {
        wait_group_drained(self.log.as_ref(), self.store.as_ref(), group, within).await;
    }

    /// Every alert row, as comparable rows; also checks nothing is stored twice.
    async fn alerts(&self) -> Vec<Expect> {
        let got = self
            .store
            .alerts(
                SOURCE,
                sluice_core::warehouse::TimeRange {
                    from: base() - chrono::Duration::days(1),
                    to: base() + chrono::Duration::days(2),
                },
                100_000,
            )
            .await
            .expect("alerts");
        let n: i64 = self
            .probe
            .client()
            .query_one("SELECT count(*) FROM alerts", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n as usize, got.len(), "alerts outside the queried range");
        let v = rows(&got);
        let subjects: BTreeSet<(&str, &str)> = v
            .iter()
            .map(|e| (e.rule.as_str(), e.subject.as_str()))
            .collect();
        assert_eq!(subjects.len(), v.len(), "a subject alerted twice: {v:#?}");
        v
    }
}

use common::{append_events as append, group_backlog as backlog};

/// Wait until `group` has processed everything in the log. The fraud group reads without
/// acknowledgements, so an empty backlog only says everything was read: for it, also wait until
/// its committed positions reach the last entry of every shard.
async fn wait_group_drained(
    log: &dyn EventLog,
    store: &dyn Warehouse,
    group: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let exists = log
            .lag()
            .await
            .expect("lag")
            .iter()
            .any(|g| g.group == group);
        let left = backlog(log, group).await;
        if exists && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} not drained within {within:?}: {left} left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if group != GROUP {
        return;
    }
    let last = last_ids(log).await;
    loop {
        let committed: BTreeMap<u32, (u64, u64)> = store
            .positions(GROUP)
            .await
            .expect("positions")
            .iter()
            .filter_map(|p| Some((p.shard, parse_position(&p.last_id)?)))
            .collect();
        if last
            .iter()
            .all(|(shard, id)| committed.get(shard) >= Some(id))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the fraud group did not commit everything within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last entry id of every shard, read through a throw-away group.
async fn last_ids(log: &dyn EventLog) -> BTreeMap<u32, (u64, u64)> {
    log.ensure_group("test-last-ids", StartFrom::Beginning)
        .await
        .expect("group");
    let mut last = BTreeMap::new();
    loop {
        let got = log
            .read_new_unacked("test-last-ids", "t", 10_000, Duration::ZERO)
            .await
            .expect("read");
        if got.is_empty() {
            return last;
        }
        for e in got {
            last.insert(e.shard, parse_position(&e.id).expect("log id"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_fires_on_its_attack_and_traffic_raises_nothing() {
    let env = Env::new().await;
    let (events, expect) = scenario(40_000, 2, 1);
    assert_eq!(expect.len(), 8);
    env.append(&events).await;
    let worker = env.spawn("fraud", "f1", "2000");
    env.wait_drained(GROUP, Duration::from_secs(120)).await;
    drop(worker);
    assert_eq!(env.alerts().await, expect);
    // The alert rows carry the burst's first and last events and the rule's facts.
    let bot = env
        .store
        .alerts(
            SOURCE,
            sluice_core::warehouse::TimeRange {
                from: base(),
                to: base() + chrono::Duration::hours(2),
            },
            100,
        )
        .await
        .expect("alerts")
        .into_iter()
        .find(|a| a.subject == "bot-0")
        .expect("bot-0 alert");
    assert_eq!(
        (bot.first_event_id.as_str(), bot.last_event_id.as_str()),
        ("bot-0-0", "bot-0-100")
    );
    assert_eq!(bot.details["threshold"], 100);
    assert_eq!(bot.details["window_secs"], 10);
}

/// Entries the fraud group holds pending (read by a consumer that acknowledged, e.g. an older
/// version, then stopped) are released at start and evaluated through the rewind: exactly the
/// expected alerts, and nothing left pending to hold trimming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_pending_in_the_fraud_group_are_released_and_evaluated() {
    let env = Env::new().await;
    let (events, expect) = scenario(10_000, 1, 7);
    env.append(&events).await;
    env.log
        .ensure_group(GROUP, StartFrom::Beginning)
        .await
        .expect("group");
    let mut held = 0;
    for consumer in ["old-a", "old-b"] {
        held += env
            .log
            .read_new(GROUP, consumer, 3_000, Duration::ZERO)
            .await
            .expect("read")
            .len();
    }
    assert_eq!(held, 6_000);
    let worker = env.spawn("fraud", "f-new", "2000");
    env.wait_drained(GROUP, Duration::from_secs(120)).await;
    drop(worker);
    let lag = env.log.lag().await.expect("lag");
    let fraud = lag.iter().find(|g| g.group == GROUP).expect("fraud group");
    assert_eq!(fraud.pending, 0, "pending entries released");
    assert_eq!(env.alerts().await, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_fraud_worker_during_attacks_leaves_exactly_the_expected_alerts() {
    let env = Env::new().await;
    // Enough traffic, and kills often enough, that a fast machine still drains it only after
    // several kills (a kill before the worker made progress is harmless). 200,000 events were
    // drained before the first kill on a machine of session 21.
    let (events, expect) = scenario(600_000, 10, 2);
    assert_eq!(expect.len(), 40);
    env.append(&events).await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    let mut worker = env.spawn("fraud", "killed", "500");
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..800))).await;
        worker.kill9();
        kills += 1;
        assert!(Instant::now() < deadline, "too slow");
        // Mostly the same name (resumes its pending entries); sometimes a new one (takes the
        // dead consumer's entries over at start).
        let name = if kills % 3 == 0 {
            format!("fresh-{kills}")
        } else {
            "killed".to_string()
        };
        worker = env.spawn("fraud", &name, "500");
        if env.backlog(GROUP).await == 0 {
            break;
        }
    }
    env.wait_drained(GROUP, Duration::from_secs(240)).await;
    drop(worker);
    assert!(
        kills >= 5,
        "only {kills} kills before the backlog drained; feed more events"
    );
    assert_eq!(env.alerts().await, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_fraud_worker_never_holds_the_warehouse_back_and_catches_up() {
    let env = Env::new().await;
    // The fraud group exists (its worker ran before) but is stopped.
    env.log
        .ensure_group(GROUP, StartFrom::Beginning)
        .await
        .expect("fraud group");
    let (events, expect) = scenario(100_000, 3, 3);
    let total = events.len() as u64;
    env.append(&events).await;
    let warehouse = env.spawn("warehouse", "w1", "5000");
    env.wait_drained("warehouse", Duration::from_secs(240))
        .await;
    let stored = env.probe.events_count(SOURCE).await.expect("count");
    assert_eq!(stored as u64, total, "the warehouse has every event");
    assert_eq!(
        env.backlog(GROUP).await,
        total,
        "the fraud group has processed nothing"
    );
    assert_eq!(
        env.log.len().await.expect("len"),
        total,
        "trimming waited for the fraud group"
    );
    drop(warehouse);
    let fraud = env.spawn("fraud", "f1", "2000");
    env.wait_drained(GROUP, Duration::from_secs(180)).await;
    drop(fraud);
    assert_eq!(env.alerts().await, expect);
}

/// A burst whose first part was processed before a restart and whose rest after: one alert,
/// whose window starts at the burst's first event (the windows were rebuilt from the log).
async fn burst_spanning_a_restart(log: Arc<dyn EventLog>, store: Arc<dyn Warehouse>) {
    let events: Vec<Event> = (0..150)
        .map(|j| {
            ev(
                &format!("span-{j}"),
                "spanner",
                NAMES[j % 10],
                "192.0.2.77",
                j as i64 * 20,
            )
        })
        .collect();
    let run = |log: Arc<dyn EventLog>, store: Arc<dyn Warehouse>| {
        let (stop, stopped) = oneshot::channel::<()>();
        let mut c = ConsumerConfig::new("inproc");
        c.batch_size = 25;
        c.max_wait = Duration::from_millis(20);
        let worker = Worker::new(
            log.clone(),
            Arc::new(FraudProcessor::new(store, log, FraudConfig::default())),
            c,
        );
        let handle = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        (stop, handle)
    };
    append(log.as_ref(), &events[..60]).await;
    let (stop, handle) = run(log.clone(), store.clone());
    wait_group_drained(log.as_ref(), store.as_ref(), GROUP, Duration::from_secs(60)).await;
    let _ = stop.send(());
    handle.await.expect("join").expect("worker");
    append(log.as_ref(), &events[60..]).await;
    let (stop, handle) = run(log.clone(), store.clone());
    wait_group_drained(log.as_ref(), store.as_ref(), GROUP, Duration::from_secs(60)).await;
    let _ = stop.send(());
    handle.await.expect("join").expect("worker");
    let got = store
        .alerts(
            SOURCE,
            sluice_core::warehouse::TimeRange {
                from: base() - chrono::Duration::hours(1),
                to: base() + chrono::Duration::hours(1),
            },
            100,
        )
        .await
        .expect("alerts");
    assert_eq!(
        rows(&got),
        vec![Expect {
            rule: "user_rate".into(),
            subject: "spanner".into(),
            count: 101,
            window_start: ms(0),
            window_end: ms(10_000),
        }]
    );
    assert_eq!(got[0].first_event_id, "span-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spanning_a_restart_raises_one_alert_on_redis() {
    let env = Env::new().await;
    burst_spanning_a_restart(env.log.clone(), env.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spanning_a_restart_raises_one_alert_on_the_embedded_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = sluice_stream::embedded::EmbeddedLogConfig::new(dir.path().join("log"));
    config.shards = Some(SHARDS);
    let log = Arc::new(
        sluice_stream::embedded::EmbeddedLog::open(config)
            .await
            .expect("embedded log"),
    );
    let db = TestDb::create().await;
    let store = Arc::new(db.warehouse(PgOptions::default()).await);
    burst_spanning_a_restart(log, store).await;
}

/// Throughput of the fraud worker alone over a preloaded backlog (in-process, Redis +
/// PostgreSQL). Run in release mode:
/// `cargo test --release -p sluice --test fraud -- --ignored --nocapture fraud_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly in release mode"]
async fn fraud_throughput_over_a_preloaded_backlog() {
    let env = Env::new().await;
    let n: usize = std::env::var("SLUICE_FRAUD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let (events, expect) = scenario(n, 10, 4);
    env.append(&events).await;
    let mut c = ConsumerConfig::new("bench");
    c.batch_size = std::env::var("SLUICE_FRAUD_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let processor = Arc::new(FraudProcessor::new(
        env.store.clone(),
        env.log.clone(),
        FraudConfig::default(),
    ));
    let stats = processor.stats();
    let worker = Worker::new(env.log.clone() as Arc<dyn EventLog>, processor, c);
    let wstats = worker.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    env.wait_drained(GROUP, Duration::from_secs(600)).await;
    let took = started.elapsed();
    let _ = stop.send(());
    handle.await.expect("join").expect("worker");
    let rate = events.len() as f64 / took.as_secs_f64();
    println!(
        "{{\"events\": {}, \"seconds\": {:.2}, \"events_per_sec\": {:.0}, \"process_seconds\": {:.2}, \"batches\": {}, \"subjects\": {}, \"alerts\": {}}}",
        events.len(),
        took.as_secs_f64(),
        rate,
        wstats.commit_micros_total.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
        wstats.batches.load(std::sync::atomic::Ordering::Relaxed),
        stats.subjects.load(std::sync::atomic::Ordering::Relaxed),
        stats.alerts.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(env.alerts().await, expect);
}
