#!/usr/bin/env bash
# Runs every test of `make test` (which builds them first), prints each one's verdict and a
# closing "N passed, M failed" over all test programs; exits non-zero if any failed.
# The CUDA kernel tests come from test/run_cuda_kernels.sh (also `make test_cuda_kernels`).
# The PyTorch reference state is regenerated on every run (needs /usr/bin/python3 + torch);
# the sharded tests run under mpirun with more ranks than cores (--oversubscribe).
set -u
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
TMP=$(mktemp -d /tmp/mosaic_tests.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
source test/run_lib.sh

run test_ops_gradcheck ./build/test_ops_gradcheck
run test_flash_attention ./build/test_flash_attention
run test_model_gradcheck ./build/test_model_gradcheck
run pytorch_reference_state "$PY" scripts/tabpfn_reference.py --write-debug-state "$TMP/debug_state.bin"
run test_pytorch_reference ./build/test_pytorch_reference "$TMP/debug_state.bin"
run tensor_file_python "$PY" scripts/tensor_file.py --self-test
run test_dataloader ./build/test_dataloader
run test_h5_convert bash test/test_h5_convert.sh
run test_bad_input bash test/test_bad_input.sh
run test_checkpoint_resume bash test/test_checkpoint_resume.sh
run test_hardening bash test/test_hardening.sh
run test_train_loss bash test/test_train_loss.sh
# row sharding under mpirun: every strategy vs one process, then the trainer itself
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for np in 2 3 4; do
    run "test_sharded (mpirun -np $np)" env OMP_NUM_THREADS=1 timeout 600 mpirun --oversubscribe -np "$np" ./build/test_sharded
done
run test_mpi_train bash test/test_mpi_train.sh
run test_resume_layout bash test/test_resume_layout.sh
run test_predict bash test/test_predict.sh
run test_interchange bash test/test_interchange.sh
run test_evaluate bash test/test_evaluate.sh
run test_plot_log bash test/test_plot_log.sh
# the GPU trainer run on the CPU (emulator + CUDA/cuBLAS/NCCL shims) against the CPU build
run test_gpu_trainer bash test/test_gpu_trainer.sh
run test_gpu_planted_bugs bash test/test_gpu_planted_bugs.sh
# the CPU tests under ASan + UBSan (build/asan_cpu/); the file readers under libFuzzer, FUZZ_SECONDS (30) each
run test_asan_cpu bash test/test_asan_cpu.sh
for t in $(cd test && ls fuzz_*.cpp | sed 's/\.cpp$//'); do run "$t (libFuzzer)" bash test/run_fuzzers.sh "$t"; done
# the CUDA kernel tests: emulated (plain, ASan+UBSan, TSan), nvcc + ptxas check, native where a GPU is
source test/run_cuda_kernels.sh

run_summary
