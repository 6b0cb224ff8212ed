#!/usr/bin/env bash
# What one open Streamable HTTP session costs the reference backend: its resident memory
# (VmRSS) before and after opening N sessions (initialize + notifications/initialized, no
# DELETE), over one keep-alive connection.
#
#   benches/backend_sessions.sh [N]        (default N = 2000)
#
#   BENCH_BIN   the switchyard binary (default target/release/switchyard)
#   BACKEND_ARGS  extra flags for `switchyard backend`
set -euo pipefail
N=${1:-2000}
BIN=${BENCH_BIN:-target/release/switchyard}
LOG=$(mktemp)
"$BIN" backend --listen 127.0.0.1:0 --name mem ${BACKEND_ARGS:-} >"$LOG" 2>/dev/null &
PID=$!
trap 'kill "$PID" 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.05; done
ADDRESS=$(awk '/listening on/ {print $3; exit}' "$LOG")
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }

python3 - "$ADDRESS" "$N" "$PID" <<'PY'
import http.client, json, sys
address, n, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = address.rsplit(":", 1)
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
conn = http.client.HTTPConnection(host, int(port))
headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "host": f"localhost:{port}"}
init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "mem", "version": "1"}}})
done = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
def session():
    conn.request("POST", "/mcp", init, headers)
    r = conn.getresponse(); r.read()
    sid = r.getheader("mcp-session-id")
    assert r.status == 200 and sid, r.status
    conn.request("POST", "/mcp", done, dict(headers, **{"mcp-session-id": sid}))
    r = conn.getresponse(); r.read()
    assert r.status in (200, 202), r.status
for _ in range(50):  # warm the allocator and the runtime
    session()
before = rss()
for _ in range(n):
    session()
after = rss()
print(f"sessions {n}  rss_before_kib {before}  rss_after_kib {after}  "
      f"per_session_bytes {(after - before) * 1024 // n}")
PY
