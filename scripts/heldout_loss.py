"""Held-out loss of an exported Mosaic model on a prior dump: the mean cross-entropy over the
test rows of every dataset (each dataset one forward pass, its own rows, features and split),
with the model evaluated by the PyTorch reference (scripts/tabpfn_reference.py) in float64.

Needs Debian's /usr/bin/python3 with python3-torch and python3-numpy.

Usage:
  ./train_tabpfn --write-prior-dump HELDOUT.bin --dump-datasets 512 --seed 12345
  ./train_tabpfn ... --export MODEL.bin
  /usr/bin/python3 scripts/heldout_loss.py MODEL.bin HELDOUT.bin [--heads 4]
prints: heldout: N datasets, T test rows | loss X (pooled over test rows) | per-dataset mean X | accuracy X
"""
import argparse
import sys

import numpy as np
import torch

from tabpfn_reference import TabPFN
from tensor_file import model_config_from_shapes, read_tensor_file

DUMP_MAGIC = 0x4D535044


def read_dump(path):
    """(num_features, num_datapoints, single_eval_pos, X (N, max_rows, max_features), y (N, max_rows))."""
    blob = open(path, "rb").read()
    header = np.frombuffer(blob, dtype="<i4", count=256)
    if header[0] != DUMP_MAGIC:
        raise ValueError(f"{path}: not a Mosaic prior dump")
    n, max_rows, max_features = (int(v) for v in header[2:5])
    ints = np.frombuffer(blob, dtype="<i4", count=3 * n, offset=1024).reshape(3, n)
    pos = 1024 + 12 * n
    X = np.frombuffer(blob, dtype="<f4", count=n * max_rows * max_features, offset=pos).reshape(n, max_rows, max_features)
    pos += 4 * n * max_rows * max_features
    y = np.frombuffer(blob, dtype="<f4", count=n * max_rows, offset=pos).reshape(n, max_rows)
    return ints[0], ints[1], ints[2], X, y


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model (tensor file, ./train_tabpfn --export)")
    parser.add_argument("dump", help="prior dump (./train_tabpfn --write-prior-dump)")
    parser.add_argument("--heads", type=int, default=0, help="attention heads when the file does not record them (4)")
    args = parser.parse_args()

    tensors, heads = read_tensor_file(args.model)
    E, H, L, outputs = model_config_from_shapes({k: v.shape for k, v in tensors.items()})
    heads = heads or args.heads or 4
    model = TabPFN(E, heads, H, L, outputs).double()
    model.load_state_dict({k: torch.from_numpy(v.copy()).double() for k, v in tensors.items()}, strict=True)
    model.eval()

    nf, nd, sep, X, y = read_dump(args.dump)
    total, rows, correct, per_dataset = 0.0, 0, 0, []
    with torch.no_grad():
        for i in range(len(nf)):
            R, F, S = int(nd[i]), int(nf[i]), int(sep[i])
            x = torch.from_numpy(X[i, :R, :F].astype(np.float64)).unsqueeze(0)
            t = torch.from_numpy(y[i, :R].astype(np.float64)).unsqueeze(0)
            logits = model(x, t, S)[0]
            target = t[0, S:].long()
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            total += nll
            rows += R - S
            correct += int((logits.argmax(-1) == target).sum())
            per_dataset.append(nll / (R - S))
    print(f"heldout: {len(nf)} datasets, {rows} test rows | loss {total / rows:.6f} (pooled over test rows) | "
          f"per-dataset mean {np.mean(per_dataset):.6f} | accuracy {correct / rows:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
