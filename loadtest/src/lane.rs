//! A lane: one keep-alive connection that works through its queue one submission (or one batch)
//! at a time, retrying each with the same body until a final answer (see `run.rs` for the
//! schedule and the retry rules), and noting what it measured: latency from the due time (or the
//! first send), each request's send to answer, and in the open loop how late it sent each vote.

use crate::client::{error_code, Attempt, Conn};
use crate::placement::Outstanding;
use crate::plan::{mix64, SplitMix64, Submission};
use crate::record::{LaneRecorder, Line};
use crate::run::{closed_fill, Control, Handout, Item, Receipt, RunConfig, Stats};
use crate::seconds::LaneHist;
use crate::verify::{Expectation, Outcome};
use bytes::{Bytes, BytesMut};
use hyper::{Method, Uri};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a lane whose server stopped answering tries again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The longest `Retry-After` a lane honours (a longer one is taken as this); the lane's own
/// backoff stops at 1 s.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A shed submission is retried after its `Retry-After` (at most [`MAX_RETRY_AFTER`]) times 1 to
/// 2, uniformly, as the web UI's vote page does: clients shed in the same moment do not all come
/// back in the same one. The spread is kept whole past the cap's half (up to twice the cap).
fn jittered(retry_after: Duration, rng: &mut SplitMix64) -> Duration {
    retry_after
        .min(MAX_RETRY_AFTER)
        .mul_f64(1.0 + rng.next_f64())
}

/// What a lane hands back.
pub(crate) struct LaneDone {
    pub expectation: Expectation,
    pub receipts: Vec<Receipt>,
    pub rejections: BTreeMap<String, u64>,
    pub connects: u64,
    pub last_answer: Instant,
}

pub(crate) struct Lane {
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
    /// The open loop's count of what this lane holds, and the lane's number in it.
    outstanding: Option<(Arc<[Outstanding]>, usize)>,
    /// Spreads the lane's retries after `Retry-After` ([`jittered`]).
    jitter: SplitMix64,
}

/// How late a submission due at `due` was sent at `sent` by a lane that was done with the one
/// before it at `free_since`, in microseconds: until the later of the two, it was not the
/// generator's to send.
fn sent_late_us(due: Instant, free_since: Instant, sent: Instant) -> u64 {
    sent.saturating_duration_since(due.max(free_since))
        .as_micros() as u64
}

/// About how many (poll, voter) pairs one lane of `cfg` sees: every pair the plan can reach,
/// or every submission of a shorter plan (a timed run's by its rate), shared by the lanes
/// evenly (the open loop's placement shares them about evenly, round robin); at most 2^22 (a
/// guess too large for a lane costs memory, one too small a growth, neither a wrong check).
fn pairs_per_lane(cfg: &RunConfig) -> usize {
    let pairs = u64::from(cfg.plan.voters) * cfg.plan.options.len() as u64;
    let submissions = match (cfg.plan.total, cfg.rate, cfg.duration) {
        (Some(total), _, _) => total,
        (None, Some(rate), Some(d)) => (rate * d.as_secs_f64()) as u64,
        _ => 0,
    };
    (pairs.min(submissions) / cfg.lanes.max(1) as u64).min(1 << 22) as usize
}

/// Queues what the dispatcher handed out.
fn take(queued: &mut VecDeque<Item>, handout: Handout) {
    match handout {
        Handout::One(item) => queued.push_back(item),
        Handout::Run(items) => queued.extend(items),
    }
}

/// Notes an acknowledged submission's latency from `from` to the answer at `answered` and, in
/// the open loop, how late it was sent. A histogram's smallest value is 1 µs.
fn record_acked(h: &mut LaneHist, answered: Instant, from: Instant, late_us: Option<u64>) {
    let us = (answered.saturating_duration_since(from).as_micros() as u64).max(1);
    h.latency.saturating_record(us);
    if let Some(late) = late_us {
        h.late.saturating_record(late.max(1));
    }
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
    /// A lane of the run `cfg` that notes its latencies in `hist` (shared by a shard of lanes),
    /// starting at `start`.
    pub fn new(
        cfg: &RunConfig,
        stats: &Arc<Stats>,
        control: &Arc<Control>,
        hist: Arc<Mutex<LaneHist>>,
        start: Instant,
        index: usize,
        outstanding: Option<(Arc<[Outstanding]>, usize)>,
    ) -> Self {
        Self {
            conn: Conn::new(cfg.target.clone()),
            cfg: cfg.clone(),
            stats: stats.clone(),
            control: control.clone(),
            hist,
            // Batches are written here whole; a single vote is a few hundred bytes.
            buf: BytesMut::with_capacity(if cfg.batch > 0 { 64 * 1024 } else { 1024 }),
            failing: false,
            last_probe: start,
            recorder: cfg.record.clone().map(LaneRecorder::new),
            expectation: if cfg.expect {
                Expectation::with_capacity(pairs_per_lane(cfg))
            } else {
                Expectation::default()
            },
            receipts: Vec::new(),
            rejections: BTreeMap::new(),
            last_answer: start,
            free_since: start,
            votes_uri: Uri::from_static("/v1/votes"),
            batch_uri: Uri::from_static("/v1/votes/batch?results=rejected"),
            outstanding,
            jitter: SplitMix64::new(mix64(cfg.plan.seed ^ !(index as u64))),
        }
    }

    /// Works through `rx` until it closes or the run stops.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Handout>) -> LaneDone {
        let batch = self.cfg.batch;
        // The closed loop waits for this many to send a batch; the open loop sends what is due.
        let fill = if self.cfg.rate.is_none() {
            closed_fill(batch, self.cfg.lanes)
        } else {
            0
        };
        let mut items: Vec<Item> = Vec::with_capacity(batch);
        // Handed out but not yet sent, in plan order.
        let mut queued: VecDeque<Item> = VecDeque::new();
        loop {
            if queued.is_empty() {
                match rx.recv().await {
                    Some(handout) => take(&mut queued, handout),
                    None => break,
                }
            }
            if self.control.stop.load(Relaxed) {
                break;
            }
            if batch == 0 {
                let item = queued.pop_front().expect("not empty");
                self.single(item).await;
                self.finished(1);
                continue;
            }
            items.clear();
            while items.len() < batch {
                if queued.is_empty() {
                    // The closed loop's dispatcher hands out as fast as the lanes take: a batch
                    // is short of `fill` only at the plan's end.
                    let next = if items.len() < fill {
                        rx.recv().await
                    } else {
                        rx.try_recv().ok()
                    };
                    match next {
                        Some(handout) => take(&mut queued, handout),
                        None => break,
                    }
                }
                let room = batch - items.len();
                let n = room.min(queued.len());
                items.extend(queued.drain(..n));
            }
            if self.control.stop.load(Relaxed) {
                queued.extend(items.drain(..));
                break;
            }
            self.batch(&items).await;
            self.finished(items.len());
        }
        // Stopped: what is still queued was never sent.
        rx.close();
        let mut not_sent = queued.len();
        while let Ok(handout) = rx.try_recv() {
            not_sent += handout.len();
        }
        self.stats.not_sent.fetch_add(not_sent as u64, Relaxed);
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

    /// `n` submissions reached their final state: the lane is free for the next.
    fn finished(&mut self, n: usize) {
        self.free_since = Instant::now();
        if let Some((outstanding, lane)) = &self.outstanding {
            let probe_due = self
                .failing
                .then(|| (self.last_probe + PROBE_EVERY).into_std());
            outstanding[*lane].done(n, probe_due);
        }
    }

    /// Writes `s` as a vote's JSON into the lane's buffer (numbers by `itoa`: a batch writes
    /// 10,000 of them per request).
    fn write_vote(&mut self, s: &Submission) {
        let mut n = itoa::Buffer::new();
        let buf = &mut self.buf;
        let prefix = self.cfg.prefix.as_bytes();
        buf.extend_from_slice(br#"{"poll_id":"#);
        buf.extend_from_slice(n.format(self.cfg.polls[s.poll as usize].id).as_bytes());
        buf.extend_from_slice(br#","option_id":"#);
        buf.extend_from_slice(n.format(s.option).as_bytes());
        buf.extend_from_slice(br#","voter_id":""#);
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(b"-");
        buf.extend_from_slice(n.format(s.voter).as_bytes());
        buf.extend_from_slice(br#"","vote_id":""#);
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(b"-");
        buf.extend_from_slice(n.format(s.vote).as_bytes());
        buf.extend_from_slice(br#""}"#);
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
                        }
                        self.failing = false;
                        return Final::Answered(body);
                    }
                    match status {
                        // Not recorded (the API says so): retry as told; a shed vote (503) after
                        // a jittered wait, a rate-limited one (429) when its limit allows.
                        503 => match retry_after {
                            Some(after) => jittered(after, &mut self.jitter),
                            None => backoff,
                        },
                        429 => retry_after.map_or(backoff, |a| a.min(MAX_RETRY_AFTER)),
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
            };
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
                // The batch's latencies under one lock, its acknowledgements in one count.
                let mut acked = 0;
                {
                    let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
                    for (item, refusal) in items.iter().zip(&refused) {
                        if refusal.is_none() {
                            let from = if open { item.intended } else { sent };
                            record_acked(&mut h, self.last_answer, from, self.lateness(item, sent));
                            acked += 1;
                        }
                    }
                }
                self.stats.acked.fetch_add(acked, Relaxed);
                for (item, refusal) in items.iter().zip(refused) {
                    match refusal {
                        None => self.note(&item.sub, Outcome::Acked),
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
        {
            let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
            record_acked(&mut h, self.last_answer, from, late_us);
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

    #[test]
    fn a_long_retry_after_is_capped_before_its_spread_not_after() {
        let mut rng = SplitMix64::new(11);
        let s = Duration::from_secs;
        // 8 s: spread over 8-16 s, not cut at 10 s (a cap after the spread put 3 in 4 there).
        let waits: Vec<Duration> = (0..1_000).map(|_| jittered(s(8), &mut rng)).collect();
        assert!(waits.iter().all(|w| *w >= s(8) && *w < s(16)));
        assert!(waits.iter().filter(|w| **w > s(10)).count() > 500);
        // An hour: taken as the cap, then spread over 10-20 s.
        let waits: Vec<Duration> = (0..1_000).map(|_| jittered(s(3600), &mut rng)).collect();
        assert!(waits.iter().all(|w| *w >= s(10) && *w < s(20)));
        assert!(waits.iter().any(|w| *w > s(15)));
    }

    #[test]
    fn retries_after_retry_after_spread_over_one_to_two_times_it() {
        let mut rng = SplitMix64::new(7);
        let after = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..1_000).map(|_| jittered(after, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w >= after && *w < 2 * after));
        // Spread over the whole second: each tenth of it holds some of them.
        for tenth in 0..10u32 {
            let from = after + after * tenth / 10;
            let to = from + after / 10;
            assert!(
                waits.iter().any(|w| *w >= from && *w < to),
                "none in {from:?}..{to:?}"
            );
        }
    }
}
