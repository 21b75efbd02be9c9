//! The warehouse conformance suite: every `Warehouse` backend runs these cases (the PostgreSQL
//! backend in `tests/postgres_conformance.rs`). Each case takes the warehouse as `&dyn Warehouse`
//! and a [`Probe`] that reads the backend's tables, and panics with a clear message on failure.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, TimeZone, Timelike, Utc};
use serde_json::{json, Map, Value};
use sluice_core::keys::{hash_key, KeyKind};
use sluice_core::warehouse::{
    ActiveUsers, Alert, CommitOutcome, CountPoint, DayCount, Interval, NameCount, ShardPosition,
    StoreError, TimeRange, UserRef, Warehouse,
};
use sluice_core::{Event, EventKind, JsonObject};

/// Read access to a backend's stored data, for assertions.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Rows in `events` for `source`.
    async fn events_count(&self, source: &str) -> Result<i64, StoreError>;
    /// Rows in `events` for one `(source, event_id)`.
    async fn copies(&self, source: &str, event_id: &str) -> Result<i64, StoreError>;
    /// The stored event time of one event.
    async fn stored_ts(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// `event_counts_1m.count` for one bucket (0 when absent).
    async fn minute_count(
        &self,
        bucket: DateTime<Utc>,
        source: &str,
        name: &str,
    ) -> Result<i64, StoreError>;
    /// `daily_active_users` rows of a source, sorted.
    async fn dau(&self, source: &str) -> Result<Vec<(NaiveDate, String)>, StoreError>;
    /// Every difference between the rollups and a `GROUP BY` over `events` (empty = equal).
    async fn rollup_mismatches(&self) -> Result<Vec<String>, StoreError>;
    /// Make every dedupe record look `by` older.
    async fn age_dedupe(&self, by: Duration) -> Result<(), StoreError>;
}

const GROUP: &str = "warehouse";

/// A track event with ~300 bytes of properties.
pub fn event(source: &str, id: &str, name: &str, user: Option<&str>, ts: DateTime<Utc>) -> Event {
    let mut properties = Map::new();
    properties.insert("plan".into(), json!("pro"));
    properties.insert("price".into(), json!(19.99));
    properties.insert(
        "items".into(),
        json!([{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]),
    );
    properties.insert("note".into(), Value::String("x".repeat(160)));
    let mut context = Map::new();
    context.insert("ip".into(), json!("203.0.113.7"));
    Event {
        event_id: id.to_string(),
        source: source.to_string(),
        kind: EventKind::Track,
        name: Some(name.to_string()),
        user_id: user.map(str::to_string),
        anonymous_id: Some(format!("anon-{id}")),
        group_id: None,
        previous_id: None,
        timestamp: ts,
        original_timestamp: Some(ts),
        sent_at: Some(ts),
        received_at: Utc::now(),
        properties: properties.into(),
        traits: JsonObject::empty(),
        context: context.into(),
        integrations: JsonObject::empty(),
    }
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    match Utc.with_ymd_and_hms(y, mo, d, h, mi, s) {
        chrono::LocalResult::Single(t) => t,
        _ => panic!("bad test time {y}-{mo}-{d} {h}:{mi}:{s}"),
    }
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(t)
}

fn pos(shard: u32, id: &str) -> ShardPosition {
    ShardPosition {
        shard,
        last_id: id.to_string(),
    }
}

/// Commit, retrying retryable errors (a deadlock or serialization failure is the caller's to
/// retry; it must never corrupt the result).
pub async fn commit(
    wh: &dyn Warehouse,
    events: &[Event],
    positions: &[ShardPosition],
) -> CommitOutcome {
    let mut attempt = 0;
    loop {
        match wh.commit_batch(GROUP, events, positions).await {
            Ok(o) => return o,
            Err(e) if e.is_retryable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            Err(e) => panic!("commit_batch failed: {e}"),
        }
    }
}

async fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn assert_rollups_exact(probe: &dyn Probe) {
    let diffs = ok(probe.rollup_mismatches().await, "rollup check").await;
    assert!(
        diffs.is_empty(),
        "rollups differ from GROUP BY over events:\n{}",
        diffs.join("\n")
    );
}

/// Keys: create returns the key once, the record holds only its hash and a hint; list shows
/// every key; revoke by id and by key.
pub async fn keys_create_list_revoke(wh: &dyn Warehouse) {
    let (wkey, wrec) = ok(
        wh.create_key("shop", KeyKind::Write).await,
        "create write key",
    )
    .await;
    let (rkey, rrec) = ok(
        wh.create_key("shop", KeyKind::Read).await,
        "create read key",
    )
    .await;
    assert!(
        wkey.starts_with("sk_w_") && wkey.len() == 5 + 32,
        "write key format: {wkey}"
    );
    assert!(rkey.starts_with("sk_r_"), "read key format");
    assert_eq!(wrec.hash, hash_key(&wkey));
    assert_ne!(wrec.hash, wkey, "the stored hash is not the key");
    assert!(
        !wrec.hint.contains(&wkey[5..]),
        "the hint does not reveal the key"
    );
    assert_eq!((wrec.source.as_str(), wrec.kind), ("shop", KeyKind::Write));
    assert!(wrec.revoked_at.is_none());

    let list = ok(wh.list_keys().await, "list keys").await;
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|k| k.hash != wkey && k.hash != rkey));

    let revoked = ok(wh.revoke_key(&wrec.id.to_string()).await, "revoke by id").await;
    assert_eq!(revoked.id, wrec.id);
    assert!(revoked.revoked_at.is_some());
    let revoked = ok(wh.revoke_key(&rkey).await, "revoke by key").await;
    assert_eq!(revoked.id, rrec.id);
    assert!(revoked.revoked_at.is_some());
    match wh.revoke_key("sk_w_doesnotexist").await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("revoking an unknown key: expected NotFound, got {other:?}"),
    }
    let list = ok(wh.list_keys().await, "list keys").await;
    assert!(list.iter().all(|k| k.revoked_at.is_some()));
}

/// A batch is stored: one row per event, counted in its minute, users in DAU.
pub async fn commit_inserts(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t = at(2024, 5, 1, 12, 30, 15);
    let events: Vec<Event> = (0..100)
        .map(|i| {
            event(
                "s1",
                &format!("e{i}"),
                "Clicked",
                Some(&format!("u{}", i % 10)),
                t,
            )
        })
        .collect();
    let o = commit(wh, &events, &[pos(0, "1-1")]).await;
    assert_eq!(
        o,
        CommitOutcome {
            inserted: 100,
            duplicates: 0
        }
    );
    assert_eq!(ok(probe.events_count("s1").await, "count").await, 100);
    assert_eq!(
        ok(
            probe.minute_count(minute(t), "s1", "Clicked").await,
            "minute"
        )
        .await,
        100
    );
    assert_eq!(ok(probe.dau("s1").await, "dau").await.len(), 10);
    assert_eq!(ok(probe.stored_ts("s1", "e7").await, "ts").await, Some(t));
    assert_rollups_exact(probe).await;
}

/// The same batch committed again (redelivery after a crash before the ack) adds nothing.
pub async fn redelivery_adds_nothing(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t = at(2024, 5, 1, 12, 0, 0);
    let events: Vec<Event> = (0..500)
        .map(|i| event("s1", &format!("e{i}"), &format!("n{}", i % 7), Some("u"), t))
        .collect();
    let first = commit(wh, &events, &[pos(0, "5-0")]).await;
    let again = commit(wh, &events, &[pos(0, "5-0")]).await;
    assert_eq!(
        first,
        CommitOutcome {
            inserted: 500,
            duplicates: 0
        }
    );
    assert_eq!(
        again,
        CommitOutcome {
            inserted: 0,
            duplicates: 500
        }
    );
    assert_eq!(ok(probe.events_count("s1").await, "count").await, 500);
    assert_rollups_exact(probe).await;
}

/// An event repeated inside one batch is stored and counted once.
pub async fn duplicates_within_batch(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t = at(2024, 5, 1, 9, 0, 0);
    let mut events = Vec::new();
    for i in 0..50 {
        let e = event("s1", &format!("e{i}"), "Viewed", Some("u1"), t);
        events.push(e.clone());
        events.push(e);
    }
    // Same id in another source is a different event.
    events.push(event("s2", "e0", "Viewed", Some("u1"), t));
    let o = commit(wh, &events, &[]).await;
    assert_eq!(
        o,
        CommitOutcome {
            inserted: 51,
            duplicates: 50
        }
    );
    assert_eq!(ok(probe.copies("s1", "e0").await, "copies").await, 1);
    assert_eq!(ok(probe.copies("s2", "e0").await, "copies").await, 1);
    assert_eq!(
        ok(probe.minute_count(t, "s1", "Viewed").await, "minute").await,
        50
    );
    assert_rollups_exact(probe).await;

    // Two versions of one id in a batch, other ids around them: the earlier one is stored.
    let later = at(2024, 5, 1, 9, 7, 0);
    let batch = [
        event("s1", "zz", "Viewed", Some("u1"), t),
        event("s1", "aa", "Viewed", Some("u1"), t),
        event("s1", "zz", "Viewed", Some("u1"), later),
        event("s1", "mm", "Viewed", Some("u1"), later),
    ];
    let o = commit(wh, &batch, &[]).await;
    assert_eq!(
        o,
        CommitOutcome {
            inserted: 3,
            duplicates: 1
        }
    );
    assert_eq!(ok(probe.stored_ts("s1", "zz").await, "ts").await, Some(t));
    assert_eq!(ok(probe.copies("s1", "zz").await, "copies").await, 1);
    assert_rollups_exact(probe).await;
}

/// A client retry with the same messageId but another sentAt (so another corrected timestamp)
/// is a duplicate: the first version stays, counted in the first version's minute only.
pub async fn retry_with_other_timestamp_is_duplicate(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t1 = at(2024, 5, 1, 10, 0, 30);
    let t2 = at(2024, 5, 1, 10, 7, 30);
    let first = event("s1", "m-1", "Signed Up", Some("u1"), t1);
    let mut retry = first.clone();
    retry.timestamp = t2;
    retry.sent_at = Some(t2);
    retry.received_at = Utc::now();
    assert_eq!(commit(wh, &[first], &[]).await.inserted, 1);
    let o = commit(wh, &[retry], &[]).await;
    assert_eq!(
        o,
        CommitOutcome {
            inserted: 0,
            duplicates: 1
        }
    );
    assert_eq!(ok(probe.stored_ts("s1", "m-1").await, "ts").await, Some(t1));
    assert_eq!(
        ok(probe.minute_count(minute(t2), "s1", "Signed Up").await, "m").await,
        0
    );
    assert_eq!(
        ok(probe.minute_count(minute(t1), "s1", "Signed Up").await, "m").await,
        1
    );
    assert_rollups_exact(probe).await;
}

/// Late events are counted in their own (old) minute and day.
pub async fn late_events_land_in_their_own_minute(wh: &dyn Warehouse, probe: &dyn Probe) {
    let now = minute(Utc::now());
    let old = at(2023, 12, 31, 23, 59, 10);
    commit(wh, &[event("s1", "now-1", "Played", Some("u1"), now)], &[]).await;
    commit(
        wh,
        &[
            event("s1", "late-1", "Played", Some("u2"), old),
            event("s1", "late-2", "Played", Some("u2"), old),
        ],
        &[],
    )
    .await;
    assert_eq!(
        ok(probe.minute_count(minute(old), "s1", "Played").await, "m").await,
        2
    );
    assert_eq!(
        ok(probe.minute_count(now, "s1", "Played").await, "m").await,
        1
    );
    let dau = ok(probe.dau("s1").await, "dau").await;
    assert!(
        dau.contains(&(old.date_naive(), "u2".to_string())),
        "late DAU: {dau:?}"
    );
    assert_rollups_exact(probe).await;
}

/// Rollups equal GROUP BY over events after mixed batches: duplicates, late events, page and
/// identify events (rollup name `coalesce(name, kind)`), events without any user, and one batch
/// with more than 40,000 distinct event names.
pub async fn rollups_equal_group_by(wh: &dyn Warehouse, probe: &dyn Probe) {
    let base = at(2024, 6, 1, 0, 0, 0);
    // Many distinct names in one batch.
    let many: Vec<Event> = (0..45_000)
        .map(|i| {
            let ts = base + chrono::Duration::seconds(i64::from(i % 3600));
            event(
                "s1",
                &format!("name-{i}"),
                &format!("Event {i}"),
                Some(&format!("u{}", i % 97)),
                ts,
            )
        })
        .collect();
    assert_eq!(commit(wh, &many, &[pos(0, "10-0")]).await.inserted, 45_000);

    // Mixed: overlapping redelivery, other kinds, late events, anonymous-only and no-user events.
    let mut mixed: Vec<Event> = many[..3000].to_vec();
    for i in 0..3000 {
        let ts = base - chrono::Duration::days(i64::from(i % 40));
        let mut e = event("s1", &format!("mixed-{i}"), "Bought", None, ts);
        match i % 4 {
            0 => {
                e.kind = EventKind::Page;
                e.name = None;
            }
            1 => {
                e.kind = EventKind::Identify;
                e.name = None;
                e.user_id = Some(format!("u{i}"));
            }
            2 => e.anonymous_id = None, // no user at all: not in DAU
            _ => e.kind = EventKind::Screen,
        }
        mixed.push(e.clone());
        if i % 5 == 0 {
            mixed.push(e);
        }
    }
    let o = commit(wh, &mixed, &[pos(0, "11-0")]).await;
    assert_eq!(o.inserted, 3000);
    assert_eq!(o.duplicates, mixed.len() as u64 - 3000);
    // And a second source sharing ids.
    let other: Vec<Event> = many[..500]
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.source = "s2".into();
            e
        })
        .collect();
    assert_eq!(commit(wh, &other, &[]).await.inserted, 500);

    assert_eq!(ok(probe.events_count("s1").await, "count").await, 48_000);
    assert_eq!(
        ok(probe.minute_count(base, "s1", "Event 0").await, "m").await,
        1
    );
    assert_rollups_exact(probe).await;
}

/// Events with absurd client clocks (1970, 2090) are stored, never rejected.
pub async fn far_past_and_future_events_are_stored(wh: &dyn Warehouse, probe: &dyn Probe) {
    let past = at(1970, 1, 1, 0, 0, 1);
    let future = at(2090, 7, 4, 12, 0, 0);
    let o = commit(
        wh,
        &[
            event("s1", "past", "Odd", Some("u"), past),
            event("s1", "future", "Odd", Some("u"), future),
        ],
        &[],
    )
    .await;
    assert_eq!(o.inserted, 2);
    assert_eq!(
        ok(probe.stored_ts("s1", "past").await, "ts").await,
        Some(past)
    );
    assert_eq!(
        ok(probe.stored_ts("s1", "future").await, "ts").await,
        Some(future)
    );
    assert_eq!(
        ok(probe.minute_count(minute(past), "s1", "Odd").await, "m").await,
        1
    );
    assert_rollups_exact(probe).await;
}

/// `maintain()` forgets dedupe records older than the window (default 7 days) and keeps the
/// younger ones.
pub async fn dedupe_window_is_pruned(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t = at(2024, 5, 2, 8, 0, 0);
    let old: Vec<Event> = (0..25_000)
        .map(|i| event("s1", &format!("old-{i}"), "A", Some("u"), t))
        .collect();
    assert_eq!(commit(wh, &old, &[]).await.inserted, 25_000);
    ok(
        probe.age_dedupe(Duration::from_secs(8 * 24 * 3600)).await,
        "age",
    )
    .await;
    let young = vec![event("s1", "young", "A", Some("u"), t)];
    assert_eq!(commit(wh, &young, &[]).await.inserted, 1);
    ok(wh.maintain().await, "maintain").await;

    // The young one is still remembered...
    assert_eq!(commit(wh, &young, &[]).await.inserted, 0);
    // ...the old ones (more than one prune batch) were forgotten: a redelivery now gets in again.
    assert_eq!(commit(wh, &old[..10], &[]).await.inserted, 10);
}

/// Positions only move forward, comparing Redis ids numerically (`…-10` after `…-9`).
pub async fn offsets_move_forward_only(wh: &dyn Warehouse) {
    let e = |id: &str| vec![event("s1", id, "A", None, at(2024, 1, 1, 0, 0, 0))];
    commit(wh, &e("a"), &[pos(0, "1700000000000-9"), pos(1, "999-0")]).await;
    commit(wh, &e("b"), &[pos(0, "1700000000000-10"), pos(1, "1000-0")]).await;
    // An older position (a late redelivery) does not move it back; an empty batch still records.
    commit(
        wh,
        &[],
        &[pos(0, "1700000000000-2"), pos(1, "998-5"), pos(2, "5-5")],
    )
    .await;
    let mut got = ok(wh.positions(GROUP).await, "positions").await;
    got.sort_by_key(|p| p.shard);
    assert_eq!(
        got,
        vec![pos(0, "1700000000000-10"), pos(1, "1000-0"), pos(2, "5-5")]
    );
    assert!(ok(wh.positions("other-group").await, "positions")
        .await
        .is_empty());
    match wh.commit_batch(GROUP, &[], &[pos(0, "not-an-id")]).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("a malformed position must be Invalid, got {other:?}"),
    }
}

/// Two workers committing overlapping batches at the same time (keys in opposite orders):
/// exact counts, each event once, and retries (if any) leave no trace.
pub async fn concurrent_overlapping_commits(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t = at(2024, 5, 3, 15, 0, 0);
    let mut total_unique = 0;
    let mut total_inserted = 0;
    for round in 0..4 {
        let ids: Vec<String> = (0..9000).map(|i| format!("r{round}-{i}")).collect();
        let mk = |range: std::ops::Range<usize>| -> Vec<Event> {
            ids[range]
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let ts = t + chrono::Duration::seconds((i % 600) as i64);
                    event(
                        "s1",
                        id,
                        &format!("n{}", i % 50),
                        Some(&format!("u{}", i % 300)),
                        ts,
                    )
                })
                .collect()
        };
        let a = mk(0..6000);
        let mut b = mk(3000..9000);
        b.reverse();
        let pa = [pos(0, &format!("{}-0", round * 2 + 1))];
        let pb = [pos(0, &format!("{}-0", round * 2 + 2))];
        let (oa, ob) = tokio::join!(commit(wh, &a, &pa), commit(wh, &b, &pb));
        assert_eq!(
            oa.inserted + ob.inserted,
            9000,
            "round {round}: {oa:?} {ob:?}"
        );
        assert_eq!(oa.duplicates + ob.duplicates, 3000, "round {round}");
        total_unique += 9000;
        total_inserted += oa.inserted + ob.inserted;
    }
    assert_eq!(total_inserted, total_unique);
    assert_eq!(
        ok(probe.events_count("s1").await, "count").await,
        total_unique as i64
    );
    let ids: HashSet<String> = (0..9000).map(|i| format!("r0-{i}")).collect();
    for id in ids.iter().take(20) {
        assert_eq!(ok(probe.copies("s1", id).await, "copies").await, 1);
    }
    assert_rollups_exact(probe).await;
    let got = ok(wh.positions(GROUP).await, "positions").await;
    assert_eq!(got, vec![pos(0, "8-0")]);
}

// --- Query methods, alerts and verification look-ups ------------------------------------------
//
// Every expectation below is computed in Rust from the generated events, never hard-coded.
// Semantics shared by every backend:
// - ranges are half-open `[from, to)` and must not be empty; the rollups have minute
//   resolution, so a range selects the per-minute rows whose minute START lies in it;
// - `counts` lists every bucket of `Interval::buckets(range)` (empty ones as 0);
// - `top_events`: by count descending, ties by name ascending;
// - `active_users`: every UTC day overlapping the range (quiet days as 0), and distinct users
//   over those whole days;
// - `user_events`: newest first (`ts` descending, ties by `event_id` descending);
// - `alerts`: windows `[window_start, window_end)` overlapping the range, newest
//   `window_start` first;
// - `stored_event_ids`: a set (order unspecified).

/// Start of the generated data: 2024-07-01 00:00 UTC.
fn query_base() -> DateTime<Utc> {
    at(2024, 7, 1, 0, 0, 0)
}

/// A gap with no events at all: day 0, 11:00–11:30.
fn in_gap(ts: DateTime<Utc>) -> bool {
    let base = query_base();
    ts >= base + chrono::Duration::hours(11) && ts < base + chrono::Duration::minutes(11 * 60 + 30)
}

/// Deterministic events over three days for `source`: track events of six names, unnamed pages,
/// identifies, users known and anonymous-only, events with no user, whole-second times. Unique
/// ids (the duplicates are added by [`with_duplicates`]).
pub fn query_events(source: &str, n: usize, seed: u64) -> Vec<Event> {
    let names = [
        "Viewed",
        "Clicked",
        "Added",
        "Checkout",
        "Signed Up",
        "Shared",
    ];
    let base = query_base();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |m: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % m
    };
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let i = out.len();
        let ts = base + chrono::Duration::seconds(next(3 * 86_400) as i64);
        if in_gap(ts) {
            continue;
        }
        // Skewed name popularity so that top-N is not a tie everywhere.
        let name = names[(next(36) as f64).sqrt() as usize % names.len()];
        let user = next(40);
        let anon = next(25);
        let mut e = event(source, &format!("q-{i:06}"), name, None, ts);
        e.received_at = ts + chrono::Duration::seconds(2);
        e.anonymous_id = Some(format!("a{anon}"));
        match next(10) {
            0 => {
                e.kind = EventKind::Page;
                e.name = None;
            }
            1 => {
                e.kind = EventKind::Identify;
                e.name = None;
                e.user_id = Some(format!("u{user}"));
                e.traits = JsonObject::parse(r#"{"plan":"team"}"#).expect("object");
            }
            2 => e.anonymous_id = None, // no user at all
            3..=5 => {}                 // anonymous only
            _ => e.user_id = Some(format!("u{user}")),
        }
        out.push(e);
    }
    out
}

/// `events` plus every 7th one again (redelivered): what is stored is still `events`.
fn with_duplicates(events: &[Event]) -> Vec<Event> {
    let mut out = events.to_vec();
    out.extend(events.iter().step_by(7).cloned());
    out
}

fn rollup_name(e: &Event) -> &str {
    e.name.as_deref().unwrap_or(e.kind.as_str())
}

fn range(from: DateTime<Utc>, to: DateTime<Utc>) -> TimeRange {
    TimeRange { from, to }
}

/// Commit `events` of s1 (with redelivered duplicates, in batches) and a few of s2 that must
/// never show up in s1's answers.
async fn commit_query_data(wh: &dyn Warehouse, events: &[Event]) {
    let all = with_duplicates(events);
    let mut inserted = 0;
    for chunk in all.chunks(1000) {
        inserted += commit(wh, chunk, &[]).await.inserted;
    }
    assert_eq!(inserted, events.len() as u64);
    let noise: Vec<Event> = events
        .iter()
        .step_by(3)
        .map(|e| {
            let mut e = e.clone();
            e.source = "s2".into();
            e
        })
        .collect();
    commit(wh, &noise, &[]).await;
}

/// The count series computed directly from the events.
fn expected_counts(
    events: &[Event],
    name: Option<&str>,
    r: TimeRange,
    interval: Interval,
) -> Vec<CountPoint> {
    let mut by_bucket: HashMap<DateTime<Utc>, u64> = HashMap::new();
    for e in events {
        let m = minute(e.timestamp);
        if m >= r.from && m < r.to && name.is_none_or(|n| n == rollup_name(e)) {
            *by_bucket.entry(interval.bucket_of(m)).or_default() += 1;
        }
    }
    interval
        .buckets(r)
        .into_iter()
        .map(|bucket| CountPoint {
            bucket,
            count: by_bucket.get(&bucket).copied().unwrap_or(0),
        })
        .collect()
}

/// `counts` for 1m/1h/1d, all events and one name (also `coalesce(name, kind)` names), ranges
/// reaching beyond the data (empty buckets as 0) and not aligned to the interval.
pub async fn query_counts_fill_empty_buckets(wh: &dyn Warehouse, _probe: &dyn Probe) {
    let events = query_events("s1", 6000, 1);
    commit_query_data(wh, &events).await;
    let base = query_base();
    let h = chrono::Duration::hours;
    let cases = [
        (Interval::Minute, range(base + h(10), base + h(12))),
        (
            Interval::Minute,
            range(base + h(5) + chrono::Duration::seconds(30), base + h(6)),
        ),
        (Interval::Hour, range(base - h(2), base + h(74))),
        (
            Interval::Hour,
            range(base + h(5) + chrono::Duration::minutes(30), base + h(30)),
        ),
        (Interval::Day, range(base - h(24), base + h(24 * 4))),
        (Interval::Day, range(base + h(12), base + h(60))),
    ];
    for (interval, r) in cases {
        for name in [
            None,
            Some("Checkout"),
            Some("page"),
            Some("identify"),
            Some("Nope"),
        ] {
            let got = ok(wh.counts("s1", name, r, interval).await, "counts").await;
            let want = expected_counts(&events, name, r, interval);
            assert_eq!(got.len(), interval.buckets(r).len(), "{interval:?} {r:?}");
            assert_eq!(got, want, "counts {interval:?} {name:?} {r:?}");
        }
    }
    // The gap (11:00–11:30 on day 0) shows as zeros, and the data's own total is complete.
    let r = range(base + h(10), base + h(12));
    let got = ok(wh.counts("s1", None, r, Interval::Minute).await, "counts").await;
    assert!(got.iter().filter(|p| p.count == 0).count() >= 30, "{got:?}");
    let all = range(base, base + h(72));
    let total: u64 = ok(wh.counts("s1", None, all, Interval::Day).await, "counts")
        .await
        .iter()
        .map(|p| p.count)
        .sum();
    assert_eq!(total, events.len() as u64);
}

/// `top_events`: the most frequent rollup names, ties by name, limited.
pub async fn query_top_events(wh: &dyn Warehouse, _probe: &dyn Probe) {
    let events = query_events("s1", 5000, 2);
    commit_query_data(wh, &events).await;
    let base = query_base();
    let h = chrono::Duration::hours;
    for r in [
        range(base, base + h(72)),
        range(base + h(3), base + h(27)),
        range(base + h(11), base + h(11) + chrono::Duration::minutes(30)), // the gap: nothing
    ] {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for e in &events {
            let m = minute(e.timestamp);
            if m >= r.from && m < r.to {
                *counts.entry(rollup_name(e)).or_default() += 1;
            }
        }
        let mut want: Vec<NameCount> = counts
            .into_iter()
            .map(|(name, count)| NameCount {
                name: name.to_string(),
                count,
            })
            .collect();
        want.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        for limit in [1u32, 3, 100] {
            let got = ok(wh.top_events("s1", r, limit).await, "top").await;
            let want: Vec<NameCount> = want.iter().take(limit as usize).cloned().collect();
            assert_eq!(got, want, "top {limit} {r:?}");
        }
    }
}

/// `active_users`: DAU per UTC day overlapping the range (quiet days 0) and distinct users over
/// those days, `coalesce(user_id, anonymous_id)`, events without a user not counted.
pub async fn query_active_users(wh: &dyn Warehouse, _probe: &dyn Probe) {
    let events = query_events("s1", 5000, 3);
    commit_query_data(wh, &events).await;
    let base = query_base();
    let h = chrono::Duration::hours;
    for r in [
        range(base, base + h(72)),
        range(base - h(24), base + h(96)),
        range(base + h(12), base + h(36)),
        range(base + h(1), base + h(2)),
    ] {
        let first = r.from.date_naive();
        let last = (r.to - chrono::Duration::nanoseconds(1)).date_naive();
        let mut per_day: HashMap<NaiveDate, HashSet<&str>> = HashMap::new();
        let mut all: HashSet<&str> = HashSet::new();
        for e in &events {
            let day = e.timestamp.date_naive();
            if let Some(user) = e.user_key() {
                if day >= first && day <= last {
                    per_day.entry(day).or_default().insert(user);
                    all.insert(user);
                }
            }
        }
        let want = ActiveUsers {
            daily: first
                .iter_days()
                .take_while(|d| *d <= last)
                .map(|day| DayCount {
                    day,
                    users: per_day.get(&day).map_or(0, |s| s.len() as u64),
                })
                .collect(),
            distinct: all.len() as u64,
        };
        let got = ok(wh.active_users("s1", r).await, "active users").await;
        assert_eq!(got, want, "active users {r:?}");
    }
}

/// `user_events`: a user's (or an anonymous visitor's) raw events, newest first, limited, and
/// exactly as they were committed (every field, JSON included).
pub async fn query_user_events(wh: &dyn Warehouse, _probe: &dyn Probe) {
    let events = query_events("s1", 4000, 4);
    commit_query_data(wh, &events).await;
    let newest_first = |pick: &dyn Fn(&Event) -> bool| -> Vec<Event> {
        let mut v: Vec<Event> = events.iter().filter(|e| pick(e)).cloned().collect();
        v.sort_by(|a, b| {
            b.timestamp
                .cmp(&a.timestamp)
                .then_with(|| b.event_id.cmp(&a.event_id))
        });
        v
    };
    let cases = [
        (
            UserRef::UserId("u7".into()),
            newest_first(&|e| e.user_id.as_deref() == Some("u7")),
        ),
        (
            UserRef::AnonymousId("a3".into()),
            newest_first(&|e| e.anonymous_id.as_deref() == Some("a3")),
        ),
        (UserRef::UserId("nobody".into()), Vec::new()),
    ];
    for (user, want) in cases {
        for limit in [1u32, 10, 10_000] {
            let got = ok(wh.user_events("s1", &user, limit).await, "user events").await;
            let want: Vec<Event> = want.iter().take(limit as usize).cloned().collect();
            assert_eq!(
                got.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
                want.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
                "{user:?} limit {limit}"
            );
            assert_eq!(
                got, want,
                "{user:?}: stored events differ from committed ones"
            );
        }
    }
    // Another source's events are not a user's events here.
    let mut other = event("s2", "other-1", "X", Some("u7"), query_base());
    other.received_at = query_base();
    commit(wh, &[other], &[]).await;
    let got = ok(
        wh.user_events("s1", &UserRef::UserId("u7".into()), 10_000)
            .await,
        "user events",
    )
    .await;
    assert!(got.iter().all(|e| e.source == "s1"));
}

fn alert(source: &str, i: i64, subject: &str) -> Alert {
    let base = query_base();
    let start = base + chrono::Duration::minutes(10 * i);
    Alert {
        source: source.to_string(),
        rule: if i % 2 == 0 {
            "user_rate"
        } else {
            "name_burst"
        }
        .to_string(),
        subject: subject.to_string(),
        window_start: start,
        window_end: start + chrono::Duration::minutes(5),
        count: 100 + i as u64,
        first_event_id: format!("f-{i}"),
        last_event_id: format!("l-{i}"),
        created_at: start + chrono::Duration::minutes(5),
        details: json!({"threshold": 50 + i, "name": "Clicked <b>"}),
    }
}

/// `commit_alerts` stores each `(source, rule, subject, window_start)` once (also when repeated
/// in a batch or redelivered) and records the positions with them; `alerts` returns the windows
/// overlapping the range, newest first, limited, for the asked source only.
pub async fn query_alerts_and_commit_alerts_exactly_once(wh: &dyn Warehouse, _probe: &dyn Probe) {
    let group = "fraud";
    let alerts: Vec<Alert> = (0..12).map(|i| alert("s1", i, &format!("u{i}"))).collect();
    let mut batch = alerts.clone();
    batch.push(alerts[3].clone()); // repeated inside the batch
    let mut changed = alerts[4].clone(); // same key, other facts: still the same alert
    changed.count = 999;
    batch.push(changed);
    let new = ok(
        wh.commit_alerts(group, &batch, &[pos(0, "7-0")]).await,
        "commit alerts",
    )
    .await;
    assert_eq!(new, alerts.len() as u64);
    // Redelivery: nothing new; an older position does not move the group back.
    let again = ok(
        wh.commit_alerts(group, &alerts, &[pos(0, "6-0")]).await,
        "commit alerts again",
    )
    .await;
    assert_eq!(again, 0);
    assert_eq!(
        ok(wh.positions(group).await, "positions").await,
        vec![pos(0, "7-0")]
    );
    // An empty batch still records its position; another source's alert is its own.
    assert_eq!(
        ok(
            wh.commit_alerts(group, &[alert("s2", 3, "u3")], &[pos(0, "8-0")])
                .await,
            "commit alerts s2",
        )
        .await,
        1
    );
    assert_eq!(
        ok(
            wh.commit_alerts(group, &[], &[pos(1, "9-0")]).await,
            "empty"
        )
        .await,
        0
    );
    let mut got_pos = ok(wh.positions(group).await, "positions").await;
    got_pos.sort_by_key(|p| p.shard);
    assert_eq!(got_pos, vec![pos(0, "8-0"), pos(1, "9-0")]);

    let base = query_base();
    let m = chrono::Duration::minutes;
    for r in [
        range(base + m(25), base + m(62)),
        range(base - m(60), base + m(600)),
        range(base + m(5), base + m(10)), // touches window ends/starts only: nothing
    ] {
        let mut want: Vec<Alert> = alerts
            .iter()
            .filter(|a| a.window_start < r.to && a.window_end > r.from)
            .cloned()
            .collect();
        want.sort_by_key(|a| std::cmp::Reverse(a.window_start));
        for limit in [1u32, 3, 100] {
            let got = ok(wh.alerts("s1", r, limit).await, "alerts").await;
            let want: Vec<Alert> = want.iter().take(limit as usize).cloned().collect();
            assert_eq!(got, want, "alerts {r:?} limit {limit}");
        }
    }
}

/// `stored_event_ids` (a set: the asked ids that are stored for that source) and
/// `count_by_id_prefix` (rows and distinct ids, so a duplicate row shows as rows > distinct).
pub async fn verification_lookups(wh: &dyn Warehouse, probe: &dyn Probe) {
    let t = query_base();
    let ids: Vec<String> = (0..300)
        .map(|i| format!("run-{}-{i:04}", 1 + i % 3))
        .collect();
    let events: Vec<Event> = ids
        .iter()
        .map(|id| event("s1", id, "A", Some("u"), t))
        .collect();
    commit(wh, &events, &[]).await;
    commit(wh, &[event("s2", "run-9-0000", "A", Some("u"), t)], &[]).await;

    let mut asked: Vec<String> = ids.iter().step_by(5).cloned().collect();
    asked.extend([
        "run-9-0000".to_string(),
        "missing".into(),
        "run-1-9999".into(),
    ]);
    let mut got = ok(wh.stored_event_ids("s1", &asked).await, "stored ids").await;
    got.sort();
    got.dedup();
    let stored: HashSet<&String> = ids.iter().collect();
    let mut want: Vec<String> = asked
        .iter()
        .filter(|id| stored.contains(id))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(ok(wh.stored_event_ids("s1", &[]).await, "no ids")
        .await
        .is_empty());

    let expect = |prefix: &str| {
        let n = ids.iter().filter(|id| id.starts_with(prefix)).count() as u64;
        (n, n)
    };
    for prefix in ["run-1-", "run-", "run-2-00", "run-9-", "run_", "run-%", ""] {
        let got = ok(wh.count_by_id_prefix("s1", prefix).await, "prefix").await;
        assert_eq!(got, expect(prefix), "prefix {prefix:?}");
    }

    // After the dedupe window forgot them, a redelivery stores 10 events a second time: the
    // prefix count shows them as duplicates (rows − distinct).
    ok(
        probe.age_dedupe(Duration::from_secs(8 * 24 * 3600)).await,
        "age",
    )
    .await;
    ok(wh.maintain().await, "maintain").await;
    let again: Vec<Event> = events
        .iter()
        .filter(|e| e.event_id.starts_with("run-1-"))
        .take(10)
        .cloned()
        .collect();
    assert_eq!(commit(wh, &again, &[]).await.inserted, 10);
    let (rows, distinct) = expect("run-1-");
    assert_eq!(
        ok(wh.count_by_id_prefix("s1", "run-1-").await, "prefix").await,
        (rows + 10, distinct)
    );
}
