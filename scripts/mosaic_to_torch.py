"""Convert a Mosaic model to a PyTorch state_dict file with nanoTabPFN's module names.

Needs Debian's /usr/bin/python3 with python3-torch and python3-numpy (torch 1.13; also runs on
current PyTorch).

MODEL is an exported model (`./train_tabpfn --export MODEL.bin`, or scripts/torch_to_mosaic.py's
output) or a checkpoint (`--checkpoint`, versions 1 and 2: the weights predict evaluates, i.e.
AdamW's parameters or schedule-free's averaged weights x). OUT.pt is written with torch.save: a state_dict whose keys and shapes are those of
nanoTabPFN's NanoTabPFNModel (automl/nanoTabPFN, model.py) and of scripts/tabpfn_reference.py's
TabPFN, so it loads with strict=True into either:

    model = TabPFN(E, heads, H, L, outputs)            # or NanoTabPFNModel(E, heads, H, L, outputs)
    model.load_state_dict(torch.load("OUT.pt"))

The sizes are printed on stdout. The attention heads are not part of any tensor's shape: when
the Mosaic file records them they are printed and kept in the state_dict's `_metadata` (under
"mosaic"; PyTorch ignores it when loading), so scripts/torch_to_mosaic.py writes them back and
the round trip Mosaic -> PyTorch -> Mosaic is byte-identical.

Usage:
  /usr/bin/python3 scripts/mosaic_to_torch.py MODEL.bin OUT.pt
"""
import argparse
import collections
import sys

import numpy as np

from tensor_file import MAGIC as TENSOR_FILE_MAGIC
from tensor_file import model_config_from_shapes, model_layout, read_tensor_file, write_atomically

CHECKPOINT_MAGIC = 0x4D53434B
HEADER_INTS = 256


def fail(message):
    print(f"mosaic_to_torch: error: {message}", file=sys.stderr)
    sys.exit(1)


def read_checkpoint(path):
    """(tensors in file order, heads) from a checkpoint (model/model_file.h): a 256 x int32 header,
    then float32 blocks of num_parameters each, laid out as model_layout lists the tensors:
    the parameters, then the optimizer's state. Version 1: AdamW (parameters, m, v). Version 2:
    header [10] the optimizer (0 AdamW, 1 schedule-free), [11] its state blocks (AdamW 2: m, v;
    schedule-free 3: z, v, x). The weights to evaluate are the parameters for AdamW and
    schedule-free's averaged x (the last block), as predict and --export take them."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 4 * HEADER_INTS:
        raise ValueError(f"{path}: shorter than the {4 * HEADER_INTS}-byte header")
    header = np.frombuffer(blob, dtype="<i4", count=HEADER_INTS)
    version = int(header[1])
    if version not in (1, 2):
        raise ValueError(f"{path}: checkpoint version {version}, this script reads versions 1 and 2; "
                         f"export the model instead (./train_tabpfn --resume {path} --steps N --export OUT.bin)")
    E, heads, H, L, outputs, count = (int(v) for v in header[[2, 3, 4, 5, 6, 8]])
    optimizer = 0 if version == 1 else int(header[10])
    if optimizer not in (0, 1):
        raise ValueError(f"{path}: names optimizer {optimizer}, not 0 (adamw) or 1 (schedulefree)")
    blocks = 2 if optimizer == 0 else 3
    if version == 2 and int(header[11]) != blocks:
        raise ValueError(f"{path}: {int(header[11])} optimizer state blocks, {('adamw', 'schedulefree')[optimizer]} keeps {blocks}")
    if min(E, heads, H, L) < 1 or outputs < 2:
        raise ValueError(f"{path}: impossible model sizes embed {E} heads {heads} hidden {H} layers {L} outputs {outputs}")
    layout = model_layout(E, H, L, outputs)
    total = sum(int(np.prod(shape)) for _, shape in layout)
    want = 4 * (HEADER_INTS + (1 + blocks) * total)
    if count != total or len(blob) != want:
        raise ValueError(f"{path}: {len(blob)} bytes and {count} parameters, expected {want} bytes and {total} "
                         f"parameters for embed {E} hidden {H} layers {L} outputs {outputs}")
    # AdamW: block 0, the parameters; schedule-free: block 3, the average x (block 0 is y)
    pos = 4 * HEADER_INTS + (0 if optimizer == 0 else 4 * 3 * total)
    tensors = {}
    for name, shape in layout:
        n = int(np.prod(shape))
        tensors[name] = np.frombuffer(blob, dtype="<f4", count=n, offset=pos).reshape(shape).copy()
        pos += 4 * n
    return tensors, heads


def read_model(path):
    """(tensors by name in file order, heads or 0) from either kind of Mosaic model file."""
    with open(path, "rb") as f:
        magic = np.frombuffer(f.read(4).ljust(4, b"\0"), dtype="<i4")[0]
    if magic == CHECKPOINT_MAGIC:
        return read_checkpoint(path)
    if magic == TENSOR_FILE_MAGIC:
        return read_tensor_file(path)
    raise ValueError(f"{path}: neither a Mosaic exported model (tensor file) nor a checkpoint (magic {magic:#x})")


def check_layout(path, tensors):
    """(E, H, L, outputs), after checking the names and shapes are exactly a model's."""
    E, H, L, outputs = model_config_from_shapes({n: t.shape for n, t in tensors.items()})
    expected = dict(model_layout(E, H, L, outputs))
    missing = [n for n in expected if n not in tensors]
    extra = [n for n in tensors if n not in expected]
    shaped = [f"{n} {tuple(tensors[n].shape)} (expected {expected[n]})" for n in expected
              if n in tensors and tuple(tensors[n].shape) != expected[n]]
    for what, names in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)):
        if names:
            raise ValueError(f"{path}: {len(names)} {what} tensor(s): {', '.join(names[:4])}"
                             + (" ..." if len(names) > 4 else ""))
    return E, H, L, outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL.bin", help="exported model or checkpoint")
    parser.add_argument("out", metavar="OUT.pt", help="state_dict file to write (torch.save)")
    args = parser.parse_args()

    try:
        tensors, heads = read_model(args.model)
        E, H, L, outputs = check_layout(args.model, tensors)
    except OSError as e:
        fail(f"cannot read {args.model}: {e.strerror}")
    except ValueError as e:
        fail(str(e))
    if heads and E % heads:
        fail(f"{args.model}: records {heads} heads, which do not divide the embedding size {E}")
    import torch  # here, not at the top: a bad input fails in a fraction of torch's import time
    # the reference module's key order (encoders, blocks, decoder); strict loading ignores order
    state = collections.OrderedDict()
    for name in ["feature_encoder.linear_layer.weight", "feature_encoder.linear_layer.bias",
                 "target_encoder.linear_layer.weight", "target_encoder.linear_layer.bias"]:
        state[name] = torch.from_numpy(tensors[name])
    for l in range(L):
        for name in tensors:
            if name.startswith(f"transformer_blocks.{l}."):
                state[name] = torch.from_numpy(tensors[name])
    for name in ["decoder.linear1.weight", "decoder.linear1.bias", "decoder.linear2.weight", "decoder.linear2.bias"]:
        state[name] = torch.from_numpy(tensors[name])
    # state_dict metadata survives torch.save/load; load_state_dict looks up module prefixes
    # only, so this entry is inert there and carries the heads to torch_to_mosaic.py
    state._metadata = collections.OrderedDict(mosaic={"heads": int(heads)})
    try:
        write_atomically(args.out, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a missing directory as RuntimeError
        fail(f"cannot write {args.out}: {e}")
    count = sum(t.numel() for t in state.values())
    heads_text = str(heads) if heads else "not recorded (give --heads to whoever loads it; nanoTabPFN's default is 4)"
    print(f"wrote {args.out}: {len(state)} tensors, {count:,} parameters | embed {E} heads {heads_text} "
          f"hidden {H} layers {L} outputs {outputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
