"""Property tests (hypothesis): symmetry, reference agreement, determinism, fuzzing.

Bounded in time for CI: few examples, small structures, no deadline (JIT).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastfeat
from tests.core.conftest import random_rotation
from tests.reference.features_ref import features_ref
from tests.reference.neighbors_ref import neighbor_list_ref, pair_set

SPEC = fastfeat.FeatureSpec(
    ("H", "C", "O"), 4.0, 3.0,
    radial=[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0), (0.3, 1.5)],
    angular=[(0.05, 1.0, 1.0), (0.05, 2.0, -1.0), (0.2, 4.0, 1.0)],
    covariant=[(0.5, 1.0), (0.5, 2.5)],
)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def structures(draw, max_atoms=12):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, max_atoms))
    rng = np.random.default_rng(seed)
    scale = draw(st.floats(3.0, 9.0))
    cell = np.eye(3) * scale + rng.normal(size=(3, 3)) * draw(st.floats(0.0, 0.4)) * scale
    pbc = np.array(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    pos = rng.random((n, 3)) @ cell
    # keep atoms apart (overlaps are a documented error, tested elsewhere)
    keep = []
    for k in range(n):
        if all(np.linalg.norm(pos[k] - pos[q]) > 0.5 for q in keep):
            keep.append(k)
    pos = pos[keep]
    numbers = rng.choice([1, 6, 8], len(pos))
    return pos, numbers, cell, pbc, rng


@FAST
@given(structures())
def test_features_match_reference(s):
    pos, Z, cell, pbc, _ = s
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=SPEC, dtype=np.float64)
    G, V = features_ref(pos, Z, cell, pbc, SPEC)
    np.testing.assert_allclose(f.invariant, G, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f.covariant, V, rtol=1e-9, atol=1e-12)


_ZETAS = (1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 1.5, 2.7)
#: G4/W etas: equal, integer multiples of the smallest (repeated squares on the CPU), others, and 0
_ANGULAR_ETAS = (0.0, 0.01, 0.02, 0.04, 0.08, 0.1, 0.37, 1.2)


@st.composite
def specs_and_structures(draw, max_atoms=12):
    """A random FeatureSpec (1-4 species; cutoffs; radial and covariant grids as equally spaced ladders,
    steep ladders or scattered points; G4 and W parameters with shared or multiple etas, integral and
    non-integral zetas, both lambdas, repeats) and a structure of its species."""
    symbols = draw(st.sampled_from([("H",), ("O", "H"), ("H", "C", "O"), ("C", "H", "N", "O")]))
    cutoff = draw(st.floats(2.5, 6.0))
    acut = cutoff if draw(st.booleans()) and draw(st.booleans()) else draw(st.floats(1.0, cutoff))

    def shells(min_size):
        kind = draw(st.sampled_from(["ladder", "steep", "scattered"]))
        n = draw(st.integers(min_size, 12))
        if kind == "scattered":
            return [(draw(st.floats(0.0, 20.0)), draw(st.floats(0.0, cutoff))) for _ in range(n)]
        eta = 45.0 if kind == "steep" else draw(st.sampled_from([0.0, 0.3, 1.0, 4.0, 12.0]))
        return [(eta, float(r)) for r in np.linspace(draw(st.floats(0.0, 1.0)), cutoff, n)]

    def triplets(max_size):
        return draw(st.lists(st.tuples(st.sampled_from(_ANGULAR_ETAS), st.sampled_from(_ZETAS),
                                       st.sampled_from([1.0, -1.0])), max_size=max_size))

    angular = triplets(10)
    radial = shells(0 if angular else 1)
    spec = fastfeat.FeatureSpec(symbols, cutoff, acut, radial=radial, angular=angular, covariant=shells(1),
                                covariant_angular=triplets(4))
    pos, _, cell, pbc, rng = draw(structures(max_atoms))
    numbers = rng.choice(spec.numbers, len(pos))
    return spec, pos, numbers, cell, pbc


@FAST
@given(specs_and_structures())
def test_random_specs_match_reference(case):
    """Any spec, both CPU kernels (one-shot and the reused list of the Featurizer): the way a spec is
    compiled for the kernels (ladders, the G4 grid, etas as repeated squares, integral zetas, W factors
    shared between parameters) must not change a number."""
    spec, pos, Z, cell, pbc = case
    G, V = features_ref(pos, Z, cell, pbc, spec)
    f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64)
    g, v = fastfeat.Featurizer(spec, dtype=np.float64)(pos, Z, cell, pbc)
    for name, got_g, got_v in (("one-shot", f.invariant, f.covariant), ("reused list", g, v)):
        np.testing.assert_allclose(got_g, G, rtol=1e-9, atol=1e-12, err_msg=f"{name}: {spec}")
        np.testing.assert_allclose(got_v, V, rtol=1e-9, atol=1e-12, err_msg=f"{name}: {spec}")


@FAST
@given(structures(), st.floats(0.3, 3.0))
def test_neighbor_list_matches_reference(s, frac):
    pos, _, cell, pbc, _ = s
    vol = abs(np.linalg.det(cell))
    h = min(vol / np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])) for a in range(3))
    cutoff = frac * h
    nl = fastfeat.neighbor_list(pos, cell, pbc, cutoff)
    got = pair_set(nl.i, nl.j, nl.shifts)
    # a pair at the cutoff to rounding (e.g. an image at exactly one cell height with frac = 1) may go either way:
    # the reference sums in another order; every pair clearly inside must be there, none clearly outside
    inside = pair_set(*neighbor_list_ref(pos, cell, pbc, cutoff * (1 - 1e-9))[:3])
    reach = pair_set(*neighbor_list_ref(pos, cell, pbc, cutoff * (1 + 1e-9))[:3])
    assert inside <= got <= reach, (sorted(inside - got)[:5], sorted(got - reach)[:5])


@FAST
@given(structures())
def test_rotation_translation_permutation(s):
    pos, Z, cell, pbc, rng = s
    R = random_rotation(rng)
    t = rng.normal(size=3) * 5
    perm = rng.permutation(len(pos))
    f0 = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=SPEC, dtype=np.float64)
    f1 = fastfeat.featurize(positions=(pos @ R.T + t)[perm], numbers=Z[perm], cell=cell @ R.T, pbc=pbc, spec=SPEC,
                            dtype=np.float64)
    msg = f"R={R.tolist()} t={t.tolist()} perm={perm.tolist()}"
    np.testing.assert_allclose(f1.invariant, f0.invariant[perm], rtol=1e-9, atol=1e-11, err_msg=msg)
    np.testing.assert_allclose(f1.covariant, f0.covariant[perm] @ R.T, rtol=1e-9, atol=1e-11, err_msg=msg)


DOCUMENTED = (ValueError, TypeError, MemoryError)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(["ok", "nan", "inf", "huge", "tiny_cell", "int", "shape", "empty", "dup", "neg_cutoff"]),
)
def test_fuzz_only_documented_exceptions(seed, kind):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 8))
    pos = rng.normal(size=(n, 3)) * rng.choice([1e-3, 1.0, 10.0, 1e5])
    cell = rng.normal(size=(3, 3)) * rng.choice([0.0, 0.5, 5.0, 1e6])
    pbc = rng.random(3) < 0.5
    cutoff = float(rng.choice([0.5, 3.0, 6.0]))
    Z = rng.choice([1, 6, 8], n)
    if kind == "nan" and n:
        pos[0, 0] = np.nan
    elif kind == "inf":
        cell[1, 1] = np.inf
    elif kind == "huge":
        pos = pos * 1e12
    elif kind == "tiny_cell":
        cell = np.eye(3) * 1e-3
        pbc = np.ones(3, bool)
    elif kind == "int":
        pos = pos.astype(int)
    elif kind == "shape":
        pos = pos.reshape(-1)
    elif kind == "empty":
        pos, Z = np.zeros((0, 3)), np.zeros(0, int)
    elif kind == "dup" and n > 1:
        pos[1] = pos[0]
    elif kind == "neg_cutoff":
        cutoff = -cutoff
    try:
        nl = fastfeat.neighbor_list(pos, cell, pbc, cutoff)
        assert np.all(nl.distances < cutoff)
    except DOCUMENTED:
        pass
    try:
        f = fastfeat.featurize(positions=pos, numbers=Z, cell=cell, pbc=pbc, spec=SPEC)
    except DOCUMENTED:
        return
    assert np.isfinite(f.invariant).all() and np.isfinite(f.covariant).all()
    # two atoms at one position can never give features (featurize names the pair)
    assert not (kind == "dup" and n > 1), "overlapping atoms were featurized"


def test_deterministic_across_thread_counts(tmp_path):
    """Same input -> bitwise same output with 1 and 2 Numba threads (each atom is one serial sum)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np, fastfeat\n"
        "rng = np.random.default_rng(0)\n"
        "pos = rng.random((300, 3)) * 14.0\n"
        "Z = rng.choice([1, 6, 8], 300)\n"
        "spec = fastfeat.FeatureSpec.default(('H', 'C', 'O'))\n"
        "f = fastfeat.featurize(positions=pos, numbers=Z, cell=np.eye(3) * 14.0, pbc=True, spec=spec)\n"
        "fz = fastfeat.Featurizer(spec, skin=0.5)\n"
        "g, v = fz(pos, Z, np.eye(3) * 14.0, True)\n"
        "np.savez(sys.argv[1], g=f.invariant, v=f.covariant, g2=g, v2=v)\n"
    )
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.npz"
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, timeout=600)
        outs.append(np.load(out))
    for key in ("g", "v", "g2", "v2"):
        assert np.array_equal(outs[0][key], outs[1][key]), key
    # the Verlet-list path and the one-shot cell path agree to rounding
    np.testing.assert_allclose(outs[0]["g"], outs[0]["g2"], rtol=1e-5, atol=1e-6)
