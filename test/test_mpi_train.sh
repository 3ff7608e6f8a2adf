#!/usr/bin/env bash
# The trainer under mpirun: every row-attention strategy trains with the losses of one
# process (|diff| <= 2e-5 per step, same eval ROC-AUC within 1e-4); a rank that exits, fails
# or is killed mid-step ends the whole job non-zero within 60 s; impossible layouts are
# refused at start-up with one line from rank 0.
# usage: bash test/test_mpi_train.sh   (from the repository root, after make train_tabpfn)
source "$(dirname "$0")/test_lib.sh"
export OMP_NUM_THREADS=1
BAD_TAIL=8

SMALL="--steps 6 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --warmup-steps 2 --seed 3 --threads 1 --eval-csv data/breast_cancer.csv"
./train_tabpfn $SMALL --log "$TMP/one.log" >"$TMP/one.out" 2>&1 || bad "single-process reference run" "$TMP/one.out"

# same_losses NAME LOG: step losses and the eval line match the single-process run
same_losses() {
    /usr/bin/python3 - "$TMP/one.log" "$2" <<'PY'
import sys
def read(path):
    losses, auc = [], None
    for line in open(path):
        f = line.split()
        if f[0] == "step": losses.append(float(f[3]))
        if f[0] == "eval": auc = float(f[4])
    return losses, auc
(a, auc_a), (b, auc_b) = read(sys.argv[1]), read(sys.argv[2])
ok = len(a) == len(b) == 6 and all(abs(x - y) <= 2e-5 for x, y in zip(a, b)) and abs(auc_a - auc_b) <= 1e-4
if not ok: print(f"one process {a} auc {auc_a}\nsharded     {b} auc {auc_b}")
sys.exit(0 if ok else 1)
PY
}

run_layout() { # run_layout NP FLAGS...
    local np=$1
    shift
    local name="mpirun -np $np $*"
    local log="$TMP/run_${np}_$(echo "$*" | tr ' /,' '___').log"
    if timeout 300 $MPIRUN -np "$np" ./train_tabpfn $SMALL "$@" --log "$log" >"$TMP/out" 2>&1 && same_losses "$name" "$log" >"$TMP/cmp" 2>&1; then
        ok "$name: losses and eval equal one process"
    else
        cat "$TMP/cmp" >>"$TMP/out" 2>/dev/null
        bad "$name" "$TMP/out"
    fi
}

for st in allgather ring a2a mesh2d composed; do run_layout 4 --sp 4 --row-attn "$st"; done
run_layout 4 --sp 4 --row-attn hierarchical --ranks-per-node 2
run_layout 4 --sp 4 --row-attn mesh2d --mesh 1x4
run_layout 4 --sp 4 --row-attn composed --composed-outer allgather
run_layout 4 --sp 4 --row-attn ring --no-overlap
run_layout 4 --sp 4 --row-attn ring,a2a
run_layout 4 --sp 4 --row-attn auto
run_layout 4 --dp 2 --sp 2 --row-attn ring
run_layout 3 --sp 3 --row-attn ring
run_layout 2 --sp 2 --row-attn allgather
run_layout 2 --dp 2 --sp 1

# a rank that dies mid-step takes the job down, non-zero, within 60 s
midstep_death_checks ./train_tabpfn $SMALL

# impossible layouts: refused at start-up, one line from rank 0
refuse() { # refuse NAME PATTERN NP FLAGS...
    local name=$1 pattern=$2 np=$3
    shift 3
    timeout 60 $MPIRUN -np "$np" ./train_tabpfn $SMALL "$@" >"$TMP/out" 2>"$TMP/err"
    local code=$? lines
    lines=$(grep -c "^mosaic: error" "$TMP/err")
    if [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" "$TMP/err"; then
        ok "$name: $(grep '^mosaic: error' "$TMP/err")"
    else
        bad "$name: exit $code, $lines error lines, wanted /$pattern/" "$TMP/err"
    fi
}
refuse "layout larger than the job" "--dp 3 x --sp 1 = 3 ranks, but the job has 4" 4 --dp 3
refuse "grid that does not fit sp" "--mesh 3x2 has 6 ranks, but --sp is 4" 4 --sp 4 --row-attn mesh2d --mesh 3x2
refuse "local with rows split" "--row-attn local needs whole tables" 2 --sp 2 --row-attn local
refuse "a2a with too few problems" "a2a splits" 4 --sp 4 --row-attn a2a --batch 1 --heads 1 --min-features 1 --max-features 1
refuse "hierarchical off the node size" "multiple of the 3 ranks per node" 4 --sp 4 --row-attn hierarchical --ranks-per-node 3
refuse "unknown strategy" "unknown strategy 'spiral'" 2 --row-attn spiral
refuse "ranks with different flags" "different flags" 1 --seed 1 : -np 1 ./train_tabpfn $SMALL --seed 2

finish
