//! [`ProcessorSection`]: the `[processor]` section of the configuration file, as written, and
//! what it becomes: the [`ProcessorConfig`] partition tasks run on, the consumer group's
//! [`GroupConfig`].

use crate::lost_votes::AcceptedLosses;
use crate::{ProcessorConfig, WindowConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use storage::GroupConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorSection {
    /// How often changed tallies are published: on multiples of this on the wall clock, every
    /// partition at the same instant.
    pub flush_interval_ms: u64,
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
    /// Distributed mode: the processors' Kafka consumer group.
    pub group_id: String,
    /// `group.instance.id` for static membership (unique per processor); empty: dynamic.
    pub instance_id: String,
    /// `partition.assignment.strategy` (`cooperative-sticky`, or `range`/`roundrobin` for eager).
    pub assignment_strategy: String,
    /// How long the group waits for a silent processor before moving its partitions.
    pub session_timeout_ms: u64,
    /// How often at most each partition's counting state is checkpointed (to the tally store, or
    /// to files beside the embedded log: `data_dir/log/snapshots`), so its next owner (or the
    /// restarted node) reads on from there instead of replaying the partition; one is written
    /// once the records since the last one number the partition's voters, or the partition is
    /// quiet for this long. In the embedded mode the results board is snapshotted this often too,
    /// once partials arrived since (`results/src/saved.rs`). 0: never.
    pub checkpoint_interval_ms: u64,
    /// Votes partitions that may count on although votes were deleted before they were counted,
    /// as `"PARTITION:OFFSET"`: the partition's log may start at most at OFFSET (its readiness
    /// and error log say both when it stops). Empty (the default): such a partition stays
    /// stopped. Each loss taken is logged and counted in `crowdtick_processor_votes_lost_total`.
    pub accept_lost_votes: Vec<String>,
}

impl Default for ProcessorSection {
    fn default() -> Self {
        Self {
            flush_interval_ms: 25,
            window_ms: 1_000,
            allowed_lateness_ms: 2_000,
            group_id: "crowdtick-processors".into(),
            instance_id: String::new(),
            assignment_strategy: "cooperative-sticky".into(),
            session_timeout_ms: 10_000,
            checkpoint_interval_ms: 5_000,
            accept_lost_votes: Vec::new(),
        }
    }
}

impl ProcessorSection {
    /// Why these settings cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.window_ms < 10 {
            return Err("processor.window_ms must be at least 10".into());
        }
        if !(1..=60_000).contains(&self.flush_interval_ms) {
            return Err("processor.flush_interval_ms must be from 1 to 60000".into());
        }
        AcceptedLosses::parse(&self.accept_lost_votes)?;
        Ok(())
    }

    /// `ingest_deadline`: the edge's (a vote stamped longer ago than this was never acknowledged).
    pub fn config(&self, ingest_deadline: Duration) -> ProcessorConfig {
        ProcessorConfig {
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            windows: WindowConfig {
                window_ms: self.window_ms,
                allowed_lateness_ms: self.allowed_lateness_ms,
            },
            ingest_deadline,
            checkpoint_interval: (self.checkpoint_interval_ms > 0)
                .then(|| Duration::from_millis(self.checkpoint_interval_ms)),
            // `check` refused entries that do not parse.
            accepted_losses: AcceptedLosses::parse(&self.accept_lost_votes).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The consumer group, named under the topics' `topic_prefix`.
    pub fn group(&self, topic_prefix: &str) -> GroupConfig {
        GroupConfig {
            group_id: format!("{topic_prefix}{}", self.group_id),
            instance_id: self.instance_id.clone(),
            assignment_strategy: self.assignment_strategy.clone(),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            ..Default::default()
        }
    }
}
