//! Measures the embedded warehouse's id indexes alone (`embedded/ids.rs`: the dedupe index and
//! the user index, in fjall) as they grow: the work `commit_batch` gives them per batch — look
//! the ids up in key order, record the new ones and their user entries — without SQLite, as fast
//! as one thread drives it, with fjall's background workers beside it.
//! `cargo run --release -p sluice-store --features testing --example index_cost --
//! [events] [batch] [users]` (defaults 16,000,000, 5,000, 5,000; ids spread like random UUIDs).
//! Prints a line every ~2M events: the process's CPU time per event (all threads: look-ups,
//! memtable inserts, flushes and compactions) over those 2M and since the start, the rate, RSS.

use std::path::Path;
use std::time::Instant;

use rand::Rng;
use sluice_store::embedded::IndexLoad;
use sluice_store::testing::stat_cpu_seconds;

const REPORT_EVERY: u64 = 2_000_000;

/// User + system CPU time of the whole process, in seconds.
fn cpu_seconds() -> f64 {
    stat_cpu_seconds(Path::new("/proc/self/stat")).expect("/proc/self/stat")
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default).max(1);
    let (total, batch, users) = (arg(0, 16_000_000), arg(1, 5_000), arg(2, 5_000));

    let dir = tempfile::tempdir()?;
    let mut index = IndexLoad::open(dir.path())?;
    let mut rng = rand::rng();
    let run: u32 = rng.random();
    let user_names: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let (mut last, mut cpu_last) = (start, cpu0);
    let (mut done, mut reported) = (0u64, 0u64);
    let mut ids: Vec<String> = Vec::with_capacity(batch as usize);
    while done < total {
        let n = batch.min(total - done) as usize;
        ids.clear();
        ids.extend((0..n).map(|_| format!("{run:08x}-{:016x}", rng.random::<u64>())));
        let events: Vec<(&str, &str, &str)> = ids
            .iter()
            .map(|id| {
                let user = &user_names[rng.random_range(0..user_names.len())];
                ("bench", id.as_str(), user.as_str())
            })
            .collect();
        let now = chrono::Utc::now().timestamp_micros();
        let new = index.commit(&events, now)?;
        assert_eq!(new, n, "a fresh random id was found in the index");
        done += n as u64;
        if done - reported >= REPORT_EVERY || done == total {
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let window = done - reported;
            println!(
                "{:>11} events  {:6.1} s  {:5.2} µs/event (since start {:5.2})  {:7.0} events/s  RSS {} MB",
                done,
                (t - start).as_secs_f64(),
                (cpu - cpu_last) * 1e6 / window as f64,
                (cpu - cpu0) * 1e6 / done as f64,
                window as f64 / (t - last).as_secs_f64(),
                rss_mb(),
            );
            (last, cpu_last, reported) = (t, cpu, done);
        }
    }
    Ok(())
}
