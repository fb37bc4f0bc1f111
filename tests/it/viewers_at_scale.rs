//! A measurement, not a check (ignored; `scripts/viewers.sh` runs it): an audience larger than
//! one process may hold files for, on distributed realtime nodes (each follows the tallies topic
//! on its own), while votes flow through a node that takes and counts them on a tansu broker.
//!
//! `CROWDTICK_BENCH_VIEWERS` (default 100000) viewers are spread over as many realtime nodes as
//! the open-file limit needs (at most 18,000 each), each node watched by its own
//! `crowdtick loadgen --viewers-only` process from its own loopback source addresses; meanwhile
//! `crowdtick loadgen` votes at `CROWDTICK_BENCH_VOTE_RATE` (default 10000) per second for
//! `CROWDTICK_BENCH_SECS` (default 20). Prints the viewers held, how fast they were accepted,
//! the realtime nodes' RSS (idle, and the peak while holding), the messages delivered per second,
//! the lag from tally to viewer, the votes' latency, where the machine's CPU went while the
//! votes flowed (the realtime nodes, the votes' node, the load generators, the rest), and where
//! the lag went by the nodes' own histograms (a tally's way through the broker to a node's
//! results board, the results' age when a sweep had written them, how long the sweeps took).
//! `CROWDTICK_BENCH_SERVER`, if set, is the binary every node runs (either side of an A/B,
//! `scripts/viewers.sh BASE CAND`); the load generators are always this build's.

use crate::cluster::{Cluster, Node};
use crate::helpers::{cpu_ticks, machine_ticks, stat_ticks, ScrapedHistogram};
use serde_json::Value;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use storage::test_broker::TansuBroker;

const PER_NODE: usize = 18_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loadgen(args: &[String], log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_crowdtick"))
        .arg("loadgen")
        .args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start crowdtick loadgen")
}

async fn metric_sum(c: &Cluster, nodes: &[Node], name: &str) -> u64 {
    let mut sum = 0;
    for n in nodes {
        let Ok(r) = c.client.get(format!("{}/metrics", n.base)).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}

fn rss_mib(nodes: &[Node]) -> f64 {
    nodes.iter().map(|n| n.rss_kib()).sum::<u64>() as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by scripts/viewers.sh"]
async fn viewers_across_realtime_nodes() {
    let viewers: usize = env_or("CROWDTICK_BENCH_VIEWERS", 100_000);
    let rate: u64 = env_or("CROWDTICK_BENCH_VOTE_RATE", 10_000);
    let secs: u64 = env_or("CROWDTICK_BENCH_SECS", 20);
    let nodes = viewers.div_ceil(PER_NODE);
    let broker = TansuBroker::start();
    let mut c = Cluster::new(broker.addr(), 4);
    if let Ok(server) = std::env::var("CROWDTICK_BENCH_SERVER") {
        c.server = server.into();
    }
    c.env.retain(|(k, _)| k != "RUST_LOG");
    c.env.push(("RUST_LOG".into(), "warn".into()));
    // The votes' side in one process (ingest, processor and query on the broker, PostgreSQL and
    // Redis), so the load generator finds the poll API and the vote API at one address.
    let ingest = c.start("serve").await;
    let poll = c.create_poll(&ingest, 4).await;
    let mut realtime = Vec::new();
    for _ in 0..nodes {
        realtime.push(c.start("realtime").await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(&realtime);

    // One viewer process per node, from addresses of its own (4 each: ~28,000 ports apiece).
    let hold = secs + 10;
    let mut watchers = Vec::new();
    let started = Instant::now();
    for (i, node) in realtime.iter().enumerate() {
        let share = viewers / nodes + usize::from(i < viewers % nodes);
        let report = c.dir.path().join(format!("viewers-{i}.json"));
        let args: Vec<String> = [
            "--url",
            &node.base,
            "--poll-ids",
            &poll.to_string(),
            "--viewers",
            &share.to_string(),
            "--viewers-only",
            "--duration",
            &hold.to_string(),
            "--viewer-first-source",
            &(2 + 4 * i).to_string(),
            "--viewer-sources",
            "4",
            "--quiet",
            "--json-report",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([report.display().to_string()])
        .collect();
        watchers.push((
            loadgen(&args, &c.dir.path().join(format!("viewers-{i}.out"))),
            report,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut held = 0;
    while Instant::now() < deadline {
        held = metric_sum(&c, &realtime, "crowdtick_realtime_connections").await;
        if held as usize >= viewers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let opened_in = started.elapsed();
    if (held as usize) < viewers {
        for i in 0..nodes {
            let out = c.dir.path().join(format!("viewers-{i}.out"));
            eprintln!(
                "viewer process {i}: {}",
                std::fs::read_to_string(out).unwrap_or_default()
            );
        }
    }
    let holding = rss_mib(&realtime);
    eprintln!(
        "bench: {held} of {viewers} viewers on {nodes} realtime nodes in {:.1} s ({:.0}/s); realtime RSS {idle:.0} MiB idle, {holding:.0} MiB holding them ({:.1} KiB per viewer)",
        opened_in.as_secs_f64(),
        held as f64 / opened_in.as_secs_f64(),
        (holding - idle) * 1024.0 / held.max(1) as f64
    );

    // Votes while they watch.
    let votes_report = c.dir.path().join("votes.json");
    let mut votes = loadgen(
        &[
            "--url".into(),
            ingest.base.clone(),
            "--poll-ids".into(),
            poll.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--duration".into(),
            secs.to_string(),
            "--connections".into(),
            "256".into(),
            "--quiet".into(),
            "--json-report".into(),
            votes_report.display().to_string(),
        ],
        &c.dir.path().join("votes.out"),
    );
    let cpu = |w: &[(Child, std::path::PathBuf)], votes: &Child| CpuShares {
        realtime: realtime.iter().map(|n| cpu_ticks(n.pid())).sum(),
        fanout: realtime.iter().map(|n| fanout_ticks(n.pid())).sum(),
        votes_node: cpu_ticks(ingest.pid()),
        viewer_loadgens: w.iter().map(|(child, _)| cpu_ticks(child.id())).sum(),
        vote_loadgen: cpu_ticks(votes.id()),
        machine: machine_ticks(),
        at: Instant::now(),
    };
    let before = cpu(&watchers, &votes);
    let stages_before = LagStages::read(&c, &realtime).await;
    let mut peak = holding;
    let mut during = None;
    while votes.try_wait().unwrap().is_none() {
        peak = peak.max(rss_mib(&realtime));
        // Read while the vote generator runs (it is reaped by the check above, and a process
        // reaped has no /proc of its own).
        during = Some(cpu(&watchers, &votes));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_report = during.map_or_else(
        || "CPU: no reading (the vote load generator ended at once)".to_owned(),
        |d| d.report_since(&before),
    );
    let stages = LagStages::read(&c, &realtime).await.since(&stages_before);
    let sent = messages_sent(&c, &realtime).await;
    let mut lines = Vec::new();
    let (mut p99, mut max, mut per_sec, mut closed) = (0f64, 0f64, 0f64, 0u64);
    for (mut w, report) in watchers {
        w.wait().unwrap();
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        p99 = p99.max(r["lag"]["p99_ms"].as_f64().unwrap_or(0.0));
        max = max.max(r["lag"]["max_ms"].as_f64().unwrap_or(0.0));
        per_sec += r["messages_per_sec"].as_f64().unwrap_or(0.0);
        closed += r["closed"].as_u64().unwrap_or(0) + r["failed"].as_u64().unwrap_or(0);
        lines.push(r);
    }
    let v: Value = match std::fs::read(&votes_report) {
        Ok(json) => serde_json::from_slice(&json).unwrap(),
        Err(_) => panic!(
            "the vote load generator wrote no report:\n{}",
            std::fs::read_to_string(c.dir.path().join("votes.out")).unwrap_or_default()
        ),
    };
    eprintln!(
        "bench: votes {:.0}/s acknowledged (target {rate}), p99 {} ms; realtime RSS peak {peak:.0} MiB; \
         {per_sec:.0} messages/s delivered ({sent} sent in all); lag tally to viewer: worst process p99 {p99:.0} ms, max {max:.0} ms; {closed} viewers failed or closed",
        v["acknowledged_per_sec"].as_f64().unwrap_or(0.0),
        v["latency"]["p99_ms"]
    );
    eprintln!("bench: {cpu_report}");
    eprintln!("bench: {}", stages.report());
    for (i, r) in lines.iter().enumerate() {
        eprintln!("bench: viewer process {i}: {r}");
    }
    assert_eq!(
        held as usize,
        viewers,
        "not every viewer was held:\n{}",
        c.logs()
    );
}

/// Where a tally's way to the viewers goes, by the realtime nodes' histograms (`/metrics`),
/// summed over them: through the log to each node's results board, then to the end of the
/// sweep that wrote it to a viewer, and how long the sweeps took.
struct LagStages {
    tallies: ScrapedHistogram,
    results_age: ScrapedHistogram,
    sweeps: ScrapedHistogram,
}

impl LagStages {
    async fn read(c: &Cluster, nodes: &[Node]) -> Self {
        let read = |name: &'static str| {
            let mut h = ScrapedHistogram::default();
            async move {
                for n in nodes {
                    h.add_from(&c.client, &n.base, name).await;
                }
                h
            }
        };
        Self {
            tallies: read("crowdtick_results_tally_delay_seconds").await,
            results_age: read("crowdtick_realtime_results_age_seconds").await,
            sweeps: read("crowdtick_realtime_sweep_duration_seconds").await,
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            tallies: self.tallies.since(&before.tallies),
            results_age: self.results_age.since(&before.results_age),
            sweeps: self.sweeps.since(&before.sweeps),
        }
    }

    fn report(&self) -> String {
        let ms = |h: &ScrapedHistogram, q: f64| {
            h.quantile(q)
                .map_or_else(|| "-".to_owned(), |s| format!("{:.1}", s * 1e3))
        };
        let line = |h: &ScrapedHistogram| {
            format!(
                "p50 {} ms, p99 {} ms (n={})",
                ms(h, 0.5),
                ms(h, 0.99),
                h.count
            )
        };
        format!(
            "where the lag goes, by the realtime nodes' histograms while the votes flowed \
             (interpolated within their buckets): tallies from their processor to a node's \
             results board {} (not in the viewers' lag, which starts there); results' age \
             when the sweep that wrote them to a viewer ended (the nodes' part) {}; a shard's \
             sweep took {}; the rest of a viewer's lag is the kernel's and its load generator's",
            line(&self.tallies),
            line(&self.results_age),
            line(&self.sweeps),
        )
    }
}

async fn messages_sent(c: &Cluster, nodes: &[Node]) -> u64 {
    metric_sum(c, nodes, "crowdtick_realtime_messages_sent_total").await
}

/// CPU time (clock ticks) of each part of the run, read together.
struct CpuShares {
    realtime: u64,
    /// Of which the realtime nodes' fan-out threads (`realtime/src/fanout.rs`).
    fanout: u64,
    votes_node: u64,
    viewer_loadgens: u64,
    vote_loadgen: u64,
    /// The machine's (busy, all) ticks.
    machine: (u64, u64),
    at: Instant,
}

impl CpuShares {
    /// Where the machine's CPU went between `before` and this reading, in percent of one core.
    fn report_since(&self, before: &Self) -> String {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(0.01);
        // Ticks are 1/100 s: ticks per second is percent of a core.
        let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let realtime = pct(self.realtime, before.realtime);
        let fanout = pct(self.fanout, before.fanout);
        let votes_node = pct(self.votes_node, before.votes_node);
        let viewers = pct(self.viewer_loadgens, before.viewer_loadgens);
        let vote_gen = pct(self.vote_loadgen, before.vote_loadgen);
        let busy = pct(self.machine.0, before.machine.0);
        let rest = (busy - realtime - votes_node - viewers - vote_gen).max(0.0);
        let all = pct(self.machine.1, before.machine.1);
        format!(
            "CPU while the votes flowed ({secs:.1} s, % of one core; the machine has \
             {:.1} cores): realtime nodes {realtime:.0}% (their fan-out threads {fanout:.0}%), \
             the votes' node {votes_node:.0}%, viewer load generators {viewers:.0}%, \
             vote load generator {vote_gen:.0}%, the rest (tansu, PostgreSQL, Redis, this test, \
             the kernel's own) {rest:.0}%; busy {busy:.0}% of {all:.0}%",
            all / 100.0
        )
    }
}

/// CPU time (clock ticks) of a process's fan-out threads (`realtime::fanout::THREAD_NAME`),
/// from /proc.
fn fanout_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == realtime::fanout::THREAD_NAME)
        })
        .filter_map(|t| stat_ticks(&t.path().join("stat")))
        .sum()
}
