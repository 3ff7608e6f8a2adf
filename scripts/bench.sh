#!/usr/bin/env bash
# make bench: every benchmark, JSON lines on stdout (see scripts/bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 scripts/bench.py --threads "${BENCH_THREADS:-2}"
