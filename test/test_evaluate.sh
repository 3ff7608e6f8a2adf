#!/usr/bin/env bash
# scripts/evaluate.py's plumbing, on a tiny 3-output model (5 training steps), data/iris.csv
# (3 classes, string labels) and data/breast_cancer.csv (2 classes), --splits 2 --json:
#   - for split 1 of each, this test cuts the table itself (train_test_split with the documented seed,
#     rows back in file order, the file's own lines), runs `./train_tabpfn predict` itself and
#     computes ROC-AUC (one-vs-rest macro, by ranks in numpy), accuracy and log loss by hand:
#     evaluate.py's Mosaic numbers must equal them within 1e-9, and predict's own stderr
#     metrics line within 1e-5 (it prints 6 decimals);
#   - logistic regression (StandardScaler + LogisticRegression(max_iter=1000)) fit here directly
#     on that split must give evaluate.py's numbers within 1e-9;
#   - every method's metrics are in range, and the means are the means of the splits;
#   - a table with a categorical column and missing cells runs end to end (finite metrics);
#   - a 2-output model skips a 3-class table (one note) and evaluates the binary one;
#   - a table with a one-row class, only tables with more classes than the model's outputs and
#     a missing table end with one error line and exit 1.
# Needs /usr/bin/python3 with scikit-learn and numpy. usage: bash test/test_evaluate.sh (after make train_tabpfn)
source "$(dirname "$0")/test_lib.sh"
BIN=./train_tabpfn
SMALL="--embed 16 --heads 2 --hidden 24 --layers 2 --batch 4 --min-rows 20 --max-rows 40 --eval-csv none --threads 1 --quiet"

if [ ! -x "$BIN" ] || ! "$PY" -c "import sklearn, numpy" 2>/dev/null; then
    bad "needs $BIN (make train_tabpfn) and $PY with scikit-learn and numpy"
    finish
    exit 1
fi
"$BIN" $SMALL --steps 5 --outputs 3 --classes 3 --export "$TMP/m3.bin" >"$TMP/train.out" 2>&1 ||
    bad "training the tiny 3-output model" "$TMP/train.out"
"$BIN" $SMALL --steps 1 --export "$TMP/m2.bin" >"$TMP/train.out" 2>&1 || bad "training the tiny 2-output model" "$TMP/train.out"

start=$SECONDS
if "$PY" scripts/evaluate.py "$TMP/m3.bin" data/iris.csv data/breast_cancer.csv --splits 2 --threads 1 --json \
    >"$TMP/eval.json" 2>"$TMP/eval.err"; then
    ok "evaluate.py on data/iris.csv and data/breast_cancer.csv, 2 splits ($((SECONDS - start)) s)"
else
    bad "evaluate.py on data/iris.csv and data/breast_cancer.csv exited non-zero" "$TMP/eval.err"
fi

# the independent check of split 1
"$PY" - "$TMP" "$BIN" <<'EOF' && ok "$(tail -n 1 "$TMP/check.out")" || bad "split 1 recomputed independently" "$TMP/check.out"
import json, subprocess, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

tmp, binary = sys.argv[1], sys.argv[2]
log = open(f"{tmp}/check.out", "w")
def say(text):
    print(text, file=log, flush=True)

result = json.load(open(f"{tmp}/eval.json"))
failures, summary = [], []

def auc_by_ranks(score, positive):
    # Mann-Whitney: P(score of a positive > score of a negative), ties count one half
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))

def by_hand(y, P):
    K = P.shape[1]
    auc = auc_by_ranks(P[:, 1], y == 1) if K == 2 else np.mean([auc_by_ranks(P[:, k], y == k) for k in range(K)])
    p_true = np.clip(P[np.arange(len(y)), y] / P.sum(1), 1e-15, 1 - 1e-15)
    return {"roc_auc": auc, "accuracy": np.mean(P.argmax(1) == y), "log_loss": -np.mean(np.log(p_true))}

def compare(what, got, want, tol):
    for key in ("roc_auc", "accuracy", "log_loss"):
        if not abs(got[key] - want[key]) <= tol:
            failures.append(f"{what} {key}: {got[key]!r} vs {want[key]!r} (tolerance {tol})")

for table, path, expected_classes in zip(result["tables"], ["data/iris.csv", "data/breast_cancer.csv"],
                                         [["setosa", "versicolor", "virginica"], ["0", "1"]]):
    mosaic = [m for m in table["mean"] if m.startswith("Mosaic")][0]
    split = table["splits"][1]
    lines = open(path).read().splitlines()
    header, body = lines[0], lines[1:]
    labels = [l.rsplit(",", 1)[1] for l in body]
    train, test = train_test_split(np.arange(len(body)), test_size=0.5, stratify=labels, random_state=1)
    train, test = sorted(train), sorted(test)
    for name, idx in (("train", train), ("test", test)):
        with open(f"{tmp}/s1_{name}.csv", "w") as f:
            f.write("\n".join([header] + [body[i] for i in idx]) + "\n")
    done = subprocess.run([binary, "predict", f"{tmp}/m3.bin", f"{tmp}/s1_train.csv", f"{tmp}/s1_test.csv", "--threads", "1"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        say("predict failed: " + done.stderr.strip()); sys.exit(1)
    out = done.stdout.splitlines()
    classes = out[0].split(",")
    if classes != expected_classes:
        failures.append(f"{path}: predict's classes {classes}")
    P = np.array([[float(v) for v in l.split(",")] for l in out[1:]])
    y = np.array([classes.index(labels[i]) for i in test])
    mine = by_hand(y, P)
    compare(f"{path}: evaluate.py's Mosaic vs by hand", split[mosaic], mine, 1e-9)
    stated = dict(zip(("roc_auc", "accuracy", "log_loss"),
                      [float(done.stderr.split(k + " ")[1].split()[0]) for k in ("roc_auc", "accuracy", "log_loss")]))
    compare(f"{path}: predict's stderr metrics vs by hand", stated, mine, 1e-5)

    X = np.array([[float(v) for v in body[i].split(",")[:-1]] for i in range(len(body))])
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    lr.fit(X[train], [classes.index(labels[i]) for i in train])
    compare(f"{path}: evaluate.py's logistic regression vs sklearn directly", split["logistic regression"],
            by_hand(y, lr.predict_proba(X[test])), 1e-9)

    for method, values in split.items():
        if isinstance(values, dict) and not (0 <= values["roc_auc"] <= 1 and 0 <= values["accuracy"] <= 1 and values["log_loss"] >= 0):
            failures.append(f"{path}: {method}: metrics out of range {values}")
    for method in table["mean"]:
        for key in ("roc_auc", "accuracy", "log_loss"):
            want = np.mean([s[method][key] for s in table["splits"]])
            over = np.mean([t["mean"][method][key] for t in result["tables"]])
            if abs(table["mean"][method][key] - want) > 1e-12 or abs(result["mean_over_tables"][method][key] - over) > 1e-12:
                failures.append(f"{path}: {method} {key}: means disagree with the splits")
    summary.append(f"{path.split('/')[-1]} ROC-AUC {mine['roc_auc']:.6f} accuracy {mine['accuracy']:.6f} log loss {mine['log_loss']:.6f}")
for f in failures:
    say("mismatch: " + f)
say(f"split 1 by hand, Mosaic: {'; '.join(summary)}: = evaluate.py (1e-9) = predict's stderr (1e-5); "
    f"logistic regression = sklearn directly (1e-9); means and ranges ok")
sys.exit(1 if failures else 0)
EOF

# a categorical column and missing cells (iris's first 100 rows, two classes, with a colour column)
"$PY" - "$TMP/mixed.csv" <<'EOF'
import sys
lines = open("data/iris.csv").read().splitlines()[:101]
colours = ["red", "green", "blue"]
with open(sys.argv[1], "w") as f:
    f.write("colour," + lines[0] + "\n")
    for i, line in enumerate(lines[1:]):
        cells = line.split(",")
        if i % 7 == 3:
            cells[1] = ""  # a missing cell
        if i % 11 == 5:
            cells[2] = "NA"
        f.write(",".join([colours[i % 3] if i % 13 else "?"] + cells) + "\n")
EOF
if "$PY" scripts/evaluate.py "$TMP/m3.bin" "$TMP/mixed.csv" --splits 1 --threads 1 --json >"$TMP/mixed.json" 2>"$TMP/mixed.err" &&
    "$PY" -c "
import json, math, sys
r = json.load(open(sys.argv[1]))['mean_over_tables']
sys.exit(0 if all(math.isfinite(v) for m in r.values() for v in m.values()) else 1)" "$TMP/mixed.json"; then
    ok "a table with a categorical column and missing cells: finite metrics for every method"
else
    bad "a table with a categorical column and missing cells" "$TMP/mixed.err"
fi

# expect_error NAME PATTERN ARGS...: exit 1 and one stderr line matching PATTERN
expect_error() {
    local name=$1 pattern=$2
    shift 2
    "$PY" scripts/evaluate.py "$@" --splits 1 --threads 1 >/dev/null 2>"$TMP/err"
    local code=$? lines
    lines=$(wc -l <"$TMP/err")
    if [ "$code" -eq 1 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" "$TMP/err"; then
        ok "$name: $(cat "$TMP/err")"
    else
        bad "$name: exit $code, $lines stderr line(s), wanted /$pattern/" "$TMP/err"
    fi
}
printf 'a,b,target\n1,2,x\n3,4,x\n5,6,y\n7,8,x\n' >"$TMP/lonely.csv"
expect_error "a class with one row" "class 'y' has one row" "$TMP/m3.bin" "$TMP/lonely.csv"
expect_error "only tables with more classes than the model's outputs" "no table left to evaluate" "$TMP/m2.bin" data/iris.csv
"$PY" scripts/evaluate.py "$TMP/m2.bin" data/iris.csv "$TMP/mixed.csv" --splits 1 --threads 1 --json >"$TMP/skip.json" 2>"$TMP/skip.err" &&
    "$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r['skipped'] == ['data/iris.csv'] and [t['table'] for t in r['tables']] == [sys.argv[2]] else 1)" "$TMP/skip.json" "$TMP/mixed.csv" &&
    grep -q "skipping data/iris.csv: 3 classes, the model scores 2" "$TMP/skip.err" &&
    ok "a 2-output model skips the 3-class table and evaluates the binary one: $(cat "$TMP/skip.err")" ||
    bad "a 2-output model on a 3-class and a binary table" "$TMP/skip.err"
expect_error "a missing table" "cannot read as CSV" "$TMP/m3.bin" "$TMP/none.csv"

finish
