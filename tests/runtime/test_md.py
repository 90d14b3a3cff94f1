"""MD engine: integrators with known force functions, units, stops, outputs, CLI."""

from __future__ import annotations

import os
import re
import signal

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import Calculator as ASECalculator
from ase.md.verlet import VelocityVerlet

from fastfeat.runtime import MDInstabilityError, Interrupted, MolecularDynamics, run_md
from fastfeat.runtime import md_cli
from fastfeat.runtime.md import ExtxyzWriter, maxwell_boltzmann, temperature


class Harmonic:
    """F = -k (x - x0), per-atom spring constants k (eV/Å²)."""

    def __init__(self, x0, k):
        self.x0 = np.array(x0, dtype=np.float64)
        self.k = np.asarray(k, dtype=np.float64)[:, None]
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return -self.k * (x - self.x0)

    def energy(self, x):
        return 0.5 * float((self.k * (x - self.x0) ** 2).sum())


def _system(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 10, (n, 3))
    masses = rng.uniform(1.0, 30.0, n)
    k = rng.uniform(1.0, 6.0, n)
    return Harmonic(x0, k), x0, masses


def test_nve_conserves_energy_of_harmonic_system():
    f, x0, masses = _system()
    md = MolecularDynamics(f, x0 + 0.05, masses, dt=0.5, temperature=300.0, ensemble="nve", seed=1)
    assert md.current_temperature() == pytest.approx(300.0)
    result = md.run(4000, every=20)
    # true energy from the recorded kinetic energy and positions is not in the log,
    # KE - work must equal KE + U - U(start) for a conservative force
    conserved = result.log["ke_minus_work_eV"]
    ke = result.log["kinetic_eV"]
    assert np.ptp(conserved) < 2e-3 * ke.mean(), (np.ptp(conserved), ke.mean())
    u_end = f.energy(result.positions)
    u_start = f.energy(x0 + 0.05)
    ke_end = 0.5 * float((masses[:, None] * result.velocities ** 2).sum()) / units.fs ** 2
    np.testing.assert_allclose(ke_end + u_end, ke[0] + u_start, rtol=2e-3)
    np.testing.assert_allclose(conserved[-1], ke_end + u_end - u_start, rtol=1e-3)
    # energy flows between kinetic and potential: equipartition halves the temperature
    assert 0.3 < result.log["temperature_K"][50:].mean() / 300.0 < 0.7


def test_nve_matches_ase_velocity_verlet():
    """Units check: positions Å, velocities Å/fs, masses amu, forces eV/Å, dt fs."""
    f, x0, masses = _system(n=10, seed=3)
    v0_fs = np.random.default_rng(4).standard_normal((10, 3)) * 0.01  # Å/fs
    md = MolecularDynamics(f, x0 + 0.1, masses, dt=1.0, ensemble="nve", velocities=v0_fs)
    ours = md.run(50, every=50)

    class HarmonicASE(ASECalculator):
        implemented_properties = ["forces", "energy"]

        def calculate(self, atoms=None, properties=("forces",), system_changes=()):
            super().calculate(atoms, properties, system_changes)
            self.results = {"forces": f(atoms.positions), "energy": f.energy(atoms.positions)}

    atoms = Atoms("H10", positions=x0 + 0.1, masses=masses)
    atoms.set_velocities(v0_fs / units.fs)
    atoms.calc = HarmonicASE()
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(50)
    np.testing.assert_allclose(ours.positions, atoms.positions, atol=1e-10)
    np.testing.assert_allclose(ours.velocities, atoms.get_velocities() * units.fs, atol=1e-12)


def test_langevin_reaches_target_temperature():
    f, x0, masses = _system(n=100, seed=5)
    # start at rest: the thermostat alone must bring the system to 500 K
    md = MolecularDynamics(f, x0, masses, dt=1.0, temperature=500.0, ensemble="langevin", friction=0.02, seed=2,
                            velocities=np.zeros((100, 3)))
    result = md.run(6000, every=10)
    t = result.log["temperature_K"]
    assert t[0] == 0.0
    mean = t[len(t) // 3:].mean()
    assert abs(mean - 500.0) < 25.0, mean


def test_langevin_is_reproducible_with_seed():
    f, x0, masses = _system(n=20, seed=6)
    runs = [MolecularDynamics(f, x0, masses, dt=1.0, temperature=300.0, seed=s).run(100) for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0].positions, runs[1].positions)
    assert not np.array_equal(runs[0].positions, runs[2].positions)


def test_maxwell_boltzmann_initial_velocities():
    masses = np.random.default_rng(0).uniform(1, 50, 200)
    v = maxwell_boltzmann(masses, 350.0, np.random.default_rng(1))
    np.testing.assert_allclose(masses @ v, 0.0, atol=1e-12)
    np.testing.assert_allclose(temperature(v, masses, dof=3 * 200 - 3), 350.0)
    # without rescaling the temperature is near, not at, the target
    v2 = maxwell_boltzmann(masses, 350.0, np.random.default_rng(1), rescale=False)
    assert 300 < temperature(v2, masses) < 400 and temperature(v2, masses) != pytest.approx(350.0, abs=1e-6)


def test_degrees_of_freedom_are_consistent():
    """Initial velocities carry no centre-of-mass motion: the default temperature() (3N - 3) reads the
    target, NVE reports with 3N - 3 whatever remove_net_force (a 13-atom run read 8 % low with 3N),
    Langevin (thermostat on every atom) with 3N, so its step 0 reads (3N - 3) / 3N of the target."""
    n = 13
    masses = np.random.default_rng(3).uniform(1, 30, n)
    v = maxwell_boltzmann(masses, 300.0, np.random.default_rng(4))
    assert temperature(v, masses) == pytest.approx(300.0)
    x0 = np.random.default_rng(5).normal(size=(n, 3)) * 3

    def f(x):
        return -0.1 * x + 0.01  # a net force: remove_net_force changes the dynamics, not the dof
    for remove in (False, True):
        md = MolecularDynamics(f, x0, masses, ensemble="nve", temperature=300.0, remove_net_force=remove)
        assert md.dof == 3 * n - 3 and md.current_temperature() == pytest.approx(300.0)
    md = MolecularDynamics(f, x0, masses, ensemble="langevin", temperature=300.0)
    assert md.dof == 3 * n and md.current_temperature() == pytest.approx(300.0 * (3 * n - 3) / (3 * n))


def test_remove_net_force_conserves_momentum():
    n = 30
    rng = np.random.default_rng(2)
    x0 = rng.uniform(0, 5, (n, 3))
    masses = rng.uniform(1, 20, n)
    push = np.array([0.3, -0.2, 0.1])

    def f(x):
        return -2.0 * (x - x0) + push  # net force n * push

    for remove, conserved in ((True, True), (False, False)):
        md = MolecularDynamics(f, x0, masses, dt=1.0, temperature=100.0, ensemble="nve", remove_net_force=remove)
        r = md.run(200)
        p = masses @ r.velocities
        assert np.allclose(p, 0.0, atol=1e-10) == conserved, p


def _nan_from(step, f):
    state = {"calls": 0}

    def g(x):
        state["calls"] += 1
        out = f(x)
        if state["calls"] > step:  # call 1 is the initial force, call k + 1 is step k
            out = out.copy()
            out[3, 1] = np.nan
        return out

    return g


def test_nan_forces_stop_cleanly_and_keep_last_good_frame(tmp_path):
    f, x0, masses = _system(n=12, seed=8)
    traj, log = tmp_path / "traj.extxyz", tmp_path / "md.log"
    md = MolecularDynamics(_nan_from(58, f), x0, masses, dt=1.0, temperature=300.0,
                           symbols=["H"] * 12, cell=np.eye(3) * 10, pbc=True)
    with pytest.raises(MDInstabilityError, match=r"step 58.*NaN or inf.*last good frame \(step 57\)") as info:
        md.run(200, trajectory=traj, log=log, every=10)
    err = info.value
    assert err.step == 58 and err.result.steps_done == 57 and err.result.stopped_at == 58
    frames = ase.io.read(traj, index=":")
    assert [a.info["step"] for a in frames] == [0, 10, 20, 30, 40, 50, 57]
    last = frames[-1]
    assert np.isfinite(last.positions).all() and np.isfinite(last.get_forces()).all()
    np.testing.assert_allclose(last.positions, err.result.positions, atol=1e-9)
    assert "stopped at step 58" in log.read_text()


def test_exploding_forces_stop(tmp_path):
    f, x0, masses = _system(n=5, seed=9)
    calls = {"n": 0}

    def g(x):
        calls["n"] += 1
        return f(x) * (1e6 if calls["n"] == 31 else 1.0)

    md = MolecularDynamics(g, x0, masses, dt=1.0, temperature=300.0, max_force=500.0)
    with pytest.raises(MDInstabilityError, match=r"step 30.*> max_force=500") as info:
        md.run(100, trajectory=tmp_path / "t.extxyz", every=7)
    assert ase.io.read(tmp_path / "t.extxyz", index=-1).info["step"] == 29


def test_force_call_exception_stops_cleanly(tmp_path):
    f, x0, masses = _system(n=5, seed=9)

    def g(x):
        if g.calls == 4:
            raise ValueError("atoms 1 and 2 are at the same position")
        g.calls += 1
        return f(x)

    g.calls = 0
    md = MolecularDynamics(g, x0, masses, dt=1.0)
    with pytest.raises(MDInstabilityError, match="step 4: the force evaluation failed.*same position"):
        md.run(10)


def test_initial_nan_forces_raise_before_running():
    f, x0, masses = _system(n=5, seed=9)
    md = MolecularDynamics(lambda x: f(x) * np.nan, x0, masses, dt=1.0)
    with pytest.raises(MDInstabilityError, match="initial forces are not finite") as info:
        md.run(10)
    # the error's result says the run stopped, where and why, and that nothing was run or recorded
    r = info.value.result
    assert info.value.step == 0 and r.stopped_at == 0 and r.steps_run == 0 and r.steps_done == 0
    assert r.stop_reason == info.value.reason and "not finite" in r.stop_reason
    assert all(len(col) == 0 for col in r.log.values())
    md = MolecularDynamics(lambda x: np.full_like(x, 5e3), x0, masses, dt=1.0)
    with pytest.raises(MDInstabilityError, match="initial forces are too large") as info:
        md.run(10)
    assert info.value.result.stopped_at == 0 and "max_force" in info.value.result.stop_reason


@pytest.mark.parametrize("bad", [np.inf, np.nan, 0.0, -1.0])
def test_masses_must_be_finite_and_positive(bad):
    f, x0, masses = _system(n=5, seed=9)
    masses[3] = bad
    with pytest.raises(ValueError, match=r"`masses` must be finite and > 0 amu, got .* for atom 3"):
        MolecularDynamics(f, x0, masses)


def test_progress_counts_the_steps_of_this_run():
    import io

    f, x0, masses = _system(n=5, seed=9)
    md = MolecularDynamics(f, x0, masses, dt=1.0)
    md.run(30)
    out = io.StringIO()
    md.run(20, progress=out)
    last = out.getvalue().strip().splitlines()[-1]
    assert last.split()[1] == "20/20", last
    assert md.step == 50


def _unwritable_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores permissions: use sysfs, which refuses new files
        return "/sys"
    return str(ro)


def test_unwritable_output_fails_before_running(tmp_path, water):
    f, x0, masses = _system(n=9, seed=1)
    harmonic = Harmonic(water.positions, np.ones(len(water)))
    bad = os.path.join(_unwritable_dir(tmp_path), "traj.extxyz")
    with pytest.raises(OSError, match="cannot write trajectory `out`.*nothing was run"):
        run_md(harmonic, water, 100, out=bad)
    assert harmonic.calls == 0
    with pytest.raises(OSError, match="does not exist"):
        run_md(harmonic, water, 100, log=tmp_path / "missing" / "md.log")
    a_dir = tmp_path / "dir.extxyz"
    a_dir.mkdir()
    with pytest.raises(OSError, match="cannot write"):
        MolecularDynamics(harmonic, water.positions, water.get_masses()).run(10, trajectory=a_dir)
    assert harmonic.calls == 0


def test_extxyz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x, v, f = rng.standard_normal((3, 4, 3))
    masses = np.array([1.008, 15.999, 12.011, 1.008])
    w = ExtxyzWriter(tmp_path / "a.extxyz", ["H", "O", "C", "H"], masses, np.diag([5.0, 6.0, 7.0]), [True, True, False])
    w.write(3, 1.5, 300.0, x, v, f)
    w.write(4, 2.0, 301.0, x + 1, v, f)
    w.write(2_000_001, 1_000_000.5, 300.000001, x, v, f)  # 1 ns at 0.5 fs: every digit kept
    w.close()
    frames = ase.io.read(tmp_path / "a.extxyz", index=":")
    a = frames[1]
    assert a.get_chemical_symbols() == ["H", "O", "C", "H"]
    np.testing.assert_allclose(a.positions, x + 1, atol=1e-9)
    np.testing.assert_allclose(a.get_velocities() * units.fs, v, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.get_forces(), f, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.cell.array, np.diag([5.0, 6.0, 7.0]))
    assert list(a.pbc) == [True, True, False]
    assert a.info["step"] == 4 and a.info["time_fs"] == 2.0
    # floats stay floats (a temperature of exactly 301 K is not read back as an int)
    assert isinstance(a.info["time_fs"], float) and isinstance(a.info["temperature_K"], float)
    assert a.info["temperature_K"] == 301.0
    assert frames[2].info["time_fs"] == 1_000_000.5 and frames[2].info["temperature_K"] == 300.000001


def test_continued_runs_report_their_own_list_rebuilds():
    """MDResult.n_rebuilds of a second run() counted the force function's builds since its creation (a continued
    benchmark read 3, 4, 6, 7, 8 builds per 20 steps where each call made 1-2)."""
    _f, x0, masses = _system(n=4)

    class Counting:
        n_rebuilds = 0

        def __call__(self, x):  # one "build" per force call
            self.n_rebuilds += 1
            return np.zeros_like(x)

    md = MolecularDynamics(Counting(), x0, masses, ensemble="nve")
    assert md.run(3).n_rebuilds == 4  # the initial forces, then one call per step
    assert md.run(3).n_rebuilds == 3
    assert md.run(0).n_rebuilds == 0


def test_argument_errors():
    f, x0, masses = _system(n=4)
    with pytest.raises(ValueError, match="`ensemble` must be one of"):
        MolecularDynamics(f, x0, masses, ensemble="npt")
    with pytest.raises(ValueError, match="`dt` must be a finite number > 0"):
        MolecularDynamics(f, x0, masses, dt=0)
    with pytest.raises(ValueError, match=r"`masses` must have shape \(4,\)"):
        MolecularDynamics(f, x0, masses[:3])
    with pytest.raises(ValueError, match="`steps` must be an int >= 0"):
        MolecularDynamics(f, x0, masses).run(-1)
    with pytest.raises(TypeError, match="`steps` must be an int, got float 10.0"):
        MolecularDynamics(f, x0, masses).run(10.0)
    with pytest.raises(ValueError, match="`every` must be an int >= 1, got 0"):
        MolecularDynamics(f, x0, masses).run(10, every=0)
    with pytest.raises(TypeError, match="`seed` must be an int, got bool True"):
        MolecularDynamics(f, x0, masses, seed=True)
    # numpy's "expected non-negative integer" came from inside, naming nothing
    with pytest.raises(ValueError, match="`seed` must be an int >= 0, got -1"):
        MolecularDynamics(f, x0, masses, seed=-1)
    # units: a time step in seconds and a friction in 1/s ran without complaint (0.000 ns/day; a velocity
    # re-draw every step)
    with pytest.raises(ValueError, match=r"`dt` is in fs and must be >= 0.001 fs, got 5e-16: a time step in seconds"):
        MolecularDynamics(f, x0, masses, dt=0.5e-15)
    with pytest.raises(ValueError, match=r"`friction` is in 1/fs and must be <= 10 .*got 5e\+13: a friction in 1/ps or 1/s"):
        MolecularDynamics(f, x0, masses, friction=5e13)
    MolecularDynamics(f, x0, masses, dt=1e-3, friction=10.0).run(1)  # the bounds themselves are accepted
    # friction is unused in NVE, but a negative one was a "math domain error" at run()
    with pytest.raises(ValueError, match="`friction` must be a finite number >= 0"):
        MolecularDynamics(f, x0, masses, ensemble="nve", friction=-1.0)
    MolecularDynamics(f, x0, masses, ensemble="nve", friction=0.0).run(2)
    bad = x0.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="`positions` must be finite, got .* for atom 2"):
        MolecularDynamics(f, bad, masses)


def _langevin_noise(md, steps):
    """The noise each Langevin step drew, recovered from the velocities (zero forces: v' = c1 v + s xi)."""
    c1 = np.exp(-md.friction * md.dt)
    s = np.sqrt(1 - c1 * c1) * np.sqrt(units.kB * md.temperature / md.masses)[:, None] * units.fs
    out = []
    for _ in range(steps):
        v = md.v.copy()
        md.run(1, every=1)
        out.append(((md.v - c1 * v) / s).ravel())
    return np.array(out)


def test_restart_draws_new_langevin_noise():
    """A run continued from step s with the same seed (`--keep-velocities`) drew exactly the original run's
    noise, shifted by one step (correlation 1.0); it is now seeded from (seed, s): independent, and still
    reproducible."""
    n = 6
    x0 = np.random.default_rng(0).uniform(0, 10, (n, 3))
    masses = np.full(n, 12.0)
    zero = lambda x: np.zeros_like(x)  # noqa: E731
    a = MolecularDynamics(zero, x0, masses, temperature=300.0, seed=0)
    na = _langevin_noise(a, 40)
    assert np.abs(na.mean()) < 0.3 and 0.7 < na.std() < 1.3  # the recovery is right: unit normal draws
    runs = []
    for _ in range(2):
        b = MolecularDynamics(zero, a.x, masses, temperature=300.0, seed=0, velocities=a.v, step=a.step)
        runs.append(_langevin_noise(b, 40))
    np.testing.assert_array_equal(runs[0], runs[1])
    corr = np.corrcoef(np.vstack([na, runs[0]]))[:40, 40:]
    assert np.abs(corr).max() < 0.95, np.abs(corr).max()


def test_run_md_with_onnx_model(model, water, tmp_path):
    out = tmp_path / "traj.extxyz"
    result = run_md(model, water, 40, dt=0.5, temperature=300.0, out=out, every=10, log=tmp_path / "md.log", seed=3)
    assert result.steps_done == 40 and result.n_rebuilds >= 1
    assert result.atom_steps_per_s > 0 and result.ns_per_day > 0
    frames = ase.io.read(out, index=":")
    assert len(frames) == 5
    np.testing.assert_allclose(frames[-1].get_forces(), model.forces(frames[-1]), rtol=1e-4, atol=1e-5)
    assert len((tmp_path / "md.log").read_text().splitlines()) == 2 + 5


def test_md_cli(model_path, water_file, tmp_path, capsys):
    out = tmp_path / "traj.extxyz"
    rc = md_cli.main([str(model_path), str(water_file), "--steps", "30", "--dt", "0.5", "--temperature", "250",
                      "--every", "10", "--out", str(out), "--ensemble", "nve", "--quiet"])
    assert rc == 0
    assert "atom-steps/s" in capsys.readouterr().out
    frames = ase.io.read(out, index=":")
    assert len(frames) == 4
    # restart from the last frame's velocities, with the progress display on
    restart = tmp_path / "restart.extxyz"
    ase.io.write(restart, frames[-1])
    rc = md_cli.main([str(model_path), str(restart), "--steps", "10", "--dt", "0.5", "--ensemble", "nve",
                      "--keep-velocities", "--every", "10", "--out", str(tmp_path / "t2.extxyz")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "ns/day" in err and "atom-steps/s" in err
    first = ase.io.read(tmp_path / "t2.extxyz", index=0)
    np.testing.assert_allclose(first.get_velocities(), ase.io.read(restart).get_velocities(), rtol=1e-7, atol=1e-12)
    assert not np.allclose(first.get_velocities(), 0.0)
    # the restart continues the frame's step and clock (the frame carries step 30, t = 15 fs)
    assert "continuing from step 30 (t = 15 fs)" in err
    assert [(a.info["step"], a.info["time_fs"]) for a in ase.io.read(tmp_path / "t2.extxyz", index=":")] == \
        [(30, 15.0), (40, 20.0)]
    # ... with another time step too; without --keep-velocities the count starts at 0
    assert md_cli.main([str(model_path), str(restart), "--steps", "10", "--dt", "0.25", "--ensemble", "nve",
                        "--keep-velocities", "--every", "5", "--out", str(tmp_path / "t3.extxyz"), "--quiet"]) == 0
    assert [(a.info["step"], a.info["time_fs"]) for a in ase.io.read(tmp_path / "t3.extxyz", index=":")] == \
        [(30, 15.0), (35, 16.25), (40, 17.5)]
    assert md_cli.main([str(model_path), str(restart), "--steps", "10", "--every", "10", "--out",
                        str(tmp_path / "t4.extxyz"), "--quiet"]) == 0
    assert [a.info["step"] for a in ase.io.read(tmp_path / "t4.extxyz", index=":")] == [0, 10]
    capsys.readouterr()


def test_md_cli_errors(model_path, water_file, tmp_path, capsys):
    assert md_cli.main([str(model_path), str(tmp_path / "nope.xyz"), "--steps", "3"]) == 2
    assert "neither a file nor a bundled data set" in capsys.readouterr().err
    assert md_cli.main([str(model_path), str(water_file), "--steps", "3",
                        "--out", os.path.join(_unwritable_dir(tmp_path), "t.extxyz")]) == 2
    assert "cannot write trajectory --out" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_text("no")
    assert md_cli.main([str(bad), str(water_file), "--steps", "3"]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
    # options are named as options, and refused before the model loads (no extrapolation report first)
    for opts, match in ((["--steps", "-1"], "--steps must be an int >= 0"), (["--every", "0"], "--every must be an int >= 1"),
                        (["--dt", "0"], "--dt must be a finite number > 0"),
                        (["--dt", "0.5e-15"], "--dt is in fs and must be >= 0.001 fs, got 5e-16"),
                        (["--friction", "5e13"], r"--friction is in 1/fs and must be <= 10 .*got 5e\+13"),
                        (["--temperature", "-5"], "--temperature must be a finite number >= 0"),
                        (["--friction", "0"], "--friction must be a finite number > 0"),
                        (["--max-force", "nan"], "--max-force must be a finite number > 0"),
                        (["--max-temperature", "-1"], "--max-temperature must be a number > 0"),
                        (["--threads", "-2"], r"--threads must be an int >= 0 \(0: all cores\)"),
                        (["--skin", "-0.5"], "--skin must be a finite number >= 0"),
                        (["--seed", "-1"], "--seed must be an int >= 0"),
                        (["--friction", "-1", "--ensemble", "nve"], "--friction must be a finite number >= 0"),
                        (["--keep-velocities"], "--keep-velocities, but frame 0 of .* stores no velocities")):
        assert md_cli.main([str(model_path), str(water_file), "--steps", "3", *opts]) == 2, opts
        err = capsys.readouterr().err
        assert re.search(match, err) and "training" not in err and "`" not in err, (opts, err)
    assert md_cli.main([str(model_path), str(water_file), "--steps", "2", "--friction", "0", "--ensemble", "nve",
                        "--quiet"]) == 0
    capsys.readouterr()
    # a friction given with NVE was silently ignored: a note says so (none for the default)
    assert md_cli.main([str(model_path), str(water_file), "--steps", "1", "--friction", "0.3", "--ensemble", "nve"]) == 0
    assert "note: --friction 0.3 is not used with --ensemble nve" in capsys.readouterr().err
    assert md_cli.main([str(model_path), str(water_file), "--steps", "1", "--ensemble", "nve"]) == 0
    assert "--friction" not in capsys.readouterr().err


class _ArrayModuleProxy:
    """Stands in for CuPy: the engine's device branch (``xp is not numpy``) on NumPy arrays."""

    def __getattr__(self, name):
        return getattr(np, name)


def test_device_branch_of_the_engine():
    f, x0, masses = _system(n=40, seed=12)

    class OnDevice(Harmonic):
        xp = _ArrayModuleProxy()

    dev = OnDevice(x0, f.k[:, 0])
    v0 = maxwell_boltzmann(masses, 300.0, np.random.default_rng(0))
    host = MolecularDynamics(f, x0, masses, dt=1.0, ensemble="nve", velocities=v0).run(100)
    moved = MolecularDynamics(dev, x0, masses, dt=1.0, ensemble="nve", velocities=v0).run(100)
    np.testing.assert_array_equal(moved.positions, host.positions)
    langevin = MolecularDynamics(dev, x0, masses, dt=1.0, temperature=400.0, friction=0.05, seed=1).run(3000, every=10)
    assert abs(langevin.log["temperature_K"][100:].mean() - 400.0) < 40.0


def test_fused_host_kernels_equal_the_array_expressions():
    """runtime._integrator does on NumPy arrays what the generic (CuPy) path's array expressions do:
    kicks and drifts bit for bit, the work and sum of m v^2 to rounding, max |F| with NaN and inf."""
    from fastfeat.runtime._integrator import kick_drift, max_abs, work_kick

    rng = np.random.default_rng(5)
    n = 37
    x, v, f = rng.normal(size=(3, n, 3))
    masses = rng.uniform(1.0, 30.0, n)
    kick = (0.25 * masses ** -1)[:, None]
    noise = rng.normal(size=(n, 3))
    scale = rng.uniform(0.01, 0.1, n)[:, None]
    dt, c1 = 0.5, 0.97
    for langevin in (False, True):
        xr, vr = x.copy(), v.copy()
        vr += f * kick
        if langevin:
            xr += vr * (0.5 * dt)
            vr *= c1
            vr += noise * scale
            xr += vr * (0.5 * dt)
        else:
            xr += vr * dt
        xk, vk, x_prev, v_prev = x.copy(), v.copy(), np.empty_like(x), np.empty_like(v)
        kick_drift(xk, vk, f, kick, x_prev, v_prev, dt, langevin, c1, noise, scale)
        assert np.array_equal(xk, xr) and np.array_equal(vk, vr), langevin
        assert np.array_equal(x_prev, x) and np.array_equal(v_prev, v)
    f_new = rng.normal(size=(n, 3))
    vk = v.copy()
    w, mv2 = work_kick(f, f_new, xr, x, vk, kick, masses)
    v_ref = v + f_new * kick
    assert np.array_equal(vk, v_ref)
    assert w == pytest.approx(0.5 * (np.vdot(f, xr - x) + np.vdot(f_new, xr - x)), rel=1e-12)
    assert mv2 == pytest.approx(float(np.dot(np.repeat(masses, 3), (v_ref * v_ref).ravel())), rel=1e-12)
    assert max_abs(f) == np.abs(f).max() and max_abs(f[:0]) == 0.0
    f[3, 1] = -np.inf
    assert max_abs(f) == np.inf
    f[20, 0] = np.nan
    assert np.isnan(max_abs(f))


def test_host_and_device_branches_agree_in_langevin():
    """The fused host step and the generic array step of Langevin dynamics, fed the same noise, give
    the same trajectory (the device branch draws its noise from its own generator, so the host's
    generator is lent to it here)."""
    f, x0, masses = _system(n=30, seed=4)

    class OnDevice(Harmonic):
        xp = _ArrayModuleProxy()

    dev = OnDevice(x0, f.k[:, 0])
    host = MolecularDynamics(f, x0, masses, dt=1.0, temperature=350.0, seed=9)
    moved = MolecularDynamics(dev, x0, masses, dt=1.0, temperature=350.0, seed=9)

    class SameNoise:  # the host's Generator behind the device branch's call signature
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, size=None, out=None):
            return self.rng.standard_normal(size=size, out=out)

    host._noise_rng = SameNoise(21)
    moved._noise_rng = SameNoise(21)
    a = host.run(200)
    b = moved.run(200)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.velocities, b.velocities)


# --------------------------------------------------------- temperature guard
def test_huge_time_step_stops_on_temperature(tmp_path):
    f, x0, masses = _system(n=12, seed=8)
    traj, log = tmp_path / "t.extxyz", tmp_path / "md.log"
    # velocity Verlet is unstable for ω dt > 2: here ω up to 0.24 1/fs
    md = MolecularDynamics(f, x0, masses, dt=40.0, temperature=300.0, ensemble="nve", max_force=1e12,
                           symbols=["H"] * 12)
    assert md.max_temperature == 5000.0
    with pytest.raises(MDInstabilityError, match=r"MD stopped at step \d+: the temperature became unphysical "
                       r"\(.* K > max_temperature=5000 K\).*smaller dt.*last good frame") as info:
        md.run(1000, trajectory=traj, log=log, every=1)
    err = info.value
    assert err.reason.startswith("the temperature became unphysical")
    assert err.result.stopped_at == err.step and err.result.steps_done == err.step - 1
    frames = ase.io.read(traj, index=":")
    assert frames[-1].info["step"] == err.step - 1
    assert frames[-1].info["temperature_K"] <= 5000.0
    np.testing.assert_allclose(frames[-1].positions, err.result.positions, atol=1e-9)
    # the kept forces are those of the kept positions
    np.testing.assert_allclose(err.result.forces, f(err.result.positions), rtol=1e-9, atol=1e-9)
    assert f"stopped at step {err.step}" in log.read_text()


def test_normal_run_does_not_trip_the_temperature_guard():
    f, x0, masses = _system(n=30, seed=3)
    md = MolecularDynamics(f, x0, masses, dt=1.0, temperature=1000.0, seed=1)
    assert md.max_temperature == 10000.0  # max(5000, 10 x temperature)
    result = md.run(300, every=10)
    assert result.stopped_at is None and result.steps_done == 300


def test_max_temperature_explicit_and_disabled():
    f, x0, masses = _system(n=12, seed=8)
    md = MolecularDynamics(f, x0, masses, dt=1.0, temperature=300.0, seed=1, max_temperature=305.0)
    with pytest.raises(MDInstabilityError, match="max_temperature=305 K"):
        md.run(2000)
    # math.inf: no temperature limit (the run goes on heating)
    hot = MolecularDynamics(f, x0, masses, dt=40.0, ensemble="nve", max_force=1e12, max_temperature=np.inf)
    result = hot.run(4, every=1)
    assert result.stopped_at is None and result.log["temperature_K"][-1] > 5000.0


@pytest.mark.parametrize("bad", [0, -10.0, float("nan")])
def test_max_temperature_validated(bad):
    f, x0, masses = _system(n=4)
    with pytest.raises(ValueError, match="`max_temperature` must be a number > 0"):
        MolecularDynamics(f, x0, masses, max_temperature=bad)


def test_max_temperature_type_and_initial_velocities():
    f, x0, masses = _system(n=4)
    with pytest.raises(TypeError, match="`max_temperature` must be a number"):
        MolecularDynamics(f, x0, masses, max_temperature="hot")
    v = maxwell_boltzmann(masses, 2000.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"`velocities` correspond to .* K, above `max_temperature`=1000 K"):
        MolecularDynamics(f, x0, masses, velocities=v, max_temperature=1000.0)


def test_md_cli_huge_dt_exits_3(model_path, water_file, tmp_path, capsys):
    out = tmp_path / "t.extxyz"
    rc = md_cli.main([str(model_path), str(water_file), "--steps", "400", "--dt", "200", "--out", str(out),
                      "--every", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "temperature became unphysical" in err and "max_temperature=5000 K" in err and "--dt" in err
    assert ase.io.read(out, index=-1).info["temperature_K"] <= 5000.0
    rc = md_cli.main([str(model_path), str(water_file), "--steps", "3", "--max-temperature", "-1", "--quiet"])
    assert rc == 2 and "--max-temperature must be a number > 0" in capsys.readouterr().err


def test_run_md_passes_max_temperature(model, water):
    with pytest.raises(MDInstabilityError, match="max_temperature=301 K"):
        run_md(model, water, 500, dt=0.5, temperature=300.0, max_temperature=301.0)


# ------------------------------------------------------ trajectory file names
@pytest.mark.parametrize("name", ["t.traj", "t.extxyz.gz", "t", "t.xyz.bak"])
def test_trajectory_must_be_extxyz(tmp_path, water, name):
    harmonic = Harmonic(water.positions, np.ones(len(water)))
    path = tmp_path / name
    with pytest.raises(ValueError, match=r"trajectory `out` .* must end in \.extxyz or \.xyz.*nothing was run"):
        run_md(harmonic, water, 5, out=path)
    with pytest.raises(ValueError, match=r"`trajectory` .* must end in \.extxyz or \.xyz"):
        MolecularDynamics(harmonic, water.positions, water.get_masses()).run(5, trajectory=path)
    assert harmonic.calls == 0 and not path.exists()


@pytest.mark.parametrize("name", ["t.XYZ", "t.ExtXYZ", "t.xyz"])
def test_trajectory_extension_case_insensitive(tmp_path, water, name):
    harmonic = Harmonic(water.positions, np.ones(len(water)))
    run_md(harmonic, water, 4, out=tmp_path / name, every=2)
    assert len(ase.io.read(tmp_path / name, index=":", format="extxyz")) == 3


def test_md_cli_refuses_traj_out(model_path, water_file, tmp_path, capsys):
    out = tmp_path / "x.traj"
    assert md_cli.main([str(model_path), str(water_file), "--steps", "3", "--out", str(out), "--quiet"]) == 2
    assert "fastfeat md: error: trajectory --out" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------ other refusals
def test_engine_counts_on_from_the_initial_step_and_time():
    f, x0, masses = _system(n=6, seed=3)
    md = MolecularDynamics(f, x0, masses, dt=0.5, ensemble="nve", step=100, time_fs=1000.0)
    r = md.run(20, every=10)
    assert list(r.log["step"]) == [100, 110, 120] and list(r.log["time_fs"]) == [1000.0, 1005.0, 1010.0]
    assert r.steps_done == 120 and r.steps_run == 20
    for bad, exc in (({"step": -1}, ValueError), ({"step": 1.5}, TypeError), ({"time_fs": float("nan")}, ValueError)):
        with pytest.raises(exc, match=f"`{next(iter(bad))}`"):
            MolecularDynamics(f, x0, masses, **bad)


def test_keep_velocities_without_momenta(model, model_path, water, water_file, capsys):
    assert not water.has("momenta")
    with pytest.raises(ValueError, match="structure has no velocities.*Maxwell-Boltzmann"):
        run_md(model, water, 5, velocities="atoms")
    rc = md_cli.main([str(model_path), str(water_file), "--steps", "3", "--keep-velocities", "--quiet"])
    assert rc == 2
    assert "no velocities" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(3,), (1, 3), (4, 2), ()])
def test_force_function_output_shape_checked(shape):
    f, x0, masses = _system(n=4)
    md = MolecularDynamics(lambda x: np.ones(shape), x0, masses)
    with pytest.raises(ValueError, match=r"`force_fn` must return forces of shape \(4, 3\)"):
        md.run(3)


def test_non_force_model_refused(dipole_model_path, water, water_file, tmp_path, capsys):
    from fastfeat.runtime import ForceModel

    out = tmp_path / "t.extxyz"
    with pytest.raises(ValueError, match="predicts 'dipole', not forces"):
        run_md(ForceModel.load(dipole_model_path), water, 5, out=out)
    assert not out.exists()
    with pytest.raises(ValueError, match="predicts 'dipole', not forces"):
        run_md(dipole_model_path, water, 5)
    assert md_cli.main([str(dipole_model_path), str(water_file), "--steps", "3", "--quiet"]) == 2
    assert "fastfeat md: error: model" in capsys.readouterr().err


# ------------------------------------------------- outputs and restarts (audit)
def test_existing_trajectory_survives_a_failing_call(model_path, water, water_file, tmp_path, capsys):
    """A call that fails on its arguments, its model or its structure leaves an existing trajectory as it was
    (the output check used to create and truncate it first): also the in-place restart
    `fastfeat md M traj.extxyz --out traj.extxyz` with a bad argument."""
    harmonic = Harmonic(water.positions, np.ones(len(water)))
    out, log = tmp_path / "t.extxyz", tmp_path / "md.log"
    run_md(harmonic, water, 4, out=out, log=log, every=2)
    before = out.read_bytes(), log.read_bytes()
    for kwargs in ({"dt": 0}, {"ensemble": "npt"}, {"every": 0}):
        with pytest.raises(ValueError):
            run_md(harmonic, water, 4, out=out, log=log, **kwargs)
        assert (out.read_bytes(), log.read_bytes()) == before, kwargs
    with pytest.raises(Exception, match="no-such-model"):
        run_md("no-such-model", water, 4, out=out, log=log)
    assert (out.read_bytes(), log.read_bytes()) == before
    rc = md_cli.main([str(model_path), str(out), "--frame", "-1", "--steps", "3", "--dt", "-1", "--out", str(out),
                      "--quiet"])
    assert rc == 2 and out.read_bytes() == before[0]


def test_failing_first_force_call_creates_no_file(water, tmp_path):
    """An exception of the first force call (the input's fault) propagates unchanged, and no trajectory or log
    has been created; initial NaN forces are an MDInstabilityError, also with no file."""
    out, log = tmp_path / "t.extxyz", tmp_path / "md.log"

    def broken(x):
        raise RuntimeError("cannot evaluate this structure")

    md = MolecularDynamics(broken, water.positions, water.get_masses())
    with pytest.raises(RuntimeError, match="cannot evaluate this structure"):
        md.run(5, trajectory=out, log=log)
    md = MolecularDynamics(lambda x: np.full((len(x), 3), np.nan), water.positions, water.get_masses())
    with pytest.raises(MDInstabilityError, match="initial forces are not finite.*nothing was written"):
        md.run(5, trajectory=out, log=log)
    assert not out.exists() and not log.exists()


def test_isotope_masses_round_trip_and_restart(model, water, tmp_path):
    """Masses other than ASE's defaults (D2O) are written to the trajectory: the last frame reads back with
    the engine's masses and velocities, and a run restarted from it with velocities="atoms" continues
    exactly where the first one stopped (without masses, velocities read back up to 2x off)."""
    heavy = water.copy()
    masses = heavy.get_masses()
    masses[heavy.numbers == 1] = 2.014
    heavy.set_masses(masses)
    out = tmp_path / "d2o.extxyz"
    res = run_md(model, heavy, 6, dt=0.5, temperature=300.0, ensemble="nve", out=out, every=3, seed=2)
    last = ase.io.read(out, index=-1)
    np.testing.assert_array_equal(last.get_masses(), masses)
    np.testing.assert_allclose(last.get_velocities() * units.fs, res.velocities, rtol=1e-8, atol=1e-12)
    assert last.get_temperature() * len(last) * 3 / (3 * len(last) - 3) == pytest.approx(
        last.info["temperature_K"], rel=1e-6)
    ref = run_md(model, heavy, 9, dt=0.5, temperature=300.0, ensemble="nve", seed=2)
    again = run_md(model, last, 3, dt=0.5, temperature=300.0, ensemble="nve", velocities="atoms")
    np.testing.assert_allclose(again.positions, ref.positions, atol=1e-6)
    # default masses: no masses column (files stay as ASE's own writer makes them)
    run_md(model, water, 2, dt=0.5, out=tmp_path / "h2o.extxyz")
    assert "masses" not in (tmp_path / "h2o.extxyz").read_text().splitlines()[1]


def test_langevin_friction_decay_rate():
    """At T = 0 without forces BAOAB damps v by exp(-friction dt) per step (the mean temperature of a
    thermostatted run does not depend on the friction, so it cannot catch a wrong one)."""
    n = 5
    rng = np.random.default_rng(0)
    v0 = rng.normal(size=(n, 3)) * 0.01
    md = MolecularDynamics(lambda x: np.zeros_like(x), rng.normal(size=(n, 3)), np.full(n, 12.0), dt=1.0,
                           temperature=0.0, ensemble="langevin", friction=0.05, velocities=v0)
    r = md.run(20)
    np.testing.assert_allclose(r.velocities, v0 * np.exp(-0.05 * 20), rtol=1e-12)


def test_python_time_step_default_is_the_command_line_one():
    """run_md and MolecularDynamics default to the time step `fastfeat md` uses (they defaulted to 1 fs
    while the command line and the README use 0.5 fs)."""
    import inspect

    from fastfeat.runtime.md_cli import build_parser

    cli_dt = build_parser().parse_args(["model.onnx", "s.extxyz", "--steps", "1"]).dt
    assert cli_dt == 0.5
    assert inspect.signature(run_md).parameters["dt"].default == cli_dt
    assert inspect.signature(MolecularDynamics).parameters["dt"].default == cli_dt


def test_no_compilation_inside_the_timed_loop():
    """The fused kernels and the featurizer's reuse test are compiled (or loaded from the cache) before the
    step loop starts: a run's steps/s never includes Numba compilation (a fresh install read 621 steps/s
    in the demo with it, ~900 without). Checked in a fresh process: the loop adds no signature."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np
        import fastfeat
        from fastfeat._kernels import neighbors_cpu
        from fastfeat.runtime import _integrator
        from fastfeat.runtime.md import MolecularDynamics

        kernels = (_integrator.kick_drift, _integrator.max_abs, _integrator.work_kick,
                   neighbors_cpu.max_displacement2)
        assert not any(k.signatures for k in kernels), "compiled before the test"
        rng = np.random.default_rng(0)
        x0 = rng.uniform(0.0, 6.0, (6, 3))
        spec = fastfeat.FeatureSpec.default(("H",))
        fz = fastfeat.Featurizer(spec)  # float32 features, the runtime's (that kernel is in the cache by now)
        numbers = np.ones(6, dtype=np.int64)

        def force(x):
            g, v = fz._call_same_system(x, numbers, None, False)
            return -(x - x0) + 0.0 * v[:, 0, :]

        for ensemble in ("nve", "langevin"):
            md = MolecularDynamics(force, x0, np.full(6, 12.0), ensemble=ensemble)
            md.run(0)  # the first force call (list built) and the warm-up, before any step
            before = [len(k.signatures) for k in kernels]
            assert all(before), before
            md.run(20)
            assert [len(k.signatures) for k in kernels] == before, ([len(k.signatures) for k in kernels], before)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_trajectory_and_log_must_be_different_files(model, water, tmp_path, capsys):
    """One file as both trajectory and log would interleave the two and read back as neither."""
    same = tmp_path / "same.extxyz"
    with pytest.raises(ValueError, match="trajectory `out` and `log` are the same file"):
        run_md(model, water, 5, out=same, log=same)
    assert not same.exists()
    water.write(tmp_path / "w.xyz")
    assert md_cli.main([str(model.path), str(tmp_path / "w.xyz"), "--steps", "1", "--out", str(same),
                        "--log", str(same)]) == 2
    assert "trajectory --out and --log are the same file" in capsys.readouterr().err


class _InterruptAt(Harmonic):
    """Harmonic forces; sends itself ``count`` SIGINTs during force call ``call`` (as Ctrl-C would, mid-step)."""

    def __init__(self, x0, k, call, count=1):
        super().__init__(x0, k)
        self.at, self.count = call, count

    def __call__(self, x):
        f = super().__call__(x)
        if self.calls == self.at:
            for _ in range(self.count):
                os.kill(os.getpid(), signal.SIGINT)
        return f


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, as in a script or a notebook (restored afterwards)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("ensemble", ["nve", "langevin"])
def test_ctrl_c_stops_at_the_end_of_a_step_and_can_go_on(default_sigint, tmp_path, ensemble):
    """Ctrl-C mid-step used to leave positions advanced into the next step, half-kicked velocities and the run's
    first forces in the engine, so that going on gave another trajectory. Now the step in progress completes, its
    frame is written, Interrupted (a KeyboardInterrupt) is raised, and going on equals the uninterrupted run."""
    _, x0, masses = _system(n=8)
    k = np.linspace(1.0, 4.0, 8)
    ref = MolecularDynamics(Harmonic(x0, k), x0 + 0.05, masses, ensemble=ensemble, dt=1.0, seed=1)
    ref.run(100, every=10)
    f = _InterruptAt(x0, k, call=58)  # call 1: the starting forces; call 58: step 57's
    md = MolecularDynamics(f, x0 + 0.05, masses, ensemble=ensemble, dt=1.0, seed=1)
    traj, log = tmp_path / "t.extxyz", tmp_path / "md.log"
    with pytest.raises(Interrupted, match="interrupted after step 57") as info:
        md.run(100, every=10, trajectory=traj, log=log)
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.step == 57 and md.step == 57 and info.value.result.steps_done == 57
    assert info.value.result.stop_reason == "interrupted (Ctrl-C)"
    np.testing.assert_array_equal(info.value.result.positions, md.x)
    np.testing.assert_array_equal(md.f, Harmonic(x0, k)(md.x))  # the forces at the state held
    frames = ase.io.read(traj, index=":")
    assert [a.info["step"] for a in frames] == [0, 10, 20, 30, 40, 50, 57]
    np.testing.assert_array_equal(frames[-1].positions, np.round(md.x, 10))
    assert open(log).read().splitlines()[-1] == "# interrupted (Ctrl-C) after step 57"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    md.run(43)
    assert md.step == 100
    np.testing.assert_array_equal(md.x, ref.x)
    np.testing.assert_array_equal(md.v, ref.v)


def test_second_ctrl_c_interrupts_at_once(default_sigint):
    _, x0, masses = _system(n=4)
    md = MolecularDynamics(_InterruptAt(x0, np.ones(4), call=5, count=2), x0, masses, dt=1.0)
    with pytest.raises(KeyboardInterrupt) as info:
        md.run(20)
    assert not isinstance(info.value, Interrupted)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outputs_are_flushed_at_every_record(tmp_path):
    """A run killed from outside (a batch time limit) loses nothing recorded: the files are complete at each
    record (the log lagged the trajectory by up to 8 kB, and both lagged the run)."""
    _, x0, masses = _system(n=4)
    traj, log = tmp_path / "t.extxyz", tmp_path / "md.log"
    seen = {}

    def force(x):
        if traj.exists():  # call 0, the starting forces, comes before the files are opened
            seen[force.calls] = (len(ase.io.read(traj, index=":")) if traj.stat().st_size else 0,
                                 sum(1 for line in open(log) if not line.startswith("#")))
        force.calls += 1
        return -(x - x0)

    force.calls = 0
    MolecularDynamics(force, x0, masses).run(25, every=5, trajectory=traj, log=log)
    # call c (c >= 1) is step c's force call, after the records of steps 0, 5, ... < c
    assert seen[1] == (1, 1) and seen[6] == (2, 2) and seen[21] == (5, 5), seen


def test_md_cli_ctrl_c_exits_130(model_path, water_file, tmp_path, capsys, monkeypatch):
    from fastfeat.runtime import md as md_module

    def interrupted(*args, **kwargs):
        raise Interrupted("MD interrupted after step 7; its frame is the last in 't.extxyz'", 7, None)

    monkeypatch.setattr(md_module, "run_md", interrupted)
    assert md_cli.main([str(model_path), str(water_file), "--steps", "20", "--quiet"]) == 130
    assert "fastfeat md: MD interrupted after step 7" in capsys.readouterr().err
