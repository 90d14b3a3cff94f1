"""Invariant (G2, G4) and covariant (V) features, Numba CPU kernels.

Two kernels share the per-neighbour and per-pair arithmetic:

- ``features``: over a CSR neighbour list (i sorted, each row grouped by
  species once per build: ``group_by_species``) with shift vectors; it
  recomputes r_ij = pos[j] - pos[i] + shiftvec from current positions, so a
  list built with a skin is reused across MD steps (pairs beyond the cutoff
  are skipped).
- ``features_cells``: straight from the cell list, no pair list is stored
  (one-shot featurization: less memory, one pass).

Both gather the neighbours of a centre atom inside the cutoff into short
arrays sorted by species (``features`` reads them in that order,
``features_cells`` sorts the candidates of a bin by species once, keeping only
those within the cutoff of the bin's atoms' bounding box); the indices of the
entries inside the cutoff are collected first (one store per entry, no
unpredictable branch) and the vectors of those gathered after. ``_atom_terms``
then computes everything from those arrays, one loop over the neighbours per
quantity, so the compiler vectorises over neighbours: the Gaussians of an
equally spaced grid are a ladder (two exps per neighbour, then two
multiplications per grid point) and the exps are a polynomial (``_fexp``)
instead of scalar libm calls. G4 over unordered pairs
of neighbours inside the angular cutoff, all species pairs of an atom in one
block of pairs (one loop per factor over the whole block); the optional angular
covariant vectors (FeatureSpec.covariant_angular) from the same blocks: one
weight per pair and parameter, then the weighted sum and difference of the two
unit vectors over each species pair's segment (``_pair_sums``).

Two rules keep the loops vectorised and short-loop overhead low (measured;
most loops here run over 10-60 elements):

- a loop over a sub-range is written over a *view* from 0 (``a[k0:k1]``,
  ``range(n)``): ``range(k0, k1)`` makes Numba keep a negative-index
  wrap-around check per element, and LLVM then leaves the loop scalar;
  gathers use unsigned indices for the same reason;
- a loop's set-up and reduction are paid once per pass, so one pass does
  several grid points of a ladder (four G2, two V) rather than one.

Precision: positions, neighbour vectors and the radial terms (G2, V: their
ladders multiply up to ~16 factors whose float32 rounding would add up to a few
1e-6) are float64 whatever the output dtype. The angular terms (G4 and W, their
per-pair arrays) are computed in the dtype of the outputs, as the CUDA kernels
do: for float32 outputs twice the SIMD lanes over the neighbour pairs, at ~1e-6
of a column's scale (float64 outputs are unchanged, bit for bit). Literals and
parameters enter those loops through ``_c`` (a float64 literal would promote a
float32 loop to float64); ``_fexp`` and ``_cutoff_r2`` follow the float type of
their argument. The per-atom accumulators are float64 (a species pair's sum
over one block of pairs runs in the outputs' dtype); one write per output
element. Parallel over chunks of centre atoms. No checks.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .neighbors_cpu import _count_starts, _wrap_index

#: reassociation lets neighbour sums vectorise; no assumptions about NaN/inf
_FASTMATH = {"reassoc", "contract"}

__all__ = ["features", "features_cells", "group_by_species"]

#: most atoms per parallel work item (scratch arrays are allocated once per chunk)
_CHUNK = 64


@njit(inline="always")
def _chunk_size(n):
    """Atoms per work item: _CHUNK, down to 8 so that small systems still make ~32 items
    (load balance over threads; the thread count itself is not a cacheable constant)."""
    return max(8, min(_CHUNK, (n + 31) // 32))


@intrinsic
def _bits_as_float(typingctx, x):
    """The float64 whose bit pattern is the int64 x."""
    if x != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _float_as_bits(typingctx, x):
    """The int64 bit pattern of the float64 x."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _pow2_round32(typingctx, t):
    """2^k as a float32, from t = 1.5 * 2^23 + k (the float32 rounding trick): its bits minus those of
    1.5 * 2^23, plus the exponent bias, shifted into the exponent field (int32 arithmetic throughout)."""
    if t != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        e = builder.add(builder.sub(bits, ir.Constant(i32, 0x4B400000)), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(e, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


def _c(x, like):
    """x in the float type of ``like`` (a scalar or an array): the kernels compute in the dtype of their
    outputs, and a float64 literal would promote a float32 expression (and its loop) to float64."""
    return x


def _float_type(like):
    """The Numba float type of ``like`` (a scalar type or an array type), at typing time."""
    return like.dtype if isinstance(like, types.Array) else like


@overload(_c, inline="always")
def _c_impl(x, like):
    dt = _float_type(like)

    def impl(x, like):
        return dt(x)

    return impl


def _single(like):
    """Whether ``like`` (a scalar or an array) is float32: a compile-time constant in the kernels."""
    return False


@overload(_single, inline="always")
def _single_impl(like):
    single = _float_type(like) == types.float32
    return lambda like: single


@njit(inline="always")
def _poly13(c, x):
    """c[0] + c[1] x + ... + c[13] x^13 by Estrin's scheme (short dependency chains instead of one
    13-step Horner chain); shared by _fexp and _cutoff_r2."""
    x2 = x * x
    x4 = x2 * x2
    x8 = x4 * x4
    p01 = c[0] + c[1] * x
    p23 = c[2] + c[3] * x
    p45 = c[4] + c[5] * x
    p67 = c[6] + c[7] * x
    p89 = c[8] + c[9] * x
    pab = c[10] + c[11] * x
    pcd = c[12] + c[13] * x
    p03 = p01 + p23 * x2
    p47 = p45 + p67 * x2
    p8b = p89 + pab * x2
    p07 = p03 + p47 * x4
    p8d = p8b + pcd * x4
    return p07 + p8d * x8


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two (Cody-Waite): exact k * _LN2_HI for |k| < 2^20
_LN2_LO = 1.9082149292705877e-10
_ROUND = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits
_ROUND_BITS = 0x4338000000000000  # bit pattern of _ROUND
#: Taylor coefficients of exp(r), n = 0..13: below 1e-17 relative for |r| <= ln(2) / 2
_EXP = tuple(1.0 / math.factorial(n) for n in range(14))


def _fexp(x):
    """exp(x) for x <= 0 as plain arithmetic (vectorises), in the float type of x: float64 to within
    2 ulp, x < -708 gives exp(-708); float32 to within 2 ulp, x < -87 gives exp(-87) (the smallest
    arguments whose results are normal numbers: denormals would slow the arithmetic down)."""
    return math.exp(x)


@njit(inline="always")
def _fexp64(x):
    x = max(x, -708.0)
    t = x * _LOG2E + _ROUND
    k = t - _ROUND  # nearest integer to x / ln 2
    r = x - k * _LN2_HI - k * _LN2_LO
    # 2^k from its exponent bits
    return _poly13(_EXP, r) * _bits_as_float((_float_as_bits(t) - _ROUND_BITS + 1023) << 52)


_F32 = np.float32
_LOG2E_32 = _F32(_LOG2E)
_LN2_HI_32 = _F32(0.693145751953125)  # 16 significant bits: exact k * _LN2_HI_32 for |k| < 2^8
_LN2_LO_32 = _F32(math.log(2.0) - 0.693145751953125)
_ROUND_32 = _F32(12582912.0)  # 1.5 * 2^23
_MIN_ARG_32 = _F32(-87.0)
#: Taylor coefficients of exp(r), n = 0..7: below 5e-9 relative for |r| <= ln(2) / 2
_EXP_32 = tuple(_F32(1.0 / math.factorial(n)) for n in range(8))


@njit(inline="always")
def _fexp32(x):
    x = max(x, _MIN_ARG_32)
    t = x * _LOG2E_32 + _ROUND_32
    k = t - _ROUND_32
    r = x - k * _LN2_HI_32 - k * _LN2_LO_32
    c = _EXP_32
    r2 = r * r
    p = (c[0] + c[1] * r) + (c[2] + c[3] * r) * r2 + ((c[4] + c[5] * r) + (c[6] + c[7] * r) * r2) * (r2 * r2)
    return p * _pow2_round32(t)


@overload(_fexp, inline="always")
def _fexp_impl(x):
    if x == types.float32:
        return lambda x: _fexp32(x)
    return lambda x: _fexp64(x)


#: a ladder runs from its first grid point while exponents stay below this (no under/overflow)
_LADDER_EXPONENT = 600.0


@njit(inline="always")
def _ladder_safe(eta, rs0, delta, cnt, cutoff):
    """Whether every exp of the ladder recurrence from its first point stays in range for d < cutoff."""
    t = max(rs0, cutoff - rs0)
    return cnt > 1 and eta * t * t <= _LADDER_EXPONENT and 2.0 * eta * delta * t <= _LADDER_EXPONENT


@njit(inline="always")
def _ladder_radial(nd, nw, eta, rs0, delta, cnt, start, lad_q, c, safe, gl, rl, acc, base):
    """acc[base + lad_q[start + q]] += sum_k exp(-eta (d_k - rs0 - q delta)^2) w_k over the neighbours k of
    the views nd, nw (work views gl, rl of the same length). Views, so that every loop is `range(n)`
    from 0, which Numba vectorises (`range(k0, k1)` keeps an index wrap-around check in the loop).

    From the first grid point: g_(q+1) = g_q R_q, R_(q+1) = R_q c, with
    R_0 = exp(2 eta delta t - eta delta^2), c = exp(-2 eta delta^2) (two exps
    per neighbour); ladders that could leave the exponent range use one exp per point.
    """
    if not safe:
        for q in range(cnt):
            rs = rs0 + q * delta
            s = 0.0
            for k in range(nd.shape[0]):
                t = nd[k] - rs
                s += _fexp(-eta * t * t) * nw[k]
            acc[base + lad_q[start + q]] += s
        return
    b = 2.0 * eta * delta
    e0 = eta * delta * delta
    for k in range(nd.shape[0]):
        t = nd[k] - rs0
        gl[k] = _fexp(-eta * t * t) * nw[k]
        rl[k] = _fexp(b * t - e0)
    # four grid points per pass over the neighbours (the ladder state stays in registers): a
    # pass per point would pay a short loop's set-up and reduction cnt times
    q = 0
    while q + 4 <= cnt:
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for k in range(nd.shape[0]):
            g = gl[k]
            r = rl[k]
            s0 += g
            g *= r
            r *= c
            s1 += g
            g *= r
            r *= c
            s2 += g
            g *= r
            r *= c
            s3 += g
            gl[k] = g * r
            rl[k] = r * c
        acc[base + lad_q[start + q]] += s0
        acc[base + lad_q[start + q + 1]] += s1
        acc[base + lad_q[start + q + 2]] += s2
        acc[base + lad_q[start + q + 3]] += s3
        q += 4
    while q < cnt:
        s = 0.0
        for k in range(nd.shape[0]):
            s += gl[k]
            gl[k] *= rl[k]
            rl[k] *= c
        acc[base + lad_q[start + q]] += s
        q += 1


@njit(inline="always")
def _ladder_vector(nd, ux, uy, uz, eta, rs0, delta, cnt, start, lad_q, c, safe, gl, rl, acc, base):
    """As _ladder_radial with a vector weight: acc[base + lad_q[start + q], :] += sum_k g_q(d_k) u_k."""
    if not safe:
        for q in range(cnt):
            rs = rs0 + q * delta
            sx = 0.0
            sy = 0.0
            sz = 0.0
            for k in range(nd.shape[0]):
                t = nd[k] - rs
                g = _fexp(-eta * t * t)
                sx += g * ux[k]
                sy += g * uy[k]
                sz += g * uz[k]
            row = base + lad_q[start + q]
            acc[row, 0] += sx
            acc[row, 1] += sy
            acc[row, 2] += sz
        return
    b = 2.0 * eta * delta
    e0 = eta * delta * delta
    for k in range(nd.shape[0]):
        t = nd[k] - rs0
        gl[k] = _fexp(-eta * t * t)
        rl[k] = _fexp(b * t - e0)
    q = 0
    while q + 2 <= cnt:  # two grid points per pass (as _ladder_radial; six sums in registers)
        sx0 = 0.0
        sy0 = 0.0
        sz0 = 0.0
        sx1 = 0.0
        sy1 = 0.0
        sz1 = 0.0
        for k in range(nd.shape[0]):
            g = gl[k]
            r = rl[k]
            x = ux[k]
            y = uy[k]
            z = uz[k]
            sx0 += g * x
            sy0 += g * y
            sz0 += g * z
            g *= r
            r *= c
            sx1 += g * x
            sy1 += g * y
            sz1 += g * z
            gl[k] = g * r
            rl[k] = r * c
        row = base + lad_q[start + q]
        acc[row, 0] += sx0
        acc[row, 1] += sy0
        acc[row, 2] += sz0
        row = base + lad_q[start + q + 1]
        acc[row, 0] += sx1
        acc[row, 1] += sy1
        acc[row, 2] += sz1
        q += 2
    while q < cnt:
        sx = 0.0
        sy = 0.0
        sz = 0.0
        for k in range(nd.shape[0]):
            g = gl[k]
            sx += g * ux[k]
            sy += g * uy[k]
            sz += g * uz[k]
            gl[k] = g * rl[k]
            rl[k] *= c
        row = base + lad_q[start + q]
        acc[row, 0] += sx
        acc[row, 1] += sy
        acc[row, 2] += sz
        q += 1


#: Taylor coefficients of cos(sqrt(y)) = sum_n (-y)^n / (2n)!, n = 0..13: for y <= pi^2 the
#: truncation error is below 3e-16, so the cosine cutoff needs neither sqrt nor cos
_COS_SQRT = tuple((-1.0) ** n / math.factorial(2 * n) for n in range(14))


_COS_SQRT_32 = tuple(_F32(c) for c in _COS_SQRT)


def _cos_sqrt_coefficients(like):
    return _COS_SQRT


@overload(_cos_sqrt_coefficients, inline="always")
def _cos_sqrt_coefficients_impl(like):
    if like == types.float32:
        return lambda like: _COS_SQRT_32
    return lambda like: _COS_SQRT


@njit(inline="always")
def _cutoff_r2(r2, w2):
    """0.5 (cos(pi r / rc) + 1) from r^2 (r < rc), with w2 = (pi / rc)^2 (in the float type of r2)."""
    y = w2 * r2
    return _c(0.5, y) * (_poly13(_cos_sqrt_coefficients(y), y) + _c(1.0, y))


#: neighbour pairs (triplets i, j, k) per block of the vectorised G4 passes (a block may overrun
#: this by one pass of partners, at most _PAIR_BLOCK)
_PAIR_BLOCK = 128


@njit(inline="always")
def _pair_factors(nt, w2a, ang, pair_work):
    """pu[u, t] and tv[v, t] of the nt pairs in the block (tw, tr2, tcos filled), one loop over t per factor,
    in the float type of the block's arrays (see _angular_terms)."""
    eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v = ang[:9]
    tr2, tfc, tcos, tw, sqe, pu, sqb, tv, tseg, tk, tws = pair_work
    # exp(-eta_u r_jk^2) fc(r_jk) times the i-j and i-k factors; in float64 the other etas that are integer
    # multiples of eta_u[0] are products of repeated squares of exp(-eta_u[0] r^2) (a square doubles the
    # relative error: 40 eta_u[0] would carry 40 ulp, too much in float32, which takes one exp per eta)
    squares = not _single(tr2)
    if squares:
        eta0 = _c(eta_u[0], tr2)
        for t in range(nt):
            r2 = tr2[t]
            tfc[t] = _cutoff_r2(r2, w2a)
            sqe[0, t] = _fexp(-eta0 * r2)
        for b in range(1, sqe.shape[0]):
            for t in range(nt):
                sqe[b, t] = sqe[b - 1, t] * sqe[b - 1, t]
    else:
        for t in range(nt):
            tfc[t] = _cutoff_r2(tr2[t], w2a)
    for u in range(eta_u.shape[0]):
        nb = enb_u[u]
        if nb > 0 and squares:
            b0 = ebits_u[u, 0]
            for t in range(nt):
                pu[u, t] = tw[u, t] * tfc[t] * sqe[b0, t]
            for j in range(1, nb):
                bj = ebits_u[u, j]
                for t in range(nt):
                    pu[u, t] *= sqe[bj, t]
        else:
            eta = _c(eta_u[u], tr2)
            for t in range(nt):
                pu[u, t] = tw[u, t] * tfc[t] * _fexp(-eta * tr2[t])
    # 2^(1 - zeta) (1 + lambda cos)^zeta = pref ((1 + lambda cos) / 2)^zeta, pref = 2 (no overflow at any zeta)
    half = _c(0.5, tr2)
    one = _c(1.0, tr2)
    zero = _c(0.0, tr2)
    for l in range(lam_l.shape[0]):
        lam = _c(lam_l[l], tr2)
        for t in range(nt):
            b = half * (one + lam * tcos[t])
            sqb[l, 0, t] = b if b > zero else zero
        for j in range(1, sqb.shape[1]):
            for t in range(nt):
                sqb[l, j, t] = sqb[l, j - 1, t] * sqb[l, j - 1, t]
    for v in range(zeta_v.shape[0]):
        l = lam_idx_v[v]
        pref = _c(pref_v[v], tr2)
        nb = znb_v[v]
        if nb > 0:  # integral zeta: a product of repeated squares
            b0 = zbits_v[v, 0]
            for t in range(nt):
                tv[v, t] = pref * sqb[l, b0, t]
            for j in range(1, nb):
                bj = zbits_v[v, j]
                for t in range(nt):
                    tv[v, t] *= sqb[l, bj, t]
        else:
            z = _c(zeta_v[v], tr2)
            for t in range(nt):
                tv[v, t] = pref * sqb[l, 0, t] ** z


@njit(forceinline=True, cache=True, fastmath=_FASTMATH)
def _angular_terms(w2a, acut2, angular_nbr, n_sp, ang, pair_work, acc_a, acc_v, w_base):
    """G4 over unordered pairs of the angular neighbours (sorted by species: species a is aseg[a]:aseg[a + 1];
    ad holds 1 / r; ae[u, k] = exp(-eta_u r^2) fc(r)).

    The neighbour pairs with r_jk inside the angular cutoff are collected,
    species pair after species pair, into one block of about _PAIR_BLOCK pairs
    (all species pairs of an atom usually fit in one); every factor is one loop
    over the whole block (vectorised, see _pair_factors), and each G4 column
    gets one sum over each species pair's segment of the block.
    """
    ax, ay, az, ad, aseg, ae, aw = angular_nbr
    pair_ab, mixed_ab = ang[12], ang[15]
    tr2, tfc, tcos, tw, sqe, pu, sqb, tv, tseg, tk, tws = pair_work
    nt = 0
    n_seg = 0
    for a in range(n_sp):
        a0 = aseg[a]
        a1 = aseg[a + 1]
        for b in range(a, n_sp):
            b0 = aseg[b]
            b1 = aseg[b + 1]
            if a1 == a0 or b1 == b0:
                continue
            same = a == b
            tseg[0, n_seg] = pair_ab[a, b]
            tseg[1, n_seg] = nt
            tseg[3, n_seg] = mixed_ab[a, b]
            for k1 in range(a0, a1):
                x1 = ax[k1]
                y1 = ay[k1]
                z1 = az[k1]
                k2 = k1 + 1 if same else b0
                while k2 < b1:
                    # up to _PAIR_BLOCK partners of k1 per pass: every one is written, those inside
                    # the angular cutoff are kept (nt advances by the test: no unpredictable branch);
                    # a plain scalar loop, as rows are short. Cosines and weights are gathered per
                    # block in _pair_sums.
                    k2_end = min(b1, k2 + _PAIR_BLOCK)
                    for k in range(k2, k2_end):
                        ex = ax[k] - x1
                        ey = ay[k] - y1
                        ez = az[k] - z1
                        r2 = ex * ex + ey * ey + ez * ez
                        tr2[nt] = r2
                        tk[0, nt] = k1
                        tk[1, nt] = k
                        nt += r2 < acut2
                    k2 = k2_end
                    if nt >= _PAIR_BLOCK:  # block full: sum it, the species pair goes on in a new block
                        tseg[2, n_seg] = nt
                        _pair_sums(nt, n_seg + 1, w2a, angular_nbr, ang, pair_work, acc_a, acc_v, w_base)
                        nt = 0
                        n_seg = 0
                        tseg[0, 0] = pair_ab[a, b]
                        tseg[1, 0] = 0
                        tseg[3, 0] = mixed_ab[a, b]
            tseg[2, n_seg] = nt
            n_seg += 1
    if nt > 0:
        _pair_sums(nt, n_seg, w2a, angular_nbr, ang, pair_work, acc_a, acc_v, w_base)


@njit(inline="always")
def _pair_sums(nt, n_seg, w2a, angular_nbr, ang, pair_work, acc_a, acc_v, w_base):
    """G4 sums of a block of nt pairs (neighbours tk[0, t], tk[1, t]; r_jk^2 in tr2): cosines and
    neighbour weights gathered, factors over the whole block, then one sum per G4 column over each
    species pair's segment tseg[1, s]:tseg[2, s] (species pair tseg[0, s], unlike-pair index tseg[3, s]
    or -1) into that pair's block of acc_a; then the angular
    covariant vectors (bisector and difference of the two unit vectors, weighted) into
    acc_v[w_base + ...] (layout of FeatureSpec.covariant_labels)."""
    ax, ay, az, ad, aseg, ae, aw = angular_nbr
    use_grid, ang_u_q, ang_v_q = ang[9:12]
    n_ang = ang[13]
    tr2, tfc, tcos, tw, sqe, pu, sqb, tv, tseg, tk, tws = pair_work
    # unsigned indices: no wrap-around check, the gathers vectorise
    k1s = tk[0, :nt]
    k2s = tk[1, :nt]
    for t in range(nt):
        k1 = k1s[t]
        k2 = k2s[t]
        tcos[t] = (ax[k1] * ax[k2] + ay[k1] * ay[k2] + az[k1] * az[k2]) * (ad[k1] * ad[k2])
    n_u = pu.shape[0]
    for u in range(n_u):
        ae_u = ae[u]
        tw_u = tw[u]
        for t in range(nt):
            tw_u[t] = ae_u[k1s[t]] * ae_u[k2s[t]]
    _pair_factors(nt, w2a, ang, pair_work)
    n_v = tv.shape[0]
    width = n_u * n_v if use_grid else n_ang  # accumulator entries per species pair
    for s in range(n_seg):
        base = tseg[0, s] * width
        t0 = tseg[1, s]
        t1 = tseg[2, s]
        if t1 == t0:
            continue
        # loops over views from 0: Numba vectorises `range(n)` over a view, not `range(t0, t1)`
        # (a possibly negative start keeps the index wrap-around check in the loop)
        if use_grid:
            for u in range(n_u):
                pu_t = pu[u, t0:t1]
                for v in range(n_v):
                    tv_t = tv[v, t0:t1]
                    acc = _c(0.0, pu)
                    for t in range(t1 - t0):
                        acc += pu_t[t] * tv_t[t]
                    acc_a[base + u * n_v + v] += acc
        else:
            for q in range(n_ang):
                pu_t = pu[ang_u_q[q], t0:t1]
                tv_t = tv[ang_v_q[q], t0:t1]
                acc = _c(0.0, pu)
                for t in range(t1 - t0):
                    acc += pu_t[t] * tv_t[t]
                acc_a[base + q] += acc
    wang = ang[14]
    n_w = wang.shape[0]
    if n_w == 0:
        return
    n_pairs = ang[12].shape[0] * (ang[12].shape[0] + 1) // 2
    # rows of tws: radial factor per distinct eta, angular factor per distinct (zeta, lambda), the
    # weight, then the two unit vectors of every pair of the block
    o = 2 * n_w
    wt = tws[o]
    u1x = tws[o + 1]
    u1y = tws[o + 2]
    u1z = tws[o + 3]
    u2x = tws[o + 4]
    u2y = tws[o + 5]
    u2z = tws[o + 6]
    half = _c(0.5, wt)
    one = _c(1.0, wt)
    zero = _c(0.0, wt)
    for t in range(nt):
        k1 = k1s[t]
        k2 = k2s[t]
        u1x[t] = ax[k1] * ad[k1]
        u1y[t] = ay[k1] * ad[k1]
        u1z[t] = az[k1] * ad[k1]
        u2x[t] = ax[k2] * ad[k2]
        u2y[t] = ay[k2] * ad[k2]
        u2z[t] = az[k2] * ad[k2]
    for p in range(n_w):
        if int(wang[p, 4]) == p:  # first parameter with this eta
            eta = _c(wang[p, 0], wt)
            aw_p = aw[p]
            r_t = tws[p]
            for t in range(nt):
                r_t[t] = aw_p[k1s[t]] * aw_p[k2s[t]] * tfc[t] * _fexp(-eta * tr2[t])
        if int(wang[p, 5]) == p:  # first parameter with this (zeta, lambda)
            lam = _c(wang[p, 2], wt)
            zeta = _c(wang[p, 1], wt)
            zint = int(wang[p, 6])
            a_t = tws[n_w + p]
            for t in range(nt):
                b = half * (one + lam * tcos[t])  # halved, the prefactor is 2 (see _pair_factors)
                a_t[t] = b if b > zero else zero
            if zint == 0:
                for t in range(nt):
                    a_t[t] = a_t[t] ** zeta
            elif zint > 1:
                # a^zint by repeated squaring, one pass over the block per step (vectorised; an inner loop
                # per pair keeps the pass scalar); wt, free until the weights below, holds the squares
                for t in range(nt):
                    wt[t] = a_t[t]
                if not zint & 1:
                    for t in range(nt):
                        a_t[t] = one
                zb = zint >> 1
                while zb > 0:
                    for t in range(nt):
                        wt[t] *= wt[t]
                    if zb & 1:
                        for t in range(nt):
                            a_t[t] *= wt[t]
                    zb >>= 1
    for p in range(n_w):
        pref = _c(wang[p, 3], wt)
        r_t = tws[int(wang[p, 4])]
        a_t = tws[n_w + int(wang[p, 5])]
        for t in range(nt):
            wt[t] = pref * r_t[t] * a_t[t]
        for s in range(n_seg):
            t0 = tseg[1, s]
            t1 = tseg[2, s]
            if t1 == t0:
                continue
            # loops over views from 0 (see above)
            w_t = wt[t0:t1]
            v1x = u1x[t0:t1]
            v1y = u1y[t0:t1]
            v1z = u1z[t0:t1]
            v2x = u2x[t0:t1]
            v2y = u2y[t0:t1]
            v2z = u2z[t0:t1]
            s1x = zero
            s1y = zero
            s1z = zero
            s2x = zero
            s2y = zero
            s2z = zero
            for t in range(t1 - t0):
                w = w_t[t]
                s1x += w * v1x[t]
                s1y += w * v1y[t]
                s1z += w * v1z[t]
                s2x += w * v2x[t]
                s2y += w * v2y[t]
                s2z += w * v2z[t]
            col = w_base + tseg[0, s] * n_w + p
            acc_v[col, 0] += s1x + s2x
            acc_v[col, 1] += s1y + s2y
            acc_v[col, 2] += s1z + s2z
            mx = tseg[3, s]
            if mx >= 0:  # unlike species: k1 of the lower species index, k2 of the other
                col = w_base + (n_pairs + mx) * n_w + p
                acc_v[col, 0] += s1x - s2x
                acc_v[col, 1] += s1y - s2y
                acc_v[col, 2] += s1z - s2z


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


@njit(cache=True)
def _ladders_safe(lad_eta, lad_rs0, lad_delta, lad_cnt, cutoff):
    out = np.empty(lad_eta.shape[0], np.bool_)
    for l in range(lad_eta.shape[0]):
        out[l] = _ladder_safe(lad_eta[l], lad_rs0[l], lad_delta[l], lad_cnt[l], cutoff)
    return out


@njit(inline="always")
def _atom_terms(m, nbr, seg, n_sp, cutoff, acut, n_rad, rad, n_cov, cov, ang, work, pair_work, acc_r, acc_v, acc_a):
    """G2, V and G4 sums of one centre atom from its m neighbours (sorted by species, inside the cutoff).

    Arguments are grouped in tuples: CPython compiles a call with more than 30
    arguments as a *args call, which Numba cannot inline.
    """
    nx, ny, nz, nr2 = nbr
    rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c, rl_safe = rad
    cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c, cl_safe = cov
    eta_u = ang[0]
    n_ang = ang[13]
    nd, nw, ux, uy, uz, gl, rl, ax, ay, az, ad, ar2, aseg, ae, aw, afc = work
    n_w = ang[14].shape[0]
    w2c = (math.pi / cutoff) ** 2
    for k in range(m):
        r2 = nr2[k]
        d = math.sqrt(r2)
        fc = _cutoff_r2(r2, w2c)
        fcd = fc / d
        nd[k] = d
        nw[k] = fc
        ux[k] = nx[k] * fcd
        uy[k] = ny[k] * fcd
        uz[k] = nz[k] * fcd
    for a in range(n_sp):
        k0 = seg[a]
        k1 = seg[a + 1]
        if k1 == k0:
            continue
        nd_a = nd[k0:k1]
        gl_a = gl[k0:k1]
        rl_a = rl[k0:k1]
        for l in range(rl_eta.shape[0]):
            _ladder_radial(nd_a, nw[k0:k1], rl_eta[l], rl_rs0[l], rl_delta[l], rl_cnt[l], rl_start[l], rl_q,
                           rl_c[l], rl_safe[l], gl_a, rl_a, acc_r, a * n_rad)
        for l in range(cl_eta.shape[0]):
            _ladder_vector(nd_a, ux[k0:k1], uy[k0:k1], uz[k0:k1], cl_eta[l], cl_rs0[l], cl_delta[l], cl_cnt[l],
                           cl_start[l], cl_q, cl_c[l], cl_safe[l], gl_a, rl_a, acc_v, a * n_cov)
    if n_ang == 0 and n_w == 0:
        return
    # the angular terms in the dtype of the outputs (that of the ax, ... arrays)
    w2a = _c((math.pi / acut) ** 2, ad)
    # the neighbours inside the angular cutoff, species segment by species segment (the neighbours come
    # sorted by species): each is written unconditionally and kept by advancing mm (no unpredictable
    # branch); a segment's end is where mm stands after it (a count per neighbour into aseg[species]
    # would chain every iteration through the store to the same entry)
    mm = 0
    aseg[0] = 0
    for a in range(n_sp):
        for k in range(seg[a], seg[a + 1]):
            ax[mm] = nx[k]
            ay[mm] = ny[k]
            az[mm] = nz[k]
            ad[mm] = nd[k]
            ar2[mm] = nr2[k]
            mm += nd[k] < acut
        aseg[a + 1] = mm
    one = _c(1.0, ad)
    for k in range(mm):  # 1 / r of the kept neighbours only, one vectorised pass
        ad[k] = one / ad[k]
    for k in range(mm):
        afc[k] = _cutoff_r2(ar2[k], w2a)
    _gaussian_rows(eta_u, ar2, afc, mm, ae)
    wang = ang[14]
    for p in range(wang.shape[0]):  # the etas of the angular covariant parameters: one row per distinct eta
        if int(wang[p, 4]) == p:  # (read by _pair_sums for the first parameter with that eta only)
            _gaussian_row(wang[p, 0], ar2, afc, mm, aw[p])
    _angular_terms(w2a, _c(acut * acut, ad), (ax, ay, az, ad, aseg, ae, aw), n_sp, ang, pair_work, acc_a, acc_v,
                   n_sp * n_cov)


@njit(inline="always")
def _gaussian_rows(eta_q, r2, fc, m, out):
    """out[q, k] = exp(-eta_q[q] r2[k]) fc[k] for k < m: the neighbour factors of the angular terms."""
    for q in range(eta_q.shape[0]):
        _gaussian_row(eta_q[q], r2, fc, m, out[q])


@njit(inline="always")
def _gaussian_row(eta, r2, fc, m, row):
    """row[k] = exp(-eta r2[k]) fc[k] for k < m (in the dtype of row)."""
    eta = _c(eta, row)
    for k in range(m):
        row[k] = _fexp(-eta * r2[k]) * fc[k]


@njit(inline="always")
def _scratch(cap, n_sp, n_u, n_v, ebits_u, lam_l, zbits_v, n_radial_total, n_cov_total, n_acc_a, n_w, like):
    """Per-chunk work arrays for up to `cap` neighbours per atom, and the per-atom accumulators. The
    angular terms' arrays are in the dtype of `like` (the outputs), the rest in float64."""
    dt = like.dtype
    f = np.empty((15, cap))  # gathered, sorted and derived per-neighbour columns
    fa = np.empty((6, cap), dt)  # the neighbours inside the angular cutoff
    ints = np.empty((1, cap), np.uint32)  # indices of the entries inside the cutoff
    # species segments: of the atom's neighbours, of the one-shot kernel's candidates, of the angular neighbours
    seg = np.empty((3, n_sp + 1), np.int64)
    ae = np.empty((n_u, cap), dt)
    aw = np.empty((n_w, cap), dt)  # exp(-eta r^2) fc(r) of the angular covariant parameters
    # per block of neighbour pairs
    block = 2 * _PAIR_BLOCK  # a block fills up to _PAIR_BLOCK - 1 pairs, then one pass adds at most _PAIR_BLOCK
    tf = np.empty((3, block), dt)
    tw = np.empty((n_u, block), dt)
    sqe = np.empty((max(ebits_u.shape[1], 1), block), dt)
    pu = np.empty((n_u, block), dt)
    sqb = np.empty((lam_l.shape[0], max(zbits_v.shape[1], 1), block), dt)
    tv = np.empty((n_v, block), dt)
    acc_r = np.empty(n_radial_total)
    acc_v = np.empty((n_cov_total, 3))
    acc_a = np.empty(n_acc_a)
    # species-pair segments of a block: pair index, first and end pair, unlike-pair index (or -1)
    tseg = np.empty((4, n_sp * (n_sp + 1) // 2), np.int64)
    tk = np.empty((2, block), np.uint32)  # the two neighbours of each pair in a block
    tws = np.empty((2 * n_w + 7, block), dt)  # angular covariant vectors: factors, weights, unit vectors
    work = (f[8], f[9], f[10], f[11], f[12], f[13], f[14], fa[0], fa[1], fa[2], fa[3], fa[4], seg[2], ae, aw, fa[5])
    return f, ints, seg, work, (tf[0], tf[1], tf[2], tw, sqe, pu, sqb, tv, tseg, tk, tws), acc_r, acc_v, acc_a


@njit(parallel=True, cache=True)
def group_by_species(start_n, j_p, shiftvec_pc, species_n, seg_ns):
    """Reorder every CSR row (neighbours j_p[start_n[i]:start_n[i+1]] and their shift vectors) so that
    its neighbours come species by species, in their previous order within a species (a stable
    counting sort); seg_ns[i, a] is where species a starts in row i, seg_ns[i, -1] = start_n[i + 1].
    Done once per list build, it spares the feature kernel a sort per atom and step."""
    n = start_n.shape[0] - 1
    n_sp = seg_ns.shape[1] - 1
    chunk = 256
    for c in prange((n + chunk - 1) // chunk):
        cap = 1
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            cap = max(cap, start_n[i + 1] - start_n[i])
        js = np.empty(cap, j_p.dtype)
        sv = np.empty((cap, 3), shiftvec_pc.dtype)
        cur = np.empty(n_sp + 1, np.int64)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            p0 = start_n[i]
            m = start_n[i + 1] - p0
            row_j = j_p[p0:p0 + m]
            row_s = shiftvec_pc[p0:p0 + m]
            cur[:] = 0
            for p in range(m):
                js[p] = row_j[p]
                sv[p, 0] = row_s[p, 0]
                sv[p, 1] = row_s[p, 1]
                sv[p, 2] = row_s[p, 2]
                cur[species_n[row_j[p]] + 1] += 1
            for a in range(n_sp):
                cur[a + 1] += cur[a]
            for a in range(n_sp + 1):
                seg_ns[i, a] = p0 + cur[a]
            for p in range(m):
                q = cur[species_n[js[p]]]
                cur[species_n[js[p]]] = q + 1
                row_j[q] = js[p]
                row_s[q, 0] = sv[p, 0]
                row_s[q, 1] = sv[p, 1]
                row_s[q, 2] = sv[p, 2]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def features(
    pos_nc, seg_ns, j_p, shiftvec_pc,
    cutoff, acut,
    n_rad, rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c,
    n_cov, cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c,
    eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, grid_q, use_grid, ang_u_q, ang_v_q,
    pair_ab, n_radial_total, wang_p, mixed_ab,
    g_nf, v_nfc, overlap_n,
):
    """Features from a CSR neighbour list grouped by species (see group_by_species): the neighbours
    of i of species a are j_p[seg_ns[i, a]:seg_ns[i, a + 1]], so the gathered neighbours come out
    sorted by species without a sort."""
    n = pos_nc.shape[0]
    n_ang = grid_q.shape[0]
    n_u = eta_u.shape[0]
    n_v = zeta_v.shape[0]
    n_uv = n_u * n_v
    n_sp = pair_ab.shape[0]
    n_pairs = n_sp * (n_sp + 1) // 2
    rc2 = cutoff * cutoff
    rad = (rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c,
           _ladders_safe(rl_eta, rl_rs0, rl_delta, rl_cnt, cutoff))
    cov = (cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c,
           _ladders_safe(cl_eta, cl_rs0, cl_delta, cl_cnt, cutoff))
    ang = (eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, use_grid, ang_u_q, ang_v_q,
           pair_ab, n_ang, wang_p, mixed_ab)
    chunk = _chunk_size(n)
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        i0 = c * chunk
        i1 = min(n, i0 + chunk)
        cap = 1
        for i in range(i0, i1):
            cap = max(cap, seg_ns[i, n_sp] - seg_ns[i, 0])
        f, ints, seg, work, pair_work, acc_r, acc_v, acc_a = _scratch(
            cap, n_sp, n_u, n_v, ebits_u, lam_l, zbits_v, n_radial_total, v_nfc.shape[1],
            n_pairs * (n_uv if use_grid else n_ang), wang_p.shape[0], g_nf)
        for i in range(i0, i1):
            acc_r[:] = 0.0
            acc_v[:] = 0.0
            acc_a[:] = 0.0
            overlap_n[i] = -1
            m = 0
            xi = pos_nc[i, 0]
            yi = pos_nc[i, 1]
            zi = pos_nc[i, 2]
            sg = seg[0]
            nx, ny, nz, nr2 = f[4], f[5], f[6], f[7]
            ex, ey, ez, er2 = f[0], f[1], f[2], f[3]
            hits = ints[0]
            p00 = seg_ns[i, 0]
            ntot = seg_ns[i, n_sp] - p00
            js = j_p[p00:p00 + ntot]
            sv = shiftvec_pc[p00:p00 + ntot]
            # the vectors of every entry first (one pass, its stores independent of any count), then the
            # indices of those inside the cutoff, species by species (one store per entry, kept by
            # advancing m: no unpredictable branch), then their vectors gathered (a store of every
            # column per entry cost more)
            for p in range(ntot):
                j = js[p]
                dx = pos_nc[j, 0] - xi + sv[p, 0]
                dy = pos_nc[j, 1] - yi + sv[p, 1]
                dz = pos_nc[j, 2] - zi + sv[p, 2]
                ex[p] = dx
                ey[p] = dy
                ez[p] = dz
                er2[p] = dx * dx + dy * dy + dz * dz
            for a in range(n_sp):
                sg[a] = m
                for p in range(seg_ns[i, a] - p00, seg_ns[i, a + 1] - p00):
                    r2 = er2[p]
                    if r2 < 1e-12:
                        overlap_n[i] = js[p]
                    hits[m] = p
                    m += (r2 < rc2) & (r2 >= 1e-12)
            sg[n_sp] = m
            hs = hits[:m]
            for h in range(m):
                p = hs[h]
                nx[h] = ex[p]
                ny[h] = ey[p]
                nz[h] = ez[p]
                nr2[h] = er2[p]
            _atom_terms(m, (nx, ny, nz, nr2), sg, n_sp, cutoff, acut, n_rad, rad, n_cov, cov, ang,
                        work, pair_work, acc_r, acc_v, acc_a)
            _store(i, acc_r, acc_v, acc_a, grid_q, use_grid, n_uv, n_pairs, n_ang, n_radial_total, g_nf, v_nfc)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def features_cells(
    poss_cn, species_s, cell_cc, periodic_c, nbins_c, search_c, bin3s_nc, start_b, order_n,
    cutoff, acut,
    n_rad, rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c,
    n_cov, cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c,
    eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, grid_q, use_grid, ang_u_q, ang_v_q,
    pair_ab, n_radial_total, wang_p, mixed_ab,
    g_nf, v_nfc, overlap_n,
):
    """Features straight from a cell list (see neighbors_cpu).

    `poss_cn` (wrapped positions as three columns, (3, N)), `species_s` and `bin3s_nc` (bins) are
    in bin order (entry k is atom order_n[k]); outputs are in atom order.
    """
    n = poss_cn.shape[1]
    n_ang = grid_q.shape[0]
    n_u = eta_u.shape[0]
    n_v = zeta_v.shape[0]
    n_uv = n_u * n_v
    n_sp = pair_ab.shape[0]
    n_pairs = n_sp * (n_sp + 1) // 2
    rc2 = cutoff * cutoff
    rad = (rl_eta, rl_rs0, rl_delta, rl_cnt, rl_start, rl_q, rl_c,
           _ladders_safe(rl_eta, rl_rs0, rl_delta, rl_cnt, cutoff))
    cov = (cl_eta, cl_rs0, cl_delta, cl_cnt, cl_start, cl_q, cl_c,
           _ladders_safe(cl_eta, cl_rs0, cl_delta, cl_cnt, cutoff))
    ang = (eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, use_grid, ang_u_q, ang_v_q,
           pair_ab, n_ang, wang_p, mixed_ab)
    chunk = _chunk_size(n)
    n_chunks = (n + chunk - 1) // chunk
    for c in prange(n_chunks):
        i0 = c * chunk
        i1 = min(n, i0 + chunk)
        cap = 1
        for k in range(i0, i1):
            cap = max(cap, _candidates(k, periodic_c, nbins_c, search_c, bin3s_nc, start_b))
        f, ints, seg, work, pair_work, acc_r, acc_v, acc_a = _scratch(
            cap, n_sp, n_u, n_v, ebits_u, lam_l, zbits_v, n_radial_total, v_nfc.shape[1],
            n_pairs * (n_uv if use_grid else n_ang), wang_p.shape[0], g_nf)
        # candidates of the current bin: the atoms of the visited (bin, image) cells, image-shifted, within
        # the cutoff of the bin's atoms' bounding box, sorted by species (species a is cseg[a]:cseg[a + 1])
        cand = np.empty((3, cap))
        cand_q = np.empty(cap, np.int64)
        cand_img = np.empty(cap, np.bool_)
        cand_r2 = np.empty(cap)
        gat = np.empty((3, cap))  # as gathered, before the sort
        gat_sp = np.empty(cap, np.int64)
        gat_q = np.empty(cap, np.int64)
        gat_img = np.empty(cap, np.bool_)
        cseg = seg[1]
        ccur = np.empty(n_sp + 1, np.int64)
        nc = 0
        cur = (-1, -1, -1)
        for k in range(i0, i1):
            i = order_n[k]
            acc_r[:] = 0.0
            acc_v[:] = 0.0
            acc_a[:] = 0.0
            overlap_n[i] = -1
            here = (bin3s_nc[k, 0], bin3s_nc[k, 1], bin3s_nc[k, 2])
            if here != cur:  # atoms in bin order: one gather serves every atom of the bin
                cur = here
                # the bounding box of the bin's atoms (consecutive in bin order from k): a candidate
                # farther than the cutoff from it is no atom's neighbour and is not kept
                lox = hix = poss_cn[0, k]
                loy = hiy = poss_cn[1, k]
                loz = hiz = poss_cn[2, k]
                kb = k + 1
                while kb < n and bin3s_nc[kb, 0] == here[0] and bin3s_nc[kb, 1] == here[1] and \
                        bin3s_nc[kb, 2] == here[2]:
                    lox = min(lox, poss_cn[0, kb])
                    hix = max(hix, poss_cn[0, kb])
                    loy = min(loy, poss_cn[1, kb])
                    hiy = max(hiy, poss_cn[1, kb])
                    loz = min(loz, poss_cn[2, kb])
                    hiz = max(hiz, poss_cn[2, kb])
                    kb += 1
                nc = 0
                for d0 in range(-search_c[0], search_c[0] + 1):
                    b0, t0, ok0 = _wrap_index(here[0] + d0, nbins_c[0], periodic_c[0])
                    if not ok0:
                        continue
                    for d1 in range(-search_c[1], search_c[1] + 1):
                        b1, t1, ok1 = _wrap_index(here[1] + d1, nbins_c[1], periodic_c[1])
                        if not ok1:
                            continue
                        for d2 in range(-search_c[2], search_c[2] + 1):
                            b2, t2, ok2 = _wrap_index(here[2] + d2, nbins_c[2], periodic_c[2])
                            if not ok2:
                                continue
                            sx = t0 * cell_cc[0, 0] + t1 * cell_cc[1, 0] + t2 * cell_cc[2, 0]
                            sy = t0 * cell_cc[0, 1] + t1 * cell_cc[1, 1] + t2 * cell_cc[2, 1]
                            sz = t0 * cell_cc[0, 2] + t1 * cell_cc[1, 2] + t2 * cell_cc[2, 2]
                            shifted = t0 != 0 or t1 != 0 or t2 != 0
                            bb = (b0 * nbins_c[1] + b1) * nbins_c[2] + b2
                            for q in range(start_b[bb], start_b[bb + 1]):
                                x = poss_cn[0, q] + sx
                                y = poss_cn[1, q] + sy
                                z = poss_cn[2, q] + sz
                                ex = max(lox - x, x - hix, 0.0)
                                ey = max(loy - y, y - hiy, 0.0)
                                ez = max(loz - z, z - hiz, 0.0)
                                gat[0, nc] = x
                                gat[1, nc] = y
                                gat[2, nc] = z
                                gat_sp[nc] = species_s[q]
                                gat_q[nc] = q
                                gat_img[nc] = shifted
                                nc += ex * ex + ey * ey + ez * ez < rc2
                # a stable counting sort by species, once per bin: the hits of every atom of the bin
                # then come out sorted by species (no sort per atom)
                _count_starts(gat_sp, nc, n_sp, cseg)
                for a in range(n_sp):
                    ccur[a] = cseg[a]
                for t in range(nc):
                    a = gat_sp[t]
                    p = ccur[a]
                    ccur[a] = p + 1
                    cand[0, p] = gat[0, t]
                    cand[1, p] = gat[1, t]
                    cand[2, p] = gat[2, t]
                    cand_q[p] = gat_q[t]
                    cand_img[p] = gat_img[t]
            xi = poss_cn[0, k]
            yi = poss_cn[1, k]
            zi = poss_cn[2, k]
            for t in range(nc):  # distances to every candidate first (vectorises), then the hits
                dx = cand[0, t] - xi
                dy = cand[1, t] - yi
                dz = cand[2, t] - zi
                cand_r2[t] = dx * dx + dy * dy + dz * dz
            # the hits' indices, species by species (one store per candidate, kept by advancing m: no
            # unpredictable branch), then their vectors gathered (a store of every column per
            # candidate cost twice as much)
            sg = seg[0]
            hits = ints[0]
            m = 0
            for a in range(n_sp):
                sg[a] = m
                for t in range(cseg[a], cseg[a + 1]):
                    r2 = cand_r2[t]
                    if r2 < 1e-12:  # the centre itself (or an overlapping atom): rare, predicted
                        if cand_q[t] != k or cand_img[t]:
                            overlap_n[i] = order_n[cand_q[t]]
                    hits[m] = t
                    m += (r2 < rc2) & (r2 >= 1e-12)
            sg[n_sp] = m
            nx, ny, nz, nr2 = f[4], f[5], f[6], f[7]
            hs = hits[:m]
            for h in range(m):
                t = hs[h]
                nx[h] = cand[0, t] - xi
                ny[h] = cand[1, t] - yi
                nz[h] = cand[2, t] - zi
                nr2[h] = cand_r2[t]
            _atom_terms(m, (nx, ny, nz, nr2), sg, n_sp, cutoff, acut, n_rad, rad, n_cov, cov, ang,
                        work, pair_work, acc_r, acc_v, acc_a)
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
