"""Features vs the NumPy reference and DScribe; symmetry; batching; Featurizer reuse."""

import numpy as np
import pytest
from ase import Atoms

import fastfeat
from tests.core.conftest import random_rotation, random_structure
from tests.reference.features_ref import features_ref

SPEC_IRREGULAR = fastfeat.FeatureSpec(
    ("H", "O", "C"), 4.5, 3.2,
    radial=[(0.5, 1.0), (1.0, 2.0), (0.5, 2.0), (0.5, 3.0), (0.5, 0.2), (3.0, 1.0)],
    angular=[(0.1, 1, 1), (0.05, 2, -1), (0.02, 1.5, 1), (0.3, 4, 1), (0.4, 8, -1)],
    covariant=[(0.3, 1.0), (1.0, 2.5), (0.3, 2.0)],
)
# steep ladders: the CPU kernel's ladder recurrence would leave the exponent range, so it takes
# one exp per grid point (fastfeat._kernels.features_cpu._ladder_safe)
SPEC_STEEP = fastfeat.FeatureSpec(
    ("H", "O", "C"), 4.5, 3.0,
    radial=[(40.0, 0.5 + 0.5 * k) for k in range(8)],
    angular=[(0.1, 1, 1), (0.2, 2, -1)],
    covariant=[(45.0, 0.6 + 0.4 * k) for k in range(9)],
)
# angular covariant vectors (bisector and difference) with and without G4, uneven parameters
SPEC_WANG = fastfeat.FeatureSpec(
    ("H", "O", "C"), 4.5, 3.8,
    radial=[(0.5, 1.0), (1.0, 2.0)],
    angular=[(0.1, 1, 1), (0.05, 2, -1)],
    covariant=[(0.3, 1.0), (1.0, 2.5)],
    covariant_angular=[(0.02, 1, 1), (0.3, 4, -1), (0.1, 1.5, 1)],
)
SPECS = {
    "irregular": SPEC_IRREGULAR,
    "angular_covariant": SPEC_WANG,
    "angular_covariant_no_g4": fastfeat.FeatureSpec(("H", "O", "C"), 4.5, 3.8, radial=SPEC_WANG.radial,
                                                   covariant=SPEC_WANG.covariant,
                                                   covariant_angular=SPEC_WANG.covariant_angular),
    "steep": SPEC_STEEP,
    "default": fastfeat.FeatureSpec.default(("H", "O", "C")),
    "ani1x": fastfeat.FeatureSpec.default(("H", "O", "C"), preset="ani1x"),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_numpy_reference(name, seed):
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    pos, Z, cell = random_structure(rng, 14, species=(1, 8, 6), scale=5.0)
    pbc = rng.random(3) < 0.7
    G, V = features_ref(pos, Z, cell, pbc, spec)
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64)
    np.testing.assert_allclose(f.invariant, G, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f.covariant, V, rtol=1e-10, atol=1e-12)
    f32 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float32)
    assert f32.invariant.dtype == np.float32 and f32.covariant.dtype == np.float32
    np.testing.assert_allclose(f32.invariant, G, rtol=2e-5, atol=2e-5 * np.abs(G).max())
    np.testing.assert_allclose(f32.covariant, V, rtol=2e-5, atol=2e-5 * np.abs(V).max())


def test_many_angular_pairs_and_uneven_ladders():
    """Dense neighbourhoods (thousands of neighbour pairs per atom: the CPU kernel's G4 block is
    summed and refilled many times) and equally spaced grids whose point counts are not multiples
    of the ladder passes (7 G2, 5 V per species), against the NumPy reference."""
    spec = fastfeat.FeatureSpec(
        ("H", "O", "C"), 5.0, 5.0,
        radial=[(2.0, 0.8 + 0.55 * k) for k in range(7)],
        angular=[(0.05, 1, 1), (0.1, 2, -1), (0.02, 4, 1)],
        covariant=[(1.5, 0.9 + 0.7 * k) for k in range(5)],
    )
    rng = np.random.default_rng(7)
    pos, Z, cell = random_structure(rng, 40, species=(1, 8, 6), scale=6.0)
    G, V = features_ref(pos, Z, cell, np.array([True, True, False]), spec)
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=[True, True, False], spec=spec,
                           dtype=np.float64)
    np.testing.assert_allclose(f.invariant, G, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f.covariant, V, rtol=1e-10, atol=1e-12)
    fz = fastfeat.Featurizer(spec, dtype=np.float64, skin=0.5)
    g, v = fz(pos, Z, cell, [True, True, False])
    np.testing.assert_allclose(g, G, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v, V, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("periodic", [True, False])
def test_equal_dscribe_acsf(periodic):
    dscribe = pytest.importorskip("dscribe.descriptors")
    spec = fastfeat.FeatureSpec(
        ("O", "H", "C"), 4.5, 4.5,  # DScribe has one cutoff: angular = radial
        radial=[(0.5, 1.0), (1.0, 2.0), (0.3, 3.0)],
        angular=[(0.1, 1, 1), (0.05, 2, -1), (0.02, 4, 1), (0.01, 1.5, -1)],
        covariant=[(0.3, 1.0)],
    )
    rng = np.random.default_rng(11)
    pos, Z, cell = random_structure(rng, 18, species=(1, 8, 6), scale=6.0)
    atoms = Atoms(numbers=Z, positions=pos, cell=cell, pbc=periodic)
    acsf = dscribe.ACSF(species=list(spec.species), r_cut=spec.cutoff,
                        g2_params=[list(p) for p in spec.radial], g4_params=[list(p) for p in spec.angular],
                        periodic=periodic)
    D = acsf.create(atoms)
    f = fastfeat.featurize(atoms, spec, dtype=np.float64)
    # DScribe layout: species sorted by Z, each [G1, G2...]; then G4 blocks of pairs (a, b), a <= b by Z,
    # ordered by b then a: (H,H), (H,C), (C,C), (H,O), (C,O), (O,O)
    order = sorted(spec.species, key=lambda s: spec.numbers[spec.species.index(s)])
    nR, nA = len(spec.radial), len(spec.angular)
    col = 0
    for s in order:
        a = spec.species.index(s)
        col += 1  # G1
        np.testing.assert_allclose(f.invariant[:, a * nR:(a + 1) * nR], D[:, col:col + nR], rtol=1e-6, atol=1e-10,
                                   err_msg=f"G2 block of {s}")
        col += nR
    pair = spec.pair_index()
    for ib, t in enumerate(order):
        for s in order[:ib + 1]:
            p = pair[spec.species.index(s), spec.species.index(t)]
            ours = f.invariant[:, spec.n_radial + p * nA: spec.n_radial + (p + 1) * nA]
            np.testing.assert_allclose(ours, D[:, col:col + nA], rtol=1e-6, atol=1e-10, err_msg=f"G4 block {s},{t}")
            col += nA
    assert col == D.shape[1]


def _check_rotation(spec, seed, dtype, rtol):
    rng = np.random.default_rng(seed)
    pos, Z, cell = random_structure(rng, 16, species=(1, 8, 6), scale=5.5)
    R = random_rotation(rng)
    t = rng.normal(size=3) * 3
    f0 = fastfeat.featurize(positions=pos.astype(dtype), numbers=Z, cell=cell, pbc=True, spec=spec, dtype=dtype)
    f1 = fastfeat.featurize(positions=(pos @ R.T + t).astype(dtype), numbers=Z, cell=cell @ R.T, pbc=True,
                            spec=spec, dtype=dtype)
    msg = f"rotation R={R.tolist()}, translation t={t.tolist()}, seed={seed}"
    scale_g = np.abs(f0.invariant).max()
    scale_v = np.abs(f0.covariant).max()
    np.testing.assert_allclose(f1.invariant, f0.invariant, rtol=rtol, atol=rtol * scale_g, err_msg=msg)
    np.testing.assert_allclose(f1.covariant, f0.covariant @ R.T.astype(dtype), rtol=rtol, atol=rtol * scale_v,
                               err_msg=msg)


@pytest.mark.parametrize("seed", range(4))
def test_rotation_translation_float64(seed):
    _check_rotation(SPECS["default"], seed, np.float64, 1e-10)


@pytest.mark.parametrize("seed", range(2))
def test_rotation_translation_float32(seed):
    _check_rotation(SPECS["default"], seed, np.float32, 5e-5)


@pytest.mark.parametrize("seed", range(3))
def test_angular_covariant_vectors_rotate_and_follow_the_reference(seed):
    # W -> W R^T under rotation; the CSR (MD) kernel agrees with the NumPy reference too
    _check_rotation(SPEC_WANG, seed, np.float64, 1e-10)
    rng = np.random.default_rng(100 + seed)
    pos, Z, cell = random_structure(rng, 24, species=(1, 8, 6), scale=6.0)
    G, V = features_ref(pos, Z, cell, np.array([True, False, True]), SPEC_WANG)
    g, v = fastfeat.Featurizer(SPEC_WANG, dtype=np.float64, skin=0.7)(pos, Z, cell, [True, False, True])
    np.testing.assert_allclose(g, G, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v, V, rtol=1e-10, atol=1e-12)
    w = V[:, SPEC_WANG.n_covariant_radial:]
    assert np.abs(w).max() > 0.1  # the vectors are populated in these structures


def test_permutation_and_rewrapping():
    rng = np.random.default_rng(5)
    spec = SPECS["irregular"]
    pos, Z, cell = random_structure(rng, 16, species=(1, 8, 6), scale=5.5)
    perm = rng.permutation(len(pos))
    f0 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    f1 = fastfeat.featurize(positions=pos[perm], numbers=Z[perm], cell=cell, pbc=True, spec=spec, dtype=np.float64)
    np.testing.assert_allclose(f1.invariant, f0.invariant[perm], rtol=1e-12, atol=1e-13, err_msg=f"perm={perm}")
    np.testing.assert_allclose(f1.covariant, f0.covariant[perm], rtol=1e-12, atol=1e-13, err_msg=f"perm={perm}")
    shifts = rng.integers(-2, 3, size=(len(pos), 3))
    f2 = fastfeat.featurize(positions=pos + shifts @ cell, numbers=Z, cell=cell, pbc=True, spec=spec,
                            dtype=np.float64)
    np.testing.assert_allclose(f2.invariant, f0.invariant, rtol=1e-10, atol=1e-12, err_msg=f"shifts={shifts}")
    np.testing.assert_allclose(f2.covariant, f0.covariant, rtol=1e-10, atol=1e-12, err_msg=f"shifts={shifts}")


def test_symmetric_site_has_zero_covariant():
    # centre of a perfect octahedron: every V vector cancels
    spec = SPECS["default"]
    pos = np.array([[0, 0, 0], [1.5, 0, 0], [-1.5, 0, 0], [0, 1.5, 0], [0, -1.5, 0], [0, 0, 1.5], [0, 0, -1.5]])
    f = fastfeat.featurize(positions=pos, numbers=[8, 1, 1, 1, 1, 1, 1], pbc=False, spec=spec, dtype=np.float64)
    assert np.abs(f.covariant[0]).max() < 1e-12
    assert np.abs(f.covariant[1]).max() > 1e-3


def test_batched_equals_individual():
    rng = np.random.default_rng(9)
    spec = SPECS["default"]
    frames = []
    for k in range(4):
        pos, Z, cell = random_structure(rng, int(rng.integers(3, 14)), species=(1, 8, 6), scale=5.0)
        frames.append(Atoms(numbers=Z, positions=pos, cell=cell, pbc=k % 2 == 0))
    frames.append(Atoms())  # empty structure inside a batch
    batch = fastfeat.featurize(frames, spec, dtype=np.float64)
    assert batch.offsets.tolist() == np.concatenate([[0], np.cumsum([len(a) for a in frames])]).tolist()
    for s, atoms in enumerate(frames):
        single = fastfeat.featurize(atoms, spec, dtype=np.float64)
        part = batch.structure(s)
        np.testing.assert_allclose(part.invariant, single.invariant, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(part.covariant, single.covariant, rtol=1e-12, atol=1e-14)
        assert (part.species == single.species).all()


def test_empty_structure_returns_empty_arrays():
    spec = SPECS["default"]
    f = fastfeat.featurize(Atoms(), spec)
    assert f.invariant.shape == (0, spec.n_invariant) and f.covariant.shape == (0, spec.n_covariant, 3)
    assert f.offsets.tolist() == [0, 0]


def test_featurizer_skin_reuse_matches_fresh():
    rng = np.random.default_rng(4)
    spec = SPECS["irregular"]
    pos, Z, cell = random_structure(rng, 20, species=(1, 8, 6), scale=5.5)
    fz = fastfeat.Featurizer(spec, dtype=np.float64, skin=1.0)
    p = pos.copy()
    for step in range(12):
        g, v = fz(p, Z, cell, True)
        ref = fastfeat.featurize(positions=p, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
        np.testing.assert_allclose(g, ref.invariant, rtol=1e-12, atol=1e-13, err_msg=f"step {step}")
        np.testing.assert_allclose(v, ref.covariant, rtol=1e-12, atol=1e-13, err_msg=f"step {step}")
        p = p + rng.normal(size=p.shape) * 0.08
    assert 1 < fz.n_rebuilds < 12, f"the walk must both reuse and rebuild the list: {fz.n_rebuilds}"


def test_featurizer_same_system_path_equals_general_path():
    """Featurizer._call_same_system (the MD step of ForceEvaluator: numbers, cell and pbc unchanged) gives
    the general call's arrays bit for bit, reusing and rebuilding the list at the same steps, and falls
    back to the general path's checks and messages."""
    rng = np.random.default_rng(14)
    spec = SPECS["irregular"]
    pos, Z, cell = random_structure(rng, 20, species=(1, 8, 6), scale=5.5)
    pbc = np.array([True, False, True])
    general = fastfeat.Featurizer(spec, dtype=np.float64, skin=1.0)
    fast = fastfeat.Featurizer(spec, dtype=np.float64, skin=1.0)
    p = pos.copy()
    for step in range(14):
        g, v = general(p, Z, cell, pbc)
        g2, v2 = fast._call_same_system(p, Z, cell, pbc)
        assert np.array_equal(g, g2) and np.array_equal(v, v2), f"step {step}"
        assert fast.n_rebuilds == general.n_rebuilds, f"step {step}"
        p = p + rng.normal(size=p.shape) * 0.08
    assert 1 < fast.n_rebuilds < 14, f"the walk must both reuse and rebuild the list: {fast.n_rebuilds}"
    # float32 and Fortran-ordered positions take the general path, with the same result
    g, v = general(p, Z, cell, pbc)
    for q in (p.astype(np.float32).astype(np.float64), np.asfortranarray(p)):
        g2, _ = fast._call_same_system(q, Z, cell, pbc)
        assert np.array_equal(g2, general(q, Z, cell, pbc)[0])
    bad = p.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"`positions` must be finite.*atom 7"):
        fast._call_same_system(bad, Z, cell, pbc)
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match=r"`positions` must be finite.*atom 7"):
        fast._call_same_system(bad, Z, cell, pbc)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        fast._call_same_system(p[:, :2].copy(), Z, cell, pbc)
    # the first call of a new featurizer goes through the general path
    first = fastfeat.Featurizer(spec, dtype=np.float64, skin=1.0)
    assert np.array_equal(first._call_same_system(p, Z, cell, pbc)[0], general(p, Z, cell, pbc)[0])


def test_max_displacement2_matches_numpy():
    from fastfeat._kernels.neighbors_cpu import max_displacement2

    rng = np.random.default_rng(2)
    ref = rng.normal(size=(50, 3)) * 10
    pos = ref + rng.normal(size=ref.shape) * 0.3
    assert max_displacement2(pos, ref) == pytest.approx(np.max(((pos - ref) ** 2).sum(1)), rel=1e-15)
    assert max_displacement2(ref, ref) == 0.0
    assert max_displacement2(pos[:0], ref[:0]) == 0.0
    for bad in (np.nan, np.inf, -np.inf):
        q = pos.copy()
        q[31, 2] = bad
        assert np.isnan(max_displacement2(q, ref)), bad


def test_fortran_and_strided_inputs_give_same_result():
    rng = np.random.default_rng(3)
    spec = SPECS["default"]
    pos, Z, cell = random_structure(rng, 10, species=(1, 8, 6))
    ref = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    f = fastfeat.featurize(positions=np.asfortranarray(pos), numbers=Z, cell=np.asfortranarray(cell), pbc=True,
                           spec=spec, dtype=np.float64)
    np.testing.assert_array_equal(f.invariant, ref.invariant)
    wide = np.zeros((10, 6))
    wide[:, ::2] = pos
    f = fastfeat.featurize(positions=wide[:, ::2], numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    np.testing.assert_array_equal(f.invariant, ref.invariant)


def test_deterministic_bitwise():
    rng = np.random.default_rng(8)
    spec = SPECS["ani1x"]
    pos, Z, cell = random_structure(rng, 30, species=(1, 8, 6), scale=7)
    a = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec)
    b = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec)
    assert np.array_equal(a.invariant, b.invariant) and np.array_equal(a.covariant, b.covariant)


def test_group_by_species_is_a_stable_grouping_of_each_row():
    # the Featurizer's list: each row reordered species by species, order kept within a species
    from fastfeat._kernels.features_cpu import group_by_species
    from fastfeat._neighbors import build_csr_cpu

    rng = np.random.default_rng(12)
    pos, Z, cell = random_structure(rng, 60, species=(1, 8, 6), scale=7.0)
    species = np.searchsorted([1, 6, 8], Z)  # any index 0..2 per atom
    start, j, sv = build_csr_cpu(pos, cell, np.array([True, True, False]), 4.0, np.float64)
    j2, sv2 = j.copy(), sv.copy()
    seg = np.full((len(pos), 4), -1, np.int64)
    group_by_species(start, j2, sv2, species, seg)
    for i in range(len(pos)):
        row = slice(start[i], start[i + 1])
        order = np.argsort(species[j[row]], kind="stable")
        np.testing.assert_array_equal(j2[row], j[row][order], err_msg=f"row {i}")
        np.testing.assert_array_equal(sv2[row], sv[row][order], err_msg=f"row {i}")
        counts = np.bincount(species[j[row]], minlength=3)
        np.testing.assert_array_equal(seg[i], start[i] + np.concatenate(([0], np.cumsum(counts))), err_msg=f"row {i}")


@pytest.mark.parametrize("seed", [0, 1])
def test_one_shot_features_do_not_depend_on_the_bin_grid(seed, monkeypatch):
    """The one-shot kernel on cutoff-wide and on half-cutoff bins (the two grids one_shot_grid picks
    from): same features, mixed periodicity, triclinic cell."""
    import fastfeat._features as feats
    from fastfeat._box import bin_grid

    rng = np.random.default_rng(seed)
    pos, Z, cell = random_structure(rng, 40, species=(1, 8, 6), scale=9.0)
    pbc = np.array([True, bool(seed), True])
    spec = SPECS["angular_covariant"]
    out = []
    for div in (1, 2):
        monkeypatch.setattr(feats, "one_shot_grid",
                            lambda p, c, b, cut, d=div: bin_grid(c, b, cut, p.shape[0], positions=p, divisions=d))
        out.append(fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64))
    np.testing.assert_allclose(out[0].invariant, out[1].invariant, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out[0].covariant, out[1].covariant, rtol=1e-12, atol=1e-13)


def _lattice_cluster(rng, shape, spacing=1.6):
    """A jittered lattice cluster of prod(shape) atoms (H, O, C at random)."""
    g = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).reshape(-1, 3) * spacing
    return g + rng.normal(scale=0.15, size=g.shape), rng.choice(np.array([1, 8, 6]), len(g))


def test_clusters_far_apart_have_the_features_of_each_cluster_alone():
    """Three 100-atom clusters up to 1e4 Å apart (non-periodic): the bin grid compresses the empty
    stretches (fastfeat._box._axis_regions); the features, one-shot and through a Featurizer, are each
    cluster's own (to the rounding of coordinates 1e4 Å from the origin)."""
    from fastfeat._neighbors import one_shot_grid

    rng = np.random.default_rng(5)
    spec = SPECS["angular_covariant"]
    parts = [_lattice_cluster(rng, (5, 5, 4)) for _ in range(3)]  # 3 x 100 atoms: the grid is adapted
    offsets = np.array([[0.0, 0.0, 0.0], [5e3, 0.0, 0.0], [1e4, -1e4, 3e3]])
    pos = np.vstack([p + o for (p, _), o in zip(parts, offsets)])
    Z = np.concatenate([z for _, z in parts])
    assert one_shot_grid(pos, np.zeros((3, 3)), np.zeros(3, bool), spec.cutoff).n_regions.tolist() == [3, 2, 2]
    alone = [fastfeat.featurize(positions=p, numbers=z, spec=spec, dtype=np.float64) for p, z in parts]
    one_shot = fastfeat.featurize(positions=pos, numbers=Z, spec=spec, dtype=np.float64)
    whole = [(one_shot.invariant, one_shot.covariant), fastfeat.Featurizer(spec, dtype=np.float64)(pos, Z)]
    for g, v in whole:
        np.testing.assert_allclose(g, np.vstack([a.invariant for a in alone]), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(v, np.vstack([a.covariant for a in alone]), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("pbc", [(True, True, True), (False, True, False)])
def test_scattered_atoms_around_a_cluster_give_the_plain_grids_features(pbc, monkeypatch):
    """A 512-atom cluster with 10 % of the atoms scattered over a 300 Å triclinic box: the bin grid
    equalises each axis's density (fastfeat._box._equalized_axis, periodic axes keeping their images);
    the features, one-shot and through a Featurizer (reused over a small move), are those computed on
    the plain capped grid."""
    from fastfeat import _box
    from fastfeat._neighbors import one_shot_grid

    rng = np.random.default_rng(8)
    spec = SPECS["angular_covariant"]
    pos, Z = _lattice_cluster(rng, (8, 8, 8))
    cell = np.array([[300.0, 0.0, 0.0], [20.0, 290.0, 0.0], [-15.0, 10.0, 310.0]])
    pos = np.vstack([pos + 140.0, rng.random((57, 3)) @ cell])
    Z = np.concatenate([Z, rng.choice(np.array([1, 8, 6]), 57)])
    pbc = np.array(pbc)
    assert (one_shot_grid(pos, cell, pbc, spec.cutoff).region_scale < 1).any(axis=1).all()
    moved = pos + rng.normal(scale=0.05, size=pos.shape)

    def features():
        f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64)
        fz = fastfeat.Featurizer(spec, dtype=np.float64, skin=0.5)
        fz(pos, Z, cell, pbc)
        return [(f.invariant, f.covariant), fz(moved, Z, cell, pbc)]

    got = features()
    monkeypatch.setattr(_box, "_ADAPT_MIN_ATOMS", 10**9)
    for (g, v), (g_ref, v_ref) in zip(got, features()):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(v, v_ref, rtol=1e-12, atol=1e-12)


def test_cluster_in_a_large_periodic_box_has_its_isolated_features():
    """A 294-atom cluster across the boundary of a 500 Å periodic triclinic cell (positions wrapped):
    the grid cuts the periodic axes at the empty stretch; the features, one-shot and through a
    Featurizer, are those of the unwrapped cluster without periodicity."""
    from fastfeat._neighbors import one_shot_grid

    rng = np.random.default_rng(6)
    spec = SPECS["angular_covariant"]
    pos, Z = _lattice_cluster(rng, (7, 7, 6))  # 294 atoms: the grid is adapted
    pos -= 5.0
    cell = np.array([[500.0, 0.0, 0.0], [40.0, 480.0, 0.0], [-30.0, 20.0, 510.0]])
    wrapped = pos - np.floor(pos @ np.linalg.inv(cell)) @ cell
    pbc = np.ones(3, bool)
    assert not one_shot_grid(wrapped, cell, pbc, spec.cutoff).periodic.any()
    ref = fastfeat.featurize(positions=pos, numbers=Z, spec=spec, dtype=np.float64)
    one_shot = fastfeat.featurize(positions=wrapped, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64)
    for g, v in [(one_shot.invariant, one_shot.covariant),
                 fastfeat.Featurizer(spec, dtype=np.float64)(wrapped, Z, cell, pbc)]:
        np.testing.assert_allclose(g, ref.invariant, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(v, ref.covariant, rtol=1e-9, atol=1e-10)


def test_one_shot_grid_halves_bins_in_small_cells_only():
    from fastfeat._neighbors import one_shot_grid

    rng = np.random.default_rng(0)

    def lattice(n_side, spacing):
        g = np.stack(np.meshgrid(*3 * [np.arange(n_side)], indexing="ij"), -1).reshape(-1, 3) * spacing
        return g + rng.normal(scale=0.1, size=g.shape), np.eye(3) * n_side * spacing

    pbc = np.array([True, True, True])
    pos, cell = lattice(5, 2.0)  # 125 atoms, 10 Å: one or two cutoff-wide bins per axis
    assert one_shot_grid(pos, cell, pbc, 5.2).search.tolist() == [2, 2, 2]
    pos, cell = lattice(15, 2.1)  # 3375 atoms, 31.5 Å: a gather per bin serves ~25 centres
    assert one_shot_grid(pos, cell, pbc, 5.2).search.tolist() == [1, 1, 1]


def test_large_zeta_matches_the_definition_and_stays_finite():
    """G4/W evaluate 2^(1 - zeta) (1 + lambda cos)^zeta as 2 ((1 + lambda cos) / 2)^zeta: equal to the literal
    definition where that is representable (zeta 600-1000), finite beyond (apart, the two factors over- and
    underflow past zeta ~1024 in float64; earlier, NaN columns)."""
    rng = np.random.default_rng(3)
    pos, Z, cell = random_structure(rng, 14, species=(1, 8, 6), scale=5.0)
    big = [(0.1, 600.0, 1.0), (0.05, 1000.0, -1.0), (0.1, 777.5, 1.0)]
    spec = fastfeat.FeatureSpec(("H", "O", "C"), 4.5, 3.8, radial=[(0.5, 1.0)], angular=big,
                                covariant=[(0.3, 1.0)], covariant_angular=big[:2])
    G, V = features_ref(pos, Z, cell, np.array([True, True, True]), spec)
    assert np.abs(G[:, spec.n_radial:]).max() > 1e-12, "the case must have G4 terms"
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    np.testing.assert_allclose(f.invariant, G, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(f.covariant, V, rtol=1e-9, atol=1e-300)
    huge = [(0.1, 1500.0, 1.0), (0.05, 3000.5, -1.0)]
    spec = fastfeat.FeatureSpec(("H", "O", "C"), 4.5, 3.8, radial=[(0.5, 1.0)], angular=huge,
                                covariant=[(0.3, 1.0)], covariant_angular=huge)
    for dtype in (np.float64, np.float32):
        f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=dtype)
        assert np.isfinite(f.invariant).all() and np.isfinite(f.covariant).all()
        assert (f.invariant >= 0).all() and f.invariant[:, spec.n_radial:].max() <= 2.0 * len(Z) ** 2


def test_float32_features_of_far_from_origin_coordinates_keep_their_precision():
    """Positions stay float64 on the CPU whatever the output dtype: an unwrapped MD frame shifted by 1e4 Å
    gave 9e-4 relative error in float32 features when the positions were cast first."""
    rng = np.random.default_rng(5)
    pos, Z, cell = random_structure(rng, 20, species=(1, 8, 6), scale=6.0)
    spec = SPECS["angular_covariant"]
    ref = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    shifted = pos + np.array([1.0e4, -2.0e4, 3.0e4])
    f = fastfeat.featurize(positions=shifted, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float32)
    g, v = fastfeat.Featurizer(spec, dtype=np.float32)(shifted, Z, cell, True)
    for gi, vi in ((f.invariant, f.covariant), (g, v)):
        np.testing.assert_allclose(gi, ref.invariant, rtol=2e-5, atol=2e-6 * np.abs(ref.invariant).max())
        np.testing.assert_allclose(vi, ref.covariant, rtol=2e-5, atol=2e-6 * np.abs(ref.covariant).max())


def test_structure_of_a_batch_by_index():
    rng = np.random.default_rng(2)
    frames = [random_structure(rng, n, species=(1, 8), scale=5.0) for n in (4, 6, 5)]
    atoms = [Atoms(numbers=z, positions=p, cell=c, pbc=True) for p, z, c in frames]
    f = fastfeat.featurize(atoms, SPECS["default"])
    assert len(f.structure(-1)) == 5 and np.array_equal(f.structure(-1).invariant, f.structure(2).invariant)
    for bad in (3, -4, 1.0, True):
        with pytest.raises(IndexError, match="out of range for a batch of 3 structures"):
            f.structure(bad)


def test_steep_ladder_beyond_the_exponent_guard_matches_reference():
    """eta r^2 up to 60 x 4.5^2 = 1215: the ladder recurrence would leave the exp range, so each grid point
    takes its own exp (a guard on eta t instead of eta t^2 passed the milder steep spec)."""
    spec = fastfeat.FeatureSpec(("H", "O", "C"), 5.0, 3.0, radial=[(60.0, 0.5 + 0.5 * k) for k in range(9)],
                                covariant=[(60.0, 0.5 + 0.5 * k) for k in range(9)])
    rng = np.random.default_rng(0)
    pos, Z, cell = random_structure(rng, 14, species=(1, 8, 6), scale=5.0)
    G, V = features_ref(pos, Z, cell, np.array([True, True, True]), spec)
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    np.testing.assert_allclose(f.invariant, G, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f.covariant, V, rtol=1e-10, atol=1e-12)


def test_featurizer_rebuilds_past_half_the_skin():
    """Two atoms beyond cutoff + skin approach by 0.6 Å each (more than skin / 2, less than the skin):
    the list must be rebuilt (a rebuild at the full skin missed their pair)."""
    spec = fastfeat.FeatureSpec.default(("H", "O"))
    skin = 1.0
    d0 = spec.cutoff + skin + 0.1
    pos = np.array([[0.0, 0.0, 0.0], [d0, 0.0, 0.0]])
    fz = fastfeat.Featurizer(spec, dtype=np.float64, skin=skin)
    fz(pos, [8, 1], None, False)
    pos2 = pos + np.array([[0.6, 0, 0], [-0.6, 0, 0]])
    g, v = fz(pos2, [8, 1], None, False)
    ref = fastfeat.featurize(positions=pos2, numbers=[8, 1], pbc=False, spec=spec, dtype=np.float64)
    assert np.abs(ref.invariant).max() > 0
    np.testing.assert_allclose(g, ref.invariant, rtol=1e-12, atol=1e-14)
    assert fz.n_rebuilds == 2


def test_featurizer_follows_a_changed_cell():
    """The cell grows 2 % with the atoms (an NPT-like step, displacements below skin / 2): the stored
    shift vectors are stale, so the list must be rebuilt."""
    spec = fastfeat.FeatureSpec.default(("H", "O", "C"))
    rng = np.random.default_rng(1)
    pos, Z, cell = random_structure(rng, 12, species=(1, 8, 6), scale=5.0)
    fz = fastfeat.Featurizer(spec, dtype=np.float64, skin=1.0)
    fz(pos, Z, cell, True)
    g, v = fz(pos * 1.02, Z, cell * 1.02, True)
    ref = fastfeat.featurize(positions=pos * 1.02, numbers=Z, cell=cell * 1.02, pbc=True, spec=spec, dtype=np.float64)
    np.testing.assert_allclose(g, ref.invariant, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(v, ref.covariant, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("preset", ["angular", "ani1x"])
def test_float32_features_radial_terms_rounded_angular_terms_close(preset):
    """float32 outputs: G2 and V are computed in float64 and only rounded (each element within one ulp
    of float32); G4 and W are computed in float32 (as on the GPU), within twice the README's errors
    against the float64 features relative to each column's largest value (1.5e-6 for G, 6e-6 for
    the covariant vectors on the PEO frame)."""
    rng = np.random.default_rng(11)
    pos, Z, cell = random_structure(rng, 80, species=(1, 8, 6), scale=9.0, min_dist=0.9)
    spec = fastfeat.FeatureSpec.default(("H", "C", "O"), preset=preset)
    f64 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    f32 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float32)
    g32, v32 = fastfeat.Featurizer(spec, dtype=np.float32)(pos, Z, cell, True)
    nr, nc = spec.n_radial, len(spec.covariant) * len(spec.species)
    for g, v in ((f32.invariant, f32.covariant), (g32, v32)):
        # one ulp (the reused list sums in another order than the one-shot kernel), below float32's normal range
        np.testing.assert_allclose(g[:, :nr], f64.invariant[:, :nr], rtol=1.2e-7, atol=np.finfo(np.float32).tiny)
        np.testing.assert_allclose(v[:, :nc], f64.covariant[:, :nc], rtol=1.2e-7, atol=np.finfo(np.float32).tiny)
        for got, want, bound in ((g[:, nr:], f64.invariant[:, nr:], 3e-6), (v[:, nc:], f64.covariant[:, nc:], 1.2e-5)):
            if want.size == 0:  # no angular covariant vectors in the preset
                continue
            scale = np.abs(want).max(axis=0, keepdims=True)
            err = np.abs(got - want) / np.where(scale > 0, scale, 1.0)
            assert err.max() <= bound, f"{preset}: angular terms {err.max():.2g} of a column's scale"


def test_nearly_regular_parameters_are_not_taken_for_ladders_or_eta_multiples():
    """Grids that are only nearly equally spaced (r_s rounded to 1e-3 Å) and etas that are only nearly integer
    multiples of the smallest (2.002): the kernel compilation must take them for what they are, not for a ladder or
    for repeated squares (a tolerance of 1e-3 there gave errors of 3e-3 in G2/V and 2e-5 in G4; every other test spec
    is exactly regular or clearly irregular)."""
    shells = [(3.78, float(r)) for r in np.round(np.linspace(0.8, 4.8, 12), 3)]
    spec = fastfeat.FeatureSpec(("H", "O"), 5.2, 3.5, radial=shells,
                                angular=[(0.01, 1, 1), (0.02002, 2, -1), (0.04, 1, 1)], covariant=shells[::2])
    rng = np.random.default_rng(5)
    pos, Z, cell = random_structure(rng, 14, species=(1, 8), scale=5.0)
    pbc = np.array([True, True, True])
    G, V = features_ref(pos, Z, cell, pbc, spec)
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64)
    g, v = fastfeat.Featurizer(spec, dtype=np.float64)(pos, Z, cell, pbc)
    for got_g, got_v in ((f.invariant, f.covariant), (g, v)):
        np.testing.assert_allclose(got_g, G, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got_v, V, rtol=1e-10, atol=1e-12)


def test_featurizer_rebuilds_when_species_change():
    """Same positions, same atom count, other elements (H and O swapped): the list grouped by species must be
    rebuilt, and the features are those of the new structure."""
    spec = fastfeat.FeatureSpec.default(("H", "O"))
    rng = np.random.default_rng(2)
    pos, Z, cell = random_structure(rng, 12, species=(1, 8), scale=5.0)
    Z2 = np.where(Z == 1, 8, 1)
    fz = fastfeat.Featurizer(spec, dtype=np.float64)
    fz(pos, Z, cell, True)
    g, v = fz(pos, Z2, cell, True)
    ref = fastfeat.featurize(positions=pos, numbers=Z2, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    assert fz.n_rebuilds == 2
    np.testing.assert_allclose(g, ref.invariant, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(v, ref.covariant, rtol=1e-12, atol=1e-13)


def test_float32_g4_with_a_large_eta_multiple_keeps_its_precision():
    """float32 G4 takes one exp per eta: repeated squares of exp(-eta_0 r^2) (the float64 path) would carry the
    rounding of the smallest eta into one 128 times as large (errors ~1e-5 of a column's scale instead of ~1e-6)."""
    spec = fastfeat.FeatureSpec(("H", "O"), 4.0, 4.0, radial=[(1.0, 1.0)], angular=[(0.005, 1, 1), (0.64, 1, 1)],
                                covariant=[(1.0, 1.0)])
    rng = np.random.default_rng(3)
    pos, Z, cell = random_structure(rng, 40, species=(1, 8), scale=7.0, min_dist=0.9)
    f64 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float64)
    g32, _ = fastfeat.Featurizer(spec, dtype=np.float32)(pos, Z, cell, True)
    f32 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=True, spec=spec, dtype=np.float32)
    nr = spec.n_radial
    want = f64.invariant[:, nr:]
    scale = np.abs(want).max(axis=0, keepdims=True)
    for got in (f32.invariant[:, nr:], g32[:, nr:]):
        err = np.abs(got - want) / np.where(scale > 0, scale, 1.0)
        assert err.max() <= 3e-6, err.max(axis=0)
