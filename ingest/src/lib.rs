//! CrowdTick's ingest edge: the public vote API.
//!
//! - [`routes`]: `POST /v1/votes` and `POST /v1/votes/batch` (axum), JSON errors.
//! - [`body`]: a request's body read whole, within its size limit and one deadline.
//! - [`settings`]: the [`IngestSection`], `[ingest]` settings as written, and the
//!   [`IngestConfig`] they become.
//! - [`validate`] (pure): parse and judge a vote against its poll — exists, open at the stamped time,
//!   choices fit, ids well-formed — with the [`schemas::VoteRejection`] each failure is.
//! - [`identity`]: who is voting, from the headers before the body: voter tokens (JWT) for
//!   `POST /v1/votes`, aggregator keys (namespace and quota each) for `POST /v1/votes/batch`.
//! - [`rate_limit`]: limits that count votes (`governor`): per client address, per aggregator.
//! - [`admission`]: sheds votes with 503 early (a request that waited too long for the node once a
//!   queue stands, votes in flight, the log's standing queue).
//! - [`receipt`]: a durable vote's [`Receipt`], and its JSON written straight into the answer.
//! - [`metrics`]: the counters in [`IngestMetrics`] and the edge's collector for `/metrics` (`crowdtick_ingest_*`).
//! - [`start`]: the service starting itself (state, metrics, routes).
//! - [`Ingest`]: the shared state and [`Ingest::submit`], the one way a vote enters the log (the seed
//!   API adapter uses it too): stamp, judge, encode (Avro), append with a deadline, answer.
//!
//! A 202 is only sent once the log says the vote is durable; if it cannot be durable before the
//! deadline the log does not write it and the answer is 503 with `Retry-After`.

pub mod admission;
pub mod body;
pub mod identity;
pub mod metrics;
pub mod rate_limit;
pub mod receipt;
pub mod routes;
pub mod settings;
pub mod validate;

use edge::ApiError;
use schemas::vote::{encode_vote, vote_key};
use schemas::{partition_for, Partition, PollId, QualifiedVoter, Timestamp, VoteRejection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{AppendBatch, EdgeReason, EdgeRejections, Log, LogError, PollCatalog, Topic};

pub use edge::listener::Arrival;
pub use metrics::IngestMetrics;
pub use receipt::Receipt;
pub use settings::{IngestSection, DEV_AGGREGATOR_KEY};

/// Why [`Ingest::submit`] did not record a vote.
#[derive(Debug)]
pub enum SubmitError {
    /// The vote itself is refused: its poll, its choice, its ids.
    Rejected(VoteRejection),
    /// The node cannot take it now (shedding load, the log or the poll store unavailable): a 503
    /// with `Retry-After`; the same vote may be sent again.
    Unavailable(ApiError),
}

impl From<ApiError> for SubmitError {
    fn from(e: ApiError) -> Self {
        SubmitError::Unavailable(e)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Rejected(r) => r.into(),
            SubmitError::Unavailable(e) => e,
        }
    }
}
pub use routes::router;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// How long the edge waits for the log to make a vote durable before answering 503.
    pub deadline: Duration,
    pub max_vote_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_votes: usize,
    /// Public votes per second per client address (0: no limit), and the burst above it.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// Loopback clients (load tests, a local proxy) are not rate limited.
    pub rate_limit_exempt_loopback: bool,
    /// Distributed mode: votes are refused (503) while the poll catalog has not been re-read from
    /// PostgreSQL for this long, because a close made on another node might not be known here.
    /// Must stay below the query nodes' close lead. None: this process is the only writer.
    pub catalog_max_age: Option<Duration>,
    /// A request body must be in whole within this (408 otherwise).
    pub body_read_timeout: Duration,
    /// The aggregators allowed to post batches (none: batches are refused).
    pub aggregators: Vec<identity::AggregatorConfig>,
    /// How voter tokens are checked (unset: no tokens; polls requiring verified voters take none).
    pub voter_tokens: identity::VoterTokenConfig,
    pub admission: admission::AdmissionConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(2),
            max_vote_bytes: 16 << 10,
            max_batch_bytes: 8 << 20,
            max_batch_votes: 10_000,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            rate_limit_exempt_loopback: true,
            catalog_max_age: None,
            body_read_timeout: Duration::from_secs(10),
            aggregators: Vec::new(),
            voter_tokens: Default::default(),
            admission: Default::default(),
        }
    }
}

/// The edge's shared state.
pub struct Ingest {
    pub log: Arc<dyn Log>,
    pub catalog: PollCatalog,
    pub config: IngestConfig,
    pub rejections: Arc<EdgeRejections>,
    pub metrics: IngestMetrics,
    pub(crate) limiter: rate_limit::AddressLimiter,
    pub(crate) aggregators: identity::Aggregators,
    pub(crate) voter_tokens: Option<identity::VoterTokens>,
    pub admission: admission::Admission,
    ids: VoteIds,
}

/// Starts the ingest service: its state from `config`, its collector in `registry`. Returns the
/// state (the old API submits votes through it too) and the routes it answers.
pub fn start(
    log: Arc<dyn Log>,
    catalog: PollCatalog,
    config: IngestConfig,
    rejections: Arc<EdgeRejections>,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(Arc<Ingest>, axum::Router), identity::IdentityConfigError> {
    let ingest = Ingest::new(log, catalog, config, rejections)?;
    ingest.register_metrics(registry);
    Ok((ingest.clone(), routes::router(ingest)))
}

impl Ingest {
    pub fn new(
        log: Arc<dyn Log>,
        catalog: PollCatalog,
        config: IngestConfig,
        rejections: Arc<EdgeRejections>,
    ) -> Result<Arc<Self>, identity::IdentityConfigError> {
        let limiter = rate_limit::AddressLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            config.rate_limit_exempt_loopback,
        );
        let aggregators = identity::Aggregators::new(&config.aggregators, config.max_batch_votes)?;
        let voter_tokens = identity::VoterTokens::from_config(&config.voter_tokens)?;
        let admission = admission::Admission::new(config.admission);
        Ok(Arc::new(Self {
            log,
            catalog,
            config,
            rejections,
            metrics: Default::default(),
            limiter,
            aggregators,
            voter_tokens,
            admission,
            ids: VoteIds::new(),
        }))
    }

    /// Admits `votes` or answers the fast 503 of an edge shedding load.
    pub fn admit(&self, votes: usize) -> Result<admission::Permit<'_>, ApiError> {
        self.admission
            .admit(votes, Instant::now())
            .map_err(|shed| self.shed(shed, votes))
    }

    /// Judges a request by how long it waited for this node (from the kernel's receipt of its
    /// bytes, [`Arrival::waited`], when the listener stamps them): the fast 503 once a queue
    /// stands.
    pub fn admit_request(&self, waited: Option<Duration>) -> Result<(), ApiError> {
        let Some(waited) = waited else {
            return Ok(());
        };
        self.admission
            .wait
            .judge(waited, Instant::now())
            .map_err(|shed| self.shed(shed, 1))
    }

    /// Judges a batch request by its wait ([`admission::WaitJudge::judge_batch`]): shed only past
    /// a whole interval.
    pub fn admit_batch_request(&self, waited: Option<Duration>) -> Result<(), ApiError> {
        match waited {
            Some(waited) => (self.admission.wait.judge_batch(waited)).map_err(|s| self.shed(s, 1)),
            None => Ok(()),
        }
    }

    fn shed(&self, shed: admission::Shed, votes: usize) -> ApiError {
        self.metrics
            .votes_unavailable
            .fetch_add(votes as u64, Ordering::Relaxed);
        let why = match shed {
            admission::Shed::InFlight => "this edge has as many votes in flight as it may hold",
            admission::Shed::QueueDelay => "the vote log has a standing queue",
            admission::Shed::Waited => "this edge is busier than it can answer promptly",
            admission::Shed::Backlog => "this edge holds more votes than it can answer promptly",
        };
        ApiError::unavailable(
            format!("{why}; the vote was not recorded — retry after the Retry-After seconds with the same vote_id"),
            self.admission.retry_after_secs(),
        )
    }

    /// Stamps, judges and appends one vote of `voter`; answers once it is durable.
    pub async fn submit(
        &self,
        vote: &validate::VoteIn<'_>,
        voter: QualifiedVoter<'_>,
        source: &str,
    ) -> Result<Receipt, SubmitError> {
        let _permit = self.admit(1)?;
        self.prepare_catalog(std::iter::once(vote.poll_id)).await?;
        let (accepted_at, poll) = self.catalog.stamp_and_get(vote.poll_id);
        let options = validate::judge(vote, voter, poll.as_deref(), accepted_at)
            .inspect_err(|e| self.count_rejection(vote.poll_id, e))
            .map_err(SubmitError::Rejected)?;
        let vote_id = match vote.vote_id.as_deref() {
            Some(id) => id.to_owned(),
            None => self.ids.next(),
        };
        let mut batch = AppendBatch::with_capacity(1, 64 + vote_id.len() + 2 * voter.len());
        let partition = push_vote(
            &mut batch,
            self.log.partitions(Topic::Votes),
            vote.poll_id,
            voter,
            &vote_id,
            &options,
            accepted_at,
            source,
        );
        let started = Instant::now();
        let positions = {
            // Counted while it waits for the log (the listener pauses reads past a bound).
            let _held = self.admission.read_gate.hold();
            self.log
                .append(Topic::Votes, batch, started + self.config.deadline)
                .await
        }
        .map_err(|e| {
            self.rejections
                .add(vote.poll_id, EdgeReason::Unavailable, 1);
            self.metrics
                .votes_unavailable
                .fetch_add(1, Ordering::Relaxed);
            unavailable(e)
        })?;
        let waited = started.elapsed();
        self.admission.observe(waited, Instant::now());
        self.metrics
            .append_wait_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.metrics.durable_latency.observe(waited, 1);
        self.metrics.votes_accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Receipt {
            vote_id,
            poll_id: vote.poll_id,
            partition,
            offset: positions[0].offset,
            accepted_at,
        })
    }

    /// Distributed mode: refuses while the catalog is stale, and, when a vote names a poll it does
    /// not know yet (created on another node a moment ago), makes sure a re-read that began after
    /// the request arrived has been installed before judging it. Such votes wait for the next
    /// re-read slot (100 ms after the last re-read began) and share one re-read, so a flood of
    /// unknown poll ids costs at most ten re-reads a second.
    pub(crate) async fn prepare_catalog(
        &self,
        poll_ids: impl Iterator<Item = PollId> + Clone,
    ) -> Result<(), ApiError> {
        if !self.catalog.is_shared() {
            return Ok(());
        }
        let arrived = std::time::Instant::now();
        if !knows_all(&self.catalog, poll_ids.clone()) {
            let last = self.catalog.refreshed_at();
            if last < arrived {
                // A re-read that began before the request may have missed the poll.
                let next = last + Duration::from_millis(100);
                tokio::time::sleep_until(next.into()).await;
                if self.catalog.refreshed_at() < arrived && !knows_all(&self.catalog, poll_ids) {
                    if let Err(e) = self.catalog.refresh_since(arrived).await {
                        tracing::warn!(error = %e, "re-reading the poll catalog failed");
                    }
                }
            }
        }
        if let Some(max) = self.config.catalog_max_age {
            if self.catalog.refreshed_at().elapsed() > max {
                self.metrics
                    .votes_unavailable
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::unavailable(
                    "this edge cannot reach the poll store (PostgreSQL) to learn of closes made elsewhere; the vote was not recorded — retry with the same vote_id",
                    1,
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn count_rejection(&self, poll: PollId, e: &VoteRejection) {
        self.metrics.votes_rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = validate::edge_reason(e) {
            self.rejections.add(poll, reason, 1);
        }
    }

    /// Server-made ids for up to `n` votes of one batch.
    pub(crate) fn vote_ids(&self, n: usize) -> VoteIdRange<'_> {
        self.ids.take(n)
    }
}

/// Whether the catalog knows every one of these polls.
fn knows_all(catalog: &PollCatalog, mut ids: impl Iterator<Item = PollId>) -> bool {
    let polls = catalog.snapshot();
    ids.all(|id| polls.contains_key(&id))
}

/// Encodes a judged vote (Avro, key = poll + voter) into `batch` at its partition; returns the
/// partition. The one place votes are placed, for single votes and batches alike.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_vote(
    batch: &mut AppendBatch,
    partitions: u32,
    poll_id: PollId,
    voter: QualifiedVoter<'_>,
    vote_id: &str,
    options: &[u32],
    accepted_at: Timestamp,
    source: &str,
) -> Partition {
    let partition = partition_for(poll_id, voter, partitions);
    batch.push_with(
        partition,
        accepted_at,
        |k| vote_key(poll_id, voter, k),
        |v| encode_vote(v, vote_id, poll_id, voter, options, accepted_at, source),
    );
    partition
}

/// The 503 a log failure answers with.
pub(crate) fn unavailable(e: LogError) -> ApiError {
    match e {
        LogError::Timeout | LogError::Overloaded => {
            ApiError::unavailable("the vote log is busy and could not make the vote durable in time; it was not recorded — retry with the same vote_id", 1)
        }
        other => ApiError::unavailable(format!("the vote log is unavailable ({other}); the vote was not recorded — retry with the same vote_id"), 2),
    }
}

/// Server-made vote ids: a random per-process prefix and a counter (no syscall per vote); a batch
/// takes its ids with one atomic add and writes each into one reused buffer.
struct VoteIds {
    prefix: String,
    counter: AtomicU64,
}

impl VoteIds {
    fn new() -> Self {
        let seed = Timestamp::now().micros() as u64 ^ ((std::process::id() as u64) << 40);
        let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ seed;
        Self {
            prefix: format!("{mixed:016x}"),
            counter: AtomicU64::new(0),
        }
    }
    /// The next id, in one allocation (`format!` grows its string twice).
    fn next(&self) -> String {
        let mut id = String::with_capacity(self.prefix.len() + 21);
        self.write(self.counter.fetch_add(1, Ordering::Relaxed), &mut id);
        id
    }

    /// Appends id `n` to `out`: the prefix, a dash and the number (`itoa`, not `fmt`).
    fn write(&self, n: u64, out: &mut String) {
        out.push_str(&self.prefix);
        out.push('-');
        out.push_str(itoa::Buffer::new().format(n));
    }

    /// `n` consecutive ids, taken at once (more are taken if they run out).
    fn take(&self, n: usize) -> VoteIdRange<'_> {
        let n = (n as u64).max(1);
        let first = self.counter.fetch_add(n, Ordering::Relaxed);
        VoteIdRange {
            ids: self,
            next: first,
            end: first + n,
            buf: String::with_capacity(self.prefix.len() + 21),
        }
    }
}

/// Ids taken together by [`VoteIds::take`].
pub(crate) struct VoteIdRange<'a> {
    ids: &'a VoteIds,
    next: u64,
    end: u64,
    buf: String,
}

impl VoteIdRange<'_> {
    /// The next id, in a buffer the following call reuses (copy it to keep it).
    pub(crate) fn next(&mut self) -> &str {
        if self.next == self.end {
            *self = self.ids.take(64);
        }
        self.buf.clear();
        self.ids.write(self.next, &mut self.buf);
        self.next += 1;
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::VoteIds;
    use std::collections::HashSet;

    #[test]
    fn server_made_vote_ids_never_repeat_across_batches_and_single_votes() {
        let ids = VoteIds::new();
        let mut seen = HashSet::new();
        for n in [0, 1, 3, 100] {
            let mut batch = ids.take(n);
            // A batch may use more ids than it asked for (it asks for its votes, all of them
            // server-named here plus some): the range takes more.
            for _ in 0..n + 70 {
                assert!(seen.insert(batch.next().to_owned()));
            }
            assert!(seen.insert(ids.next()));
        }
        let prefix = format!("{}-", ids.prefix);
        assert!(seen.iter().all(|id| id.starts_with(&prefix)));
    }
}
