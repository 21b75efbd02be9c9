//! sluice-worker: the consumer runtime every processor runs on, and the processors.
//!
//! - [`runtime`]: read a batch from a consumer group (size and max wait bounded), decode it,
//!   dead-letter poison entries, hand it to a [`Processor`], and acknowledge only after the
//!   processor committed; resume own pending entries at start, claim those of dead consumers,
//!   trim what every group has processed, stop cleanly on shutdown.
//! - [`warehouse`]: the exactly-once warehouse processor.
//! - [`fraud`]: the fraud/anomaly processor (sliding event-time windows, alerts committed
//!   exactly once with the group's positions, windows rebuilt from the log at start).
//! - [`live`]: the live aggregator (per-second counts for `/v1/live`), tailing the log without a
//!   consumer group.

pub mod fraud;
pub mod live;
pub mod runtime;
pub mod warehouse;

pub use live::{LiveConfig, LiveHub};
pub use runtime::{ConsumerConfig, ProcessError, Processor, Worker, WorkerStats};
