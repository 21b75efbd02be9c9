//! The `sluice` application: command line, configuration, wiring of backends by URL, the roles
//! (`serve`, `api`, `worker`), key management and the load generator. `main.rs` only parses the
//! command line; tests drive the same functions in-process. Every flag has a `SLUICE_…`
//! environment variable.

pub mod backends;
pub mod commands;
pub mod memory;
pub mod shutdown;
