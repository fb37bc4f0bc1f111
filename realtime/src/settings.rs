//! [`RealtimeSection`]: the `[realtime]` section of the configuration file, as written, and the
//! [`Settings`] the service runs on.

use crate::Settings;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSection {
    /// The interval between a viewer's results updates when the node's audience is large, in
    /// milliseconds: about the longest a change waits to reach a viewer (each render is encoded
    /// once and shared by the viewers swept with it; a poll with many viewers is rendered more
    /// often, for its shards of viewers in turn).
    pub coalesce_ms: u64,
    /// The shortest interval between a viewer's updates, when the node's audience is small (a
    /// studio screen sees a vote sooner), and between a poll's renders with any audience;
    /// `coalesce_ms` when it is above it.
    pub min_coalesce_ms: u64,
    /// Frames per second the node aims to send across all its viewers: the interval between a
    /// viewer's updates is the node's viewers divided by this, between `min_coalesce_ms` and
    /// `coalesce_ms` (0: always `coalesce_ms`).
    pub frame_budget: u64,
    /// Web origins (`https://partner.example.com`) whose pages may open WebSockets besides the
    /// server's own and `public_url`'s; `["*"]`: any. Clients that send no Origin are not pages.
    pub allowed_origins: Vec<String>,
    /// A WebSocket or SSE client that does not take a message within this is disconnected
    /// (counted in `crowdtick_realtime_slow_consumers_dropped_total`); an event stream the listener
    /// does not hand over (HTTP/1.0), like every response, meets `http.write_stall_timeout_ms`.
    pub send_timeout_ms: u64,
    /// The kernel send buffer of each live socket (SO_SNDBUF; Linux doubles it): small, so a
    /// slow viewer is behind by little more than one frame; 0: the kernel's own (autotuned).
    pub socket_send_buffer_bytes: u32,
    /// Threads that serve WebSocket viewers and event streams, apart from the vote path (0: share
    /// its runtime).
    pub fanout_threads: usize,
    /// How many nice levels lower the fan-out threads run than the rest of the node, so votes
    /// get the cores first and viewers skip frames when there is not enough left (0: the same).
    pub fanout_nice: i32,
    /// An event stream that sends nothing for this long gets a comment line, so proxies keep it
    /// open: the poll's keep-alive clock beats every half this, and a stream quiet for two beats
    /// (between half this and this) sends it (0: none; at most a day).
    pub sse_keep_alive_secs: u64,
}

impl RealtimeSection {
    pub fn settings(&self) -> Settings {
        Settings {
            coalesce: Duration::from_millis(self.coalesce_ms),
            min_coalesce: Duration::from_millis(self.min_coalesce_ms),
            frame_budget: self.frame_budget,
            send_timeout: Duration::from_millis(self.send_timeout_ms.max(1)),
            socket_send_buffer: self.socket_send_buffer_bytes,
            fanout_threads: self.fanout_threads,
            fanout_nice: self.fanout_nice,
            // At most a day: the feed's clock counts from now.
            sse_keep_alive: Duration::from_secs(self.sse_keep_alive_secs.min(86_400)),
        }
    }
}

impl Default for RealtimeSection {
    fn default() -> Self {
        Self {
            coalesce_ms: 200,
            min_coalesce_ms: 25,
            // What a node's WebSocket viewers were delivered with votes flowing beside them on
            // the 2-core machine (BENCHMARKS.md, "(fifth session): a frame budget"): at 150,000
            // both the votes and the viewers' lag paid for the frames it could not send.
            frame_budget: 75_000,
            allowed_origins: Vec::new(),
            send_timeout_ms: 5_000,
            socket_send_buffer_bytes: 8_192,
            fanout_threads: 1,
            fanout_nice: 10,
            sse_keep_alive_secs: 15,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_interval_grows_with_the_audience_between_its_bounds() {
        let s = RealtimeSection::default().settings();
        assert_eq!(s.coalesce_for(0), Duration::from_millis(25));
        assert_eq!(s.coalesce_for(1), Duration::from_millis(25));
        // 75,000 frames/s over 3,750 viewers: 20 frames each, every 50 ms.
        assert_eq!(s.coalesce_for(3_750), Duration::from_millis(50));
        assert_eq!(s.coalesce_for(7_500), Duration::from_millis(100));
        assert_eq!(s.coalesce_for(15_000), Duration::from_millis(200));
        assert_eq!(s.coalesce_for(100_000), Duration::from_millis(200));
        assert_eq!(s.coalesce_for(u64::MAX), Duration::from_millis(200));
        let fixed = RealtimeSection {
            frame_budget: 0,
            ..Default::default()
        };
        assert_eq!(fixed.settings().coalesce_for(1), Duration::from_millis(200));
    }

    #[test]
    fn a_shortest_interval_above_the_longest_is_the_longest() {
        // A configuration from before `min_coalesce_ms` with `coalesce_ms` below its default.
        let s = RealtimeSection {
            coalesce_ms: 20,
            ..Default::default()
        }
        .settings();
        assert_eq!(s.coalesce_for(1), Duration::from_millis(20));
        assert_eq!(s.coalesce_for(1_000_000), Duration::from_millis(20));
    }

    proptest! {
        /// Within its bounds, monotone in the audience, and within the frame budget whenever the
        /// shortest interval does not hold it up.
        #[test]
        fn the_interval_keeps_the_node_within_its_frame_budget(
            min in 0u64..500, extra in 0u64..2_000, budget in 1u64..1_000_000,
            viewers in 0u64..10_000_000, more in 0u64..1_000_000,
        ) {
            let s = RealtimeSection {
                coalesce_ms: min + extra,
                min_coalesce_ms: min,
                frame_budget: budget,
                ..Default::default()
            }
            .settings();
            let d = s.coalesce_for(viewers);
            prop_assert!(d >= s.min_coalesce && d <= s.coalesce);
            prop_assert!(s.coalesce_for(viewers + more) >= d);
            if d > s.min_coalesce && d < s.coalesce {
                let frames_per_s = viewers as f64 / d.as_secs_f64();
                prop_assert!(frames_per_s <= budget as f64, "{frames_per_s} > {budget}");
            }
        }
    }
}
