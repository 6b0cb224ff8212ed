#!/usr/bin/env bash
# The whole test suite: unit and integration tests (real proxy and backends on loopback), then
# the MCP conformance suite against the reference backend, directly and through the proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --no-fail-fast
tests/conformance.sh
