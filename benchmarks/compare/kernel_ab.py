"""Interleaved A/B timing of the CPU feature kernels against an earlier git revision.

    python -m benchmarks.compare.kernel_ab REV [REV ...] [--atoms N] [--threads T] [--system water|peo]

Each revision's ``fastfeat/_kernels/features_cpu.py`` is loaded from git (``git show``) as a
separate module next to the working tree's, the same inputs (water box, ANI-1x-sized spec, and the
spec without G4, and with one G2 + one V; then the H/O ``"angular"`` and ``"angular-short"`` presets,
with the angular covariant vectors W, for revisions that have them) go through every version's ``features`` (list reused,
skin 1 Å) and ``features_cells`` (one-shot) kernels, rounds interleaved, best of 12 rounds.
Outputs are checked to agree before timing. Kernel calls only: no binning, no Python set-up (the
list's grouping by species, once per build, is not timed either).

``--system peo``: the 112-atom PEO test frame, repeated to at least N atoms, with the bundled peo
model's spec (the demo's MD path), and that spec without W, with one G4 and no W, and with one G4
inside 0.5 Å (no angular neighbours: the fixed per-atom cost of any angular term).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import numpy as np

from benchmarks.compare._revision import load_kernel_revision, positions_layout


def _load_revision(rev, folder):
    return load_kernel_revision(rev, "fastfeat/_kernels/features_cpu.py", folder)


def _arguments(mod, fz, pos, species, cell, cl, params, g, v, overlap):
    """(reuse-kernel args, one-shot-kernel args) for one revision's kernels.

    The reuse kernel reads the list as the Featurizer keeps it (rows grouped by species); revisions
    before the grouping (no ``group_by_species``) take the CSR starts and species and sort each row
    themselves. Revisions before the angular covariant vectors take two kernel parameters fewer; those
    before their factorised weights (``wang_p4``) four columns of the parameters.
    """
    kargs = params.args()
    names = _kernel_parameters(mod)
    if "wang_p4" in names:  # four columns per angular covariant parameter then
        kargs = (*kargs[:-2], np.ascontiguousarray(kargs[-2][:, :4]), kargs[-1])
    elif "wang_p" not in names:
        kargs = kargs[:-2]
    if hasattr(mod, "group_by_species"):
        reuse = (pos, fz._seg, fz._j, fz._shiftvec, *kargs, g, v, overlap)
    else:
        start = np.append(fz._seg[:, 0], fz._seg[-1, -1])
        reuse = (pos, species, start, fz._j, fz._shiftvec, *kargs, g, v, overlap)
    # revisions before the column layout of the cell list take its positions as rows
    cells = (positions_layout(mod.features_cells, cl.poss_cn), species[cl.order], cell, cl.grid.periodic,
             cl.grid.nbins, cl.grid.search, cl.bin3s, cl.start, cl.order, *kargs, g, v, overlap)
    return reuse, cells


def _kernel_parameters(mod):
    """Parameter names of a revision's reuse kernel (what its argument list looks like)."""
    import inspect

    return inspect.signature(mod.features.py_func).parameters


def _has_w(mod):
    names = _kernel_parameters(mod)
    return "wang_p" in names or "wang_p4" in names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revisions", nargs="+", help="git revisions to compare with the working tree")
    p.add_argument("--atoms", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--system", choices=("water", "peo"), default="water")
    args = p.parse_args(argv)

    import numba

    numba.set_num_threads(args.threads)
    import fastfeat
    from fastfeat._features import bin_atoms
    from fastfeat._kernels import features_cpu

    from benchmarks.common import ani1x_spec, water_system

    tmp = tempfile.TemporaryDirectory()
    versions = [("working tree", features_cpu)] + [(r, _load_revision(r, tmp.name)) for r in args.revisions]
    if args.system == "peo":
        from fastfeat.runtime import ForceModel
        from fastfeat.train import datasets

        frame = datasets.load("peo", split="test")[0]
        atoms = frame.repeat((max(1, -(-args.atoms // len(frame))), 1, 1))
        spec = ForceModel.pretrained("peo").spec
        one = dataclasses.replace(spec, angular=spec.angular[:1], covariant_angular=())
        cases = {
            "peo model": spec,
            "no W": dataclasses.replace(spec, covariant_angular=()),
            "1 G4 no W": one,
            "1 G4 0.5 Å": dataclasses.replace(one, angular_cutoff=0.5),
        }
        label = "PEO (bundled peo model's spec and parts of it)"
    else:
        spec = ani1x_spec()
        atoms = water_system(args.atoms)
        cases = {
            "full": spec,
            "no G4": dataclasses.replace(spec, angular=()),
            "1 G2 + 1 V": dataclasses.replace(spec, angular=(), radial=spec.radial[:1], covariant=spec.covariant[:1]),
            "angular": fastfeat.FeatureSpec.default(("H", "O"), preset="angular"),
            "ang-short": fastfeat.FeatureSpec.default(("H", "O"), preset="angular-short"),
        }
        label = "water, ANI-1x-sized spec"
    print(f"{label}: {len(atoms)} atoms, {args.threads} thread(s), best of {args.rounds} rounds "
          "(us per atom, kernel call only)")
    print(f"{'case':12s} {'kernel':8s} " + " ".join(f"{name:>14s}" for name, _ in versions))
    for cname, s in cases.items():
        if s.covariant_angular:
            skipped = [name for name, mod in versions if not _has_w(mod)]
            if skipped:
                print(f"{cname:12s} (not timed: {', '.join(skipped)} without angular covariant vectors)")
                continue
        fz = fastfeat.Featurizer(s, skin=1.0)
        fz(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
        pos, species, cell, pbc = fz._prepare(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
        params = fz._cache.params
        g, v = fz._g.copy(), fz._v.copy()
        overlap = np.empty(len(pos), np.int64)
        ref = None
        cl = bin_atoms(pos, cell, pbc, params.cutoff)
        calls = {name: _arguments(mod, fz, pos, species, cell, cl, params, g, v, overlap) for name, mod in versions}
        for name, mod in versions:
            for kernel, a in (("features", calls[name][0]), ("features_cells", calls[name][1])):
                getattr(mod, kernel)(*a)
                out = (g.copy(), v.copy())
                if ref is None:
                    ref = out
                for x, y in zip(out, ref):
                    if not np.allclose(x, y, rtol=1e-4, atol=1e-5 * np.abs(y).max()):
                        raise SystemExit(f"{cname}: {name} {kernel} disagrees with the working tree")
        best = {}
        for _ in range(args.rounds):
            for name, mod in versions:
                a_reuse, cells = calls[name]
                for kind, kernel, a in (("reuse", mod.features, a_reuse), ("one-shot", mod.features_cells, cells)):
                    t0 = time.perf_counter()
                    kernel(*a)
                    dt = time.perf_counter() - t0
                    best[(name, kind)] = min(best.get((name, kind), np.inf), dt)
        for kind in ("reuse", "one-shot"):
            row = " ".join(f"{best[(name, kind)] / len(atoms) * 1e6:14.2f}" for name, _ in versions)
            print(f"{cname:12s} {kind:8s} {row}")
    tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
