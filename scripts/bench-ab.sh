#!/usr/bin/env bash
# A/B benchmark of two crowdtick binaries in one session, so that a change's cost is a ratio
# against its baseline run beside it, not an absolute figure on a noisy machine.
#
#   scripts/bench-ab.sh BASELINE_BIN CANDIDATE_BIN [ROUNDS]
#
# Each round runs, for the baseline and then the candidate, each on a fresh server (embedded log,
# fsync on) with a fresh data directory on loopback:
#   single  open loop, 30,000 single votes/s for 30 s, 128 connections (the acceptance run, shorter)
#   batch   closed loop, 2,000,000 votes in batches of 10,000, 4 connections
#   screen  vote to screen at 10,000 votes/s for 20 s, one WebSocket per poll
#   wrk     closed loop, single votes, wrk with 1 thread and 64 connections for 10 s (when wrk is
#           installed: apt-get install wrk; otherwise the line says it was skipped), with the
#           server's CPU time per request (user + system, from /proc): what a request costs,
#           which a slower or busier machine changes far less than it changes the rate
# KINDS="wrk" runs only the wrk line of each round (default: "single batch screen wrk").
# and prints one line per run (acknowledged votes/s and latency percentiles from loadgen's JSON
# report, every run checked with --verify; the server's CPU per acknowledged vote over the
# generator's run, from /proc, verification included, and its fsyncs per 1,000 votes, from
# /metrics). The load generator is the candidate's for both.
# Needs curl and python3.
set -euo pipefail
base=${1:?baseline binary}; cand=${2:?candidate binary}; rounds=${3:-2}
port=18190
kinds=${KINDS:-single batch screen wrk}
work=$(mktemp -d /tmp/crowdtick-ab.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"

report() { # label run json "cpu-ticks-before after" "fsyncs-before after" (a missing reading: n/a)
  python3 - "$1" "$2" "$3" "$4" "$5" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label, run, path, ticks, fsyncs, hz = sys.argv[1:]
r = json.load(open(path))
lat = r["screen_latency"] if run == "screen" else r["latency"]
ok = (r.get("verify") or {}).get("ok")
votes = max(r["acknowledged"], 1)
def per_vote(pair, scale, fmt):
    try:
        before, after = map(float, pair.split())
    except ValueError:
        return "n/a"
    return format((after - before) * scale / votes, fmt)
print(f"{run:7} {label:9} {r['acknowledged_per_sec']:>11,.0f}/s  p50 {lat['p50_ms']:7.2f} ms  "
      f"p90 {lat['p90_ms']:7.2f} ms  p99 {lat['p99_ms']:7.2f} ms  max {lat['max_ms']:8.2f} ms  "
      f"verify {'ok' if ok else ok}  server {per_vote(ticks, 1e6 / float(hz), '.2f')} us CPU/vote, "
      f"{per_vote(fsyncs, 1000, '.1f')} fsyncs/1,000 votes")
PY
}

fsyncs() { # the server's fdatasync calls so far (nothing if it does not say)
  curl -sf --max-time 5 "http://127.0.0.1:$port/metrics" |
    awk '/^crowdtick_log_fsyncs_total / {print $2}' || true
}

run_one() { # label bin round
  local label=$1 bin=$2 round=$3 dir
  for kind in single batch screen; do
    [[ " $kinds " == *" $kind "* ]] || continue
    dir="$work/$label-$round-$kind"; mkdir -p "$dir"
    serve "$bin" "$dir/data"
    case $kind in
      single) args=(--rate 30000 --duration 30 --polls 10 --voters 200000 --connections 128) ;;
      batch)  args=(--batch 10000 --votes 2000000 --polls 10 --voters 2000000 --connections 4 --threads 2) ;;
      screen) args=(--rate 10000 --duration 20 --polls 3 --voters 200000 --connections 64 --screen-latency) ;;
    esac
    local ticks synced
    ticks=$(cpu_ticks "$server" 2>/dev/null || true); synced=$(fsyncs)
    "$cand" loadgen --url "http://127.0.0.1:$port" "${args[@]}" --verify --quiet \
      --json-report "$dir/r.json" >"$dir/loadgen.log" 2>&1 || { echo "$label $kind: loadgen failed"; tail -5 "$dir/loadgen.log"; }
    ticks+=" $(cpu_ticks "$server" 2>/dev/null || true)"; synced+=" $(fsyncs)"
    kill "$server"; wait "$server" 2>/dev/null || true
    report "$label" "$kind" "$dir/r.json" "$ticks" "$synced"
  done
}

write_vote_lua "$work/vote.lua"
run_wrk() { # label bin round
  local label=$1 bin=$2 round=$3 dir="$work/$1-$3-wrk"
  if ! command -v wrk >/dev/null; then echo "wrk     $label skipped: wrk is not installed"; return; fi
  mkdir -p "$dir"; serve "$bin" "$dir/data"
  open_poll
  local out cpu0 cpu1 requests
  cpu0=$(cpu_ticks "$server")
  out=$(wrk -t1 -c64 -d10s --latency -s "$work/vote.lua" "http://127.0.0.1:$port")
  cpu1=$(cpu_ticks "$server")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  kill "$server"; wait "$server" 2>/dev/null || true
  printf 'wrk     %-9s %11s/s  p50 %s  p99 %s  non-2xx %s  server cpu %s us/request\n' "$label" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" "$(grep -c Non-2xx <<<"$out" || true)" \
    "$(python3 -c "import sys; t, r, hz = map(int, sys.argv[1:]); print(f'{t * 1e6 / hz / max(r, 1):.1f}')" \
      "$((cpu1 - cpu0))" "$requests" "$(getconf CLK_TCK)")"
}

for round in $(seq "$rounds"); do
  echo "== round $round"
  run_one baseline "$base" "$round"
  run_one candidate "$cand" "$round"
  if [[ " $kinds " == *" wrk "* ]]; then
    run_wrk baseline "$base" "$round"
    run_wrk candidate "$cand" "$round"
  fi
done
