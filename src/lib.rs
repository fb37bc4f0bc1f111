//! CrowdTick: real-time polling at broadcast scale. This crate is the `crowdtick` binary's library:
//! the command line, the configuration, and the composition of the service crates.
//!
//! - [`cli`]: subcommands (`serve`, `ingest`, `processor`, `query`, `realtime`, `recount`, `loadgen`,
//!   `config`) and their dispatch.
//! - [`config`]: typed configuration (defaults < file < `CROWDTICK_*` env < flags).
//! - [`app_state`]: what a running node shares between its routes and `/metrics`.
//! - [`backends`]: which backend each part runs on (embedded or Kafka, file or PostgreSQL, none or
//!   Redis, …), chosen once from the configuration, and opening them.
//! - [`serve`]: every service in one process on the embedded log; `run(listener, config, shutdown)`.
//! - [`recount`]: the audit command.
//! - [`metrics`]: `GET /metrics`.
//! - [`readiness`]: `GET /readyz`, the checks that say whether a node can do its job.
//! - [`healthcheck`]: `crowdtick healthcheck`, a probe for container healthchecks (no curl needed).
//!
//! The accept loop every node serves on is `edge::listener`. The pipeline itself lives in the
//! workspace crates: `schemas` (the domain), `storage` (log,
//! stores), `edge` (HTTP errors, operator access), `ingest` (votes), `processor` (counting),
//! `results` (the read model), `query` (API, UI), `realtime` (fan-out), `seed_api` (the old Django API), `loadtest` (load
//! generator). ARCHITECTURE.md follows a vote through them.

pub mod app_state;
pub mod backends;
pub mod cli;
pub mod config;
pub mod healthcheck;
pub mod metrics;
pub mod readiness;
pub mod recount;
pub mod serve;

pub use config::Config;
