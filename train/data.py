"""Training data: frames -> checked targets -> features (computed once, cached).

Features always come from :func:`fastfeat.featurize` (never re-implemented in
torch). They are cached on disk as ``.npz`` keyed by a hash of the data, the
spec JSON, the dtype and the target key, so a second run (or another rank of
a distributed run) reads them back instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

import fastfeat
from fastfeat._io import names_path

__all__ = [
    "FeatureSet",
    "load_frames",
    "looks_like_path",
    "split_frames",
    "check_cells",
    "trajectory_labels",
    "frame_targets",
    "data_hash",
    "species_of",
    "check_species",
    "featurize_frames",
    "cached_features",
    "featurizer_code_hash",
    "default_cache_dir",
]


@dataclass
class FeatureSet:
    """Features and targets of a list of structures, atoms concatenated.

    Attributes
    ----------
    invariant : ndarray, shape (N, n_invariant)
    covariant : ndarray, shape (N, n_covariant, 3)
    species : ndarray, shape (N,), int64
        Index into the spec's species.
    offsets : ndarray, shape (n_structures + 1,), int64
        Atom offsets of each structure.
    target : ndarray, shape (N, 3)
        Reference forces (eV/Å) or the learned covariant target.
    """

    invariant: np.ndarray
    covariant: np.ndarray
    species: np.ndarray
    offsets: np.ndarray
    target: np.ndarray

    @property
    def n_structures(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> int:
        return int(self.offsets[-1])

    def subset(self, structures) -> "FeatureSet":
        """The structures with the given indices, in that order."""
        structures = np.asarray(structures, dtype=np.int64)
        counts = self.offsets[structures + 1] - self.offsets[structures]
        rows = atom_rows(self.offsets, structures)
        return FeatureSet(self.invariant[rows], self.covariant[rows], self.species[rows],
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.target[rows])

    def save(self, path):
        tmp = f"{os.fspath(path)}.{os.getpid()}.tmp.npz"
        np.savez(tmp, invariant=self.invariant, covariant=self.covariant, species=self.species,
                 offsets=self.offsets, target=self.target)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "FeatureSet":
        with np.load(path) as z:
            return cls(z["invariant"], z["covariant"], z["species"], z["offsets"], z["target"])


def atom_rows(offsets, structures) -> np.ndarray:
    """Concatenated atom indices of ``structures`` (int64)."""
    parts = [np.arange(offsets[s], offsets[s + 1], dtype=np.int64) for s in structures]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------- frames
def is_data_path(data) -> bool:
    """``data`` (a `--data` argument) is a file or folder path, not a bundled data set's name (see
    fastfeat._io.names_path)."""
    from . import datasets

    return names_path(os.fspath(data), datasets.available())


def looks_like_path(text: str) -> bool:
    """True when ``text`` has a folder separator or a file suffix (``x.extxyz``, ``dir/x``): a file
    was meant, never a bundled data set name."""
    return "/" in text or os.sep in text or os.path.splitext(text)[1] != ""


def check_forces_key(forces_key, target, name="`forces_key`"):
    """ValueError when ``forces_key`` (where a file keeps the forces) is given for a target other than forces."""
    if forces_key != "forces" and target != "forces":
        raise ValueError(f"{name} ({forces_key!r}) names where a file keeps the forces, for the target forces; "
                         f"the target here is {target!r}: give one of them")


def load_frames(data, split="train", *, target="forces", forces_key="forces", what="`data`"):
    """Frames of a bundled dataset split (``data`` a name) or of a file (all frames).

    Parameters
    ----------
    data : str or path
        A bundled dataset's name (``fastfeat.train.datasets.load``) or a
        structure file readable by ASE (extxyz, …).
    split : {"train", "val", "test"}
        Used for bundled datasets only.
    target : str
        "forces" or a per-atom array key; used to pick the reader.
    forces_key : str
        Where a file keeps the forces (target "forces"): a per-atom array or calculator result; the
        frames come back with them as their forces (:func:`datasets.read`). Bundled data sets keep
        theirs under "forces", the only key they take.
    what : str
        How messages name the argument (e.g. "`--data`").

    Returns
    -------
    frames : list of ase.Atoms
    label : str
        A short description for messages ("peo[train]" or the file name).

    Raises
    ------
    FileNotFoundError
        ``data`` looks like a path (a folder separator or a file suffix) and does not exist.
    ValueError
        ``data`` is neither a file nor a bundled data set (both named); the file is a folder, is
        empty, cannot be read or holds no structures; a frame lacks forces.
    """
    from . import datasets

    data = os.fspath(data)
    check_forces_key(forces_key, target)
    if is_data_path(data):
        if target == "forces":
            frames = datasets.read(data, forces_key=forces_key, what=f"{what} file")
        else:
            from fastfeat._io import read_structures

            frames = read_structures(data, what=f"{what} file")
        return list(frames), os.path.basename(data)
    names = datasets.available()
    if data not in names:
        if looks_like_path(data):
            raise FileNotFoundError(f"{what} file {data!r} does not exist (bundled data sets: {names})")
        raise ValueError(f"{what} {data!r} is neither a file nor a bundled data set {names}")
    if forces_key != "forces":
        raise ValueError(f"`forces_key` {forces_key!r} names where a data file keeps its forces; the bundled data "
                         f"set {data!r} keeps them under 'forces'")
    frames = datasets.load(data, split=split)
    return list(frames), f"{data}[{split}]"


def split_frames(n_frames: int, val_fraction: float, seed: int, groups=None):
    """Deterministic (train, val) index arrays of a single file's frames.

    Without ``groups``, a seeded ``val_fraction`` of the frames (at least one, and one left for training).
    ``groups`` (one label per frame, e.g. each frame's trajectory) with two or more distinct labels holds out
    whole groups instead, so that no validation frame has a correlated neighbour, a frame femtoseconds away in
    the same trajectory, in training: in a seeded order, each group joins validation if the validation frames
    stay within ``val_fraction`` of all frames (at least the smallest group is held out, and one group is left
    for training). With few or unequal groups the share can differ from ``val_fraction``.
    """
    if n_frames < 2:
        raise ValueError(f"a data file needs at least 2 frames to hold out a validation set, got {n_frames}")
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != n_frames:
            raise ValueError(f"`groups` must give one label per frame ({n_frames}), got {len(groups)}")
        labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
        if len(labels) >= 2:
            sizes = np.bincount(inverse, minlength=len(labels))
            target = val_fraction * n_frames
            order = rng.permutation(len(labels))
            chosen, held = [], 0
            for g in order:
                if held + sizes[g] <= target and len(chosen) < len(labels) - 1:
                    chosen.append(g)
                    held += sizes[g]
            if not chosen:  # every group is larger than the target: the first of the smallest in the seeded order
                chosen = [next(g for g in order if sizes[g] == sizes.min())]
            val = np.isin(inverse, chosen)
            return np.flatnonzero(~val), np.flatnonzero(val)
    perm = rng.permutation(n_frames)
    n_val = min(max(1, int(round(val_fraction * n_frames))), n_frames - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def trajectory_labels(frames):
    """Each frame's ``info["trajectory"]`` (an integer, as ``fastfeat data generate`` writes it), or None unless
    every frame has one."""
    import numbers

    labels = [a.info.get("trajectory") for a in frames]
    if all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in labels):
        return [int(t) for t in labels]
    return None


def frame_targets(frames, target="forces", label="data"):
    """Per-atom (N_s, 3) float64 targets of every frame, checked.

    Raises
    ------
    ValueError
        Empty data; a frame without the target (named by index); a target of
        the wrong shape; NaN/inf in a target (the frame and atom are named).
    """
    if len(frames) == 0:
        raise ValueError(f"{label}: the dataset is empty (no structures)")
    out = []
    for k, atoms in enumerate(frames):
        t = _one_target(atoms, target, k, label)
        if t.shape != (len(atoms), 3):
            raise ValueError(f"{label}: frame {k} has `{target}` of shape {t.shape}, expected ({len(atoms)}, 3)")
        bad = ~np.isfinite(t)
        if bad.any():
            atom = int(np.argwhere(bad)[0, 0])
            raise ValueError(f"{label}: frame {k} has non-finite `{target}` (NaN or inf) at atom {atom}: "
                             f"{t[atom].tolist()}")
        out.append(t)
    return out


def _one_target(atoms, target, k, label):
    if target == "forces":
        calc = getattr(atoms, "calc", None)
        results = getattr(calc, "results", None) or {}
        if "forces" in results:
            return np.asarray(results["forces"], dtype=np.float64)
        if "forces" in atoms.arrays:
            return np.asarray(atoms.arrays["forces"], dtype=np.float64)
        raise ValueError(f"{label}: frame {k} has no forces (neither a calculator result nor an array "
                         f"`forces`); training needs reference forces on every frame")
    if target in atoms.arrays:
        return np.asarray(atoms.arrays[target], dtype=np.float64)
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    if target in results:
        return np.asarray(results[target], dtype=np.float64)
    keys = sorted(k2 for k2 in atoms.arrays if k2 not in ("numbers", "positions"))
    raise ValueError(f"{label}: frame {k} has no per-atom array `{target}` (target); per-atom arrays present: {keys}")


def species_of(frames_lists) -> tuple:
    """Chemical symbols present in any of the frame lists, sorted by atomic number."""
    from fastfeat._elements import SYMBOLS

    zs = set()
    for frames in frames_lists:
        for atoms in frames:
            zs.update(int(z) for z in np.unique(atoms.numbers))
    return tuple(SYMBOLS[z] for z in sorted(zs))


def check_species(frames, spec, label="data"):
    """ValueError naming frame (its index in ``frames``), atom and element when an element is not in ``spec``."""
    allowed = set(spec.numbers)
    for k, atoms in enumerate(frames):
        bad = [i for i, z in enumerate(atoms.numbers) if int(z) not in allowed]
        if bad:
            i = bad[0]
            raise ValueError(f"{label}: frame {k}, atom {i} is {atoms.get_chemical_symbols()[i]}, which is not "
                             f"in the spec's species {list(spec.species)}")


def check_cells(frames, label="data"):
    """ValueError naming the frame (numbered as in ``frames``) whose cell or periodicity ``featurize`` would
    refuse: a zero-length or singular cell vector along a periodic axis."""
    from fastfeat._validation import check_cell, check_pbc

    for k, atoms in enumerate(frames):
        try:
            check_cell(atoms.cell.array, check_pbc(atoms.pbc))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{label}: frame {k}: {exc}") from None


def check_trained_species(train_frames, other, train_label="train", spec=None):
    """ValueError when an element occurs in held-out frames, or in ``spec``'s species, but in no training frame:
    its network would stay at its random initial weights while the held-out errors looked like a trained
    model's, and the exported model would serve its random forces.

    ``other``: (frames, label, frame numbers or None) of each held-out split; the first such frame is named.
    """
    from fastfeat._elements import SYMBOLS

    trained = set()
    for atoms in train_frames:
        trained.update(int(z) for z in np.unique(atoms.numbers))
    for frames, label, numbers in other:
        for k, atoms in enumerate(frames):
            missing = sorted(set(int(z) for z in np.unique(atoms.numbers)) - trained)
            if missing:
                frame = numbers[k] if numbers is not None else k
                names = ", ".join(SYMBOLS[z] for z in missing)
                raise ValueError(
                    f"{label}: frame {frame} holds {names}, which no frame of {train_label} holds: the network of "
                    f"{names} would stay untrained; add training structures with {names} (for a data file, another "
                    f"`seed` or `val_fraction` moves frames between the splits)")
    if spec is not None:
        untrained = [sym for sym, z in zip(spec.species, spec.numbers) if int(z) not in trained]
        if untrained:
            names = ", ".join(untrained)
            raise ValueError(
                f"the spec's species {names} occur in no frame of {train_label}: the network of {names} would stay "
                f"untrained and the model would serve its random forces; drop {names} from the spec's `species`, or "
                f"add training structures with {names}")


def data_hash(frames, targets) -> str:
    """sha256 of numbers, positions, cell, pbc and targets of every frame."""
    h = hashlib.sha256()
    for atoms, t in zip(frames, targets):
        h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(atoms.pbc, dtype=bool).tobytes())
        h.update(np.ascontiguousarray(t, dtype=np.float64).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------- features
def featurize_frames(frames, targets, spec, dtype=np.float32) -> FeatureSet:
    """Features of ``frames`` with :func:`fastfeat.featurize` plus their targets."""
    f = fastfeat.featurize(list(frames), spec, device="cpu", dtype=dtype)
    offsets = np.asarray(f.offsets, dtype=np.int64)
    target = np.concatenate(targets).astype(dtype) if targets else np.zeros((0, 3), dtype)
    return FeatureSet(np.asarray(f.invariant), np.asarray(f.covariant), np.asarray(f.species, dtype=np.int64),
                      offsets, target)


def default_cache_dir() -> str:
    return os.environ.get("FASTFEAT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastfeat")


def featurizer_code_hash(root=None) -> str:
    """sha256 of fastfeat's version and the source of every module of the featurizer package.

    Part of the feature cache key, so that features cached by another version of the kernels (an
    upgrade, or a development checkout between two commits) are computed again instead of read.
    ``root`` is the package folder (default: the installed ``fastfeat``). Its ``data`` folder is left out, and
    so are ``runtime`` and ``train``, which a wheel install places inside it (an editable install maps them from
    the repository's top level): they compute no features.
    """
    root = root or os.path.dirname(os.path.abspath(fastfeat.__file__))
    if root == _CODE_HASH[0]:
        return _CODE_HASH[1]
    h = hashlib.sha256(fastfeat.__version__.encode())
    for folder, subfolders, files in os.walk(root):
        top = folder == root
        subfolders[:] = sorted(d for d in subfolders
                               if d != "__pycache__" and not (top and d in ("data", "runtime", "train")))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    _CODE_HASH[:] = [root, h.hexdigest()]
    return _CODE_HASH[1]


_CODE_HASH = [None, None]  # (package folder, its hash): the sources do not change within a process


def cached_features(frames, targets, spec, *, dtype="float32", target="forces", cache_dir="", data_sha=None,
                    log=None) -> FeatureSet:
    """:func:`featurize_frames`, read from / written to an npz cache.

    The cache file is ``<cache_dir>/features/<sha256(data hash, spec JSON, dtype, target, code hash)>.npz``,
    where the code hash (:func:`featurizer_code_hash`) changes with any change to fastfeat's sources.
    """
    data_sha = data_sha or data_hash(frames, targets)
    key = hashlib.sha256(json.dumps([data_sha, spec.to_json(), str(dtype), target,
                                     featurizer_code_hash()]).encode()).hexdigest()
    folder = os.path.join(cache_dir or default_cache_dir(), "features")
    path = os.path.join(folder, key[:32] + ".npz")
    if os.path.exists(path):
        try:
            fs = FeatureSet.load(path)
            if fs.invariant.shape[1] == spec.n_invariant and fs.n_structures == len(frames):
                if log:
                    log(f"features: cache hit {path}")
                return fs
        except (OSError, ValueError, KeyError):
            pass
    fs = featurize_frames(frames, targets, spec, dtype=np.dtype(dtype))
    os.makedirs(folder, exist_ok=True)
    fs.save(path)
    if log:
        log(f"features: computed {fs.n_atoms} atoms / {fs.n_structures} structures -> {path}")
    return fs
