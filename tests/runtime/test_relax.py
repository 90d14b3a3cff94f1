"""`fastfeat.runtime.relax` / `fastfeat relax`: FIRE with forces only, step for step ASE's FIRE."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixCartesian
from ase.optimize import FIRE

from fastfeat.runtime import ForceModel, RelaxInstabilityError, relax
from fastfeat.runtime import relax_cli


def _rattled_cu(seed=1, amount=0.1):
    a = bulk("Cu", cubic=True).repeat(2)
    a.rattle(amount, seed=seed)
    return a


def _emt_forces(atoms):
    """A force function f(positions) from ASE's EMT on a private copy (constraints not applied: relax does)."""
    work = atoms.copy()
    work.set_constraint()
    work.calc = EMT()

    def f(x):
        work.set_positions(x)
        return work.get_forces()

    f.calls = 0
    return f


@pytest.mark.parametrize("constraint", [None, "fixatoms", "fixcartesian"])
def test_relax_follows_ase_fire_step_for_step(constraint):
    """Same forces -> the same path as ase.optimize.FIRE (which needs the energy only to log)."""
    a = _rattled_cu()
    if constraint == "fixatoms":
        a.set_constraint(FixAtoms(indices=[0, 5, 9]))
    elif constraint == "fixcartesian":
        a.set_constraint(FixCartesian([1, 2], mask=(True, False, True)))
    ref = a.copy()
    ref.calc = EMT()
    opt = FIRE(ref, logfile=None)
    opt.run(fmax=0.01, steps=300)
    assert opt.nsteps > 20  # a real relaxation, with FIRE's time step growing and resets
    start = a.positions.copy()
    r = relax(_emt_forces(a), a, fmax=0.01, steps=300)
    assert r.converged and r.steps == opt.nsteps
    np.testing.assert_allclose(r.atoms.positions, ref.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.forces, ref.get_forces(), rtol=0, atol=1e-10)
    assert r.fmax < 0.01 and r.fmax == pytest.approx(np.linalg.norm(ref.get_forces(), axis=1).max())
    np.testing.assert_array_equal(a.positions, start)  # the input is not modified
    if constraint == "fixatoms":
        np.testing.assert_array_equal(r.atoms.positions[[0, 5, 9]], start[[0, 5, 9]])
        assert isinstance(r.atoms.constraints[0], FixAtoms)
    if constraint == "fixcartesian":
        np.testing.assert_array_equal(r.atoms.positions[[1, 2]][:, [0, 2]], start[[1, 2]][:, [0, 2]])
        assert not np.array_equal(r.atoms.positions[[1, 2], 1], start[[1, 2], 1])


def test_relax_finds_the_minimum_of_pair_springs():
    """Three atoms joined by springs of rest length 1.2 Å: an equilateral triangle of side 1.2."""
    from ase import Atoms

    k, r0 = 5.0, 1.2

    def f(x):
        out = np.zeros_like(x)
        for i in range(3):
            for j in range(3):
                if i != j:
                    d = x[i] - x[j]
                    r = np.linalg.norm(d)
                    out[i] -= k * (r - r0) * d / r
        return out

    atoms = Atoms("H3", positions=[[0, 0, 0], [1.7, 0.1, 0], [0.3, 0.9, 0.2]])
    r = relax(f, atoms, fmax=1e-6, steps=2000)
    assert r.converged
    d = r.atoms.get_all_distances()
    np.testing.assert_allclose(d[np.triu_indices(3, 1)], r0, atol=1e-6)


def test_relax_with_a_model_converges_and_its_forces_are_the_models(model, water):
    r = relax(model, water, fmax=0.5, steps=400)
    assert r.converged and r.fmax < 0.5 and r.steps > 0
    again = model.forces(r.atoms)
    np.testing.assert_allclose(r.forces, again, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.atoms.get_forces(), r.forces)
    assert r.log["step"][0] == 0 and r.log["step"][-1] == r.steps
    assert r.log["fmax"][-1] == pytest.approx(r.fmax)


def test_steps_run_out_is_not_an_error_and_outputs_are_written(tmp_path):
    a = _rattled_cu()
    traj, log = tmp_path / "relax.extxyz", tmp_path / "relax.log"
    r = relax(_emt_forces(a), a, fmax=1e-4, steps=7, trajectory=traj, log=log, every=3)
    assert not r.converged and r.steps == 7 and r.fmax > 1e-4
    frames = ase.io.read(traj, index=":")
    assert [fr.info["step"] for fr in frames] == [0, 3, 6, 7]
    np.testing.assert_allclose(frames[-1].positions, r.atoms.positions, atol=1e-6)  # extxyz text
    np.testing.assert_allclose(frames[-1].get_forces(), r.forces, atol=1e-6)
    assert frames[-1].info["fmax"] == pytest.approx(r.fmax)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("# step fmax") and [int(s.split()[0]) for s in lines[1:]] == [0, 3, 6, 7]
    # zero steps: the start is measured, nothing moves
    r0 = relax(_emt_forces(a), a, fmax=1e-4, steps=0)
    assert r0.steps == 0 and not r0.converged
    np.testing.assert_array_equal(r0.atoms.positions, a.positions)


def test_bad_forces_stop_cleanly_with_the_last_good_structure(tmp_path):
    a = _rattled_cu()
    good = _emt_forces(a)
    calls = {"n": 0}

    def f(x):
        calls["n"] += 1
        out = good(x)
        return out * np.nan if calls["n"] == 6 else out

    traj = tmp_path / "t.extxyz"
    with pytest.raises(RelaxInstabilityError, match=r"step 5: the forces are not finite.*step 4\) is in") as info:
        relax(f, a, fmax=1e-4, steps=50, trajectory=traj)
    err = info.value
    assert err.step == 5 and err.result.steps == 4 and err.result.stopped_at == 5 and not err.result.converged
    frames = ase.io.read(traj, index=":")
    assert frames[-1].info["step"] == 4
    np.testing.assert_allclose(frames[-1].positions, err.result.atoms.positions, atol=1e-6)
    assert np.isfinite(err.result.forces).all()

    def exploding(x):
        calls["n"] += 1
        return good(x) * (1e4 if calls["n"] == 3 else 1.0)

    calls["n"] = 0
    with pytest.raises(RelaxInstabilityError, match=r"step 2: a force component reached .* > max_force=50"):
        relax(exploding, a, fmax=1e-4, steps=50, max_force=50.0)

    def broken(x):
        raise RuntimeError("onnxruntime failed")

    # the first call's exception propagates as it is (the starting structure's fault), no file written
    traj2 = tmp_path / "never.extxyz"
    with pytest.raises(RuntimeError, match="onnxruntime failed"):
        relax(broken, a, trajectory=traj2)
    assert not traj2.exists()
    with pytest.raises(RelaxInstabilityError, match="forces of the starting structure are unusable.*not finite") as info:
        relax(lambda x: good(x) * np.nan, a, trajectory=traj2)
    assert info.value.step == 0 and info.value.result.steps == 0 and not traj2.exists()

    # a later failing call (any exception, a wrong shape too) is an instability with the last good structure
    def later(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise ValueError("atoms 1 and 2 are at the same position")
        return good(x)

    calls["n"] = 0
    with pytest.raises(RelaxInstabilityError, match="step 3: the force call failed: ValueError: atoms 1 and 2") as info:
        relax(later, a, fmax=1e-4, steps=50)
    assert info.value.result.steps == 2


def test_last_good_structure_is_written_whatever_every(tmp_path):
    """The error says the last good structure is in the trajectory: it is, also between two records."""
    a = _rattled_cu()
    good = _emt_forces(a)
    calls = {"n": 0}

    def f(x):
        calls["n"] += 1
        return good(x) * (np.nan if calls["n"] == 8 else 1.0)

    traj, log = tmp_path / "t.extxyz", tmp_path / "t.log"
    with pytest.raises(RelaxInstabilityError, match=r"step 7: .*the last good structure \(step 6\) is in") as info:
        relax(f, a, fmax=1e-4, steps=50, trajectory=traj, log=log, every=5)
    frames = ase.io.read(traj, index=":")
    assert [fr.info["step"] for fr in frames] == [0, 5, 6]
    np.testing.assert_allclose(frames[-1].positions, info.value.result.atoms.positions, atol=1e-6)
    assert [int(line.split()[0]) for line in log.read_text().splitlines()[1:]] == [0, 5, 6]


def test_result_carries_the_structure_not_the_input_frames_labels():
    """A relaxed structure is not the input MD frame: its info (step, method, ...) and momenta are not
    carried; masses, tags and constraints are; get_forces() equals result.forces, also with a constraint
    that changes forces (Hookean), which must not be applied twice."""
    from ase.constraints import Hookean

    a = _rattled_cu()
    a.info.update(step=4, method="GFN1-xTB", temperature=800.0)
    a.set_momenta(np.ones((len(a), 3)))
    a.set_tags(np.arange(len(a)) % 3)
    a.set_masses(np.full(len(a), 70.0))
    a.set_constraint([Hookean(0, 1, k=5.0, rt=2.0), FixAtoms(indices=[3])])
    r = relax(_emt_forces(a), a, fmax=0.05, steps=40)
    out = r.atoms
    assert out.info == {} and not out.has("momenta")
    np.testing.assert_array_equal(out.get_tags(), a.get_tags())
    np.testing.assert_array_equal(out.get_masses(), a.get_masses())
    assert len(out.constraints) == 2
    np.testing.assert_allclose(out.get_forces(), r.forces, rtol=0, atol=1e-12)
    ref = a.copy()
    ref.calc = EMT()
    FIRE(ref, logfile=None).run(fmax=0.05, steps=40)
    np.testing.assert_allclose(out.positions, ref.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.forces, ref.get_forces(), rtol=0, atol=1e-10)


def test_progress_rewrites_a_line_on_a_terminal_only(monkeypatch):
    """A captured log got CR-joined lines (the progress always began with \\r and never ended a line)."""
    import io

    from fastfeat.runtime import relaxation

    clock = iter(np.arange(0.0, 1e4, 2.0))  # 2 s per reading: a progress report at every step
    monkeypatch.setattr(relaxation.time, "perf_counter", lambda: next(clock))

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    f = _emt_forces(_rattled_cu())
    log, term = io.StringIO(), Terminal()
    relax(f, _rattled_cu(), steps=4, fmax=1e-9, progress=log)
    relax(f, _rattled_cu(), steps=4, fmax=1e-9, progress=term)
    assert "\r" not in log.getvalue(), repr(log.getvalue())
    lines = log.getvalue().splitlines()
    assert len(lines) >= 4 and all(ln.startswith("relax: step ") for ln in lines), lines
    assert lines[-1].endswith("(not converged, target 1e-09)"), lines
    assert term.getvalue().count("\r") == len(lines) and term.getvalue().count("\n") == 1, repr(term.getvalue())


def test_argument_errors(tmp_path, water):
    f = _emt_forces(_rattled_cu())
    a = _rattled_cu()
    with pytest.raises(ValueError, match="`fmax` must be a finite number > 0"):
        relax(f, a, fmax=0)
    with pytest.raises(ValueError, match="`steps` must be an int >= 0, got -1"):
        relax(f, a, steps=-1)
    with pytest.raises(TypeError, match="`steps` must be an int"):
        relax(f, a, steps=1.5)
    with pytest.raises(ValueError, match="`maxstep` must be a finite number > 0"):
        relax(f, a, maxstep=float("nan"))
    with pytest.raises(ValueError, match=r"must end in \.extxyz or \.xyz"):
        relax(f, a, trajectory=tmp_path / "t.traj")
    with pytest.raises(TypeError, match="`atoms` must be one ase.Atoms"):
        relax(f, [a])
    with pytest.raises(ValueError, match=r"returned shape \(3,\), expected \(32, 3\)"):
        relax(lambda x: np.zeros(3), a)
    with pytest.raises(TypeError, match="`progress` must be a bool or a file object, got int 1"):
        relax(f, a, progress=1)
    with pytest.raises(ValueError, match="`trajectory` and `log` are the same file"):
        relax(f, a, trajectory=tmp_path / "same.xyz", log=tmp_path / "same.xyz")


def test_relax_cli(model_path, water_file, tmp_path, capsys):
    out, traj = tmp_path / "relaxed.extxyz", tmp_path / "path.xyz"
    rc = relax_cli.main([str(model_path), str(water_file), "--fmax", "0.5", "--steps", "400", "--out", str(out),
                         "--trajectory", str(traj), "--every", "5", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("converged:") and str(out) in text
    relaxed = ase.io.read(out)
    model = ForceModel.load(model_path)
    assert np.linalg.norm(model.forces(relaxed), axis=1).max() < 0.5 + 1e-4
    np.testing.assert_allclose(relaxed.get_forces(), model.forces(relaxed), atol=1e-4)
    assert ase.io.read(traj, index=0).info["step"] == 0
    # steps run out: exit 1, the structure still written
    rc = relax_cli.main([str(model_path), str(water_file), "--fmax", "1e-6", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out.startswith("NOT converged") and "fmax" in captured.err
    assert ase.io.read(out).positions.shape == relaxed.positions.shape


def test_relax_cli_errors(model_path, water_file, tmp_path, capsys):
    assert relax_cli.main([str(model_path), str(tmp_path / "nope.xyz")]) == 2
    assert "neither a file nor a bundled data set" in capsys.readouterr().err
    assert relax_cli.main([str(model_path), str(water_file), "--out", str(tmp_path / "x.traj")]) == 2
    assert "must end in .extxyz or .xyz" in capsys.readouterr().err
    assert relax_cli.main([str(model_path), str(water_file), "--fmax", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--fmax must be a finite number > 0" in err and "extrapolation" not in err
    assert relax_cli.main([str(model_path), str(water_file), "--every", "0"]) == 2
    assert "--every must be an int >= 1" in capsys.readouterr().err
    assert relax_cli.main([str(model_path), str(water_file), "--threads", "-1"]) == 2
    assert "--threads must be an int >= 0" in capsys.readouterr().err
    same = str(tmp_path / "same.extxyz")
    assert relax_cli.main([str(model_path), str(water_file), "--out", same, "--trajectory", same]) == 2
    assert "--out and --trajectory are the same file" in capsys.readouterr().err
    assert relax_cli.main([str(model_path), str(water_file), "--log", str(tmp_path / "l.xyz"), "--trajectory",
                           str(tmp_path / "t.xyz"), "--out", str(tmp_path / "l.xyz")]) == 2
    assert "--out and --log are the same file" in capsys.readouterr().err
    assert relax_cli.main([str(model_path), str(water_file), "--max-force", "1e-9", "--steps", "3"]) == 3
    assert "unusable" in capsys.readouterr().err


def test_relax_is_a_fastfeat_command():
    from fastfeat.cli import SUBCOMMANDS

    assert SUBCOMMANDS["relax"][0] == "fastfeat.runtime.relax_cli"


def test_relax_cli_says_when_the_forces_grew(model_path, tmp_path, capsys, monkeypatch):
    """Circulating (non-conservative) forces F = k ẑ × r have no point FIRE settles at: not converged,
    and the command line says the largest force grew."""
    from ase import Atoms

    a = Atoms("H4", positions=[[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    start = np.linalg.norm(np.cross([0, 0, 1.0], a.positions), axis=1).max()

    def curl(x):
        return np.cross([0, 0, 1.0], x)

    r = relax(curl, a, fmax=0.01, steps=200)
    assert not r.converged and r.fmax > start

    import fastfeat.runtime.relaxation as relaxation

    path = tmp_path / "h4.extxyz"
    ase.io.write(path, a)
    real = relaxation.relax
    monkeypatch.setattr(relaxation, "relax", lambda model, atoms, **kw: real(curl, atoms, **kw))
    assert relax_cli.main([str(model_path), str(path), "--fmax", "0.01", "--steps", "200", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"the largest force grew from {start:.4g} to" in err and "non-conservative" in err


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, as in a script or a notebook (restored afterwards)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_at_the_end_of_a_step(default_sigint, tmp_path):
    """Ctrl-C raised a KeyboardInterrupt wherever it landed (a traceback from inside the featurizer, no --out).
    Now the step in progress completes and is written, and Interrupted carries its structure."""
    import os
    import signal

    from fastfeat.runtime import Interrupted

    a = _rattled_cu()
    emt = _emt_forces(a)
    calls = [0]

    def f(x):
        calls[0] += 1
        if calls[0] == 8:  # step 7's force call
            os.kill(os.getpid(), signal.SIGINT)
        return emt(x)

    traj, log = tmp_path / "r.extxyz", tmp_path / "r.log"
    with pytest.raises(Interrupted, match=r"relaxation interrupted after step 7 \(fmax") as info:
        relax(f, a, fmax=1e-6, steps=500, trajectory=traj, log=log, every=5)
    res = info.value.result
    assert info.value.step == 7 and res.steps == 7 and not res.converged and res.stop_reason == "interrupted (Ctrl-C)"
    ref = relax(_emt_forces(a), a, fmax=1e-6, steps=7)
    np.testing.assert_array_equal(res.atoms.positions, ref.atoms.positions)
    frames = ase.io.read(traj, index=":")
    assert [fr.info["step"] for fr in frames] == [0, 5, 7]
    assert open(log).read().splitlines()[-1] == "# interrupted (Ctrl-C) after step 7"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nan_force_on_a_fixed_atom_is_unusable():
    """FixAtoms zeroes the force of a fixed atom, NaN included: the relaxation 'converged' on NaN forces."""
    a = _rattled_cu()
    a.set_constraint(FixAtoms(indices=[0]))
    emt = _emt_forces(a)
    calls = [0]

    def f(x):
        calls[0] += 1
        out = emt(x)
        if calls[0] >= 3:
            out[0] = np.nan
        return out

    with pytest.raises(RelaxInstabilityError, match="relaxation stopped at step 2: the forces are not finite"):
        relax(f, a, fmax=0.01, steps=300)


def test_relax_cli_ctrl_c_writes_out_and_exits_130(model_path, water_file, tmp_path, capsys, monkeypatch):
    from fastfeat.runtime import Interrupted, relaxation

    def interrupted(model, atoms, **kwargs):
        res = relaxation.RelaxResult(atoms=atoms.copy(), converged=False, steps=4, fmax=1.0, forces=None, wall_s=0.1,
                                     log={}, stopped_at=None, stop_reason="interrupted (Ctrl-C)")
        raise Interrupted("relaxation interrupted after step 4 (fmax 1 eV/Å)", 4, res)

    monkeypatch.setattr(relaxation, "relax", interrupted)
    out = tmp_path / "out.extxyz"
    assert relax_cli.main([str(model_path), str(water_file), "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "relaxation interrupted after step 4" in err and f"the structure of step 4 (not converged) is in {out}" in err
    assert len(ase.io.read(out)) == len(ase.io.read(water_file))


def test_commands_answer_ctrl_c_with_one_line(monkeypatch, capsys):
    """A KeyboardInterrupt in any command: `fastfeat NAME: interrupted`, status 130, no traceback."""
    from fastfeat import cli
    from fastfeat.runtime import conservation

    def stop(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(conservation, "main", stop)
    assert cli.main(["check-conservation", "peo", "peo"]) == 130
    assert capsys.readouterr().err == "fastfeat check-conservation: interrupted\n"
