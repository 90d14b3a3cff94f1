"""CUDA neighbour list and features vs the CPU path, in the Numba CUDA simulator.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before Numba is
imported, so the CUDA side runs once, in a subprocess that executes this file
as a script: it computes every case below on the (simulated) device and saves
the results. The tests then compute the same cases on the CPU path of
fastfeat, in this process, and compare. Inputs are tiny (the simulator runs
every GPU thread as a Python thread).

On a machine with a real GPU, ``FASTFEAT_TEST_REAL_GPU=1 pytest
tests/core/test_cuda.py`` runs the device side on the GPU instead of the
simulator (same comparisons).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

SPEC_KW = dict(
    species=("H", "O"),
    cutoff=3.5,
    angular_cutoff=2.6,
    radial=[(1.0, 1.0), (0.5, 2.0), (2.0, 2.8)],
    angular=[(0.1, 1.0, 1.0), (0.2, 2.0, -1.0), (0.1, 1.5, 1.0), (0.05, 4.0, -1.0)],
    covariant=[(1.0, 1.5), (0.3, 2.5)],
)
#: with angular covariant vectors W (a non-integral zeta among them)
W_PARAMS = [(0.1, 1.0, 1.0), (0.2, 2.0, -1.0), (0.05, 1.5, 1.0)]


# ----------------------------------------------------------------- the cases
def _structure(seed, n, cell, min_dist=0.8, species=(1, 8)):
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=np.float64)
    pos = []
    while len(pos) < n:
        p = rng.random(3) @ cell
        if all(np.linalg.norm(p - q) > min_dist for q in pos):
            pos.append(p)
    pos = np.array(pos).reshape(-1, 3)
    pos += rng.normal(scale=1.5, size=pos.shape) * (rng.random((len(pos), 1)) < 0.3)  # some atoms outside the cell
    return pos, rng.choice(np.array(species), len(pos))


#: a translation of a whole frame (unwrapped MD far from the origin)
FAR_SHIFT = np.array([1.0e4, -2.5e4, 7.0e3])


def SPREAD_CELLS(n):
    """Integer lattice translations per atom (periodic axes 0 and 2 of the "feat" case): unwrapped MD, a large
    box."""
    t = np.random.default_rng(11).integers(-100, 101, (n, 3))
    t[:, 1] = 0
    return t
TRICLINIC = np.array([[4.6, 0.0, 0.0], [1.2, 4.1, 0.0], [0.6, -0.9, 4.4]])
LEFT_HANDED = np.array([[-4.0, 0.3, 0.0], [0.5, 4.2, 0.1], [0.2, 0.4, 3.9]])
SMALL = np.array([[2.4, 0.0, 0.0], [0.7, 2.2, 0.0], [0.3, 0.5, 2.5]])


def cases():
    """Deterministic inputs: name -> dict."""
    c = {}
    pos, z = _structure(1, 14, TRICLINIC)
    c["nl_triclinic"] = dict(pos=pos, cell=TRICLINIC, pbc=[True, False, True], cutoff=3.0, dtype="float64")
    pos, z = _structure(2, 8, LEFT_HANDED)
    c["nl_left_handed"] = dict(pos=pos, cell=LEFT_HANDED, pbc=[True, True, True], cutoff=3.2, dtype="float32")
    pos, z = _structure(3, 5, SMALL, min_dist=0.9)
    c["nl_cutoff_above_cell"] = dict(pos=pos, cell=SMALL, pbc=[True, True, False], cutoff=5.5, dtype="float64")
    pos, z = _structure(4, 10, np.eye(3) * 5.0)
    c["nl_cluster"] = dict(pos=pos, cell=np.zeros((3, 3)), pbc=[False, False, False], cutoff=2.5, dtype="float64")
    c["nl_empty"] = dict(pos=np.zeros((0, 3)), cell=TRICLINIC, pbc=[True, True, True], cutoff=3.0, dtype="float64")
    # lattice distance equal to the cutoff: both images of each tie, or neither (a symmetric full list)
    c["nl_tie"] = dict(pos=np.array([[0.3, 0.7, 1.1], [1.9, 2.3, 0.4]]), cell=np.eye(3) * 3.0, pbc=[True, True, True],
                       cutoff=3.0, dtype="float64")

    # sparse boxes, where the O(N) grid cap would widen the bins (fastfeat._box): two clusters 100 Å apart
    # without periodicity (gap compression), and a cluster across the boundary of a 60 Å periodic
    # triclinic cell, some atoms wrapped and some not (periodic axes cut at the empty stretch)
    p1, _ = _structure(12, 6, np.eye(3) * 3.0)
    p2, _ = _structure(13, 5, np.eye(3) * 3.0)
    c["nl_sparse_clusters"] = dict(pos=np.vstack([p1, p2 + [60.0, -20.0, 80.0]]), cell=np.zeros((3, 3)),
                                   pbc=[False, False, False], cutoff=2.5, dtype="float64")
    big = np.array([[60.0, 0.0, 0.0], [8.0, 57.0, 0.0], [-5.0, 4.0, 62.0]])
    pos, z = _structure(14, 12, np.eye(3) * 4.0, min_dist=1.0)
    pos -= 2.0
    pos[::2] -= np.floor(pos[::2] @ np.linalg.inv(big)) @ big
    c["nl_big_box"] = dict(pos=pos, cell=big, pbc=[True, True, True], cutoff=2.5, dtype="float32")
    c["feat_big_box"] = dict(pos=pos, z=z, cell=big, pbc=[True, False, True])
    # atoms scattered over that cell around a small cluster: no stretch to cut, the grid equalises each axis's
    # density (periodic axes mapped too, images kept); taken with _box._STILL_CROWDED lowered (_vapour_grids)
    pos, z = _structure(20, 16, np.eye(3) * 4.0, min_dist=1.0)
    vapour = np.random.default_rng(20).random((10, 3)) @ big
    c["vapour"] = dict(pos=np.vstack([pos - 2.0, vapour]), z=np.concatenate([z, z[:10]]), cell=big,
                       pbc=[True, False, True], cutoff=2.5, dtype="float64")

    pos, z = _structure(5, 16, TRICLINIC, min_dist=0.9)
    c["feat"] = dict(pos=pos, z=z, cell=TRICLINIC, pbc=[True, False, True])
    b1 = _structure(6, 6, SMALL, min_dist=1.0)
    b3 = _structure(7, 7, np.eye(3) * 4.0)
    c["batch"] = [
        dict(pos=b1[0], z=b1[1], cell=SMALL, pbc=[True, True, True]),
        dict(pos=np.zeros((0, 3)), z=np.zeros(0, np.int64), cell=TRICLINIC, pbc=[True, True, True]),
        dict(pos=b3[0], z=b3[1], cell=np.zeros((3, 3)), pbc=[False, False, False]),
    ]
    pos, z = _structure(8, 10, LEFT_HANDED, min_dist=1.0)
    rng = np.random.default_rng(9)
    steps = [pos]
    for k in range(4):
        steps.append(steps[-1] + rng.normal(scale=0.08, size=pos.shape))
    cells = [LEFT_HANDED] * 4 + [LEFT_HANDED * 1.02]
    zs = [z] * 5
    # then: other species at the same positions, and fewer atoms (both force a rebuild)
    steps += [steps[-1], steps[-1][:7]]
    cells += [cells[-1], cells[-1]]
    zs += [np.where(z == 1, 8, 1), z[:7]]
    c["md"] = dict(steps=steps, zs=zs, cells=cells, pbc=[True, True, True], skin=0.5)

    pos, z = _structure(11, 9, np.eye(3) * 4.0, min_dist=1.0, species=(1, 6, 7, 8))
    c["ani"] = dict(pos=pos, z=z, cell=np.zeros((3, 3)), pbc=[False, False, False])

    pos, z = _structure(10, 9, TRICLINIC)
    bad = pos.copy()
    bad[7] = bad[3]
    c["err_overlap"] = dict(pos=bad, z=z, cell=TRICLINIC, pbc=[True, True, True])
    z_bad = z.copy()
    z_bad[4] = 6
    c["err_species"] = dict(pos=pos, z=z_bad, cell=TRICLINIC, pbc=[True, True, True])
    nan = pos.copy()
    nan[5, 1] = np.nan
    c["err_nan"] = dict(pos=nan, z=z, cell=TRICLINIC, pbc=[True, True, True])
    c["err_images"] = dict(pos=pos[:2] * 0.01, cell=np.eye(3) * 0.05, pbc=[True, True, True], cutoff=6.0)
    far_out = np.array([[0.5, 0.5, 0.5], [1.0, 1.2, 0.9], [1.0e10, 0.3, 0.2]])  # 3.3e9 cells out on axis 0
    c["err_wrap"] = dict(pos=far_out, cell=np.eye(3) * 3.0, pbc=[True, True, True], cutoff=2.0)
    return c


def spec():
    import fastfeat

    return fastfeat.FeatureSpec(**SPEC_KW)


def spec_big_zeta():
    """zeta far beyond float32's exponent range (2^(1 - zeta) and (1 + lambda cos)^zeta apart over/underflow)."""
    import fastfeat

    kw = dict(SPEC_KW, angular=[(0.1, 300.0, 1.0), (0.05, 2000.0, -1.0), (0.1, 150.5, 1.0)],
              covariant_angular=[(0.1, 400.0, 1.0), (0.05, 180.5, -1.0)])
    return fastfeat.FeatureSpec(**kw)


def spec_w(with_g4=True):
    import fastfeat

    kw = dict(SPEC_KW, covariant_angular=W_PARAMS)
    if not with_g4:
        kw["angular"] = []
    return fastfeat.FeatureSpec(**kw)


#: species of the seeded random specs (see random_specs), one spec each: the "feat" case's H and O, and C
#: (absent from the structure) in one
RANDOM_SPEC_SPECIES = [("H", "O"), ("O", "H"), ("H", "C", "O"), ("H", "O")]


def random_specs():
    """Seeded random specs, as test_properties draws them for the CPU kernels: equally spaced, steep
    (45 Å^-2) and scattered shells; G4 and W parameters with repeated and multiple etas (0 among them),
    integral and non-integral zetas, both lambdas; C, absent from the structure, in one of them; the
    angular cutoff equal to the cutoff in the last."""
    import fastfeat

    out = []
    for s, species in enumerate(RANDOM_SPEC_SPECIES):
        rng = np.random.default_rng(100 + s)
        cutoff = float(rng.uniform(2.8, 4.0))
        acut = cutoff if s == 3 else float(rng.uniform(1.5, cutoff))

        def shells(n):
            if rng.random() < 0.5:
                return [(float(rng.uniform(0.0, 20.0)), float(rng.uniform(0.0, cutoff))) for _ in range(n)]
            eta = float(rng.choice([0.0, 1.0, 4.0, 45.0]))
            return [(eta, float(r)) for r in np.linspace(rng.uniform(0.0, 1.0), cutoff, n)]

        def triplets(lo, hi):
            etas, zetas = [0.0, 0.01, 0.02, 0.04, 0.37], [1.0, 2.0, 3.0, 8.0, 1.5, 2.7]
            return [(float(rng.choice(etas)), float(rng.choice(zetas)), float(rng.choice([1.0, -1.0])))
                    for _ in range(int(rng.integers(lo, hi)))]

        out.append(fastfeat.FeatureSpec(species, cutoff, acut, radial=shells(int(rng.integers(1, 9))),
                                        angular=triplets(1, 7), covariant=shells(int(rng.integers(1, 7))),
                                        covariant_angular=triplets(0 if s == 1 else 1, 4)))
    return out


def _catch(fn):
    try:
        fn()
    except Exception as exc:  # the message is compared with the CPU path's
        return f"{type(exc).__name__}: {exc}"
    return "no error"


# ------------------------------------------------------- the device side (script)
class _vapour_grids:
    """Within: the simulator-sized vapour case takes the density-equalised grid (fastfeat._box._equalized_axis),
    which needs an adapted grid more crowded than _box._STILL_CROWDED times the ideal otherwise."""

    def __enter__(self):
        from fastfeat import _box

        self.saved = _box._STILL_CROWDED
        _box._STILL_CROWDED = 1.0

    def __exit__(self, *exc):
        from fastfeat import _box

        _box._STILL_CROWDED = self.saved


def _adapt_tiny_sparse_boxes():
    """Let the simulator-sized sparse cases (about ten atoms) take the adapted grid, which only
    structures of fastfeat._box._ADAPT_MIN_ATOMS atoms and crowded capped grids get otherwise."""
    from fastfeat import _box

    _box._ADAPT_MIN_ATOMS = 2
    _box._CROWDED = 1.0


def run_device(out_path):
    """Every case on the device; results to an .npz plus a JSON of messages and timings."""
    import fastfeat
    from fastfeat import _features_cuda
    from numba import cuda

    if hasattr(sys, "setswitchinterval"):
        sys.setswitchinterval(1e-4)  # the simulator's threads meet at barriers constantly

    def host(x):
        return x.get() if hasattr(x, "get") else x.copy_to_host()

    _adapt_tiny_sparse_boxes()
    t_start = time.perf_counter()
    res, meta, times = {}, {}, {}
    sp = spec()
    c = cases()
    for name in ("nl_triclinic", "nl_left_handed", "nl_cutoff_above_cell", "nl_cluster", "nl_empty", "nl_tie",
                 "nl_sparse_clusters", "nl_big_box"):
        t = time.perf_counter()
        k = c[name]
        pos = k["pos"].astype(k["dtype"])
        for sort in (False, True):
            nl = fastfeat.neighbor_list(pos, k["cell"], k["pbc"], k["cutoff"], sorted=sort, device="cuda")
            for field, arr in zip(nl._fields, nl):
                res[f"{name}/{sort}/{field}"] = host(arr)
        times[name] = time.perf_counter() - t

    k = c["feat"]
    for dt in ("float64", "float32"):
        t = time.perf_counter()
        f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp,
                               device="cuda", dtype=dt)
        res[f"feat/{dt}/g"], res[f"feat/{dt}/v"], res[f"feat/{dt}/species"] = (
            host(f.invariant), host(f.covariant), host(f.species))
        times[f"feat/{dt}"] = time.perf_counter() - t

    t = time.perf_counter()  # a sparse box: the grid from downloaded positions (periodic axes cut)
    kb = c["feat_big_box"]
    f = fastfeat.featurize(positions=kb["pos"], numbers=kb["z"], cell=kb["cell"], pbc=kb["pbc"], spec=sp,
                           device="cuda", dtype=np.float64)
    res["feat_big_box/g"], res["feat_big_box/v"] = host(f.invariant), host(f.covariant)
    times["feat_big_box"] = time.perf_counter() - t

    t = time.perf_counter()  # scattered atoms: the density-equalised grid (periodic axes mapped)
    kv = c["vapour"]
    with _vapour_grids():
        for sort in (False, True):
            nl = fastfeat.neighbor_list(kv["pos"], kv["cell"], kv["pbc"], kv["cutoff"], sorted=sort, device="cuda")
            for field, arr in zip(nl._fields, nl):
                res[f"vapour/{sort}/{field}"] = host(arr)
        f = fastfeat.featurize(positions=kv["pos"], numbers=kv["z"], cell=kv["cell"], pbc=kv["pbc"], spec=sp,
                               device="cuda", dtype=np.float64)
        res["vapour/g"], res["vapour/v"] = host(f.invariant), host(f.covariant)
    times["vapour"] = time.perf_counter() - t

    t = time.perf_counter()  # device arrays in (positions and numbers), float32 compute from float64 input
    f = fastfeat.featurize(positions=cuda.to_device(k["pos"]), numbers=cuda.to_device(k["z"]), cell=k["cell"],
                           pbc=k["pbc"], spec=sp, device="cuda", dtype=np.float32)
    res["feat_device_in/g"], res["feat_device_in/v"] = host(f.invariant), host(f.covariant)
    times["feat_device_in"] = time.perf_counter() - t

    t = time.perf_counter()  # float32 features of a frame 1e4 Å from the origin (unwrapped MD)
    far = k["pos"] + FAR_SHIFT
    for label, p in (("host", far), ("device", cuda.to_device(far))):
        f = fastfeat.featurize(positions=p, numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp, device="cuda",
                               dtype=np.float32)
        res[f"far/{label}/g"], res[f"far/{label}/v"] = host(f.invariant), host(f.covariant)
    fz = fastfeat.Featurizer(sp, device="cuda", dtype=np.float32, skin=0.5)
    fz(far, k["z"], k["cell"], k["pbc"])
    g, v = fz(far + 0.01, k["z"], k["cell"], k["pbc"])  # reused list
    res["far/featurizer/g"], res["far/featurizer/v"] = host(g), host(v)
    # every atom moved by its own lattice vectors, up to ~100 cells (~500 Å) from atom 0 along the periodic axes
    spread = k["pos"] + SPREAD_CELLS(len(k["pos"])) @ k["cell"]
    f = fastfeat.featurize(positions=spread, numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp, device="cuda",
                           dtype=np.float32)
    res["spread/host/g"], res["spread/host/v"] = host(f.invariant), host(f.covariant)
    fz = fastfeat.Featurizer(sp, device="cuda", dtype=np.float32, skin=0.5)
    fz(spread - 0.01, k["z"], k["cell"], k["pbc"])
    g, v = fz(spread, k["z"], k["cell"], k["pbc"])  # reused list, displaced since its build
    res["spread/featurizer/g"], res["spread/featurizer/v"] = host(g), host(v)
    times["far"] = time.perf_counter() - t

    t = time.perf_counter()  # angular neighbours beyond the warp's shared-memory list
    _features_cuda.ANGULAR_CAPACITY = 2
    try:
        f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp,
                               device="cuda", dtype=np.float64)
    finally:
        _features_cuda.ANGULAR_CAPACITY = 64
    res["feat_overflow/g"], res["feat_overflow/v"] = host(f.invariant), host(f.covariant)
    times["feat_overflow"] = time.perf_counter() - t

    t = time.perf_counter()  # a spec whose accumulators do not fit in shared memory: thread per atom
    _features_cuda._SHARED_LIMIT = 0
    try:
        f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp,
                               device="cuda", dtype=np.float32)
    finally:
        _features_cuda._SHARED_LIMIT = 48 * 1024
    res["feat_thread/g"], res["feat_thread/v"] = host(f.invariant), host(f.covariant)
    times["feat_thread"] = time.perf_counter() - t

    t = time.perf_counter()  # the benchmark's spec: 16 lanes per neighbour, 32 G4 columns per pair block
    k = c["ani"]
    f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"],
                           spec=fastfeat.FeatureSpec.default(("H", "C", "N", "O"), preset="ani1x"),
                           device="cuda", dtype=np.float32)
    res["ani/g"], res["ani/v"] = host(f.invariant), host(f.covariant)
    times["ani"] = time.perf_counter() - t

    t = time.perf_counter()  # angular covariant vectors W: warp kernel, overflow and thread paths, no G4
    k = c["feat"]
    for label, kw, cap, limit in (("warp/float64", {}, 64, 48 * 1024), ("warp/float32", {}, 64, 48 * 1024),
                                  ("overflow/float64", {}, 2, 48 * 1024), ("thread/float32", {}, 64, 0),
                                  ("nog4/float32", dict(with_g4=False), 64, 48 * 1024)):
        _features_cuda.ANGULAR_CAPACITY, _features_cuda._SHARED_LIMIT = cap, limit
        try:
            f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"],
                                   spec=spec_w(**kw), device="cuda", dtype=label.split("/")[1])
        finally:
            _features_cuda.ANGULAR_CAPACITY, _features_cuda._SHARED_LIMIT = 64, 48 * 1024
        res[f"w/{label}/g"], res[f"w/{label}/v"] = host(f.invariant), host(f.covariant)
    for label, limit in (("warp", 48 * 1024), ("thread", 0)):  # zeta of hundreds to 2000, float32
        _features_cuda._SHARED_LIMIT = limit
        try:
            f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"],
                                   spec=spec_big_zeta(), device="cuda", dtype=np.float32)
        finally:
            _features_cuda._SHARED_LIMIT = 48 * 1024
        res[f"zeta/{label}/g"], res[f"zeta/{label}/v"] = host(f.invariant), host(f.covariant)
    k = c["ani"]  # the "angular" preset, four species (six unlike pairs)
    f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"],
                           spec=fastfeat.FeatureSpec.default(("H", "C", "N", "O"), preset="angular"),
                           device="cuda", dtype=np.float32)
    res["w/ani/g"], res["w/ani/v"] = host(f.invariant), host(f.covariant)
    m = c["md"]
    fz = fastfeat.Featurizer(spec_w(), device="cuda", dtype=np.float64, skin=m["skin"])
    for s in range(3):
        g, v = fz(m["steps"][s], m["zs"][s], m["cells"][s], m["pbc"])
        res[f"w/md/{s}/g"], res[f"w/md/{s}/v"] = host(g), host(v)
    times["w"] = time.perf_counter() - t

    t = time.perf_counter()  # random specs: warp kernel and thread per atom
    k = c["feat"]
    for i, rs in enumerate(random_specs()):
        for label, limit in (("warp", 48 * 1024), ("thread", 0)):
            _features_cuda._SHARED_LIMIT = limit
            try:
                f = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=rs,
                                       device="cuda", dtype=np.float64)
            finally:
                _features_cuda._SHARED_LIMIT = 48 * 1024
            res[f"random/{i}/{label}/g"], res[f"random/{i}/{label}/v"] = host(f.invariant), host(f.covariant)
    times["random"] = time.perf_counter() - t

    t = time.perf_counter()
    atoms = [_atoms(s) for s in c["batch"]]
    f = fastfeat.featurize(atoms, sp, device="cuda", dtype=np.float64)
    res["batch/g"], res["batch/v"], res["batch/offsets"] = host(f.invariant), host(f.covariant), f.offsets
    times["batch"] = time.perf_counter() - t

    t = time.perf_counter()
    m = c["md"]
    fz = fastfeat.Featurizer(sp, device="cuda", dtype=np.float64, skin=m["skin"])
    rebuilds = []
    for s, (pos, z, cell) in enumerate(zip(m["steps"], m["zs"], m["cells"])):
        p = cuda.to_device(pos) if s % 2 else pos  # device and host positions
        g, v = fz(p, cuda.to_device(z) if s == 5 else z, cell, m["pbc"])
        res[f"md/{s}/g"], res[f"md/{s}/v"] = host(g), host(v)
        rebuilds.append(fz.n_rebuilds)
    meta["md_rebuilds"] = rebuilds
    times["md"] = time.perf_counter() - t

    t = time.perf_counter()
    f = fastfeat.featurize(positions=np.zeros((0, 3)), numbers=np.zeros(0, int), cell=TRICLINIC, pbc=True,
                           spec=sp, device="cuda")
    meta["empty_shapes"] = [list(f.invariant.shape), list(f.covariant.shape), list(f.species.shape)]
    for name in ("err_overlap", "err_species", "err_nan"):
        k = c[name]
        meta[name] = _catch(lambda: fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"],
                                                       pbc=k["pbc"], spec=sp, device="cuda"))
    k = c["err_nan"]
    meta["err_nan_device"] = _catch(lambda: fastfeat.neighbor_list(cuda.to_device(k["pos"]), k["cell"], k["pbc"],
                                                                   3.0, device="cuda"))
    meta["err_nan_featurizer"] = _catch(lambda: fastfeat.Featurizer(sp, device="cuda")(
        cuda.to_device(k["pos"]), k["z"], k["cell"], k["pbc"]))
    k = c["err_species"]
    meta["err_species_device"] = _catch(lambda: fastfeat.featurize(
        positions=k["pos"], numbers=cuda.to_device(k["z"]), cell=k["cell"], pbc=k["pbc"], spec=sp, device="cuda"))
    k = c["err_images"]
    meta["err_images"] = _catch(lambda: fastfeat.neighbor_list(k["pos"], k["cell"], k["pbc"], k["cutoff"],
                                                               device="cuda"))
    k = c["err_wrap"]
    meta["err_wrap"] = _catch(lambda: fastfeat.neighbor_list(k["pos"], k["cell"], k["pbc"], k["cutoff"],
                                                             device="cuda"))
    # a Featurizer whose rebuild fails (atom 3 beyond MAX_WRAP cells) refuses every call at those positions, and
    # builds afresh when they are good again (the failed rebuild left no stale list behind)
    k = c["feat"]
    fz = fastfeat.Featurizer(sp, device="cuda", dtype=np.float64, skin=0.5)
    fz(k["pos"], k["z"], k["cell"], k["pbc"])
    bad = k["pos"].copy()
    bad[3] += 3.0e9 * k["cell"][0]
    meta["err_wrap_featurizer"] = [_catch(lambda: fz(bad, k["z"], k["cell"], k["pbc"])) for _ in range(2)]
    g, v = fz(k["pos"], k["z"], k["cell"], k["pbc"])
    res["wrap_recovered/g"], res["wrap_recovered/v"] = host(g), host(v)
    times["errors"] = time.perf_counter() - t
    meta["times"] = times
    meta["total_s"] = time.perf_counter() - t_start
    np.savez(out_path, **res)
    Path(str(out_path) + ".json").write_text(json.dumps(meta))


def _atoms(s):
    from ase import Atoms

    return Atoms(numbers=s["z"], positions=s["pos"], cell=s["cell"], pbc=s["pbc"])


# ------------------------------------------------------------------ the tests
def _numba_cuda_importable():
    try:
        import numba.cuda  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    if not _numba_cuda_importable():
        pytest.skip("numba-cuda is not installed (pip install numba-cuda): the CUDA simulator is unavailable")
    out = tmp_path_factory.mktemp("cuda") / "device.npz"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    args = [sys.executable, __file__, str(out)]
    if os.environ.get("FASTFEAT_TEST_REAL_GPU") == "1":
        env.pop("NUMBA_ENABLE_CUDASIM")
        args.append("--gpu")
    t = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"the simulator run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    meta = json.loads(Path(str(out) + ".json").read_text())
    meta["wall_s"] = time.perf_counter() - t
    print("CUDA simulator run:", json.dumps(meta["times"]), f"total {meta['total_s']:.1f} s")
    return dict(np.load(out)), meta


def _cpu_nl(k, sort):
    import fastfeat

    return fastfeat.neighbor_list(k["pos"].astype(k["dtype"]), k["cell"], k["pbc"], k["cutoff"], sorted=sort)


@pytest.mark.cudasim
@pytest.mark.parametrize("name", ["nl_triclinic", "nl_left_handed", "nl_cutoff_above_cell", "nl_cluster", "nl_empty",
                                  "nl_tie", "nl_sparse_clusters", "nl_big_box"])
@pytest.mark.parametrize("sort", [False, True])
def test_neighbor_list_equals_cpu(device, name, sort):
    res, _ = device
    k = cases()[name]
    ref = _cpu_nl(k, sort)
    if name != "nl_empty":
        assert len(ref.i) > 0
    from fastfeat._neighbors import NeighborList, sort_pairs

    got_nl = NeighborList(*(res[f"{name}/{sort}/{field}"] for field in ref._fields))
    if not sort:
        # unsorted: pairs of a centre are contiguous and centres ascend on both devices; the order
        # within a centre follows each device's bins (the CPU list uses finer ones), so compare
        # both in the sorted order
        for nl in (ref, got_nl):
            assert np.all(np.diff(nl.i) >= 0)
        ref, got_nl = sort_pairs(ref), sort_pairs(got_nl)
    from tests.reference.neighbors_ref import pair_set

    assert pair_set(got_nl.i, got_nl.j, got_nl.shifts) == pair_set(got_nl.j, got_nl.i, -got_nl.shifts), name
    for field, want, got in zip(ref._fields, ref, got_nl):
        assert got.dtype == want.dtype, (field, got.dtype, want.dtype)
        assert got.shape == want.shape, (field, got.shape, want.shape)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-6 if want.dtype == np.float32 else 1e-12, atol=1e-6,
                                       err_msg=f"{name} {field}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {field}")


def _cpu_features(k, dtype):
    import fastfeat

    return fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=spec(),
                              dtype=dtype)


def _close(got, want, dtype, what):
    scale = max(float(np.abs(want).max()), 1e-300)
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6 * scale, err_msg=what)


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_features_equal_cpu(device, dtype):
    res, _ = device
    ref = _cpu_features(cases()["feat"], dtype)
    n_radial = spec().n_radial
    assert np.abs(ref.invariant[:, n_radial:]).max() > 1e-3, "the case must have G4 terms"
    assert res[f"feat/{dtype}/g"].dtype == np.dtype(dtype)
    _close(res[f"feat/{dtype}/g"], ref.invariant, dtype, "invariant")
    _close(res[f"feat/{dtype}/v"], ref.covariant, dtype, "covariant")
    np.testing.assert_array_equal(res[f"feat/{dtype}/species"], ref.species)


@pytest.mark.cudasim
def test_sparse_box_grids_match_the_cpu_and_features_equal_cpu(device, monkeypatch):
    """The sparse-box cases take the adapted grid on both devices (a cut periodic axis, compressed gaps),
    and the CUDA features of the cluster in the large periodic box equal the CPU's."""
    from fastfeat._box import bin_grid

    from fastfeat import _box

    res, _ = device
    c = cases()
    monkeypatch.setattr(_box, "_ADAPT_MIN_ATOMS", 2)  # as _adapt_tiny_sparse_boxes in the device run
    monkeypatch.setattr(_box, "_CROWDED", 1.0)
    k = c["nl_sparse_clusters"]
    g = bin_grid(k["cell"], k["pbc"], k["cutoff"], len(k["pos"]), positions=k["pos"])
    assert g.sparse and g.n_regions.sum() > 0
    k = c["nl_big_box"]
    g = bin_grid(k["cell"], k["pbc"], k["cutoff"], len(k["pos"]), positions=k["pos"].astype(np.float64))
    assert g.sparse and not g.periodic.any()
    k = c["feat_big_box"]
    ref = _cpu_features(k, "float64")
    _close(res["feat_big_box/g"], ref.invariant, "float64", "G")
    _close(res["feat_big_box/v"], ref.covariant, "float64", "V")


@pytest.mark.cudasim
def test_density_equalised_grid_lists_and_features_equal_cpu(device, monkeypatch):
    """Atoms scattered around a small cluster in a large periodic triclinic cell (lowered thresholds, as in
    the device run): both bin widths take the density-equalised grid, with mapped periodic axes; the CUDA
    pairs, vectors and features equal the CPU's on the same grid."""
    from fastfeat import _box
    from fastfeat._box import bin_grid
    from fastfeat._neighbors import sort_pairs

    from tests.reference.neighbors_ref import pair_set

    res, _ = device
    k = cases()["vapour"]
    monkeypatch.setattr(_box, "_ADAPT_MIN_ATOMS", 2)  # as _adapt_tiny_sparse_boxes and _vapour_grids
    monkeypatch.setattr(_box, "_CROWDED", 1.0)
    monkeypatch.setattr(_box, "_STILL_CROWDED", 1.0)
    for d in (1, 2):
        g = bin_grid(k["cell"], k["pbc"], k["cutoff"], len(k["pos"]), positions=k["pos"], divisions=d)
        assert g.periodic.tolist() == [True, False, True] and (g.region_scale < 1).any(axis=1).all(), d
    for sort in (False, True):
        ref = sort_pairs(_cpu_nl(k, sort))
        got = sort_pairs(type(ref)(*(res[f"vapour/{sort}/{field}"] for field in ref._fields)))
        assert len(ref.i) > 0 and pair_set(got.i, got.j, got.shifts) == pair_set(ref.i, ref.j, ref.shifts)
        np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-12)
    f = _cpu_features(k, "float64")
    _close(res["vapour/g"], f.invariant, "float64", "G")
    _close(res["vapour/v"], f.covariant, "float64", "V")


@pytest.mark.cudasim
def test_features_from_device_arrays(device):
    res, _ = device
    ref = _cpu_features(cases()["feat"], np.float32)
    _close(res["feat_device_in/g"], ref.invariant, np.float32, "invariant")
    _close(res["feat_device_in/v"], ref.covariant, np.float32, "covariant")


@pytest.mark.cudasim
@pytest.mark.parametrize("label", ["host", "device", "featurizer"])
def test_float32_features_far_from_the_origin(device, label):
    """A frame 1e4 Å from the origin: float32 features as precise as at the origin (positions were cast to
    float32 before r_j - r_i was formed: 3e-4 relative error at 1e4 Å, 3e-3 at 1e5 Å)."""
    res, _ = device
    ref = _cpu_features(cases()["feat"], np.float32)
    _close(res[f"far/{label}/g"], ref.invariant, np.float32, "invariant")
    _close(res[f"far/{label}/v"], ref.covariant, np.float32, "covariant")


@pytest.mark.cudasim
@pytest.mark.parametrize("label", ["host", "featurizer"])
def test_float32_features_of_atoms_far_from_each_other_in_the_frame(device, label):
    """Atoms spread over ~100 cells (~500 Å) by lattice translations, one each: the same structure, and float32
    CUDA features as close to the float64 CPU ones as those of the compact frame (the pair vectors are formed in
    float64 at the list build; forming them from float32 coordinates lost 1e-5 relative at 500 Å)."""
    res, _ = device
    ref = _cpu_features(cases()["feat"], np.float64)

    def err(g, v):
        return max(float(np.abs(g - ref.invariant).max() / np.abs(ref.invariant).max()),
                   float(np.abs(v - ref.covariant).max() / np.abs(ref.covariant).max()))

    compact = err(res["feat/float32/g"], res["feat/float32/v"])
    spread = err(res[f"spread/{label}/g"], res[f"spread/{label}/v"])
    assert spread <= 3.0 * compact + 1e-7, (spread, compact)


@pytest.mark.cudasim
def test_features_angular_overflow_path(device):
    """Atoms with more angular neighbours than the warp keeps go to the thread-per-atom kernel."""
    res, _ = device
    ref = _cpu_features(cases()["feat"], np.float64)
    _close(res["feat_overflow/g"], ref.invariant, np.float64, "invariant")
    _close(res["feat_overflow/v"], ref.covariant, np.float64, "covariant")


@pytest.mark.cudasim
def test_features_thread_per_atom_path(device):
    """Specs too large for the warp kernel's shared memory use the thread-per-atom kernel."""
    res, _ = device
    ref = _cpu_features(cases()["feat"], np.float32)
    _close(res["feat_thread/g"], ref.invariant, np.float32, "invariant")
    _close(res["feat_thread/v"], ref.covariant, np.float32, "covariant")


@pytest.mark.cudasim
@pytest.mark.parametrize("preset, key", [("ani1x", "ani"), ("angular", "w/ani")])
def test_four_species_preset_equals_cpu(device, preset, key):
    """The benchmark's spec (16 lanes per neighbour, 32 G4 columns per pair block) and the "angular"
    preset (W of six unlike pairs) on the 4-species case."""
    import fastfeat

    res, _ = device
    k = cases()["ani"]
    sp = fastfeat.FeatureSpec.default(("H", "C", "N", "O"), preset=preset)
    ref = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp,
                             dtype=np.float32)
    assert np.abs(ref.invariant[:, sp.n_radial:]).max() > 1e-3
    if sp.covariant_angular:
        assert np.abs(ref.covariant[:, sp.n_covariant_radial:]).max() > 1e-3
    _close(res[f"{key}/g"], ref.invariant, np.float32, "invariant")
    _close(res[f"{key}/v"], ref.covariant, np.float32, "covariant")


@pytest.mark.cudasim
@pytest.mark.parametrize("label", ["warp/float64", "warp/float32", "overflow/float64", "thread/float32",
                                   "nog4/float32"])
def test_angular_covariant_vectors_equal_cpu(device, label):
    """W vectors of every CUDA path (warp, angular overflow, thread per atom; with and without G4)."""
    import fastfeat

    res, _ = device
    k = cases()["feat"]
    sp = spec_w(with_g4=not label.startswith("nog4"))
    dtype = label.split("/")[1]
    ref = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp, dtype=dtype)
    w = ref.covariant[:, sp.n_covariant_radial:]
    assert np.abs(w).max() > 1e-3, "the case must have W terms"
    assert np.abs(w[:, -len(W_PARAMS):]).max() > 1e-3, "and difference vectors of an unlike pair"
    _close(res[f"w/{label}/g"], ref.invariant, dtype, "invariant")
    _close(res[f"w/{label}/v"], ref.covariant, dtype, "covariant")


@pytest.mark.cudasim
@pytest.mark.parametrize("label", ["warp", "thread"])
@pytest.mark.parametrize("i", range(len(RANDOM_SPEC_SPECIES)))
def test_random_specs_equal_cpu(device, i, label):
    """The CUDA kernels' own compilation of a spec (parameter tables, G4 grid, W factors) on random specs."""
    import fastfeat

    res, _ = device
    k = cases()["feat"]
    sp = random_specs()[i]
    ref = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=sp,
                             dtype=np.float64)
    assert np.abs(ref.invariant[:, sp.n_radial:]).max() > 1e-6, f"the case must have G4 terms: {sp}"
    _close(res[f"random/{i}/{label}/g"], ref.invariant, np.float64, f"invariant, {sp}")
    _close(res[f"random/{i}/{label}/v"], ref.covariant, np.float64, f"covariant, {sp}")


@pytest.mark.cudasim
@pytest.mark.parametrize("label", ["warp", "thread"])
def test_large_zeta_is_finite_and_equals_cpu(device, label):
    """2^(1 - zeta) (1 + lambda cos)^zeta is evaluated as 2 ((1 + lambda cos) / 2)^zeta: finite for any zeta,
    in float32 too (2^(1 - zeta) alone underflows float32 beyond zeta ~150)."""
    import fastfeat

    res, _ = device
    k = cases()["feat"]
    ref = fastfeat.featurize(positions=k["pos"], numbers=k["z"], cell=k["cell"], pbc=k["pbc"], spec=spec_big_zeta(),
                             dtype=np.float64)
    for key in (f"zeta/{label}/g", f"zeta/{label}/v"):
        assert np.isfinite(res[key]).all(), key
    assert np.abs(ref.invariant[:, spec_big_zeta().n_radial:]).max() > 1e-6, "the case must have G4 terms"
    _close(res[f"zeta/{label}/g"], ref.invariant, np.float32, "invariant")
    _close(res[f"zeta/{label}/v"], ref.covariant, np.float32, "covariant")


def _replay_md_on_cpu(res, prefix, sp, n_steps=None):
    """Run the "md" case's steps through a CPU Featurizer, compare each step with the device results
    res[f"{prefix}/{step}/g" | "/v"]; returns the rebuild count after each step."""
    import fastfeat

    m = cases()["md"]
    fz = fastfeat.Featurizer(sp, dtype=np.float64, skin=m["skin"])
    rebuilds = []
    for s, (pos, z, cell) in enumerate(list(zip(m["steps"], m["zs"], m["cells"]))[:n_steps]):
        g, v = fz(pos, z, cell, m["pbc"])
        _close(res[f"{prefix}/{s}/g"], g, np.float64, f"step {s} invariant")
        _close(res[f"{prefix}/{s}/v"], v, np.float64, f"step {s} covariant")
        rebuilds.append(fz.n_rebuilds)
    return rebuilds


@pytest.mark.cudasim
def test_angular_covariant_vectors_featurizer_equals_cpu(device):
    res, _ = device
    _replay_md_on_cpu(res, "w/md", spec_w(), n_steps=3)


@pytest.mark.cudasim
def test_batch_equals_cpu(device):
    import fastfeat

    res, _ = device
    ref = fastfeat.featurize([_atoms(s) for s in cases()["batch"]], spec(), dtype=np.float64)
    np.testing.assert_array_equal(res["batch/offsets"], ref.offsets)
    _close(res["batch/g"], ref.invariant, np.float64, "invariant")
    _close(res["batch/v"], ref.covariant, np.float64, "covariant")


@pytest.mark.cudasim
def test_featurizer_skin_reuse_equals_cpu(device):
    res, meta = device
    rebuilds = _replay_md_on_cpu(res, "md", spec())
    assert meta["md_rebuilds"] == rebuilds
    assert 1 < rebuilds[4] < 5, f"the trajectory must both reuse and rebuild the list: {rebuilds}"
    assert rebuilds[6] == rebuilds[5] + 1 == rebuilds[4] + 2, rebuilds


@pytest.mark.cudasim
def test_empty_structure(device):
    _, meta = device
    s = spec()
    assert meta["empty_shapes"] == [[0, s.n_invariant], [0, s.n_covariant, 3], [0]]


@pytest.mark.cudasim
@pytest.mark.parametrize("name", ["err_overlap", "err_species", "err_nan"])
def test_errors_match_cpu(device, name):
    _, meta = device
    k = cases()[name]
    want = _catch(lambda: _cpu_features(k, np.float32))
    assert want.startswith("ValueError"), want
    assert meta[name] == want


@pytest.mark.cudasim
def test_device_input_errors(device):
    res, meta = device
    assert meta["err_nan_device"].startswith("ValueError: `positions` must be finite"), meta["err_nan_device"]
    assert "for atom 5" in meta["err_nan_device"]
    assert meta["err_nan_featurizer"].startswith("ValueError: `positions` must be finite"), meta["err_nan_featurizer"]
    k = cases()["err_species"]
    assert meta["err_species_device"] == _catch(lambda: _cpu_features(k, np.float32))
    assert meta["err_images"].startswith("ValueError: `cutoff` 6.0 Å is too large"), meta["err_images"]
    # an atom 3e9 cells out: refused as on the CPU (the int32 wrap count would overflow and lose its pairs)
    k = cases()["err_wrap"]
    cpu = _catch(lambda: _cpu_nl(dict(k, dtype="float64"), False))
    assert cpu.startswith("ValueError: `positions` of atom 2 lies more than") and meta["err_wrap"] == cpu, \
        (meta["err_wrap"], cpu)
    first, again = meta["err_wrap_featurizer"]
    assert first == again and first.startswith("ValueError: `positions` of atom 3 lies more than"), (first, again)
    ref = _cpu_features(cases()["feat"], np.float64)
    _close(res["wrap_recovered/g"], ref.invariant, np.float64, "invariant")
    _close(res["wrap_recovered/v"], ref.covariant, np.float64, "covariant")


@pytest.mark.cudasim
def test_simulator_budget(device):
    """The simulator part stays small enough for CI."""
    _, meta = device
    assert meta["total_s"] < 240, meta["times"]


def test_cuda_request_without_gpu_fails_fast():
    """device='cuda' on a machine without a usable GPU: a clear RuntimeError, quickly, never a hang."""
    code = (
        "import numpy as np, fastfeat\n"
        "from fastfeat import _device\n"
        "ok, _ = _device.cuda_available()\n"
        "if ok: print('HAS_GPU'); raise SystemExit(0)\n"
        "spec = fastfeat.FeatureSpec.default(('H', 'O'))\n"
        "pos = np.zeros((2, 3)); pos[1, 0] = 1.0\n"
        "calls = [lambda: fastfeat.neighbor_list(pos, np.eye(3) * 5, True, 2.0, device='cuda'),\n"
        "         lambda: fastfeat.featurize(positions=pos, numbers=[1, 8], cell=np.eye(3) * 5, pbc=True,\n"
        "                                    spec=spec, device='cuda'),\n"
        "         lambda: fastfeat.Featurizer(spec, device='cuda')]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as exc:\n"
        "        assert 'CUDA is not usable' in str(exc), exc\n"
        "        print('OK', exc)\n"
        "    else:\n"
        "        raise AssertionError('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "HAS_GPU" in proc.stdout:
        pytest.skip("a CUDA GPU is available here")
    assert proc.stdout.count("OK") == 3, proc.stdout
    assert elapsed < 60, f"took {elapsed:.1f} s"


def _thread_safe_simulator_shared():
    """Serialise the simulator's shared-array allocation (a race in numba-cuda <= 0.30).

    The simulator runs each GPU thread of a block as a Python thread and hands
    every thread of the block the same NumPy array for ``cuda.shared.array`` by
    a check-then-insert on a dict, without a lock. Two threads that interleave
    there get two different (uninitialised, ``np.empty``) arrays, so a block
    reduction then reads garbage: the bounding box of the neighbour list once came
    back ~1e300 in CI. Real GPUs are not affected; the kernels are unchanged.
    """
    import threading

    from numba.cuda.simulator import kernelapi

    lock = threading.Lock()
    allocate = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0:  # dynamic shared memory: one buffer, no race
            # `alignment` only where given: Numba's own (deprecated) simulator takes (shape, dtype) only
            return allocate(self, shape, dtype) if alignment is None else allocate(self, shape, dtype, alignment)
        # the simulator keys static arrays by the calling line; keep that key (not this wrapper's line)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, kernelapi.types.Type):
                    dtype = kernelapi.numpy_support.as_dtype(dtype)
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: NUMBA_ENABLE_CUDASIM=1 python tests/core/test_cuda.py OUT.npz  (or --gpu on a GPU)")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and "--gpu" not in sys.argv:
        raise SystemExit("set NUMBA_ENABLE_CUDASIM=1 (simulator) or pass --gpu (real device)")
    sys.path.insert(0, str(ROOT))
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        _thread_safe_simulator_shared()
    run_device(sys.argv[1])
