import numpy as np


def random_cell(rng, scale=6.0, skew=0.35):
    """A random triclinic cell (rows), sometimes left-handed."""
    cell = np.eye(3) * scale + rng.normal(size=(3, 3)) * skew * scale
    if rng.random() < 0.3:
        cell[0] *= -1  # left-handed
    return cell


def heights(cell):
    vol = abs(np.linalg.det(cell))
    return np.array([vol / np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])) for a in range(3)])


def random_structure(rng, n, species=(1, 8), scale=6.0, min_dist=0.7):
    """Random positions with a minimum distance (rejection), random triclinic cell."""
    cell = random_cell(rng, scale)
    pos = []
    tries = 0
    while len(pos) < n and tries < 10000:
        tries += 1
        p = rng.random(3) @ cell
        if all(np.linalg.norm(p - q) > min_dist for q in pos):
            pos.append(p)
    pos = np.array(pos).reshape(-1, 3)
    numbers = rng.choice(np.array(species), len(pos))
    return pos, numbers, cell


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


