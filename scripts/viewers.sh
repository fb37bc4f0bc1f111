#!/usr/bin/env bash
# Viewers at broadcast scale on one machine (BENCHMARKS.md "Viewers"): distributed realtime nodes
# on a tansu broker, each watched by its own `crowdtick loadgen --viewers-only` process, while
# votes flow at a fixed rate; prints viewers held, accept rate, the realtime nodes' RSS, messages
# per second and the lag from tally to viewer.
#   CROWDTICK_BENCH_VIEWERS    viewers in all (default 100000; 18,000 per realtime node)
#   CROWDTICK_BENCH_VOTE_RATE  votes per second meanwhile (default 10000)
#   CROWDTICK_BENCH_SECS       seconds of votes (default 20)
# Needs tansu (scripts/test.sh installs it), PostgreSQL and Redis on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test it viewers_across_realtime_nodes -- --ignored --nocapture 2>&1 |
  grep --line-buffered -E '^(bench|test |thread)|panicked|FAILED|passed|failed'
