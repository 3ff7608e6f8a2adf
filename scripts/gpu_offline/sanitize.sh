#!/usr/bin/env bash
source scripts/gpu_offline/setup.sh
OUT=${OUT:-/tmp}
make -j16 --no-print-directory ARCH=90 BLAS_DIR=$LIB/openblas-openmp MPI_CFLAGS="$MPI_CFLAGS" MPI_LIBS="$MPI_LIBS" NVCC=nvcc train_tabpfn train_tabpfn_cuda build/nvcc_test_cuda_ops build/nvcc_test_cuda_flash > /tmp/make.log 2>&1; echo "make rc $?"
python3 test/check_ptxas.py --arch 90 build/ptxas_test_cuda_ops.txt build/ptxas_test_cuda_flash.txt 2>&1 | tail -4
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer)
for spec in "memcheck test_cuda_ops 100" "memcheck test_cuda_flash 100" "racecheck test_cuda_flash 150" "synccheck test_cuda_flash 60" "racecheck test_cuda_ops 60"; do
  set -- $spec
  echo "== compute-sanitizer $1 $2"; t0=$SECONDS
  timeout $3 $CS --tool $1 --error-exitcode 1 ./build/nvcc_$2 > /tmp/$1_$2.out 2>&1; echo "rc $? ($((SECONDS - t0)) s)"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed" /tmp/$1_$2.out | tail -2; grep -m3 -E "Invalid|Race|hazard|Barrier" /tmp/$1_$2.out
  cp /tmp/$1_$2.out $OUT/ 2>/dev/null
done
echo "== elapsed $((SECONDS - START)) s"
