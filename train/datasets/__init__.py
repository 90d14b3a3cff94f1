"""Reference data sets (GFN1-xTB through tblite) and their generator.

>>> from fastfeat.train import datasets
>>> datasets.available()
['li4p2o7', 'li4p2o7-water', 'peo']
>>> frames = datasets.load("peo", split="train")      # list[ase.Atoms], forces in eV/Å
>>> mine = datasets.read("my.extxyz", forces_key="REF_forces")

The generator (``fastfeat data generate``, :func:`generate`) and ``fastfeat data relabel`` need the
optional ``tblite`` package. Every stored frame is labelled by a fresh single point
(``atoms.info["label"] == LABEL``).
"""

from .builders import BUILDERS, MIN_PAIR_DISTANCE, PLACEMENT_MIN_DISTANCE, build, min_pair_distance
from .generate import LABEL, METHOD, generate
from .loaders import SPLITS, available, data_path, load, read, split_trajectories

__all__ = [
    "BUILDERS",
    "LABEL",
    "METHOD",
    "MIN_PAIR_DISTANCE",
    "PLACEMENT_MIN_DISTANCE",
    "SPLITS",
    "available",
    "build",
    "data_path",
    "generate",
    "load",
    "min_pair_distance",
    "read",
    "split_trajectories",
]
