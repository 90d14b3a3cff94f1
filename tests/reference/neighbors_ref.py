"""Pure-NumPy brute-force neighbour list (reference for the cell-list kernels)."""

import itertools

import numpy as np


def neighbor_list_ref(positions, cell, pbc, cutoff):
    """All (i, j, shift) with |r_j - r_i + shift @ cell| < cutoff, i != j or shift != 0.

    Loops over every periodic image within reach: along a periodic axis the
    number of images is ceil(cutoff / height) + 1 on each side.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    n = len(positions)
    ranges = []
    if pbc.any():
        vol = abs(np.linalg.det(cell)) if pbc.all() else None
    for a in range(3):
        if pbc[a]:
            b, c = cell[(a + 1) % 3], cell[(a + 2) % 3]
            normal = np.cross(b, c)
            normal /= np.linalg.norm(normal)
            height = abs(cell[a] @ normal)
            # positions may lie outside the cell: widen by the spread of positions
            spread = np.ptp(positions @ normal) if n else 0.0
            k = int(np.ceil((cutoff + spread) / height)) + 1
            ranges.append(range(-k, k + 1))
        else:
            ranges.append(range(0, 1))
    out_i, out_j, out_s, out_r = [], [], [], []
    for shift in itertools.product(*ranges):
        s = np.array(shift)
        d_vec = positions[None, :, :] + (s @ cell)[None, None, :] - positions[:, None, :]
        dist = np.linalg.norm(d_vec, axis=2)
        mask = dist < cutoff
        if not any(shift):
            np.fill_diagonal(mask, False)
        ii, jj = np.nonzero(mask)
        out_i.append(ii)
        out_j.append(jj)
        out_s.append(np.tile(s, (len(ii), 1)))
        out_r.append(d_vec[ii, jj])
    i = np.concatenate(out_i)
    j = np.concatenate(out_j)
    S = np.concatenate(out_s).reshape(-1, 3)
    R = np.concatenate(out_r).reshape(-1, 3)
    return i, j, S, R


def pair_set(i, j, shifts):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(shifts).tolist())))
