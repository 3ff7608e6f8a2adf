#!/usr/bin/env bash
source scripts/gpu_offline/setup.sh
OUT=${OUT:-/tmp}
make -j16 --no-print-directory ARCH=90 BLAS_DIR=$LIB/openblas-openmp MPI_CFLAGS="$MPI_CFLAGS" MPI_LIBS="$MPI_LIBS" NVCC=nvcc train_tabpfn_cuda > /tmp/make.log 2>&1; echo "make rc $?"
for c in "default|--batch 32|30|--batch 32 --rows 150" "rows_16384|--batch 1 --min-rows 16384 --max-rows 16384|10|--batch 1 --rows 16384" "rows_150000|--batch 1 --min-rows 150000 --max-rows 150000|5|--batch 1 --rows 150000"; do
  IFS='|' read -r name flags steps pyflags <<<"$c"
  echo "== $name"
  timeout 150 ./train_tabpfn_cuda $flags --steps $steps --warmup-steps 1 --eval-csv none --quiet > /tmp/g_$name.out 2>&1; echo "gpu rc $?"
  grep summary /tmp/g_$name.out | cut -c1-330
  timeout 150 python3 scripts/bench_pytorch_gpu.py $pyflags --config $name 2>&1 | tail -1
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
echo "== elapsed $((SECONDS - START)) s"
