"""Interleaved A/B timing of the CPU neighbour-list kernels (count_pairs, fill_pairs) against a git revision.

    python -m benchmarks.compare.list_ab REV [--atoms N] [--rounds R]

The revision's ``fastfeat/_kernels/neighbors_cpu.py`` is loaded from git (``git show``) as a separate
module beside the working tree's; both count and fill the full list of the same binned water box
(cutoff 5.2 Å, the public list's half-width bins) into preallocated arrays, rounds interleaved. Outputs
are checked equal first. Kernel calls only: no binning, no allocation, no first touch of fresh memory
(see list_memory for that). Threads: NUMBA_NUM_THREADS (set it to 1 for the issue's protocol).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from benchmarks.compare._revision import ROOT, load_kernel_revision, positions_layout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revision", help="git revision to compare with the working tree")
    p.add_argument("--atoms", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=40)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import water_system
    from fastfeat import _neighbors as nb
    from fastfeat._box import pair_r2_limit
    from fastfeat._kernels import neighbors_cpu as work

    atoms = water_system(args.atoms)
    pos = atoms.positions.astype(np.float64)
    cell = atoms.cell.array.astype(np.float64)
    cl = nb.bin_atoms(pos, cell, np.array(atoms.pbc), 5.2, nb.NL_BIN_DIVISIONS)
    n = len(pos)
    r2l = pair_r2_limit(5.2)
    with tempfile.TemporaryDirectory() as folder:
        theirs = load_kernel_revision(args.revision, "fastfeat/_kernels/neighbors_cpu.py", folder)
        versions = {"working tree": work, args.revision: theirs}
        counts, fills, times = {}, {}, {}
        reference = None  # the working tree's count and pairs: every revision must give the same
        for name, mod in versions.items():
            count = np.empty(n, np.int64)
            poss = positions_layout(mod.count_pairs, cl.poss_cn)  # rows for revisions before the columns
            cargs = (poss, cell, cl.grid.periodic, cl.grid.nbins, cl.grid.search, cl.bin3s, cl.start, cl.order,
                     r2l, count)
            mod.count_pairs(*cargs)
            offset = np.zeros(n + 1, np.int64)
            np.cumsum(count, out=offset[1:])
            m = int(offset[-1])
            out = (np.empty(m, np.int32), np.empty(m, np.int32), np.empty((m, 3), np.int32), np.empty((m, 3)),
                   np.empty(m))
            fargs = (poss, cell, cl.wraps, cl.grid.periodic, cl.grid.nbins, cl.grid.search, cl.bin3s, cl.start,
                     cl.order, r2l, offset, *out, False)
            mod.fill_pairs(*fargs)
            counts[name], fills[name] = (mod.count_pairs, cargs), (mod.fill_pairs, fargs)
            times[name] = {"count": [], "fill": []}
            if reference is None:
                reference = (count.copy(), out)
            elif not ((reference[0] == count).all() and all(np.array_equal(a, b) for a, b in zip(reference[1], out))):
                raise SystemExit(f"the neighbour lists of the working tree and {name} differ: nothing timed")
        for _ in range(args.rounds):
            for name in versions:
                for what, (f, a) in (("count", counts[name]), ("fill", fills[name])):
                    t = time.perf_counter()
                    f(*a)
                    times[name][what].append(time.perf_counter() - t)
    print(f"water {n} atoms, cutoff 5.2 Å, {args.rounds} interleaved rounds; min / median ms, and the median "
          f"of the per-round ratios working tree / {args.revision}")
    for what in ("count", "fill"):
        w = np.array(times["working tree"][what])
        r = np.array(times[args.revision][what])
        print(f"{what:6s} working tree {w.min() * 1e3:8.2f} / {np.median(w) * 1e3:8.2f}   {args.revision} "
              f"{r.min() * 1e3:8.2f} / {np.median(r) * 1e3:8.2f}   ratio {np.median(w / r):.3f}")


if __name__ == "__main__":
    main()
