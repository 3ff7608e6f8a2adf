#!/usr/bin/env bash
# Nothing is lost on a stop: a run stopped at step 3 (--stop-at) and resumed gives the same
# losses (every bit the log prints, %.9g) and the same final parameters (byte-identical
# export) as an uninterrupted run; Ctrl-C (SIGINT) saves a checkpoint that resumes.
# usage: bash test/test_checkpoint_resume.sh   (from the repository root, after make train_tabpfn)
set -u
cd "$(dirname "$0")/.."
TMP=$(mktemp -d /tmp/mosaic_resume.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
check() { # check NAME COMMAND...
    local name=$1
    shift
    if "$@"; then passed=$((passed + 1)); echo "ok    $name"; else failed=$((failed + 1)); echo "FAIL  $name"; fi
}
SMALL="--threads 2 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --eval-csv none --steps 6 --warmup-steps 2 --seed 5"

./train_tabpfn $SMALL --log "$TMP/full.log" --export "$TMP/full.tensors" >/dev/null
./train_tabpfn $SMALL --log "$TMP/part.log" --stop-at 3 --checkpoint "$TMP/c.ckpt" >/dev/null 2>"$TMP/stop.err"
check "--stop-at 3 exits 0 and says where the checkpoint is" grep -q "stopped at step 3 of 6" "$TMP/stop.err"
./train_tabpfn $SMALL --log "$TMP/part.log" --resume "$TMP/c.ckpt" --export "$TMP/resumed.tensors" >/dev/null
check "resumed run logs the same 6 steps as the uninterrupted run" \
    diff <(grep '^step' "$TMP/full.log" | cut -d' ' -f1-6) <(grep '^step' "$TMP/part.log" | cut -d' ' -f1-6)
check "resumed run ends with byte-identical parameters" cmp "$TMP/full.tensors" "$TMP/resumed.tensors"

# SIGINT mid-run: exit 130, a checkpoint, and a resume that finishes the run
./train_tabpfn $SMALL --steps 100000 --log "$TMP/int.log" --checkpoint "$TMP/int.ckpt" >/dev/null 2>"$TMP/int.err" &
pid=$!
for _ in $(seq 1 300); do grep -q '^step 2 ' "$TMP/int.log" 2>/dev/null && break; sleep 0.1; done
kill -INT $pid
wait $pid
code=$?
check "SIGINT exits 130" [ "$code" -eq 130 ]
check "SIGINT names the saved checkpoint" grep -q "interrupted at step .* checkpoint saved to '$TMP/int.ckpt'" "$TMP/int.err"
stopped_at=$(sed -n "s/.*interrupted at step \([0-9]*\) .*/\1/p" "$TMP/int.err")
./train_tabpfn $SMALL --steps $((stopped_at + 2)) --resume "$TMP/int.ckpt" >"$TMP/int_resume.out" 2>&1
check "the interrupted run resumes at step $((stopped_at + 1))" grep -q "resumed from '$TMP/int.ckpt' at step $stopped_at" "$TMP/int_resume.out"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
