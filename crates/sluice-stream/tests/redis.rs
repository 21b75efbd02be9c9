//! The conformance suite and Redis-specific behaviour (foreign entries, deleted pending entries,
//! coalescing counters, unreachable Redis) against the real Redis at 127.0.0.1:6379, or
//! `SLUICE_TEST_REDIS_URL`. Each test uses a fresh random key prefix and deletes its keys when it
//! ends, passed or failed. Redis not reachable is a failure, never a skip.

#[macro_use]
mod conformance;

use std::time::{Duration, Instant};

use sluice_core::log::{EventLog, LogError, StartFrom};
use sluice_stream::{RedisLog, RedisLogConfig};

fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A `RedisLog` on a fresh prefix; its keys are deleted on drop.
struct Fixture {
    log: Option<RedisLog>,
    url: String,
    prefix: String,
}

impl Fixture {
    async fn new(tweak: impl FnOnce(&mut RedisLogConfig)) -> Fixture {
        let url = redis_url();
        let prefix = format!("sluice-test-{}", uuid::Uuid::new_v4().simple());
        let mut config = RedisLogConfig::new(url.clone());
        config.prefix = prefix.clone();
        config.shards = 4;
        tweak(&mut config);
        let log = RedisLog::connect(config).await.unwrap_or_else(|e| {
            panic!("Redis must be reachable at {url} (set SLUICE_TEST_REDIS_URL): {e}")
        });
        Fixture {
            log: Some(log),
            url,
            prefix,
        }
    }

    fn log(&self) -> &RedisLog {
        self.log.as_ref().expect("log present until drop")
    }

    /// A plain connection for poking at Redis behind the log's back.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Stop the log's tasks first, then delete every key of this test's prefix.
        drop(self.log.take());
        let cleanup = || -> redis::RedisResult<()> {
            let client = redis::Client::open(self.url.as_str())?;
            let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut con)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<()>(&mut con)?;
            }
            Ok(())
        };
        if let Err(e) = cleanup() {
            eprintln!("cleanup of {} failed: {e}", self.prefix);
        }
    }
}

conformance_cases!(f => Fixture::new(|_| {}).await, f.log());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_overload_and_recovery() {
    let f = Fixture::new(|c| {
        c.high_water_mark = 50;
        c.required_groups = vec!["warehouse".to_owned()];
        c.backpressure_poll = Duration::from_millis(50);
    })
    .await;
    conformance::backpressure_overload_and_recovery(f.log(), "warehouse", 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_without_required_group_uses_total_length() {
    let f = Fixture::new(|c| {
        c.high_water_mark = 20;
        c.required_groups = vec!["warehouse".to_owned()];
        c.backpressure_poll = Duration::from_millis(50);
    })
    .await;
    let log = f.log();
    // A group that is not required does not count; without the required group, the backlog is
    // the total length.
    log.ensure_group("fraud", StartFrom::Beginning)
        .await
        .expect("group");
    log.append(conformance::records(log, "x", 30))
        .await
        .expect("append");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match log.append(vec![conformance::record(0, "y")]).await {
            Err(LogError::Overloaded { backlog, .. }) => {
                assert!(backlog >= 30);
                break;
            }
            Ok(()) => assert!(Instant::now() < deadline, "never overloaded"),
            Err(e) => panic!("unexpected error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(log.stats().backlog >= 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_coalesced() {
    let f = Fixture::new(|_| {}).await;
    let n = 2000;
    conformance::concurrent_appends_all_land_once(f.log(), n).await;
    let stats = f.log().stats();
    assert_eq!(stats.records_sent, n as u64);
    // 2000 concurrent requests, 4 writers: far fewer round trips than events.
    assert!(
        stats.pipelines_sent * 4 <= n as u64,
        "appends were not coalesced: {stats:?}"
    );
    eprintln!("{n} appends in {} pipelines", stats.pipelines_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_format_is_one_field_e() {
    let f = Fixture::new(|_| {}).await;
    let log = f.log();
    log.append(vec![conformance::record(2, r#"{"event_id":"a"}"#)])
        .await
        .expect("append");
    let mut raw = f.raw().await;
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(log.stream_key(2))
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .expect("xrange");
    let redis::Value::Array(entries) = entries else {
        panic!("unexpected XRANGE reply {entries:?}")
    };
    assert_eq!(entries.len(), 1);
    let redis::Value::Array(entry) = &entries[0] else {
        panic!("unexpected entry {entries:?}")
    };
    assert_eq!(
        entry[1],
        redis::Value::Array(vec![
            redis::Value::BulkString(b"e".to_vec()),
            redis::Value::BulkString(br#"{"event_id":"a"}"#.to_vec()),
        ])
    );
    assert_eq!(log.stream_key(2), format!("{}:events:2", f.prefix));
    assert_eq!(log.dead_letter_key(), format!("{}:dead", f.prefix));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entry_without_payload_field_reads_as_empty() {
    let f = Fixture::new(|_| {}).await;
    let log = f.log();
    log.ensure_group("g", StartFrom::End).await.expect("group");
    let mut raw = f.raw().await;
    redis::cmd("XADD")
        .arg(log.stream_key(1))
        .arg("*")
        .arg("something")
        .arg("else")
        .query_async::<String>(&mut raw)
        .await
        .expect("foreign xadd");
    let got = conformance::drain(log, "g", "c", 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].shard, 1);
    assert!(got[0].payload.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pending_entries_are_skipped_and_acked() {
    let f = Fixture::new(|_| {}).await;
    let log = f.log();
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(
        (0..6)
            .map(|i| conformance::record(0, format!("d{i}")))
            .collect(),
    )
    .await
    .expect("append");
    let got = conformance::drain(log, "g", "dead", 10).await;
    assert_eq!(got.len(), 6);
    let mut raw = f.raw().await;
    // Delete two pending entries behind the group's back (as a MAXLEN trim by a foreign tool
    // would).
    redis::cmd("XDEL")
        .arg(log.stream_key(0))
        .arg(&got[0].id)
        .arg(&got[1].id)
        .query_async::<u64>(&mut raw)
        .await
        .expect("xdel");
    let pending = log
        .read_own_pending("g", "dead", 10)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 4);
    assert_eq!(
        log.lag().await.expect("lag")[0].pending,
        4,
        "deleted entries acknowledged"
    );

    // Same through a claim.
    redis::cmd("XDEL")
        .arg(log.stream_key(0))
        .arg(&got[2].id)
        .query_async::<u64>(&mut raw)
        .await
        .expect("xdel");
    let deadline = Instant::now() + Duration::from_secs(5);
    let claimed = loop {
        let claimed = log
            .claim_idle("g", "alive", Duration::from_millis(100), 10)
            .await
            .expect("claim");
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(Instant::now() < deadline, "nothing claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(claimed.len(), 3);
    assert_eq!(log.lag().await.expect("lag")[0].pending, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_group_is_a_clear_error() {
    let f = Fixture::new(|_| {}).await;
    let err = f
        .log()
        .read_new("nope", "c", 10, Duration::from_millis(10))
        .await
        .expect_err("no such group");
    assert!(
        matches!(&err, LogError::Other(m) if m.contains("ensure_group")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_shard_is_rejected() {
    let f = Fixture::new(|_| {}).await;
    let err = f
        .log()
        .append(vec![conformance::record(99, "x")])
        .await
        .expect_err("bad shard");
    assert!(matches!(err, LogError::Other(_)), "{err}");
    assert_eq!(f.log().len().await.expect("len"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast() {
    // Nothing listens on port 1.
    let mut config = RedisLogConfig::new("redis://127.0.0.1:1/0");
    config.prefix = "sluice-test-unreachable".to_owned();
    let started = Instant::now();
    let err = RedisLog::connect(config.clone())
        .await
        .expect_err("connect must fail");
    assert!(matches!(err, LogError::Unavailable(_)), "{err}");
    let log = RedisLog::connect_lazy(config).expect("lazy");
    let err = log
        .append(vec![conformance::record(0, "x")])
        .await
        .expect_err("append must fail");
    assert!(matches!(err, LogError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_connects_with_query_parameters() {
    let prefix = format!("sluice-test-{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}?prefix={prefix}&shards=3", redis_url());
    let log = RedisLog::from_url(&url).await.expect("from_url");
    assert_eq!(log.shards(), 3);
    assert_eq!(log.stream_key(2), format!("{prefix}:events:2"));
    log.ping().await.expect("ping");
}

/// `trim_keep`: processed entries younger than it stay (the fraud processor re-reads them at
/// start). `trim_max_lag`: a group lagging more than it stops holding trimming back, and that is
/// counted, not silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_keeps_recent_entries_and_goes_past_groups_lagging_too_long() {
    let f = Fixture::new(|c| c.trim_keep = Duration::from_secs(3600)).await;
    let log = f.log();
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    log.append(conformance::records(log, "keep", 20))
        .await
        .expect("append");
    let got = conformance::drain(log, "g", "c", 100).await;
    log.ack("g", &got).await.expect("ack");
    assert_eq!(log.trim().await.expect("trim"), 0, "younger than trim_keep");
    assert_eq!(log.len().await.expect("len"), 20);

    let f = Fixture::new(|c| {
        c.shards = 1;
        c.trim_max_lag = Some(Duration::from_millis(1_000));
    })
    .await;
    let log = f.log();
    for g in ["slow", "fast"] {
        log.ensure_group(g, StartFrom::Beginning)
            .await
            .expect("group");
    }
    log.append(conformance::records(log, "old", 10))
        .await
        .expect("append");
    let got = conformance::drain(log, "fast", "c", 100).await;
    log.ack("fast", &got).await.expect("ack");
    assert_eq!(
        log.trim().await.expect("trim"),
        0,
        "slow is behind, not yet too long"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    log.append(conformance::records(log, "new", 5))
        .await
        .expect("append");
    let got = conformance::drain(log, "fast", "c", 100).await;
    log.ack("fast", &got).await.expect("ack");
    assert_eq!(
        log.trim().await.expect("trim"),
        10,
        "older than trim_max_lag"
    );
    assert_eq!(log.len().await.expect("len"), 5);
    assert!(log.stats().trim_lagging_skips >= 1);
    // The lagging group goes on with what is left.
    let rest = conformance::drain(log, "slow", "s", 100).await;
    assert_eq!(rest.len(), 5);
}
