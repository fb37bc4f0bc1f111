//! Sending to one live client: what is worth sending ([`Outbox`]) and the deadline a client has
//! to take it ([`Realtime::send_timeout`](crate::Realtime)).
//!
//! - Embargo: while a poll's counts are hidden from a client, its results message holds nothing
//!   that moves with the votes (`query::views::results_view`), and [`Outbox`] sends it only when
//!   it differs from the last one sent, so not even the timing of messages tells how busy the
//!   poll is.
//! - Slow consumers: a WebSocket whose socket does not take a message within the deadline, or an
//!   SSE stream that has not taken the previous event by then, is dropped and counted
//!   (`crowdtick_realtime_slow_consumers_dropped_total`). A slow client costs the server one
//!   connection for at most that long, never a queue.

use crate::Update;

/// Turns updates into the messages one client should get.
#[derive(Debug)]
pub struct Outbox {
    operator: bool,
    /// The last hidden results message sent (only kept while the counts are hidden).
    last_hidden: Option<String>,
}

impl Outbox {
    /// `operator`: the client sees embargoed counts.
    pub fn new(operator: bool) -> Self {
        Self {
            operator,
            last_hidden: None,
        }
    }

    /// The JSON message for `update`, or `None` when the client must not get one.
    pub fn message(&mut self, update: &Update) -> Option<String> {
        let text = update.to_json(self.operator);
        if let Update::Results(poll, _) = update {
            if !self.operator && !poll.results_public(schemas::now_micros()) {
                if self.last_hidden.as_deref() == Some(text.as_str()) {
                    return None;
                }
                self.last_hidden = Some(text.clone());
                return Some(text);
            }
            self.last_hidden = None;
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use processor::Snapshot;
    use schemas::{Poll, Visibility};
    use std::sync::Arc;

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
            opened_at: Some(0),
            closed_at: None,
            revealed,
            created_at: 0,
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
            offsets: vec![a],
            ..Default::default()
        })
    }

    #[test]
    fn hidden_results_are_sent_once_per_state_and_operators_get_every_change() {
        let hidden = poll(Visibility::OnReveal, false);
        let mut public = Outbox::new(false);
        let first = public
            .message(&Update::Results(hidden.clone(), snap(1, 1)))
            .unwrap();
        assert!(first.contains(r#""hidden":true"#), "{first}");
        assert!(!first.contains("version") && !first.contains("offsets"));
        for v in 2..10 {
            assert_eq!(
                public.message(&Update::Results(hidden.clone(), snap(v, v))),
                None
            );
        }
        assert!(public.message(&Update::Viewers(3)).is_some());
        let revealed = public
            .message(&Update::Results(
                poll(Visibility::OnReveal, true),
                snap(9, 9),
            ))
            .unwrap();
        assert!(revealed.contains(r#""version":9"#), "{revealed}");

        let mut operator = Outbox::new(true);
        for v in 1..4 {
            let m = operator
                .message(&Update::Results(hidden.clone(), snap(v, v)))
                .unwrap();
            assert!(m.contains(&format!(r#""version":{v}"#)), "{m}");
        }
        let mut live = Outbox::new(false);
        for v in 1..4 {
            assert!(live
                .message(&Update::Results(poll(Visibility::Live, false), snap(v, v)))
                .is_some());
        }
    }
}
