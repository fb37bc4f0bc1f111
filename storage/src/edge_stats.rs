//! Votes the edge refused before they reached the log, counted per poll and reason.

use parking_lot::Mutex;
use schemas::PollId;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct EdgeCounts {
    /// The poll was not open (not yet, or no longer).
    pub closed: u64,
    /// The choice or voter id did not fit the poll.
    pub invalid: u64,
    /// The sender's address was over its rate.
    pub rate_limited: u64,
    /// The log could not take the vote in time (answered 503).
    pub unavailable: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum EdgeReason {
    Closed,
    Invalid,
    RateLimited,
    Unavailable,
}

/// Per-poll counters of edge rejections, in memory (since the process started).
#[derive(Debug, Default)]
pub struct EdgeRejections {
    polls: Mutex<HashMap<PollId, EdgeCounts>>,
}

impl EdgeRejections {
    pub fn add(&self, poll: PollId, reason: EdgeReason, n: u64) {
        let mut polls = self.polls.lock();
        let c = polls.entry(poll).or_default();
        match reason {
            EdgeReason::Closed => c.closed += n,
            EdgeReason::Invalid => c.invalid += n,
            EdgeReason::RateLimited => c.rate_limited += n,
            EdgeReason::Unavailable => c.unavailable += n,
        }
    }

    pub fn get(&self, poll: PollId) -> EdgeCounts {
        self.polls.lock().get(&poll).copied().unwrap_or_default()
    }
}
