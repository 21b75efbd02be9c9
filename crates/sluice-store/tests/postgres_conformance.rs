//! The warehouse conformance suite against a real PostgreSQL (a fresh database per test), plus
//! the PostgreSQL-specific cases: migrations, partitions, connection errors.

use std::time::{Duration, Instant};

use chrono::{Days, TimeZone, Utc};
use sluice_core::warehouse::{KeyStore, StoreError, Warehouse};
use sluice_store::testing::{conformance, PgProbe, TestDb};
use sluice_store::{PgOptions, PgWarehouse};

async fn setup() -> (TestDb, PgWarehouse, PgProbe) {
    let db = TestDb::create().await;
    let wh = db.warehouse(PgOptions::default()).await;
    let probe = db.probe().await;
    (db, wh, probe)
}

macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (_db, wh, probe) = setup().await;
            conformance::$case(&wh, &probe).await;
        }
    )*};
}

conformance_cases!(
    commit_inserts,
    redelivery_adds_nothing,
    duplicates_within_batch,
    retry_with_other_timestamp_is_duplicate,
    late_events_land_in_their_own_minute,
    rollups_equal_group_by,
    far_past_and_future_events_are_stored,
    dedupe_window_is_pruned,
    concurrent_overlapping_commits,
    query_counts_fill_empty_buckets,
    query_top_events,
    query_active_users,
    query_user_events,
    query_alerts_and_commit_alerts_exactly_once,
    verification_lookups,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_list_revoke() {
    let (_db, wh, probe) = setup().await;
    conformance::keys_create_list_revoke(&wh).await;
    // Nothing stored anywhere equals a key: create one more and look for it in every column.
    let (key, _) = wh
        .create_key("shop", sluice_core::keys::KeyKind::Write)
        .await
        .expect("create key");
    let hits: i64 = probe
        .client()
        .query_one(
            "SELECT count(*) FROM api_keys a WHERE strpos(a::text, $1) > 0",
            &[&key],
        )
        .await
        .and_then(|r| r.try_get(0))
        .expect("query api_keys");
    assert_eq!(hits, 0, "the key itself is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_move_forward_only() {
    let (_db, wh, _probe) = setup().await;
    conformance::offsets_move_forward_only(&wh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_and_concurrently_is_idempotent() {
    let db = TestDb::create().await;
    let a = PgWarehouse::connect(&db.url, PgOptions::default())
        .await
        .expect("connect");
    let b = PgWarehouse::connect(&db.url, PgOptions::default())
        .await
        .expect("connect");
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.expect("first concurrent migrate");
    rb.expect("second concurrent migrate");
    a.migrate().await.expect("migrate again");
    let probe = db.probe().await;
    let rows = probe
        .client()
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("schema_migrations");
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (1, "api_keys".to_string()),
            (2, "rollups_offsets_dedupe".to_string()),
            (3, "events_native".to_string()),
            (4, "alerts".to_string()),
            (5, "leaner_indexes".to_string()),
        ]
    );
    assert!(!a.uses_timescaledb().await.expect("flavour"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_day_partitions_around_today() {
    let (_db, wh, probe) = setup().await;
    wh.maintain().await.expect("maintain");
    let today = Utc::now().date_naive();
    for offset in -1i64..=7 {
        let day = if offset < 0 {
            today.checked_sub_days(Days::new(1))
        } else {
            today.checked_add_days(Days::new(offset as u64))
        }
        .expect("day");
        let name = format!("events_p{}", day.format("%Y%m%d"));
        let exists: bool = probe
            .client()
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .and_then(|r| r.try_get(0))
            .expect("to_regclass");
        assert!(exists, "partition {name} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_moves_default_rows_into_a_new_day_partition() {
    let (_db, wh, probe) = setup().await;
    let c = probe.client();
    // Today+3 exists after migrate; drop it so its events land in the default partition.
    let day = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(3))
        .expect("day");
    let name = format!("events_p{}", day.format("%Y%m%d"));
    c.batch_execute(&format!("DROP TABLE {name}"))
        .await
        .expect("drop partition");
    let ts = Utc.from_utc_datetime(&day.and_hms_opt(13, 14, 15).expect("time"));
    let events: Vec<_> = (0..300)
        .map(|i| conformance::event("s1", &format!("d{i}"), "Later", Some("u"), ts))
        .collect();
    conformance::commit(&wh, &events, &[]).await;
    let count = |sql: String| async move {
        c.query_one(&sql, &[])
            .await
            .and_then(|r| r.try_get::<_, i64>(0))
            .expect("count")
    };
    assert_eq!(
        count("SELECT count(*) FROM events_default".into()).await,
        300
    );

    wh.maintain().await.expect("maintain");
    assert_eq!(count("SELECT count(*) FROM events_default".into()).await, 0);
    assert_eq!(count(format!("SELECT count(*) FROM {name}")).await, 300);
    assert_eq!(count("SELECT count(*) FROM events".into()).await, 300);
    let attached: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1))",
            &[&name],
        )
        .await
        .and_then(|r| r.try_get(0))
        .expect("pg_inherits");
    assert!(attached, "{name} is attached");
    // New events of that day now go straight into the partition, and nothing is lost or doubled.
    conformance::commit(&wh, &events, &[]).await;
    let more = vec![conformance::event("s1", "d-new", "Later", Some("u"), ts)];
    conformance::commit(&wh, &more, &[]).await;
    assert_eq!(count(format!("SELECT count(*) FROM {name}")).await, 301);
    let diffs = sluice_store::testing::Probe::rollup_mismatches(&probe)
        .await
        .expect("rollups");
    assert!(diffs.is_empty(), "{diffs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_day_partitions_only() {
    let db = TestDb::create().await;
    let wh = db
        .warehouse(PgOptions {
            retention_days: Some(30),
            ..PgOptions::default()
        })
        .await;
    let probe = db.probe().await;
    let c = probe.client();
    let today = Utc::now().date_naive();
    let old_day = today.checked_sub_days(Days::new(40)).expect("day");
    let recent_day = today.checked_sub_days(Days::new(20)).expect("day");
    for day in [old_day, recent_day] {
        let name = format!("events_p{}", day.format("%Y%m%d"));
        let next = day.succ_opt().expect("next");
        c.batch_execute(&format!(
            "CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ('{day}') TO ('{next}')"
        ))
        .await
        .expect("create partition");
    }
    wh.maintain().await.expect("maintain");
    let exists = |day: chrono::NaiveDate| async move {
        let name = format!("events_p{}", day.format("%Y%m%d"));
        c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .and_then(|r| r.try_get::<_, bool>(0))
            .expect("to_regclass")
    };
    assert!(
        !exists(old_day).await,
        "partition older than retention dropped"
    );
    assert!(exists(recent_day).await, "partition within retention kept");
    assert!(exists(today).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable_quickly() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let started = Instant::now();
    let err = PgWarehouse::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        PgOptions {
            connect_timeout: Duration::from_millis(500),
            ..PgOptions::default()
        },
    )
    .await
    .expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_retryable_and_recover() {
    let (db, wh, probe) = setup().await;
    wh.ping().await.expect("ping");
    probe
        .client()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .expect("terminate");
    // The pooled connection is dead: the first use may fail, but only retryably; then it recovers.
    let e = vec![conformance::event("s1", "x", "A", None, Utc::now())];
    match wh.commit_batch("warehouse", &e, &[]).await {
        Ok(o) => assert_eq!(o.inserted, 1),
        Err(err) => {
            assert!(err.is_retryable(), "{err:?}");
            assert_eq!(conformance::commit(&wh, &e, &[]).await.inserted, 1);
        }
    }
}
