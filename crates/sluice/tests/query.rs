//! The query API, `/readyz` and `/openapi.json` against the real app (port 0, real Redis, real
//! PostgreSQL). Generated events are committed through the warehouse; every answer is compared
//! with values computed in Rust from those events and with SQL over the raw `events` table.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::{Auth, Resp, TestApp};
use serde_json::{json, Value};
use sluice_core::keys::KeyKind;
use sluice_core::warehouse::{Alert, Interval, KeyStore, TimeRange, Warehouse};
use sluice_core::{Event, EventKind};
use sluice_server::{AppState, ServerConfig};
use sluice_store::testing::conformance;
use sluice_store::{PgOptions, PgWarehouse};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Every query route, with parameters that make it valid.
const QUERY_ROUTES: [&str; 5] = [
    "/v1/query/counts?interval=1h",
    "/v1/query/top",
    "/v1/query/active-users",
    "/v1/query/events?user_id=u1",
    "/v1/query/alerts",
];

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid test time")
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("in range")
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A small deterministic generator: failures reproduce.
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

const NAMES: [&str; 5] = [
    "Signed Up",
    "Order Completed",
    "Product Viewed",
    "Cart Viewed",
    "<img src=x onerror=alert(1)>",
];

/// `n` events over ~3 days from `start`: mostly the app's source (some of another source, which
/// must never show), skewed name frequencies, unnamed pages, identifies, anonymous-only users.
fn generate(app: &TestApp, n: usize, start: DateTime<Utc>) -> Vec<Event> {
    let mut rng = Lcg(7);
    (0..n)
        .map(|i| {
            let ts = micros(start + chrono::Duration::seconds(rng.next(3 * 86_400) as i64));
            let source = if i % 11 == 10 {
                "other-source"
            } else {
                app.source.as_str()
            };
            let user = format!("u{}", rng.next(25));
            let name = NAMES[(rng.next(5) * rng.next(5) / 4) as usize];
            let mut e = conformance::event(source, &format!("q-{i:05}"), name, Some(&user), ts);
            e.received_at = micros(e.received_at);
            match i % 6 {
                0 => {
                    e.kind = EventKind::Page;
                    e.name = None;
                }
                1 => {
                    e.kind = EventKind::Identify;
                    e.name = None;
                }
                2 => e.user_id = None,
                _ => {}
            }
            e
        })
        .collect()
}

async fn commit(app: &TestApp, events: &[Event]) {
    for chunk in events.chunks(500) {
        conformance::commit(app.store.as_ref(), chunk, &[]).await;
    }
}

fn rollup_name(e: &Event) -> String {
    e.name
        .clone()
        .unwrap_or_else(|| e.kind.as_str().to_string())
}

async fn get(app: &TestApp, path: &str, auth: Auth<'_>) -> Resp {
    app.send(auth.apply(app.http.get(app.url(path)))).await
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let r = get(app, path, Auth::Bearer(&app.read_key)).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    r.body
}

/// A direct SQL connection to the app's warehouse database.
async fn sql(app: &TestApp) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&app.db.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// `{"series":[…]}` as (bucket, count) pairs.
fn series(body: &Value) -> Vec<(DateTime<Utc>, u64)> {
    body["series"]
        .as_array()
        .expect("series array")
        .iter()
        .map(|p| {
            let b = p["bucket"].as_str().expect("bucket string");
            (
                DateTime::parse_from_rfc3339(b)
                    .expect("bucket is RFC 3339")
                    .with_timezone(&Utc),
                p["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_equal_rust_and_sql_over_the_raw_events() {
    let app = TestApp::spawn().await;
    let events = generate(&app, 4000, at(2024, 3, 9, 21, 13, 0));
    commit(&app, &events).await;
    let db = sql(&app).await;

    let cases = [
        // 1m over 3 hours starting mid-minute-hour.
        (
            at(2024, 3, 10, 4, 20, 0),
            at(2024, 3, 10, 7, 20, 0),
            Interval::Minute,
        ),
        // 1h over the whole data, unaligned ends.
        (
            at(2024, 3, 9, 20, 30, 0),
            at(2024, 3, 12, 23, 30, 0),
            Interval::Hour,
        ),
        // 1d over a week around it (empty days before and after).
        (
            at(2024, 3, 7, 0, 0, 0),
            at(2024, 3, 14, 0, 0, 0),
            Interval::Day,
        ),
    ];
    for (from, to, interval) in cases {
        let range = TimeRange { from, to };
        let iv = match interval {
            Interval::Minute => "1m",
            Interval::Hour => "1h",
            Interval::Day => "1d",
        };
        for name in [None, Some("Order Completed"), Some("page"), Some("never")] {
            let mut path = format!(
                "/v1/query/counts?from={}&to={}&interval={iv}",
                rfc(from),
                rfc(to)
            );
            if let Some(n) = name {
                path.push_str(&format!("&event={}", urlencode(n)));
            }
            let got = series(&get_ok(&app, &path).await);

            // In Rust, from the generated events.
            let mut per: HashMap<DateTime<Utc>, u64> = HashMap::new();
            for e in &events {
                let minute = Interval::Minute.bucket_of(e.timestamp);
                if e.source == app.source
                    && minute >= from
                    && minute < to
                    && name.is_none_or(|n| rollup_name(e) == n)
                {
                    *per.entry(interval.bucket_of(e.timestamp)).or_default() += 1;
                }
            }
            let want: Vec<(DateTime<Utc>, u64)> = interval
                .buckets(range)
                .into_iter()
                .map(|b| (b, per.get(&b).copied().unwrap_or(0)))
                .collect();
            assert_eq!(got, want, "{path}");

            // In SQL, over the raw events (not the rollup).
            let rows = db
                .query(
                    "SELECT date_bin($1::int8 * interval '1 second', ts, timestamptz '1970-01-01Z'),
                            count(*)
                     FROM events
                     WHERE source = $2 AND date_trunc('minute', ts) >= $3
                       AND date_trunc('minute', ts) < $4
                       AND ($5::text IS NULL OR coalesce(name, kind) = $5)
                     GROUP BY 1",
                    &[&interval.seconds(), &app.source, &from, &to, &name],
                )
                .await
                .expect("sql counts");
            let by_sql: HashMap<DateTime<Utc>, i64> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for (bucket, count) in &got {
                assert_eq!(
                    *count as i64,
                    by_sql.get(bucket).copied().unwrap_or(0),
                    "{path} bucket {bucket}"
                );
            }
            assert_eq!(
                got.iter().filter(|(_, c)| *c > 0).count(),
                by_sql.len(),
                "{path}: every non-empty SQL bucket is in the series"
            );
        }
    }

    // Empty buckets are present as 0.
    let body = get_ok(
        &app,
        &format!(
            "/v1/query/counts?from={}&to={}&interval=1d",
            rfc(at(2024, 3, 1, 0, 0, 0)),
            rfc(at(2024, 3, 4, 0, 0, 0))
        ),
    )
    .await;
    assert_eq!(
        series(&body),
        vec![
            (at(2024, 3, 1, 0, 0, 0), 0),
            (at(2024, 3, 2, 0, 0, 0), 0),
            (at(2024, 3, 3, 0, 0, 0), 0),
        ]
    );
    // The default range is the last 24 hours, hourly: 24 or 25 buckets (an unaligned `now`).
    let body = get_ok(&app, "/v1/query/counts").await;
    let n = series(&body).len();
    assert!((24..=25).contains(&n), "{n} default buckets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_active_users_and_user_events_equal_rust_and_sql() {
    let app = TestApp::spawn().await;
    let events = generate(&app, 3000, at(2024, 3, 9, 21, 13, 0));
    commit(&app, &events).await;
    let db = sql(&app).await;
    let (from, to) = (at(2024, 3, 10, 2, 0, 0), at(2024, 3, 12, 0, 0, 0));
    let mine = |e: &&Event| e.source == app.source;

    // top: Rust, SQL over raw events, API.
    let in_range = |e: &&Event| {
        let m = Interval::Minute.bucket_of(e.timestamp);
        e.source == app.source && m >= from && m < to
    };
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().filter(in_range) {
        *by_name.entry(rollup_name(e)).or_default() += 1;
    }
    let mut want: Vec<(String, u64)> = by_name.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rows = db
        .query(
            "SELECT coalesce(name, kind) AS n, count(*) FROM events
             WHERE source = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
            &[&app.source, &from, &to],
        )
        .await
        .expect("sql top");
    let by_sql: Vec<(String, u64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    for limit in [3usize, 1000] {
        let body = get_ok(
            &app,
            &format!(
                "/v1/query/top?from={}&to={}&limit={limit}",
                rfc(from),
                rfc(to)
            ),
        )
        .await;
        let got: Vec<(String, u64)> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("name").to_string(),
                    e["count"].as_u64().expect("count"),
                )
            })
            .collect();
        let w: Vec<(String, u64)> = want.iter().take(limit).cloned().collect();
        assert_eq!(got, w, "top limit {limit}");
        if limit == 3 {
            assert_eq!(got, by_sql, "top 3 = SQL over events");
        }
    }
    // An event name with markup is returned as data, exactly.
    assert!(want.iter().any(|(n, _)| n == NAMES[4]));

    // active-users: every UTC day overlapping [from, to) — 10th and 11th.
    let body = get_ok(
        &app,
        &format!("/v1/query/active-users?from={}&to={}", rfc(from), rfc(to)),
    )
    .await;
    let mut users_of: BTreeMap<NaiveDate, BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().filter(mine) {
        if let Some(k) = e.user_key() {
            users_of
                .entry(e.timestamp.date_naive())
                .or_default()
                .insert(k.to_string());
        }
    }
    let days = [
        NaiveDate::from_ymd_opt(2024, 3, 10).expect("day"),
        NaiveDate::from_ymd_opt(2024, 3, 11).expect("day"),
    ];
    let want_daily: Vec<Value> = days
        .iter()
        .map(|d| {
            json!({"day": d.format("%Y-%m-%d").to_string(),
                   "users": users_of.get(d).map_or(0, BTreeSet::len)})
        })
        .collect();
    assert_eq!(body["daily"], Value::Array(want_daily));
    let distinct: BTreeSet<&String> = days
        .iter()
        .filter_map(|d| users_of.get(d))
        .flatten()
        .collect();
    assert_eq!(body["distinct"], json!(distinct.len()));
    let sql_distinct: i64 = db
        .query_one(
            "SELECT count(DISTINCT coalesce(user_id, anonymous_id)) FROM events
             WHERE source = $1 AND ts >= '2024-03-10Z' AND ts < '2024-03-12Z'",
            &[&app.source],
        )
        .await
        .expect("sql distinct")
        .get(0);
    assert_eq!(body["distinct"], json!(sql_distinct));

    // events: a user's newest raw events, by user_id and by anonymous_id.
    for (param, value) in [("user_id", "u4"), ("anonymous_id", "anon-q-00002")] {
        let mut want: Vec<&Event> = events
            .iter()
            .filter(mine)
            .filter(|e| {
                let id = if param == "user_id" {
                    e.user_id.as_deref()
                } else {
                    e.anonymous_id.as_deref()
                };
                id == Some(value)
            })
            .collect();
        assert!(!want.is_empty(), "{param}={value} has events");
        want.sort_by(|a, b| {
            b.timestamp
                .cmp(&a.timestamp)
                .then_with(|| b.event_id.cmp(&a.event_id))
        });
        for limit in [2usize, 1000] {
            let body = get_ok(
                &app,
                &format!("/v1/query/events?{param}={value}&limit={limit}"),
            )
            .await;
            let got: Vec<Event> =
                serde_json::from_str(&body["events"].to_string()).expect("canonical events");
            let w: Vec<Event> = want.iter().take(limit).map(|e| (*e).clone()).collect();
            assert_eq!(got, w, "{param}={value} limit {limit}");
        }
    }
    let rows = db
        .query(
            "SELECT event_id FROM events WHERE source = $1 AND user_id = 'u4'
             ORDER BY ts DESC, event_id DESC LIMIT 5",
            &[&app.source],
        )
        .await
        .expect("sql events");
    let sql_ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let body = get_ok(&app, "/v1/query/events?user_id=u4&limit=5").await;
    let ids: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, sql_ids);
    // Another source's events of the same user id are not visible.
    let other_user = events
        .iter()
        .find(|e| e.source == "other-source" && e.user_id.is_some())
        .and_then(|e| e.user_id.clone())
        .expect("other-source user");
    let body = get_ok(
        &app,
        &format!("/v1/query/events?user_id={other_user}&limit=1000"),
    )
    .await;
    assert!(body["events"]
        .as_array()
        .expect("events")
        .iter()
        .all(|e| e["source"] == app.source.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_newest_first_for_the_keys_source() {
    let app = TestApp::spawn().await;
    // Nothing yet: an empty list.
    let body = get_ok(&app, "/v1/query/alerts").await;
    assert_eq!(body, json!({"alerts": []}));

    let t = at(2024, 4, 1, 10, 0, 0);
    let alert = |source: &str, subject: &str, minutes: i64| Alert {
        source: source.into(),
        rule: "user_rate".into(),
        subject: subject.into(),
        window_start: t + chrono::Duration::minutes(minutes),
        window_end: t + chrono::Duration::minutes(minutes + 5),
        count: 100 + minutes as u64,
        first_event_id: format!("{subject}-a"),
        last_event_id: format!("{subject}-z"),
        created_at: t + chrono::Duration::minutes(minutes + 6),
        details: json!({"threshold": 100}),
    };
    let alerts = vec![
        alert(&app.source, "u1", 0),
        alert(&app.source, "u2", 10),
        alert(&app.source, "10.0.0.9", 20),
        alert("other-source", "u1", 10),
    ];
    let new = app
        .store
        .commit_alerts("fraud", &alerts, &[])
        .await
        .expect("commit alerts");
    assert_eq!(new, 4);

    let body = get_ok(
        &app,
        &format!(
            "/v1/query/alerts?from={}&to={}",
            rfc(t + chrono::Duration::minutes(3)),
            rfc(t + chrono::Duration::minutes(60))
        ),
    )
    .await;
    let want: Vec<Value> = [&alerts[2], &alerts[1], &alerts[0]]
        .iter()
        .map(|a| {
            json!({
                "rule": a.rule, "subject": a.subject, "count": a.count,
                "window_start": rfc(a.window_start), "window_end": rfc(a.window_end),
                "first_event_id": a.first_event_id, "last_event_id": a.last_event_id,
                "created_at": rfc(a.created_at), "details": a.details,
            })
        })
        .collect();
    assert_eq!(body["alerts"], Value::Array(want));
    let body = get_ok(
        &app,
        &format!(
            "/v1/query/alerts?from={}&to={}&limit=1",
            rfc(t),
            rfc(t + chrono::Duration::minutes(60))
        ),
    )
    .await;
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["alerts"][0]["subject"], "10.0.0.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let cases: &[(&str, &str)] = &[
        ("/v1/query/counts?from=yesterday", "from"),
        ("/v1/query/counts?to=2024-13-01T00:00:00Z", "to"),
        ("/v1/query/counts?interval=5m", "interval"),
        ("/v1/query/counts?interval=", "interval"),
        (
            "/v1/query/counts?from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z",
            "from",
        ),
        (
            "/v1/query/counts?from=2024-05-01T00:00:00Z&to=2024-05-01T00:00:00Z",
            "from",
        ),
        // 1,501 minutes; 1,500 is fine (below).
        (
            "/v1/query/counts?from=2024-05-01T00:00:00Z&to=2024-05-02T01:01:00Z&interval=1m",
            "interval",
        ),
        (
            "/v1/query/counts?from=2020-01-01T00:00:00Z&to=2024-05-01T00:00:00Z&interval=1d",
            "interval",
        ),
        ("/v1/query/counts?event=", "event"),
        ("/v1/query/top?limit=0", "limit"),
        ("/v1/query/top?limit=1001", "limit"),
        ("/v1/query/top?limit=ten", "limit"),
        ("/v1/query/top?from=2024-05-01", "from"),
        ("/v1/query/active-users?to=now", "to"),
        (
            "/v1/query/active-users?from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z",
            "from",
        ),
        ("/v1/query/events", "user_id"),
        ("/v1/query/events?user_id=u1&anonymous_id=a1", "user_id"),
        ("/v1/query/events?user_id=", "user_id"),
        ("/v1/query/events?anonymous_id=", "anonymous_id"),
        ("/v1/query/events?user_id=u1&limit=-1", "limit"),
        ("/v1/query/alerts?limit=5000", "limit"),
        ("/v1/query/alerts?from=2024-05-01T00:00:00", "from"),
    ];
    for (path, param) in cases {
        let r = get(&app, path, Auth::Bearer(&app.read_key)).await;
        r.assert_error(400, "invalid_request");
        let problems = r.problems();
        assert_eq!(problems.len(), 1, "{path}: {}", r.text);
        assert_eq!(problems[0].0, *param, "{path}: {}", r.text);
        assert!(!problems[0].1.is_empty(), "{path}: a message");
    }
    // At the limits: fine.
    for ok in [
        "/v1/query/counts?from=2024-05-01T00:00:00Z&to=2024-05-02T01:00:00Z&interval=1m",
        "/v1/query/top?limit=1",
        "/v1/query/top?limit=1000",
        // An unencoded `+` offset arrives as a space and is still read as `+`.
        "/v1/query/counts?from=2024-05-01T02:00:00+02:00&to=2024-05-01T03:00:00%2B02:00&interval=1m",
    ] {
        let r = get(&app, ok, Auth::Bearer(&app.read_key)).await;
        assert_eq!(r.status, 200, "{ok}: {}", r.text);
    }
    let body = get_ok(
        &app,
        "/v1/query/counts?from=2024-05-01T02:00:00+02:00&to=2024-05-01T03:00:00%2B02:00&interval=1m",
    )
    .await;
    assert_eq!(series(&body).len(), 60);
    assert_eq!(series(&body)[0].0, at(2024, 5, 1, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_route_needs_a_read_key_of_its_source() {
    let app = TestApp::spawn().await;
    let (other_read, _) = app
        .store
        .create_key("someone-else", KeyKind::Read)
        .await
        .expect("key");
    let (revoked_read, _) = app
        .store
        .create_key(&app.source, KeyKind::Read)
        .await
        .expect("key");
    app.keys.refresh(app.store.as_ref()).await.expect("refresh");
    commit(
        &app,
        &[conformance::event(
            &app.source,
            "only",
            "Mine",
            Some("u1"),
            Utc::now() - chrono::Duration::minutes(5),
        )],
    )
    .await;

    for path in QUERY_ROUTES {
        get(&app, path, Auth::None)
            .await
            .assert_error(401, "unauthorized");
        get(
            &app,
            path,
            Auth::Bearer("sk_r_00000000000000000000000000000000"),
        )
        .await
        .assert_error(401, "unauthorized");
        get(&app, path, Auth::Bearer(&app.write_key))
            .await
            .assert_error(403, "forbidden");
        get(&app, path, Auth::Basic(&app.write_key))
            .await
            .assert_error(403, "forbidden");
        for auth in [
            Auth::Bearer(&app.read_key),
            Auth::Basic(&app.read_key),
            Auth::Bearer(&revoked_read),
        ] {
            let r = get(&app, path, auth).await;
            assert_eq!(r.status, 200, "{path} {auth:?}: {}", r.text);
        }
    }
    // Results are scoped to the key's source.
    let mine = get_ok(&app, "/v1/query/top").await;
    assert_eq!(mine["events"], json!([{"name": "Mine", "count": 1}]));
    let theirs = get(&app, "/v1/query/top", Auth::Bearer(&other_read)).await;
    assert_eq!(theirs.status, 200);
    assert_eq!(theirs.body, json!({"events": []}));

    // Revoked: 401 once the cache is refreshed.
    app.store.revoke_key(&revoked_read).await.expect("revoke");
    app.keys.refresh(app.store.as_ref()).await.expect("refresh");
    for path in QUERY_ROUTES {
        get(&app, path, Auth::Bearer(&revoked_read))
            .await
            .assert_error(401, "unauthorized");
    }
}

/// A TCP proxy to the test PostgreSQL that can be cut: existing connections are dropped and new
/// ones are accepted but never answered (a hung server), without touching the shared server.
struct CuttableProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl CuttableProxy {
    async fn start(target: String) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (cut2, conns2) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let cut = cut2.load(Ordering::SeqCst);
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if cut {
                        // Hold the socket open and say nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(inbound);
                        return;
                    }
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut c) = conns2.lock() {
                    c.push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        CuttableProxy {
            port,
            cut,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for task in c.drain(..) {
                task.abort();
            }
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for task in c.drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `host:port` of a `postgres://…@host:port/db` URL.
fn host_port(url: &str) -> String {
    let after = url.split_once('@').map_or(url, |(_, rest)| rest);
    let after = after.trim_start_matches("postgres://");
    let authority = after.split('/').next().unwrap_or(after);
    if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:5432")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_warehouse_and_queries_answer_503_when_it_is_gone() {
    let app = TestApp::spawn().await;
    let r = get(&app, "/readyz", Auth::None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"log": "ok", "warehouse": "ok"}));
    assert_eq!(
        get(&app, "/healthz", Auth::None).await.body,
        json!({"status": "ok"})
    );

    // A second app on the same log and keys, whose warehouse is reached through a proxy.
    let proxy = CuttableProxy::start(host_port(&app.db.url)).await;
    let proxied_url = app.db.url.replacen(
        &host_port(&app.db.url),
        &format!("127.0.0.1:{}", proxy.port),
        1,
    );
    let store = PgWarehouse::connect(
        &proxied_url,
        PgOptions {
            connect_timeout: Duration::from_millis(800),
            ..PgOptions::default()
        },
    )
    .await
    .expect("connect through the proxy");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let state = AppState {
        log: app.log.clone(),
        store: Arc::new(store),
        live: sluice_worker::LiveHub::spawn(app.log.clone(), sluice_worker::LiveConfig::default()),
        keys: app.keys.clone(),
        config: Arc::new(ServerConfig::default()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sluice_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let send = |path: &str, auth: Auth<'_>| {
        let req = auth.apply(app.http.get(format!("{base}{path}")));
        app.send(req)
    };
    let r = send("/readyz", Auth::None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send("/v1/query/top", Auth::Bearer(&app.read_key)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Warehouse gone (connections dropped, new ones hang): 503 naming it, within the bound.
    proxy.cut();
    let started = Instant::now();
    let r = send("/readyz", Auth::None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["log"], "ok", "{}", r.text);
    assert_ne!(r.body["warehouse"], "ok", "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "readyz took {:?}",
        started.elapsed()
    );
    for path in QUERY_ROUTES {
        let started = Instant::now();
        let r = send(path, Auth::Bearer(&app.read_key)).await;
        r.assert_error(503, "unavailable");
        assert!(r.header("retry-after").is_some(), "{path}: Retry-After");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
    }

    // Back: ready again (the pool reconnects).
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = send("/readyz", Auth::None).await;
        if r.status == 200 {
            assert_eq!(r.body, json!({"log": "ok", "warehouse": "ok"}));
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {}", r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_exactly_the_routes() {
    let app = TestApp::spawn().await;
    let r = get(&app, "/openapi.json", Auth::None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let doc: Value = serde_json::from_str(&r.text).expect("valid JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));

    let mut documented: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/v1/track"),
        ("POST", "/v1/identify"),
        ("POST", "/v1/page"),
        ("POST", "/v1/screen"),
        ("POST", "/v1/group"),
        ("POST", "/v1/alias"),
        ("POST", "/v1/batch"),
        ("POST", "/v1/import"),
        ("POST", "/v1/events"),
        ("POST", "/track"),
        ("GET", "/v1/query/counts"),
        ("GET", "/v1/query/top"),
        ("GET", "/v1/query/active-users"),
        ("GET", "/v1/query/events"),
        ("GET", "/v1/query/alerts"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/live"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/assets/app.js"),
        ("GET", "/assets/app.css"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );

    // Every documented operation is served by the router: not 404 (no route) nor 405 (wrong
    // method). Every route the router serves is in the document, since the router is built from
    // the same list (`sluice_server::openapi::routes`); unknown paths are 404.
    for (method, path) in &documented {
        let req = match method.as_str() {
            "GET" => app.http.get(app.url(path)),
            "POST" => app.http.post(app.url(path)).body("{}"),
            other => panic!("unexpected method {other} for {path}"),
        };
        let r = app.send(req).await;
        assert!(
            r.status != 404 && r.status != 405,
            "{method} {path} is documented but answers {}",
            r.status
        );
    }
    assert_eq!(get(&app, "/v1/query/nope", Auth::None).await.status, 404);
    assert_eq!(
        app.send(app.http.delete(app.url("/v1/query/top")))
            .await
            .status,
        405
    );

    // Security schemes, schemas and per-operation security.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["basic"]["scheme"], "basic");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    for schema in [
        "CountsResponse",
        "TopResponse",
        "ActiveUsersResponse",
        "UserEventsResponse",
        "AlertsResponse",
        "Event",
        "SegmentMessage",
        "SegmentBatch",
        "LegacyTrack",
        "Accepted",
        "ErrorResponse",
        "Readiness",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    let counts = &doc["paths"]["/v1/query/counts"]["get"];
    let params: BTreeSet<&str> = counts["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, BTreeSet::from(["event", "from", "to", "interval"]));
    assert!(counts["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some())));
    assert!(
        doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/x-ndjson"]
            .is_object()
    );
}

/// Percent-encode a query parameter value (enough for the test's names).
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
