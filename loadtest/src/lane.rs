//! A lane: one keep-alive connection that works through its queue one submission (or one batch)
//! at a time, retrying each with the same body until a final answer (see `run.rs` for the
//! schedule and the retry rules), and noting what it measured: latency from the due time (or the
//! first send), each request's send to answer, and in the open loop how late it sent each vote.

use crate::client::{error_code, Attempt, Conn};
use crate::plan::Submission;
use crate::record::{LaneRecorder, Line};
use crate::run::{Control, Item, Receipt, RunConfig, Stats};
use crate::seconds::LaneHist;
use crate::verify::{Expectation, Outcome};
use bytes::{Bytes, BytesMut};
use hyper::{Method, Uri};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a lane whose server stopped answering tries again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

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
    /// A lane of the run `cfg` that notes its latencies in `hist` (shared by a shard of lanes),
    /// starting at `start`.
    pub fn new(
        cfg: &RunConfig,
        stats: &Arc<Stats>,
        control: &Arc<Control>,
        hist: Arc<Mutex<LaneHist>>,
        start: Instant,
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
            expectation: Expectation::default(),
            receipts: Vec::new(),
            rejections: BTreeMap::new(),
            last_answer: start,
            free_since: start,
            votes_uri: Uri::from_static("/v1/votes"),
            batch_uri: Uri::from_static("/v1/votes/batch?results=rejected"),
        }
    }

    /// Works through `rx` until it closes or the run stops.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Item>) -> LaneDone {
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
        // A histogram's smallest value is 1 µs.
        let us = (self.last_answer.saturating_duration_since(from).as_micros() as u64).max(1);
        {
            let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
            h.total.saturating_record(us);
            h.second.saturating_record(us);
            if let Some(late) = late_us.map(|late| late.max(1)) {
                h.late.saturating_record(late);
                h.late_second.saturating_record(late);
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
