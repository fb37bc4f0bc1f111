//! The root crate's one integration-test binary: each module spawns real servers (in-process on
//! port 0, or the built binary as a child process when a test must kill it) on a temporary data dir.

mod admission;
mod api;
mod architecture;
mod browser;
mod cluster;
mod crash;
mod distributed;
mod helpers;
mod hostile;
mod identity;
mod limits;
mod operator_access;
mod poll_limits;
mod registry;
mod registry_double;
mod seed_api;
mod viewers;
mod viewers_at_scale;
