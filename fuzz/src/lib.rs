//! What the fuzz targets (`fuzz_targets/*.rs`) share: the polls they judge against and the checks
//! every refusal must pass.
//!
//! - [`polls`]: fixed polls (single choice, multi choice, not open yet), built through serde like
//!   the poll store reads them.
//! - [`assert_client_error`]: a refusal, as the edge answers it, is a 4xx [`ApiError`] whose JSON
//!   names its code.

use edge::ApiError;
use schemas::{Poll, PollId};

/// The times (µs) the polls of [`polls`] open and close.
pub const OPENS_AT: i64 = 1_000;
pub const CLOSES_AT: i64 = 2_000;

/// Poll 1: single choice of 3, open from [`OPENS_AT`] to [`CLOSES_AT`]. Poll 2: up to 3 of 5,
/// open, no close. Poll 3: a draft (never opened). Any other id: no such poll.
pub fn polls() -> Vec<Poll> {
    let poll = |id: PollId, options: &[&str], max_choices: u32, opened_at, closes_at| {
        serde_json::from_value::<Poll>(serde_json::json!({
            "id": id, "slug": format!("p{id}"), "title": "t", "options": options,
            "max_choices": max_choices, "visibility": "live", "opens_at": null,
            "closes_at": closes_at, "opened_at": opened_at, "closed_at": null,
            "created_at": 0, "creator": null,
        }))
        .expect("a fixture poll")
    };
    vec![
        poll(1, &["a", "b", "c"], 1, Some(OPENS_AT), Some(CLOSES_AT)),
        poll(2, &["Ana", "Bruno", "Carla Maria", "é", "🎉"], 3, Some(0), None),
        poll(3, &["x", "y"], 1, None, None),
    ]
}

/// The poll of `id` among `polls`.
pub fn find(polls: &[Poll], id: PollId) -> Option<&Poll> {
    polls.iter().find(|p| p.id == id)
}

/// A refusal (a [`schemas::VoteRejection`], as the edge answers it) is a 4xx with a stable code,
/// and its JSON body says the same code.
pub fn assert_client_error(e: impl Into<ApiError>) {
    let e: ApiError = e.into();
    assert!(e.status.is_client_error(), "{} is not a 4xx: {e}", e.status);
    assert!(!e.code.is_empty(), "a refusal without a code: {e}");
    assert!(!e.message.is_empty(), "a refusal without a message: {e}");
    assert_eq!(e.body_json()["code"], e.code);
}
