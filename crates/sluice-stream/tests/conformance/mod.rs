//! The `EventLog` conformance suite: the contract every backend (Redis, embedded, and Kafka
//! later) must meet, written once against `&dyn EventLog`. A backend's test file creates a fresh,
//! isolated log per case and runs every case with [`conformance_cases!`] (see `tests/redis.rs`,
//! `tests/embedded.rs`); the cases that take parameters (backpressure, concurrency) it calls
//! itself with a log configured for them.
//!
//! Cases assume a fresh, empty log with at least 2 shards and no groups.

#![allow(dead_code)] // each test binary uses the cases that fit its backend

/// One `#[tokio::test]` per case that needs nothing but a fresh default log, so that a case
/// added here runs on every backend. `$fixture` builds a fresh fixture (awaited), `$log` gets the
/// `&dyn EventLog` out of it (bound to `$f`):
/// `conformance_cases!(f => Fixture::new().await, f.log());`
#[allow(unused_macros)] // test binaries that only borrow helpers from here
macro_rules! conformance_cases {
    ($f:ident => $fixture:expr, $log:expr) => {
        conformance_cases!(@each $f => $fixture, $log;
            append_then_read_new_exactly_once,
            read_new_wakes_on_append,
            per_user_order,
            consumers_in_a_group_split_the_work,
            groups_are_independent,
            ack_removes_from_pending,
            own_pending_after_restart,
            claim_idle_takes_over_dead_consumers,
            dead_letter_moves_and_acks,
            trim_respects_every_group,
            lag_reports_undelivered_and_pending,
            tail_reads_new_entries_without_a_group,
            read_range_pages_one_shard_without_a_group,
            reads_return_exact_counts_over_skewed_shards,
            unacked_reads_leave_nothing_pending_and_rewind_redelivers,
        );
    };
    (@each $f:ident => $fixture:expr, $log:expr; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let $f = $fixture;
            conformance::$case($log).await;
        }
    )*};
}

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_core::log::{Entry, EventLog, LogError, Record, StartFrom};

/// How long a case waits for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(10);
/// Short block for reads that drain what is there.
const SHORT_BLOCK: Duration = Duration::from_millis(50);

pub fn record(shard: u32, payload: impl Into<String>) -> Record {
    Record {
        shard,
        payload: Bytes::from(payload.into()),
    }
}

fn payload_str(e: &Entry) -> String {
    String::from_utf8_lossy(&e.payload).into_owned()
}

/// `n` records `{"n":i,"tag":tag}` spread round-robin over the shards.
pub fn records(log: &dyn EventLog, tag: &str, n: usize) -> Vec<Record> {
    let shards = log.shards();
    (0..n)
        .map(|i| record(i as u32 % shards, format!(r#"{{"n":{i},"tag":"{tag}"}}"#)))
        .collect()
}

/// Read everything currently available to this consumer, in batches of `batch`.
pub async fn drain(log: &dyn EventLog, group: &str, consumer: &str, batch: usize) -> Vec<Entry> {
    let mut all = Vec::new();
    loop {
        let got = log
            .read_new(group, consumer, batch, SHORT_BLOCK)
            .await
            .expect("read_new");
        assert!(
            got.len() <= batch,
            "read_new returned {} entries for count {batch}",
            got.len()
        );
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

fn pending_of(lags: &[sluice_core::log::GroupLag], group: &str) -> (u64, u64) {
    lags.iter()
        .find(|l| l.group == group)
        .map(|l| (l.undelivered, l.pending))
        .unwrap_or_else(|| panic!("group {group} missing from lag(): {lags:?}"))
}

/// Append then read: every record comes back exactly once, on its shard, with its payload,
/// delivered once, and `read_new` never returns more than asked.
pub async fn append_then_read_new_exactly_once(log: &dyn EventLog) {
    let recs = records(log, "once", 100);
    for chunk in recs.chunks(17) {
        log.append(chunk.to_vec()).await.expect("append");
    }
    assert_eq!(log.len().await.expect("len"), 100);
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("ensure_group");
    // Creating it again is fine.
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("ensure_group twice");

    let got = drain(log, "g", "c1", 7).await;
    assert_eq!(got.len(), 100, "every record exactly once");
    let expected: BTreeMap<String, u32> = recs
        .iter()
        .map(|r| (String::from_utf8_lossy(&r.payload).into_owned(), r.shard))
        .collect();
    let mut seen = HashSet::new();
    for e in &got {
        let p = payload_str(e);
        assert!(seen.insert(p.clone()), "delivered twice: {p}");
        assert_eq!(expected.get(&p), Some(&e.shard), "wrong shard for {p}");
        assert_eq!(e.deliveries, 1);
    }
    // Nothing more, and a read with nothing to return respects its block time.
    let started = Instant::now();
    let none = log
        .read_new("g", "c1", 10, Duration::from_millis(200))
        .await
        .expect("read_new");
    assert!(none.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "block time not respected"
    );
    // A zero block does not mean "forever".
    let none = log
        .read_new("g", "c1", 10, Duration::ZERO)
        .await
        .expect("read_new");
    assert!(none.is_empty());
}

/// A blocked reader wakes up when a record arrives.
pub async fn read_new_wakes_on_append(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    let started = Instant::now();
    let (got, ()) = tokio::join!(log.read_new("g", "c", 10, Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.append(vec![record(1, "wake")]).await.expect("append");
    });
    let got = got.expect("read_new");
    assert_eq!(got.len(), 1);
    assert_eq!(payload_str(&got[0]), "wake");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "reader did not wake up"
    );
}

/// Events of one (source, user) stay in one shard, in append order.
pub async fn per_user_order(log: &dyn EventLog) {
    let shards = log.shards();
    let user_shard = sluice_core::shard::shard_for("src", "user-7", shards);
    for i in 0..40 {
        let mut batch = vec![record(user_shard, format!("user-7:{i}"))];
        let other = sluice_core::shard::shard_for("src", &format!("other-{i}"), shards);
        batch.push(record(other, format!("other:{i}")));
        log.append(batch).await.expect("append");
    }
    // One batch keeps its order too.
    log.append(
        (40..60)
            .map(|i| record(user_shard, format!("user-7:{i}")))
            .collect(),
    )
    .await
    .expect("append");
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    let got = drain(log, "g", "c", 13).await;
    let user: Vec<&Entry> = got
        .iter()
        .filter(|e| payload_str(e).starts_with("user-7:"))
        .collect();
    assert_eq!(user.len(), 60);
    assert!(user.iter().all(|e| e.shard == user_shard));
    let seq: Vec<u32> = user
        .iter()
        .filter_map(|e| payload_str(e).strip_prefix("user-7:")?.parse().ok())
        .collect();
    assert_eq!(
        seq,
        (0..60).collect::<Vec<_>>(),
        "one user's events out of order"
    );
}

/// Two consumers of one group never receive the same entry, and together receive everything.
pub async fn consumers_in_a_group_split_the_work(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(records(log, "split", 300))
        .await
        .expect("append");
    let (a, b) = tokio::join!(drain(log, "g", "a", 9), drain(log, "g", "b", 11));
    let ids_a: HashSet<(u32, String)> = a.iter().map(|e| (e.shard, e.id.clone())).collect();
    let ids_b: HashSet<(u32, String)> = b.iter().map(|e| (e.shard, e.id.clone())).collect();
    assert_eq!(ids_a.len(), a.len());
    assert_eq!(ids_b.len(), b.len());
    assert!(ids_a.is_disjoint(&ids_b), "an entry went to both consumers");
    assert_eq!(a.len() + b.len(), 300);
}

/// Two groups each receive every entry, independently.
pub async fn groups_are_independent(log: &dyn EventLog) {
    log.append(records(log, "indep", 50)).await.expect("append");
    log.ensure_group("warehouse", StartFrom::Beginning)
        .await
        .expect("group");
    log.ensure_group("fraud", StartFrom::Beginning)
        .await
        .expect("group");
    let w = drain(log, "warehouse", "c", 20).await;
    log.ack("warehouse", &w).await.expect("ack");
    let f = drain(log, "fraud", "c", 7).await;
    assert_eq!(w.len(), 50);
    assert_eq!(f.len(), 50);
    let payloads = |es: &[Entry]| es.iter().map(payload_str).collect::<HashSet<_>>();
    assert_eq!(payloads(&w), payloads(&f));
    // A group created at the end sees only what comes next.
    log.ensure_group("late", StartFrom::End)
        .await
        .expect("group");
    log.append(vec![record(0, "after")]).await.expect("append");
    let late = drain(log, "late", "c", 10).await;
    assert_eq!(late.iter().map(payload_str).collect::<Vec<_>>(), ["after"]);
}

/// Ack removes entries from the pending list (and they are not redelivered).
pub async fn ack_removes_from_pending(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(records(log, "ack", 10)).await.expect("append");
    let got = drain(log, "g", "c", 100).await;
    assert_eq!(got.len(), 10);
    assert_eq!(pending_of(&log.lag().await.expect("lag"), "g"), (0, 10));
    log.ack("g", &got[..4]).await.expect("ack");
    assert_eq!(pending_of(&log.lag().await.expect("lag"), "g"), (0, 6));
    let pending = log.read_own_pending("g", "c", 100).await.expect("pending");
    let left: HashSet<String> = got[4..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        pending.iter().map(|e| e.id.clone()).collect::<HashSet<_>>(),
        left
    );
    log.ack("g", &got)
        .await
        .expect("ack all (again for the first 4)");
    assert_eq!(pending_of(&log.lag().await.expect("lag"), "g"), (0, 0));
    assert!(log
        .read_own_pending("g", "c", 100)
        .await
        .expect("pending")
        .is_empty());
}

/// A read returns what is there up to exactly `count`, however unevenly the shards hold it
/// (one hot shard, a few entries elsewhere), new entries and own pending alike, each shard in
/// order, nothing twice.
pub async fn reads_return_exact_counts_over_skewed_shards(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    let mut batch: Vec<Record> = (0..90)
        .map(|i| record(0, format!(r#"{{"hot":{i}}}"#)))
        .collect();
    batch.extend((0..7).map(|i| record(1, format!(r#"{{"cold":{i}}}"#))));
    log.append(batch).await.expect("append");
    let mut seen = Vec::new();
    for want in [40, 40, 40] {
        let got = log
            .read_new("g", "c", want, Duration::ZERO)
            .await
            .expect("read");
        seen.extend(got);
    }
    assert_eq!(seen.len(), 97, "40 + 40 + the 17 left");
    let hot: Vec<String> = seen
        .iter()
        .filter(|e| e.shard == 0)
        .map(payload_str)
        .collect();
    let expect: Vec<String> = (0..90).map(|i| format!(r#"{{"hot":{i}}}"#)).collect();
    assert_eq!(hot, expect, "the hot shard in order, each entry once");
    assert_eq!(seen.iter().filter(|e| e.shard == 1).count(), 7);

    // The same over the consumer's own pending entries (a restart re-reading them in batches).
    let mut again: Vec<Entry> = Vec::new();
    let first = log.read_own_pending("g", "c", 50).await.expect("pending");
    assert_eq!(first.len(), 50);
    again.extend(first);
    let rest = log.read_own_pending("g", "c", 200).await.expect("pending");
    assert_eq!(rest.len(), 97, "pending reads start over until acked");
    log.ack("g", &again).await.expect("ack");
    let left = log.read_own_pending("g", "c", 200).await.expect("pending");
    assert_eq!(left.len(), 47);
}

/// A group read without acknowledgements holds nothing pending; rewinding its cursor to an id
/// delivers the entries after it again, and only on the rewound shard.
pub async fn unacked_reads_leave_nothing_pending_and_rewind_redelivers(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    let batch: Vec<Record> = (0..20)
        .map(|i| record(i % 2, format!(r#"{{"n":{i}}}"#)))
        .collect();
    log.append(batch).await.expect("append");
    let mut first = Vec::new();
    while first.len() < 20 {
        let got = log
            .read_new_unacked("g", "c", 100, SHORT_BLOCK)
            .await
            .expect("read");
        assert!(!got.is_empty(), "entries must be delivered");
        first.extend(got);
    }
    assert_eq!(first.len(), 20);
    assert!(log
        .read_own_pending("g", "c", 100)
        .await
        .expect("pending")
        .is_empty());
    let lag = log.lag().await.expect("lag");
    let g = lag.iter().find(|l| l.group == "g").expect("group lag");
    assert_eq!((g.undelivered, g.pending), (0, 0));
    assert!(log
        .read_new_unacked("g", "c", 100, Duration::ZERO)
        .await
        .expect("read")
        .is_empty());

    // Back to the 4th entry of shard 0: its last 6 come again, in order; shard 1 stays put.
    let shard0: Vec<&Entry> = first.iter().filter(|e| e.shard == 0).collect();
    log.rewind_group("g", &[(0, shard0[3].id.clone())])
        .await
        .expect("rewind");
    let again = log
        .read_new_unacked("g", "c", 100, Duration::ZERO)
        .await
        .expect("read");
    let ids: Vec<&str> = again.iter().map(|e| e.id.as_str()).collect();
    let expect: Vec<&str> = shard0[4..].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, expect);
    assert!(again.iter().all(|e| e.shard == 0));
}

/// After a restart, a consumer gets back its unacknowledged entries, delivery count increased.
pub async fn own_pending_after_restart(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(records(log, "restart", 12))
        .await
        .expect("append");
    let first = drain(log, "g", "w1", 100).await;
    assert_eq!(first.len(), 12);
    log.ack("g", &first[..2]).await.expect("ack");
    // "Restart": the same consumer name asks for its own pending entries, in small batches.
    let again = log.read_own_pending("g", "w1", 100).await.expect("pending");
    assert_eq!(again.len(), 10);
    let limited = log.read_own_pending("g", "w1", 3).await.expect("pending");
    assert!(limited.len() <= 3 && !limited.is_empty());
    let by_id: BTreeMap<(u32, String), &Entry> =
        first.iter().map(|e| ((e.shard, e.id.clone()), e)).collect();
    for e in &again {
        let original = by_id
            .get(&(e.shard, e.id.clone()))
            .expect("a pending entry that was delivered before");
        assert_eq!(e.payload, original.payload);
        assert_eq!(e.deliveries, 2, "redelivery must count: {e:?}");
    }
    // Others' pending entries are not ours, and nothing new is delivered.
    assert!(log
        .read_own_pending("g", "w2", 100)
        .await
        .expect("pending")
        .is_empty());
    assert!(drain(log, "g", "w1", 100).await.is_empty());
}

/// claim_idle takes over another consumer's idle entries (deliveries + 1), not fresh ones.
pub async fn claim_idle_takes_over_dead_consumers(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(records(log, "claim", 8)).await.expect("append");
    let read_at = Instant::now();
    let dead = drain(log, "g", "dead", 100).await;
    assert_eq!(dead.len(), 8);
    let min_idle = Duration::from_millis(300);
    // Not idle long enough yet.
    let early = log
        .claim_idle("g", "alive", min_idle, 100)
        .await
        .expect("claim");
    assert!(
        early.is_empty(),
        "claimed entries that were not idle: {early:?}"
    );

    // Wait for the idle time to pass, then claim (in batches of 5).
    let started = Instant::now();
    let mut claimed = Vec::new();
    while claimed.len() < 8 {
        assert!(started.elapsed() < DEADLINE, "idle entries never claimed");
        let got = log
            .claim_idle("g", "alive", min_idle, 5)
            .await
            .expect("claim");
        assert!(got.len() <= 5);
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        claimed.extend(got);
    }
    assert!(
        read_at.elapsed() >= min_idle,
        "claimed before the idle time"
    );
    assert_eq!(claimed.len(), 8);
    let ids = |es: &[Entry]| {
        es.iter()
            .map(|e| (e.shard, e.id.clone()))
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&claimed), ids(&dead));
    assert!(claimed.iter().all(|e| e.deliveries == 2), "{claimed:?}");
    // They are the new owner's now; the dead consumer has none left, and a fresh claim right
    // after finds nothing idle.
    assert_eq!(
        log.read_own_pending("g", "alive", 100)
            .await
            .expect("pending")
            .len(),
        8
    );
    assert!(log
        .read_own_pending("g", "dead", 100)
        .await
        .expect("pending")
        .is_empty());
    assert!(log
        .claim_idle("g", "other", min_idle, 100)
        .await
        .expect("claim")
        .is_empty());
}

/// dead_letter moves the entry and its reason to the dead-letter stream and acknowledges it.
pub async fn dead_letter_moves_and_acks(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(vec![record(0, "not json"), record(1, r#"{"ok":true}"#)])
        .await
        .expect("append");
    let got = drain(log, "g", "c", 10).await;
    assert_eq!(got.len(), 2);
    let poison = got
        .iter()
        .find(|e| &e.payload[..] == b"not json")
        .expect("poison entry read")
        .clone();
    log.dead_letter("g", &[(poison.clone(), "invalid JSON at 1:1".to_owned())])
        .await
        .expect("dead_letter");
    let dead = log.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].group, "g");
    assert_eq!(dead[0].shard, poison.shard);
    assert_eq!(dead[0].id, poison.id);
    assert_eq!(dead[0].reason, "invalid JSON at 1:1");
    assert_eq!(dead[0].payload, poison.payload);
    // Acknowledged: only the good one is still pending.
    assert_eq!(pending_of(&log.lag().await.expect("lag"), "g"), (0, 1));
    let pending = log.read_own_pending("g", "c", 10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(&pending[0].payload[..], br#"{"ok":true}"#);
}

/// Trimming never removes what some group has not processed (undelivered, or delivered and
/// pending), and does remove what every group has processed.
pub async fn trim_respects_every_group(log: &dyn EventLog) {
    // No group yet: nothing may be trimmed.
    let recs: Vec<Record> = (0..20).map(|i| record(0, format!("t{i}"))).collect();
    log.append(recs).await.expect("append");
    assert_eq!(log.trim().await.expect("trim"), 0);
    assert_eq!(log.len().await.expect("len"), 20);

    log.ensure_group("fast", StartFrom::Beginning)
        .await
        .expect("group");
    log.ensure_group("slow", StartFrom::Beginning)
        .await
        .expect("group");
    let fast = drain(log, "fast", "c", 100).await;
    assert_eq!(fast.len(), 20);
    log.ack("fast", &fast).await.expect("ack");
    // The slow group has processed nothing: nothing goes.
    assert_eq!(log.trim().await.expect("trim"), 0);
    assert_eq!(log.len().await.expect("len"), 20);

    // The slow group read 10 and acknowledged 5 of them; 5 pending, 10 undelivered.
    let slow = log
        .read_new("slow", "c", 10, SHORT_BLOCK)
        .await
        .expect("read");
    assert_eq!(slow.len(), 10);
    log.ack("slow", &slow[..5]).await.expect("ack");
    log.trim().await.expect("trim");
    assert_eq!(
        log.len().await.expect("len"),
        15,
        "trim must remove exactly what both groups processed"
    );
    // Everything the slow group has not processed is still there.
    let pending = log
        .read_own_pending("slow", "c", 100)
        .await
        .expect("pending");
    let pending: Vec<String> = pending.iter().map(payload_str).collect();
    assert_eq!(
        pending,
        (5..10).map(|i| format!("t{i}")).collect::<Vec<_>>()
    );
    let rest = drain(log, "slow", "c", 100).await;
    let rest: Vec<String> = rest.iter().map(payload_str).collect();
    assert_eq!(rest, (10..20).map(|i| format!("t{i}")).collect::<Vec<_>>());

    // A group with pending entries holds the trim, even if another group is done.
    log.trim().await.expect("trim");
    assert_eq!(log.len().await.expect("len"), 15);

    // Once everyone processed everything, it can go (a backend may keep the last entry).
    let all_slow = log
        .read_own_pending("slow", "c", 100)
        .await
        .expect("pending");
    log.ack("slow", &all_slow).await.expect("ack");
    log.trim().await.expect("trim");
    assert!(log.len().await.expect("len") <= 1);
}

/// lag() reports undelivered and pending entries per group.
pub async fn lag_reports_undelivered_and_pending(log: &dyn EventLog) {
    log.ensure_group("g", StartFrom::End).await.expect("group");
    log.append(records(log, "lag", 30)).await.expect("append");
    assert_eq!(pending_of(&log.lag().await.expect("lag"), "g"), (30, 0));
    let got = log.read_new("g", "c", 10, SHORT_BLOCK).await.expect("read");
    assert_eq!(got.len(), 10);
    let lags = log.lag().await.expect("lag");
    assert_eq!(pending_of(&lags, "g"), (20, 10));
    let g = lags.iter().find(|l| l.group == "g").expect("group g");
    assert_eq!(g.backlog(), 30);
    log.ack("g", &got[..4]).await.expect("ack");
    assert_eq!(pending_of(&log.lag().await.expect("lag"), "g"), (20, 6));
}

/// With a tiny high-water mark on `group`, appends are refused with `Overloaded` once the
/// backlog grows, and accepted again after the group catches up. The log must have been
/// created with `high_water_mark` and `group` as its (only) required group.
pub async fn backpressure_overload_and_recovery(
    log: &dyn EventLog,
    group: &str,
    high_water_mark: u64,
) {
    log.ensure_group(group, StartFrom::Beginning)
        .await
        .expect("group");
    let started = Instant::now();
    let mut appended = 0u64;
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "never overloaded after {appended} entries"
        );
        match log.append(records(log, "bp", 10)).await {
            Ok(()) => appended += 10,
            Err(LogError::Overloaded {
                backlog,
                retry_after,
            }) => {
                assert!(backlog > high_water_mark, "overloaded at backlog {backlog}");
                assert!(retry_after > Duration::ZERO);
                break;
            }
            Err(e) => panic!("unexpected append error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(appended > high_water_mark);

    // The group catches up; appends are accepted again.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < DEADLINE, "appends never accepted again");
        let got = drain(log, group, "c", 500).await;
        log.ack(group, &got).await.expect("ack");
        match log.append(vec![record(0, "again")]).await {
            Ok(()) => break,
            Err(LogError::Overloaded { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected append error: {e}"),
        }
    }
}

/// Many concurrent single-record appends all succeed and each lands exactly once.
pub async fn concurrent_appends_all_land_once(log: &dyn EventLog, n: usize) {
    let shards = log.shards();
    let appends = (0..n).map(|i| log.append(vec![record(i as u32 % shards, format!("c{i}"))]));
    let results = futures::future::join_all(appends).await;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "append {i} failed: {r:?}");
    }
    assert_eq!(log.len().await.expect("len"), n as u64);
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    let got = drain(log, "g", "c", 1000).await;
    let payloads: HashSet<String> = got.iter().map(payload_str).collect();
    assert_eq!(got.len(), n);
    assert_eq!(payloads, (0..n).map(|i| format!("c{i}")).collect());
}

/// Group-less tailing: a default cursor starts at the end (older entries are not seen) and comes
/// back concrete; every later entry is returned exactly once across calls, at most `count` per
/// call, in order per shard; a blocked tail wakes on append and respects its block time; tailing
/// creates no consumer group and moves no group.
pub async fn tail_reads_new_entries_without_a_group(log: &dyn EventLog) {
    use sluice_core::log::TailCursor;

    log.append(records(log, "before", 10))
        .await
        .expect("append");
    let (none, cursor) = log
        .tail(&TailCursor::default(), 100, Duration::ZERO)
        .await
        .expect("tail");
    assert!(none.is_empty(), "a fresh tail must start at the end");
    assert_eq!(cursor.last.len(), log.shards() as usize);
    assert!(
        cursor.last.iter().all(Option::is_some),
        "the returned cursor must be concrete: {cursor:?}"
    );

    // Appended after the cursor was taken, while nobody was reading: not lost.
    let recs = records(log, "after", 30);
    log.append(recs.clone()).await.expect("append");
    let mut got: Vec<Entry> = Vec::new();
    let mut cursor = cursor;
    let started = Instant::now();
    while got.len() < 30 {
        assert!(
            started.elapsed() < DEADLINE,
            "tail returned {} of 30 entries",
            got.len()
        );
        let (batch, next) = log.tail(&cursor, 7, SHORT_BLOCK).await.expect("tail");
        assert!(
            batch.len() <= 7,
            "tail returned {} for count 7",
            batch.len()
        );
        got.extend(batch);
        cursor = next;
    }
    let payloads: Vec<String> = got.iter().map(payload_str).collect();
    assert_eq!(
        payloads.iter().collect::<HashSet<_>>().len(),
        30,
        "an entry came back twice: {payloads:?}"
    );
    assert!(payloads.iter().all(|p| p.contains(r#""tag":"after""#)));
    let expected: BTreeMap<String, u32> = recs
        .iter()
        .map(|r| (String::from_utf8_lossy(&r.payload).into_owned(), r.shard))
        .collect();
    for e in &got {
        assert_eq!(expected.get(&payload_str(e)), Some(&e.shard), "wrong shard");
    }
    // Per shard in append order (`n` increases with the append order).
    let mut last_n: BTreeMap<u32, i64> = BTreeMap::new();
    for e in &got {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
        let n = v["n"].as_i64().expect("n");
        let prev = last_n.insert(e.shard, n).unwrap_or(-1);
        assert!(n > prev, "shard {} out of order: {n} after {prev}", e.shard);
    }

    // Nothing new: an empty answer within the block time, the cursor unchanged.
    let started = Instant::now();
    let (none, same) = log
        .tail(&cursor, 10, Duration::from_millis(200))
        .await
        .expect("tail");
    assert!(none.is_empty());
    assert_eq!(same, cursor);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "block time not respected"
    );

    // A blocked tail wakes up on append; a second reader from the same cursor sees the same.
    let started = Instant::now();
    let (woke, ()) = tokio::join!(log.tail(&cursor, 10, Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.append(vec![record(1, "wake")]).await.expect("append");
    });
    let (woke, _) = woke.expect("tail");
    assert_eq!(woke.iter().map(payload_str).collect::<Vec<_>>(), ["wake"]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "tail did not wake up"
    );
    let (again, _) = log.tail(&cursor, 10, SHORT_BLOCK).await.expect("tail");
    assert_eq!(again.iter().map(payload_str).collect::<Vec<_>>(), ["wake"]);

    // No group was created by tailing.
    assert!(
        log.lag().await.expect("lag").is_empty(),
        "tailing must not create a consumer group"
    );
}

/// Range reads without a group: `AppendedSinceMs` starts at the first entry appended at or after
/// that time, `After` pages on exclusively, `through` is inclusive, `count` bounds every answer,
/// and no group's position moves.
pub async fn read_range_pages_one_shard_without_a_group(log: &dyn EventLog) {
    use sluice_core::log::RangeStart;

    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let recs: Vec<Record> = (0..25)
        .map(|i| record(0, format!(r#"{{"n":{i}}}"#)))
        .collect();
    log.append(recs).await.expect("append");
    log.append(vec![record(1, r#"{"other":1}"#)])
        .await
        .expect("append");
    // The last id of shard 0, through a group that is not the one checked below.
    log.ensure_group("probe", StartFrom::Beginning)
        .await
        .expect("group");
    let all = drain(log, "probe", "p", 100).await;
    let shard0: Vec<&Entry> = all.iter().filter(|e| e.shard == 0).collect();
    assert_eq!(shard0.len(), 25);
    let through = shard0[19].id.clone();
    let last = shard0[24].id.clone();

    let mut got: Vec<Entry> = Vec::new();
    let mut page = log
        .read_range(0, RangeStart::AppendedSinceMs(before_ms), &through, 7)
        .await
        .expect("range");
    loop {
        assert!(
            page.len() <= 7,
            "read_range returned {} for count 7",
            page.len()
        );
        let done = page.len() < 7;
        got.extend(page);
        if done {
            break;
        }
        let after = got.last().expect("entries").id.clone();
        page = log
            .read_range(0, RangeStart::After(&after), &through, 7)
            .await
            .expect("range");
    }
    let ns: Vec<i64> = got
        .iter()
        .map(|e| {
            assert_eq!(e.shard, 0);
            serde_json::from_slice::<serde_json::Value>(&e.payload).expect("json")["n"]
                .as_i64()
                .expect("n")
        })
        .collect();
    assert_eq!(
        ns,
        (0..20).collect::<Vec<i64>>(),
        "in order, through inclusive"
    );

    // One entry by its id (how a worker fetches a rejected entry's payload again): `At` is
    // inclusive, and a start past `through` is empty.
    let one = log
        .read_range(0, RangeStart::At(&shard0[7].id), &shard0[7].id, 1)
        .await
        .expect("range at");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, shard0[7].id);
    assert_eq!(one[0].payload, shard0[7].payload);
    let two = log
        .read_range(0, RangeStart::At(&shard0[7].id), &shard0[8].id, 10)
        .await
        .expect("range at");
    assert_eq!(
        two.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [shard0[7].id.as_str(), shard0[8].id.as_str()]
    );
    let past = log
        .read_range(0, RangeStart::At(&shard0[8].id), &shard0[7].id, 10)
        .await;
    assert!(past.map(|v| v.is_empty()).unwrap_or(true));

    // A start after every entry: nothing.
    let future = before_ms + 3_600_000;
    let none = log
        .read_range(0, RangeStart::AppendedSinceMs(future), &last, 10)
        .await;
    assert!(none.map(|v| v.is_empty()).unwrap_or(true));

    // The group "g" has been delivered nothing.
    let lag = log.lag().await.expect("lag");
    assert_eq!(pending_of(&lag, "g"), (26, 0), "read_range moved a group");
}
