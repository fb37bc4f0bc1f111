//! Vote-to-screen latency (`--screen-latency`): one WebSocket per poll, as a results screen would
//! hold, records when each `results` message arrived and the per-partition offsets it reflects.
//! A vote whose receipt says (partition p, offset o) reached the screen with the first message
//! where `offsets[p] > o`; its latency runs from the vote's intended (open loop) or send (closed
//! loop) time to that message.

use crate::client::Target;
use crate::polls::PollInfo;
use crate::report::new_histogram;
use crate::run::Receipt;
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// (arrival, offsets) of each results message of one poll, in arrival order.
type Seen = Vec<(Instant, Vec<u64>)>;

pub struct ScreenWatch {
    tasks: Vec<JoinHandle<Seen>>,
    stop: watch::Sender<bool>,
}

impl ScreenWatch {
    pub async fn start(target: &Target, key: &str, polls: &[PollInfo]) -> anyhow::Result<Self> {
        let base = target.url.replacen("http://", "ws://", 1);
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for p in polls {
            let ws_url = format!("{base}/v1/polls/{}/ws", p.id);
            // The operator key goes in a header (the server refuses keys in URLs).
            let mut request = ws_url
                .as_str()
                .into_client_request()
                .map_err(|e| anyhow::anyhow!("WebSocket {ws_url}: {e}"))?;
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {key}")
                    .parse()
                    .map_err(|e| anyhow::anyhow!("the operator key is not a header value: {e}"))?,
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| anyhow::anyhow!("WebSocket {ws_url}: {e}"))?;
            let mut stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Seen::new();
                loop {
                    tokio::select! {
                        msg = ws.next() => match msg {
                            Some(Ok(m)) if m.is_text() => {
                                let at = Instant::now();
                                if let Some(offsets) = offsets_of(m.to_text().unwrap_or_default()) {
                                    seen.push((at, offsets));
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        _ = stop_rx.changed() => break,
                    }
                }
                seen
            }));
        }
        Ok(Self { tasks, stop })
    }

    /// Waits up to `grace` for the last updates, then computes each receipt's latency. Returns
    /// the histogram and how many votes were never seen.
    pub async fn finish(self, receipts: &[Receipt], grace: Duration) -> (Histogram<u64>, u64) {
        tokio::time::sleep(grace).await;
        let _ = self.stop.send(true);
        let mut seen_per_poll = Vec::new();
        for t in self.tasks {
            seen_per_poll.push(t.await.unwrap_or_default());
        }
        latencies(&seen_per_poll, receipts)
    }
}

/// The offsets of a `results` message.
fn offsets_of(text: &str) -> Option<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v["type"] != "results" {
        return None;
    }
    Some(
        v["offsets"]
            .as_array()?
            .iter()
            .map(|x| x.as_u64().unwrap_or(0))
            .collect(),
    )
}

fn latencies(seen_per_poll: &[Seen], receipts: &[Receipt]) -> (Histogram<u64>, u64) {
    let mut hist = new_histogram();
    let mut unseen = 0u64;
    for r in receipts {
        let Some(seen) = seen_per_poll.get(r.poll as usize) else {
            continue;
        };
        let p = r.partition as usize;
        // Offsets only grow, so the first covering message is found by binary search.
        let i = seen.partition_point(|(_, offs)| offs.get(p).copied().unwrap_or(0) <= r.offset);
        match seen.get(i) {
            Some((at, _)) => {
                hist.saturating_record(
                    at.saturating_duration_since(r.from).as_micros().max(1) as u64
                );
            }
            None => unseen += 1,
        }
    }
    (hist, unseen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_covering_message_counts() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let seen = vec![vec![
            (ms(10), vec![0, 0]),
            (ms(20), vec![3, 1]),
            (ms(30), vec![5, 2]),
        ]];
        let r = |partition, offset| Receipt {
            poll: 0,
            partition,
            offset,
            from: t0,
        };
        let (h, unseen) = latencies(&seen, &[r(0, 2), r(1, 1), r(0, 9)]);
        assert_eq!(unseen, 1);
        assert_eq!(h.len(), 2);
        assert!((h.min() as i64 - 20_000).abs() < 50, "{}", h.min());
        assert!((h.max() as i64 - 30_000).abs() < 50, "{}", h.max());
        assert_eq!(
            offsets_of(r#"{"type":"results","offsets":[1,2]}"#),
            Some(vec![1, 2])
        );
        assert_eq!(offsets_of(r#"{"type":"viewers","count":3}"#), None);
    }
}
