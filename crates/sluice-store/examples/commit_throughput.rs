//! Measures `Warehouse::commit_batch` throughput on either backend, in a fresh database:
//! `cargo run --release -p sluice-store --features testing --example commit_throughput --
//! [postgres|embedded|embedded-normal] [events] [batch] [workers]`
//! (defaults postgres, 400000, 10000, 1). `embedded` is SQLite with `synchronous = FULL`,
//! `embedded-normal` with `NORMAL`; `RANDOM_IDS=1` gives the events ids spread like SDKs' random UUIDs (default: ascending ids).
//! Events look like `sluice bench`'s: several names, thousands of users, ~300-byte properties.
//! Prints one JSON line.

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};
use sluice_core::warehouse::{ShardPosition, Warehouse};
use sluice_store::testing::{conformance, TestDb};
use sluice_store::{PgOptions, SqliteOptions, SqliteWarehouse, Synchronous};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args
        .first()
        .map(String::as_str)
        .unwrap_or("postgres")
        .to_string();
    let number = |i: usize, default: usize| {
        args.get(i)
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(default)
            .max(1)
    };
    let (total, batch, workers) = (number(1, 400_000), number(2, 10_000), number(3, 1));

    // Kept alive until the end: dropping them removes the database.
    let mut _db = None;
    let mut _dir = None;
    let wh: Arc<dyn Warehouse> = match backend.as_str() {
        "postgres" => {
            let db = TestDb::create().await;
            let wh = db.warehouse(PgOptions::default()).await;
            _db = Some(db);
            Arc::new(wh)
        }
        "embedded" | "embedded-normal" => {
            let dir = tempfile::tempdir()?;
            let synchronous = if backend == "embedded" {
                Synchronous::Full
            } else {
                Synchronous::Normal
            };
            let opts = SqliteOptions {
                synchronous,
                ..SqliteOptions::default()
            };
            let wh = SqliteWarehouse::open(dir.path(), opts).await?;
            _dir = Some(dir);
            Arc::new(wh)
        }
        other => {
            return Err(
                format!("unknown backend {other:?}: postgres, embedded or embedded-normal").into(),
            )
        }
    };

    let now = Utc::now();
    let names = [
        "Page Viewed",
        "Product Clicked",
        "Added To Cart",
        "Checkout",
        "Signed Up",
    ];
    let random_ids =
        matches!(std::env::var("RANDOM_IDS").as_deref(), Ok(v) if !v.is_empty() && v != "0");
    let batches: Vec<Vec<_>> = (0..total)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| {
                    let ts = now - Duration::milliseconds((i % 600_000) as i64);
                    conformance::event(
                        "bench",
                        &if random_ids {
                            // Like SDKs' random UUIDs: each id lands anywhere in the id indexes.
                            format!(
                                "{:016x}-{i:012}",
                                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            )
                        } else {
                            format!("{i:012}-{:08x}", i.wrapping_mul(2_654_435_761))
                        },
                        names[i % names.len()],
                        Some(&format!("user-{}", i % 5000)),
                        ts,
                    )
                })
                .collect()
        })
        .collect();

    let started = Instant::now();
    let per_worker = batches.len().div_ceil(workers);
    let mut tasks = Vec::new();
    for (w, mine) in batches.chunks(per_worker).enumerate() {
        let wh = wh.clone();
        let mine = mine.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut inserted = 0;
            for (n, b) in mine.iter().enumerate() {
                let pos = [ShardPosition {
                    shard: w as u32,
                    last_id: format!("{}-0", n + 1),
                }];
                inserted += wh.commit_batch("bench", b, &pos).await?.inserted;
            }
            Ok::<u64, sluice_core::warehouse::StoreError>(inserted)
        }));
    }
    let mut inserted = 0;
    for t in tasks {
        inserted += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"backend\":\"{backend}\",\"events\":{total},\"batch\":{batch},\"workers\":{workers},\"inserted\":{inserted},\"seconds\":{secs:.3},\"events_per_sec\":{:.0}}}",
        inserted as f64 / secs
    );
    Ok(())
}
