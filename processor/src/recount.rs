//! The audit: replay the votes topic into fresh counters and check every published partial.
//!
//! For each votes partition, the published partial of each poll says "as of offset O, this
//! partition counted these votes". Replaying the partition and stopping at each such O must give
//! the same counts, voters and rejections (the tallies are a pure function of the log). The replay
//! then goes on to the end of the log, giving the full recount too.

use crate::pipeline::{PartitionCounter, WindowConfig};
use results::PollResults;
use schemas::vote::decode_vote;
use schemas::{Offset, Partition, PollId, Rejections};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use storage::{Log, LogError, Topic};

/// One disagreement between a published partial and the replay.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    pub poll_id: PollId,
    pub partition: Partition,
    pub offset: Offset,
    pub published: (Vec<i64>, i64, Rejections),
    pub recounted: (Vec<i64>, i64, Rejections),
}

#[derive(Debug, Default, Serialize)]
pub struct PollRecount {
    /// Counts as published (sum of the latest partials).
    pub published: Vec<i64>,
    /// Counts from the replay up to the end of the log.
    pub recounted: Vec<i64>,
    /// Partials checked against the replay at their own offsets.
    pub partials_checked: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RecountReport {
    pub records: u64,
    pub polls: BTreeMap<PollId, PollRecount>,
    pub mismatches: Vec<Mismatch>,
}

impl RecountReport {
    pub fn agrees(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The report as `crowdtick recount` prints it: a line per poll (`title_of` names it), a line
    /// per mismatch, then the verdict.
    pub fn to_text(&self, elapsed: Duration, title_of: impl Fn(PollId) -> String) -> String {
        let mut out = format!(
            "recount of {} records in {:.2} s\n",
            self.records,
            elapsed.as_secs_f64()
        );
        for (&poll, r) in &self.polls {
            out += &format!(
                "poll {poll} {:?}: published {:?}, recounted from the log {:?} ({} partials checked)\n",
                title_of(poll),
                r.published,
                r.recounted,
                r.partials_checked
            );
        }
        for m in &self.mismatches {
            out += &format!(
                "MISMATCH poll {} partition {} at offset {}: published {:?}, the log says {:?}\n",
                m.poll_id, m.partition, m.offset, m.published, m.recounted
            );
        }
        out += match self.agrees() {
            true => "recount agrees with every published tally\n",
            false => "recount DISAGREES\n",
        };
        out
    }
}

fn normalized(mut counts: Vec<i64>, options: usize) -> Vec<i64> {
    counts.resize(options.max(counts.len()), 0);
    while counts.len() > options && counts.last() == Some(&0) {
        counts.pop();
    }
    counts
}

/// Replays every votes partition; `progress(partition, read, end)` is called now and then.
pub async fn recount(
    log: &dyn Log,
    polls: &storage::Polls,
    published: &HashMap<PollId, PollResults>,
    windows: WindowConfig,
    mut progress: impl FnMut(Partition, Offset, Offset),
) -> Result<RecountReport, LogError> {
    let mut report = RecountReport::default();
    let options = |poll: PollId| polls.get(&poll).map(|p| p.options.len()).unwrap_or(0);
    let mut recounted: BTreeMap<PollId, Vec<i64>> = BTreeMap::new();
    for partition in Partition::all(log.partitions(Topic::Votes)) {
        // Checkpoints: offset → polls whose published partial was taken there.
        let mut checkpoints: BTreeMap<Offset, Vec<PollId>> = BTreeMap::new();
        for (&poll, r) in published {
            if let Some(t) = r.partial(partition) {
                checkpoints.entry(t.offset).or_default().push(poll);
            }
        }
        let mut counter = PartitionCounter::new(partition, windows);
        let end = log.high_watermark(Topic::Votes, partition).await?;
        let mut check = |counter: &PartitionCounter, report: &mut RecountReport| {
            if let Some(polls_here) = checkpoints.remove(&counter.next_offset()) {
                for poll in polls_here {
                    let t = published[&poll].partial(partition).unwrap();
                    let n = options(poll);
                    let (counts, voters, rejected) = counter.counts(poll);
                    let mine = (normalized(counts, n), voters, rejected);
                    let theirs = (normalized(t.counts.clone(), n), t.voters, t.rejected);
                    report.polls.entry(poll).or_default().partials_checked += 1;
                    if mine != theirs {
                        report.mismatches.push(Mismatch {
                            poll_id: poll,
                            partition,
                            offset: t.offset,
                            published: theirs,
                            recounted: mine,
                        });
                    }
                }
            }
        };
        check(&counter, &mut report);
        while counter.next_offset() < end {
            let asked = counter.next_offset();
            let f = log
                .fetch(Topic::Votes, partition, asked, 4 << 20, Duration::ZERO)
                .await?
                .starting_at(Topic::Votes, asked)?;
            if f.is_empty() {
                break;
            }
            for (offset, _, _, value) in f.iter() {
                match decode_vote(value) {
                    Ok(v) => {
                        let rules = polls.get(&v.poll_id).map(|p| p.rules());
                        counter.apply(offset, &v, rules.as_ref());
                    }
                    Err(_) => counter.skip(offset),
                }
                check(&counter, &mut report);
            }
            report.records += f.len() as u64;
            progress(partition, counter.next_offset(), end);
        }
        for (&poll, _) in polls.iter() {
            let (counts, ..) = counter.counts(poll);
            let total = recounted.entry(poll).or_default();
            total.resize(total.len().max(counts.len()), 0);
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        // A published offset beyond the log's end cannot be checked: that is a mismatch too.
        for (offset, polls_left) in checkpoints {
            for poll in polls_left {
                let t = published[&poll].partial(partition).unwrap();
                report.mismatches.push(Mismatch {
                    poll_id: poll,
                    partition,
                    offset,
                    published: (t.counts.clone(), t.voters, t.rejected),
                    recounted: (Vec::new(), 0, Rejections::default()),
                });
            }
        }
    }
    for (&poll, p) in polls {
        let n = p.options.len();
        let entry = report.polls.entry(poll).or_default();
        entry.published = published
            .get(&poll)
            .map(|r| r.counts(n))
            .unwrap_or_else(|| vec![0; n]);
        entry.recounted = normalized(recounted.remove(&poll).unwrap_or_default(), n);
    }
    Ok(report)
}
