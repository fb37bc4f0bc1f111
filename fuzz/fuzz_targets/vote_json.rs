//! Any body through the edge's JSON vote parser and judge (`ingest::validate::parse_vote` and
//! `judge`), alone as `POST /v1/votes` takes it and in the `{"votes": [vote, …]}` shape of
//! `POST /v1/votes/batch`: never a panic; every refusal a 4xx with its code; every accepted choice
//! exactly what the vote chose, within the poll's options and limits, on an open poll.
#![no_main]

use crowdtick_fuzz::{assert_client_error, find, polls, CLOSES_AT, OPENS_AT};
use ingest::validate::{self, VoteIn, MAX_VOTER_ID, MAX_VOTE_ID};
use schemas::VoterNamespace;
use libfuzzer_sys::fuzz_target;
use schemas::poll::PollState;
use schemas::{Poll, Timestamp};
use serde_json::value::RawValue;

/// The batch body as `post_batch` (ingest/src/routes.rs) reads it: each vote stays raw JSON and is
/// then parsed on its own, so one bad vote is refused alone.
#[derive(serde::Deserialize)]
struct BatchIn<'a> {
    #[serde(borrow)]
    votes: Vec<&'a RawValue>,
}

fuzz_target!(|data: &[u8]| {
    let polls = polls();
    match validate::parse_vote(data) {
        Ok(vote) => judge_at_every_stage(&vote, &polls),
        Err(e) => assert_client_error(&e),
    }
    if let Ok(batch) = serde_json::from_slice::<BatchIn>(data) {
        for raw in &batch.votes {
            match serde_json::from_str::<VoteIn>(raw.get()).map_err(validate::malformed) {
                Ok(vote) => judge_at_every_stage(&vote, &polls),
                Err(e) => assert_client_error(&e),
            }
        }
    }
});

/// Judges the vote before its poll opens, while open, at the close instant and after it.
fn judge_at_every_stage(vote: &VoteIn<'_>, polls: &[Poll]) {
    let poll = find(polls, vote.poll_id);
    let voter = match validate::voter_of(vote, None, VoterNamespace::Device) {
        Ok(voter) => voter,
        Err(e) => return assert_client_error(&e),
    };
    let id = vote.voter_id.as_deref().expect("a device vote names its voter");
    assert!((1..=MAX_VOTER_ID).contains(&id.len()));
    assert!(!id.chars().any(char::is_control));
    assert_eq!(voter.to_string(), format!("device:{id}"), "the device namespace");
    for at in [OPENS_AT - 1, OPENS_AT, CLOSES_AT, CLOSES_AT + 1, i64::MAX].map(Timestamp) {
        match validate::judge(vote, voter, poll, at) {
            Err(e) => assert_client_error(&e),
            Ok(choice) => {
                let poll = poll.expect("a vote on no poll is accepted");
                assert_eq!(poll.state_at(at), PollState::Open, "accepted at {at}");
                let sent: Vec<i64> = match (&vote.option_id, &vote.option_ids) {
                    (Some(o), None) => vec![*o],
                    (None, Some(list)) => list.clone(),
                    _ => panic!("accepted without exactly one of option_id / option_ids"),
                };
                let chosen: Vec<i64> = choice.iter().map(|&o| o as i64).collect();
                assert_eq!(chosen, sent, "the choice is what was sent");
                assert!(!chosen.is_empty() && chosen.len() <= poll.max_choices as usize);
                assert!(chosen.iter().all(|&o| o >= 0 && (o as usize) < poll.options.len()));
                for (i, o) in chosen.iter().enumerate() {
                    assert!(!chosen[..i].contains(o), "option {o} counted twice");
                }
                if let Some(id) = &vote.vote_id {
                    assert!((1..=MAX_VOTE_ID).contains(&id.len()));
                    assert!(!id.chars().any(char::is_control));
                }
            }
        }
    }
}
