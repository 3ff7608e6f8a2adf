#!/usr/bin/env bash
# make bench: every benchmark, JSON lines on stdout (notes on stderr)
#   scripts/bench.py          training step vs current PyTorch (a virtual environment) and Debian's
#   build/bench_gemm          the step's GEMM shapes per library (where built)
#   scripts/bench_sharded.py  row-sharding strategies under mpirun
# Current PyTorch comes from PyPI into .bench-venv/ on first use (never in the tests): about
# 4 GB, since PyPI's Linux torch brings its CUDA libraries. BENCH_VENV points elsewhere;
# BENCH_TORCH pins another version.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.bench-venv}
TORCH=${BENCH_TORCH:-torch==2.15.0}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    echo "bench: installing $TORCH from PyPI into $VENV (first use; ~4 GB with its CUDA libraries)" >&2
    if ! { /usr/bin/python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "$TORCH" numpy; } >"$VENV.install.log" 2>&1; then
        echo "bench: could not install $TORCH into $VENV (see $VENV.install.log): comparing with Debian's PyTorch only" >&2
    fi
fi
/usr/bin/python3 scripts/bench.py --threads "${BENCH_THREADS:-2}" --torch-python "$VENV/bin/python"
if [ -x build/bench_gemm ]; then OMP_NUM_THREADS="${BENCH_THREADS:-2}" build/bench_gemm; fi
/usr/bin/python3 scripts/bench_sharded.py
