//! The fraud detector's memory at a steady rate, without IO: `sluice bench`'s event shape
//! (5,000 users, 12 names, unique ids) fed through [`Detector::observe`] with the default rules.
//! `cargo run --release -p sluice-worker --example fraud_memory -- [events_per_sec] [seconds]
//! [users]` (defaults 50,000, 30 and 5,000: `sluice bench`'s users; more users at the same rate
//! means more subjects, each with fewer events). Prints one JSON line: subjects and event ids held, alerts, and the
//! process's RSS at the end and at its peak (run it under `heaptrack` to see where the bytes
//! are).

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use sluice_worker::fraud::{Detector, FraudConfig, FraudStats, Signal};

/// `VmRSS` and `VmHWM` (peak) of this process, in MB.
fn rss_mb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(50_000);
    let seconds = args.get(1).copied().unwrap_or(30);
    let users = args.get(2).copied().unwrap_or(5_000).max(1);
    // The names `sluice bench` sends (`crates/sluice/src/commands/bench.rs`; that crate depends
    // on this one, so the list is repeated here).
    const NAMES: [&str; 12] = [
        "page_view",
        "click",
        "signup",
        "login",
        "login_failed",
        "add_to_cart",
        "remove_from_cart",
        "checkout",
        "search",
        "video_play",
        "share",
        "purchase",
    ];
    let stats = Arc::new(FraudStats::default());
    let mut detector = Detector::new(FraudConfig::default(), Arc::clone(&stats));
    let start = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
    let mut rng: u64 = 42;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut alerts = Vec::new();
    let mut fired = 0usize;
    let total = rate * seconds;
    for seq in 0..total {
        let t = start + Duration::microseconds((seq * 1_000_000 / rate) as i64);
        let signal = Signal {
            event_id: format!("bench-0123456789ab-{}-{seq}", seq % 50),
            source: "default".into(),
            name: Some(NAMES[(next() % 12) as usize].into()),
            user_id: Some(format!("user-{}", next() % users)),
            anonymous_id: None,
            ip: Some("127.0.0.1".into()),
            timestamp: t,
            original_timestamp: Some(t),
            sent_at: None,
            received_at: t,
        };
        detector.observe(&signal, t, &mut alerts);
        if seq % 5_000 == 0 {
            fired += alerts.len();
            alerts.clear();
            detector.maintain();
        }
    }
    let (rss, peak) = rss_mb();
    println!(
        "{{\"events\":{total},\"rate\":{rate},\"users\":{users},\"subjects\":{},\"held_ids\":{},\"alerts\":{},\"rss_mb\":{rss},\"peak_rss_mb\":{peak}}}",
        detector.subjects(),
        detector.held_ids(),
        fired + alerts.len(),
    );
}
