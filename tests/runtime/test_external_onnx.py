"""An external code's path: `fastfeat featurize --model` -> examples/external_onnx.py (onnxruntime + numpy
only) gives ForceModel's forces, at the model's precision, for every structure of a file, empty ones too."""

from __future__ import annotations

import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase import Atoms

from fastfeat.cli import main as cli
from fastfeat.runtime import ForceModel

from conftest import random_water_box

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "external_onnx.py")


def _example(*args):
    return subprocess.run([sys.executable, EXAMPLE, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def frames(tmp_path):
    water = random_water_box(4, box=5.0, seed=3)
    molecule = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, [water, Atoms(), molecule])
    return path, [water, Atoms(), molecule]


@pytest.mark.parametrize("which, dtype, tol", [("model_path", np.float32, 1e-5), ("model64_path", np.float64, 1e-12)])
def test_featurize_model_then_example_gives_forcemodel_forces(request, frames, tmp_path, capsys, which, dtype, tol):
    """The features come at the model's precision without `--dtype` (a float64 model fed float32 features was
    3e-6 eV/Å off), and a structure with no atoms has no forces rather than stopping the example."""
    path, _ = frames
    structures = ase.io.read(path, ":")  # as the file holds them (extxyz rounds positions to 1e-8 Å)
    model_path = request.getfixturevalue(which)
    npz = tmp_path / "features.npz"
    assert cli(["featurize", str(path), "--model", str(model_path), "--out", str(npz)]) == 0
    assert f"({np.dtype(dtype).name})" in capsys.readouterr().out
    with np.load(npz) as z:
        assert z["invariant"].dtype == dtype and z["covariant"].dtype == dtype
        assert z["offsets"].tolist() == [0, 12, 12, 15]
    out = tmp_path / "forces.npy"
    proc = _example(model_path, npz, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "structure 1: 0 atoms" in proc.stdout
    forces = np.load(out)
    assert forces.dtype == dtype and forces.shape == (15, 3)
    model = ForceModel.load(model_path)
    expected = np.concatenate([model.forces(a) for a in structures])
    np.testing.assert_allclose(forces, expected, rtol=0, atol=tol * np.abs(expected).max())
    # an explicit --dtype wins over the model's
    assert cli(["featurize", str(path), "--model", str(model_path), "--out", str(npz), "--dtype", "float32"]) == 0
    with np.load(npz) as z:
        assert z["invariant"].dtype == np.float32


def test_example_refuses_inputs_that_disagree(model_path, frames, tmp_path):
    """The graph itself does not check that its three inputs describe the same atoms, nor the species indices:
    the example does, before onnxruntime runs."""
    path, _ = frames
    npz = tmp_path / "features.npz"
    assert cli(["featurize", str(path), "--model", str(model_path), "--out", str(npz)]) == 0
    with np.load(npz) as z:
        feats = {k: z[k] for k in z.files}
    cases = {
        "rows.npz": (dict(species=feats["species"][:-1]), "disagree on the atoms"),
        "index.npz": (dict(species=np.where(np.arange(15) == 2, 7, feats["species"])), "species indices must lie"),
        "width.npz": (dict(invariant=feats["invariant"][:, :-1]), "the model takes invariant"),
    }
    for name, (change, match) in cases.items():
        np.savez(tmp_path / name, **{**feats, **change, "spec": feats["spec"]})
        proc = _example(model_path, tmp_path / name)
        assert proc.returncode == 2 and match in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr  # one line, as the fastfeat commands
    proc = _example("peo", npz)  # a bundled model's name is not a file here
    assert proc.returncode == 2 and "model 'peo' is not a file" in proc.stderr, proc.stderr
