#!/usr/bin/env bash
# Switchyard vs nginx vs HAProxy vs a direct connection, in front of the same bundled backend.
#
#   benches/compare.sh            # full run, about 14 minutes
#   BENCH_SECONDS=3 benches/compare.sh   # quick smoke run
#
# Installs nginx, haproxy and wrk with apt-get when missing, builds Switchyard in release mode,
# then runs every scenario against each target one after another: the request scenarios (post,
# ws, tls, https) in $BENCH_ROUNDS rounds, the targets' order reversed every other round, and
# each row of the table is the median of the rounds; then the stream and idle scenarios once per
# target. The proxy pinned to CPU
# $PROXY_CPU with one worker (nginx worker_processes 1, HAProxy nbthread 1, Switchyard
# TOKIO_WORKER_THREADS=1), the backend and the load generator pinned to CPU $LOAD_CPU.
# Loopback only. Every run is bounded by `timeout`; the trap stops everything it started.
# Raw results (one JSON line per run) go to $OUT/results.jsonl; the tables (every scenario, then
# issue 14's targets judged from this run: goal, measured, met or not) go to stdout and
# $OUT/table.md.
#
# Settings (environment):
#   BENCH_SECONDS   measured seconds per run (default 10; each run also warms up 1 s)
#   BENCH_STREAMS   SSE fan-out sizes (default "1000 5000 10000 max"); each is capped by the open-file
#                   limit (a proxy holds two descriptors per stream), "max" means that cap
#   BENCH_TARGETS   which targets to run, in order (default "nginx haproxy switchyard direct";
#                   nginx first because the fixed-rate runs use half its maximum)
#   BENCH_SCENARIOS which scenarios to run (default "post ws tls https sse ssetls idle"): post =
#                   POST maximum (wrk and loadgen) and latency at a fixed rate, ws = WebSocket
#                   ping, tls = full handshakes, https = keep-alive POSTs over TLS (wrk), sse =
#                   SSE fan-out, ssetls = SSE fan-out over TLS, idle = memory per idle keep-alive
#                   connection (2 s and 14 s after the answers)
#   BENCH_ROUNDS    rounds of the request scenarios (default 2: the targets' order, then reversed).
#                   This machine's speed drifts by 10-20 % over minutes, so whichever target
#                   ran in a slow spell read low; alternating the order and taking the median
#                   evens that out (every round's figures stay in results.jsonl, and the POST
#                   rows are also printed per round)
#   BENCH_TLS_STREAMS  streams of the ssetls scenario (default 1000)
#   BENCH_OPEN_CONCURRENCY  SSE streams being opened at once (default 256)
#   BENCH_SSE_PHASE when each SSE stream's 1 s ticker sends: "random" (default; each stream at
#                   its own random moment of the second, as independent notifications come) or
#                   "aligned" (each ticker starts when its stream opens, so streams opened in
#                   one burst send in the same millisecond for their whole life, and the
#                   latency rows measure how many events share a millisecond)
#   BENCH_IDLE      how many idle keep-alive connections the idle scenario holds (default 5000)
#   BENCH_FIXED_RATE  POST rate for the latency runs (default: half of nginx's measured maximum)
#   BENCH_BASELINE_BIN  another Switchyard binary (e.g. one built from an older commit): adds the
#                   target "baseline", which runs it exactly like "switchyard"; put it in
#                   BENCH_TARGETS where it should run (the table adds a switchyard / baseline column)
#   BENCH_BIN       the Switchyard binary to measure (and to run the backend and load generator
#                   with); default: build target/release/switchyard
#   PROXY_CPU, LOAD_CPU   CPU numbers for taskset (default 0 and 1)
#   OUT             output directory (default: a new /tmp/switchyard-bench.* directory)
#   SWITCHYARD_EXTRA  TOML appended to Switchyard's config, e.g. "[policy]"
#   BENCH_TLS_KEY   the certificates' key type: rsa2048 (default) or ecdsa-p256
#   BENCH_TLS_AES128  "yes": nginx and HAProxy also choose TLS_AES_128_GCM_SHA256 first, as
#                   Switchyard does (default "no": their own defaults, AES-256 first)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
STREAMS=${BENCH_STREAMS:-"1000 5000 10000 max"}
TARGETS=${BENCH_TARGETS:-"nginx haproxy switchyard direct"}
ROUNDS=${BENCH_ROUNDS:-2}
ROUND=1
SCENARIOS=" ${BENCH_SCENARIOS:-post ws tls https sse ssetls idle} "
IDLE_CONNECTIONS=${BENCH_IDLE:-5000}
TLS_STREAMS=${BENCH_TLS_STREAMS:-1000}
OPEN_CONCURRENCY=${BENCH_OPEN_CONCURRENCY:-256}
SSE_PHASE=${BENCH_SSE_PHASE:-random}
case $SSE_PHASE in
    random | aligned) ;;
    *) echo "BENCH_SSE_PHASE must be random or aligned, not $SSE_PHASE" >&2; exit 2 ;;
esac
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
FIXED_RATE=${BENCH_FIXED_RATE:-}
TLS_KEY=${BENCH_TLS_KEY:-rsa2048}
TLS_AES128=${BENCH_TLS_AES128:-no}
case $TLS_KEY in
    rsa2048) NEWKEY=(-newkey rsa:2048) ;;
    ecdsa-p256) NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    *) echo "BENCH_TLS_KEY must be rsa2048 or ecdsa-p256, not $TLS_KEY" >&2; exit 2 ;;
esac
AES128_FIRST=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
OUT=${OUT:-$(mktemp -d /tmp/switchyard-bench.XXXXXX)}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

BACKEND_PORT=19001
# "baseline" is another Switchyard binary run with the same config, so it shares the ports.
declare -A HTTP_PORT=([direct]=19001 [switchyard]=19101 [baseline]=19101 [nginx]=19201 [haproxy]=19301)
declare -A TLS_PORT=([switchyard]=19443 [baseline]=19443 [nginx]=19444 [haproxy]=19445)
ADMIN_PORT=19901
POST_CONNECTIONS=64
WS_CONNECTIONS=16
WS_RATE=1000
TLS_CONNECTIONS=32

log() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
OLD_PORT_RANGE=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n "$OLD_PORT_RANGE" ]]; then
        sysctl -qw net.ipv4.ip_local_port_range="$OLD_PORT_RANGE" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a command in the background on a CPU; sets STARTED to its pid.
start_pinned() {
    local cpu=$1 logfile=$2
    shift 2
    taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
}

wait_port() {
    local port=$1
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    log "nothing listens on port $port; see the logs in $OUT"
    return 1
}

# ---------------------------------------------------------------- prerequisites
install_missing() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v jq >/dev/null || missing+=(jq)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

raise_limits() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    # Ephemeral ports start above the fixed ports used here (19001-19901), so no outgoing
    # connection can sit on a port a target is about to bind.
    OLD_PORT_RANGE=$(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)
    if ! sysctl -qw net.ipv4.ip_local_port_range="20000 65535" 2>/dev/null; then
        OLD_PORT_RANGE=""
    fi
    # A proxy holds a client and an upstream descriptor per stream, plus a margin.
    MAX_STREAMS=$((($(ulimit -n) - 256) / 2))
    log "open files: $(ulimit -n), so at most $MAX_STREAMS proxied streams"
}

make_certificates() {
    local dir="$OUT/tls"
    mkdir -p "$dir"
    openssl req -x509 "${NEWKEY[@]}" -nodes -days 2 -subj /CN=switchyard-bench-ca \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req "${NEWKEY[@]}" -nodes -subj /CN=localhost \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$dir/ext.cnf"
    openssl x509 -req -days 2 -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
    cat "$dir/server.pem" "$dir/server.key" >"$dir/combined.pem"
}

# ---------------------------------------------------------------- configurations
write_configs() {
    mkdir -p "$OUT/nginx/logs" "$OUT/nginx/tmp"
    cat >"$OUT/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections $(ulimit -n); }
http {
    access_log off;
    client_body_temp_path $OUT/nginx/tmp/body;
    proxy_temp_path $OUT/nginx/tmp/proxy;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 128;
    }
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    server {
        listen 127.0.0.1:${HTTP_PORT[nginx]} backlog=4096;
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl backlog=4096;
        ssl_certificate $OUT/tls/server.pem;
        ssl_certificate_key $OUT/tls/server.key;
        ssl_protocols TLSv1.3;
$(if [[ $TLS_AES128 == yes ]]; then
    printf '        ssl_prefer_server_ciphers on;\n        ssl_conf_command Ciphersuites %s;\n' "$AES128_FIRST"
fi)
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }
        location /ws {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 1h;
        }
    }
}
EOF
    cat >"$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAX_STREAMS
defaults
    mode http
    option http-no-delay
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend bench
    bind 127.0.0.1:${HTTP_PORT[haproxy]}
    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $OUT/tls/combined.pem ssl-min-ver TLSv1.3$(
        if [[ $TLS_AES128 == yes ]]; then printf ' ciphersuites %s' "$AES128_FIRST"; fi)
    default_backend backend
backend backend
    server b1 127.0.0.1:$BACKEND_PORT
EOF
    write_switchyard_config "$OUT/switchyard.toml" yes
    if ! "$BIN" check --config "$OUT/switchyard.toml" >"$OUT/switchyard-check.log" 2>&1; then
        log "this Switchyard has no TLS listeners yet: TLS is measured without it"
        SWITCHYARD_TLS=no
        write_switchyard_config "$OUT/switchyard.toml" no
        "$BIN" check --config "$OUT/switchyard.toml" >"$OUT/switchyard-check.log"
    else
        SWITCHYARD_TLS=yes
    fi
}

write_switchyard_config() {
    local file=$1 tls=$2
    cat >"$file" <<EOF
[[listener]]
bind = "127.0.0.1:${HTTP_PORT[switchyard]}"
EOF
    if [[ $tls == yes ]]; then
        cat >>"$file" <<EOF

[[listener]]
bind = "127.0.0.1:${TLS_PORT[switchyard]}"
tls = { cert = "$OUT/tls/server.pem", key = "$OUT/tls/server.key" }
EOF
    fi
    cat >>"$file" <<EOF

[admin]
bind = "127.0.0.1:$ADMIN_PORT"

[pools.bench]
backends = ["127.0.0.1:$BACKEND_PORT"]

[routing]
active = "bench"

[timeouts]
stream_idle = "1h"

[upstream]
max_idle_per_backend = 128

[limits]
max_connections = $(ulimit -n)
# Idle keep-alive connections live 60 s (nginx keepalive_timeout: 75 s, HAProxy here: 1 h), so
# the idle scenario's second sample, 14 s after the answers, finds them open.
header_read_timeout = "60s"

${SWITCHYARD_EXTRA:-}
EOF
}

# ---------------------------------------------------------------- targets
# Starts a target; sets TARGET_PIDS to the processes whose CPU and memory are watched.
start_target() {
    local name=$1
    # A stray process on the port would take connections meant for the target (nginx and
    # HAProxy may share it through SO_REUSEPORT; Switchyard refuses a busy port by itself), so a
    # busy port stops the run.
    if [[ $name != direct ]] && (exec 3<>"/dev/tcp/127.0.0.1/${HTTP_PORT[$name]}") 2>/dev/null; then
        log "port ${HTTP_PORT[$name]} is already in use; stop whatever listens there first"
        exit 1
    fi
    case $name in
        direct)
            TARGET_PIDS=$BACKEND_PID
            return 0
            ;;
        nginx)
            start_pinned "$PROXY_CPU" "$OUT/nginx/stdout.log" \
                nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;'
            ;;
        haproxy)
            start_pinned "$PROXY_CPU" "$OUT/haproxy.log" haproxy -db -f "$OUT/haproxy.cfg"
            ;;
        switchyard | baseline)
            local binary=$BIN
            [[ $name == baseline ]] && binary=${BENCH_BASELINE_BIN:?BENCH_BASELINE_BIN is not set}
            # Access logs are off for every target (nginx access_log off, HAProxy no log).
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 start_pinned "$PROXY_CPU" \
                "$OUT/$name.log" "$binary" run --config "$OUT/switchyard.toml"
            ;;
    esac
    TARGET_MAIN=$STARTED
    wait_port "${HTTP_PORT[$name]}"
    TARGET_PIDS=$TARGET_MAIN
    if [[ $name == nginx ]]; then
        # The master binds the port before it forks the worker that holds the connections.
        for _ in $(seq 100); do
            pgrep -P "$TARGET_MAIN" >/dev/null && break
            sleep 0.05
        done
    fi
    local child
    for child in $(pgrep -P "$TARGET_MAIN" || true); do
        TARGET_PIDS="$TARGET_PIDS,$child"
    done
}

stop_target() {
    [[ $1 == direct ]] || stop "$TARGET_MAIN"
}

# Runs the load generator (pinned with the backend) and appends its JSON line.
loadgen() {
    local label=$1
    shift
    local line
    if line=$(timeout $((SECONDS_PER_RUN * 3 + 200)) taskset -c "$LOAD_CPU" \
        "$BIN" loadgen "$@" --label "$label" --seconds "$SECONDS_PER_RUN" 2>>"$OUT/loadgen.log"); then
        jq -c --argjson round "$ROUND" '. + {round: $round}' <<<"$line" >>"$RESULTS"
        echo "$line"
    else
        log "run $label failed (see $OUT/loadgen.log)"
        echo "{\"label\":\"$label\",\"round\":$ROUND,\"failed\":true}" >>"$RESULTS"
        echo "{}"
    fi
}

# CPU seconds used so far by the comma-separated processes: "user system", each summed.
cpu_seconds() {
    local pid u s user=0 system=0
    for pid in ${1//,/ }; do
        read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
        user=$((user + u))
        system=$((system + s))
    done
    awk -v u="$user" -v s="$system" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f %.3f", u / hz, s / hz}'
}

# wrk POSTs as fast as answers come on $POST_CONNECTIONS keep-alive connections; records req/s
# and the watched processes' CPU per request.
wrk_max() {
    local label=$1 url=$2 pids=$3
    cat >"$OUT/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"' .. string.rep("x", 170) .. '"}}}'
EOF
    local before after output rps requests user system cpu
    before=$(cpu_seconds "$pids")
    output=$(timeout $((SECONDS_PER_RUN + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$POST_CONNECTIONS" \
        -d"${SECONDS_PER_RUN}s" -s "$OUT/post.lua" "$url" 2>&1 | tee -a "$OUT/wrk.log" || true)
    after=$(cpu_seconds "$pids")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
    requests=$(awk '/requests in/ {print $1}' <<<"$output")
    # user + kernel is the CPU figure; the split shows how much of it is the kernel's loopback TCP
    # work for both sockets, which a proxy's own code can cut only by making fewer syscalls.
    read -r user system cpu < <(awk -v a="$after" -v b="$before" 'BEGIN {
        split(a, x, " "); split(b, y, " "); u = x[1] - y[1]; s = x[2] - y[2]
        printf "%.3f %.3f %.3f\n", u, s, u + s }')
    echo "{\"label\":\"$label\",\"round\":$ROUND,\"mode\":\"wrk\",\"per_second\":${rps:-0},\"ok\":${requests:-0},\"watched_cpu_seconds\":$cpu,\"watched_user_seconds\":$user,\"watched_system_seconds\":$system}" >>"$RESULTS"
}

has() { [[ $SCENARIOS == *" $1 "* ]]; }

streams_for() {
    local wanted=$1
    [[ $wanted == max ]] && wanted=$MAX_STREAMS
    ((wanted > MAX_STREAMS)) && wanted=$MAX_STREAMS
    echo "$wanted"
}

# Whether the target has a TLS listener in this run.
tls_of() {
    local name=$1 tls=no
    [[ $name != direct && ($name != switchyard || $SWITCHYARD_TLS == yes) ]] && tls=yes
    [[ $name == baseline ]] && tls=$SWITCHYARD_TLS
    echo "$tls"
}

# One round of the request scenarios against one target.
run_requests() {
    local name=$1 port=${HTTP_PORT[$1]} tls
    tls=$(tls_of "$name")
    if has post || has ws || has tls || has https; then
        start_target "$name"
        local pids=$TARGET_PIDS
        has post && run_post "$name" "$port" "$pids"
        if has ws; then
            log "$name: WebSocket ping at $WS_RATE msg/s"
            loadgen "$name:ws" ws --url "ws://127.0.0.1:$port/ws" --connections "$WS_CONNECTIONS" \
                --rate "$WS_RATE" --watch-pid "$pids" >/dev/null
        fi
        if has tls && [[ $tls == yes ]]; then
            log "$name: TLS handshakes"
            loadgen "$name:tls" tls --address "127.0.0.1:${TLS_PORT[$name]}" \
                --ca "$OUT/tls/ca.pem" --connections "$TLS_CONNECTIONS" --watch-pid "$pids" >/dev/null
        fi
        if has https && [[ $tls == yes ]]; then
            log "$name: keep-alive HTTPS POST throughput"
            wrk_max "$name:https_wrk" "https://localhost:${TLS_PORT[$name]}/bench/echo" "$pids"
        fi
        stop_target "$name"
    fi
}

# The stream and idle scenarios against one target, each in a fresh process.
run_streams() {
    local name=$1 port=${HTTP_PORT[$1]} tls
    tls=$(tls_of "$name")
    if has sse; then
        run_sse "$name" "$port"
    fi
    if has ssetls && [[ $tls == yes ]]; then
        log "$name: SSE fan-out over TLS, $TLS_STREAMS streams"
        start_target "$name"
        loadgen "$name:ssetls" sse \
            --url "https://127.0.0.1:${TLS_PORT[$name]}/bench/sse?every_ms=1000&phase=$SSE_PHASE" \
            --ca "$OUT/tls/ca.pem" --streams "$TLS_STREAMS" --source-ips 8 \
            --open-concurrency "$OPEN_CONCURRENCY" --warmup 2 \
            --watch-pid "$TARGET_PIDS" >/dev/null
        stop_target "$name"
    fi
    if has idle; then
        # A fresh process, as for SSE: what the POST runs left in the heap would hide growth.
        log "$name: $IDLE_CONNECTIONS idle keep-alive connections"
        start_target "$name"
        loadgen "$name:idle" idle --url "http://127.0.0.1:$port/bench/echo" \
            --connections "$IDLE_CONNECTIONS" --warmup 2 --settle 12 --watch-pid "$TARGET_PIDS" >/dev/null
        stop_target "$name"
    fi
}

run_post() {
    local name=$1 port=$2 pids=$3
    log "$name: POST throughput"
    wrk_max "$name:post_max_wrk" "http://127.0.0.1:$port/bench/echo" "$pids"
    local max
    max=$(loadgen "$name:post_max" post --url "http://127.0.0.1:$port/bench/echo" \
        --connections "$POST_CONNECTIONS" --watch-pid "$pids" | jq -r '.per_second // 0')
    # Set in the first round only: every round measures latency at the same rate.
    if [[ $name == nginx && -z ${BENCH_FIXED_RATE:-} && $ROUND == 1 ]]; then
        FIXED_RATE=$(((${max%.*} + 1) / 2))
    fi
    local rate=${FIXED_RATE:-$(((${max%.*} + 1) / 2))}
    log "$name: POST latency at $rate req/s"
    loadgen "$name:post_fixed" post --url "http://127.0.0.1:$port/bench/echo" \
        --connections "$POST_CONNECTIONS" --rate "$rate" --watch-pid "$pids" >/dev/null
}

run_sse() {
    local name=$1 port=$2 wanted streams
    local -A done_sizes=()
    for wanted in $STREAMS; do
        streams=$(streams_for "$wanted")
        [[ -z ${done_sizes[$streams]:-} ]] || continue
        done_sizes[$streams]=1
        log "$name: SSE fan-out, $streams streams"
        # A fresh process per size, so memory freed by earlier runs does not hide growth.
        start_target "$name"
        loadgen "$name:sse_$streams" sse \
            --url "http://127.0.0.1:$port/bench/sse?every_ms=1000&phase=$SSE_PHASE" --streams "$streams" \
            --source-ips 8 --open-concurrency "$OPEN_CONCURRENCY" --warmup 2 \
            --watch-pid "$TARGET_PIDS" >/dev/null
        stop_target "$name"
    done
}

# ---------------------------------------------------------------- report
print_table() {
    local sizes
    sizes=$(for w in $STREAMS; do streams_for "$w"; done | awk '!seen[$0]++' | tr '\n' ' ')
    python3 - "$RESULTS" "$TARGETS" "$sizes" <<'EOF'
import json, sys
import statistics
# Every round's line of a (target, scenario); a row shows the median of the rounds.
results = {}
for raw in open(sys.argv[1]):
    line = json.loads(raw)
    target, _, scenario = line.get("label", "").partition(":")
    results.setdefault((target, scenario), []).append(line)
targets = sys.argv[2].split()
rows = [
    ("POST max req/s (wrk)", "post_max_wrk", "per_second", "higher"),
    ("POST proxy CPU µs/request at max (wrk)", "post_max_wrk", "cpu_us_per_op", "lower"),
    ("  of it user space", "post_max_wrk", "user_us_per_op", "lower"),
    ("  of it the kernel", "post_max_wrk", "system_us_per_op", "lower"),
    ("POST max req/s (loadgen)", "post_max", "per_second", "higher"),
    ("POST p50 µs @ ½ nginx max", "post_fixed", "p50_us", "lower"),
    ("POST p99 µs @ ½ nginx max", "post_fixed", "p99_us", "lower"),
    ("POST proxy CPU µs/request @ ½ nginx max", "post_fixed", "cpu_us_per_op", "lower"),
    ("WS ping p50 µs", "ws", "p50_us", "lower"),
    ("WS ping p99 µs", "ws", "p99_us", "lower"),
    ("WS proxy CPU µs/message", "ws", "cpu_us_per_op", "lower"),
    ("TLS full handshakes/s", "tls", "per_second", "higher"),
    ("HTTPS keep-alive POST req/s (wrk)", "https_wrk", "per_second", "higher"),
    ("HTTPS proxy CPU µs/request (wrk)", "https_wrk", "cpu_us_per_op", "lower"),
    ("  of it user space", "https_wrk", "user_us_per_op", "lower"),
    ("  of it the kernel", "https_wrk", "system_us_per_op", "lower"),
    ("idle keep-alive connections open", "idle", "connections_open", "higher"),
    ("RSS bytes per idle keep-alive connection", "idle", "rss_bytes_per_connection", "lower"),
    ("idle keep-alive connections open 14 s after their answer", "idle", "connections_open_settled", "higher"),
    ("RSS bytes per idle keep-alive connection 14 s after", "idle", "rss_bytes_per_connection_settled", "lower"),
    ("SSE over TLS: streams open", "ssetls", "streams_open", "higher"),
    ("SSE over TLS: delivery p50 µs", "ssetls", "p50_us", "lower"),
    ("SSE over TLS: delivery p99 µs", "ssetls", "p99_us", "lower"),
    ("SSE over TLS: RSS bytes/stream", "ssetls", "rss_bytes_per_stream", "lower"),
    ("SSE over TLS: RSS bytes/stream after a warm-up stream", "ssetls", "rss_bytes_per_stream_warm", "lower"),
]
for size in sys.argv[3].split():
    rows += [
        (f"SSE {size}: streams open", f"sse_{size}", "streams_open", "higher"),
        (f"SSE {size}: delivery p50 µs", f"sse_{size}", "p50_us", "lower"),
        (f"SSE {size}: delivery p99 µs", f"sse_{size}", "p99_us", "lower"),
        (f"SSE {size}: RSS bytes/stream", f"sse_{size}", "rss_bytes_per_stream", "lower"),
        (f"SSE {size}: RSS bytes/stream after a warm-up stream", f"sse_{size}", "rss_bytes_per_stream_warm", "lower"),
        (f"SSE {size}: RSS MiB total", f"sse_{size}", "watched_rss_kib", "lower"),
    ]
def value_of(line, key):
    v = line.get(key)
    for per_op, seconds in (("cpu_us_per_op", "watched_cpu_seconds"),
                            ("user_us_per_op", "watched_user_seconds"),
                            ("system_us_per_op", "watched_system_seconds")):
        if key == per_op and line.get("ok") and line.get(seconds) is not None:
            v = line[seconds] * 1e6 / line["ok"]
    if key == "watched_rss_kib" and v is not None:
        v = v / 1024
    return v
def value(target, scenario, key):
    values = [value_of(line, key) for line in results.get((target, scenario), [])]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def fmt(v):
    if v is None: return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
header = ["scenario"] + targets
ratios = [t for t in ("nginx", "haproxy", "baseline") if t in targets and "switchyard" in targets]
header += [f"switchyard / {t}" for t in ratios]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for title, scenario, key, better in rows:
    cells = [value(t, scenario, key) for t in targets]
    if all(c is None for c in cells): continue
    row = [title] + [fmt(c) for c in cells]
    mine = value("switchyard", scenario, key)
    for t in ratios:
        theirs = value(t, scenario, key)
        row.append(f"{mine / theirs:.2f}×" if mine is not None and theirs else "–")
    print("| " + " | ".join(row) + " |")

# The POST rows round by round, so the spread the medians hide is in the report too.
rounds = sorted({line.get("round", 1) for lines in results.values() for line in lines})
if len(rounds) > 1:
    for title, scenario, key in (("POST max req/s (wrk)", "post_max_wrk", "per_second"),
                                 ("POST proxy CPU µs/request at max (wrk)", "post_max_wrk", "cpu_us_per_op"),
                                 ("POST p99 µs @ ½ nginx max", "post_fixed", "p99_us")):
        cells = {}
        for t in targets:
            for line in results.get((t, scenario), []):
                cells[(t, line.get("round", 1))] = value_of(line, key)
        if not cells: continue
        print()
        print("| " + " | ".join([f"{title}, by round"] + targets) + " |")
        print("|" + "---|" * (len(targets) + 1))
        for r in rounds:
            print("| " + " | ".join([f"round {r}"] + [fmt(cells.get((t, r))) for t in targets]) + " |")

# Issue 14's targets, each judged from this run alone: a ratio needs both targets in the run.
def ratio(scenario, key, other):
    mine, theirs = value("switchyard", scenario, key), value(other, scenario, key)
    return mine / theirs if mine is not None and theirs else None
def judge(title, measured, goal, ok):
    if measured is None:
        status = "not measured in this run"
    else:
        status = "met" if ok(measured) else "**not met**"
    shown = "–" if measured is None else (f"{measured:.2f}×" if "×" in goal else fmt(measured))
    print(f"| {title} | {goal} | {shown} | {status} |")
print()
print("| target | goal | measured | status |")
print("|---|---|---|---|")
sizes = sys.argv[3].split()
for size in sizes:
    per = value("switchyard", f"sse_{size}", "rss_bytes_per_stream")
    judge(f"RSS per open SSE stream at {size} streams (bytes)", per, "≤ 5120", lambda v: v <= 5120)
    warm = value("switchyard", f"sse_{size}", "rss_bytes_per_stream_warm")
    judge(f"the same, counted after one warm-up stream (bytes)", warm, "≤ 5120", lambda v: v <= 5120)
for size in sizes[-1:]:
    line = (results.get(("switchyard", f"sse_{size}")) or [{}])[-1]
    per, idle = line.get("rss_bytes_per_stream"), line.get("watched_rss_kib_before")
    if per is not None and idle is not None:
        print(f"| idle RSS before the streams (MiB) | – | {idle / 1024:.1f} | – |")
        print(f"| 50 000 streams, extrapolated from {size} (MiB) | – | {(idle * 1024 + 50000 * per) / 2**20:,.0f} | linear guess |")
judge("POST max req/s vs nginx (wrk)", ratio("post_max_wrk", "per_second", "nginx"), "≥ 1.2×", lambda v: v >= 1.2)
judge("POST max req/s vs HAProxy (wrk)", ratio("post_max_wrk", "per_second", "haproxy"), "≥ 1.1×", lambda v: v >= 1.1)
judge("proxy CPU per POST vs nginx (wrk)", ratio("post_max_wrk", "cpu_us_per_op", "nginx"), "≤ 0.85×", lambda v: v <= 0.85)
# What a CPU target leaves for user space once Switchyard's kernel part is paid: the proxy's CPU
# is saturated at the maximum, so N× nginx's requests per second needs about nginx's CPU per
# request / N, and the kernel's loopback TCP work is part of every proxy's CPU figure.
def user_space_left(scenario, what, share, goal):
    kernel = value("switchyard", scenario, "system_us_per_op")
    nginx_cpu = value("nginx", scenario, "cpu_us_per_op")
    nginx_user = value("nginx", scenario, "user_us_per_op")
    if kernel is None or not nginx_cpu or nginx_user is None:
        return
    print(f"| Switchyard's kernel CPU per {what} alone vs nginx's whole CPU per {what} | – | {kernel / nginx_cpu:.2f}× | – |")
    print(f"| user-space µs per {what} left by {goal} (nginx's own: {nginx_user:.2f}) | – | {share * nginx_cpu - kernel:.2f} | – |")
user_space_left("post_max_wrk", "POST", 0.85, "≤ 0.85× nginx's CPU")
judge("POST p99 @ ½ nginx max vs nginx", ratio("post_fixed", "p99_us", "nginx"), "≤ 1×", lambda v: v <= 1)
judge("POST p99 @ ½ nginx max vs HAProxy", ratio("post_fixed", "p99_us", "haproxy"), "≤ 1×", lambda v: v <= 1)
big = min(sizes, key=lambda s: abs(int(s) - 10000)) if sizes else None
if big:
    judge(f"SSE delivery p99 at {big} streams vs HAProxy", ratio(f"sse_{big}", "p99_us", "haproxy"), "≤ 1×", lambda v: v <= 1)
judge("TLS full handshakes/s vs nginx", ratio("tls", "per_second", "nginx"), "≥ 1.5×", lambda v: v >= 1.5)
judge("HTTPS keep-alive req/s vs nginx", ratio("https_wrk", "per_second", "nginx"), "≥ 1.2×", lambda v: v >= 1.2)
user_space_left("https_wrk", "HTTPS request", 1 / 1.2, "≥ 1.2× nginx's rate")
judge("WS proxy CPU/message vs baseline", ratio("ws", "cpu_us_per_op", "baseline"), "≤ 1.05×", lambda v: v <= 1.05)
small = min(sizes, key=lambda s: int(s)) if sizes else None
if small:
    judge(f"SSE delivery p99 at {small} streams vs baseline", ratio(f"sse_{small}", "p99_us", "baseline"), "≤ 1.05×", lambda v: v <= 1.05)
EOF
}

# ---------------------------------------------------------------- main
install_missing
raise_limits
BIN=${BENCH_BIN:-}
if [[ -z $BIN ]]; then
    log "building release"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN="$ROOT/target/release/switchyard"
fi
make_certificates
write_configs
TOKIO_WORKER_THREADS=1 start_pinned "$LOAD_CPU" "$OUT/backend.log" \
    "$BIN" backend --listen "127.0.0.1:$BACKEND_PORT" --name bench --bench-routes
BACKEND_PID=$STARTED
wait_port "$BACKEND_PORT"
{
    echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "versions: $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $("$BIN" --version)"
    echo "TLS: $TLS_KEY certificates, nginx and HAProxy choosing AES-128 first: $TLS_AES128"
    echo "SSE streams opened at once: $OPEN_CONCURRENCY, tickers' phase: $SSE_PHASE"
    echo "rounds of the request scenarios: $ROUNDS"
} | tee "$OUT/machine.txt" >&2
if has post || has ws || has tls || has https; then
    reversed=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')
    for ROUND in $(seq "$ROUNDS"); do
        order=$TARGETS
        ((ROUND % 2 == 0)) && order=$reversed
        log "round $ROUND of $ROUNDS: $order"
        for target in $order; do
            run_requests "$target"
        done
    done
fi
ROUND=1
for target in $TARGETS; do
    run_streams "$target"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
print_table | tee "$OUT/table.md"
log "raw results: $RESULTS"
