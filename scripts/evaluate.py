"""Evaluate a Mosaic model on CSV tables next to scikit-learn's classics, on the same splits.

Needs Debian's /usr/bin/python3 with python3-sklearn and python3-numpy, and a built
./train_tabpfn (its `predict` subcommand does the Mosaic side).

For every TABLE.csv (a header row; the label in the last column, or --label NAME; labels may be
numbers or strings; non-numeric feature columns and missing cells are allowed), split k of
--splits (seeds k = 0, 1, ...) is

    train, test = sklearn.model_selection.train_test_split(range(rows), test_size=0.5,
                                                           stratify=labels, random_state=k)

with each half then put back in the table's row order. Both halves are written as CSV (the
table's own cells, header included) to a temporary folder and scored by

    ./train_tabpfn predict MODEL train.csv test.csv [--ensemble N] [--threads N] [--label NAME]

whose stdout (a header naming the classes, then one line of probabilities per test row) gives
Mosaic's ROC-AUC, accuracy and log loss, computed here with sklearn.metrics: ROC-AUC of the
second class (class 1 of two) for binary tables, one-vs-rest macro ROC-AUC for more classes;
accuracy of the most probable class; log loss over the train table's classes. On the same
splits the baselines are fit on the train half:

    logistic regression      StandardScaler + LogisticRegression(max_iter=1000)
    random forest            RandomForestClassifier(random_state=k)
    k-nearest neighbours     StandardScaler + KNeighborsClassifier() (5 neighbours)
    hist gradient boosting   HistGradientBoostingClassifier(random_state=k)

For the baselines, features are numbers: a non-numeric column is coded by the categories seen in
the train half (unseen ones count as missing), and missing cells (empty, NA, NaN, ?) get the
train mean of their column, as predict does. Classes are the train half's labels, sorted
numerically when all are numbers, else as byte strings (predict's order).

A table with more classes than the model has outputs is skipped with a note (a 2-output model
scores binary tables only). Prints, per table, each method's mean and standard deviation over
the splits, then the mean over the evaluated tables of each method's per-table means. --json prints one JSON object instead: per table, method
and split, the three metrics (and the means).

Usage:
  /usr/bin/python3 scripts/evaluate.py MODEL TABLE.csv... [--splits 5] [--train-tabpfn ./train_tabpfn]
      [--ensemble N] [--threads N] [--baseline-threads 1] [--label NAME] [--json]
  e.g. /usr/bin/python3 scripts/evaluate.py model.bin data/*.csv
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
try:
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency
except ImportError:  # then the baselines use their default threads
    import contextlib

    def threadpool_limits(limits):
        return contextlib.nullcontext()

MISSING = {"", "na", "nan", "?"}  # compared lower-cased and stripped, as predict reads them
BASELINES = ["logistic regression", "random forest", "k-nearest neighbours", "hist gradient boosting"]


class EvaluateError(Exception):
    pass


def model_outputs(path):
    """Classes the model scores: a checkpoint's header word 6, or the rows of an exported
    model's decoder.linear2.bias (the files of model/model_file.h and scripts/tensor_file.py)."""
    try:
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(1024).ljust(1024, b"\0"), dtype="<i4")
        if header[0] == 0x4D53434B:  # checkpoint
            return int(header[6])
        if header[0] == 0x4D535446:  # tensor file
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from tensor_file import read_tensors
            bias = read_tensors(path).get("decoder.linear2.bias")
            if bias is not None and bias.ndim == 1:
                return int(bias.shape[0])
    except (OSError, ValueError) as e:
        raise EvaluateError(f"cannot read the model {path}: {getattr(e, 'strerror', None) or e}")
    raise EvaluateError(f"{path}: neither a Mosaic checkpoint nor an exported model")


def read_table(path, label_name):
    """(header, rows of cell strings, label column index)."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EvaluateError(f"{path}: cannot read as CSV: {e}")
    if len(rows) < 2:
        raise EvaluateError(f"{path}: needs a header row and data rows, has {len(rows)} row(s)")
    header, body = rows[0], rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise EvaluateError(f"{path}: line {i + 2} has {len(r)} cells, the header {len(header)}")
    if label_name is None:
        label = len(header) - 1
    elif label_name in header:
        label = header.index(label_name)
    else:
        raise EvaluateError(f"{path}: no column named '{label_name}'")
    if len(header) < 2:
        raise EvaluateError(f"{path}: needs at least one feature column and the label")
    return header, body, label


def as_number(cell):
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def class_order(labels):
    """The distinct labels in predict's order: numerically when all are numbers, else by bytes."""
    distinct = set(labels)
    if all(as_number(v) is not None for v in distinct):
        return sorted(distinct, key=lambda v: (as_number(v), v))
    return sorted(distinct, key=lambda v: v.encode("utf-8"))


def feature_matrix(rows, columns, train_rows):
    """Float features for the baselines: numbers as they are; non-numeric columns coded by the
    categories of the train rows (unseen -> NaN); missing cells NaN; then NaN -> train mean."""
    X = np.full((len(rows), len(columns)), np.nan)
    for j, c in enumerate(columns):
        cells = [r[c].strip() for r in rows]
        present = [v for v in cells if v.lower() not in MISSING]
        if all(as_number(v) is not None for v in present):
            for i, v in enumerate(cells):
                if v.lower() not in MISSING:
                    X[i, j] = float(v)
        else:
            categories = sorted({cells[i] for i in train_rows if cells[i].lower() not in MISSING})
            code = {v: k for k, v in enumerate(categories)}
            for i, v in enumerate(cells):
                X[i, j] = code.get(v, np.nan)
    train = X[train_rows]
    means = np.array([np.nanmean(col) if np.isfinite(col).any() else 0.0 for col in train.T])
    missing = np.isnan(X)
    X[missing] = np.take(means, np.nonzero(missing)[1])
    return X


def metrics(y, P):
    """ROC-AUC (class 1 of two; one-vs-rest macro for more), accuracy, log loss; y: class indices."""
    K = P.shape[1]
    if K == 2:
        auc = roc_auc_score(y, P[:, 1])
    else:
        auc = roc_auc_score(y, P, multi_class="ovr", average="macro", labels=list(range(K)))
    return {"roc_auc": float(auc), "accuracy": float(accuracy_score(y, P.argmax(1))),
            "log_loss": float(log_loss(y, P, labels=list(range(K))))}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def run_predict(args, model, train_csv, test_csv, classes, n_test):
    """Mosaic's probabilities (n_test, K), columns in `classes` order, from predict's stdout."""
    cmd = [args.train_tabpfn, "predict", model, train_csv, test_csv, "--ensemble", str(args.ensemble)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.label is not None:
        cmd += ["--label", args.label]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise EvaluateError(f"cannot run {args.train_tabpfn}: {e.strerror}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise EvaluateError(f"{' '.join(cmd)} exited {done.returncode}: {last}")
    lines = [l for l in done.stdout.splitlines() if l.strip()]
    if not lines:
        raise EvaluateError(f"{' '.join(cmd)} printed nothing")
    names = next(csv.reader([lines[0]]))
    if sorted(names) != sorted(classes):
        raise EvaluateError(f"predict names the classes {names}, the train half has {classes}")
    if len(lines) - 1 != n_test:
        raise EvaluateError(f"predict printed {len(lines) - 1} rows for {n_test} test rows")
    P = np.array([[float(v) for v in l.split(",")] for l in lines[1:]])
    if P.shape != (n_test, len(classes)) or not np.isfinite(P).all():
        raise EvaluateError(f"predict printed probabilities of shape {P.shape}, expected {(n_test, len(classes))}")
    return P[:, [names.index(c) for c in classes]]


def baseline(name, seed, n_train):
    if name == "logistic regression":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if name == "random forest":
        return RandomForestClassifier(random_state=seed)
    if name == "k-nearest neighbours":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(5, n_train)))
    return HistGradientBoostingClassifier(random_state=seed)


def evaluate_table(args, path, tmp):
    header, rows, label = read_table(path, args.label)
    labels = [r[label].strip() for r in rows]
    classes_all = class_order(labels)
    counts = {c: labels.count(c) for c in classes_all}
    if len(classes_all) < 2:
        raise EvaluateError(f"{path}: one class only ({classes_all[0]})")
    if min(counts.values()) < 2:
        raise EvaluateError(f"{path}: class '{min(counts, key=counts.get)}' has one row; a stratified split needs 2")
    if len(classes_all) > args.outputs:
        return f"skipping {path}: {len(classes_all)} classes, the model scores {args.outputs}", None
    features = [j for j in range(len(header)) if j != label]
    name = os.path.basename(path)
    result = {"table": path, "rows": len(rows), "features": len(features), "classes": len(classes_all),
              "splits": [], "mean": {}, "std": {}}
    methods = [f"Mosaic ({os.path.basename(args.model)})"] + BASELINES
    for seed in range(args.splits):
        train, test = train_test_split(np.arange(len(rows)), test_size=0.5, stratify=labels, random_state=seed)
        train, test = np.sort(train), np.sort(test)
        classes = class_order([labels[i] for i in train])
        y_test = np.array([classes.index(labels[i]) for i in test])
        y_train = np.array([classes.index(labels[i]) for i in train])
        train_csv = os.path.join(tmp, f"{name}.split{seed}.train.csv")
        test_csv = os.path.join(tmp, f"{name}.split{seed}.test.csv")
        write_csv(train_csv, header, [rows[i] for i in train])
        write_csv(test_csv, header, [rows[i] for i in test])
        split = {"seed": seed, "train_rows": len(train), "test_rows": len(test)}
        t0 = time.time()
        P = run_predict(args, args.model, train_csv, test_csv, classes, len(test))
        split[methods[0]] = dict(metrics(y_test, P), seconds=round(time.time() - t0, 3))
        X = feature_matrix(rows, features, train)
        # OpenMP threads that spin-wait make histogram gradient boosting up to 60x slower on a busy
        # machine (measured: digits 7 s on 1 thread, 61 s on 2 threads of 2 busy cores)
        with threadpool_limits(limits=args.baseline_threads):
            for b in BASELINES:
                t0 = time.time()
                model = baseline(b, seed, len(train)).fit(X[train], y_train)
                split[b] = dict(metrics(y_test, model.predict_proba(X[test])), seconds=round(time.time() - t0, 3))
        result["splits"].append(split)
        if not args.json:
            print(f"  {name} split {seed}: Mosaic ROC-AUC {split[methods[0]]['roc_auc']:.4f} "
                  f"({split[methods[0]]['seconds']:.1f} s)", file=sys.stderr)
    for m in methods:
        for key in ("roc_auc", "accuracy", "log_loss"):
            values = [s[m][key] for s in result["splits"]]
            result["mean"].setdefault(m, {})[key] = float(np.mean(values))
            result["std"].setdefault(m, {})[key] = float(np.std(values))
    return result, methods


def print_table(title, methods, mean, std=None):
    print(title)
    width = max(len(m) for m in methods) + 2
    print(f"  {'method':<{width}}{'ROC-AUC':>17}{'accuracy':>17}{'log loss':>17}")
    for m in methods:
        cells = []
        for key in ("roc_auc", "accuracy", "log_loss"):
            text = f"{mean[m][key]:.4f}" + (f" ± {std[m][key]:.4f}" if std else "")
            cells.append(f"{text:>17}")
        print(f"  {m:<{width}}" + "".join(cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="checkpoint or exported model, as predict takes it")
    parser.add_argument("tables", metavar="TABLE.csv", nargs="+")
    parser.add_argument("--splits", type=int, default=5, help="stratified 50/50 splits per table, seeds 0.. (5)")
    parser.add_argument("--train-tabpfn", default="./train_tabpfn", help="the trainer binary (./train_tabpfn)")
    parser.add_argument("--ensemble", type=int, default=1, help="predict's --ensemble (1)")
    parser.add_argument("--threads", type=int, default=0, help="predict's --threads (0: predict's default)")
    parser.add_argument("--baseline-threads", type=int, default=1, help="OpenMP/BLAS threads of the baselines (1)")
    parser.add_argument("--label", default=None, help="label column name (default: the last column)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()
    if args.splits < 1 or args.ensemble < 1 or args.threads < 0 or args.baseline_threads < 1:
        parser.error("--splits, --ensemble and --baseline-threads must be >= 1, --threads >= 0")

    results, methods, skipped = [], None, []
    try:
        args.outputs = model_outputs(args.model)
        with tempfile.TemporaryDirectory(prefix="mosaic_evaluate.") as tmp:
            for path in args.tables:
                result, table_methods = evaluate_table(args, path, tmp)
                if isinstance(result, str):  # a note: the table has more classes than the model's outputs
                    skipped.append((path, result))
                    continue
                methods = table_methods
                results.append(result)
                if not args.json:
                    print_table(f"{path}: {result['rows']} rows, {result['features']} features, {result['classes']} classes, "
                                f"{args.splits} stratified 50/50 splits (mean ± std over splits)",
                                methods, result["mean"], result["std"])
                    print()
        if not results:
            raise EvaluateError(f"no table left to evaluate: {', '.join(p for p, _ in skipped)} "
                                f"{'has' if len(skipped) == 1 else 'have'} more classes than the model's {args.outputs} outputs")
        for _, note in skipped:
            print(f"evaluate: {note}", file=sys.stderr)
    except EvaluateError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    overall = {m: {k: float(np.mean([r["mean"][m][k] for r in results])) for k in ("roc_auc", "accuracy", "log_loss")}
               for m in methods}
    if args.json:
        print(json.dumps({"model": args.model, "splits": args.splits, "ensemble": args.ensemble,
                          "tables": results, "skipped": [p for p, _ in skipped], "mean_over_tables": overall}, indent=1))
    else:
        note = f" (skipped, more classes than the model's {args.outputs} outputs: {', '.join(p for p, _ in skipped)})" if skipped else ""
        print_table(f"mean over {len(results)} table(s) of the per-table means{note}", methods, overall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
