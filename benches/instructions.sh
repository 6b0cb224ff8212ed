#!/usr/bin/env bash
# User-space instructions per proxied POST, counted by callgrind.
#
#   benches/instructions.sh                      # target/release/switchyard
#   benches/instructions.sh OLD_BIN NEW_BIN ...  # several builds, one after another
#
# CPU time per request on a shared 2-vCPU VM moves by 10-20 % from run to run, which hides a
# change of a few per cent; the number of instructions the proxy executes per request repeats
# within 0.3 %. For each binary: the bundled backend, the proxy under `valgrind --tool=callgrind`
# with instrumentation off, a 3 s wrk warm-up, then instrumentation on for 10 s of `wrk -t1 -c16`
# JSON POSTs (the body compare.sh sends). Prints one line per binary: requests, instructions,
# instructions per request. Counts user space only (the kernel's share is not in it) and the
# proxy runs ~50x slower under valgrind, so this is a count, not a speed.
#
# Needs valgrind and wrk (installed with apt-get when missing). Ports 19001 (backend) and 19101
# (proxy) on 127.0.0.1 must be free; output lands in a new /tmp/switchyard-instructions.* dir.
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
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

BINS=("$@")
if ((${#BINS[@]} == 0)); then
    (cd "$ROOT" && cargo build --release --quiet)
    BINS=("$ROOT/target/release/switchyard")
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

wait_port() {
    local port=$1 i
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $port" >&2
    return 1
}

for bin in "${BINS[@]}"; do
    TOKIO_WORKER_THREADS=1 "$bin" backend --listen "127.0.0.1:$BACKEND_PORT" --name bench \
        --bench-routes >"$OUT/backend.log" 2>&1 &
    backend=$!
    PIDS+=("$backend")
    wait_port "$BACKEND_PORT"
    rm -f "$OUT"/callgrind.out*
    RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$OUT/callgrind.out" "$bin" run --config "$OUT/switchyard.toml" \
        >"$OUT/proxy.log" 2>&1 &
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
    echo "$bin: requests=$requests instructions=$instructions per_request=$((instructions / requests))"
    kill "$proxy" "$backend" 2>/dev/null || true
    wait "$proxy" "$backend" 2>/dev/null || true
done
