#!/usr/bin/env bash
# A start after a long show, A/B (issue 11 item 6; BENCHMARKS.md): how long an embedded node whose
# tallies topic holds a long show's partials takes from kill -9 to ready, for a baseline and a
# candidate binary, alternating on fresh copies of one data directory.
#
#   scripts/bench-restart.sh BASELINE_BIN CANDIDATE_BIN [SECONDS] [ROUNDS]
#
# The show: the candidate serves a fresh node that publishes partials every 5 ms (a long show's
# partials packed into SECONDS, default 150) while the load generator sends 4,000 votes/s to 10
# polls; then kill -9. Each of ROUNDS (default 3) rounds starts each binary on its own copy of that
# directory and times it until /readyz answers 200 (and its CPU then), and checks that every poll's
# total is the same for both. Settings given as CROWDTICK_* variables reach every server. Needs
# curl and python3; about 1 GB of disk.
set -euo pipefail
case ${1:-} in -h | --help) sed -n '2,12p' "$0"; exit 0 ;; esac
base=${1:?baseline binary}; cand=${2:?candidate binary}; secs=${3:-150}; rounds=${4:-3}
port=18198
work=$(mktemp -d /tmp/crowdtick-restart.XXXXXX)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
totals() {
  for poll in $(seq 10); do
    curl -sf "127.0.0.1:$port/v1/polls/$poll/results" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("total_votes", -1))'
  done | paste -sd,
}

echo "the show: $secs s at 4,000 votes/s to 10 polls, partials every 5 ms; $(nproc) cores; $(date -u +%F)"
CROWDTICK_PROCESSOR__FLUSH_INTERVAL_MS=5 serve "$cand" "$work/show"
"$cand" loadgen --url "http://127.0.0.1:$port" --rate 4000 --duration "$secs" --voters 4000000 \
  --polls 10 --connections 32 --quiet >"$work/loadgen.log" 2>&1 || { tail -5 "$work/loadgen.log"; exit 1; }
kill -9 "$server"; wait "$server" 2>/dev/null || true
echo "data directory: $(du -sm "$work/show/log" | cut -f1) MiB of log, tallies topic $(du -cm "$work"/show/log/tallies*.log | tail -1 | cut -f1) MiB"

want=""
for round in $(seq "$rounds"); do
  for label in baseline candidate; do
    bin=$base; [ "$label" = candidate ] && bin=$cand
    rm -rf "$work/run"; cp -a "$work/show" "$work/run"; sync
    start=$(date +%s%N)
    "$bin" serve --data-dir "$work/run" --listen "127.0.0.1:$port" >"$work/run.log" 2>&1 &
    server=$!
    until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do
      kill -0 "$server" 2>/dev/null || { echo "$label did not start: $(tail -5 "$work/run.log")"; exit 1; }
      sleep 0.01
    done
    ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    cpu_ms=$(( $(cpu_ticks "$server") * 1000 / $(getconf CLK_TCK) ))
    got=$(totals)
    for _ in $(seq 100); do [ -z "$want" ] || [ "$got" = "$want" ] && break; sleep 0.1; got=$(totals); done
    [ -n "$want" ] || want=$got
    same=same; [ "$got" = "$want" ] || same="DIFFERENT ($got against $want)"
    printf '%-9s round %d: ready in %6d ms, %6d ms CPU; totals %s\n' "$label" "$round" "$ready_ms" "$cpu_ms" "$same"
    kill "$server"; wait "$server" 2>/dev/null || true
  done
done
echo "totals per poll: $want"
