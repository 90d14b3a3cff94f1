"""Neighbour list: fastfeat vs vesin vs matscipy (full list, cutoff 5.2 Å, liquid water, 99 / 3 000 /
100 032 atoms).

All three return the same five arrays (i, j, shifts, vectors, distances; vesin quantities
"ijSdD"). Before timing, at every size, the pair sets (i, j, shift) of every contender (both
fastfeat and both vesin variants, and matscipy) are checked equal to fastfeat's, with the
distances of the same pairs to 1e-9 Å; a difference fails the comparison (``error``, exit 1)
before anything is timed. Throughput in pairs per second; ratios are fastfeat speed-ups (peer
time / fastfeat time) from interleaved rounds in this one process.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.compare._harness import interleaved_medians, main_for, ratio, row

CUTOFF = 5.2
TARGET_VS_VESIN = 1.5
DISTANCE_TOL = 1e-9  # Å, same pair in two lists


def pair_keys(i, j, shifts, n_atoms, lo, base):
    """One key per pair (i, j, shift), in sorted order, and the order that sorts them. Shifts lie in
    [lo, lo + base); keys of two lists are comparable when both use the same `lo` and `base`."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    s = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
    n = max(int(n_atoms), 1)
    if n * n * base**3 >= 2**62:  # too wide for one int64: lexicographic sort of the columns
        order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
        return np.stack([i, j, s[:, 0], s[:, 1], s[:, 2]], axis=1)[order], order
    code = ((s[:, 0] - lo) * base + (s[:, 1] - lo)) * base + (s[:, 2] - lo)
    key = (i * n + j) * base**3 + code
    order = np.argsort(key, kind="stable")
    return key[order], order


def pair_set_difference(reference, other, n_atoms):
    """None when the lists (i, j, shifts, distances) hold the same pairs (distances within
    DISTANCE_TOL), else a one-line description of the difference."""
    if len(reference[0]) != len(other[0]):
        return f"{len(reference[0])} vs {len(other[0])} pairs"
    if len(reference[0]) == 0:
        return None
    sa = np.asarray(reference[2], dtype=np.int64)
    sb = np.asarray(other[2], dtype=np.int64)
    lo = int(min(sa.min(), sb.min()))
    base = int(max(sa.max(), sb.max())) - lo + 1
    ka, oa = pair_keys(reference[0], reference[1], sa, n_atoms, lo, base)
    kb, ob = pair_keys(other[0], other[1], sb, n_atoms, lo, base)
    same = ka == kb if ka.ndim == 1 else (ka == kb).all(axis=1)
    if not same.all():
        k = int(np.flatnonzero(~same)[0])
        return f"{int((~same).sum())} of {len(ka)} sorted (i, j, shift) keys differ, the first at position {k}"
    dd = np.abs(np.asarray(reference[3])[oa] - np.asarray(other[3])[ob])
    if len(dd) and dd.max() > DISTANCE_TOL:
        return f"same pairs but distances differ by up to {dd.max():.3g} Å"
    return None


def run(quick=False, threads=1):
    import fastfeat
    import vesin
    from matscipy.neighbours import neighbour_list as matscipy_nl

    from benchmarks.common import water_system

    # 99 atoms: a small periodic cell (one frame of a training set), where per-call overhead counts
    sizes = [(3000, 5)] if quick else [(100, 300), (3000, 30), (100000, 7)]
    rows, ratios, notes, checked = [], [], [], []
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
        # agreement before timing: every contender's pair set (i, j, shift) and distances equal fastfeat's
        lists = {}
        for tool in ("fastfeat", "fastfeat (sorted=True)"):
            nl = fns[tool]()
            lists[tool] = (nl.i, nl.j, nl.shifts, nl.distances)
        for tool in ("vesin", "vesin (sorted=True)", "matscipy"):
            i, j, shifts, d, _ = fns[tool]()
            lists[tool] = (i, j, shifts, d)
        diffs = {tool: pair_set_difference(lists["fastfeat"], lists[tool], n) for tool in lists if tool != "fastfeat"}
        diffs = {k: v for k, v in diffs.items() if v is not None}
        n_pairs = len(lists["fastfeat"][0])
        del lists
        if diffs:
            error = (f"pair lists differ from fastfeat's at {n} atoms ({n_pairs} fastfeat pairs): "
                     + "; ".join(f"{k}: {v}" for k, v in diffs.items()))
            notes.append("nothing timed at this size and above: the lists do not agree")
            return {"name": "neighbors", "title": "Neighbour list (pairs/s)", "rows": rows, "ratios": ratios,
                    "notes": notes, "error": error}
        checked.append(f"{n} atoms: {n_pairs} pairs")
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
    notes.append(f"pair sets (i, j, shift) equal for all five contenders, distances within {DISTANCE_TOL:g} Å: "
                 + ", ".join(checked))
    notes.append(
        f"cutoff {CUTOFF} Å, full list; threads: fastfeat NUMBA_NUM_THREADS={threads}, vesin n_threads={threads}, "
        "matscipy 1 (single-threaded, no thread option); vesin without Verlet skin (no caching)"
    )
    return {"name": "neighbors", "title": "Neighbour list (pairs/s)", "rows": rows, "ratios": ratios, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
