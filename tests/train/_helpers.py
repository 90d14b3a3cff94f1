"""Shared helpers of the training tests: random features of the documented shapes."""

import numpy as np
import torch

import fastfeat
from fastfeat.train.data import FeatureSet
from fastfeat.train.model import StaggeredNetwork


def small_spec(species=("H", "O")):
    """A small FeatureSpec (few features) to keep tests fast."""
    return fastfeat.FeatureSpec(species=species, cutoff=4.0, angular_cutoff=3.0,
                                radial=[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)],
                                angular=[(0.05, 1.0, 1.0), (0.05, 1.0, -1.0)],
                                covariant=[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)])


def quiet(msg):
    """A training log that drops every line."""


def random_train_val(n_train, n_val, seed=0):
    """(small_spec(), training set, validation set) of random features, the sets drawn in turn from one seed."""
    rng = np.random.default_rng(seed)
    spec = small_spec()
    return spec, random_features(spec, n_train, rng), random_features(spec, n_val, rng)


def random_features(spec, n_structures, rng, atoms=(3, 8), basis_target=True):
    """FeatureSet with random invariants/covariants and a learnable covariant target."""
    counts = rng.integers(atoms[0], atoms[1], n_structures)
    n = int(counts.sum())
    g = rng.random((n, spec.n_invariant)).astype(np.float32)
    v = rng.normal(size=(n, spec.n_covariant, 3)).astype(np.float32)
    s = rng.integers(0, spec.n_species, n).astype(np.int64)
    k = spec.n_covariant
    assert spec.n_invariant >= k
    c = (0.5 - s[:, None]) * (1.0 + g[:, :k])
    t = np.einsum("nk,nkc->nc", c, v) if basis_target else rng.normal(size=(n, 3))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return FeatureSet(g, v, s, offsets, t.astype(np.float32))


def random_model(spec, head="projection", dtype=torch.float32, seed=0, activation="silu", hidden=(16, 16), gram=True):
    """A StaggeredNetwork with random weights and non-trivial statistics."""
    torch.manual_seed(seed)
    model = StaggeredNetwork(spec, hidden=hidden, head=head, activation=activation, gram=gram).to(dtype)
    fs = random_features(spec, 20, np.random.default_rng(seed))
    model.set_statistics(fs.invariant, fs.covariant, fs.species, fs.target)
    model.eval()
    return model


def random_rotation(rng):
    """A uniformly random proper rotation matrix (3, 3), float64."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
