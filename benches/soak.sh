#!/usr/bin/env bash
# Soak test (not run by CI): the release proxy in front of two reference backends for N minutes
# under session churn (initialize, notifications/initialized, tools/call, DELETE), open SSE
# streams, a reload every 15 s (alternately `switchyard reload` and SIGHUP through the pid
# file, flipping `active` between the pools), and hostile connections (idle TCP, partial request
# heads, slow bodies). Prints the proxy's resident memory and open file descriptors every minute
# and, at the end, whether either grew after the warm-up (the first minute).
#
#   benches/soak.sh [--minutes N]     (default 30)
#
#   SOAK_BIN      the switchyard binary (default target/release/switchyard, built if missing)
#   SOAK_CLIENTS  churn clients (default 8), SOAK_STREAMS open streams (default 20)
#   SOAK_HOSTILE  hostile connections of each kind (default 30)
#   OUT           where the config and logs go (default a fresh temporary directory)
set -euo pipefail
MINUTES=30
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        *) echo "usage: $0 [--minutes N]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
BIN=${SOAK_BIN:-target/release/switchyard}
if [ ! -x "$BIN" ]; then
    cargo build --release --locked
fi
OUT=${OUT:-$(mktemp -d /tmp/switchyard-soak.XXXXXX)}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

start_backend() { # name -> prints the bound address
    "$BIN" backend --listen 127.0.0.1:0 --name "$1" >"$OUT/$1.out" 2>"$OUT/$1.log" &
    PIDS+=($!)
    for _ in $(seq 200); do
        grep -q "listening on" "$OUT/$1.out" 2>/dev/null && break
        sleep 0.05
    done
}
start_backend soak-blue
start_backend soak-green
BLUE=$(awk '/listening on/ {print $3; exit}' "$OUT/soak-blue.out")
GREEN=$(awk '/listening on/ {print $3; exit}' "$OUT/soak-green.out")
read -r PORT ADMIN < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

write_config() { # active pool
    cat >"$OUT/switchyard.toml" <<TOML
[[listener]]
bind = "127.0.0.1:$PORT"

[admin]
bind = "127.0.0.1:$ADMIN"

[pools.blue]
backends = ["$BLUE"]

[pools.green]
backends = ["$GREEN"]

[routing]
active = "$1"

[timeouts]
drain = "5s"
client_body = "10s"

[limits]
header_read_timeout = "5s"

[log]
level = "warn"
TOML
}
write_config blue
"$BIN" run --config "$OUT/switchyard.toml" --pid-file "$OUT/switchyard.pid" 2>"$OUT/proxy.log" &
PIDS+=($!)
for _ in $(seq 200); do [ -s "$OUT/switchyard.pid" ] && break; sleep 0.05; done
PROXY_PID=$(cat "$OUT/switchyard.pid")
echo "soak: proxy pid $PROXY_PID on 127.0.0.1:$PORT, backends $BLUE $GREEN, $MINUTES minute(s); logs in $OUT"

export SOAK_BIN_PATH=$BIN SOAK_OUT=$OUT SOAK_PORT=$PORT SOAK_PID=$PROXY_PID SOAK_MINUTES=$MINUTES
export SOAK_BLUE=$BLUE SOAK_GREEN=$GREEN
python3 benches/soak.py
