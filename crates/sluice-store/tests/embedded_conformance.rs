//! The warehouse conformance suite against the embedded (SQLite) warehouse, a fresh data
//! directory per test, plus the embedded-specific cases: the data-directory lock, reopening,
//! unusable directories, a full disk, URLs.

use std::time::Duration;

use sluice_core::warehouse::{KeyStore, StoreError, UserRef, Warehouse};
use sluice_store::testing::{conformance, SqliteProbe};
use sluice_store::{SqliteOptions, SqliteWarehouse};
use tempfile::TempDir;

async fn setup() -> (TempDir, SqliteWarehouse, SqliteProbe) {
    setup_with(SqliteOptions::default()).await
}

async fn setup_with(opts: SqliteOptions) -> (TempDir, SqliteWarehouse, SqliteProbe) {
    let dir = tempfile::tempdir().expect("temp dir");
    let wh = SqliteWarehouse::open(dir.path(), opts)
        .await
        .expect("open embedded warehouse");
    let probe = SqliteProbe::open(&wh).expect("probe");
    (dir, wh, probe)
}

macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (_dir, wh, probe) = setup().await;
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
    let (_dir, wh, probe) = setup().await;
    conformance::keys_create_list_revoke(&wh).await;
    // Nothing stored anywhere equals a key: create one more and look for it in every column.
    let (key, _) = wh
        .create_key("shop", sluice_core::keys::KeyKind::Write)
        .await
        .expect("create key");
    let hits: i64 = probe
        .with(|c| {
            c.query_row(
                "SELECT count(*) FROM api_keys
                 WHERE instr(source || kind || key_hash || hint, ?1) > 0",
                [&key],
                |r| r.get(0),
            )
        })
        .expect("query api_keys");
    assert_eq!(hits, 0, "the key itself is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_move_forward_only() {
    let (_dir, wh, _probe) = setup().await;
    conformance::offsets_move_forward_only(&wh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_data_directory_fails_clearly() {
    let (dir, wh, _probe) = setup().await;
    let err = SqliteWarehouse::open(dir.path(), SqliteOptions::default())
        .await
        .expect_err("the directory is locked");
    let msg = err.to_string();
    assert!(
        msg.contains("is in use by another sluice process")
            && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
    // Released when the warehouse (every clone) is dropped.
    drop(wh);
    SqliteWarehouse::open(dir.path(), SqliteOptions::default())
        .await
        .expect("reopen after the first one closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_and_migrations_are_recorded_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let t = chrono::Utc::now();
    let events: Vec<_> = (0..10)
        .map(|i| conformance::event("s1", &format!("e{i}"), "A", Some("u"), t))
        .collect();
    {
        let wh = SqliteWarehouse::open(dir.path(), SqliteOptions::default())
            .await
            .expect("open");
        conformance::commit(&wh, &events, &[]).await;
        wh.migrate().await.expect("migrate again");
    }
    let wh = SqliteWarehouse::from_url(
        &format!("embedded:{}", dir.path().display()),
        SqliteOptions::default(),
    )
    .await
    .expect("reopen by URL");
    assert_eq!(conformance::commit(&wh, &events, &[]).await.inserted, 0);
    let probe = SqliteProbe::open(&wh).expect("probe");
    let versions: Vec<(i64, String)> = probe
        .with(|c| {
            let mut s = c.prepare("SELECT version, name FROM schema_migrations ORDER BY 1")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .expect("schema_migrations");
    assert_eq!(
        versions,
        vec![
            (1, "api_keys".to_string()),
            (2, "rollups_offsets_dedupe".to_string()),
            (3, "events".to_string()),
            (4, "alerts".to_string()),
            (5, "partial_user_indexes".to_string()),
            (6, "deferred_user_index".to_string()),
            (7, "no_event_id_index".to_string()),
            (8, "dedupe_index".to_string()),
            (9, "user_index_in_fjall".to_string()),
        ]
    );
    let dedupe_tables: i64 = probe
        .with(|c| {
            c.query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'event_dedupe'",
                [],
                |r| r.get(0),
            )
        })
        .expect("sqlite_master");
    assert_eq!(
        dedupe_tables, 0,
        "the dedupe window lives in the dedupe index"
    );
    let id_indexes: i64 = probe
        .with(|c| {
            c.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' \
                 AND sql LIKE '%event_id%'",
                [],
                |r| r.get(0),
            )
        })
        .expect("sqlite_master");
    assert_eq!(id_indexes, 0, "no index on the events' ids");
    let mode: String = probe
        .with(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let page: i64 = probe
        .with(|c| c.query_row("PRAGMA page_size", [], |r| r.get(0)))
        .expect("page_size");
    assert_eq!(page, 16384, "a new database has 16 KiB pages");
}

/// Ten events of "s1" now, with ids `{prefix}-0` … `{prefix}-9`.
fn batch(prefix: &str) -> Vec<sluice_core::Event> {
    let t = chrono::Utc::now();
    (0..10)
        .map(|i| conformance::event("s1", &format!("{prefix}-{i}"), "A", Some("u"), t))
        .collect()
}

/// The dedupe index is derived from `events`: deleted, it is rebuilt at the next open, and a
/// redelivery still adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dedupe_index_is_rebuilt_from_the_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = || SqliteWarehouse::open(dir.path(), SqliteOptions::default());
    {
        let wh = open().await.expect("open");
        assert_eq!(
            conformance::commit(&wh, &batch("a"), &[]).await.inserted,
            10
        );
    }
    let index = dir.path().join(sluice_store::embedded::ID_INDEX_DIR);
    assert!(index.is_dir(), "the index lives in the data directory");
    std::fs::remove_dir_all(&index).expect("delete the index");
    let wh = open().await.expect("reopen");
    assert_eq!(conformance::commit(&wh, &batch("a"), &[]).await.inserted, 0);
    assert_eq!(
        conformance::commit(&wh, &batch("b"), &[]).await.inserted,
        10
    );
    let found = wh
        .stored_event_ids("s1", &["a-3".to_string(), "b-3".into(), "c-3".into()])
        .await
        .expect("stored ids");
    assert_eq!(found, ["a-3", "b-3"]);
}

/// An index ahead of the database (here: the database file put back to an older copy, as
/// commits lost to a power cut with `synchronous = NORMAL` would leave it) must not refuse the
/// events the database lost: it is rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedupe_index_ahead_of_the_database_is_rebuilt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = || SqliteWarehouse::open(dir.path(), SqliteOptions::default());
    let db = dir.path().join(sluice_store::embedded::DATABASE_FILE);
    let copy = dir.path().join("older.sqlite3");
    {
        let wh = open().await.expect("open");
        conformance::commit(&wh, &batch("a"), &[]).await;
    }
    std::fs::copy(&db, &copy).expect("copy the database");
    {
        let wh = open().await.expect("reopen");
        assert_eq!(
            conformance::commit(&wh, &batch("b"), &[]).await.inserted,
            10
        );
    }
    std::fs::rename(&copy, &db).expect("put the older database back");
    let wh = open().await.expect("open the older database");
    assert_eq!(
        conformance::commit(&wh, &batch("b"), &[]).await.inserted,
        10,
        "the events the database lost get in again"
    );
    assert_eq!(conformance::commit(&wh, &batch("a"), &[]).await.inserted, 0);
}

/// A warehouse opened shared (beside the serving process, as `sluice bench --verify` opens it)
/// has no dedupe index: it answers look-ups by id from `events` — with `since`, only from the
/// events of that time on — and refuses to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_warehouse_looks_ids_up_in_the_events_and_does_not_commit() {
    let (dir, wh, _probe) = setup().await;
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::hours(2);
    let events = vec![
        conformance::event("s1", "old", "A", Some("u"), old),
        conformance::event("s1", "new", "A", Some("u"), now),
        conformance::event("s2", "other", "A", Some("u"), now),
    ];
    conformance::commit(&wh, &events, &[]).await;
    let shared = SqliteWarehouse::open(
        dir.path(),
        SqliteOptions {
            exclusive: false,
            ..SqliteOptions::default()
        },
    )
    .await
    .expect("open shared beside the exclusive one");
    let asked: Vec<String> = ["new", "old", "other", "missing", "new"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let exclusive = wh.stored_event_ids("s1", &asked).await.expect("ids");
    assert_eq!(exclusive, ["new", "old"]);
    let scanned = shared.stored_event_ids("s1", &asked).await.expect("ids");
    assert_eq!(scanned, exclusive, "the same answer without the index");
    let recent = shared
        .stored_event_ids_since("s1", &asked, now - chrono::Duration::minutes(1))
        .await
        .expect("ids since");
    assert_eq!(
        recent,
        ["new"],
        "only the events from `since` on are scanned"
    );
    match shared
        .commit_batch(
            "warehouse",
            &[conformance::event("s1", "x", "A", None, now)],
            &[],
        )
        .await
    {
        Err(StoreError::Other(msg)) => assert!(msg.contains("opened shared"), "{msg}"),
        other => panic!("a shared warehouse must refuse to commit, got {other:?}"),
    }
}

/// The writer never checkpoints (it is the pipeline's serial stage); the checkpoint thread copies
/// the committed pages from the WAL into the database file while the warehouse stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wh = SqliteWarehouse::open(dir.path(), SqliteOptions::default())
        .await
        .expect("open");
    let db = wh.database_path().to_path_buf();
    let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let t = chrono::Utc::now();
    let events: Vec<_> = (0..5_000)
        .map(|i| conformance::event("s1", &format!("ck-{i}"), "A", Some("u"), t))
        .collect();
    assert_eq!(conformance::commit(&wh, &events, &[]).await.inserted, 5_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // ~1.5 MB of events: the file grows by far more than a few pages once they are copied in.
    while size() < before + 1_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes (from {before}): nothing was checkpointed",
            size()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_path_works_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sub").join("my.sqlite3");
    let wh = SqliteWarehouse::open(&file, SqliteOptions::default())
        .await
        .expect("open file");
    assert_eq!(wh.database_path(), file.as_path());
    wh.ping().await.expect("ping");
    let err = SqliteWarehouse::open(&file, SqliteOptions::default())
        .await
        .expect_err("locked");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_directory_is_a_clear_error() {
    // /proc is read-only even for root.
    let err = SqliteWarehouse::open("/proc/sluice-test-data", SqliteOptions::default())
        .await
        .expect_err("cannot create a directory in /proc");
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    assert!(
        err.to_string().contains("/proc/sluice-test-data"),
        "the message names the directory: {err}"
    );
    // A path whose parent is a file.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let err = SqliteWarehouse::open(file.join("data"), SqliteOptions::default())
        .await
        .expect_err("parent is a file");
    assert!(err.to_string().contains("data directory"), "{err}");
    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'j'; 8192]).expect("write");
    let err = SqliteWarehouse::open(&junk, SqliteOptions::default())
        .await
        .expect_err("not a database");
    assert!(err.to_string().contains("junk.db"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_a_retryable_error_and_nothing_is_half_written() {
    let (_dir, wh, probe) = setup_with(SqliteOptions {
        max_size_bytes: Some(2 * 1024 * 1024),
        ..SqliteOptions::default()
    })
    .await;
    let t = chrono::Utc::now();
    let mut full = None;
    let mut stored = 0;
    for b in 0..100 {
        let events: Vec<_> = (0..500)
            .map(|i| conformance::event("s1", &format!("b{b}-{i}"), "A", Some("u"), t))
            .collect();
        match wh.commit_batch("warehouse", &events, &[]).await {
            Ok(o) => stored += o.inserted,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the size limit is reached");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("disk full"), "{err}");
    // The failed batch left nothing behind; the warehouse still answers reads.
    assert_eq!(
        sluice_store::testing::Probe::events_count(&probe, "s1")
            .await
            .expect("count"),
        stored as i64
    );
    wh.ping().await.expect("ping");
    let diffs = sluice_store::testing::Probe::rollup_mismatches(&probe)
        .await
        .expect("rollups");
    assert!(diffs.is_empty(), "{diffs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_behind_a_commit() {
    let (_dir, wh, _probe) = setup().await;
    let t = chrono::Utc::now();
    let big: Vec<_> = (0..60_000)
        .map(|i| conformance::event("s1", &format!("big-{i}"), "A", Some("u"), t))
        .collect();
    let writer = {
        let wh = wh.clone();
        tokio::spawn(async move { wh.commit_batch("warehouse", &big, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    wh.ping().await.expect("ping during a commit");
    wh.positions("warehouse").await.expect("positions");
    let read_time = started.elapsed();
    let o = writer.await.expect("join").expect("commit");
    assert_eq!(o.inserted, 60_000);
    assert!(
        read_time < Duration::from_millis(200),
        "reads took {read_time:?} during a commit"
    );
}

/// Copy the stored event `from` of source "s1" into `events` as event `id`, below the
/// warehouse: the row is after the user index's `through`, as the rows of a commit not indexed
/// yet.
fn insert_behind_the_index(probe: &SqliteProbe, id: &str, from: &str) {
    probe
        .with(|c| {
            c.execute(
                "INSERT INTO events SELECT ?1, source, kind, name, user_id, anonymous_id,
                     group_id, previous_id, ts, original_ts, sent_at, received_at,
                     properties, traits, context, integrations
                 FROM events WHERE source = 's1' AND event_id = ?2",
                [id, from],
            )
        })
        .expect("insert a row behind the index");
}

/// The user query answers the same from the user index, from `events` alone (a warehouse
/// opened shared has no index), and with rows the index does not cover yet; and a reopened
/// warehouse indexes those rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_queries_are_complete_with_any_part_of_the_user_index_built() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = |exclusive| {
        SqliteWarehouse::open(
            dir.path(),
            SqliteOptions {
                exclusive,
                ..SqliteOptions::default()
            },
        )
    };
    let wh = open(true).await.expect("open");
    let probe = SqliteProbe::open(&wh).expect("probe");
    conformance::query_user_events(&wh, &probe).await;
    let (entries, through, last) = probe.user_index().await.expect("user index");
    assert_eq!(through, last, "every commit is indexed");
    assert!(
        entries as i64 > last,
        "user and anonymous entries: {entries}"
    );
    let indexed = every_users_events(&wh).await;
    let shared = open(false).await.expect("open shared");
    assert_eq!(
        every_users_events(&shared).await,
        indexed,
        "scanned without the index"
    );
    drop(shared);
    // Copies of u7's three newest events, behind the index: each sorts right before its
    // original (same time, a longer id), so they are the six newest now.
    let newest = wh
        .user_events("s1", &UserRef::UserId("u7".into()), 3)
        .await
        .expect("user events");
    let mut want = Vec::new();
    for e in &newest {
        let copy = format!("{}-copy", e.event_id);
        insert_behind_the_index(&probe, &copy, &e.event_id);
        want.push((e.timestamp, copy));
        want.push((e.timestamp, e.event_id.clone()));
    }
    want.sort_unstable_by(|a, b| b.cmp(a));
    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
    let (_, through_now, last) = probe.user_index().await.expect("user index");
    assert_eq!((through_now, last), (through, through + 3));
    let got = user_event_ids(&wh, &UserRef::UserId("u7".into()), 6).await;
    assert_eq!(got, want);
    let split = every_users_events(&wh).await;
    assert_ne!(split, indexed, "the copies are found");
    drop(probe);
    drop(wh);
    let wh = open(true).await.expect("reopen");
    let probe = SqliteProbe::open(&wh).expect("probe");
    let (_, through, last) = probe.user_index().await.expect("user index");
    assert_eq!(through, last, "opening indexed the rows behind it");
    assert_eq!(every_users_events(&wh).await, split);
}

/// A data directory from before the user index left SQLite (version 8: a `user_index` table,
/// no `users` keyspace, ids keyed by their text, no format in `meta`) gets every event indexed
/// again when it opens: users found, redeliveries still duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_with_an_older_index_layout_is_reindexed_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = || SqliteWarehouse::open(dir.path(), SqliteOptions::default());
    let want = {
        let wh = open().await.expect("open");
        let probe = SqliteProbe::open(&wh).expect("probe");
        conformance::query_user_events(&wh, &probe).await;
        conformance::commit(&wh, &batch("r"), &[]).await;
        every_users_events(&wh).await
    };
    {
        let index = fjall::Database::builder(dir.path().join(sluice_store::embedded::ID_INDEX_DIR))
            .open()
            .expect("open the index");
        let users = index
            .keyspace("users", fjall::KeyspaceCreateOptions::default)
            .expect("users keyspace");
        index.delete_keyspace(users).expect("delete it");
        let meta = index
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .expect("meta keyspace");
        meta.remove("format").expect("forget the format");
        index.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    let wh = open().await.expect("reopen");
    let probe = SqliteProbe::open(&wh).expect("probe");
    let (entries, through, last) = probe.user_index().await.expect("user index");
    assert_eq!(through, last);
    assert!(entries as i64 > last, "indexed again: {entries}");
    assert_eq!(every_users_events(&wh).await, want);
    assert_eq!(
        conformance::commit(&wh, &batch("r"), &[]).await.inserted,
        0,
        "received within the window: still duplicates"
    );
}

/// An entry whose event is gone (retention deleted the event, and the entry's delete failed or
/// a crash came in between) is skipped: the answer holds `limit` events all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_queries_skip_entries_of_deleted_events() {
    let (_dir, wh, probe) = setup().await;
    conformance::query_user_events(&wh, &probe).await;
    let user = UserRef::UserId("u7".into());
    let all = user_event_ids(&wh, &user, 10_000).await;
    assert!(all.len() > 10, "u7 has events: {}", all.len());
    for id in &all[..5] {
        probe
            .with(|c| c.execute("DELETE FROM events WHERE event_id = ?1", [id]))
            .expect("delete below the warehouse");
    }
    let got = user_event_ids(&wh, &user, 5).await;
    assert_eq!(got, all[5..10]);
}

/// The ids of `user`'s newest `limit` events of source "s1".
async fn user_event_ids(wh: &SqliteWarehouse, user: &UserRef, limit: u32) -> Vec<String> {
    wh.user_events("s1", user, limit)
        .await
        .expect("user events")
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

/// The answers for every user and anonymous id of `conformance::query_events`, at two limits.
async fn every_users_events(wh: &SqliteWarehouse) -> Vec<Vec<String>> {
    let users = (0..40)
        .map(|i| UserRef::UserId(format!("u{i}")))
        .chain((0..25).map(|i| UserRef::AnonymousId(format!("a{i}"))));
    let mut out = Vec::new();
    for user in users {
        for limit in [7, 10_000] {
            let got = user_event_ids(wh, &user, limit).await;
            assert!(!got.is_empty(), "{user:?} has events");
            out.push(got);
        }
    }
    out
}

/// Events of one user with the same time, on both sides of the limit and of `through`: the
/// answer is the newest by (ts, event_id), as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_query_breaks_ties_by_event_id_across_the_index_and_the_tail() {
    let (_dir, wh, probe) = setup().await;
    let t = chrono::Utc::now();
    let ids = ["e05", "e12", "e03", "e09", "e01", "e11", "e07", "e02"];
    let make = |id: &str| conformance::event("s1", id, "A", Some("tie"), t);
    // Indexed: the first five.
    let first: Vec<_> = ids[..5].iter().map(|id| make(id)).collect();
    wh.commit_batch("warehouse", &first, &[])
        .await
        .expect("commit");
    // Behind the index: three more, copies of a stored row (same user and time).
    for id in &ids[5..] {
        insert_behind_the_index(&probe, id, ids[0]);
    }
    let (_, through, last) = probe.user_index().await.expect("user index");
    assert_eq!((through, last), (5, 8));
    let mut want: Vec<&str> = ids.to_vec();
    want.sort_unstable_by(|a, b| b.cmp(a));
    for limit in [1, 3, 5, 6, 8, 20] {
        let got = wh
            .user_events("s1", &UserRef::UserId("tie".into()), limit)
            .await
            .expect("user events");
        let got: Vec<&str> = got.iter().map(|e| e.event_id.as_str()).collect();
        let n = (limit as usize).min(want.len());
        assert_eq!(got, want[..n], "limit {limit}");
    }
}

/// Retention deletes an event's user-index entries with it, and when the newest rows go,
/// `through` follows the largest remaining rowid: SQLite hands those rowids out again, and
/// the events that get them must be found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_user_index_exact() {
    let (_dir, wh, probe) = setup_with(SqliteOptions {
        retention_days: Some(30),
        ..SqliteOptions::default()
    })
    .await;
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::days(40);
    // `n` events of user "u" at `ts`, ids `{prefix}-00`, `{prefix}-01`, …
    let of_u = |prefix: &str, n: usize, ts| -> Vec<_> {
        (0..n)
            .map(|i| conformance::event("s1", &format!("{prefix}-{i:02}"), "A", Some("u"), ts))
            .collect()
    };
    let recent = of_u("new", 10, now);
    let stale = of_u("old", 10, old);
    // The old events are the newest rows.
    wh.commit_batch("warehouse", &recent, &[])
        .await
        .expect("commit");
    wh.commit_batch("warehouse", &stale, &[])
        .await
        .expect("commit");
    assert_eq!(
        probe.user_index().await.expect("user index"),
        (40, 20, 20),
        "user and anonymous entries"
    );
    wh.maintain().await.expect("maintain");
    assert_eq!(
        probe.user_index().await.expect("user index"),
        (20, 10, 10),
        "old entries gone, through lowered"
    );
    // New events may reuse rowids 11..: they must be indexed and found.
    let later = of_u("later", 5, now);
    wh.commit_batch("warehouse", &later, &[])
        .await
        .expect("commit");
    let got = wh
        .user_events("s1", &UserRef::UserId("u".into()), 100)
        .await
        .expect("user events");
    let mut ids: Vec<&str> = got.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..10)
        .map(|i| format!("new-{i:02}"))
        .chain((0..5).map(|i| format!("later-{i:02}")))
        .collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    assert_eq!(probe.user_index().await.expect("user index"), (30, 15, 15));
}
