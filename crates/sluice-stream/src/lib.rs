//! sluice-stream: the backends of the `EventLog` trait (`sluice_core::log`).
//!
//! - [`redis`]: Redis Streams (`redis://…`), the production default. The on-Redis format (stream
//!   names, entry field, sharding, consumer groups, dead letters) is documented in
//!   `docs/log-format.md` for consumers written in other languages.
//!
//! The embedded and Kafka backends come later; every backend runs the same conformance suite
//! (`tests/conformance/`).

pub mod redis;

pub use crate::redis::{RedisLog, RedisLogConfig, RedisLogStats};
