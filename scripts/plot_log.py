"""Plot a training log (./train_tabpfn --log LOG) as PNG files.

Needs Debian's /usr/bin/python3 with python3-matplotlib and python3-numpy (drawn with the Agg
backend: no display needed).

The trainer's log has one line per step and one per evaluation (train_tabpfn.cu):
    step N loss L grad_norm G lr X ms T
    eval step N roc_auc A accuracy B
Steps that appear more than once (a resumed run appends to the log of the run it continues,
repeating the steps after the checkpoint) keep their last line. Blank lines are skipped; any
other line is an error (one line naming the file and line number, exit 1).

Writes into --out (default: the log's folder), named after the log (run.log -> run.*.png):
  <name>.loss.png            training loss per step, and a smoothed curve: an exponential moving
                             average with factor --smoothing (0.98: about the last 50 steps),
                             debiased as in Adam (divided by 1 - factor^n), so it starts at the
                             first losses rather than at 0
  <name>.eval.png            evaluation ROC-AUC and accuracy over steps (only when the log has
                             eval lines)
  <name>.datasets_per_s.png  datasets per second over steps: --batch / (ms / 1000), the batch being
                             the global batch of the run (tables per step; the log does not record
                             it: give the run's --batch, default 32), with the same smoothing
and prints one summary line.

Usage:
  /usr/bin/python3 scripts/plot_log.py LOG [--out DIR] [--batch 32] [--smoothing 0.98]
"""
import argparse
import os
import sys

import numpy as np

STEP_KEYS = ("loss", "grad_norm", "lr", "ms")
EVAL_KEYS = ("roc_auc", "accuracy")


class LogError(Exception):
    pass


def parse_pairs(words, keys, path, number, line):
    """{key: float} from 'key value key value ...'; every key in keys must be there."""
    if len(words) % 2:
        raise LogError(f"{path} line {number}: odd number of words after the step: '{line}'")
    values = {}
    for k, v in zip(words[::2], words[1::2]):
        try:
            values[k] = float(v)
        except ValueError:
            raise LogError(f"{path} line {number}: '{k}' has the value '{v}', not a number")
    missing = [k for k in keys if k not in values]
    if missing:
        raise LogError(f"{path} line {number}: no {', '.join(missing)} in '{line}'")
    return values


def read_log(path):
    """(steps: {step: {loss, grad_norm, lr, ms}}, evals: {step: {roc_auc, accuracy}})."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
    steps, evals = {}, {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        words = line.split()
        if not words:
            continue
        kind, rest = ("eval", words[2:]) if words[:2] == ["eval", "step"] else ("step", words[1:])
        if kind == "step" and words[0] != "step":
            raise LogError(f"{path} line {number}: not a trainer log line (expected 'step N loss L ...' "
                           f"or 'eval step N roc_auc A accuracy B'): '{line[:80]}'")
        if not rest or not rest[0].isdigit():
            raise LogError(f"{path} line {number}: expected a step number after '{kind}': '{line[:80]}'")
        step = int(rest[0])
        if kind == "step":
            steps[step] = parse_pairs(rest[1:], STEP_KEYS, path, number, line)
        else:
            evals[step] = parse_pairs(rest[1:], EVAL_KEYS, path, number, line)
    if not steps:
        raise LogError(f"{path}: no step lines (is it a ./train_tabpfn --log file?)")
    return steps, evals


def smooth(values, factor):
    """Debiased exponential moving average: s_n = sum_k factor^(n-k) (1-factor) v_k / (1 - factor^n)."""
    out, acc = np.empty(len(values)), 0.0
    for n, v in enumerate(values, 1):
        acc = factor * acc + (1.0 - factor) * v
        out[n - 1] = acc / (1.0 - factor ** n) if factor > 0 else v
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", metavar="LOG", help="a ./train_tabpfn --log file")
    parser.add_argument("--out", default=None, help="folder for the PNG files (default: the log's folder)")
    parser.add_argument("--batch", type=int, default=32, help="tables per step of the run (32, the trainer's default)")
    parser.add_argument("--smoothing", type=float, default=0.98, help="EMA factor of the smoothed curves, 0 <= x < 1 (0.98)")
    args = parser.parse_args()
    if args.batch < 1 or not 0 <= args.smoothing < 1:
        parser.error("need --batch >= 1 and 0 <= --smoothing < 1")
    try:
        steps, evals = read_log(args.log)
    except LogError as e:
        print(f"plot_log: error: {e}", file=sys.stderr)
        return 1

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = args.out if args.out is not None else (os.path.dirname(args.log) or ".")
    stem = os.path.splitext(os.path.basename(args.log))[0]
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        print(f"plot_log: error: cannot make {out_dir}: {e.strerror}", file=sys.stderr)
        return 1
    x = np.array(sorted(steps))
    loss = np.array([steps[s]["loss"] for s in x])
    ms = np.array([steps[s]["ms"] for s in x])
    rate = np.where(ms > 0, args.batch / np.maximum(ms, 1e-9) * 1000.0, np.nan)
    loss_smooth = smooth(loss, args.smoothing)
    rate_smooth = smooth(np.nan_to_num(rate), args.smoothing)
    written = []

    def save(fig, suffix):
        path = os.path.join(out_dir, f"{stem}.{suffix}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
    ax.plot(x, loss_smooth, color="tab:blue", linewidth=2, label=f"EMA, factor {args.smoothing:g} (debiased)")
    ax.axhline(np.log(2), color="gray", linestyle=":", linewidth=1, label="ln 2 (chance, 2 classes)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"training loss: {os.path.basename(args.log)}")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "loss")

    if evals:
        ex = np.array(sorted(evals))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(ex, [evals[s]["roc_auc"] for s in ex], "o-", color="tab:green", label="ROC-AUC")
        ax.plot(ex, [evals[s]["accuracy"] for s in ex], "s--", color="tab:orange", label="accuracy")
        ax.set_xlabel("step")
        ax.set_ylabel("evaluation table (test half)")
        ax.set_title(f"evaluation: {os.path.basename(args.log)}")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "eval")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(x, rate, color="tab:purple", alpha=0.3, linewidth=0.8, label="per step")
    ax.plot(x, rate_smooth, color="tab:purple", linewidth=2, label=f"EMA, factor {args.smoothing:g}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"datasets per second (batch {args.batch})")
    ax.set_title(f"throughput: {os.path.basename(args.log)}")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "datasets_per_s")

    last_eval = f"eval at step {max(evals)}: roc_auc {evals[max(evals)]['roc_auc']:.4f}" if evals else "no eval lines"
    print(f"{len(x)} steps ({x[0]}..{x[-1]}) | smoothed loss at the end {loss_smooth[-1]:.6f} | {last_eval} | "
          f"median {np.nanmedian(rate):.2f} datasets/s at batch {args.batch} | wrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
