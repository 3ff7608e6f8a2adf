"""Write sklearn's bundled breast cancer table as a CSV for Mosaic's evaluation (no download).

Needs Debian's /usr/bin/python3 with python3-sklearn (any scikit-learn with load_breast_cancer).
Output: a header (the 30 feature names, spaces replaced by underscores, then `target`), then
569 rows of 30 features and the integer class label last. Features are printed with repr(),
the shortest text that reads back to the same float64.

Usage:
  /usr/bin/python3 scripts/export_breast_cancer.py [--out data/breast_cancer.csv]
"""
import argparse
import os
import sys

from sklearn.datasets import load_breast_cancer

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "breast_cancer.csv")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="CSV path (default: the repo's data/breast_cancer.csv)")
    args = parser.parse_args()

    table = load_breast_cancer()
    header = [name.replace(" ", "_") for name in table.feature_names] + ["target"]
    with open(args.out, "w", newline="\n") as f:
        f.write(",".join(header) + "\n")
        for features, label in zip(table.data, table.target):
            f.write(",".join(repr(float(v)) for v in features) + f",{int(label)}\n")
    print(f"wrote {len(table.target)} rows x {len(table.feature_names)} features to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
