# Shared by the benchmark scripts (sourced): servers on 127.0.0.1:$port.

# Waits for /healthz on $port (up to TENTHS tenths of a second, default 200); exits with the
# server's last log lines if it never answers.
wait_healthy() { # log [tenths]
  for _ in $(seq "${2:-200}"); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start: $(tail -5 "$1")" >&2; exit 1
}

# User + system CPU time so far, in clock ticks (`getconf CLK_TCK` a second), of a process (PID)
# or of one of its threads (PID/task/TID).
cpu_ticks() { # pid
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# Starts `BIN serve` on DIR (embedded log) and waits for it; its pid is $server.
serve() { # bin dir
  "$1" serve --data-dir "$2" --listen "127.0.0.1:$port" >"$2.log" 2>&1 &
  server=$!
  wait_healthy "$2.log"
}

# Opens poll 1 (options A, B, C) on the server at $port, for wrk's single votes.
open_poll() {
  curl -sf -H 'Authorization: Bearer dev-operator-key' "127.0.0.1:$port/v1/polls" \
    -d '{"title":"bench","options":["A","B","C"],"open":true}' >/dev/null
}

# Writes wrk's script of single votes to FILE: POST /v1/votes in poll 1, a new voter each time.
write_vote_lua() { # file
  cat >"$1" <<'LUA'
local counter, tid = 0, 0
setup = function(thread) thread:set("tid", tid); tid = tid + 1 end
request = function()
  counter = counter + 1
  local body = string.format('{"poll_id":1,"option_id":%d,"voter_id":"t%d-v%d"}', counter % 3, tid, counter)
  return wrk.format("POST", "/v1/votes", {["Content-Type"]="application/json"}, body)
end
LUA
}

# The server's own view of the single votes it acknowledged, from a scrape of its /metrics (FILE):
# from the kernel's receipt of a request to its 202 (crowdtick_ingest_vote_sojourn_seconds) and
# from the append to durable (crowdtick_ingest_vote_duration_seconds). Histogram buckets, so each
# quantile is "<= the bucket's bound". With the load generator's send-to-answer figures beside it,
# this says whether a vote's time went to the server or to the generator and the kernel.
server_view() { # metrics-file
  python3 - "$1" <<'PY'
import sys
hist = {}
for line in open(sys.argv[1]):
    if line.startswith("#") or "_bucket{" not in line:
        continue
    name = line.split("_bucket{")[0]
    le = line.split('le="')[1].split('"')[0]
    hist.setdefault(name, []).append((float("inf") if le == "+Inf" else float(le), int(float(line.split()[-1]))))
def within(name, q):
    buckets = sorted(hist.get(name, []))
    count = buckets[-1][1] if buckets else 0
    return next((f"<= {le * 1000:g} ms" for le, n in buckets if count and n >= q * count), "n/a")
sojourn, durable = "crowdtick_ingest_vote_sojourn_seconds", "crowdtick_ingest_vote_duration_seconds"
print(f"server: receipt to 202 p50 {within(sojourn, 0.5)}, p99 {within(sojourn, 0.99)}; "
      f"append to durable p99 {within(durable, 0.99)}")
PY
}

# The crowdtick binary a script measures: BIN when given (it must be an executable), else this
# checkout's release build, built first. Prints its absolute path; exits 2 (a failed build, or
# no binary there, with SCRIPT's name).
crowdtick_binary() { # script [bin]
  local target_dir; target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
  [ -n "${2:-}" ] || cargo build --release -q --bin crowdtick -p crowdtick || exit 2
  local bin; bin=$(realpath -m "${2:-$target_dir/release/crowdtick}")
  [ -x "$bin" ] || { echo "$1: no crowdtick binary at $bin (--help)" >&2; exit 2; }
  echo "$bin"
}

# Builds loadtest's example NAME with cargo's PROFILE (dev, release, ...) and prints its path;
# exits 2 when the build fails.
loadtest_example() { # name profile
  cargo build --profile "$2" -q -p loadtest --example "$1" || exit 2
  echo "$(realpath -m "${CARGO_TARGET_DIR:-target}")/$([ "$2" = dev ] && echo debug || echo "$2")/examples/$1"
}
