#!/usr/bin/env bash
# Exactly once through kill -9, full size: VOTES submissions from VOTERS voters across POLLS polls
# (20% duplicates, 5% retries with the same vote_id) while the server is killed with SIGKILL KILLS
# times and restarted on the same data directory. Then the published tallies must equal the ones
# computed from the acknowledged votes, and `crowdtick recount` must agree.
#
#   scripts/crash-test.sh                       # 1,000,000 votes, 200,000 voters, 10 polls, 5 kills
#   VOTES=200000 KILLS=3 scripts/crash-test.sh  # smaller
set -euo pipefail
cd "$(dirname "$0")/.."
VOTES=${VOTES:-1000000}
VOTERS=${VOTERS:-200000}
POLLS=${POLLS:-10}
KILLS=${KILLS:-5}
RATE=${RATE:-25000}          # open-loop submissions/s (the load spans VOTES/RATE seconds)
PORT=${PORT:-18123}
WORK=$(mktemp -d /tmp/crowdtick-crash.XXXXXX)
BIN=./target/release/crowdtick
URL=http://127.0.0.1:$PORT

[ -n "${CROWDTICK_TEST_BIN:-}" ] && BIN=$CROWDTICK_TEST_BIN || cargo build --release --quiet
echo "work dir: $WORK"

start() {
  "$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >>"$WORK/server.out" 2>>"$WORK/server.log" &
  SERVER=$!
  for _ in $(seq 200); do curl -sf "$URL/healthz" >/dev/null && return; sleep 0.05; done
  echo "server did not start; see $WORK/server.log" >&2; exit 1
}
cleanup() { for p in "${SERVER:-}" "${LOADGEN:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done; true; }
trap cleanup EXIT

start
"$BIN" loadgen --url "$URL" --votes "$VOTES" --voters "$VOTERS" --polls "$POLLS" --rate "$RATE" \
  --connections 128 --duplicate-share 0.2 --retry-share 0.05 --give-up-secs 300 \
  --record "$WORK/acks.rec" --json-report "$WORK/load.json" 2>"$WORK/loadgen.progress" &
LOADGEN=$!

span=$(( VOTES / RATE ))
interval=$(( span / (KILLS + 1) )); [ "$interval" -ge 1 ] || interval=1
for k in $(seq "$KILLS"); do
  sleep "$interval"
  kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null || true
  echo "kill -9 #$k at $(date +%T)"
  start
done
wait "$LOADGEN"; LOADGEN=
tail -n 6 "$WORK/loadgen.progress" || true
grep -E '"(submissions|acknowledged|requests|given_up|given_up_uncertain|rejected)"' "$WORK/load.json" || true

echo "== verify against the acknowledged votes"
"$BIN" loadgen --url "$URL" --verify-only --record "$WORK/acks.rec" --verify-timeout-secs 120
echo "== recount from the log"
"$BIN" recount --data-dir "$WORK/data"
echo "crash test passed: $KILLS kill -9s, every acknowledged vote counted exactly once"
kill -9 "$SERVER" 2>/dev/null; SERVER=
rm -rf "$WORK"
