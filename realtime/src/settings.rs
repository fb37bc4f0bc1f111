//! [`RealtimeSection`]: the `[realtime]` section of the configuration file, as written, and the
//! [`Settings`] the service runs on.

use crate::Settings;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSection {
    /// At most one results update per poll per this many milliseconds (rendered once, shared by
    /// every viewer of the poll).
    pub coalesce_ms: u64,
    /// Web origins (`https://partner.example.com`) whose pages may open WebSockets besides the
    /// server's own and `public_url`'s; `["*"]`: any. Clients that send no Origin are not pages.
    pub allowed_origins: Vec<String>,
    /// A WebSocket client that does not take a message within this is disconnected (counted in
    /// `crowdtick_realtime_slow_consumers_dropped_total`); every connection, SSE included, also
    /// meets `http.write_stall_timeout_ms`.
    pub send_timeout_ms: u64,
    /// The kernel send buffer of each live socket (SO_SNDBUF; Linux doubles it): small, so a
    /// slow viewer is behind by little more than one frame; 0: the kernel's own (autotuned).
    pub socket_send_buffer_bytes: u32,
    /// Threads that serve WebSocket viewers, apart from the vote path (0: share its runtime).
    pub fanout_threads: usize,
    /// How many nice levels lower the fan-out threads run than the rest of the node, so votes
    /// get the cores first and viewers skip frames when there is not enough left (0: the same).
    pub fanout_nice: i32,
}

impl RealtimeSection {
    pub fn settings(&self) -> Settings {
        Settings {
            coalesce: Duration::from_millis(self.coalesce_ms),
            send_timeout: Duration::from_millis(self.send_timeout_ms.max(1)),
            socket_send_buffer: self.socket_send_buffer_bytes,
            fanout_threads: self.fanout_threads,
            fanout_nice: self.fanout_nice,
        }
    }
}

impl Default for RealtimeSection {
    fn default() -> Self {
        Self {
            coalesce_ms: 100,
            allowed_origins: Vec::new(),
            send_timeout_ms: 5_000,
            socket_send_buffer_bytes: 8_192,
            fanout_threads: 1,
            fanout_nice: 10,
        }
    }
}
