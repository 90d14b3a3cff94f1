"""Seeded structure builders for the bundled reference systems.

Three systems (see DESIGN.md, "Bundled reference data"):

``peo``
    Four periodic all-trans poly(ethylene oxide) chains (4 monomers each, 112 atoms, C H O) on a
    2 x 2 grid, packed at about 1.1 g/cm^3; chains run along z through the periodic boundary.
``li4p2o7``
    Amorphous Li4P2O7: 5 formula units (65 atoms, Li P O) from randomly placed and oriented
    P2O7 units plus Li at random positions in a cubic cell at about 2.3 g/cm^3.
``li4p2o7-water``
    An amorphous Li4P2O7 slab (5 formula units, 65 atoms) with 8 water molecules placed above its
    top surface and about 12 Å of vacuum along z (89 atoms, H Li O P). The cell is periodic in all
    three directions (tblite's Ewald sums need 3D periodicity); the vacuum gap separates the images.

All builders take a ``numpy.random.Generator`` (or an integer seed) and place units with
minimum-distance rejection (:data:`PLACEMENT_MIN_DISTANCE`). Neither the built structures nor the
relaxed ones (nor any stored MD frame) have a pair closer than :data:`MIN_PAIR_DISTANCE` (Å) for the
system; this is tested.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = [
    "BUILDERS",
    "MIN_PAIR_DISTANCE",
    "PLACEMENT_MIN_DISTANCE",
    "build",
    "build_li4p2o7",
    "build_li4p2o7_water",
    "build_peo",
    "min_pair_distance",
]

#: Smallest interatomic distance (Å) accepted between atoms of different units while placing them
#: (Li: 1.7 Å to any atom and 2.1 Å to other Li; water: 2.0 Å to any atom). Random packing at the
#: oxide's real density needs these short contacts; the relaxation opens them up.
PLACEMENT_MIN_DISTANCE = 1.8

#: Documented minimum pair distance (Å) of each system after the generator's relaxation, which also
#: holds in every stored MD frame (300-1000 K) of the bundled data. The shortest bonds are C-H 1.10 Å
#: (peo), P-O 1.50 Å (li4p2o7) and O-H 0.97 Å (water); hot vibrations shorten them by ~0.1-0.15 Å.
MIN_PAIR_DISTANCE = {"peo": 0.9, "li4p2o7": 1.3, "li4p2o7-water": 0.8}

_AVOGADRO = 0.602214076  # converts g/mol / Å^3 to g/cm^3


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise TypeError(f"`seed` must be an int, None or numpy.random.Generator, got {type(seed).__name__}")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed proper rotation matrix, shape (3, 3)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _mic_distances(a_pc: np.ndarray, b_qc: np.ndarray, cell_c: np.ndarray, pbc) -> np.ndarray:
    """Minimum-image distances between two point sets in an orthorhombic cell.

    Parameters
    ----------
    a_pc, b_qc : ndarray, shape (P, 3) and (Q, 3), float64, Å
    cell_c : ndarray, shape (3,), float64, Å -- orthorhombic cell lengths
    pbc : sequence of 3 bool

    Returns
    -------
    ndarray, shape (P, Q), float64, Å
    """
    d_pqc = a_pc[:, None, :] - b_qc[None, :, :]
    for c in range(3):
        if pbc[c]:
            d_pqc[..., c] -= cell_c[c] * np.round(d_pqc[..., c] / cell_c[c])
    return np.sqrt((d_pqc**2).sum(-1))


def min_pair_distance(atoms: Atoms) -> float:
    """Smallest interatomic distance (Å) of a structure, periodic images included."""
    from ase.neighborlist import neighbor_list

    d_p = neighbor_list("d", atoms, 3.0)
    if len(d_p):
        return float(d_p.min())
    return float("inf")


# --------------------------------------------------------------------------------------------
# PEO
# --------------------------------------------------------------------------------------------

_PEO_MONOMER_MASS = 2 * 12.011 + 4 * 1.008 + 15.999


def _peo_chain(n_monomers: int, length: float) -> tuple[list[str], np.ndarray]:
    """All-trans (planar zigzag) PEO chain along z, periodic over ``length``, centred on the axis."""
    n_backbone = 3 * n_monomers  # O, C, C per monomer; an even number keeps the zigzag periodic
    dz = length / n_backbone
    half_width = 0.434  # zigzag amplitude in x (Å), gives ~1.47 Å bonds and ~108° angles
    symbols: list[str] = []
    pos: list[np.ndarray] = []
    for k in range(n_backbone):
        side = 1.0 if k % 2 == 0 else -1.0
        centre = np.array([side * half_width, 0.0, k * dz])
        kind = "O" if k % 3 == 0 else "C"
        symbols.append(kind)
        pos.append(centre)
        if kind == "C":  # two H in the plane normal to the backbone plane, pointing outward
            half = np.deg2rad(54.75)
            for s in (1.0, -1.0):
                h = centre + 1.09 * np.array([side * np.cos(half), s * np.sin(half), 0.0])
                symbols.append("H")
                pos.append(h)
    return symbols, np.array(pos)


def build_peo(seed=None, n_chains_side: int = 2, n_monomers: int = 4, density: float = 1.1) -> Atoms:
    """Periodic all-trans PEO chains packed on a square grid.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator
        Random rotation of each chain about its axis and its offset along z.
    n_chains_side : int
        Chains per cell edge (``n_chains_side**2`` chains).
    n_monomers : int
        Monomers per chain per cell (even, so the zigzag stays periodic).
    density : float
        Target density, g/cm^3.

    Returns
    -------
    ase.Atoms
        ``7 * n_monomers * n_chains_side**2`` atoms, fully periodic orthorhombic cell.
    """
    rng = _rng(seed)
    if n_monomers % 2:
        raise ValueError(f"`n_monomers` must be even (periodic zigzag), got {n_monomers}")
    length = 3.56 * n_monomers  # 7.12 Å per two monomers (all-trans fibre repeat)
    n_chains = n_chains_side**2
    volume = n_chains * n_monomers * _PEO_MONOMER_MASS / _AVOGADRO / density
    side = float(np.sqrt(volume / length))
    cell_c = np.array([side, side, length])
    symbols, chain_pc = _peo_chain(n_monomers, length)
    spacing = side / n_chains_side
    for _attempt in range(2000):
        all_symbols: list[str] = []
        placed: list[np.ndarray] = []
        ok = True
        for ix in range(n_chains_side):
            for iy in range(n_chains_side):
                phi = rng.uniform(0.0, 2.0 * np.pi)
                rot = np.array([[np.cos(phi), -np.sin(phi), 0.0], [np.sin(phi), np.cos(phi), 0.0], [0.0, 0.0, 1.0]])
                shift = np.array([(ix + 0.5) * spacing, (iy + 0.5) * spacing, rng.uniform(0.0, length)])
                new_pc = chain_pc @ rot.T + shift
                for prev in placed:
                    if _mic_distances(new_pc, prev, cell_c, (True, True, True)).min() < PLACEMENT_MIN_DISTANCE:
                        ok = False
                        break
                if not ok:
                    break
                placed.append(new_pc)
                all_symbols.extend(symbols)
            if not ok:
                break
        if ok:
            atoms = Atoms(all_symbols, positions=np.concatenate(placed), cell=cell_c, pbc=True)
            atoms.wrap()
            return atoms
    raise RuntimeError("build_peo: could not place the chains without overlaps in 2000 attempts")


# --------------------------------------------------------------------------------------------
# Li4P2O7
# --------------------------------------------------------------------------------------------

_LI4P2O7_MASS = 4 * 6.94 + 2 * 30.974 + 7 * 15.999


def _p2o7_unit() -> tuple[list[str], np.ndarray]:
    """A P2O7 pyrophosphate unit centred on its bridging O (P-O-P 130°, P-Ob 1.60, P-Ot 1.52 Å)."""
    half = np.deg2rad(65.0)
    p1 = 1.60 * np.array([-np.sin(half), np.cos(half), 0.0])
    p2 = 1.60 * np.array([np.sin(half), np.cos(half), 0.0])
    symbols = ["O", "P", "P"]
    pos = [np.zeros(3), p1, p2]
    for p, phase in ((p1, 0.0), (p2, np.pi / 3.0)):
        d = -p / np.linalg.norm(p)  # P -> bridging O
        e1 = np.cross(d, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        for k in range(3):
            phi = phase + 2.0 * np.pi * k / 3.0
            u = -d / 3.0 + np.sqrt(8.0) / 3.0 * (np.cos(phi) * e1 + np.sin(phi) * e2)
            symbols.append("O")
            pos.append(p + 1.52 * u)
    return symbols, np.array(pos)


def _place_li4p2o7(rng, cell_c, region_lo, region_hi, n_units, pbc, restarts=500, tries_per_unit=300):
    """Place ``n_units`` P2O7 units and ``4 n_units`` Li in a box region with rejection.

    Returns the symbols and positions (Å) of the placed atoms. A unit that cannot be placed within
    ``tries_per_unit`` attempts restarts the whole placement (up to ``restarts`` times).
    """
    unit_symbols, unit_pc = _p2o7_unit()
    slab = not pbc[2]
    for _restart in range(restarts):
        symbols: list[str] = []
        positions: list[np.ndarray] = []
        stuck = False
        for _unit in range(n_units):
            for _try in range(tries_per_unit):
                new_pc = unit_pc @ _random_rotation(rng).T + rng.uniform(region_lo, region_hi)
                if slab and (new_pc[:, 2].min() < region_lo[2] - 0.5 or new_pc[:, 2].max() > region_hi[2] + 0.5):
                    continue
                if positions and _mic_distances(new_pc, np.array(positions), cell_c, pbc).min() < PLACEMENT_MIN_DISTANCE:
                    continue
                symbols.extend(unit_symbols)
                positions.extend(new_pc)
                break
            else:
                stuck = True
                break
        if stuck:
            continue
        for _li in range(4 * n_units):
            is_li = np.array([s == "Li" for s in symbols])
            for _try in range(tries_per_unit):
                new_pc = rng.uniform(region_lo, region_hi)[None, :]
                d = _mic_distances(new_pc, np.array(positions), cell_c, pbc)[0]
                if d.min() < 1.7 or (is_li.any() and d[is_li].min() < 2.1):
                    continue
                symbols.append("Li")
                positions.append(new_pc[0])
                break
            else:
                stuck = True
                break
        if not stuck:
            return symbols, positions
    raise RuntimeError("could not place Li4P2O7 without overlaps; lower the density")


def build_li4p2o7(seed=None, n_formula_units: int = 5, density: float = 2.3) -> Atoms:
    """Amorphous Li4P2O7 in a cubic periodic cell.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator
    n_formula_units : int
        Formula units (13 atoms each).
    density : float
        Target density, g/cm^3.

    Returns
    -------
    ase.Atoms
        ``13 * n_formula_units`` atoms (P2O7 units first, then Li).
    """
    rng = _rng(seed)
    volume = n_formula_units * _LI4P2O7_MASS / _AVOGADRO / density
    a = volume ** (1.0 / 3.0)
    cell_c = np.array([a, a, a])
    symbols, positions = _place_li4p2o7(rng, cell_c, np.zeros(3), cell_c, n_formula_units, (True, True, True))
    atoms = Atoms(symbols, positions=np.array(positions), cell=cell_c, pbc=True)
    atoms.wrap()
    return atoms


def _water() -> tuple[list[str], np.ndarray]:
    half = np.deg2rad(104.5 / 2.0)
    return ["O", "H", "H"], np.array(
        [[0.0, 0.0, 0.0], [0.9572 * np.sin(half), 0.0, 0.9572 * np.cos(half)],
         [-0.9572 * np.sin(half), 0.0, 0.9572 * np.cos(half)]]
    )


def build_li4p2o7_water(
    seed=None, n_formula_units: int = 5, n_water: int = 8, density: float = 2.3, side: float = 9.0,
    vacuum: float = 12.0,
) -> Atoms:
    """Amorphous Li4P2O7 slab with water molecules above its top surface.

    Parameters
    ----------
    seed : int, None or numpy.random.Generator
    n_formula_units : int
        Formula units in the slab (13 atoms each).
    n_water : int
        Water molecules placed 1.5-5.5 Å above the slab's top.
    density : float
        Slab density, g/cm^3 (sets the slab thickness).
    side : float
        Lateral cell edge, Å (square cell).
    vacuum : float
        Empty space along z above the water layer, Å.

    Returns
    -------
    ase.Atoms
        ``13 * n_formula_units + 3 * n_water`` atoms; periodic in x, y and z with a vacuum gap in z.
    """
    rng = _rng(seed)
    volume = n_formula_units * _LI4P2O7_MASS / _AVOGADRO / density
    thickness = volume / side**2
    z0 = 1.0
    water_lo, water_hi = z0 + thickness + 1.5, z0 + thickness + 5.5
    cell_c = np.array([side, side, water_hi + 1.0 + vacuum])
    pbc_xy = (True, True, False)
    symbols, positions = _place_li4p2o7(
        rng, cell_c, np.array([0.0, 0.0, z0]), np.array([side, side, z0 + thickness]), n_formula_units, pbc_xy
    )
    w_symbols, w_pc = _water()
    placed = 0
    tries = 0
    while placed < n_water:
        tries += 1
        if tries > 20000:
            raise RuntimeError("could not place the water molecules without overlaps")
        new_pc = w_pc @ _random_rotation(rng).T + rng.uniform([0.0, 0.0, water_lo], [side, side, water_hi])
        if _mic_distances(new_pc, np.array(positions), cell_c, pbc_xy).min() < PLACEMENT_MIN_DISTANCE + 0.2:
            continue
        symbols.extend(w_symbols)
        positions.extend(new_pc)
        placed += 1
    atoms = Atoms(symbols, positions=np.array(positions), cell=cell_c, pbc=True)
    atoms.wrap()
    return atoms


BUILDERS = {"peo": build_peo, "li4p2o7": build_li4p2o7, "li4p2o7-water": build_li4p2o7_water}


def build(name: str, seed=None) -> Atoms:
    """Build the named system (a key of :data:`BUILDERS`) with the given seed."""
    if name not in BUILDERS:
        raise ValueError(f"`name` must be one of {sorted(BUILDERS)}, got {name!r}")
    return BUILDERS[name](seed)
