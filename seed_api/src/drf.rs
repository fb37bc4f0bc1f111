//! Django REST framework's error shapes and field checks (pure, no I/O).
//!
//! DRF answers a request-wide error as `{"detail": "…"}` and invalid input as one list of messages
//! per field, `{"field": ["…"], …}`, every field checked at once. The messages here are DRF's own
//! wording, so clients that match on them keep working.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edge::ApiError;
use ingest::SubmitError;
use schemas::poll::ChoiceError;
use schemas::{PollId, PollRejection, Visibility, VoteRejection};
use serde_json::{Map, Value};

pub const REQUIRED: &str = "This field is required.";
pub const NULL: &str = "This field may not be null.";
pub const BLANK: &str = "This field may not be blank.";
pub const NOT_A_STRING: &str = "Not a valid string.";
pub const NOT_AUTHENTICATED: &str = "Authentication credentials were not provided.";
pub const BAD_CREDENTIALS: &str = "Invalid username/password.";
pub const NO_POLL: &str = "No Poll matches the given query.";
pub const ALREADY_VOTED: &str = "You have already voted on this poll.";
pub const POLL_CLOSED: &str = "This poll is closed.";
pub const POLL_NOT_OPEN: &str = "This poll is not open yet.";
pub const USERNAME_TAKEN: &str = "A user with that username already exists.";
pub const INVALID_USERNAME: &str =
    "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.";
pub const INVALID_EMAIL: &str = "Enter a valid email address.";

/// An error answer in DRF's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DrfError {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<u32>,
}

impl DrfError {
    /// `{"detail": message}`.
    pub fn detail(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "detail": message.into() }),
            retry_after: None,
        }
    }

    /// `400 {field: [message]}`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        errors.into_error()
    }

    pub fn not_authenticated() -> Self {
        Self::detail(StatusCode::FORBIDDEN, NOT_AUTHENTICATED)
    }

    pub fn not_found() -> Self {
        Self::detail(StatusCode::NOT_FOUND, NO_POLL)
    }

    /// DRF's `Throttled`: `429 {"detail": "Request was throttled. Expected available in N
    /// seconds."}` with `Retry-After: N` (the wait rounded up, at least 1).
    pub fn throttled(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs_f64().ceil().max(1.0).min(u32::MAX as f64) as u32;
        let unit = if secs == 1 { "second" } else { "seconds" };
        Self {
            retry_after: Some(secs),
            ..Self::detail(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Request was throttled. Expected available in {secs} {unit}."),
            )
        }
    }

    /// The one sentence a client can show (a WebSocket `{"error": …}`): the detail, or the first
    /// field's first message as `field: message`.
    pub fn message(&self) -> String {
        if let Some(d) = self.body.get("detail").and_then(Value::as_str) {
            return d.to_owned();
        }
        self.body
            .as_object()
            .and_then(|m| m.iter().next())
            .and_then(|(field, v)| Some(format!("{field}: {}", v.get(0)?.as_str()?)))
            .unwrap_or_else(|| "invalid request".to_owned())
    }
}

impl IntoResponse for DrfError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Per-field messages, gathered while checking a body (DRF reports every bad field at once).
#[derive(Debug, Default)]
pub struct FieldErrors(Map<String, Value>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        let entry = self
            .0
            .entry(field.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(Value::String(message.into()));
        }
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_error(self) -> DrfError {
        DrfError {
            status: StatusCode::BAD_REQUEST,
            body: Value::Object(self.0),
            retry_after: None,
        }
    }

    /// `Err` with every message gathered, if any.
    pub fn check(self) -> Result<(), DrfError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// Python's name for a JSON value's type, as DRF messages name it.
pub fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Parses a request body as a JSON object (an empty body is an empty object, as in DRF).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, DrfError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(DrfError {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({"non_field_errors": [format!(
                "Invalid data. Expected a dictionary, but got {}.",
                py_type(&other)
            )]}),
            retry_after: None,
        }),
        Err(e) => Err(DrfError::detail(
            StatusCode::BAD_REQUEST,
            format!("JSON parse error - {e}"),
        )),
    }
}

/// Rules of a DRF `CharField`.
#[derive(Debug, Clone, Copy)]
pub struct CharRules {
    pub min: usize,
    pub max: usize,
    pub allow_blank: bool,
    pub trim: bool,
}

impl CharRules {
    pub const fn new(max: usize) -> Self {
        Self {
            min: 0,
            max,
            allow_blank: false,
            trim: true,
        }
    }
}

/// Checks a required `CharField`; records its messages in `errors` and answers the value if valid.
pub fn char_field(
    body: &Map<String, Value>,
    name: &str,
    rules: CharRules,
    errors: &mut FieldErrors,
) -> Option<String> {
    let raw = match body.get(name) {
        None => {
            errors.add(name, REQUIRED);
            return None;
        }
        Some(Value::Null) => {
            errors.add(name, NULL);
            return None;
        }
        Some(Value::String(s)) => s,
        Some(_) => {
            errors.add(name, NOT_A_STRING);
            return None;
        }
    };
    let value = if rules.trim { raw.trim() } else { raw.as_str() };
    if value.is_empty() && !rules.allow_blank {
        errors.add(name, BLANK);
        return None;
    }
    let len = value.chars().count();
    let before = errors.has(name);
    if len > rules.max {
        errors.add(
            name,
            format!(
                "Ensure this field has no more than {} characters.",
                rules.max
            ),
        );
    }
    if len < rules.min {
        errors.add(
            name,
            format!("Ensure this field has at least {} characters.", rules.min),
        );
    }
    (errors.has(name) == before).then(|| value.to_owned())
}

/// Django's username rule: letters, digits and `@ . + - _`.
pub fn valid_username(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '@' | '.' | '+' | '-' | '_'))
}

/// A deliberately loose e-mail check: one `@`, something on both sides, a dot in the domain, no
/// spaces (what Django's validator accepts is a superset of what clients send in practice).
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.contains('.')
        && !email.chars().any(char::is_whitespace)
}

/// DRF's message for a choice that is not one of the labels: `"X" is not a valid choice.`
pub fn invalid_choice(input: &Value) -> String {
    let shown = match input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("\"{shown}\" is not a valid choice.")
}

/// A poll option's index from the label a client sends: the exact label, else the label with its
/// surrounding spaces removed (polls store labels trimmed).
pub fn label_index(labels: &[String], choice: &str) -> Option<usize> {
    labels
        .iter()
        .position(|l| l == choice)
        .or_else(|| labels.iter().position(|l| l == choice.trim()))
}

/// The option a vote's `choice` names (pure): a label of `labels` (see [`label_index`]), else
/// DRF's field error on `choice`.
pub fn choice_option(labels: &[String], choice: Option<&Value>) -> Result<usize, DrfError> {
    match choice {
        None => Err(DrfError::field("choice", REQUIRED)),
        Some(Value::Null) => Err(DrfError::field("choice", NULL)),
        Some(v @ Value::String(label)) => {
            label_index(labels, label).ok_or_else(|| DrfError::field("choice", invalid_choice(v)))
        }
        Some(v) => Err(DrfError::field("choice", invalid_choice(v))),
    }
}

/// A path's poll id: anything but a positive integer is "no such poll" (404, like Django's URL
/// converter plus `get_object_or_404`).
pub fn path_poll_id(raw: &str) -> Option<PollId> {
    raw.parse::<PollId>().ok().filter(|&id| id > 0)
}

/// Why a poll's counts are not shown yet (its visibility is not `live`).
pub fn hidden_detail(v: Visibility) -> &'static str {
    match v {
        Visibility::OnReveal => "Results are hidden until they are revealed.",
        _ => "Results are hidden until the poll closes.",
    }
}

/// What a refused vote means to a seed client (Django answered 400 for a closed poll and a field
/// error on `choice` for a label it does not have).
pub fn from_vote_rejection(r: &VoteRejection) -> DrfError {
    match r {
        VoteRejection::UnknownPoll(_) => DrfError::not_found(),
        VoteRejection::PollClosed(_) => DrfError::detail(StatusCode::BAD_REQUEST, POLL_CLOSED),
        VoteRejection::PollNotOpen(_) => DrfError::detail(StatusCode::BAD_REQUEST, POLL_NOT_OPEN),
        VoteRejection::Choice(ChoiceError::TooMany { .. }) => {
            DrfError::detail(StatusCode::BAD_REQUEST, r.to_string())
        }
        VoteRejection::Choice(_) => DrfError::field("choice", r.to_string()),
        VoteRejection::VerifiedVotersOnly(_) | VoteRejection::TokenForAnotherPoll { .. } => {
            DrfError::detail(StatusCode::FORBIDDEN, r.to_string())
        }
        VoteRejection::Malformed(_)
        | VoteRejection::InvalidVoterId { .. }
        | VoteRejection::InvalidVoteId { .. }
        | VoteRejection::VoterMismatch => DrfError::detail(StatusCode::BAD_REQUEST, r.to_string()),
    }
}

/// What a refused poll definition means to a seed client: a field error where a field is wrong.
pub fn from_poll_rejection(r: &PollRejection) -> DrfError {
    match r {
        PollRejection::InvalidTitle(m) => DrfError::field("title", m.clone()),
        PollRejection::InvalidOptions(m) => DrfError::field("options", m.clone()),
        PollRejection::InvalidMaxChoices(_) | PollRejection::InvalidTime(_) => {
            DrfError::detail(StatusCode::BAD_REQUEST, r.to_string())
        }
    }
}

/// What a vote that was not recorded means to a seed client.
pub fn from_submit_error(e: &SubmitError) -> DrfError {
    match e {
        SubmitError::Rejected(r) => from_vote_rejection(r),
        SubmitError::Unavailable(e) => from_api_error(e),
    }
}

/// What an answer of the pipeline's edge that is not a domain reason (overload, a store
/// unavailable, a poll not found, a conflict of state) means to a seed client: by status alone.
pub fn from_api_error(e: &ApiError) -> DrfError {
    let mut out = match e.status.as_u16() {
        404 => DrfError::not_found(),
        400 | 409 | 422 => DrfError::detail(StatusCode::BAD_REQUEST, e.message.clone()),
        429 => DrfError::detail(
            e.status,
            format!(
                "Request was throttled. Expected available in {} seconds.",
                e.retry_after_secs.unwrap_or(1)
            ),
        ),
        _ => DrfError::detail(e.status, e.message.clone()),
    };
    out.retry_after = e.retry_after_secs;
    out
}

/// `{label: count, …}` in the poll's option order, every label (missing counts are zeros).
pub struct LabelCounts<'a> {
    pub labels: &'a [String],
    pub counts: &'a [i64],
}

impl serde::Serialize for LabelCounts<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.labels.len()))?;
        for (i, label) in self.labels.iter().enumerate() {
            map.serialize_entry(label, &self.counts.get(i).copied().unwrap_or(0))?;
        }
        map.end()
    }
}

/// The keys of a JSON object in the order they were written (option order is the client's order,
/// whatever map type `serde_json::Value` uses). `Err(python type)` if the value is not an object.
pub fn object_keys_in_order(
    raw: &serde_json::value::RawValue,
) -> Result<Vec<String>, &'static str> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    match serde_json::from_str::<Keys>(raw.get()) {
        Ok(k) => Ok(k.0),
        Err(_) => Err(serde_json::from_str::<Value>(raw.get())
            .map(|v| py_type(&v))
            .unwrap_or("str")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn throttled_is_drf_s_message_with_retry_after() {
        let e = DrfError::throttled(std::time::Duration::from_millis(200));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(1));
        assert_eq!(
            e.body,
            json!({"detail": "Request was throttled. Expected available in 1 second."})
        );
        let e = DrfError::throttled(std::time::Duration::from_millis(5_001));
        assert_eq!(e.retry_after, Some(6));
        assert_eq!(
            e.body["detail"],
            "Request was throttled. Expected available in 6 seconds."
        );
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn char_field_reports_like_drf() {
        let body = obj(json!({"a": "  x  ", "b": 5, "c": null, "d": "   ", "e": "short"}));
        let mut errors = FieldErrors::default();
        assert_eq!(
            char_field(&body, "a", CharRules::new(10), &mut errors),
            Some("x".into())
        );
        assert_eq!(
            char_field(&body, "b", CharRules::new(10), &mut errors),
            None
        );
        assert_eq!(
            char_field(&body, "c", CharRules::new(10), &mut errors),
            None
        );
        assert_eq!(
            char_field(&body, "d", CharRules::new(10), &mut errors),
            None
        );
        assert_eq!(
            char_field(&body, "missing", CharRules::new(10), &mut errors),
            None
        );
        let rules = CharRules {
            min: 8,
            ..CharRules::new(4)
        };
        assert_eq!(char_field(&body, "e", rules, &mut errors), None);
        let err = errors.into_error();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            err.body,
            json!({
                "b": [NOT_A_STRING], "c": [NULL], "d": [BLANK], "missing": [REQUIRED],
                "e": ["Ensure this field has no more than 4 characters.", "Ensure this field has at least 8 characters."],
            })
        );
        assert_eq!(err.message(), format!("b: {NOT_A_STRING}"));
    }

    #[test]
    fn bodies_must_be_objects() {
        assert_eq!(parse_object(b"").unwrap(), Map::new());
        assert_eq!(parse_object(br#"{"a": 1}"#).unwrap(), obj(json!({"a": 1})));
        let e = parse_object(b"[1]").unwrap_err();
        assert_eq!(
            e.body,
            json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})
        );
        let e = parse_object(b"{nope").unwrap_err();
        assert!(e.message().starts_with("JSON parse error - "), "{e:?}");
    }

    #[test]
    fn usernames_and_emails() {
        assert!(valid_username("ana.maria+test@x_y-z"));
        assert!(valid_username("José"));
        assert!(!valid_username("ana maria"));
        assert!(!valid_username("a/b"));
        assert!(valid_email("a@example.com"));
        assert!(!valid_email("a@example"));
        assert!(!valid_email("example.com"));
        assert!(!valid_email("a b@example.com"));
        assert!(!valid_email("@example.com"));
        assert!(!valid_email("a@@example.com"));
    }

    #[test]
    fn labels_map_to_indexes() {
        let labels: Vec<String> = vec!["Option 1".into(), "Option 2".into(), " x".into()];
        assert_eq!(label_index(&labels, "Option 2"), Some(1));
        assert_eq!(label_index(&labels, " Option 1 "), Some(0));
        assert_eq!(label_index(&labels, " x"), Some(2));
        assert_eq!(label_index(&labels, "option 1"), None);
        assert_eq!(
            invalid_choice(&json!("Nope")),
            "\"Nope\" is not a valid choice."
        );
        assert_eq!(invalid_choice(&json!(3)), "\"3\" is not a valid choice.");
    }

    #[test]
    fn poll_ids_in_paths() {
        assert_eq!(path_poll_id("12"), Some(12));
        assert_eq!(path_poll_id("0"), None);
        assert_eq!(path_poll_id("-3"), None);
        assert_eq!(path_poll_id("abc"), None);
    }

    #[test]
    fn pipeline_errors_become_drf_errors() {
        assert_eq!(
            from_vote_rejection(&VoteRejection::PollClosed(1)),
            DrfError::detail(StatusCode::BAD_REQUEST, POLL_CLOSED)
        );
        assert_eq!(
            from_vote_rejection(&VoteRejection::PollNotOpen(1)),
            DrfError::detail(StatusCode::BAD_REQUEST, POLL_NOT_OPEN)
        );
        assert_eq!(
            from_vote_rejection(&VoteRejection::UnknownPoll(1)),
            DrfError::not_found()
        );
        let unknown = VoteRejection::Choice(ChoiceError::UnknownOption { option: 5, last: 2 });
        assert_eq!(
            from_vote_rejection(&unknown).body,
            json!({"choice": [unknown.to_string()]})
        );
        let busy = SubmitError::Unavailable(ApiError::unavailable("the log is busy", 1));
        let e = from_submit_error(&busy);
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
        assert_eq!(e.body, json!({"detail": "the log is busy"}));
        assert_eq!(
            from_api_error(&ApiError::not_found("unknown_poll", "x")),
            DrfError::not_found()
        );
        let title = PollRejection::InvalidTitle("title must be 1 to 255 characters".into());
        assert_eq!(
            from_poll_rejection(&title).body,
            json!({"title": ["title must be 1 to 255 characters"]})
        );
        let time = PollRejection::InvalidTime("closes_at must be after the poll opens".into());
        assert_eq!(
            from_poll_rejection(&time),
            DrfError::detail(StatusCode::BAD_REQUEST, time.to_string())
        );
    }

    #[test]
    fn label_counts_keep_option_order_and_zeros() {
        let labels: Vec<String> = vec!["b".into(), "a".into(), "c".into()];
        let s = serde_json::to_string(&LabelCounts {
            labels: &labels,
            counts: &[4],
        })
        .unwrap();
        assert_eq!(s, r#"{"b":4,"a":0,"c":0}"#);
    }

    #[test]
    fn object_keys_keep_their_order() {
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_str(r#"{"Option 10": 0, "Option 2": 0, "Option 1": 5}"#).unwrap();
        assert_eq!(
            object_keys_in_order(&raw).unwrap(),
            ["Option 10", "Option 2", "Option 1"]
        );
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(object_keys_in_order(&raw), Err("list"));
    }
}
