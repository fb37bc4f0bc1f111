//! One partition's counting state: pure, deterministic, no I/O.
//!
//! Feed it the partition's records in offset order with [`PartitionCounter::apply`]; take the
//! absolute partials of the polls that changed with [`PartitionCounter::take_partials`]. Replaying
//! the same records into a fresh counter gives the same counts (the `recount` audit relies on it).
//!
//! [`PartitionCounter::checkpoint`] writes the whole state as bytes and
//! [`PartitionCounter::restore`] reads it back: a counter restored at offset N and fed the records
//! from N on is the counter that was fed every record (a property test below checks it), so a new
//! owner of a partition continues from the stored checkpoint instead of replaying the partition.

use crate::voter_set::VoterSet;
use schemas::{
    Offset, PartialTally, Partition, PollId, PollRules, Rejections, Timestamp, VoteRef, WindowCount,
};
use std::collections::{BTreeMap, HashMap};

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

#[derive(Debug, Default, PartialEq)]
struct PollPartial {
    counts: Vec<i64>,
    /// Voters counted, exactly (not a sketch): a voter's first valid vote counts, later ones don't.
    voters: VoterSet,
    rejected: Rejections,
    late_for_window: i64,
    windows: BTreeMap<i64, i64>,
    dirty_windows: Vec<i64>,
    dirty: bool,
    /// The highest `complete_until` this partial was emitted with.
    emitted_complete_until: Timestamp,
}

/// Counting state of one partition of the votes topic.
#[derive(Debug)]
pub struct PartitionCounter {
    partition: Partition,
    next_offset: Offset,
    windows: WindowConfig,
    /// Highest `accepted_at` seen: the watermark is this minus the allowed lateness.
    max_accepted_us: i64,
    /// Every vote accepted at or before this time that belongs to this partition has been read.
    complete_until: Timestamp,
    polls: HashMap<PollId, PollPartial, foldhash::fast::RandomState>,
}

/// Why checkpoint bytes could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint format {0} is not one this version reads (it reads {CHECKPOINT_FORMAT})")]
    Format(u8),
    #[error("checkpoint is cut short or corrupt ({0})")]
    Corrupt(&'static str),
    #[error("checkpoint is of partition {found}, not {expected}")]
    Partition { found: u64, expected: Partition },
    #[error(
        "checkpoint was written with windows of {found_ms} ms and {found_lateness_ms} ms allowed \
         lateness, not {window_ms} ms and {lateness_ms} ms"
    )]
    Windows {
        found_ms: i64,
        found_lateness_ms: i64,
        window_ms: i64,
        lateness_ms: i64,
    },
}

const CHECKPOINT_FORMAT: u8 = 1;
/// The fewest bytes one poll takes in a checkpoint (all its lists empty).
const MIN_POLL_BYTES: usize = 8 * 11 + 1;

impl PartitionCounter {
    pub fn new(partition: Partition, windows: WindowConfig) -> Self {
        Self {
            partition,
            next_offset: Offset::ZERO,
            windows,
            max_accepted_us: i64::MIN,
            complete_until: Timestamp(0),
            polls: HashMap::default(),
        }
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The distinct voters counted, over every poll (what a checkpoint's size grows with).
    pub fn voters(&self) -> usize {
        self.polls.values().map(|p| p.voters.len()).sum()
    }

    /// Brings the voters the voter sets' growths under way moved since the last call, all sets
    /// together, up to `most` (see [`VoterSet::settle`]), so a set whose votes stopped in the
    /// middle of one does not keep two tables, and sets taking votes get no more work; how many
    /// moved since the last call.
    pub fn settle_voter_sets(&mut self, most: usize) -> usize {
        let mut moved = 0;
        for poll in self.polls.values_mut() {
            moved += poll.voters.settle(most.saturating_sub(moved));
        }
        moved
    }

    /// The offset of the next record this counter expects.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// The records before `start` are lost (deleted before they were counted, as the operator
    /// accepted): the next record this counter expects is at `start`.
    pub fn skip_lost(&mut self, start: Offset) {
        self.next_offset = self.next_offset.max(start);
    }

    /// Judges and counts one vote at `offset` (records must come in offset order). `rules` is the
    /// poll's definition, `None` if the poll is unknown.
    pub fn apply(
        &mut self,
        offset: Offset,
        vote: &VoteRef<'_>,
        rules: Option<&PollRules>,
    ) -> Outcome {
        debug_assert!(offset >= self.next_offset, "records out of order");
        self.next_offset = offset.next();
        let partial = self.polls.entry(vote.poll_id).or_default();
        partial.dirty = true;
        let Some(rules) = rules else {
            partial.rejected.invalid += 1;
            return Outcome::Invalid;
        };
        match rules.state_at(vote.accepted_at) {
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
        if !partial.voters.insert(vote.voter_id) {
            partial.rejected.duplicate += 1;
            return Outcome::Duplicate;
        }
        if partial.counts.len() < rules.options as usize {
            partial.counts.resize(rules.options as usize, 0);
        }
        for o in vote.options() {
            partial.counts[o as usize] += 1;
        }

        let window_us = self.windows.window_ms * 1_000;
        let start_us = vote.accepted_at.micros().div_euclid(window_us) * window_us;
        let watermark = self
            .max_accepted_us
            .saturating_sub(self.windows.allowed_lateness_ms * 1_000);
        self.max_accepted_us = self.max_accepted_us.max(vote.accepted_at.micros());
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
    pub fn skip(&mut self, offset: Offset) {
        self.next_offset = offset.next();
    }

    /// Marks the partition as having read every record up to `next_offset`, with everything
    /// accepted at or before `complete_until` reflected. Polls in `closing` (whose close time is at
    /// or before it) get a partial even if this partition never saw one of their votes, so a merge
    /// can tell that every partition has finished counting them.
    pub fn mark_complete(
        &mut self,
        complete_until: Timestamp,
        closing: impl IntoIterator<Item = (PollId, Timestamp)>,
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
    pub fn take_partials(&mut self, emitted_at: Timestamp) -> Vec<PartialTally> {
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
                partition: self.partition,
                offset: self.next_offset,
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

    /// The whole counting state as bytes (the voters of every poll included, so this grows with
    /// the partition's distinct voters: each id and 8 bytes of its length). See [`restore`](Self::restore).
    pub fn checkpoint(&self) -> Vec<u8> {
        let voters: usize = self
            .polls
            .values()
            .map(|p| {
                p.voters
                    .iter()
                    .map(|(ns, rest)| 8 + ns.len() + rest.len())
                    .sum::<usize>()
            })
            .sum();
        let mut out = Vec::with_capacity(64 + voters + self.polls.len() * 128);
        out.push(CHECKPOINT_FORMAT);
        put_u64(&mut out, self.partition.0 as u64);
        put_i64(&mut out, self.windows.window_ms);
        put_i64(&mut out, self.windows.allowed_lateness_ms);
        put_u64(&mut out, self.next_offset.count());
        put_i64(&mut out, self.max_accepted_us);
        put_i64(&mut out, self.complete_until.micros());
        put_u64(&mut out, self.polls.len() as u64);
        for (&poll_id, p) in &self.polls {
            put_i64(&mut out, poll_id);
            put_u64(&mut out, p.counts.len() as u64);
            p.counts.iter().for_each(|&c| put_i64(&mut out, c));
            let r = p.rejected;
            [r.duplicate, r.late, r.closed, r.invalid, p.late_for_window]
                .into_iter()
                .for_each(|v| put_i64(&mut out, v));
            put_i64(&mut out, p.emitted_complete_until.micros());
            out.push(p.dirty as u8);
            put_u64(&mut out, p.windows.len() as u64);
            for (&start_ms, &votes) in &p.windows {
                put_i64(&mut out, start_ms);
                put_i64(&mut out, votes);
            }
            put_u64(&mut out, p.dirty_windows.len() as u64);
            p.dirty_windows.iter().for_each(|&w| put_i64(&mut out, w));
            put_u64(&mut out, p.voters.len() as u64);
            for (namespace, rest) in p.voters.iter() {
                put_u64(&mut out, (namespace.len() + rest.len()) as u64);
                out.extend_from_slice(namespace.as_bytes());
                out.extend_from_slice(rest);
            }
        }
        out
    }

    /// The counter [`checkpoint`](Self::checkpoint) wrote, for `partition`.
    pub fn restore(
        partition: Partition,
        windows: WindowConfig,
        bytes: &[u8],
    ) -> Result<Self, CheckpointError> {
        let mut r = Reader(bytes);
        let format = r.byte()?;
        if format != CHECKPOINT_FORMAT {
            return Err(CheckpointError::Format(format));
        }
        let found = r.u64()?;
        if found != partition.0 as u64 {
            return Err(CheckpointError::Partition {
                found,
                expected: partition,
            });
        }
        let (found_ms, found_lateness_ms) = (r.i64()?, r.i64()?);
        if (found_ms, found_lateness_ms) != (windows.window_ms, windows.allowed_lateness_ms) {
            // The windows a vote landed in would differ from a replay's.
            return Err(CheckpointError::Windows {
                found_ms,
                found_lateness_ms,
                window_ms: windows.window_ms,
                lateness_ms: windows.allowed_lateness_ms,
            });
        }
        let mut counter = PartitionCounter::new(partition, windows);
        counter.next_offset = Offset::from_count(r.u64()?);
        counter.max_accepted_us = r.i64()?;
        counter.complete_until = Timestamp(r.i64()?);
        let polls = r.len(MIN_POLL_BYTES)?;
        counter.polls.reserve(polls);
        for _ in 0..polls {
            let poll_id = r.i64()?;
            let mut p = PollPartial {
                counts: (0..r.len(8)?).map(|_| r.i64()).collect::<Result<_, _>>()?,
                ..Default::default()
            };
            p.rejected = Rejections {
                duplicate: r.i64()?,
                late: r.i64()?,
                closed: r.i64()?,
                invalid: r.i64()?,
            };
            p.late_for_window = r.i64()?;
            p.emitted_complete_until = Timestamp(r.i64()?);
            p.dirty = r.byte()? != 0;
            for _ in 0..r.len(16)? {
                let start_ms = r.i64()?;
                p.windows.insert(start_ms, r.i64()?);
            }
            p.dirty_windows = (0..r.len(8)?).map(|_| r.i64()).collect::<Result<_, _>>()?;
            if p.dirty_windows.iter().any(|w| !p.windows.contains_key(w)) {
                return Err(CheckpointError::Corrupt(
                    "a changed window that is not a window",
                ));
            }
            let voters = r.len(8)?;
            p.voters.reserve(voters);
            for _ in 0..voters {
                let len = r.len(1)?;
                let voter = std::str::from_utf8(r.take(len)?)
                    .map_err(|_| CheckpointError::Corrupt("a voter id is not UTF-8"))?;
                if !p.voters.insert(voter) {
                    return Err(CheckpointError::Corrupt("a voter twice"));
                }
            }
            if counter.polls.insert(poll_id, p).is_some() {
                return Err(CheckpointError::Corrupt("a poll twice"));
            }
        }
        if !r.0.is_empty() {
            return Err(CheckpointError::Corrupt("bytes after the end"));
        }
        Ok(counter)
    }

    /// The current absolute counts of one poll (what a partial emitted now would say).
    pub fn counts(&self, poll: PollId) -> (Vec<i64>, i64, Rejections) {
        self.polls
            .get(&poll)
            .map(|p| (p.counts.clone(), p.voters.len() as i64, p.rejected))
            .unwrap_or_default()
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads what [`PartitionCounter::checkpoint`] wrote, refusing anything cut short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        if self.0.len() < n {
            return Err(CheckpointError::Corrupt("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, CheckpointError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count of items that take at least `min_item` bytes each: more than what is left could
    /// hold means corrupt (so a bad length never becomes a huge allocation).
    fn len(&mut self, min_item: usize) -> Result<usize, CheckpointError> {
        let n = self.u64()?;
        if n > (self.0.len() / min_item.max(1)) as u64 {
            return Err(CheckpointError::Corrupt("a length beyond the end"));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use schemas::vote::decode_vote;
    use schemas::Vote;

    fn rules() -> PollRules {
        PollRules {
            options: 3,
            max_choices: 1,
            open_at: Some(Timestamp(0)),
            close_at: Some(Timestamp(1_000 + 120 * 200_000)),
        }
    }

    /// Feeds votes (poll, voter, option, time step) into `counter` from `offset` on, taking partials
    /// at every index in `cuts`; returns what was emitted.
    fn feed(
        counter: &mut PartitionCounter,
        votes: &[(u8, u8, u8, u8)],
        first_offset: usize,
        cuts: &[usize],
    ) -> Vec<PartialTally> {
        let mut out = Vec::new();
        for (i, &(poll, voter, option, step)) in votes.iter().enumerate() {
            let offset = first_offset + i;
            let mut buf = Vec::new();
            Vote {
                vote_id: format!("{offset}"),
                poll_id: poll as i64 % 3,
                voter_id: format!("voter-{voter}"),
                options: vec![option as u32 % 4],
                accepted_at: Timestamp(1_000 + offset as i64 * 200_000 - step as i64 * 700_000),
                source: "t".into(),
            }
            .encode(&mut buf);
            // Poll 2 is unknown: rejected as invalid.
            let rules = (poll % 3 != 2).then(rules);
            counter.apply(
                Offset(offset as i64),
                &decode_vote(&buf).unwrap(),
                rules.as_ref(),
            );
            if cuts.contains(&offset) {
                counter.mark_complete(
                    Timestamp(offset as i64 * 150_000),
                    [(0, Timestamp(1_000 + 60 * 200_000))],
                );
                out.extend(counter.take_partials(Timestamp(offset as i64)));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn a_restored_checkpoint_continues_as_if_nothing_happened(
            votes in proptest::collection::vec((0u8..3, 0u8..30, 0u8..4, 0u8..8), 1..150),
            split in 0usize..150,
            cuts in proptest::collection::vec(0usize..150, 0..8),
        ) {
            let split = split.min(votes.len());
            let windows = WindowConfig { window_ms: 1_000, allowed_lateness_ms: 2_000 };
            let mut whole = PartitionCounter::new(Partition(4), windows);
            let expected = feed(&mut whole, &votes, 0, &cuts);

            let mut before = PartitionCounter::new(Partition(4), windows);
            let mut got = feed(&mut before, &votes[..split], 0, &cuts);
            let bytes = before.checkpoint();
            let mut after = PartitionCounter::restore(Partition(4), windows, &bytes).unwrap();
            prop_assert_eq!(after.next_offset(), Offset(split as i64));
            prop_assert_eq!(&after.polls, &before.polls);
            got.extend(feed(&mut after, &votes[split..], split, &cuts));

            prop_assert_eq!(got, expected);
            prop_assert_eq!(after.take_partials(Timestamp(0)), whole.take_partials(Timestamp(0)));
            prop_assert_eq!(after.polls, whole.polls);
        }

        #[test]
        fn damaged_checkpoints_are_refused_not_misread(
            votes in proptest::collection::vec((0u8..3, 0u8..30, 0u8..4, 0u8..8), 1..60),
            cut in any::<prop::sample::Index>(),
        ) {
            let windows = WindowConfig::default();
            let mut counter = PartitionCounter::new(Partition(1), windows);
            feed(&mut counter, &votes, 0, &[]);
            let bytes = counter.checkpoint();
            let cut = cut.index(bytes.len());
            prop_assert!(PartitionCounter::restore(Partition(1), windows, &bytes[..cut]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(PartitionCounter::restore(Partition(1), windows, &longer).is_err());
        }
    }

    #[test]
    fn settling_moves_the_voter_sets_growths_within_its_budget() {
        let windows = WindowConfig {
            window_ms: 1_000,
            allowed_lateness_ms: 2_000,
        };
        let mut counter = PartitionCounter::new(Partition(0), windows);
        // Two polls, each set just past its first growth in steps (at 7,168 voters).
        for offset in 0..2 * 7_200 {
            let mut buf = Vec::new();
            Vote {
                vote_id: format!("{offset}"),
                poll_id: offset as i64 % 2,
                voter_id: format!("voter-{}", offset / 2),
                options: vec![0],
                accepted_at: Timestamp(1_000),
                source: "t".into(),
            }
            .encode(&mut buf);
            let vote = decode_vote(&buf).unwrap();
            let outcome = counter.apply(Offset(offset as i64), &vote, Some(&rules()));
            assert_eq!(outcome, Outcome::Counted);
        }
        // Each set has moved 2 voters at each of its 32 inserts from the growth on: 128 in all.
        assert_eq!(counter.settle_voter_sets(0), 128, "what the inserts moved");
        assert_eq!(
            counter.settle_voter_sets(10_000),
            10_000,
            "spans both polls' sets"
        );
        let rest = counter.settle_voter_sets(10_000);
        assert_eq!(rest, 2 * (7_168 - 32 * 2) - 10_000);
        assert_eq!(counter.settle_voter_sets(10_000), 0, "every move is over");
        assert_eq!(counter.voters(), 2 * 7_200);
    }

    #[test]
    fn a_checkpoint_with_other_windows_is_refused() {
        let windows = WindowConfig::default();
        let bytes = PartitionCounter::new(Partition(1), windows).checkpoint();
        let other = WindowConfig {
            window_ms: 5_000,
            ..windows
        };
        assert!(matches!(
            PartitionCounter::restore(Partition(1), other, &bytes),
            Err(CheckpointError::Windows {
                found_ms: 1_000,
                window_ms: 5_000,
                ..
            })
        ));
    }

    #[test]
    fn a_checkpoint_of_another_partition_or_format_is_refused() {
        let windows = WindowConfig::default();
        let bytes = PartitionCounter::new(Partition(1), windows).checkpoint();
        assert_eq!(
            PartitionCounter::restore(Partition(2), windows, &bytes).unwrap_err(),
            CheckpointError::Partition {
                found: 1,
                expected: Partition(2)
            }
        );
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(
            PartitionCounter::restore(Partition(1), windows, &other).unwrap_err(),
            CheckpointError::Format(9)
        );
        assert!(PartitionCounter::restore(Partition(1), windows, &bytes).is_ok());
    }
}
