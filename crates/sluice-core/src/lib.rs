//! sluice-core: the canonical event, the parsers and validators for every accepted request shape,
//! Segment's clock-skew correction, sharding, and the traits the backends implement.
//!
//! Nothing in this crate does IO or needs an async runtime: it is the pure logic that every other
//! crate shares, and the place property tests live.

pub mod event;
pub mod json_object;
pub mod keys;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod parse;
pub mod rfc3339;
pub mod shard;
pub mod skew;
pub mod warehouse;

pub use event::{Event, EventKind};
pub use json_object::JsonObject;
pub use limits::Limits;
