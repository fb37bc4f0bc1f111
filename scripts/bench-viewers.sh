#!/usr/bin/env bash
# Viewers on one embedded node, A/B: what a live viewer costs the server and whether an audience
# slows the votes, for a baseline and a candidate binary in one session (BENCHMARKS.md "Viewers").
#
#   scripts/bench-viewers.sh BASELINE_BIN CANDIDATE_BIN [VIEWERS] [VOTES_PER_SEC] [SECS]
#
# For each binary, on a fresh server (embedded log, fsync on) each time:
#   ws      VIEWERS (default 15000) WebSocket viewers of one poll, nothing else: the server's RSS
#           before and holding them (from /proc), KiB per viewer, viewers accepted per second
#   sse     the same over Server-Sent Events
#   votes   single votes open loop at VOTES_PER_SEC (default 10000) for SECS (default 20), no
#           viewers: the baseline of the next line
#   both    the same votes while VIEWERS WebSocket viewers watch the poll: vote latency, the
#           viewers' lag from tally to screen, messages delivered per second
#   join    the same votes while the VIEWERS open from the first vote on (--viewers-with-votes,
#           1,024 connection attempts in flight): viewers accepted per second while votes flow,
#           and what the crowd's connects cost the votes (vote max, the kernel's listen overflows)
# A vote run also prints its latency from the request's send (not its due time), how late the
# load generator itself sent the votes (the report's `send_lateness`: from the later of the due
# time and the lane's previous answer to the send), its worst second (the loadgen report's
# `by_second`: while viewers join, say) and the server's own view from its /metrics
# (`server_view` in bench-lib.sh): what of a vote's time was the server's and what was the load
# generator's, which shares the cores.
# KINDS="votes both" runs only those; VOTE_CONNECTIONS (default 128) sets the vote lanes. Every vote run is checked with --verify. The load generator is the candidate's for both.
# Needs curl and python3.
set -euo pipefail
base=${1:?baseline binary}; cand=${2:?candidate binary}
viewers=${3:-15000}; rate=${4:-10000}; secs=${5:-20}
# Vote connections (the load generator's lanes; a lane sends a vote only once it has the answer
# to the one before, so fewer lanes means votes queueing behind a slow answer).
conns=${VOTE_CONNECTIONS:-128}
port=18191
work=$(mktemp -d /tmp/crowdtick-viewers.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server/status"; }
# Connects the kernel dropped because a listener's backlog was full, in this network namespace,
# so far (TcpExt ListenOverflows; each such client tries again a second later); 0 where the
# kernel does not count them.
listen_overflows() {
  awk '/^TcpExt:/ { if (!n) { for (i = 1; i <= NF; i++) if ($i == "ListenOverflows") c = i; n = 1 } else v = c ? $c : 0 }
       END { print v + 0 }' /proc/net/netstat 2>/dev/null || echo 0
}

report() { # label kind json rss_before rss_peak
  python3 - "$@" <<'PY'
import json, sys
label, kind, path, before, peak = sys.argv[1:]
r = json.load(open(path))
before, peak = int(before), int(peak)
v = r.get("viewers") if "viewers" in r else None
if kind in ("ws", "sse"):
    v = r
    held = max(v["held"], 1)
    print(f"{kind:6} {label:9} {v['held']:>6} held, {v['failed']} failed, opened at {v['opened_per_sec']:>7,.0f}/s; "
          f"server RSS {before/1024:6.1f} -> {peak/1024:7.1f} MiB: {(peak-before)/held:6.1f} KiB per viewer")
    sys.exit()
lat = r["latency"]; ok = (r.get("verify") or {}).get("ok")
a = r["answer_latency"]
line = (f"{kind:6} {label:9} {r['acknowledged_per_sec']:>8,.0f} votes/s  p50 {lat['p50_ms']:8.2f} ms  "
        f"p99 {lat['p99_ms']:8.2f} ms  max {lat['max_ms']:9.2f} ms (send to answer p99 {a['p99_ms']:.2f} ms, "
        f"sent late p99 {(r.get('send_lateness') or {}).get('p99_ms', 0):.2f} ms)  verify {'ok' if ok else ok}")
# The worst second of 100 votes or more, as the loadgen report names it (Second::worst).
w = max((s for s in r.get("by_second") or [] if s["acknowledged"] >= 100), key=lambda s: s["p99_ms"], default=None)
if w:
    line += (f"; worst second (to {w['until_secs']:.0f} s): p99 {w['p99_ms']:.1f} ms, "
             f"send to answer p99 {w['answer_p99_ms']:.1f} ms, sent late p99 {w.get('send_late_p99_ms', 0):.1f} ms")
if v:
    l = v["lag"]
    line += (f"; {v['held']} viewers held (opened {v['opened_per_sec']:,.0f}/s), lag p50 {l['p50_ms']:.1f} ms p99 {l['p99_ms']:.1f} ms "
             f"max {l['max_ms']:.1f} ms, {v['messages_per_sec']:,.0f} msg/s; server RSS peak {peak/1024:.0f} MiB")
print(line)
PY
}

run_one() { # label bin
  local label=$1 bin=$2 dir args before peak lg overflows
  for kind in ${KINDS:-ws sse votes both join}; do
    dir="$work/$label-$kind"; mkdir -p "$dir"
    serve "$bin" "$dir/data"
    case $kind in
      ws)    args=(--viewers "$viewers" --viewers-only --duration 3) ;;
      sse)   args=(--viewers "$viewers" --viewers-only --duration 3 --viewer-transport sse) ;;
      votes) args=(--rate "$rate" --duration "$secs" --voters 200000 --connections "$conns" --verify) ;;
      both)  args=(--rate "$rate" --duration "$secs" --voters 200000 --connections "$conns" --verify --viewers "$viewers") ;;
      join)  args=(--rate "$rate" --duration "$secs" --voters 200000 --connections "$conns" --verify --viewers "$viewers"
                   --viewers-with-votes --viewer-concurrency 1024) ;;
    esac
    sleep 0.5; before=$(rss_kib); peak=$before; overflows=$(listen_overflows)
    "$cand" loadgen --url "http://127.0.0.1:$port" "${args[@]}" --quiet \
      --json-report "$dir/r.json" >"$dir/loadgen.log" 2>&1 &
    lg=$!
    while kill -0 "$lg" 2>/dev/null; do
      peak=$(( $(rss_kib) > peak ? $(rss_kib) : peak )); sleep 0.5
    done
    wait "$lg" || { echo "$label $kind: loadgen failed"; tail -5 "$dir/loadgen.log"; }
    curl -s --max-time 5 "http://127.0.0.1:$port/metrics" >"$dir/metrics" || true
    kill "$server"; wait "$server" 2>/dev/null || true
    overflows=$(( $(listen_overflows) - overflows ))
    report "$label" "$kind" "$dir/r.json" "$before" "$peak"
    case $kind in
      votes|both|join) echo "       $(server_view "$dir/metrics"); the kernel's listen overflows: $overflows" ;;
    esac
  done
}

echo "viewers: $viewers per run; votes: $rate/s for $secs s; $(nproc) cores; $(date -u +%F)"
run_one baseline "$base"
run_one candidate "$cand"
