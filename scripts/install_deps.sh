#!/usr/bin/env bash
# Installs the Debian packages Mosaic builds and tests with (idempotent; root or sudo).
#   build:  g++, OpenMP, OpenBLAS (the OpenMP build, so BLAS shares the trainer's threads), oneDNN
#           (the float GEMM, model/gemm_cpu.h) and libxsmm (only for build/bench_gemm's comparison)
#   MPI:    Open MPI, for the sharded runs (mpirun)
#   tests:  Debian's python3-torch, numpy, h5py, scikit-learn, matplotlib, used through /usr/bin/python3
#   CUDA kernel tests on the CPU: clang++ and its sanitizer runtimes (ASan, UBSan, TSan), through
#           the distribution's default-version packages (bookworm: clang-14, libclang-rt-14-dev).
#           nvcc is not installed here: the nvcc builds run where the machine has CUDA
#           (/usr/local/cuda), and are skipped with a message elsewhere.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
PACKAGES="build-essential libopenblas-openmp-dev libdnnl-dev libxsmm-dev libopenmpi-dev openmpi-bin python3-numpy python3-torch python3-h5py python3-sklearn python3-matplotlib clang libclang-rt-dev"
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq $missing >/dev/null
fi
