"""Convert a nanoTabPFN HDF5 prior dump into a Mosaic prior dump (format: dataloader/prior_dump.h).

Usage:
    /usr/bin/python3 scripts/convert_nanotabpfn_h5.py IN.h5 OUT.bin

Needs Python 3 with h5py and numpy (Debian: apt-get install python3-h5py python3-numpy).

Reads the HDF5 datasets
    X                (N, max_rows, max_features) float    features, padded
    y                (N, max_rows)                        class ids (any numeric dtype)
    num_features     (N,)                                 required
    single_eval_pos  (N,)                                 required: train rows of each dataset
    num_datapoints   (N,)                                 optional: max_rows for all when absent
    max_num_classes  scalar or (1,)                       optional: max(y) + 1 when absent
    problem_type     optional string; only "classification" converts
and streams them, a chunk of datasets at a time, into OUT.bin:
    int32 header[256] (magic 0x4D535044, version 1, N, max_rows, max_features, max_classes, 0...),
    int32 num_features[N], int32 num_datapoints[N], int32 single_eval_pos[N],
    float32 X[N][max_rows][max_features], float32 y[N][max_rows].
Values are copied as stored (cast to float32), padding included, so Mosaic's batches equal
nanoTabPFN's slices X[i:i+B, :R, :F]. Checks on the way: sizes, 1 <= num_features <= max_features,
2 <= single_eval_pos < num_datapoints <= max_rows, finite X and y, labels integers in
[0, max_classes). Any problem is one line on stderr and exit status 1; the output is written to
OUT.bin.partial and renamed only when complete.
"""
import os
import sys

try:
    import numpy as np
except ImportError as e:
    print(f"convert_nanotabpfn_h5: error: {e} (install python3-numpy and python3-h5py)", file=sys.stderr)
    sys.exit(1)

MAGIC = 0x4D535044
VERSION = 1
HEADER_INTS = 256
# datasets are converted in chunks of about this many bytes (the environment variable lets the
# test force many small chunks)
CHUNK_BYTES = int(os.environ.get("MOSAIC_CONVERT_CHUNK_BYTES", 64 << 20))


class ConvertError(Exception):
    pass


def first_bad(mask):
    """index of the first dataset (axis 0) where mask has a True, or None"""
    rows = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    return int(rows[0]) if rows.size else None


def read_int_array(f, name, n, path):
    a = np.asarray(f[name][()])
    if a.shape != (n,):
        raise ConvertError(f"'{path}': dataset '{name}' has shape {a.shape}, expected ({n},)")
    if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
        raise ConvertError(f"'{path}': dataset '{name}' holds non-integer values")
    return a.astype(np.int64)


def convert(in_path, out_path):
    import h5py  # imported here so that a missing h5py is reported as one line

    with h5py.File(in_path, "r") as f:
        present = sorted(f.keys())
        missing = [k for k in ("X", "y", "num_features", "single_eval_pos") if k not in f]
        if missing:
            raise ConvertError(f"'{in_path}' lacks required dataset(s) {', '.join(missing)} (it has: {', '.join(present)})")
        if "problem_type" in f:
            pt = f["problem_type"][()]
            pt = pt.decode("utf-8") if isinstance(pt, bytes) else str(pt)
            if pt != "classification":
                raise ConvertError(f"'{in_path}' has problem_type '{pt}'; only classification dumps convert")
        X, y = f["X"], f["y"]
        if len(X.shape) != 3:
            raise ConvertError(f"'{in_path}': X has shape {X.shape}, expected (N, max_rows, max_features)")
        n, max_rows, max_features = (int(s) for s in X.shape)
        if tuple(y.shape) != (n, max_rows):
            raise ConvertError(f"'{in_path}': y has shape {y.shape}, expected ({n}, {max_rows}) to match X {X.shape}")
        if n < 1 or max_rows < 3 or max_features < 1 or n >= 2**31 or max_rows >= 2**24 or max_features >= 2**20:
            raise ConvertError(f"'{in_path}': X shape {X.shape} is outside what a dump holds")

        num_features = read_int_array(f, "num_features", n, in_path)
        single_eval_pos = read_int_array(f, "single_eval_pos", n, in_path)
        if "num_datapoints" in f:
            num_datapoints = read_int_array(f, "num_datapoints", n, in_path)
        else:
            print(f"convert_nanotabpfn_h5: note: '{in_path}' has no num_datapoints; using max_rows={max_rows} for every dataset",
                  file=sys.stderr)
            num_datapoints = np.full(n, max_rows, dtype=np.int64)

        chunk = max(1, CHUNK_BYTES // (4 * max_rows * max(max_features, 1)))
        if "max_num_classes" in f:
            mc = np.asarray(f["max_num_classes"][()]).reshape(-1)
            if mc.size < 1:
                raise ConvertError(f"'{in_path}': max_num_classes is empty")
            max_classes = int(mc[0])
        else:
            max_classes = 0
            for s in range(0, n, chunk):
                yc = np.asarray(y[s : s + chunk], dtype=np.float64)
                if yc.size and np.all(np.isfinite(yc)):
                    max_classes = max(max_classes, int(np.max(yc)) + 1)
            print(f"convert_nanotabpfn_h5: note: '{in_path}' has no max_num_classes; using max(y) + 1 = {max_classes}",
                  file=sys.stderr)
        if max_classes < 2 or max_classes > 2**16:
            raise ConvertError(f"'{in_path}': max_num_classes={max_classes} is outside [2, 65536]")

        for name, a, lo, hi in (("num_features", num_features, 1, max_features), ("num_datapoints", num_datapoints, 3, max_rows)):
            bad = np.flatnonzero((a < lo) | (a > hi))
            if bad.size:
                i = int(bad[0])
                raise ConvertError(f"'{in_path}': dataset {i} has {name}={a[i]}, outside [{lo}, {hi}]")
        bad = np.flatnonzero((single_eval_pos < 2) | (single_eval_pos >= num_datapoints))
        if bad.size:
            i = int(bad[0])
            raise ConvertError(f"'{in_path}': dataset {i} has single_eval_pos={single_eval_pos[i]}, "
                               f"outside [2, num_datapoints={num_datapoints[i]})")

        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:6] = [MAGIC, VERSION, n, max_rows, max_features, max_classes]
        partial = out_path + ".partial"
        try:
            with open(partial, "wb") as out:
                out.write(header.tobytes())
                for a in (num_features, num_datapoints, single_eval_pos):
                    out.write(a.astype("<i4").tobytes())
                for s in range(0, n, chunk):
                    xc = np.ascontiguousarray(X[s : s + chunk], dtype="<f4")
                    i = first_bad(~np.isfinite(xc))
                    if i is not None:
                        raise ConvertError(f"'{in_path}': X of dataset {s + i} has NaN or Inf")
                    out.write(xc.tobytes())
                for s in range(0, n, chunk):
                    yc = np.ascontiguousarray(y[s : s + chunk], dtype="<f4")
                    i = first_bad(~np.isfinite(yc))
                    if i is not None:
                        raise ConvertError(f"'{in_path}': y of dataset {s + i} has NaN or Inf")
                    i = first_bad((yc < 0) | (yc != np.floor(yc)) | (yc >= max_classes))
                    if i is not None:
                        raise ConvertError(f"'{in_path}': y of dataset {s + i} has a label that is not an integer in "
                                           f"[0, max_classes={max_classes})")
                    out.write(yc.tobytes())
            os.replace(partial, out_path)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
    size = os.path.getsize(out_path)
    print(f"wrote '{out_path}': {n} datasets, up to {int(num_datapoints.max())} rows x {int(num_features.max())} features "
          f"(padded {max_rows} x {max_features}), {max_classes} classes, {size} bytes")


def main(argv):
    if len(argv) != 3:
        print(f"usage: /usr/bin/python3 {argv[0]} IN.h5 OUT.bin", file=sys.stderr)
        return 2
    in_path, out_path = argv[1], argv[2]
    try:
        if not os.path.isfile(in_path):
            raise ConvertError(f"cannot open '{in_path}': no such file")
        convert(in_path, out_path)
    except ConvertError as e:
        print(f"convert_nanotabpfn_h5: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"convert_nanotabpfn_h5: error: {e} (install python3-h5py and python3-numpy)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"convert_nanotabpfn_h5: error: '{in_path}' -> '{out_path}': {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
