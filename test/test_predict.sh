#!/usr/bin/env bash
# ./train_tabpfn predict on real-looking tables, each check against an independent reference:
#  - string labels, a categorical column and missing cells (empty, NA, ?) give exactly the
#    probabilities of the same table encoded by hand in Python (codes of the sorted train
#    categories, train means, most frequent category; |diff| <= 1e-6);
#  - ROC-AUC, accuracy and log loss equal scikit-learn's on the printed probabilities (1e-5),
#    for 2 classes and for 3 (one-vs-rest macro);
#  - a checkpoint and an export of the same model print the same bytes; test rows in chunks
#    give the probabilities of one pass (1e-6); permuted feature columns too (1e-5: the model
#    has no feature positions);
#  - under mpirun the rows sharded over 4 ranks (allgather, ring, a2a, mesh2d, composed) and
#    dp 2 x sp 2 with an ensemble give one process's probabilities (|diff| <= 1e-5);
#  - the ensemble of 4 = the mean of member 0 and three predictions on class-relabelled train
#    tables, un-permuted in Python (1e-5); member 2's quantile transform against Python's;
#    a member's feature subset against the one-feature table;
#  - bad input: one error line naming file, line and column, non-zero exit (also under mpirun).
# Needs /usr/bin/python3 with numpy and scikit-learn. usage: bash test/test_predict.sh
source "$(dirname "$0")/test_lib.sh"
export OMP_NUM_THREADS=1
BIN=./train_tabpfn

# a small 3-output model, briefly trained (the checks compare codes, not quality)
$BIN --steps 20 --batch 4 --embed 16 --heads 2 --hidden 32 --layers 2 --classes 3 --outputs 3 --seed 5 --threads 1 \
    --eval-csv none --quiet --checkpoint "$TMP/m.ckpt" --export "$TMP/m.bin" >"$TMP/train.out" 2>&1 || bad "training the test model" "$TMP/train.out"

# tables: raw (strings, categories, missing) and the same encoded by hand
$PY - "$TMP" <<'PY' || bad "writing the tables"
import csv, random, sys
tmp = sys.argv[1]
rng = random.Random(7)
def table(n, classes, missing):
    rows = []
    for i in range(n):
        k = rng.randrange(len(classes))
        x1 = rng.gauss(k * 1.5, 1.0)
        x2 = rng.gauss(-k, 1.0) * 10 + 100
        colour = ["red", "green", "blue, light"][(k + (rng.random() < 0.3)) % 3]
        cells = [f"{x1:.4f}", colour, f"{x2:.3f}", classes[k]]
        if missing:
            if rng.random() < 0.08: cells[0] = rng.choice(["", "NA", "?", "NaN"])
            if rng.random() < 0.08: cells[1] = rng.choice(["", "NA"])
            if rng.random() < 0.05: cells[2] = "?"
        rows.append(cells)
    return rows
header = ["x1", "colour", "x2", "outcome"]
def write(name, rows, head=header):
    with open(f"{tmp}/{name}", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(head)
        w.writerows(rows)
def encode(train, test):  # the hand encoding: what the README promises
    def num(s): return None if s in ("", "NA", "NaN", "?") else float(s)
    mean = {}
    for j in (0, 2):
        vals = [num(r[j]) for r in train if num(r[j]) is not None]
        mean[j] = sum(vals) / len(vals)
    cats = sorted({r[1] for r in train if r[1] not in ("", "NA", "NaN", "?")})
    counts = [sum(r[1] == c for r in train) for c in cats]
    mode = counts.index(max(counts))
    classes = sorted({r[3] for r in train})
    def enc(rows, with_label):
        out = []
        for r in rows:
            e = [repr(mean[0] if num(r[0]) is None else num(r[0])),
                 str(cats.index(r[1]) if r[1] in cats else mode),
                 repr(mean[2] if num(r[2]) is None else num(r[2]))]
            out.append(e + ([str(classes.index(r[3]))] if with_label else []))
        return out
    return enc(train, True), enc(test, True), classes
for name, classes in (("bin", ["no", "yes"]), ("tri", ["high", "low", "mid"])):
    train, test = table(120, classes, True), table(60, classes, True)
    test[5][1] = "purple"  # unseen category -> missing
    write(f"{name}_train.csv", train)
    write(f"{name}_test.csv", test)
    write(f"{name}_test_nolabel.csv", [r[:3] for r in test], header[:3])
    etrain, etest, cl = encode(train, test)
    write(f"{name}_train_enc.csv", etrain)
    write(f"{name}_test_enc.csv", etest)
    with open(f"{tmp}/{name}_labels.txt", "w") as f:
        f.write(",".join(cl) + "\n" + "\n".join(str(cl.index(r[3])) for r in test) + "\n")
    # the same table with its feature columns permuted (x2, x1, colour)
    perm = [2, 0, 1, 3]
    write(f"{name}_train_perm.csv", [[r[j] for j in perm] for r in train], [header[j] for j in perm])
    write(f"{name}_test_perm.csv", [[r[j] for j in perm] for r in test], [header[j] for j in perm])
    # the train labels relabelled by every permutation s of the classes (class c -> class s[c])
    import itertools
    for i, s in enumerate(itertools.permutations(range(len(classes)))):
        write(f"{name}_train_sigma{i}.csv", [r[:3] + [classes[s[classes.index(r[3])]]] for r in train])
PY

# compare A B TOL [COLUMNS_PERM]: max |diff| of two predict outputs (same header, same shape)
compare() {
    $PY - "$1" "$2" "$3" <<'PY'
import sys, numpy as np
a, b, tol = open(sys.argv[1]).read().splitlines(), open(sys.argv[2]).read().splitlines(), float(sys.argv[3])
if not a or a[0] != b[0] or len(a) != len(b): print(f"headers/rows differ: {a[:1]} {b[:1]} {len(a)} {len(b)}"); sys.exit(1)
pa = np.array([[float(v) for v in l.split(",")] for l in a[1:]])
pb = np.array([[float(v) for v in l.split(",")] for l in b[1:]])
d = np.abs(pa - pb).max()
print(f"max |diff| {d:.3g} (tolerance {tol:g})")
sys.exit(0 if d <= tol else 1)
PY
}

predict() { # predict OUT ARGS...: stdout to OUT, stderr to OUT.err
    local out=$1
    shift
    $BIN predict "$@" --threads 1 >"$out" 2>"$out.err"
}

for name in bin tri; do
    predict "$TMP/$name.raw" "$TMP/m.bin" "$TMP/${name}_train.csv" "$TMP/${name}_test.csv" || bad "$name: predict" "$TMP/$name.raw.err"
    predict "$TMP/$name.enc" "$TMP/m.bin" "$TMP/${name}_train_enc.csv" "$TMP/${name}_test_enc.csv" || bad "$name: predict (encoded)" "$TMP/$name.enc.err"
    # the header names the classes; the encoded table's classes are 0, 1, ...: compare the numbers only
    tail -n +2 "$TMP/$name.raw" >"$TMP/$name.raw.body"; tail -n +2 "$TMP/$name.enc" >"$TMP/$name.enc.body"
    (echo h; cat "$TMP/$name.raw.body") >"$TMP/a"; (echo h; cat "$TMP/$name.enc.body") >"$TMP/b"
    if r=$(compare "$TMP/a" "$TMP/b" 1e-6) && [ "$(head -1 "$TMP/$name.raw")" = "$(head -1 "$TMP/${name}_labels.txt")" ]; then
        ok "$name: strings, categories, missing cells = the table encoded by hand: $r; header '$(head -1 "$TMP/$name.raw")'"
    else
        bad "$name: raw vs hand-encoded: $r" "$TMP/$name.raw.err"
    fi
    if grep -q "^predict: [0-9]* missing cells imputed .*, of which 1 test categories unseen" "$TMP/$name.raw.err"; then
        ok "$name: one note on the imputed cells: $(grep 'missing cells' "$TMP/$name.raw.err" | cut -c1-80)..."
    else
        bad "$name: the missing-cell note" "$TMP/$name.raw.err"
    fi
    # metrics vs scikit-learn on the printed probabilities
    if r=$($PY - "$TMP/$name.raw" "$TMP/${name}_labels.txt" "$TMP/$name.raw.err" <<'PY'
import sys, numpy as np
from sklearn.metrics import roc_auc_score, accuracy_score, log_loss
lines = open(sys.argv[1]).read().splitlines()
p = np.array([[float(v) for v in l.split(",")] for l in lines[1:]])
y = np.array([int(v) for v in open(sys.argv[2]).read().split()[1:]])
got = [l for l in open(sys.argv[3]) if l.startswith("predict: ") and "roc_auc" in l][0].split("|")
got = {f.split()[0]: float(f.split()[1]) for f in got[1:]}
K = p.shape[1]
want = {"roc_auc": roc_auc_score(y, p[:, 1]) if K == 2 else roc_auc_score(y, p, multi_class="ovr", average="macro"),
        "accuracy": accuracy_score(y, p.argmax(1)), "log_loss": log_loss(y, p, labels=list(range(K)))}
d = max(abs(got[k] - want[k]) for k in want)
print(f"{K} classes: " + ", ".join(f"{k} {got[k]:.6f} (sklearn {want[k]:.6f})" for k in want))
sys.exit(0 if d <= 1e-5 and abs(p.sum(1) - 1).max() < 1e-6 else 1)
PY
); then ok "$name: metrics = scikit-learn's: $r"; else bad "$name: metrics vs scikit-learn: $r" "$TMP/$name.raw.err"; fi
    # a test table without the label column: the same probabilities, no metrics line
    predict "$TMP/$name.nolabel" "$TMP/m.bin" "$TMP/${name}_train.csv" "$TMP/${name}_test_nolabel.csv"
    if cmp -s "$TMP/$name.nolabel" "$TMP/$name.raw" && ! grep -q roc_auc "$TMP/$name.nolabel.err"; then
        ok "$name: test table without the label column: same output, no metrics"
    else
        bad "$name: test table without labels" "$TMP/$name.nolabel.err"
    fi
done

# checkpoint = export; chunks = one pass; permuted feature columns = the table as given
predict "$TMP/ckpt" "$TMP/m.ckpt" "$TMP/bin_train.csv" "$TMP/bin_test.csv"
if cmp -s "$TMP/ckpt" "$TMP/bin.raw"; then ok "checkpoint and export of one model: identical output"; else bad "checkpoint vs export" "$TMP/ckpt.err"; fi
predict "$TMP/chunk" "$TMP/m.bin" "$TMP/tri_train.csv" "$TMP/tri_test.csv" --test-chunk 7
if r=$(compare "$TMP/chunk" "$TMP/tri.raw" 1e-6); then ok "test rows in chunks of 7 = one pass: $r"; else bad "chunks: $r" "$TMP/chunk.err"; fi
predict "$TMP/perm" "$TMP/m.bin" "$TMP/tri_train_perm.csv" "$TMP/tri_test_perm.csv"
if r=$(compare "$TMP/perm" "$TMP/tri.raw" 1e-5); then ok "feature columns permuted = as given (no feature positions): $r"; else bad "permuted features: $r" "$TMP/perm.err"; fi

# the ensemble: member i > 0 relabels the classes by a permutation s and un-permutes its output;
# reference: predict on the train table relabelled by each s, un-permuted here; the ensemble of
# 4 must be the mean of member 0 and three of those (found by search), within 1e-5
predict "$TMP/ens" "$TMP/m.bin" "$TMP/tri_train.csv" "$TMP/tri_test_nolabel.csv" --ensemble 4 --seed 3 --member-transform none
for i in 0 1 2 3 4 5; do predict "$TMP/sigma$i" "$TMP/m.bin" "$TMP/tri_train_sigma$i.csv" "$TMP/tri_test_nolabel.csv"; done
if r=$($PY - "$TMP" <<'PY'
import sys, itertools, numpy as np
tmp = sys.argv[1]
def load(p): return np.array([[float(v) for v in l.split(",")] for l in open(p).read().splitlines()[1:]])
e = load(f"{tmp}/ens")
perms = list(itertools.permutations(range(3)))
u = [load(f"{tmp}/sigma{i}")[:, list(s)] for i, s in enumerate(perms)]  # original class c = column s[c]
best = min((np.abs(e - (u[0] + u[a] + u[b] + u[c]) / 4).max(), (a, b, c)) for a, b, c in itertools.combinations_with_replacement(range(6), 3))
print(f"= mean of member 0 and relabellings {[perms[i] for i in best[1]]}: max |diff| {best[0]:.3g}; rows sum to 1 within {abs(e.sum(1) - 1).max():.2g}; differs from 1 member by {abs(e - u[0]).max():.3g}")
sys.exit(0 if best[0] <= 1e-5 and abs(e.sum(1) - 1).max() < 1e-5 and abs(e - u[0]).max() > 1e-4 else 1)
PY
); then ok "--ensemble 4 $r"; else bad "--ensemble 4: $r" "$TMP/ens.err"; fi

# member 2 sees quantiles: (train values below + half the equal ones) / train rows, per feature;
# reference: the hand-encoded tables quantile-transformed here (float32 as predict reads them)
$PY - "$TMP" <<'PY' || bad "writing the quantile tables"
import sys, itertools, numpy as np
tmp = sys.argv[1]
def load(p):
    rows = [l.split(",") for l in open(p).read().splitlines()[1:]]
    return np.array([[np.float32(float(v)) for v in r[:3]] for r in rows], dtype=np.float32), [r[3] for r in rows]
xtr, ytr = load(f"{tmp}/tri_train_enc.csv")
xte, _ = load(f"{tmp}/tri_test_enc.csv")
S = len(xtr)
def q(col, v):
    below, equal = int((col < v).sum()), int((col == v).sum())
    return (below + 0.5 * equal) / S
qtr = [[repr(q(xtr[:, j], xtr[r, j])) for j in range(3)] for r in range(S)]
qte = [[repr(q(xtr[:, j], xte[r, j])) for j in range(3)] for r in range(len(xte))]
with open(f"{tmp}/q_test.csv", "w") as f: f.write("a,b,c\n" + "".join(",".join(r) + "\n" for r in qte))
for i, s in enumerate(itertools.permutations(range(3))):
    with open(f"{tmp}/q_train{i}.csv", "w") as f:
        f.write("a,b,c,y\n" + "".join(",".join(r) + f",{s[int(y)]}\n" for r, y in zip(qtr, ytr)))
PY
predict "$TMP/ensq" "$TMP/m.bin" "$TMP/tri_train_enc.csv" "$TMP/tri_test_enc.csv" --ensemble 3 --seed 3
for i in 0 1 2 3 4 5; do predict "$TMP/q$i" "$TMP/m.bin" "$TMP/q_train$i.csv" "$TMP/q_test.csv"; done
if r=$($PY - "$TMP" <<'PY'
import sys, itertools, numpy as np
tmp = sys.argv[1]
def load(p): return np.array([[float(v) for v in l.split(",")] for l in open(p).read().splitlines()[1:]])
e = load(f"{tmp}/ensq")
perms = list(itertools.permutations(range(3)))
u = [load(f"{tmp}/sigma{i}")[:, list(s)] for i, s in enumerate(perms)]
qq = [load(f"{tmp}/q{i}")[:, list(s)] for i, s in enumerate(perms)]
best = min((np.abs(e - (u[0] + u[a] + qq[b]) / 3).max(), (a, b)) for a in range(6) for b in range(6))
print(f"= mean of member 0, a relabelling {perms[best[1][0]]} and the quantile table relabelled {perms[best[1][1]]}: max |diff| {best[0]:.3g}")
sys.exit(0 if best[0] <= 1e-5 else 1)
PY
); then ok "--ensemble 3 (member 2 on quantiles) $r"; else bad "--ensemble 3 with quantiles: $r" "$TMP/ensq.err"; fi

# --max-features-per-member 1: member 1 sees one feature (of 3), its classes relabelled;
# reference: one-feature tables cut here, each class relabelling of the binary table
$PY - "$TMP" <<'PY' || bad "writing the one-feature tables"
import sys
tmp = sys.argv[1]
def rows(p): return [l.split(",") for l in open(p).read().splitlines()[1:]]
tr, te = rows(f"{tmp}/bin_train_enc.csv"), rows(f"{tmp}/bin_test_enc.csv")
for j in range(3):
    open(f"{tmp}/one{j}_test.csv", "w").write("f\n" + "".join(r[j] + "\n" for r in te))
    for s in range(2):
        open(f"{tmp}/one{j}_train{s}.csv", "w").write("f,y\n" + "".join(f"{r[j]},{int(r[3]) ^ s}\n" for r in tr))
PY
predict "$TMP/enss" "$TMP/m.bin" "$TMP/bin_train_enc.csv" "$TMP/bin_test_enc.csv" --ensemble 2 --max-features-per-member 1 --seed 4
for j in 0 1 2; do for s in 0 1; do predict "$TMP/one$j$s" "$TMP/m.bin" "$TMP/one${j}_train$s.csv" "$TMP/one${j}_test.csv"; done; done
if r=$($PY - "$TMP" <<'PY'
import sys, numpy as np
tmp = sys.argv[1]
def load(p): return np.array([[float(v) for v in l.split(",")] for l in open(p).read().splitlines()[1:]])
e, full = load(f"{tmp}/enss"), load(f"{tmp}/bin.raw")
best = min((np.abs(e - (full + load(f"{tmp}/one{j}{s}")[:, [s, 1 - s]]) / 2).max(), j, s) for j in range(3) for s in range(2))
print(f"= mean of the full table and feature {best[1]} alone{' relabelled' if best[2] else ''}: max |diff| {best[0]:.3g}")
sys.exit(0 if best[0] <= 1e-5 else 1)
PY
); then ok "--ensemble 2 --max-features-per-member 1 $r"; else bad "--max-features-per-member: $r" "$TMP/enss.err"; fi

# under mpirun: rows sharded, probabilities of one process
predict "$TMP/ens2" "$TMP/m.bin" "$TMP/tri_train.csv" "$TMP/tri_test.csv" --ensemble 3
sharded() { # sharded NAME REFERENCE NP FLAGS...
    local name=$1 ref=$2 np=$3
    shift 3
    if timeout 120 $MPIRUN -np "$np" $BIN predict "$TMP/m.bin" "$TMP/tri_train.csv" "$TMP/tri_test.csv" "$@" --threads 1 \
            >"$TMP/mpi" 2>"$TMP/mpi.err" && r=$(compare "$TMP/mpi" "$ref" 1e-5); then
        ok "mpirun -np $np $*: $r"
    else
        bad "mpirun -np $np $*: ${r:-failed}" "$TMP/mpi.err"
    fi
}
for st in allgather ring a2a mesh2d composed; do sharded "$st" "$TMP/tri.raw" 4 --sp 4 --row-attn "$st"; done
sharded "dp" "$TMP/ens2" 4 --dp 2 --sp 2 --row-attn ring --ensemble 3
sharded "chunks" "$TMP/tri.raw" 2 --sp 2 --row-attn ring --test-chunk 9

# bad input: one line naming file, line and column; non-zero exit
expect_predict_error() { # NAME PATTERN MODEL TRAIN TEST [FLAGS...]
    local name=$1 pattern=$2
    shift 2
    timeout 60 $BIN predict "$@" --threads 1 >"$TMP/out" 2>"$TMP/err"
    local code=$? lines
    lines=$(wc -l <"$TMP/err")
    if [ "$code" -ne 0 ] && [ "$code" -lt 124 ] && [ "$lines" -eq 1 ] && grep -qF -- "$pattern" "$TMP/err"; then
        ok "$name: $(cat "$TMP/err")"
    else
        bad "$name: exit $code, $lines stderr lines, wanted '$pattern'" "$TMP/err"
    fi
}
G="$TMP/bin_train.csv"
printf 'x1,colour,x2,outcome\n1,red,2,no\n3,blue\n' >"$TMP/ragged.csv"
: >"$TMP/empty.csv"
printf 'x1,colour,x2,outcome\n' >"$TMP/header.csv"
printf 'x1,colour,x2,outcome\n1,red,2,no\n3,red,4,no\n' >"$TMP/oneclass.csv"
printf 'x1,colour,x2,outcome\n1,red,2,a\n3,red,4,b\n5,red,6,c\n7,red,8,d\n' >"$TMP/four.csv"
printf 'x1,colour,x2\n1,red,2\n' >"$TMP/four_test.csv"
printf 'x1,colour,x2,outcome\n1,red,2,no\n3,red,-Inf,yes\n' >"$TMP/inf.csv"
printf 'x1,colour,x2,outcome\n1,red,2,no\n3,"red"dish,4,yes\n' >"$TMP/quote.csv"
printf 'x1,colour,x2,outcome\n1,red,,no\n3,red,4,yes\n' >"$TMP/missing.csv"
printf 'x1,color,x2,outcome\n1,red,2,no\n' >"$TMP/renamed.csv"
printf 'x1,colour,x2,outcome\n1,red,2,maybe\n' >"$TMP/newclass.csv"
expect_predict_error "ragged row" "'$TMP/ragged.csv' line 3, column 3: the row has 2 fields where line 1 has 4" "$TMP/m.bin" "$G" "$TMP/ragged.csv"
expect_predict_error "empty file" "'$TMP/empty.csv' is empty (line 1, column 1" "$TMP/m.bin" "$TMP/empty.csv" "$G"
expect_predict_error "header only" "'$TMP/header.csv' has a header (line 1) but no data rows" "$TMP/m.bin" "$G" "$TMP/header.csv"
expect_predict_error "label column not found" "'$G' line 1: no column is named 'target'" "$TMP/m.bin" "$G" "$G" --label target
expect_predict_error "one class only" "'$TMP/oneclass.csv' column 4 ('outcome'): every label is 'no'" "$TMP/m.bin" "$TMP/oneclass.csv" "$G"
expect_predict_error "more classes than outputs" "'$TMP/four.csv' column 4 ('outcome'): 4 classes, but the model in '$TMP/m.bin' has 3 outputs" \
    "$TMP/m.bin" "$TMP/four.csv" "$TMP/four_test.csv"
expect_predict_error "not a CSV (a model file)" "'$TMP/m.bin' is not a CSV text file: byte 0x" "$TMP/m.bin" "$TMP/m.bin" "$G"
expect_predict_error "Inf" "'$TMP/inf.csv' line 3, column 3 ('x2'): Inf '-Inf'" "$TMP/m.bin" "$TMP/inf.csv" "$G"
expect_predict_error "broken quoting" "'$TMP/quote.csv' line 3, column 2: text after the closing quote" "$TMP/m.bin" "$TMP/quote.csv" "$G"
expect_predict_error "--missing error" "'$TMP/missing.csv' line 2, column 3 ('x2'): missing cell (''; --missing error)" "$TMP/m.bin" "$TMP/missing.csv" "$G" --missing error
expect_predict_error "test header differs" "'$TMP/renamed.csv' line 1, column 2: named 'color' where the train table" "$TMP/m.bin" "$G" "$TMP/renamed.csv"
expect_predict_error "test label not a train class" "'$TMP/newclass.csv' line 2, column 4 ('outcome'): label 'maybe' is not a class" "$TMP/m.bin" "$G" "$TMP/newclass.csv"
expect_predict_error "not a model file" "is neither a Mosaic checkpoint nor an exported model" "$G" "$G" "$G"
expect_predict_error "missing operand" "predict needs MODEL TRAIN.csv TEST.csv" "$TMP/m.bin" "$G"
timeout 60 $MPIRUN -np 2 $BIN predict --sp 2 --row-attn ring "$TMP/m.bin" "$TMP/ragged.csv" "$G" --threads 1 >"$TMP/out" 2>"$TMP/err"
code=$?
if [ "$code" -ne 0 ] && [ "$code" -lt 124 ] && [ "$(grep -c '^mosaic: error' "$TMP/err")" -eq 1 ] && grep -q "ragged.csv' line 3, column 3" "$TMP/err"; then
    ok "under mpirun -np 2: one error line, from rank 0"
else
    bad "bad input under mpirun: exit $code" "$TMP/err"
fi
if $BIN predict --help | grep -q "^usage: train_tabpfn predict MODEL TRAIN.csv TEST.csv"; then ok "predict --help"; else bad "predict --help"; fi
finish
