//! The conformance suite and embedded-specific behaviour (restart, single-process lock, read-only
//! directory, coalesced fsyncs, shard-count check) against `EmbeddedLog`, each test in a fresh
//! temporary data directory that is deleted when it ends.
//!
//! The ignored `throughput` test measures append and read+ack rates:
//! `cargo test --release -p sluice-stream --test embedded -- --ignored --nocapture throughput`.

#[macro_use]
mod conformance;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::log::{Entry, EventLog, LogError, StartFrom};
use sluice_stream::{Durability, EmbeddedLog, EmbeddedLogConfig};

/// An `EmbeddedLog` in a fresh temporary directory (deleted on drop, after the log).
struct Fixture {
    log: EmbeddedLog,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(tweak: impl FnOnce(&mut EmbeddedLogConfig)) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = EmbeddedLogConfig::new(dir.path().join("log"));
        config.shards = Some(4);
        tweak(&mut config);
        let log = EmbeddedLog::open(config).await.expect("open embedded log");
        Fixture { log, _dir: dir }
    }

    fn log(&self) -> &EmbeddedLog {
        &self.log
    }
}

conformance_cases!(f => Fixture::new(|_| {}).await, f.log());

fn config(dir: &Path) -> EmbeddedLogConfig {
    let mut c = EmbeddedLogConfig::new(dir);
    c.shards = Some(4);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_overload_and_recovery() {
    let f = Fixture::new(|c| {
        c.high_water_mark = 50;
        c.required_groups = vec!["warehouse".to_owned()];
    })
    .await;
    conformance::backpressure_overload_and_recovery(f.log(), "warehouse", 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_without_required_group_uses_total_length() {
    let f = Fixture::new(|c| {
        c.high_water_mark = 20;
        c.required_groups = vec!["warehouse".to_owned()];
    })
    .await;
    let log = f.log();
    // A group that is not required does not count; without the required group, the backlog is
    // the total length (counters are exact here, so the very next append is refused).
    log.ensure_group("fraud", StartFrom::Beginning)
        .await
        .expect("group");
    log.append(conformance::records(log, "x", 30))
        .await
        .expect("append");
    match log.append(vec![conformance::record(0, "y")]).await {
        Err(LogError::Overloaded {
            backlog,
            retry_after,
        }) => {
            assert_eq!(backlog, 30);
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(log.stats().backlog, 30);
    // Once the required group exists and has processed everything, appends go through again.
    log.ensure_group("warehouse", StartFrom::Beginning)
        .await
        .expect("group");
    let got = conformance::drain(log, "warehouse", "c", 100).await;
    log.ack("warehouse", &got).await.expect("ack");
    assert_eq!(log.stats().backlog, 0);
    log.append(vec![conformance::record(0, "z")])
        .await
        .expect("append after catching up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_coalesced() {
    let f = Fixture::new(|_| {}).await;
    let n = 2000;
    conformance::concurrent_appends_all_land_once(f.log(), n).await;
    let stats = f.log().stats();
    assert_eq!(stats.records, n as u64);
    assert_eq!(stats.syncs, stats.batches, "Fsync: one fsync per batch");
    // 2000 concurrent requests: far fewer batches (and fsyncs) than requests.
    assert!(
        stats.batches * 10 <= n as u64,
        "appends were not coalesced: {stats:?}"
    );
    eprintln!("{n} appends in {} batches / fsyncs", stats.batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_durability_does_not_fsync() {
    let f = Fixture::new(|c| c.durability = Durability::Flush).await;
    let log = f.log();
    log.append(conformance::records(log, "f", 10))
        .await
        .expect("append");
    let stats = log.stats();
    assert_eq!((stats.records, stats.syncs), (10, 0));
    assert!(stats.batches >= 1);
}

/// Everything survives close + reopen: entries, ids, group positions, pending entries (with
/// their owner and delivery count), dead letters, trims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let log = EmbeddedLog::open(config(&path)).await.expect("open");
    log.append(conformance::records(&log, "r", 40))
        .await
        .expect("append");
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    log.ensure_group("other", StartFrom::End)
        .await
        .expect("group");
    let first = log
        .read_new("g", "w1", 25, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(first.len(), 25);
    log.ack("g", &first[..10]).await.expect("ack");
    log.dead_letter("g", &[(first[10].clone(), "bad".to_owned())])
        .await
        .expect("dead letter");
    let lag_before = log.lag().await.expect("lag");
    let last_id_before = first.last().expect("entries").id.clone();
    log.close().await.expect("close");

    let log = EmbeddedLog::open(config(&path)).await.expect("reopen");
    assert_eq!(log.len().await.expect("len"), 40);
    assert_eq!(log.lag().await.expect("lag"), lag_before);
    // The same consumer gets its 14 pending entries back, as a redelivery.
    let pending = log.read_own_pending("g", "w1", 100).await.expect("pending");
    assert_eq!(pending.len(), 14);
    let expected: Vec<(u32, String)> = first[11..]
        .iter()
        .map(|e| (e.shard, e.id.clone()))
        .collect();
    let mut got: Vec<(u32, String)> = pending.iter().map(|e| (e.shard, e.id.clone())).collect();
    let mut expected_sorted = expected.clone();
    got.sort();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
    assert!(pending.iter().all(|e| e.deliveries == 2));
    // The position survived: only the 15 undelivered entries come next, none twice.
    let rest = conformance::drain(&log, "g", "w1", 100).await;
    assert_eq!(rest.len(), 15);
    let before: std::collections::HashSet<&str> = first.iter().map(|e| e.payload_str()).collect();
    assert!(rest.iter().all(|e| !before.contains(e.payload_str())));
    let dead = log.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].reason.as_str()),
        (first[10].id.as_str(), "bad")
    );
    assert_eq!(dead[0].payload, first[10].payload);
    // The group created at the end saw nothing, and sees new entries.
    assert!(conformance::drain(&log, "other", "c", 100).await.is_empty());

    // New ids keep increasing per shard after a restart.
    log.append(vec![conformance::record(first[0].shard, "after")])
        .await
        .expect("append");
    let after = conformance::drain(&log, "g", "w1", 10).await;
    assert_eq!(after.len(), 1);
    let newest_before = first
        .iter()
        .chain(&rest)
        .filter(|e| e.shard == first[0].shard)
        .map(|e| parse_id(&e.id))
        .max()
        .expect("entries on that shard");
    assert!(parse_id(&after[0].id) > newest_before);
    assert!(parse_id(&last_id_before) > (0, 0));

    // Trim (everything of `g` acked; `other` is at the end) and reopen: the trim stays.
    log.ack("g", &pending).await.expect("ack");
    log.ack("g", &rest).await.expect("ack");
    log.ack("g", &after).await.expect("ack");
    let other = conformance::drain(&log, "other", "c", 10).await;
    log.ack("other", &other).await.expect("ack");
    let removed = log.trim().await.expect("trim");
    assert_eq!(removed, 41);
    log.close().await.expect("close");
    let log = EmbeddedLog::open(config(&path)).await.expect("reopen");
    assert_eq!(log.len().await.expect("len"), 0);
    assert_eq!(log.trim().await.expect("trim"), 0);
    assert_eq!(
        log.lag()
            .await
            .expect("lag")
            .iter()
            .map(|l| l.backlog())
            .sum::<u64>(),
        0
    );
    // A group created now from the beginning sees nothing that was trimmed.
    log.ensure_group("replay", StartFrom::Beginning)
        .await
        .expect("group");
    assert!(conformance::drain(&log, "replay", "c", 10).await.is_empty());
    log.close().await.expect("close");
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("ms-seq id");
    (
        ms.parse().expect("ms is a number"),
        seq.parse().expect("seq is a number"),
    )
}

trait PayloadStr {
    fn payload_str(&self) -> &str;
}

impl PayloadStr for Entry {
    fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("utf-8 payload")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_the_same_directory_is_refused() {
    let f = Fixture::new(|_| {}).await;
    let err = EmbeddedLog::open(f.log().config().clone())
        .await
        .expect_err("second open must fail");
    let message = err.to_string();
    assert!(
        message.contains("in use by another sluice process")
            && message.contains(&f.log().config().dir.display().to_string()),
        "{message}"
    );
    assert!(!err.is_retryable());
    // The first one is unaffected.
    f.log()
        .append(vec![conformance::record(0, "still fine")])
        .await
        .expect("append");
}

/// Tests run as root here, and root ignores file permissions (chmod 0500 does not stop it), so
/// the not-writable cases use places where writing fails for root too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_directory_is_a_clear_error() {
    // 1. A directory that exists but where nobody may create files: sysfs refuses file creation
    //    with EACCES even for root.
    if Path::new("/sys/kernel").is_dir() {
        let err = EmbeddedLog::open(config(Path::new("/sys/kernel")))
            .await
            .expect_err("/sys/kernel is not writable");
        let message = err.to_string();
        assert!(
            message.contains("/sys/kernel") && message.contains("not writable"),
            "{message}"
        );
    }
    // 2. A data directory that cannot be created because its parent is a regular file
    //    (ENOTDIR, whoever you are).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write file");
    let err = EmbeddedLog::open(config(&file.join("log")))
        .await
        .expect_err("a path under a file");
    let message = err.to_string();
    assert!(
        message.contains("cannot create data directory") && message.contains("a-file"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_with_another_shard_count_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    EmbeddedLog::open(config(&path))
        .await
        .expect("open")
        .close()
        .await
        .expect("close");
    let mut other = config(&path);
    other.shards = Some(8);
    let err = EmbeddedLog::open(other).await.expect_err("shard mismatch");
    assert!(err.to_string().contains("created with 4 shards"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shard_count_a_directory_keeps_its_own_and_a_new_one_takes_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    // Created with 4 (`config`), reopened without a count: still 4, entries where they were.
    let log = EmbeddedLog::open(config(&path)).await.expect("open");
    log.append(conformance::records(&log, "kept", 12))
        .await
        .expect("append");
    log.close().await.expect("close");
    let mut unspecified = config(&path);
    unspecified.shards = None;
    let log = EmbeddedLog::open(unspecified).await.expect("reopen");
    assert_eq!(log.shards(), 4);
    assert_eq!(log.len().await.expect("len"), 12);
    log.close().await.expect("close");

    let mut fresh = config(&dir.path().join("new"));
    fresh.shards = None;
    let log = EmbeddedLog::open(fresh).await.expect("open new");
    assert_eq!(log.shards(), EmbeddedLogConfig::DEFAULT_SHARDS);
    log.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_opens_with_query_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "embedded:{}?shards=3&durability=flush",
        dir.path().join("log").display()
    );
    let log = EmbeddedLog::from_url(&url).await.expect("from_url");
    assert_eq!(log.shards(), 3);
    assert_eq!(log.config().durability, Durability::Flush);
    log.ping().await.expect("ping");
    assert!(EmbeddedLog::from_url("embedded:/tmp/x?nope=1")
        .await
        .is_err());
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

/// Reads are bounded by `count` however large the backlog, and a big backlog drains in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_backlog_reads_in_bounded_batches() {
    let f = Fixture::new(|c| c.durability = Durability::Flush).await;
    let log = f.log();
    for i in 0..20 {
        log.append(conformance::records(log, &format!("b{i}"), 1000))
            .await
            .expect("append");
    }
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    let mut total = 0;
    loop {
        let got = log
            .read_new("g", "c", 500, Duration::ZERO)
            .await
            .expect("read");
        assert!(got.len() <= 500);
        if got.is_empty() {
            break;
        }
        total += got.len();
        log.ack("g", &got).await.expect("ack");
    }
    assert_eq!(total, 20_000);
    assert_eq!(log.trim().await.expect("trim"), 20_000);
    assert_eq!(log.len().await.expect("len"), 0);
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => disk_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Trimming drops the tables (and blob files) wholly below the trim point instead of writing a
/// tombstone per entry: the disk is given back (once fjall's next version change lets go of the
/// dropped files), and what stays on disk below the tail (in a table that also holds newer
/// entries, or not yet flushed) is never read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_entries_leave_the_disk_and_are_never_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(config(&dir.path().join("log")))
        .await
        .expect("open");
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    let tables = dir.path().join("log").join("keyspaces");
    // Rounds of ~48 MB of payloads of ~1.2 KB (in blob files), each read, acknowledged and
    // trimmed; the journal (up to 64 MiB) is left out of the count.
    let pad = "x".repeat(1200);
    let mut first = None;
    let mut after_one_round = 0;
    for round in 0..3 {
        for b in 0..40 {
            let records = (0..1000u32)
                .map(|i| {
                    let payload = format!(r#"{{"r":{round},"b":{b},"i":{i},"pad":"{pad}"}}"#);
                    conformance::record(i % 4, payload)
                })
                .collect();
            log.append(records).await.expect("append");
        }
        if round == 0 {
            after_one_round = disk_bytes(&tables);
            assert!(after_one_round > 30_000_000, "{after_one_round} bytes");
        }
        let got = conformance::drain(&log, "g", "c", 5000).await;
        assert_eq!(got.len(), 40_000);
        log.ack("g", &got).await.expect("ack");
        first.get_or_insert_with(|| got[0].clone());
        assert_eq!(log.trim().await.expect("trim"), 40_000);
        assert_eq!(log.len().await.expect("len"), 0);
    }
    // Kept every round, the tables would hold three; the last round's may still be there.
    let now = disk_bytes(&tables);
    assert!(
        now < after_one_round * 3 / 2,
        "{now} bytes in the tables after three trimmed rounds of {after_one_round}"
    );
    // Nothing below the trim point comes back: not to a new group from the beginning, not to a
    // group rewound before it.
    log.ensure_group("late", StartFrom::Beginning)
        .await
        .expect("group");
    assert!(conformance::drain(&log, "late", "c", 5000).await.is_empty());
    let first = first.expect("a first entry");
    log.rewind_group("g", &[(first.shard, first.id.clone())])
        .await
        .expect("rewind");
    let lag = log.lag().await.expect("lag");
    let g = lag.iter().find(|l| l.group == "g").expect("lag of g");
    assert_eq!(g.undelivered, 0, "{lag:?}");
    assert!(conformance::drain(&log, "g", "c", 5000).await.is_empty());
    // New entries still flow.
    log.append(conformance::records(&log, "after", 10))
        .await
        .expect("append");
    assert_eq!(conformance::drain(&log, "g", "c", 100).await.len(), 10);
}

/// A reader without acknowledgements (the fraud worker) has no pending entries protecting what
/// it read but has not committed: only `trim_keep` does. With it, recent entries stay however
/// far every group has read; without it, they are trimmed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_keep_holds_recent_entries_below_unacked_readers() {
    for (keep, left) in [(Duration::from_secs(3600), 100), (Duration::ZERO, 0)] {
        let f = Fixture::new(|c| c.trim_keep = keep).await;
        let log = f.log();
        log.ensure_group("f", StartFrom::Beginning)
            .await
            .expect("group");
        log.append(conformance::records(log, "k", 100))
            .await
            .expect("append");
        let read = log
            .read_new_unacked("f", "c", 1000, Duration::ZERO)
            .await
            .expect("read");
        assert_eq!(read.len(), 100);
        assert_eq!(log.trim().await.expect("trim"), 100 - left);
        assert_eq!(log.len().await.expect("len"), left, "trim_keep {keep:?}");
    }
}

/// A group that keeps its own positions holds trimming at what it confirmed as committed, not at
/// what it read: `confirm` advances that floor, a rewind sets it, and it survives a restart (a
/// trim by another worker before this one's rewind cannot pass it either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_stops_at_the_committed_floor_of_an_unacked_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let open = || {
        let mut c = config(&path);
        c.trim_keep = Duration::ZERO;
        EmbeddedLog::open(c)
    };
    let log = open().await.expect("open");
    log.ensure_group("w", StartFrom::Beginning)
        .await
        .expect("group");
    log.append(conformance::records(&log, "f", 100))
        .await
        .expect("append");
    // The start of a run: rewound to nothing committed; then everything is read, and the first
    // 30 read are committed.
    let zero: Vec<(u32, String)> = (0..4).map(|s| (s, "0-0".to_owned())).collect();
    log.rewind_group("w", &zero).await.expect("rewind");
    let mut read = Vec::new();
    while read.len() < 100 {
        let got = log
            .read_new_unacked("w", "c", 1000, Duration::ZERO)
            .await
            .expect("read");
        assert!(!got.is_empty(), "all 100 must be delivered");
        read.extend(got);
    }
    let upto = |entries: &[Entry]| -> Vec<(u32, String)> {
        let mut last = std::collections::BTreeMap::new();
        for e in entries {
            last.insert(e.shard, e.id.clone());
        }
        last.into_iter().collect()
    };
    log.confirm("w", &upto(&read[..30])).await.expect("confirm");
    assert_eq!(log.trim().await.expect("trim"), 30, "only the confirmed");
    log.close().await.expect("close");

    let log = open().await.expect("reopen");
    assert_eq!(log.trim().await.expect("trim"), 0, "the floor survives");
    assert_eq!(log.len().await.expect("len"), 70);
    log.confirm("w", &upto(&read)).await.expect("confirm");
    assert_eq!(log.trim().await.expect("trim"), 70);
}

/// Append and read+ack throughput. Not a pass/fail test; prints the rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn throughput() {
    let runs = [
        (Durability::Flush, 32, 500),
        (Durability::Fsync, 32, 500),
        (Durability::Fsync, 4, 1000),
    ];
    for (durability, tasks, batches_per_task) in runs {
        let f = Fixture::new(|c| {
            c.durability = durability;
            c.shards = Some(8);
            c.high_water_mark = u64::MAX;
        })
        .await;
        let log = Arc::new(f.log);
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                for b in 0..batches_per_task {
                    let recs: Vec<_> = (0..100u32)
                        .map(|i| {
                            conformance::record(
                                i % 8,
                                format!(
                                    r#"{{"event_id":"{t}-{b}-{i}","source":"web","kind":"track","name":"Page Viewed","properties":{{"path":"/pricing"}}}}"#
                                ),
                            )
                        })
                        .collect();
                    log.append(recs).await.expect("append");
                }
            }));
        }
        for h in handles {
            h.await.expect("task");
        }
        let n = (tasks * batches_per_task * 100) as f64;
        let secs = started.elapsed().as_secs_f64();
        let stats = log.stats();
        eprintln!(
            "{durability:?}: appended {n} events in batches of 100 from {tasks} tasks: {:.0} events/s \
             ({} fjall batches, {} fsyncs)",
            n / secs,
            stats.batches,
            stats.syncs
        );

        log.ensure_group("g", StartFrom::Beginning)
            .await
            .expect("group");
        let started = Instant::now();
        let mut read = 0usize;
        loop {
            let got = log
                .read_new("g", "c", 1000, Duration::ZERO)
                .await
                .expect("read");
            if got.is_empty() {
                break;
            }
            read += got.len();
            log.ack("g", &got).await.expect("ack");
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{durability:?}: read_new+ack of {read} entries (count 1000): {:.0} entries/s",
            read as f64 / secs
        );
        let started = Instant::now();
        let removed = log.trim().await.expect("trim");
        eprintln!(
            "{durability:?}: trimmed {removed} entries in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A format-1 directory (every shard's entries in one `events` keyspace) is moved to one
/// keyspace per shard when opened, with nothing lost or repeated; reopening is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_one_directory_is_migrated_to_a_keyspace_per_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let log = EmbeddedLog::open(config(&path)).await.expect("open");
    let records = conformance::records(&log, "m", 60);
    log.append(records).await.expect("append");
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    let first = log
        .read_new("g", "w1", 20, Duration::ZERO)
        .await
        .expect("read");
    log.ack("g", &first).await.expect("ack");
    log.close().await.expect("close");

    // Rewrite the directory as format 1 had it.
    {
        let db = fjall::Database::builder(&path).open().expect("fjall");
        let old = db
            .keyspace("events", || {
                fjall::KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
            })
            .expect("old keyspace");
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .expect("meta");
        let mut moved = 0;
        for shard in 0..4 {
            let ks = db
                .keyspace(
                    &format!("events-{shard}"),
                    fjall::KeyspaceCreateOptions::default,
                )
                .expect("shard keyspace");
            for guard in ks.iter() {
                let (k, v) = guard.into_inner().expect("entry");
                old.insert(k, v).expect("copy");
                moved += 1;
            }
            db.delete_keyspace(ks).expect("delete shard keyspace");
        }
        assert_eq!(moved, 60);
        meta.insert("format", 1u32.to_be_bytes()).expect("format");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }

    for round in 0..2 {
        let log = EmbeddedLog::open(config(&path)).await.expect("reopen");
        assert_eq!(log.len().await.expect("len"), 60, "round {round}");
        if round == 0 {
            let rest = conformance::drain(&log, "g", "w1", 100).await;
            let seen: std::collections::HashSet<&str> =
                first.iter().map(|e| e.payload_str()).collect();
            assert_eq!(rest.len(), 40);
            assert!(rest.iter().all(|e| !seen.contains(e.payload_str())));
        }
        log.close().await.expect("close");
    }
    let db = fjall::Database::builder(&path).open().expect("fjall");
    assert!(!db.keyspace_exists("events"), "the old keyspace is gone");
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .expect("meta");
    let format = meta.get("format").expect("read").expect("format");
    assert_eq!(&format[..], &2u32.to_be_bytes()[..]);
}
