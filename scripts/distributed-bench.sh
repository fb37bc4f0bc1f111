#!/usr/bin/env bash
# Distributed throughput beside the broker's raw produce rate, in one run on one tansu broker:
# raw rdkafka producer, then 2 edges + 3 processors + a query node (separate release processes),
# then the raw producer again. Prints both rates and the ratio; fails under 50%.
#   CROWDTICK_BENCH_VOTES   votes per phase (default 300000)
#   CROWDTICK_BENCH_BROKER  memory (default) or sqlite (tansu's durable storage)
# Needs tansu (see .ci/run), PostgreSQL and Redis on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test it distributed_throughput -- --ignored --nocapture 2>&1 |
  grep --line-buffered -E '^(bench|test |thread)|panicked|FAILED|passed|failed'
