//! One partition's counting state: pure, deterministic, no I/O.
//!
//! Feed it the partition's records in offset order with [`PartitionCounter::apply`]; take the
//! absolute partials of the polls that changed with [`PartitionCounter::take_partials`]. Replaying
//! the same records into a fresh counter gives the same counts (the `recount` audit relies on it).

use schemas::{PartialTally, PollId, PollRules, Rejections, VoteRef, WindowCount};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What happened to one vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    /// Counted, but its window had already closed (beyond the allowed lateness).
    CountedLate,
    Duplicate,
    /// Accepted after the poll's close time.
    Late,
    /// Accepted before the poll opened.
    Closed,
    /// Unknown poll or a choice that does not fit the poll.
    Invalid,
}

#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            window_ms: 1_000,
            allowed_lateness_ms: 2_000,
        }
    }
}

#[derive(Debug, Default)]
struct PollPartial {
    counts: Vec<i64>,
    /// Voters counted, exactly (not a sketch): a voter's first valid vote counts, later ones don't.
    voters: HashSet<Box<str>>,
    rejected: Rejections,
    late_for_window: i64,
    windows: BTreeMap<i64, i64>,
    dirty_windows: Vec<i64>,
    dirty: bool,
    /// The highest `complete_until` this partial was emitted with.
    emitted_complete_until: i64,
}

/// Counting state of one partition of the votes topic.
#[derive(Debug)]
pub struct PartitionCounter {
    partition: u32,
    next_offset: u64,
    windows: WindowConfig,
    /// Highest `accepted_at` seen: the watermark is this minus the allowed lateness.
    max_accepted_us: i64,
    /// Every vote accepted at or before this time that belongs to this partition has been read.
    complete_until: i64,
    polls: HashMap<PollId, PollPartial>,
}

impl PartitionCounter {
    pub fn new(partition: u32, windows: WindowConfig) -> Self {
        Self {
            partition,
            next_offset: 0,
            windows,
            max_accepted_us: i64::MIN,
            complete_until: 0,
            polls: HashMap::new(),
        }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset of the next record this counter expects.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Judges and counts one vote at `offset` (records must come in offset order). `rules` is the
    /// poll's definition, `None` if the poll is unknown.
    pub fn apply(&mut self, offset: u64, vote: &VoteRef<'_>, rules: Option<&PollRules>) -> Outcome {
        debug_assert!(offset >= self.next_offset, "records out of order");
        self.next_offset = offset + 1;
        let partial = self.polls.entry(vote.poll_id).or_default();
        partial.dirty = true;
        let Some(rules) = rules else {
            partial.rejected.invalid += 1;
            return Outcome::Invalid;
        };
        match rules.state_at(vote.accepted_at_us) {
            schemas::poll::PollState::Open => {}
            schemas::poll::PollState::Closed => {
                partial.rejected.late += 1;
                return Outcome::Late;
            }
            _ => {
                partial.rejected.closed += 1;
                return Outcome::Closed;
            }
        }
        if rules.check_choice(vote.options()).is_err() {
            partial.rejected.invalid += 1;
            return Outcome::Invalid;
        }
        if partial.voters.contains(vote.voter_id) {
            partial.rejected.duplicate += 1;
            return Outcome::Duplicate;
        }
        partial.voters.insert(vote.voter_id.into());
        if partial.counts.len() < rules.options as usize {
            partial.counts.resize(rules.options as usize, 0);
        }
        for o in vote.options() {
            partial.counts[o as usize] += 1;
        }

        let window_us = self.windows.window_ms * 1_000;
        let start_us = vote.accepted_at_us.div_euclid(window_us) * window_us;
        let watermark = self
            .max_accepted_us
            .saturating_sub(self.windows.allowed_lateness_ms * 1_000);
        self.max_accepted_us = self.max_accepted_us.max(vote.accepted_at_us);
        if start_us + window_us <= watermark {
            partial.late_for_window += 1;
            return Outcome::CountedLate;
        }
        let start_ms = start_us / 1_000;
        let w = partial.windows.entry(start_ms).or_insert(0);
        *w += 1;
        if partial.dirty_windows.last() != Some(&start_ms)
            && !partial.dirty_windows.contains(&start_ms)
        {
            partial.dirty_windows.push(start_ms);
        }
        Outcome::Counted
    }

    /// A record that is not a decodable vote still takes its offset.
    pub fn skip(&mut self, offset: u64) {
        self.next_offset = offset + 1;
    }

    /// Marks the partition as having read every record up to `next_offset`, with everything
    /// accepted at or before `complete_until` reflected. Polls in `closing` (whose close time is at
    /// or before it) get a partial even if this partition never saw one of their votes, so a merge
    /// can tell that every partition has finished counting them.
    pub fn mark_complete(
        &mut self,
        complete_until: i64,
        closing: impl IntoIterator<Item = (PollId, i64)>,
    ) {
        for (poll, close_at) in closing {
            if close_at <= complete_until {
                let p = self.polls.entry(poll).or_default();
                if p.emitted_complete_until < close_at {
                    p.dirty = true;
                }
            }
        }
        self.complete_until = complete_until;
    }

    /// The absolute partials of every poll that changed since the last call (and of polls
    /// [`mark_complete`](Self::mark_complete) asked for), tagged with this partition's offset.
    pub fn take_partials(&mut self, emitted_at: i64) -> Vec<PartialTally> {
        let mut out = Vec::new();
        let complete_until = self.complete_until;
        for (&poll_id, p) in self.polls.iter_mut().filter(|(_, p)| p.dirty) {
            p.dirty = false;
            p.emitted_complete_until = p.emitted_complete_until.max(complete_until);
            let windows = p
                .dirty_windows
                .drain(..)
                .map(|start_ms| WindowCount {
                    start_ms,
                    votes: p.windows[&start_ms],
                })
                .collect();
            out.push(PartialTally {
                poll_id,
                partition: self.partition as i32,
                offset: self.next_offset as i64,
                counts: p.counts.clone(),
                voters: p.voters.len() as i64,
                rejected: p.rejected,
                late_for_window: p.late_for_window,
                windows,
                complete_until,
                emitted_at,
            });
        }
        out.sort_by_key(|t| t.poll_id);
        out
    }

    /// The current absolute counts of one poll (what a partial emitted now would say).
    pub fn counts(&self, poll: PollId) -> (Vec<i64>, i64, Rejections) {
        self.polls
            .get(&poll)
            .map(|p| (p.counts.clone(), p.voters.len() as i64, p.rejected))
            .unwrap_or_default()
    }
}
