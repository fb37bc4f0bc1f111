#!/usr/bin/env bash
# Admission at twice capacity (issue 9, item 4; BENCHMARKS.md "Shedding at twice capacity"): the
# server pinned to one core, the load generator to the other, so "capacity" is one core's.
#
#   scripts/bench-shed.sh [SECS] ["CONNECTIONS …"] [BIN]
#
# 1. Capacity: closed loop for 10 s, 128 connections.
# 2. Open loop at twice that rate for SECS (default 10) on each number of CONNECTIONS (default
#    "5000 15000"), one vote in flight each (as voters hold them), with `--verify`: once with the
#    wait check and the read pause off (`ingest.shed_wait_target_ms = 0`,
#    `ingest.pause_reads_in_flight = 0`: the baseline), once as configured by default (10 ms,
#    1,000). Without admission, the accepted votes' latency grows with the clients in flight
#    (Little's law); with it, it should not.
# The server's own view (kernel receipt to 202, `crowdtick_ingest_vote_sojourn_seconds`) is the
# one to read: the generator's "send to answer" includes its own scheduling on one core with
# thousands of lanes (against a bare axum endpoint at 25,000/s on 15,000 connections it reads
# p99 470 ms).
# Reports, per run: votes acknowledged per second, 503s, and how long accepted requests took from
# their own send to their answer (p50 / p99), which is what queueing at the server cost them. The
# load generator's lanes honour Retry-After (a shed vote is retried, same vote id, after it times
# 1 to 2 at random).
# Needs taskset (util-linux), curl and python3; two cores or more.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; conns_list=${2:-5000 15000}; bin=${3:-}
port=18197
if [ -z "$bin" ]; then
  cargo build --release -q --bin crowdtick -p crowdtick
  bin=target/release/crowdtick
fi
work=$(mktemp -d /tmp/crowdtick-shed.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

run() { # name wait_target_ms pause_reads_in_flight loadgen-args... -> $work/name.json
  local name=$1 target=$2 pause=$3; shift 3
  CROWDTICK_INGEST__SHED_WAIT_TARGET_MS=$target CROWDTICK_INGEST__PAUSE_READS_IN_FLIGHT=$pause taskset -c 0 \
    "$bin" serve --data-dir "$work/$name" --listen "127.0.0.1:$port" >"$work/$name.log" 2>&1 &
  server=$!
  wait_healthy "$work/$name.log"
  taskset -c 1 "$bin" loadgen --url "http://127.0.0.1:$port" --polls 10 --quiet \
    --json-report "$work/$name.json" "$@" >"$work/$name.out" 2>&1 ||
    { echo "$name: loadgen failed"; tail -5 "$work/$name.out"; }
  curl -s "http://127.0.0.1:$port/metrics" >"$work/$name.metrics" || true
  kill "$server"; wait "$server" 2>/dev/null || true
}

summary() { # name
  python3 - "$work/$1.json" "$1" "$work/$1.metrics" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); a = r["answer_latency"]
shed_wait = sum(int(l.split()[-1]) for l in open(sys.argv[3]) if l.startswith("crowdtick_ingest_requests_shed_wait_total"))
shed = r["status_counts"].get("503", 0)
verify = r.get("verify") or {}
print(f"  {sys.argv[2]:10} {r['acknowledged_per_sec']:>9,.0f} votes/s acknowledged, {shed:>9,} 503s, "
      f"accepted requests send to answer p50 {a['p50_ms']:.1f} / p99 {a['p99_ms']:.1f} ms, "
      f"verify {'ok' if verify.get('ok') else 'FAILED' if verify else 'not run'}")
print(f"  {'':10} shed for their wait {shed_wait:,}; ", end="", flush=True)
PY
  server_view "$work/$1.metrics"
}

echo "admission at twice capacity: server on core 0, generator on core 1; $(nproc) cores; $(date -u +%F)"
run capacity 10 1000 --duration 10 --connections 128 --voters 1000000
capacity=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['acknowledged_per_sec']))" "$work/capacity.json")
rate=$((capacity * 2))
echo "capacity (closed loop, 128 connections): $capacity votes/s; open loop at $rate/s for $secs s"
for conns in $conns_list; do
  echo "$conns connections:"
  for name in off on; do
    target=0 pause=0; [ "$name" = on ] && target=10 pause=1000
    run "$name-$conns" "$target" "$pause" --rate "$rate" --duration "$secs" --connections "$conns" \
      --voters $((rate * secs / 2)) --verify
    summary "$name-$conns"
  done
done
