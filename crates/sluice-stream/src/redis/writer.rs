//! The append path: a bounded queue of append requests drained by `writers` tasks, each with its
//! own connection. A writer takes one request, then whatever else is already queued (up to the
//! pipeline cap), sends ONE pipeline of `XADD {prefix}:events:{shard} * e <payload>` for all of
//! them, and answers every request. Concurrent HTTP requests therefore share round trips; nothing
//! is ever sent one round trip per event, and nothing is buffered without bound (a full queue
//! makes `append` wait, within its timeout).
//!
//! A transport error or timeout drops the writer's connection and answers `Unavailable`; the next
//! request reconnects (bounded by the connect timeout), so the log recovers by itself when Redis
//! comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use sluice_core::log::{LogError, Record};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use super::conn::{is_transport_error, map_error, timeout_error, Connector};
use super::reply::PAYLOAD_FIELD;

/// One caller's append, answered once its records are in Redis (or failed).
pub(crate) struct AppendRequest {
    pub records: Vec<Record>,
    pub reply: oneshot::Sender<Result<(), LogError>>,
}

/// Counters of the append path, for metrics and for tests that check coalescing.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub pipelines_sent: AtomicU64,
    pub records_sent: AtomicU64,
}

pub(crate) struct WriterSettings {
    pub connector: Connector,
    pub keys: Arc<[String]>,
    pub max_pipeline: usize,
    pub timeout: Duration,
    pub stats: Arc<WriterStats>,
}

/// Spawn `count` writer tasks sharing `rx`. They end when every sender of the queue is dropped.
pub(crate) fn spawn(
    count: usize,
    rx: mpsc::Receiver<AppendRequest>,
    settings: Arc<WriterSettings>,
) -> Vec<JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..count)
        .map(|_| tokio::spawn(writer_loop(rx.clone(), settings.clone())))
        .collect()
}

async fn writer_loop(rx: Arc<Mutex<mpsc::Receiver<AppendRequest>>>, s: Arc<WriterSettings>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut batch = Vec::new();
    loop {
        {
            // Only one writer drains at a time; the lock is released before the round trip, so
            // the next writer fills its pipeline while this one waits for Redis.
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut records = first.records.len();
            batch.push(first);
            while records < s.max_pipeline {
                match rx.try_recv() {
                    Ok(req) => {
                        records += req.records.len();
                        batch.push(req);
                    }
                    Err(_) => break,
                }
            }
        }
        // A caller that already gave up (timed out) is told nothing and its records are not
        // written: it answered its client with an error.
        batch.retain(|req: &AppendRequest| !req.reply.is_closed());
        if !batch.is_empty() {
            send(&mut conn, &mut batch, &s).await;
        }
        batch.clear();
    }
}

async fn send(
    conn: &mut Option<MultiplexedConnection>,
    batch: &mut Vec<AppendRequest>,
    s: &WriterSettings,
) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut records = 0u64;
    for req in batch.iter() {
        for r in &req.records {
            // Shards were validated by `append`; a bad one cannot reach this point, but do not
            // index out of bounds on it either.
            let key = s.keys.get(r.shard as usize).map_or("", |k| k.as_str());
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg(PAYLOAD_FIELD)
                .arg(r.payload.as_ref());
            records += 1;
        }
    }

    let mut c = match conn {
        Some(c) => c.clone(),
        None => match s.connector.connect().await {
            Ok(c) => {
                *conn = Some(c.clone());
                c
            }
            Err(e) => return answer_all(batch, &e),
        },
    };

    let reply = tokio::time::timeout(
        s.timeout,
        pipe.query_async::<Vec<RedisResult<Value>>>(&mut c),
    )
    .await;
    s.stats.pipelines_sent.fetch_add(1, Ordering::Relaxed);
    match reply {
        Ok(Ok(results)) => {
            s.stats.records_sent.fetch_add(records, Ordering::Relaxed);
            let mut results = results.into_iter();
            for req in batch.drain(..) {
                let mut outcome = Ok(());
                for _ in 0..req.records.len() {
                    match results.next() {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            if outcome.is_ok() {
                                outcome = Err(map_error(&e));
                            }
                        }
                        None => {
                            outcome = Err(LogError::Other(
                                "redis answered fewer replies than commands sent".to_owned(),
                            ));
                        }
                    }
                }
                // The caller may have timed out meanwhile; nothing to do then.
                let _ = req.reply.send(outcome);
            }
        }
        Ok(Err(e)) => {
            if is_transport_error(&e) {
                *conn = None;
            }
            answer_all(batch, &map_error(&e));
        }
        Err(_) => {
            *conn = None;
            answer_all(batch, &timeout_error("an append pipeline", s.timeout));
        }
    }
}

fn answer_all(batch: &mut Vec<AppendRequest>, error: &LogError) {
    for req in batch.drain(..) {
        let _ = req.reply.send(Err(clone_error(error)));
    }
}

pub(crate) fn clone_error(e: &LogError) -> LogError {
    match e {
        LogError::Unavailable(m) => LogError::Unavailable(m.clone()),
        LogError::Overloaded {
            backlog,
            retry_after,
        } => LogError::Overloaded {
            backlog: *backlog,
            retry_after: *retry_after,
        },
        LogError::Other(m) => LogError::Other(m.clone()),
    }
}
