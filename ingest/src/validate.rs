//! Parsing and judging a vote: pure, no I/O. Every failure is a [`VoteRejection`] (the `edge` crate
//! chooses its HTTP status).

use schemas::poll::Voters;
use schemas::poll::{PollState, MAX_OPTIONS};
use schemas::{Poll, PollId, QualifiedVoter, Timestamp, VoteRejection, VoterNamespace};
use serde::Deserialize;
use std::borrow::Cow;
use storage::EdgeReason;

pub const MAX_VOTER_ID: usize = 128;
pub const MAX_VOTE_ID: usize = 64;

/// A vote as a client sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct VoteIn<'a> {
    pub poll_id: PollId,
    #[serde(default)]
    pub option_id: Option<i64>,
    #[serde(default)]
    pub option_ids: Option<Vec<i64>>,
    /// The client's own id for its voter (device or aggregator namespace); with a voter token, the
    /// token's `sub` is the voter and this may be left out.
    #[serde(borrow, default, deserialize_with = "borrowed_where_it_can")]
    pub voter_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_where_it_can")]
    pub vote_id: Option<Cow<'a, str>>,
}

/// A text borrowed from the body unless it holds escapes. serde's `borrow` makes a `Cow` field
/// borrow, but not one inside an `Option`, which it would copy into a `String` every time.
fn borrowed_where_it_can<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

/// The chosen options, checked, without a heap allocation.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    options: [u32; MAX_OPTIONS],
    len: usize,
}

impl std::ops::Deref for Choice {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.options[..self.len]
    }
}

pub fn parse_vote(body: &[u8]) -> Result<VoteIn<'_>, VoteRejection> {
    serde_json::from_slice(body).map_err(malformed)
}

pub fn malformed(e: serde_json::Error) -> VoteRejection {
    VoteRejection::Malformed(format!("the body is not a valid vote: {e}"))
}

/// The voter of a vote: the token's subject when a voter token came with it (and then any
/// `voter_id` must be the same, and the token must be for this poll), else the client's `voter_id`
/// in the namespace of the door it came through.
pub fn voter_of<'a>(
    vote: &'a VoteIn<'_>,
    token: Option<&'a crate::identity::VerifiedVoter>,
    namespace: VoterNamespace<'a>,
) -> Result<QualifiedVoter<'a>, VoteRejection> {
    let invalid_voter = |field| VoteRejection::InvalidVoterId {
        field,
        max: MAX_VOTER_ID,
    };
    let Some(token) = token else {
        let id = vote.voter_id.as_deref().unwrap_or_default();
        check_id(id, MAX_VOTER_ID).map_err(|()| invalid_voter("voter_id"))?;
        return Ok(QualifiedVoter::new(namespace, id));
    };
    if token.poll != vote.poll_id {
        return Err(VoteRejection::TokenForAnotherPoll {
            token_poll: token.poll,
            poll: vote.poll_id,
        });
    }
    if vote.voter_id.as_deref().is_some_and(|id| id != token.sub) {
        return Err(VoteRejection::VoterMismatch);
    }
    check_id(&token.sub, MAX_VOTER_ID).map_err(|()| invalid_voter("the token's sub"))?;
    Ok(QualifiedVoter::new(VoterNamespace::Verified, &token.sub))
}

/// Judges a vote of `voter` stamped at `accepted_at` against its poll (None: no such poll).
pub fn judge(
    vote: &VoteIn<'_>,
    voter: QualifiedVoter<'_>,
    poll: Option<&Poll>,
    accepted_at: Timestamp,
) -> Result<Choice, VoteRejection> {
    if let Some(id) = &vote.vote_id {
        check_id(id, MAX_VOTE_ID)
            .map_err(|()| VoteRejection::InvalidVoteId { max: MAX_VOTE_ID })?;
    }
    let single;
    let chosen: &[i64] = match (&vote.option_id, &vote.option_ids) {
        (Some(o), None) => {
            single = [*o];
            &single
        }
        (None, Some(list)) => list,
        (Some(_), Some(_)) => {
            return Err(VoteRejection::Malformed(
                "give either option_id or option_ids, not both".into(),
            ))
        }
        (None, None) => {
            return Err(VoteRejection::Malformed(
                "missing field `option_id` (or `option_ids` for a multi-choice poll)".into(),
            ))
        }
    };
    let poll = poll.ok_or(VoteRejection::UnknownPoll(vote.poll_id))?;
    if poll.voters == Voters::Verified && !voter.is_verified() {
        return Err(VoteRejection::VerifiedVotersOnly(poll.id));
    }
    match poll.state_at(accepted_at) {
        PollState::Open => {}
        PollState::Closed => return Err(VoteRejection::PollClosed(poll.id)),
        PollState::Draft | PollState::Scheduled => return Err(VoteRejection::PollNotOpen(poll.id)),
    }
    poll.rules()
        .check_choice(chosen.iter().copied())
        .map_err(VoteRejection::Choice)?;
    let mut choice = Choice {
        options: [0; MAX_OPTIONS],
        len: chosen.len(),
    };
    for (slot, &o) in choice.options.iter_mut().zip(chosen) {
        *slot = o as u32;
    }
    Ok(choice)
}

/// 1 to `max` bytes of printable text.
fn check_id(value: &str, max: usize) -> Result<(), ()> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(());
    }
    Ok(())
}

/// Which per-poll accounting bucket a refused vote goes to (None: not attributable to a poll).
pub fn edge_reason(r: &VoteRejection) -> Option<EdgeReason> {
    match r {
        VoteRejection::PollClosed(_) | VoteRejection::PollNotOpen(_) => Some(EdgeReason::Closed),
        VoteRejection::InvalidVoterId { .. }
        | VoteRejection::InvalidVoteId { .. }
        | VoteRejection::TokenForAnotherPoll { .. }
        | VoteRejection::VoterMismatch
        | VoteRejection::VerifiedVotersOnly(_)
        | VoteRejection::Choice(_) => Some(EdgeReason::Invalid),
        VoteRejection::Malformed(_) | VoteRejection::UnknownPoll(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use edge::ApiError;

    /// The answer a client gets for a rejection.
    fn answer(e: VoteRejection) -> (StatusCode, &'static str) {
        let e = ApiError::from(e);
        (e.status, e.code)
    }
    use proptest::prelude::*;

    #[test]
    fn a_votes_ids_are_borrowed_from_its_body_unless_escaped() {
        let body = br#"{"poll_id":1,"option_id":0,"voter_id":"v1","vote_id":"a\"b"}"#;
        let vote = parse_vote(body).unwrap();
        assert!(
            matches!(vote.voter_id, Some(Cow::Borrowed("v1"))),
            "{vote:?}"
        );
        assert!(
            matches!(&vote.vote_id, Some(Cow::Owned(id)) if id == "a\"b"),
            "{vote:?}"
        );
        let vote = parse_vote(br#"{"poll_id":1,"option_id":0,"vote_id":null}"#).unwrap();
        assert!(
            vote.voter_id.is_none() && vote.vote_id.is_none(),
            "{vote:?}"
        );
        let Err(VoteRejection::Malformed(why)) = parse_vote(br#"{"poll_id":1,"voter_id":7}"#)
        else {
            panic!("a number for voter_id was taken");
        };
        assert!(why.contains("expected a string"), "{why}");
    }

    fn poll() -> Poll {
        Poll {
            id: 7,
            slug: "s".into(),
            title: "t".into(),
            options: vec!["a".into(), "b".into(), "c".into()],
            max_choices: 2,
            visibility: Default::default(),
            opens_at: None,
            closes_at: Some(Timestamp(1_000)),
            opened_at: Some(Timestamp(10)),
            closed_at: None,
            revealed: false,
            created_at: Timestamp(0),
            creator: None,
            voters: Default::default(),
        }
    }

    fn status(body: &str, at: i64) -> Result<Vec<u32>, (StatusCode, &'static str)> {
        let p = poll();
        let v = parse_vote(body.as_bytes()).map_err(answer)?;
        let found = (v.poll_id == 7).then_some(&p);
        voter_of(&v, None, VoterNamespace::Device)
            .and_then(|voter| judge(&v, voter, found, Timestamp(at)))
            .map(|c| c.to_vec())
            .map_err(answer)
    }

    #[test]
    fn each_door_names_voters_in_its_own_namespace() {
        use crate::identity::VerifiedVoter;
        let v = parse_vote(br#"{"poll_id":7,"option_id":1,"voter_id":"user:1"}"#).unwrap();
        let device = voter_of(&v, None, VoterNamespace::Device).unwrap();
        assert_eq!(
            device.to_string(),
            "device:user:1",
            "a device cannot be an old-API account"
        );
        let agg = voter_of(&v, None, VoterNamespace::Aggregator("sms")).unwrap();
        assert_eq!(agg.to_string(), "agg:sms:user:1");
        let token = VerifiedVoter {
            sub: "user:1".into(),
            poll: 7,
        };
        let verified = voter_of(&v, Some(&token), VoterNamespace::Device).unwrap();
        assert_eq!(verified.to_string(), "verified:user:1");
        assert!(verified.is_verified() && !device.is_verified() && !agg.is_verified());

        let other = VerifiedVoter {
            sub: "bob".into(),
            poll: 7,
        };
        let e = voter_of(&v, Some(&other), VoterNamespace::Device).unwrap_err();
        assert_eq!(e, VoteRejection::VoterMismatch);
        let elsewhere = VerifiedVoter {
            sub: "user:1".into(),
            poll: 8,
        };
        let e = voter_of(&v, Some(&elsewhere), VoterNamespace::Device).unwrap_err();
        assert_eq!(answer(e), (StatusCode::FORBIDDEN, "token_for_another_poll"));
        let anonymous = parse_vote(br#"{"poll_id":7,"option_id":1}"#).unwrap();
        assert_eq!(
            voter_of(&anonymous, None, VoterNamespace::Device)
                .unwrap_err()
                .code(),
            "invalid_voter_id"
        );
        let bare = VerifiedVoter {
            sub: "carol".into(),
            poll: 7,
        };
        assert_eq!(
            voter_of(&anonymous, Some(&bare), VoterNamespace::Device)
                .unwrap()
                .to_string(),
            "verified:carol"
        );
    }

    #[test]
    fn a_verified_poll_takes_only_verified_voters() {
        use crate::identity::VerifiedVoter;
        let mut p = poll();
        p.voters = Voters::Verified;
        let v = parse_vote(br#"{"poll_id":7,"option_id":1,"voter_id":"a"}"#).unwrap();
        for ns in [
            VoterNamespace::Device,
            VoterNamespace::Account,
            VoterNamespace::Aggregator("sms"),
        ] {
            let voter = voter_of(&v, None, ns).unwrap();
            let e = judge(&v, voter, Some(&p), Timestamp(500)).unwrap_err();
            assert_eq!(answer(e), (StatusCode::FORBIDDEN, "verified_voters_only"));
        }
        let token = VerifiedVoter {
            sub: "a".into(),
            poll: 7,
        };
        let voter = voter_of(&v, Some(&token), VoterNamespace::Device).unwrap();
        assert_eq!(
            judge(&v, voter, Some(&p), Timestamp(500)).unwrap().to_vec(),
            vec![1]
        );
    }

    #[test]
    fn judges_each_kind_of_bad_vote() {
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":1,"voter_id":"v"}"#, 500),
            Ok(vec![1])
        );
        assert_eq!(
            status(
                r#"{"poll_id":7,"option_ids":[0,2],"voter_id":"v","vote_id":"x"}"#,
                500
            ),
            Ok(vec![0, 2])
        );
        assert_eq!(
            status(r#"{"poll_id":8,"option_id":1,"voter_id":"v"}"#, 500),
            Err((StatusCode::NOT_FOUND, "unknown_poll"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":1,"voter_id":"v"}"#, 5),
            Err((StatusCode::CONFLICT, "poll_not_open"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":1,"voter_id":"v"}"#, 1_000),
            Ok(vec![1]),
            "the close instant still counts"
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":1,"voter_id":"v"}"#, 1_001),
            Err((StatusCode::CONFLICT, "poll_closed"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":3,"voter_id":"v"}"#, 500),
            Err((StatusCode::UNPROCESSABLE_ENTITY, "invalid_option"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_ids":[0,1,2],"voter_id":"v"}"#, 500),
            Err((StatusCode::UNPROCESSABLE_ENTITY, "too_many_choices"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_ids":[1,1],"voter_id":"v"}"#, 500),
            Err((StatusCode::UNPROCESSABLE_ENTITY, "invalid_option"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":1,"voter_id":""}"#, 500),
            Err((StatusCode::UNPROCESSABLE_ENTITY, "invalid_voter_id"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"voter_id":"v"}"#, 500),
            Err((StatusCode::BAD_REQUEST, "malformed"))
        );
        assert_eq!(
            status(r#"{"poll_id":"7","option_id":1,"voter_id":"v"}"#, 500),
            Err((StatusCode::BAD_REQUEST, "malformed"))
        );
        assert_eq!(
            status(r#"{"poll_id":7,"option_id":1,"voter_id":"v","#, 500),
            Err((StatusCode::BAD_REQUEST, "malformed"))
        );
        assert_eq!(
            status(r#"[]"#, 500),
            Err((StatusCode::BAD_REQUEST, "malformed"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_errors_are_4xx(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = poll();
            match parse_vote(&body) {
                Err(e) => prop_assert!(answer(e).0.is_client_error()),
                Ok(v) => if let Err(e) = voter_of(&v, None, VoterNamespace::Device).and_then(|voter| judge(&v, voter, Some(&p), Timestamp(500))) { prop_assert!(answer(e).0.is_client_error()) },
            }
        }

        #[test]
        fn arbitrary_json_votes_never_panic(poll_id in any::<i64>(), option in any::<i64>(), voter in ".{0,200}") {
            let body = serde_json::json!({"poll_id": poll_id, "option_id": option, "voter_id": voter}).to_string();
            let p = poll();
            let v = parse_vote(body.as_bytes()).unwrap();
            if let Err(e) = voter_of(&v, None, VoterNamespace::Device).and_then(|voter| judge(&v, voter, Some(&p), Timestamp(500))) { prop_assert!(answer(e).0.is_client_error()) }
        }
    }
}
