//! The `crowdtick` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;

/// jemalloc, not the system's malloc: glibc's malloc and free were a sixth of a single vote's
/// instructions, and with jemalloc a vote runs 7.5% fewer instructions in all (BENCHMARKS.md,
/// "2026-12-06 (fourth session)"). The node's trim purges its free pages once quiet
/// (`edge/src/memory.rs`). DHAT cannot see jemalloc's allocations: to count heap blocks, build
/// without these two lines.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = crowdtick::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match crowdtick::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
