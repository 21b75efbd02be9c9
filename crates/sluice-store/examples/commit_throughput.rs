//! Measures `PgWarehouse::commit_batch` throughput on a fresh database:
//! `cargo run --release -p sluice-store --features testing --example commit_throughput -- [events] [batch] [workers]`
//! (defaults 400000, 10000, 1). Events look like `sluice bench`'s: several names, thousands of
//! users, ~300-byte properties.

use std::time::Instant;

use chrono::{Duration, Utc};
use sluice_core::warehouse::{ShardPosition, Warehouse};
use sluice_store::testing::{conformance, TestDb};
use sluice_store::PgOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(400_000);
    let batch = args.get(1).copied().unwrap_or(10_000).max(1);
    let workers = args.get(2).copied().unwrap_or(1).max(1);

    let db = TestDb::create().await;
    let wh = db.warehouse(PgOptions::default()).await;
    let now = Utc::now();
    let names = [
        "Page Viewed",
        "Product Clicked",
        "Added To Cart",
        "Checkout",
        "Signed Up",
    ];
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
                        &format!("{i:012}-{:08x}", i.wrapping_mul(2_654_435_761)),
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
        "{{\"events\":{total},\"batch\":{batch},\"workers\":{workers},\"inserted\":{inserted},\"seconds\":{secs:.3},\"events_per_sec\":{:.0}}}",
        inserted as f64 / secs
    );
    Ok(())
}
