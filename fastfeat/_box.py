"""Host-side geometry of the cell list: binning box, bin counts, search ranges.

Shared by the CPU and CUDA neighbour lists. Periodic axes bin in the cell's
own fractional coordinates; non-periodic axes bin along unit vectors
orthogonal to the periodic ones, over the atoms' extent (the bounding box).

When the grid would exceed its O(N) cap and so make its bins wider than the
cutoff (atoms filling a small part of a large box), and the capped grid would
crowd the atoms (a structure of >= _ADAPT_MIN_ATOMS atoms, each sharing its bin
with > _CROWDED others on average: a droplet in a large box, not a dilute gas),
a grid made from the positions (the CPU path; the CUDA path downloads the
positions of such a structure) does better:

- a periodic axis whose atoms leave an empty stretch wider than half the cell
  and than the cutoff is *cut* there (``_periodic_cut``): atoms are wrapped into
  the occupied arc and the axis is searched without images (no pair can cross
  the stretch, directly or through an image), binned over the arc only; the
  wrap counts keep the reported shifts those of the periodic cell;
- on non-periodic (and cut) axes, a few atoms far from the rest (at most 1 % at
  each end: evaporated molecules) go to the edge bins (``_core_range``), and
  every empty stretch longer than two cutoffs is shortened to two cutoffs
  (``_axis_regions``). Inside a region the map is a translation, and atoms in
  different regions are more than a cutoff apart, so no pair is lost and the
  bins stay about a cutoff wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BinGrid", "bin_grid", "bin_grids", "MAX_SEARCH_CELLS", "CellTooSmallError"]

#: A periodic cell so small against the cutoff that each atom would have to
#: visit more than this many (bin, image) combinations is refused.
MAX_SEARCH_CELLS = 2_000_000
#: Bins are made this much wider than the cutoff so rounding never drops a pair.
_SLACK = 1e-5


class CellTooSmallError(ValueError):
    """A periodic cell so small against the cutoff that the search would visit more than
    :data:`MAX_SEARCH_CELLS` cell images per atom."""


_ZERO3 = np.zeros(3)
_ZERO31 = np.zeros((3, 1))
_NO_REGIONS = np.zeros(3, np.int64)


@dataclass
class BinGrid:
    inv_box: np.ndarray  # (3, 3) float64: fractional s = pos @ inv_box (non-periodic axes in Å)
    periodic: np.ndarray  # (3,) bool: searched with periodic images
    smin: np.ndarray  # (3,) float64: lower bound of s on bounded axes (0 on periodic)
    extent: np.ndarray  # (3,) float64: range of s along each axis (1 on periodic)
    nbins: np.ndarray  # (3,) int64
    search: np.ndarray  # (3,) int64: neighbouring bins visited on each side
    # periodic axes cut at an empty stretch (see _periodic_cut): wrapped (a periodic axis of the
    # structure: s is wrapped into [wrap_origin, wrap_origin + 1)) but not periodic (no images, bounded bins)
    wrapped: np.ndarray = None  # (3,) bool, default: periodic
    wrap_origin: np.ndarray = None  # (3,) float64, default 0
    # gap compression of bounded axes (see _axis_regions): axis c has n_regions[c] regions (0: none);
    # a coordinate s in region r (region_lo[c, r] <= s < region_lo[c, r + 1]) is binned as
    # s - region_lo[c, r] + region_at[c, r]
    region_lo: np.ndarray = None  # (3, R) float64
    region_at: np.ndarray = None  # (3, R) float64
    n_regions: np.ndarray = None  # (3,) int64
    #: from bounds alone: the O(N) cap makes the bins wider than the cutoff in a structure of at least
    #: _ADAPT_MIN_ATOMS atoms (a grid from the positions may do better); from positions: moreover the
    #: capped grid crowded the atoms, so this grid was adapted (cut axes, outliers, compressed gaps)
    sparse: bool = False

    def __post_init__(self):  # defaults shared by every grid (never written: adapted grids get their own)
        if self.wrapped is None:
            self.wrapped = self.periodic
            self.wrap_origin = _ZERO3
        if self.n_regions is None:
            self.region_lo = self.region_at = _ZERO31
            self.n_regions = _NO_REGIONS

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
    return bin_grids(cell, pbc, cutoff, n_atoms, smin, smax, positions, (divisions,))[0]


def bin_grids(cell, pbc, cutoff, n_atoms, smin=None, smax=None, positions=None, divisions=(1,)):
    """:func:`bin_grid` for several `divisions` at once (one grid each): the binning coordinates and
    the search for empty stretches, which do not depend on the bin width, are computed once."""
    # 3 x 3 arithmetic in Python floats: NumPy's per-call overhead on such tiny arrays (np.cross
    # alone ~16 us) made this a third of a neighbour list of 100 atoms
    pbc = [bool(p) for p in pbc]
    box = binning_box(cell, pbc)
    inv_box = np.linalg.inv(box)
    smin = [0.0, 0.0, 0.0] if smin is None else [float(x) for x in smin]
    smax = [0.0, 0.0, 0.0] if smax is None else [float(x) for x in smax]
    s = None
    if positions is not None and not all(pbc) and len(positions):
        s = np.asarray(positions, dtype=np.float64) @ inv_box
        smin, smax = s.min(axis=0).tolist(), s.max(axis=0).tolist()
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
    limit = max(8 * int(n_atoms), 27)
    adapted = None  # per axis: _adapt_axis's result, computed once for every division
    grids = []
    for d in divisions:
        width = cutoff * (1.0 + _SLACK) / d
        nbins = [max(1, int(math.floor(h / width))) if h > 0 else 1 for h in height]
        # the cap would widen the bins of a structure large enough to care: a grid from the positions
        # may do better
        sparse = nbins[0] * nbins[1] * nbins[2] > limit and n_atoms >= _ADAPT_MIN_ATOMS
        if positions is not None and sparse:
            s = np.asarray(positions, dtype=np.float64) @ inv_box if s is None else s
            sparse = _crowded(s, pbc, smin, extent, _capped(nbins, limit))
        searched, origin, lo_d, ext_d, height_d = list(pbc), [0.0] * 3, list(smin), list(extent), list(height)
        regions = []
        if positions is not None and sparse:
            if adapted is None:
                adapted = [_adapt_axis(s[:, a], pbc[a], cutoff, height[a], smin[a], smax[a]) for a in range(3)]
            for a, axis in enumerate(adapted):
                if axis is None:
                    continue
                searched[a], origin[a], lo_d[a], ext_d[a], region = axis
                height_d[a] = ext_d[a] * height[a] if pbc[a] else ext_d[a]
                if region is not None:
                    regions.append((a, region))
            nbins = [max(1, int(math.floor(h / width))) if h > 0 else 1 for h in height_d]
        grids.append(_grid(inv_box, pbc, searched, origin, lo_d, ext_d, height_d, _capped(nbins, limit), regions,
                           sparse, cutoff))
    return grids


def _adapt_axis(x, periodic, cutoff, height, lo, hi):
    """How a crowded capped grid adapts one axis (coordinates x; `height` the cell's perpendicular width
    on a periodic axis): None to keep it, or (searched, wrap origin, binned lower bound, extent,
    regions (lo, at) or None). A periodic axis is cut at a wide empty stretch (else kept); on bounded
    axes, a few far outliers go to the edge bins, then the empty stretches are shortened where that at
    least halves the extent (clusters far apart; not a dilute gas, whose gaps are all short)."""
    gap = cutoff * (1.0 + _SLACK)
    origin = 0.0
    if periodic:
        gap /= height  # fractional units along a periodic axis
        cut = _periodic_cut(x, gap)
        if cut is None:
            return None
        origin, lo, arc = cut
        hi = lo + arc
        x = x - np.floor(x - origin)  # as assign_bins wraps it
    core = _core_range(x, lo, hi, gap)  # a few far outliers go to the edge bins
    if core != (lo, hi):
        lo, hi = core
        x = x[(x >= lo) & (x <= hi)]
    ext = hi - lo
    r = _axis_regions(x, gap)
    if r is not None:
        squeezed = (hi - r[0][-1] + r[1][-1]) - lo  # region 0 is not moved: lo <= r[0][0] = r[1][0]
        if squeezed <= 0.5 * ext:
            return False, origin, lo, squeezed, r
    return False, origin, lo, ext, None


def _grid(inv_box, pbc, searched, origin, smin, extent, height, nbins, regions, sparse, cutoff):
    """The BinGrid of these bin counts: search ranges (a CellTooSmallError past MAX_SEARCH_CELLS),
    extents of searched-periodic axes set to 1, region tables."""
    search = [0, 0, 0]
    for a in range(3):
        w = height[a] / nbins[a]  # > 0 on periodic axes (non-singular cell)
        reach = int(math.ceil(cutoff * (1.0 + _SLACK) / w)) if w > 0 else 0
        # a periodic axis visits every image in reach; a bounded one has no bins beyond its last
        search[a] = reach if searched[a] else min(reach, nbins[a] - 1)
    n_visit = (2 * search[0] + 1) * (2 * search[1] + 1) * (2 * search[2] + 1)
    if n_visit > MAX_SEARCH_CELLS:
        raise CellTooSmallError(
            f"`cutoff` {cutoff} Å is too large for this periodic cell (perpendicular widths "
            f"{[round(h, 4) for h, p in zip(height, pbc) if p]} Å): every atom would see {n_visit} cell images, "
            f"more than the limit of {MAX_SEARCH_CELLS}; use a larger (supercell) cell or a smaller cutoff, or, for "
            f"a very skewed cell, the same lattice with a reduced basis (ase.geometry.minkowski_reduce)"
        )
    extent = [1.0 if searched[a] else (extent[a] if extent[a] > 0 else 1.0) for a in range(3)]
    tables = {}
    if regions:
        r_max = max(len(lo) for _, (lo, _) in regions)
        lo_t, at_t, n_t = np.zeros((3, r_max)), np.zeros((3, r_max)), np.zeros(3, np.int64)
        for a, (lo, at) in regions:
            lo_t[a, : len(lo)], at_t[a, : len(lo)], n_t[a] = lo, at, len(lo)
        tables = dict(region_lo=lo_t, region_at=at_t, n_regions=n_t)
    return BinGrid(inv_box, np.array(searched, dtype=bool), np.array(smin, dtype=np.float64),
                   np.array(extent, dtype=np.float64), np.array(nbins, dtype=np.int64),
                   np.array(search, dtype=np.int64), np.array(pbc, dtype=bool), np.array(origin, dtype=np.float64),
                   sparse=sparse, **tables)


#: structures with fewer atoms keep the capped grid (its search costs at most ~N^2 distances, less
#: than finding the empty stretches: a 12-atom molecule in a 30 Å periodic box)
_ADAPT_MIN_ATOMS = 256
#: the capped grid is adapted when an atom shares its bin with more than this many atoms on average:
#: capped bins hold 1/8 atom on average, so a uniform gas stays near 1 (nothing to gain), while a
#: droplet in a large box puts thousands in one bin
_CROWDED = 8.0


def _capped(nbins, limit):
    """Bin counts halved along the longest axis until there are at most `limit` bins."""
    nbins = list(nbins)
    while nbins[0] * nbins[1] * nbins[2] > limit:
        a = nbins.index(max(nbins))
        nbins[a] = max(1, nbins[a] // 2)
    return nbins


def _crowded(s, pbc, smin, extent, nbins):
    """Whether the grid `nbins` over the bounding box (s: binning coordinates of the atoms) puts
    more than _CROWDED atoms on average in an atom's bin (sum of squared bin counts / N)."""
    key = np.zeros(len(s), np.int64)
    for a in range(3):
        x = s[:, a] - np.floor(s[:, a]) if pbc[a] else (s[:, a] - smin[a]) / (extent[a] if extent[a] > 0 else 1.0)
        b = np.clip((x * nbins[a]).astype(np.int64), 0, nbins[a] - 1)
        key = key * nbins[a] + b
    counts = np.bincount(key)
    return float(np.dot(counts, counts)) > _CROWDED * len(s)


def _periodic_cut(x, gap):
    """Where to cut a periodic axis (fractional coordinates x, any image): (origin, start, arc) when the
    largest empty stretch of the circle is wider than `gap` (>= the cutoff, fractional) and than half
    the cell, else None. Atoms are wrapped into [origin, origin + 1) with the origin in the middle of
    the stretch (far from every atom, so the kernel's rounding cannot move an atom across it); they
    occupy [start, start + arc]. No pair within the cutoff crosses the stretch, directly or through
    an image (|s_j + n - s_i| >= the stretch for n != 0), so the axis is searched without images."""
    f = np.sort(x - np.floor(x))
    if len(f) == 0:
        return None
    gaps = np.empty(len(f))
    gaps[:-1] = np.diff(f)
    gaps[-1] = f[0] + 1.0 - f[-1]  # across the cell boundary
    k = int(np.argmax(gaps))
    g = float(gaps[k])
    if g <= max(gap, 0.5):
        return None
    origin = float(f[k]) + 0.5 * g
    origin -= math.floor(origin)
    start = float(f[(k + 1) % len(f)])  # the first atom after the stretch
    if start < origin:
        start += 1.0
    return origin, start, 1.0 - g


def _axis_regions(x, gap):
    """Gap compression of one bounded axis (coordinates x; in Å, or fractional on a cut periodic axis):
    the stretches between atoms longer than 2 * gap (gap >= the cutoff, same units) are shortened to
    2 * gap. Returns (lo, at): region r holds the coordinates from lo[r] on (lo[0] = min x; later ones
    in the middle of their stretch, far from every atom, so rounding cannot move an atom into another
    region) and is binned as x - lo[r] + at[r] (at[0] = lo[0]: region 0 stays where it is). None when
    no stretch is that long. Atoms in different regions are more than a cutoff apart along this axis,
    so they are never neighbours, and within a region the map is a translation: the grid over the
    compressed extent finds every pair, with bins about a cutoff wide where the whole extent (two
    clusters 1e4 Å apart) made them so wide that the search turned quadratic."""
    xs = np.sort(x)
    cut = np.flatnonzero(np.diff(xs) > 2.0 * gap)
    if len(cut) == 0:
        return None
    first = np.concatenate([xs[:1], xs[cut + 1]])  # first and last coordinate of each region
    last = np.concatenate([xs[cut], xs[-1:]])
    lo = np.concatenate([xs[:1], 0.5 * (xs[cut] + xs[cut + 1])])
    # compressed: region r starts 2 * gap after region r - 1 ends
    start = xs[0] + np.concatenate([[0.0], np.cumsum(last[:-1] - first[:-1] + 2.0 * gap)])
    return lo, start - (first - lo)


#: atoms a bounded axis may leave outside its binned range at each end (see _core_range)
_OUTLIER_FRACTION = 1e-2


def _core_range(x, lo, hi, cutoff):
    """The range of a bounded axis to bin. Normally [lo, hi], the atoms' extent; when a few atoms (at
    most 1 % at each end) lie far from the rest (evaporated molecules spread over a large volume,
    which no gap compression can gather: each is a region of its own on every axis), the range of
    the others widened by the cutoff. The outliers go to the edge bins (assign_bins clamps), which
    keeps every pair within the cutoff in bins the search visits (a neighbour of a clamped outlier
    lies within a cutoff of the range's end)."""
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
