"""Write the bundled evaluation tables (data/*.csv) from scikit-learn's bundled copies (no download).

Needs Debian's /usr/bin/python3 with python3-sklearn (scikit-learn 1.2 here; any version with
these loaders). Each file: a header row (the feature names, lower case, runs of anything but
letters and digits turned into one '_'), then one row per sample, features then the label last
in a column named 'target'. Features are written with repr() (the shortest text that reads back
to the same float64), or as integers when every feature of the table is a whole number (digits).

  file                 rows x features  classes  label
  breast_cancer.csv     569 x 30        2        0 = malignant, 1 = benign (scikit-learn's coding)
  iris.csv              150 x 4         3        the species names (setosa, versicolor, virginica):
                                                 string labels, so predict's class names are exercised
  wine.csv              178 x 13        3        0, 1, 2 (the three cultivars)
  digits.csv           1797 x 64        10       0..9 (8x8 images, pixel counts 0..16)

Provenance and licences (from scikit-learn's own descriptions, sklearn/datasets/descr/*.rst):
  - scikit-learn, which ships these copies, is BSD-3-Clause.
  - breast_cancer: "Breast Cancer Wisconsin (Diagnostic)", UCI Machine Learning Repository;
    creators W. H. Wolberg, W. N. Street, O. L. Mangasarian (University of Wisconsin), 1995.
  - iris: R. A. Fisher (1936), "The use of multiple measurements in taxonomic problems";
    scikit-learn's copy is taken from Fisher's paper (as in R), also in the UCI repository.
  - wine: "Wine", UCI Machine Learning Repository; M. Forina et al., PARVUS.
  - digits: the test set of "Optical Recognition of Handwritten Digits", UCI Machine Learning
    Repository; E. Alpaydin and C. Kaynak, 1998.
  The UCI repository's pages for these four datasets state a Creative Commons Attribution 4.0
  (CC BY 4.0) licence: redistribution is allowed with attribution (cite the creators above and
  the UCI repository). That statement is from the repository's pages as known to the author; it
  was not re-checked from this machine, which has no network access.

Usage:
  /usr/bin/python3 scripts/export_tables.py [--out-dir data] [--tables breast_cancer,iris,wine,digits]
  (data/breast_cancer.csv is byte-identical to the one the former export_breast_cancer.py wrote)
"""
import argparse
import os
import re
import sys

import numpy as np
from sklearn import datasets

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
LOADERS = {
    "breast_cancer": datasets.load_breast_cancer,
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "digits": datasets.load_digits,
}
STRING_LABELS = {"iris"}  # these tables get the class names as labels


def column_name(name):
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def write_table(path, name):
    table = LOADERS[name]()
    header = [column_name(n) for n in table.feature_names] + ["target"]
    if name in STRING_LABELS:
        labels = [str(table.target_names[t]) for t in table.target]
    else:
        labels = [str(int(t)) for t in table.target]
    whole = bool(np.all(table.data == np.round(table.data)))
    cell = (lambda v: str(int(v))) if whole else (lambda v: repr(float(v)))
    with open(path, "w", newline="\n") as f:
        f.write(",".join(header) + "\n")
        for features, label in zip(table.data, labels):
            f.write(",".join(cell(v) for v in features) + f",{label}\n")
    classes = len(set(labels))
    print(f"wrote {os.path.normpath(path)}: {len(labels)} rows x {table.data.shape[1]} features, {classes} classes")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=DEFAULT_DIR, help="folder for the CSV files (default: the repo's data/)")
    parser.add_argument("--tables", default=",".join(LOADERS), help="comma-separated subset of " + ",".join(LOADERS))
    args = parser.parse_args()
    names = [n for n in args.tables.split(",") if n]
    unknown = [n for n in names if n not in LOADERS]
    if unknown:
        print(f"export_tables: error: unknown table(s) {', '.join(unknown)}; known: {', '.join(LOADERS)}", file=sys.stderr)
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    for name in names:
        write_table(os.path.join(args.out_dir, f"{name}.csv"), name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
