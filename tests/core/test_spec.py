import numpy as np
import pytest

import fastfeat
from fastfeat import FeatureSpec


def test_sizes_and_labels():
    spec = FeatureSpec.default(("H", "C", "N", "O"), preset="ani1x")
    assert spec.n_invariant == 384 and spec.n_covariant == 64
    assert len(spec.invariant_labels) == spec.n_invariant == len(set(spec.invariant_labels))
    assert len(spec.covariant_labels) == spec.n_covariant == len(set(spec.covariant_labels))
    assert spec.invariant_labels[0].startswith("G2[H;")
    assert spec.invariant_labels[spec.n_radial].startswith("G4[H,H;")
    assert spec.invariant_labels[-1].startswith("G4[O,O;")
    d = FeatureSpec.default(("H", "O"))
    assert d.n_invariant == 2 * 12 + 3 * 16 and d.n_covariant == 16
    dense = FeatureSpec.default(("H", "O"), preset="dense")
    assert dense.radial == d.radial and dense.angular == d.angular and dense.n_covariant == 32
    rs = np.array([c[1] for c in dense.covariant])
    np.testing.assert_allclose(rs, np.linspace(0.8, 4.6, 16))
    np.testing.assert_allclose([c[0] for c in dense.covariant], 1.0 / (2.0 * (rs[1] - rs[0]) ** 2))
    with pytest.raises(ValueError, match="`preset` must be one of"):
        FeatureSpec.default(("H",), preset="fine")


def test_labels_of_close_parameters_stay_distinct():
    """Labels print parameters to 6 significant digits, more only where that would merge two columns."""
    spec = FeatureSpec(("H",), 5.0, 3.0, radial=[(1.0, 1.2), (1.0, 1.2000001)], covariant=[(2.0, 1.0), (2.0, 1.0000004)],
                       angular=[(0.5, 1.0, 1.0), (0.50000001, 1.0, 1.0)])
    assert spec.invariant_labels[:2] == ["G2[H; eta=1, rs=1.2]", "G2[H; eta=1, rs=1.2000001]"]
    assert len(set(spec.invariant_labels)) == spec.n_invariant
    assert spec.covariant_labels == ["V[H; eta=2, rs=1]", "V[H; eta=2, rs=1.0000004]"]
    assert FeatureSpec.default(("H",)).invariant_labels[1] == "G2[H; eta=3.78125, rs=1.16364]"


def test_angular_short_preset_is_angular_with_the_dense_angular_cutoff():
    sp = ("H", "C", "O")
    short, full, dense = (FeatureSpec.default(sp, preset=p) for p in ("angular-short", "angular", "dense"))
    assert short.angular_cutoff == dense.angular_cutoff == 3.5 and full.angular_cutoff == 4.5
    assert short.covariant_angular == full.covariant_angular and len(short.covariant_angular) == 8
    assert (short.radial, short.angular, short.covariant) == (full.radial, full.angular, full.covariant)


def test_angular_covariant_sizes_labels_and_json():
    spec = FeatureSpec.default(("Li", "O", "P"), preset="angular")
    # 16 V per species; 8 W parameters x (6 species pairs for the bisector + 3 unlike pairs for the difference)
    assert spec.n_covariant_radial == 48 and spec.n_covariant_angular == 8 * (6 + 3) == 72
    assert spec.n_covariant == 120 and spec.angular_cutoff == 4.5
    labels = spec.covariant_labels
    assert len(labels) == spec.n_covariant == len(set(labels))
    assert labels[48].startswith("Wsum[Li,Li;") and labels[48 + 6 * 8].startswith("Wdiff[Li,O;")
    assert labels[-1].startswith("Wdiff[O,P;")
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    # a spec without them is written in the older layout (version 1, no extra key): older readers keep working
    import json

    plain = json.loads(FeatureSpec.default(("H",), preset="dense").to_json())
    assert plain["format_version"] == 1 and "covariant_angular" not in plain
    assert json.loads(spec.to_json())["format_version"] == fastfeat.SPEC_FORMAT_VERSION == 2


def test_json_round_trip():
    spec = FeatureSpec(("O", "H"), 5.0, 3.0, [(0.5, 1.0)], [(0.1, 2.0, -1.0)], [(0.2, 1.5), (0.3, 2.5)])
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()


def test_newer_format_refused():
    import json

    data = json.loads(FeatureSpec.default(("H",)).to_json())
    data["format_version"] = fastfeat.SPEC_FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer than this fastfeat"):
        FeatureSpec.from_json(json.dumps(data))
    for bad in (0, -1, True, "2", 1.0):
        data["format_version"] = bad
        with pytest.raises(ValueError, match="integer `format_version` >= 1"):
            FeatureSpec.from_json(json.dumps(data))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(cutoff=0.0), ValueError, "`cutoff` must be a finite number > 0"),
        (dict(cutoff=-1.0), ValueError, "`cutoff` must be a finite number > 0"),
        (dict(cutoff=float("nan")), ValueError, "`cutoff`"),
        (dict(angular_cutoff=6.0), ValueError, "`angular_cutoff` must be <= `cutoff`"),
        (dict(species=("H", "Xx")), ValueError, "'Xx', which is not a chemical symbol"),
        (dict(species=("H", "H")), ValueError, "must not repeat"),
        (dict(species="HO"), TypeError, "sequence of chemical symbols"),
        (dict(species=()), ValueError, "at least one element"),
        (dict(radial=[(1.0, 2.0, 3.0)]), ValueError, "`radial` must be a sequence of 2-tuples"),
        (dict(angular=[(0.1, 0.5, 1.0)]), ValueError, "`zeta` must be >= 1"),
        (dict(angular=[(0.1, 1.0, 0.5)]), ValueError, "`lambda` must be \\+1 or -1"),
        (dict(covariant=[]), ValueError, "at least one covariant"),
        (dict(radial=[(-1.0, 1.0)]), ValueError, "`eta` must be >= 0"),
        (dict(covariant_angular=[(0.1, 0.5, 1.0)]), ValueError, "covariant_angular `zeta` must be >= 1"),
        (dict(covariant_angular=[(0.1, 1.0, 0.0)]), ValueError, "covariant_angular `lambda` must be"),
        (dict(covariant_angular=[(0.1, 1.0)]), ValueError, "`covariant_angular` must be a sequence of 3-tuples"),
    ],
)
def test_bad_spec(kwargs, exc, match):
    base = dict(species=("H", "O"), cutoff=5.0, angular_cutoff=3.5, radial=[(0.5, 1.0)],
                angular=[(0.1, 1.0, 1.0)], covariant=[(0.5, 1.0)])
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        FeatureSpec(**base)


def _nonzero_labels(values, labels, start):
    return {labels[start + c].split(";")[0] for c in np.flatnonzero(np.abs(values[start:]) > 1e-12)}


def test_g4_columns_follow_their_labels():
    """The column layout itself (the NumPy reference and the DScribe test take it from the spec, so a
    reordered pair index passed them)."""
    # centre O with one H and one C neighbour inside the angular cutoff: only the (H, C) G4 block is non-zero
    spec = fastfeat.FeatureSpec.default(("H", "O", "C"))
    pos = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.0]])
    f = fastfeat.featurize(positions=pos, numbers=[8, 1, 6], pbc=False, spec=spec, dtype=np.float64)
    assert _nonzero_labels(f.invariant[0], spec.invariant_labels, spec.n_radial) == {"G4[H,C"}


def test_w_columns_follow_their_labels():
    # four species; centre H with an O (index 1) and a C (index 2) neighbour: W vectors only in the
    # (O, C) bisector and difference blocks, the difference being r̂(O) - r̂(C)
    spec = fastfeat.FeatureSpec.default(("H", "O", "C", "N"), preset="angular")
    pos = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.0]])
    f = fastfeat.featurize(positions=pos, numbers=[1, 8, 6], pbc=False, spec=spec, dtype=np.float64)
    w = np.linalg.norm(f.covariant[0], axis=1)
    assert _nonzero_labels(w, spec.covariant_labels, spec.n_covariant_radial) == {"Wsum[O,C", "Wdiff[O,C"}
    labels = spec.covariant_labels
    k = next(i for i, l in enumerate(labels) if l.startswith("Wdiff[O,C") and "lambda=+1" in l)
    d = f.covariant[0, k]
    assert d[0] > 0 and d[1] < 0 and abs(d[0] / -d[1] - 1) < 1e-12  # along (1, -1, 0): r̂_O - r̂_C
