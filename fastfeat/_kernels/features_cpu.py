"""Invariant (G2, G4) and covariant (V) features, Numba CPU kernels.

Two kernels share the per-neighbour and per-pair arithmetic:

- ``features``: over a CSR neighbour list (i sorted) with shift vectors; it
  recomputes r_ij = pos[j] - pos[i] + shiftvec from current positions, so a
  list built with a skin is reused across MD steps (pairs beyond the cutoff
  are skipped).
- ``features_cells``: straight from the cell list, no pair list is stored
  (one-shot featurization: less memory, one pass).

Parallel over chunks of centre atoms; G4 over unordered pairs of neighbours
inside the angular cutoff. Accumulation in float64, one write per output
element. No checks.
"""

import math

import numpy as np
from numba import njit, prange

from .neighbors_cpu import _bin_r2, _max_bin, _wrap_index

__all__ = ["features", "features_cells"]

#: most atoms per parallel work item (scratch arrays are allocated once per chunk)
_CHUNK = 64


@njit(inline="always")
def _chunk_size(n):
    """Atoms per work item: _CHUNK, down to 8 so that small systems still make ~32 items
    (load balance over threads; the thread count itself is not a cacheable constant)."""
    return max(8, min(_CHUNK, (n + 31) // 32))


@njit(inline="always")
def _gaussian_ladders(d, lad_eta, lad_rs0, lad_delta, lad_cnt, lad_start, lad_q, lad_c, out_q):
    """out_q[q] = exp(-eta_q (d - rs_q)^2) for every parameter q.

    Parameters sharing eta with equally spaced r_s form a ladder: the term
    nearest to d is one exp, its neighbours follow by multiplying with ratios
    that only shrink (no overflow), so a ladder of any length costs 3 exps.
    """
    for l in range(lad_eta.shape[0]):
        eta = lad_eta[l]
        cnt = lad_cnt[l]
        s0 = lad_start[l]
        delta = lad_delta[l]
        t = d - lad_rs0[l]
        if cnt == 1:
            out_q[lad_q[s0]] = math.exp(-eta * t * t)
            continue
        qs = int(math.floor(t / delta + 0.5))
        if qs < 0:
            qs = 0
        elif qs > cnt - 1:
            qs = cnt - 1
        u = t - qs * delta
        val = math.exp(-eta * u * u)
        out_q[lad_q[s0 + qs]] = val
        c = lad_c[l]
        r_up = math.exp(2.0 * eta * delta * u - eta * delta * delta)
        r = r_up
        v = val
        for q in range(qs + 1, cnt):
            v *= r
            r *= c
            out_q[lad_q[s0 + q]] = v
        # downward ratio: exp(-2 eta delta u - eta delta^2) = c / (upward ratio); one exp fewer,
        # unless c underflows (very steep ladders)
        if c > 1e-250:
            r = c / r_up
        else:
            r = math.exp(-2.0 * eta * delta * u - eta * delta * delta)
        v = val
        for q in range(qs - 1, -1, -1):
            v *= r
            r *= c
            out_q[lad_q[s0 + q]] = v

#: Taylor coefficients of cos(sqrt(y)) = sum_n (-y)^n / (2n)!, n = 0..13: for y <= pi^2 the
#: truncation error is below 3e-16, so the cosine cutoff needs neither sqrt nor cos
_COS_SQRT = tuple((-1.0) ** n / math.factorial(2 * n) for n in range(14))


@njit(inline="always")
def _cutoff_r2(r2, w2):
    """0.5 (cos(pi r / rc) + 1) from r^2 (r < rc), with w2 = (pi / rc)^2."""
    # Estrin's scheme: short dependency chains instead of one 13-step Horner chain
    c = _COS_SQRT
    y = w2 * r2
    y2 = y * y
    y4 = y2 * y2
    y8 = y4 * y4
    p01 = c[0] + c[1] * y
    p23 = c[2] + c[3] * y
    p45 = c[4] + c[5] * y
    p67 = c[6] + c[7] * y
    p89 = c[8] + c[9] * y
    pab = c[10] + c[11] * y
    pcd = c[12] + c[13] * y
    p03 = p01 + p23 * y2
    p47 = p45 + p67 * y2
    p8b = p89 + pab * y2
    p07 = p03 + p47 * y4
    p8d = p8b + pcd * y4
    p = p07 + p8d * y8
    return 0.5 * (p + 1.0)


# The helpers below index 2-D scratch arrays by row instead of taking row views: a view in the
# innermost loops costs a reference-count update per use.
@njit(inline="always")
def _squares(x, sq, row):
    """sq[row, k] = x ** (2 ** k)."""
    sq[row, 0] = x
    for k in range(1, sq.shape[1]):
        sq[row, k] = sq[row, k - 1] * sq[row, k - 1]


@njit(inline="always")
def _from_bits(sq, srow, bits, brow, nbits):
    """Product of sq[srow, bits[brow, t]] for t < nbits: x ** n from the binary digits of n."""
    r = sq[srow, bits[brow, 0]]
    for t in range(1, nbits):
        r *= sq[srow, bits[brow, t]]
    return r


@njit(inline="always")
def _exp_table(r2, eta_u, ebits_u, enb_u, sq, out, row):
    """out[row, u] = exp(-eta_u r2). When eta_u is an integer multiple n of eta_u[0]
    it is exp(-eta_u[0] r2) ** n, from a table of repeated squares (no exp)."""
    _squares(math.exp(-eta_u[0] * r2), sq, 0)
    for u in range(eta_u.shape[0]):
        if enb_u[u] > 0:
            out[row, u] = _from_bits(sq, 0, ebits_u, u, enb_u[u])
        else:
            out[row, u] = math.exp(-eta_u[u] * r2)


@njit(forceinline=True, cache=True)
def _angular_terms(
    m, acut, pi_ra, ax, ay, az, ad, asp, ae,
    eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, use_grid, ang_u_q, ang_v_q,
    pair_ab, n_ang, pu, tv, sq_e, sq_b, acc_a,
):
    """G4 over unordered pairs (k1 < k2) of the m stored neighbours (ad holds 1 / r)."""
    n_u = eta_u.shape[0]
    n_v = zeta_v.shape[0]
    n_uv = n_u * n_v
    for k1 in range(m):
        for k2 in range(k1 + 1, m):
            ex = ax[k2] - ax[k1]
            ey = ay[k2] - ay[k1]
            ez = az[k2] - az[k1]
            djk2 = ex * ex + ey * ey + ez * ez
            if djk2 >= acut * acut:
                continue
            fcjk = _cutoff_r2(djk2, pi_ra * pi_ra)
            cos_t = (ax[k1] * ax[k2] + ay[k1] * ay[k2] + az[k1] * az[k2]) * (ad[k1] * ad[k2])
            _exp_table(djk2, eta_u, ebits_u, enb_u, sq_e, pu, 0)
            for u in range(n_u):
                pu[0, u] *= ae[k1, u] * ae[k2, u] * fcjk
            for l in range(lam_l.shape[0]):
                b = 1.0 + lam_l[l] * cos_t
                if b < 0.0:
                    b = 0.0
                _squares(b, sq_b, l)
            for v in range(n_v):
                l = lam_idx_v[v]
                if znb_v[v] > 0:
                    tv[v] = pref_v[v] * _from_bits(sq_b, l, zbits_v, v, znb_v[v])
                else:
                    tv[v] = pref_v[v] * sq_b[l, 0] ** zeta_v[v]
            pt = pair_ab[asp[k1], asp[k2]]
            if use_grid:
                # outer product P[u] * T[v], contiguous in v
                base = pt * n_uv
                for u in range(n_u):
                    w = pu[0, u]
                    row = base + u * n_v
                    for v in range(n_v):
                        acc_a[row + v] += w * tv[v]
            else:
                base = pt * n_ang
                for q in range(n_ang):
                    acc_a[base + q] += tv[ang_v_q[q]] * pu[0, ang_u_q[q]]


@njit(forceinline=True, cache=True)
def _store(i, acc_r, acc_v, acc_a, grid_q, use_grid, n_uv, n_pairs, n_ang, n_radial_total, g_nf, v_nfc):
    for f in range(n_radial_total):
        g_nf[i, f] = acc_r[f]
    for f in range(v_nfc.shape[1]):
        v_nfc[i, f, 0] = acc_v[f, 0]
        v_nfc[i, f, 1] = acc_v[f, 1]
        v_nfc[i, f, 2] = acc_v[f, 2]
    for pt in range(n_pairs):
        col = n_radial_total + pt * n_ang
        if use_grid:
            base = pt * n_uv
            for q in range(n_ang):
                g_nf[i, col + q] = acc_a[base + grid_q[q]]
        else:
            base = pt * n_ang
            for q in range(n_ang):
                g_nf[i, col + q] = acc_a[base + q]


@njit(parallel=True, cache=True)
def features(
    pos_nc, species_n, start_n, j_p, shiftvec_pc,
    cutoff, acut,
    n_rad, rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c,
    n_cov, cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c,
    eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, grid_q, use_grid, ang_u_q, ang_v_q,
    pair_ab, n_radial_total,
    g_nf, v_nfc, overlap_n,
):
    """Features from a CSR neighbour list: neighbours of i are j_p[start_n[i]:start_n[i+1]]."""
    n = pos_nc.shape[0]
    n_ang = grid_q.shape[0]
    n_u = eta_u.shape[0]
    n_v = zeta_v.shape[0]
    n_uv = n_u * n_v
    n_sp = pair_ab.shape[0]
    n_pairs = n_sp * (n_sp + 1) // 2
    pi_rc = math.pi / cutoff
    pi_ra = math.pi / acut
    rc2 = cutoff * cutoff
    chunk = _chunk_size(n)
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        i0 = c * chunk
        i1 = min(n, i0 + chunk)
        maxdeg = 0
        for i in range(i0, i1):
            maxdeg = max(maxdeg, start_n[i + 1] - start_n[i])
        ax = np.empty(maxdeg)
        ay = np.empty(maxdeg)
        az = np.empty(maxdeg)
        ad = np.empty(maxdeg)
        asp = np.empty(maxdeg, np.int64)
        ae = np.empty((maxdeg, n_u))
        rad_q = np.empty(n_rad)
        cov_q = np.empty(n_cov)
        pu = np.empty((1, n_u))
        tv = np.empty(n_v)
        sq_e = np.empty((1, max(ebits_u.shape[1], 1)))
        sq_b = np.empty((lam_l.shape[0], max(zbits_v.shape[1], 1)))
        acc_r = np.empty(n_radial_total)
        acc_v = np.empty((v_nfc.shape[1], 3))
        acc_a = np.empty(n_pairs * (n_uv if use_grid else n_ang))
        for i in range(i0, i1):
            acc_r[:] = 0.0
            acc_v[:] = 0.0
            acc_a[:] = 0.0
            overlap_n[i] = -1
            m = 0
            xi = pos_nc[i, 0]
            yi = pos_nc[i, 1]
            zi = pos_nc[i, 2]
            for p in range(start_n[i], start_n[i + 1]):
                j = j_p[p]
                dx = pos_nc[j, 0] - xi + shiftvec_pc[p, 0]
                dy = pos_nc[j, 1] - yi + shiftvec_pc[p, 1]
                dz = pos_nc[j, 2] - zi + shiftvec_pc[p, 2]
                r2 = dx * dx + dy * dy + dz * dz
                if r2 >= rc2:
                    continue
                d = math.sqrt(r2)
                if d < 1e-6:
                    overlap_n[i] = j
                    continue
                a = species_n[j]
                # --- per-neighbour terms (kept textually identical in both kernels: numba inlines
                # nested helper calls only at this level) ---
                fc = _cutoff_r2(r2, pi_rc * pi_rc)
                _gaussian_ladders(d, rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c, rad_q)
                base = a * n_rad
                for q in range(n_rad):
                    acc_r[base + q] += rad_q[q] * fc
                _gaussian_ladders(d, cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c, cov_q)
                base = a * n_cov
                fcd = fc / d
                for q in range(n_cov):
                    w = cov_q[q] * fcd
                    acc_v[base + q, 0] += w * dx
                    acc_v[base + q, 1] += w * dy
                    acc_v[base + q, 2] += w * dz
                if n_ang > 0 and d < acut:
                    fca = _cutoff_r2(r2, pi_ra * pi_ra)
                    ax[m] = dx
                    ay[m] = dy
                    az[m] = dz
                    ad[m] = 1.0 / d
                    asp[m] = a
                    _exp_table(r2, eta_u, ebits_u, enb_u, sq_e, ae, m)
                    for u in range(eta_u.shape[0]):
                        ae[m, u] *= fca
                    m += 1
            _angular_terms(
                m, acut, pi_ra, ax, ay, az, ad, asp, ae,
                eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, use_grid, ang_u_q, ang_v_q,
                pair_ab, n_ang, pu, tv, sq_e, sq_b, acc_a,
            )
            _store(i, acc_r, acc_v, acc_a, grid_q, use_grid, n_uv, n_pairs, n_ang, n_radial_total, g_nf, v_nfc)


@njit(parallel=True, cache=True)
def features_cells(
    poss_nc, species_s, cell_cc, periodic_c, nbins_c, search_c, bin3s_nc, start_b, order_n,
    cutoff, acut,
    n_rad, rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c,
    n_cov, cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c,
    eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, grid_q, use_grid, ang_u_q, ang_v_q,
    pair_ab, n_radial_total,
    g_nf, v_nfc, overlap_n,
):
    """Features straight from a cell list (see neighbors_cpu).

    `poss_nc`, `species_s` and `bin3s_nc` are wrapped positions, species and
    bins in bin order (row k is atom order_n[k]); outputs are in atom order.
    """
    n = poss_nc.shape[0]
    n_ang = grid_q.shape[0]
    n_u = eta_u.shape[0]
    n_v = zeta_v.shape[0]
    n_uv = n_u * n_v
    n_sp = pair_ab.shape[0]
    n_pairs = n_sp * (n_sp + 1) // 2
    pi_rc = math.pi / cutoff
    pi_ra = math.pi / acut
    rc2 = cutoff * cutoff
    max_bin = _max_bin(start_b)
    chunk = _chunk_size(n)
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        i0 = c * chunk
        i1 = min(n, i0 + chunk)
        cap = 1
        for k in range(i0, i1):
            cap = max(cap, _candidates(k, periodic_c, nbins_c, search_c, bin3s_nc, start_b))
        ax = np.empty(cap)
        ay = np.empty(cap)
        az = np.empty(cap)
        ad = np.empty(cap)
        asp = np.empty(cap, np.int64)
        ae = np.empty((cap, n_u))
        rad_q = np.empty(n_rad)
        cov_q = np.empty(n_cov)
        pu = np.empty((1, n_u))
        tv = np.empty(n_v)
        sq_e = np.empty((1, max(ebits_u.shape[1], 1)))
        sq_b = np.empty((lam_l.shape[0], max(zbits_v.shape[1], 1)))
        acc_r = np.empty(n_radial_total)
        acc_v = np.empty((v_nfc.shape[1], 3))
        acc_a = np.empty(n_pairs * (n_uv if use_grid else n_ang))
        r2_b = np.empty(max_bin)
        for k in range(i0, i1):
            i = order_n[k]
            acc_r[:] = 0.0
            acc_v[:] = 0.0
            acc_a[:] = 0.0
            overlap_n[i] = -1
            m = 0
            xi = poss_nc[k, 0]
            yi = poss_nc[k, 1]
            zi = poss_nc[k, 2]
            for d0 in range(-search_c[0], search_c[0] + 1):
                b0, t0, ok0 = _wrap_index(bin3s_nc[k, 0] + d0, nbins_c[0], periodic_c[0])
                if not ok0:
                    continue
                for d1 in range(-search_c[1], search_c[1] + 1):
                    b1, t1, ok1 = _wrap_index(bin3s_nc[k, 1] + d1, nbins_c[1], periodic_c[1])
                    if not ok1:
                        continue
                    for d2 in range(-search_c[2], search_c[2] + 1):
                        b2, t2, ok2 = _wrap_index(bin3s_nc[k, 2] + d2, nbins_c[2], periodic_c[2])
                        if not ok2:
                            continue
                        sx = t0 * cell_cc[0, 0] + t1 * cell_cc[1, 0] + t2 * cell_cc[2, 0]
                        sy = t0 * cell_cc[0, 1] + t1 * cell_cc[1, 1] + t2 * cell_cc[2, 1]
                        sz = t0 * cell_cc[0, 2] + t1 * cell_cc[1, 2] + t2 * cell_cc[2, 2]
                        same_image = t0 == 0 and t1 == 0 and t2 == 0
                        b = (b0 * nbins_c[1] + b1) * nbins_c[2] + b2
                        q0 = start_b[b]
                        q1 = start_b[b + 1]
                        # distances of the whole bin first (a vectorisable loop), then the hits
                        _bin_r2(poss_nc, q0, q1, sx, sy, sz, xi, yi, zi, r2_b)
                        for q in range(q0, q1):
                            r2 = r2_b[q - q0]
                            if r2 >= rc2 or (same_image and q == k):
                                continue
                            dx = poss_nc[q, 0] + sx - xi
                            dy = poss_nc[q, 1] + sy - yi
                            dz = poss_nc[q, 2] + sz - zi
                            d = math.sqrt(r2)
                            if d < 1e-6:
                                overlap_n[i] = order_n[q]
                                continue
                            a = species_s[q]
                            # --- per-neighbour terms (kept textually identical in both kernels: numba inlines
                            # nested helper calls only at this level) ---
                            fc = _cutoff_r2(r2, pi_rc * pi_rc)
                            _gaussian_ladders(d, rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c, rad_q)
                            base = a * n_rad
                            for q in range(n_rad):
                                acc_r[base + q] += rad_q[q] * fc
                            _gaussian_ladders(d, cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c, cov_q)
                            base = a * n_cov
                            fcd = fc / d
                            for q in range(n_cov):
                                w = cov_q[q] * fcd
                                acc_v[base + q, 0] += w * dx
                                acc_v[base + q, 1] += w * dy
                                acc_v[base + q, 2] += w * dz
                            if n_ang > 0 and d < acut:
                                fca = _cutoff_r2(r2, pi_ra * pi_ra)
                                ax[m] = dx
                                ay[m] = dy
                                az[m] = dz
                                ad[m] = 1.0 / d
                                asp[m] = a
                                _exp_table(r2, eta_u, ebits_u, enb_u, sq_e, ae, m)
                                for u in range(eta_u.shape[0]):
                                    ae[m, u] *= fca
                                m += 1
            _angular_terms(
                m, acut, pi_ra, ax, ay, az, ad, asp, ae,
                eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, use_grid, ang_u_q, ang_v_q,
                pair_ab, n_ang, pu, tv, sq_e, sq_b, acc_a,
            )
            _store(i, acc_r, acc_v, acc_a, grid_q, use_grid, n_uv, n_pairs, n_ang, n_radial_total, g_nf, v_nfc)



@njit(cache=True)
def _candidates(k, periodic_c, nbins_c, search_c, bin3s_nc, start_b):
    """Atoms in the (bin, image) cells visited for centre k (bin order): a bound on its neighbours."""
    total = 0
    for d0 in range(-search_c[0], search_c[0] + 1):
        b0, t0, ok0 = _wrap_index(bin3s_nc[k, 0] + d0, nbins_c[0], periodic_c[0])
        if not ok0:
            continue
        for d1 in range(-search_c[1], search_c[1] + 1):
            b1, t1, ok1 = _wrap_index(bin3s_nc[k, 1] + d1, nbins_c[1], periodic_c[1])
            if not ok1:
                continue
            for d2 in range(-search_c[2], search_c[2] + 1):
                b2, t2, ok2 = _wrap_index(bin3s_nc[k, 2] + d2, nbins_c[2], periodic_c[2])
                if not ok2:
                    continue
                b = (b0 * nbins_c[1] + b1) * nbins_c[2] + b2
                total += start_b[b + 1] - start_b[b]
    return total
