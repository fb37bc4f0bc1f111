#!/usr/bin/env bash
# The old API's Locust scenario, A/B (issue 11 item 7; BENCHMARKS.md "The old API's Locust
# scenario"): 1,000 SeedApiUsers (register, create polls, vote in each, read results) spawned at
# 100/s for 60 s against a fresh embedded node of each binary, Locust on the same machine.
#
#   [RATE=100] scripts/bench-locust.sh BASELINE_BIN CANDIDATE_BIN [USERS] [SECS]
#
# Prints Locust's summary (p50/p99/max per endpoint, failures) for each. Needs `locust` on PATH
# (or LOCUST=/path/to/locust): `pip install locust`.
set -euo pipefail
case ${1:-} in -h | --help) sed -n '2,9p' "$0"; exit 0 ;; esac
base=${1:?baseline binary}; cand=${2:?candidate binary}; users=${3:-1000}; secs=${4:-60}
locust=${LOCUST:-locust}
command -v "$locust" >/dev/null || { echo "locust not found: pip install locust (or set LOCUST)"; exit 1; }
port=18198
work=$(mktemp -d /tmp/crowdtick-locust.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
locustfile="$(dirname "$0")/../loadtest/locust/locustfile.py"

for side in "baseline:$base" "candidate:$cand"; do
  label=${side%%:*}; bin=${side#*:}
  serve "$bin" "$work/$label"
  echo "== $label ($users users at ${RATE:-100}/s, ${secs} s)"
  "$locust" -f "$locustfile" --host "http://127.0.0.1:$port" --headless -u "$users" -r "${RATE:-100}" -t "${secs}s" \
    --only-summary SeedApiUser 2>&1 | grep -E '^(Type|-|POST|GET|Aggregated| )|Response time percentiles|Error report' | head -40 || true
  kill "$server"; wait "$server" 2>/dev/null || true
done
