#!/usr/bin/env bash
# The distributed mode at full size, as separate processes of the release binary:
# 2 ingest edges, 3 processors (one SIGKILLed and restarted 10 times, a fourth added, one removed),
# 2 realtime nodes and a query node, on a tansu broker with SQLite storage (restarted once mid-run),
# the machine's PostgreSQL and Redis. 100,000 voters vote in 5 polls (500,000 first votes), then 20%
# of those votes get a duplicate (another option, never counted) and 5% a same-vote_id retry.
# Passes when every poll is exact on the query node and on both realtime nodes, a Redis flush is
# refilled at once, and `crowdtick recount` agrees.
# Then the 30 s broker outage: every vote in it gets 503 with Retry-After within the deadline, the
# edge's memory stays flat, every 202 counts, and votes are taken again within 15 s of the return.
# Needs tansu (see .ci/run), PostgreSQL, Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test it -- --ignored --nocapture --test-threads 1 cluster_full_size broker_outage_30s 2>&1 |
  grep --line-buffered -E '^(cluster|outage|test |thread|  left|  right)|panicked|FAILED|passed|failed'
