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
  bins stay about a cutoff wide;
- if that grid still crowds the atoms (more than 1 % of them scattered in 3D
  around a dense part: evaporated molecules around a droplet, periodic or not),
  every axis's density is equalised instead (``_equalized_axis``): a piecewise
  linear map that keeps the dense part's length and shrinks sparse and empty
  stretches, never moving two atoms further apart, so cutoff-wide bins over the
  mapped coordinates still find every pair (periodic axes keep their images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BinGrid", "assign_bins", "bin_grid", "bin_grids", "candidates", "pair_r2_limit", "MAX_SEARCH_CELLS", "CellTooSmallError"]

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
_ONE31 = np.ones((3, 1))
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
    # piecewise-linear maps of the binned coordinate (see _axis_regions, _equalized_axis): axis c has
    # n_regions[c] regions (0: none); a coordinate s in region r (region_lo[c, r] <= s < region_lo[c, r + 1];
    # below region_lo[c, 0]: region 0) is binned as (s - region_lo[c, r]) * region_scale[c, r] + region_at[c, r],
    # then normalised by smin and extent (on a periodic axis too when it has regions). Every scale is <= 1 and
    # atoms are never further apart after the map than before, so bins a cutoff wide after it still hold
    # every pair in neighbouring bins
    region_lo: np.ndarray = None  # (3, R) float64
    region_at: np.ndarray = None  # (3, R) float64
    n_regions: np.ndarray = None  # (3,) int64
    region_scale: np.ndarray = None  # (3, R) float64, default 1 (a translation)
    #: from bounds alone: the O(N) cap makes the bins wider than the cutoff in a structure of at least
    #: _ADAPT_MIN_ATOMS atoms (a grid from the positions may do better); from positions: moreover the
    #: capped grid crowded the atoms, so this grid was adapted (cut axes, outliers, compressed gaps)
    sparse: bool = False
    #: atoms an atom shares its bin with on average (see _crowding), where the grid was chosen by how it bins the
    #: atoms (a structure of at least _ADAPT_MIN_ATOMS atoms in a box the cap coarsens); None elsewhere
    crowding: float = None
    #: atoms per bin (flat, the kernels' bin order) from which `crowding` was computed; None where it is None
    bin_counts: np.ndarray = None

    def __post_init__(self):  # defaults shared by every grid (never written: adapted grids get their own)
        if self.wrapped is None:
            self.wrapped = self.periodic
            self.wrap_origin = _ZERO3
        if self.n_regions is None:
            self.region_lo = self.region_at = _ZERO31
            self.n_regions = _NO_REGIONS
        if self.region_scale is None:
            self.region_scale = np.ones_like(self.region_lo) if self.region_lo.shape[1] > 1 else _ONE31

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
        s = _binning_coordinates(positions, inv_box)
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
            if not math.isfinite(extent[a]):  # finite coordinates whose spread overflows float64
                raise ValueError(f"`positions` span more than float64 holds along non-periodic axis {a} "
                                 f"(from {smin[a]:.3g} to {smax[a]:.3g} Å)")
    limit = max(8 * int(n_atoms), 27)
    adapted = equalized = None  # per axis: _adapt_axis's / _equalized_axis's result, computed once for every division
    grids = []
    for d in divisions:
        width = cutoff * (1.0 + _SLACK) / d
        nbins = [max(1, int(math.floor(h / width))) if h > 0 else 1 for h in height]
        # the cap would widen the bins of a structure large enough to care: a grid from the positions
        # may do better
        sparse = nbins[0] * nbins[1] * nbins[2] > limit and n_atoms >= _ADAPT_MIN_ATOMS
        plain = _grid(inv_box, pbc, list(pbc), [0.0] * 3, list(smin), list(extent), list(height),
                      _capped(nbins, limit), [], sparse and positions is None, cutoff)
        if positions is None or not sparse:
            grids.append(plain)
            continue
        s = _binning_coordinates(positions, inv_box) if s is None else s
        pos64 = np.ascontiguousarray(positions, dtype=np.float64)
        cell64 = np.ascontiguousarray(cell, dtype=np.float64)
        plain.bin_counts = _bin_counts(pos64, cell64, plain)
        plain.crowding = _crowding(plain.bin_counts)
        if plain.crowding <= _CROWDED:
            grids.append(plain)
            continue
        if adapted is None:
            adapted = [_adapt_axis(s[:, a], pbc[a], cutoff, height[a], smin[a], smax[a]) for a in range(3)]
        grid = _adapted_grid(adapted, inv_box, pbc, smin, extent, height, width, limit, cutoff)
        counts = _bin_counts(pos64, cell64, grid)
        crowding = _crowding(counts)
        if crowding > _CROWDED and crowding > _STILL_CROWDED * _ideal_crowding(s, pbc, height, width):
            # still crowded: atoms scattered in 3D (evaporated molecules around a droplet), which neither a cut
            # nor the per-axis stretches gather; every axis's density equalised may do better
            if equalized is None:
                equalized = [_equalized_axis(s[:, a], pbc[a], cutoff, height[a], smin[a], smax[a]) for a in range(3)]
            other = _adapted_grid(equalized, inv_box, pbc, smin, extent, height, width, limit, cutoff)
            other_counts = _bin_counts(pos64, cell64, other)
            other_crowding = _crowding(other_counts)
            if other_crowding < 0.5 * crowding:
                grid, crowding, counts = other, other_crowding, other_counts
        grid.crowding, grid.bin_counts = crowding, counts
        grids.append(grid)
    return grids


def _binning_coordinates(positions, inv_box):
    """pos @ inv_box summed as the CPU kernel (assign_bins) sums it, so that the grid built here sees every
    atom on the side of a boundary where that kernel bins it (a matmul may round an atom on a lattice plane
    to the other side: -1e-18 instead of 0). The CUDA kernel may still differ by an ulp (contracted
    multiply-adds); correctness does not rest on agreement: the maps are continuous wherever an atom may
    lie (see _equalized_axis)."""
    p = np.asarray(positions, dtype=np.float64)
    return p[:, 0:1] * inv_box[0] + p[:, 1:2] * inv_box[1] + p[:, 2:3] * inv_box[2]


def _adapted_grid(axes, inv_box, pbc, smin, extent, height, width, limit, cutoff):
    """The grid of per-axis adaptations `axes` (None: the axis as it is; else (searched, wrap origin, binned
    lower bound, extent, regions or None), extents in fractional units on periodic axes) and bins `width` wide."""
    searched, origin, lo_d, ext_d, height_d = list(pbc), [0.0] * 3, list(smin), list(extent), list(height)
    regions = []
    for a, axis in enumerate(axes):
        if axis is None:
            continue
        searched[a], origin[a], lo_d[a], ext_d[a], region = axis
        height_d[a] = ext_d[a] * height[a] if pbc[a] else ext_d[a]
        if region is not None:
            regions.append((a, region))
    nbins = [max(1, int(math.floor(h / width))) if h > 0 else 1 for h in height_d]
    return _grid(inv_box, pbc, searched, origin, lo_d, ext_d, height_d, _capped(nbins, limit), regions, True, cutoff)


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
            f"{[float(f'{h:.4g}') for h, p in zip(height, pbc) if p]} Å): every atom would see {n_visit} cell images, "
            f"more than the limit of {MAX_SEARCH_CELLS}; use a larger (supercell) cell or a smaller cutoff, or, for "
            f"a very skewed cell, the same lattice with a reduced basis (ase.geometry.minkowski_reduce)"
        )
    # 1 on a periodic axis searched with images, unless its coordinate is mapped (regions)
    extent = [extent[a] if extent[a] > 0 else 1.0 for a in range(3)]
    tables = {}
    if regions:
        r_max = max(len(r[0]) for _, r in regions)
        lo_t, at_t, n_t = np.zeros((3, r_max)), np.zeros((3, r_max)), np.zeros(3, np.int64)
        scale_t = np.ones((3, r_max))
        for a, r in regions:
            lo_t[a, : len(r[0])], at_t[a, : len(r[0])], n_t[a] = r[0], r[1], len(r[0])
            if len(r) > 2:
                scale_t[a, : len(r[0])] = r[2]
        tables = dict(region_lo=lo_t, region_at=at_t, n_regions=n_t, region_scale=scale_t)
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


def assign_bins(positions, cell, grid):
    """Wrapped positions (N, 3), wrap counts (N, 3), bin coordinates (N, 3) and flat bins (N,) of the atoms on
    `grid`: the CPU kernel (positions and cell float64)."""
    from ._kernels import neighbors_cpu as k

    n = positions.shape[0]
    posw = np.empty((n, 3), np.float64)
    wrap = np.empty((n, 3), np.int64)
    bin3 = np.empty((n, 3), np.int64)
    bins = np.empty(n, np.int64)
    k.assign_bins(positions, cell, grid.inv_box, grid.periodic, grid.wrapped, grid.wrap_origin, grid.smin, grid.extent,
                  grid.region_lo, grid.region_at, grid.region_scale, grid.n_regions, grid.nbins, posw, wrap, bin3, bins)
    return posw, wrap, bin3, bins


def _bin_counts(positions, cell, grid):
    """Atoms per bin of `grid`, flat in the kernels' bin order (binned by the kernel itself)."""
    return np.bincount(assign_bins(positions, cell, grid)[3], minlength=grid.n_cells)


def _crowding(counts):
    """How crowded bins holding `counts` atoms are: the sum of squared bin counts / N, the number of atoms an
    atom shares its bin with on average."""
    return float(np.dot(counts, counts)) / max(int(counts.sum()), 1)


def candidates(grid):
    """Mean number of candidates a centre meets on a grid chosen by how it bins the atoms (its `bin_counts`):
    the atoms of every (bin, image) its search visits (periodic axes wrap, images counted once per visit;
    bounded axes stop at their ends)."""
    counts = grid.bin_counts.reshape(tuple(int(n) for n in grid.nbins)).astype(np.float64)
    reached = counts
    for a in range(3):
        n, r = int(grid.nbins[a]), int(grid.search[a])
        total = np.zeros_like(reached)
        for d in range(-r, r + 1):
            if grid.periodic[a]:
                total += np.roll(reached, d, axis=a)
            elif abs(d) < n:  # bins d apart along a bounded axis, zero beyond its ends
                src = [slice(None)] * 3
                dst = [slice(None)] * 3
                src[a], dst[a] = (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))
                total[tuple(dst)] += reached[tuple(src)]
        reached = total
    return float(np.dot(counts.ravel(), reached.ravel())) / max(int(grid.bin_counts.sum()), 1)


#: an adapted grid is still crowded when its crowding exceeds this many times that of bins as wide without
#: a cap (_ideal_crowding): scattered evaporated molecules make it 25-200x (bins of the cutoff and of half of
#: it, 1-10 % of the atoms); a small cluster whose cut axes are two bins wide, ~7x (then it stays)
_STILL_CROWDED = 10.0


def _ideal_crowding(s, pbc, height, width):
    """_crowding of bins `width` wide (Å) over the whole space, as many as needed (no cap; periodic
    coordinates wrapped, images ignored): what a grid can at best achieve. Bins are told apart by a
    hash of their three indices (a rare collision merges two bins)."""
    key = np.zeros(len(s), np.int64)
    for a in range(3):
        x = s[:, a] - np.floor(s[:, a]) if pbc[a] else s[:, a]
        b = np.floor(x * (height[a] if pbc[a] else 1.0) / width).astype(np.int64)
        key = key * np.int64(1_000_003) + b  # wraps around on overflow: a hash
    counts = np.unique(key, return_counts=True)[1]
    return float(np.dot(counts, counts)) / max(len(s), 1)


#: an equalised axis keeps the length of every slice holding at least this fraction of the typical count
#: (see _equalized_axis) and shrinks sparser slices in proportion to their count
_EQUALIZE_KEEP = 0.5


def _equalized_axis(x, periodic, cutoff, height, lo, hi):
    """Density equalisation of one axis for atoms scattered in 3D around a dense part (evaporated molecules
    around a droplet, in a large box): None when it would not shorten the axis by half, else (searched,
    wrap origin, binned lower bound, extent, (lo, at, scale)) as _adapt_axis, the axis mapped piecewise
    linearly.

    The axis is cut into slices a cutoff wide; a slice holding c atoms keeps its length if c is at least
    _EQUALIZE_KEEP times the typical count (that of the slice holding the median atom: the dense part) and
    is shrunk by the factor c / (_EQUALIZE_KEEP * typical) otherwise; empty slices shrink to nothing (on a
    periodic axis, to what keeps the circle three cutoffs long where the empty slices allow it, so a centre
    does not meet many images of its bins; with few empty slices the circle may be 1-3 cutoffs: one bin
    or a few, searched with their images, still exact). Every factor is <= 1: atoms are never further
    apart after the map, so cutoff-wide bins over the mapped axis still find every pair in neighbouring
    bins, while the sparse parts no longer spread the dense part's atoms over a few wide bins.

    Where an atom may lie, the map is continuous, so an atom binned by the kernel a rounding away from
    where it was seen here lands where it was expected: adjacent slices share their boundary, and on a
    periodic axis the map agrees across the wrap (m(0) = 0, m(1) = extent), where an atom on a lattice
    plane may sit at either end. After empty slices a region starts in the middle of the empty stretch
    and the map may step back there (the next slice's scale extended backwards): no atom lies within
    half an empty slice of that point."""
    unit = height if periodic else 1.0  # Å per unit of x
    delta = cutoff * (1.0 + _SLACK) / unit
    if periodic:
        x = x - np.floor(x)
        lo, hi = 0.0, 1.0
    if len(x) < 2 or not hi - lo > 2.0 * delta:
        return None
    n_slices = int(math.ceil((hi - lo) / delta))
    k = np.minimum(np.maximum(np.floor((x - lo) / delta), 0), n_slices - 1).astype(np.int64)
    occ, count = np.unique(k, return_counts=True)
    c_sorted = np.sort(count)
    typical = float(c_sorted[np.searchsorted(np.cumsum(c_sorted), 0.5 * len(x))])
    scale = np.minimum(1.0, count / (_EQUALIZE_KEEP * typical))
    start = lo + occ * delta
    width = np.minimum(start + delta, hi) - start
    mapped = scale * width
    empty_before = np.diff(start, prepend=lo) - np.concatenate([[0.0], width[:-1]])  # empty stretch before each slice
    empty_after = hi - (start[-1] + width[-1])
    fill = 0.0  # how much of their length empty stretches keep
    if periodic:
        empty = float(empty_before.sum() + empty_after)
        if empty > 0:
            fill = min(1.0, max(0.0, (3.0 * delta - float(mapped.sum())) / empty))
    # mapped start of each occupied slice
    at_start = lo + np.concatenate([[0.0], np.cumsum(mapped[:-1])]) + fill * np.cumsum(empty_before)
    ext = float(at_start[-1] + mapped[-1] + fill * empty_after - lo)
    if ext > 0.5 * (hi - lo):
        return None
    # after an empty stretch, the region begins in its middle: no atom lies near that boundary
    r_lo = start - 0.5 * empty_before
    r_at = at_start - 0.5 * empty_before * scale
    if periodic:
        # the seam: an atom on the lattice plane may be wrapped to 0 by the kernel and to 1 here (or the
        # reverse), so the map must agree there, m(0) = 0 and m(1) = ext: an empty stretch at either end gets
        # a region of its own with the empty stretches' scale, from 0 / to 1
        if empty_before[0] > 0:
            r_lo, r_at, scale = np.r_[0.0, r_lo], np.r_[0.0, r_at], np.r_[fill, scale]
        if empty_after > 0:
            mid = hi - 0.5 * empty_after
            r_lo, r_at, scale = np.r_[r_lo, mid], np.r_[r_at, ext - 0.5 * empty_after * fill], np.r_[scale, fill]
    return periodic, 0.0, lo, ext, (r_lo, r_at, scale)


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


def pair_r2_limit(cutoff):
    """The least float64 x with sqrt(x) >= cutoff: a pair is inside the cutoff when its squared distance
    r2 < x, which (sqrt being correctly rounded and monotone) is exactly when its reported distance
    sqrt(r2) < cutoff. cutoff * cutoff rounded may be a step off either way."""
    x = float(cutoff) * float(cutoff)
    while x > 0.0 and math.sqrt(math.nextafter(x, 0.0)) >= cutoff:
        x = math.nextafter(x, 0.0)
    while math.sqrt(x) < cutoff:
        x = math.nextafter(x, math.inf)
    return x


def _cross(u, v):
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]
