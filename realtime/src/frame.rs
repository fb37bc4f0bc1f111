//! What a poll's viewers are sent, encoded once per poll and shared by every viewer (pure: no I/O).
//!
//! A [`Frame`] holds, for one moment of one poll, the results message for each audience (the
//! public, and operators and screen-token holders who see embargoed counts) and the viewer-count
//! message, each already encoded for both transports ([`Encoded`]: the SSE event's bytes, and the
//! WebSocket text frame with its header). A viewer's connection only copies the bytes to its
//! socket.
//!
//! Each message carries a sequence number that moves only when the message's bytes change, so a
//! viewer sends a message when its sequence is new. This is also the embargo's rule: while a
//! poll's counts are hidden from the public, the public message holds nothing that moves with the
//! votes (`results::views::results_view`), so it changes (and is sent) only when the poll's state
//! does, and not even the timing of messages tells how busy the poll is.

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use results::views::results_view;
use results::Snapshot;
use schemas::{Poll, Timestamp};
use serde::Serialize;
use std::sync::Arc;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// One message in both transports' encodings.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `event: <name>\ndata: <json>\n\n` (a slice of `sse_chunk`).
    sse: Bytes,
    /// The JSON alone (a slice of `sse_chunk`).
    json: Utf8Bytes,
    /// The whole WebSocket text frame: its header (unmasked, as a server's frames are) and the
    /// JSON, the same bytes for every viewer.
    ws_frame: Bytes,
    /// The SSE event as one HTTP/1.1 chunk (its size line, the event, the chunk's end): what an
    /// event stream's viewer is written in a sweep ([`crate::broadcast`]).
    sse_chunk: Bytes,
}

/// An event stream's keep-alive (an SSE comment line) as a chunk.
pub static KEEP_ALIVE_CHUNK: Bytes = Bytes::from_static(b"3\r\n:\n\n\r\n");

impl Encoded {
    fn new(event: &str, json: &str) -> Self {
        // One buffer: the chunk's size line, the event, the chunk's end.
        let event_len = "event: \ndata: \n\n".len() + event.len() + json.len();
        let mut text = format!("{event_len:x}\r\n");
        let head = text.len();
        text.reserve(event_len + 2);
        text.push_str("event: ");
        text.push_str(event);
        text.push_str("\ndata: ");
        let start = text.len();
        text.push_str(json);
        let end = text.len();
        text.push_str("\n\n\r\n");
        let sse_chunk = Bytes::from(text);
        let sse = sse_chunk.slice(head..head + event_len);
        // A slice of valid UTF-8 at char boundaries: the conversion cannot fail.
        let json = Utf8Bytes::try_from(sse_chunk.slice(start..end)).unwrap_or_default();
        let ws_frame = crate::websocket::server_frame(OpCode::Data(Data::Text), json.as_bytes());
        Self {
            sse_chunk,
            sse,
            json,
            ws_frame,
        }
    }

    /// The Server-Sent Events encoding.
    pub fn sse(&self) -> Bytes {
        self.sse.clone()
    }

    /// The Server-Sent Events encoding as an HTTP/1.1 chunk, ready to write.
    pub fn sse_chunk(&self) -> &Bytes {
        &self.sse_chunk
    }

    /// The WebSocket text frame, ready to write.
    pub fn ws_frame(&self) -> &Bytes {
        &self.ws_frame
    }

    pub fn json(&self) -> &str {
        self.json.as_str()
    }
}

/// A message and the sequence number that moves when its bytes do (the first is 1).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub seq: u64,
    pub message: Encoded,
}

impl Versioned {
    fn next(prev: Option<&Versioned>, event: &str, json: String) -> Self {
        match prev {
            Some(p) if p.message.json() == json => p.clone(),
            _ => Versioned {
                seq: prev.map_or(1, |p| p.seq + 1),
                message: Encoded::new(event, &json),
            },
        }
    }
}

/// One poll's messages at one moment.
#[derive(Debug, Clone)]
pub struct Frame {
    pub poll: Arc<Poll>,
    pub snapshot: Arc<Snapshot>,
    /// The results as the public sees them (hidden while embargoed).
    pub public: Versioned,
    /// The results as operators and screen-token holders see them.
    pub operator: Versioned,
    pub viewers: u64,
    /// `{"type":"viewers","count":n}`
    pub viewers_message: Versioned,
    /// The feed's keep-alive clock: moves every half keep-alive interval, whatever the poll does
    /// ([`crate::feed`]).
    pub beat: u64,
}

impl Frame {
    /// The results message for an audience.
    pub fn results(&self, operator: bool) -> &Versioned {
        if operator {
            &self.operator
        } else {
            &self.public
        }
    }
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
    /// When this node's results board took the tally (µs since the epoch); only with visible
    /// counts. Viewers measure their lag with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<Timestamp>,
}

/// The `/v1` results message: `{"type": "results", …}` (see `results::views::results_view`).
pub fn results_json(poll: &Poll, snapshot: &Snapshot, operator: bool, now: Timestamp) -> String {
    let view = results_view(poll, snapshot, operator, now);
    let updated_at = (!view.hidden).then_some(snapshot.updated_at);
    serde_json::to_string(&Tagged {
        kind: "results",
        body: &view,
        updated_at,
    })
    .unwrap_or_default()
}

/// The `/v1` viewer-count message.
pub fn viewers_json(count: u64) -> String {
    format!(r#"{{"type":"viewers","count":{count}}}"#)
}

/// The frame after `prev` for `poll` with `snapshot` and `viewers` at `now`: each message is
/// encoded once, and keeps its sequence number when its bytes are unchanged.
pub fn render(
    prev: Option<&Frame>,
    poll: Arc<Poll>,
    snapshot: Arc<Snapshot>,
    viewers: u64,
    now: Timestamp,
) -> Frame {
    let public = Versioned::next(
        prev.map(|p| &p.public),
        "results",
        results_json(&poll, &snapshot, false, now),
    );
    let operator = Versioned::next(
        prev.map(|p| &p.operator),
        "results",
        results_json(&poll, &snapshot, true, now),
    );
    let viewers_message = Versioned::next(
        prev.map(|p| &p.viewers_message),
        "viewers",
        viewers_json(viewers),
    );
    Frame {
        poll,
        snapshot,
        public,
        operator,
        viewers,
        viewers_message,
        beat: prev.map_or(0, |p| p.beat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Visibility;

    fn poll(visibility: Visibility, revealed: bool) -> Arc<Poll> {
        Arc::new(Poll {
            id: 1,
            slug: "s".into(),
            title: "t".into(),
            options: vec!["a".into(), "b".into()],
            max_choices: 1,
            visibility,
            opens_at: None,
            closes_at: None,
            opened_at: Some(Timestamp(0)),
            closed_at: None,
            revealed,
            created_at: Timestamp(0),
            creator: None,
            voters: Default::default(),
        })
    }

    fn snap(version: i64, a: i64) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            poll_id: 1,
            version,
            counts: vec![a, 0],
            voters: a,
            offsets: vec![schemas::Offset(a)],
            updated_at: Timestamp(1_000 + version),
            ..Default::default()
        })
    }

    #[test]
    fn hidden_results_move_only_with_the_polls_state_and_operators_see_every_change() {
        let hidden = poll(Visibility::OnReveal, false);
        let first = render(None, hidden.clone(), snap(1, 1), 1, Timestamp(5));
        assert_eq!((first.public.seq, first.operator.seq), (1, 1));
        let public = first.public.message.json();
        assert!(public.contains(r#""hidden":true"#), "{public}");
        for banned in ["version", "offsets", "updated_at", "counts"] {
            assert!(!public.contains(banned), "{banned} in {public}");
        }
        let mut frame = first.clone();
        for v in 2..10 {
            frame = render(Some(&frame), hidden.clone(), snap(v, v), 1, Timestamp(5));
            assert_eq!(frame.public.seq, 1, "the hidden message did not move");
            assert_eq!(frame.operator.seq, v as u64, "operators see each change");
            let op = frame.operator.message.json();
            assert!(op.contains(&format!(r#""version":{v}"#)), "{op}");
            assert!(
                op.contains(&format!(r#""updated_at":{}"#, 1_000 + v)),
                "{op}"
            );
        }
        let revealed = render(
            Some(&frame),
            poll(Visibility::OnReveal, true),
            snap(9, 9),
            1,
            Timestamp(5),
        );
        assert_eq!(revealed.public.seq, 2);
        assert!(revealed.public.message.json().contains(r#""version":9"#));
    }

    #[test]
    fn live_results_are_public_and_the_viewer_count_moves_only_when_it_changes() {
        let live = poll(Visibility::Live, false);
        let a = render(None, live.clone(), snap(1, 1), 3, Timestamp(5));
        let b = render(Some(&a), live.clone(), snap(2, 2), 3, Timestamp(5));
        assert_eq!(b.public.seq, 2);
        assert_eq!(b.viewers_message.seq, a.viewers_message.seq);
        let c = render(Some(&b), live, snap(2, 2), 4, Timestamp(5));
        assert_eq!(c.public.seq, 2, "same results, same message");
        assert_eq!(c.viewers_message.seq, a.viewers_message.seq + 1);
        assert_eq!(
            c.viewers_message.message.json(),
            r#"{"type":"viewers","count":4}"#
        );
    }

    #[test]
    fn both_encodings_share_one_buffer_and_are_well_formed() {
        let e = Encoded::new("results", r#"{"a":1}"#);
        assert_eq!(&e.sse()[..], b"event: results\ndata: {\"a\":1}\n\n");
        assert_eq!(e.json(), r#"{"a":1}"#);
        let sse = e.sse();
        let inside = sse.as_ptr_range();
        assert!(inside.contains(&e.json().as_ptr()), "one buffer");
        // FIN and text, unmasked, length 7.
        assert_eq!(&e.ws_frame()[..], b"\x81\x07{\"a\":1}");
    }

    #[test]
    fn an_events_chunk_is_its_size_in_hex_the_event_and_the_chunks_end() {
        let long = "x".repeat(300);
        // What a chunk carries, by its size line.
        let payload = |chunk: &Bytes| {
            let chunk = std::str::from_utf8(chunk).unwrap().to_owned();
            let (size, rest) = chunk.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            assert_eq!(rest.len(), size + 2, "{chunk:?}");
            assert!(rest.ends_with("\r\n"), "{chunk:?}");
            rest[..size].to_owned()
        };
        for json in ["{}", long.as_str()] {
            let encoded = Encoded::new("results", json);
            let sse = format!("event: results\ndata: {json}\n\n");
            assert_eq!(encoded.sse, sse.as_bytes());
            assert_eq!(encoded.json(), json);
            assert_eq!(payload(encoded.sse_chunk()), sse);
        }
        assert_eq!(payload(&KEEP_ALIVE_CHUNK), ":\n\n");
    }
}
