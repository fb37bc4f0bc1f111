//! The HTTP status of every domain reason, chosen once.

use crate::ApiError;
use axum::http::StatusCode;
use schemas::{PollRejection, VoteRejection};

/// The status a refused vote is answered with.
pub fn vote_status(r: &VoteRejection) -> StatusCode {
    match r {
        VoteRejection::Malformed(_) => StatusCode::BAD_REQUEST,
        VoteRejection::UnknownPoll(_) => StatusCode::NOT_FOUND,
        VoteRejection::TokenForAnotherPoll { .. } | VoteRejection::VerifiedVotersOnly(_) => {
            StatusCode::FORBIDDEN
        }
        VoteRejection::PollClosed(_) | VoteRejection::PollNotOpen(_) => StatusCode::CONFLICT,
        VoteRejection::InvalidVoterId { .. }
        | VoteRejection::InvalidVoteId { .. }
        | VoteRejection::VoterMismatch
        | VoteRejection::Choice(_) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl From<VoteRejection> for ApiError {
    fn from(r: VoteRejection) -> Self {
        ApiError::from(&r)
    }
}

impl From<&VoteRejection> for ApiError {
    fn from(r: &VoteRejection) -> Self {
        ApiError::new(vote_status(r), r.code(), r.to_string())
    }
}

impl From<PollRejection> for ApiError {
    fn from(r: PollRejection) -> Self {
        ApiError::unprocessable(r.code(), r.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::poll::ChoiceError;

    #[test]
    fn every_vote_reason_is_a_client_error_with_its_code() {
        let all = [
            VoteRejection::Malformed("x".into()),
            VoteRejection::InvalidVoterId {
                field: "voter_id",
                max: 128,
            },
            VoteRejection::InvalidVoteId { max: 64 },
            VoteRejection::TokenForAnotherPoll {
                token_poll: 1,
                poll: 2,
            },
            VoteRejection::VoterMismatch,
            VoteRejection::UnknownPoll(3),
            VoteRejection::VerifiedVotersOnly(3),
            VoteRejection::PollClosed(3),
            VoteRejection::PollNotOpen(3),
            VoteRejection::Choice(ChoiceError::TooMany { max: 1 }),
            VoteRejection::Choice(ChoiceError::UnknownOption { option: 9, last: 2 }),
        ];
        let answers: Vec<_> = all
            .iter()
            .map(|r| {
                let e = ApiError::from(r);
                assert!(e.status.is_client_error(), "{r:?}");
                assert_eq!(e.message, r.to_string());
                (e.status.as_u16(), e.code)
            })
            .collect();
        assert_eq!(
            answers,
            [
                (400, "malformed"),
                (422, "invalid_voter_id"),
                (422, "invalid_vote_id"),
                (403, "token_for_another_poll"),
                (422, "voter_mismatch"),
                (404, "unknown_poll"),
                (403, "verified_voters_only"),
                (409, "poll_closed"),
                (409, "poll_not_open"),
                (422, "too_many_choices"),
                (422, "invalid_option"),
            ]
        );
    }

    #[test]
    fn poll_reasons_are_unprocessable() {
        let e = ApiError::from(PollRejection::InvalidTitle("title must be …".into()));
        assert_eq!((e.status.as_u16(), e.code), (422, "invalid_title"));
        assert_eq!(e.message, "title must be …");
    }
}
