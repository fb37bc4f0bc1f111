//! The seed API (its own crate): the old Django/DRF API (`/api/…`, `/ws/poll/{id}/`) as a thin adapter over the
//! same pipeline as `/v1` (contract: the team's `seed-api.md`; summary in `docs/API.md`).
//!
//! What lives where:
//! - this file: [`router`], the HTTP handlers, and [`Seed`] — poll creation through
//!   `state.catalog.create` + [`query::routes::build_poll`], votes through
//!   [`ingest::Ingest::submit`] (the one way a vote enters the log), results from the
//!   [`results::ResultsBoard`].
//! - [`drf`]: DRF's error shapes and messages, field checks, label → option index (pure).
//! - [`auth`]: accounts (`accounts.jsonl`), sessions (`sessions.jsonl`), HTTP Basic with a cache,
//!   Django-compatible PBKDF2 password hashes.
//! - [`store`]: the JSON-lines files (one writer thread per file, group commit, torn-line safe).
//! - [`ws`]: `WS /ws/poll/{id}/` over [`realtime::Subscription`].
//! - [`throttle`]: the rate limits (poll creation per user and in all; registrations and votes per
//!   client address), refused with DRF's `429 {"detail": "Request was throttled. …"}`.
//!
//! Endpoints (every path also without its trailing slash; every one but register needs a user —
//! the `sessionid` cookie first, then HTTP Basic, as DRF's default order):
//! - `POST /api/register/` → `201 {"username", "email"}` + `Set-Cookie: sessionid=…` (14 days).
//! - `POST /api/polls/` (alias `POST /polls/`) → `201 {"id", "title", "options": {label: 0}, "creator"}`.
//!   The poll is open at once with `live` visibility, creator `user:<id>`. The option labels are the
//!   keys of `options` in the order the client wrote them (that order becomes the option ids); the
//!   values are ignored: a new poll starts at zero.
//! - `POST /api/polls/{id}/vote/` `{"choice": label}` → `202 {"choice": label}` once durable.
//!   Alias `POST /votes/` `{"poll": id, "choice": label}` → `202 {"poll", "choice"}`; there an unknown
//!   poll is a body error, DRF's `400 {"poll": ["Invalid pk \"9\" - object does not exist."]}`.
//! - `GET /api/polls/{id}/results/` (alias `GET /polls/{id}/results/`) → `200 {label: count}` in
//!   option order, zeros included; `403 {"detail": "Results are hidden …"}` while the poll's
//!   visibility hides them from the public.
//! - `WS /ws/poll/{id}/`: see [`ws`].
//!
//! Compatibility decisions:
//! - Errors are DRF's shapes and wording (`{"detail"}` or `{field: [messages]}`, all fields at
//!   once); auth failures are 403 (the contract), wrong methods `405 {"detail": "Method \"GET\" not
//!   allowed."}`. Bodies are read as JSON whatever their `Content-Type`; an empty body is `{}`.
//! - One vote per (poll, user), as the old system promised: an in-memory set of (poll, user),
//!   checked and marked atomically before the vote is submitted (20 concurrent requests of one user
//!   give one 202), unmarked if the submit fails, appended to `seed_votes.jsonl` (written, not
//!   fsynced) after the vote is durable and loaded at start. The vote goes in as voter
//!   `user:<id>` (the account namespace: no other door can name it, see `schemas::voter`) with vote id `seed-<poll>-<user>`, so the processor's (poll, voter) dedupe keeps the
//!   count exact even if that file lost its last lines. The submit runs in its own task: a client
//!   that hangs up mid-vote cannot leave the mark and the log disagreeing.
//! - Pipeline errors map to DRF: closed poll → `400 {"detail": "This poll is closed."}`, a log that
//!   cannot take the vote → `503 {"detail": …}` with `Retry-After`.
//! - Throttling (as DRF's throttle classes, configured in `[seed]`): `POST /api/register/` and
//!   votes (both paths and the socket) per client address, checked before the body is read;
//!   poll creation per user and for all users, checked once the user is known. Over a limit:
//!   `429 {"detail": "Request was throttled. Expected available in N seconds."}` + `Retry-After: N`.
//! - Not enforced (unlike Django): CSRF. The session cookie is `SameSite=Lax` and `HttpOnly`, so a
//!   cross-site page cannot post with it; the cookie is also `Secure` when `public_url` is https.

pub mod auth;
pub mod drf;
pub mod store;
pub mod throttle;
pub mod ws;

pub use throttle::SeedLimits;

use auth::{Auth, RegisterError, UserId};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use drf::{
    char_field, hidden_detail, parse_object, path_poll_id, CharRules, DrfError, FieldErrors,
    LabelCounts, ALREADY_VOTED, BLANK, INVALID_EMAIL, INVALID_USERNAME, NULL, REQUIRED,
    USERNAME_TAKEN,
};
use edge::listener::ConnectionContext;
use ingest::validate::VoteIn;
use parking_lot::Mutex;
use schemas::{Poll, PollId, QualifiedVoter, Timestamp, VoterNamespace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use store::Appender;
use throttle::Throttles;

/// The largest request body the seed API reads.
const MAX_BODY: usize = 64 << 10;

/// What the adapter uses of the node it runs in.
#[derive(Clone)]
pub struct SeedContext {
    pub catalog: storage::PollCatalog,
    pub board: Arc<results::ResultsBoard>,
    pub ingest: Option<Arc<ingest::Ingest>>,
    pub realtime: Option<Arc<realtime::Realtime>>,
    /// Where the accounts, sessions and vote marks are kept.
    pub data_dir: std::path::PathBuf,
    /// The node's public URL (an https one makes the session cookie `Secure`).
    pub public_url: String,
    pub limits: SeedLimits,
}

/// The adapter's shared state.
pub struct Seed {
    pub app: SeedContext,
    pub ingest: Arc<ingest::Ingest>,
    pub realtime: Arc<realtime::Realtime>,
    pub auth: Auth,
    /// (poll, user) pairs that have a durable (or in-flight) vote.
    voted: Mutex<HashSet<(PollId, UserId)>>,
    votes_file: Appender,
    secure_cookie: bool,
    pub throttles: Throttles,
}

#[derive(Serialize, Deserialize)]
struct VotedRecord {
    poll: PollId,
    user: UserId,
}

/// The seed API's routes. Panics if its files in the data directory cannot be read (see
/// [`try_router`] for the fallible form).
pub fn router(state: SeedContext) -> Router {
    match try_router(state) {
        Ok(r) => r,
        Err(e) => panic!("the seed API cannot start: {e:#}"),
    }
}

pub fn try_router(state: SeedContext) -> anyhow::Result<Router> {
    let seed = Arc::new(Seed::open(state)?);
    // Per-address limits, before the body is read.
    let per_registration = || from_fn_with_state(seed.clone(), throttle_registration);
    let per_vote = || from_fn_with_state(seed.clone(), throttle_vote);
    let routes: [(&str, MethodRouter<Arc<Seed>>); 8] = [
        ("/api/register/", post(register).layer(per_registration())),
        ("/api/polls/", post(create_poll)),
        ("/polls/", post(create_poll)),
        ("/api/polls/{id}/vote/", post(vote).layer(per_vote())),
        ("/votes/", post(vote_alias).layer(per_vote())),
        ("/api/polls/{id}/results/", get(results)),
        ("/polls/{id}/results/", get(results)),
        ("/ws/poll/{id}/", get(ws::handler)),
    ];
    let mut router = Router::new();
    for (path, method) in routes {
        let method = method.fallback(method_not_allowed);
        router = router
            .route(path, method.clone())
            .route(path.trim_end_matches('/'), method);
    }
    Ok(router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(seed))
}

impl Seed {
    pub fn open(app: SeedContext) -> anyhow::Result<Self> {
        let dir = app.data_dir.clone();
        let auth = Auth::open(&dir)
            .map_err(|e| anyhow::anyhow!("accounts or sessions in {}: {e}", dir.display()))?;
        let votes_path = dir.join("seed_votes.jsonl");
        let voted = store::load::<VotedRecord>(&votes_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", votes_path.display()))?
            .into_iter()
            .map(|r| (r.poll, r.user))
            .collect();
        let votes_file = Appender::open(&votes_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", votes_path.display()))?;
        let secure_cookie = app.public_url.starts_with("https://");
        let throttles = Throttles::new(&app.limits);
        let (Some(ingest), Some(realtime)) = (app.ingest.clone(), app.realtime.clone()) else {
            anyhow::bail!("the seed API needs the ingest and realtime services in this process");
        };
        Ok(Self {
            app,
            ingest,
            realtime,
            auth,
            voted: Mutex::new(voted),
            votes_file,
            secure_cookie,
            throttles,
        })
    }

    fn poll(&self, raw_id: &str) -> Result<Arc<Poll>, DrfError> {
        path_poll_id(raw_id)
            .and_then(|id| self.app.catalog.get(id))
            .ok_or_else(DrfError::not_found)
    }

    /// Checks a registration body (every field at once, as DRF does).
    fn check_registration(
        &self,
        body: &Map<String, Value>,
    ) -> Result<(String, String, String), DrfError> {
        let mut errors = FieldErrors::default();
        let username = char_field(body, "username", CharRules::new(150), &mut errors);
        if let Some(u) = &username {
            if !drf::valid_username(u) {
                errors.add("username", INVALID_USERNAME);
            } else if self.auth.username_taken(u) {
                errors.add("username", USERNAME_TAKEN);
            }
        }
        let email = char_field(body, "email", CharRules::new(254), &mut errors);
        if email.as_deref().is_some_and(|e| !drf::valid_email(e)) {
            errors.add("email", INVALID_EMAIL);
        }
        let password_rules = CharRules {
            min: 8,
            trim: false,
            ..CharRules::new(4096)
        };
        let password = char_field(body, "password", password_rules, &mut errors);
        errors.check()?;
        match (username, email, password) {
            (Some(u), Some(e), Some(p)) => Ok((u, e, p)),
            _ => Err(DrfError::field("non_field_errors", "Invalid data.")),
        }
    }

    /// Creates a poll from a seed body: `{"title", "options": {label: 0, …}}`.
    async fn create_poll(&self, user: UserId, raw: &[u8]) -> Result<Arc<Poll>, DrfError> {
        let body = parse_object(raw)?;
        let mut errors = FieldErrors::default();
        let title = char_field(&body, "title", CharRules::new(255), &mut errors);
        let labels = match body.get("options") {
            None => {
                errors.add("options", REQUIRED);
                None
            }
            Some(Value::Null) => {
                errors.add("options", NULL);
                None
            }
            Some(_) => {
                // The keys in the order they were written (serde_json's map would sort them).
                let raw_fields: BTreeMap<String, Box<serde_json::value::RawValue>> =
                    serde_json::from_slice(raw).map_err(|e| {
                        DrfError::detail(StatusCode::BAD_REQUEST, format!("JSON parse error - {e}"))
                    })?;
                match drf::object_keys_in_order(&raw_fields["options"]) {
                    Err(kind) => {
                        errors.add(
                            "options",
                            format!("Expected a dictionary of items but got type \"{kind}\"."),
                        );
                        None
                    }
                    Ok(keys) if keys.len() < 2 => {
                        errors.add("options", "A poll needs at least 2 options.");
                        None
                    }
                    Ok(keys) if keys.iter().any(|k| k.trim().is_empty()) => {
                        errors.add("options", format!("Option labels: {BLANK}"));
                        None
                    }
                    Ok(keys) => Some(keys),
                }
            }
        };
        errors.check()?;
        let (Some(title), Some(labels)) = (title, labels) else {
            return Err(DrfError::field("non_field_errors", "Invalid data."));
        };
        let req: query::routes::CreatePoll = serde_json::from_value(serde_json::json!({
            "title": title, "options": labels, "visibility": "live", "open": true,
        }))
        .map_err(|e| DrfError::detail(StatusCode::BAD_REQUEST, e.to_string()))?;
        let now = Timestamp::now();
        let creator = format!("user:{user}");
        // Validate before taking an id, so a bad request leaves nothing behind.
        query::routes::build_poll(&req, 0, String::new(), now, Some(creator.clone()))
            .map_err(|e| drf::from_poll_rejection(&e))?;
        self.app
            .catalog
            .create(|id, slug| {
                query::routes::build_poll(&req, id, slug, now, Some(creator))
                    .expect("validated above")
            })
            .await
            .map_err(|e| drf::from_api_error(&query::routes::store_error(e)))
    }

    /// One vote by `user` on `poll`; answers the label voted for once the vote is durable.
    pub async fn vote(
        self: &Arc<Self>,
        user: UserId,
        poll: &Poll,
        choice: Option<&Value>,
    ) -> Result<String, DrfError> {
        let option = drf::choice_option(&poll.options, choice)?;
        self.cast(user, poll, option).await
    }

    /// Votes for `option` (an index of `poll.options`) as `user`: once per (poll, user), answered
    /// once durable. Returns the option's label.
    pub async fn cast(
        self: &Arc<Self>,
        user: UserId,
        poll: &Poll,
        option: usize,
    ) -> Result<String, DrfError> {
        if !self.voted.lock().insert((poll.id, user)) {
            return Err(DrfError::detail(StatusCode::BAD_REQUEST, ALREADY_VOTED));
        }
        // In its own task: a client hanging up cannot cancel it halfway.
        let seed = self.clone();
        let poll_id = poll.id;
        tokio::spawn(async move { seed.submit(user, poll_id, option).await })
            .await
            .unwrap_or_else(|e| {
                Err(DrfError::detail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the vote failed: {e}"),
                ))
            })?;
        Ok(poll.options[option].clone())
    }

    async fn submit(&self, user: UserId, poll: PollId, option: usize) -> Result<(), DrfError> {
        let vote = VoteIn {
            poll_id: poll,
            option_id: Some(option as i64),
            option_ids: None,
            voter_id: None,
            vote_id: Some(Cow::Owned(format!("seed-{poll}-{user}"))),
        };
        // The account's namespace: `user:<id>`, which no other door can name.
        let user_id = user.to_string();
        let voter = QualifiedVoter::new(VoterNamespace::Account, &user_id);
        match self.ingest.submit(&vote, voter, "seed").await {
            Ok(_) => {
                if let Err(e) = self
                    .votes_file
                    .append(&VotedRecord { poll, user }, false)
                    .await
                {
                    // The vote is durable and the mark stays in memory; after a restart the
                    // processor's (poll, voter) dedupe still counts it once.
                    tracing::warn!(poll, user, error = %e, "cannot record a seed vote mark");
                }
                Ok(())
            }
            Err(e) => {
                self.voted.lock().remove(&(poll, user));
                Err(drf::from_submit_error(&e))
            }
        }
    }

    /// The counts of every option, unless the poll's visibility hides them from the public now.
    pub fn counts(&self, poll: &Poll) -> Result<Vec<i64>, DrfError> {
        if !poll.results_public(Timestamp::now()) {
            return Err(DrfError::detail(
                StatusCode::FORBIDDEN,
                hidden_detail(poll.visibility),
            ));
        }
        Ok(padded_counts(
            poll,
            &self.app.board.snapshot(poll.id).counts,
        ))
    }
}

/// A snapshot's counts, one per option (zeros for options not counted yet).
pub fn padded_counts(poll: &Poll, counts: &[i64]) -> Vec<i64> {
    let mut c = counts.to_vec();
    c.resize(poll.options.len().max(c.len()), 0);
    c.truncate(poll.options.len());
    c
}

/// The client's address, from the listener (None where a router is served without it).
pub fn peer(req: &Request) -> Option<IpAddr> {
    ConnectionContext::peer_of(req).map(|addr| addr.ip())
}

async fn throttle_registration(
    State(seed): State<Arc<Seed>>,
    req: Request,
    next: Next,
) -> Response {
    match seed.throttles.registration(peer(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The old API's votes: limited per address, and shed as the edge's are when the node is
/// overloaded (the request waited too long for it), before the body is read.
async fn throttle_vote(State(seed): State<Arc<Seed>>, req: Request, next: Next) -> Response {
    let waited = ConnectionContext::waited_of(&req);
    if let Err(e) = seed.ingest.admit_request(waited) {
        return drf::from_api_error(&e).into_response();
    }
    match seed.throttles.vote(peer(&req)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The body, or DRF's error for one that could not be read (too large, cut off).
/// Reads the body once the user is authenticated (as DRF does: `request.data` is parsed lazily,
/// after authentication), so an anonymous client never makes the server wait for or buffer a body.
/// The router's body limit still applies.
async fn read_after_auth(req: Request) -> Result<Bytes, BytesRejection> {
    use axum::extract::FromRequest;
    Bytes::from_request(req, &()).await
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, DrfError> {
    b.map_err(|e| DrfError::detail(e.status(), e.body_text()))
}

async fn method_not_allowed(method: Method) -> DrfError {
    DrfError::detail(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method \"{method}\" not allowed."),
    )
}

#[derive(Serialize)]
struct PollOut<'a> {
    id: PollId,
    title: &'a str,
    options: LabelCounts<'a>,
    creator: UserId,
}

async fn register(
    State(seed): State<Arc<Seed>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, DrfError> {
    let body = parse_object(&body(raw)?)?;
    let (username, email, password) = seed.check_registration(&body)?;
    let account = match seed.auth.register(username, email, password).await {
        Ok(a) => a,
        Err(RegisterError::UsernameTaken) => {
            return Err(DrfError::field("username", USERNAME_TAKEN))
        }
        Err(RegisterError::Storage(e)) => {
            let mut err = DrfError::detail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The account could not be saved ({e}); try again."),
            );
            err.retry_after = Some(1);
            return Err(err);
        }
    };
    let token = seed.auth.new_session(account.id).await;
    let cookie = auth::session_set_cookie(&token, seed.secure_cookie);
    let mut resp = (
        StatusCode::CREATED,
        Json(serde_json::json!({"username": account.username, "email": account.email})),
    )
        .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex token"),
    );
    Ok(resp)
}

async fn create_poll(
    State(seed): State<Arc<Seed>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, DrfError> {
    let user = seed.auth.authenticate(&headers).await?;
    seed.throttles.poll_creation(user)?;
    let raw = read_after_auth(req).await;
    let poll = seed.create_poll(user, &body(raw)?).await?;
    let zeros = vec![0; poll.options.len()];
    let out = PollOut {
        id: poll.id,
        title: &poll.title,
        options: LabelCounts {
            labels: &poll.options,
            counts: &zeros,
        },
        creator: user,
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn vote(
    State(seed): State<Arc<Seed>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, DrfError> {
    let user = seed.auth.authenticate(&headers).await?;
    let poll = seed.poll(&id)?;
    let body = parse_object(&body(read_after_auth(req).await)?)?;
    let label = seed.vote(user, &poll, body.get("choice")).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"choice": label})),
    )
        .into_response())
}

/// `POST /votes/ {"poll": id, "choice": label}`.
async fn vote_alias(
    State(seed): State<Arc<Seed>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, DrfError> {
    let user = seed.auth.authenticate(&headers).await?;
    let body = parse_object(&body(read_after_auth(req).await)?)?;
    let mut errors = FieldErrors::default();
    let poll = match body.get("poll") {
        None => {
            errors.add("poll", REQUIRED);
            None
        }
        Some(Value::Null) => {
            errors.add("poll", NULL);
            None
        }
        Some(v) => {
            let id = match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            match id {
                None => {
                    errors.add(
                        "poll",
                        format!(
                            "Incorrect type. Expected pk value, received {}.",
                            drf::py_type(v)
                        ),
                    );
                    None
                }
                Some(id) => {
                    let found = seed.app.catalog.get(id);
                    if found.is_none() {
                        let shown = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        errors.add(
                            "poll",
                            format!("Invalid pk \"{shown}\" - object does not exist."),
                        );
                    }
                    found
                }
            }
        }
    };
    if !body.contains_key("choice") {
        errors.add("choice", REQUIRED);
    }
    errors.check()?;
    let poll = poll.ok_or_else(DrfError::not_found)?;
    let label = seed.vote(user, &poll, body.get("choice")).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"poll": poll.id, "choice": label})),
    )
        .into_response())
}

async fn results(
    State(seed): State<Arc<Seed>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, DrfError> {
    seed.auth.authenticate(&headers).await?;
    let poll = seed.poll(&id)?;
    let counts = seed.counts(&poll)?;
    Ok(Json(LabelCounts {
        labels: &poll.options,
        counts: &counts,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(options: &[&str]) -> Poll {
        serde_json::from_value(serde_json::json!({
            "id": 1, "slug": "s", "title": "t", "options": options, "max_choices": 1,
            "opens_at": null, "closes_at": null, "opened_at": 0, "closed_at": null,
            "created_at": 0, "creator": null,
        }))
        .unwrap()
    }

    #[test]
    fn counts_have_one_entry_per_option() {
        let p = poll(&["a", "b", "c"]);
        assert_eq!(padded_counts(&p, &[]), [0, 0, 0]);
        assert_eq!(padded_counts(&p, &[1, 2]), [1, 2, 0]);
        assert_eq!(padded_counts(&p, &[1, 2, 3, 4]), [1, 2, 3]);
    }
}
