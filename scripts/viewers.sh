#!/usr/bin/env bash
# Viewers at broadcast scale on one machine (BENCHMARKS.md "Viewers"): distributed realtime nodes
# on a tansu broker, each watched by its own `crowdtick loadgen --viewers-only` process, while
# votes flow at a fixed rate; prints viewers held, accept rate, the realtime nodes' RSS, messages
# per second and the lag from tally to viewer.
#
#   scripts/viewers.sh [SERVER_BIN...]
#
# With no argument the nodes run this checkout's release build. Given binaries (a baseline and a
# candidate, say), it runs the measurement once with the nodes on each, in the order given (name
# one twice to alternate: BASE CAND BASE CAND); the load generators are this checkout's either way.
#   CROWDTICK_BENCH_VIEWERS    viewers in all (default 100000; 18,000 per realtime node)
#   CROWDTICK_BENCH_VOTE_RATE  votes per second meanwhile (default 10000)
#   CROWDTICK_BENCH_SECS       seconds of votes (default 20)
# Needs tansu (scripts/test.sh installs it), PostgreSQL and Redis on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {
  cargo test --release --test it viewers_across_realtime_nodes -- --ignored --nocapture 2>&1 |
    grep --line-buffered -E '^(bench|test |thread)|panicked|FAILED|passed|failed'
}
if [ $# -eq 0 ]; then
  run
  exit
fi
for server in "$@"; do
  [ -x "$server" ] || { echo "not an executable: $server" >&2; exit 2; }
done
for server in "$@"; do
  echo "== nodes run $server"
  CROWDTICK_BENCH_SERVER=$(realpath "$server") run
done
