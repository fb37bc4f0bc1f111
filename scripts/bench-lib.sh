# Shared by the benchmark scripts (sourced): servers on 127.0.0.1:$port.

# Waits for /healthz on $port; exits with the server's last log lines if it never answers.
wait_healthy() { # log
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start: $(tail -5 "$1")"; exit 1
}

# Starts `BIN serve` on DIR (embedded log) and waits for it; its pid is $server.
serve() { # bin dir
  "$1" serve --data-dir "$2" --listen "127.0.0.1:$port" >"$2.log" 2>&1 &
  server=$!
  wait_healthy "$2.log"
}
