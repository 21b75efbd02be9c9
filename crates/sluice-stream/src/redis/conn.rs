//! Connections to Redis: bounded connect attempts, a lazily (re)connected shared connection for
//! short commands, a small pool of dedicated connections for blocking reads, and the one mapping
//! from `redis::RedisError` to `LogError`.
//!
//! The redis crate's own response timeout is disabled: every call here is wrapped in
//! `tokio::time::timeout` with the bound its caller chose (a blocking read waits longer than an
//! XACK). A connection that failed at the transport level is dropped; the next call reconnects.

use std::future::Future;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use sluice_core::log::LogError;
use tokio::sync::Mutex;

use super::config::redact;

/// How long to tell clients to wait when Redis refuses writes for lack of memory.
const OOM_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Opens connections with a bounded connect time.
#[derive(Clone)]
pub(crate) struct Connector {
    client: Client,
    connect_timeout: Duration,
    /// The URL without password, for messages.
    display: String,
}

impl Connector {
    pub(crate) fn new(url: &str, connect_timeout: Duration) -> Result<Self, LogError> {
        let client = Client::open(url)
            .map_err(|e| LogError::Other(format!("invalid redis URL {}: {e}", redact(url))))?;
        Ok(Connector {
            client,
            connect_timeout,
            display: redact(url),
        })
    }

    pub(crate) async fn connect(&self) -> Result<MultiplexedConnection, LogError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        match tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(LogError::Unavailable(format!(
                "cannot connect to {}: {e}",
                self.display
            ))),
            Err(_) => Err(LogError::Unavailable(format!(
                "cannot connect to {} within {:?}",
                self.display, self.connect_timeout
            ))),
        }
    }
}

/// Whether an error means the connection itself is unusable (drop it and reconnect). A reply
/// from the server (it has an error code, even when wrapped by a script) or an undecodable reply
/// leaves the connection fine.
pub(crate) fn is_transport_error(e: &RedisError) -> bool {
    e.code().is_none()
        && !matches!(
            e.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        )
}

/// The single mapping from a redis error to the log's error enum.
pub(crate) fn map_error(e: &RedisError) -> LogError {
    if is_transport_error(e) {
        return LogError::Unavailable(format!("redis: {e}"));
    }
    match e.code() {
        Some("OOM") => LogError::Overloaded {
            backlog: 0,
            retry_after: OOM_RETRY_AFTER,
        },
        // Redis is starting (loading its data set), failing over, or busy with a script.
        Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "READONLY") => {
            LogError::Unavailable(format!("redis: {e}"))
        }
        _ => LogError::Other(format!("redis: {e}")),
    }
}

pub(crate) fn timeout_error(what: &str, after: Duration) -> LogError {
    LogError::Unavailable(format!("redis did not answer {what} within {after:?}"))
}

/// One multiplexed connection shared by all short consumer-side commands, connected on first use
/// and replaced after a transport error.
pub(crate) struct SharedConn {
    connector: Connector,
    slot: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl SharedConn {
    pub(crate) fn new(connector: Connector, timeout: Duration) -> Self {
        SharedConn {
            connector,
            slot: Mutex::new(None),
            timeout,
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, LogError> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.connector.connect().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn invalidate(&self) {
        *self.slot.lock().await = None;
    }

    /// Run `f` on the shared connection within the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, LogError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.get().await?;
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if is_transport_error(&e) {
                    self.invalidate().await;
                }
                Err(map_error(&e))
            }
            Err(_) => {
                self.invalidate().await;
                Err(timeout_error(what, self.timeout))
            }
        }
    }
}

/// Dedicated connections for blocking reads (a blocked command would stall every other command
/// multiplexed on the same connection). Bounded: at most `max_idle` are kept between reads.
pub(crate) struct BlockingPool {
    connector: Connector,
    idle: StdMutex<Vec<MultiplexedConnection>>,
    max_idle: usize,
}

impl BlockingPool {
    pub(crate) fn new(connector: Connector, max_idle: usize) -> Self {
        BlockingPool {
            connector,
            idle: StdMutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Run `f` on a dedicated connection within `timeout`; the connection goes back to the pool
    /// only if the call succeeded.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        f: F,
    ) -> Result<T, LogError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match pooled {
            Some(conn) => conn,
            None => self.connector.connect().await?,
        };
        match tokio::time::timeout(timeout, f(conn.clone())).await {
            Ok(Ok(value)) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < self.max_idle {
                        idle.push(conn);
                    }
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                if !is_transport_error(&e) {
                    if let Ok(mut idle) = self.idle.lock() {
                        if idle.len() < self.max_idle {
                            idle.push(conn);
                        }
                    }
                }
                Err(map_error(&e))
            }
            Err(_) => Err(timeout_error(what, timeout)),
        }
    }
}
