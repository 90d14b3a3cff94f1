"""How often do the bundled models' own data sets leave their training feature ranges?

For each bundled model and each split of its data set, every frame is checked with
``ForceModel.extrapolation`` (one structure at a time, default tolerance): the share of atoms with an
invariant feature outside the training range (mean over frames), the frames with any such atom, and
the largest excess (in units of the column's training range) with the column it occurred in. The
training split is the check's control: by construction none of its atoms is outside. Writes
``benchmarks/results/extrapolation.json`` and ``.md``; about a minute on one core.

    python -m benchmarks.compare.extrapolation_check [--models peo li4p2o7 li4p2o7-water]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks.compare._harness import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def run(models):
    from fastfeat.runtime import ForceModel
    from fastfeat.train import datasets

    rows = []
    for name in models:
        model = ForceModel.pretrained(name)
        for split in ("train", "val", "test"):
            frames = datasets.load(name, split=split)
            checks = [model.extrapolation(a) for a in frames]
            k = int(np.argmax([c.excess.max() if c.n_atoms else 0.0 for c in checks]))
            worst = checks[k]
            row = {
                "model": name, "split": split, "frames": len(frames), "atoms": int(sum(len(a) for a in frames)),
                "mean_fraction": float(np.mean([c.fraction for c in checks])),
                "frames_with_any": int(sum(bool(c) for c in checks)),
                "largest_excess": float(worst.excess.max()),
                "largest_excess_frame": k,
                "largest_excess_column": worst.worst_column,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def markdown(res):
    lines = [
        "# Bundled models: atoms outside their training feature ranges",
        "",
        f"Command: `{res['command']}`, {res['date']}. `ForceModel.extrapolation` on every frame, one at a time "
        "(tolerance 0.001 of a column's range). Excess in units of the column's training range.",
        "",
        "| model | split | frames | atoms | mean share of atoms outside | frames with any | largest excess (column) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        col = f" ({r['largest_excess_column']}, frame {r['largest_excess_frame']})" if r["largest_excess_column"] else ""
        lines.append(f"| {r['model']} | {r['split']} | {r['frames']} | {r['atoms']} | {100 * r['mean_fraction']:.1f} % "
                     f"| {r['frames_with_any']} | {r['largest_excess']:.2g}{col} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["peo", "li4p2o7", "li4p2o7-water"])
    p.add_argument("--out", default=os.path.join(RESULTS, "extrapolation.json"))
    args = p.parse_args(argv)
    res = {
        "command": "python -m benchmarks.compare.extrapolation_check "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": run(args.models),
    }
    write_report(res, args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
