//! fjall with two background workers, as the embedded log and the warehouse index run it (the
//! patched copy in `vendor/fjall`, see its PATCHES.md): worker 0 rotates and flushes memtables
//! while the other worker compacts, and neither spins nor stops.
//!
//! fjall 3.1.13 as released put a compaction request back on the shared queue whenever worker 0
//! took one, and took it again at once while the other worker was busy, so worker 0 spun for as
//! long as every compaction ran: this test fails there on worker 0's CPU time. A first patch
//! lost compaction requests, and writes then halted for good once level 0 filled: the test
//! fails on a halt by its timeout.
//!
//! Alone in its test binary: it reads the CPU time of the process's `fjall:worker` threads.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use fjall::compaction::Leveled;
use fjall::{Database, KeyspaceCreateOptions};
use sluice_store::testing::stat_cpu_seconds;

/// Keys written: random 16-byte keys (as the dedupe index's hashes) with 8-byte values.
const KEYS: u64 = 3_000_000;
const PER_BATCH: u64 = 5_000;

#[test]
fn one_worker_flushes_while_the_other_compacts_without_spinning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::builder(dir.path())
        .worker_threads(2)
        .open()
        .expect("open fjall");
    let ks = db
        .keyspace("k", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(1024 * 1024)
                .compaction_strategy(std::sync::Arc::new(
                    Leveled::default().with_table_target_size(2 * 1024 * 1024),
                ))
        })
        .expect("keyspace");

    // Write from another thread, so that a halt (writes held back forever because no
    // compaction comes) fails the test instead of hanging it.
    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let db = db.clone();
        let ks = ks.clone();
        std::thread::spawn(move || {
            let mut state = 0x5eed_u64;
            for _ in 0..KEYS / PER_BATCH {
                let mut batch = db.batch();
                for _ in 0..PER_BATCH {
                    let mut key = [0u8; 16];
                    key[..8].copy_from_slice(&splitmix64(&mut state).to_le_bytes());
                    key[8..].copy_from_slice(&splitmix64(&mut state).to_le_bytes());
                    batch.insert(&ks, &key[..], &state.to_le_bytes()[..]);
                }
                batch.commit().expect("commit");
            }
            done_tx.send(()).ok();
        })
    };
    done_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("writes did not finish within 300 s: fjall halted them (no compaction came)");
    writer.join().expect("writer");

    // Let the last flushes and compactions finish.
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.outstanding_flushes() > 0 || db.active_compactions() > 0 {
        assert!(Instant::now() < deadline, "fjall's workers did not settle");
        std::thread::sleep(Duration::from_millis(20));
    }

    let compacting = db.time_compacting().as_secs_f64();
    assert!(
        compacting >= 1.0,
        "the test must keep a worker compacting for a while: {compacting:.2} s"
    );
    let workers = worker_cpu_secs();
    eprintln!(
        "compacting {compacting:.2} s; CPU of the fjall workers, worker 0 first: {workers:?}"
    );
    assert_eq!(workers.len(), 2, "two fjall:worker threads: {workers:?}");
    // Worker 0 only rotates and flushes memtables: a small part of the time the other one
    // compacts (leveled compaction of random keys rewrites each key several times). Spinning,
    // it took about as much CPU as the compactions took time.
    let first = workers[0];
    assert!(
        first < compacting / 2.0,
        "worker 0 took {first:.2} s of CPU while the other compacted for {compacting:.2} s \
         (worker CPU: {workers:?})"
    );
    assert!(
        workers[1] > first,
        "the second worker compacts: worker CPU {workers:?}"
    );
}

/// CPU seconds (user + system) of this process's `fjall:worker` threads, in the order they
/// were started (thread ids ascending: worker 0 first).
fn worker_cpu_secs() -> Vec<f64> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "fjall:worker" {
            continue;
        }
        let tid: u64 = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("thread id");
        let cpu = stat_cpu_seconds(&path.join("stat")).expect("thread stat");
        threads.push((tid, cpu));
    }
    threads.sort_by_key(|&(tid, _)| tid);
    threads.into_iter().map(|(_, cpu)| cpu).collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
