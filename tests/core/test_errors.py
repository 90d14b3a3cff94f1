"""Every bad input to the featurizer raises a clear error (type + message)."""

import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms

import fastfeat

SPEC = fastfeat.FeatureSpec.default(("H", "O"))
POS = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
Z = np.array([8, 1, 1])
CELL = np.eye(3) * 6.0


def feat(**kw):
    args = dict(positions=POS, numbers=Z, cell=CELL, pbc=True, spec=SPEC)
    args.update(kw)
    return fastfeat.featurize(**args)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(positions=POS * np.nan), ValueError, "`positions` must be finite"),
        (dict(positions=np.where(POS == 0.96, np.inf, POS)), ValueError, "`positions` must be finite.*atom 1"),
        (dict(positions=POS[:, :2]), ValueError, r"`positions` must have shape \(N, 3\), got \(3, 2\)"),
        (dict(positions=POS.ravel()), ValueError, r"`positions` must have shape \(N, 3\), got \(9,\)"),
        (dict(positions=POS.astype(int)), TypeError, "`positions` must be a floating-point array"),
        (dict(positions=POS.astype(complex)), TypeError, "`positions` must be a floating-point array"),
        (dict(positions="abc"), TypeError, "`positions` must be a floating-point array"),
        (dict(cell=np.ones(3)), ValueError, r"`cell` must have shape \(3, 3\), got \(3,\)"),
        (dict(cell=CELL * np.nan), ValueError, "`cell` must be finite"),
        (dict(cell=np.zeros((3, 3))), ValueError, "`cell` vector 0 has zero length but axis 0 is periodic"),
        (dict(cell=np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])), ValueError, "`cell` is singular"),
        (dict(pbc=[True, False]), ValueError, r"`pbc` must be a bool or a sequence of 3 bools, got \[True, False\]"),
        (dict(pbc=2), ValueError, "`pbc` must be a bool or a sequence of 3 bools, got 2$"),
        (dict(pbc=np.ones((4, 4), bool)), ValueError, r"got an array of shape \(4, 4\)"),
        (dict(pbc=["yes", "no", "x"]), TypeError, r"`pbc` must contain booleans, got \['yes', 'no', 'x'\]"),
        (dict(pbc=[0, 1, 2]), TypeError, r"`pbc` must contain booleans, got \[0, 1, 2\]"),
        (dict(numbers=np.array([8, 1, 6])), ValueError, r"atom 2 is C \(Z=6\), which is not in the spec's species \['H', 'O'\]: the feature spec \(and so any model built on it\) knows only these"),
        (dict(numbers=np.array([8, 1])), ValueError, r"`numbers` must have shape \(3,\)"),
        (dict(numbers=np.array([8.0, 1.0, 1.0])), TypeError, "`numbers` must be an integer array"),
        (dict(numbers=np.array([8, 1, 500])), ValueError, "not an atomic number"),
        (dict(numbers=np.array([8, 0, 1])), ValueError, r"holds 0 at atom 1, which is not an atomic number \(1 to 118\)"),
        (dict(numbers=np.array([8, 1, 119])), ValueError, "holds 119 at atom 2, which is not an atomic number"),
        (dict(positions=np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])), ValueError,
         "atoms 1 and 2 are at the same position"),
        (dict(device="tpu"), ValueError, "`device` must be 'cpu' or 'cuda', got 'tpu'"),
        (dict(device=0), TypeError, "`device` must be 'cpu' or 'cuda'"),
        # another GPU than the first visible one was served by GPU 0 under its name
        (dict(device="cuda:1"), ValueError, "`device` 'cuda:1': fastfeat runs on the first visible GPU.*"
                                            "CUDA_VISIBLE_DEVICES=1"),
        (dict(device="cuda:x"), ValueError, "`device` must be 'cpu', 'cuda' or 'cuda:0', got 'cuda:x'"),
        (dict(dtype=np.int32), TypeError, "`dtype` must be float32 or float64"),
        (dict(dtype=None), TypeError, "`dtype` must be float32 or float64, got None"),
        (dict(spec="spec"), TypeError, "`spec` must be a fastfeat.FeatureSpec"),
    ],
)
def test_featurize_bad_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        feat(**kw)


def test_left_handed_cell_is_valid():
    left = CELL.copy()
    left[0] *= -1
    a = feat(cell=left, dtype=np.float64)
    b = feat(dtype=np.float64)
    np.testing.assert_allclose(a.invariant, b.invariant, rtol=1e-12)


def test_zero_vector_on_non_periodic_axis_is_fine():
    cell = np.diag([6.0, 6.0, 0.0])
    f = feat(cell=cell, pbc=[True, True, False])
    assert f.invariant.shape == (3, SPEC.n_invariant)


def test_single_atom_and_batch_errors_name_the_structure():
    f = fastfeat.featurize(Atoms("O", positions=[[0, 0, 0]]), SPEC)
    assert np.all(f.invariant == 0)
    frames = [Atoms("OH2", positions=POS), Atoms("OHC", positions=POS)]
    with pytest.raises(ValueError, match="structure 1: atom 2 is C"):
        fastfeat.featurize(frames, SPEC)


def test_overlap_in_batch_names_structure_and_local_indices():
    frames = [Atoms("OH2", positions=POS), Atoms("OH2", positions=[[0, 0, 0], [1, 0, 0], [1, 0, 0]])]
    with pytest.raises(ValueError, match="structure 1: atoms 1 and 2 are at the same position"):
        fastfeat.featurize(frames, SPEC)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((POS, CELL, True, 0.0), ValueError, "`cutoff` must be a finite number > 0, got 0.0"),
        ((POS, CELL, True, -2.0), ValueError, "`cutoff` must be a finite number > 0"),
        ((POS, CELL, True, None), TypeError, "`cutoff` must be a number"),
        ((POS, CELL, True, float("inf")), ValueError, "`cutoff` must be a finite number"),
        ((POS[:, :2], CELL, True, 3.0), ValueError, r"`positions` must have shape \(N, 3\)"),
        ((POS, np.eye(2), True, 3.0), ValueError, r"`cell` must have shape \(3, 3\), got \(2, 2\)"),
    ],
)
def test_neighbor_list_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        fastfeat.neighbor_list(*args)


def test_featurizer_bad_skin():
    with pytest.raises(ValueError, match="`skin` must be a finite number >= 0"):
        fastfeat.Featurizer(SPEC, skin=-1.0)


def test_cuda_without_gpu_is_a_clear_error_without_hanging():
    code = (
        "import numpy as np, fastfeat\n"
        "spec = fastfeat.FeatureSpec.default(('H',))\n"
        "try:\n"
        "    fastfeat.featurize(positions=np.zeros((1, 3)), numbers=[1], spec=spec, device='cuda')\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
        "else:\n"
        "    print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "NUMBA_ENABLE_CUDASIM": "0"})
    text = out.stdout
    if text.startswith("OK"):
        pytest.skip("a CUDA GPU is present")
    assert "device='cuda' was requested but CUDA is not usable" in text, out.stdout + out.stderr


def test_huge_structure_refused_before_allocating():
    # a 600-million-atom view costs no memory; it must be refused before anything is allocated
    huge = np.broadcast_to(np.zeros(3), (600_000_000, 3))
    with pytest.raises(MemoryError, match="more than fastfeat handles in one call"):
        fastfeat.featurize(positions=huge, numbers=np.broadcast_to(np.array([1]), (600_000_000,)), spec=SPEC)
    with pytest.raises(MemoryError, match="more than fastfeat handles in one call"):
        fastfeat.neighbor_list(huge, None, False, 3.0)


def test_pair_list_larger_than_memory_is_a_memory_error(monkeypatch):
    from fastfeat import _device

    monkeypatch.setattr(_device, "available_host_memory", lambda: 10)
    with pytest.raises(MemoryError, match="the neighbour list .* needs .* GiB"):
        fastfeat.neighbor_list(POS, CELL, True, 3.0)
    # sorted=True sorts each centre's row in place: room for one copy is enough (it was two)
    from fastfeat._neighbors import _estimate_pair_bytes

    monkeypatch.setattr(_device, "available_host_memory", lambda: None)
    n_pairs = len(fastfeat.neighbor_list(POS, CELL, True, 3.0).i)
    one_copy = _estimate_pair_bytes(n_pairs, 8)
    monkeypatch.setattr(_device, "available_host_memory", lambda: int(1.05 * one_copy))
    assert len(fastfeat.neighbor_list(POS, CELL, True, 3.0, sorted=True).i) == n_pairs
    monkeypatch.setattr(_device, "available_host_memory", lambda: int(0.95 * one_copy))
    with pytest.raises(MemoryError, match="the neighbour list"):
        fastfeat.neighbor_list(POS, CELL, True, 3.0, sorted=True)


def test_positions_overflowing_the_compute_dtype_are_refused():
    from fastfeat._validation import check_positions

    with pytest.raises(ValueError, match=r"`positions` of atom 1, \[0.0, 0.0, 1e\+39\], overflows float32"):
        check_positions(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1e39]]), dtype=np.float32)
    assert check_positions(np.array([[0.0, 0.0, 1e39]]), dtype=np.float64).dtype == np.float64


def test_api_audit_messages():
    """Inputs a new user passes by mistake get messages that say what to pass instead."""
    water = Atoms("OH2", positions=POS, cell=CELL, pbc=True)
    with pytest.raises(TypeError, match=r"`positions` must be an \(N, 3\) array, got Atoms; .*atoms.positions"):
        fastfeat.neighbor_list(water, None, False, 3.0)
    with pytest.raises(TypeError, match=r"`atoms\[1\]` must be an ase.Atoms .*got str"):
        fastfeat.featurize([water, "water.xyz"], SPEC)
    with pytest.raises(TypeError, match=r"`radial` must be a sequence of 2-tuples .*got None"):
        fastfeat.FeatureSpec(("H",), 5.0, 3.0, radial=None)
    # pbc as 0/1 integers, as ASE takes them
    np.testing.assert_array_equal(feat(pbc=1).invariant, feat(pbc=True).invariant)
    np.testing.assert_array_equal(feat(pbc=np.int64(0)).invariant, feat(pbc=False).invariant)
    with pytest.raises(ValueError, match="`pbc` must be a bool"):
        feat(pbc=2)


def test_positions_too_many_cells_out_are_refused():
    """An atom ~3e9 cells out along a periodic axis: its int32 cell shift overflowed silently (vectors off by
    4e9 Å); now a clear error, in neighbor_list and featurize (float64 still resolves such positions)."""
    pos = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 3.0e9 + 0.4]])
    with pytest.raises(ValueError, match=r"atom 1 lies more than \d+ cells from the origin .*atoms.wrap\(\)"):
        fastfeat.neighbor_list(pos, np.eye(3), True, 0.9)
    with pytest.raises(ValueError, match="atom 1 lies more than"):
        fastfeat.featurize(positions=pos * 6.0, numbers=np.array([1, 8]), cell=CELL, pbc=True, spec=SPEC)
    with pytest.raises(ValueError, match="atom 1 lies more than"):
        fastfeat.neighbor_list(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1e25]]), np.eye(3), True, 0.9)
    # far out along a non-periodic axis is fine (no shifts there): the pairs of the reference
    from tests.reference.neighbors_ref import neighbor_list_ref, pair_set

    nl = fastfeat.neighbor_list(pos, np.eye(3), [True, True, False], 1.2)
    ref = neighbor_list_ref(pos, np.eye(3), [True, True, False], 1.2)
    assert len(nl.i) == 8 and pair_set(nl.i, nl.j, nl.shifts) == pair_set(*ref[:3])


def test_featurizer_reports_overlapping_atoms():
    """The Featurizer (MD, Calculator) kernel reports overlaps too, not only one-shot featurize."""
    spec = fastfeat.FeatureSpec.default(("H", "O"))
    pos = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [0.96, 0.0, 0.0]])
    with pytest.raises(ValueError, match="atoms 1 and 2 are at the same position"):
        fastfeat.Featurizer(spec, skin=0.5)(pos, [8, 1, 1], np.eye(3) * 6.0, True)


def test_atoms_and_arrays_together_are_refused():
    """An ase.Atoms (or a list of them) carries its own positions, numbers, cell and pbc: arrays passed beside
    it were silently ignored (`featurize(atoms, spec, pbc=True)` featurized the non-periodic structure)."""
    water = Atoms("OH2", positions=POS)
    for kw in (dict(pbc=True), dict(cell=CELL), dict(positions=POS), dict(numbers=Z)):
        name = next(iter(kw))
        with pytest.raises(TypeError, match=rf"pass either `atoms` or .*not both \(got `atoms` and `{name}`\)"):
            fastfeat.featurize(water, SPEC, **kw)
        with pytest.raises(TypeError, match=r"`atoms` \(here a list of structures\) .*not both"):
            fastfeat.featurize([water], SPEC, **kw)


def test_extreme_but_finite_geometry():
    """Finite coordinates whose spread overflows float64: a ValueError naming `positions`, not an
    OverflowError from inside the grid; a huge orthogonal periodic cell is not called singular (the volume
    test squared the lengths: L^6 overflowed for L > 2.6e51 Å)."""
    far = np.array([[-1e308, 0.0, 0.0], [1e308, 0.0, 0.0]])
    with pytest.raises(ValueError, match="`positions` span more than float64 holds along non-periodic axis 0"):
        fastfeat.neighbor_list(far, None, False, 3.0)
    with pytest.raises(ValueError, match="`positions` span more than float64"):
        fastfeat.featurize(positions=far, numbers=np.array([1, 1]), spec=SPEC)
    nl = fastfeat.neighbor_list(np.array([[0.0, 0, 0], [1.0, 0, 0]]), np.eye(3) * 3e51, True, 1.5)
    assert sorted(zip(nl.i.tolist(), nl.j.tolist())) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="`cell` is singular"):
        fastfeat.neighbor_list(POS, np.array([[3e51, 0, 0], [6e51, 0, 0], [0, 0, 3e51]]), True, 1.5)


def test_empty_structure_from_plain_lists():
    """`numbers=[]` (NumPy reads an empty list as float64) is an empty structure, as `numbers=np.array([], int)`."""
    f = fastfeat.featurize(positions=np.zeros((0, 3)), numbers=[], spec=SPEC)
    assert f.invariant.shape == (0, SPEC.n_invariant) and f.covariant.shape == (0, SPEC.n_covariant, 3)
    g, v = fastfeat.Featurizer(SPEC)(np.zeros((0, 3)), [])
    assert g.shape == (0, SPEC.n_invariant)
