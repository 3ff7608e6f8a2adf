"""Benchmarks for `make bench`: one JSON line per measurement, with its configuration.

train_step: ms per training step and datasets per second of ./train_tabpfn at the default
configuration (32 tables x 150 rows x 5 features, 75 train rows, E=96, 4 heads, H=192, 3 layers),
next to scripts/bench_pytorch.py's figure for the same model and shapes, measured in the same
run with the same thread count, and their ratio. Also the achieved GFLOP/s from a count of
the step's matmul and attention FLOPs.

Needs /usr/bin/python3 with python3-torch for the PyTorch side (stdlib only otherwise).
usage: /usr/bin/python3 scripts/bench.py [--threads 2] [--steps 12] [--batch 32]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_flops(B, R, F, S, E, H, L, K):
    """Multiply-adds x 2 of one training step (forward + backward = 3x forward for matmuls;
    attention backward recomputes the scores, so 2 + 5 = 7 score-sized matmuls over 2)."""
    C = F + 1
    N = B * R * C
    T = B * (R - S)
    d_model = E
    matmul_fwd = 2 * N * (3 * E * E + E * E) * 2 + 2 * N * (2 * E * H)  # two attentions + MLP
    attn_fwd_feat = 2 * (B * R) * C * C * d_model * 2  # QK^T and PV over all heads
    attn_fwd_row = 2 * (B * C) * R * S * d_model * 2
    decoder_fwd = 2 * T * (E * H + H * K)
    per_layer = 3 * matmul_fwd + 3.5 * (attn_fwd_feat + attn_fwd_row)
    return L * per_layer + 3 * decoder_fwd


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=150)
    ap.add_argument("--features", type=int, default=5)
    args = ap.parse_args()
    B, R, F = args.batch, args.rows, args.features
    S = R // 2
    E, heads, H, L, K = 96, 4, 192, 3, 2
    config = {"batch": B, "rows": R, "features": F, "train_rows": S, "embed": E, "heads": heads,
              "hidden": H, "layers": L, "outputs": K, "threads": args.threads}
    frac = S / R
    mosaic = run_json(["./train_tabpfn", "--batch", str(B), "--min-rows", str(R), "--max-rows", str(R),
                       "--min-features", str(F), "--max-features", str(F), "--min-train-fraction", str(frac),
                       "--max-train-fraction", str(frac), "--steps", str(args.steps), "--warmup-steps", "1",
                       "--eval-csv", "none", "--threads", str(args.threads), "--quiet"], prefix="summary ")
    torch = run_json(["/usr/bin/python3", "scripts/bench_pytorch.py", "--batch", str(B), "--rows", str(R),
                      "--features", str(F), "--train-rows", str(S), "--threads", str(args.threads),
                      "--steps", str(max(args.steps - 2, 3))])
    gflop = step_flops(B, R, F, S, E, H, L, K) / 1e9
    ms = mosaic["ms_per_step"]
    print(json.dumps({"bench": "mosaic_train_step", **config, "ms_per_step": round(ms, 2),
                      "datasets_per_s": round(mosaic["datasets_per_s"], 2), "gflop_per_step": round(gflop, 2),
                      "gflop_per_s": round(gflop / (ms / 1000), 2), "timing": "mean of steps 2..N"}))
    print(json.dumps({"bench": "pytorch_train_step", **config, "ms_per_step": round(torch["ms_per_step"], 2),
                      "datasets_per_s": round(torch["datasets_per_s"], 2), "torch": torch.get("torch"),
                      "gflop_per_s": round(gflop / (torch["ms_per_step"] / 1000), 2), "timing": "median"}))
    print(json.dumps({"bench": "speedup_vs_pytorch", **config, "ratio": round(torch["ms_per_step"] / ms, 3)}))


if __name__ == "__main__":
    main()
