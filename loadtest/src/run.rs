//! The scheduler: a dispatcher walks the plan and hands each submission to the lane of its
//! (poll, voter); each lane owns one keep-alive connection and works through its queue one
//! submission (or one batch) at a time.
//!
//! - **Open loop** (`--rate`): submission `i` is due at `start + i / rate`. The dispatcher releases
//!   submissions when they are due (a 1 ms tick); a lane that is behind just has a longer queue.
//!   Latency is answer time − intended time, so a stall of the server shows in the percentiles
//!   instead of silently slowing the schedule (no coordinated omission). Each acknowledged
//!   submission's send lateness (first send − the later of its due time and its lane's previous
//!   answer) is kept beside it: the generator's own delay before the send, a lower bound of its
//!   share of the latency when it shares the cores with the server (a late read of an answer
//!   counts in the answer's time).
//! - **Closed loop**: the dispatcher keeps every lane's queue full; each lane sends as soon as it
//!   has its previous answer. Latency is answer time − first send time.
//!
//! Per-voter order (needed to know which vote the server counts): every submission of a pair goes
//! to the lane `lane_of(poll, voter)`, and a lane starts a submission only after the previous one
//! reached its final state. A failed attempt (no connection, broken connection, timeout, 503, 429,
//! other 5xx) is retried with the same body — same vote id — after a backoff (5 ms doubling to 1 s,
//! or the server's `Retry-After` capped at 1 s) until a 202 or a 4xx, for at most `--give-up-secs`.
//! A lane that gave up then probes the server once a second with one attempt of its next
//! submission until it answers again; meanwhile the open loop gives its due submissions up at once
//! (so a server that never comes back ends the run instead of stalling it for hours) and the
//! closed loop waits.
//!
//! The hot path allocates little: request bodies are written with `write!` into a per-lane
//! `BytesMut` and split off (the allocation is reused once hyper drops the previous body), URIs
//! and header values are built once, counters are relaxed atomics, and latencies go into the
//! lane's own histogram (an uncontended lock, merged once a second: `seconds.rs`).

use crate::client::{error_code, Attempt, Conn, Target};
use crate::plan::{lane_of, Plan, PlanConfig, Submission};
use crate::polls::PollInfo;
use crate::record::{LaneRecorder, Line, RecordSink};
use crate::report::new_histogram;
use crate::seconds::{LaneHist, Second, SecondsTask};
use crate::verify::{Expectation, Outcome};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use hyper::{Method, Uri};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a lane whose server stopped answering tries again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

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
    status: Box<[AtomicU64]>,
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

/// Lanes share histograms in this many shards (a histogram is ~190 KB; runs may have 10,000s of
/// lanes, one connection each).
const HISTOGRAM_SHARDS: usize = 64;

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
struct Item {
    sub: Submission,
    /// When the open-loop schedule wants it sent (unused in closed loop).
    intended: Instant,
}

/// Runs the load to completion.
pub async fn run(cfg: RunConfig, control: Arc<Control>) -> anyhow::Result<RunOutcome> {
    anyhow::ensure!(cfg.lanes >= 1, "at least one connection");
    let stats = Arc::new(Stats::new());
    let lanes = cfg.lanes;
    // Open loop: deep queues (a stalled lane keeps its schedule); closed loop: enough to never
    // starve a lane while the dispatcher serves the others.
    let capacity = if cfg.rate.is_some() { 1 << 16 } else { 1024 };
    let mut senders = Vec::with_capacity(lanes);
    let mut receivers = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Item>(capacity);
        senders.push(tx);
        receivers.push(rx);
    }
    let hists: Vec<Arc<Mutex<LaneHist>>> = (0..lanes.clamp(1, HISTOGRAM_SHARDS))
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
        let lane = Lane {
            conn: Conn::new(cfg.target.clone()),
            cfg: cfg.clone(),
            stats: stats.clone(),
            control: control.clone(),
            hist: hists[i % hists.len()].clone(),
            // Batches are written here whole; a single vote is a few hundred bytes.
            buf: BytesMut::with_capacity(if cfg.batch > 0 { 64 * 1024 } else { 1024 }),
            failing: false,
            last_probe: start,
            recorder: cfg.record.clone().map(LaneRecorder::new),
            expectation: Expectation::default(),
            receipts: Vec::new(),
            rejections: BTreeMap::new(),
            last_answer: start,
            free_since: start,
            votes_uri: Uri::from_static("/v1/votes"),
            batch_uri: Uri::from_static("/v1/votes/batch?results=rejected"),
        };
        lane_tasks.push(tokio::spawn(lane.run(rx)));
    }

    let seconds = SecondsTask::spawn(stats.clone(), hists.clone(), start, cfg.progress);

    let plan = Plan::new(cfg.plan.clone());
    dispatch(plan, senders, cfg.rate, start, deadline, &control, &stats).await;

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
    outcome.by_second = seconds.finish().await;
    if let Some(t) = closed_timer {
        t.abort();
    }
    for h in &hists {
        let h = h.lock().unwrap_or_else(|e| e.into_inner());
        outcome.latency.add(&h.total).ok();
        outcome.answered.add(&h.answered).ok();
        outcome.send_late.add(&h.late).ok();
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

/// Walks the plan, handing each submission to its lane (at its time, in the open loop).
async fn dispatch(
    mut plan: Plan,
    senders: Vec<mpsc::Sender<Item>>,
    rate: Option<f64>,
    start: Instant,
    deadline: Option<Instant>,
    control: &Control,
    stats: &Stats,
) {
    let lanes = senders.len();
    tokio::time::sleep_until(start).await;
    let Some(rate) = rate else {
        for sub in plan.by_ref() {
            if control.stop.load(Relaxed) {
                return;
            }
            let lane = lane_of(sub.poll, sub.voter, lanes);
            let item = Item {
                sub,
                intended: start,
            };
            if senders[lane].send(item).await.is_err() {
                return;
            }
            stats.submissions.fetch_add(1, Relaxed);
        }
        return;
    };
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
            let lane = lane_of(sub.poll, sub.voter, lanes);
            if senders[lane].send(Item { sub, intended }).await.is_err() {
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

/// What a lane hands back.
struct LaneDone {
    expectation: Expectation,
    receipts: Vec<Receipt>,
    rejections: BTreeMap<String, u64>,
    connects: u64,
    last_answer: Instant,
}

struct Lane {
    conn: Conn,
    cfg: RunConfig,
    stats: Arc<Stats>,
    control: Arc<Control>,
    hist: Arc<Mutex<LaneHist>>,
    buf: BytesMut,
    /// The last submission was given up and nothing succeeded since: one attempt each, at
    /// most one a second.
    failing: bool,
    last_probe: Instant,
    recorder: Option<LaneRecorder>,
    expectation: Expectation,
    receipts: Vec<Receipt>,
    rejections: BTreeMap<String, u64>,
    last_answer: Instant,
    /// When the lane was done with its previous submission (answered, refused or given up).
    free_since: Instant,
    votes_uri: Uri,
    batch_uri: Uri,
}

/// How late a submission due at `due` was sent at `sent` by a lane that was done with the one
/// before it at `free_since`, in microseconds: until the later of the two, it was not the
/// generator's to send.
fn sent_late_us(due: Instant, free_since: Instant, sent: Instant) -> u64 {
    sent.saturating_duration_since(due.max(free_since))
        .as_micros() as u64
}

/// How a request (one vote or one batch) ended.
enum Final {
    /// 202 (single) / 200 (batch), with the body when it was asked for.
    Answered(Bytes),
    /// A 4xx (or another non-retryable answer) for the whole request.
    Refused(String),
    GaveUp,
}

#[derive(Deserialize)]
struct Receipt202 {
    partition: u32,
    offset: u64,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    results: Vec<BatchResult>,
}

#[derive(Deserialize)]
struct BatchResult {
    index: Option<usize>,
    error: Option<BatchError>,
}

#[derive(Deserialize)]
struct BatchError {
    code: String,
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>) -> LaneDone {
        let batch = self.cfg.batch;
        let mut items: Vec<Item> = Vec::with_capacity(batch);
        while let Some(first) = rx.recv().await {
            if self.control.stop.load(Relaxed) {
                self.stats.not_sent.fetch_add(1, Relaxed);
                break;
            }
            if batch == 0 {
                self.single(first).await;
                self.free_since = Instant::now();
                continue;
            }
            items.clear();
            items.push(first);
            while items.len() < batch {
                match rx.try_recv() {
                    Ok(i) => items.push(i),
                    Err(_) => break,
                }
            }
            self.batch(&items).await;
            self.free_since = Instant::now();
        }
        // Stopped: what is still queued was never sent.
        rx.close();
        while rx.try_recv().is_ok() {
            self.stats.not_sent.fetch_add(1, Relaxed);
        }
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
        LaneDone {
            expectation: self.expectation,
            receipts: self.receipts,
            rejections: self.rejections,
            connects: self.conn.connects,
            last_answer: self.last_answer,
        }
    }

    fn write_vote(&mut self, s: &Submission) {
        let poll_id = self.cfg.polls[s.poll as usize].id;
        let prefix = &self.cfg.prefix;
        let _ = write!(
            self.buf,
            r#"{{"poll_id":{poll_id},"option_id":{},"voter_id":"{prefix}-{}","vote_id":"{prefix}-{}"}}"#,
            s.option, s.voter, s.vote
        );
    }

    /// Sends the body until a final answer (see the module doc). `ambiguous` is set when an
    /// attempt may have been processed without us seeing the answer.
    async fn send(
        &mut self,
        uri: &Uri,
        body: Bytes,
        ok: u16,
        want_body: bool,
        ambiguous: &mut bool,
    ) -> Final {
        if self.failing {
            // The server did not answer this lane for --give-up-secs: probe it once a second.
            // Between probes the open loop gives its due submissions up at once (its backlog
            // must not grow without bound); the closed loop just waits.
            let next_probe = self.last_probe + PROBE_EVERY;
            if Instant::now() < next_probe {
                if self.cfg.rate.is_some() || self.control.hard_stop.load(Relaxed) {
                    return Final::GaveUp;
                }
                tokio::time::sleep_until(next_probe).await;
            }
            self.last_probe = Instant::now();
        }
        let first = Instant::now();
        let give_up_at = if self.failing {
            first
        } else {
            first + self.cfg.give_up
        };
        let mut backoff = Duration::from_millis(5);
        let auth = if uri.path() == self.batch_uri.path() {
            self.cfg.aggregator_auth.clone()
        } else {
            None
        };
        loop {
            let sent_at = Instant::now();
            let attempt = self
                .conn
                .request(
                    Method::POST,
                    uri.clone(),
                    auth.as_ref(),
                    body.clone(),
                    want_body,
                    self.cfg.timeout,
                )
                .await;
            self.stats.requests.fetch_add(1, Relaxed);
            let wait = match attempt {
                Attempt::Answer {
                    status,
                    retry_after,
                    body,
                } => {
                    if let Some(a) = self.stats.status.get(status as usize) {
                        a.fetch_add(1, Relaxed);
                    }
                    self.last_answer = Instant::now();
                    if status == ok {
                        let us = self
                            .last_answer
                            .saturating_duration_since(sent_at)
                            .as_micros();
                        let us = (us as u64).max(1);
                        {
                            let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
                            h.answered.saturating_record(us);
                            h.answered_second.saturating_record(us);
                        }
                        self.failing = false;
                        return Final::Answered(body);
                    }
                    match status {
                        // Not recorded (the API says so): retry as told.
                        503 | 429 => retry_after.unwrap_or(backoff),
                        // Another server error: the vote may or may not have been written.
                        500..=599 => {
                            *ambiguous = true;
                            backoff
                        }
                        _ => {
                            self.failing = false;
                            let code = if (400..500).contains(&status) {
                                error_code(&body)
                            } else {
                                format!("unexpected_{status}")
                            };
                            return Final::Refused(code);
                        }
                    }
                }
                Attempt::Connect(_) => {
                    self.stats.err_connect.fetch_add(1, Relaxed);
                    backoff
                }
                Attempt::Broken(_) => {
                    self.stats.err_broken.fetch_add(1, Relaxed);
                    *ambiguous = true;
                    backoff
                }
                Attempt::Timeout => {
                    self.stats.err_timeout.fetch_add(1, Relaxed);
                    *ambiguous = true;
                    Duration::ZERO
                }
            }
            .min(Duration::from_secs(1));
            if self.control.hard_stop.load(Relaxed) || Instant::now() + wait > give_up_at {
                self.failing = true;
                return Final::GaveUp;
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn single(&mut self, item: Item) {
        let s = item.sub;
        self.buf.reserve(256);
        self.write_vote(&s);
        let body = self.buf.split().freeze();
        let sent = Instant::now();
        let from = if self.cfg.rate.is_some() {
            item.intended
        } else {
            sent
        };
        let late = self.lateness(&item, sent);
        let mut ambiguous = false;
        let uri = self.votes_uri.clone();
        let want = self.cfg.receipts;
        let fin = self.send(&uri, body, 202, want, &mut ambiguous).await;
        match fin {
            Final::Answered(body) => {
                self.acked(&s, from, late);
                if want {
                    if let Ok(r) = serde_json::from_slice::<Receipt202>(&body) {
                        self.receipts.push(Receipt {
                            poll: s.poll,
                            partition: r.partition,
                            offset: r.offset,
                            from,
                        });
                    }
                }
            }
            Final::Refused(code) => self.refused(&s, code, ambiguous),
            Final::GaveUp => self.gave_up(&s, ambiguous),
        }
        self.stats.completed.fetch_add(1, Relaxed);
    }

    async fn batch(&mut self, items: &[Item]) {
        self.buf.reserve(16 + 128 * items.len());
        self.buf.extend_from_slice(br#"{"votes":["#);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.buf.extend_from_slice(b",");
            }
            self.write_vote(&item.sub);
        }
        self.buf.extend_from_slice(b"]}");
        let body = self.buf.split().freeze();
        let sent = Instant::now();
        let open = self.cfg.rate.is_some();
        let mut ambiguous = false;
        let uri = self.batch_uri.clone();
        // A 200 whose body cannot be read is retried like a broken connection.
        let mut tries = 0;
        let fin = loop {
            tries += 1;
            match self
                .send(&uri, body.clone(), 200, true, &mut ambiguous)
                .await
            {
                Final::Answered(b) => match serde_json::from_slice::<BatchAnswer>(&b) {
                    Ok(a) => break Ok(a),
                    Err(_) if tries < 3 => ambiguous = true,
                    Err(e) => break Err(Final::Refused(format!("unreadable_batch_answer: {e}"))),
                },
                other => break Err(other),
            }
        };
        match fin {
            Ok(answer) => {
                let mut refused: Vec<Option<String>> = vec![None; items.len()];
                for r in answer.results {
                    if let Some(i) = r.index.filter(|&i| i < items.len()) {
                        refused[i] = Some(r.error.map_or_else(|| "unknown".to_owned(), |e| e.code));
                    }
                }
                for (item, refusal) in items.iter().zip(refused) {
                    match refusal {
                        None => self.acked(
                            &item.sub,
                            if open { item.intended } else { sent },
                            self.lateness(item, sent),
                        ),
                        Some(code) => self.refused(&item.sub, code, ambiguous),
                    }
                }
            }
            Err(Final::Refused(code)) => {
                for item in items {
                    self.refused(&item.sub, code.clone(), ambiguous);
                }
            }
            Err(_) => {
                for item in items {
                    self.gave_up(&item.sub, ambiguous);
                }
            }
        }
        self.stats.completed.fetch_add(items.len() as u64, Relaxed);
    }

    fn note(&mut self, s: &Submission, outcome: Outcome) {
        if self.cfg.expect {
            self.expectation.observe(s.poll, s.voter, s.option, outcome);
        }
        if let Some(r) = &mut self.recorder {
            r.push(&Line {
                outcome,
                seq: s.seq,
                poll: s.poll,
                voter: s.voter,
                option: s.option,
                vote: s.vote,
            });
        }
    }

    /// Open loop: how late the generator itself sent `item` at `sent`, in microseconds: from the
    /// later of its due time and the moment this lane was done with the submission before it
    /// (until then it waited for the answer to that one): the dispatcher's tick, the lane task
    /// waiting for a core, and the lane's own work. `None` in the closed loop, which has no due
    /// time.
    fn lateness(&self, item: &Item, sent: Instant) -> Option<u64> {
        (self.cfg.rate).map(|_| sent_late_us(item.intended, self.free_since, sent))
    }

    fn acked(&mut self, s: &Submission, from: Instant, late_us: Option<u64>) {
        let us = self.last_answer.saturating_duration_since(from).as_micros() as u64;
        {
            let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
            h.total.saturating_record(us.max(1));
            h.second.saturating_record(us.max(1));
            if let Some(late) = late_us {
                h.late.saturating_record(late.max(1));
                h.late_second.saturating_record(late.max(1));
            }
        }
        self.stats.acked.fetch_add(1, Relaxed);
        self.note(s, Outcome::Acked);
    }

    fn refused(&mut self, s: &Submission, code: String, ambiguous: bool) {
        self.stats.rejected.fetch_add(1, Relaxed);
        *self.rejections.entry(code).or_default() += 1;
        if ambiguous {
            // An earlier attempt may have been written before this refusal.
            self.stats.rejected_uncertain.fetch_add(1, Relaxed);
            self.note(s, Outcome::Uncertain);
        }
    }

    fn gave_up(&mut self, s: &Submission, ambiguous: bool) {
        self.stats.given_up.fetch_add(1, Relaxed);
        if ambiguous {
            self.stats.given_up_uncertain.fetch_add(1, Relaxed);
            self.note(s, Outcome::Uncertain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_is_late_from_the_later_of_its_due_time_and_its_lanes_last_answer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Due while the lane was free: every moment after the due time is the generator's.
        assert_eq!(sent_late_us(t0 + ms(10), t0, t0 + ms(310)), 300_000);
        // Due while the lane waited for the server: late only from the answer on.
        assert_eq!(sent_late_us(t0 + ms(10), t0 + ms(300), t0 + ms(302)), 2_000);
        // Sent at once: not late at all.
        assert_eq!(sent_late_us(t0 + ms(10), t0, t0 + ms(10)), 0);
    }
}
