"""Fixtures for the runtime tests: a small FeatureSpec, contract-following ONNX
test models (built with onnx.helper, see _models.py) and small structures."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from ase import Atoms

import fastfeat

sys.path.insert(0, os.path.dirname(__file__))
from _models import make_basis_model, with_metadata  # noqa: E402


@pytest.fixture(scope="session")
def spec():
    """A small H/O spec (fast to featurize): 2x4 G2, 3x2 G4, 2x3 V."""
    return fastfeat.FeatureSpec(
        species=("H", "O"),
        cutoff=4.0,
        angular_cutoff=3.0,
        radial=[(1.0, 0.8), (1.0, 1.6), (1.0, 2.4), (1.0, 3.2)],
        angular=[(0.05, 1.0, 1.0), (0.05, 1.0, -1.0)],
        covariant=[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)],
    )


@pytest.fixture(scope="session")
def model_path(spec, tmp_path_factory):
    return make_basis_model(tmp_path_factory.mktemp("models") / "basis32.onnx", spec)


@pytest.fixture(scope="session")
def model64_path(spec, tmp_path_factory):
    return make_basis_model(tmp_path_factory.mktemp("models") / "basis64.onnx", spec, dtype="float64")


@pytest.fixture(scope="session")
def dipole_model_path(model_path, tmp_path_factory):
    """The float32 test model relabelled as a "dipole" model (metadata `fastfeat.target`)."""
    return with_metadata(model_path, tmp_path_factory.mktemp("models") / "dipole.onnx", target="dipole")


@pytest.fixture(scope="session")
def model(model_path):
    from fastfeat.runtime import ForceModel

    return ForceModel.load(model_path)


def random_water_box(n_molecules=8, box=6.5, seed=0, pbc=True):
    """Water-like H/O structure: O on a jittered grid, two H at ~0.97 Å each."""
    rng = np.random.default_rng(seed)
    m = int(np.ceil(n_molecules ** (1 / 3)))
    grid = (np.indices((m, m, m)).reshape(3, -1).T[:n_molecules] + 0.5) * (box / m)
    positions, symbols = [], []
    for o in grid:
        o = o + rng.uniform(-0.2, 0.2, 3)
        u = rng.standard_normal((2, 3))
        u /= np.linalg.norm(u, axis=1)[:, None]
        positions += [o, o + 0.97 * u[0], o + 0.97 * u[1]]
        symbols += ["O", "H", "H"]
    return Atoms(symbols, positions=positions, cell=np.eye(3) * box if pbc else None, pbc=pbc)


@pytest.fixture
def water():
    return random_water_box()


@pytest.fixture(scope="session")
def water_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("structures") / "water.extxyz"
    random_water_box().write(path)
    return path
