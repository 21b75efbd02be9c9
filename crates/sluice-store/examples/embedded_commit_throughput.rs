//! Measures `SqliteWarehouse::commit_batch` throughput in a fresh temporary data directory:
//! `cargo run --release -p sluice-store --features testing --example embedded_commit_throughput -- [events] [batch] [full|normal]`
//! (defaults 400000, 5000, full). Events look like `sluice bench`'s: several names, thousands
//! of users, ~300-byte properties. Prints one JSON line.

use std::time::Instant;

use chrono::{Duration, Utc};
use sluice_core::warehouse::{ShardPosition, Warehouse};
use sluice_store::testing::conformance;
use sluice_store::{SqliteOptions, SqliteWarehouse, Synchronous};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let batch: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000)
        .max(1);
    let synchronous = match args.get(2).map(String::as_str) {
        Some("normal") => Synchronous::Normal,
        _ => Synchronous::Full,
    };

    let dir = tempfile::tempdir()?;
    let wh = SqliteWarehouse::open(
        dir.path(),
        SqliteOptions {
            synchronous,
            ..SqliteOptions::default()
        },
    )
    .await?;
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
    let mut inserted = 0;
    let mut slowest = std::time::Duration::ZERO;
    for (n, b) in batches.iter().enumerate() {
        let pos = [ShardPosition {
            shard: 0,
            last_id: format!("{}-0", n + 1),
        }];
        let t = Instant::now();
        inserted += wh.commit_batch("bench", b, &pos).await?.inserted;
        slowest = slowest.max(t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(wh.database_path())?.len();
    println!(
        "{{\"events\":{total},\"batch\":{batch},\"synchronous\":\"{synchronous:?}\",\"inserted\":{inserted},\"seconds\":{secs:.3},\"events_per_sec\":{:.0},\"slowest_batch_ms\":{},\"db_bytes\":{size}}}",
        inserted as f64 / secs,
        slowest.as_millis()
    );
    Ok(())
}
