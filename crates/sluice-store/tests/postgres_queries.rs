//! The PostgreSQL warehouse's query, alert and verification methods on generated data: every
//! answer is compared with what a direct computation over the generated events gives (and, for
//! the raw-event reads, with SQL over `events`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde_json::json;
use sluice_core::warehouse::{
    Alert, Interval, ShardPosition, StoreError, TimeRange, UserRef, Warehouse,
};
use sluice_core::{Event, EventKind};
use sluice_store::testing::{conformance, PgProbe, TestDb};
use sluice_store::{PgOptions, PgWarehouse};

async fn setup() -> (TestDb, PgWarehouse, PgProbe) {
    let db = TestDb::create().await;
    let wh = db.warehouse(PgOptions::default()).await;
    let probe = db.probe().await;
    (db, wh, probe)
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid test time")
}

/// Microsecond precision, as PostgreSQL stores it, so stored events compare equal.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("in range")
}

/// A small deterministic generator (no external seed: failures reproduce).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const NAMES: [&str; 6] = [
    "Signed Up",
    "Order Completed",
    "Product Viewed",
    "Cart Viewed",
    "100% off_promo",
    "Checkout Started",
];

/// ~3 days of events of source `s1` (plus some of `s2`): track events with skewed name
/// frequencies, unnamed pages, identifies, users by id or only anonymous, a few users with
/// neither.
fn generate(n: usize, start: DateTime<Utc>) -> Vec<Event> {
    let mut rng = Lcg(42);
    (0..n)
        .map(|i| {
            let ts = micros(start + Duration::milliseconds(rng.next(3 * 86_400_000) as i64));
            let source = if i % 10 == 9 { "s2" } else { "s1" };
            let user = format!("u{}", rng.next(40));
            let mut e = conformance::event(
                source,
                &format!("gen_{i:05}"),
                NAMES[(rng.next(6) * rng.next(6) / 5) as usize],
                Some(&user),
                ts,
            );
            e.received_at = micros(e.received_at);
            match i % 7 {
                0 => {
                    e.kind = EventKind::Page;
                    e.name = None;
                }
                1 => {
                    e.kind = EventKind::Identify;
                    e.name = None;
                    e.traits
                        .insert("email".into(), json!(format!("{user}@x.test")));
                }
                2 => e.user_id = None, // anonymous only
                3 if i % 3 == 0 => {
                    e.user_id = None;
                    e.anonymous_id = None; // nobody: not an active user
                }
                _ => {}
            }
            e
        })
        .collect()
}

/// The rollup name rule: `coalesce(name, kind)`.
fn rollup_name(e: &Event) -> String {
    e.name
        .clone()
        .unwrap_or_else(|| e.kind.as_str().to_string())
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    Interval::Minute.bucket_of(t)
}

/// Expected series: events whose minute lies in `[from, to)`, per bucket, empty buckets as 0.
fn expected_counts(
    events: &[Event],
    source: &str,
    name: Option<&str>,
    range: TimeRange,
    interval: Interval,
) -> Vec<(DateTime<Utc>, u64)> {
    let mut per: HashMap<DateTime<Utc>, u64> = HashMap::new();
    for e in events {
        let m = minute(e.timestamp);
        if e.source == source
            && m >= range.from
            && m < range.to
            && name.is_none_or(|n| rollup_name(e) == n)
        {
            *per.entry(interval.bucket_of(e.timestamp)).or_default() += 1;
        }
    }
    interval
        .buckets(range)
        .into_iter()
        .map(|b| (b, per.get(&b).copied().unwrap_or(0)))
        .collect()
}

async fn commit_all(wh: &PgWarehouse, events: &[Event]) {
    for chunk in events.chunks(700) {
        conformance::commit(wh, chunk, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_equal_a_computation_over_the_events() {
    let (_db, wh, _probe) = setup().await;
    let start = at(2024, 3, 9, 22, 17, 0);
    let events = generate(6000, start);
    commit_all(&wh, &events).await;

    let ranges = [
        // Whole data, unaligned ends.
        TimeRange {
            from: at(2024, 3, 9, 20, 30, 0),
            to: at(2024, 3, 13, 1, 0, 0),
        },
        // A slice that starts and ends mid-hour.
        TimeRange {
            from: at(2024, 3, 10, 5, 42, 0),
            to: at(2024, 3, 10, 9, 7, 0),
        },
        // Before any data: all zeros.
        TimeRange {
            from: at(2024, 3, 1, 0, 0, 0),
            to: at(2024, 3, 1, 6, 0, 0),
        },
    ];
    for range in ranges {
        for interval in [Interval::Minute, Interval::Hour, Interval::Day] {
            for name in [None, Some("Order Completed"), Some("page"), Some("nope")] {
                let got = wh
                    .counts("s1", name, range, interval)
                    .await
                    .expect("counts");
                let got: Vec<(DateTime<Utc>, u64)> =
                    got.into_iter().map(|p| (p.bucket, p.count)).collect();
                let want = expected_counts(&events, "s1", name, range, interval);
                assert_eq!(got.len(), want.len(), "{range:?} {interval:?} {name:?}");
                assert_eq!(got, want, "{range:?} {interval:?} {name:?}");
            }
        }
    }
    // Empty buckets are present as 0 and the sum over the whole data is every event of s1.
    let all = ranges[0];
    let series = wh
        .counts("s1", None, all, Interval::Minute)
        .await
        .expect("counts");
    assert!(series.iter().any(|p| p.count == 0));
    let total: u64 = series.iter().map(|p| p.count).sum();
    assert_eq!(
        total,
        events.iter().filter(|e| e.source == "s1").count() as u64
    );
    // An empty range is refused.
    match wh
        .counts(
            "s1",
            None,
            TimeRange {
                from: all.to,
                to: all.from,
            },
            Interval::Hour,
        )
        .await
    {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_events_and_active_users_equal_a_computation_over_the_events() {
    let (_db, wh, _probe) = setup().await;
    let start = at(2024, 3, 9, 22, 17, 0);
    let events = generate(5000, start);
    commit_all(&wh, &events).await;

    let range = TimeRange {
        from: at(2024, 3, 10, 3, 0, 0),
        to: at(2024, 3, 12, 0, 0, 0),
    };
    let in_range = |e: &&Event| {
        e.source == "s1" && minute(e.timestamp) >= range.from && minute(e.timestamp) < range.to
    };
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().filter(in_range) {
        *by_name.entry(rollup_name(e)).or_default() += 1;
    }
    let mut want: Vec<(String, u64)> = by_name.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for limit in [1u32, 3, 100] {
        let got: Vec<(String, u64)> = wh
            .top_events("s1", range, limit)
            .await
            .expect("top")
            .into_iter()
            .map(|n| (n.name, n.count))
            .collect();
        let w: Vec<(String, u64)> = want.iter().take(limit as usize).cloned().collect();
        assert_eq!(got, w, "limit {limit}");
    }

    // DAU: every UTC day overlapping [from, to) — the range ends at midnight, so 10th and 11th.
    let got = wh.active_users("s1", range).await.expect("active users");
    let days = [
        NaiveDate::from_ymd_opt(2024, 3, 10).expect("day"),
        NaiveDate::from_ymd_opt(2024, 3, 11).expect("day"),
    ];
    let mut users_of: BTreeMap<NaiveDate, BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.source == "s1") {
        if let Some(k) = e.user_key() {
            users_of
                .entry(e.timestamp.date_naive())
                .or_default()
                .insert(k.to_string());
        }
    }
    let want_daily: Vec<(NaiveDate, u64)> = days
        .iter()
        .map(|d| (*d, users_of.get(d).map_or(0, |s| s.len() as u64)))
        .collect();
    let got_daily: Vec<(NaiveDate, u64)> = got.daily.iter().map(|d| (d.day, d.users)).collect();
    assert_eq!(got_daily, want_daily);
    let distinct: BTreeSet<&String> = days
        .iter()
        .filter_map(|d| users_of.get(d))
        .flatten()
        .collect();
    assert_eq!(got.distinct, distinct.len() as u64);

    // Days with nobody are listed with 0, and the distinct count is then 0.
    let quiet = wh
        .active_users(
            "s1",
            TimeRange {
                from: at(2024, 2, 1, 12, 0, 0),
                to: at(2024, 2, 3, 12, 0, 0),
            },
        )
        .await
        .expect("quiet");
    assert_eq!(quiet.daily.len(), 3);
    assert!(quiet.daily.iter().all(|d| d.users == 0));
    assert_eq!(quiet.distinct, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_are_the_newest_raw_events_of_the_user() {
    let (_db, wh, probe) = setup().await;
    let events = generate(3000, at(2024, 3, 9, 22, 17, 0));
    commit_all(&wh, &events).await;

    for (user, by_id) in [
        (UserRef::UserId("u7".into()), true),
        (UserRef::AnonymousId("anon-gen_00002".into()), false),
    ] {
        let key = match &user {
            UserRef::UserId(k) | UserRef::AnonymousId(k) => k.clone(),
        };
        let mut want: Vec<&Event> = events
            .iter()
            .filter(|e| e.source == "s1")
            .filter(|e| {
                if by_id {
                    e.user_id.as_deref() == Some(key.as_str())
                } else {
                    e.anonymous_id.as_deref() == Some(key.as_str())
                }
            })
            .collect();
        assert!(!want.is_empty());
        want.sort_by(|a, b| {
            b.timestamp
                .cmp(&a.timestamp)
                .then_with(|| b.event_id.cmp(&a.event_id))
        });
        for limit in [1u32, 5, 1000] {
            let got = wh.user_events("s1", &user, limit).await.expect("events");
            let w: Vec<Event> = want
                .iter()
                .take(limit as usize)
                .map(|e| (*e).clone())
                .collect();
            assert_eq!(got, w, "{user:?} limit {limit}");
        }
    }
    // Same answer as SQL over the raw table.
    let rows = probe
        .client()
        .query(
            "SELECT event_id FROM events WHERE source = 's1' AND user_id = 'u3'
             ORDER BY ts DESC, event_id DESC LIMIT 20",
            &[],
        )
        .await
        .expect("sql");
    let sql_ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let got: Vec<String> = wh
        .user_events("s1", &UserRef::UserId("u3".into()), 20)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(got, sql_ids);
    // Another source's user of the same id is not visible.
    assert!(wh
        .user_events("nobody", &UserRef::UserId("u7".into()), 10)
        .await
        .expect("events")
        .is_empty());
}

fn alert(subject: &str, start: DateTime<Utc>, minutes: i64, count: u64) -> Alert {
    Alert {
        source: "s1".into(),
        rule: "user_rate".into(),
        subject: subject.into(),
        window_start: start,
        window_end: start + Duration::minutes(minutes),
        count,
        first_event_id: format!("{subject}-first"),
        last_event_id: format!("{subject}-last"),
        created_at: micros(Utc::now()).with_nanosecond(0).expect("ns"),
        details: json!({"threshold": 100, "window_secs": minutes * 60}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_stored_once_with_the_group_position() {
    let (_db, wh, probe) = setup().await;
    let t = at(2024, 4, 1, 10, 0, 0);
    let batch = vec![
        alert("u1", t, 5, 120),
        alert("u2", t + Duration::minutes(10), 5, 300),
        alert("10.0.0.1", t + Duration::minutes(20), 5, 40),
        // The same key twice in one batch counts once.
        alert("u1", t, 5, 120),
    ];
    let pos = |id: &str| {
        vec![ShardPosition {
            shard: 0,
            last_id: id.into(),
        }]
    };
    assert_eq!(
        wh.commit_alerts("fraud", &batch, &pos("5-0"))
            .await
            .expect("commit"),
        3
    );
    // Redelivery: nothing new, and the position does not go back.
    assert_eq!(
        wh.commit_alerts("fraud", &batch, &pos("4-0"))
            .await
            .expect("commit"),
        0
    );
    assert_eq!(wh.positions("fraud").await.expect("positions"), pos("5-0"));
    let more = vec![alert("u1", t + Duration::minutes(30), 5, 150)];
    assert_eq!(
        wh.commit_alerts("fraud", &more, &pos("6-0"))
            .await
            .expect("commit"),
        1
    );
    assert_eq!(wh.positions("fraud").await.expect("positions"), pos("6-0"));
    let n: i64 = probe
        .client()
        .query_one("SELECT count(*) FROM alerts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 4);

    // Overlapping the range, newest first; the stored fields round-trip.
    let range = TimeRange {
        from: t + Duration::minutes(12),
        to: t + Duration::minutes(31),
    };
    let got = wh.alerts("s1", range, 100).await.expect("alerts");
    let subjects: Vec<(&str, DateTime<Utc>)> = got
        .iter()
        .map(|a| (a.subject.as_str(), a.window_start))
        .collect();
    assert_eq!(
        subjects,
        vec![
            ("u1", t + Duration::minutes(30)),
            ("10.0.0.1", t + Duration::minutes(20)),
            ("u2", t + Duration::minutes(10)),
        ]
    );
    assert_eq!(got[1], batch[2]);
    assert_eq!(wh.alerts("s1", range, 2).await.expect("alerts").len(), 2);
    // A window ending exactly at `from` does not overlap [from, to).
    let edge = TimeRange {
        from: t + Duration::minutes(5),
        to: t + Duration::minutes(6),
    };
    assert!(wh.alerts("s1", edge, 10).await.expect("alerts").is_empty());
    assert!(wh.alerts("s2", range, 10).await.expect("alerts").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_lookups_find_stored_ids_and_count_prefixes() {
    let (_db, wh, probe) = setup().await;
    let t = at(2024, 4, 2, 10, 0, 0);
    let mut events: Vec<Event> = (0..250)
        .map(|i| conformance::event("s1", &format!("run_1-{i}"), "A", Some("u"), t))
        .collect();
    // Ids that a LIKE without escaping would also match for the prefix `run_1`...
    events.extend((0..30).map(|i| conformance::event("s1", &format!("runX1-{i}"), "A", None, t)));
    // ...and for `100%`.
    events.push(conformance::event("s1", "100%-a", "A", None, t));
    events.push(conformance::event("s1", "1000-a", "A", None, t));
    events.push(conformance::event("s1", "a\\b-1", "A", None, t));
    events.push(conformance::event("s1", "ab-1", "A", None, t));
    // The same ids in another source.
    events.extend((0..40).map(|i| conformance::event("s2", &format!("run_1-{i}"), "A", None, t)));
    commit_all(&wh, &events).await;

    let asked: Vec<String> = (0..300).map(|i| format!("run_1-{i}")).collect();
    let mut got = wh.stored_event_ids("s1", &asked).await.expect("stored");
    got.sort();
    let mut want: Vec<String> = (0..250).map(|i| format!("run_1-{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        wh.stored_event_ids("s2", &asked)
            .await
            .expect("stored")
            .len(),
        40
    );
    assert!(wh
        .stored_event_ids("s1", &[])
        .await
        .expect("stored")
        .is_empty());
    // Many ids at once (more than one lookup statement).
    let many: Vec<String> = (0..25_000).map(|i| format!("run_1-{i}")).collect();
    assert_eq!(
        wh.stored_event_ids("s1", &many)
            .await
            .expect("stored")
            .len(),
        250
    );

    assert_eq!(
        wh.count_by_id_prefix("s1", "run_1").await.expect("prefix"),
        (250, 250)
    );
    assert_eq!(
        wh.count_by_id_prefix("s1", "run").await.expect("prefix"),
        (280, 280)
    );
    assert_eq!(
        wh.count_by_id_prefix("s1", "100%").await.expect("prefix"),
        (1, 1)
    );
    assert_eq!(
        wh.count_by_id_prefix("s1", "a\\b").await.expect("prefix"),
        (1, 1)
    );
    assert_eq!(
        wh.count_by_id_prefix("s1", "nothing")
            .await
            .expect("prefix"),
        (0, 0)
    );
    assert_eq!(
        wh.count_by_id_prefix("s1", "").await.expect("prefix"),
        (284, 284)
    );
    // A duplicated row (as if the dedupe window had been bypassed) shows as rows > distinct.
    probe
        .client()
        .execute(
            "INSERT INTO events SELECT * FROM events WHERE source = 's1' AND event_id = 'run_1-7'",
            &[],
        )
        .await
        .expect("duplicate a row");
    assert_eq!(
        wh.count_by_id_prefix("s1", "run_1").await.expect("prefix"),
        (251, 250)
    );
}
