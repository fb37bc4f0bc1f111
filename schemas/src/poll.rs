//! A poll's definition and the rules every stage applies to it (open/close, choices, visibility).

use crate::Timestamp;
use serde::{Deserialize, Serialize};

pub type PollId = i64;

/// The most options a poll may have, and the most a voter may pick.
pub const MAX_OPTIONS: usize = 64;

/// Who sees the results, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Everyone sees live counts.
    #[default]
    Live,
    /// The public sees the counts once the poll has closed.
    AfterClose,
    /// The public sees the counts once an operator reveals them.
    OnReveal,
}

/// Who may vote in a poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Voters {
    /// Any voter of any door (public devices, aggregators, old-API accounts, verified tokens).
    #[default]
    Anyone,
    /// Only voters vouched for by a voter token signed by the broadcaster's identity service.
    Verified,
}

/// Where a poll is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollState {
    /// Created, no open time yet.
    Draft,
    /// Opens at `opens_at`.
    Scheduled,
    Open,
    Closed,
}

/// A poll as stored (embedded file or PostgreSQL). Timestamps are microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub id: PollId,
    /// Short link code: `/p/{slug}`.
    pub slug: String,
    pub title: String,
    /// Option labels; an option's id is its index.
    pub options: Vec<String>,
    /// 1 for a single-choice poll.
    pub max_choices: u32,
    #[serde(default)]
    pub visibility: Visibility,
    pub opens_at: Option<Timestamp>,
    pub closes_at: Option<Timestamp>,
    pub opened_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    #[serde(default)]
    pub revealed: bool,
    pub created_at: Timestamp,
    pub creator: Option<String>,
    /// Who may vote (`anyone` when absent, as in polls stored before this field).
    #[serde(default)]
    pub voters: Voters,
}

/// The part of a poll the pipeline needs to judge a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollRules {
    pub options: u32,
    pub max_choices: u32,
    pub open_at: Option<Timestamp>,
    pub close_at: Option<Timestamp>,
}

/// Why a choice does not fit a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error("choose at least one option")]
    Empty,
    #[error("this poll allows at most {max} choices")]
    TooMany { max: u32 },
    #[error("option {option} does not exist (this poll has options 0 to {last})")]
    UnknownOption { option: i64, last: u32 },
    #[error("option {option} is chosen twice")]
    Repeated { option: i64 },
}

impl Poll {
    /// When the poll opened or opens: the earlier of the schedule and a manual open.
    pub fn open_time(&self) -> Option<Timestamp> {
        earliest(self.opens_at, self.opened_at)
    }

    /// When the poll closed or closes: the earlier of the schedule and a manual close.
    pub fn close_time(&self) -> Option<Timestamp> {
        earliest(self.closes_at, self.closed_at)
    }

    pub fn state_at(&self, t: Timestamp) -> PollState {
        self.rules().state_at(t)
    }

    /// Whether the public may see the counts at time `t` (operators always may).
    pub fn results_public(&self, t: Timestamp) -> bool {
        match self.visibility {
            Visibility::Live => true,
            Visibility::AfterClose => self.state_at(t) == PollState::Closed,
            Visibility::OnReveal => self.revealed,
        }
    }

    pub fn rules(&self) -> PollRules {
        PollRules {
            options: self.options.len() as u32,
            max_choices: self.max_choices,
            open_at: self.open_time(),
            close_at: self.close_time(),
        }
    }

    /// The option index of a label, as the seed API names options.
    pub fn option_index(&self, label: &str) -> Option<u32> {
        self.options
            .iter()
            .position(|o| o == label)
            .map(|i| i as u32)
    }
}

impl PollRules {
    pub fn state_at(&self, t: Timestamp) -> PollState {
        if self.close_at.is_some_and(|c| t > c) {
            PollState::Closed
        } else if self.open_at.is_some_and(|o| t >= o) {
            PollState::Open
        } else if self.open_at.is_some() {
            PollState::Scheduled
        } else {
            PollState::Draft
        }
    }

    /// Checks a choice against the poll: 1 to `max_choices` distinct, existing options.
    /// Allocation-free: it runs once per vote on the edge and in the processor.
    pub fn check_choice(
        &self,
        options: impl Iterator<Item = i64> + Clone,
    ) -> Result<(), ChoiceError> {
        let mut n = 0u32;
        for (i, o) in options.clone().enumerate() {
            n += 1;
            if n > self.max_choices {
                return Err(ChoiceError::TooMany {
                    max: self.max_choices,
                });
            }
            if o < 0 || o >= self.options as i64 {
                return Err(ChoiceError::UnknownOption {
                    option: o,
                    last: self.options.saturating_sub(1),
                });
            }
            if options.clone().take(i).any(|p| p == o) {
                return Err(ChoiceError::Repeated { option: o });
            }
        }
        if n == 0 {
            return Err(ChoiceError::Empty);
        }
        Ok(())
    }
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(options: u32, max: u32) -> PollRules {
        PollRules {
            options,
            max_choices: max,
            open_at: Some(Timestamp(0)),
            close_at: Some(Timestamp(100)),
        }
    }

    #[test]
    fn choices() {
        let r = rules(3, 2);
        assert_eq!(r.check_choice([0i64].into_iter()), Ok(()));
        assert_eq!(r.check_choice([0i64, 2].into_iter()), Ok(()));
        assert_eq!(r.check_choice(std::iter::empty()), Err(ChoiceError::Empty));
        assert_eq!(
            r.check_choice([0i64, 1, 2].into_iter()),
            Err(ChoiceError::TooMany { max: 2 })
        );
        assert_eq!(
            r.check_choice([3i64].into_iter()),
            Err(ChoiceError::UnknownOption { option: 3, last: 2 })
        );
        assert_eq!(
            r.check_choice([-1i64].into_iter()),
            Err(ChoiceError::UnknownOption {
                option: -1,
                last: 2
            })
        );
        assert_eq!(
            r.check_choice([1i64, 1].into_iter()),
            Err(ChoiceError::Repeated { option: 1 })
        );
    }

    #[test]
    fn lifecycle_counts_votes_at_the_close_instant() {
        let r = rules(2, 1);
        assert_eq!(r.state_at(Timestamp(-1)), PollState::Scheduled);
        assert_eq!(r.state_at(Timestamp(0)), PollState::Open);
        assert_eq!(
            r.state_at(Timestamp(100)),
            PollState::Open,
            "a vote accepted at the close instant counts"
        );
        assert_eq!(r.state_at(Timestamp(101)), PollState::Closed);
        let draft = PollRules {
            open_at: None,
            close_at: None,
            ..r
        };
        assert_eq!(draft.state_at(Timestamp(5)), PollState::Draft);
    }

    #[test]
    fn manual_close_before_schedule_wins() {
        let p = Poll {
            id: 1,
            slug: "x".into(),
            title: "t".into(),
            options: vec!["a".into(), "b".into()],
            max_choices: 1,
            visibility: Visibility::AfterClose,
            opens_at: Some(Timestamp(10)),
            closes_at: Some(Timestamp(1000)),
            opened_at: None,
            closed_at: Some(Timestamp(500)),
            revealed: false,
            created_at: Timestamp(0),
            creator: None,
            voters: Default::default(),
        };
        assert_eq!(p.close_time(), Some(Timestamp(500)));
        assert!(!p.results_public(Timestamp(400)));
        assert!(p.results_public(Timestamp(501)));
    }
}
