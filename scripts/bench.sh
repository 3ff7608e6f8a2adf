#!/usr/bin/env bash
# make bench: every benchmark, JSON lines on stdout
#   scripts/bench.py          training step vs the PyTorch reference (one process)
#   scripts/bench_sharded.py  row-sharding strategies under mpirun
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 scripts/bench.py --threads "${BENCH_THREADS:-2}"
/usr/bin/python3 scripts/bench_sharded.py
