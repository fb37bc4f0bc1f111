#!/usr/bin/env bash
# Ten million voters in one poll, A/B (issue 11 item 6; BENCHMARKS.md "Ten million voters"): what
# the exact dedupe costs per voter, and how fast a node whose log holds them all answers and counts
# again after kill -9, for a baseline and a candidate binary in one session.
#
#   scripts/bench-voters.sh BASELINE_BIN CANDIDATE_BIN [VOTERS]
#
# For each binary, on a fresh embedded server (fsync on): VOTERS (default 10,000,000) distinct
# voters in one poll, in batches of 10,000 over 4 connections, checked exactly (--verify), and
# how many batches the node shed (503; the generator waits out each one's Retry-After); the
# server's RSS before and after (from /proc, at rest once counted), bytes per voter; then kill -9,
# a restart on the same data directory, and the seconds until /readyz answers 200 and until the
# results show every vote again, and the data directory's size on disk (the log, and the
# snapshots a restart reads on from). The load generator is the candidate's for both. Settings
# given as CROWDTICK_* variables reach both servers (e.g. CROWDTICK_LOG__RETIRE_AFTER_SNAPSHOT=true
# with CROWDTICK_LOG__SEGMENT_MB=64, for a candidate against itself).
# Needs curl and python3; about 2 GB of disk per run.
set -euo pipefail
case ${1:-} in -h | --help) sed -n '2,16p' "$0"; exit 0 ;; esac
base=${1:?baseline binary}; cand=${2:?candidate binary}; voters=${3:-10000000}
port=18197
work=$(mktemp -d /tmp/crowdtick-voters.XXXXXX)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server/status"; }
total() { curl -sf "127.0.0.1:$port/v1/polls/1/results" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("total_votes", -1))'; }
now() { date +%s.%N; }

run_one() { # label bin
  local label=$1 bin=$2 dir before after counted start ready back disk
  dir="$work/$label"; mkdir -p "$dir"
  serve "$bin" "$dir/data"
  sleep 1; before=$(rss_kib)
  "$cand" loadgen --url "http://127.0.0.1:$port" --batch 10000 --votes "$voters" --voters "$voters" \
    --polls 1 --duplicate-share 0 --retry-share 0 --connections 4 --threads 2 --verify --quiet \
    --json-report "$dir/r.json" >"$dir/loadgen.log" 2>&1 || { echo "$label: loadgen failed"; tail -5 "$dir/loadgen.log"; exit 1; }
  # The partition is quiet for a checkpoint interval (5 s), then checkpointed (up to a few s at
  # ten million voters): the restart starts from that snapshot. A node gives its allocator's free
  # memory back at its first quiet look (every 2 s) after a busy spell (edge/src/memory.rs), so
  # the RSS read here, 20 s after the load, is the node at rest.
  sleep 20
  after=$(rss_kib); counted=$(total); disk=$(du -sm "$dir/data" | cut -f1)
  kill -9 "$server"; wait "$server" 2>/dev/null || true
  start=$(now)
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >>"$dir/data.log" 2>&1 &
  server=$!
  until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
  ready=$(now)
  until [ "$(total)" = "$counted" ]; do sleep 0.05; done
  back=$(now)
  python3 - "$label" "$dir/r.json" "$before" "$after" "$voters" "$counted" "$start" "$ready" "$back" "$disk" <<'PY'
import json, sys
label, path, before, after, voters, counted, start, ready, back, disk = sys.argv[1:]
r = json.load(open(path)); ok = (r.get("verify") or {}).get("ok")
before, after, voters = int(before), int(after), int(voters)
shed = (r.get("status_counts") or {}).get("503", 0)
print(f"{label:9} {r['acknowledged_per_sec']:>9,.0f} votes/s verify {'ok' if ok else ok}, {shed} batches shed (503); "
      f"RSS {before/1024:6.1f} -> {after/1024:7.1f} MiB: {(after-before)*1024/voters:5.1f} bytes per voter; "
      f"after kill -9: ready in {float(ready)-float(start):5.2f} s, all {int(counted):,} votes shown in "
      f"{float(back)-float(start):5.2f} s; data on disk {int(disk):,} MiB")
PY
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$dir/data"
}

echo "voters: $voters in one poll; $(nproc) cores; $(date -u +%F)"
run_one baseline "$base"
run_one candidate "$cand"
