"""Cell-list neighbour search, Numba CUDA kernels (batched over structures).

The stages are separate, named kernels, launched in this order by
fastfeat._neighbors_cuda:

1. ``structure_ids``      atom -> structure of a batch (binary search in the atom offsets)
2. ``bounding_box``       per-structure min/max of the fractional coordinates, non-finite flag
3. ``assign_cells``       wrap periodic coordinates, bin of every atom (global bin numbering)
4. ``count_cells``        atoms per bin (atomics)
5. ``scan_blocks`` /      exclusive prefix sum (bin starts, later pair offsets)
   ``add_block_offsets``
6. ``scatter_atoms``      atoms into their bin's segment (atomics, unordered)
7. ``stable_order``       make each bin segment ascending in atom index (same order as the CPU
                          counting sort) and copy wrapped positions in bin order
8. ``count_pairs``        neighbours of every atom, all images (thread per atom, bin order)
9. ``fill_pairs`` /       write pairs at the prefix-sum offsets, same order as the CPU kernel
   ``fill_csr``           (full list, or the CSR (j, shift vector) the feature kernels read)
10. ``sort_segments``     optional: sort each centre's pairs by (j, shift)

Every structure s of a batch has its own bin grid (``fastfeat._box.bin_grid``);
its bins are numbered from ``bin_base_s[s]``. Geometry is computed in float64
whatever the dtype of the positions, exactly as the CPU kernels do. Shifts
refer to the unwrapped input positions: r_ij = pos[j] - pos[i] + shift @ cell.
Kernels take arrays and scalars, write into preallocated outputs and check
nothing.
"""

import math

from .. import _compat  # noqa: F401  (before numba.cuda)
from numba import cuda, float64, int64
try:  # numba-cuda (the maintained CUDA target)
    from numba.cuda.core import config as _config
except ImportError:  # the CUDA target built into older Numba
    from numba.core import config as _config

__all__ = [
    "SIMULATOR",
    "THREADS",
    "structure_ids",
    "bounding_box",
    "assign_cells",
    "count_cells",
    "scan_blocks",
    "add_block_offsets",
    "scatter_atoms",
    "stable_order",
    "count_pairs",
    "fill_pairs",
    "fill_csr",
    "sort_segments",
    "fill_value",
]

#: True when Numba runs kernels in its CUDA simulator (NUMBA_ENABLE_CUDASIM=1).
SIMULATOR = bool(_config.ENABLE_CUDASIM)
#: Threads per block of the one-dimensional kernels (a power of two). Small in
#: the simulator, so that multi-block code paths are exercised on tiny inputs.
THREADS = 32 if SIMULATOR else 256


@cuda.jit(cache=True)
def fill_value(out, value):
    """out[:] = value."""
    k = cuda.grid(1)
    if k < out.shape[0]:
        out[k] = value


@cuda.jit(cache=True)
def structure_ids(atom_start_s, struct_n):
    """struct_n[i] = s with atom_start_s[s] <= i < atom_start_s[s + 1] (empty structures skipped)."""
    i = cuda.grid(1)
    if i >= struct_n.shape[0]:
        return
    lo = 0
    hi = atom_start_s.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if atom_start_s[mid] <= i:
            lo = mid
        else:
            hi = mid
    struct_n[i] = lo


@cuda.jit(cache=True)
def bounding_box(pos_nc, struct_n, inv_box_scc, smin_sc, smax_sc, bad):
    """Per-structure min/max of s = pos @ inv_box; bad[0] = min index of a non-finite atom.

    smin_sc/smax_sc must hold +inf/-inf and bad[0] a value >= N on entry.
    Blocks whose atoms all belong to one structure reduce in shared memory
    first (one atomic per block and axis).
    """
    sh = cuda.shared.array((6, THREADS), float64)
    tid = cuda.threadIdx.x
    n = pos_nc.shape[0]
    first = cuda.blockIdx.x * cuda.blockDim.x
    last = min(first + cuda.blockDim.x, n) - 1
    i = first + tid
    s = struct_n[min(i, last)]
    lo0 = math.inf
    lo1 = math.inf
    lo2 = math.inf
    hi0 = -math.inf
    hi1 = -math.inf
    hi2 = -math.inf
    if i < n:
        x = float64(pos_nc[i, 0])
        y = float64(pos_nc[i, 1])
        z = float64(pos_nc[i, 2])
        if math.isinf(x) or math.isnan(x) or math.isinf(y) or math.isnan(y) or math.isinf(z) or math.isnan(z):
            cuda.atomic.min(bad, 0, int64(i))
        else:
            lo0 = x * inv_box_scc[s, 0, 0] + y * inv_box_scc[s, 1, 0] + z * inv_box_scc[s, 2, 0]
            lo1 = x * inv_box_scc[s, 0, 1] + y * inv_box_scc[s, 1, 1] + z * inv_box_scc[s, 2, 1]
            lo2 = x * inv_box_scc[s, 0, 2] + y * inv_box_scc[s, 1, 2] + z * inv_box_scc[s, 2, 2]
            hi0 = lo0
            hi1 = lo1
            hi2 = lo2
    if struct_n[first] == struct_n[last]:
        sh[0, tid] = lo0
        sh[1, tid] = lo1
        sh[2, tid] = lo2
        sh[3, tid] = hi0
        sh[4, tid] = hi1
        sh[5, tid] = hi2
        cuda.syncthreads()
        stride = cuda.blockDim.x // 2
        while stride > 0:
            if tid < stride:
                for c in range(3):
                    sh[c, tid] = min(sh[c, tid], sh[c, tid + stride])
                    sh[3 + c, tid] = max(sh[3 + c, tid], sh[3 + c, tid + stride])
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            for c in range(3):
                cuda.atomic.min(smin_sc, (s, c), sh[c, 0])
                cuda.atomic.max(smax_sc, (s, c), sh[3 + c, 0])
    elif i < n:
        cuda.atomic.min(smin_sc, (s, 0), lo0)
        cuda.atomic.min(smin_sc, (s, 1), lo1)
        cuda.atomic.min(smin_sc, (s, 2), lo2)
        cuda.atomic.max(smax_sc, (s, 0), hi0)
        cuda.atomic.max(smax_sc, (s, 1), hi1)
        cuda.atomic.max(smax_sc, (s, 2), hi2)


@cuda.jit(cache=True)
def assign_cells(
    pos_nc, struct_n, cell_scc, inv_box_scc, periodic_sc, wrapped_sc, origin_sc, smin_sc, extent_sc,
    region_lo_scr, region_at_scr, region_scale_scr, n_regions_sc, nbins_sc, bin_base_s, posw_nc, wrap_nc, bin3_nc,
    bin_n,
):
    """Wrap periodic coordinates into the cell (into [origin, origin + 1) on axes cut at an empty
    stretch) and give every atom its (global) bin (axes with regions bin the mapped coordinate:
    gap-compressed or density-equalised; see fastfeat._box.BinGrid and the CPU assign_bins)."""
    i = cuda.grid(1)
    if i >= pos_nc.shape[0]:
        return
    s = struct_n[i]
    p0 = float64(pos_nc[i, 0])
    p1 = float64(pos_nc[i, 1])
    p2 = float64(pos_nc[i, 2])
    for c in range(3):
        x = p0 * inv_box_scc[s, 0, c] + p1 * inv_box_scc[s, 1, c] + p2 * inv_box_scc[s, 2, c]
        w = 0
        if wrapped_sc[s, c]:
            w = int(math.floor(x - origin_sc[s, c]))
            x -= w
        nr = n_regions_sc[s, c]
        if nr > 0:  # the last region starting at or below x (binary search), or the first
            lo = 0
            hi = nr - 1
            while lo < hi:
                mid = (lo + hi + 1) >> 1
                if region_lo_scr[s, c, mid] <= x:
                    lo = mid
                else:
                    hi = mid - 1
            x = (x - region_lo_scr[s, c, lo]) * region_scale_scr[s, c, lo] + region_at_scr[s, c, lo]
        # bounded (non-periodic, or a periodic axis cut at an empty stretch) or mapped: normalised
        if nr > 0 or not periodic_sc[s, c]:
            x = (x - smin_sc[s, c]) / extent_sc[s, c]
        # compared before the float -> int conversion, which is undefined far out of range
        if x <= 0.0:
            b = 0
        elif x >= 1.0:
            b = nbins_sc[s, c] - 1
        else:
            b = min(int(x * nbins_sc[s, c]), nbins_sc[s, c] - 1)
        bin3_nc[i, c] = b
        wrap_nc[i, c] = w
    bin_n[i] = bin_base_s[s] + (bin3_nc[i, 0] * nbins_sc[s, 1] + bin3_nc[i, 1]) * nbins_sc[s, 2] + bin3_nc[i, 2]
    for c in range(3):
        posw_nc[i, c] = (
            pos_nc[i, c]
            - wrap_nc[i, 0] * cell_scc[s, 0, c]
            - wrap_nc[i, 1] * cell_scc[s, 1, c]
            - wrap_nc[i, 2] * cell_scc[s, 2, c]
        )


@cuda.jit(cache=True)
def count_cells(bin_n, count_b):
    """count_b[b] += number of atoms in bin b (count_b zeroed by the caller)."""
    i = cuda.grid(1)
    if i < bin_n.shape[0]:
        cuda.atomic.add(count_b, bin_n[i], 1)


@cuda.jit(cache=True)
def scan_blocks(x, y, block_sums):
    """Inclusive scan of x within each block of THREADS elements; block totals to block_sums."""
    sh = cuda.shared.array(THREADS, int64)
    tid = cuda.threadIdx.x
    k = cuda.blockIdx.x * cuda.blockDim.x + tid
    n = x.shape[0]
    v = int64(0)
    if k < n:
        v = x[k]
    sh[tid] = v
    cuda.syncthreads()
    d = 1
    while d < cuda.blockDim.x:
        t = sh[tid]
        if tid >= d:
            t += sh[tid - d]
        cuda.syncthreads()
        sh[tid] = t
        cuda.syncthreads()
        d *= 2
    if k < n:
        y[k] = sh[tid]
    if tid == cuda.blockDim.x - 1:
        block_sums[cuda.blockIdx.x] = sh[tid]


@cuda.jit(cache=True)
def add_block_offsets(y, scanned_sums):
    """y[k] += inclusive sum of all blocks before k's block."""
    k = cuda.grid(1)
    b = cuda.blockIdx.x
    if b > 0 and k < y.shape[0]:
        y[k] += scanned_sums[b - 1]


@cuda.jit(cache=True)
def scatter_atoms(bin_n, start_b, fill_b, tmp_order_n):
    """Put every atom into its bin's segment of tmp_order_n (any order within a bin)."""
    i = cuda.grid(1)
    if i < bin_n.shape[0]:
        b = bin_n[i]
        slot = cuda.atomic.add(fill_b, b, 1)
        tmp_order_n[start_b[b] + slot] = i


@cuda.jit(cache=True)
def stable_order(bin_n, start_b, tmp_order_n, posw_nc, order_n, posw_sorted_nc):
    """Atom i goes to rank (number of smaller atom indices in its bin) within the bin segment."""
    i = cuda.grid(1)
    if i >= bin_n.shape[0]:
        return
    b = bin_n[i]
    q0 = start_b[b]
    q1 = start_b[b + 1]
    rank = 0
    for q in range(q0, q1):
        if tmp_order_n[q] < i:
            rank += 1
    order_n[q0 + rank] = i
    for c in range(3):
        posw_sorted_nc[q0 + rank, c] = posw_nc[i, c]


@cuda.jit(device=True, inline=True)
def _wrap_index(b, n, periodic):
    if periodic:
        t = b // n
        return b - t * n, t, True
    if b < 0 or b >= n:
        return 0, 0, False
    return b, 0, True


@cuda.jit(cache=True)
def count_pairs(
    posw_sorted_nc, order_n, struct_n, cell_scc, periodic_sc, nbins_sc, search_sc, bin_base_s, bin3_nc, start_b,
    r2_limit, count_n,
):
    """Number of neighbours (all images) of atom order_n[k] (thread k) with squared distance below
    `r2_limit` (fastfeat._box.pair_r2_limit: distance below the cutoff)."""
    k = cuda.grid(1)
    if k >= order_n.shape[0]:
        return
    i = order_n[k]
    s = struct_n[i]
    rc2 = r2_limit
    cnt = 0
    xi = posw_sorted_nc[k, 0]
    yi = posw_sorted_nc[k, 1]
    zi = posw_sorted_nc[k, 2]
    nb1 = nbins_sc[s, 1]
    nb2 = nbins_sc[s, 2]
    base = bin_base_s[s]
    for d0 in range(-search_sc[s, 0], search_sc[s, 0] + 1):
        b0, t0, ok0 = _wrap_index(bin3_nc[i, 0] + d0, nbins_sc[s, 0], periodic_sc[s, 0])
        if not ok0:
            continue
        for d1 in range(-search_sc[s, 1], search_sc[s, 1] + 1):
            b1, t1, ok1 = _wrap_index(bin3_nc[i, 1] + d1, nb1, periodic_sc[s, 1])
            if not ok1:
                continue
            for d2 in range(-search_sc[s, 2], search_sc[s, 2] + 1):
                b2, t2, ok2 = _wrap_index(bin3_nc[i, 2] + d2, nb2, periodic_sc[s, 2])
                if not ok2:
                    continue
                sx = t0 * cell_scc[s, 0, 0] + t1 * cell_scc[s, 1, 0] + t2 * cell_scc[s, 2, 0]
                sy = t0 * cell_scc[s, 0, 1] + t1 * cell_scc[s, 1, 1] + t2 * cell_scc[s, 2, 1]
                sz = t0 * cell_scc[s, 0, 2] + t1 * cell_scc[s, 1, 2] + t2 * cell_scc[s, 2, 2]
                same_image = t0 == 0 and t1 == 0 and t2 == 0
                b = base + (b0 * nb1 + b1) * nb2 + b2
                for q in range(start_b[b], start_b[b + 1]):
                    if same_image and order_n[q] == i:
                        continue
                    dx = (posw_sorted_nc[q, 0] - xi) + sx
                    dy = (posw_sorted_nc[q, 1] - yi) + sy
                    dz = (posw_sorted_nc[q, 2] - zi) + sz
                    if dx * dx + dy * dy + dz * dz < rc2:
                        cnt += 1
    count_n[i] = cnt


@cuda.jit(cache=True)
def fill_pairs(
    posw_sorted_nc, order_n, struct_n, cell_scc, wrap_nc, periodic_sc, nbins_sc, search_sc, bin_base_s, bin3_nc,
    start_b, r2_limit, offset_n, i_p, j_p, shift_pc, r_pc, d_p,
):
    """Write the pairs of atom order_n[k] at offset_n[i]:offset_n[i+1], in the CPU kernel's order.

    Shifts refer to the unwrapped positions: r_ij = pos[j] - pos[i] + shift @ cell.
    """
    k = cuda.grid(1)
    if k >= order_n.shape[0]:
        return
    i = order_n[k]
    s = struct_n[i]
    rc2 = r2_limit
    p = offset_n[i]
    xi = posw_sorted_nc[k, 0]
    yi = posw_sorted_nc[k, 1]
    zi = posw_sorted_nc[k, 2]
    nb1 = nbins_sc[s, 1]
    nb2 = nbins_sc[s, 2]
    base = bin_base_s[s]
    for d0 in range(-search_sc[s, 0], search_sc[s, 0] + 1):
        b0, t0, ok0 = _wrap_index(bin3_nc[i, 0] + d0, nbins_sc[s, 0], periodic_sc[s, 0])
        if not ok0:
            continue
        for d1 in range(-search_sc[s, 1], search_sc[s, 1] + 1):
            b1, t1, ok1 = _wrap_index(bin3_nc[i, 1] + d1, nb1, periodic_sc[s, 1])
            if not ok1:
                continue
            for d2 in range(-search_sc[s, 2], search_sc[s, 2] + 1):
                b2, t2, ok2 = _wrap_index(bin3_nc[i, 2] + d2, nb2, periodic_sc[s, 2])
                if not ok2:
                    continue
                sx = t0 * cell_scc[s, 0, 0] + t1 * cell_scc[s, 1, 0] + t2 * cell_scc[s, 2, 0]
                sy = t0 * cell_scc[s, 0, 1] + t1 * cell_scc[s, 1, 1] + t2 * cell_scc[s, 2, 1]
                sz = t0 * cell_scc[s, 0, 2] + t1 * cell_scc[s, 1, 2] + t2 * cell_scc[s, 2, 2]
                same_image = t0 == 0 and t1 == 0 and t2 == 0
                b = base + (b0 * nb1 + b1) * nb2 + b2
                for q in range(start_b[b], start_b[b + 1]):
                    j = order_n[q]
                    if same_image and j == i:
                        continue
                    dx = (posw_sorted_nc[q, 0] - xi) + sx
                    dy = (posw_sorted_nc[q, 1] - yi) + sy
                    dz = (posw_sorted_nc[q, 2] - zi) + sz
                    r2 = dx * dx + dy * dy + dz * dz
                    if r2 < rc2:
                        i_p[p] = i
                        j_p[p] = j
                        shift_pc[p, 0] = t0 - wrap_nc[j, 0] + wrap_nc[i, 0]
                        shift_pc[p, 1] = t1 - wrap_nc[j, 1] + wrap_nc[i, 1]
                        shift_pc[p, 2] = t2 - wrap_nc[j, 2] + wrap_nc[i, 2]
                        r_pc[p, 0] = dx
                        r_pc[p, 1] = dy
                        r_pc[p, 2] = dz
                        d_p[p] = math.sqrt(r2)
                        p += 1


@cuda.jit(cache=True)
def fill_csr(
    posw_sorted_nc, order_n, struct_n, cell_scc, wrap_nc, periodic_sc, nbins_sc, search_sc, bin_base_s, bin3_nc,
    start_b, r2_limit, offset_n, j_p, rbuild_pc,
):
    """Like fill_pairs, but writes only what the feature kernels read: j and the pair vector r_ij at the
    build (Å), computed in float64 from the float64 positions and cast to rbuild_pc's dtype: a float32 list
    keeps full precision wherever the atoms sit (the feature kernels add the small displacements since)."""
    k = cuda.grid(1)
    if k >= order_n.shape[0]:
        return
    i = order_n[k]
    s = struct_n[i]
    rc2 = r2_limit
    p = offset_n[i]
    xi = posw_sorted_nc[k, 0]
    yi = posw_sorted_nc[k, 1]
    zi = posw_sorted_nc[k, 2]
    nb1 = nbins_sc[s, 1]
    nb2 = nbins_sc[s, 2]
    base = bin_base_s[s]
    for d0 in range(-search_sc[s, 0], search_sc[s, 0] + 1):
        b0, t0, ok0 = _wrap_index(bin3_nc[i, 0] + d0, nbins_sc[s, 0], periodic_sc[s, 0])
        if not ok0:
            continue
        for d1 in range(-search_sc[s, 1], search_sc[s, 1] + 1):
            b1, t1, ok1 = _wrap_index(bin3_nc[i, 1] + d1, nb1, periodic_sc[s, 1])
            if not ok1:
                continue
            for d2 in range(-search_sc[s, 2], search_sc[s, 2] + 1):
                b2, t2, ok2 = _wrap_index(bin3_nc[i, 2] + d2, nb2, periodic_sc[s, 2])
                if not ok2:
                    continue
                sx = t0 * cell_scc[s, 0, 0] + t1 * cell_scc[s, 1, 0] + t2 * cell_scc[s, 2, 0]
                sy = t0 * cell_scc[s, 0, 1] + t1 * cell_scc[s, 1, 1] + t2 * cell_scc[s, 2, 1]
                sz = t0 * cell_scc[s, 0, 2] + t1 * cell_scc[s, 1, 2] + t2 * cell_scc[s, 2, 2]
                same_image = t0 == 0 and t1 == 0 and t2 == 0
                b = base + (b0 * nb1 + b1) * nb2 + b2
                for q in range(start_b[b], start_b[b + 1]):
                    j = order_n[q]
                    if same_image and j == i:
                        continue
                    dx = (posw_sorted_nc[q, 0] - xi) + sx
                    dy = (posw_sorted_nc[q, 1] - yi) + sy
                    dz = (posw_sorted_nc[q, 2] - zi) + sz
                    if dx * dx + dy * dy + dz * dz < rc2:
                        j_p[p] = j
                        rbuild_pc[p, 0] = dx
                        rbuild_pc[p, 1] = dy
                        rbuild_pc[p, 2] = dz
                        p += 1


@cuda.jit(device=True, inline=True)
def _key_less(j_p, shift_pc, a, b):
    if j_p[a] != j_p[b]:
        return j_p[a] < j_p[b]
    for c in range(3):
        if shift_pc[a, c] != shift_pc[b, c]:
            return shift_pc[a, c] < shift_pc[b, c]
    return False


@cuda.jit(cache=True)
def sort_segments(
    offset_n, i_p, j_p, shift_pc, r_pc, d_p, i_out, j_out, shift_out, r_out, d_out,
):
    """Sort each centre's pairs by (j, shift): pair p goes to its rank within its segment."""
    p = cuda.grid(1)
    if p >= i_p.shape[0]:
        return
    i = i_p[p]
    a = offset_n[i]
    b = offset_n[i + 1]
    rank = 0
    for q in range(a, b):
        if _key_less(j_p, shift_pc, q, p):
            rank += 1
    t = a + rank
    i_out[t] = i
    j_out[t] = j_p[p]
    for c in range(3):
        shift_out[t, c] = shift_pc[p, c]
        r_out[t, c] = r_pc[p, c]
    d_out[t] = d_p[p]
