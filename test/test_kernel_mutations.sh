#!/usr/bin/env bash
# The kernel tests must be able to fail. This plants known bugs, one at a time, in a temporary
# copy of the flash attention kernels, builds the emulated kernel test there and requires that
# it FAILS. Each mutation is an exact string replacement that must match exactly once: if the
# kernel source drifted, the script says so and fails instead of testing nothing.
# Prints one line per mutation (caught / NOT caught); exits non-zero if a mutation is not
# caught, if a mutation does not apply, or if the unmutated build does not pass.
#   bash test/test_kernel_mutations.sh      (CI: make test_cuda_kernels)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kernel=attention/flash_attention_cuda.cuh
test_src=test/test_cuda_flash.cu
t_start=$(date +%s)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mosaic_mutations.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
src=$tmp/src
mkdir -p "$src"
# the working tree as it is (tracked and untracked files, nothing ignored)
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -xf - -C "$src"
else
    (cd "$root" && tar -cf - Makefile model attention comm dataloader test 2>/dev/null) | tar -xf - -C "$src"
fi
mkdir -p "$src/build"
cp "$src/$kernel" "$tmp/pristine.cuh"

# the compile command of the Makefile's build/emu_% rule, if there is one, at -O1; else the
# documented one. Only the flash kernel test is built.
bin=build/emu_test_cuda_flash
build_cmd=$(cd "$src" && make -n -B "$bin" 2>/dev/null | grep -e '-DMOSAIC_SIMT_EMULATION' | grep -e "$test_src" | head -n 1 || true)
if [ -n "$build_cmd" ]; then
    build_cmd=$(printf '%s' "$build_cmd" | sed -E 's/(^| )-O[0-3sg]( |$)/ -O1 /g')
else
    build_cmd="clang++ -std=c++17 -O1 -g -DMOSAIC_SIMT_EMULATION -I/usr/local/cuda/include -x c++ $test_src -o $bin -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lm"
fi
echo "build: $build_cmd"

# build and run the copy; sets run_rc (exit status of the test, or "build") and run_summary
build_and_run() {
    local log=$1
    rm -f "$src/$bin"
    if ! (cd "$src" && nice -n 10 bash -c "$build_cmd") >"$log.build" 2>&1; then
        run_rc=build
        run_summary="build failed: $(grep -m1 -i error "$log.build" || tail -n 1 "$log.build")"
        return
    fi
    set +e
    (cd "$src" && timeout 900 "./$bin") >"$log" 2>&1
    run_rc=$?
    set -e
    run_summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1 || true)
    [ -n "$run_summary" ] || run_summary="no summary: $(tail -n 1 "$log")"
}

# replace $2 by $3 in the copy's kernel file, which must hold $2 exactly once
apply_mutation() {
    python3 - "$src/$kernel" "$2" "$3" "$1" <<'EOF'
import sys
path, old, new, name = sys.argv[1:5]
text = open(path).read()
count = text.count(old)
if count != 1:
    sys.stderr.write("mutation %s: the text to replace occurs %d times in %s (want exactly 1): "
                     "the kernel source drifted, update test/test_kernel_mutations.sh\n" % (name, count, path))
    sys.exit(1)
open(path, "w").write(text.replace(old, new))
EOF
}

status=0
t0=$(date +%s)
build_and_run "$tmp/baseline.log"
if [ "$run_rc" != 0 ]; then
    echo "FAIL  unmutated build: exit $run_rc ($run_summary); log follows"
    tail -n 40 "$tmp/baseline.log" 2>/dev/null || true
    exit 1
fi
echo "ok    unmutated build passes ($run_summary, $(($(date +%s) - t0)) s)"

names=(); olds=(); news=()
add() { names+=("$1"); olds+=("$2"); news+=("$3"); }
add "(a) removed __syncthreads in the flash forward (K, V tile loaded -> read)" \
    $'        __syncthreads(); // fwd: the K, V tile (and Q) complete before any warp reads it\n' ''
add "(b) off-by-one tile bound in the flash backward (dQ: last key of each tile dropped)" \
    'const float p = j < nk ? expf(scale * s[r][c] - lse_r[r]) : 0.0f;' \
    'const float p = j < nk - 1 ? expf(scale * s[r][c] - lse_r[r]) : 0.0f;'
add "(c) missing step of a warp-shuffle reduction (fa_warp_sum without the xor-1 step)" \
    'for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);' \
    'for (int o = 16; o > 1; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);'
add "(d) missing barrier before the next K, V tile overwrites shared memory (flash forward)" \
    $'        __syncthreads(); // fwd: every warp is done with K, V, P before the next tile overwrites them\n' ''

for idx in "${!names[@]}"; do
    name=${names[$idx]}
    cp "$tmp/pristine.cuh" "$src/$kernel"
    if ! apply_mutation "$name" "${olds[$idx]}" "${news[$idx]}"; then
        echo "ERROR $name: does not apply"
        status=1
        continue
    fi
    t0=$(date +%s)
    build_and_run "$tmp/mutation_$idx.log"
    secs=$(($(date +%s) - t0))
    case "$run_rc" in
    0) echo "NOT caught  $name: the kernel test still passes ($run_summary, $secs s)"; status=1 ;;
    build) echo "ERROR $name: $run_summary"; status=1 ;;
    124 | 137) echo "caught      $name: the test timed out ($secs s)" ;;
    *) echo "caught      $name: exit $run_rc, $run_summary ($secs s)" ;;
    esac
done
cp "$tmp/pristine.cuh" "$src/$kernel"
echo "mutation test total $(($(date +%s) - t_start)) s"
exit $status
