//! CrowdTick: real-time polling at broadcast scale. This crate is the `crowdtick` binary's library:
//! the command line, the configuration, and the composition of the service crates.
//!
//! - [`cli`]: subcommands (`serve`, `ingest`, `processor`, `query`, `realtime`, `recount`, `loadgen`,
//!   `config`) and their dispatch.
//! - [`config`]: typed configuration (defaults < file < `CROWDTICK_*` env < flags).
//! - [`backends`]: which backend each part runs on (embedded or Kafka, file or PostgreSQL, none or
//!   Redis, …), chosen once from the configuration, and opening them.
//! - [`serve`]: a node: the backends its roles need, each service started by its own crate, the
//!   node's endpoints; `run(listener, config, shutdown)`.
//! - [`recount`]: the audit command.
//!
//! `crowdtick healthcheck` probes with `edge::probe`.
//!
//! The accept loop every node serves on is `edge::listener`; `/healthz`, `/readyz` and `/metrics`
//! are `edge::node`. The pipeline itself lives in the
//! workspace crates: `schemas` (the domain), `storage` (log,
//! stores), `edge` (HTTP errors, operator access), `ingest` (votes), `processor` (counting),
//! `results` (the read model), `query` (API, UI), `realtime` (fan-out), `seed_api` (the old Django API), `loadtest` (load
//! generator). ARCHITECTURE.md follows a vote through them.

pub mod backends;
pub mod cli;
pub mod config;
pub mod recount;
pub mod serve;

pub use config::Config;
