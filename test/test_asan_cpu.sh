#!/usr/bin/env bash
# The CPU tests once more under AddressSanitizer + UndefinedBehaviorSanitizer (g++
# -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all, build/asan_cpu/ from
# `make asan_cpu`): any sanitizer report ends that program non-zero. Each program compares with
# its own reference as in the plain suite:
#   test_ops_gradcheck, test_model_gradcheck   vs finite differences
#   test_dataloader                            vs its exact expectations
#   test_pytorch_reference                     vs scripts/tabpfn_reference.py (state written here)
#   test_sharded, mpirun -np 2, ring and a2a   vs one process
#   train_tabpfn: 6 steps with eval, checkpoint at 3 (--stop-at) and resume -> the same 6 losses
#   bit for bit as the uninterrupted ASan run, and within 1e-4 of the plain build's
# test_flash_attention is left out (over 10 minutes under ASan here; its kernels run inside every
# other program above). Leak checking is off: Open MPI's own allocations at exit would drown it.
# usage: bash test/test_asan_cpu.sh   (after make asan_cpu train_tabpfn)
source "$(dirname "$0")/test_lib.sh"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
A=build/asan_cpu
step() { # step NAME COMMAND...: one program, its output kept for a failure
    local name=$1 t0=$SECONDS
    shift
    if "$@" >"$TMP/out" 2>&1; then ok "$name ($((SECONDS - t0)) s): $(tail -n 1 "$TMP/out")"
    else bad "$name ($((SECONDS - t0)) s)" "$TMP/out"; fi
}
step "asan test_ops_gradcheck" $A/test_ops_gradcheck
step "asan test_model_gradcheck" $A/test_model_gradcheck
step "asan test_dataloader" $A/test_dataloader
step "pytorch reference state" "$PY" scripts/tabpfn_reference.py --write-debug-state "$TMP/debug_state.bin"
step "asan test_pytorch_reference" $A/test_pytorch_reference "$TMP/debug_state.bin"
step "asan test_sharded (mpirun -np 2: ring a2a)" env OMP_NUM_THREADS=1 timeout 600 $MPIRUN -np 2 $A/test_sharded ring a2a

SMALL="--steps 6 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --warmup-steps 2 --seed 3 --threads 2 --max-rows 60 --eval-csv data/breast_cancer.csv --eval-every 3"
t0=$SECONDS
$A/train_tabpfn $SMALL --log "$TMP/full.log" >"$TMP/full.out" 2>&1 &&
    $A/train_tabpfn $SMALL --log "$TMP/part.log" --stop-at 3 --checkpoint "$TMP/c.ckpt" >"$TMP/part.out" 2>&1 &&
    $A/train_tabpfn $SMALL --log "$TMP/part.log" --resume "$TMP/c.ckpt" --checkpoint "$TMP/c.ckpt" --export "$TMP/e.bin" >>"$TMP/part.out" 2>&1 &&
    ./train_tabpfn $SMALL --log "$TMP/plain.log" >/dev/null 2>&1
code=$?
if [ $code -eq 0 ] && diff <(grep '^step' "$TMP/full.log" | cut -d' ' -f1-4) <(grep '^step' "$TMP/part.log" | cut -d' ' -f1-4) >/dev/null &&
    "$PY" - "$TMP/full.log" "$TMP/plain.log" <<'PYEOF'
import sys
a, b = ([float(l.split()[3]) for l in open(p) if l.startswith("step")] for p in sys.argv[1:3])
sys.exit(0 if len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-4 else 1)
PYEOF
then ok "asan train_tabpfn ($((SECONDS - t0)) s): 6 steps + eval; stop at 3, resume = uninterrupted bit for bit; within 1e-4 of the plain build"
else
    cat "$TMP/full.out" >>"$TMP/part.out"
    bad "asan train_tabpfn: exit $code or losses differ" "$TMP/part.out"
fi
finish
