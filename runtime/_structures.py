"""Structures for the command line: a file ``ase.io`` reads, or a bundled data set.

``STRUCTURE`` arguments accept a file path (``--frame`` picks the frame) or a
bundled data set written as ``NAME[:SPLIT]`` (e.g. ``peo``, ``peo:test`` or
``peo:all``; split "train", "val", "test" (default) or "all": every frame).
"""

from __future__ import annotations

from pathlib import Path

import fastfeat
from fastfeat._io import names_path, read_structures

__all__ = ["DATASETS_DIR", "bundled_dataset_names", "bundled_frames", "load_structure", "at_positions", "periodicity"]

#: folder of the bundled data sets (fastfeat/data/datasets/<name>.extxyz.xz)
DATASETS_DIR = Path(fastfeat.__file__).resolve().parent / "data" / "datasets"
SPLITS = ("train", "val", "test", "all")


def periodicity(atoms) -> str:
    """How the commands describe a structure's boundary conditions: "periodic in x y z", "periodic in x y", or, for
    no periodic axis, "no periodic axis: an isolated cluster" (a plain .xyz file carries no cell: a periodic system
    read from one is simulated as a cluster, which the header line then says)."""
    axes = [c for c, p in zip("xyz", atoms.pbc) if p]
    return f"periodic in {' '.join(axes)}" if axes else "no periodic axis: an isolated cluster"


def bundled_dataset_names() -> list:
    if not DATASETS_DIR.is_dir():
        return []
    return sorted(p.name.split(".")[0] for p in DATASETS_DIR.glob("*.extxyz*"))


def split_loader():
    """``fastfeat.train.datasets.load`` (knows the train/val/test splits), or None if unavailable."""
    try:
        from fastfeat.train import datasets
    except ImportError:
        return None
    return getattr(datasets, "load", None)


def bundled_frames(name: str, split: str = "test") -> list:
    """Frames of a bundled data set (list of ase.Atoms with reference forces).

    Uses ``fastfeat.train.datasets.load`` (torch-free) for the split; if that
    package is missing, reads the bundled file with ``ase.io`` (all frames).
    ``split="all"``: every frame.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
    loader = split_loader()
    if loader is not None:
        return list(loader(name, split=split))
    files = sorted(DATASETS_DIR.glob(f"{name}.extxyz*"))
    if not files:
        raise ValueError(f"no bundled data set named {name!r}; available: {bundled_dataset_names()}")
    return read_structures(files[0])


def load_structure(text: str, frame: int = 0):
    """One ase.Atoms from a file path or a bundled data set ``NAME[:SPLIT]``.

    Raises
    ------
    FileNotFoundError
        Neither a file nor a bundled data set.
    ValueError
        The file cannot be read, or ``frame`` is out of range.
    """
    if str(text).lower().endswith(".onnx"):
        raise ValueError(f"structure {text!r} is an ONNX model file, not a structure: the commands take the model "
                         "first, then the structure (fastfeat md MODEL STRUCTURE)")
    names = bundled_dataset_names()
    if names_path(text, names):
        return read_structures(text, index=frame)
    name, _, split = text.partition(":")
    if name in names:
        frames = bundled_frames(name, split or "test")
        if not -len(frames) <= frame < len(frames):
            raise ValueError(f"bundled data set {text!r} has {len(frames)} frames, no frame {frame}")
        return frames[frame]
    raise FileNotFoundError(f"structure {text!r} is neither a file nor a bundled data set (available: {names})")


def at_positions(atoms, positions):
    """A copy of ``atoms`` (numbers, cell, pbc, ...) at ``positions``, e.g. an MD run's last frame."""
    out = atoms.copy()
    out.positions = positions
    return out
