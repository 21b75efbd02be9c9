//! Fault tests on a test-owned `redis-server` (from PATH) on a free port: Redis killed → appends
//! fail with `Unavailable` within the bound, then recover by themselves when Redis is back on the
//! same port; Redis frozen (SIGSTOP) → appends time out within the bound instead of hanging.

mod conformance;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::log::{EventLog, LogError, StartFrom};
use sluice_stream::{RedisLog, RedisLogConfig};

/// The append timeout bound plus scheduling slack.
const BOUND: Duration = Duration::from_millis(2500);

/// A `redis-server` child on a fixed port, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.spawn().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH");
        self.child = Some(child);
        // Ready when it answers PING.
        let client = redis::Client::open(self.url()).expect("url");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process must be continued to die cleanly of SIGKILL (it does anyway,
            // but be explicit).
            let _ = Command::new("kill")
                .args([
                    "-CONT",
                    &self.child.as_ref().map_or(0, Child::id).to_string(),
                ])
                .status();
        }
        self.kill();
    }
}

fn config(url: String) -> RedisLogConfig {
    let mut c = RedisLogConfig::new(url);
    c.prefix = "restart".to_owned();
    c.shards = 2;
    c
}

async fn append_until_ok(log: &RedisLog, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match log.append(vec![conformance::record(0, "back")]).await {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "non-retryable error while recovering: {e}"
                );
                assert!(Instant::now() < deadline, "appends did not recover: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_answers_unavailable_quickly_then_recovers() {
    let mut server = RedisServer::start().await;
    let log = RedisLog::connect(config(server.url()))
        .await
        .expect("connect");
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group");
    log.append(vec![conformance::record(0, "before")])
        .await
        .expect("append while up");

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = log
            .append(vec![conformance::record(1, "down")])
            .await
            .expect_err("append while Redis is down");
        let took = started.elapsed();
        assert!(matches!(err, LogError::Unavailable(_)), "{err}");
        assert!(took < BOUND, "append took {took:?} to fail");
        let started = Instant::now();
        assert!(log.ping().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(6));
    }

    server.spawn().await;
    append_until_ok(&log, Duration::from_secs(5)).await;
    // The consumer side recovers too (the data set is empty: no persistence in this test).
    log.ping().await.expect("ping");
    log.ensure_group("g", StartFrom::Beginning)
        .await
        .expect("group after restart");
    let got = conformance::drain(&log, "g", "c", 10).await;
    assert!(!got.is_empty());
    assert!(got.iter().all(|e| &e.payload[..] == b"back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start().await;
    let log = RedisLog::connect(config(server.url()))
        .await
        .expect("connect");
    log.append(vec![conformance::record(0, "before")])
        .await
        .expect("append while up");

    server.signal("-STOP");
    let started = Instant::now();
    let err = log
        .append(vec![conformance::record(0, "frozen")])
        .await
        .expect_err("append while Redis is frozen");
    let took = started.elapsed();
    assert!(matches!(err, LogError::Unavailable(_)), "{err}");
    assert!(took < BOUND, "append took {took:?} to fail");
    assert!(
        took >= Duration::from_millis(1500),
        "failed suspiciously early: {took:?}"
    );

    server.signal("-CONT");
    append_until_ok(&log, Duration::from_secs(5)).await;
}
