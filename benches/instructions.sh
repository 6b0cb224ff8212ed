#!/usr/bin/env bash
# User-space instructions per proxied POST, counted by callgrind.
#
#   benches/instructions.sh                      # target/release/switchyard
#   benches/instructions.sh OLD_BIN NEW_BIN ...  # several builds, one after another
#   benches/instructions.sh nginx haproxy BIN    # the same count for nginx and HAProxy
#
# CPU time per request on a shared 2-vCPU VM moves by 10-20 % from run to run, which hides a
# change of a few per cent; the number of instructions the proxy executes per request repeats
# within 0.3 %. For each binary: the bundled backend, the proxy under `valgrind --tool=callgrind`
# with instrumentation off, a 3 s wrk warm-up, then instrumentation on for 10 s of `wrk -t1 -c16`
# JSON POSTs (the body compare.sh sends). Prints one line per binary: requests, instructions,
# instructions per request. Counts user space only (the kernel's share is not in it) and the
# proxy runs ~50x slower under valgrind, so this is a count, not a speed. `nginx` and `haproxy`
# in place of a binary run those, one worker each, configured as compare.sh configures them
# (nginx: upstream keep-alive, no buffering, no access log; HAProxy: one thread); the bundled
# backend comes from the first Switchyard binary named, else from a fresh release build.
#
# Needs valgrind and wrk (installed with apt-get when missing; nginx and HAProxy only when
# named). Ports 19001 (backend) and 19101 (proxy) on 127.0.0.1 must be free; output lands in a
# new /tmp/switchyard-instructions.* dir.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d /tmp/switchyard-instructions.XXXXXX)
BACKEND_PORT=19001
PROXY_PORT=19101
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v wrk >/dev/null || missing+=(wrk)
for target in "$@"; do
    case $target in
    nginx | haproxy) command -v "$target" >/dev/null || missing+=("$target") ;;
    esac
done
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("$ROOT/target/release/switchyard")
BACKEND_BIN=""
for target in "${TARGETS[@]}"; do
    case $target in
    nginx | haproxy) ;;
    *) BACKEND_BIN=${BACKEND_BIN:-$target} ;;
    esac
done
if [[ -z $BACKEND_BIN || $BACKEND_BIN == "$ROOT/target/release/switchyard" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    BACKEND_BIN="$ROOT/target/release/switchyard"
fi

cat >"$OUT/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"' .. string.rep("x", 170) .. '"}}}'
EOF
cat >"$OUT/switchyard.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$PROXY_PORT"

[pools.bench]
backends = ["127.0.0.1:$BACKEND_PORT"]

[routing]
active = "bench"

[upstream]
max_idle_per_backend = 128
EOF
mkdir -p "$OUT/nginx/logs" "$OUT/nginx/tmp"
cat >"$OUT/nginx/nginx.conf" <<EOF
$([[ $(id -u) -eq 0 ]] && echo "user root;")
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $OUT/nginx/tmp/body;
    proxy_temp_path $OUT/nginx/tmp/proxy;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    option http-no-delay
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend bench
    bind 127.0.0.1:$PROXY_PORT
    default_backend backend
backend backend
    server b1 127.0.0.1:$BACKEND_PORT
EOF

wait_port() {
    local port=$1 i
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $port" >&2
    return 1
}

for target in "${TARGETS[@]}"; do
    TOKIO_WORKER_THREADS=1 "$BACKEND_BIN" backend --listen "127.0.0.1:$BACKEND_PORT" --name bench \
        --bench-routes >"$OUT/backend.log" 2>&1 &
    backend=$!
    PIDS+=("$backend")
    wait_port "$BACKEND_PORT"
    rm -f "$OUT"/callgrind.out*
    case $target in
    nginx) command=(nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g "daemon off; master_process off;") ;;
    haproxy) command=(haproxy -db -f "$OUT/haproxy.cfg") ;;
    *) command=("$target" run --config "$OUT/switchyard.toml") ;;
    esac
    RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$OUT/callgrind.out" "${command[@]}" >"$OUT/proxy.log" 2>&1 &
    proxy=$!
    PIDS+=("$proxy")
    wait_port "$PROXY_PORT"
    url="http://127.0.0.1:$PROXY_PORT/bench/echo"
    timeout 60 wrk -t1 -c16 -d3s -s "$OUT/post.lua" "$url" >/dev/null
    callgrind_control -i on "$proxy" >/dev/null 2>&1
    output=$(timeout 60 wrk -t1 -c16 -d10s -s "$OUT/post.lua" "$url")
    callgrind_control -d "$proxy" >/dev/null 2>&1
    callgrind_control -i off "$proxy" >/dev/null 2>&1
    requests=$(awk '/requests in/ {print $1}' <<<"$output")
    dump=$(ls -t "$OUT"/callgrind.out.* | head -1)
    instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    echo "$target: requests=$requests instructions=$instructions per_request=$((instructions / requests))"
    kill "$proxy" "$backend" 2>/dev/null || true
    wait "$proxy" "$backend" 2>/dev/null || true
done
