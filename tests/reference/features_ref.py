"""Pure-NumPy reference of G2, G4 and V, straight from the formulas of DESIGN.md."""

import numpy as np

from .neighbors_ref import neighbor_list_ref


def _fc(r, rc):
    return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)


def features_ref(positions, numbers, cell, pbc, spec):
    """(G (N, n_invariant), V (N, n_covariant, 3)) in float64, by explicit loops."""
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    sp = np.array([spec.numbers.index(int(z)) for z in numbers], dtype=int)
    i_p, j_p, _, r_pc = neighbor_list_ref(positions, cell, pbc, spec.cutoff)
    S = spec.n_species
    nR, nA, nC = len(spec.radial), len(spec.angular), len(spec.covariant)
    pair = spec.pair_index()
    G = np.zeros((n, spec.n_invariant))
    V = np.zeros((n, spec.n_covariant, 3))
    rc, ra = spec.cutoff, spec.angular_cutoff
    for i in range(n):
        sel = i_p == i
        js, rs = j_p[sel], r_pc[sel]
        d = np.linalg.norm(rs, axis=1)
        fc = _fc(d, rc)
        for q, (eta, r0) in enumerate(spec.radial):
            vals = np.exp(-eta * (d - r0) ** 2) * fc
            for a in range(S):
                G[i, a * nR + q] = vals[sp[js] == a].sum()
        for q, (eta, r0) in enumerate(spec.covariant):
            w = np.exp(-eta * (d - r0) ** 2) * fc
            for a in range(S):
                m = sp[js] == a
                V[i, a * nC + q] = (w[m, None] * rs[m] / d[m, None]).sum(axis=0)
        ang = d < ra
        ja, ra_vec, da = js[ang], rs[ang], d[ang]
        for k1 in range(len(ja)):
            for k2 in range(k1 + 1, len(ja)):
                rjk = np.linalg.norm(ra_vec[k2] - ra_vec[k1])
                cos = ra_vec[k1] @ ra_vec[k2] / (da[k1] * da[k2])
                cut = _fc(da[k1], ra) * _fc(da[k2], ra) * _fc(rjk, ra)
                col = spec.n_radial + pair[sp[ja[k1]], sp[ja[k2]]] * nA
                for q, (eta, zeta, lam) in enumerate(spec.angular):
                    G[i, col + q] += 2.0 ** (1 - zeta) * max(1 + lam * cos, 0.0) ** zeta * np.exp(
                        -eta * (da[k1] ** 2 + da[k2] ** 2 + rjk**2)) * cut
                # angular covariant vectors: bisector for every species pair, difference (neighbour of
                # the lower species index minus the other) for unlike species
                a, b = sp[ja[k1]], sp[ja[k2]]
                u1, u2 = ra_vec[k1] / da[k1], ra_vec[k2] / da[k2]
                if a > b:
                    a, b, u1, u2 = b, a, u2, u1
                for q, (eta, zeta, lam) in enumerate(spec.covariant_angular):
                    w = 2.0 ** (1 - zeta) * max(1 + lam * cos, 0.0) ** zeta * np.exp(
                        -eta * (da[k1] ** 2 + da[k2] ** 2 + rjk**2)) * cut
                    V[i, _w_index(spec, a, b, q, True)] += w * (u1 + u2)
                    if a != b:
                        V[i, _w_index(spec, a, b, q, False)] += w * (u1 - u2)
    return G, V


def _w_index(spec, a, b, q, bisector):
    """Column of the angular covariant vector (a <= b, parameter q) in the covariant layout."""
    nW = len(spec.covariant_angular)
    if bisector:
        return spec.n_covariant_radial + spec.pair_index()[a, b] * nW + q
    return spec.n_covariant_radial + (spec.n_pairs + spec.mixed_pair_index()[a, b]) * nW + q
