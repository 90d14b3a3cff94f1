"""Neighbour list: fastfeat vs vesin vs matscipy (full list, cutoff 5.2 Å, liquid water, 99 / 3 000 /
100 032 atoms).

All three return the same five arrays (i, j, shifts, vectors, distances; vesin quantities
"ijSdD"); pair counts are checked equal. Throughput in pairs per second; ratios are
fastfeat speed-ups (peer time / fastfeat time) from interleaved rounds in this one process.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.compare._harness import interleaved_medians, main_for, ratio, row

CUTOFF = 5.2
TARGET_VS_VESIN = 1.5


def run(quick=False, threads=1):
    import fastfeat
    import vesin
    from matscipy.neighbours import neighbour_list as matscipy_nl

    from benchmarks.common import water_system

    # 99 atoms: a small periodic cell (one frame of a training set), where per-call overhead counts
    sizes = [(3000, 5)] if quick else [(100, 300), (3000, 30), (100000, 7)]
    rows, ratios, notes = [], [], []
    for n_target, repeats in sizes:
        atoms = water_system(n_target)
        n = len(atoms)
        pos = np.ascontiguousarray(atoms.positions)
        cell = atoms.cell.array.copy()
        pbc = atoms.pbc.copy()
        v_unsorted = vesin.NeighborList(cutoff=CUTOFF, full_list=True, n_threads=threads)
        v_sorted = vesin.NeighborList(cutoff=CUTOFF, full_list=True, sorted=True, n_threads=threads)
        fns = {
            "fastfeat": lambda: fastfeat.neighbor_list(pos, cell, pbc, CUTOFF),
            "fastfeat (sorted=True)": lambda: fastfeat.neighbor_list(pos, cell, pbc, CUTOFF, sorted=True),
            "vesin": lambda: v_unsorted.compute(pos, cell, True, quantities="ijSdD"),
            "vesin (sorted=True)": lambda: v_sorted.compute(pos, cell, True, quantities="ijSdD"),
            "matscipy": lambda: matscipy_nl("ijSdD", atoms=atoms, cutoff=CUTOFF),
        }
        counts = {
            "fastfeat": len(fns["fastfeat"]().i),
            "fastfeat (sorted=True)": len(fns["fastfeat (sorted=True)"]().i),
            "vesin": len(fns["vesin"]()[0]),
            "vesin (sorted=True)": len(fns["vesin (sorted=True)"]()[0]),
            "matscipy": len(fns["matscipy"]()[0]),
        }
        if len(set(counts.values())) != 1:
            notes.append(f"pair counts differ at {n} atoms: {counts}")
        n_pairs = counts["fastfeat"]
        t = interleaved_medians(fns, repeats)
        label = f"water {n}"
        for tool, tm in t.items():
            rows.append(row(tool, "neighbour list ijSdD", label, n, tm, n_pairs / tm["median_s"], "pairs/s",
                            n_pairs=n_pairs))
        ff = t["fastfeat"]["median_s"]
        ratios.append(ratio("NL speed-up vs vesin", label, n, ff, t["vesin"]["median_s"], TARGET_VS_VESIN))
        ratios.append(ratio("NL speed-up vs vesin (sorted=True)", label, n, ff, t["vesin (sorted=True)"]["median_s"]))
        ratios.append(ratio("NL speed-up, both sorted=True", label, n, t["fastfeat (sorted=True)"]["median_s"],
                            t["vesin (sorted=True)"]["median_s"]))
        ratios.append(ratio("NL speed-up vs matscipy", label, n, ff, t["matscipy"]["median_s"]))
    notes.append(
        f"cutoff {CUTOFF} Å, full list, every contender with {threads} thread(s) (vesin n_threads={threads}, "
        "fastfeat NUMBA_NUM_THREADS; matscipy is single-threaded); vesin without Verlet skin (no caching)"
    )
    return {"name": "neighbors", "title": "Neighbour list (pairs/s)", "rows": rows, "ratios": ratios, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
