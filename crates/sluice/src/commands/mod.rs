//! One module per subcommand.

pub mod bench;
pub mod keys;
pub mod send;
pub mod serve;
pub mod verify;
pub mod worker;
