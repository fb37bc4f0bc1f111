#!/usr/bin/env bash
# A vote's time from its append to durable, A/B, closed loop (BENCHMARKS.md "2026-12-07 (sixth
# session)"): what a change to the log's writer does to the fsyncs a vote waits for.
#
#   scripts/bench-durable.sh BASELINE_BIN CANDIDATE_BIN [ROUNDS] [DATA_PARENT]
#
# Each round (default 4) runs each binary once, the order alternating: a fresh server (embedded
# log, fsync on) with its data directory in DATA_PARENT (default a temporary directory: put it on
# the disk to judge), one open poll, wrk (1 thread, 64 connections) 2 s to warm up, then 10 s. It
# prints requests/s, the server's CPU a request (from /proc), the mean time from append to durable
# (crowdtick_ingest_vote_duration_seconds' sum over its count across the 10 s) and the group
# commits a second. Needs wrk and curl (apt-get install wrk curl) and python3.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then usage; exit 0; fi
if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
for bin in "$1" "$2"; do
  [ -x "$bin" ] || { echo "bench-durable.sh: no executable at $bin (--help)" >&2; exit 2; }
done
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-durable.sh: needs $tool (apt-get install wrk curl python3)" >&2; exit 2; }
done
base=$1; cand=$2; rounds=${3:-4}
port=18196
work=$(mktemp -d "${4:-/tmp}/crowdtick-durable.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
write_vote_lua "$work/vote.lua"

measure() { # label bin
  local dir="$work/$1" out requests cpu0 cpu1
  rm -rf "$dir"; mkdir -p "$dir"
  serve "$2" "$dir/data"
  open_poll
  wrk -t1 -c64 -d2s -s "$work/vote.lua" "http://127.0.0.1:$port" >/dev/null
  curl -sf "127.0.0.1:$port/metrics" >"$dir/before"
  cpu0=$(cpu_ticks "$server")
  out=$(wrk -t1 -c64 -d10s -s "$work/vote.lua" "http://127.0.0.1:$port")
  cpu1=$(cpu_ticks "$server")
  curl -sf "127.0.0.1:$port/metrics" >"$dir/after"
  kill "$server"; wait "$server" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  python3 - "$1" "$requests" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$dir" <<'PY'
import sys
label, n, ticks, hz, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def scrape(f):
    out = {}
    for line in open(f):
        if not line.startswith("#") and " " in line:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out
a, b = scrape(f"{d}/before"), scrape(f"{d}/after")
delta = lambda k: b.get(k, 0) - a.get(k, 0)
h = "crowdtick_ingest_vote_duration_seconds"
if n == 0:
    sys.exit(f"{label}: wrk completed no requests (see the server's log)")
durable = delta(h + "_sum") / max(delta(h + "_count"), 1) * 1e6
groups = sum(delta(k) for k in b if k.startswith("crowdtick_log_group_commits"))
print(f"{label:9} {n / 10:8,.0f} requests/s  server CPU {ticks / hz * 1e6 / n:5.2f} µs a request  "
      f"append to durable mean {durable:5.0f} µs  {groups / 10:5,.0f} group commits/s")
PY
}

for round in $(seq "$rounds"); do
  if (( round % 2 )); then measure baseline "$base"; measure candidate "$cand"
  else measure candidate "$cand"; measure baseline "$base"; fi
done
