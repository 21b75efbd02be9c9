//! The one test harness: the real app on port 0, against the real Redis (a fresh key prefix per
//! test) and the real PostgreSQL (a fresh database per test), with typed helpers. Everything is
//! cleaned up on drop. Tests fail loudly when a service is missing; they never skip.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_core::keys::KeyKind;
use sluice_core::log::{Entry, EventLog, StartFrom};
use sluice_core::warehouse::{KeyStore, Warehouse};
use sluice_core::Event;
use sluice_server::{AppState, KeyCache, ServerConfig};
use sluice_store::testing::TestDb;
use sluice_store::{PgOptions, PgWarehouse};
use sluice_stream::redis::{RedisLog, RedisLogConfig};
use sluice_worker::warehouse::WarehouseProcessor;
use sluice_worker::{ConsumerConfig, Worker};
use tokio::sync::oneshot;

pub fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A fresh key prefix for one test.
pub fn fresh_prefix() -> String {
    format!("sluicetest-{}", uuid::Uuid::new_v4().simple())
}

/// Delete every key under `prefix` (sync client, so it can run in `Drop`).
pub fn delete_prefix(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_connection() else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub source: String,
    pub write_key: String,
    pub read_key: String,
    pub prefix: String,
    pub log: Arc<RedisLog>,
    pub store: Arc<PgWarehouse>,
    pub keys: Arc<KeyCache>,
    /// The app's live aggregator (`/v1/live`), e.g. to push alerts.
    pub live: sluice_worker::LiveHub,
    pub db: TestDb,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(ServerConfig::default(), |_| {}).await
    }

    /// Start the app with a server config and a chance to adjust the log config.
    pub async fn spawn_with(
        config: ServerConfig,
        tweak: impl FnOnce(&mut RedisLogConfig),
    ) -> TestApp {
        let prefix = fresh_prefix();
        let mut log_config = RedisLogConfig::new(redis_url());
        log_config.prefix = prefix.clone();
        log_config.shards = 4;
        tweak(&mut log_config);
        let log =
            Arc::new(RedisLog::connect(log_config).await.unwrap_or_else(|e| {
                panic!("Redis for tests is unreachable at {}: {e}", redis_url())
            }));
        let db = TestDb::create().await;
        let store = Arc::new(db.warehouse(PgOptions::default()).await);
        let source = "test-app".to_string();
        let (write_key, _) = store
            .create_key(&source, KeyKind::Write)
            .await
            .expect("create write key");
        let (read_key, _) = store
            .create_key(&source, KeyKind::Read)
            .await
            .expect("create read key");
        let keys = Arc::new(KeyCache::default());
        keys.refresh(store.as_ref()).await.expect("load keys");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let live = sluice_worker::LiveHub::spawn(log.clone(), sluice_worker::LiveConfig::default());
        let state = AppState {
            log: log.clone(),
            live: live.clone(),
            store: store.clone(),
            keys: keys.clone(),
            config: Arc::new(config),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sluice_server::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            source,
            write_key,
            read_key,
            prefix,
            log,
            store,
            keys,
            live,
            db,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST a JSON body with the write key as HTTP Basic username (Segment's convention).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .basic_auth(&self.write_key, Some(""))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// POST raw bytes with the given headers and no implicit auth.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Every entry currently in the log, read through a fresh consumer group (so the test sees
    /// exactly what a processor would).
    pub async fn read_log(&self) -> Vec<Entry> {
        let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
        self.log
            .ensure_group(&group, StartFrom::Beginning)
            .await
            .expect("group");
        let mut all = Vec::new();
        loop {
            let batch = self
                .log
                .read_new(&group, "reader", 1000, Duration::from_millis(10))
                .await
                .expect("read");
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        all
    }

    /// The events in the log, decoded.
    pub async fn logged_events(&self) -> Vec<Event> {
        self.read_log()
            .await
            .iter()
            .map(|e| Event::from_json(&e.payload).expect("canonical event JSON"))
            .collect()
    }

    /// Send any request and keep everything a test may assert on.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// POST a JSON body with the given authentication.
    pub async fn post_auth(&self, path: &str, auth: Auth<'_>, body: &Value) -> Resp {
        let req = auth.apply(self.http.post(self.url(path)).json(body));
        self.send(req).await
    }

    /// POST raw bytes with the write key as HTTP Basic username plus the given headers.
    pub async fn post_bytes(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let mut req = self
            .http
            .post(self.url(path))
            .basic_auth(&self.write_key, Some(""))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    /// Panic unless the log holds no event at all.
    pub async fn assert_log_empty(&self, what: &str) {
        let events = self.logged_events().await;
        assert!(
            events.is_empty(),
            "{what}: expected nothing in the log, found {} event(s): {events:?}",
            events.len()
        );
    }

    /// The logged event with this `event_id`; panics unless there is exactly one.
    pub async fn logged_event(&self, event_id: &str) -> Event {
        let mut found: Vec<Event> = self
            .logged_events()
            .await
            .into_iter()
            .filter(|e| e.event_id == event_id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one logged event with event_id {event_id:?}, found {found:?}"
        );
        found.remove(0)
    }

    pub fn warehouse(&self) -> Arc<dyn Warehouse> {
        self.store.clone()
    }
}

/// A response with its status, headers, raw text and (when it is JSON) parsed body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// `Value::Null` when the body is not JSON.
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panic unless this is an error answer in the API's JSON shape with `status` and `code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status; body: {}", self.text);
        assert_eq!(
            self.body["success"], false,
            "error body must say success:false: {}",
            self.text
        );
        assert_eq!(self.body["error"], code, "error code; body: {}", self.text);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body needs a message: {}",
            self.text
        );
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error body must be JSON: {:?}",
            self.headers
        );
    }

    /// The `(path, message)` pairs of an error body's `errors`.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["path"].as_str().unwrap_or("<no path>").to_string(),
                            p["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How a request presents its key.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// HTTP Basic with the key as username and an empty password (Segment's convention).
    Basic(&'a str),
    Bearer(&'a str),
}

impl Auth<'_> {
    pub fn apply(self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => req,
            Auth::Basic(k) => req.basic_auth(k, Some("")),
            Auth::Bearer(k) => req.bearer_auth(k),
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip write");
    e.finish().expect("gzip finish")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        delete_prefix(&self.prefix);
    }
}

/// Shards of the logs the pipeline tests (worker, fraud) use.
pub const PIPELINE_SHARDS: u32 = 4;

/// The processors' test bed: a Redis log under a fresh prefix (no backpressure) and a fresh
/// migrated PostgreSQL database, with a probe of its tables. Keys are deleted on drop.
pub struct Pipeline {
    pub prefix: String,
    pub log: Arc<RedisLog>,
    pub db: TestDb,
    pub store: Arc<PgWarehouse>,
    pub probe: sluice_store::testing::PgProbe,
}

impl Pipeline {
    pub async fn new() -> Pipeline {
        let prefix = fresh_prefix();
        let mut config = RedisLogConfig::new(redis_url());
        config.prefix = prefix.clone();
        config.shards = PIPELINE_SHARDS;
        config.high_water_mark = u64::MAX;
        let log =
            Arc::new(RedisLog::connect(config).await.unwrap_or_else(|e| {
                panic!("Redis for tests is unreachable at {}: {e}", redis_url())
            }));
        let db = TestDb::create().await;
        let store = Arc::new(db.warehouse(PgOptions::default()).await);
        let probe = db.probe().await;
        Pipeline {
            prefix,
            log,
            db,
            store,
            probe,
        }
    }

    /// The `--log` URL of this test's streams, for spawned binaries.
    pub fn log_url(&self) -> String {
        format!(
            "{}?prefix={}&shards={PIPELINE_SHARDS}",
            redis_url(),
            self.prefix
        )
    }

    /// Append events in chunks, each to its shard.
    pub async fn append(&self, events: &[Event]) {
        append_events(self.log.as_ref(), events).await;
    }

    /// Entries `group` has not processed yet (undelivered + pending).
    pub async fn backlog(&self, group: &str) -> u64 {
        group_backlog(self.log.as_ref(), group).await
    }

    /// Start the real `sluice worker` binary on this pipeline.
    pub fn spawn_worker(&self, processor: &str, consumer: &str, batch_size: &str) -> ChildGuard {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["worker", "--processor", processor])
            .args(["--log", &self.log_url(), "--store", &self.db.url])
            .args(["--consumer", consumer, "--batch-size", batch_size])
            .args(["--max-wait", "50ms", "--claim-idle", "2s"])
            // Crash tests kill workers far more often than entries would ever be redelivered in
            // production: every restart redelivers the read-ahead batches, so the default limit
            // of 5 deliveries would dead-letter healthy entries. Poison handling is tested on
            // its own.
            .args(["--max-deliveries", "1000"])
            .env("SLUICE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn sluice worker");
        ChildGuard(child)
    }
}

/// Append events to any log with [`PIPELINE_SHARDS`] shards, in chunks, each to its shard.
pub async fn append_events(log: &dyn EventLog, events: &[Event]) {
    for chunk in events.chunks(2_000) {
        let records = chunk
            .iter()
            .map(|e| sluice_core::log::Record {
                shard: sluice_core::shard::shard_of(e, PIPELINE_SHARDS),
                payload: bytes::Bytes::from(e.to_json()),
            })
            .collect();
        log.append(records).await.expect("append");
    }
}

/// Entries `group` has not processed yet (undelivered + pending) in any log.
pub async fn group_backlog(log: &dyn EventLog, group: &str) -> u64 {
    let lag = log.lag().await.expect("lag");
    lag.iter()
        .filter(|g| g.group == group)
        .map(|g| g.backlog())
        .sum()
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        delete_prefix(&self.prefix);
    }
}

/// A child process killed (`SIGKILL`) when dropped.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An in-process warehouse worker, running until the returned sender fires (or is dropped); the
/// handle ends with it and panics if the worker failed.
pub fn spawn_warehouse_worker(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Warehouse>,
    config: ConsumerConfig,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(log, Arc::new(WarehouseProcessor::new(store)), config);
    let handle = tokio::spawn(async move {
        worker
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("worker");
    });
    (stop, handle)
}
