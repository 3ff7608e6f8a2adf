#!/usr/bin/env bash
# The checks that need a real GPU (issue 7, item 5); not part of `make test`. Where
# `nvidia-smi -L` lists GPUs it:
#   1. builds ./train_tabpfn (CPU), ./train_tabpfn_cuda and the nvcc kernel tests (make);
#   2. runs the native kernel tests, each also under compute-sanitizer memcheck, racecheck and
#      synccheck (any report fails the step);
#   3. trains the default model for 50 steps on one GPU next to the CPU build with the same
#      flags: every step loss within 1e-3 (fp32 on both sides, no TF32: the builds differ only in
#      summation order and exp/erf, ~1e-7 relative per op, which 50 AdamW steps grow to ~1e-4);
#   4. runs every row-attention strategy on all local GPUs (mpirun -np <GPU count>, small
#      configuration, 4 steps) against the CPU build under the same layout: losses within 1e-4
#      (test/test_gpu_trainer.sh allows 5e-5 for the emulated build; real GPUs contract FMAs);
#   5. prints JSON lines of ms per step and datasets per second (from the trainer's closing
#      `summary {json}` line) for the default configuration, one table of 16,384 rows and one of
#      150,000 rows, for the GPU build, the CPU build and, where /usr/bin/python3 has torch with
#      CUDA, the PyTorch reference model (scripts/tabpfn_reference.py) on the same GPU.
#      scripts/bench_pytorch.py times the CPU only (it has no device flag): it is run for the
#      default configuration as the CPU baseline; the GPU timing uses the same step (forward,
#      backward, clip, AdamW) through scripts/bench_pytorch_gpu.py.
# Without a GPU it prints one line saying so and exits 1. Exits non-zero if any check fails.
#   bash scripts/gpu_check.sh      (from anywhere; ARCH=90 to build for one architecture only)
source "$(dirname "$0")/../test/test_lib.sh"
BAD_TAIL=15

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); fi
if [ "${gpus:-0}" -eq 0 ]; then
    echo "gpu_check: no GPU found (nvidia-smi -L lists none): nothing checked; run this on a machine with an NVIDIA GPU"
    exit 1
fi
nvidia-smi -L


# ---------------------------------------------------------------------------------------------
# 1. builds

cuda_tests=""
for f in test/test_cuda_*.cu; do [ -f "$f" ] && cuda_tests="$cuda_tests $(basename "$f" .cu)"; done
nvcc_bins=""
for t in $cuda_tests; do nvcc_bins="$nvcc_bins build/nvcc_$t"; done
if make --no-print-directory train_tabpfn train_tabpfn_cuda $nvcc_bins >"$TMP/make.out" 2>&1; then
    ok "built train_tabpfn, train_tabpfn_cuda and$nvcc_bins"
else
    bad "make train_tabpfn train_tabpfn_cuda$nvcc_bins" "$TMP/make.out"
    finish
    exit 1
fi
CPU=./train_tabpfn
GPU=./train_tabpfn_cuda

# ---------------------------------------------------------------------------------------------
# 2. native kernel tests and compute-sanitizer

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for t in $cuda_tests; do
    if timeout 900 "./build/nvcc_$t" >"$TMP/$t.out" 2>&1; then
        ok "$t (native GPU): $(grep -E '[0-9]+ passed' "$TMP/$t.out" | tail -n 1)"
    else
        bad "$t (native GPU)" "$TMP/$t.out"
    fi
    if [ -z "$sanitizer" ]; then
        bad "$t: compute-sanitizer not found (not on PATH, not in /usr/local/cuda/bin)"
        continue
    fi
    for tool in memcheck racecheck synccheck; do
        if timeout 1800 "$sanitizer" --tool "$tool" --error-exitcode 1 "./build/nvcc_$t" >"$TMP/$t.$tool" 2>&1; then
            ok "$t (compute-sanitizer $tool): $(grep -m1 'ERROR SUMMARY' "$TMP/$t.$tool")"
        else
            bad "$t (compute-sanitizer $tool)" "$TMP/$t.$tool"
        fi
    done
done

# compare NAME TOL REF LOG: every step loss of LOG within TOL of REF's (the same steps in both)
compare() {
    "$PY" - "$2" "$3" "$4" <<'PY'
import math, sys
def read(path):
    losses = {}
    for line in open(path):
        f = line.split()
        if f and f[0] == "step": losses[int(f[1])] = float(f[3])
    return losses
tol = float(sys.argv[1])
a, b = read(sys.argv[2]), read(sys.argv[3])
d = [abs(a[k] - b[k]) for k in a if k in b]
ok = len(a) > 0 and sorted(a) == sorted(b) and not any(math.isnan(x) for x in d) and max(d) <= tol
print(f"max |loss diff| {max(d) if d else float('nan'):.2e} over {len(d)} steps (tolerance {tol:g})")
sys.exit(0 if ok else 1)
PY
}

# ---------------------------------------------------------------------------------------------
# 3. the default model, 50 steps, one GPU vs the CPU build

DEFAULT50="--steps 50 --eval-csv none --seed 0 --quiet"
if $CPU $DEFAULT50 --log "$TMP/cpu50.log" >"$TMP/cpu50.out" 2>&1 &&
    $GPU $DEFAULT50 --log "$TMP/gpu50.log" >"$TMP/gpu50.out" 2>&1 &&
    compare default50 1e-3 "$TMP/cpu50.log" "$TMP/gpu50.log" >"$TMP/cmp" 2>&1; then
    ok "default model, 50 steps, one GPU equals the CPU build: $(cat "$TMP/cmp")"
else
    cat "$TMP/cmp" >>"$TMP/gpu50.out" 2>/dev/null
    bad "default model, 50 steps, one GPU equals the CPU build" "$TMP/gpu50.out"
fi

# ---------------------------------------------------------------------------------------------
# 4. every strategy on all local GPUs

SMALL="--steps 4 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --warmup-steps 2 --seed 3 --min-rows 20 --max-rows 40 --eval-csv none"
if [ "$gpus" -lt 2 ]; then
    bad "strategies: one GPU only, so no row sharding to run (mpirun -np 1 has sp 1)"
else
    rpn=$((gpus / 2))
    for flags in "--row-attn allgather" "--row-attn ring" "--row-attn mesh2d" "--row-attn a2a" "--row-attn composed" \
        "--row-attn hierarchical --ranks-per-node $rpn" "--row-attn auto" "--row-attn ring --no-overlap"; do
        tag=$(echo "$flags" | tr ' -' '__')
        name="mpirun -np $gpus --sp $gpus $flags"
        if timeout 300 $MPIRUN -np "$gpus" $CPU $SMALL --threads 1 --sp "$gpus" $flags --log "$TMP/cpu$tag.log" >"$TMP/cpu$tag.out" 2>&1 &&
            timeout 300 $MPIRUN -np "$gpus" $GPU $SMALL --sp "$gpus" $flags --log "$TMP/gpu$tag.log" >"$TMP/gpu$tag.out" 2>&1 &&
            compare "$tag" 1e-4 "$TMP/cpu$tag.log" "$TMP/gpu$tag.log" >"$TMP/cmp" 2>&1; then
            ok "$name: $(cat "$TMP/cmp")"
        else
            cat "$TMP/cmp" >>"$TMP/gpu$tag.out" 2>/dev/null
            bad "$name equals the CPU build" "$TMP/gpu$tag.out"
        fi
    done
fi

# ---------------------------------------------------------------------------------------------
# 5. throughput: JSON lines

# bench_line CONFIG BUILD OUT: the summary line's ms_per_step and datasets_per_s as one JSON line
bench_line() {
    "$PY" - "$1" "$2" "$3" <<'PY'
import json, sys
config, build, path = sys.argv[1:4]
rec = {"bench": "train_tabpfn", "config": config, "build": build}
summary = [l for l in open(path) if l.startswith("summary ")]
if summary:
    s = json.loads(summary[-1][len("summary "):])
    rec.update(ms_per_step=s["ms_per_step"], datasets_per_s=s["datasets_per_s"], batch=s["batch"], steps=s["steps"])
else:
    rec["error"] = "no summary line (failed or timed out)"
print(json.dumps(rec))
sys.exit(0 if summary else 1)
PY
}

# config name, trainer flags, steps for the GPU, steps for the CPU, PyTorch flags
configs=(
    "default|--batch 32|30|10|--batch 32 --rows 150"
    "rows_16384|--batch 1 --min-rows 16384 --max-rows 16384|10|3|--batch 1 --rows 16384"
    "rows_150000|--batch 1 --min-rows 150000 --max-rows 150000|5|2|--batch 1 --rows 150000"
)
torch_gpu=0
if [ -x "$PY" ] && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    torch_gpu=1
fi
for c in "${configs[@]}"; do
    IFS='|' read -r name flags gsteps csteps pyflags <<<"$c"
    timeout 1200 $GPU $flags --steps "$gsteps" --warmup-steps 1 --eval-csv none --quiet >"$TMP/b_gpu_$name.out" 2>&1
    bench_line "$name" cuda "$TMP/b_gpu_$name.out" || bad "benchmark $name on the GPU" "$TMP/b_gpu_$name.out"
    timeout 1800 $CPU $flags --steps "$csteps" --warmup-steps 1 --eval-csv none --quiet >"$TMP/b_cpu_$name.out" 2>&1
    bench_line "$name" cpu "$TMP/b_cpu_$name.out" || echo "      (the CPU build did not finish $csteps steps of $name within 30 minutes)"
    if [ "$torch_gpu" -eq 1 ]; then
        # the step of scripts/bench_pytorch.py (forward, backward, clip 1.0, AdamW, zero_grad) on the GPU
        timeout 1200 "$PY" scripts/bench_pytorch_gpu.py $pyflags --config "$name" >"$TMP/b_torch_$name.out" 2>&1
        tail -n 1 "$TMP/b_torch_$name.out"
    else
        echo "{\"bench\": \"pytorch_train_step\", \"config\": \"$name\", \"build\": \"pytorch_cuda\", \"error\": \"/usr/bin/python3 has no torch with CUDA\"}"
    fi
done
# the CPU PyTorch baseline of scripts/bench_pytorch.py (default configuration)
if [ -x "$PY" ] && "$PY" -c 'import torch' >/dev/null 2>&1; then
    "$PY" scripts/bench_pytorch.py --batch 32 --rows 150 --threads "$(nproc)" 2>&1 | tail -n 1
fi

finish
