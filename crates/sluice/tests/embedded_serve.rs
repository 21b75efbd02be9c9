//! `sluice serve` with no services: the real binary on the embedded backends in a temporary data
//! directory. First-start keys, one process per data directory, clear errors for an unusable
//! directory, and the crash test: `kill -9` while a client sends, restart, and every event that
//! was answered 2xx is in the warehouse exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;

/// A running `sluice serve`, killed on drop.
struct Serve {
    child: Child,
    base: String,
    write_key: Option<String>,
    read_key: Option<String>,
}

impl Serve {
    /// Start `sluice serve` on `dir` and wait until it prints its address.
    fn start(dir: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--max-wait", "20ms"])
            // Restarted often by the crash test: keep healthy entries out of the dead-letter
            // stream however often they are redelivered.
            .args(["--max-deliveries", "1000"])
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut base, mut write_key, mut read_key) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(url) = line.strip_prefix("sluice API listening on ") {
                base = Some(url.trim().to_string());
            }
            if let Some(k) = line.trim().strip_prefix("write key: ") {
                write_key = Some(k.trim().to_string());
            }
            if let Some(k) = line.trim().strip_prefix("read key: ") {
                read_key = Some(k.trim().to_string());
            }
            if line.trim_start().starts_with("dashboard:")
                && base.is_some()
                && (write_key.is_some() || !line.contains("#key=sk_"))
            {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let base = base.expect("sluice serve did not print its address");
        Serve {
            child,
            base,
            write_key,
            read_key,
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Events of the run stored in the embedded warehouse: (rows, distinct ids). Read through a
/// read-only SQLite connection, which WAL lets run beside the serving process.
fn stored(dir: &Path, prefix: &str) -> (i64, i64) {
    let db = dir.join("warehouse.sqlite3");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open warehouse read-only");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn.query_row(
        "SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id LIKE ?1 || '%'",
        [prefix],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("count events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_keys_and_the_pipeline_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path());
    let write_key = serve
        .write_key
        .clone()
        .expect("first start prints a write key");
    assert!(serve
        .read_key
        .as_deref()
        .is_some_and(|k| k.starts_with("sk_r_")));
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/v1/batch", serve.base))
        .basic_auth(&write_key, Some(""))
        .json(&json!({"batch": (0..10).map(|i| json!({"type": "track", "userId": "u1", "event": "e", "messageId": format!("first-{i}")})).collect::<Vec<_>>()}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored(dir.path(), "first-") != (10, 10) {
        assert!(
            Instant::now() < deadline,
            "events did not reach the embedded warehouse: {:?}",
            stored(dir.path(), "first-")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A later start does not create keys again, and still works.
    drop(serve);
    let again = Serve::start(dir.path());
    assert!(
        again.write_key.is_none(),
        "keys are created only on the first start"
    );
    let resp = http
        .post(format!("{}/v1/track", again.base))
        .basic_auth(&write_key, Some(""))
        .json(&json!({"userId": "u1", "event": "e", "messageId": "first-10"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_the_heap_and_the_pages_holding_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path());
    let http = reqwest::Client::new();
    // Refreshed every second from the start: wait for the first refresh.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (allocated, resident, metadata) = loop {
        let text = http
            .get(format!("{}/metrics", serve.base))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        let read = |name| sample(&text, name);
        if let (Some(a), Some(r), Some(m)) = (
            read("sluice_memory_allocated_bytes"),
            read("sluice_memory_resident_bytes"),
            read("sluice_memory_metadata_bytes"),
        ) {
            break (a, r, m);
        }
        assert!(
            Instant::now() < deadline,
            "no memory gauges in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A serving process holds at least its memtables' and caches' first megabyte; the pages
    // hold the heap and the allocator's metadata.
    assert!(allocated > 1e6, "allocated {allocated}");
    assert!(metadata > 0.0, "metadata {metadata}");
    assert!(
        resident >= allocated + metadata,
        "resident {resident} < allocated {allocated} + metadata {metadata}"
    );
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_dir_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Serve::start(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run second serve");
    assert!(
        !out.status.success(),
        "a second serve on the same directory must not start"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "unclear error: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn an_unusable_data_dir_is_a_clear_error() {
    // Root ignores permission bits, so use a path below a regular file: no process can create it.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").expect("write file");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(file.join("data"))
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("not-a-directory"),
        "unclear error: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sending_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve::start(dir.path());
    let write_key = serve.write_key.clone().expect("write key");
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let base = Arc::new(Mutex::new(serve.base.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients send batches of 20 with unique ids, recording what was answered 2xx.
    let mut clients = Vec::new();
    for c in 0..4 {
        let (acked, base, stop, key) =
            (acked.clone(), base.clone(), stop.clone(), write_key.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<String> = (0..20).map(|i| format!("crash-{c}-{}", seq + i)).collect();
                seq += 20;
                let batch: Vec<_> = ids
                    .iter()
                    .map(|id| json!({"type": "track", "userId": format!("u{}", seq % 97), "event": "crash", "messageId": id}))
                    .collect();
                let url = format!("{}/v1/batch", base.lock().expect("lock"));
                match http.post(url).basic_auth(&key, Some("")).json(&json!({ "batch": batch })).send().await {
                    Ok(r) if r.status().is_success() => acked.lock().expect("lock").extend(ids),
                    // Refused, reset or timed out while the server was down: not acked, fine.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        serve.kill9();
        serve = Serve::start(dir.path());
        *base.lock().expect("lock") = serve.base.clone();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 1_000,
        "too little traffic to prove anything: {}",
        acked.len()
    );
    // Wait for the worker to drain, then every acked event must be stored exactly once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (rows, distinct) = stored(dir.path(), "crash-");
        assert_eq!(rows, distinct, "an event was stored twice");
        if distinct as usize >= acked.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {distinct} of {} acked events stored",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = dir.path().join("warehouse.sqlite3");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let mut stmt = conn
        .prepare("SELECT event_id FROM events WHERE event_id LIKE 'crash-%'")
        .expect("prepare");
    let ids: HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !ids.contains(*id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acked events missing from the warehouse, e.g. {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_managed_beside_a_running_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path());
    let keys = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("keys")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run sluice keys");
        assert!(
            out.status.success(),
            "sluice keys {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created = keys(&["create", "--source", "mobile", "--kind", "write"]);
    let key = created.lines().last().expect("key line").trim().to_string();
    assert!(key.starts_with("sk_w_"), "{created}");
    assert!(keys(&["list"]).contains("mobile"));
    let http = reqwest::Client::new();
    let post = |key: String| {
        let http = http.clone();
        let url = format!("{}/v1/track", serve.base);
        async move {
            http.post(url)
                .basic_auth(key, Some(""))
                .json(&json!({"userId": "u", "event": "e"}))
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    // The API picks new keys up within its 5 s refresh.
    let deadline = Instant::now() + Duration::from_secs(12);
    while post(key.clone()).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the new key was not accepted within 12 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    keys(&["revoke", &key]);
    let deadline = Instant::now() + Duration::from_secs(12);
    while post(key.clone()).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the revoked key still works after 12 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Over the embedded log the live view is fed by the API (nothing tails the log): the events of
/// a request are counted once appended, by name, and a rejected request counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_alerts_reach_the_live_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(dir.path());
    let write_key = serve.write_key.clone().expect("write key");
    let read_key = serve.read_key.clone().expect("read key");
    let http = reqwest::Client::new();
    // 150 events from one user within a second: above the default user_rate (100 in 10 s).
    let now = chrono::Utc::now();
    let batch: Vec<_> = (0..150)
        .map(|i| {
            json!({"type": "track", "userId": "bot-1", "event": "click", "messageId": format!("bot-{i}"),
                   "timestamp": (now + chrono::Duration::milliseconds(i)).to_rfc3339()})
        })
        .collect();
    let resp = http
        .post(format!("{}/v1/batch", serve.base))
        .basic_auth(&write_key, Some(""))
        .json(&json!({ "batch": batch }))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let rejected = http
        .post(format!("{}/v1/batch", serve.base))
        .basic_auth(&write_key, Some(""))
        .json(&json!({ "batch": [{"type": "track", "userId": "bot-1"}] }))
        .send()
        .await
        .expect("post");
    assert_eq!(rejected.status(), 400);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live: serde_json::Value = http
            .get(format!("{}/v1/live", serve.base))
            .bearer_auth(&read_key)
            .send()
            .await
            .expect("live")
            .json()
            .await
            .expect("live JSON");
        let alerts = live["alerts"].as_array().cloned().unwrap_or_default();
        let alerted = alerts.iter().find(|a| a["rule"] == "user_rate");
        if let (Some(a), 150) = (alerted, live["total_5m"].as_u64().unwrap_or(0)) {
            assert_eq!(a["subject"], "bot-1", "{a}");
            assert_eq!(
                live["by_name_5m"],
                json!([{"name": "click", "count": 150}]),
                "{live}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no user_rate alert in the live view: {live}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_backend_not_compiled_in_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "kafka://127.0.0.1:9092",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without a Kafka event log"),
        "unclear error: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_taken_port_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    // The workers must stop with the API instead of running headless.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice serve kept running after failing to listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains("cannot listen on"),
        "unclear error: {stderr}"
    );
}
