//! The allocator's view of the process's memory, as `/metrics` gauges: the heap in use
//! (`sluice_memory_allocated_bytes`) against the pages holding it
//! (`sluice_memory_resident_bytes`). RSS far above the heap is free space the allocator keeps
//! (fragmentation, pages not yet returned); RSS following the heap is data held. jemalloc is the
//! global allocator of the `sluice` binary (`main.rs`); its statistics are read every second.

use std::time::Duration;

use metrics::gauge;
use sluice_core::metrics as names;
use tikv_jemalloc_ctl::{epoch, stats};

/// How often the gauges are refreshed.
const EVERY: Duration = Duration::from_secs(1);

/// Refresh the memory gauges every second until `stop` resolves.
pub async fn gauges(stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => refresh(),
        }
    }
}

/// Read the allocator's statistics once (they are a snapshot taken at each `epoch` advance).
fn refresh() {
    // Fails only without jemalloc's statistics compiled in; the gauges then stay unset.
    if epoch::advance().is_err() {
        return;
    }
    for (name, read) in [
        (
            names::MEMORY_ALLOCATED_BYTES,
            stats::allocated::read as fn() -> _,
        ),
        (names::MEMORY_RESIDENT_BYTES, stats::resident::read),
        (names::MEMORY_METADATA_BYTES, stats::metadata::read),
    ] {
        if let Ok(bytes) = read() {
            gauge!(name).set(bytes as f64);
        }
    }
}
