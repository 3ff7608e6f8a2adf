#!/usr/bin/env bash
# scripts/plot_log.py on a synthetic trainer log (120 steps, 3 evals, and steps 101-110 written
# twice as a resumed run writes them: first with loss 9, then the real values):
#   - three PNG files, each a valid PNG (signature, decodes with matplotlib) that is not blank;
#   - its summary: 120 steps, the smoothed loss equal to a debiased EMA computed here (1e-6; the
#     lines with loss 9 must be dropped), the last eval, datasets/s = batch / seconds per step;
#   - a log without eval lines gives the loss and throughput plots only;
#   - a malformed line, a foreign line, an empty log and a missing log: one error line, exit 1.
# Needs /usr/bin/python3 with matplotlib and numpy. usage: bash test/test_plot_log.sh
source "$(dirname "$0")/test_lib.sh"

if ! "$PY" -c "import matplotlib, numpy" 2>/dev/null; then
    bad "needs $PY with matplotlib and numpy (apt-get install python3-matplotlib)"
    finish
    exit 1
fi
"$PY" - "$TMP/run.log" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    def step(s, loss):
        f.write(f"step {s} loss {loss:.9g} grad_norm 0.5 lr 0.001 ms {500 + (s % 3) * 10:.3f}\n")
    for s in range(1, 111):
        step(s, 9.0 if s > 100 else 0.7 - 0.002 * s + 0.01 * ((s * 7) % 5))
        if s == 50 or s == 100:
            f.write(f"eval step {s} roc_auc {0.8 + s / 1000:.6f} accuracy 0.75\n")
    for s in range(101, 121):  # the resumed run repeats 101-110
        step(s, 0.7 - 0.002 * s + 0.01 * ((s * 7) % 5))
    f.write("eval step 120 roc_auc 0.930000 accuracy 0.850000\n")
EOF
if "$PY" scripts/plot_log.py "$TMP/run.log" --out "$TMP/plots" --batch 32 >"$TMP/out" 2>"$TMP/err"; then
    "$PY" - "$TMP/plots" "$TMP/out" <<'EOF' >"$TMP/check" 2>&1 && ok "$(cat "$TMP/check")" || bad "PNG files and summary" "$TMP/check"
import sys
import matplotlib.image
import numpy as np
folder, summary = sys.argv[1], open(sys.argv[2]).read()
failures = []
for name in ("loss", "eval", "datasets_per_s"):
    path = f"{folder}/run.{name}.png"
    try:
        blob = open(path, "rb").read()
        image = matplotlib.image.imread(path)
    except Exception as e:
        failures.append(f"{path}: {e}")
        continue
    if blob[:8] != b"\x89PNG\r\n\x1a\n" or image.ndim != 3 or min(image.shape[:2]) < 100 or image.std() < 0.01:
        failures.append(f"{path}: not a drawn PNG ({len(blob)} bytes, shape {image.shape}, std {image.std():.3g})")
# the expected summary: last line per step, debiased EMA with factor 0.98
loss = [0.7 - 0.002 * s + 0.01 * ((s * 7) % 5) for s in range(1, 121)]
acc = 0.0
for n, v in enumerate(loss, 1):
    acc = 0.98 * acc + 0.02 * v
ema = acc / (1 - 0.98 ** 120)
rates = [32 / ((500 + (s % 3) * 10) / 1000) for s in range(1, 121)]
want = {"120 steps (1..120)": True, f"eval at step 120: roc_auc 0.9300": True,
        f"median {np.median(rates):.2f} datasets/s at batch 32": True}
for text in want:
    if text not in summary:
        failures.append(f"summary lacks '{text}': {summary.strip()}")
got = float(summary.split("smoothed loss at the end ")[1].split()[0])
if abs(got - ema) > 1e-6:
    failures.append(f"smoothed loss {got} vs {ema:.6f} computed here")
print("; ".join(failures) if failures else
      f"3 valid, non-blank PNGs; 120 steps, smoothed loss {got:.6f} = EMA here {ema:.6f}, eval and datasets/s as written")
sys.exit(1 if failures else 0)
EOF
else
    bad "plot_log.py on a synthetic log exited non-zero" "$TMP/err"
fi

grep -v '^eval' "$TMP/run.log" >"$TMP/noeval.log"
"$PY" scripts/plot_log.py "$TMP/noeval.log" --out "$TMP/plots2" >"$TMP/out" 2>"$TMP/err" &&
    [ -s "$TMP/plots2/noeval.loss.png" ] && [ -s "$TMP/plots2/noeval.datasets_per_s.png" ] && [ ! -e "$TMP/plots2/noeval.eval.png" ] &&
    grep -q "no eval lines" "$TMP/out" && ok "a log without eval lines: loss and throughput plots only" ||
    bad "a log without eval lines" "$TMP/err"

# expect_error NAME PATTERN LOG: exit 1 and one stderr line matching PATTERN
expect_error() {
    "$PY" scripts/plot_log.py "$3" --out "$TMP/bad" >/dev/null 2>"$TMP/err"
    local code=$? lines
    lines=$(wc -l <"$TMP/err")
    if [ "$code" -eq 1 ] && [ "$lines" -eq 1 ] && grep -q -- "$2" "$TMP/err"; then
        ok "$1: $(cat "$TMP/err")"
    else
        bad "$1: exit $code, $lines stderr line(s), wanted /$2/" "$TMP/err"
    fi
}
{ head -n 5 "$TMP/run.log"; echo "step 6 loss abc grad_norm 0.5 lr 0.001 ms 500"; } >"$TMP/malformed.log"
expect_error "a malformed step line" "malformed.log line 6: 'loss' has the value 'abc'" "$TMP/malformed.log"
{ head -n 3 "$TMP/run.log"; echo "step 4 loss 0.5 grad_norm 0.5 lr 0.001"; } >"$TMP/short.log"
expect_error "a step line without ms" "short.log line 4: no ms" "$TMP/short.log"
{ head -n 3 "$TMP/run.log"; echo "mosaic train_tabpfn | 356066 parameters"; } >"$TMP/foreign.log"
expect_error "a line that is not the trainer's" "foreign.log line 4: not a trainer log line" "$TMP/foreign.log"
: >"$TMP/empty.log"
expect_error "an empty log" "no step lines" "$TMP/empty.log"
expect_error "a missing log" "cannot read $TMP/none.log" "$TMP/none.log"

finish
