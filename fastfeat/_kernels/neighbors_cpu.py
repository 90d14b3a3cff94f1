"""Cell-list neighbour search, Numba CPU kernels (parallel over atoms).

Kernels take arrays and scalars, write into preallocated outputs and check
nothing; fastfeat._neighbors validates and dispatches.
"""

import math

import numpy as np
from numba import njit, prange

__all__ = ["assign_bins", "count_pairs", "fill_pairs", "cell_starts", "sort_rows"]

#: centre atoms per parallel work item of fill_pairs (one distance buffer each)
_FILL_CHUNK = 64


@njit(cache=True)
def assign_bins(pos_nc, cell_cc, inv_box_cc, periodic_c, wrapped_c, origin_c, smin_c, extent_c, region_lo_cr,
                region_at_cr, region_scale_cr, n_regions_c, nbins_c, posw_nc, wrap_nc, bin3_nc, bin_n):
    """Wrap periodic coordinates into the cell (into [origin, origin + 1) on axes cut at an empty
    stretch) and give every atom its bin (axes with regions bin the mapped coordinate: gap-compressed
    or density-equalised; see fastfeat._box.BinGrid)."""
    n = pos_nc.shape[0]
    for i in range(n):
        s0 = pos_nc[i, 0] * inv_box_cc[0, 0] + pos_nc[i, 1] * inv_box_cc[1, 0] + pos_nc[i, 2] * inv_box_cc[2, 0]
        s1 = pos_nc[i, 0] * inv_box_cc[0, 1] + pos_nc[i, 1] * inv_box_cc[1, 1] + pos_nc[i, 2] * inv_box_cc[2, 1]
        s2 = pos_nc[i, 0] * inv_box_cc[0, 2] + pos_nc[i, 1] * inv_box_cc[1, 2] + pos_nc[i, 2] * inv_box_cc[2, 2]
        s = (s0, s1, s2)
        for c in range(3):
            x = s[c]
            w = 0
            if wrapped_c[c]:
                w = int(np.floor(x - origin_c[c]))
                x -= w
            nr = n_regions_c[c]
            if nr > 0:  # the last region starting at or below x (binary search), or the first
                lo = 0
                hi = nr - 1
                while lo < hi:
                    mid = (lo + hi + 1) >> 1
                    if region_lo_cr[c, mid] <= x:
                        lo = mid
                    else:
                        hi = mid - 1
                x = (x - region_lo_cr[c, lo]) * region_scale_cr[c, lo] + region_at_cr[c, lo]
            # bounded (non-periodic, or a periodic axis cut at an empty stretch) or mapped: normalised
            if nr > 0 or not periodic_c[c]:
                x = (x - smin_c[c]) / extent_c[c]
            # rounding may put an atom just outside the binned range: the edge bins take it;
            # compared before the float -> int conversion, which is undefined far out of range
            if x <= 0.0:
                b = 0
            elif x >= 1.0:
                b = nbins_c[c] - 1
            else:
                b = min(int(x * nbins_c[c]), nbins_c[c] - 1)
            bin3_nc[i, c] = b
            wrap_nc[i, c] = w
        bin_n[i] = (bin3_nc[i, 0] * nbins_c[1] + bin3_nc[i, 1]) * nbins_c[2] + bin3_nc[i, 2]
        for c in range(3):
            posw_nc[i, c] = (
                pos_nc[i, c]
                - wrap_nc[i, 0] * cell_cc[0, c]
                - wrap_nc[i, 1] * cell_cc[1, c]
                - wrap_nc[i, 2] * cell_cc[2, c]
            )


@njit(inline="always")
def _count_starts(key, m, n_keys, start):
    """start[k] = number of key[:m] entries below k (k = 0..n_keys): the segments of a counting sort."""
    for b in range(n_keys + 1):
        start[b] = 0
    for i in range(m):
        start[key[i] + 1] += 1
    for b in range(n_keys):
        start[b + 1] += start[b]


@njit(cache=True)
def cell_starts(bin_n, n_cells, start_b, order_n):
    """Counting sort of atoms by bin: atoms of bin b are order_n[start_b[b]:start_b[b+1]]."""
    n = bin_n.shape[0]
    _count_starts(bin_n, n, n_cells, start_b)
    fill = start_b[:-1].copy()
    for i in range(n):
        b = bin_n[i]
        order_n[fill[b]] = i
        fill[b] += 1


@njit(inline="always")
def _floor_div(b, n):
    """b // n for n > 0, without a 64-bit integer division when -n <= b < 2n (the bins next to the
    range, nearly every call): on Intel Skylake-SP such a division costs tens of cycles, and the
    cell-list walks call this for every row of bins of every atom (count_pairs 16 % faster there)."""
    if b >= 0:
        if b < n:
            return 0
        if b < 2 * n:
            return 1
    elif b >= -n:
        return -1
    return b // n


@njit(inline="always")
def _wrap_index(b, n, periodic):
    if periodic:
        t = _floor_div(b, n)
        return b - t * n, t, True
    if b < 0 or b >= n:
        return 0, 0, False
    return b, 0, True


@njit(inline="always")
def _max_bin(start_b):
    """Most atoms in one bin (at least 1): the size of a per-bin distance buffer."""
    m = 1
    for b in range(start_b.shape[0] - 1):
        m = max(m, start_b[b + 1] - start_b[b])
    return m


@njit(inline="always")
def _bin_r2(poss_cn, q0, q1, sx, sy, sz, xi, yi, zi, r2_b):
    """r2_b[q - q0] = |(poss[q] - x_i) + s|^2 for the atoms q0 <= q < q1 of one bin (positions as
    columns): a vectorisable pass; the arithmetic is that of count_pairs, so callers
    agree with it on borderline pairs. In this order the pair (j, i, -s) gets exactly the negated
    vector, so a pair at the cutoff to rounding is kept or dropped in both directions: the full list
    stays symmetric."""
    # views, so that the loop runs from 0 (no index wrap-around check: vectorises)
    rx = poss_cn[0, q0:q1]
    ry = poss_cn[1, q0:q1]
    rz = poss_cn[2, q0:q1]
    for t in range(q1 - q0):
        ex = (rx[t] - xi) + sx
        ey = (ry[t] - yi) + sy
        ez = (rz[t] - zi) + sz
        r2_b[t] = ex * ex + ey * ey + ez * ez


@njit(inline="always")
def _z_range(bz, search, n, periodic):
    """Bins bz - search .. bz + search along the innermost axis as (first, last, first image, last
    image): image t covers the unwrapped bins max(first, t n) .. min(last, t n + n - 1), which are
    the consecutive bins (u - t n) and so, in bin order, one contiguous run of atoms per image."""
    lo = bz - search
    hi = bz + search
    if periodic:
        return lo, hi, _floor_div(lo, n), _floor_div(hi, n)
    return max(lo, 0), min(hi, n - 1), 0, 0


@njit(inline="always")
def _z_run(start_b, row, zlo, zhi, t, n):
    """Atom rows q0:q1 of image t of the z-range (see _z_range) in the row of bins starting at `row`."""
    return start_b[row + max(zlo, t * n) - t * n], start_b[row + min(zhi, t * n + n - 1) - t * n + 1]


@njit(parallel=True, cache=True)
def count_pairs(poss_cn, cell_cc, periodic_c, nbins_c, search_c, bin3s_nc, start_b, order_n, r2_limit, count_n):
    """Number of neighbours (all images) of every atom with squared distance below `r2_limit`
    (fastfeat._box.pair_r2_limit: distance below the cutoff).

    `poss_cn` (wrapped positions as three columns, (3, N)) and `bin3s_nc` (bins) are in bin order
    (entry k is atom order_n[k]): centres and neighbours are visited in space
    order, so neighbour positions are read from contiguous memory, as whole vectors (on Intel
    Skylake-SP picking every third element of (N, 3) rows cost 4x per candidate; count_pairs 0.68x
    the time at 3 000 water atoms with columns). Along the
    innermost bin axis the bins of one image are consecutive, so each (row of
    bins, image) is one contiguous run of atoms.
    """
    n = poss_cn.shape[1]
    rc2 = r2_limit
    nz = nbins_c[2]
    for k in prange(n):
        i = order_n[k]
        cnt = 0
        xi, yi, zi = poss_cn[0, k], poss_cn[1, k], poss_cn[2, k]
        zlo, zhi, tz0, tz1 = _z_range(bin3s_nc[k, 2], search_c[2], nz, periodic_c[2])
        for d0 in range(-search_c[0], search_c[0] + 1):
            b0, t0, ok0 = _wrap_index(bin3s_nc[k, 0] + d0, nbins_c[0], periodic_c[0])
            if not ok0:
                continue
            for d1 in range(-search_c[1], search_c[1] + 1):
                b1, t1, ok1 = _wrap_index(bin3s_nc[k, 1] + d1, nbins_c[1], periodic_c[1])
                if not ok1:
                    continue
                row = (b0 * nbins_c[1] + b1) * nz
                for t2 in range(tz0, tz1 + 1):
                    sx = t0 * cell_cc[0, 0] + t1 * cell_cc[1, 0] + t2 * cell_cc[2, 0]
                    sy = t0 * cell_cc[0, 1] + t1 * cell_cc[1, 1] + t2 * cell_cc[2, 1]
                    sz = t0 * cell_cc[0, 2] + t1 * cell_cc[1, 2] + t2 * cell_cc[2, 2]
                    q0, q1 = _z_run(start_b, row, zlo, zhi, t2, nz)
                    # branch-free (vectorisable) count, the same arithmetic as fill_pairs (so both
                    # agree on every borderline pair); the centre itself is taken off below
                    rx = poss_cn[0, q0:q1]
                    ry = poss_cn[1, q0:q1]
                    rz = poss_cn[2, q0:q1]
                    for t in range(q1 - q0):
                        dx = (rx[t] - xi) + sx
                        dy = (ry[t] - yi) + sy
                        dz = (rz[t] - zi) + sz
                        cnt += dx * dx + dy * dy + dz * dz < rc2
                    if t0 == 0 and t1 == 0 and t2 == 0 and q0 <= k < q1:
                        cnt -= 1
        count_n[i] = cnt


@njit(parallel=True, cache=True)
def fill_pairs(
    poss_cn, cell_cc, wraps_nc, periodic_c, nbins_c, search_c, bin3s_nc, start_b, order_n, r2_limit,
    offset_n, i_p, j_p, shift_pc, r_pc, d_p, csr=False,
):
    """Write pairs of atom i at offset_n[i]:offset_n[i+1] (inputs in bin order, as count_pairs).

    Shifts refer to the *unwrapped* input positions:
    r_ij = pos[j] - pos[i] + shift @ cell.
    With ``csr`` only what the CSR feature kernel reads is written: j_p, and
    r_pc = shift @ cell (in r_pc's dtype); i_p, shift_pc and d_p are not touched.
    """
    n = poss_cn.shape[1]
    rc2 = r2_limit
    nz = nbins_c[2]
    max_run = _max_bin(start_b) * min(2 * search_c[2] + 1, nz)
    n_chunks = (n + _FILL_CHUNK - 1) // _FILL_CHUNK
    for c in prange(n_chunks):
        r2_b = np.empty(max_run)
        for k in range(c * _FILL_CHUNK, min(n, (c + 1) * _FILL_CHUNK)):
            i = order_n[k]
            p = offset_n[i]
            xi, yi, zi = poss_cn[0, k], poss_cn[1, k], poss_cn[2, k]
            zlo, zhi, tz0, tz1 = _z_range(bin3s_nc[k, 2], search_c[2], nz, periodic_c[2])
            for d0 in range(-search_c[0], search_c[0] + 1):
                b0, t0, ok0 = _wrap_index(bin3s_nc[k, 0] + d0, nbins_c[0], periodic_c[0])
                if not ok0:
                    continue
                for d1 in range(-search_c[1], search_c[1] + 1):
                    b1, t1, ok1 = _wrap_index(bin3s_nc[k, 1] + d1, nbins_c[1], periodic_c[1])
                    if not ok1:
                        continue
                    row = (b0 * nbins_c[1] + b1) * nz
                    for t2 in range(tz0, tz1 + 1):
                        sx = t0 * cell_cc[0, 0] + t1 * cell_cc[1, 0] + t2 * cell_cc[2, 0]
                        sy = t0 * cell_cc[0, 1] + t1 * cell_cc[1, 1] + t2 * cell_cc[2, 1]
                        sz = t0 * cell_cc[0, 2] + t1 * cell_cc[1, 2] + t2 * cell_cc[2, 2]
                        same_image = t0 == 0 and t1 == 0 and t2 == 0
                        q0, q1 = _z_run(start_b, row, zlo, zhi, t2, nz)
                        # squared distances of the whole run first, then the writes for the pairs inside
                        _bin_r2(poss_cn, q0, q1, sx, sy, sz, xi, yi, zi, r2_b)
                        u0 = t0 + wraps_nc[k, 0]
                        u1 = t1 + wraps_nc[k, 1]
                        u2 = t2 + wraps_nc[k, 2]
                        for q in range(q0, q1):
                            r2 = r2_b[q - q0]
                            if r2 >= rc2 or (same_image and q == k):
                                continue
                            j_p[p] = order_n[q]
                            s0 = u0 - wraps_nc[q, 0]
                            s1 = u1 - wraps_nc[q, 1]
                            s2 = u2 - wraps_nc[q, 2]
                            if csr:
                                for e in range(3):
                                    r_pc[p, e] = s0 * cell_cc[0, e] + s1 * cell_cc[1, e] + s2 * cell_cc[2, e]
                            else:
                                i_p[p] = i
                                shift_pc[p, 0] = s0
                                shift_pc[p, 1] = s1
                                shift_pc[p, 2] = s2
                                r_pc[p, 0] = (poss_cn[0, q] - xi) + sx
                                r_pc[p, 1] = (poss_cn[1, q] - yi) + sy
                                r_pc[p, 2] = (poss_cn[2, q] - zi) + sz
                                d_p[p] = np.sqrt(r2)
                            p += 1



#: rows up to this long are sorted by insertion (no allocation, fast on short rows), longer ones by argsort
_INSERTION_ROW = 96


@njit(inline="always")
def _insertion_order(key, idx, m):
    """Sort key[:m] in place by insertion; idx[:m] receives the original positions in sorted order."""
    for p in range(m):
        idx[p] = p
    for p in range(1, m):
        kv = key[p]
        iv = idx[p]
        q = p - 1
        while q >= 0 and key[q] > kv:
            key[q + 1] = key[q]
            idx[q + 1] = idx[q]
            q -= 1
        key[q + 1] = kv
        idx[q + 1] = iv


@njit(parallel=True, cache=True)
def sort_rows(offset_n, j_p, shift_pc, r_pc, d_p, smin_c, span_c):
    """Sort each CSR row (the pairs offset_n[i]:offset_n[i+1] of centre i) by (j, shift) in place.

    The key of a pair is ((j * span0 + s0 - smin0) * span1 + s1 - smin1) * span2 + s2 - smin2, which the
    caller has checked fits in an int64; keys are unique within a row (one pair per (j, image)), so the
    order is fully determined. Only a row's worth of scratch per work item: no copy of the list.
    """
    n = offset_n.shape[0] - 1
    chunk = 256
    for c in prange((n + chunk - 1) // chunk):
        i0 = c * chunk
        i1 = min(n, i0 + chunk)
        cap = 1
        for i in range(i0, i1):
            cap = max(cap, offset_n[i + 1] - offset_n[i])
        key = np.empty(cap, np.int64)
        idx = np.empty(cap, np.int64)
        jt = np.empty(cap, j_p.dtype)
        st = np.empty((cap, 3), shift_pc.dtype)
        rt = np.empty((cap, 3), r_pc.dtype)
        dt = np.empty(cap, d_p.dtype)
        for i in range(i0, i1):
            p0 = offset_n[i]
            m = offset_n[i + 1] - p0
            for p in range(m):
                q = p0 + p
                key[p] = (((np.int64(j_p[q]) * span_c[0] + (shift_pc[q, 0] - smin_c[0])) * span_c[1]
                           + (shift_pc[q, 1] - smin_c[1])) * span_c[2] + (shift_pc[q, 2] - smin_c[2]))
            if m <= _INSERTION_ROW:
                _insertion_order(key, idx, m)
                order = idx
            else:
                order = np.argsort(key[:m])
            for p in range(m):
                q = p0 + order[p]
                jt[p] = j_p[q]
                st[p, 0] = shift_pc[q, 0]
                st[p, 1] = shift_pc[q, 1]
                st[p, 2] = shift_pc[q, 2]
                rt[p, 0] = r_pc[q, 0]
                rt[p, 1] = r_pc[q, 1]
                rt[p, 2] = r_pc[q, 2]
                dt[p] = d_p[q]
            j_p[p0:p0 + m] = jt[:m]
            shift_pc[p0:p0 + m] = st[:m]
            r_pc[p0:p0 + m] = rt[:m]
            d_p[p0:p0 + m] = dt[:m]


@njit(cache=True)
def max_displacement2(pos_nc, ref_nc):
    """max_i |pos_i - ref_i|^2 (the neighbour-list reuse test), NaN if any position is NaN or inf.

    NumPy: ``np.max(((pos - ref) ** 2).sum(1))`` with non-finite positions giving NaN.
    """
    m = 0.0
    for i in range(pos_nc.shape[0]):
        dx = pos_nc[i, 0] - ref_nc[i, 0]
        dy = pos_nc[i, 1] - ref_nc[i, 1]
        dz = pos_nc[i, 2] - ref_nc[i, 2]
        d2 = dx * dx + dy * dy + dz * dz
        if not d2 <= m:  # larger, or NaN (a non-finite position: inf - ref is inf, inf - inf NaN)
            if not math.isfinite(d2):
                return math.nan
            m = d2
    return m
