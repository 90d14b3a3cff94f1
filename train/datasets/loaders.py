"""Reading reference data: bundled data sets (:func:`load`) and users' files (:func:`read`).

Bundled data sets live at ``fastfeat/data/datasets/<name>.extxyz.xz`` (lzma-compressed extended
XYZ). Every frame carries energy (eV), forces (eV/Å), momenta and ``atoms.info`` metadata
(``system``, ``method``, ``temperature`` K, ``seed``, ``step`` fs, ``trajectory``).

Splits are made of whole trajectories, so the test set holds trajectories never seen in training:
with K trajectories (sorted ids), the last ``max(1, K // 4)`` are ``"test"``, the ``max(1, K // 12)``
before them are ``"val"`` and the rest are ``"train"`` (see :func:`split_trajectories`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from fastfeat._io import read_structures

__all__ = ["SPLITS", "available", "data_path", "load", "read", "split_trajectories"]

SPLITS = ("train", "val", "test", "all")
_SUFFIX = ".extxyz.xz"


def _data_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("fastfeat").joinpath("data", "datasets")))


def available() -> list[str]:
    """Names of the bundled data sets (e.g. ``["li4p2o7", "li4p2o7-water", "peo"]``)."""
    d = _data_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(_SUFFIX)] for p in d.glob("*" + _SUFFIX))


def data_path(name: str) -> Path:
    """Path of a bundled data set's file; ValueError naming the available ones if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}")
    path = _data_dir() / (name + _SUFFIX)
    if not path.is_file():
        raise ValueError(f"`name` must be one of the bundled data sets {available()}, got {name!r}")
    return path


def _single_point(atoms, energy, forces_nc):
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces_nc)
    return out


def _frame_numbers(index):
    """k -> how messages name the k-th frame read with ``index``: its number in the file where the index
    tells it without the file's length (":" , an int >= 0, a slice from a start >= 0 with a step > 0),
    else its place in the selection ("frame 2 of those selected by index='-3:'")."""
    from ase.io.formats import string2index

    sel = string2index(index) if isinstance(index, str) else index
    if isinstance(sel, int):
        if sel >= 0:
            return lambda k: sel + k
    elif isinstance(sel, slice) and (sel.start or 0) >= 0 and (sel.step or 1) > 0:
        start, step = sel.start or 0, sel.step or 1
        return lambda k: start + k * step
    return lambda k: f"{k} of those selected by index={index!r}"


#: ASE's own per-atom arrays (positions, momenta, ...): never the forces, so neither suggested nor accepted as
#: `forces_key` (momenta have the forces' shape: a file without forces would otherwise train on them)
_NOT_FORCES = frozenset({"numbers", "positions", "momenta", "masses", "tags", "initial_charges", "initial_magmoms",
                         "velocities", "charges", "magmoms", "dipole", "stress", "stresses", "energies", "energy",
                         "free_energy"})


def read(path, forces_key: str = "forces", energy_key: str | None = None, index=":", format=None,
         what: str = "structure file") -> list:
    """Read frames with reference forces from extxyz or any format ``ase.io`` reads.

    Parameters
    ----------
    path : str or os.PathLike
        Structure file (compressed ``.xz``/``.gz``/``.bz2`` files work too).
    forces_key : str
        Where the forces (eV/Å) are: a per-atom array (``atoms.arrays[forces_key]``, e.g. an
        extxyz column) or a calculator result (``"forces"``, as ASE's readers attach them).
    energy_key : str, optional
        Where the energy (eV) is: ``atoms.info[energy_key]`` or a calculator result. By default
        ``"energy"``, and frames without it simply carry no energy; a key given explicitly must be
        found in at least one frame (so a misspelt key is an error, not silently no energies).
    index : str or int or slice
        Frames to read (``ase.io.read`` syntax); ``":"`` reads all.
    format : str, optional
        ``ase.io`` format name; guessed from the file name when None.
    what : str
        How messages about an unreadable file name it (e.g. "`--data` file").

    Returns
    -------
    list of ase.Atoms
        Each with a SinglePointCalculator holding ``forces`` (shape (N, 3), float64, eV/Å) and
        ``energy`` (eV) when present, so ``atoms.get_forces()`` works.

    Raises
    ------
    ValueError
        ``path`` does not exist, is a folder, is empty or ASE cannot read it; the file has no
        frames; a frame lacks ``forces_key`` (the key, file and frame are named); forces of the
        wrong shape or not finite (the frame is named); an explicit ``energy_key`` is in no frame
        (the key and file are named).
    """
    path = os.fspath(path)
    if not isinstance(forces_key, str):
        raise TypeError(f"`forces_key` must be a str, got {type(forces_key).__name__} {forces_key!r}")
    if forces_key in _NOT_FORCES:
        raise ValueError(f"`forces_key` {forces_key!r} names one of ASE's own quantities, never the forces: name the "
                         "array or calculator result that holds the reference forces (eV/Å), e.g. 'forces' or "
                         "'REF_forces'")
    energy_required = energy_key is not None
    if energy_key is None:
        energy_key = "energy"
    elif not isinstance(energy_key, str):
        raise TypeError(f"`energy_key` must be a str or None, got {type(energy_key).__name__} {energy_key!r}")
    if not os.path.exists(path):
        raise ValueError(f"`path` must be an existing file, got {path!r}")
    frames = read_structures(path, index=index, format=format, what=what)  # compressed text: decompressed once
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"`path` {path!r} holds no frames")
    frame_of = _frame_numbers(index)
    out = []
    for k, atoms in enumerate(frames):
        frame = frame_of(k)
        results = atoms.calc.results if atoms.calc is not None else {}
        if forces_key in atoms.arrays:
            forces_nc = np.array(atoms.arrays[forces_key], dtype=np.float64)
        elif forces_key in results:
            forces_nc = np.array(results[forces_key], dtype=np.float64)
        else:
            keys = sorted((set(atoms.arrays) | set(results)) - {"numbers", "positions"})
            shaped = [k for k in keys  # the ones that could hold forces: one 3-vector per atom, not ASE's own
                      if k not in _NOT_FORCES
                      and np.shape(atoms.arrays[k] if k in atoms.arrays else results[k]) == (len(atoms), 3)]
            hint = "" if not shaped else (f"; if the forces are one of {shaped}, name it with `forces_key` "
                                           f"(`--forces-key {shaped[0]}` on the command line)")
            raise ValueError(f"`forces_key` {forces_key!r} not found in frame {frame} of {path!r} "
                             f"(per-atom arrays and results there: {keys}){hint}")
        if forces_nc.shape != (len(atoms), 3):
            raise ValueError(f"forces {forces_key!r} of frame {frame} of {path!r} must have shape "
                             f"({len(atoms)}, 3), got {forces_nc.shape}")
        if not np.all(np.isfinite(forces_nc)):
            atom = int(np.nonzero(~np.isfinite(forces_nc).all(axis=1))[0][0])
            raise ValueError(f"forces {forces_key!r} of frame {frame} of {path!r} are not finite "
                             f"(first at atom {atom})")
        energy = None
        if energy_key in atoms.info:
            energy = float(atoms.info[energy_key])
        elif energy_key in results:
            energy = float(results[energy_key])
        clean = atoms.copy()
        clean.arrays.pop(forces_key, None)
        clean.info.pop(energy_key, None)
        out.append(_single_point(clean, energy, forces_nc))
    if energy_required and all(atoms.calc.results.get("energy") is None for atoms in out):
        first = frames[0]
        results = first.calc.results if first.calc is not None else {}
        keys = sorted(set(first.info) | (set(results) - {"forces"}))
        where = "any frame" if len(frames) > 1 else f"frame {frame_of(0)}"
        raise ValueError(f"`energy_key` {energy_key!r} not found in {where} of {path!r} "
                         f"(atoms.info keys and calculator results of frame {frame_of(0)}: {keys})")
    return out


@functools.lru_cache(maxsize=8)
def _cached(path: str) -> tuple:
    return tuple(read(path))


def split_trajectories(frames) -> dict:
    """Assign whole trajectories (``atoms.info["trajectory"]``) to train/val/test.

    With K distinct trajectory ids in sorted order, the last ``max(1, K // 4)`` are test, the
    ``max(1, K // 12)`` before them are val (when K >= 3; else none), the others train. Model
    selection needs several independent structures once there are many: with one short
    trajectory the best validation epoch is mostly noise.

    Returns
    -------
    dict
        ``{"train": [ids], "val": [ids], "test": [ids]}`` (ints).
    """
    ids = set()
    for k, atoms in enumerate(frames):
        if "trajectory" not in atoms.info:
            raise ValueError(f"frame {k} has no atoms.info['trajectory']; splits need trajectory ids")
        ids.add(int(atoms.info["trajectory"]))
    ids = sorted(ids)
    if len(ids) < 2:
        raise ValueError(f"a split needs at least 2 trajectories, got {len(ids)}")
    n_test = max(1, len(ids) // 4)
    n_val = max(1, len(ids) // 12) if len(ids) >= 3 else 0
    return {"train": ids[: len(ids) - n_test - n_val], "val": ids[len(ids) - n_test - n_val: len(ids) - n_test],
            "test": ids[len(ids) - n_test:]}


def load(name: str, split: str = "train") -> list:
    """Frames of a bundled data set (or an extxyz file with trajectory ids) for one split.

    Parameters
    ----------
    name : str
        A name from :func:`available` (``"peo"``, ``"li4p2o7"``, ``"li4p2o7-water"``) or a path to
        a file whose frames carry ``atoms.info["trajectory"]``.
    split : {"train", "val", "test", "all"}
        Whole trajectories per split (:func:`split_trajectories`); ``"all"`` returns every frame.

    Returns
    -------
    list of ase.Atoms
        Fresh copies (safe to modify); forces via ``atoms.get_forces()`` (eV/Å), energy via
        ``atoms.get_potential_energy()`` (eV).
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    path = data_path(name) if not (isinstance(name, (str, os.PathLike)) and os.path.isfile(name)) else Path(name)
    frames = _cached(str(path))
    if split != "all":
        keep = set(split_trajectories(frames)[split])
        frames = [a for a in frames if int(a.info["trajectory"]) in keep]
    return [_single_point(a, a.calc.results.get("energy"), a.calc.results["forces"].copy()) for a in frames]
