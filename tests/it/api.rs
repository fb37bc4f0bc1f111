//! The /v1 API end to end: polls, votes, batches, results, embargo, live updates.

use crate::helpers::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn votes_are_counted_once_per_voter_and_results_are_exact() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["Ana", "Bruno", "Carla"]).await;
    for (voter, option) in [("v1", 0), ("v2", 1), ("v3", 1), ("v4", 2)] {
        let (status, receipt) = app.vote(poll, option, voter).await;
        assert_eq!(status, 202, "{receipt}");
        assert!(receipt["vote_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(receipt["offset"].is_u64() && receipt["partition"].is_u64());
    }
    // Second votes by the same voter are acknowledged (durable) but never counted.
    assert_eq!(app.vote(poll, 2, "v1").await.0, 202);
    // A retry with the same vote_id is the same vote.
    for _ in 0..3 {
        let (s, _) = app.call("POST", "/v1/votes", Some(json!({"poll_id": poll, "option_id": 0, "voter_id": "v5", "vote_id": "retry-1"})), false).await;
        assert_eq!(s, 202);
    }
    let r = app.wait_counts(poll, &[2, 2, 1], 10).await;
    assert_eq!(r["total_votes"], 5);
    assert_eq!(r["voters"], 5);
    assert_eq!(r["options"][1]["label"], "Bruno");
    // The counts can show before the last retries are counted as duplicates (a partial is
    // flushed every few milliseconds): wait for them too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rej) = app
            .call("GET", &format!("/v1/polls/{poll}/rejections"), None, true)
            .await;
        if rej["processor"]["duplicate"] == 3 || tokio::time::Instant::now() > deadline {
            assert_eq!(rej["processor"]["duplicate"], 3, "{rej}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.results(poll).await["total_votes"],
        5,
        "duplicates never count"
    );
}

#[tokio::test]
async fn batch_answers_each_vote_and_counts_the_valid_ones() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    // Past two of the handler's yields (every 1,024 votes): each vote's answer keeps its place.
    let mut votes: Vec<Value> = (0..2500)
        .map(|i| json!({"poll_id": poll, "option_id": i % 2, "voter_id": format!("b{i}")}))
        .collect();
    votes.push(json!({"poll_id": poll, "option_id": 5, "voter_id": "bad-option"}));
    votes.push(json!({"poll_id": 999, "option_id": 0, "voter_id": "no-poll"}));
    votes.push(json!({"poll_id": poll, "voter_id": "no-choice"}));
    votes.push(json!("not an object"));
    let (status, body) = app
        .call(
            "POST",
            "/v1/votes/batch",
            Some(json!({"votes": votes})),
            false,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2500);
    assert_eq!(body["rejected"], 4);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2504);
    assert!(results[..2500].iter().all(|r| r["status"] == "accepted"));
    assert_eq!(results[2500]["error"]["code"], "invalid_option");
    assert_eq!(results[2501]["error"]["code"], "unknown_poll");
    assert_eq!(results[2502]["error"]["code"], "malformed");
    assert_eq!(results[2503]["error"]["code"], "malformed");
    // Only the rejected ones, with their index.
    let (_, body) = app
        .call("POST", "/v1/votes/batch?results=rejected", Some(json!({"votes": [{"poll_id": poll, "option_id": 0, "voter_id": "x"}, {"poll_id": poll, "option_id": 9, "voter_id": "y"}]})), false)
        .await;
    assert_eq!(
        body["results"],
        json!([{"status": "rejected", "index": 1, "error": {"code": "invalid_option", "message": "option 9 does not exist (this poll has options 0 to 1)"}}])
    );
    app.wait_counts(poll, &[1251, 1250], 10).await;
}

#[tokio::test]
async fn poll_lifecycle_and_operator_auth() {
    let app = spawn_app().await;
    let (s, body) = app
        .call(
            "POST",
            "/v1/polls",
            Some(json!({"title": "x", "options": ["a", "b"]})),
            false,
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    for bad in [
        json!({"title": "", "options": ["a", "b"]}),
        json!({"title": "t", "options": ["a"]}),
        json!({"title": "t", "options": ["a", "a"]}),
        json!({"title": "t", "options": ["a", "b"], "max_choices": 3}),
        json!({"title": "t", "options": ["a", "b"], "closes_at": "tomorrow"}),
    ] {
        let (s, body) = app.call("POST", "/v1/polls", Some(bad.clone()), true).await;
        assert_eq!(s, 422, "{bad} → {body}");
    }
    let (s, body) = app
        .call(
            "POST",
            "/v1/polls",
            Some(json!({"title": "t", "options": ["a", "b", "c"], "max_choices": 2})),
            true,
        )
        .await;
    assert_eq!(s, 201);
    let id = body["id"].as_i64().unwrap();
    assert_eq!(body["state"], "draft");
    let (s, body) = app
        .call(
            "POST",
            "/v1/votes",
            Some(json!({"poll_id": id, "option_id": 0, "voter_id": "early"})),
            false,
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("poll_not_open"))
    );
    let (_, body) = app
        .call("POST", &format!("/v1/polls/{id}/open"), None, true)
        .await;
    assert_eq!(body["state"], "open");
    let (s, _) = app
        .call(
            "POST",
            "/v1/votes",
            Some(json!({"poll_id": id, "option_ids": [0, 2], "voter_id": "multi"})),
            false,
        )
        .await;
    assert_eq!(s, 202);
    let (s, body) = app
        .call(
            "POST",
            "/v1/votes",
            Some(json!({"poll_id": id, "option_ids": [0, 1, 2], "voter_id": "greedy"})),
            false,
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("too_many_choices"))
    );
    let (_, body) = app
        .call("POST", &format!("/v1/polls/{id}/close"), None, true)
        .await;
    assert_eq!(body["state"], "closed");
    let (s, body) = app
        .call(
            "POST",
            "/v1/votes",
            Some(json!({"poll_id": id, "option_id": 0, "voter_id": "late"})),
            false,
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("poll_closed"))
    );
    let (s, _) = app
        .call("POST", &format!("/v1/polls/{id}/open"), None, true)
        .await;
    assert_eq!(s, 409, "a closed poll does not reopen");
    // Final once every partition has counted everything accepted before the close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.results(id).await;
        if r["final"] == true {
            assert_eq!(r["counts"], json!([1, 0, 1]));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never final: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, body) = app
        .call(
            "GET",
            &format!(
                "/v1/s/{}",
                app.call("GET", &format!("/v1/polls/{id}"), None, false)
                    .await
                    .1["slug"]
                    .as_str()
                    .unwrap()
            ),
            None,
            false,
        )
        .await;
    assert_eq!((s, body["id"].as_i64()), (200, Some(id)));
    let (s, _) = app.call("GET", "/v1/polls/424242", None, false).await;
    assert_eq!(s, 404);
    let (s, body) = app.call("GET", "/v1/polls/abc/results", None, false).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("unknown_poll"))
    );
}

#[tokio::test]
async fn embargoed_results_are_hidden_from_the_public_until_reveal() {
    let app = spawn_app().await;
    let (_, body) = app.call("POST", "/v1/polls", Some(json!({"title": "secret", "options": ["a", "b"], "open": true, "visibility": "on_reveal"})), true).await;
    let id = body["id"].as_i64().unwrap();
    assert_eq!(app.vote(id, 1, "v").await.0, 202);
    app.wait_counts(id, &[0, 1], 10).await; // the operator sees it
    let (_, public) = app
        .call("GET", &format!("/v1/polls/{id}/results"), None, false)
        .await;
    assert_eq!(public["hidden"], true);
    assert!(public.get("counts").is_none(), "{public}");
    let (_, tl) = app
        .call("GET", &format!("/v1/polls/{id}/timeline"), None, false)
        .await;
    assert_eq!(tl["windows"], json!([]));
    app.call("POST", &format!("/v1/polls/{id}/reveal"), None, true)
        .await;
    let (_, public) = app
        .call("GET", &format!("/v1/polls/{id}/results"), None, false)
        .await;
    assert_eq!(public["counts"], json!([0, 1]));
    let (_, tl) = app
        .call("GET", &format!("/v1/polls/{id}/timeline"), None, false)
        .await;
    assert_eq!(tl["windows"][0]["votes"], 1);
}

#[tokio::test]
async fn websocket_and_sse_push_a_snapshot_then_growing_versions() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/polls/{poll}/ws", app.addr))
            .await
            .unwrap();
    let first: Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    let viewers: Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(
        viewers,
        json!({"type": "viewers", "count": 1}),
        "a lone viewer is told it is watching"
    );
    assert_eq!(first["type"], "results");
    assert_eq!(first["counts"], json!([0, 0]));
    let sse = app
        .client
        .get(app.url(&format!("/v1/polls/{poll}/sse")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse = sse.bytes_stream();

    for i in 0..30 {
        assert_eq!(app.vote(poll, i % 2, &format!("w{i}")).await.0, 202);
    }
    let mut last_version = first["version"].as_i64().unwrap();
    let mut last_total = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while last_total < 30 {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no update in time")
            .unwrap()
            .unwrap();
        let m: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if m["type"] != "results" {
            continue;
        }
        let v = m["version"].as_i64().unwrap();
        let total = m["total_votes"].as_i64().unwrap();
        assert!(
            v >= last_version && total >= last_total,
            "went backwards: {m}"
        );
        (last_version, last_total) = (v, total);
    }
    assert_eq!(last_total, 30);
    let mut text = String::new();
    while !text.contains("\"total_votes\":30") {
        let chunk = tokio::time::timeout_at(deadline, sse.next())
            .await
            .expect("no SSE update in time")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains("event: results"));
    // Unknown polls are a 404 before any upgrade.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/v1/polls/999/ws", app.addr))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn acknowledged_votes_survive_a_restart() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    for i in 0..50 {
        assert_eq!(app.vote(poll, i % 2, &format!("r{i}")).await.0, 202);
    }
    app.wait_counts(poll, &[25, 25], 10).await;
    let data = app.stop().await;
    let app = spawn_app_in(data, |_| {}).await;
    assert_eq!(
        app.vote(poll, 0, "r0").await.0,
        202,
        "still a duplicate after restart"
    );
    assert_eq!(app.vote(poll, 0, "new").await.0, 202);
    let r = app.wait_counts(poll, &[26, 25], 10).await;
    assert_eq!(r["voters"], 51);
}

/// A graceful stop counts every vote its node acknowledged before its last checkpoint, those its
/// processor had not read yet when the stop began too: the restart reads none again. (Before the
/// partition tasks read on to the end at a stop, it failed in 4 runs of 5: 5–8 read again.)
#[tokio::test]
async fn a_graceful_stop_checkpoints_every_acknowledged_vote() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    // Single votes, each its own group commit, the last of them answered just before the stop:
    // the processor, which reads twice a flush interval, has often not read them yet.
    for i in 0..200 {
        assert_eq!(app.vote(poll, i % 2, &format!("g{i}")).await.0, 202);
    }
    let data = app.stop().await;
    let app = spawn_app_in(data, |_| {}).await;
    wait_ready(&app.client, &app.base, 10).await;
    let read_again = app.metric("crowdtick_processor_records_read_total").await;
    assert_eq!(read_again, 0, "records read again after a graceful stop");
    let r = app.wait_counts(poll, &[100, 100], 10).await;
    assert_eq!(r["voters"], 200);
}

#[tokio::test]
async fn a_vote_that_cannot_be_durable_in_time_gets_503_and_is_not_counted() {
    // A deadline so short the writer always finds it expired: the answer is 503, nothing is written.
    let app = spawn_app_with(|c| c.ingest.deadline_ms = 10).await;
    let poll = app.open_poll(&["A", "B"]).await;
    // Stall the writer with one big batch so the next single vote expires in the queue.
    let big: Vec<Value> = (0..10_000)
        .map(|i| json!({"poll_id": poll, "option_id": 0, "voter_id": format!("{i:0>100}")}))
        .collect();
    let app2 = app.client.clone();
    let url = app.url("/v1/votes/batch");
    let batch = tokio::spawn(async move {
        app2.post(url)
            .bearer_auth(crate::helpers::AGG_KEY)
            .json(&json!({"votes": big}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    let mut statuses = Vec::new();
    for i in 0..200 {
        let (s, body) = app.vote(poll, 1, &format!("s{i}")).await;
        if s == 503 {
            assert_eq!(body["error"]["code"], "unavailable");
        }
        statuses.push(s);
    }
    let batch_status = batch.await.unwrap();
    let acked_b = statuses.iter().filter(|&&s| s == 202).count() as i64;
    assert!(
        statuses.iter().all(|&s| s == 202 || s == 503),
        "{statuses:?}"
    );
    let acked_a = if batch_status == 200 { 10_000 } else { 0 };
    app.wait_counts(poll, &[acked_a, acked_b], 20).await;
}

#[tokio::test]
async fn readiness_names_every_check_of_the_embedded_node() {
    let app = spawn_app().await;
    let checks = wait_ready(&app.client, &app.base, 30).await;
    // One process runs every service: the log, the tallies it follows (filled before the
    // processor starts) and its partitions.
    assert_eq!(checks, ["log", "tallies", "partitions"], "{checks:?}");
    let (status, failing, body) = readiness(&app.client, &app.base).await;
    assert_eq!((status, failing.len()), (200, 0), "{body}");
    assert_eq!(body["status"], "ready");
}
