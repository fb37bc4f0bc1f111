#!/usr/bin/env bash
# The edge against its ceiling (issue 11, item 2; BENCHMARKS.md "The edge against a bare axum
# endpoint"): the same single-vote load against a bare axum endpoint that parses the vote and
# answers 202 with a receipt and nothing else (loadtest/examples/bare_edge.rs), then against
# `crowdtick serve` (embedded log, fsync on), and the ratio.
#
#   scripts/bench-edge.sh [RATE] [SECS] [CONNECTIONS]
#
# Two runs each: open loop at RATE votes/s (default 50000) for SECS (default 60), and closed loop
# for 10 s; CONNECTIONS (default 128) connections; server and generator share the machine.
# Needs curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-50000}; secs=${2:-60}; conns=${3:-128}
port=18196
cargo build --release -q --bin crowdtick -p crowdtick
cargo build --release -q -p loadtest --example bare_edge
bin=target/release/crowdtick; bare=target/release/examples/bare_edge
work=$(mktemp -d /tmp/crowdtick-edge.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
start() { # name
  if [ "$1" = bare ]; then
    "$bare" "127.0.0.1:$port" >"$work/$1.log" 2>&1 &
    server=$!
    wait_healthy "$work/$1.log"
  else
    serve "$bin" "$work/data-$RANDOM"
  fi
}

run() { # name mode -> prints "votes/s p99"
  local args
  case $2 in
    open)   args=(--rate "$rate" --duration "$secs") ;;
    closed) args=(--duration 10) ;;
  esac
  start "$1"
  "$bin" loadgen --url "http://127.0.0.1:$port" "${args[@]}" --connections "$conns" --polls 4 \
    --voters 5000000 --quiet --json-report "$work/$1-$2.json" >"$work/$1-$2.out" 2>&1 ||
    { echo "$1 $2: loadgen failed"; tail -5 "$work/$1-$2.out"; }
  kill "$server"; wait "$server" 2>/dev/null || true
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); l=r['latency']; print(f\"{r['acknowledged_per_sec']:.0f} {l['p50_ms']:.2f} {l['p99_ms']:.2f}\")" "$work/$1-$2.json"
}

echo "edge vs bare axum: open loop at $rate/s for $secs s and closed loop for 10 s, $conns connections; $(nproc) cores; $(date -u +%F)"
for mode in open closed; do
  read -r b_rate b_p50 b_p99 < <(run bare "$mode")
  read -r c_rate c_p50 c_p99 < <(run crowdtick "$mode")
  python3 - "$mode" "$b_rate" "$b_p50" "$b_p99" "$c_rate" "$c_p50" "$c_p99" <<'PY'
import sys
mode, br, b50, b99, cr, c50, c99 = sys.argv[1:]
print(f"{mode:6}  bare axum {float(br):>9,.0f} votes/s (p50 {b50} ms, p99 {b99} ms)   "
      f"crowdtick {float(cr):>9,.0f} votes/s (p50 {c50} ms, p99 {c99} ms)   ratio {float(cr)/float(br):.2f}")
PY
done
