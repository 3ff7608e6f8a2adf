#!/usr/bin/env bash
# build and check on a GPU machine prepared by setup.sh (see there); output also under $OUT if set
source scripts/gpu_offline/setup.sh
OUT=${OUT:-/tmp}
echo "== versions"; nvidia-smi -L; nvcc --version | tail -2; g++ --version | head -1; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
echo "== build"
time make -j16 --no-print-directory ARCH=90 BLAS_DIR=$LIB/openblas-openmp MPI_CFLAGS="$MPI_CFLAGS" MPI_LIBS="$MPI_LIBS" \
    NVCC=nvcc \
    train_tabpfn train_tabpfn_cuda build/nvcc_test_cuda_ops build/nvcc_test_cuda_flash > /tmp/make.log 2>&1; echo "make rc $?"; tail -20 /tmp/make.log
cp /tmp/make.log $OUT/make.log
python3 test/check_ptxas.py --arch 90 build/ptxas_test_cuda_ops.txt build/ptxas_test_cuda_flash.txt 2>&1 | tail -3
for t in test_cuda_ops test_cuda_flash; do
    echo "== native $t"; timeout 240 ./build/nvcc_$t > /tmp/$t.out 2>&1; echo "rc $?"; grep -E "FAIL" /tmp/$t.out | head -10; tail -1 /tmp/$t.out
done
echo "== 50 steps default, CPU build vs GPU build"
timeout 200 ./train_tabpfn --steps 50 --eval-csv none --seed 0 --quiet --log /tmp/cpu50.log > /tmp/cpu50.out 2>&1; echo "cpu rc $?"; tail -2 /tmp/cpu50.out | cut -c1-300
timeout 120 ./train_tabpfn_cuda --steps 50 --eval-csv none --seed 0 --quiet --log /tmp/gpu50.log > /tmp/gpu50.out 2>&1; echo "gpu rc $?"; tail -2 /tmp/gpu50.out | cut -c1-400
python3 - <<'PY'
import math
def read(p):
    d = {}
    for l in open(p):
        f = l.split()
        if f and f[0] == "step": d[int(f[1])] = float(f[3])
    return d
try:
    a, b = read("/tmp/cpu50.log"), read("/tmp/gpu50.log")
    diffs = [abs(a[k] - b[k]) for k in a if k in b]
    print("steps compared", len(diffs), "max |loss diff|", max(diffs), "first", a.get(1), b.get(1), "last", a.get(50), b.get(50))
except Exception as e: print("compare failed", e)
PY
cp /tmp/cpu50.log /tmp/gpu50.log $OUT/ 2>/dev/null
echo "== elapsed $((SECONDS - START)) s"
