"""Jacobian asymmetry and NVE drift with known force fields; check-conservation CLI."""

from __future__ import annotations

import json

import numpy as np
from ase import Atoms

from fastfeat.runtime import conservation
from fastfeat.runtime.conservation import jacobian, jacobian_asymmetry, nve_drift


def _linear_force(k_matrix, x0):
    """F = -K (x - x0) on the flattened coordinates: J = K exactly."""

    def f(x):
        return -(k_matrix @ (x - x0).ravel()).reshape(-1, 3)

    return f


def _atoms(n, seed=0):
    rng = np.random.default_rng(seed)
    return Atoms("H" * n, positions=rng.uniform(0, 6, (n, 3)))


def test_jacobian_of_linear_force_is_exact():
    atoms = _atoms(5)
    rng = np.random.default_rng(1)
    k = rng.standard_normal((15, 15))
    jac = jacobian(_linear_force(k, atoms.positions), atoms.positions, np.arange(5), h=0.01)
    np.testing.assert_allclose(jac, k, atol=1e-9)
    sub = jacobian(_linear_force(k, atoms.positions), atoms.positions, np.array([1, 3]), h=0.01)
    rows = np.r_[3:6, 9:12]
    np.testing.assert_allclose(sub, k[np.ix_(rows, rows)], atol=1e-9)


def test_lambda_zero_for_conservative_and_known_for_curl():
    atoms = _atoms(6, seed=2)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((18, 18))
    sym = a @ a.T + 18 * np.eye(18)  # a Hessian: conservative
    anti = 0.3 * (a - a.T)
    res = jacobian_asymmetry(_linear_force(sym, atoms.positions), atoms)
    assert res["lambda"] < 1e-10 and res["atoms_used"] == 6
    res = jacobian_asymmetry(_linear_force(sym + anti, atoms.positions), atoms)
    expected = np.linalg.norm(anti) / np.linalg.norm(sym + anti)
    np.testing.assert_allclose(res["lambda"], expected, rtol=1e-8)


def test_lambda_block_for_large_structures():
    atoms = _atoms(30, seed=4)
    res = jacobian_asymmetry(_linear_force(np.eye(90), atoms.positions), atoms, max_atoms=7)
    assert res["atoms_used"] == 7 and res["lambda"] < 1e-10


def test_model_lambda_is_positive(model, water):
    """The untrained basis test model is not a gradient field."""
    res = jacobian_asymmetry(model, water, max_atoms=6)
    assert 1e-3 < res["lambda"] < 1.0


def test_nve_drift_conservative_vs_heating():
    atoms = _atoms(20, seed=5)
    k = 4.0 * np.eye(60)
    calm = nve_drift(_linear_force(k, atoms.positions), atoms, steps=400, dt=1.0, temperature=300.0)
    assert abs(calm["drift_K_per_ps"]) < 60.0  # harmonic: temperature oscillates, no trend
    assert abs(calm["integration_drift_eV_per_atom_per_ps"]) < 1e-3
    assert calm["stopped_at"] is None and calm["doubling_time_ps"] is None

    def pumping(x):  # a velocity-independent force that heats: negative damping via a curl
        d = x - atoms.positions
        f = -4.0 * d
        f[:, 0] += 3.0 * d[:, 1]
        f[:, 1] -= 3.0 * d[:, 0]
        return f

    hot = nve_drift(pumping, atoms, steps=400, dt=1.0, temperature=300.0)
    assert hot["drift_K_per_ps"] > 10 * max(abs(calm["drift_K_per_ps"]), 10.0), (hot, calm)
    assert 0 < hot["doubling_time_ps"] < 0.4


def test_check_conservation_cli_json(model_path, water_file, capsys):
    rc = conservation.main([str(model_path), str(water_file), "--json", "--nve-steps", "100", "--max-atoms", "4"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_atoms"] == 24 and report["jacobian"]["atoms_used"] == 4
    assert report["jacobian"]["lambda"] > 0 and "drift_K_per_ps" in report["nve"]
    assert "thermostat" in report["advice"] or "Langevin" in report["advice"]
    rc = conservation.main([str(model_path), str(water_file), "--nve-steps", "50", "--max-atoms", "2"])
    assert rc == 0
    assert "Jacobian asymmetry" in capsys.readouterr().out


def test_check_conservation_cli_error(model_path, capsys):
    assert conservation.main([str(model_path), "no-such-structure.xyz"]) == 2
    assert "neither a file nor a bundled data set" in capsys.readouterr().err
