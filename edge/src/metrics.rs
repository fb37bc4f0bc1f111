//! `GET /metrics` for every node: a [`prometheus_client`] registry into which each service
//! registers a collector of its own counters (`Ingest::register_metrics`, …), rendered in the
//! Prometheus text format. The process and the accept loop register theirs here.

use crate::listener::HttpMetrics;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use storage::metrics::{counters, gauges, register};

/// A node's metrics: the registry its services registered their collectors in, and what must
/// be read (I/O) before a scrape is rendered.
#[derive(Default)]
pub struct NodeMetrics {
    pub registry: Registry,
    before_scrape: Vec<Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>,
}

impl NodeMetrics {
    /// Runs `refresh` before each scrape (e.g. reading the log's high watermarks).
    pub fn before_scrape<F, Fut>(&mut self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.before_scrape
            .push(Box::new(move || Box::pin(refresh())));
    }
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render(State(metrics): State<Arc<NodeMetrics>>) -> Response {
    for refresh in &metrics.before_scrape {
        refresh().await;
    }
    let mut out = String::with_capacity(8192);
    match prometheus_text::encode(&mut out, &metrics.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], out).into_response(),
        Err(_) => crate::ApiError::internal("the metrics could not be rendered").into_response(),
    }
}

/// The process's own figures: `process_resident_memory_bytes`.
#[derive(Debug)]
pub struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauges(
            &mut encoder,
            &[(
                "process_resident_memory_bytes",
                "Resident memory of this process.",
                resident_memory_bytes() as i64,
            )],
        )
    }
}

/// Resident memory of this process in bytes (Linux: `VmRSS` of /proc/self/status; 0 elsewhere).
pub fn resident_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    vm_rss_kib(&status).map_or(0, |kb| kb * 1024)
}

/// The `VmRSS` line of a `/proc/<pid>/status` text, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The accept loop's counters (`crowdtick_http_*`).
#[derive(Debug)]
struct HttpCollector(Arc<HttpMetrics>);

impl HttpMetrics {
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        register(registry, ProcessMetrics);
        register(registry, HttpCollector(self.clone()));
    }
}

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let h = &self.0;
        gauges(
            &mut encoder,
            &[
                (
                    "crowdtick_http_connections",
                    "HTTP connections open, WebSocket and SSE viewers included.",
                    h.connections_open.load(Relaxed) as i64,
                ),
                (
                    "crowdtick_http_max_connections",
                    "The cap on open connections (http.max_connections, or the open-file limit less a reserve).",
                    h.max_connections.load(Relaxed) as i64,
                ),
            ],
        )?;
        counters(
            &mut encoder,
            &[
                ("crowdtick_http_connections_accepted", "HTTP connections accepted.", &h.connections_accepted),
                (
                    "crowdtick_http_accept_descriptor_errors",
                    "Accepts that failed for want of file descriptors (the loop pauses, never spins).",
                    &h.accept_descriptor_errors,
                ),
                (
                    "crowdtick_http_header_timeouts",
                    "Connections closed because headers (or the next request when kept alive) came too late.",
                    &h.header_timeouts,
                ),
                (
                    "crowdtick_http_event_streams",
                    "Event streams (SSE) served on connections of their own, without the HTTP server's buffers.",
                    &h.event_streams,
                ),
                (
                    "crowdtick_http_event_streams_through_hyper",
                    "Event streams (SSE) answered through the HTTP server: asked for on a connection that carried other requests first (a kept-alive or pooled one), or in a head the listener did not take; the server writes the head and hands the socket back (a HEAD, or a request with a body, it answers whole).",
                    &h.event_streams_through_hyper,
                ),
                (
                    "crowdtick_http_write_stalls",
                    "Connections closed because a write waited http.write_stall_timeout_ms for the client to make room.",
                    &h.write_stalls,
                ),
            ],
        )?;
        let mut refused = encoder.encode_descriptor(
            "crowdtick_http_connections_refused",
            "Connections refused at accept, by cap.",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in [
            ("total", &h.refused_total_cap),
            ("address", &h.refused_address_cap),
        ] {
            ConstCounter::new(value.load(Relaxed))
                .encode(refused.encode_family(&[("reason", reason)])?)?;
        }
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        if let Some(dropped) = listen_overflows(&netstat) {
            ConstCounter::new(dropped).encode(encoder.encode_descriptor(
                "crowdtick_http_listen_overflows",
                "Handshake packets the kernel dropped because a listen backlog was full (their client tries again a second later; \
                 one slow connect can count more than once): the kernel's TcpExt ListenOverflows for this node's network \
                 namespace, so every listener in it (in a pod, this node's alone; nodes sharing a host report the same \
                 number, so do not sum them). Rising: raise http.listen_backlog and net.core.somaxconn, or add nodes.",
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

/// The kernel's `ListenOverflows` from a `/proc/net/netstat` text (a `TcpExt:` line of names
/// followed by one of values); `None` where the kernel does not count them.
pub fn listen_overflows(netstat: &str) -> Option<u64> {
    let mut tcp_ext = netstat.lines().filter_map(|l| l.strip_prefix("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_loop_s_counters_render_under_their_names() {
        let http = Arc::new(HttpMetrics::default());
        http.header_timeouts.store(3, Relaxed);
        http.refused_address_cap.store(2, Relaxed);
        http.connections_open.store(7, Relaxed);
        let mut registry = Registry::default();
        http.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE crowdtick_http_header_timeouts_total counter",
            "crowdtick_http_header_timeouts_total 3",
            "crowdtick_http_connections_refused_total{reason=\"address\"} 2",
            "crowdtick_http_connections_refused_total{reason=\"total\"} 0",
            "# TYPE crowdtick_http_connections gauge",
            "crowdtick_http_connections 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(rss.is_some_and(|b| b > 0), "{text}");
    }

    #[test]
    fn listen_overflows_are_read_from_the_kernels_netstat_text() {
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\n\
                       TcpExt: 3093 1160 11384 11384\n\
                       IpExt: InNoRoutes ListenOverflows\n\
                       IpExt: 0 7\n";
        assert_eq!(listen_overflows(netstat), Some(11384));
        assert_eq!(
            listen_overflows("TcpExt: SyncookiesSent\nTcpExt: 1\n"),
            None
        );
        assert_eq!(listen_overflows(""), None);
        // Where the kernel counts them (Linux), the node exports the kernel's count.
        let here = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        if listen_overflows(&here).is_some() {
            let mut registry = Registry::default();
            Arc::new(HttpMetrics::default()).register_metrics(&mut registry);
            let mut text = String::new();
            prometheus_text::encode(&mut text, &registry).unwrap();
            assert!(
                text.lines()
                    .any(|l| l.starts_with("crowdtick_http_listen_overflows_total ")),
                "{text}"
            );
        }
    }

    #[test]
    fn vm_rss_is_read_from_the_status_text() {
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }
}
