#!/usr/bin/env bash
# What one frame to one viewer costs (issue 11, item 1; BENCHMARKS.md "A frame to a viewer against
# the kernel's floor"): the realtime node's fan-out thread CPU per message sent, beside the floor under it in
# the same run, the kernel's own cost of one small write to each of as many loopback TCP sockets
# from a plain thread (loadtest/examples/send_floor.rs: no runtime, no WebSocket, no feed).
#
#   scripts/bench-fanout.sh [CROWDTICK_BIN]
#
# BENCH_VIEWERS (default 15000) viewers of one poll (BENCH_TRANSPORT: ws, the default, sse or
# sse-kept-alive, as the load generator's --viewer-transport) on a fresh `crowdtick serve`
# (embedded log, fsync on), votes at BENCH_RATE (default 2000/s: enough to move the poll every
# coalescing interval, little enough to leave the fan-out its core) for BENCH_SECS (default 25),
# with the frame budget of the runs before the default changed (realtime.frame_budget 150000,
# realtime.coalesce_ms 100: 100 ms frames at 15,000 viewers, more than the thread writes, so it is
# busy and its cost per frame is what is read; the default, 75,000, would leave it idle part of the time);
# the fan-out thread's CPU (from /proc) and the node's crowdtick_realtime_messages_sent are read
# over BENCH_WINDOW seconds (default 8) once every viewer is open, and the load generator's viewer
# thread's CPU over the same window. BENCH_PERF=1 also records the fan-out thread with `perf`
# (when installed) and prints where its time went. CROWDTICK_BIN defaults to this checkout's
# release build (built first); the floor is built with BENCH_PROFILE (release). Needs curl
# and python3.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
viewers=${BENCH_VIEWERS:-15000}; rate=${BENCH_RATE:-2000}; secs=${BENCH_SECS:-25}
window=${BENCH_WINDOW:-8}; profile=${BENCH_PROFILE:-release}; transport=${BENCH_TRANSPORT:-ws}
case $transport in
  ws | sse | sse-kept-alive) ;;
  *) echo "scripts/bench-fanout.sh: BENCH_TRANSPORT is ws, sse or sse-kept-alive, not '$transport'" >&2; exit 2 ;;
esac
port=18197
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bin=$(crowdtick_binary scripts/bench-fanout.sh "${1:-}")
floor=$(loadtest_example send_floor "$profile")
work=$(mktemp -d /tmp/crowdtick-fanout.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"

# CPU ticks of PID's threads named NAME.
thread_ticks() { # pid name
  local total=0 d
  for d in /proc/"$1"/task/*; do
    if [ "$(cat "$d/comm" 2>/dev/null)" = "$2" ]; then
      total=$((total + $(cpu_ticks "$1/task/${d##*/}" 2>/dev/null || echo 0)))
    fi
  done
  echo "$total"
}
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m || $1 == m "_total" {print $2}'; }

echo "fan-out: $viewers viewers ($transport) of one poll, votes at $rate/s; $(nproc) cores; $(date -u +%F)" >&2
export CROWDTICK_REALTIME__FRAME_BUDGET=150000 CROWDTICK_REALTIME__COALESCE_MS=100
serve "$bin" "$work/data"
unset CROWDTICK_REALTIME__FRAME_BUDGET CROWDTICK_REALTIME__COALESCE_MS
"$bin" loadgen --url "http://127.0.0.1:$port" --viewers "$viewers" --viewer-transport "$transport" --rate "$rate" --duration "$secs" \
  --voters 500000 --polls 1 --connections 64 --verify --quiet >"$work/loadgen.out" 2>&1 &
loadgen=$!
held=0
for _ in $(seq 600); do
  held=$(metric crowdtick_realtime_connections); held=${held:-0}
  [ "$held" -ge "$viewers" ] && break
  sleep 0.1
done
if [ "$held" -lt "$viewers" ]; then
  echo "only $held of $viewers viewers connected within 60 s:"; tail -5 "$work/loadgen.out"; exit 1
fi
sleep 3
frame_bytes=$(curl -sN -m 1 -H 'Accept: text/event-stream' "http://127.0.0.1:$port/v1/polls/1/sse" |
  awk '/^data:/ {print length($0) - 6; exit}' || true)
hz=$(getconf CLK_TCK)
f0=$(thread_ticks "$server" fanout); c0=$(thread_ticks "$loadgen" viewers)
m0=$(metric crowdtick_realtime_messages_sent); t0=$(date +%s.%N)
if [ "${BENCH_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  perf record -q -F 999 -g -p "$server" -o "$work/perf.data" -- sleep "$window" >/dev/null 2>&1 ||
    { echo "perf could not record (perf_event_paranoid?); no profile" >&2; rm -f "$work/perf.data"; }
else
  sleep "$window"
fi
f1=$(thread_ticks "$server" fanout); c1=$(thread_ticks "$loadgen" viewers)
m1=$(metric crowdtick_realtime_messages_sent); t1=$(date +%s.%N)
wait "$loadgen" || { echo "the load generator failed:"; tail -20 "$work/loadgen.out"; exit 1; }
kill "$server"; wait "$server" 2>/dev/null || true
lag=$(grep -o 'lag from tally to viewer: p50 [0-9.]* ms  p99 [0-9.]* ms' "$work/loadgen.out" | sed 's/.*: //' || true)
if [ "$f1" -le "$f0" ] || [ "$m1" = "$m0" ]; then
  echo "the fan-out thread did no measurable work in the window (ticks $f0 -> $f1, messages $m0 -> $m1)"; exit 1
fi

echo "the floor: $viewers loopback sockets, one ${frame_bytes:-400}-byte write to each per round" >&2
floor_out=$("$floor" "$viewers" 40 "${frame_bytes:-400}") || { echo "the floor's run failed: $floor_out"; exit 1; }
[[ $floor_out =~ us_per_write=([0-9.]+)\ writes_per_core_sec=([0-9]+) ]] ||
  { echo "the floor's run said: $floor_out"; exit 1; }
floor_us=${BASH_REMATCH[1]}; floor_rate=${BASH_REMATCH[2]}

python3 - "$t0" "$t1" "$f0" "$f1" "$c0" "$c1" "$m0" "$m1" "$hz" "$floor_us" "$floor_rate" "$lag" "$viewers" <<'PY'
import sys
t0, t1, f0, f1, c0, c1, m0, m1, hz, floor_us, floor_rate = map(float, sys.argv[1:12])
lag, viewers = sys.argv[12], int(sys.argv[13])
secs, msgs = t1 - t0, m1 - m0
fan, client = (f1 - f0) / hz, (c1 - c0) / hz
us = fan * 1e6 / max(msgs, 1)
print(f"| Measure ({viewers:,} viewers) | Floor: a plain write per socket | CrowdTick's fan-out | Ratio |")
print("|---|---|---|---|")
print(f"| CPU per frame to one viewer | {floor_us:.2f} µs | {us:.2f} µs | {floor_us / us:.2f} |")
print(f"| frames per core-second | {floor_rate:,.0f} | {msgs / max(fan, 1e-9):,.0f} | |")
print(f"| frames per second delivered (fan-out thread busy) | | {msgs / secs:,.0f} ({fan / secs:.0%} of a core) | |")
print(f"| the viewers' client, CPU per frame received | | {client * 1e6 / max(msgs, 1):.2f} µs | |")
print(f"| lag from tally to viewer | | {lag or 'n/a'} | |")
PY
if [ -f "$work/perf.data" ]; then
  echo; echo "where the fan-out thread's time went (perf, share of its samples):"
  perf report -i "$work/perf.data" --comm fanout --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '\] (__sys_sendto|do_writev|tcp_v4_rcv|sock_def_readable|do_syscall_64|entry_SYSCALL_64_after_hwframe)$' | sed 's/^/  /' || true
  perf report -i "$work/perf.data" --comm fanout --no-children --sort dso --stdio -g none 2>/dev/null |
    grep '%' | sed -n '1,4s/^/  /p' || true
fi
