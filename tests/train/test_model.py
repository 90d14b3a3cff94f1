"""StaggeredNetwork: head arithmetic, per-element dispatch, symmetry (PyTorch side)."""

import numpy as np
import pytest
import torch

from fastfeat.train.model import StaggeredNetwork, basis_force, projection_force, solve3_adjugate

from ._helpers import random_features, random_model, random_rotation, small_spec


def test_solve3_adjugate_matches_linalg_solve():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(50, 3, 3)) + 3 * np.eye(3), dtype=torch.float64)
    b = torch.tensor(rng.normal(size=(50, 3)), dtype=torch.float64)
    x = solve3_adjugate(a, b)
    ref = torch.linalg.solve(a, b)
    np.testing.assert_allclose(x.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)


def test_projection_head_recovers_consistent_force():
    # p_k = F . V_k exactly -> the least-squares solve returns F (up to the tiny regulariser)
    rng = np.random.default_rng(2)
    v = torch.tensor(rng.normal(size=(40, 6, 3)), dtype=torch.float64)
    f = torch.tensor(rng.normal(size=(40, 3)), dtype=torch.float64)
    p = torch.einsum("nkc,nc->nk", v, f)
    out = projection_force(p, v, eps_rel=1e-12, eps_abs=1e-12)
    np.testing.assert_allclose(out.numpy(), f.numpy(), rtol=1e-8, atol=1e-9)


def test_projection_head_regulariser_is_relative_to_trace():
    # scaling V by s and p by s (F fixed) leaves the force unchanged: eps is unit-aware
    rng = np.random.default_rng(3)
    v = torch.tensor(rng.normal(size=(10, 4, 3)), dtype=torch.float64)
    p = torch.tensor(rng.normal(size=(10, 4)), dtype=torch.float64)
    f1 = projection_force(p, v, eps_rel=0.1, eps_abs=1e-30)
    f2 = projection_force(p * 1e3, v * 1e3, eps_rel=0.1, eps_abs=1e-30)
    np.testing.assert_allclose(f1.numpy(), f2.numpy(), rtol=1e-10)


def test_symmetric_site_gives_zero_force_and_rank_deficient_site_stays_on_axis():
    v = torch.zeros(2, 4, 3, dtype=torch.float64)
    v[1, :, 2] = torch.tensor([1.0, -0.5, 0.3, 2.0])  # all V along z: only F_z is determined
    p = torch.ones(2, 4, dtype=torch.float64)
    f = projection_force(p, v)
    assert torch.all(torch.isfinite(f))
    assert torch.all(f[0] == 0)
    assert f[1, 0] == 0 and f[1, 1] == 0 and f[1, 2] != 0


def test_basis_head_is_linear_combination():
    rng = np.random.default_rng(4)
    v = torch.tensor(rng.normal(size=(7, 5, 3)))
    c = torch.tensor(rng.normal(size=(7, 5)))
    np.testing.assert_allclose(basis_force(c, v).numpy(), np.einsum("nk,nkc->nc", c.numpy(), v.numpy()), rtol=1e-12)


@pytest.mark.parametrize("head", ["projection", "basis"])
def test_each_atom_uses_only_its_own_element_network(head):
    spec = small_spec(("H", "O", "Li"))
    model = random_model(spec, head=head, dtype=torch.float64)
    fs = random_features(spec, 5, np.random.default_rng(5))
    args = (torch.tensor(fs.invariant, dtype=torch.float64), torch.tensor(fs.covariant, dtype=torch.float64),
            torch.tensor(fs.species))
    with torch.no_grad():
        f0 = model(*args)
        for prm in model.nets[1].parameters():
            prm.add_(0.5)
        f1 = model(*args)
    changed = (f0 - f1).abs().sum(dim=1) > 0
    assert torch.equal(changed, torch.tensor(fs.species == 1)), "only species-1 atoms may change"


def test_each_element_network_runs_only_on_its_atoms():
    spec = small_spec(("H", "O"))
    model = random_model(spec, dtype=torch.float64)
    seen = {}
    for e, net in enumerate(model.nets):
        net[0].register_forward_hook(lambda mod, inp, out, e=e: seen.__setitem__(e, inp[0].shape[0]))
    sp = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        model(torch.rand(5, spec.n_invariant, dtype=torch.float64),
              torch.rand(5, spec.n_covariant, 3, dtype=torch.float64), sp)
    assert seen == {0: 2, 1: 3}


@pytest.mark.parametrize("head", ["projection", "basis"])
def test_rotation_covariance_torch(head):
    spec = small_spec()
    model = random_model(spec, head=head, dtype=torch.float64)
    fs = random_features(spec, 4, np.random.default_rng(6))
    rng = np.random.default_rng(7)
    g = torch.tensor(fs.invariant, dtype=torch.float64)
    v = torch.tensor(fs.covariant, dtype=torch.float64)
    s = torch.tensor(fs.species)
    with torch.no_grad():
        f = model(g, v, s).numpy()
        for _ in range(5):
            rot = random_rotation(rng)
            fr = model(g, v @ torch.tensor(rot.T), s).numpy()
            np.testing.assert_allclose(fr, f @ rot.T, rtol=1e-9, atol=1e-11, err_msg=f"rotation {rot.tolist()}")


def test_statistics_standardise_per_element():
    spec = small_spec()
    model = StaggeredNetwork(spec, hidden=(8,)).double()
    fs = random_features(spec, 30, np.random.default_rng(8))
    fs.invariant[fs.species == 1] *= 10.0
    model.set_statistics(fs.invariant, fs.covariant, fs.species, fs.target)
    inputs = model.network_inputs(torch.tensor(fs.invariant, dtype=torch.float64),
                                  torch.tensor(fs.covariant, dtype=torch.float64)).numpy()
    for e in range(2):
        ge = inputs[fs.species == e]
        x = (ge - model.feature_mean[e].numpy()) / model.feature_std[e].numpy()
        np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-4)
    proj = np.einsum("nkc,nc->nk", fs.covariant[fs.species == 0], fs.target[fs.species == 0])
    np.testing.assert_allclose(model.output_scale[0].numpy(), np.sqrt((proj**2).mean(axis=0)), rtol=1e-5)


def test_basis_scale_of_an_empty_covariant_column_stays_bounded():
    # a covariant column that the training data (almost) never populates -- a distance shell no
    # pair reaches -- must not get an output scale ~ 1/RMS|V_k|: one neighbour in that shell at
    # inference would multiply an untrained coefficient by it (seen: forces of 1e5 eV/Å)
    from fastfeat.train.model import BASIS_V_FLOOR

    spec = small_spec()
    model = StaggeredNetwork(spec, hidden=(8,), head="basis").double()
    fs = random_features(spec, 40, np.random.default_rng(9))
    fs.covariant[:, 0, :] *= 1e-9
    model.set_statistics(fs.invariant, fs.covariant, fs.species, fs.target)
    for e in range(2):
        m = fs.species == e
        f_rms = np.sqrt((fs.target[m] ** 2).sum(axis=1).mean())
        v_rms = np.sqrt((fs.covariant[m] ** 2).sum(axis=2).mean(axis=0))
        scale = model.output_scale[e].numpy()
        cap = f_rms / (np.sqrt(spec.n_covariant) * BASIS_V_FLOOR * v_rms.max())
        assert scale[0] <= cap * (1 + 1e-6), (e, scale[0], cap)
        np.testing.assert_allclose(scale[1:], np.where(v_rms[1:] >= BASIS_V_FLOOR * v_rms.max(),
                                                       f_rms / (np.sqrt(spec.n_covariant) * v_rms[1:]), cap),
                                   rtol=1e-6)


def test_constructor_rejects_bad_arguments():
    spec = small_spec()
    with pytest.raises(ValueError, match="`head`"):
        StaggeredNetwork(spec, head="energy")
    with pytest.raises(ValueError, match="`activation`"):
        StaggeredNetwork(spec, activation="relu6")
    with pytest.raises(ValueError, match="`hidden`"):
        StaggeredNetwork(spec, hidden=())


def test_hyperparameters_round_trip():
    spec = small_spec()
    model = StaggeredNetwork(spec, hidden=(8, 4), head="basis", activation="tanh")
    clone = StaggeredNetwork.from_hyperparameters(model.hyperparameters())
    assert clone.hyperparameters() == model.hyperparameters()
    assert clone.spec == spec


def test_network_inputs_gram_entries():
    spec = small_spec()
    k = spec.n_covariant
    rng = np.random.default_rng(9)
    g = torch.tensor(rng.random((4, spec.n_invariant)))
    v = torch.tensor(rng.normal(size=(4, k, 3)))
    with_gram = StaggeredNetwork(spec, gram=True).double()
    plain = StaggeredNetwork(spec, gram=False).double()
    assert plain.n_inputs == spec.n_invariant and with_gram.n_inputs == spec.n_invariant + k * (k + 1) // 2
    assert torch.equal(plain.network_inputs(g, v), g)
    x = with_gram.network_inputs(g, v).numpy()
    np.testing.assert_array_equal(x[:, : spec.n_invariant], g.numpy())
    iu, ju = np.triu_indices(k)
    np.testing.assert_allclose(x[:, spec.n_invariant:], np.einsum("nkc,nkc->nk", v.numpy()[:, iu], v.numpy()[:, ju]),
                               rtol=1e-12)
    assert plain.nets[0][0].in_features == spec.n_invariant


def test_input_clip_bounds_out_of_distribution_inputs():
    spec = small_spec()
    rng = np.random.default_rng(10)
    fs = random_features(spec, 10, rng)
    g = torch.tensor(fs.invariant[:5], dtype=torch.float64)
    v = torch.tensor(fs.covariant[:5], dtype=torch.float64)
    s = torch.tensor(fs.species[:5])
    far = g.clone()
    far[:, 0] += 1e6  # an environment far outside the training range
    outs = {}
    for clip in (5.0, 0.0):
        torch.manual_seed(0)
        model = StaggeredNetwork(spec, hidden=(8,), head="basis", input_clip=clip).double()
        model.set_statistics(fs.invariant, fs.covariant, fs.species, fs.target)
        with torch.no_grad():
            outs[clip] = (model.atom_outputs(g, v, s), model.atom_outputs(far, v, s),
                          (model.network_inputs(g, v) - model.feature_mean[0]) / model.feature_std[0])
    near, far_out, z = outs[5.0]
    # clipped: the output stays within the range the tanh allows; unclipped it explodes
    assert far_out.abs().max() < 100 * near.abs().max()
    assert outs[0.0][1].abs().max() > 1e4 * outs[0.0][0].abs().max()
    # typical inputs are nearly untouched by c·tanh(z/c) with c = 5
    typical = z.abs() < 1
    np.testing.assert_allclose((5 * torch.tanh(z / 5))[typical], z[typical], atol=0.02)
    with pytest.raises(ValueError, match="`input_clip`"):
        StaggeredNetwork(spec, input_clip=-1.0)
