//! 2,000 malformed or hostile requests of many kinds, interleaved with valid votes: every bad one
//! gets a 4xx with a JSON error body, none gets a 5xx, and every valid vote is counted.

use crate::helpers::*;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn hostile_request(
    i: usize,
    rng: &mut rand::rngs::StdRng,
    open: i64,
    closed: i64,
) -> (&'static str, String, Vec<u8>, &'static str) {
    let vote = |v: Value| {
        (
            "POST",
            "/v1/votes".to_string(),
            v.to_string().into_bytes(),
            "application/json",
        )
    };
    match i % 20 {
        0 => (
            "POST",
            "/v1/votes".into(),
            (0..rng.gen_range(1..300))
                .map(|_| rng.gen::<u8>())
                .collect(),
            "application/json",
        ),
        1 => (
            "POST",
            "/v1/votes".into(),
            br#"{"poll_id": 1, "option_id": 0, "voter_id": "x""#.to_vec(),
            "application/json",
        ),
        2 => (
            "POST",
            "/v1/votes".into(),
            vec![b' '; 64 << 10],
            "application/json",
        ),
        3 => vote(json!({"poll_id": 987_654 + i, "option_id": 0, "voter_id": format!("h{i}")})),
        4 => vote(json!({"poll_id": open.to_string(), "option_id": 0, "voter_id": "h"})),
        5 => vote(json!({"poll_id": closed, "option_id": 0, "voter_id": format!("h{i}")})),
        6 => vote(
            json!({"poll_id": open, "option_id": rng.gen_range(2..i64::MAX), "voter_id": format!("h{i}")}),
        ),
        7 => vote(json!({"poll_id": open, "option_id": -1, "voter_id": format!("h{i}")})),
        8 => vote(json!({"poll_id": open, "option_id": 0, "voter_id": "x".repeat(129)})),
        9 => vote(json!({"poll_id": open, "option_id": 0, "voter_id": "bad\u{0}id"})),
        10 => vote(json!({"poll_id": open, "option_ids": [0, 1], "voter_id": format!("h{i}")})),
        11 => (
            "POST",
            "/v1/votes".into(),
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            "application/json",
        ),
        12 => (
            "POST",
            "/v1/votes".into(),
            br#"{"poll_id": 1e400, "option_id": 0, "voter_id": "x"}"#.to_vec(),
            "application/json",
        ),
        13 => ("POST", "/v1/votes".into(), Vec::new(), "text/plain"),
        14 => (
            "POST",
            "/v1/votes/batch".into(),
            json!({"votes": "nope"}).to_string().into_bytes(),
            "application/json",
        ),
        15 => (
            "POST",
            "/v1/votes/batch".into(),
            vec![b'['; 9 << 20],
            "application/json",
        ),
        16 => ("GET", "/v1/votes".into(), Vec::new(), "application/json"),
        17 => (
            "GET",
            format!(
                "/v1/polls/{}/results",
                ["%00", "99999999999999999999999", "-1", "..%2f..%2fetc"][i % 4]
            ),
            Vec::new(),
            "",
        ),
        18 => (
            "POST",
            "/v1/polls".into(),
            json!({"title": "x".repeat(300), "options": {"a": 1}})
                .to_string()
                .into_bytes(),
            "application/json",
        ),
        _ => ("DELETE", "/v1/polls/1".into(), Vec::new(), ""),
    }
}

#[tokio::test]
async fn two_thousand_hostile_requests_get_4xx_json_and_valid_votes_still_count() {
    let app = spawn_app().await;
    let open = app.open_poll(&["A", "B"]).await;
    let closed = app.open_poll(&["A", "B"]).await;
    app.call("POST", &format!("/v1/polls/{closed}/close"), None, true)
        .await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let requests: Vec<_> = (0..2_000)
        .map(|i| hostile_request(i, &mut rng, open, closed))
        .collect();
    let app = &app;
    let outcomes: Vec<(String, u16, String)> =
        futures::stream::iter(requests.into_iter().enumerate())
            .map(|(i, (method, path, body, ct))| async move {
                // A valid vote beside every tenth bad request.
                if i % 10 == 0 {
                    let (s, b) = app
                        .vote(open, ((i / 10) % 2) as i64, &format!("valid-{i}"))
                        .await;
                    assert_eq!(s, 202, "a valid vote beside hostile ones was refused: {b}");
                }
                let operator = path == "/v1/polls";
                let mut req = app
                    .client
                    .request(method.parse().unwrap(), app.url(&path))
                    .body(body);
                if !ct.is_empty() {
                    req = req.header("content-type", ct);
                }
                if operator {
                    req = req.bearer_auth(KEY);
                } else if path.starts_with("/v1/votes/batch") {
                    req = req.bearer_auth(crate::helpers::AGG_KEY);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                (
                    format!("{method} {path}"),
                    status,
                    resp.text().await.unwrap(),
                )
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for (what, status, body) in &outcomes {
        assert!((400..500).contains(status), "{what} → {status} {body}");
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|_| panic!("{what} → {status}: not JSON: {body:.200}"));
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what} → no error code: {v}"));
        assert!(
            !v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{what} → {code} has no message"
        );
    }
    let statuses: std::collections::BTreeSet<u16> = outcomes.iter().map(|o| o.1).collect();
    assert!(
        statuses.len() >= 6,
        "the requests should exercise many kinds of refusal: {statuses:?}"
    );
    app.wait_counts(open, &[100, 100], 20).await;
}
