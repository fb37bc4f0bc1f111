//! [`IngestSection`]: the `[ingest]` section of the configuration file, as written (milliseconds,
//! counts), and the [`IngestConfig`] the service runs on.

use crate::admission::AdmissionConfig;
use crate::identity::AggregatorConfig;
use crate::IngestConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// How long a vote may wait to become durable before the answer is 503.
    pub deadline_ms: u64,
    pub max_batch_votes: usize,
    /// Public votes (`POST /v1/votes`) per second per client address; 0 turns the limit off.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub rate_limit_exempt_loopback: bool,
    /// Most votes in flight on this edge (accepted, not yet durable); past it, 503. 0: no bound.
    pub max_in_flight_votes: usize,
    /// Shed votes (503) once the log's shortest queueing delay over `shed_interval_ms` stays above
    /// this (CoDel-style); 0 turns it off.
    pub shed_target_ms: u64,
    pub shed_interval_ms: u64,
    /// Shed a vote request (503) that waited longer than this for the node (from the kernel's
    /// receipt of its bytes to its handler) once no request has waited less for
    /// `shed_wait_interval_ms`; before that, only one that waited a whole interval. A batch is
    /// shed only past a whole interval, and its wait starts no standing queue. 0 turns it off.
    pub shed_wait_target_ms: u64,
    pub shed_wait_interval_ms: u64,
    /// Stop reading new requests while this many appends of votes (a batch is one) wait for the
    /// log, until half are answered, for at most 250 ms: work in progress before new work. 0:
    /// never. Measured on the embedded log (1,000); a node on Kafka holds about rate × append
    /// latency, so set it above that (the Helm chart sets 4,096).
    pub pause_reads_in_flight: usize,
    /// After a read pause, shed votes (503) while this many appends are in flight, until none was
    /// shed for `shed_backlog_quiet_ms`: a node past its capacity keeps few votes waiting, so the
    /// ones it accepts are answered promptly (a quarter of `pause_reads_in_flight` was measured).
    /// 0 (the default): never, since a burst within capacity on many connections starts it too.
    /// Must be below `pause_reads_in_flight` (the rule starts at a read pause; the node refuses
    /// to start otherwise).
    pub shed_backlog_appends: usize,
    /// How long no vote may have been shed before the backlog rule ends (at least 1 ms).
    pub shed_backlog_quiet_ms: u64,
    /// A shed vote's `Retry-After` is 1, 2, … this many seconds in turn, so the votes shed together
    /// do not come back together (1 to 3,600).
    pub shed_retry_after_max_secs: u32,
    /// The aggregators that may post batches, each with its own key, voter namespace and quota:
    /// `[[ingest.aggregators]] name = "sms-uk", key = "…", votes_per_sec = 20000`.
    pub aggregators: Vec<AggregatorConfig>,
    /// Voter tokens of the broadcaster's identity service (for polls with `voters: verified`).
    pub voter_tokens: crate::identity::VoterTokenConfig,
}

impl Default for IngestSection {
    fn default() -> Self {
        let d = IngestConfig::default();
        Self {
            deadline_ms: d.deadline.as_millis() as u64,
            max_batch_votes: d.max_batch_votes,
            rate_limit_per_sec: d.rate_limit_per_sec,
            rate_limit_burst: d.rate_limit_burst,
            rate_limit_exempt_loopback: d.rate_limit_exempt_loopback,
            max_in_flight_votes: d.admission.max_in_flight_votes,
            shed_target_ms: d.admission.target_delay.as_millis() as u64,
            shed_interval_ms: d.admission.interval.as_millis() as u64,
            shed_wait_target_ms: d.admission.wait_target.as_millis() as u64,
            shed_wait_interval_ms: d.admission.wait_interval.as_millis() as u64,
            pause_reads_in_flight: d.admission.pause_reads_at,
            shed_backlog_appends: d.admission.backlog_at,
            shed_backlog_quiet_ms: d.admission.backlog_quiet.as_millis() as u64,
            shed_retry_after_max_secs: d.admission.retry_after_max_secs,
            aggregators: vec![AggregatorConfig {
                name: "dev".into(),
                key: DEV_AGGREGATOR_KEY.into(),
                votes_per_sec: 0,
                burst: 0,
            }],
            voter_tokens: Default::default(),
        }
    }
}

/// The key of the `dev` aggregator of the default configuration (like `dev-operator-key`, for a
/// laptop; a deployment sets `ingest.aggregators` of its own).
pub const DEV_AGGREGATOR_KEY: &str = "dev-aggregator-key";

/// The longest `Retry-After` a shed vote may be told (an hour; the chart's schema says the same).
const MAX_SHED_RETRY_AFTER_SECS: u32 = 3_600;

impl IngestSection {
    /// Why these settings cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.deadline_ms < 10 {
            return Err("ingest.deadline_ms must be at least 10".into());
        }
        if self.shed_backlog_quiet_ms == 0 {
            return Err(
                "ingest.shed_backlog_quiet_ms must be at least 1: the backlog rule ends once \
                        no vote was shed for this long, so 0 would end it at once (1000 is the \
                        default)"
                    .into(),
            );
        }
        let retry_max = self.shed_retry_after_max_secs;
        if !(1..=MAX_SHED_RETRY_AFTER_SECS).contains(&retry_max) {
            return Err(format!(
                "ingest.shed_retry_after_max_secs ({retry_max}) must be 1 to \
                 {MAX_SHED_RETRY_AFTER_SECS}: shed votes are told to come back after 1 to this many \
                 seconds (3 is the default)"
            ));
        }
        let (backlog, pause) = (self.shed_backlog_appends, self.pause_reads_in_flight);
        if backlog > 0 && backlog >= pause {
            return Err(format!(
                "ingest.shed_backlog_appends ({backlog}) must be below \
                 ingest.pause_reads_in_flight ({pause}): the rule starts at a read pause, and a \
                 bound at or above it is reached only while reads are paused, so it would shed \
                 next to nothing (a quarter of it was measured; 0 turns the rule off)"
            ));
        }
        Ok(())
    }

    /// Warns when an aggregator still has the development key and the node listens on `listen`
    /// beyond loopback.
    pub fn warn_of_development_keys(&self, listen: &str) {
        let public_listener = !listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        if public_listener && self.aggregators.iter().any(|a| a.key == DEV_AGGREGATOR_KEY) {
            tracing::warn!(
                %listen,
                "an aggregator has the development key `dev-aggregator-key`, and this server listens beyond \
                 loopback: anyone can post batches as it. Set ingest.aggregators with keys of your own \
                 (CROWDTICK_INGEST__AGGREGATORS='[{{name=\"sms\", key=\"…\"}}]')"
            );
        }
    }

    /// What the service runs on. `catalog_max_age`: how old a shared poll catalog may be before
    /// votes get 503 (None: the catalog is this process's own); `body_read_timeout`: the node's.
    pub fn config(
        &self,
        catalog_max_age: Option<Duration>,
        body_read_timeout: Duration,
    ) -> IngestConfig {
        IngestConfig {
            deadline: Duration::from_millis(self.deadline_ms),
            max_batch_votes: self.max_batch_votes,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            rate_limit_exempt_loopback: self.rate_limit_exempt_loopback,
            catalog_max_age,
            body_read_timeout,
            aggregators: self.aggregators.clone(),
            voter_tokens: self.voter_tokens.clone(),
            admission: AdmissionConfig {
                max_in_flight_votes: self.max_in_flight_votes,
                target_delay: Duration::from_millis(self.shed_target_ms),
                interval: Duration::from_millis(self.shed_interval_ms.max(1)),
                wait_target: Duration::from_millis(self.shed_wait_target_ms),
                wait_interval: Duration::from_millis(self.shed_wait_interval_ms.max(1)),
                pause_reads_at: self.pause_reads_in_flight,
                backlog_at: self.shed_backlog_appends,
                backlog_quiet: Duration::from_millis(self.shed_backlog_quiet_ms),
                retry_after_max_secs: self.shed_retry_after_max_secs,
            },
            ..Default::default()
        }
    }
}
