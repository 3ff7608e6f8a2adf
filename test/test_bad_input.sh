#!/usr/bin/env bash
# Bad input must give exactly one line "mosaic: error: ..." on stderr naming the problem,
# and a non-zero exit: never a crash, a hang or silent garbage.
# usage: bash test/test_bad_input.sh   (from the repository root, after make train_tabpfn)
set -u
cd "$(dirname "$0")/.."
BIN=./train_tabpfn
TMP=$(mktemp -d /tmp/mosaic_bad_input.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

# expect_error NAME PATTERN ARGS...: non-zero exit, one stderr line, matching PATTERN
expect_error() {
    local name=$1 pattern=$2
    shift 2
    timeout 60 "$BIN" --threads 1 "$@" >"$TMP/out" 2>"$TMP/err"
    local code=$?
    local lines
    lines=$(wc -l <"$TMP/err")
    if [ "$code" -ne 0 ] && [ "$code" -lt 124 ] && [ "$lines" -eq 1 ] && grep -q "^mosaic: error: .*$pattern" "$TMP/err"; then
        passed=$((passed + 1))
        echo "ok    $name: $(cat "$TMP/err")"
    else
        failed=$((failed + 1))
        echo "FAIL  $name: exit $code, $lines stderr lines, wanted /$pattern/:"
        sed 's/^/      /' "$TMP/err" | head -5
    fi
}

# files
expect_error "missing prior dump" "cannot open '$TMP/none.bin'" --prior-dump "$TMP/none.bin"
head -c 4096 /dev/urandom >"$TMP/random.bin"
expect_error "prior dump with a wrong magic" "magic" --prior-dump "$TMP/random.bin"
"$BIN" --write-prior-dump "$TMP/good.bin" --dump-datasets 20 --batch 4 >/dev/null
head -c $(( $(stat -c %s "$TMP/good.bin") - 100 )) "$TMP/good.bin" >"$TMP/truncated.bin"
expect_error "truncated prior dump" "truncated" --prior-dump "$TMP/truncated.bin"
expect_error "missing eval table" "cannot open '$TMP/none.csv'" --eval-csv "$TMP/none.csv" --steps 1
printf 'a,b,target\n1.0,2.0,0\n3.0,nan,1\n4.0,5.0,0\n6.0,7.0,1\n' >"$TMP/nan.csv"
expect_error "nan (not a missing spelling) in a table" "'$TMP/nan.csv' line 3, column 2 ('b'): 'nan' is not a missing-cell spelling" --eval-csv "$TMP/nan.csv" --steps 1
printf 'a,b,target\n1.0,2.0,0\n3.0,inf,1\n4.0,5.0,0\n6.0,7.0,1\n' >"$TMP/inf.csv"
expect_error "Inf in a table" "'$TMP/inf.csv' line 3, column 2 ('b'): Inf 'inf'" --eval-csv "$TMP/inf.csv" --steps 1
printf 'a,b,target\n1.0,"2.0,0\n3.0,4.0,1\n' >"$TMP/quote.csv"
expect_error "unclosed quote in a table" "'$TMP/quote.csv' line 2, column 2: a quoted field is never closed" --eval-csv "$TMP/quote.csv" --steps 1
head -c 2048 "$TMP/random.bin" >"$TMP/binary.csv"
expect_error "binary eval table" "'$TMP/binary.csv' is not a CSV text file" --eval-csv "$TMP/binary.csv" --steps 1
printf '1.0,2.0,0\n3.0,2.0\n' >"$TMP/ragged.csv"
expect_error "ragged table" "'$TMP/ragged.csv' line 2, column 3: the row has 2 fields where line 1 has 3" --eval-csv "$TMP/ragged.csv" --steps 1
printf '1,0\n2,1\n3,2\n4,0\n5,1\n6,2\n' >"$TMP/three.csv"
expect_error "more classes than outputs" "3 classes" --eval-csv "$TMP/three.csv" --steps 1
expect_error "corrupt checkpoint" "not a Mosaic checkpoint" --resume "$TMP/random.bin" --eval-csv none
"$BIN" --steps 1 --batch 2 --embed 16 --heads 2 --hidden 16 --layers 1 --eval-csv none --checkpoint "$TMP/small.ckpt" >/dev/null
expect_error "checkpoint of another model" "the flags ask for" --resume "$TMP/small.ckpt" --eval-csv none

# flags
expect_error "unknown flag" "unknown flag '--bogus'" --bogus 1
expect_error "flag without value" "--steps needs a value" --steps
expect_error "non-numeric flag" "--lr expects a number, got 'fast'" --lr fast
expect_error "negative batch" "--batch -3 is out of range" --batch -3
expect_error "heads do not divide embed" "--embed 96 is not divisible by --heads 5" --heads 5
expect_error "min rows above max rows" "--min-rows 100 is above --max-rows 50" --min-rows 100 --max-rows 50
expect_error "more prior classes than outputs" "--classes 3 exceeds --outputs 2" --classes 3

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
