#!/usr/bin/env bash
# Hardening checks (issue 8), each against a stated expectation:
#  - NaN in a gradient (--debug-fail-how nan) stops the run with one line naming the step and the
#    tensor, and the checkpoint of the step before stays byte-identical (1 process, and mpirun -np 2
#    with only rank 1 poisoned);
#  - --log on a full disk (/dev/full): one warning line, the run still finishes (exit 0);
#  - --checkpoint/--export/--log into a missing directory: one error line at start-up, no step run;
#  - a prior dump whose header max_rows (2,000,000) is far above its tables' rows trains;
#  - tensor files whose dims overflow the element count, claim more data than the file holds, or
#    claim a million tensors: one error line, under a 4 GB address-space limit (nothing allocated first).
# usage: bash test/test_hardening.sh   (after make train_tabpfn)
source "$(dirname "$0")/test_lib.sh"
SMALL="--embed 8 --heads 2 --hidden 16 --layers 2 --batch 4 --min-rows 20 --max-rows 30 --max-features 3 --eval-csv none --threads 1 --quiet"

# NaN injection: a clean run's checkpoint at step 4 (same layout), then a run that goes bad at step 5
for np in 1 2; do
    rank=$((np - 1))
    launch=""
    [ "$np" -gt 1 ] && launch="timeout 120 $MPIRUN -np $np"
    $launch ./train_tabpfn $SMALL --steps 6 --checkpoint-every 2 --stop-at 4 --checkpoint "$TMP/ref$np.ckpt" >/dev/null 2>&1
    $launch ./train_tabpfn $SMALL --steps 6 --checkpoint-every 2 --checkpoint "$TMP/nan$np.ckpt" --debug-fail-rank $rank \
        --debug-fail-step 5 --debug-fail-how nan >"$TMP/nan$np.out" 2>&1
    code=$?
    if [ $code -ne 0 ] && grep -q "non-finite value at step 5 in the gradient of 'transformer_blocks.0.linear1.weight'" "$TMP/nan$np.out" &&
        [ "$(grep -c 'mosaic: error' "$TMP/nan$np.out")" -eq 1 ]; then
        ok "NaN gradient (np $np, rank $rank poisoned): exit $code, one line naming step 5 and transformer_blocks.0.linear1.weight"
    else
        bad "NaN gradient (np $np): exit $code, message" "$TMP/nan$np.out"
    fi
    if [ -s "$TMP/ref$np.ckpt" ] && cmp -s "$TMP/ref$np.ckpt" "$TMP/nan$np.ckpt"; then ok "NaN gradient (np $np): the step-4 checkpoint is byte-identical to a clean run's"
    else bad "NaN gradient (np $np): checkpoint differs from the clean step-4 checkpoint"; fi
done

# --log on a full disk
./train_tabpfn $SMALL --steps 3 --log /dev/full >"$TMP/full.out" 2>&1
code=$?
if [ $code -eq 0 ] && [ "$(grep -c "mosaic: warning: cannot write the log '/dev/full' at step 1: No space left" "$TMP/full.out")" -eq 1 ] &&
    grep -q '^summary' "$TMP/full.out"; then
    ok "--log /dev/full: one warning line naming the log and step 1, the run finishes (exit 0)"
else
    bad "--log /dev/full: exit $code" "$TMP/full.out"
fi

# output paths into a missing directory: refused at start-up
for flag in --checkpoint --export --log; do
    ./train_tabpfn $SMALL --steps 3 $flag "$TMP/missing/out.bin" >"$TMP/dir.out" 2>&1
    code=$?
    if [ $code -eq 1 ] && [ "$(grep -c . "$TMP/dir.out")" -eq 1 ] &&
        grep -q "mosaic: error: $flag '$TMP/missing/out.bin': directory '$TMP/missing' does not exist" "$TMP/dir.out"; then
        ok "$flag into a missing directory: one error line at start-up, exit 1"
    else
        bad "$flag into a missing directory: exit $code" "$TMP/dir.out"
    fi
done

# a valid prior dump with a large header max_rows and short tables (sparse file, ~48 MB apparent)
"$PY" - "$TMP/tall.bin" <<'PYEOF'
import struct, sys, random
N, MR, MF, MC = 2, 2_000_000, 2, 2
rows, sep = [20, 25], [10, 12]
random.seed(1)
x_off = 1024 + 12 * N
y_off = x_off + 4 * N * MR * MF
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('<256i', *([0x4D535044, 1, N, MR, MF, MC] + [0] * 250)))
    f.write(struct.pack('<%di' % (3 * N), *([MF] * N + rows + sep)))
    for i in range(N):
        f.seek(x_off + 4 * i * MR * MF)
        f.write(struct.pack('<%df' % (rows[i] * MF), *[random.gauss(0, 1) for _ in range(rows[i] * MF)]))
        f.seek(y_off + 4 * i * MR)
        f.write(struct.pack('<%df' % rows[i], *[float(r % 2) for r in range(rows[i])]))
    f.truncate(y_off + 4 * N * MR)
PYEOF
./train_tabpfn $SMALL --steps 2 --batch 2 --prior-dump "$TMP/tall.bin" >"$TMP/tall.out" 2>&1
code=$?
if [ $code -eq 0 ] && grep -q '^summary' "$TMP/tall.out"; then ok "prior dump with header max_rows 2,000,000 and tables of 20-25 rows trains (buffers sized by num_datapoints)"
else bad "prior dump with a large header max_rows: exit $code" "$TMP/tall.out"; fi

# tensor files with lying sizes, read as predict's MODEL: one error line, no big allocation
"$PY" - "$TMP" <<'PYEOF'
import struct, sys
d = sys.argv[1]
def hdr(n): return struct.pack('<256i', *([0x4D535446, 1, n, 0] + [0] * 252))
name = struct.pack('<i', 1) + b'a'
# dims 65536^4: 2^64 elements, which wraps to 0 in 64-bit arithmetic
open(d + '/overflow.bin', 'wb').write(hdr(1) + name + struct.pack('<5i', 4, 65536, 65536, 65536, 65536))
# (2^31 - 1) x 2 floats (16 GiB) claimed, 8 bytes present
open(d + '/huge.bin', 'wb').write(hdr(1) + name + struct.pack('<3i', 2, 2**31 - 1, 2) + b'\0' * 8)
open(d + '/count.bin', 'wb').write(hdr(10**6) + b'\0' * 64)
# a valid 1-tensor file plus 4 trailing bytes
open(d + '/trailing.bin', 'wb').write(hdr(1) + name + struct.pack('<2i', 1, 1) + b'\0' * 8)
PYEOF
for f in overflow:"claims more data than the file holds" huge:"claims more data than the file holds" \
    count:"claims 1000000 tensors but holds only 64 bytes" trailing:"has 4 trailing bytes"; do
    name=${f%%:*}
    want=${f#*:}
    (ulimit -v 4000000; ./train_tabpfn predict "$TMP/$name.bin" data/breast_cancer.csv data/breast_cancer.csv) >"$TMP/tf.out" 2>&1
    code=$?
    if [ $code -eq 1 ] && [ "$(grep -c . "$TMP/tf.out")" -eq 1 ] && grep -q "$want" "$TMP/tf.out"; then
        ok "tensor file ($name): one error line '$want', exit 1"
    else
        bad "tensor file ($name): exit $code" "$TMP/tf.out"
    fi
done
finish
