"""Invariant (G2, G4) and covariant (V) features, Numba CUDA kernels.

Same definitions and neighbour order as fastfeat._kernels.features_cpu; r_ij
is the CSR list's pair vector at its build (computed in float64) plus the
displacements of j and i since the build (``pos_nc`` holds those
displacements, ``shiftvec_pc`` the pair vectors: r = pos[j] - pos[i] +
shiftvec[p]), so a neighbour list built with a skin is reused (pairs beyond
the cutoff are skipped) and float32 keeps its precision far from the
coordinate origin. Geometry and accumulation are in the dtype of the outputs.

``features_warp_f32`` / ``features_warp_f32_fast`` / ``features_warp_f64``
(one warp per centre atom, the fast path; ``_fast`` uses the GPU's
approximate exp/cos/pow/sqrt/division):

* the warp zeroes its accumulators in shared memory; every lane owns fixed
  columns, so no atomics are needed;
* radial pass: the CSR segment is read 32 pairs at a time (one pair per
  lane) and the chunk's geometry is staged in shared memory. Groups of L
  lanes (L = the smallest power of two >= the number of G2 or V parameters)
  take different neighbours, each lane one (G2, V) parameter of its group;
  the 32 / L groups add into private copies of the G2/V columns, summed at
  the end. Neighbours inside the angular cutoff are appended (warp ballot)
  to a shared list of capacity ``cap``;
* angular pass: the m (m - 1) / 2 neighbour pairs (k1 < k2) are tested 32 at
  a time, the valid triplets (r_jk < angular cutoff) compacted into shared
  memory, then each lane adds its own G4 column(s) for each triplet, in
  (k1, k2) order. The parameters of the angular covariant vectors W follow
  the G4 ones in the ``ang_*`` arrays (``n_g4`` G4 parameters first): a lane
  with a W parameter adds the same weight times r̂_ij + r̂_ik (and, for an
  unlike species pair, times r̂_ij - r̂_ik, j of the lower species index) to
  its W vectors; such triplets carry those two unit-vector sums in shared
  memory (``_TRI_FIELDS_W``);
* the row is written to global memory once, coalesced.

An atom with more than ``cap`` angular neighbours is flagged (``overflow_n``)
and recomputed by ``features_thread`` (one thread per atom, no capacity
limit), which is also the path for specs whose accumulators do not fit in
shared memory. Overlapping atoms (r < 1e-6 Å) are skipped and reported:
``overlap_p[i]`` is the largest CSR index of an overlapping pair of atom i
(-1 when none), ``status[0]`` counts atoms with an overlap, ``status[1]``
atoms that overflowed. No other checks.

``species_lookup``, ``stage_positions``, ``set_origin``, ``copy_relative`` and ``set_status``
stage inputs for fastfeat._features_cuda (device-side species, finiteness
and displacement checks).

In the simulator (NUMBA_ENABLE_CUDASIM=1) warp intrinsics are replaced by
shared-memory equivalents and blocks hold one warp.
"""

import math
import os

from .. import _compat  # noqa: F401  (before numba.cuda)
from numba import cuda, float32, float64, int32
try:  # numba-cuda (the maintained CUDA target)
    from numba.cuda.core import config as _config
except ImportError:  # the CUDA target built into older Numba
    from numba.core import config as _config

__all__ = [
    "SIMULATOR",
    "WARP",
    "features_warp_f32",
    "features_warp_f64",
    "features_warp_f32_fast",
    "features_thread",
    "shared_floats_per_warp",
    "radial_split",
    "species_lookup",
    "stage_positions",
    "set_status",
    "STAGE_THREADS",
]

SIMULATOR = bool(_config.ENABLE_CUDASIM)
WARP = 32
#: FASTFEAT_CUDA_MAXREG=N caps the registers of the warp kernels (a tuning knob for
#: occupancy; such kernels are not cached on disk).
_MAXREG = int(os.environ.get("FASTFEAT_CUDA_MAXREG", "0") or 0)
_KERNEL_OPTIONS = {"max_registers": _MAXREG} if (_MAXREG and not SIMULATOR) else {}
_CACHE = not _KERNEL_OPTIONS
#: Most warps per block the kernels are launched with (static shared scratch).
MAX_WARPS_PER_BLOCK = 8
_FLAG_SLOTS = WARP * MAX_WARPS_PER_BLOCK if SIMULATOR else 1
_FULL_MASK = 0xFFFFFFFF

# layout of the per-warp shared scratch after the accumulators (units: floats)
_CHUNK_FIELDS = 6  # dx, dy, dz, d, fc, species
_ANG_FIELDS = 6  # dx, dy, dz, d, fc_angular, species
_TRI_FIELDS = 4  # s = r_ij^2 + r_ik^2 + r_jk^2, fc product, cos theta, pair block
#: with angular covariant vectors W, per triplet also: unlike-pair index (-1: like species),
#: r̂_ij + r̂_ik and r̂_ij - r̂_ik (j the neighbour of the lower species index)
_TRI_FIELDS_W = 11


def radial_split(n_radial_params, n_covariant_params):
    """(lanes per neighbour L, neighbours per step H = 32 / L) of the radial pass.

    L is the smallest power of two >= the larger parameter count (at most 32);
    the H groups of L lanes take different neighbours and accumulate into H
    private copies of the G2/V columns, summed at the end.
    """
    need = max(int(n_radial_params), int(n_covariant_params), 1)
    lanes = 1
    while lanes < need and lanes < WARP:
        lanes *= 2
    return lanes, WARP // lanes


def _copy_stride(per_copy, lanes):
    """Stride of the radial accumulator copies: = lanes (mod 32), so that the lane groups
    adding to the same column of their copies hit different shared-memory banks."""
    return per_copy + (lanes - per_copy) % WARP


def shared_floats_per_warp(n_species, n_radial_params, n_covariant_params, n_angular_total, cap,
                           n_angular_covariant_total=0):
    """Floats of dynamic shared memory one warp of features_warp_* uses.

    ``n_angular_total``: G4 columns; ``n_angular_covariant_total``: W vectors.
    """
    lanes, copies = radial_split(n_radial_params, n_covariant_params)
    per_copy = n_species * (n_radial_params + 3 * n_covariant_params)
    tri = _TRI_FIELDS_W if n_angular_covariant_total else _TRI_FIELDS
    return (copies * _copy_stride(per_copy, lanes) + n_angular_total + 3 * n_angular_covariant_total
            + _CHUNK_FIELDS * WARP + _ANG_FIELDS * cap + tri * WARP)


if SIMULATOR:

    @cuda.jit(device=True)
    def _sync():
        cuda.syncthreads()

    @cuda.jit(device=True)
    def _warp_rank(flag, lane, flags, fbase):
        """(number of lanes below `lane` with flag set, number of lanes with flag set)."""
        flags[fbase + lane] = 1 if flag else 0
        cuda.syncthreads()
        below = 0
        total = 0
        for t in range(WARP):
            v = flags[fbase + t]
            total += v
            if t < lane:
                below += v
        cuda.syncthreads()
        return below, total

else:

    @cuda.jit(device=True, inline=True)
    def _sync():
        cuda.syncwarp(_FULL_MASK)

    @cuda.jit(device=True, inline=True)
    def _warp_rank(flag, lane, flags, fbase):
        """(number of lanes below `lane` with flag set, number of lanes with flag set)."""
        mask = cuda.ballot_sync(_FULL_MASK, flag)
        return cuda.popc(mask & cuda.lanemask_lt()), cuda.popc(mask)


@cuda.jit(device=True, inline=True)
def _ipow(x, n, one):
    """x ** n for an integer n >= 1 by repeated squaring."""
    r = one
    while n > 0:
        if n & 1:
            r *= x
        x *= x
        n >>= 1
    return r


@cuda.jit(device=True, inline=True)
def _triangle(t, m):
    """(k1, k2) with k1 < k2 < m of the t-th unordered pair, row-major ((0, 1), (0, 2), ..., (1, 2), ...)."""
    w = 2 * m - 1
    k1 = int((float32(w) - math.sqrt(float32(w * w - 8 * t))) * float32(0.5))
    if k1 < 0:
        k1 = 0
    while k1 > 0 and k1 * (w - k1) // 2 > t:
        k1 -= 1
    while (k1 + 1) * (w - k1 - 1) // 2 <= t:
        k1 += 1
    return k1, t - k1 * (w - k1) // 2 + k1 + 1


def _features_warp_py(
    sh, flags,
    pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
    cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
    rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
    ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
    cap, per_warp, lanes_per_nb,
    g_nf, v_nfc, overlap_p, overflow_n, status,
):
    tid = cuda.threadIdx.x
    lane = tid % WARP
    wib = tid // WARP
    w = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + wib
    n = pos_nc.shape[0]
    if w >= n:
        return  # the whole warp leaves together
    i = atom_order_n[w]
    n_inv = g_nf.shape[1]
    n_cov = v_nfc.shape[1]
    n_rad = rad_eta_q.shape[0]
    n_covp = cov_eta_q.shape[0]
    n_q = ang_eta_q.shape[0]  # n_g4 G4 parameters, then the W parameters
    n_w = n_q - n_g4
    n_species = pair_ab.shape[0]
    n_pairs = n_species * (n_species + 1) // 2
    n_cov_rad = n_species * n_covp  # V vectors; the W vectors follow them
    n_task = max(n_rad, n_covp)
    copies = WARP // lanes_per_nb
    grp = lane // lanes_per_nb  # this lane's radial copy / neighbour offset
    sub = lane % lanes_per_nb
    per_copy = n_radial_total + 3 * n_cov_rad
    per_copy = per_copy + (lanes_per_nb - per_copy) % WARP  # stride: see _copy_stride
    base = wib * per_warp
    rad = base  # copies of [G2 columns | V columns]
    angacc = rad + copies * per_copy  # G4 columns
    wacc = angacc + (n_inv - n_radial_total)  # W vectors (x, y, z)
    chunk = wacc + 3 * (n_cov - n_cov_rad)
    ang = chunk + _CHUNK_FIELDS * WARP
    tri = ang + _ANG_FIELDS * cap
    tri_fields = _TRI_FIELDS_W if n_w > 0 else _TRI_FIELDS
    fbase = wib * WARP

    for f in range(lane, chunk - base, WARP):
        sh[base + f] = zero
    if lane == 0:
        overlap_p[i] = -1
    xi = pos_nc[i, 0]
    yi = pos_nc[i, 1]
    zi = pos_nc[i, 2]
    p0 = start_n[i]
    p1 = start_n[i + 1]
    m = 0
    ovl = -1
    mine = rad + grp * per_copy
    _sync()

    # ---------------------------------------------------------------- radial
    for c0 in range(p0, p1, WARP):
        p = c0 + lane
        valid = False
        is_ang = False
        dx = zero
        dy = zero
        dz = zero
        d = zero
        if p < p1:
            j = j_p[p]
            dx = pos_nc[j, 0] - xi + shiftvec_pc[p, 0]
            dy = pos_nc[j, 1] - yi + shiftvec_pc[p, 1]
            dz = pos_nc[j, 2] - zi + shiftvec_pc[p, 2]
            d = math.sqrt(dx * dx + dy * dy + dz * dz)
            if d < cutoff:
                if d < tiny:
                    ovl = p
                else:
                    valid = True
                    is_ang = n_q > 0 and d < acut
        slot = chunk + lane * _CHUNK_FIELDS
        sh[slot] = dx
        sh[slot + 1] = dy
        sh[slot + 2] = dz
        sh[slot + 3] = d
        if valid:
            sh[slot + 4] = half * (math.cos(pi_rc * d) + one)
            sh[slot + 5] = species_n[j_p[p]]
        else:
            sh[slot + 4] = zero
            sh[slot + 5] = -one
        below, total = _warp_rank(is_ang, lane, flags, fbase)
        if is_ang and m + below < cap:
            a = ang + (m + below) * _ANG_FIELDS
            sh[a] = dx
            sh[a + 1] = dy
            sh[a + 2] = dz
            sh[a + 3] = d
            sh[a + 4] = half * (math.cos(pi_ra * d) + one)
            sh[a + 5] = species_n[j_p[p]]
        m += total
        _sync()
        n_here = min(WARP, p1 - c0)
        for t in range(sub, n_task, lanes_per_nb):
            do_rad = t < n_rad
            do_cov = t < n_covp
            eta_r = zero
            rs_r = zero
            eta_c = zero
            rs_c = zero
            if do_rad:
                eta_r = rad_eta_q[t]
                rs_r = rad_rs_q[t]
            if do_cov:
                eta_c = cov_eta_q[t]
                rs_c = cov_rs_q[t]
            for k in range(grp, n_here, copies):
                slot = chunk + k * _CHUNK_FIELDS
                spf = sh[slot + 5]
                if spf < zero:
                    continue
                sp = int(spf)
                dk = sh[slot + 3]
                fck = sh[slot + 4]
                if do_rad:
                    u = dk - rs_r
                    sh[mine + sp * n_rad + t] += math.exp(-eta_r * u * u) * fck
                if do_cov:
                    u = dk - rs_c
                    wgt = math.exp(-eta_c * u * u) * fck * (one / dk)
                    col = mine + n_radial_total + (sp * n_covp + t) * 3
                    sh[col] += wgt * sh[slot]
                    sh[col + 1] += wgt * sh[slot + 1]
                    sh[col + 2] += wgt * sh[slot + 2]
        _sync()

    below, total = _warp_rank(ovl >= 0, lane, flags, fbase)
    if ovl >= 0:
        cuda.atomic.max(overlap_p, i, ovl)
    if lane == 0 and total > 0:
        cuda.atomic.add(status, 0, 1)

    # --------------------------------------------------------------- angular
    if m > cap:
        if lane == 0:
            overflow_n[i] = 1
            cuda.atomic.add(status, 1, 1)
        return  # features_thread recomputes this atom
    if lane == 0:
        overflow_n[i] = 0
    n_tri = m * (m - 1) // 2
    if n_q > 0 and n_tri > 0:
        for c0 in range(0, n_tri, WARP):
            t = c0 + lane
            valid = False
            k1 = 0
            k2 = 0
            djk = zero
            if t < n_tri:
                k1, k2 = _triangle(t, m)
                a1 = ang + k1 * _ANG_FIELDS
                a2 = ang + k2 * _ANG_FIELDS
                ex = sh[a2] - sh[a1]
                ey = sh[a2 + 1] - sh[a1 + 1]
                ez = sh[a2 + 2] - sh[a1 + 2]
                djk = math.sqrt(ex * ex + ey * ey + ez * ez)
                valid = djk < acut
            below, total = _warp_rank(valid, lane, flags, fbase)
            if valid:
                a1 = ang + k1 * _ANG_FIELDS
                a2 = ang + k2 * _ANG_FIELDS
                d1 = sh[a1 + 3]
                d2 = sh[a2 + 3]
                tb = tri + below * tri_fields
                s1 = int(sh[a1 + 5])
                s2 = int(sh[a2 + 5])
                sh[tb] = d1 * d1 + d2 * d2 + djk * djk
                sh[tb + 1] = sh[a1 + 4] * sh[a2 + 4] * (half * (math.cos(pi_ra * djk) + one))
                sh[tb + 2] = (sh[a1] * sh[a2] + sh[a1 + 1] * sh[a2 + 1] + sh[a1 + 2] * sh[a2 + 2]) / (d1 * d2)
                sh[tb + 3] = pair_ab[s1, s2]
                if n_w > 0:
                    if s1 > s2:  # the difference vector points from the higher to the lower species index
                        a1, a2 = a2, a1
                        d1, d2 = d2, d1
                    sh[tb + 4] = mixed_ab[min(s1, s2), max(s1, s2)]
                    for c in range(3):
                        u1 = sh[a1 + c] / d1
                        u2 = sh[a2 + c] / d2
                        sh[tb + 5 + c] = u1 + u2
                        sh[tb + 8 + c] = u1 - u2
            _sync()
            for q in range(lane, n_q, WARP):  # lane q: G4 column q, or W parameter q - n_g4
                eta = ang_eta_q[q]
                lam = ang_lam_q[q]
                zint = ang_zint_q[q]
                zeta = ang_zeta_q[q]
                pref = ang_pref_q[q]
                for tt in range(total):
                    tb = tri + tt * tri_fields
                    b = half * (one + lam * sh[tb + 2])  # halved, pref = 2: no overflow at any zeta
                    if b < zero:
                        b = zero
                    if zint > 0:
                        tv = _ipow(b, zint, one)
                    else:
                        tv = b ** zeta
                    val = pref * tv * (math.exp(-eta * sh[tb]) * sh[tb + 1])
                    if q < n_g4:
                        sh[angacc + int(sh[tb + 3]) * n_g4 + q] += val
                    else:
                        col = wacc + (int(sh[tb + 3]) * n_w + q - n_g4) * 3
                        sh[col] += val * sh[tb + 5]
                        sh[col + 1] += val * sh[tb + 6]
                        sh[col + 2] += val * sh[tb + 7]
                        mix = int(sh[tb + 4])
                        if mix >= 0:
                            col = wacc + ((n_pairs + mix) * n_w + q - n_g4) * 3
                            sh[col] += val * sh[tb + 8]
                            sh[col + 1] += val * sh[tb + 9]
                            sh[col + 2] += val * sh[tb + 10]
            _sync()

    # ------------------------------------------------------------- write out
    _sync()
    for f in range(lane, n_radial_total, WARP):
        acc = sh[rad + f]
        for h in range(1, copies):
            acc += sh[rad + h * per_copy + f]
        g_nf[i, f] = acc
    for f in range(lane, n_inv - n_radial_total, WARP):
        g_nf[i, n_radial_total + f] = sh[angacc + f]
    for f in range(lane, 3 * n_cov_rad, WARP):
        acc = sh[rad + n_radial_total + f]
        for h in range(1, copies):
            acc += sh[rad + h * per_copy + n_radial_total + f]
        v_nfc[i, f // 3, f % 3] = acc
    for f in range(lane, 3 * (n_cov - n_cov_rad), WARP):
        v_nfc[i, n_cov_rad + f // 3, f % 3] = sh[wacc + f]


_features_warp_body = cuda.jit(device=True)(_features_warp_py)
_features_warp_body_fast = cuda.jit(device=True, fastmath=True)(_features_warp_py)


@cuda.jit(cache=_CACHE, **_KERNEL_OPTIONS)
def features_warp_f32(
    pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
    cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
    rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
    ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
    cap, per_warp, lanes_per_nb,
    g_nf, v_nfc, overlap_p, overflow_n, status,
):
    """Warp-per-atom features, float32, IEEE-accurate math (see module docstring)."""
    sh = cuda.shared.array(0, float32)
    flags = cuda.shared.array(_FLAG_SLOTS, int32)
    _features_warp_body(
        sh, flags, pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
        cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
        rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
        ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
        cap, per_warp, lanes_per_nb, g_nf, v_nfc, overlap_p, overflow_n, status,
    )


@cuda.jit(cache=_CACHE, fastmath=True, **_KERNEL_OPTIONS)
def features_warp_f32_fast(
    pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
    cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
    rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
    ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
    cap, per_warp, lanes_per_nb,
    g_nf, v_nfc, overlap_p, overflow_n, status,
):
    """Warp-per-atom features, float32, fast-math (approximate exp/cos/pow/sqrt/division, a few ulp)."""
    sh = cuda.shared.array(0, float32)
    flags = cuda.shared.array(_FLAG_SLOTS, int32)
    _features_warp_body_fast(
        sh, flags, pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
        cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
        rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
        ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
        cap, per_warp, lanes_per_nb, g_nf, v_nfc, overlap_p, overflow_n, status,
    )


@cuda.jit(cache=_CACHE, **_KERNEL_OPTIONS)
def features_warp_f64(
    pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
    cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
    rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
    ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
    cap, per_warp, lanes_per_nb,
    g_nf, v_nfc, overlap_p, overflow_n, status,
):
    """Warp-per-atom features, float64 (see module docstring)."""
    sh = cuda.shared.array(0, float64)
    flags = cuda.shared.array(_FLAG_SLOTS, int32)
    _features_warp_body(
        sh, flags, pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n,
        cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
        rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
        ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
        cap, per_warp, lanes_per_nb, g_nf, v_nfc, overlap_p, overflow_n, status,
    )


@cuda.jit(device=True, inline=True)
def _pair_geometry(pos_nc, j_p, shiftvec_pc, p, xi, yi, zi):
    j = j_p[p]
    dx = pos_nc[j, 0] - xi + shiftvec_pc[p, 0]
    dy = pos_nc[j, 1] - yi + shiftvec_pc[p, 1]
    dz = pos_nc[j, 2] - zi + shiftvec_pc[p, 2]
    return j, dx, dy, dz, math.sqrt(dx * dx + dy * dy + dz * dz)


@cuda.jit(cache=True)
def features_thread(
    pos_nc, species_n, start_n, j_p, shiftvec_pc, atom_order_n, only_flagged,
    cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny,
    rad_eta_q, rad_rs_q, cov_eta_q, cov_rs_q,
    ang_eta_q, ang_zeta_q, ang_lam_q, ang_zint_q, ang_pref_q, pair_ab, mixed_ab, n_radial_total, n_g4,
    g_nf, v_nfc, overlap_p, overflow_n, status,
):
    """One thread per atom, accumulating in global memory; no capacity limit.

    With ``only_flagged`` it recomputes only atoms with ``overflow_n[i] != 0``
    (and clears the flag). The second neighbour of a G4 triplet is re-read
    from the CSR segment, so the angular part costs O(degree^2) per atom.
    """
    w = cuda.grid(1)
    if w >= pos_nc.shape[0]:
        return
    i = atom_order_n[w]
    if only_flagged and overflow_n[i] == 0:
        return
    overflow_n[i] = 0
    n_rad = rad_eta_q.shape[0]
    n_covp = cov_eta_q.shape[0]
    n_q = ang_eta_q.shape[0]  # n_g4 G4 parameters, then the W parameters
    n_w = n_q - n_g4
    n_species = pair_ab.shape[0]
    n_pairs = n_species * (n_species + 1) // 2
    n_cov_rad = n_species * n_covp
    for f in range(g_nf.shape[1]):
        g_nf[i, f] = zero
    for f in range(v_nfc.shape[1]):
        v_nfc[i, f, 0] = zero
        v_nfc[i, f, 1] = zero
        v_nfc[i, f, 2] = zero
    ovl = -1
    p0 = start_n[i]
    p1 = start_n[i + 1]
    xi = pos_nc[i, 0]
    yi = pos_nc[i, 1]
    zi = pos_nc[i, 2]
    for p in range(p0, p1):
        j, dx, dy, dz, d = _pair_geometry(pos_nc, j_p, shiftvec_pc, p, xi, yi, zi)
        if d >= cutoff:
            continue
        if d < tiny:
            ovl = p
            continue
        a = species_n[j]
        fc = half * (math.cos(pi_rc * d) + one)
        for q in range(n_rad):
            u = d - rad_rs_q[q]
            g_nf[i, a * n_rad + q] += math.exp(-rad_eta_q[q] * u * u) * fc
        inv_d = one / d
        for q in range(n_covp):
            u = d - cov_rs_q[q]
            wgt = math.exp(-cov_eta_q[q] * u * u) * fc * inv_d
            v_nfc[i, a * n_covp + q, 0] += wgt * dx
            v_nfc[i, a * n_covp + q, 1] += wgt * dy
            v_nfc[i, a * n_covp + q, 2] += wgt * dz
        if n_q == 0 or d >= acut:
            continue
        fca = half * (math.cos(pi_ra * d) + one)
        for p2 in range(p + 1, p1):
            j2, ex, ey, ez, d2 = _pair_geometry(pos_nc, j_p, shiftvec_pc, p2, xi, yi, zi)
            if d2 >= acut or d2 < tiny:
                continue
            fx = ex - dx
            fy = ey - dy
            fz = ez - dz
            djk = math.sqrt(fx * fx + fy * fy + fz * fz)
            if djk >= acut:
                continue
            ssum = d * d + d2 * d2 + djk * djk
            fprod = fca * (half * (math.cos(pi_ra * d2) + one)) * (half * (math.cos(pi_ra * djk) + one))
            cos_t = (dx * ex + dy * ey + dz * ez) / (d * d2)
            a2 = species_n[j2]
            pair = pair_ab[a, a2]
            col = n_radial_total + pair * n_g4
            # W: r̂_ij + r̂_ik and (neighbour of the lower species index) - (the other)
            sgn = one if a <= a2 else -one
            ux = dx / d
            uy = dy / d
            uz = dz / d
            wx = ex / d2
            wy = ey / d2
            wz = ez / d2
            mix = mixed_ab[min(a, a2), max(a, a2)]
            for q in range(n_q):
                b = half * (one + ang_lam_q[q] * cos_t)  # halved, pref = 2 (as above)
                if b < zero:
                    b = zero
                if ang_zint_q[q] > 0:
                    tv = _ipow(b, ang_zint_q[q], one)
                else:
                    tv = b ** ang_zeta_q[q]
                val = ang_pref_q[q] * tv * (math.exp(-ang_eta_q[q] * ssum) * fprod)
                if q < n_g4:
                    g_nf[i, col + q] += val
                    continue
                f = n_cov_rad + pair * n_w + q - n_g4
                v_nfc[i, f, 0] += val * (ux + wx)
                v_nfc[i, f, 1] += val * (uy + wy)
                v_nfc[i, f, 2] += val * (uz + wz)
                if mix >= 0:
                    f = n_cov_rad + (n_pairs + mix) * n_w + q - n_g4
                    v_nfc[i, f, 0] += sgn * val * (ux - wx)
                    v_nfc[i, f, 1] += sgn * val * (uy - wy)
                    v_nfc[i, f, 2] += sgn * val * (uz - wz)
    overlap_p[i] = ovl
    if ovl >= 0:
        cuda.atomic.add(status, 0, 1)


# ------------------------------------------------------------ input staging
STAGE_THREADS = 32 if SIMULATOR else 256


@cuda.jit(cache=True)
def species_lookup(numbers_n, table, species_n, status_f):
    """species_n[i] = table[numbers_n[i]]; status_f[2] = min index of an unknown number,
    status_f[3] = 1 when any species_n value changed."""
    i = cuda.grid(1)
    if i >= numbers_n.shape[0]:
        return
    z = numbers_n[i]
    sp = -1
    if z >= 0 and z < table.shape[0]:
        sp = table[z]
    if sp < 0:
        cuda.atomic.min(status_f, 2, float64(i))
        return
    if species_n[i] != sp:
        status_f[3] = 1.0
        species_n[i] = sp


@cuda.jit(cache=True)
def stage_positions(src_nc, dst_nc, ref_nc, use_ref, status_f, origin_c):
    """Without use_ref: dst = src - origin (float64 arithmetic, cast to dst's dtype; the origin is fixed
    between list builds, see set_origin). With use_ref: dst = (src - origin) - ref, the displacement since
    the build (ref: float64 positions at the build, relative to origin), all in float64 and then cast: small
    numbers, so float32 keeps its precision wherever the atoms sit; status_f[0] = max |displacement|^2
    (block reduction, then one atomic per block). status_f[1] = min index of a non-finite atom."""
    sh = cuda.shared.array(STAGE_THREADS, float64)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + tid
    d2 = 0.0
    if i < src_nc.shape[0]:
        finite = True
        for c in range(3):
            x = src_nc[i, c]
            if math.isinf(x) or math.isnan(x):
                finite = False
            u = float64(x) - origin_c[c]
            if use_ref:
                u -= float64(ref_nc[i, c])
                d2 += u * u
            dst_nc[i, c] = u
        if not finite:
            cuda.atomic.min(status_f, 1, float64(i))
            d2 = 0.0
    sh[tid] = d2
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            sh[tid] = max(sh[tid], sh[tid + stride])
        cuda.syncthreads()
        stride //= 2
    if tid == 0 and use_ref:
        cuda.atomic.max(status_f, 0, sh[0])


@cuda.jit(cache=True)
def set_origin(src_nc, origin_c):
    """origin = src[0] in float64 (a structure's positions are staged relative to it)."""
    c = cuda.grid(1)
    if c < 3:
        origin_c[c] = float64(src_nc[0, c])


@cuda.jit(cache=True)
def copy_relative(src_nc, dst_nc):
    """dst[i, :] = src[i, :] - src[0, :], the difference in float64 (see stage_positions)."""
    i = cuda.grid(1)
    if i < src_nc.shape[0]:
        for c in range(3):
            dst_nc[i, c] = float64(src_nc[i, c]) - float64(src_nc[0, c])


@cuda.jit(cache=True)
def set_status(status_f, a, b, c, d):
    if cuda.grid(1) == 0:
        status_f[0] = a
        status_f[1] = b
        status_f[2] = c
        status_f[3] = d
