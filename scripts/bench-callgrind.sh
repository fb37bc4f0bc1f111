#!/usr/bin/env bash
# Instructions per single vote, A/B: what a change costs the vote path, counted by callgrind, so
# the figure does not depend on how fast the machine runs today or what else runs beside it
# (wall-clock rates on a shared VM do; BENCHMARKS.md, 2026-12-01).
#
#   scripts/bench-callgrind.sh BASELINE_BIN CANDIDATE_BIN [RUNS]
#
# For each run (default 2) and each binary: the server (embedded log, fsync on, fresh data
# directory) under `valgrind --tool=callgrind`, one open poll, a 5 s warm-up with wrk, the counters
# zeroed, then wrk (1 thread, 16 connections, 20 s, single votes to POST /v1/votes); prints the
# program's instructions divided by the requests wrk completed, and any non-2xx answers.
# Needs valgrind, wrk (apt-get install valgrind wrk), curl and python3.
set -euo pipefail
base=${1:?baseline binary}; cand=${2:?candidate binary}; runs=${3:-2}
port=18191
work=$(mktemp -d /tmp/crowdtick-callgrind.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install valgrind wrk"; exit 1; }
done

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
write_vote_lua "$work/vote.lua"
measure() { # label bin run
  local label=$1 bin=$2 dir="$work/$1-$3" out requests total dump
  mkdir -p "$dir"
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
    "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >"$dir/server.log" 2>&1 &
  local server=$!
  wait_healthy "$dir/server.log" 1200 # callgrind starts the server about 50 times slower
  open_poll
  wrk -t1 -c16 -d5s -s "$work/vote.lua" "http://127.0.0.1:$port" >/dev/null
  callgrind_control --zero "$server" >/dev/null 2>&1
  out=$(wrk -t1 -c16 -d20s -s "$work/vote.lua" "http://127.0.0.1:$port")
  callgrind_control --dump "$server" >/dev/null 2>&1
  sleep 1
  kill "$server"; wait "$server" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  dump=$(ls -t "$dir"/cg.out.* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf '%-9s run %d  %7d requests  %8d instructions/request  non-2xx %s\n' "$label" "$3" \
    "$requests" "$((total / requests))" "$(grep -c Non-2xx <<<"$out" || true)"
}

for run in $(seq "$runs"); do
  measure baseline "$base" "$run"
  measure candidate "$cand" "$run"
done
