//! `/v1/polls…`: create, list, read, open, close, reveal, results, timeline, rejections.

use crate::QueryState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge::access::KeyQuery;
use edge::ApiError;
use results::views::{poll_view, results_view};
use schemas::poll::{PollState, MAX_OPTIONS};
use schemas::{Poll, PollId, PollRejection, Timestamp, Visibility, Voters};
use serde::Deserialize;
use serde_json::json;
use storage::StoreError;

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/v1/polls", post(create_poll).get(list_polls))
        .route("/v1/polls/{id}", get(get_poll))
        .route("/v1/s/{slug}", get(get_poll_by_slug))
        .route("/v1/polls/{id}/open", post(open_poll))
        .route("/v1/polls/{id}/close", post(close_poll))
        .route("/v1/polls/{id}/reveal", post(reveal_poll))
        .route("/v1/polls/{id}/results", get(results))
        .route("/v1/polls/{id}/timeline", get(timeline))
        .route("/v1/polls/{id}/rejections", get(rejections))
        .with_state(state.clone())
        .merge(crate::session::router(state))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePoll {
    pub title: String,
    pub options: Vec<String>,
    #[serde(default)]
    pub max_choices: Option<u32>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// Open at once.
    #[serde(default)]
    pub open: bool,
    #[serde(default)]
    pub opens_at: Option<String>,
    #[serde(default)]
    pub closes_at: Option<String>,
    #[serde(default)]
    pub closes_in_secs: Option<u64>,
    /// `verified`: only voters with a voter token may vote (default `anyone`).
    #[serde(default)]
    pub voters: Option<Voters>,
}

fn parse_time(field: &str, s: &str) -> Result<Timestamp, PollRejection> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| {
            PollRejection::InvalidTime(format!(
                "{field}: {e}; use RFC 3339, e.g. 2026-11-24T20:00:00Z"
            ))
        })
        .map(|t| {
            Timestamp(
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0),
            )
        })
}

/// The longest poll title, in characters, as sent (before trimming) and as kept.
pub const MAX_TITLE_CHARS: usize = 255;
/// The longest option label, in characters, as sent (before trimming) and as kept.
pub const MAX_OPTION_CHARS: usize = 200;

/// The latest close `closes_in_secs` can set: ten years ahead (times are shown in RFC 3339, which
/// ends with the year 9999, and no poll runs that long).
pub const MAX_CLOSES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

/// A title or an option label as kept: the text as sent is at most `max` characters (surrounding
/// whitespace counts: a huge run of spaces is refused, not trimmed away), and once its surrounding
/// whitespace is trimmed it is not empty and holds no control character (newlines, tabs, escapes,
/// NUL: a screen draws one line of printable text). Err: why, as the end of a sentence.
fn poll_text(raw: &str, max: usize) -> Result<String, &'static str> {
    if raw.chars().count() > max {
        return Err(" (surrounding spaces count); this one is longer");
    }
    let text = raw.trim();
    if text.is_empty() {
        return Err("; this one is empty");
    }
    if text.chars().any(char::is_control) {
        return Err("; this one holds a control character");
    }
    Ok(text.to_owned())
}

/// Checks a poll creation request and builds the poll (pure; also used by the seed API adapter).
pub fn build_poll(
    req: &CreatePoll,
    id: PollId,
    slug: String,
    now: Timestamp,
    creator: Option<String>,
) -> Result<Poll, PollRejection> {
    let title = poll_text(&req.title, MAX_TITLE_CHARS).map_err(|why| {
        PollRejection::InvalidTitle(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters of printable text{why}"
        ))
    })?;
    if req.options.len() < 2 || req.options.len() > MAX_OPTIONS {
        return Err(PollRejection::InvalidOptions(format!(
            "a poll has 2 to {MAX_OPTIONS} options; got {}",
            req.options.len()
        )));
    }
    let mut options: Vec<String> = Vec::with_capacity(req.options.len());
    for (i, raw) in req.options.iter().enumerate() {
        let o = poll_text(raw, MAX_OPTION_CHARS).map_err(|why| {
            PollRejection::InvalidOptions(format!(
                "option {i} must be 1 to {MAX_OPTION_CHARS} characters of printable text{why}"
            ))
        })?;
        if let Some(first) = options.iter().position(|earlier| *earlier == o) {
            return Err(PollRejection::InvalidOptions(format!(
                "option {i} repeats option {first}"
            )));
        }
        options.push(o);
    }
    let max_choices = req.max_choices.unwrap_or(1);
    if max_choices == 0 || max_choices as usize > options.len() {
        return Err(PollRejection::InvalidMaxChoices(format!(
            "max_choices must be 1 to {} (the number of options)",
            options.len()
        )));
    }
    let opens_at = req
        .opens_at
        .as_deref()
        .map(|s| parse_time("opens_at", s))
        .transpose()?;
    let mut closes_at = req
        .closes_at
        .as_deref()
        .map(|s| parse_time("closes_at", s))
        .transpose()?;
    if let Some(secs) = req.closes_in_secs {
        if closes_at.is_some() {
            return Err(PollRejection::InvalidTime(
                "give closes_at or closes_in_secs, not both".into(),
            ));
        }
        if secs > MAX_CLOSES_IN_SECS {
            return Err(PollRejection::InvalidTime(format!(
                "closes_in_secs must be at most {MAX_CLOSES_IN_SECS} (ten years)"
            )));
        }
        closes_at = Some(now.add_micros(secs as i64 * 1_000_000));
    }
    let opened_at = req.open.then_some(now);
    if let (Some(open), Some(close)) = (opens_at.or(opened_at), closes_at) {
        if close <= open {
            return Err(PollRejection::InvalidTime(
                "closes_at must be after the poll opens".into(),
            ));
        }
    }
    Ok(Poll {
        id,
        slug,
        title,
        options,
        max_choices,
        visibility: req.visibility.unwrap_or_default(),
        opens_at,
        closes_at,
        opened_at,
        closed_at: None,
        revealed: false,
        created_at: now,
        creator,
        voters: req.voters.unwrap_or_default(),
    })
}

pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(id) => {
            ApiError::not_found("unknown_poll", format!("there is no poll {id}"))
        }
        StoreError::Rejected(msg) => ApiError::conflict("invalid_state", msg),
        other => {
            tracing::error!(error = %other, "poll store failed");
            ApiError::unavailable(format!("the poll store failed: {other}"), 5)
        }
    }
}

async fn create_poll(
    State(s): State<QueryState>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    s.keys.require(&headers, None)?;
    // The body is read only once the operator is known.
    let body = <Bytes as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the poll is larger than the body limit",
            ),
            status => ApiError::new(status, "unreadable_body", e.body_text()),
        })?;
    let req: CreatePoll = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("malformed", format!("the body is not a valid poll: {e}"))
    })?;
    let now = Timestamp::now();
    // Validate before taking an id, so a bad request leaves nothing behind.
    build_poll(&req, 0, String::new(), now, None)?;
    let poll = s
        .catalog
        .create(|id, slug| {
            build_poll(&req, id, slug, now, Some("operator".into())).expect("validated above")
        })
        .await
        .map_err(store_error)?;
    if let Some(shared) = &s.shared {
        shared.announce(poll.id).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(poll_view(&poll, Timestamp::now())),
    )
        .into_response())
}

/// Polls per page of `GET /v1/polls` when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `limit` of `GET /v1/polls`.
pub const MAX_PAGE: usize = 1000;

/// `GET /v1/polls?limit=&after=`: a page of polls, newest first, and the link to the next page
/// (`next` in the body and a `Link: <…>; rel="next"` header; null and absent on the last page).
async fn list_polls(
    State(s): State<QueryState>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let after = match q.get("after") {
        None => None,
        Some(raw) => Some(raw.parse::<PollId>().ok().filter(|&id| id > 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be a poll id (a positive whole number): the `id` of the last poll of the previous page",
            )
        })?),
    };
    let now = Timestamp::now();
    let (polls, more) = s.catalog.page(after, limit);
    let next = more
        .then(|| polls.last())
        .flatten()
        .map(|last| format!("/v1/polls?limit={limit}&after={}", last.id));
    let body = json!({
        "polls": polls.iter().map(|p| poll_view(p, now)).collect::<Vec<_>>(),
        "next": next,
    });
    let mut resp = Json(body).into_response();
    if let Some(next) = &next {
        if let Ok(link) = axum::http::HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
            resp.headers_mut().insert(axum::http::header::LINK, link);
        }
    }
    Ok(resp)
}

pub fn find(s: &QueryState, id: PollId) -> Result<std::sync::Arc<Poll>, ApiError> {
    s.catalog
        .get(id)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))
}

/// [`find`], re-reading the catalog first when another node may have created the poll.
pub async fn find_fresh(s: &QueryState, id: PollId) -> Result<std::sync::Arc<Poll>, ApiError> {
    if s.catalog.get(id).is_none() && s.catalog.is_shared() {
        s.catalog.refresh().await.map_err(store_error)?;
    }
    find(s, id)
}

/// Path ids that are not numbers are a 404 with a JSON body, like unknown ones.
pub fn poll_id(raw: &str) -> Result<PollId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("unknown_poll", format!("there is no poll {raw:?}")))
}

async fn get_poll(
    State(s): State<QueryState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = find_fresh(&s, poll_id(&id)?).await?;
    Ok(Json(poll_view(&p, Timestamp::now())).into_response())
}

async fn get_poll_by_slug(
    State(s): State<QueryState>,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    let p = s.catalog.by_slug(&slug).ok_or_else(|| {
        ApiError::not_found(
            "unknown_poll",
            format!("there is no poll with the code {slug:?}"),
        )
    })?;
    Ok(Json(poll_view(&p, Timestamp::now())).into_response())
}

async fn change(
    s: &QueryState,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&mut Poll, Timestamp) -> Result<(), String>,
) -> Result<Response, ApiError> {
    s.keys.require(headers, None)?;
    let p = s
        .catalog
        .update(poll_id(id)?, f)
        .await
        .map_err(store_error)?;
    if let Some(shared) = &s.shared {
        shared.announce(p.id).await;
    }
    tracing::info!(poll = p.id, state = ?p.state_at(Timestamp::now()), "poll changed");
    Ok(Json(poll_view(&p, Timestamp::now())).into_response())
}

async fn open_poll(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    change(&s, &headers, &id, |p, now| match p.state_at(now) {
        PollState::Closed => Err(format!(
            "poll {} is closed and cannot reopen (its results would change after the fact)",
            p.id
        )),
        PollState::Open => Ok(()),
        _ => {
            p.opened_at = Some(now);
            Ok(())
        }
    })
    .await
}

async fn close_poll(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let lead = s.close_lead_us;
    change(&s, &headers, &id, move |p, now| {
        if p.state_at(now) != PollState::Closed {
            // Never later than a scheduled close that comes first.
            let at = now.add_micros(lead);
            p.closed_at = Some(p.closes_at.map_or(at, |c| c.min(at)).max(now));
        }
        Ok(())
    })
    .await
}

async fn reveal_poll(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    change(&s, &headers, &id, |p, _| {
        p.revealed = true;
        Ok(())
    })
    .await
}

async fn results(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    let p = find_fresh(&s, poll_id(&id)?).await?;
    let operator = s.keys.sees_embargoed(&headers, q.key(), q.token(), p.id)?;
    if let Some(shared) = &s.shared {
        shared.refresh(&s.board, p.id).await?;
    }
    let snap = s.board.snapshot(p.id);
    Ok(Json(results_view(&p, &snap, operator, Timestamp::now())).into_response())
}

async fn timeline(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    let p = find(&s, poll_id(&id)?)?;
    let now = Timestamp::now();
    let operator = s.keys.sees_embargoed(&headers, q.key(), q.token(), p.id)?;
    if !operator && !p.results_public(now) {
        return Ok(Json(
            json!({"poll_id": p.id, "hidden": true, "window_ms": 1000, "windows": []}),
        )
        .into_response());
    }
    let windows = match &s.shared {
        Some(shared) => shared.timeline(p.id).await?,
        None => s.board.timeline(p.id),
    };
    let windows: Vec<_> = windows
        .into_iter()
        .map(|w| json!({"start": Timestamp(w.start_ms * 1000).rfc3339_millis(), "start_ms": w.start_ms, "votes": w.votes}))
        .collect();
    Ok(
        Json(json!({"poll_id": p.id, "hidden": false, "window_ms": 1000, "windows": windows}))
            .into_response(),
    )
}

async fn rejections(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.keys.require(&headers, None)?;
    let p = find_fresh(&s, poll_id(&id)?).await?;
    if let Some(shared) = &s.shared {
        shared.refresh(&s.board, p.id).await?;
    }
    let snap = s.board.snapshot(p.id);
    Ok(Json(json!({
        "poll_id": p.id,
        "edge": s.edge_rejections.get(p.id),
        "processor": snap.rejected,
        "late_for_window": snap.late_for_window,
        "note": "edge: refused before the log (since this process started); processor: in the log but not counted",
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(title: &str, options: &[&str]) -> CreatePoll {
        CreatePoll {
            title: title.to_owned(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            max_choices: None,
            visibility: None,
            open: true,
            opens_at: None,
            closes_at: None,
            closes_in_secs: None,
            voters: None,
        }
    }

    fn build(req: &CreatePoll) -> Result<Poll, (StatusCode, &'static str, String)> {
        build_poll(req, 1, "s".into(), Timestamp(1_000_000), None).map_err(|e| {
            let e = ApiError::from(e);
            (e.status, e.code, e.message)
        })
    }

    fn refusal(req: &CreatePoll) -> (&'static str, String) {
        match build(req) {
            Ok(p) => panic!("accepted {p:?}"),
            Err((status, code, message)) => {
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{code}: {message}"
                );
                (code, message)
            }
        }
    }

    #[test]
    fn keeps_titles_and_labels_trimmed() {
        let p = build(&request("  Who wins?  ", &[" a", "b "])).unwrap();
        assert_eq!(p.title, "Who wins?");
        assert_eq!(p.options, ["a", "b"]);
        let longest = "é".repeat(MAX_TITLE_CHARS);
        assert_eq!(
            build(&request(&longest, &["a", "b"])).unwrap().title,
            longest,
            "the limit counts characters, not bytes"
        );
    }

    #[test]
    fn refuses_control_characters_in_titles_and_labels() {
        for title in [
            "a\nb",
            "a\u{0}",
            "\u{1b}[31mred",
            "tab\there",
            "del\u{7f}",
            "c1\u{85}x",
        ] {
            let (code, message) = refusal(&request(title, &["a", "b"]));
            assert_eq!(code, "invalid_title", "{title:?}");
            assert!(message.contains("control character"), "{message}");
            assert!(
                !message.contains(title),
                "the message does not echo the input"
            );
        }
        let (code, message) = refusal(&request("t", &["a", "b\r\nc"]));
        assert_eq!(code, "invalid_options");
        assert!(message.starts_with("option 1 "), "{message}");
        // Surrounding newlines are whitespace and trimmed like spaces.
        assert_eq!(build(&request("\nt\n", &["a", "b"])).unwrap().title, "t");
    }

    #[test]
    fn checks_the_length_as_sent_not_only_after_trimming() {
        let padded = format!("{}t{}", " ".repeat(200), " ".repeat(100));
        let (code, message) = refusal(&request(&padded, &["a", "b"]));
        assert_eq!(code, "invalid_title");
        assert!(message.contains("longer"), "{message}");
        let just_fits = format!("{}t", " ".repeat(MAX_TITLE_CHARS - 1));
        assert_eq!(build(&request(&just_fits, &["a", "b"])).unwrap().title, "t");
        assert_eq!(
            refusal(&request(&"x".repeat(MAX_TITLE_CHARS + 1), &["a", "b"])).0,
            "invalid_title"
        );
        let label = format!("{} b", " ".repeat(MAX_OPTION_CHARS));
        assert_eq!(refusal(&request("t", &["a", &label])).0, "invalid_options");
        assert_eq!(refusal(&request("   ", &["a", "b"])).0, "invalid_title");
        assert_eq!(refusal(&request("t", &["a", " "])).0, "invalid_options");
    }

    #[test]
    fn refuses_repeated_options_by_index() {
        let (code, message) = refusal(&request("t", &["a", "b", " a "]));
        assert_eq!(code, "invalid_options");
        assert_eq!(message, "option 2 repeats option 0");
    }

    #[test]
    fn refuses_a_close_beyond_ten_years_instead_of_overflowing() {
        let mut req = request("t", &["a", "b"]);
        for secs in [MAX_CLOSES_IN_SECS + 1, u64::MAX, i64::MAX as u64 + 1] {
            req.closes_in_secs = Some(secs);
            assert_eq!(refusal(&req).0, "invalid_time", "{secs}");
        }
        req.closes_in_secs = Some(MAX_CLOSES_IN_SECS);
        let p = build(&req).unwrap();
        assert_eq!(
            p.closes_at,
            Some(Timestamp(1_000_000 + MAX_CLOSES_IN_SECS as i64 * 1_000_000))
        );
        // Its time can be shown in RFC 3339 (formatting panics past the year 9999).
        assert_eq!(
            p.closes_at.unwrap().rfc3339_millis(),
            "1979-12-30T00:00:01.000Z"
        );
    }
}
