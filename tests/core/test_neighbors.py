"""Neighbour list vs the NumPy reference, ASE and vesin; structural properties."""

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

import fastfeat
from tests.core.conftest import heights, random_cell
from tests.reference.neighbors_ref import neighbor_list_ref, pair_set

CASES = [(seed, frac) for seed in range(12) for frac in (0.3, 0.9, 1.7, 3.0)]


def _case(seed, frac):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, scale=rng.uniform(3, 8))
    pbc = rng.random(3) < 0.6
    n = int(rng.integers(1, 25))
    pos = rng.random((n, 3)) @ cell + rng.normal(size=(n, 3)) * 0.7  # some atoms outside the cell
    cutoff = frac * heights(cell).min()
    return pos, cell, pbc, cutoff


@pytest.mark.parametrize("seed,frac", CASES)
def test_pairs_equal_reference_and_ase(seed, frac):
    pos, cell, pbc, cutoff = _case(seed, frac)
    nl = fastfeat.neighbor_list(pos, cell, pbc, cutoff)
    ours = pair_set(nl.i, nl.j, nl.shifts)
    assert len(ours) == len(nl.i), "duplicate pairs"
    i, j, S, _ = neighbor_list_ref(pos, cell, pbc, cutoff)
    assert ours == pair_set(i, j, S), f"cell={cell.tolist()} pbc={pbc} cutoff={cutoff}"
    atoms = Atoms("H%d" % len(pos), positions=pos, cell=cell, pbc=pbc)
    ai, aj, aS = ase_neighbor_list("ijS", atoms, cutoff)
    assert ours == pair_set(ai, aj, aS), f"ASE disagrees: cell={cell.tolist()} pbc={pbc} cutoff={cutoff}"


@pytest.mark.parametrize("seed,frac", CASES[::3])
def test_pairs_equal_vesin(seed, frac):
    vesin = pytest.importorskip("vesin")
    pos, cell, pbc, cutoff = _case(seed, frac)
    if not (pbc.all() or not pbc.any()):
        atoms = Atoms("H%d" % len(pos), positions=pos, cell=cell, pbc=pbc)
        vi, vj, vS = vesin.ase_neighbor_list("ijS", atoms, cutoff)
    else:
        calc = vesin.NeighborList(cutoff=cutoff, full_list=True)
        vi, vj, vS, _ = calc.compute(points=pos, box=cell if pbc.all() else np.zeros((3, 3)),
                                     periodic=bool(pbc.all()), quantities="ijSD")
    nl = fastfeat.neighbor_list(pos, cell, pbc, cutoff)
    assert pair_set(nl.i, nl.j, nl.shifts) == pair_set(vi, vj, vS), f"cell={cell.tolist()} pbc={pbc} rc={cutoff}"


def test_vectors_distances_and_order():
    pos, cell, pbc, cutoff = _case(3, 1.2)
    for dtype in (np.float64, np.float32):
        nl = fastfeat.neighbor_list(pos.astype(dtype), cell, pbc, cutoff)
        expected = pos[nl.j] - pos[nl.i] + nl.shifts @ cell
        tol = 1e-10 if dtype == np.float64 else 1e-4
        np.testing.assert_allclose(nl.vectors, expected, atol=tol)
        np.testing.assert_allclose(nl.distances, np.linalg.norm(expected, axis=1), atol=tol)
        assert nl.vectors.dtype == dtype and nl.distances.dtype == dtype
        assert np.all(np.diff(nl.i) >= 0), "pairs of one centre must be contiguous, centres increasing"
    s = fastfeat.neighbor_list(pos, cell, pbc, cutoff, sorted=True)
    keys = np.stack([s.i, s.j, *s.shifts.T], axis=1)
    assert (np.lexsort(keys.T[::-1]) == np.arange(len(keys))).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sorted_rows_equal_a_full_lexsort(dtype):
    """sorted=True sorts each centre's row in place; the result equals a lexsort of the whole unsorted
    list, also with atoms far outside the cell (unwrapped: large, mixed-sign shifts) and a cutoff beyond
    the cell (many images of one j)."""
    from fastfeat._neighbors import sort_pairs

    rng = np.random.default_rng(7)
    dense = (rng.random((60, 3)) * 8.0, np.diag([8.0, 8.5, 9.0]), np.array([True, True, True]), 4.0)
    for trial, case in enumerate([(3, 1.2), (5, 0.6), (4, 2.5), dense]):
        pos, cell, pbc, cutoff = _case(*case) if len(case) == 2 else case
        pos = pos + (rng.integers(-40, 41, size=(len(pos), 3)) * np.asarray(pbc)) @ cell
        pos = pos.astype(dtype)
        got = fastfeat.neighbor_list(pos, cell, pbc, cutoff, sorted=True)
        want = sort_pairs(fastfeat.neighbor_list(pos, cell, pbc, cutoff))
        assert len(got.i) > 0
        if trial >= 2:  # rows sorted by insertion (dense: 20-50 pairs) and by argsort (4, 2.5: > 300)
            assert np.bincount(got.i).max() > (96 if trial == 2 else 10)
        for a, b, name in zip(got, want, ("i", "j", "shifts", "vectors", "distances")):
            np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}: {name}")
            assert a.dtype == b.dtype, name


def test_full_list_is_symmetric_at_exact_cutoff_ties():
    """Lattice distances equal to the cutoff: (i, j, S) and (j, i, -S) are kept or dropped together
    (one atom in a 3 Å cube with cutoff 3 kept only the +z image: the vector was x_j + s - x_i, rounded
    differently for +s and -s)."""
    rng = np.random.default_rng(11)
    cases = [(np.array([[0.3, 0.7, 1.1]]), np.eye(3) * 3.0, 3.0)]
    for _ in range(40):
        a = rng.uniform(2.0, 4.0)
        cell = np.diag([a, rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0)])
        pos = rng.random((int(rng.integers(1, 4)), 3)) @ cell * rng.choice([1.0, 7.0, 123.0])
        cases.append((pos, cell, a * int(rng.integers(1, 3))))  # a lattice distance as the cutoff
    for pos, cell, cutoff in cases:
        nl = fastfeat.neighbor_list(pos, cell, True, cutoff)
        fwd = pair_set(nl.i, nl.j, nl.shifts)
        assert fwd == pair_set(nl.j, nl.i, -nl.shifts), f"pos={pos.tolist()} cell={np.diag(cell)} rc={cutoff}"


def test_full_list_is_symmetric():
    pos, cell, pbc, cutoff = _case(5, 1.1)
    nl = fastfeat.neighbor_list(pos, cell, pbc, cutoff)
    fwd = pair_set(nl.i, nl.j, nl.shifts)
    back = pair_set(nl.j, nl.i, -nl.shifts)
    assert fwd == back


def test_cutoff_larger_than_cell_counts_self_images():
    # one atom in a 2 Å cubic cell, cutoff 4.5 Å: images at distances 2, 2√2, 2√3, 4, ...
    nl = fastfeat.neighbor_list(np.zeros((1, 3)), np.eye(3) * 2.0, True, 4.5)
    S = nl.shifts
    d = np.linalg.norm(S * 2.0, axis=1)
    assert (nl.i == 0).all() and (nl.j == 0).all()
    grid = np.array(np.meshgrid(*[np.arange(-3, 4)] * 3)).reshape(3, -1).T
    expected = int(np.sum((np.linalg.norm(grid * 2.0, axis=1) < 4.5) & (np.abs(grid).sum(1) > 0)))
    assert len(S) == expected and d.max() < 4.5


def test_rewrapping_does_not_change_pairs():
    rng = np.random.default_rng(7)
    cell = random_cell(rng)
    pos = rng.random((20, 3)) @ cell
    shifted = pos + rng.integers(-3, 4, size=(20, 1)) * cell[0] + rng.integers(-3, 4, size=(20, 1)) * cell[2]
    a = fastfeat.neighbor_list(pos, cell, True, 4.0)
    b = fastfeat.neighbor_list(shifted, cell, True, 4.0)
    key = lambda nl: sorted(zip(nl.i.tolist(), nl.j.tolist(), np.round(nl.distances, 9).tolist()))
    assert key(a) == key(b)


def test_huge_sparse_box_is_small_and_fast():
    import time
    import tracemalloc

    rng = np.random.default_rng(0)
    pos = rng.random((10, 3)) * 1e6
    fastfeat.neighbor_list(pos, np.eye(3) * 1e6, True, 5.0)  # JIT warm-up
    tracemalloc.start()
    t = time.perf_counter()
    nl = fastfeat.neighbor_list(pos, np.eye(3) * 1e6, True, 5.0)
    elapsed = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(nl.i) == 0
    assert peak < 1_000_000, f"peak {peak} bytes for 10 atoms"
    assert elapsed < 1.0


def test_tiny_periodic_box_with_large_cutoff_is_bounded_or_refused():
    # 1 Å box, 6 Å cutoff: 13^3 images per atom -> computed exactly
    nl = fastfeat.neighbor_list(np.zeros((1, 3)), np.eye(3), True, 6.0)
    grid = np.array(np.meshgrid(*[np.arange(-6, 7)] * 3)).reshape(3, -1).T
    expected = int(np.sum((np.linalg.norm(grid, axis=1) < 6.0) & (np.abs(grid).sum(1) > 0)))
    assert len(nl.i) == expected
    with pytest.raises(ValueError, match="too large for this periodic cell"):
        fastfeat.neighbor_list(np.zeros((1, 3)), np.eye(3) * 0.01, True, 6.0)
    # a Featurizer's list reaches cutoff + skin: the message says so (6.2 Å would puzzle a 5.2 Å model's user)
    fz = fastfeat.Featurizer(fastfeat.FeatureSpec.default(("H",)), skin=1.0)
    with pytest.raises(ValueError, match=r"`cutoff` 6.2 Å is too large.*cutoff 5.2 Å plus the neighbour-list skin 1.0"):
        fz(np.zeros((1, 3)), [1], np.eye(3) * 0.02, True)


def test_empty_and_single_atom():
    nl = fastfeat.neighbor_list(np.zeros((0, 3)), np.eye(3) * 5, True, 3.0)
    assert len(nl.i) == 0 and nl.vectors.shape == (0, 3)
    nl = fastfeat.neighbor_list(np.zeros((1, 3)), np.eye(3) * 5, False, 3.0)
    assert len(nl.i) == 0


def test_linear_pair_count_on_large_box():
    rng = np.random.default_rng(1)
    n = 20000
    L = (n / 0.1) ** (1 / 3)
    pos = rng.random((n, 3)) * L
    nl = fastfeat.neighbor_list(pos, np.eye(3) * L, True, 3.0)
    # mean coordination for an ideal gas of density 0.1/Å^3 within 3 Å
    expected = 0.1 * 4 / 3 * np.pi * 27
    assert abs(len(nl.i) / n - expected) < 0.05 * expected


def test_far_outliers_on_a_non_periodic_axis_keep_bins_narrow_and_pairs_exact():
    """A few atoms far from the rest on a non-periodic axis: the empty stretches are compressed, so the
    bins stay about a cutoff wide instead of spanning 1e6 Å (the search had turned quadratic); the pairs
    are those of the brute-force reference, the outliers' included."""
    from fastfeat._neighbors import bin_atoms

    rng = np.random.default_rng(4)
    g = np.stack(np.meshgrid(*3 * [np.arange(11)], indexing="ij"), -1).reshape(-1, 3) * 1.6
    cluster = g + rng.normal(scale=0.15, size=g.shape)  # 1331 atoms, ~17 Å
    # a far pair and a lone atom, far along y (non-periodic in both cases below; the lone one along x too
    # when x is not periodic)
    far = np.array([[3.0, 1e6, 2.0], [3.5, 1e6 + 1.0, 2.0], [-4e5, -2e5, 7.0]])
    pos = np.vstack([cluster, far])
    for pbc in ([False, False, False], [True, False, True]):
        cell = np.diag([17.6, 20.0, 17.6]) if pbc[0] else np.zeros((3, 3))
        pbc = np.array(pbc)
        if pbc[0]:  # keep the reference's image loop short: the lone atom inside the cell along x and z
            pos = pos.copy()
            pos[-1, [0, 2]] = [7.0, 7.0]
        cl = bin_atoms(pos, cell, pbc, 3.0, divisions=2)
        bins = cl.bin3s[np.argsort(cl.order)][: len(cluster)]
        for a in np.flatnonzero(~pbc):  # the cluster spans many bins along each non-periodic axis, not one
            assert len(np.unique(bins[:, a])) >= 5, (a, cl.grid.nbins, cl.grid.extent)
        nl = fastfeat.neighbor_list(pos, cell, pbc, 3.0)
        got = pair_set(nl.i, nl.j, nl.shifts)
        assert got == pair_set(*neighbor_list_ref(pos, cell, pbc, 3.0)[:3])
        assert (len(pos) - 3, len(pos) - 2, (0, 0, 0)) in got  # the far pair


def _lattice_cluster(rng, n_side, spacing=1.6, noise=0.15):
    g = np.stack(np.meshgrid(*3 * [np.arange(n_side)], indexing="ij"), -1).reshape(-1, 3) * spacing
    return g + rng.normal(scale=noise, size=g.shape)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True)])
def test_cluster_in_a_large_periodic_box_is_searched_without_images(pbc):
    """A cluster filling a small part of a large periodic triclinic cell and straddling its boundary, some
    atoms wrapped into the cell and some not: the grid cuts the periodic axes at the empty stretch
    (searched without images, binned over the occupied arc), so the cluster spans several bins where the
    capped grid gave it one or two; pairs and shifts are the brute-force reference's."""
    from fastfeat._neighbors import bin_atoms

    rng = np.random.default_rng(12)
    cell = np.array([[400.0, 0.0, 0.0], [60.0, 380.0, 0.0], [-40.0, 30.0, 420.0]])
    pos = _lattice_cluster(rng, 8) - 6.0  # 512 atoms around the origin: on both sides of every cell face
    frac = pos @ np.linalg.inv(cell)
    pos[::2] -= np.floor(frac[::2]) @ cell  # half of them wrapped into the cell
    pbc = np.array(pbc)
    cl = bin_atoms(pos, cell, pbc, 3.0)
    assert cl.grid.periodic.tolist() == [False, False, False] and cl.grid.wrapped.tolist() == pbc.tolist()
    bins = cl.bin3s[np.argsort(cl.order)]
    for ax in range(3):
        assert len(np.unique(bins[:, ax])) >= 3, (ax, cl.grid.nbins, cl.grid.extent)
    for sorted_ in (False, True):
        nl = fastfeat.neighbor_list(pos, cell, pbc, 3.0, sorted=sorted_)
        assert pair_set(nl.i, nl.j, nl.shifts) == pair_set(*neighbor_list_ref(pos, cell, pbc, 3.0)[:3])
        np.testing.assert_allclose(nl.vectors, pos[nl.j] - pos[nl.i] + nl.shifts @ cell, atol=1e-9)


def test_rod_along_a_periodic_axis_keeps_that_axis_periodic():
    """A rod that fills its periodic axis (z) inside a large periodic x-y box: x and y are cut (no images),
    z keeps its images (no empty stretch); pairs through the z boundary are found."""
    from fastfeat._box import _periodic_cut
    from fastfeat._neighbors import bin_atoms

    rng = np.random.default_rng(13)
    pos = _lattice_cluster(rng, 7) + [150.0, 150.0, 0.0]  # 7 x 1.6 = 11.2 Å along z: the period
    cell = np.diag([300.0, 300.0, 11.2])
    pbc = np.array([True, True, True])
    cl = bin_atoms(pos, cell, pbc, 3.0)
    assert cl.grid.periodic.tolist() == [False, False, True]
    assert _periodic_cut(pos[:, 2] / 11.2, 3.0 / 11.2) is None
    nl = fastfeat.neighbor_list(pos, cell, pbc, 3.0)
    got = pair_set(nl.i, nl.j, nl.shifts)
    assert got == pair_set(*neighbor_list_ref(pos, cell, pbc, 3.0)[:3])
    assert any(sh[2] != 0 for _, _, sh in got) and not any(sh[0] or sh[1] for _, _, sh in got)


@pytest.mark.parametrize("pbc", [(False, False, False), (True, True, False)])
def test_clusters_far_apart_keep_bins_narrow_and_pairs_exact(pbc):
    """Three clusters (two large) far apart on the non-periodic axes: the empty stretches between them are
    compressed, so each cluster spans several cutoff-wide bins (the whole extent under the O(N) cap had
    put each cluster in one or two bins: 2 x 30 000 water 1e4 Å apart took 39x longer); the pairs, those
    across the compressed gaps included, are the brute-force reference's."""
    from fastfeat._neighbors import bin_atoms

    rng = np.random.default_rng(11)
    g = np.stack(np.meshgrid(*3 * [np.arange(7)], indexing="ij"), -1).reshape(-1, 3) * 1.6
    a = g + rng.normal(scale=0.15, size=g.shape)  # 343 atoms, ~10 Å
    step = np.array([0.0, 0.0, 3e3]) if pbc[0] else np.array([2e3, 3e3, 1e4])
    # the small cluster sits just over two cutoffs beyond the first: a gap at the compression threshold
    small = a[:20] + [0.0, 0.0, a[:, 2].max() - a[:20, 2].min() + 6.1]
    pos = np.vstack([a, a + step, small])
    cell = np.diag([11.2, 11.2, 20.0]) if pbc[0] else np.zeros((3, 3))
    cl = bin_atoms(pos, cell, np.array(pbc), 3.0)
    assert cl.grid.n_regions.sum() >= 1
    bins = cl.bin3s[np.argsort(cl.order)]
    for part in (slice(0, 343), slice(343, 686)):
        for ax in np.flatnonzero(~np.array(pbc)):
            assert len(np.unique(bins[part, ax])) >= 3, (ax, cl.grid.nbins, cl.grid.extent)
    nl = fastfeat.neighbor_list(pos, cell, pbc, 3.0)
    assert pair_set(nl.i, nl.j, nl.shifts) == pair_set(*neighbor_list_ref(pos, cell, np.array(pbc), 3.0)[:3])
    # a cutoff of 7 Å: the 6.1 Å stretch is no longer compressed and pairs cross it
    nl = fastfeat.neighbor_list(pos, cell, pbc, 7.0)
    assert pair_set(nl.i, nl.j, nl.shifts) == pair_set(*neighbor_list_ref(pos, cell, np.array(pbc), 7.0)[:3])
    assert ((nl.i < 343) & (nl.j >= 686)).any()


@pytest.mark.parametrize("pbc", [(False, False, False), (True, True, True), (True, False, True)])
def test_scattered_molecules_around_a_cluster_keep_bins_narrow_and_pairs_exact(pbc):
    """A dense cluster with 8 % of the atoms scattered over a 400 Å box (evaporated molecules): no empty
    stretch to cut or compress and too many outliers to trim, so each axis's density is equalised
    (fastfeat._box._equalized_axis; on periodic axes too, images kept): the cluster spans many bins where
    the capped grid gave it one or two; pairs and shifts are vesin's (the plain grid's for mixed
    periodicity) and vectors pos[j] - pos[i] + S @ cell."""
    from fastfeat import _box
    from fastfeat._neighbors import bin_atoms
    from vesin import NeighborList as VesinNeighborList

    rng = np.random.default_rng(21)
    cluster = _lattice_cluster(rng, 9) + 150.0  # 729 atoms, ~14 Å
    cell = np.array([[400.0, 0.0, 0.0], [30.0, 390.0, 0.0], [-20.0, 25.0, 410.0]])
    vapour = rng.random((20, 3)) @ cell
    vapour = (vapour[:, None, :] + [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]).reshape(-1, 3)  # 20 "H2O"
    pos = np.vstack([cluster, vapour])
    pbc = np.array(pbc)
    if not pbc.any():
        cell = np.zeros((3, 3))
    grid = bin_atoms(pos, cell, pbc, 3.0, divisions=2).grid
    assert (grid.region_scale < 1).any(axis=1).all() and grid.periodic.tolist() == pbc.tolist()
    cl = bin_atoms(pos, cell, pbc, 3.0, divisions=2)
    bins = cl.bin3s[np.argsort(cl.order)][: len(cluster)]
    for ax in range(3):
        assert len(np.unique(bins[:, ax])) >= 6, (ax, cl.grid.nbins)
    nl = fastfeat.neighbor_list(pos, cell, pbc, 3.0)
    got = pair_set(nl.i, nl.j, nl.shifts)
    assert len(got) == len(nl.i)
    if pbc.all() or not pbc.any():
        ref = pair_set(*VesinNeighborList(cutoff=3.0, full_list=True).compute(pos, cell, bool(pbc.all()), "ijS"))
    else:
        plain = _box._ADAPT_MIN_ATOMS
        try:
            _box._ADAPT_MIN_ATOMS = 10**9
            r = fastfeat.neighbor_list(pos, cell, pbc, 3.0)
        finally:
            _box._ADAPT_MIN_ATOMS = plain
        ref = pair_set(r.i, r.j, r.shifts)
    assert got == ref
    assert ((nl.i >= len(cluster)) & (nl.j >= len(cluster))).sum() >= 40  # the molecules' own pairs
    np.testing.assert_allclose(nl.vectors, pos[nl.j] - pos[nl.i] + nl.shifts @ cell, atol=1e-9)
    srt = fastfeat.neighbor_list(pos, cell, pbc, 3.0, sorted=True)
    assert pair_set(srt.i, srt.j, srt.shifts) == got


def test_r2_limit_is_the_exact_threshold_of_the_distance():
    """pair_r2_limit(c) is the least float64 x with sqrt(x) >= c, so r2 < x exactly when sqrt(r2) < c (the
    cutoff squared in floating point can be a step off)."""
    from fastfeat._box import pair_r2_limit

    rng = np.random.default_rng(3)
    cutoffs = np.concatenate([rng.uniform(0.1, 20.0, 2000), [1.0, 2.5, 3.0, 5.2, 6.0, 1e-3, 1e3]])
    for c in cutoffs:
        x = pair_r2_limit(c)
        assert np.sqrt(x) >= c and np.sqrt(np.nextafter(x, 0.0)) < c, c
    # the cutoff squared is off for some cutoffs: the limit differs from it there
    assert any(pair_r2_limit(c) != c * c for c in cutoffs)


def test_pairs_at_the_cutoff_are_left_out_and_distances_stay_below_it():
    """Pairs whose float64 distance is within a few ulp of the cutoff (random directions): exactly those
    with distance < cutoff are listed, in both directions, as ASE lists them (before, a squared distance
    just below the squared cutoff could report a distance equal to the cutoff)."""
    rng = np.random.default_rng(5)
    for cutoff in (2.5, 3.0, 4.7, 5.2, 6.0):
        u = rng.normal(size=(400, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        d = cutoff * (1.0 + rng.integers(-4, 5, 400) * np.finfo(float).eps)
        grid = np.stack(np.meshgrid(*3 * [np.arange(8)], indexing="ij"), -1).reshape(-1, 3)[:400]
        far = grid * 20.0  # the pairs far apart from each other
        pos = np.concatenate([far, far + u * d[:, None]])
        nl = fastfeat.neighbor_list(pos, np.zeros((3, 3)), False, cutoff)
        assert (nl.distances < cutoff).all()
        ref = np.linalg.norm(pos[400:] - pos[:400], axis=1)  # what ASE computes
        got = {(i, j) for i, j in zip(nl.i.tolist(), nl.j.tolist())}
        inside = {(k, k + 400) for k in np.flatnonzero(np.sqrt(((pos[400:] - pos[:400]) ** 2).sum(axis=1)) < cutoff)}
        assert {p for p in got if p[0] < p[1]} == inside
        assert got == inside | {(j, i) for i, j in inside}
        assert (np.abs(ref - cutoff) < 1e-13).all() and 0 < len(inside) < 400  # ties, both sides


def _kernel_fractional(pos, inv):
    """The binning coordinates as assign_bins sums them (NumPy's matmul may round differently)."""
    return pos[:, 0:1] * inv[0] + pos[:, 1:2] * inv[1] + pos[:, 2:3] * inv[2]


def test_equalised_periodic_axis_is_continuous_across_the_wrap():
    """On a periodic equalised axis the map agrees at both ends of the cell, m(0) = 0 and m(1) = extent
    (kernel rule: the last region starting at or below x, else the first), with and without empty
    stretches at the ends."""
    from fastfeat._box import _equalized_axis

    rng = np.random.default_rng(9)
    for trial in range(60):
        dense = rng.uniform(0.1, 0.9)
        x = np.concatenate([dense + rng.normal(0.0, 0.004, 600), rng.random(int(rng.integers(0, 60)))])
        if trial % 3 == 0:
            x = np.concatenate([x, [0.0, 1.0 - 1e-12]])  # atoms at both ends: no empty stretch there
        axis = _equalized_axis(x, True, 5.0, 1000.0, 0.0, 1.0)
        if axis is None:
            continue
        _, _, _, ext, (lo, at, scale) = axis

        def m(v):
            r = max(int(np.searchsorted(lo, v, side="right")) - 1, 0)
            return (v - lo[r]) * scale[r] + at[r]

        assert abs(m(0.0)) < 1e-12 and abs(m(1.0) - ext) < 1e-12, (trial, m(0.0), m(1.0), ext)
        xs = np.sort(x - np.floor(x))  # and no two atoms further apart after the map
        assert (np.diff([m(v) for v in xs]) <= np.diff(xs) + 1e-12).all()


def test_atoms_on_a_lattice_plane_at_the_wrap_keep_their_pairs():
    """A flake and a few scattered atoms in a 1000 Å triclinic periodic cell (default thresholds: the
    equalised grid), plus atoms exactly on the lattice plane s0 = 0, each with a partner 1 Å across it,
    chosen where NumPy's pos @ inv_box (which builds the grid) gives s0 < 0, wrapped to 1, while the
    kernel's sum gives 0: the map agrees at both ends, so every pair is vesin's (the 3 pairs, both ways,
    were lost when the empty stretch across the wrap was mapped differently from region 0's extension).
    The audit's reproducer (seed 1 of its generator)."""
    from fastfeat._box import bin_grid, binning_box
    from vesin import NeighborList as VesinNeighborList

    rng = np.random.default_rng(1)
    L, cutoff = 1000.0, 12.0
    cell = np.diag([L, L * 0.97, L * 1.02]) + rng.uniform(-0.2, 0.2, (3, 3)) * L * (1 - np.eye(3))
    pbc = np.array([True] * 3)
    inv = np.linalg.inv(binning_box(cell, pbc))
    normal = np.cross(cell[1], cell[2])
    normal /= np.linalg.norm(normal)
    h0 = cell[0] @ normal
    e1 = cell[1] / np.linalg.norm(cell[1])
    e2 = np.cross(normal, e1)
    a, b = np.meshgrid(np.arange(0.0, 40.0, 1.5), np.arange(0.0, 40.0, 1.5))
    flake = (a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2 + rng.normal(0, 0.1, (a.size, 3))
             + np.array([0.8 + 0.5 * cutoff / h0, 0.5, 0.5]) @ cell)  # 729 atoms
    f = np.column_stack([0.7 + rng.uniform(0, 0.5 * cutoff / h0, 8), (np.arange(8) + rng.random(8)) / 8,
                         (rng.permutation(8) + rng.random(8)) / 8])
    on_plane = np.column_stack([np.zeros(20), rng.random(20), rng.random(20)]) @ cell
    for _ in range(6):  # the points of the plane where the two sums disagree on the wrap
        pos = np.vstack([flake, f @ cell, on_plane, on_plane - normal])
        s_numpy, s_kernel = (pos @ inv)[:, 0], _kernel_fractional(pos, inv)[:, 0]
        keep = ((s_numpy < 0) & (s_kernel >= 0))[737:737 + len(on_plane)]
        if keep.all():
            break
        on_plane = on_plane[keep]
    m = len(on_plane)  # 3 here (the points depend on the BLAS's rounding of pos @ inv_box)
    assert m >= 1 and keep.all()
    grid = bin_grid(cell, pbc, cutoff, len(pos), positions=pos, divisions=2)
    assert (grid.region_scale < 1).any(axis=1).all()
    ref = pair_set(*VesinNeighborList(cutoff=cutoff, full_list=True).compute(pos, cell, True, "ijS"))
    for sorted_ in (False, True):
        nl = fastfeat.neighbor_list(pos, cell, pbc, cutoff, sorted=sorted_)
        assert pair_set(nl.i, nl.j, nl.shifts) == ref
    assert {(737 + k, 737 + m + k, (0, 0, 0)) for k in range(m)} <= ref
