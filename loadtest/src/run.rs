//! The scheduler: a dispatcher walks the plan and hands each submission to the lane of its
//! (poll, voter); each lane (`lane.rs`) owns one keep-alive connection and works through its
//! queue one submission (or one batch) at a time.
//!
//! - **Open loop** (`--rate`): submission `i` is due at `start + i / rate`. The dispatcher releases
//!   submissions when they are due (a 1 ms tick); a lane that is behind just has a longer queue.
//!   Latency is answer time − intended time, so a stall of the server shows in the percentiles
//!   instead of silently slowing the schedule (no coordinated omission). Each acknowledged
//!   submission's send lateness (first send − the later of its due time and its lane's previous
//!   answer) is kept beside it: the generator's own delay before the send, a lower bound of its
//!   share of the latency when it shares the cores with the server (a late read of an answer
//!   counts in the answer's time).
//! - **Closed loop**: the dispatcher keeps every lane's queue full (batches in runs of up to 256
//!   submissions, [`Handout`]); each lane sends as soon as it has its previous answer, a batch
//!   once it is full (or the plan is done; with many lanes, once it holds its share of a
//!   million, [`closed_fill`]). Latency is answer time − first send time.
//!
//! Per-voter order (needed to know which vote the server counts): every submission of a pair goes
//! to one lane, and a lane starts a submission only after the previous one reached its final
//! state. The closed loop places a pair by its hash (`lane_of(poll, voter)`); the open loop places
//! a fresh pair on an idle lane among the next 16 and the pair's later submissions on the same
//! lane ([`crate::placement`]), so a pair's first vote does not wait for a busy lane's answer
//! while one of those is idle (its duplicates and retries still wait for their lane). A failed
//! attempt (no connection, broken connection, timeout, 503, 429, other 5xx) is retried with the
//! same body — same vote id — after a backoff (5 ms doubling to 1 s, or the server's
//! `Retry-After`, taken as at most 10 s, a 503's times 1 to 2 at random) until a 202 or a 4xx,
//! for at most `--give-up-secs`.
//! A lane that gave up then probes the server once a second with one attempt of its next
//! submission until it answers again; meanwhile the open loop gives its due submissions up at once
//! (so a server that never comes back ends the run instead of stalling it for hours) and the
//! closed loop waits.
//!
//! The hot path allocates little: request bodies are written (numbers by `itoa`) into a per-lane
//! `BytesMut` and split off (the allocation is reused once hyper drops the previous body), URIs
//! and header values are built once, counters are relaxed atomics, and latencies go into the
//! histograms of the lane's shard (one shard for a single-threaded run; a lock seldom contended,
//! merged once a second: `seconds.rs`).

use crate::client::Target;
use crate::lane::Lane;
use crate::placement::{Outstanding, Placer};
use crate::plan::{lane_of, Plan, PlanConfig, Submission};
use crate::polls::PollInfo;
use crate::record::RecordSink;
use crate::report::new_histogram;
use crate::seconds::{LaneHist, Second, SecondsTask};
use crate::verify::Expectation;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: Arc<Target>,
    pub plan: PlanConfig,
    pub polls: Arc<Vec<PollInfo>>,
    /// Voter ids are `<prefix>-<voter>`, vote ids `<prefix>-<vote>`.
    pub prefix: String,
    pub lanes: usize,
    /// Open loop at this many submissions per second; closed loop when None.
    pub rate: Option<f64>,
    /// Stop dispatching after this long.
    pub duration: Option<Duration>,
    /// Votes per request to POST /v1/votes/batch; 0 sends single votes to POST /v1/votes.
    pub batch: usize,
    /// `Authorization: Bearer <aggregator key>`, sent with every batch.
    pub aggregator_auth: Option<hyper::header::HeaderValue>,
    pub timeout: Duration,
    pub give_up: Duration,
    pub record: Option<Arc<RecordSink>>,
    /// Build the expected tallies (for --verify).
    pub expect: bool,
    /// Keep each acknowledged vote's receipt (for --screen-latency).
    pub receipts: bool,
    pub progress: bool,
}

/// Stops the run from outside (Ctrl-C).
#[derive(Debug, Default)]
pub struct Control {
    /// Send nothing new; finish what is in flight.
    pub stop: AtomicBool,
    /// Abandon the retries in flight too.
    pub hard_stop: AtomicBool,
}

/// The receipt of an acknowledged single vote (for vote-to-screen latency).
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub poll: u32,
    pub partition: u32,
    pub offset: u64,
    /// Intended (open loop) or first send (closed loop) time.
    pub from: Instant,
}

/// Counters shared by every lane.
pub(crate) struct Stats {
    pub submissions: AtomicU64,
    pub completed: AtomicU64,
    pub requests: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub given_up: AtomicU64,
    pub given_up_uncertain: AtomicU64,
    pub rejected_uncertain: AtomicU64,
    pub not_sent: AtomicU64,
    pub err_connect: AtomicU64,
    pub err_broken: AtomicU64,
    pub err_timeout: AtomicU64,
    /// Answers by HTTP status (index = status, 0..600).
    pub status: Box<[AtomicU64]>,
}

impl Stats {
    fn new() -> Self {
        Self {
            submissions: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            given_up_uncertain: AtomicU64::new(0),
            rejected_uncertain: AtomicU64::new(0),
            not_sent: AtomicU64::new(0),
            err_connect: AtomicU64::new(0),
            err_broken: AtomicU64::new(0),
            err_timeout: AtomicU64::new(0),
            status: (0..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn status(&self, s: u16) -> u64 {
        self.status.get(s as usize).map_or(0, |a| a.load(Relaxed))
    }
}

/// Lanes share their histograms in shards, this many for each of the runtime's threads: enough
/// that two threads seldom want the same shard's lock, and few, as a shard's three histograms
/// take about 560 KB. A single-threaded run (the default) keeps one shard, which stays in the
/// core's cache. 64 shards, as before, put every vote's records in cold memory, and each second's
/// merge went through 36 MB while no lane was served: a run's p99 against the bare endpoint was
/// twice what it is with one (BENCHMARKS.md, "2026-12-07 (third session)").
const HISTOGRAM_SHARDS_PER_THREAD: usize = 4;

/// The most shards, whatever `--threads` (up to 256) asks: 36 MB of histograms.
const MAX_HISTOGRAM_SHARDS: usize = 64;

/// How many histogram shards `lanes` lanes on `threads` threads share.
fn histogram_shards(lanes: usize, threads: usize) -> usize {
    match threads {
        0 | 1 => 1,
        _ => lanes.clamp(
            1,
            (threads * HISTOGRAM_SHARDS_PER_THREAD).min(MAX_HISTOGRAM_SHARDS),
        ),
    }
}

/// What the run measured.
pub struct RunOutcome {
    /// From the first scheduled send to the last answer.
    pub elapsed: Duration,
    /// From the first scheduled send to the end of the run (give-ups included).
    pub wall: Duration,
    pub submissions: u64,
    pub completed: u64,
    pub requests: u64,
    pub acked: u64,
    pub rejected: u64,
    pub given_up: u64,
    pub given_up_uncertain: u64,
    pub rejected_uncertain: u64,
    pub not_sent: u64,
    pub latency: Histogram<u64>,
    /// Accepted requests, from their own send to their answer.
    pub answered: Histogram<u64>,
    /// Open loop: how late the generator sent each acknowledged submission (`Lane::lateness`).
    pub send_late: Histogram<u64>,
    /// The run second by second.
    pub by_second: Vec<Second>,
    pub status_counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub rejections: BTreeMap<String, u64>,
    pub connections_opened: u64,
    pub expectation: Expectation,
    pub receipts: Vec<Receipt>,
    pub start: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub sub: Submission,
    /// When the open-loop schedule wants it sent (unused in closed loop).
    pub intended: Instant,
}

/// What the dispatcher hands a lane: one submission (the open loop, each as it falls due; the
/// closed loop of single votes) or a run of them (the closed loop of batches, handed out as fast
/// as the lanes take them: one channel operation for up to [`HANDOUT_RUN`] votes, not one each).
pub(crate) enum Handout {
    One(Item),
    Run(Vec<Item>),
}

impl Handout {
    pub fn len(&self) -> usize {
        match self {
            Handout::One(_) => 1,
            Handout::Run(items) => items.len(),
        }
    }
}

/// The most submissions in one [`Handout::Run`].
const HANDOUT_RUN: usize = 256;

/// The closed loop's lanes together wait for at most this many submissions to fill batches.
const CLOSED_FILL_ALL: usize = 1_000_000;

/// How many submissions a lane of the closed loop waits for before it sends a batch (more that
/// are queued by then go too, up to `batch`): the whole batch, or the lane's share of
/// [`CLOSED_FILL_ALL`] when there are many lanes (10,000 lanes wait for 100 each, not 10,000).
pub(crate) fn closed_fill(batch: usize, lanes: usize) -> usize {
    batch.min(CLOSED_FILL_ALL / lanes.max(1)).max(1)
}

/// Runs the load to completion.
pub async fn run(cfg: RunConfig, control: Arc<Control>) -> anyhow::Result<RunOutcome> {
    anyhow::ensure!(cfg.lanes >= 1, "at least one connection");
    let stats = Arc::new(Stats::new());
    let lanes = cfg.lanes;
    // Open loop: deep queues (a stalled lane keeps its schedule); closed loop: enough to never
    // starve a lane while the dispatcher serves the others (1,024), and for batches two of the
    // batches a lane waits to fill (`closed_fill`).
    let run_len = if cfg.rate.is_none() {
        cfg.batch.clamp(1, HANDOUT_RUN)
    } else {
        1
    };
    let capacity = if cfg.rate.is_some() {
        1 << 16
    } else {
        (2 * closed_fill(cfg.batch, lanes))
            .max(1024)
            .div_ceil(run_len)
    };
    let mut senders = Vec::with_capacity(lanes);
    let mut receivers = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Handout>(capacity);
        senders.push(tx);
        receivers.push(rx);
    }
    // The open loop's lanes count what they hold, for the placement of fresh pairs.
    let outstanding = cfg.rate.map(|_| Outstanding::per_lane(lanes));
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    let hists: Vec<Arc<Mutex<LaneHist>>> = (0..histogram_shards(lanes, threads))
        .map(|_| Arc::new(Mutex::new(LaneHist::new())))
        .collect();

    let start = Instant::now() + Duration::from_millis(20);
    let deadline = cfg.duration.map(|d| start + d);
    // Closed loop with a duration: stop everything at the deadline. (The open loop just stops
    // scheduling; submissions already due are still owed and sent.)
    let closed_timer = match (cfg.rate, deadline) {
        (None, Some(d)) => {
            let control = control.clone();
            Some(tokio::spawn(async move {
                tokio::time::sleep_until(d).await;
                control.stop.store(true, Relaxed);
            }))
        }
        _ => None,
    };

    let mut lane_tasks = Vec::with_capacity(lanes);
    for (i, rx) in receivers.into_iter().enumerate() {
        let lane = Lane::new(
            &cfg,
            &stats,
            &control,
            hists[i % hists.len()].clone(),
            start,
            i,
            outstanding.clone().map(|o| (o, i)),
        );
        lane_tasks.push(tokio::spawn(lane.run(rx)));
    }

    let seconds = SecondsTask::spawn(stats.clone(), hists.clone(), start, cfg.progress);

    let plan = Plan::new(cfg.plan.clone());
    match cfg.rate {
        Some(rate) => {
            let placer = Placer::new(outstanding.expect("the open loop's"));
            let timing = (rate, start, deadline);
            dispatch_open(plan, placer, senders, timing, &control, &stats).await
        }
        None => dispatch_closed(plan, senders, run_len, start, &control, &stats).await,
    }

    let mut outcome = RunOutcome {
        elapsed: Duration::ZERO,
        wall: Duration::ZERO,
        submissions: 0,
        completed: 0,
        requests: 0,
        acked: 0,
        rejected: 0,
        given_up: 0,
        given_up_uncertain: 0,
        rejected_uncertain: 0,
        not_sent: 0,
        latency: new_histogram(),
        answered: new_histogram(),
        send_late: new_histogram(),
        by_second: Vec::new(),
        status_counts: BTreeMap::new(),
        errors: BTreeMap::new(),
        rejections: BTreeMap::new(),
        connections_opened: 0,
        expectation: Expectation::default(),
        receipts: Vec::new(),
        start,
    };
    let mut last_answer = start;
    for t in lane_tasks {
        let done = t.await?;
        outcome.expectation.merge(done.expectation);
        outcome.receipts.extend(done.receipts);
        for (k, v) in done.rejections {
            *outcome.rejections.entry(k).or_default() += v;
        }
        outcome.connections_opened += done.connects;
        last_answer = last_answer.max(done.last_answer);
    }
    if let Some((by_second, run)) = seconds.finish().await {
        outcome.by_second = by_second;
        outcome.latency = run.latency;
        outcome.answered = run.answered;
        outcome.send_late = run.late;
    }
    if let Some(t) = closed_timer {
        t.abort();
    }
    outcome.elapsed = last_answer.saturating_duration_since(start);
    outcome.wall = start.elapsed();
    outcome.submissions = stats.submissions.load(Relaxed);
    outcome.completed = stats.completed.load(Relaxed);
    outcome.requests = stats.requests.load(Relaxed);
    outcome.acked = stats.acked.load(Relaxed);
    outcome.rejected = stats.rejected.load(Relaxed);
    outcome.given_up = stats.given_up.load(Relaxed);
    outcome.given_up_uncertain = stats.given_up_uncertain.load(Relaxed);
    outcome.rejected_uncertain = stats.rejected_uncertain.load(Relaxed);
    outcome.not_sent = stats.not_sent.load(Relaxed);
    for (s, n) in stats.status.iter().enumerate() {
        let n = n.load(Relaxed);
        if n > 0 {
            outcome.status_counts.insert(s.to_string(), n);
        }
    }
    for (k, a) in [
        ("connect", &stats.err_connect),
        ("broken", &stats.err_broken),
        ("timeout", &stats.err_timeout),
    ] {
        outcome.errors.insert(k.to_owned(), a.load(Relaxed));
    }
    Ok(outcome)
}

/// The closed loop: walks the plan, handing its lane each submission (in runs of `run_len`)
/// as soon as the lane's queue has room.
async fn dispatch_closed(
    plan: Plan,
    senders: Vec<mpsc::Sender<Handout>>,
    run_len: usize,
    start: Instant,
    control: &Control,
    stats: &Stats,
) {
    let lanes = senders.len();
    let mut runs: Vec<Vec<Item>> = vec![Vec::new(); lanes];
    tokio::time::sleep_until(start).await;
    for sub in plan {
        if control.stop.load(Relaxed) {
            return;
        }
        let lane = lane_of(sub.poll, sub.voter, lanes);
        let item = Item {
            sub,
            intended: start,
        };
        let handout = if run_len == 1 {
            Handout::One(item)
        } else {
            let run = &mut runs[lane];
            if run.capacity() == 0 {
                run.reserve_exact(run_len);
            }
            run.push(item);
            if run.len() < run_len {
                continue;
            }
            Handout::Run(std::mem::take(run))
        };
        if !hand(&senders[lane], handout, stats).await {
            return;
        }
    }
    // The plan is done: what is left in each lane's run.
    for (tx, run) in senders.iter().zip(runs) {
        if !run.is_empty()
            && !control.stop.load(Relaxed)
            && !hand(tx, Handout::Run(run), stats).await
        {
            return;
        }
    }
}

/// Hands `handout` to the lane of `tx` and counts its submissions; false once the lane is gone.
async fn hand(tx: &mpsc::Sender<Handout>, handout: Handout, stats: &Stats) -> bool {
    let n = handout.len() as u64;
    let sent = tx.send(handout).await.is_ok();
    if sent {
        stats.submissions.fetch_add(n, Relaxed);
    }
    sent
}

/// The open loop: hands each submission at its time to the lane `placer` chooses; `timing` is
/// the rate, the start and the deadline.
async fn dispatch_open(
    mut plan: Plan,
    mut placer: Placer,
    senders: Vec<mpsc::Sender<Handout>>,
    (rate, start, deadline): (f64, Instant, Option<Instant>),
    control: &Control,
    stats: &Stats,
) {
    tokio::time::sleep_until(start).await;
    let nanos_per = 1e9 / rate;
    let at = |seq: u64| start + Duration::from_nanos((seq as f64 * nanos_per) as u64);
    loop {
        let now = Instant::now();
        // Every submission whose time has come.
        while at(plan.position()) <= now {
            if control.stop.load(Relaxed) {
                return;
            }
            let Some(sub) = plan.next() else {
                return;
            };
            let intended = at(sub.seq);
            if deadline.is_some_and(|d| intended >= d) {
                return;
            }
            let lane = placer.place(plan.recall());
            if senders[lane]
                .send(Handout::One(Item { sub, intended }))
                .await
                .is_err()
            {
                return;
            }
            stats.submissions.fetch_add(1, Relaxed);
        }
        if control.stop.load(Relaxed) {
            return;
        }
        // Sleep to the next due time, but tick at least every millisecond.
        let next = at(plan.position()).max(now + Duration::from_micros(200));
        tokio::time::sleep_until(next.min(now + Duration::from_millis(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::histogram_shards;

    #[test]
    fn a_single_threaded_run_keeps_one_histogram_shard() {
        assert_eq!(histogram_shards(128, 1), 1);
    }

    #[test]
    fn a_run_on_threads_keeps_a_few_shards_a_thread_no_more_than_its_lanes_nor_64() {
        assert_eq!(histogram_shards(128, 2), 8);
        assert_eq!(histogram_shards(3, 2), 3);
        assert_eq!(histogram_shards(10_000, 256), 64);
    }
}
