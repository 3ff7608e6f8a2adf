#!/usr/bin/env bash
# make bench: every benchmark, JSON lines on stdout (notes on stderr)
#   scripts/bench.py          training step vs current PyTorch (a virtual environment) and Debian's
#   build/bench_gemm          the step's GEMM shapes per library (where built)
#   scripts/bench_sharded.py  row-sharding strategies under mpirun
# Current PyTorch comes from PyPI into .bench-venv/ on first use (never in the tests): about
# 4 GB, since PyPI's Linux torch brings its CUDA libraries. BENCH_VENV points elsewhere;
# BENCH_TORCH pins another version; BENCH_THREADS (2) and BENCH_REPEATS (3) set the step comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.bench-venv}
TORCH=${BENCH_TORCH:-torch==2.15.0}
# a venv holding another torch than the pinned one (BENCH_TORCH changed) is upgraded in place
WANT=""; case "$TORCH" in torch==*) WANT=${TORCH#torch==};; esac
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(bool(sys.argv[1]) and torch.__version__.split("+")[0] != sys.argv[1])' "$WANT" >/dev/null 2>&1; then
    echo "bench: installing $TORCH from PyPI into $VENV (once; a ~4 GB download with its CUDA libraries)" >&2
    # few retries and a read timeout, so that a machine without network falls back in seconds
    if ! { /usr/bin/python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --retries 2 --timeout 30 "$TORCH" numpy; } >"$VENV.install.log" 2>&1; then
        echo "bench: could not install $TORCH into $VENV (see $VENV.install.log): comparing with Debian's PyTorch only" >&2
    fi
fi
/usr/bin/python3 scripts/bench.py --threads "${BENCH_THREADS:-2}" --repeats "${BENCH_REPEATS:-3}" --torch-python "$VENV/bin/python"
if [ -x build/bench_gemm ]; then OMP_NUM_THREADS="${BENCH_THREADS:-2}" build/bench_gemm; else echo "bench: build/bench_gemm not built (needs libdnnl-dev and libxsmm-dev): the GEMM comparison is skipped" >&2; fi
/usr/bin/python3 scripts/bench_sharded.py
