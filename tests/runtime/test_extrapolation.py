"""Training feature ranges (metadata `fastfeat.feature_range`) and the extrapolation check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import random_water_box
from _models import with_metadata

import fastfeat
from fastfeat.runtime import ForceModel, ModelLoadError
from fastfeat.runtime import md_cli, relax_cli
from fastfeat.runtime.extrapolation import extrapolation, feature_range_metadata, parse_feature_range


def _features(spec, frames):
    f = fastfeat.featurize(frames, spec, dtype=np.float32)
    return np.asarray(f.invariant), np.asarray(f.species)


@pytest.fixture(scope="module")
def ranged_model_path(model_path, spec, tmp_path_factory):
    """The test model with the training ranges of three random water boxes."""
    g, s = _features(spec, [random_water_box(seed=k) for k in range(3)])
    return with_metadata(model_path, tmp_path_factory.mktemp("models") / "ranged.onnx",
                         feature_range=feature_range_metadata(spec, g, s))


def test_ranges_round_trip_and_training_rows_are_inside(spec):
    g, s = _features(spec, [random_water_box(seed=k) for k in range(3)])
    ranges = parse_feature_range(feature_range_metadata(spec, g, s), spec)
    assert set(ranges) == {"H", "O"}
    for e, symbol in enumerate(spec.species):
        lo, hi = ranges[symbol]
        np.testing.assert_array_equal(lo, g[s == e].min(0))  # float32 values read back exactly
        np.testing.assert_array_equal(hi, g[s == e].max(0))
    ex = extrapolation(g, s, spec, ranges)
    assert not ex and len(ex.atoms) == 0 and ex.fraction == 0.0 and (ex.excess == 0).all()
    assert ex.summary().startswith(f"all {len(s)} atoms inside")


def test_excess_is_measured_in_units_of_the_training_range(spec):
    g, s = _features(spec, [random_water_box(seed=k) for k in range(2)])
    ranges = parse_feature_range(feature_range_metadata(spec, g, s), spec)
    o = int(np.flatnonzero(s == 1)[0])
    col = 2
    lo, hi = ranges["O"]
    probe = g.astype(np.float64).copy()
    probe[o, col] = hi[col] + 0.25 * (hi[col] - lo[col])
    ex = extrapolation(probe, s, spec, ranges)
    assert list(ex.atoms) == [o] and ex.excess[o] == pytest.approx(0.25)
    assert ex.worst_atom == o and ex.worst_column == spec.invariant_labels[col]
    assert ex.worst_interval == (lo[col], hi[col]) and ex.worst_value == probe[o, col]
    assert f"atom {o}, {spec.invariant_labels[col]}" in ex.summary() and "by 0.25 x its training range" in ex.summary()
    assert not extrapolation(probe, s, spec, ranges, tolerance=0.3)  # within the tolerance
    probe[o, col] = lo[col] - 2.0 * (hi[col] - lo[col])  # below the range
    assert extrapolation(probe, s, spec, ranges).excess[o] == pytest.approx(2.0)


def test_unseen_element_and_constant_columns_are_infinitely_far(spec):
    g, s = _features(spec, [random_water_box(seed=0)])
    ranges = parse_feature_range(feature_range_metadata(spec, g, s), spec)
    only_o = {"O": ranges["O"]}
    ex = extrapolation(g, s, spec, only_o)
    assert set(ex.atoms) == set(np.flatnonzero(s == 0)) and np.isinf(ex.excess[s == 0]).all()
    assert "an element with no atoms in the training data" in ex.summary()
    lo, hi = ranges["O"]
    lo, hi = lo.copy(), hi.copy()
    lo[0] = hi[0] = 0.5  # a column that never varied in training
    g2 = g.astype(np.float64).copy()
    o = int(np.flatnonzero(s == 1)[0])
    g2[s == 1, 0] = 0.5
    g2[o, 0] = 0.6
    ex = extrapolation(g2, s, spec, {"H": ranges["H"], "O": (lo, hi)})
    assert list(ex.atoms) == [o] and np.isinf(ex.excess[o]) and "a column constant in training" in ex.summary()


@pytest.mark.parametrize("text, match", [
    ("{", "is not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"C": {"min": [0], "max": [1]}}', r"names 'C', which is not in the spec's species"),
    ('{"H": {"min": [0, 1], "max": [1, 2]}}', "must hold 14 values"),
    ('{"H": {"max": [1]}}', "needs lists 'min' and 'max'"),
])
def test_bad_range_metadata_is_refused_at_load(model_path, spec, tmp_path, text, match):
    assert spec.n_invariant == 14
    with pytest.raises(ValueError, match=match):
        parse_feature_range(text, spec)
    bad = with_metadata(model_path, tmp_path / "bad.onnx", feature_range=text)
    with pytest.raises(ModelLoadError, match="metadata `fastfeat.feature_range`"):
        ForceModel.load(bad)


def test_min_above_max_is_refused(spec):
    g, s = _features(spec, [random_water_box(seed=0)])
    raw = json.loads(feature_range_metadata(spec, g, s))
    raw["H"]["min"][3] = raw["H"]["max"][3] + 1.0
    with pytest.raises(ValueError, match="every 'min' must be finite and <= its 'max'"):
        parse_feature_range(json.dumps(raw), spec)


def test_force_model_extrapolation(ranged_model_path, model):
    m = ForceModel.load(ranged_model_path)
    assert set(m.feature_range) == {"H", "O"}
    assert not m.extrapolation(random_water_box(seed=1))  # one of the "training" boxes
    squeezed = random_water_box(seed=1)
    squeezed.set_cell(squeezed.cell * 0.7, scale_atoms=True)  # 2.9x the density: every O-O distance shorter
    ex = m.extrapolation(squeezed)
    assert ex and ex.fraction > 0.5
    with pytest.raises(ValueError, match="`tolerance` must be a finite number >= 0.0"):
        m.extrapolation(squeezed, tolerance=-1)
    with pytest.raises(TypeError, match="`atoms` must be one ase.Atoms"):
        m.extrapolation([squeezed])
    # a file exported before the ranges were stored
    assert model.feature_range is None
    with pytest.raises(ValueError, match="holds no training feature ranges"):
        model.extrapolation(squeezed)


def test_bundled_models_hold_their_training_ranges():
    from fastfeat.train import datasets

    for name in ("peo", "li4p2o7", "li4p2o7-water"):
        m = ForceModel.pretrained(name)
        assert set(m.feature_range) == set(m.spec.species), name
        n_train = json.loads(m.info.metadata["fastfeat.feature_range"])
        assert sum(v["n_atoms"] for v in n_train.values()) == sum(len(a) for a in datasets.load(name, "train"))
        train = datasets.load(name, split="train")
        for k in (0, len(train) // 2, len(train) - 1):
            assert not m.extrapolation(train[k]), (name, k)


def test_commands_report_extrapolation(ranged_model_path, model_path, tmp_path, capsys):
    squeezed = random_water_box(seed=1)
    squeezed.set_cell(squeezed.cell * 0.7, scale_atoms=True)
    path = tmp_path / "squeezed.extxyz"
    squeezed.write(path)
    inside = tmp_path / "inside.extxyz"
    random_water_box(seed=1).write(inside)
    md_cli.main([str(ranged_model_path), str(path), "--steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert "fastfeat md: extrapolation at the start:" in err and "outside the training range" in err
    assert "fastfeat md: extrapolation at the end:" in err
    relax_cli.main([str(ranged_model_path), str(path), "--steps", "2", "--quiet"])
    assert "fastfeat relax: extrapolation at the start:" in capsys.readouterr().err
    # inside: a line only without --quiet; a model without ranges: no line
    # (the end of these runs may extrapolate: the test model's forces are random)
    relax_cli.main([str(ranged_model_path), str(inside), "--steps", "0", "--quiet"])
    assert "extrapolation" not in capsys.readouterr().err
    md_cli.main([str(ranged_model_path), str(inside), "--steps", "2", "--quiet"])
    assert "extrapolation at the start" not in capsys.readouterr().err
    md_cli.main([str(ranged_model_path), str(inside), "--steps", "2"])
    assert "extrapolation at the start: all 24 atoms inside" in capsys.readouterr().err
    md_cli.main([str(model_path), str(path), "--steps", "2"])
    assert "extrapolation" not in capsys.readouterr().err


def test_count_kernel_equals_the_reference(spec):
    """runtime/_range_kernel.count_outside against extrapolation() (the NumPy reference), random features
    around the ranges, an element without range, several tolerances."""
    from fastfeat.runtime._range_kernel import count_outside, count_outside_array
    from fastfeat.runtime.extrapolation import bounds

    rng = np.random.default_rng(0)
    g, s = _features(spec, [random_water_box(seed=k) for k in range(2)])
    ranges = parse_feature_range(feature_range_metadata(spec, g, s), spec)
    probe = g.astype(np.float32) * rng.uniform(0.9, 1.1, g.shape).astype(np.float32)
    for rg in (ranges, {"O": ranges["O"]}):
        for tol in (0.0, 1e-3, 0.05):
            lo, hi = bounds(spec, rg, tol)
            ref = extrapolation(probe, s, spec, rg, tol)
            assert 0 < len(ref.atoms) < len(s) or rg is not ranges
            assert count_outside(probe, s.astype(np.int64), lo, hi) == len(ref.atoms), (tol, list(rg))
            assert count_outside_array(probe, s.astype(np.int64), lo, hi) == len(ref.atoms), (tol, list(rg))
            for chunk in (1, 7 * probe.shape[1], 10 ** 9):  # one atom, 7 atoms, all at once per chunk
                assert count_outside_array(probe, s.astype(np.int64), lo, hi, chunk) == len(ref.atoms), chunk


def test_md_log_follows_extrapolation(ranged_model_path, model_path, tmp_path):
    """run_md with a model holding ranges logs, every record, the atoms outside them at that frame (the
    evaluator's own features, no featurization): equal to ForceModel.extrapolation of the frame."""
    import ase.io

    from fastfeat.runtime import MDInstabilityError, run_md

    m = ForceModel.load(ranged_model_path)
    start = random_water_box(seed=1)
    log = tmp_path / "md.log"
    r = run_md(m, start, 30, dt=0.5, temperature=600.0, every=10, out=tmp_path / "t.extxyz", log=log)
    counts = r.log["outside_training"]
    frames = ase.io.read(tmp_path / "t.extxyz", index=":")
    assert len(counts) == len(frames) == 4 and counts.max() > 0
    for n_out, frame in zip(counts, frames):
        assert n_out == len(m.extrapolation(frame).atoms) == frame.info["outside_training"]
    lines = log.read_text().splitlines()
    assert lines[1].endswith(" outside_training") and [int(x.split()[-1]) for x in lines[2:]] == list(counts)
    # no ranges: no column
    r = run_md(ForceModel.load(model_path), start, 10, every=5, out=tmp_path / "u.extxyz")
    assert "outside_training" not in r.log
    assert all("outside_training" not in a.info for a in ase.io.read(tmp_path / "u.extxyz", index=":"))
    # a stopped run: the restored last good frame is not measured (-1)
    ev = m.evaluator(start.numbers, start.cell.array, start.pbc)
    calls = {"n": 0}

    class Failing:
        outside_count = ev.outside_count

        def __call__(self, x):
            calls["n"] += 1
            f = ev(x)
            return f * np.nan if calls["n"] == 8 else f

    from fastfeat.runtime import MolecularDynamics

    md = MolecularDynamics(Failing(), start.positions, start.get_masses(), dt=0.5, temperature=300.0)
    with pytest.raises(MDInstabilityError) as info:
        md.run(20, every=5, trajectory=tmp_path / "s.extxyz")
    counts = info.value.result.log["outside_training"]
    assert list(info.value.result.log["step"]) == [0, 5, 6] and counts[-1] == -1 and (counts[:-1] >= 0).all()
    # the restored frame carries no count; the measured ones carry theirs
    frames = ase.io.read(tmp_path / "s.extxyz", index=":")
    assert [a.info.get("outside_training") for a in frames] == [*counts[:-1], None]
