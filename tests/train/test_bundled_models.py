"""The bundled models (fastfeat/data/models/*.onnx): contract, size, accuracy, symmetry."""

import json
import os

import ase.io
import numpy as np
import pytest

import fastfeat
from fastfeat.train.bundle_models import BUNDLED_HEAD, BUNDLED_PRESET
from fastfeat.train.evaluate import OnnxForceModel

from ._helpers import random_rotation

MODELS = os.path.join(os.path.dirname(fastfeat.__file__), "data", "models")
DATASETS = os.path.join(os.path.dirname(fastfeat.__file__), "data", "datasets")
#: relative force RMSE targets on the test split (issue 4)
TARGETS = {"peo": 0.15, "li4p2o7": 0.15, "li4p2o7-water": 0.20}
SPECIES = {"peo": ["H", "C", "O"], "li4p2o7": ["Li", "O", "P"], "li4p2o7-water": ["H", "Li", "O", "P"]}


def _model(name):
    path = os.path.join(MODELS, f"{name}.onnx")
    if not os.path.exists(path):
        pytest.fail(f"bundled model {path} is missing")
    return path, OnnxForceModel(path)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bundled_model_contract_and_recorded_accuracy(name):
    path, m = _model(name)
    assert os.path.getsize(path) < 2 * 1024 * 1024
    meta = m.metadata
    assert meta["fastfeat.format_version"] == "1"
    assert meta["fastfeat.head"] == BUNDLED_HEAD and meta["fastfeat.target"] == "forces"
    assert json.loads(meta["fastfeat.species"]) == SPECIES[name]
    assert m.spec == fastfeat.FeatureSpec.default(tuple(SPECIES[name]), preset=BUNDLED_PRESET[name])
    assert json.loads(meta["fastfeat.units"]) == {"length": "Å", "force": "eV/Å"}
    assert len(meta["fastfeat.data_hash"]) == 64
    test = json.loads(meta["fastfeat.validation"])["test"]
    assert test["n_atoms"] > 1000 and np.isfinite(test["rel_rmse"]) and test["cosine"] > 0.7


#: bundled models whose recorded test error meets the issue target; the others are strict xfails, so
#: a retrained model that starts meeting its target makes this list out of date (a failure)
MEETS_TARGET = {"peo"}
_SHORT = pytest.mark.xfail(strict=True, reason="misses the issue-4 accuracy target on the trajectory test split "
                                               "(README, \"Bundled models\"; benchmarks/results/models.json)")


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in MEETS_TARGET else _SHORT) for n in sorted(TARGETS)])
def test_bundled_model_meets_issue_target(name):
    _, m = _model(name)
    test = json.loads(m.metadata["fastfeat.validation"])["test"]
    assert test["rel_rmse"] <= TARGETS[name], f"{name}: recorded test relative RMSE {test['rel_rmse']:.3f}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bundled_model_symmetry_on_a_real_frame(name):
    _, m = _model(name)
    atoms = ase.io.read(os.path.join(DATASETS, f"{name}.extxyz.xz"), index=0)
    f = fastfeat.featurize(atoms, m.spec)
    ref = m(f.invariant, f.covariant, f.species).astype(np.float64)
    scale = np.abs(ref).max()
    rng = np.random.default_rng(31)
    # rotate the features (exact covariance of the graph), then rotate + translate the periodic structure
    for _ in range(3):
        rot = random_rotation(rng)
        out = m(f.invariant, np.asarray(f.covariant, np.float64) @ rot.T, f.species).astype(np.float64)
        err = np.abs(out - ref @ rot.T).max() / scale
        assert err < 1e-5, f"{name}: rotation {rot.tolist()} rel error {err:.2e}"
        moved = atoms.copy()
        moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        moved.positions = atoms.positions @ rot.T + rng.normal(size=3) * 3.0
        g = fastfeat.featurize(moved, m.spec)
        out = m(g.invariant, g.covariant, g.species).astype(np.float64)
        err = np.abs(out - ref @ rot.T).max() / scale
        assert err < 1e-3, f"{name}: rotated+translated structure, rotation {rot.tolist()}, rel error {err:.2e}"
    perm = rng.permutation(len(atoms))
    g = fastfeat.featurize(atoms[perm], m.spec)
    out = m(g.invariant, g.covariant, g.species)
    np.testing.assert_allclose(out, ref[perm], rtol=1e-4, atol=1e-4 * scale, err_msg=f"permutation {perm.tolist()}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bundled_model_test_split_accuracy(name):
    """The recorded test-split figures are reproduced from the data (reads the whole data set: slow)."""
    from fastfeat.train.cli import evaluate

    _, m = _model(name)
    metrics, _ = evaluate(os.path.join(MODELS, f"{name}.onnx"), name, "test")
    recorded = json.loads(m.metadata["fastfeat.validation"])["test"]
    assert metrics["rel_rmse"] == pytest.approx(recorded["rel_rmse"], rel=1e-3)


def test_bundle_models_cli_errors_name_the_problem(tmp_path, capsys):
    """The maintainer CLI refuses unknown names and missing files with a message and status 2, no traceback."""
    from fastfeat.train.bundle_models import main

    with pytest.raises(SystemExit) as info:
        main(["annotate", "nosuch"])
    assert info.value.code == 2 and "invalid choice: 'nosuch'" in capsys.readouterr().err
    assert main(["annotate", "peo", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bundle_models annotate: ") and str(tmp_path / "peo.onnx") in err
