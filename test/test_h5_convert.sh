#!/usr/bin/env bash
# Converter test: writes small random nanoTabPFN-style .h5 dumps, converts them with
# scripts/convert_nanotabpfn_h5.py, and has the C++ reader (build/test_dataloader --check-dump)
# compare its batches bit by bit with batches sliced in numpy the way nanoTabPFN's
# PriorDumpDataLoader slices them (plus wrap-around at the end of the file).
# Also: a dump without num_datapoints / max_num_classes converts; a dump missing a required
# dataset or holding a NaN fails with one line and leaves no output.
# Needs /usr/bin/python3 with h5py and numpy. Run from anywhere: bash test/test_h5_convert.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
BIN=build/test_dataloader

if ! "$PY" -c "import h5py, numpy" 2>/dev/null; then
    echo "test_h5_convert: FAIL: needs $PY with h5py and numpy (apt-get install python3-h5py python3-numpy)" >&2
    exit 1
fi
# (re)build the checker when it is missing or older than its sources
if [ ! -x "$BIN" ] || [ -n "$(find test/test_dataloader.cpp dataloader model/common.h -newer "$BIN" -name '*.[ch]*' 2>/dev/null)" ]; then
    mkdir -p build
    g++ -std=c++17 -O2 -Wall -fopenmp test/test_dataloader.cpp -o "$BIN" -lm
fi

TMP=$(mktemp -d /tmp/mosaic_h5_convert.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# make_h5 OUT.h5 EXPECTED.bin VARIANT: a random dump and its expected batches
#   full:     every dataset, float32 X/y, max_num_classes of shape (1,)
#   minimal:  no num_datapoints, no max_num_classes, float64 X, int64 y
#   nan:      full, with a NaN in dataset 5
#   no_sep:   full, without single_eval_pos
make_h5() {
    "$PY" - "$1" "$2" "$3" <<'EOF'
import sys
import h5py
import numpy as np

out_h5, out_expected, variant = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(7 if variant != "minimal" else 8)
N, MR, MF, MC, B, NUM_BATCHES = 11, 20, 6, 3, 4, 4  # 4 batches of 4 > 11 datasets: the last ones wrap
nf = rng.integers(1, MF + 1, size=N)
nd = rng.integers(8, MR + 1, size=N) if variant != "minimal" else np.full(N, MR)
sep = np.array([rng.integers(2, d) for d in nd])
X = rng.standard_normal((N, MR, MF)).astype(np.float64 if variant == "minimal" else np.float32)
y = rng.integers(0, MC, size=(N, MR))
y = y.astype(np.int64) if variant == "minimal" else y.astype(np.float32)
if variant == "minimal":
    y[:, 0], y[:, 1] = 0, MC - 1  # max(y) + 1 == MC
if variant == "nan":
    X[5, 3, 0] = np.nan
with h5py.File(out_h5, "w") as f:
    f["X"] = X
    f["y"] = y
    f["num_features"] = nf.astype(np.int32)
    if variant != "no_sep":
        f["single_eval_pos"] = sep.astype(np.int32)
    if variant != "minimal":
        f["num_datapoints"] = nd.astype(np.int32)
        f["max_num_classes"] = np.array([MC], dtype=np.int32)
        f["problem_type"] = "classification"

# expected batches, sliced like nanoTabPFN: R = max num_datapoints, F = max num_features,
# S = single_eval_pos of the batch's first dataset; x[:, :R, :F], y[:, :R]
header = np.zeros(256, dtype="<i4")
header[:8] = [0x4D535845, 1, NUM_BATCHES, B, N, MR, MF, MC]
with open(out_expected, "wb") as f:
    f.write(header.tobytes())
    for k in range(NUM_BATCHES):
        idx = [(k * B + b) % N for b in range(B)]
        R, F = int(nd[idx].max()), int(nf[idx].max())
        S = min(int(sep[idx[0]]), R - 1)
        f.write(np.array([R, F, S, 0], dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(X[idx, :R, :F], dtype="<f4").tobytes())
        f.write(np.ascontiguousarray(y[idx, :R], dtype="<f4").tobytes())
EOF
}

failed=0
for variant in full minimal; do
    make_h5 "$TMP/$variant.h5" "$TMP/$variant.expected" "$variant"
    # small chunks for "full" (3 datasets each), so the chunked streaming is exercised
    chunk=$([ "$variant" = full ] && echo 1500 || echo 67108864)
    MOSAIC_CONVERT_CHUNK_BYTES=$chunk "$PY" scripts/convert_nanotabpfn_h5.py "$TMP/$variant.h5" "$TMP/$variant.bin"
    if "$BIN" --check-dump "$TMP/$variant.bin" "$TMP/$variant.expected"; then
        echo "ok   convert $variant: C++ batches equal nanoTabPFN-style slices"
    else
        echo "FAIL convert $variant: C++ batches differ from nanoTabPFN-style slices"
        failed=1
    fi
done

# expect_fail NAME TEXT: the converter must exit non-zero, print one line containing TEXT, write nothing
expect_fail() {
    local variant=$1 text=$2
    make_h5 "$TMP/$variant.h5" "$TMP/$variant.expected" "$variant"
    local status=0
    "$PY" scripts/convert_nanotabpfn_h5.py "$TMP/$variant.h5" "$TMP/$variant.bin" 2>"$TMP/$variant.err" || status=$?
    local lines
    lines=$(wc -l <"$TMP/$variant.err")
    if [ "$status" -ne 0 ] && [ "$lines" -eq 1 ] && grep -q "$text" "$TMP/$variant.err" && [ ! -e "$TMP/$variant.bin" ] &&
        [ ! -e "$TMP/$variant.bin.partial" ]; then
        echo "ok   convert $variant fails: $(cat "$TMP/$variant.err")"
    else
        echo "FAIL convert $variant: status $status, $lines line(s): $(cat "$TMP/$variant.err")"
        failed=1
    fi
}
expect_fail no_sep "lacks required dataset(s) single_eval_pos"
expect_fail nan "X of dataset 5 has NaN or Inf"

if [ "$failed" -ne 0 ]; then
    echo "test_h5_convert: FAILED"
    exit 1
fi
echo "test_h5_convert: all passed"
