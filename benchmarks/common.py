"""Structures, thread control and timing helpers shared by the asv suite and benchmarks/compare.

Structures
----------
- :func:`water_box`: liquid water at 1 g/cm³ (rigid molecules on a jittered grid, random
  orientations), periodic.
- :func:`water_system`: a water box of about ``n_atoms`` atoms, built as a small box replicated
  (the standard work of the benchmarks: 3 k and 100 k atoms).
- :func:`tantalum_bcc`: bcc Ta for the LAMMPS SNAP (Ta06A) comparison.

Everything here is importable both as ``benchmarks.common`` (from the repository root) and from
the asv suite (which loads this file by path, see ``benchmarks/benchmarks/_shared.py``).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import numpy as np

__all__ = [
    "WATER_DENSITY_G_CM3",
    "ANI_SPECIES",
    "water_box",
    "water_system",
    "tantalum_bcc",
    "replicate_to",
    "ani1x_spec",
    "benchmark_model_path",
    "force_model",
    "set_threads",
    "thread_env",
    "interleaved_medians",
    "machine_info",
]

WATER_DENSITY_G_CM3 = 1.0
ANI_SPECIES = ("H", "C", "N", "O")

_AVOGADRO = 6.02214076e23
_WATER_MASS_G_MOL = 18.01528
_OH_BOND = 0.9572  # Å (TIP3P geometry)
_HOH_ANGLE = np.deg2rad(104.52)
_TA_LATTICE = 3.316  # Å, bcc Ta (LAMMPS examples/snap)
_TA_MASS = 180.88


def _molecule_volume(density_g_cm3=WATER_DENSITY_G_CM3):
    """Volume per water molecule in Å³ at the given density."""
    return _WATER_MASS_G_MOL / _AVOGADRO / density_g_cm3 * 1e24


def _random_rotations(rng, n):
    """(n, 3, 3) uniformly distributed rotation matrices (from random unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )


def water_box(n_molecules, seed=0, density=WATER_DENSITY_G_CM3, jitter=0.15):
    """A periodic cubic box of rigid water molecules at the given density.

    Molecules sit on the sites of a cubic grid (``ceil(n**(1/3))`` per side; when
    ``n_molecules`` is not a cube, a random subset of the sites is used), each site
    displaced by up to ``jitter`` Å along every axis, each molecule randomly oriented.

    Parameters
    ----------
    n_molecules : int, >= 1
        Number of H2O molecules (3 * n_molecules atoms, ordered O H H, O H H, ...).
    seed : int
        Seed of the random numbers (jitter, orientations, site choice).
    density : float, g/cm³
    jitter : float, Å

    Returns
    -------
    ase.Atoms
        Periodic in all three directions, positions wrapped into the cell.
    """
    from ase import Atoms

    n_molecules = int(n_molecules)
    if n_molecules < 1:
        raise ValueError(f"`n_molecules` must be >= 1, got {n_molecules}")
    rng = np.random.default_rng(seed)
    length = (n_molecules * _molecule_volume(density)) ** (1.0 / 3.0)
    side = int(np.ceil(n_molecules ** (1.0 / 3.0) - 1e-9))
    spacing = length / side
    grid = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    if len(grid) > n_molecules:
        grid = grid[np.sort(rng.choice(len(grid), n_molecules, replace=False))]
    centres_mc = (grid + 0.5) * spacing + rng.uniform(-jitter, jitter, size=(n_molecules, 3))
    half = 0.5 * _HOH_ANGLE
    # body frame: O at the origin, H atoms in the xz plane
    body_ac = np.array(
        [
            [0.0, 0.0, 0.0],
            [_OH_BOND * np.sin(half), 0.0, _OH_BOND * np.cos(half)],
            [-_OH_BOND * np.sin(half), 0.0, _OH_BOND * np.cos(half)],
        ]
    )
    rot_mcc = _random_rotations(rng, n_molecules)
    pos = centres_mc[:, None, :] + np.einsum("mij,aj->mai", rot_mcc, body_ac)
    atoms = Atoms(
        "OH2" * n_molecules,
        positions=pos.reshape(-1, 3),
        cell=np.eye(3) * length,
        pbc=True,
    )
    atoms.wrap()
    return atoms


def water_system(n_atoms, seed=0, max_base_molecules=1000):
    """A water box of about ``n_atoms`` atoms: a base box replicated r×r×r.

    Up to ``3 * max_base_molecules`` atoms the box is built directly; above, a base box of
    ``round(n_atoms / 3 / r³)`` molecules is replicated r³ times with the smallest r that
    keeps the base at most ``max_base_molecules``. 3000 -> 3000 atoms (10³ molecules),
    100 000 -> 100 032 atoms (521 molecules × 4³), 100 -> 99 atoms.

    Parameters
    ----------
    n_atoms : int, >= 3
    seed : int

    Returns
    -------
    ase.Atoms
        Periodic water at 1 g/cm³; ``len(atoms)`` is within a few atoms of `n_atoms`.
    """
    n_mol = max(1, int(round(n_atoms / 3)))
    if n_mol <= max_base_molecules:
        return water_box(n_mol, seed=seed)
    r = int(np.ceil((n_mol / max_base_molecules) ** (1.0 / 3.0) - 1e-9))
    base = water_box(int(round(n_mol / r**3)), seed=seed)
    return base.repeat((r, r, r))


def tantalum_bcc(repeat=12, lattice=_TA_LATTICE):
    """bcc tantalum, ``repeat``³ conventional cells (2 atoms each; 12 -> 3456 atoms).

    Returns
    -------
    ase.Atoms
        Periodic, masses set to the LAMMPS example value (180.88 u).
    """
    from ase.build import bulk

    atoms = bulk("Ta", "bcc", a=lattice, cubic=True).repeat((repeat, repeat, repeat))
    atoms.set_masses(np.full(len(atoms), _TA_MASS))
    return atoms


def replicate_to(atoms, n_min):
    """`atoms` repeated along its cell vectors (as evenly as possible) to at least `n_min` atoms."""
    reps = [1, 1, 1]
    lengths = atoms.cell.lengths()
    while len(atoms) * reps[0] * reps[1] * reps[2] < n_min:
        k = int(np.argmin([lengths[c] * reps[c] for c in range(3)]))
        reps[k] += 1
    return atoms.repeat(tuple(reps))


def _cache_dir(*parts):
    import pathlib

    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fastfeat-bench"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def benchmark_model_path(species=("H", "O"), hidden=(64, 64), seed=0, preset="default", head="projection"):
    """An ONNX force model with random weights, for timing only (needs torch: fastfeat[train]).

    The graph is exactly what ``fastfeat train`` exports for ``FeatureSpec.default(species, preset)``
    with the given hidden widths and head (the projection head with Gram inputs, the basis head
    without, as the bundled models); only the weights are untrained, and the
    output scale is 1e-3 so that the forces stay small (MD timings without blow-up). The file
    is cached under ``~/.cache/fastfeat-bench/models``.
    """
    import hashlib
    import importlib.util

    import fastfeat

    spec = fastfeat.FeatureSpec.default(tuple(species), preset=preset)
    exporter = hashlib.sha256()
    # a changed exporter or network makes a new graph; their files are located without importing them
    # (they import torch, which a cached model does not need)
    for name in ("fastfeat.train.export", "fastfeat.train.model", "fastfeat.train._defaults"):
        source = importlib.util.find_spec(name).origin
        with open(source, "rb") as fh:
            exporter.update(fh.read())
    exporter = exporter.hexdigest()
    key = hashlib.sha256(f"{spec.to_json()}|{tuple(hidden)}|{head}|{seed}|{fastfeat.__version__}|{exporter}".encode()).hexdigest()[:16]
    path = _cache_dir("models") / f"random-{'-'.join(species)}-{key}.onnx"
    if not path.exists():
        import torch

        from fastfeat.train.export import export_onnx
        from fastfeat.train.model import StaggeredNetwork

        torch.manual_seed(seed)
        net = StaggeredNetwork(spec, hidden=hidden, head=head, gram=head == "projection")
        with torch.no_grad():
            net.output_scale.fill_(1e-3)
        tmp = path.with_suffix(f".{os.getpid()}.onnx")
        export_onnx(net, tmp, validation={"note": "random weights, benchmark only"})
        os.replace(tmp, path)
    return str(path)


def force_model(kind="auto", device="cpu", threads=1):
    """(ForceModel, structure_fn, label) for runtime benchmarks.

    kind="bundled": the bundled "peo" model and a replicated frame of its data set;
    kind="random": a random-weight H/O model (:func:`benchmark_model_path`) and water boxes;
    kind="auto": bundled when available, else random. ``structure_fn(n_atoms)`` returns a
    structure of at least about n_atoms atoms.
    """
    from fastfeat.runtime import ForceModel

    if kind in ("auto", "bundled"):
        try:
            from fastfeat.train import datasets

            model = ForceModel.pretrained("peo", device=device, intra_op_threads=threads)
            frame = datasets.load("peo", split="train")[0]
            frame.calc = None
            return model, (lambda n: replicate_to(frame, n)), "bundled peo model, replicated PEO frame"
        except Exception:
            if kind == "bundled":
                raise
    model = ForceModel.load(benchmark_model_path(("H", "O")), device=device, intra_op_threads=threads)
    return model, water_system, "random-weight H/O model (default spec, hidden 64-64), water"


def ani1x_spec():
    """FeatureSpec.default(("H", "C", "N", "O"), preset="ani1x"): 384 invariants, 64 covariants."""
    import fastfeat

    return fastfeat.FeatureSpec.default(ANI_SPECIES, preset="ani1x")


_THREAD_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(n_threads, env=None):
    """A copy of `env` (default os.environ) with every thread-count variable set to n_threads."""
    out = dict(os.environ if env is None else env)
    for k in _THREAD_VARS:
        out[k] = str(int(n_threads))
    return out


def set_threads(n_threads):
    """Set the thread count of this process for numba and torch (and the env for children).

    Call before heavy imports when possible; NUMBA_NUM_THREADS only takes effect before numba
    starts its thread pool, so compare scripts are started with :func:`thread_env`.
    """
    n = int(n_threads)
    for k in _THREAD_VARS:
        os.environ[k] = str(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # numba absent: nothing to set
        pass
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)


def interleaved_medians(fns, repeats, warmup=1, per_round=None):
    """Time several callables side by side: round-robin, one call each per round.

    Interleaving spreads the noise of a shared machine evenly over all contenders.

    Parameters
    ----------
    fns : dict of name -> zero-argument callable
    repeats : int, number of timed rounds
    warmup : int, untimed rounds first (JIT, caches, allocator)
    per_round : dict of name -> int, optional
        Calls of that contender per round (default 1): a cheap contender gets more samples
        without more rounds of the costly ones.

    Returns
    -------
    dict of name -> {"median_s", "min_s", "repeats", "times_s", "warmup"}
    """
    per_round = per_round or {}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            for _ in range(per_round.get(k, 1)):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "repeats": len(v), "times_s": v, "warmup": warmup}
        for k, v in times.items()
    }


def _cpu_model():
    from fastfeat._device import cpu_description

    return cpu_description()


def machine_info(packages=("numpy", "numba", "fastfeat", "torch", "torchani", "dscribe", "vesin", "matscipy", "ase", "lammps")):
    """Machine and software facts for result files."""
    from importlib import metadata

    versions = {}
    for p in packages:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "threads": {k: os.environ.get(k) for k in _THREAD_VARS},
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
