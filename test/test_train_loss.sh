#!/usr/bin/env bash
# A short training run on the built-in prior must learn: the mean loss of its last 50 steps
# must fall below LOSS_MAX (chance is ln 2 = 0.693), and the model must then rank the
# breast cancer table's test rows with ROC-AUC above AUC_MIN.
# usage: bash test/test_train_loss.sh   (from the repository root, after make train_tabpfn)
set -u
cd "$(dirname "$0")/.."
LOSS_MAX=0.64
AUC_MIN=0.90
out=$(./train_tabpfn --steps 150 --batch 16 --warmup-steps 30 --seed 1 --threads 2 --quiet --eval-every 0 2>&1)
code=$?
echo "$out" | tail -3
summary=$(echo "$out" | sed -n 's/^summary //p')
[ "$code" -eq 0 ] && [ -n "$summary" ] || { echo "FAIL  the training run did not finish (exit $code)"; echo "0 passed, 1 failed"; exit 1; }
/usr/bin/python3 - "$summary" "$LOSS_MAX" "$AUC_MIN" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
loss_max, auc_min = float(sys.argv[2]), float(sys.argv[3])
checks = [
    (f"mean loss of the last 50 steps {s['final_loss']:.4f} < {loss_max}", s["final_loss"] < loss_max),
    (f"breast cancer ROC-AUC {s['eval']['roc_auc']:.4f} > {auc_min}", (s["eval"]["roc_auc"] or 0) > auc_min),
]
for what, ok in checks:
    print(("ok    " if ok else "FAIL  ") + what)
failed = sum(not ok for _, ok in checks)
print(f"{len(checks) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
