"""Row-sharding benchmarks for `make bench`: one JSON line per run, with its configuration.

One table of 16,384 rows (2,048 train rows), 3 features, a small model (E=32, 2 heads,
H=64, 1 layer) so that a step takes seconds on 2 cores. For each strategy at 2 and 4 ranks
(mpirun --oversubscribe, 1 thread per rank): ms per step, MB sent per rank per step (measured
by the communicator) next to the cost model's prediction, the time ranks spent blocked in
communication, and peak resident memory per rank. Ring runs again with overlap off, and the
share of communication that overlap hides is 1 - blocked(overlap) / blocked(no overlap).
Ring at 1, 2, 4 ranks shows how memory per rank scales with p for fixed rows.

All ranks share this machine's 2 cores, so ms per step measures work, not a cluster's
speed-up; bytes and memory per rank are what carry over. stdlib only.
usage: python3 scripts/bench_sharded.py [--rows 16384] [--train-rows 2048] [--steps 5]
"""
import argparse
import json
import os

from bench import run_json  # scripts/ is on sys.path when this script runs


def run(np_, strategy, args, extra=()):
    frac = args.train_rows / args.rows
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_), "./train_tabpfn", "--sp", str(np_),
           "--row-attn", strategy, "--batch", "1", "--min-rows", str(args.rows), "--max-rows", str(args.rows),
           "--min-features", "3", "--max-features", "3", "--min-train-fraction", str(frac),
           "--max-train-fraction", str(frac), "--embed", "32", "--heads", "2", "--hidden", "64", "--layers", "1",
           "--steps", str(args.steps), "--warmup-steps", "1", "--eval-csv", "none", "--threads", "1", "--quiet",
           *extra]
    if np_ == 1:
        cmd = cmd[4:]  # one process needs no mpirun
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    return run_json(cmd, prefix="summary ", env=env)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--train-rows", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    config = {"rows": args.rows, "train_rows": args.train_rows, "features": 3, "batch": 1, "embed": 32, "heads": 2,
              "hidden": 64, "layers": 1, "threads_per_rank": 1, "steps": args.steps}

    def emit(bench, np_, strategy, s, **more):
        print(json.dumps({"bench": bench, **config, "ranks": np_, "row_attn": strategy,
                          "ms_per_step": s["ms_per_step"], "mb_sent_per_rank_per_step": s["row_mb_per_step_per_rank"],
                          "predicted_mb_per_rank_per_step": round(s["predicted_row_mb_per_step_per_rank"], 3),
                          "comm_blocked_ms_per_step": s["comm_wait_ms_per_step"], "peak_rss_mb": s["peak_rss_mb"],
                          "overlap": s["overlap"], **more}), flush=True)

    base = run(1, "local", args)
    emit("row_sharding", 1, "local", base)
    for np_ in (2, 4):
        for strategy in ("allgather", "ring", "mesh2d", "a2a", "composed"):
            if strategy == "composed" and np_ < 4:
                continue  # needs a grid with two dimensions above 1
            s = run(np_, strategy, args)
            emit("row_sharding", np_, strategy, s)
            if strategy == "ring":
                off = run(np_, strategy, args, ("--no-overlap",))
                emit("row_sharding", np_, strategy, off)
                blocked_on, blocked_off = s["comm_wait_ms_per_step"], off["comm_wait_ms_per_step"]
                hidden = 1.0 - blocked_on / blocked_off if blocked_off else None
                print(json.dumps({"bench": "ring_overlap", **config, "ranks": np_,
                                  "blocked_ms_overlap": blocked_on, "blocked_ms_no_overlap": blocked_off,
                                  "hidden_share": None if hidden is None else round(hidden, 3),
                                  "ms_per_step_overlap": s["ms_per_step"], "ms_per_step_no_overlap": off["ms_per_step"]}),
                      flush=True)
    # memory per rank for fixed rows as p grows (ring; the 1-rank figure is the local run above)
    mem = {1: base["peak_rss_mb"]}
    for np_ in (2, 4):
        mem[np_] = run(np_, "ring", args)["peak_rss_mb"]
    print(json.dumps({"bench": "memory_per_rank", **config, "row_attn": "ring",
                      "peak_rss_mb_by_ranks": mem,
                      "ratio_to_1_rank": {p: round(m / mem[1], 3) for p, m in mem.items()}}), flush=True)


if __name__ == "__main__":
    main()
