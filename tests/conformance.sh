#!/usr/bin/env bash
# Runs the MCP conformance suite (npm @modelcontextprotocol/conformance) against the reference
# backend, directly and through the proxy in front of three of them.
#
#   tests/conformance.sh                 # builds target/debug/switchyard if needed
#   SWITCHYARD_BIN=target/release/switchyard tests/conformance.sh
#   SCENARIOS="ping tools-list" tests/conformance.sh
#
# Needs Node 20+ with npx, and network access to the npm registry on first use. Everything
# listens on free loopback ports; every process it starts is stopped on exit. Exit status is
# non-zero if any scenario fails on either target.
set -euo pipefail

CONFORMANCE="@modelcontextprotocol/conformance@0.1.12"
SCENARIOS="${SCENARIOS:-server-initialize ping tools-list logging-set-level server-sse-multiple-streams server-sse-polling dns-rebinding-protection}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${SWITCHYARD_BIN:-$ROOT/target/debug/switchyard}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-conformance.XXXXXX")"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --bin switchyard)
fi

# Waits until FILE has a line matching PATTERN and prints it.
wait_for_line() {
    local file=$1 pattern=$2
    for _ in $(seq 1 200); do
        if grep -m1 -E "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}

# Reference backends on free ports; each prints "listening on ADDRESS as NAME" first.
# (Started in this shell, not in a $(...) subshell, so that cleanup knows their pids.)
BACKENDS=()
for name in ref-1 ref-2 ref-3; do
    "$BIN" backend --listen 127.0.0.1:0 --name "$name" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
done
for name in ref-1 ref-2 ref-3; do
    BACKENDS+=("$(wait_for_line "$WORK/$name.out" '^listening on ' | awk '{print $3}')")
done

cat >"$WORK/switchyard.toml" <<EOF
[[listener]]
bind = "127.0.0.1:0"

[pools.blue]
backends = ["${BACKENDS[0]}", "${BACKENDS[1]}", "${BACKENDS[2]}"]

[routing]
active = "blue"
EOF
"$BIN" run --config "$WORK/switchyard.toml" >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
PIDS+=($!)
PROXY="$(wait_for_line "$WORK/proxy.err" ' listening address=' | sed -E 's/.*address=([^ ]+).*/\1/')"

TARGETS=("direct=http://${BACKENDS[0]}/mcp" "proxy=http://$PROXY/mcp")
FAILED=()
SUMMARY=()
for target in "${TARGETS[@]}"; do
    label=${target%%=*}
    url=${target#*=}
    for scenario in $SCENARIOS; do
        log="$WORK/$label-$scenario.log"
        if npx --yes "$CONFORMANCE" server --url "$url" --scenario "$scenario" >"$log" 2>&1 &&
            grep -qE 'Passed: [0-9]+/[0-9]+, 0 failed' "$log"; then
            result="pass"
        else
            result="FAIL"
            FAILED+=("$label/$scenario")
            cat "$log" >&2
        fi
        line="$(grep -E 'Passed: ' "$log" | tail -1 || true)"
        SUMMARY+=("$(printf '%-7s %-28s %-4s %s' "$label" "$scenario" "$result" "$line")")
    done
done

printf '%s\n' "${SUMMARY[@]}"
if ((${#FAILED[@]} > 0)); then
    echo "conformance: ${#FAILED[@]} failed: ${FAILED[*]}" >&2
    exit 1
fi
echo "conformance: all scenarios pass directly and through the proxy"
