"""Learning curve of a bundled model: test error against the number of training trajectories.

Would more reference data of the same kind bring the oxide models to the issue-4 targets? The
bundled configuration (``bundled_config("basis", name)``: features, hidden widths, schedule, averaged
weights) is trained on a random subset of the training split's trajectories (whole trajectories:
each is a separately built structure) and evaluated on the unchanged test split; the validation
split is unchanged too. Writes ``benchmarks/results/learning_curve_<data>.json`` and ``.md``.
Needs the ``[train]`` extra; about 30 s per model on one core for li4p2o7.

    python -m benchmarks.compare.learning_curve [--data li4p2o7] [--fractions 0.25 0.5 1] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def _power_law(rows):
    """Least-squares slope of log(test rel. RMSE) against log(trajectories): the error ~ N^slope."""
    n = np.log([r["trajectories"] for r in rows])
    e = np.log([r["test_rel_rmse"] for r in rows])
    return float(np.polyfit(n, e, 1)[0]) if len(set(n)) > 1 else float("nan")


def run(data, fractions, seeds):
    import torch

    torch.set_num_threads(1)
    from fastfeat.train import datasets
    from fastfeat.train.bundle_models import bundled_config
    from fastfeat.train.cli import prepare_features
    from fastfeat.train.evaluate import force_metrics
    from fastfeat.train.trainer import predict, train_model

    feats, spec, _ = prepare_features(data, bundled_config("basis", data), log=lambda m: None)
    traj = np.array([a.info["trajectory"] for a in datasets.load(data, split="train")])
    if len(traj) != feats["train"].n_structures:
        raise RuntimeError("training frames and features differ in number")
    ids = np.unique(traj)
    rows = []
    for frac in fractions:
        for seed in seeds:
            keep = np.random.default_rng(seed).permutation(ids)[:max(1, int(round(frac * len(ids))))]
            sub = feats["train"].subset(np.flatnonzero(np.isin(traj, keep)))
            t0 = time.perf_counter()
            res = train_model(sub, feats["val"], spec, bundled_config("basis", data, seed=seed), log=lambda m: None)
            te = feats["test"]
            m = force_metrics(predict(res.model, te), te.target, te.species, spec.species, te.offsets)
            rows.append({"fraction": frac, "seed": seed, "trajectories": int(len(keep)), "structures": sub.n_structures,
                         "best_epoch": res.best_epoch + 1, "train_s": time.perf_counter() - t0,
                         "test_mae": float(m["mae"]), "test_rel_rmse": float(m["rel_rmse"])})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"data": data, "trajectories_total": int(len(ids)), "rows": rows, "slope": _power_law(rows)}


def markdown(res):
    lines = [f"# Learning curve, {res['data']} (bundled configuration, basis head)", "",
             "`python -m benchmarks.compare.learning_curve --data " + res["data"] + "`; training trajectories "
             "drawn at random per seed, test split unchanged.", "",
             "| trajectories (of {}) | structures | seed | best epoch | test MAE (eV/Å) | test rel. RMSE |".format(
                 res["trajectories_total"]), "|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['trajectories']} | {r['structures']} | {r['seed']} | {r['best_epoch']} | "
                     f"{r['test_mae']:.4f} | {r['test_rel_rmse']:.4f} |")
    lines += ["", f"Fitted test rel. RMSE ~ N^{res['slope']:.2f} (N = training trajectories)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="li4p2o7", choices=["li4p2o7", "li4p2o7-water", "peo"])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/learning_curve_DATA.json)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(RESULTS, f"learning_curve_{args.data}.json")
    res = run(args.data, args.fractions, args.seeds)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w", encoding="utf-8") as fh:
        fh.write(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
