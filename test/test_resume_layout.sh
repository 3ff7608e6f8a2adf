#!/usr/bin/env bash
# A checkpoint resumes on another number of ranks or --dp x --sp layout with the losses of the
# uninterrupted single-process run (|diff| <= 2e-5 per step, the tolerance of test_mpi_train.sh;
# eval ROC-AUC within 1e-4):
#   3 steps at -np 2 --sp 2 --row-attn ring, checkpoint, resume at -np 4 --dp 2 --sp 2 (a2a);
#   3 steps at -np 4 --dp 2 --sp 2, checkpoint, resume in one process.
# usage: bash test/test_resume_layout.sh   (from the repository root, after make train_tabpfn)
source "$(dirname "$0")/test_lib.sh"
export OMP_NUM_THREADS=1
BAD_TAIL=8
SMALL="--steps 6 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --warmup-steps 2 --seed 3 --threads 1 --eval-csv data/breast_cancer.csv --eval-every 0"
./train_tabpfn $SMALL --log "$TMP/one.log" >"$TMP/one.out" 2>&1 || bad "single-process reference run" "$TMP/one.out"

same_losses() { # same_losses LOG: 6 step losses and the final eval match the single-process run
    "$PY" - "$TMP/one.log" "$1" <<'PYEOF'
import sys
def read(path):
    losses, auc = {}, None
    for line in open(path):
        f = line.split()
        if f[0] == "step": losses[int(f[1])] = float(f[3])
        if f[0] == "eval": auc = float(f[4])
    return losses, auc
(a, auc_a), (b, auc_b) = read(sys.argv[1]), read(sys.argv[2])
ok = sorted(a) == sorted(b) == list(range(1, 7)) and all(abs(a[s] - b[s]) <= 2e-5 for s in a) and auc_b is not None and abs(auc_a - auc_b) <= 1e-4
worst = max(abs(a[s] - b[s]) for s in a if s in b) if b else float("nan")
print(f"max |loss diff| {worst:.2e}, auc {auc_a} vs {auc_b}")
if not ok: print(f"one process {a}\nresumed     {b}")
sys.exit(0 if ok else 1)
PYEOF
}

# resume_case NAME "FIRST LAUNCH+FLAGS" "SECOND LAUNCH+FLAGS"
resume_case() {
    local name=$1 first=$2 second=$3 log="$TMP/$(echo "$1" | tr -c 'a-z0-9' _).log"
    rm -f "$TMP/c.ckpt"
    if timeout 300 $first ./train_tabpfn $SMALL ${4:-} --stop-at 3 --checkpoint "$TMP/c.ckpt" --log "$log" >"$TMP/out" 2>&1 &&
        timeout 300 $second ./train_tabpfn $SMALL ${5:-} --resume "$TMP/c.ckpt" --log "$log" >>"$TMP/out" 2>&1 &&
        same_losses "$log" >"$TMP/cmp" 2>&1; then
        ok "$name: losses and eval equal one process ($(cat "$TMP/cmp"))"
    else
        cat "$TMP/cmp" >>"$TMP/out" 2>/dev/null
        bad "$name" "$TMP/out"
    fi
}
resume_case "-np 2 --sp 2 ring -> -np 4 --dp 2 --sp 2 a2a" "$MPIRUN -np 2" "$MPIRUN -np 4" "--sp 2 --row-attn ring" "--dp 2 --sp 2 --row-attn a2a"
resume_case "-np 4 --dp 2 --sp 2 ring -> 1 process" "$MPIRUN -np 4" "" "--dp 2 --sp 2 --row-attn ring" ""
finish
