#!/usr/bin/env bash
# Viewers at broadcast scale on one machine (BENCHMARKS.md "Viewers"): distributed realtime nodes
# on a tansu broker, each watched by its own `crowdtick loadgen --viewers-only` process, while
# votes flow at a fixed rate; prints viewers held, accept rate, the realtime nodes' RSS, messages
# per second, the lag from tally to viewer, and where the machine's CPU went meanwhile (the
# realtime nodes and their fan-out threads, the votes' node, the load generators, the rest), and
# where the lag went by the nodes' histograms (a tally's way to a node's results board, the
# results' age when a sweep had written them, how long the sweeps took; a baseline built before
# they existed prints "-" for them).
#
#   scripts/viewers.sh [SERVER_BIN...]
#
# With no argument every node runs this checkout's release build. Given binaries (a baseline and
# a candidate, say), it runs the measurement once with every node on each, in the order given
# (name them in turn to alternate: BASE CAND BASE CAND); the load generators are this checkout's
# either way. A run that fails is reported and the next one still runs; the exit status is then 1.
#   CROWDTICK_BENCH_VIEWERS    viewers in all (default 100000; 18,000 per realtime node)
#   CROWDTICK_BENCH_VOTE_RATE  votes per second meanwhile (default 10000)
#   CROWDTICK_BENCH_SECS       seconds of votes (default 20)
# Needs tansu (scripts/test.sh installs it), PostgreSQL and Redis on loopback.
set -euo pipefail
servers=()
for server in "$@"; do
  [ -f "$server" ] && [ -x "$server" ] || { echo "not an executable file: $server" >&2; exit 2; }
  servers+=("$(realpath "$server")")
done
cd "$(dirname "$0")/.."
run() {
  cargo test --release --test it viewers_across_realtime_nodes -- --ignored --nocapture 2>&1 |
    grep --line-buffered -E '^(bench|test |thread)|panicked|FAILED|passed|failed'
}
if [ ${#servers[@]} -eq 0 ]; then
  run
  exit
fi
status=0
for server in "${servers[@]}"; do
  echo "== every node runs $server"
  CROWDTICK_BENCH_SERVER=$server run || { echo "== the run on $server failed" >&2; status=1; }
done
exit $status
