"""Synthetic structures with a known covariant per-atom target (for training tests)."""

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list

#: cutoff (Å) and per-species weights of the synthetic target
R_T = 3.5
Q = {"H": 1.0, "O": -0.6}


def covariant_target(atoms):
    """T_i = (1 + 0.3 n_i) Σ_j q_{s_j} (1 - r_ij/R)² r̂_ij, n_i = Σ_j (1 - r_ij/R)².

    A smooth, rotation-covariant (N, 3) function of the neighbour vectors,
    non-linear in the environment through the coordination n_i.
    """
    i, j, d, vec = neighbor_list("ijdD", atoms, R_T)
    q = np.array([Q[s] for s in atoms.get_chemical_symbols()])
    w = (1.0 - d / R_T) ** 2
    coord = np.bincount(i, weights=w, minlength=len(atoms))
    t = np.zeros((len(atoms), 3))
    np.add.at(t, i, (q[j] * w / d)[:, None] * vec)
    return t * (1.0 + 0.3 * coord)[:, None]


def synthetic_frames(n_frames, seed=0, n_atoms=12, box=6.0, symbols=("H", "O")):
    """Random periodic H/O structures with arrays["polar"] = covariant_target and forces = -2·target."""
    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < n_frames:
        pos = []
        while len(pos) < n_atoms:
            p = rng.random(3) * box
            if all(np.linalg.norm((p - q + box / 2) % box - box / 2) > 1.0 for q in pos):
                pos.append(p)
        syms = [symbols[k % len(symbols)] for k in range(n_atoms)]
        rng.shuffle(syms)
        atoms = Atoms(syms, positions=pos, cell=np.eye(3) * box, pbc=True)
        t = covariant_target(atoms)
        atoms.arrays["polar"] = t
        atoms.calc = SinglePointCalculator(atoms, forces=-2.0 * t, energy=0.0)
        frames.append(atoms)
    return frames
