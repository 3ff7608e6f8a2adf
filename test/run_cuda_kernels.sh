#!/usr/bin/env bash
# The CUDA kernel tests (make test_cuda_kernels; make test sources this from test/run_all.sh so
# that its closing "N passed, M failed" covers them). The binaries are built by make first:
#   build/emu_*, build/asan_*, build/tsan_*   kernels executed on the CPU under test/simt_emulator.h;
#                                            each test loops over the three schedules itself
#   build/nvcc_* + build/ptxas_*.txt         compiled for the GPU; test/check_ptxas.py fails on a
#                                            spill or a warning (only where nvcc exists)
#   native runs and compute-sanitizer        only where `nvidia-smi -L` lists a GPU
#   test/test_kernel_mutations.sh            planted bugs that the kernel tests must catch
# A skipped step is printed, never counted as passed.
# Standalone: bash test/run_cuda_kernels.sh (uses CUDA_TESTS/EMU_TESTS/ARCH/NVCC from make, or
# finds them itself).
cuda_kernels_main() {
    local standalone=0
    if ! declare -F run >/dev/null; then
        standalone=1
        cd "$(dirname "${BASH_SOURCE[0]}")/.." || return 1
        source test/run_lib.sh
    fi
    local cuda_tests=${CUDA_TESTS-}
    if [ -z "$cuda_tests" ]; then
        local f
        for f in test/test_cuda_*.cu; do [ -f "$f" ] && cuda_tests="$cuda_tests $(basename "$f" .cu)"; done
    fi
    local emu_tests=${EMU_TESTS:-test_simt_emulator $cuda_tests}
    local arch=${ARCH:-80 90}
    local nvcc=${NVCC-$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)}
    local t

    # emulated: serial CPU twins and BLAS, so that the sanitizers see only the emulated threads;
    # a time limit, because a kernel stuck in a loop would hang the suite
    local serial="env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1"
    for t in $emu_tests; do
        run "$t (emulated)" $serial timeout 900 "./build/emu_$t"
    done
    for t in $emu_tests; do
        run "$t (emulated, ASan+UBSan)" $serial ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
            timeout 900 "./build/asan_$t"
    done
    for t in $emu_tests; do
        run "$t (emulated, TSan)" $serial TSAN_OPTIONS=halt_on_error=1:exitcode=66:atexit_sleep_ms=0 \
            timeout 900 "./build/tsan_$t"
    done
    # the GPU shims' self-test (test/test_gpu_shims.cu): single-process in the three builds, then its
    # NCCL part on two ranks (as root, mpirun needs the OMPI_ALLOW_RUN_AS_ROOT pair)
    run "test_gpu_shims (emulated)" $serial timeout 300 ./build/emu_test_gpu_shims
    run "test_gpu_shims (emulated, ASan+UBSan)" $serial ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        timeout 300 ./build/asan_test_gpu_shims
    run "test_gpu_shims (emulated, TSan)" $serial TSAN_OPTIONS=halt_on_error=1:exitcode=66:atexit_sleep_ms=0 \
        timeout 300 ./build/tsan_test_gpu_shims
    run "test_gpu_shims (mpirun -np 2: NCCL on MPI)" $serial OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        timeout 300 mpirun --oversubscribe -np 2 ./build/emu_test_gpu_shims --nccl-only

    # nvcc: the ptxas table, no spills, no warnings
    run "check_ptxas self-test" python3 test/check_ptxas.py --self-test
    if [ -n "$nvcc" ]; then
        for t in $cuda_tests; do
            run "$t (nvcc sm_${arch// /, sm_}: ptxas registers, smem, spills)" \
                python3 test/check_ptxas.py --arch "$arch" "build/ptxas_$t.txt"
        done
    else
        echo "=== SKIPPED: nvcc builds and the ptxas check: nvcc not found (not on PATH, not in /usr/local/cuda/bin)"
    fi

    # native: only with a GPU
    local gpus=""
    if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); fi
    if [ -n "$nvcc" ] && [ "${gpus:-0}" -gt 0 ]; then
        local sanitizer
        sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
        for t in $cuda_tests; do
            run "$t (native GPU)" "./build/nvcc_$t"
            if [ -n "$sanitizer" ]; then
                local tool
                for tool in memcheck racecheck synccheck; do
                    run "$t (native, compute-sanitizer $tool)" "$sanitizer" --tool "$tool" --error-exitcode 1 "./build/nvcc_$t"
                done
            else
                echo "=== SKIPPED: compute-sanitizer runs of $t: compute-sanitizer not found"
            fi
        done
    elif [ -z "$nvcc" ]; then
        echo "=== SKIPPED: native GPU runs and compute-sanitizer: no nvcc build"
    else
        echo "=== SKIPPED: native GPU runs and compute-sanitizer (racecheck, synccheck, memcheck):" \
            "no GPU here (nvidia-smi $(command -v nvidia-smi >/dev/null 2>&1 && echo '-L lists none' || echo 'not found'));" \
            "the kernels ran only under the emulator"
    fi

    if [ -f test/test_kernel_mutations.sh ]; then
        run "kernel mutations (planted bugs must fail the kernel tests)" bash test/test_kernel_mutations.sh
    else
        echo "=== SKIPPED: kernel mutations: test/test_kernel_mutations.sh not found"
    fi

    if [ "$standalone" -eq 1 ]; then run_summary; fi
}

cuda_kernels_main
