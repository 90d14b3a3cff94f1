"""``fastfeat train`` and ``fastfeat evaluate``.

``fastfeat train --data NAME|FILE [--config c.toml] [--head projection|basis] [--epochs N]
[--target KEY] --out model.onnx`` trains a staggered network on a bundled data
set (its train/val splits; test figures are reported too) or on a structure
file (a seeded validation hold-out), then exports it to ONNX. The same command
runs distributed under ``torchrun --nproc_per_node N``. ``--resume`` continues
from the checkpoint; ``--epochs`` is then the new total, and changed
``--epochs``/``--lr`` re-plan the learning-rate schedule from the checkpoint's
epoch on (see :func:`fastfeat.train.trainer.train_model`).

A run stops after an epoch when its time limit is reached, when early stopping ends it, or on the
first Ctrl-C (SIGINT) or SIGTERM: that epoch is checkpointed, the best epoch's model exported and
``--history`` written in each case; after a signal the command says so in one line and exits with
status 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C stops at once (one line naming the checkpoint,
status 130, nothing exported). A resumed run that had stopped early trains no further epoch unless
``patience`` is larger (or 0). An epoch whose training loss or validation RMSE is not finite stops
the run with an error naming it (exit status 3; nothing exported, the checkpoint keeps the epochs
before). An unreadable ``--resume`` checkpoint is an error naming the file (exit 2) before any
feature is computed. The ``--history`` records number the epochs from 1, as ``best_epoch`` does.

``fastfeat evaluate MODEL DATA[:SPLIT] [--split test] [--json] [--plot parity.png]``
prints force MAE/RMSE (overall and per element), relative RMSE and cosine
similarity of an exported model (file or bundled name) on a data set.

Output paths (``--out``, ``--checkpoint``, ``--history``, ``--plot``) are
checked before any data is read: a missing folder or an unwritable path is an
error naming the argument (exit 2), as in ``fastfeat md``; nothing is created.

``fastfeat train`` needs the ``[train]`` extra (PyTorch, onnx; tomli on Python
3.10): without it the command says so in one line and exits 2. ``fastfeat
evaluate`` runs on a base install (onnxruntime); only ``--plot`` needs
matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

from fastfeat._io import check_output_path as check_writable
from fastfeat._io import json_text

__all__ = ["train_main", "evaluate_main", "run_training", "prepare_features", "train_and_export", "evaluate",
           "check_writable", "check_outputs", "data_split", "missing_train_dependency"]

#: splits of a bundled data set that ``fastfeat evaluate`` takes (``--split`` or ``DATA`` as ``NAME:SPLIT``)
EVAL_SPLITS = ("train", "val", "test", "all")

#: what ``fastfeat train`` imports from the ``[train]`` extra: (module, name in the message)
TRAIN_DEPENDENCIES = (("torch", "PyTorch"), ("onnx", "onnx"))
if sys.version_info < (3, 11):
    TRAIN_DEPENDENCIES += (("tomli", "tomli"),)
INSTALL_TRAIN = 'pip install "fastfeat[train]" (see README)'


def missing_train_dependency():
    """None, or the one-line message naming the first ``[train]`` dependency that cannot be imported."""
    for module, name in TRAIN_DEPENDENCIES:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"training needs {name}: {INSTALL_TRAIN}"
    return None


def _check_folder(path, what):
    """OSError naming ``what`` when folder ``path`` is a file or cannot be created."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{what} {path!r} is a file, not a folder; nothing was run")
        return
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
        raise PermissionError(f"cannot create {what} {path!r}: {ancestor!r} is not a writable folder; "
                              f"nothing was run")


def check_outputs(out, cfg, *, checkpoint=None, resume=False, history=None):
    """Fail fast, before any data is read: every output of a training run must be writable."""
    from .data import default_cache_dir

    check_writable(out, "`--out`")
    ckpt = checkpoint or f"{os.fspath(out)}.ckpt"
    what = "`--checkpoint`" if checkpoint else "checkpoint (default `--out` + .ckpt)"
    if os.path.abspath(ckpt) == os.path.abspath(os.fspath(out)):
        raise ValueError(f"`--checkpoint` must differ from `--out`, got {os.fspath(checkpoint)!r} for both")
    if resume and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"`--resume` needs an existing checkpoint, got {ckpt!r}; nothing was run")
    check_writable(ckpt, what)
    if history is not None:
        check_writable(history, "`--history`")
        if os.path.abspath(history) in (os.path.abspath(os.fspath(out)), os.path.abspath(ckpt)):
            raise ValueError(f"`--history` must differ from `--out` and the checkpoint, got {history!r}")
    _check_folder(cfg.cache_dir or default_cache_dir(), "feature cache folder (`--cache-dir`)")


def _train_parser():
    p = argparse.ArgumentParser(prog="fastfeat train", description="Train a direct-force staggered network and export it to ONNX.")
    p.add_argument("--data", required=True, help="bundled dataset name (peo, li4p2o7, li4p2o7-water) or a structure file")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--config", help="TOML config file (keys: see README)")
    p.add_argument("--head", choices=["projection", "basis"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--target", help="per-atom (N, 3) quantity to learn (default: forces)")
    p.add_argument("--forces-key", dest="forces_key",
                   help="where a data file keeps the reference forces, e.g. REF_forces (an extxyz per-atom column or "
                        "a calculator result; default: forces); the model predicts forces")
    p.add_argument("--spec", help="FeatureSpec JSON file (default: FeatureSpec.default(species of the data))")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--time-limit", type=float, dest="time_limit", help="seconds of training at most")
    p.add_argument("--dtype", choices=["float32", "float64"], help="training precision")
    p.add_argument("--export-dtype", choices=["float32", "float64"], dest="export_dtype")
    p.add_argument("--cache-dir", dest="cache_dir", help="feature cache folder")
    p.add_argument("--checkpoint", help="checkpoint file (default: OUT.ckpt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint (same model settings); --epochs is the new total. With other "
                        "--epochs/--lr/schedule settings than the checkpoint's, the learning-rate schedule is "
                        "re-planned: each remaining epoch gets the rate a fresh run with the new settings would "
                        "use at that epoch (plateau: restarts at --lr). A run that had stopped early trains no "
                        "further unless `patience` is larger (or 0)")
    p.add_argument("--history", help="write the per-epoch history as JSON here")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return p


def _spec_for(cfg, spec_path, frames_lists):
    import fastfeat
    from fastfeat._io import read_spec_file

    from .data import species_of

    if spec_path:
        return read_spec_file(spec_path)
    species = species_of(frames_lists)
    if cfg.spec:
        d = dict(cfg.spec)
        d.setdefault("species", list(species))
        return fastfeat.FeatureSpec(**d)
    return fastfeat.FeatureSpec.default(species, preset=cfg.spec_preset)


def prepare_features(data, cfg, *, spec_path=None, log=None, dist_ctx=None):
    """Frames of ``data`` -> checked targets -> spec -> cached features.

    Returns
    -------
    feats : dict
        ``{"train": FeatureSet, "val": FeatureSet[, "test": FeatureSet]}``.
    spec : fastfeat.FeatureSpec
    sha : str
        sha256 of the training + validation data.
    """
    from .data import (cached_features, check_cells, check_species, check_trained_species, data_hash, frame_targets,
                       is_data_path, load_frames, split_frames, trajectory_labels)
    from .trainer import Distributed

    dctx = dist_ctx or Distributed()
    say = log if (log and dctx.is_main) else (lambda msg: None)
    data = os.fspath(data)
    splits = {}
    # (frames, label) checked against the spec, with the frame numbers messages give; held-out splits
    # checked against the training frames' elements
    checked, held_out = [], []
    if is_data_path(data):
        frames, label = load_frames(data, target=cfg.target, forces_key=cfg.forces_key, what="`--data`")
        targets = frame_targets(frames, cfg.target, label)
        groups = trajectory_labels(frames)  # frames of one trajectory stay on one side of the split
        i_tr, i_va = split_frames(len(frames), cfg.val_fraction, cfg.seed, groups)
        if groups is not None and len(set(groups)) >= 2:
            say(f"{label}: validation holds out whole trajectories (info['trajectory']): "
                f"{len(set(groups[i] for i in i_va))} of {len(set(groups))}, {len(i_va)} frames "
                f"({100 * len(i_va) / len(frames):.0f} % of the file; `val_fraction` {cfg.val_fraction:g})")
        if len(i_va) < 5:
            say(f"note: {label} holds {len(frames)} frames, so validation has {len(i_va)}: its errors (and the "
                "epoch picked by them) are a rough estimate; more frames, or a larger `val_fraction`, firm them up")
        splits["train"] = ([frames[i] for i in i_tr], [targets[i] for i in i_tr], f"{label}[train]")
        splits["val"] = ([frames[i] for i in i_va], [targets[i] for i in i_va], f"{label}[val]")
        checked.append((frames, label))  # frame numbers of the file, not of a split
        held_out.append((splits["val"][0], f"{label} (held out for validation)", i_va))
    else:
        for split in ("train", "val", "test"):
            # a missing file or an unknown name fails on "train" with a message naming `--data`
            frames, label = load_frames(data, split, target=cfg.target, forces_key=cfg.forces_key, what="`--data`")
            if split == "test" and not frames:
                continue
            splits[split] = (frames, frame_targets(frames, cfg.target, label), label)
            checked.append((frames, label))
            if split != "train":
                held_out.append((frames, label, None))
    spec = _spec_for(cfg, spec_path, [v[0] for v in splits.values()])
    for frames, label in checked:
        check_species(frames, spec, label)
        check_cells(frames, label)
    check_trained_species(splits["train"][0], held_out, splits["train"][2], spec)
    sha = data_hash(splits["train"][0] + splits["val"][0], splits["train"][1] + splits["val"][1])
    feats = {}
    for rank_turn in (True, False):  # main rank fills the cache first, the others read it
        if dctx.is_main == rank_turn:
            for name, (frames, targets, label) in splits.items():
                feats[name] = cached_features(frames, targets, spec, dtype=cfg.dtype, target=cfg.target,
                                              cache_dir=cfg.cache_dir, log=say)
        dctx.barrier()
    return feats, spec, sha


def train_and_export(feats, spec, sha, out, cfg, *, checkpoint=None, resume=False, log=None, quiet=False,
                     dist_ctx=None):
    """Train on precomputed features, report val/test metrics, export ONNX (main rank); returns a summary dict.

    The first Ctrl-C (SIGINT) or SIGTERM during training or export stops the run at the end of the current
    epoch, which is checkpointed; the best epoch's model is exported all the same and the summary says so
    (``stopped`` "interrupted", ``interrupted`` the signal's name). A second one stops at once:
    :class:`~fastfeat.train.trainer.TrainingInterrupted` (a KeyboardInterrupt) naming the checkpoint.
    A diverged run raises :class:`~fastfeat.train.trainer.TrainingDiverged` and exports nothing.
    """
    from .trainer import DeferredStop, Distributed, TrainingDiverged, TrainingInterrupted, signal_name, train_model

    dctx = dist_ctx or Distributed()
    say = log if dctx.is_main else (lambda msg: None)
    t0 = time.perf_counter()
    checkpoint = checkpoint or f"{os.fspath(out)}.ckpt"
    with DeferredStop() as stop:  # also covers the export: a first signal there lets it finish
        try:
            res = train_model(feats["train"], feats["val"], spec, cfg, checkpoint=checkpoint, resume=resume,
                              data_sha=sha, log=(lambda m: None) if quiet else log, dist_ctx=dctx)
        except (TrainingDiverged, TrainingInterrupted) as exc:
            exc.args = (f"{exc.args[0]}; {_not_written(out)}",)
            raise
        try:
            summary = _export(res, feats, spec, sha, out, cfg, dctx, say, t0)
        except KeyboardInterrupt:  # a second signal during the export
            if dctx.is_main and os.path.exists(f"{os.fspath(out)}.tmp"):
                os.remove(f"{os.fspath(out)}.tmp")
            raise TrainingInterrupted(
                f"interrupted ({signal_name(stop.signum)}) while exporting: the checkpoint {checkpoint!r} holds the "
                f"run; `--resume` exports its best epoch's model; {_not_written(out)}", stop.signum) from None
        signum = stop.signum
    if signum is not None:
        summary["stopped"] = "interrupted"
        summary["interrupted"] = signal_name(signum)
        summary["exit_status"] = 128 + int(signum)
    return summary


def _not_written(out) -> str:
    out = os.fspath(out)
    return f"{out!r} was not written" + (" (the file there is an earlier export)" if os.path.exists(out) else "")


def _export(res, feats, spec, sha, out, cfg, dctx, say, t0):
    """Metrics of the trained model, and (main rank) its ONNX export checked against PyTorch; the summary dict."""
    from .evaluate import OnnxForceModel, force_metrics
    from .export import export_onnx
    from .trainer import predict

    summary = {"best_epoch": res.best_epoch + 1, "epochs_run": len(res.history), "stopped": res.stopped,
               "train_seconds": time.perf_counter() - t0,
               "n_parameters": sum(p.numel() for p in res.model.parameters())}
    metrics = {}
    for name in ("val", "test"):
        if name in feats:
            fs = feats[name]
            metrics[name] = force_metrics(predict(res.model, fs), fs.target, fs.species, spec.species, fs.offsets)
    summary["metrics"] = metrics
    if dctx.is_main:
        unit = cfg.target_unit or ("eV/Å" if cfg.target == "forces" else "")
        validation = {k: {q: v[q] for q in ("mae", "rmse", "rel_rmse", "cosine", "n_atoms")} for k, v in metrics.items()}
        validation["best_epoch"] = res.best_epoch + 1
        from fastfeat.runtime.extrapolation import feature_range_metadata

        export_onnx(res.model, out, target=cfg.target, units={"length": "Å", "force": unit}, data_hash=sha,
                    validation=validation, dtype=cfg.export_dtype,
                    feature_range=feature_range_metadata(spec, feats["train"].invariant, feats["train"].species))
        # the exported graph must reproduce the PyTorch model
        fs = feats["val"]
        onnx_f = OnnxForceModel(out)(fs.invariant, fs.covariant, fs.species)
        torch_f = predict(res.model, fs)
        dev = float(np.abs(onnx_f - torch_f).max() / max(np.abs(torch_f).max(), 1e-30))
        summary["onnx_max_rel_deviation"] = dev
        summary["onnx_bytes"] = os.path.getsize(out)
        for name, m in metrics.items():
            say(f"{name}: MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  rel RMSE {m['rel_rmse']:.4f}  "
                f"cosine {m['cosine']:.4f}  ({unit})")
        say(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} kB; ONNX vs PyTorch max rel deviation {dev:.1e}); "
            f"training {time.perf_counter() - t0:.0f} s")
    summary["history"] = res.history
    return summary


def run_training(data, out, cfg, *, spec_path=None, checkpoint=None, resume=False, log=None, quiet=False,
                 history=None):
    """Everything ``fastfeat train`` does; returns a summary dict.

    Raises ValueError/TypeError/OSError (FileNotFoundError, …) with a clear message on bad input;
    the output paths (``out``, the checkpoint and ``history``, which the caller writes from the
    summary) are checked (:func:`check_outputs`) before any data is read.
    """
    import torch

    from .trainer import Distributed

    check_outputs(out, cfg, checkpoint=checkpoint, resume=resume, history=history)
    if resume:  # an unreadable checkpoint fails now, not after the features are computed
        from .trainer import load_checkpoint

        load_checkpoint(checkpoint or f"{os.fspath(out)}.ckpt")

    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)
    dctx = Distributed()
    say = log if dctx.is_main else (lambda msg: None)
    ckpt = os.fspath(checkpoint or f"{os.fspath(out)}.ckpt")
    if not resume and os.path.isfile(ckpt):  # a forgotten --resume would lose a long run's state: say so
        say(f"note: checkpoint {ckpt!r} exists and this run starts afresh, replacing it (and {os.fspath(out)!r}); "
            "`--resume` continues it instead")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    feats, spec, sha = prepare_features(data, cfg, spec_path=spec_path, log=log, dist_ctx=dctx)
    say(f"features ready in {time.perf_counter() - t0:.1f} s: n_invariant={spec.n_invariant}, "
        f"n_covariant={spec.n_covariant}, species={list(spec.species)}")
    summary = train_and_export(feats, spec, sha, out, cfg, checkpoint=checkpoint, resume=resume, log=log,
                               quiet=quiet, dist_ctx=dctx)
    # on success only (after an error another rank may be inside a collective: destroying would hang it):
    # every rank waits for the main rank's export, then the group goes before the interpreter does
    dctx.close()
    return summary


def train_main(argv) -> int:
    """``fastfeat train`` entry point."""
    args = _train_parser().parse_args(argv)
    missing = missing_train_dependency()
    if missing:
        print(f"fastfeat train: error: {missing}", file=sys.stderr)
        return 2
    from .config import load_config
    from .trainer import TrainingDiverged, TrainingInterrupted

    try:
        overrides = {k: getattr(args, k) for k in ("head", "epochs", "target", "forces_key", "batch_size", "lr", "seed",
                                                   "threads", "time_limit", "dtype", "export_dtype", "cache_dir")}
        cfg = load_config(args.config, **overrides)
        summary = run_training(args.data, args.out, cfg, spec_path=args.spec, checkpoint=args.checkpoint,
                               resume=args.resume, quiet=args.quiet, history=args.history)
    except TrainingInterrupted as exc:  # a second Ctrl-C/SIGTERM: stopped at once, nothing exported
        print(f"fastfeat train: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:  # before training began (reading data, features)
        print("fastfeat train: interrupted before training began; nothing was trained or exported",
              file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"fastfeat train: error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, OSError) as exc:
        print(f"fastfeat train: error: {exc}", file=sys.stderr)
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.history and main_rank:
        with open(args.history, "w", encoding="utf-8") as fh:
            fh.write(json_text(summary, indent=1))
    if summary.get("interrupted"):
        if main_rank:
            ckpt = args.checkpoint or f"{args.out}.ckpt"
            last = summary["history"][-1]["epoch"] if summary["history"] else 0
            print(f"fastfeat train: interrupted ({summary['interrupted']}) after epoch {last}: the best epoch's model "
                  f"(epoch {summary['best_epoch']}) was exported to {args.out!r}"
                  + (f" and the history to {args.history!r}" if args.history else "")
                  + f"; `--resume` continues the run from {ckpt!r}", file=sys.stderr)
        return summary["exit_status"]
    return 0


def _evaluate_parser():
    p = argparse.ArgumentParser(prog="fastfeat evaluate", description="Force errors of an exported model on a data set.")
    p.add_argument("model", metavar="MODEL", help=".onnx file or bundled model name")
    p.add_argument("data", metavar="DATA",
                   help="structure file, or bundled dataset as NAME or NAME:SPLIT (e.g. peo:val, as in `fastfeat md`)")
    p.add_argument("--split", choices=list(EVAL_SPLITS),
                   help="split of a bundled dataset (default: the one in NAME:SPLIT, else test); a file is used whole")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plot", help="write a parity plot (PNG) here")
    p.add_argument("--target", help="per-atom quantity to compare with (default: the model's target)")
    p.add_argument("--forces-key", dest="forces_key", default="forces",
                   help="where a data file keeps the reference forces, e.g. REF_forces (default: forces)")
    return p


def data_split(data, split=None):
    """``(data, split)`` of ``DATA`` given as a file, ``NAME`` or ``NAME:SPLIT`` and an optional ``--split``.

    An existing file is returned as it is. ``NAME:SPLIT`` of a bundled data set gives that split;
    ``split`` then must be None or the same. Without either the split is "test".
    """
    from .data import is_data_path
    from .datasets import available

    data = os.fspath(data)
    if split is not None and split not in EVAL_SPLITS:
        raise ValueError(f"`--split` must be one of {list(EVAL_SPLITS)}, got {split!r}")
    if is_data_path(data) or ":" not in data:
        return data, split or "test"
    name, _, named = data.partition(":")
    if name not in available():
        return data, split or "test"  # neither file nor data set: load_frames says so
    if named not in EVAL_SPLITS:
        raise ValueError(f"`DATA` {data!r}: the split after ':' must be one of {list(EVAL_SPLITS)}, got {named!r}")
    if split is not None and split != named:
        raise ValueError(f"`DATA` {data!r} names split {named!r} but `--split` is {split!r}; give one of them")
    return name, named


def evaluate(model, data, split=None, target=None, forces_key="forces"):
    """Metrics dict + arrays (pred, ref, species) of ``model`` on ``data``.

    ``data`` is a structure file (used whole) or a bundled data set ``NAME`` / ``NAME:SPLIT``;
    ``split`` (default: the one in ``data``, else "test") picks a bundled set's split;
    ``forces_key``: where a file keeps the reference forces (see ``load_frames``).
    """
    from .data import check_species, frame_targets, featurize_frames, load_frames
    from .evaluate import OnnxForceModel, force_metrics, resolve_model

    data, split = data_split(data, split)
    m = OnnxForceModel(resolve_model(model))
    target = target or m.target
    frames, label = load_frames(data, split, target=target, forces_key=forces_key, what="`DATA`")
    targets = frame_targets(frames, target, label)
    check_species(frames, m.spec, label)
    fs = featurize_frames(frames, targets, m.spec, dtype=m.dtype)
    pred = m(fs.invariant, fs.covariant, fs.species)
    metrics = force_metrics(pred, fs.target, fs.species, m.spec.species, fs.offsets)
    metrics["model"] = os.fspath(model)
    metrics["data"] = label
    metrics["head"] = m.metadata.get("fastfeat.head")
    return metrics, (pred, fs.target, fs.species, m)


def _check_plot_format(path):
    """ValueError when matplotlib is missing or cannot write the file type of ``path`` (no suffix: PNG)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ValueError(f"`--plot` needs matplotlib: {INSTALL_TRAIN}") from None

    suffix = os.path.splitext(os.fspath(path))[1][1:].lower()
    if not suffix:
        return
    types = FigureCanvasBase.get_supported_filetypes()
    if suffix not in types:
        raise ValueError(f"`--plot` {os.fspath(path)!r}: cannot write .{suffix} files; use one of "
                         f"{', '.join('.' + t for t in sorted(types))}")


def evaluate_main(argv) -> int:
    """``fastfeat evaluate`` entry point."""
    from .evaluate import format_metrics, parity_plot

    args = _evaluate_parser().parse_args(argv)
    try:
        # cheap checks first: nothing is loaded or computed for a bad DATA[:SPLIT] or --plot
        if args.split is not None and os.path.isfile(args.data):
            raise ValueError(f"`--split` picks a split of a bundled data set, but `DATA` {args.data!r} is a file, "
                             "which is used whole; drop `--split`")
        data, split = data_split(args.data, args.split)
        if args.plot and not os.path.splitext(os.path.basename(args.plot))[1].strip("."):
            args.plot = args.plot.rstrip(".") + ".png"  # matplotlib writes PNG with that suffix added
        if args.plot:
            check_writable(args.plot, "`--plot`")
            _check_plot_format(args.plot)
        metrics, (pred, ref, species, m) = evaluate(args.model, data, split, args.target, args.forces_key)
    except (ValueError, TypeError, OSError) as exc:
        print(f"fastfeat evaluate: error: {exc}", file=sys.stderr)
        return 2
    unit = m.units.get("force", "eV/Å")
    if args.plot:
        parity_plot(pred, ref, species, m.spec.species, args.plot, title=f"{metrics['model']} on {metrics['data']}",
                    unit=unit)
    if args.json:
        print(json_text(metrics, indent=1))
    else:
        print(f"{metrics['model']} ({metrics['head']} head) on {metrics['data']}: {metrics['n_structures']} structure{'s' if metrics['n_structures'] != 1 else ''}")
        print(format_metrics(metrics, unit))
        if args.plot:
            print(f"parity plot: {args.plot}")
    return 0
