//! Any text a client sends on the old API's socket (`WS /ws/poll/{id}/`), through its pure reading
//! (`seed_api::ws::read_vote`) and answer (`reply`): never a panic; a vote names exactly
//! one of the poll's labels (as sent, or trimmed); anything else is answered
//! `{"error": sentence, "status": 4xx}`, the status the same vote over HTTP would get.
#![no_main]

use seed_api::ws::{read_vote, reply};
use crowdtick_fuzz::polls;
use libfuzzer_sys::fuzz_target;
use realtime::MAX_CLIENT_MESSAGE_BYTES;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // A text message is UTF-8 within the size limit (the socket closes on anything larger).
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > MAX_CLIENT_MESSAGE_BYTES {
        return;
    }
    for poll in polls() {
        match read_vote(text, Some(&poll)) {
            Ok((voted_on, option)) => {
                assert_eq!(voted_on.id, poll.id);
                let label = &poll.options[option];
                let sent: Value = serde_json::from_str(text).expect("a vote is JSON");
                let choice = sent["choice"].as_str().expect("a vote's choice is a string");
                assert!(
                    label == choice || label == choice.trim(),
                    "{choice:?} voted for {label:?}"
                );
                assert_eq!(
                    reply(Ok(label.clone())),
                    serde_json::json!({"vote": {"choice": label}})
                );
            }
            Err(e) => {
                assert_eq!(e.status.as_u16(), 400, "a message on an existing poll: {e:?}");
                assert_error_reply(&reply(Err(e)), 400);
            }
        }
    }
    match read_vote(text, None) {
        Ok(_) => panic!("a vote on no poll was read"),
        Err(e) => {
            let status = e.status.as_u16();
            assert!(status == 400 || status == 404, "{status}");
            assert_error_reply(&reply(Err(e)), status);
        }
    }
});

fn assert_error_reply(answer: &Value, status: u16) {
    let fields = answer.as_object().expect("an object");
    assert_eq!(fields.len(), 2, "{answer}");
    assert!(!answer["error"].as_str().expect("a sentence").is_empty());
    assert_eq!(answer["status"], status);
}
