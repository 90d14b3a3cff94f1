"""Jacobian asymmetry and NVE drift with known force fields; check-conservation CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
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

    hot = nve_drift(pumping, atoms, steps=400, dt=1.0, temperature=300.0, equilibrate_steps=0)
    assert hot["drift_K_per_ps"] > 10 * max(abs(calm["drift_K_per_ps"]), 10.0), (hot, calm)
    assert 0 < hot["doubling_time_ps"] < 0.4


def test_check_conservation_cli_json(model_path, water_file, capsys):
    rc = conservation.main([str(model_path), str(water_file), "--json", "--nve-steps", "100", "--max-atoms", "4"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_atoms"] == 24 and report["jacobian"]["atoms_used"] == 4
    assert report["jacobian"]["lambda"] > 0 and "drift_K_per_ps" in report["nve"]
    # the advice follows the measurement: above lambda 0.01 it must call the forces non-conservative
    if report["jacobian"]["lambda"] >= 0.01:
        assert "non-conservative" in report["advice"] or "unstable" in report["advice"], report
    else:
        assert "close to conservative" in report["advice"], report
    rc = conservation.main([str(model_path), str(water_file), "--nve-steps", "50", "--max-atoms", "2"])
    assert rc == 0
    assert "Jacobian asymmetry" in capsys.readouterr().out


def test_check_conservation_cli_error(model_path, capsys):
    assert conservation.main([str(model_path), "no-such-structure.xyz"]) == 2
    assert "neither a file nor a bundled data set" in capsys.readouterr().err


# ------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, message", [
    ({"h": 0}, "`h` must be a finite number > 0"),
    ({"h": -0.01}, "`h` must be a finite number > 0"),
    ({"h": float("nan")}, "`h` must be a finite number > 0"),
    ({"h": float("inf")}, "`h` must be a finite number > 0"),
    ({"max_atoms": 0}, "`max_atoms` must be an int >= 1"),
    ({"max_atoms": -3}, "`max_atoms` must be an int >= 1"),
    ({"nve_steps": -1}, "`nve_steps` must be an int >= 0"),
    ({"nve_steps": 1}, "`nve_steps` must be 0 .* or an int >= 2"),
])
def test_check_conservation_validates_before_any_force_call(kwargs, message):
    calls = []

    def f(x):
        calls.append(1)
        return -x

    with pytest.raises(ValueError, match=message):
        conservation.check_conservation(f, _atoms(4), **kwargs)
    assert not calls


def test_lower_level_functions_validate():
    atoms = _atoms(4)
    f = _linear_force(np.eye(12), atoms.positions)
    with pytest.raises(ValueError, match="`h` must be a finite number > 0"):
        jacobian(f, atoms.positions, np.arange(4), h=0.0)
    with pytest.raises(ValueError, match="`h` must be a finite number > 0"):
        jacobian_asymmetry(f, atoms, h=-1.0)
    with pytest.raises(ValueError, match="`max_atoms` must be an int >= 1, got 0"):
        jacobian_asymmetry(f, atoms, max_atoms=0)
    with pytest.raises(TypeError, match="`max_atoms` must be an int, got float"):
        jacobian_asymmetry(f, atoms, max_atoms=2.5)
    with pytest.raises(ValueError, match="`steps` must be an int >= 2"):
        nve_drift(f, atoms, steps=0)


def test_nve_steps_zero_skips_the_nve_run():
    atoms = _atoms(6, seed=2)
    report = conservation.check_conservation(_linear_force(np.eye(18), atoms.positions), atoms, nve_steps=0)
    assert report["nve"] is None
    assert report["jacobian"]["lambda"] < 1e-10
    assert "NVE drift not measured" in report["advice"]


@pytest.mark.parametrize("args, message", [
    (["--h", "0"], "`--h` must be a finite number > 0"),
    (["--max-atoms", "0"], "`--max-atoms` must be an int >= 1, got 0"),
    (["--max-atoms", "-3"], "`--max-atoms` must be an int >= 1, got -3"),
    (["--nve-steps", "1"], "`--nve-steps` must be 0 (skip the NVE run) or an int >= 2"),
])
def test_check_conservation_cli_bad_options(model_path, water_file, capsys, args, message):
    assert conservation.main([str(model_path), str(water_file), *args]) == 2
    captured = capsys.readouterr()
    assert f"fastfeat check-conservation: error: {message}" in captured.err
    assert "nan" not in captured.out.lower() and "advice" not in captured.out


def test_check_conservation_cli_skip_nve(model_path, water_file, capsys):
    assert conservation.main([str(model_path), str(water_file), "--nve-steps", "0", "--max-atoms", "2"]) == 0
    out = capsys.readouterr().out
    assert "NVE drift: skipped (--nve-steps 0)" in out and "nan" not in out.lower()
    assert conservation.main([str(model_path), str(water_file), "--nve-steps", "0", "--max-atoms", "2",
                              "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nve"] is None


def test_nve_drift_is_not_cut_by_the_temperature_guard():
    """Runaway heating is what nve_drift measures: it must run past 5000 K (unlike production MD)."""
    atoms = _atoms(10, seed=5)
    x0 = atoms.positions.copy()

    def pumping(x):
        d = x - x0
        f = -4.0 * d
        f[:, 0] += 6.0 * d[:, 1]
        f[:, 1] -= 6.0 * d[:, 0]
        return f

    res = nve_drift(pumping, atoms, steps=30, dt=1.0, temperature=300.0, equilibrate_steps=0)
    assert res["stopped_at"] is None and res["temperature_end_K"] > 5000.0, res


def test_non_force_model_refused(dipole_model_path, water, water_file, capsys):
    with pytest.raises(ValueError, match="predicts 'dipole', not forces"):
        conservation.check_conservation(dipole_model_path, water, nve_steps=10, max_atoms=2)
    with pytest.raises(ValueError, match="predicts 'dipole', not forces"):
        jacobian_asymmetry(dipole_model_path, water, max_atoms=2)
    assert conservation.main([str(dipole_model_path), str(water_file)]) == 2
    assert "predicts 'dipole', not forces" in capsys.readouterr().err


def test_nve_drift_starts_from_an_equilibrated_state():
    """A conservative system started at its minimum with fresh velocities loses half its kinetic energy to
    the springs while it settles in: read as drift without the Langevin equilibration, not with it. The
    springs join every pair of atoms (translation invariant, as a model's forces are: the centre of mass
    moves freely, and the NVE run starts without its motion). After equilibration what remains is the
    thermal fluctuation of the kinetic energy, whose slope over 50 fs varies from seed to seed: averaged
    over four seeds."""
    n = 48
    atoms = Atoms("C" * n, positions=np.random.default_rng(6).uniform(0, 9, (n, 3)))
    laplacian = n * np.eye(n) - np.ones((n, n))  # internal modes: eigenvalue n
    force = _linear_force(np.kron(0.5 / n * laplacian, np.eye(3)), atoms.positions)  # period ~100 fs for carbon
    fresh = nve_drift(force, atoms, steps=400, dt=0.5, temperature=300.0, equilibrate_steps=0, fit_ps=0.05)
    settled = [nve_drift(force, atoms, steps=400, dt=0.5, temperature=300.0, equilibrate_steps=2000, fit_ps=0.05,
                         seed=seed) for seed in range(4)]
    assert fresh["drift_K_per_ps"] < -1000.0, fresh
    mean_settled = np.mean([abs(s["drift_K_per_ps"]) for s in settled])
    assert mean_settled < 0.3 * abs(fresh["drift_K_per_ps"]), (fresh, settled)
    assert all(s["equilibrate_steps"] == 2000 for s in settled)


def _strict_json(text):
    """json.loads that refuses NaN and Infinity, as strict parsers do."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_nve_drift_reports_bad_initial_forces():
    """Forces already too large at the start of the NVE run: reported as a stop at step 0 (no exception,
    nothing recorded, so the temperatures and drifts are undefined)."""
    atoms = _atoms(4)
    out = nve_drift(lambda x: np.full_like(x, 5000.0), atoms, steps=10, equilibrate_steps=0)
    assert out["stopped_at"] == 0 and "initial forces are too large" in out["stop_reason"]
    assert out["steps"] == 0 and np.isnan(out["temperature_start_K"]) and np.isnan(out["drift_K_per_ps"])
    report = conservation.check_conservation(lambda x: np.full_like(x, 5000.0), atoms, nve_steps=10,
                                             equilibrate_steps=0, max_atoms=2)
    assert "unstable" in report["advice"]


def test_nve_drift_reports_a_failing_warm_up():
    """A model that fails already in the Langevin warm-up: reported (the Jacobian part stands), not raised."""
    atoms = _atoms(4)
    calls = []

    def force(x):
        calls.append(1)
        return np.zeros_like(x) if len(calls) < 5 else np.full_like(x, np.nan)

    out = nve_drift(force, atoms, steps=10, equilibrate_steps=20)
    assert out["stopped_at"] == 4 and "Langevin warm-up" in out["stop_reason"] and "step 4 of 20" in out["stop_reason"]
    assert out["steps"] == 0 and np.isnan(out["temperature_end_K"])


def test_nve_run_starts_without_centre_of_mass_motion():
    """The Langevin velocities carry centre-of-mass motion; the NVE temperature counts 3N - 3 degrees of
    freedom, so the NVE run starts from the velocities with that motion removed (free particles: the NVE
    temperature is that of the warm-up's internal motion, exactly)."""
    from fastfeat.runtime.md import MolecularDynamics, temperature

    atoms = Atoms("C2O2", positions=np.random.default_rng(3).uniform(0, 8, (4, 3)))
    zero = lambda x: np.zeros_like(x)  # noqa: E731
    eq = MolecularDynamics(zero, atoms.positions, atoms.get_masses(), dt=0.5, temperature=300.0,
                           ensemble="langevin", friction=0.05, seed=7)
    eq.run(200, every=200)
    m = atoms.get_masses()
    v = eq.v - (m @ eq.v) / m.sum()
    out = nve_drift(zero, atoms, steps=10, dt=0.5, temperature=300.0, seed=7, equilibrate_steps=200)
    assert out["temperature_start_K"] == pytest.approx(temperature(v, m, 9), rel=1e-12)
    assert out["temperature_start_K"] < temperature(eq.v, m, 9)  # the motion of the centre removed


def test_undefined_lambda_is_reported_and_json_is_strict(tmp_path, capsys):
    """Atoms beyond each other's cutoff: every force is zero, λ = 0/0. The advice says so, and --json writes
    null (valid JSON), not NaN."""
    path = tmp_path / "far.xyz"
    Atoms("CO", positions=[[0, 0, 0], [20, 0, 0]]).write(path)
    assert conservation.main(["peo", str(path), "--json", "--nve-steps", "20", "--equilibrate-steps", "10"]) == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["jacobian"]["lambda"] is None and report["jacobian"]["norm_J"] == 0.0
    assert report["advice"].startswith("λ is undefined"), report["advice"]
    assert conservation.main(["peo", str(path), "--nve-steps", "0"]) == 0
    assert "λ = ‖J_anti‖/‖J‖ = n/a" in capsys.readouterr().out


def test_jacobian_block_is_compact():
    """Above max_atoms, the block is the atoms nearest to one centre (their couplings carry the asymmetry)."""
    from fastfeat.runtime.conservation import _compact_block

    line = Atoms("H" * 30, positions=[[1.1 * k, 0.0, 0.0] for k in range(30)])
    idx = _compact_block(line, 6, seed=0)
    assert len(idx) == 6 and np.ptp(idx) == 5  # six consecutive atoms of the chain
    periodic = Atoms("H" * 30, positions=[[1.0 * k + 0.5, 0.0, 0.0] for k in range(30)], cell=[30, 5, 5], pbc=True)
    for seed in range(5):  # minimum image: a block at the end of the cell wraps to its start
        idx = _compact_block(periodic, 6, seed)
        gaps = np.sort(np.diff(np.sort(idx)))
        assert gaps[:-1].max() == 1 and gaps[-1] in (1, 25), idx


def test_advice_does_not_read_thermal_noise_as_heating():
    """Conservative EMT copper (λ ~ 1e-5) read -115 to +51 K/ps of NVE drift over 0.25 ps at 32 atoms: noise,
    which the advice called 'measurably non-conservative' in 5 of 6 seeds."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    work = atoms.copy()
    work.calc = EMT()

    def emt(x):
        work.set_positions(x)
        return work.get_forces()

    for seed in (0, 1, 2):
        report = conservation.check_conservation(emt, atoms, seed=seed, nve_steps=500, equilibrate_steps=200)
        assert report["jacobian"]["lambda"] < 1e-3
        assert report["advice"].startswith("forces are close to conservative"), (seed, report["nve"], report["advice"])
    # the resolvable drift: 5 K/ps at least, else twice the equilibrium fluctuation of T over the fit window
    nve = {"temperature_start_K": 300.0, "fit_ps": 0.25}
    assert conservation.resolvable_drift(nve, 32) == pytest.approx(2 * 300 * np.sqrt(2 / 93) / 0.25)
    assert conservation.resolvable_drift(nve, 10 ** 7) == 5.0
    # a drift above it with a symmetric Jacobian is still called out
    assert "non-conservative" in conservation._advice(1e-5, dict(nve, drift_K_per_ps=400.0, stopped_at=None), 32)


def test_cli_checks_dt_temperature_seed_first(model_path, water_file, capsys, monkeypatch):
    """--dt, --temperature and --seed were checked after the model loaded and the Jacobian ran, under their
    Python names (and a negative seed with a small block gave numpy's message)."""
    from fastfeat.runtime import model as model_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(model_module, "resolve_model", no_loading)
    for opts, match in ((["--dt", "0"], "`--dt` must be a finite number > 0"),
                        (["--temperature", "-1"], "`--temperature` must be a finite number >= 0"),
                        (["--seed", "-1"], "`--seed` must be an int >= 0")):
        assert conservation.main([str(model_path), str(water_file), "--max-atoms", "4", *opts]) == 2
        err = capsys.readouterr().err
        assert match in err and "`dt`" not in err, (opts, err)
