"""Relabel a data set: fresh GFN1-xTB (tblite) single points for every frame.

Frames labelled during MD carry the SCF convergence noise of a density guess taken from the
previous step (up to a few 1e-4 eV/Å). A fresh single point starts from tblite's default guess, so
anyone recomputing a stored frame gets the stored forces back to ~1e-6 eV/Å. ``relabel`` replaces
energy and forces of every frame by such a single point and marks the frame with
``atoms.info["label"] = "single point"``; positions, cell and the other metadata are kept.

Work is split by trajectory over worker processes (``OMP_NUM_THREADS=1`` each); results are
appended to ``<out>.relabel/t<k>.extxyz`` as they come, so an interrupted run resumes where it
stopped (frames already stored or failed are not recomputed). Frames whose single point fails are
logged and dropped: they are kept in ``<out>.relabel/t<k>.failed`` and counted in the summary. The
folder records the source it was made from (``source.json``: size and SHA-256 of the file); a folder
made from another source is refused.

    fastfeat data relabel fastfeat/data/datasets/peo.extxyz.xz --out peo.extxyz.xz --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastfeat._io import file_sha256

from .generate import CLI_NAMES, LABEL, _append, _calculator, _read_frames, check_settings, require_tblite, run_command

__all__ = ["LABEL", "label_frame", "main", "relabel"]

log = logging.getLogger("fastfeat.data")


def label_frame(atoms):
    """Copy of ``atoms`` with energy and forces from a fresh GFN1-xTB single point."""
    from ase.calculators.singlepoint import SinglePointCalculator

    work = atoms.copy()
    work.calc = _calculator()
    energy = float(work.get_potential_energy())
    forces_nc = np.array(work.get_forces())
    if not (np.isfinite(energy) and np.all(np.isfinite(forces_nc))):
        raise RuntimeError("non-finite energy or forces")
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces_nc)
    frame.info["label"] = LABEL
    return frame


def _n_frames(path):
    return len(_read_frames(path)) if path.exists() else 0


def _relabel_part(args):
    frames, path, deadline = args
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # frames are done in order, each either stored or (failed) kept aside: both count as done
    done = _n_frames(path) + _n_frames(path.with_suffix(".failed"))
    for k in range(done, len(frames)):
        if time.time() > deadline:
            break
        try:
            _append(path, label_frame(frames[k]))
        except Exception as exc:  # noqa: BLE001 -- tblite raises plain exceptions on SCF failure
            log.warning("%s frame %d (step %s): single point failed (%s); dropped", path.name, k,
                        frames[k].info.get("step"), exc)
            _append(path.with_suffix(".failed"), frames[k])
    return path


MANIFEST = "source.json"


def _source_record(source):
    return {"source": os.fspath(source), "bytes": os.path.getsize(source), "sha256": file_sha256(source)}


def _check_parts_dir(parts_dir, record, option):
    """ValueError when ``parts_dir`` holds work from another source (or from an unknown one)."""
    if not parts_dir.is_dir():
        return
    work = sorted(parts_dir.glob("t*.extxyz")) + sorted(parts_dir.glob("t*.failed"))
    manifest = parts_dir / MANIFEST
    if manifest.exists():
        try:
            stored = json.loads(manifest.read_text())
        except (OSError, ValueError):
            stored = {}
        if (stored.get("sha256"), stored.get("bytes")) != (record["sha256"], record["bytes"]):
            raise ValueError(f"{option} folder {str(parts_dir)!r} holds a relabelling of another source "
                             f"({stored.get('source', 'unknown')!r}, other contents); remove it or give another "
                             f"{option} folder; nothing was run")
    elif work:
        raise ValueError(f"{option} folder {str(parts_dir)!r} holds relabelled frames of an unknown source (no "
                         f"{MANIFEST}); remove it or give another {option} folder; nothing was run")


def relabel(source, out, workers=None, time_limit=None, parts_dir=None, stream=None, _parts_option="`parts_dir`",
            _out_option="`out`") -> int:
    """Relabel every frame of ``source`` into ``out`` (see the module docstring); returns frames written.

    Frames without ``atoms.info["trajectory"]`` are treated as one trajectory (id 0, ordered as in
    ``source``). ValueError when the parts folder holds work from another source.
    """
    import multiprocessing as mp

    stream = sys.stderr if stream is None else stream  # at call time: sys.stderr may be replaced

    from .generate import merge_parts

    from fastfeat._io import check_extxyz_path, read_structures

    source, out = Path(source), Path(out)
    if not source.is_file():
        why = "a folder" if source.is_dir() else "missing"
        raise ValueError(f"`source` must be an existing file, got {str(source)!r} ({why})")
    if out.is_dir():
        raise ValueError(f"{_out_option} {str(out)!r} is a folder; give the output file")
    check_extxyz_path(out, _out_option, allow_xz=True)  # written as extxyz text: another extension would not read back
    check_settings(workers=workers, time_limit=time_limit)
    # empty, unreadable or frameless files: ValueError naming the file
    frames = read_structures(source, format="extxyz", what="`source` file")
    parts_dir = Path(parts_dir) if parts_dir else out.with_name(out.name + ".relabel")
    record = _source_record(source)
    _check_parts_dir(parts_dir, record, _parts_option)
    require_tblite()
    parts_dir.mkdir(parents=True, exist_ok=True)
    (parts_dir / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")
    by_traj: dict[int, list] = {}
    for atoms in frames:
        by_traj.setdefault(int(atoms.info.get("trajectory", 0)), []).append(atoms)
    deadline = time.time() + time_limit if time_limit else math.inf
    jobs = [(traj, parts_dir / f"t{k:02d}.extxyz", deadline) for k, traj in sorted(by_traj.items())]
    jobs.sort(key=lambda job: -len(job[0]))  # longest first
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    start = time.time()
    print(f"[relabel] {len(frames)} frames of {len(jobs)} trajectories from {source} on {workers} workers",
          file=stream, flush=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    with mp.get_context("spawn").Pool(workers) as pool:
        for path in pool.imap_unordered(_relabel_part, jobs):
            print(f"[relabel] {path.name} done, {time.time() - start:.0f} s", file=stream, flush=True)
    n = merge_parts(parts_dir, out)
    failed = sum(_n_frames(path) for path in parts_dir.glob("t*.failed"))
    why = (f"; {failed} failed (single point), dropped and kept in {parts_dir / 't*.failed'}" if failed else "")
    missing = len(frames) - n - failed
    if missing > 0:
        why += f"; {missing} not done yet (the time limit stopped the run: the same command again continues it)"
    if n == 0:
        print(f"[relabel] no frame was relabelled, {out} not written ({time.time() - start:.0f} s){why}",
              file=stream, flush=True)
        return 0
    print(f"[relabel] wrote {n} of {len(frames)} frames to {out} ({time.time() - start:.0f} s){why}",
          file=stream, flush=True)
    return n


def build_parser(prog="fastfeat data relabel"):
    p = argparse.ArgumentParser(prog=prog, description="Fresh GFN1-xTB single points for every frame of a data set.")
    p.add_argument("source", help="extxyz file (.xz allowed) with trajectory ids")
    p.add_argument("--out", required=True, help="output extxyz file (.xz: lzma-compressed)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--time-limit", type=float, default=None, help="wall-clock seconds, then stop and write")
    p.add_argument("--parts", default=None, help="folder for the per-trajectory files (default OUT.relabel)")
    return p


def main(argv=None) -> int:
    """``fastfeat data relabel`` entry point: 0 on success, 2 for bad input, 1 when no frame was written."""
    prog = "fastfeat data relabel"
    args = build_parser(prog).parse_args(argv)
    return run_command(prog, lambda: _relabel_from_args(args))


def _relabel_from_args(args) -> int:
    """Validate the arguments of ``fastfeat data relabel``, then run it; frames written."""
    check_settings(CLI_NAMES, workers=args.workers, time_limit=args.time_limit)
    if not os.path.isfile(args.source):
        why = "is a folder" if os.path.isdir(args.source) else "does not exist"
        raise FileNotFoundError(f"`source` file {args.source!r} {why}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return relabel(args.source, args.out, args.workers, args.time_limit, args.parts,
                   _parts_option="`--parts`", _out_option="`--out`")
