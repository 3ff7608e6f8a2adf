"""Read and write Mosaic tensor files (named float32 tensors, the format the C++ tests load).

Needs numpy only; runs under Debian's /usr/bin/python3 (apt: python3-numpy) or any Python 3
with numpy.

Layout, little-endian:
  header: 256 int32: [0] magic 0x4D535446, [1] version 1, [2] number of tensors,
          [3] attention heads of an exported model (0: not recorded), rest 0
  per tensor: int32 name_len, name (UTF-8, no terminator), int32 ndim, int32 dims[ndim],
              float32 data in C order (prod(dims) values; 1 value when ndim is 0)

Also: model_layout(), the parameters of an exported Mosaic model in file order (the order of
parameter_infos in model/tabpfn.h), shared by scripts/mosaic_to_torch.py and torch_to_mosaic.py.

Usage:
  /usr/bin/python3 scripts/tensor_file.py --self-test   # write, read back, compare; exit 1 on mismatch
"""
import argparse
import os
import sys
import tempfile

import numpy as np

MAGIC = 0x4D535446
VERSION = 1
HEADER_INTS = 256


def write_atomically(path, write):
    """write(tmp) to PATH.partial, then rename it onto path: a failed write leaves neither file
    behind and never touches an older file of that name. The write's error propagates."""
    tmp = path + ".partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_tensors(path, tensors, heads=0):
    """Write an ordered mapping name -> array-like (numpy array, list, detached CPU tensor);
    heads goes to header word 3 (an exported model's attention heads, 0: not recorded)."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC
    header[1] = VERSION
    header[2] = len(tensors)
    header[3] = heads
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for name, value in tensors.items():
            data = np.array(value, dtype="<f4", order="C")  # not ascontiguousarray: it makes 0-d into 1-d
            encoded = name.encode("utf-8")
            f.write(np.array([len(encoded)], dtype="<i4").tobytes())
            f.write(encoded)
            f.write(np.array([data.ndim] + list(data.shape), dtype="<i4").tobytes())
            f.write(data.tobytes())


def read_tensors(path):
    """Return a dict name -> float32 numpy array, in file order."""
    return read_tensor_file(path)[0]


def read_tensor_file(path):
    """Return (dict name -> float32 numpy array in file order, heads from header word 3)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 4 * HEADER_INTS:
        raise ValueError(f"{path}: shorter than the {4 * HEADER_INTS}-byte header")
    header = np.frombuffer(blob, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC or header[1] != VERSION:
        raise ValueError(f"{path}: bad magic/version {header[0]:#x}/{header[1]}, "
                         f"expected {MAGIC:#x}/{VERSION}")
    pos = 4 * HEADER_INTS

    def take_ints(count):
        nonlocal pos
        if pos + 4 * count > len(blob):
            raise ValueError(f"{path}: truncated at byte {pos}")
        out = np.frombuffer(blob, dtype="<i4", count=count, offset=pos)
        pos += 4 * count
        return [int(v) for v in out]

    tensors = {}
    for _ in range(int(header[2])):
        (name_len,) = take_ints(1)
        name = blob[pos:pos + name_len].decode("utf-8")
        pos += name_len
        (ndim,) = take_ints(1)
        dims = take_ints(ndim)
        count = int(np.prod(dims, dtype=np.int64))
        if pos + 4 * count > len(blob):
            raise ValueError(f"{path}: tensor '{name}' truncated")
        tensors[name] = np.frombuffer(blob, dtype="<f4", count=count, offset=pos).reshape(tuple(dims)).copy()
        pos += 4 * count
    if pos != len(blob):
        raise ValueError(f"{path}: {len(blob) - pos} trailing bytes after the last tensor")
    return tensors, int(header[3])


def model_layout(E, H, L, outputs):
    """[(name, shape)] of a Mosaic model's parameters in the order --export writes them and a
    checkpoint stores them: tensor by tensor as in parameter_infos (model/tabpfn.h), the layers
    of a per-layer tensor one after another. Names are nanoTabPFN's PyTorch module names."""
    def attention(kind):
        pre = f"self_attention_between_{kind}."
        return [(pre + "in_proj_weight", (3 * E, E)), (pre + "in_proj_bias", (3 * E,)),
                (pre + "out_proj.weight", (E, E)), (pre + "out_proj.bias", (E,))]
    per_layer = (attention("features") + [("norm1.weight", (E,)), ("norm1.bias", (E,))] +
                 attention("datapoints") + [("norm2.weight", (E,)), ("norm2.bias", (E,))] +
                 [("linear1.weight", (H, E)), ("linear1.bias", (H,)), ("linear2.weight", (E, H)),
                  ("linear2.bias", (E,)), ("norm3.weight", (E,)), ("norm3.bias", (E,))])
    layout = [("feature_encoder.linear_layer.weight", (E, 1)), ("feature_encoder.linear_layer.bias", (E,)),
              ("target_encoder.linear_layer.weight", (E, 1)), ("target_encoder.linear_layer.bias", (E,))]
    for name, shape in per_layer:
        layout += [(f"transformer_blocks.{l}.{name}", shape) for l in range(L)]
    layout += [("decoder.linear1.weight", (H, E)), ("decoder.linear1.bias", (H,)),
               ("decoder.linear2.weight", (outputs, H)), ("decoder.linear2.bias", (outputs,))]
    return layout


def model_config_from_shapes(shapes):
    """(E, H, L, outputs) from a mapping name -> shape, read off the encoder, decoder and the
    number of transformer blocks; raises ValueError when those tensors are missing."""
    needed = ["feature_encoder.linear_layer.weight", "decoder.linear1.weight", "decoder.linear2.weight"]
    missing = [n for n in needed if n not in shapes]
    if missing:
        raise ValueError("not a nanoTabPFN/Mosaic model: no " + ", ".join(missing))
    if any(len(shapes[n]) != 2 for n in needed):
        raise ValueError("not a nanoTabPFN/Mosaic model: " + ", ".join(
            f"{n} has shape {tuple(shapes[n])}" for n in needed if len(shapes[n]) != 2))
    L = 0
    while f"transformer_blocks.{L}.norm1.weight" in shapes:
        L += 1
    return (int(shapes[needed[0]][0]), int(shapes[needed[1]][0]), L, int(shapes[needed[2]][0]))


def self_test():
    rng = np.random.default_rng(0)
    expected = {
        "config": np.arange(13, dtype=np.float32),
        "matrix": rng.standard_normal((3, 5)).astype(np.float32),
        "cube.with.dots": rng.standard_normal((2, 1, 4)).astype(np.float32),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "ünïcode": np.array([-0.0, np.inf, 1e-30], dtype=np.float32),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "self_test.bin")
        write_tensors(path, expected, heads=3)
        got, heads = read_tensor_file(path)
    ok = list(got) == list(expected) and heads == 3
    if heads != 3:
        print(f"tensor_file self-test: heads read back as {heads}, wrote 3", file=sys.stderr)
    for name, value in expected.items():
        same = name in got and got[name].shape == value.shape and got[name].tobytes() == value.tobytes()
        if not same:
            print(f"tensor_file self-test: mismatch in '{name}'", file=sys.stderr)
        ok = ok and same
    # the default model (E 96, H 192, L 3, 2 outputs) has 356,066 parameters
    layout = model_layout(96, 192, 3, 2)
    count = sum(int(np.prod(shape)) for _, shape in layout)
    config = model_config_from_shapes(dict(layout))
    if count != 356066 or config != (96, 192, 3, 2) or len(set(n for n, _ in layout)) != len(layout):
        print(f"tensor_file self-test: model_layout gives {count} parameters, config {config}", file=sys.stderr)
        ok = False
    print("tensor_file self-test: " + ("ok" if ok else "FAILED"))
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="write tensors, read them back, compare")
    args = parser.parse_args()
    if not args.self_test:
        parser.print_help()
        return 2
    return 0 if self_test() else 1


if __name__ == "__main__":
    sys.exit(main())
