"""Host-side geometry of the cell list: binning box, bin counts, search ranges.

Shared by the CPU and CUDA neighbour lists. Periodic axes bin in the cell's
own fractional coordinates; non-periodic axes bin along unit vectors
orthogonal to the periodic ones, over the atoms' extent (the bounding box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BinGrid", "bin_grid", "MAX_SEARCH_CELLS", "CellTooSmallError"]

#: A periodic cell so small against the cutoff that each atom would have to
#: visit more than this many (bin, image) combinations is refused.
MAX_SEARCH_CELLS = 2_000_000
#: Bins are made this much wider than the cutoff so rounding never drops a pair.
_SLACK = 1e-5


class CellTooSmallError(ValueError):
    """A periodic cell so small against the cutoff that the search would visit more than
    :data:`MAX_SEARCH_CELLS` cell images per atom."""


@dataclass
class BinGrid:
    inv_box: np.ndarray  # (3, 3) float64: fractional s = pos @ inv_box (non-periodic axes in Å)
    periodic: np.ndarray  # (3,) bool
    smin: np.ndarray  # (3,) float64: lower bound of s on non-periodic axes (0 on periodic)
    extent: np.ndarray  # (3,) float64: range of s along each axis (1 on periodic)
    nbins: np.ndarray  # (3,) int64
    search: np.ndarray  # (3,) int64: neighbouring bins visited on each side

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.nbins))


def _orthonormal_complement(vectors):
    """Unit vectors completing the orthonormal basis of span(vectors)."""
    basis = []
    for v in [[float(x) for x in v] for v in vectors] + [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]:
        w = v
        for b in basis:
            p = _dot(w, b)
            w = [w[0] - p * b[0], w[1] - p * b[1], w[2] - p * b[2]]
        n = math.sqrt(_dot(w, w))
        if n > 1e-8:
            basis.append([w[0] / n, w[1] / n, w[2] / n])
        if len(basis) == 3:
            break
    return basis


def binning_box(cell, pbc):
    """(3, 3) rows: periodic cell vectors, unit orthogonal vectors elsewhere."""
    if pbc[0] and pbc[1] and pbc[2]:
        return np.array(cell, dtype=np.float64)
    per = [cell[a] for a in range(3) if pbc[a]]
    basis = _orthonormal_complement(per)
    extra = basis[len(per):]
    box = np.empty((3, 3))
    k = 0
    for a in range(3):
        if pbc[a]:
            box[a] = cell[a]
        else:
            box[a] = extra[k]
            k += 1
    return box


def bin_grid(cell, pbc, cutoff, n_atoms, smin=None, smax=None, positions=None, divisions=1):
    """Bin counts and search ranges for a cell list.

    Either `positions` (host array) or the per-axis fractional bounds
    `smin`/`smax` (from a device reduction) give the extent of the
    non-periodic axes. Bins are at least ``cutoff / divisions`` wide, so the
    search reaches ``divisions`` bins (or more) to each side. The number of
    bins is capped at O(n_atoms), so a huge, sparse box allocates little.
    """
    # 3 x 3 arithmetic in Python floats: NumPy's per-call overhead on such tiny arrays (np.cross
    # alone ~16 us) made this a third of a neighbour list of 100 atoms
    pbc = [bool(p) for p in pbc]
    box = binning_box(cell, pbc)
    inv_box = np.linalg.inv(box)
    smin = [0.0, 0.0, 0.0] if smin is None else [float(x) for x in smin]
    smax = [0.0, 0.0, 0.0] if smax is None else [float(x) for x in smax]
    if positions is not None and not all(pbc) and len(positions):
        s = np.asarray(positions, dtype=np.float64) @ inv_box
        smin, smax = s.min(axis=0).tolist(), s.max(axis=0).tolist()
        for a in range(3):
            if not pbc[a]:
                smin[a], smax[a] = _core_range(s[:, a], smin[a], smax[a], cutoff)
    b = box.tolist()
    # heights: perpendicular widths of the periodic cell (volume / |b x c|), extents elsewhere
    vol = abs(_dot(b[0], _cross(b[1], b[2])))
    height = [0.0, 0.0, 0.0]
    extent = [1.0, 1.0, 1.0]
    for a in range(3):
        if pbc[a]:
            height[a] = vol / math.sqrt(_dot(*(2 * [_cross(b[(a + 1) % 3], b[(a + 2) % 3])])))
            smin[a] = 0.0
        else:
            extent[a] = max(smax[a] - smin[a], 0.0)
            height[a] = extent[a]
    width = cutoff * (1.0 + _SLACK) / divisions
    nbins = [max(1, int(math.floor(h / width))) if h > 0 else 1 for h in height]
    limit = max(8 * int(n_atoms), 27)
    while nbins[0] * nbins[1] * nbins[2] > limit:
        a = nbins.index(max(nbins))
        nbins[a] = max(1, nbins[a] // 2)
    search = [0, 0, 0]
    for a in range(3):
        w = height[a] / nbins[a]  # > 0 on periodic axes (non-singular cell)
        reach = int(math.ceil(cutoff * (1.0 + _SLACK) / w)) if w > 0 else 0
        # a periodic axis visits every image in reach; a bounded one has no bins beyond its last
        search[a] = reach if pbc[a] else min(reach, nbins[a] - 1)
    n_visit = (2 * search[0] + 1) * (2 * search[1] + 1) * (2 * search[2] + 1)
    if n_visit > MAX_SEARCH_CELLS:
        raise CellTooSmallError(
            f"`cutoff` {cutoff} Å is too large for this periodic cell (perpendicular widths "
            f"{[round(h, 4) for h, p in zip(height, pbc) if p]} Å): every atom would see {n_visit} cell images, "
            f"more than the limit of {MAX_SEARCH_CELLS}; use a larger (supercell) cell or a smaller cutoff, or, for "
            f"a very skewed cell, the same lattice with a reduced basis (ase.geometry.minkowski_reduce)"
        )
    extent = [1.0 if pbc[a] else (extent[a] if extent[a] > 0 else 1.0) for a in range(3)]
    return BinGrid(inv_box, np.array(pbc, dtype=bool), np.array(smin, dtype=np.float64),
                   np.array(extent, dtype=np.float64), np.array(nbins, dtype=np.int64),
                   np.array(search, dtype=np.int64))


#: atoms a non-periodic axis may leave outside its binned range at each end (see _core_range)
_OUTLIER_FRACTION = 1e-2


def _core_range(x, lo, hi, cutoff):
    """The range of a non-periodic axis to bin. Normally [lo, hi], the atoms' extent; when a few atoms
    (at most 1 % at each end) lie far from the rest (an evaporated molecule), the range of the others
    widened by the cutoff: binning the whole extent would make the bins so wide (the grid is capped at
    8 N bins) that the search turned quadratic (30 000 atoms plus one at 1e6 Å: 12x slower). The
    outliers go to the edge bins (assign_bins clamps), which keeps every pair within the cutoff in
    bins the search visits."""
    n = len(x)
    k = int(n * _OUTLIER_FRACTION)
    if k < 1:
        return lo, hi
    part = np.partition(x, (k, n - 1 - k))
    core_lo, core_hi = max(lo, float(part[k]) - cutoff), min(hi, float(part[n - 1 - k]) + cutoff)
    if (hi - lo) <= 4.0 * max(core_hi - core_lo, cutoff):  # no far outliers: the whole extent
        return lo, hi
    return core_lo, core_hi


def _cross(u, v):
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]
