"""Convert a PyTorch state_dict with nanoTabPFN's module names to a Mosaic exported model.

Needs Debian's /usr/bin/python3 with python3-torch and python3-numpy (torch 1.13; also runs on
current PyTorch).

IN.pt is what torch.save wrote: a bare state_dict (`torch.save(model.state_dict(), IN.pt)` for
nanoTabPFN's NanoTabPFNModel or scripts/tabpfn_reference.py's TabPFN, or scripts/
mosaic_to_torch.py's output), or a dict holding one under 'model' or 'state_dict' (a training
checkpoint); keys prefixed by 'module.' (DataParallel) or '_orig_mod.' (torch.compile) are
accepted. The keys must be exactly those of such a module, with its shapes: a missing, an
unexpected or a mis-shaped key is an error (one line, exit 1, no output file). Tensors are
written as float32 (a float64 model is rounded) in the order ./train_tabpfn --export writes
them, so the result is what `./train_tabpfn predict OUT.bin ...` reads.

The attention heads are not in any shape: --heads N records them in the file (header word 3);
without it, the heads saved by mosaic_to_torch.py are used, else they stay unrecorded (0) and
predict takes its own --heads (default 4, nanoTabPFN's).

Usage:
  /usr/bin/python3 scripts/torch_to_mosaic.py IN.pt OUT.bin [--heads N]
"""
import argparse
import sys

import numpy as np
import torch

from tensor_file import model_config_from_shapes, model_layout, write_atomically, write_tensors


def fail(message):
    print(f"torch_to_mosaic: error: {message}", file=sys.stderr)
    sys.exit(1)


def unwrap(obj, path):
    """The state_dict inside what torch.load returned."""
    if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        raise ValueError(f"{path}: a dict without tensors and without a 'model' or 'state_dict' entry "
                         f"(keys: {', '.join(map(str, list(obj)[:6]))})")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict "
                         f"(save model.state_dict(), not the module)")
    return obj


def strip_prefix(state):
    for prefix in ("module.", "_orig_mod."):
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state", metavar="IN.pt", help="torch.save'd state_dict (or a dict holding one)")
    parser.add_argument("out", metavar="OUT.bin", help="Mosaic exported model to write")
    parser.add_argument("--heads", type=int, default=None, help="attention heads to record (default: as saved, else 0)")
    args = parser.parse_args()

    try:
        loaded = torch.load(args.state, map_location="cpu")
    except Exception as e:  # torch raises many kinds (pickle, zip, EOF, runtime) for a bad file
        fail(f"{args.state}: cannot be read by torch.load: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    try:
        raw = unwrap(loaded, args.state)
        metadata = getattr(raw, "_metadata", None) or {}
        state = strip_prefix(raw)
        not_tensors = [str(k) for k, v in state.items() if not torch.is_tensor(v)]
        if not_tensors:
            raise ValueError(f"{args.state}: {len(not_tensors)} entries are not tensors: {', '.join(not_tensors[:4])}")
        E, H, L, outputs = model_config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    except ValueError as e:
        fail(str(e) if str(e).startswith(args.state) else f"{args.state}: {e}")
    layout = model_layout(E, H, L, outputs)
    expected = dict(layout)
    missing = [n for n, _ in layout if n not in state]
    extra = [k for k in state if k not in expected]
    shaped = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k, _ in layout
              if k in state and tuple(state[k].shape) != expected[k]]
    for what, names in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)):
        if names:
            fail(f"{args.state}: {len(names)} {what} key(s) for a model with embed {E} hidden {H} layers {L} "
                 f"outputs {outputs}: {', '.join(names[:4])}" + (" ..." if len(names) > 4 else ""))

    heads = args.heads
    if heads is None:
        saved = metadata.get("mosaic", {}) if isinstance(metadata, dict) else {}
        heads = int(saved.get("heads", 0)) if isinstance(saved, dict) else 0
    if heads < 0 or (heads and E % heads):
        fail(f"--heads {heads} does not divide the embedding size {E}")
    tensors = {}
    for name, _ in layout:
        value = state[name].detach().to("cpu")
        if not value.is_floating_point():
            fail(f"{args.state}: {name} has dtype {value.dtype}, expected a floating-point tensor")
        data = value.to(torch.float32).numpy()
        if not np.isfinite(data).all():
            fail(f"{args.state}: {name} holds NaN or Inf")
        tensors[name] = data

    try:
        write_atomically(args.out, lambda tmp: write_tensors(tmp, tensors, heads=heads))
    except OSError as e:
        fail(f"cannot write {args.out}: {e}")
    count = sum(t.size for t in tensors.values())
    heads_text = str(heads) if heads else "not recorded (predict assumes its --heads, default 4)"
    print(f"wrote {args.out}: {len(tensors)} tensors, {count:,} parameters | embed {E} heads {heads_text} "
          f"hidden {H} layers {L} outputs {outputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
