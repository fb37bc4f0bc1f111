# Shared by the benchmark scripts (sourced): servers on 127.0.0.1:$port.

# Waits for /healthz on $port (up to TENTHS tenths of a second, default 200); exits with the
# server's last log lines if it never answers.
wait_healthy() { # log [tenths]
  for _ in $(seq "${2:-200}"); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start: $(tail -5 "$1")"; exit 1
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
