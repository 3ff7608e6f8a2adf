#!/usr/bin/env bash
# The GPU shims must catch GPU-only bugs. This plants each bug class of issue 7 in a temporary
# copy of the NCCL transport (comm/comm_nccl.h), builds ./train_tabpfn_emulated there and
# requires that a small ring run under mpirun FAILS: a non-zero exit (the shim or a deadline
# ends the job), or step losses that are not those of the CPU build (NaN or a difference above
# 5e-5, the tolerance of test/test_gpu_trainer.sh). A hang is not a pass: every run has a
# timeout and the shim's NCCL and device-wait deadlines are set to a few seconds.
#   (a) event_wait: comm_sendrecv_wait no longer makes the compute stream wait for the pair's
#       completion event, so the ring's received block is used before it has arrived;
#   (b) send_outside_group: the ring's send is issued before ncclGroupStart, so both ranks
#       send first and block (NCCL point-to-point outside a group waits for its peer);
#   (c) host_buffer: the float all-reduce is handed a host copy of the device buffer.
# Each mutation is an exact string replacement that must match exactly once: if the transport
# drifted, the script says so and fails instead of testing nothing. The unmutated copy must
# pass first (equal to the CPU build within 5e-5 per step loss).
# Prints one line per bug (caught / NOT caught, and why); exits non-zero if one is not caught.
#   bash test/test_gpu_planted_bugs.sh     (from anywhere; CI: test/run_all.sh)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
file=comm/comm_nccl.h
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export MOSAIC_SHIM_DEVICES=4 MOSAIC_SHIM_NCCL_TIMEOUT=5 MOSAIC_DEVICE_TIMEOUT=5
PY=/usr/bin/python3
t_start=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mosaic_gpu_bugs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
src=$tmp/src
mkdir -p "$src"
# the working tree as it is (tracked and untracked files, nothing ignored): one copy for all runs
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$src" || { echo "FAIL  cannot copy the working tree to $src"; exit 1; }
cp "$src/$file" "$tmp/pristine.h"

SMALL="--steps 3 --batch 2 --embed 16 --heads 2 --hidden 32 --layers 2 --warmup-steps 2 --seed 3 --threads 1 --min-rows 20 --max-rows 40 --eval-csv none"
LAYOUT="--sp 2 --row-attn ring"
# -x: mpirun forwards the deadlines to the ranks explicitly
MPIRUN="mpirun --oversubscribe -np 2 -x MOSAIC_SHIM_DEVICES -x MOSAIC_SHIM_NCCL_TIMEOUT -x MOSAIC_DEVICE_TIMEOUT"

# build NAME TARGET: make TARGET in the copy; sets build_msg on failure
build() {
    if (cd "$src" && nice -n 10 make --no-print-directory -s "$2") >"$tmp/$1.build" 2>&1; then return 0; fi
    build_msg="build failed: $(grep -m1 -i error "$tmp/$1.build" || tail -n 1 "$tmp/$1.build")"
    return 1
}

# compare REF LOG: exit 0 when both logs hold the same steps and every loss agrees within 5e-5
# (NaN never agrees); prints the largest difference
compare() {
    "$PY" - "$1" "$2" <<'PY'
import math, sys
def read(path):
    losses = {}
    try:
        for line in open(path):
            f = line.split()
            if f and f[0] == "step": losses[int(f[1])] = float(f[3])
    except OSError:
        pass
    return losses
a, b = read(sys.argv[1]), read(sys.argv[2])
if not b: print("no step losses logged"); sys.exit(1)
if sorted(a) != sorted(b): print(f"steps {sorted(b)} instead of {sorted(a)}"); sys.exit(1)
d = [abs(a[k] - b[k]) for k in a]
if any(math.isnan(x) for x in d): print("NaN loss"); sys.exit(1)
print(f"max |loss diff| {max(d):.2e} over steps {sorted(a)}")
sys.exit(0 if max(d) <= 5e-5 else 1)
PY
}

# run_emulated NAME: the ring under mpirun -np 2; sets run_rc, run_secs and run_cmp (comparison
# with the CPU build's log; its status in cmp_rc)
run_emulated() {
    local t0=$SECONDS
    rm -f "$tmp/$1.log"
    (cd "$src" && timeout -k 5 60 $MPIRUN ./train_tabpfn_emulated $SMALL $LAYOUT --log "$tmp/$1.log") >"$tmp/$1.out" 2>&1
    run_rc=$?
    run_secs=$((SECONDS - t0))
    run_cmp=$(compare "$tmp/cpu.log" "$tmp/$1.log" 2>&1)
    cmp_rc=$?
}

# apply NAME OLD NEW: the pristine transport with OLD (which must occur exactly once) replaced
apply_mutation() {
    "$PY" - "$tmp/pristine.h" "$src/$file" "$1" "$2" "$3" <<'PY'
import sys
pristine, path, name, old, new = sys.argv[1:6]
text = open(pristine).read()
n = text.count(old)
if n != 1:
    sys.stderr.write(f"mutation {name}: the text to replace occurs {n} times in comm/comm_nccl.h (want exactly 1): "
                     "the transport drifted, update test/test_gpu_planted_bugs.sh\n")
    sys.exit(1)
open(path, "w").write(text.replace(old, new))
PY
}

# ---------------------------------------------------------------------------------------------
# the reference: the CPU build, then the unmutated emulated build, which must equal it

t0=$SECONDS
build cpu train_tabpfn || { echo "FAIL  CPU build: $build_msg"; exit 1; }
build base train_tabpfn_emulated || { echo "FAIL  unmutated emulated build: $build_msg"; exit 1; }
build_secs=$((SECONDS - t0))
(cd "$src" && timeout 60 $MPIRUN ./train_tabpfn $SMALL $LAYOUT --log "$tmp/cpu.log") >"$tmp/cpu.out" 2>&1 ||
    { echo "FAIL  CPU reference run"; tail -n 12 "$tmp/cpu.out"; exit 1; }
run_emulated base
if [ "$run_rc" -ne 0 ] || [ "$cmp_rc" -ne 0 ]; then
    echo "FAIL  unmutated emulated build: exit $run_rc, $run_cmp"
    tail -n 12 "$tmp/base.out"
    exit 1
fi
echo "ok    unmutated: mpirun -np 2 $LAYOUT equals the CPU build: $run_cmp (builds ${build_secs} s, run ${run_secs} s)"

# ---------------------------------------------------------------------------------------------
# the planted bugs

missed=0
planted=0
plant() { # plant NAME OLD NEW
    local name=$1 t0=$SECONDS
    planted=$((planted + 1))
    if ! apply_mutation "$@" 2>"$tmp/$name.apply"; then
        echo "FAIL  $name: $(cat "$tmp/$name.apply")"
        missed=$((missed + 1))
        return
    fi
    if ! build "$name" train_tabpfn_emulated; then
        echo "FAIL  $name: the mutated transport does not compile ($build_msg)"
        missed=$((missed + 1))
        return
    fi
    local bsecs=$((SECONDS - t0))
    run_emulated "$name"
    local why
    if [ "$run_rc" -eq 124 ] || [ "$run_rc" -eq 137 ]; then
        why="the run hung (killed by timeout after ${run_secs} s)"
    elif [ "$run_rc" -ne 0 ]; then
        why="exit $run_rc after ${run_secs} s: $({ grep -m1 'error:' "$tmp/$name.out" || grep -m1 -iE 'error|fail|abort|timeout' "$tmp/$name.out"; } | cut -c1-160)"
    elif [ "$cmp_rc" -ne 0 ]; then
        why="exit 0 after ${run_secs} s but the losses differ from the CPU build: $run_cmp"
    else
        why=""
    fi
    if [ -n "$why" ] && [ "$run_rc" -ne 124 ] && [ "$run_rc" -ne 137 ]; then
        echo "caught      $name: $why (build ${bsecs} s)"
    else
        [ -n "$why" ] || why="exit 0 after ${run_secs} s and $run_cmp"
        echo "NOT caught  $name: $why"
        tail -n 8 "$tmp/$name.out" | sed 's/^/      /'
        missed=$((missed + 1))
    fi
}

# (a) the compute stream no longer waits for the ring's received block
plant event_wait \
    '    CUDA_CHECK(cudaStreamWaitEvent(mosaic_stream, comm->pair_done[req->slot], 0));' \
    '    // planted bug: no cudaStreamWaitEvent on the pair'"'"'s completion event'

# (b) the ring's send issued before ncclGroupStart: outside the group, it waits for its peer
plant send_outside_group \
    '    NCCL_CHECK(ncclGroupStart());
    // a zero count is skipped on both sides alike: the peer'"'"'s matching count is zero too
    if (send_count) NCCL_CHECK(ncclSend(send, send_count, ncclFloat, dst, comm->nccl, gpu::comm_stream));' \
    '    if (send_count) NCCL_CHECK(ncclSend(send, send_count, ncclFloat, dst, comm->nccl, gpu::comm_stream));
    NCCL_CHECK(ncclGroupStart()); // planted bug: the send above is outside the group'

# (c) the float all-reduce handed a host copy of its device buffer
plant host_buffer \
    '    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, comm->nccl, gpu::comm_stream));' \
    '    float* host = (float*)malloc(count * sizeof(float)); // planted bug: a host buffer for NCCL
    CUDA_CHECK(cudaStreamSynchronize(gpu::comm_stream));
    CUDA_CHECK(cudaMemcpy(host, buf, count * sizeof(float), cudaMemcpyDeviceToHost));
    NCCL_CHECK(ncclAllReduce(host, host, count, ncclFloat, ncclSum, comm->nccl, gpu::comm_stream));
    CUDA_CHECK(cudaStreamSynchronize(gpu::comm_stream));
    CUDA_CHECK(cudaMemcpy(buf, host, count * sizeof(float), cudaMemcpyHostToDevice));
    free(host);'

cp "$tmp/pristine.h" "$src/$file"
echo "$((planted - missed)) of $planted planted GPU-only bugs caught ($((SECONDS - t_start)) s)"
[ "$missed" -eq 0 ]
