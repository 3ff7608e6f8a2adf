#!/usr/bin/env python3
"""Reads the output of `nvcc -Xptxas -v` (build/ptxas_*.txt, written by the Makefile's build/nvcc_%
rule), prints one table row per kernel and architecture (registers, static shared memory, spill
stores/loads, stack frame), and fails on any spill, on any compiler or ptxas warning, on a missing
architecture, or when no kernel was reported at all (the -v output was not captured).
Standard library only.

    python3 test/check_ptxas.py [--arch "80 90"] build/ptxas_test_cuda_flash.txt ...
"""
import argparse
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
PROPS = re.compile(r"Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)


def demangle(names):
    """Readable names through c++filt where binutils has it; mangled names otherwise."""
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return {n: (out[i] if i < len(out) and out[i] else n) for i, n in enumerate(names)}


def short(name, width=78):
    name = re.sub(r"\(.*\)$", "", name)  # drop the parameter list; template arguments stay
    name = re.sub(r"^void ", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def parse(path):
    """Kernels as dicts (name, arch, regs, barriers, smem, stack, spill_st, spill_ld), non-entry
    functions with a frame or spills, and warning lines."""
    kernels, functions, warnings = [], [], []
    current = None  # the entry function being compiled
    props = None  # the function the next frame line belongs to
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if WARNING.search(line):
                warnings.append(line.strip())
            m = ENTRY.search(line)
            if m:
                current = {"name": m.group(1), "arch": m.group(2), "regs": None, "barriers": 0, "smem": 0,
                           "stack": 0, "spill_st": 0, "spill_ld": 0}
                kernels.append(current)
                continue
            m = PROPS.search(line)
            if m:
                props = m.group(1)
                continue
            m = FRAME.search(line)
            if m and props is not None:
                stack, st, ld = (int(g) for g in m.groups())
                if current is not None and props == current["name"]:
                    current.update(stack=stack, spill_st=st, spill_ld=ld)
                elif stack or st or ld:
                    arch = current["arch"] if current else "?"
                    functions.append({"name": props, "arch": arch, "stack": stack, "spill_st": st, "spill_ld": ld})
                props = None
                continue
            m = USED.search(line)
            if m and current is not None and current["regs"] is None:
                current["regs"] = int(m.group(1))
                current["barriers"] = int(m.group(2) or 0)
                current["smem"] = int(m.group(3) or 0)
    return kernels, functions, warnings


SELF_TEST_REPORT = """ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_80'
ptxas info    : Function properties for _Z6kernelPf
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 364 bytes cmem[0]
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, 364 bytes cmem[0]
test.cu(3): warning #177-D: variable "x" was declared but never referenced
"""


def self_test():
    """The checker must be able to fail: a planted spill and a warning are both reported."""
    import os
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(SELF_TEST_REPORT)
    try:
        kernels, _, warnings = parse(f.name)
    finally:
        os.unlink(f.name)
    ok = (len(kernels) == 2 and kernels[0]["spill_st"] == 4 and kernels[0]["regs"] == 255 and kernels[0]["smem"] == 4096
          and kernels[1]["spill_st"] == 0 and kernels[1]["smem"] == 0 and len(warnings) == 1)
    print(("ok    " if ok else "FAIL  ") + "check_ptxas self-test: a planted spill and a warning are found")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="80 90", help='architectures every kernel must be compiled for, e.g. "80 90"')
    ap.add_argument("--self-test", action="store_true", help="parse a planted report and check the findings")
    ap.add_argument("reports", nargs="*")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.reports:
        ap.error("no report given")
    want_arch = ["sm_" + a for a in args.arch.split()]
    failures = 0
    for path in args.reports:
        try:
            kernels, functions, warnings = parse(path)
        except OSError as e:
            print(f"FAIL  {path}: {e} (build it with make build/nvcc_<test>)")
            failures += 1
            continue
        names = demangle(sorted({k["name"] for k in kernels} | {f["name"] for f in functions}))
        print(f"{path}: {len(kernels)} kernel compilations")
        header = f"  {'kernel':<78} {'arch':<6} {'regs':>4} {'smem B':>7} {'spill st':>8} {'spill ld':>8} {'stack':>5}"
        print(header)
        for k in sorted(kernels, key=lambda k: (short(names[k["name"]]), k["arch"])):
            flag = "  <- SPILLS" if k["spill_st"] or k["spill_ld"] else ""
            regs = "?" if k["regs"] is None else k["regs"]
            print(f"  {short(names[k['name']]):<78} {k['arch']:<6} {regs:>4} {k['smem']:>7} {k['spill_st']:>8} "
                  f"{k['spill_ld']:>8} {k['stack']:>5}{flag}")
        for fn in functions:
            flag = "  <- SPILLS" if fn["spill_st"] or fn["spill_ld"] else ""
            print(f"  (device function) {short(names[fn['name']], 60):<60} {fn['arch']:<6} {'':>4} {'':>7} "
                  f"{fn['spill_st']:>8} {fn['spill_ld']:>8} {fn['stack']:>5}{flag}")
        problems = []
        if not kernels:
            problems.append("no kernel reported: was it built with -Xptxas -v and its output captured?")
        spills = [k for k in kernels + functions if k["spill_st"] or k["spill_ld"]]
        for k in spills:
            problems.append(f"spill in {short(names[k['name']])} for {k['arch']}: {k['spill_st']} bytes stores, "
                            f"{k['spill_ld']} bytes loads (fewer registers live: smaller tiles or fewer accumulators)")
        seen = {k["arch"] for k in kernels}
        for a in want_arch:
            if kernels and a not in seen:
                problems.append(f"no kernel compiled for {a} (ARCH={args.arch!r})")
        for w in warnings:
            problems.append(f"compiler warning: {w}")
        if problems:
            failures += 1
            for p in problems:
                print(f"FAIL  {path}: {p}")
        else:
            print(f"ok    {path}: no spills, no warnings, every kernel for {', '.join(want_arch)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
