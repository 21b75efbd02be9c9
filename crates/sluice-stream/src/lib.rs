//! sluice-stream: the backends of the `EventLog` trait (`sluice_core::log`).
//!
//! - [`redis`]: Redis Streams (`redis://…`), the production default. The on-Redis format (stream
//!   names, entry field, sharding, consumer groups, dead letters) is documented in
//!   `docs/log-format.md` for consumers written in other languages.
//! - [`embedded`]: a durable on-disk log in one data directory (`embedded:PATH`), built on the
//!   fjall LSM store, for the single-binary mode. Its on-disk layout and durability settings are
//!   documented in `docs/log-format.md` ("Embedded log").
//!
//! The Kafka backend comes later; every backend runs the same conformance suite
//! (`tests/conformance/`).

pub mod embedded;
pub mod redis;

pub use crate::embedded::{Durability, EmbeddedLog, EmbeddedLogConfig, EmbeddedLogStats};
pub use crate::redis::{RedisLog, RedisLogConfig, RedisLogStats};
