#!/usr/bin/env bash
# The whole test suite: unit and integration tests (real proxy and backends on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --no-fail-fast
