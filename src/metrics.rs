//! `GET /metrics`: Prometheus text exposition of the log, edge, processor and realtime counters.

use crate::app_state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

fn counter(out: &mut String, name: &str, help: &str, v: &AtomicU64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
        v.load(Ordering::Relaxed)
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &ingest::latency::LatencyHistogram) {
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in buckets {
        let le = le.map_or_else(|| "+Inf".to_owned(), |s| s.to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
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

pub async fn render(State(s): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    gauge(
        &mut out,
        "process_resident_memory_bytes",
        "Resident memory of this process.",
        resident_memory_bytes(),
    );
    let h = &s.http_metrics;
    gauge(
        &mut out,
        "crowdtick_http_connections",
        "HTTP connections open, WebSocket and SSE viewers included.",
        h.connections_open.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "crowdtick_http_max_connections",
        "The cap on open connections (http.max_connections, or the open-file limit less a reserve).",
        h.max_connections.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "crowdtick_http_connections_accepted_total",
        "HTTP connections accepted.",
        &h.connections_accepted,
    );
    let _ = writeln!(
        out,
        "# HELP crowdtick_http_connections_refused_total Connections refused at accept, by cap.\n\
         # TYPE crowdtick_http_connections_refused_total counter\n\
         crowdtick_http_connections_refused_total{{reason=\"total\"}} {}\n\
         crowdtick_http_connections_refused_total{{reason=\"address\"}} {}",
        h.refused_total_cap.load(Ordering::Relaxed),
        h.refused_address_cap.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "crowdtick_http_accept_descriptor_errors_total",
        "Accepts that failed for want of file descriptors (the loop pauses, never spins).",
        &h.accept_descriptor_errors,
    );
    counter(
        &mut out,
        "crowdtick_http_header_timeouts_total",
        "Connections closed because headers (or the next request when kept alive) came too late.",
        &h.header_timeouts,
    );
    counter(
        &mut out,
        "crowdtick_http_write_stalls_total",
        "Connections closed because a write waited http.write_stall_timeout_ms for the client to make room.",
        &h.write_stalls,
    );
    if let Some(r) = &s.registry_metrics {
        counter(
            &mut out,
            "crowdtick_schema_registry_records_framed_total",
            "Records appended to Kafka in the Confluent wire format (magic byte, schema id, datum).",
            &r.records_framed,
        );
        counter(
            &mut out,
            "crowdtick_schema_registry_records_bare_total",
            "Records read without the wire-format header (written before the registry was on).",
            &r.records_bare,
        );
        counter(
            &mut out,
            "crowdtick_schema_registry_records_transcoded_total",
            "Records read that another schema version wrote, decoded by its id and resolved to CrowdTick's.",
            &r.records_transcoded,
        );
        counter(
            &mut out,
            "crowdtick_schema_registry_records_unreadable_total",
            "Records read that no schema could turn into CrowdTick's (handed on empty, never counted).",
            &r.records_unreadable,
        );
    }
    if let Some(l) = &s.log_metrics {
        counter(
            &mut out,
            "crowdtick_log_records_appended_total",
            "Records made durable in the embedded log.",
            &l.records_appended,
        );
        counter(
            &mut out,
            "crowdtick_log_bytes_appended_total",
            "Bytes made durable in the embedded log.",
            &l.bytes_appended,
        );
        counter(
            &mut out,
            "crowdtick_log_group_commits_total",
            "Group commits (one write + fsync round).",
            &l.group_commits,
        );
        counter(
            &mut out,
            "crowdtick_log_fsyncs_total",
            "fdatasync calls.",
            &l.fsyncs,
        );
        counter(
            &mut out,
            "crowdtick_log_appends_expired_total",
            "Append requests dropped unwritten because their deadline passed.",
            &l.appends_expired,
        );
        counter(
            &mut out,
            "crowdtick_log_appends_rejected_full_total",
            "Append requests refused because the queue was full.",
            &l.appends_rejected_full,
        );
    }
    if let Some(ingest) = &s.ingest {
        let i = &ingest.metrics;
        counter(
            &mut out,
            "crowdtick_ingest_requests_total",
            "Single-vote requests.",
            &i.requests,
        );
        counter(
            &mut out,
            "crowdtick_ingest_batch_requests_total",
            "Batch requests.",
            &i.batch_requests,
        );
        counter(
            &mut out,
            "crowdtick_ingest_votes_accepted_total",
            "Votes acknowledged (durable).",
            &i.votes_accepted,
        );
        counter(
            &mut out,
            "crowdtick_ingest_votes_rejected_total",
            "Votes refused with a 4xx.",
            &i.votes_rejected,
        );
        counter(
            &mut out,
            "crowdtick_ingest_votes_unavailable_total",
            "Votes answered 503 (not written).",
            &i.votes_unavailable,
        );
        counter(
            &mut out,
            "crowdtick_ingest_append_wait_microseconds_total",
            "Time votes waited to become durable.",
            &i.append_wait_us,
        );
        histogram(
            &mut out,
            "crowdtick_ingest_vote_duration_seconds",
            "Time acknowledged votes waited to become durable (append to acknowledgement).",
            &i.durable_latency,
        );
        histogram(
            &mut out,
            "crowdtick_ingest_vote_sojourn_seconds",
            "Single votes acknowledged: from the kernel's receipt of the request to the 202 (what this node's queues cost them).",
            &i.sojourn_latency,
        );
        let a = &ingest.admission;
        counter(
            &mut out,
            "crowdtick_ingest_votes_shed_in_flight_total",
            "Votes shed (503) because the edge held as many votes in flight as it may.",
            &a.shed_in_flight,
        );
        counter(
            &mut out,
            "crowdtick_ingest_votes_shed_queue_delay_total",
            "Votes shed (503) because the log's queueing delay stood above its target.",
            &a.shed_delay,
        );
        counter(
            &mut out,
            "crowdtick_ingest_requests_shed_wait_total",
            "Vote requests shed (503) because they waited too long for this node (from the kernel's receipt of their bytes).",
            &a.wait.shed,
        );
        counter(
            &mut out,
            "crowdtick_ingest_read_pauses_total",
            "Times this node stopped reading new requests to answer the vote requests it held (ingest.pause_reads_in_flight).",
            &a.read_gate.pauses,
        );
        counter(
            &mut out,
            "crowdtick_ingest_read_pauses_cut_short_total",
            "Read pauses ended by their 250 ms limit before half the vote appends were answered (a slow log).",
            &a.read_gate.pauses_cut_short,
        );
        gauge(
            &mut out,
            "crowdtick_ingest_reads_paused",
            "1 while this node reads no new requests until half the vote requests it holds are answered.",
            a.read_gate.is_closed() as u64,
        );
        gauge(
            &mut out,
            "crowdtick_ingest_overloaded",
            "1 while no vote request has met ingest.shed_wait_target_ms for ingest.shed_wait_interval_ms (requests past the target are shed).",
            a.wait.is_overloaded(std::time::Instant::now()) as u64,
        );
        gauge(
            &mut out,
            "crowdtick_ingest_votes_in_flight",
            "Votes accepted by the edge and not yet durable or refused.",
            a.in_flight() as u64,
        );
        gauge(
            &mut out,
            "crowdtick_ingest_shedding",
            "1 while the edge sheds votes because the log has a standing queue.",
            a.is_shedding() as u64,
        );
    }
    let p = &s.processor_metrics;
    counter(
        &mut out,
        "crowdtick_processor_records_read_total",
        "Votes-topic records read (replays included).",
        &p.records_read,
    );
    counter(
        &mut out,
        "crowdtick_processor_votes_counted_total",
        "Votes counted.",
        &p.votes_counted,
    );
    counter(
        &mut out,
        "crowdtick_processor_votes_counted_late_for_window_total",
        "Votes counted after their window closed.",
        &p.votes_counted_late_for_window,
    );
    counter(
        &mut out,
        "crowdtick_processor_votes_duplicate_total",
        "Votes not counted: voter already counted.",
        &p.votes_duplicate,
    );
    counter(
        &mut out,
        "crowdtick_processor_votes_rejected_total",
        "Votes not counted: late, closed or invalid.",
        &p.votes_rejected,
    );
    counter(
        &mut out,
        "crowdtick_processor_records_undecodable_total",
        "Records that were not decodable votes.",
        &p.records_undecodable,
    );
    counter(
        &mut out,
        "crowdtick_processor_partials_emitted_total",
        "Partial tallies published.",
        &p.partials_emitted,
    );
    counter(
        &mut out,
        "crowdtick_processor_restarts_total",
        "Partition task restarts after an error.",
        &p.restarts,
    );
    counter(
        &mut out,
        "crowdtick_processor_catalog_rereads_total",
        "Poll catalog re-reads because a vote named a poll changed elsewhere.",
        &p.catalog_rereads,
    );
    counter(
        &mut out,
        "crowdtick_processor_cache_write_failures_total",
        "Flushes whose results-cache write failed (retried at the next flush).",
        &p.cache_write_failures,
    );
    for (name, help, value) in [
        (
            "crowdtick_processor_checkpoints_written_total",
            "Partition checkpoints written to the tally store.",
            &p.checkpoints_written,
        ),
        (
            "crowdtick_processor_checkpoint_bytes_total",
            "Bytes of partition checkpoints written.",
            &p.checkpoint_bytes,
        ),
        (
            "crowdtick_processor_checkpoint_failures_total",
            "Checkpoint writes that failed (retried at the next interval).",
            &p.checkpoint_failures,
        ),
        (
            "crowdtick_processor_checkpoints_restored_total",
            "Partitions whose state was restored from a checkpoint instead of replayed.",
            &p.checkpoints_restored,
        ),
    ] {
        counter(&mut out, name, help, value);
    }
    if let Some(rt) = &s.realtime {
        gauge(
            &mut out,
            "crowdtick_realtime_connections",
            "Open WebSocket/SSE connections.",
            rt.connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "crowdtick_realtime_feeds",
            "Polls being watched (one feed each, rendered once per update for all its viewers).",
            rt.feeds() as u64,
        );
        counter(
            &mut out,
            "crowdtick_realtime_messages_sent_total",
            "Live messages sent.",
            &rt.messages_sent,
        );
        counter(
            &mut out,
            "crowdtick_realtime_slow_consumers_dropped_total",
            "Live clients disconnected for not taking a message within realtime.send_timeout_ms.",
            &rt.slow_consumers_dropped,
        );
    }
    if let Some(log) = &s.log {
        let positions = s.processor_metrics.positions.lock().clone();
        let _ = writeln!(out, "# HELP crowdtick_log_high_watermark Records in each votes partition.\n# TYPE crowdtick_log_high_watermark gauge");
        let mut lags = Vec::new();
        for part in 0..log.partitions(storage::Topic::Votes) {
            let hw = log
                .high_watermark(storage::Topic::Votes, part)
                .await
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "crowdtick_log_high_watermark{{topic=\"votes\",partition=\"{part}\"}} {hw}"
            );
            if let Some(&pos) = positions.get(&part) {
                lags.push((part, hw.saturating_sub(pos)));
            }
        }
        let _ = writeln!(out, "# HELP crowdtick_processor_lag_records Records of an owned votes partition not yet processed here.\n# TYPE crowdtick_processor_lag_records gauge");
        for (part, lag) in lags {
            let _ = writeln!(
                out,
                "crowdtick_processor_lag_records{{partition=\"{part}\"}} {lag}"
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
