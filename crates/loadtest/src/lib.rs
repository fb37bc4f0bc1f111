//! CrowdTick load generator (placeholder; being written).
use clap::Args;

/// Options of `crowdtick loadgen`.
#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

/// Runs `crowdtick loadgen` to completion, printing progress and the report.
pub async fn main(args: LoadgenArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not written yet")
}
