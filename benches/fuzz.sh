#!/usr/bin/env bash
# Runs the property tests of hostile-input code (tests/integration/properties: config parser,
# SSE boundary tracker and endpoint scanner, PROXY headers, sealed tokens, request
# classification, the upstream client's chunk decoder and head parser; and the strict HTTP
# checks' unit property) with many more cases than CI does, round after round with fresh random seeds,
# until the time is up. A failure stops the run; proptest writes the shrunk case to
# proptest-regressions/ (commit it with the fix: it is replayed first on every later run).
#
#   benches/fuzz.sh [--minutes N] [--cases N]     (defaults: 10 minutes, 20000 cases a round)
set -euo pipefail
MINUTES=10
CASES=20000
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        *) echo "usage: $0 [--minutes N] [--cases N]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
cargo test --locked --lib --test integration --no-run
deadline=$(( $(date +%s) + MINUTES * 60 ))
round=0
while [ "$(date +%s)" -lt "$deadline" ]; do
    round=$((round + 1))
    left=$(( deadline - $(date +%s) ))
    echo "round $round: $CASES cases per property (${left}s left)"
    # A round that outlives the deadline is cut off: the time bound holds.
    set +e
    PROPTEST_CASES=$CASES timeout --signal=INT "$left" \
        cargo test --locked --lib --test integration properties -- --test-threads=2 -q
    status=$?
    set -e
    if [ "$status" -eq 124 ]; then
        echo "time is up during round $round"
        round=$((round - 1))
        break
    elif [ "$status" -ne 0 ]; then
        echo "a property failed in round $round (see above and proptest-regressions/)" >&2
        exit 1
    fi
done
echo "fuzz: $round complete round(s) of $CASES cases per property, no failure"
