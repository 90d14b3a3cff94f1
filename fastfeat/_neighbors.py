"""Public neighbour list: validation, device dispatch, memory checks."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _device, _fork, _threads
from ._box import assign_bins, bin_grid, bin_grids, candidates, pair_r2_limit
from ._validation import check_cell, check_cutoff, check_pbc, check_positions, check_device

__all__ = ["NeighborList", "neighbor_list"]


class NeighborList(NamedTuple):
    """Full neighbour list (both i→j and j→i, every periodic image).

    Attributes
    ----------
    i, j : (P,) int32
        Centre and neighbour atom indices. Pairs of one centre are contiguous,
        centres in increasing order.
    shifts : (P, 3) int32
        Integer cell shifts S with r_ij = r_j - r_i + S @ cell.
    vectors : (P, 3) float
        r_ij in Å (dtype of the positions).
    distances : (P,) float
        |r_ij| in Å.
    """

    i: object
    j: object
    shifts: object
    vectors: object
    distances: object


def _estimate_pair_bytes(n_pairs, itemsize):
    # i, j (int32) + shifts (3 int32) + vectors (3 float) + distance (float)
    return n_pairs * (4 * 5 + itemsize * 4)


def _check_memory(n_bytes, what):
    avail = _device.available_host_memory()
    if avail is not None and n_bytes > avail:
        raise MemoryError(
            f"{what} needs {n_bytes / 2**30:.2f} GiB, more than the {avail / 2**30:.2f} GiB of memory available; "
            "reduce the number of atoms or the cutoff"
        )


class CellList(NamedTuple):
    """Atoms binned for a cell-list search; per-atom arrays are in bin (space) order."""

    grid: object  # fastfeat._box.BinGrid
    start: np.ndarray  # (n_cells + 1,) int64: atoms of bin b are rows start[b]:start[b+1]
    order: np.ndarray  # (N,) int64: atom index of each bin-ordered row
    poss_cn: np.ndarray  # (3, N) float64 wrapped positions as columns (the kernels' layout), bin order
    bin3s: np.ndarray  # (N, 3) int64 bin coordinates, bin order
    wraps: np.ndarray  # (N, 3) int64 cell shifts removed by wrapping, bin order


#: Bins per cutoff length of the CPU neighbour list: bins of cutoff/2 visit (5/2)³/3³ ≈ 0.58 of the
#: candidate volume of cutoff-wide bins, and the kernels read each row of bins as one contiguous run
#: of atoms, so the extra bins cost little (3000-atom water, 5.2 Å: 8.7 ms vs 9.8 ms per build).
NL_BIN_DIVISIONS = 2


#: Cost model of the one-shot features kernel's traversal (features_cells), in ns, fitted on 99- to
#: 3000-atom water and PEO frames (1 thread): every centre computes the distance to each candidate
#: of its bin's (bin, image) cells and keeps the hits; every non-empty bin visits its cells and
#: gathers their atoms once for all of its centres.
_COST_CANDIDATE = 1.2
_COST_VISIT = 20.0
_COST_GATHER = 3.0


def _traversal_cost(grid, n, cand=None):
    """Estimated traversal time (ns) of the one-shot kernel on `grid` for n uniformly spread atoms (or `cand`
    candidates per centre, counted)."""
    uniform = float(n)
    visits = 1
    for a in range(3):
        per_axis = 2 * int(grid.search[a]) + 1  # bins (with their images) visited along axis a
        if not grid.periodic[a]:
            per_axis = min(per_axis, int(grid.nbins[a]))
        uniform *= per_axis / int(grid.nbins[a])
        visits *= per_axis
    cand = uniform if cand is None else cand
    bins = min(grid.n_cells, n)
    return n * cand * _COST_CANDIDATE + bins * (visits * _COST_VISIT + cand * _COST_GATHER)


def one_shot_grid(positions, cell, pbc, cutoff):
    """The bin grid (bins of the cutoff or of half of it) with the cheaper one-shot traversal: a small
    periodic cell has one or two cutoff-wide bins per axis, so every centre would test all 27 images
    of most atoms; half-width bins cut that by ~5x (99-atom water: 0.88 -> 0.76 ms), while a large box
    keeps cutoff-wide bins, whose single gather serves ~24 centres."""
    n = positions.shape[0]
    grids = bin_grids(cell, pbc, cutoff, n, positions=positions, divisions=(1, 2))
    # grids of a sparse box (atoms binned to choose them) may crowd some bins: their candidates counted
    cands = [candidates(g) if g.bin_counts is not None else None for g in grids]
    return min(zip(grids, cands), key=lambda gc: _traversal_cost(gc[0], n, gc[1]))[0]


#: positions at most this many cells from the origin along a periodic axis (int32 shifts; beyond
#: ~1e19 cells even the int64 wrap count is undefined)
MAX_WRAP = 2 ** 30


def _check_wraps(wrap):
    """ValueError when an atom lies more than MAX_WRAP cells out along a periodic axis."""
    if wrap.size and (wrap.min() < -MAX_WRAP or wrap.max() > MAX_WRAP):
        bad = int(np.flatnonzero((wrap < -MAX_WRAP).any(axis=1) | (wrap > MAX_WRAP).any(axis=1))[0])
        raise ValueError(
            f"`positions` of atom {bad} lies more than {MAX_WRAP} cells from the origin along a periodic axis: "
            "its cell shifts would not fit in int32; wrap the positions into the cell (e.g. atoms.wrap())"
        )


def bin_atoms(positions, cell, pbc, cutoff, divisions=1, grid=None):
    """Wrap and bin validated positions (N >= 1) for the CPU cell-list kernels.

    Bins are at least ``cutoff / divisions`` wide (see :func:`fastfeat._box.bin_grid`), or `grid`.
    """
    from ._kernels import neighbors_cpu as k

    _fork.check()  # every CPU list and one-shot feature call bins its atoms first
    n = positions.shape[0]
    pos64 = positions.astype(np.float64, copy=False)
    if grid is None:
        grid = bin_grid(cell, pbc, cutoff, n, positions=pos64, divisions=divisions)
    posw, wrap, bin3, bins = assign_bins(pos64, cell, grid)
    _check_wraps(wrap)
    start = np.empty(grid.n_cells + 1, np.int64)
    order = np.empty(n, np.int64)
    k.cell_starts(bins, grid.n_cells, start, order)
    # bin order: centres and neighbours of one cell are contiguous in memory
    return CellList(grid, start, order, np.ascontiguousarray(posw[order].T), bin3[order], wrap[order])


def _binned_counts(positions, cell, pbc, cutoff):
    """Cell list and CSR offsets (neighbours of i at offset[i]:offset[i+1]) of validated positions, N >= 1."""
    from ._kernels import neighbors_cpu as k

    n = positions.shape[0]
    cl = bin_atoms(positions, cell, pbc, cutoff, NL_BIN_DIVISIONS)
    count = np.empty(n, np.int64)
    k.count_pairs(cl.poss_cn, cell, cl.grid.periodic, cl.grid.nbins, cl.grid.search, cl.bin3s, cl.start, cl.order,
                  pair_r2_limit(cutoff), count)
    offset = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=offset[1:])
    return cl, offset


def _fill(cl, cell, cutoff, offset, i_p, j_p, shift, r, d, csr):
    from ._kernels import neighbors_cpu as k

    g = cl.grid
    k.fill_pairs(cl.poss_cn, cell, cl.wraps, g.periodic, g.nbins, g.search, cl.bin3s, cl.start, cl.order,
                 pair_r2_limit(cutoff), offset, i_p, j_p, shift, r, d, csr)


def build_cpu(positions, cell, pbc, cutoff, sorted=False):
    """Neighbour list on the CPU for validated inputs (no checks); ``sorted``: each centre's pairs
    by (j, shift), in place (see :func:`sort_pairs`)."""
    n = positions.shape[0]
    dtype = positions.dtype
    if n == 0:
        return NeighborList(
            np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3), np.int32),
            np.zeros((0, 3), dtype), np.zeros(0, dtype),
        )
    cl, offset = _binned_counts(positions, cell, pbc, cutoff)
    n_pairs = int(offset[-1])
    _check_memory(_estimate_pair_bytes(n_pairs, 8), f"the neighbour list ({n_pairs} pairs)")
    i_p = np.empty(n_pairs, np.int32)
    j_p = np.empty(n_pairs, np.int32)
    shift = np.empty((n_pairs, 3), np.int32)
    r = np.empty((n_pairs, 3), np.float64)
    d = np.empty(n_pairs, np.float64)
    _fill(cl, cell, cutoff, offset, i_p, j_p, shift, r, d, False)
    if dtype != np.float64:
        r = r.astype(dtype)
        d = d.astype(dtype)
    nl = NeighborList(i_p, j_p, shift, r, d)
    return _sort_rows(nl, offset) if sorted else nl


def build_csr_cpu(positions, cell, pbc, cutoff, dtype):
    """What the CSR feature kernel reads, for validated inputs (N >= 1): ``start`` (N + 1) with the
    neighbours of i at start[i]:start[i+1], ``j`` and the shift vectors shift @ cell in ``dtype``
    (no i, integer shifts, vectors or distances are written)."""
    cl, start = _binned_counts(positions, cell, pbc, cutoff)
    n_pairs = int(start[-1])
    _check_memory(n_pairs * (4 + 3 * np.dtype(dtype).itemsize), f"the neighbour list ({n_pairs} pairs)")
    j_p = np.empty(n_pairs, np.int32)
    shiftvec = np.empty((n_pairs, 3), dtype)
    _fill(cl, cell, cutoff, start, np.empty(0, np.int32), j_p, np.empty((0, 3), np.int32), shiftvec,
          np.empty(0, dtype), True)
    return start, j_p, shiftvec


def sort_pairs(nl):
    """Deterministic order: by i, then j, then shift (a copy of every array)."""
    order = np.lexsort((nl.shifts[:, 2], nl.shifts[:, 1], nl.shifts[:, 0], nl.j, nl.i))
    return NeighborList(*(np.ascontiguousarray(a[order]) for a in nl))


def _sort_rows(nl, offset):
    """``nl`` (pairs grouped by centre, centres increasing, rows at offset[i]:offset[i+1]) in the order of
    :func:`sort_pairs`, sorted row by row in place (a row of scratch per thread instead of a second copy of
    the list: the sorted list peaks at the unsorted one's memory). Falls back to :func:`sort_pairs` when the
    (j, shift) key would not fit in an int64 (shifts spanning ~1e6 cells on every axis)."""
    from ._kernels import neighbors_cpu as k

    if len(nl.j) == 0:
        return nl
    smin = nl.shifts.min(axis=0).astype(np.int64)
    span = nl.shifts.max(axis=0).astype(np.int64) - smin + 1
    if (len(offset) - 1) * int(span[0]) * int(span[1]) * int(span[2]) >= 2 ** 62:
        _check_memory(_estimate_pair_bytes(len(nl.j), 8), f"sorting the neighbour list ({len(nl.j)} pairs: a copy)")
        return sort_pairs(nl)
    k.sort_rows(offset, nl.j, nl.shifts, nl.vectors, nl.distances, smin, span)
    return nl


def neighbor_list(positions, cell=None, pbc=False, cutoff=None, *, sorted=False, device=None):
    """Full neighbour list with a linear-scaling cell list.

    Parameters
    ----------
    positions : (N, 3) float32 or float64 array, Å
        NumPy array (CPU) or a CUDA array (CuPy or any ``__cuda_array_interface__``
        object; the result then lives on the device).
    cell : (3, 3) array, Å, optional
        Cell vectors as rows. Vectors along non-periodic axes are ignored.
    pbc : bool or (3,) bool
        Periodicity per axis.
    cutoff : float, Å
        Pairs with r_ij < cutoff are returned, for every periodic image, so
        cutoffs larger than the cell are handled (up to
        ``fastfeat._box.MAX_SEARCH_CELLS`` images per atom). Exactly those whose
        reported distance (computed in float64) is below the cutoff: a pair at
        the cutoff is left out, as in ASE (the test is on |r_ij|^2, the same for
        (i, j, S) and (j, i, -S), so the list stays symmetric). Float32 positions
        get float32 vectors and distances, rounded from the float64 ones.
    sorted : bool
        Sort pairs by (i, j, shift) for a deterministic, comparable order.
        (Without it the order is still deterministic, by centre atom.)
    device : {"cpu", "cuda"}, optional
        Defaults to where `positions` lives.

    Returns
    -------
    NeighborList
        ``i, j, shifts, vectors, distances`` (see :class:`NeighborList`).
    """
    cutoff = check_cutoff(cutoff)
    pbc = check_pbc(pbc)
    on_device = _device.is_device_array(positions)
    dev = check_device(device) if device is not None else ("cuda" if on_device else "cpu")
    if dev == "cuda":
        _device.require_cuda()
        from ._neighbors_cuda import neighbor_list_cuda

        return neighbor_list_cuda(positions, cell, pbc, cutoff, sorted=sorted)
    if on_device:
        raise TypeError("`positions` is a CUDA array but device='cpu'; pass a NumPy array or device='cuda'")
    positions = check_positions(positions)
    cell = check_cell(cell, pbc)
    with _threads.cpu_kernels():
        return build_cpu(positions, cell, pbc, cutoff, sorted=sorted)
