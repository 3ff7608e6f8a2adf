"""Time one PyTorch training step of the reference model on the CPU, as the baseline for Mosaic.

Needs Debian's /usr/bin/python3 with python3-torch (torch 1.13; also runs on current PyTorch).
One step = forward, backward, clip_grad_norm_(1.0), AdamW step, zero_grad, in float32 on one
fixed random batch (data generation is not timed).

Usage:
  /usr/bin/python3 scripts/bench_pytorch.py [--batch 32 --rows 150 --features 5 --train-rows ROWS//2]
      [--threads 2 --steps 10 --warmup-steps 2] [--E 96 --heads 4 --H 192 --L 3 --outputs 2] [--seed 0]
Prints one JSON line (with the process's peak RSS and its RSS before the first step); ms_per_step is the median over --steps timed steps run after
--warmup-steps untimed ones. --threads sets torch's, OpenMP's and the BLAS's thread counts.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="datasets per step")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--features", type=int, default=5)
    parser.add_argument("--train-rows", type=int, default=None, help="default rows // 2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--E", type=int, default=96, help="embedding size")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--H", type=int, default=192, help="MLP hidden size")
    parser.add_argument("--L", type=int, default=3, help="layers")
    parser.add_argument("--outputs", type=int, default=2, help="classes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    S = args.rows // 2 if args.train_rows is None else args.train_rows
    if not 2 <= S < args.rows:
        parser.error("need 2 <= train rows < rows")
    if args.steps < 1:
        parser.error("need at least one timed step")

    # Debian's torch calls a pthread OpenBLAS with its own pool, which ignores
    # torch.set_num_threads; the pools read these variables only when loaded.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    from tabpfn_reference import TabPFN, tabpfn_loss

    torch.set_num_threads(args.threads)
    assert torch.get_num_threads() == args.threads, "torch did not take --threads"
    torch.manual_seed(args.seed)
    model = TabPFN(args.E, args.heads, args.H, args.L, args.outputs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.randn(args.batch, args.rows, args.features)
    y = torch.randint(0, args.outputs, (args.batch, args.rows)).float()

    rss_before_mb = current_rss_mb()  # model, optimizer and batch built, no step taken
    times = []
    for step in range(args.warmup_steps + args.steps):
        start = time.perf_counter()
        loss = tabpfn_loss(model(x, y, S), y, S)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - start)

    ms = 1000.0 * statistics.median(times)
    print(json.dumps({
        "bench": "pytorch_train_step",
        "batch": args.batch,
        "rows": args.rows,
        "features": args.features,
        "threads": args.threads,
        "ms_per_step": round(ms, 3),
        "datasets_per_s": round(args.batch / (ms / 1000.0), 2),
        "torch": torch.__version__,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "rss_before_steps_mb": round(rss_before_mb, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
