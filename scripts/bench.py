"""Benchmarks for `make bench`: one JSON line per measurement, with its configuration.

train_step: ms per training step of ./train_tabpfn at the default configuration (32 tables x
150 rows x 5 features, 75 train rows, E=96, 4 heads, H=192, 3 layers), next to
scripts/bench_pytorch.py's figure for the same model, shapes and thread count under current
PyTorch (a virtual environment, --torch-python; scripts/bench.sh installs it on first use) and
under Debian's PyTorch (/usr/bin/python3), all in this run. The three are run in turn --repeats
times, so that the machine's drift hits all alike; each line gives the median and the minimum
over the repeats (and every repeat's figure, to show the noise), and the ratio lines divide
PyTorch's median by Mosaic's (> 1: Mosaic faster), the minimums likewise, and each repeat's
PyTorch figure by the same repeat's Mosaic figure (ratio_paired_median: slow drift cancels).
Memory: each process's peak resident set and its resident set before the first step (model,
optimizer and batch allocated); their difference is what the steps themselves add.
Also the achieved GFLOP/s from a count of the step's matmul and attention FLOPs.

usage: /usr/bin/python3 scripts/bench.py [--threads 2] [--steps 12] [--batch 32] [--repeats 3]
       [--torch-python .bench-venv/bin/python] [--train-rows ROWS//2]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_flops(B, R, F, S, E, H, L, K):
    """Multiply-adds x 2 of one training step (forward + backward = 3x forward for matmuls;
    attention backward recomputes the scores, so 2 + 5 = 7 score-sized matmuls over 2). The last
    layer is counted as Mosaic runs it, pruned to the test rows' target cells (model/tabpfn.h)."""
    C = F + 1
    BR = B * R
    N = BR * C
    T = B * (R - S)
    matmul_fwd = 2 * N * (8 * E * E + 2 * E * H)  # q/k/v + out of two attentions, and the MLP
    attn_fwd = 2 * BR * C * C * E * 2 + 2 * (B * C) * R * S * E * 2  # QK^T and PV, features and rows
    last_matmul_fwd = 2 * (N * 2 * E * E + BR * E * E + BR * E * E + BR * 3 * E * E + T * E * E + T * 2 * E * H)
    last_attn_fwd = 2 * BR * C * E * 2 + 2 * B * R * S * E * 2  # one query per row; the target column
    decoder_fwd = 2 * T * (E * H + H * K)
    return (L - 1) * (3 * matmul_fwd + 3.5 * attn_fwd) + 3 * last_matmul_fwd + 3.5 * last_attn_fwd + 3 * decoder_fwd


def run_json(cmd, prefix=None, env=None):
    """Runs cmd in the repository root; returns its first JSON line (or the one after prefix)."""
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{out.stderr.strip()[-2000:]}")
    for line in out.stdout.splitlines():
        if prefix is None and line.startswith("{"):
            return json.loads(line)
        if prefix is not None and line.startswith(prefix):
            return json.loads(line[len(prefix):])
    sys.exit(f"bench: no result line from {' '.join(cmd)}")


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="Mosaic's steps (PyTorch times max(steps - 2, 3))")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=150)
    ap.add_argument("--features", type=int, default=5)
    ap.add_argument("--train-rows", type=int, default=None, help="default rows // 2")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each implementation, in turn")
    ap.add_argument("--torch-python", default=os.path.join(ROOT, ".bench-venv", "bin", "python"),
                    help="a python with current PyTorch (skipped if missing)")
    ap.add_argument("--debian-python", default="/usr/bin/python3", help="a python with Debian's python3-torch")
    args = ap.parse_args()
    B, R, F = args.batch, args.rows, args.features
    S = R // 2 if args.train_rows is None else args.train_rows
    if not 2 <= S < R:
        sys.exit("bench: need 2 <= train rows < rows")
    E, heads, H, L, K = 96, 4, 192, 3, 2
    config = {"batch": B, "rows": R, "features": F, "train_rows": S, "embed": E, "heads": heads,
              "hidden": H, "layers": L, "outputs": K, "threads": args.threads}
    frac = S / R
    mosaic_cmd = ["./train_tabpfn", "--batch", str(B), "--min-rows", str(R), "--max-rows", str(R),
                  "--min-features", str(F), "--max-features", str(F), "--min-train-fraction", str(frac),
                  "--max-train-fraction", str(frac), "--steps", str(args.steps), "--warmup-steps", "1",
                  "--eval-csv", "none", "--threads", str(args.threads), "--quiet"]
    torch_args = ["scripts/bench_pytorch.py", "--batch", str(B), "--rows", str(R), "--features", str(F),
                  "--train-rows", str(S), "--threads", str(args.threads), "--steps", str(max(args.steps - 2, 3))]
    torches = []  # (label, python)
    for label, py in (("current", args.torch_python), ("debian", args.debian_python)):
        if os.path.exists(py) and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            torches.append((label, py))
        else:
            print(f"bench: no PyTorch at {py} ({label}): its lines are skipped", file=sys.stderr)
    runs = {"mosaic": []}
    runs.update({label: [] for label, _ in torches})
    for _ in range(args.repeats):
        runs["mosaic"].append(run_json(mosaic_cmd, prefix="summary "))
        for label, py in torches:
            runs[label].append(run_json([py] + torch_args))

    gflop = step_flops(B, R, F, S, E, H, L, K) / 1e9
    ms = {k: [r["ms_per_step"] for r in v] for k, v in runs.items()}
    m = runs["mosaic"][-1]
    print(json.dumps({"bench": "mosaic_train_step", **config, "ms_per_step": round(median(ms["mosaic"]), 2),
                      "ms_per_step_min": round(min(ms["mosaic"]), 2), "repeats": args.repeats,
                      "ms_per_step_each": [round(v, 1) for v in ms["mosaic"]],
                      "datasets_per_s": round(B / (median(ms["mosaic"]) / 1000), 2), "gflop_per_step": round(gflop, 2),
                      "gflop_per_s": round(gflop / (median(ms["mosaic"]) / 1000), 2),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["mosaic"]),
                      "rss_before_steps_mb": m["rss_before_steps_mb"],
                      "timing": "median over repeats of the mean of steps 2..N"}))
    for label, _ in torches:
        t = runs[label][-1]
        print(json.dumps({"bench": "pytorch_train_step", "pytorch": label, **config, "torch": t.get("torch"),
                          "ms_per_step": round(median(ms[label]), 2), "ms_per_step_min": round(min(ms[label]), 2),
                          "repeats": args.repeats, "ms_per_step_each": [round(v, 1) for v in ms[label]],
                          "datasets_per_s": round(B / (median(ms[label]) / 1000), 2),
                          "gflop_per_s": round(gflop / (median(ms[label]) / 1000), 2),
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[label]),
                          "rss_before_steps_mb": t["rss_before_steps_mb"],
                          "timing": "median over repeats of the median of steps"}))
    for label, _ in torches:
        t = runs[label][-1]
        step_mb_mosaic = m["peak_rss_mb"] - m["rss_before_steps_mb"]
        step_mb_torch = t["peak_rss_mb"] - t["rss_before_steps_mb"]
        paired = [p / q for p, q in zip(ms[label], ms["mosaic"])]  # run back to back: drift cancels
        print(json.dumps({"bench": "speedup_vs_pytorch", "pytorch": label, "torch": t.get("torch"), **config,
                          "ratio": round(median(ms[label]) / median(ms["mosaic"]), 3),
                          "ratio_of_minimums": round(min(ms[label]) / min(ms["mosaic"]), 3),
                          "ratio_paired_median": round(median(paired), 3),
                          "ratio_each_repeat": [round(r, 3) for r in paired],
                          "step_memory_mb_mosaic": round(step_mb_mosaic, 1),
                          "step_memory_mb_pytorch": round(step_mb_torch, 1)}))


if __name__ == "__main__":
    main()
