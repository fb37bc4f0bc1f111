//! Why a vote or a poll definition is refused: domain reasons, no HTTP.
//!
//! Each variant carries the sentence a person reads. Its stable machine-readable name is
//! [`VoteRejection::code`] / [`PollRejection::code`]; the HTTP status of each reason is chosen once,
//! at the edge (the `edge` crate), and the old API's adapter maps from these same enums.

use crate::poll::ChoiceError;
use crate::PollId;

/// Why a vote is refused before it reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteRejection {
    /// The body is not a vote (bad JSON, a missing or doubled option field).
    #[error("{0}")]
    Malformed(String),
    /// A voter id (`field` names where it came from) that is empty, too long or not printable.
    #[error("{field} must be 1 to {max} bytes of printable text")]
    InvalidVoterId { field: &'static str, max: usize },
    #[error("vote_id must be 1 to {max} bytes of printable text")]
    InvalidVoteId { max: usize },
    #[error(
        "the voter token is for poll {token_poll}, not poll {poll}; get a token for this poll"
    )]
    TokenForAnotherPoll { token_poll: PollId, poll: PollId },
    #[error(
        "voter_id differs from the voter token's subject; leave voter_id out when sending a token"
    )]
    VoterMismatch,
    #[error("there is no poll {0}")]
    UnknownPoll(PollId),
    #[error(
        "poll {0} takes only verified voters: send `Authorization: Bearer <voter token>` from the broadcaster's identity service"
    )]
    VerifiedVotersOnly(PollId),
    #[error("poll {0} is closed; votes are no longer accepted")]
    PollClosed(PollId),
    #[error("poll {0} is not open yet")]
    PollNotOpen(PollId),
    /// The choice does not fit the poll's rules.
    #[error("{0}")]
    Choice(ChoiceError),
}

impl VoteRejection {
    /// The stable machine-readable name of the reason (the `code` of the JSON error).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::InvalidVoterId { .. } => "invalid_voter_id",
            Self::InvalidVoteId { .. } => "invalid_vote_id",
            Self::TokenForAnotherPoll { .. } => "token_for_another_poll",
            Self::VoterMismatch => "voter_mismatch",
            Self::UnknownPoll(_) => "unknown_poll",
            Self::VerifiedVotersOnly(_) => "verified_voters_only",
            Self::PollClosed(_) => "poll_closed",
            Self::PollNotOpen(_) => "poll_not_open",
            Self::Choice(ChoiceError::TooMany { .. }) => "too_many_choices",
            Self::Choice(_) => "invalid_option",
        }
    }
}

/// Why a poll definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollRejection {
    #[error("{0}")]
    InvalidTitle(String),
    #[error("{0}")]
    InvalidOptions(String),
    #[error("{0}")]
    InvalidMaxChoices(String),
    /// A time that does not parse, or times that contradict each other.
    #[error("{0}")]
    InvalidTime(String),
}

impl PollRejection {
    /// The stable machine-readable name of the reason (the `code` of the JSON error).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidTitle(_) => "invalid_title",
            Self::InvalidOptions(_) => "invalid_options",
            Self::InvalidMaxChoices(_) => "invalid_max_choices",
            Self::InvalidTime(_) => "invalid_time",
        }
    }
}
