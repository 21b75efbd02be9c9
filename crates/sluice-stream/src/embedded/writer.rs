//! The append path: a bounded queue of append requests drained by ONE writer thread. The writer
//! takes a request, then whatever else is already queued (up to `max_batch` records), assigns
//! ids, writes all of them and the shards' new heads in ONE fjall batch, makes it durable once
//! (one `fsync` with `Durability::Fsync`), keeps the entries in memory for readers near the head
//! (`recent`), publishes the new heads to readers, wakes blocked readers, and answers every
//! request. Concurrent appends therefore share one fsync; nothing is
//! written one sync per event, and nothing is buffered without bound (a full queue makes
//! `append` wait, within its timeout).
//!
//! It is a dedicated OS thread, not a tokio task, because every iteration blocks on disk IO. It
//! ends when every sender of the queue is dropped, after answering what was queued.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_core::log::{LogError, Record};
use tokio::sync::{mpsc, oneshot};

use super::config::Durability;
use super::keys;
use super::store::{now_ms, Head, Store};

/// One caller's append, answered once its records are durable (or failed).
pub(crate) struct AppendRequest {
    pub records: Vec<Record>,
    pub reply: oneshot::Sender<Result<(), LogError>>,
}

pub(crate) fn spawn(
    store: Arc<Store>,
    rx: mpsc::Receiver<AppendRequest>,
    durability: Durability,
    max_batch: usize,
) -> Result<std::thread::JoinHandle<()>, LogError> {
    std::thread::Builder::new()
        .name("sluice-log-writer".to_owned())
        .spawn(move || run(&store, rx, durability, max_batch))
        .map_err(|e| LogError::Other(format!("cannot start the embedded log writer: {e}")))
}

fn run(
    store: &Store,
    mut rx: mpsc::Receiver<AppendRequest>,
    durability: Durability,
    max_batch: usize,
) {
    // Ids handed out so far; ahead of the published heads while a batch is being written.
    let mut next: Vec<Head> = store.heads();
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut records = first.records.len();
        batch.push(first);
        while records < max_batch {
            match rx.try_recv() {
                Ok(req) => {
                    records += req.records.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (timed out) is told nothing and its records are not written:
        // it already answered its client with an error.
        batch.retain(|req: &AppendRequest| !req.reply.is_closed());
        if !batch.is_empty() {
            let outcome = write(store, &mut next, &batch, durability);
            for req in batch.drain(..) {
                let _ = req
                    .reply
                    .send(outcome.as_ref().map_err(clone_error).copied());
            }
        }
        batch.clear();
    }
}

fn write(
    store: &Store,
    next: &mut [Head],
    batch: &[AppendRequest],
    durability: Durability,
) -> Result<(), LogError> {
    let mode = match durability {
        Durability::Fsync => fjall::PersistMode::SyncAll,
        Durability::Flush => fjall::PersistMode::Buffer,
    };
    let now = now_ms();
    let mut heads = next.to_vec();
    let mut touched = vec![false; heads.len()];
    let mut wb = store.db.batch().durability(Some(mode));
    let mut written = Vec::new();
    for r in batch.iter().flat_map(|req| &req.records) {
        // Shards were validated by `append`.
        let Some(head) = heads.get_mut(r.shard as usize) else {
            return Err(LogError::Other(format!("shard {} out of range", r.shard)));
        };
        head.last = head.last.next(now);
        head.appended += 1;
        touched[r.shard as usize] = true;
        wb.insert(
            &store.events[r.shard as usize],
            keys::event_key(r.shard, head.last),
            r.payload.as_ref(),
        );
        written.push((r.shard, head.last, r.payload.clone()));
    }
    let n = written.len() as u64;
    for (shard, head) in (0u32..).zip(&heads) {
        if touched[shard as usize] {
            wb.insert(
                &store.meta,
                keys::head_key(shard),
                &keys::encode_id_count(head.last, head.appended)[..],
            );
        }
    }
    // Ids are never reused, even when the write fails.
    next.copy_from_slice(&heads);
    let result = wb.commit();
    store.stats.batches.fetch_add(1, Ordering::Relaxed);
    if durability == Durability::Fsync {
        store.stats.syncs.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = result {
        tracing::error!(error = ?e, "embedded log append failed");
        return Err(store.err(&e));
    }
    store.stats.records.fetch_add(n, Ordering::Relaxed);
    // Readers that see the new heads find these entries in memory.
    store.recent.push(written);
    {
        let mut published = store
            .heads
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (shard, head) in heads.iter().enumerate() {
            if touched[shard] {
                published[shard] = *head;
            }
        }
        store.total_appended.fetch_add(n, Ordering::AcqRel);
    }
    store.appended.notify_waiters();
    Ok(())
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
