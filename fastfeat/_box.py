"""Host-side geometry of the cell list: binning box, bin counts, search ranges.

Shared by the CPU and CUDA neighbour lists. Periodic axes bin in the cell's
own fractional coordinates; non-periodic axes bin along unit vectors
orthogonal to the periodic ones, over the atoms' extent (the bounding box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BinGrid", "bin_grid", "MAX_SEARCH_CELLS"]

#: A periodic cell so small against the cutoff that each atom would have to
#: visit more than this many (bin, image) combinations is refused.
MAX_SEARCH_CELLS = 2_000_000
#: Bins are made this much wider than the cutoff so rounding never drops a pair.
_SLACK = 1e-5


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
    for v in list(vectors) + list(np.eye(3)):
        w = np.array(v, dtype=np.float64)
        for b in basis:
            w = w - (w @ b) * b
        n = np.linalg.norm(w)
        if n > 1e-8:
            basis.append(w / n)
        if len(basis) == 3:
            break
    return basis


def binning_box(cell, pbc):
    """(3, 3) rows: periodic cell vectors, unit orthogonal vectors elsewhere."""
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
    box = binning_box(cell, pbc)
    inv_box = np.linalg.inv(box)
    if positions is not None:
        if len(positions):
            s = np.asarray(positions, dtype=np.float64) @ inv_box
            smin, smax = s.min(axis=0), s.max(axis=0)
        else:
            smin = smax = np.zeros(3)
    smin = np.array(smin, dtype=np.float64)
    smax = np.array(smax, dtype=np.float64)
    # heights: perpendicular widths of the periodic cell, extents elsewhere
    vol = abs(np.linalg.det(box))
    height = np.empty(3)
    extent = np.ones(3)
    for a in range(3):
        if pbc[a]:
            b, c = box[(a + 1) % 3], box[(a + 2) % 3]
            height[a] = vol / np.linalg.norm(np.cross(b, c))
            smin[a] = 0.0
        else:
            extent[a] = max(smax[a] - smin[a], 0.0)
            height[a] = extent[a]
    width = cutoff * (1.0 + _SLACK) / divisions
    nbins = np.array([max(1, int(math.floor(h / width))) if h > 0 else 1 for h in height], dtype=np.int64)
    limit = max(8 * int(n_atoms), 27)
    while int(np.prod(nbins)) > limit:
        a = int(np.argmax(nbins))
        nbins[a] = max(1, nbins[a] // 2)
    search = np.empty(3, dtype=np.int64)
    for a in range(3):
        w = height[a] / nbins[a]  # > 0 on periodic axes (non-singular cell)
        reach = int(math.ceil(cutoff * (1.0 + _SLACK) / w)) if w > 0 else 0
        # a periodic axis visits every image in reach; a bounded one has no bins beyond its last
        search[a] = reach if pbc[a] else min(reach, nbins[a] - 1)
    n_visit = int(np.prod(2 * search + 1))
    if n_visit > MAX_SEARCH_CELLS:
        raise ValueError(
            f"`cutoff` {cutoff} Å is too large for this periodic cell (perpendicular widths "
            f"{np.round(height[pbc], 4).tolist()} Å): every atom would see {n_visit} cell images, more than "
            f"the limit of {MAX_SEARCH_CELLS}; use a larger (supercell) cell or a smaller cutoff"
        )
    extent = np.where(pbc, 1.0, np.where(extent > 0, extent, 1.0))
    return BinGrid(inv_box, np.asarray(pbc, dtype=bool), smin, extent, nbins, search)
