#!/usr/bin/env bash
# PyTorch interchange (scripts/mosaic_to_torch.py, scripts/torch_to_mosaic.py):
#   - a tiny trained model: export -> .pt -> Mosaic is byte-identical (cmp), its checkpoint
#     converts to exactly the export's tensors (AdamW; and schedule-free, whose checkpoint holds
#     y, z, v and the averaged x that export and predict use), and the .pt loads with strict=True into the PyTorch
#     reference (scripts/tabpfn_reference.py; also nanoTabPFN's own model.py when
#     NANOTABPFN_MODEL_PY names it);
#   - that model's reference forward (float64) on a numeric train/test CSV pair equals
#     `./train_tabpfn predict` within TOL (absolute, per probability);
#   - the reverse path: a random reference module (4 outputs, heads not recorded) ->
#     torch_to_mosaic -> predict on a 3-class table equals the reference forward renormalised
#     over the 3 train classes, within TOL;
#   - torch_to_mosaic accepts {'state_dict': state_dict} with 'module.' keys, refuses missing / unexpected / mis-shaped
#     keys and files that are not state_dicts, and mosaic_to_torch refuses truncated or foreign
#     files: one error line, exit 1, no output file.
# Needs /usr/bin/python3 with torch and numpy. usage: bash test/test_interchange.sh (after make train_tabpfn)
source "$(dirname "$0")/test_lib.sh"
TOL=1e-4
BIN=./train_tabpfn
SMALL="--embed 16 --heads 2 --hidden 24 --layers 2 --batch 4 --min-rows 20 --max-rows 40 --eval-csv none --threads 1 --quiet"
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"

if [ ! -x "$BIN" ] || ! "$PY" -c "import torch, numpy" 2>/dev/null; then
    bad "needs $BIN (make train_tabpfn) and $PY with torch and numpy"
    finish
    exit 1
fi

cat >"$TMP/helper.py" <<'EOF'
import sys
import numpy as np

mode, args = sys.argv[1], sys.argv[2:]
if mode != "compare":  # torch takes seconds to import; compare needs numpy only
    import torch
    import torch.nn.functional as F
    from tabpfn_reference import TabPFN, randomize


def write_csv(path, X, y):
    with open(path, "w") as f:
        f.write(",".join(f"f{j}" for j in range(X.shape[1])) + ",target\n")
        for row, label in zip(X, y):
            f.write(",".join(repr(float(v)) for v in row) + f",{label}\n")


def read_csv(path):
    rows = [line.rstrip("\n").split(",") for line in open(path)][1:]
    return np.array([[float(v) for v in r[:-1]] for r in rows]), np.array([int(r[-1]) for r in rows])


def module_for(state, heads):
    E, H = state["decoder.linear1.weight"].shape[1], state["decoder.linear1.weight"].shape[0]
    L = sum(1 for k in state if k.endswith(".norm1.weight"))
    return TabPFN(E, heads, H, L, state["decoder.linear2.weight"].shape[0])


def reference_probabilities(model, train, test):
    """nanoTabPFN's classifier: train then test rows in one table, logits of the train classes only."""
    Xtr, ytr = read_csv(train)
    Xte, _ = read_csv(test)
    classes = sorted(set(ytr.tolist()))
    codes = np.array([classes.index(v) for v in ytr], dtype=np.float64)
    x = torch.from_numpy(np.concatenate([Xtr, Xte]))[None]
    y = torch.from_numpy(np.concatenate([codes, np.zeros(len(Xte))]))[None]  # test labels are never read
    with torch.no_grad():
        logits = model.double()(x, y, len(Xtr))[0, :, :len(classes)]
    return classes, F.softmax(logits, dim=1).numpy()


if mode == "setup":  # OUT_DIR: numeric tables, labels 0/1 (binary) and 0/1/2 (three), features at several scales
    rng = np.random.default_rng(3)
    for name, classes, rows in (("binary", 2, 70), ("three", 3, 90)):
        X = rng.standard_normal((rows, 5)) * np.array([1.0, 10.0, 0.1, 3.0, 1000.0]) + np.array([0, 5, 1, -2, 3000])
        y = (np.digitize(X[:, 0] + 0.3 * X[:, 1] / 10 + 0.2 * rng.standard_normal(rows), [-0.5, 0.5][:classes - 1]))
        y[:classes], y[40:40 + classes] = np.arange(classes), np.arange(classes)  # every class in train and test
        write_csv(f"{args[0]}/{name}_train.csv", X[:40], y[:40])
        write_csv(f"{args[0]}/{name}_test.csv", X[40:], y[40:])
    # a random reference module, E 24, 4 heads, H 20, L 2, 4 outputs
    torch.manual_seed(5)
    model = TabPFN(24, 4, 20, 2, 4)
    randomize(model)
    torch.save(model.state_dict(), f"{args[0]}/random.pt")
elif mode == "strict_load":  # PT HEADS UPSTREAM_MODEL_PY|- (CONVERTED_PT MOSAIC_EXPORT)...; first writes variants of PT
    from tensor_file import read_tensors
    state = torch.load(args[0])
    # variants: wrapped (and prefixed), missing, unexpected, mis-shaped, not a state_dict
    out = args[0].rsplit("/", 1)[0]
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "step": 5}, f"{out}/wrapped.pt")
    missing = dict(state); del missing["transformer_blocks.1.norm2.bias"]
    torch.save(missing, f"{out}/missing.pt")
    extra = dict(state); extra["transformer_blocks.0.bias_k"] = torch.zeros(1, 1, 16)
    torch.save(extra, f"{out}/extra.pt")
    shaped = dict(state); shaped["transformer_blocks.1.linear1.bias"] = torch.zeros(23)
    torch.save(shaped, f"{out}/shaped.pt")
    torch.save(torch.zeros(3), f"{out}/tensor.pt")
    model = module_for(state, int(args[1]))
    model.load_state_dict(state, strict=True)
    print(f"loads with strict=True into tabpfn_reference.TabPFN ({len(state)} tensors)")
    for converted, export in zip(args[3::2], args[4::2]):
        got, want = torch.load(converted), read_tensors(export)
        if list(sorted(got)) != list(sorted(want)) or not all(np.array_equal(got[k].numpy(), want[k]) for k in want):
            print(f"{converted} does not hold the tensors of {export}")
            sys.exit(1)
        print(f"{converted.rsplit('/', 1)[1]} holds exactly the tensors of {export.rsplit('/', 1)[1]}")
    if args[2] != "-":
        import importlib.util
        spec = importlib.util.spec_from_file_location("nanotabpfn_model", args[2])
        upstream = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(upstream)
        m = model
        u = upstream.NanoTabPFNModel(m.feature_encoder.linear_layer.out_features, int(args[1]), m.decoder.linear1.out_features,
                                     len(m.transformer_blocks), m.decoder.linear2.out_features)
        u.load_state_dict(state, strict=True)
        print(f"loads with strict=True into nanoTabPFN's NanoTabPFNModel ({args[2]})")
elif mode == "reference":  # (PT HEADS TRAIN TEST OUT)...: the reference's probabilities, predict's layout
    for k in range(0, len(args), 5):
        state = torch.load(args[k])
        model = module_for(state, int(args[k + 1]))
        model.load_state_dict(state, strict=True)
        classes, p = reference_probabilities(model, args[k + 2], args[k + 3])
        with open(args[k + 4], "w") as f:
            f.write(",".join(map(str, classes)) + "\n")
            f.writelines(",".join(f"{v:.9g}" for v in row) + "\n" for row in p)
elif mode == "compare":  # PREDICT_OUT REFERENCE_OUT TOL: same header, same rows, max |difference| <= TOL
    got = [l.strip() for l in open(args[0]) if l.strip()]
    want = [l.strip() for l in open(args[1]) if l.strip()]
    if not got or got[0] != want[0] or len(got) != len(want):
        print(f"predict printed header '{got[0] if got else ''}' and {len(got) - 1} rows; expected '{want[0]}' and {len(want) - 1}")
        sys.exit(1)
    a = np.array([[float(v) for v in l.split(",")] for l in got[1:]])
    b = np.array([[float(v) for v in l.split(",")] for l in want[1:]])
    diff = np.abs(a - b).max() if a.shape == b.shape else np.inf
    print(f"classes {got[0]}, {len(a)} rows: max |predict - reference| = {diff:.2e} (tolerance {args[2]}); "
          f"rows sum to 1 within {np.abs(a.sum(1) - 1).max():.1e}")
    sys.exit(0 if diff <= float(args[2]) and np.abs(a.sum(1) - 1).max() < 1e-5 else 1)
EOF
helper() { "$PY" "$TMP/helper.py" "$@"; }

# ---- a tiny trained model: round trips
"$BIN" $SMALL --steps 5 --optimizer adamw --export "$TMP/model.bin" --checkpoint "$TMP/model.ckpt" >"$TMP/train.out" 2>&1 ||
    bad "training the tiny model" "$TMP/train.out"
"$PY" scripts/mosaic_to_torch.py "$TMP/model.bin" "$TMP/model.pt" >"$TMP/conv.out" 2>&1 &&
    "$PY" scripts/torch_to_mosaic.py "$TMP/model.pt" "$TMP/back.bin" >>"$TMP/conv.out" 2>&1 &&
    cmp "$TMP/model.bin" "$TMP/back.bin" >>"$TMP/conv.out" 2>&1 &&
    ok "export -> mosaic_to_torch -> torch_to_mosaic is byte-identical ($(stat -c %s "$TMP/model.bin") bytes, heads kept)" ||
    bad "export -> .pt -> Mosaic round trip" "$TMP/conv.out"
# checkpoints: AdamW's weights, and schedule-free's averaged x (what --export and predict use)
"$BIN" $SMALL --steps 5 --optimizer schedulefree --export "$TMP/sf.bin" --checkpoint "$TMP/sf.ckpt" >"$TMP/train.out" 2>&1 ||
    bad "training the tiny schedule-free model" "$TMP/train.out"
"$PY" scripts/mosaic_to_torch.py "$TMP/model.ckpt" "$TMP/ckpt.pt" >"$TMP/conv.out" 2>&1 &&
    "$PY" scripts/mosaic_to_torch.py "$TMP/sf.ckpt" "$TMP/sf.pt" >>"$TMP/conv.out" 2>&1 ||
    bad "mosaic_to_torch of the AdamW and schedule-free checkpoints" "$TMP/conv.out"
helper strict_load "$TMP/model.pt" 2 "${NANOTABPFN_MODEL_PY:--}" "$TMP/ckpt.pt" "$TMP/model.bin" "$TMP/sf.pt" "$TMP/sf.bin" \
    >"$TMP/load.out" 2>&1 && ok "$(tr '\n' ';' <"$TMP/load.out" | sed 's/;$//; s/;/; /g')" ||
    bad "strict load into the PyTorch reference; checkpoints converted = exports" "$TMP/load.out"

# ---- the trained model: reference forward vs predict (and a random module for the reverse path)
helper setup "$TMP"
"$PY" scripts/torch_to_mosaic.py "$TMP/random.pt" "$TMP/random.bin" >"$TMP/conv.out" 2>&1 ||
    bad "torch_to_mosaic of a random reference module" "$TMP/conv.out"
helper reference "$TMP/model.pt" 2 "$TMP/binary_train.csv" "$TMP/binary_test.csv" "$TMP/ref_binary.csv" \
    "$TMP/random.pt" 4 "$TMP/three_train.csv" "$TMP/three_test.csv" "$TMP/ref_three.csv"
if "$BIN" predict "$TMP/model.bin" "$TMP/binary_train.csv" "$TMP/binary_test.csv" --threads 1 \
    >"$TMP/pred_binary.csv" 2>"$TMP/pred_binary.err"; then
    helper compare "$TMP/pred_binary.csv" "$TMP/ref_binary.csv" "$TOL" >"$TMP/cmp.out" 2>&1 &&
        ok "Mosaic-trained model: predict = PyTorch reference: $(cat "$TMP/cmp.out")" ||
        bad "Mosaic-trained model: predict vs PyTorch reference" "$TMP/cmp.out"
else
    bad "predict on the exported model (exit non-zero)" "$TMP/pred_binary.err"
fi

# ---- the reverse path: random PyTorch module -> Mosaic, heads left unrecorded (predict's default: 4)
if "$BIN" predict "$TMP/random.bin" "$TMP/three_train.csv" "$TMP/three_test.csv" --threads 1 \
    >"$TMP/pred_three.csv" 2>"$TMP/pred_three.err"; then
    helper compare "$TMP/pred_three.csv" "$TMP/ref_three.csv" "$TOL" >"$TMP/cmp.out" 2>&1 &&
        ok "PyTorch module (4 outputs, 3 classes): predict = reference: $(cat "$TMP/cmp.out")" ||
        bad "PyTorch module -> Mosaic: predict vs reference" "$TMP/cmp.out"
else
    bad "predict on the converted PyTorch module (exit non-zero)" "$TMP/pred_three.err"
fi

# ---- accepted variants and refused inputs
"$PY" scripts/torch_to_mosaic.py "$TMP/wrapped.pt" "$TMP/wrapped.bin" --heads 2 >"$TMP/conv.out" 2>&1 &&
    cmp "$TMP/model.bin" "$TMP/wrapped.bin" >>"$TMP/conv.out" 2>&1 &&
    ok "torch_to_mosaic accepts {'state_dict': {'module.' + key: ...}} (byte-identical to the export)" ||
    bad "torch_to_mosaic of a wrapped, prefixed state_dict" "$TMP/conv.out"
# expect_error NAME PATTERN SCRIPT IN: exit 1, one stderr line matching PATTERN, no output file left
expect_error() {
    local name=$1 pattern=$2 script=$3 in=$4 out=${5:-$TMP/refused.out}
    rm -f "$out" "$out.partial"
    "$PY" "scripts/$script" "$in" "$out" >/dev/null 2>"$TMP/err"
    local code=$? lines
    lines=$(wc -l <"$TMP/err")
    if [ "$code" -eq 1 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" "$TMP/err" && [ ! -e "$out" ] && [ ! -e "$out.partial" ]; then
        ok "$name: $(cat "$TMP/err")"
    else
        bad "$name: exit $code, $lines stderr line(s), wanted /$pattern/" "$TMP/err"
    fi
}
expect_error "missing key" "1 missing key(s).*transformer_blocks.1.norm2.bias" torch_to_mosaic.py "$TMP/missing.pt"
expect_error "unexpected key" "1 unexpected key(s).*transformer_blocks.0.bias_k" torch_to_mosaic.py "$TMP/extra.pt"
expect_error "mis-shaped key" "mis-shaped.*transformer_blocks.1.linear1.bias (23,) (expected (24,))" torch_to_mosaic.py "$TMP/shaped.pt"
expect_error "a tensor, not a state_dict" "not a state_dict" torch_to_mosaic.py "$TMP/tensor.pt"
expect_error "a CSV, not a torch file" "cannot be read by torch.load" torch_to_mosaic.py "$TMP/binary_train.csv"
head -c 3000 "$TMP/model.bin" >"$TMP/truncated.bin"
expect_error "truncated export" "truncated" mosaic_to_torch.py "$TMP/truncated.bin"
expect_error "a CSV, not a model" "neither a Mosaic exported model" mosaic_to_torch.py "$TMP/binary_train.csv"
expect_error "missing model file" "cannot read" mosaic_to_torch.py "$TMP/none.bin"
expect_error "output into a missing directory (torch.save)" "cannot write" mosaic_to_torch.py "$TMP/model.bin" "$TMP/no_dir/m.pt"
expect_error "output into a missing directory (tensor file)" "cannot write" torch_to_mosaic.py "$TMP/model.pt" "$TMP/no_dir/m.bin"

finish
