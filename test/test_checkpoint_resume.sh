#!/usr/bin/env bash
# Nothing is lost on a stop: a run stopped at step 3 (--stop-at) and resumed gives the same
# losses (every bit the log prints, %.9g) and the same final parameters (byte-identical
# export) as an uninterrupted run, with AdamW and with schedule-free AdamW; Ctrl-C (SIGINT)
# saves a checkpoint that resumes. Schedule-free's evaluation (at the average x) leaves its
# training (at y) bit-identical, and a checkpoint predicts as its export does (both x).
# Checkpoint hardening: version 1 files load; the reader refuses, with one error line and a
# non-zero exit, a negative or huge next step, trailing bytes, a truncated file, a negative
# second moment, a parameter count that is not the model's and another optimizer's state;
# --resume at or past --steps says there is nothing to train and exits 1; an export or a
# checkpoint onto a full disk (/dev/full) fails and leaves nothing under the real name.
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
SMALL="--threads 1 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --eval-csv none --steps 6 --warmup-steps 2 --seed 5"

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

# ----------------------------------------------------------------------------
# schedule-free AdamW
SF="$SMALL --optimizer schedulefree --lr 4e-3"
./train_tabpfn $SF --log "$TMP/sf_full.log" --export "$TMP/sf_full.tensors" --checkpoint "$TMP/sf_full.ckpt" >/dev/null
./train_tabpfn $SF --log "$TMP/sf_part.log" --stop-at 3 --checkpoint "$TMP/sf.ckpt" >/dev/null 2>&1
./train_tabpfn $SF --log "$TMP/sf_part.log" --resume "$TMP/sf.ckpt" --export "$TMP/sf_resumed.tensors" >/dev/null
check "schedule-free: resumed run logs the same 6 steps as the uninterrupted run" \
    diff <(grep '^step' "$TMP/sf_full.log" | cut -d' ' -f1-6) <(grep '^step' "$TMP/sf_part.log" | cut -d' ' -f1-6)
check "schedule-free: resumed run exports byte-identical averaged weights" cmp "$TMP/sf_full.tensors" "$TMP/sf_resumed.tensors"
./train_tabpfn $SMALL --log "$TMP/adamw.log" >/dev/null
check "schedule-free trains differently from AdamW (the flag takes effect)" \
    bash -c "! diff -q <(grep '^step' '$TMP/adamw.log' | cut -d' ' -f1-4) <(grep '^step' '$TMP/sf_full.log' | cut -d' ' -f1-4) >/dev/null"
# evaluation every 2 steps reads x, then training goes on at y: the same losses, the same x
printf 'a,b,label\n' >"$TMP/t.csv"
for i in $(seq 1 40); do echo "$i,$(( (i * 7) % 11 )),$(( i % 2 ))"; done >>"$TMP/t.csv"
./train_tabpfn $SF --eval-csv "$TMP/t.csv" --eval-every 2 --log "$TMP/sf_eval.log" --export "$TMP/sf_eval.tensors" >/dev/null
check "schedule-free: evaluating every 2 steps leaves the training losses bit-identical" \
    diff <(grep '^step' "$TMP/sf_full.log" | cut -d' ' -f1-6) <(grep '^step' "$TMP/sf_eval.log" | cut -d' ' -f1-6)
check "schedule-free: ... and the exported average byte-identical" cmp "$TMP/sf_full.tensors" "$TMP/sf_eval.tensors"
check "schedule-free: the log has the periodic evaluations" [ "$(grep -c '^eval step' "$TMP/sf_eval.log")" -eq 3 ]
# the checkpoint holds y, z, v and x; predict takes x from it, as from the export
head -n 21 "$TMP/t.csv" >"$TMP/train.csv"
{ head -n 1 "$TMP/t.csv"; tail -n 20 "$TMP/t.csv"; } >"$TMP/test.csv"
./train_tabpfn predict "$TMP/sf_full.ckpt" "$TMP/train.csv" "$TMP/test.csv" --heads 2 --threads 1 >"$TMP/p_ckpt.csv" 2>/dev/null
./train_tabpfn predict "$TMP/sf_full.tensors" "$TMP/train.csv" "$TMP/test.csv" --heads 2 --threads 1 >"$TMP/p_export.csv" 2>/dev/null
check "schedule-free: predict from the checkpoint prints what predict from the export prints" \
    bash -c "[ -s '$TMP/p_ckpt.csv' ] && cmp '$TMP/p_ckpt.csv' '$TMP/p_export.csv'"

# ----------------------------------------------------------------------------
# the checkpoint reader and the files' writing
expect_error() { # expect_error NAME PATTERN ARGS...: exit 1, one stderr line "mosaic: error: ...PATTERN"
    local name=$1 pattern=$2
    shift 2
    timeout 60 ./train_tabpfn "$@" >"$TMP/out" 2>"$TMP/err"
    local code=$?
    if [ "$code" -eq 1 ] && [ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q "^mosaic: error: .*$pattern" "$TMP/err"; then
        passed=$((passed + 1)); echo "ok    $name: $(cat "$TMP/err")"
    else
        failed=$((failed + 1)); echo "FAIL  $name: exit $code, wanted one line /$pattern/:"; sed 's/^/      /' "$TMP/err" | head -3
    fi
}
# patch CKPT OUT WORD VALUE [FORMAT]: a copy of CKPT with header word WORD (int32) set to VALUE;
# FORMAT "float@OFFSET" instead writes a float32 VALUE at byte OFFSET
patch() {
    /usr/bin/python3 - "$@" <<'PY'
import struct, sys
src, dst, where, value = sys.argv[1:5]
blob = bytearray(open(src, "rb").read())
if where.startswith("float@"):
    struct.pack_into("<f", blob, int(where[6:]), float(value))
else:
    struct.pack_into("<i", blob, 4 * int(where), int(value))
open(dst, "wb").write(bytes(blob))
PY
}
P=$(/usr/bin/python3 -c "import struct,sys; print(struct.unpack_from('<i', open(sys.argv[1],'rb').read(), 32)[0])" "$TMP/c.ckpt")
patch "$TMP/c.ckpt" "$TMP/neg_step.ckpt" 7 -5
expect_error "negative next step" "next step -5, outside" $SMALL --resume "$TMP/neg_step.ckpt"
patch "$TMP/c.ckpt" "$TMP/huge_step.ckpt" 7 2000000000
expect_error "huge next step" "next step 2000000000, outside" $SMALL --resume "$TMP/huge_step.ckpt"
cp "$TMP/c.ckpt" "$TMP/trailing.ckpt" && printf 'junk' >>"$TMP/trailing.ckpt"
expect_error "trailing bytes" "4 trailing bytes" $SMALL --resume "$TMP/trailing.ckpt"
head -c $(( $(stat -c %s "$TMP/c.ckpt") - 8 )) "$TMP/c.ckpt" >"$TMP/short.ckpt"
expect_error "truncated checkpoint" "is truncated" $SMALL --resume "$TMP/short.ckpt"
head -c 100 "$TMP/c.ckpt" >"$TMP/stub.ckpt"
expect_error "checkpoint shorter than its header" "truncated" $SMALL --resume "$TMP/stub.ckpt"
# AdamW's v is the third block: 1024 header bytes + 2 P floats
patch "$TMP/c.ckpt" "$TMP/neg_v.ckpt" "float@$(( 1024 + 8 * P + 40 ))" -1e-6
expect_error "negative second moment (AdamW)" "negative second moment" $SMALL --resume "$TMP/neg_v.ckpt"
# schedule-free's v is the third block too (y, z, v, x)
patch "$TMP/sf.ckpt" "$TMP/sf_neg_v.ckpt" "float@$(( 1024 + 8 * P + 4 ))" -2
expect_error "negative second moment (schedule-free)" "negative second moment" $SF --resume "$TMP/sf_neg_v.ckpt"
patch "$TMP/c.ckpt" "$TMP/count.ckpt" 8 $(( P + 1 ))
expect_error "parameter count mismatch" "holds $(( P + 1 )) parameters, expected $P" $SMALL --resume "$TMP/count.ckpt"
patch "$TMP/c.ckpt" "$TMP/nan.ckpt" "float@$(( 1024 + 4 * P + 12 ))" nan
expect_error "NaN in a state block" "non-finite value" $SMALL --resume "$TMP/nan.ckpt"
expect_error "schedule-free state resumed with --optimizer adamw" "holds schedulefree state but the run uses --optimizer adamw" \
    $SMALL --resume "$TMP/sf.ckpt"
expect_error "--resume at --steps: nothing to train" "is at step 6 and --steps is 6: nothing to train" \
    $SMALL --resume "$TMP/sf_full.ckpt" --optimizer schedulefree
expect_error "--resume past --steps: nothing to train" "is at step 6 and --steps is 4: nothing to train" \
    $SMALL --resume "$TMP/sf_full.ckpt" --optimizer schedulefree --steps 4
# version 1 (AdamW: parameters, m, v; no optimizer words) still loads and resumes the same
patch "$TMP/c.ckpt" "$TMP/v1.ckpt" 1 1
patch "$TMP/v1.ckpt" "$TMP/v1.ckpt" 10 0
patch "$TMP/v1.ckpt" "$TMP/v1.ckpt" 11 0
./train_tabpfn $SMALL --log "$TMP/v1.log" --resume "$TMP/v1.ckpt" --export "$TMP/v1.tensors" >/dev/null
check "a version 1 checkpoint resumes to byte-identical parameters" cmp "$TMP/full.tensors" "$TMP/v1.tensors"
# a write that fails (a full disk: PATH.tmp is /dev/full, ENOSPC) leaves the real name untouched
ln -s /dev/full "$TMP/big.tensors.tmp"
./train_tabpfn $SMALL --export "$TMP/big.tensors" >/dev/null 2>"$TMP/full.err"
code=$?
check "an export onto a full disk fails (exit $code, one error line)" \
    bash -c "[ $code -eq 1 ] && [ \$(wc -l <'$TMP/full.err') -eq 1 ] && grep -q \"^mosaic: error: cannot write '$TMP/big.tensors.tmp'\" '$TMP/full.err'"
check "... and leaves no file under the real name" [ ! -e "$TMP/big.tensors" ]
cp "$TMP/full.tensors" "$TMP/keep.tensors"
ln -s /dev/full "$TMP/keep.tensors.tmp"
./train_tabpfn $SMALL --export "$TMP/keep.tensors" >/dev/null 2>&1
check "... nor touches an older file of that name" cmp "$TMP/full.tensors" "$TMP/keep.tensors"
ln -s /dev/full "$TMP/keep.ckpt.tmp"
./train_tabpfn $SMALL --checkpoint "$TMP/keep.ckpt" >/dev/null 2>"$TMP/full2.err"
check "a checkpoint onto a full disk fails and leaves no file under the real name" \
    bash -c "grep -q \"^mosaic: error: cannot write '$TMP/keep.ckpt.tmp'\" '$TMP/full2.err' && [ ! -e '$TMP/keep.ckpt' ]"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
