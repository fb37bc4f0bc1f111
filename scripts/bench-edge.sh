#!/usr/bin/env bash
# The edge against its ceiling (issue 11, item 2; BENCHMARKS.md "The edge against a bare axum
# endpoint"): the same single-vote load against a bare axum endpoint that parses the vote and
# answers 202 with a receipt and nothing else (loadtest/examples/bare_edge.rs), then against
# `crowdtick serve` (embedded log, fsync on), and the ratio.
#
#   scripts/bench-edge.sh [RATE] [SECS] [CONNECTIONS]
#
# Two runs each: open loop at RATE votes/s (default 50000) for SECS (default 60), and closed loop
# for BENCH_CLOSED_SECS (10); CONNECTIONS (default 128) connections; server and generator share
# the machine. CrowdTick (server and load generator) is BENCH_BIN, by default this checkout's
# release build (built); the bare endpoint is built with BENCH_PROFILE (release). Each
# run also prints the CPU a vote cost the server and the generator (together they are the
# machine's budget: two cores at 40 µs a vote carry 50,000 votes/s with nothing to spare) and the
# p99 from each vote's send (an upper bound on the server's part of the p99 from its due time:
# it also holds the loopback and the generator's own wait to read the answer). Exits 1 when a
# load generator run failed. Needs curl and python3.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
rate=${1:-50000}; secs=${2:-60}; conns=${3:-128}
closed_secs=${BENCH_CLOSED_SECS:-10}; profile=${BENCH_PROFILE:-release}
port=18196
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bin=$(crowdtick_binary scripts/bench-edge.sh "${BENCH_BIN:-}")
bare=$(loadtest_example bare_edge "$profile")
work=$(mktemp -d /tmp/crowdtick-edge.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
start() { # name
  if [ "$1" = bare ]; then
    "$bare" "127.0.0.1:$port" >"$work/$1.log" 2>&1 &
    server=$!
    wait_healthy "$work/$1.log"
  else
    serve "$bin" "$work/data-$RANDOM"
  fi
}

# One run: prints "votes/s p50 p99 send-to-answer-p99 server-µs/vote generator-µs/vote
# sent-late-p99" (CPU per acknowledged vote, user + system: the server's from /proc, the
# generator's from bash's `time`; the last is the open loop's, "-" in the closed loop), or "nan"
# for each when the load generator failed (and marks the run failed).
run() { # name mode
  local args ticks0 ticks1 TIMEFORMAT='%U %S' LC_ALL=C
  case $2 in
    open)   args=(--rate "$rate" --duration "$secs") ;;
    closed) args=(--duration "$closed_secs") ;;
  esac
  start "$1"
  ticks0=$(cpu_ticks "$server")
  { time "$bin" loadgen --url "http://127.0.0.1:$port" "${args[@]}" --connections "$conns" --polls 4 \
      --voters 5000000 --quiet --json-report "$work/$1-$2.json" >"$work/$1-$2.out" 2>&1; } \
    2>"$work/$1-$2.time" || { echo "$1 $2: loadgen failed: $(tail -5 "$work/$1-$2.out")" >&2; touch "$work/failed"; }
  ticks1=$(cpu_ticks "$server")
  kill "$server"; wait "$server" 2>/dev/null || true
  if [ ! -s "$work/$1-$2.json" ]; then
    touch "$work/failed"; echo "nan nan nan nan nan nan nan"; return
  fi
  python3 - "$work/$1-$2.json" "$work/$1-$2.time" "$((ticks1 - ticks0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
user, system = open(sys.argv[2]).read().split()
acked = max(r["acknowledged"], 1)
server_us = int(sys.argv[3]) / int(sys.argv[4]) * 1e6 / acked
generator_us = (float(user) + float(system)) * 1e6 / acked
l = r["latency"]
late = r.get("send_lateness")
late = f"{late['p99_ms']:.2f}" if late else "-"
print(f"{r['acknowledged_per_sec']:.0f} {l['p50_ms']:.2f} {l['p99_ms']:.2f} "
      f"{r['answer_latency']['p99_ms']:.2f} {server_us:.1f} {generator_us:.1f} {late}")
PY
}

# ", sent late p99 X ms" for the open loop's figure; nothing for the closed loop's "-".
late() { [ "$1" = - ] || echo ", sent late p99 $1 ms"; }
echo "edge vs bare axum: open loop at $rate/s for $secs s and closed loop for $closed_secs s, $conns connections; $(nproc) cores; $(date -u +%F)"
for mode in open closed; do
  read -r b_rate b_p50 b_p99 b_ans b_cpu b_gen b_late < <(run bare "$mode")
  read -r c_rate c_p50 c_p99 c_ans c_cpu c_gen c_late < <(run crowdtick "$mode")
  python3 - "$mode" "$b_rate" "$b_p50" "$b_p99" "$c_rate" "$c_p50" "$c_p99" <<'PY'
import sys
mode, br, b50, b99, cr, c50, c99 = sys.argv[1:]
print(f"{mode:6}  bare axum {float(br):>9,.0f} votes/s (p50 {b50} ms, p99 {b99} ms)   "
      f"crowdtick {float(cr):>9,.0f} votes/s (p50 {c50} ms, p99 {c99} ms)   ratio {float(cr)/float(br):.2f}")
PY
  # Where the two cores went: a vote's CPU on each side, and its p99 from the generator's send
  # (the p99 above counts from each vote's due time, so a generator behind its schedule adds to
  # it; in the open loop, how late the generator itself sent the votes is the "sent late" p99).
  echo "        per vote: bare axum ${b_cpu} µs + generator ${b_gen} µs, send to answer p99 ${b_ans} ms$(late "$b_late");" \
    "crowdtick ${c_cpu} µs + generator ${c_gen} µs, send to answer p99 ${c_ans} ms$(late "$c_late")"
done
if [ -e "$work/failed" ]; then exit 1; fi
