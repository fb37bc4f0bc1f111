//! The HTTP routes of the edge: `POST /v1/votes` and `POST /v1/votes/batch`.
//!
//! Each route knows who is calling before it reads the body: the voter token (single votes) or
//! the aggregator key (batches) is checked and the caller's rate limit taken from the headers, so
//! a refused caller never makes the edge wait for or buffer a body.

use crate::body::read_body;
use crate::identity::{bearer, AggregatorRefusal, TokenError, VerifiedVoter};
use crate::rate_limit::Refusal;
use crate::validate::{self, VoteIn};
use crate::{push_vote, unavailable, Ingest};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use edge::listener::ConnectionContext;
use edge::ApiError;
use schemas::{Offset, Partition, VoteRejection, VoterNamespace};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use storage::{AppendBatch, EdgeReason, Topic};

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/votes", post(post_vote))
        .route("/v1/votes/batch", post(post_batch))
        .with_state(ingest)
}

/// The 429 (or 413) of a rate limit that counts votes.
pub(crate) fn refused(r: Refusal, whose: &str) -> ApiError {
    match r {
        Refusal::RetryAfter(secs) => ApiError {
            message: format!(
                "too many votes from {whose}; retry after the Retry-After delay (limits count votes, not requests)"
            ),
            ..ApiError::rate_limited(secs)
        },
        Refusal::LargerThanBurst { burst } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "over_burst",
            format!("{whose} may send at most {burst} votes at once; split the batch"),
        ),
    }
}

/// Takes `votes` from the client address's rate limit.
pub fn check_address(ingest: &Ingest, req: &Request, votes: u32) -> Result<(), ApiError> {
    match ConnectionContext::peer_of(req) {
        Some(addr) => ingest
            .limiter
            .check(addr.ip(), votes)
            .map_err(|r| refused(r, "this address")),
        None => Ok(()),
    }
}

/// Checks the voter token of `Authorization: Bearer`, if there is one.
fn voter_token(ingest: &Ingest, req: &Request) -> Result<Option<VerifiedVoter>, ApiError> {
    let Some(token) = bearer(req.headers()) else {
        return Ok(None);
    };
    let verified = ingest
        .voter_tokens
        .as_ref()
        .ok_or(TokenError::NotConfigured)
        .and_then(|tokens| tokens.verify(token));
    verified.map(Some).map_err(|e| {
        let code = match e {
            TokenError::NotConfigured => "voter_tokens_not_configured",
            TokenError::Expired => "voter_token_expired",
            TokenError::Invalid(_) => "invalid_voter_token",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    })
}

async fn post_vote(State(ingest): State<Arc<Ingest>>, req: Request) -> Response {
    ingest.metrics.requests.fetch_add(1, Ordering::Relaxed);
    // How long the request had waited for the node when its handler began.
    let waited = ConnectionContext::waited_of(&req);
    let started = Instant::now();
    // Counted as refused at the door: a bad token, over the address's rate, a body too large or
    // not a vote (a vote judged against its poll is counted by `count_rejection`).
    let refused = |e: ApiError| {
        ingest
            .metrics
            .votes_rejected
            .fetch_add(1, Ordering::Relaxed);
        e
    };
    let result = async {
        ingest.admit_request(waited)?;
        let token = voter_token(&ingest, &req).map_err(refused)?;
        check_address(&ingest, &req, 1).map_err(refused)?;
        let body = read_body(&ingest, req, ingest.config.max_vote_bytes)
            .await
            .map_err(|e| match e.status {
                StatusCode::PAYLOAD_TOO_LARGE => refused(e),
                _ => e,
            })?;
        let vote = validate::parse_vote(&body).map_err(|r| refused(r.into()))?;
        let voter = validate::voter_of(&vote, token.as_ref(), VoterNamespace::Device)
            .inspect_err(|e| ingest.count_rejection(vote.poll_id, e))?;
        Ok::<_, ApiError>(ingest.submit(&vote, voter, "web").await?)
    }
    .await;
    match result {
        Ok(receipt) => {
            if let Some(waited) = waited {
                ingest
                    .metrics
                    .sojourn_latency
                    .observe(waited + started.elapsed(), 1);
            }
            accepted(&receipt)
        }
        Err(e) => e.into_response(),
    }
}

/// The 202 of a durable vote: its receipt as JSON ([`crate::Receipt::to_json`]).
fn accepted(receipt: &crate::Receipt) -> Response {
    let mut response = Response::new(Body::from(receipt.to_json()));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Deserialize)]
struct BatchIn<'a> {
    #[serde(borrow)]
    votes: Vec<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum VoteResult<'a> {
    Accepted {
        vote_id: Cow<'a, str>,
        partition: Partition,
        offset: Offset,
    },
    Rejected {
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        error: serde_json::Value,
    },
}

#[derive(Serialize)]
struct BatchOut<'a> {
    accepted: usize,
    rejected: usize,
    accepted_at: String,
    results: Vec<VoteResult<'a>>,
}

/// How many of a batch's votes are judged between yields to the runtime: about half a
/// millisecond of work.
const YIELD_EVERY_VOTES: usize = 1024;

/// Many votes in one request, from an aggregator (SMS gateway, partner app) with its own key:
/// judged one by one, its voters in its own namespace, appended as one batch, answered with a
/// result per vote once the accepted ones are durable.
async fn post_batch(
    State(ingest): State<Arc<Ingest>>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    ingest
        .metrics
        .batch_requests
        .fetch_add(1, Ordering::Relaxed);
    let aggregator = ingest
        .aggregators
        .authenticate(req.headers())
        .map_err(|r| {
            ApiError::unauthorized(match r {
                AggregatorRefusal::Missing => "batches are for aggregators: send `Authorization: Bearer <aggregator key>` (keys are in the server's configuration, `ingest.aggregators`); single votes go to POST /v1/votes",
                AggregatorRefusal::Unknown => "no aggregator has this key; check `ingest.aggregators` in the server's configuration",
            })
        })?;
    ingest.admit_batch_request(ConnectionContext::waited_of(&req))?;
    // `?results=rejected`: answer only the rejected votes (with their index); `all` is the default.
    let mut only_rejected = false;
    for (k, v) in &q {
        match (k.as_str(), v.as_str()) {
            ("results", "rejected") => only_rejected = true,
            ("results", "all") => only_rejected = false,
            ("results", other) => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!(
                        "results must be `all` or `rejected`, not {:?}",
                        other.chars().take(32).collect::<String>()
                    ),
                ))
            }
            _ => {}
        }
    }
    let body = read_body(&ingest, req, ingest.config.max_batch_bytes).await?;
    let batch: BatchIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed",
            format!("the body must be {{\"votes\": [vote, …]}}: {e}"),
        )
    })?;
    if batch.votes.len() > ingest.config.max_batch_votes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_votes",
            format!(
                "a batch holds at most {} votes; this one has {}",
                ingest.config.max_batch_votes,
                batch.votes.len()
            ),
        ));
    }
    aggregator
        .quota
        .check(batch.votes.len() as u32)
        .map_err(|r| refused(r, &format!("aggregator {}", aggregator.name)))?;
    let _permit = ingest.admit(batch.votes.len())?;
    if ingest.catalog.is_shared() {
        #[derive(serde::Deserialize)]
        struct PollOf {
            poll_id: schemas::PollId,
        }
        let ids = batch
            .votes
            .iter()
            .filter_map(|raw| serde_json::from_str::<PollOf>(raw.get()).ok())
            .map(|v| v.poll_id);
        ingest.prepare_catalog(ids).await?;
    }
    let (accepted_at, polls) = ingest.catalog.stamp_and_snapshot();
    let namespace = VoterNamespace::Aggregator(&aggregator.name);
    let partitions = ingest.log.partitions(Topic::Votes);
    let mut append = AppendBatch::with_capacity(batch.votes.len(), body.len());
    // Per vote: Ok(vote_id, partition) awaiting its offset, or the rejection.
    let mut judged: Vec<Result<(Cow<str>, Partition), VoteRejection>> =
        Vec::with_capacity(batch.votes.len());
    let mut server_ids = ingest.vote_ids(batch.votes.len());
    for (i, raw) in batch.votes.iter().enumerate() {
        if i > 0 && i % YIELD_EVERY_VOTES == 0 {
            // Let the requests that arrived meanwhile be read and judged (a single vote must not
            // wait out a 10,000-vote batch for a worker, nor be shed for having waited).
            tokio::task::yield_now().await;
        }
        // Each refused vote is counted once: a body that is not a vote here, one judged against
        // its poll by `count_rejection`.
        let verdict = serde_json::from_str::<VoteIn>(raw.get())
            .map_err(|e| {
                ingest
                    .metrics
                    .votes_rejected
                    .fetch_add(1, Ordering::Relaxed);
                validate::malformed(e)
            })
            .and_then(|vote| {
                let voter = validate::voter_of(&vote, None, namespace);
                let choice = voter
                    .and_then(|voter| {
                        let poll = polls.get(&vote.poll_id).map(|p| &**p);
                        validate::judge(&vote, voter, poll, accepted_at).map(|c| (voter, c))
                    })
                    .inspect_err(|e| ingest.count_rejection(vote.poll_id, e));
                let (voter, choice) = choice?;
                let vote_id = match vote.vote_id.as_deref() {
                    Some(id) => id,
                    None => server_ids.next(),
                };
                let partition = push_vote(
                    &mut append,
                    partitions,
                    vote.poll_id,
                    voter,
                    vote_id,
                    &choice,
                    accepted_at,
                    "batch",
                );
                // Kept only for an answer that lists it.
                let kept = match (only_rejected, &vote.vote_id) {
                    (true, _) => Cow::Borrowed(""),
                    (false, Some(id)) => id.clone(),
                    (false, None) => Cow::Owned(vote_id.to_owned()),
                };
                Ok((kept, partition))
            });
        judged.push(verdict);
    }
    let n_accepted = append.len();
    let started = Instant::now();
    let positions = if n_accepted > 0 {
        let _held = ingest.admission.read_gate.hold();
        ingest
            .log
            .append(Topic::Votes, append, started + ingest.config.deadline)
            .await
            .map_err(|e| {
                ingest
                    .metrics
                    .votes_unavailable
                    .fetch_add(n_accepted as u64, Ordering::Relaxed);
                for (poll, n) in per_poll(&batch.votes, &judged) {
                    ingest.rejections.add(poll, EdgeReason::Unavailable, n);
                }
                unavailable(e)
            })?
    } else {
        Vec::new()
    };
    ingest
        .metrics
        .votes_accepted
        .fetch_add(n_accepted as u64, Ordering::Relaxed);
    let waited = started.elapsed();
    if n_accepted > 0 {
        ingest.admission.observe(waited, Instant::now());
    }
    ingest.metrics.append_wait_us.fetch_add(
        waited.as_micros() as u64 * n_accepted as u64,
        Ordering::Relaxed,
    );
    if n_accepted > 0 {
        ingest
            .metrics
            .durable_latency
            .observe(waited, n_accepted as u64);
    }

    let mut positions = positions.into_iter();
    let mut results = Vec::with_capacity(if only_rejected { 0 } else { judged.len() });
    let mut rejected = 0;
    for (index, verdict) in judged.into_iter().enumerate() {
        match verdict {
            Ok((vote_id, partition)) => {
                let pos = positions.next().expect("one position per appended vote");
                debug_assert_eq!(pos.partition, partition);
                if !only_rejected {
                    results.push(VoteResult::Accepted {
                        vote_id,
                        partition,
                        offset: pos.offset,
                    });
                }
            }
            Err(e) => {
                rejected += 1;
                results.push(VoteResult::Rejected {
                    index: only_rejected.then_some(index),
                    error: ApiError::from(e).body_json(),
                });
            }
        }
    }
    let out = BatchOut {
        accepted: n_accepted,
        rejected,
        accepted_at: accepted_at.rfc3339_micros(),
        results,
    };
    Ok((StatusCode::OK, Json(out)).into_response())
}

/// Accepted votes per poll (for accounting a failed append).
fn per_poll(
    raw: &[&RawValue],
    judged: &[Result<(Cow<str>, Partition), VoteRejection>],
) -> Vec<(i64, u64)> {
    let mut counts: std::collections::BTreeMap<i64, u64> = Default::default();
    for (r, j) in raw.iter().zip(judged) {
        if j.is_ok() {
            if let Ok(v) = serde_json::from_str::<VoteIn>(r.get()) {
                *counts.entry(v.poll_id).or_default() += 1;
            }
        }
    }
    counts.into_iter().collect()
}
