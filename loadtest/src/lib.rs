//! CrowdTick's load generator, `crowdtick loadgen`: votes at a fixed rate (open loop) or as fast
//! as N connections allow (closed loop), with duplicates and retries mixed in, a latency report
//! free of coordinated omission, and an exact check of the published tallies against what the
//! server acknowledged.
//!
//! - [`plan`] (pure): the seeded sequence of submissions — first votes, duplicates (same voter,
//!   new vote id) and retries (an earlier submission again, same vote id) — and the lane of each
//!   in the closed loop.
//! - [`placement`]: the open loop's lane of each submission: a fresh pair's an idle lane, later
//!   submissions of the pair the same lane.
//! - [`client`]: a lean HTTP/1.1 keep-alive connection per lane (hyper), reconnecting after any
//!   failure, telling "certainly not sent" from "may have been processed".
//! - [`run`]: the dispatcher and the schedule (per-voter order, open and closed loop); `lane`:
//!   a lane's connection, its retries with backoff and give-up, and what it measures.
//! - [`seconds`]: the run second by second (each second's latencies): the progress line and the
//!   report's `by_second`.
//! - [`record`]: the acknowledgement record (`--record`), read back by `--verify-only`.
//! - [`verify`] (pure core): expected tallies from the acknowledged submissions and their
//!   comparison with `GET /v1/polls/{id}/results`.
//! - [`report`]: percentiles from an HdrHistogram, the printed and JSON report.
//! - [`polls`]: creating the run's polls or reading `--poll-ids`.
//! - [`screen`]: vote-to-screen latency over WebSockets (`--screen-latency`).
//! - [`viewers`]: an audience of live viewers held open during the run (`--viewers N`), with
//!   their lag from tally to screen.
//!
//! Beside the crate: `locust/locustfile.py` (Locust scenarios for the seed API and /v1) and
//! `kafka-perf.md` (Kafka perf-test recipes for the votes topic).

pub mod client;
mod lane;
pub mod placement;
pub mod plan;
pub mod polls;
pub mod record;
pub mod report;
pub mod run;
pub mod screen;
pub mod seconds;
pub mod verify;
pub mod viewers;

use clap::Args;
use client::{Conn, Target};
use hyper::header::HeaderValue;
use hyper::Method;
use report::{Latency, Report};
use run::{Control, RunConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Options of `crowdtick loadgen`.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Generate votes against a running server, report throughput and latency, verify the tallies exactly.",
    long_about = "Generate votes against a running server, report throughput and latency, verify the tallies exactly.\n\n\
        Each (poll, voter) belongs to one connection (lane), which sends its submissions in plan order, each after the \
        previous one got its final answer, retrying the same vote id through connection errors, timeouts and 503s \
        (the server may be restarted meanwhile). So the expected tally of a poll is known exactly: per voter, the \
        option of its first acknowledged submission.\n\n\
        Examples:\n  \
        crowdtick loadgen --url http://127.0.0.1:8080 --votes 200000 --verify\n  \
        crowdtick loadgen --rate 20000 --duration 30 --connections 64 --json-report r.json\n  \
        crowdtick loadgen --duration 60 --record run.rec     (then, after a restart)\n  \
        crowdtick loadgen --verify-only --record run.rec"
)]
pub struct LoadgenArgs {
    /// Base URL of the server (http only). Must be a loopback address unless --allow-remote.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Allow a --url that does not resolve to a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Open loop: submissions per second. Submission i is due at start + i/rate and its latency
    /// counts from then, so a stalled server shows in the percentiles (no coordinated omission).
    /// The --connections lanes carry the schedule: a voter's first vote in a poll goes to an idle
    /// lane among the next 16 (else the least busy of them), like a pool of connections, and the
    /// voter's later votes in that poll to the same lane. The report also says how late the
    /// generator itself sent them (from the later of the due time and the lane's previous
    /// answer). Without --rate: closed loop, each connection sends its next submission as soon as
    /// it has the previous answer.
    #[arg(long, value_name = "VOTES_PER_SEC")]
    pub rate: Option<f64>,
    /// Connections (lanes), each carrying one request at a time. In the closed loop each carries
    /// a fixed share of the voters.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub connections: usize,
    /// Total submissions, duplicates and retries included [default: 100000 when no --duration].
    #[arg(long, value_name = "N")]
    pub votes: Option<u64>,
    /// Stop after this many seconds. Open loop: submissions due before then are still sent;
    /// closed loop: what is in flight finishes, the rest is not sent.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Distinct voters (voter ids <prefix>-0 … <prefix>-(N−1)); each may vote once per poll.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub voters: u32,
    /// Polls to create for the run (open, visibility live), unless --poll-ids is given.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub polls: u32,
    /// Options of each created poll (2–64), labelled A, B, C, …
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub options: u32,
    /// Vote in these existing, open polls instead of creating new ones (comma-separated ids).
    /// Their counts at the start are the baseline the expected tallies are added to, so no
    /// one else should vote in them during a verified run.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,…")]
    pub poll_ids: Vec<i64>,
    /// Operator API key: creates the polls and reads the results (embargoed ones too).
    #[arg(
        long,
        env = "CROWDTICK_OPERATOR_KEY",
        default_value = "dev-operator-key",
        hide_env_values = true
    )]
    pub operator_key: String,
    /// Aggregator API key, sent with every batch (`--batch`): batches are for aggregators, each
    /// with its own key (the server's `ingest.aggregators`; `dev-aggregator-key` by default).
    #[arg(
        long,
        env = "CROWDTICK_AGGREGATOR_KEY",
        default_value = "dev-aggregator-key",
        hide_env_values = true
    )]
    pub aggregator_key: String,
    /// Share of submissions that are a second vote by a (poll, voter) that already voted, with a
    /// new vote id and a random option: the server must count only the first.
    #[arg(long, default_value_t = 0.2, value_name = "FRACTION")]
    pub duplicate_share: f64,
    /// Share of submissions that resend an earlier submission unchanged (same vote id), as a
    /// client does that lost an answer.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub retry_share: f64,
    /// Votes per request through POST /v1/votes/batch?results=rejected (the aggregator path);
    /// in the closed loop a lane waits for N (with many lanes, for its share of 1,000,000),
    /// in the open loop it sends what is due, up to N. 0: single votes to POST /v1/votes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub batch: usize,
    /// Give up on a submission after retrying it this long without a 202 or 4xx (server down).
    /// A lane that gave up then probes once a second until the server answers again; meanwhile
    /// the open loop gives up its due submissions unsent and the closed loop waits.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub give_up_secs: u64,
    /// Per-request timeout; a request without an answer by then is retried on a new connection.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Write every acknowledged (and every uncertain) submission to FILE, one line each, for
    /// --verify-only later. With --verify-only: the record to read.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// After the load, read every poll's results (as operator) until they equal the expected
    /// tallies or --verify-timeout-secs passes; print expected vs published; exit non-zero on a
    /// mismatch.
    #[arg(long)]
    pub verify: bool,
    /// Send no votes: verify the server against the --record FILE of an earlier run.
    #[arg(long, requires = "record", conflicts_with = "verify")]
    pub verify_only: bool,
    /// How long verification waits for the published tallies to reach the expected ones.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub verify_timeout_secs: u64,
    /// Write the report (and the verification) as JSON to FILE too.
    #[arg(long, value_name = "FILE")]
    pub json_report: Option<PathBuf>,
    /// Seed of the plan: the same seed and sizes give the same submissions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of the voter and vote ids (letters, digits, '_', '.'; default: random per run, so
    /// runs never collide). Reusing a prefix in the same polls makes its voters duplicates of
    /// the earlier run's, which a verified run does not expect.
    #[arg(long, value_name = "PREFIX")]
    pub voter_prefix: Option<String>,
    /// Also measure vote-to-screen latency: a WebSocket per poll, as a results screen; single
    /// votes only.
    #[arg(long, conflicts_with = "batch")]
    pub screen_latency: bool,
    /// Live viewers to hold open during the run, spread over the run's polls as the public (no
    /// key). They are opened before the votes start; the report adds how fast they were
    /// accepted, the messages they got per second and their lag from tally to screen (each
    /// results message's `updated_at` to its arrival). One process holds as many as its
    /// open-file limit allows; `scripts/viewers.sh` spreads more over several processes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub viewers: usize,
    /// How viewers connect.
    #[arg(long, value_enum, default_value = "ws")]
    pub viewer_transport: viewers::Transport,
    /// Loopback source addresses the viewers connect from (127.0.0.2 onwards), so the client's
    /// ports do not run out (about 28,000 connections each). Only for a loopback --url.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub viewer_sources: u8,
    /// The last byte of the first viewer source address (127.0.0.N): several viewer processes
    /// on one machine each take their own addresses.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub viewer_first_source: u8,
    /// How many nice levels below the load generator the viewers' thread runs: they stand in
    /// for an audience on other machines, so they take the cores the server and the votes leave
    /// (0: the same priority).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub viewer_nice: i32,
    /// Viewer connection attempts in flight at once while opening.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub viewer_concurrency: usize,
    /// Send no votes: open the --viewers, hold them for --duration seconds (default 10) and
    /// report. Polls: --poll-ids, or new ones.
    #[arg(long)]
    pub viewers_only: bool,
    /// Open the --viewers while the votes run (from the first vote on) instead of before, to
    /// measure how fast a node takes new viewers under load.
    #[arg(long, conflicts_with = "viewers_only")]
    pub viewers_with_votes: bool,
    /// Threads that run the connections. One (the default) keeps the generator on one core and
    /// leaves the others to the server under test; more only helps a generator on its own machine.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// The run's viewers: open before the votes, or opening while they run (`--viewers-with-votes`).
enum Audience {
    Open(viewers::Viewers),
    Opening(tokio::task::JoinHandle<anyhow::Result<viewers::Viewers>>),
}

impl LoadgenArgs {
    /// Parses the flags of `crowdtick loadgen` given after the subcommand's name, as the binary
    /// would (for tests and programs that start a run without the `crowdtick` binary).
    pub fn try_parse_flags<'a>(
        flags: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Loadgen {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        Loadgen::try_parse_from(std::iter::once("loadgen").chain(flags)).map(|l| l.args)
    }
}

/// What Ctrl-C does: 0 running (stop sending), 1 stopping (abandon retries), 2 verifying (exit).
static PHASE: AtomicU8 = AtomicU8::new(0);

fn validate(args: &LoadgenArgs) -> anyhow::Result<()> {
    let share = |name: &str, v: f64| {
        anyhow::ensure!(
            (0.0..=1.0).contains(&v),
            "{name} must be within 0..1 (got {v})"
        );
        Ok(())
    };
    share("--duplicate-share", args.duplicate_share)?;
    share("--retry-share", args.retry_share)?;
    anyhow::ensure!(
        args.duplicate_share + args.retry_share <= 1.0,
        "--duplicate-share + --retry-share must not exceed 1"
    );
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.voters >= 1, "--voters must be at least 1");
    anyhow::ensure!(
        (2..=64).contains(&args.options),
        "--options must be within 2..=64"
    );
    anyhow::ensure!(
        args.polls >= 1 || !args.poll_ids.is_empty(),
        "--polls must be at least 1"
    );
    if let Some(r) = args.rate {
        anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
    }
    if let Some(d) = args.duration {
        anyhow::ensure!(d.is_finite() && d > 0.0, "--duration must be positive");
    }
    anyhow::ensure!(args.batch <= 10_000, "--batch is at most 10000 votes");
    anyhow::ensure!(args.timeout_ms >= 1, "--timeout-ms must be positive");
    anyhow::ensure!(
        (1..=256).contains(&args.threads),
        "--threads must be within 1..=256"
    );
    anyhow::ensure!(
        args.viewer_sources >= 1
            && args.viewer_first_source >= 1
            && args.viewer_first_source as u16 + args.viewer_sources as u16 <= 255,
        "--viewer-first-source N and --viewer-sources K: addresses 127.0.0.N … 127.0.0.(N+K−1), within 127.0.0.1–254"
    );
    anyhow::ensure!(
        !args.viewers_only || args.viewers > 0,
        "--viewers-only needs --viewers N"
    );
    if let Some(p) = &args.voter_prefix {
        anyhow::ensure!(
            !p.is_empty()
                && p.len() <= 40
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'),
            "--voter-prefix: 1–40 letters, digits, '_' or '.'"
        );
    }
    Ok(())
}

fn random_prefix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let x = plan::mix64(t ^ ((std::process::id() as u64) << 32));
    format!("lg{:08x}", x as u32)
}

/// Runs `fut` on a runtime of its own with `threads` threads (a single-threaded one for 1: no
/// cross-thread wake-ups, the cheapest way to drive many connections from one core).
async fn on_own_runtime<T: Send + 'static>(
    threads: usize,
    fut: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("loadgen")
            .enable_all()
            .build()?
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("loadgen".to_owned())
        .spawn(move || {
            let _ = tx.send(runtime.block_on(fut));
            runtime.shutdown_background();
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))?
}

fn labels(o: usize) -> String {
    polls::option_label(o as u32)
}

/// Runs `crowdtick loadgen` to completion, printing progress and the report; an error (non-zero
/// exit) when the arguments are wrong, the server cannot be reached at the start, or
/// verification finds a mismatch.
pub async fn main(args: LoadgenArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let control = Arc::new(Control::default());
    let signals = {
        let control = control.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                match PHASE.fetch_add(1, Ordering::SeqCst) {
                    0 => {
                        eprintln!("\ninterrupted: sending nothing new, finishing what is in flight (Ctrl-C again to abandon retries)");
                        control.stop.store(true, Ordering::SeqCst);
                    }
                    1 => {
                        eprintln!("\ninterrupted again: abandoning retries in flight");
                        control.stop.store(true, Ordering::SeqCst);
                        control.hard_stop.store(true, Ordering::SeqCst);
                    }
                    _ => std::process::exit(130),
                }
            }
        })
    };
    let result = run_main(&args, control).await;
    signals.abort();
    result
}

async fn run_main(args: &LoadgenArgs, control: Arc<Control>) -> anyhow::Result<()> {
    let target = Arc::new(Target::resolve(&args.url, args.allow_remote).await?);
    let auth = HeaderValue::from_str(&format!("Bearer {}", args.operator_key))?;
    let mut conn = Conn::new(target.clone());
    let verify_timeout = Duration::from_secs(args.verify_timeout_secs);

    if args.verify_only {
        PHASE.store(2, Ordering::SeqCst);
        let path = args.record.as_ref().expect("clap requires --record");
        let loaded = record::load(path)?;
        eprintln!(
            "record {}: prefix {}, {} polls, {} acknowledged and {} uncertain submissions, {} voters{}",
            path.display(),
            loaded.prefix,
            loaded.polls.len(),
            loaded.acked,
            loaded.uncertain,
            loaded.expectation.pairs(),
            if loaded.truncated_tail {
                " (last line cut short, ignored)"
            } else {
                ""
            }
        );
        let expected = loaded.expectation.tallies(&loaded.polls);
        let v = verify::verify(&mut conn, &auth, &expected, verify_timeout).await?;
        verify::print_table(&v, labels);
        if let Some(p) = &args.json_report {
            let json = serde_json::json!({"record": path, "verify": v});
            std::fs::write(p, serde_json::to_vec_pretty(&json)?)?;
        }
        anyhow::ensure!(
            v.ok,
            "the published tallies differ from the expected ones (after {:.0} s)",
            v.waited_secs
        );
        return Ok(());
    }

    let (status, _) = conn
        .json(Method::GET, "/healthz", None, None)
        .await
        .map_err(|e| anyhow::anyhow!("the server is not reachable: {e}"))?;
    anyhow::ensure!(status == 200, "{}/healthz answered {status}", target.url);

    let prefix = args.voter_prefix.clone().unwrap_or_else(random_prefix);
    let polls = if args.viewers_only && !args.poll_ids.is_empty() {
        // Viewers only watch: the ids are enough (a realtime node has no poll API to read).
        Vec::new()
    } else if args.poll_ids.is_empty() {
        polls::create(&mut conn, &auth, args.polls, args.options, &prefix).await?
    } else {
        polls::existing(&mut conn, &auth, &args.poll_ids).await?
    };
    drop(conn);
    let poll_ids: Vec<i64> = if polls.is_empty() {
        args.poll_ids.clone()
    } else {
        polls.iter().map(|p| p.id).collect()
    };
    let record = match &args.record {
        Some(p) => Some(record::RecordSink::create(p, &prefix, &polls)?),
        None => None,
    };
    let audience = if args.viewers > 0 {
        let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        if args.viewers as u64 + 256 > limit {
            eprintln!(
                "warning: {} viewers need as many files, and this process may open {limit}; \
                 run several loadgen --viewers-only processes (scripts/viewers.sh)",
                args.viewers
            );
        }
        let opening = viewers::Viewers::open(
            target.clone(),
            viewers::ViewerOptions {
                count: args.viewers,
                transport: args.viewer_transport,
                sources: args.viewer_sources,
                first_source: args.viewer_first_source,
                concurrency: args.viewer_concurrency,
                nice: args.viewer_nice,
                polls: poll_ids.clone(),
                progress: !args.quiet,
            },
        );
        if args.viewers_with_votes {
            // Opened while the votes run: joined after them.
            Some(Audience::Opening(tokio::spawn(opening)))
        } else {
            Some(Audience::Open(opening.await?))
        }
    } else {
        None
    };
    if args.viewers_only {
        let secs = args.duration.unwrap_or(10.0);
        eprintln!("viewers: holding them for {secs} s");
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let report = match audience {
            Some(Audience::Open(v)) => v.finish(),
            _ => anyhow::bail!("--viewers-only needs --viewers N (and not --viewers-with-votes)"),
        };
        report.print();
        if let Some(p) = &args.json_report {
            std::fs::write(p, serde_json::to_vec_pretty(&report)?)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        }
        return Ok(());
    }
    let screen = if args.screen_latency {
        Some(screen::ScreenWatch::start(&target, &args.operator_key, &polls).await?)
    } else {
        None
    };
    let total = match (args.votes, args.duration) {
        (Some(v), _) => Some(v),
        (None, Some(_)) => None,
        (None, None) => Some(100_000),
    };
    let cfg = RunConfig {
        target: target.clone(),
        plan: plan::PlanConfig {
            seed: args.seed,
            voters: args.voters,
            options: polls.iter().map(|p| p.options).collect(),
            duplicate_share: args.duplicate_share,
            retry_share: args.retry_share,
            total,
        },
        polls: Arc::new(polls.clone()),
        prefix: prefix.clone(),
        lanes: args.connections,
        rate: args.rate,
        duration: args.duration.map(Duration::from_secs_f64),
        batch: args.batch,
        aggregator_auth: Some(HeaderValue::from_str(&format!(
            "Bearer {}",
            args.aggregator_key
        ))?),
        timeout: Duration::from_millis(args.timeout_ms),
        give_up: Duration::from_secs(args.give_up_secs),
        record: record.clone(),
        expect: args.verify,
        receipts: args.screen_latency,
        progress: !args.quiet,
    };
    eprintln!(
        "loadgen: {} loop{}, {} connections, {}; polls {poll_ids:?}; {} voters; {} submissions{}; duplicates {}%, retries {}%; ids {prefix}-*",
        if args.rate.is_some() { "open" } else { "closed" },
        args.rate.map(|r| format!(" at {r}/s")).unwrap_or_default(),
        args.connections,
        if args.batch > 0 { format!("batches of up to {}", args.batch) } else { "single votes".to_owned() },
        args.voters,
        total.map_or("endless".to_owned(), |t| t.to_string()),
        args.duration.map(|d| format!(" for at most {d} s")).unwrap_or_default(),
        args.duplicate_share * 100.0,
        args.retry_share * 100.0,
    );

    let outcome = on_own_runtime(args.threads, run::run(cfg, control.clone())).await?;
    PHASE.store(2, Ordering::SeqCst);
    let (screen_latency, screen_unseen) = match screen {
        Some(s) => {
            let (h, unseen) = s.finish(&outcome.receipts, Duration::from_secs(2)).await;
            (Some(Latency::of(&h)), Some(unseen))
        }
        None => (None, None),
    };
    let secs = outcome.elapsed.as_secs_f64();
    let mut report = Report {
        url: target.url.clone(),
        prefix,
        seed: args.seed,
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        target_rate: args.rate,
        connections: args.connections,
        batch: args.batch.max(1),
        poll_ids,
        voters: args.voters,
        duplicate_share: args.duplicate_share,
        retry_share: args.retry_share,
        elapsed_secs: secs,
        wall_secs: outcome.wall.as_secs_f64(),
        submissions: outcome.submissions,
        completed: outcome.completed,
        requests: outcome.requests,
        acknowledged: outcome.acked,
        acknowledged_per_sec: if secs > 0.0 {
            outcome.acked as f64 / secs
        } else {
            0.0
        },
        rejected: outcome.rejected,
        given_up: outcome.given_up,
        given_up_uncertain: outcome.given_up_uncertain,
        rejected_uncertain: outcome.rejected_uncertain,
        not_sent: outcome.not_sent,
        latency: Latency::of(&outcome.latency),
        answer_latency: Latency::of(&outcome.answered),
        send_lateness: args.rate.map(|_| Latency::of(&outcome.send_late)),
        by_second: outcome.by_second,
        status_counts: outcome.status_counts,
        errors: outcome.errors,
        rejections: outcome.rejections,
        connections_opened: outcome.connections_opened,
        screen_latency,
        screen_unseen,
        viewers: match audience {
            None => None,
            Some(Audience::Open(v)) => Some(v.finish()),
            Some(Audience::Opening(task)) => Some(task.await??.finish()),
        },
        verify: None,
    };
    report.print();
    if let Some(r) = &record {
        eprintln!("record written to {}", r.path().display());
    }
    if report.given_up > 0 {
        eprintln!(
            "warning: {} submissions were given up unacknowledged ({} of them possibly written by the server)",
            report.given_up, report.given_up_uncertain
        );
    }
    let mut verified = true;
    if args.verify {
        let expected = outcome.expectation.tallies(&polls);
        let mut conn = Conn::new(target.clone());
        let v = verify::verify(&mut conn, &auth, &expected, verify_timeout).await?;
        verify::print_table(&v, labels);
        verified = v.ok;
        report.verify = Some(v);
    }
    if let Some(p) = &args.json_report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    anyhow::ensure!(
        verified,
        "the published tallies differ from the expected ones (see the table above)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        LoadgenArgs::try_parse_flags(a.iter().copied())
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = parse(&["--rate", "1000", "--poll-ids", "1,2,3", "--batch", "50"]).unwrap();
        assert_eq!(a.poll_ids, vec![1, 2, 3]);
        assert_eq!(a.connections, 64);
        assert!(validate(&a).is_ok());
        assert!(parse(&["--verify-only"]).is_err(), "needs --record");
        assert!(parse(&["--screen-latency", "--batch", "5"]).is_err());
        assert!(
            validate(&parse(&["--duplicate-share", "0.9", "--retry-share", "0.2"]).unwrap())
                .is_err()
        );
        assert!(validate(&parse(&["--options", "65"]).unwrap()).is_err());
        assert!(validate(&parse(&["--voter-prefix", "a\"b"]).unwrap()).is_err());
        assert!(validate(&parse(&["--rate", "0"]).unwrap()).is_err());
        assert!(validate(&parse(&["--viewers-only"]).unwrap()).is_err());
        let v = parse(&["--viewers", "100", "--viewer-transport", "sse"]).unwrap();
        assert_eq!(v.viewer_transport, viewers::Transport::Sse);
        assert!(validate(&v).is_ok());
    }

    #[test]
    fn prefixes_are_json_safe() {
        let p = random_prefix();
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()), "{p}");
    }
}
