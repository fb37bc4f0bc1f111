//! `crowdtick recount`: replay the votes log and check every published tally against it.
//!
//! Reads without changing anything (safe beside a running server: it checks the tallies published
//! so far against the log up to their own offsets): the data directory's log read-only, or, with
//! `--kafka` / `--postgres` (or their configuration), the Kafka topics and the PostgreSQL polls.

use crate::backends::{open_log, open_stores, LogBackend, TallyBackend};
use crate::config::Config;
use processor::recount::recount;
use results::board::{load_tallies, ReadFrom};
use results::ResultsBoard;
use schemas::{Offset, Partition};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;
use storage::{EmbeddedLog, Log, PollCatalog, Topic};

pub async fn run(config: &Config, json: bool) -> anyhow::Result<bool> {
    let backends = config.backends()?;
    let log: Arc<dyn Log> = match &backends.log {
        LogBackend::Embedded(embedded) => Arc::new(EmbeddedLog::open_read_only(&embedded.dir)?),
        kafka => open_log(kafka).await?.log,
    };
    let (poll_store, _) = open_stores(&backends.polls, &TallyBackend::TopicOnly).await?;
    let catalog = PollCatalog::load(poll_store).await?;
    let board = ResultsBoard::new(log.partitions(Topic::Votes));
    // The audit needs the latest partial of every (poll, partition): on Kafka the tally store
    // keeps those the topic's retention deleted, so what the topic holds is checked; the embedded
    // log keeps them in the results snapshot, which retention made their only copy.
    let from = match &backends.log {
        LogBackend::Embedded(_) => {
            for p in Partition::all(log.partitions(Topic::Tallies)) {
                let start = log.log_start(Topic::Tallies, p).await?;
                anyhow::ensure!(
                    start == Offset::ZERO,
                    "recount needs the whole log, and the start of the tallies topic was retired \
                     (log.retire_after_snapshot): partition {p} starts at offset {start}"
                );
            }
            ReadFrom::Positions(Vec::new())
        }
        LogBackend::Kafka { .. } => ReadFrom::Oldest,
    };
    load_tallies(&*log, &board, &from).await?;
    let started = Instant::now();
    let mut last_print = Instant::now();
    let report = recount(
        &*log,
        &catalog.snapshot(),
        &board.all_results(),
        config.processor_config().windows,
        |p, read, end| {
            if last_print.elapsed().as_millis() >= 500 || read == end {
                last_print = Instant::now();
                eprint!(
                    "\rrecount: partition {p}: {read}/{end} records ({:.1} s)   ",
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        },
    )
    .await?;
    eprintln!();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let title_of = |poll| {
            catalog
                .get(poll)
                .map(|p| p.title.clone())
                .unwrap_or_default()
        };
        print!("{}", report.to_text(started.elapsed(), title_of));
    }
    Ok(report.agrees())
}
