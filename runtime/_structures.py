"""Structures for the command line: a file ``ase.io`` reads, or a bundled data set.

``STRUCTURE`` arguments accept a file path (``--frame`` picks the frame) or a
bundled data set written as ``NAME[:SPLIT]`` (e.g. ``peo`` or ``peo:test``;
split default "test").
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from pathlib import Path

import fastfeat

__all__ = ["DATASETS_DIR", "bundled_dataset_names", "bundled_frames", "load_structure", "read_frames"]

#: folder of the bundled data sets (fastfeat/data/datasets/<name>.extxyz.xz)
DATASETS_DIR = Path(fastfeat.__file__).resolve().parent / "data" / "datasets"
SPLITS = ("train", "val", "test")


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
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
    loader = split_loader()
    if loader is not None:
        return list(loader(name, split=split))
    files = sorted(DATASETS_DIR.glob(f"{name}.extxyz*"))
    if not files:
        raise ValueError(f"no bundled data set named {name!r}; available: {bundled_dataset_names()}")
    return read_frames(files[0])


def read_frames(path) -> list:
    """All frames of an extxyz file, plain or compressed (.xz/.gz/.bz2).

    Compressed files are decompressed once in memory: ``ase.io.read`` on a
    compressed file seeks back and forth, which is very slow for many frames.
    """
    import ase.io

    path = str(path)
    opener = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1])
    if opener is None:
        return list(ase.io.read(path, index=":"))
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    return list(ase.io.read(io.StringIO(text), index=":", format="extxyz"))


def load_structure(text: str, frame: int = 0):
    """One ase.Atoms from a file path or a bundled data set ``NAME[:SPLIT]``.

    Raises
    ------
    FileNotFoundError
        Neither a file nor a bundled data set.
    ValueError
        The file cannot be read, or ``frame`` is out of range.
    """
    import ase.io

    if os.path.exists(text):
        try:
            atoms = ase.io.read(text, index=frame)
        except (IndexError, StopIteration):
            raise ValueError(f"structure file {text!r} has no frame {frame}") from None
        except Exception as exc:
            raise ValueError(f"cannot read structure file {text!r}: {type(exc).__name__}: {exc}") from None
        return atoms
    name, _, split = text.partition(":")
    if name in bundled_dataset_names():
        frames = bundled_frames(name, split or "test")
        if not -len(frames) <= frame < len(frames):
            raise ValueError(f"bundled data set {text!r} has {len(frames)} frames, got `frame`={frame}")
        return frames[frame]
    raise FileNotFoundError(
        f"structure {text!r} is neither a file nor a bundled data set (available: {bundled_dataset_names()})"
    )
