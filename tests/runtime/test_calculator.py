"""ASE Calculator: forces, energy/stress errors, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError

from fastfeat.runtime import Calculator, ForceModel

from conftest import random_water_box


def test_forces_match_model(model, water):
    water.calc = Calculator(model)
    np.testing.assert_array_equal(water.get_forces(), model.forces(water))
    assert Calculator.implemented_properties == ["forces"]


def test_calculator_from_path(model_path, water):
    water.calc = Calculator(model_path)
    assert water.get_forces().shape == (len(water), 3)


def test_forces_update_when_atoms_move(model, water):
    water.calc = Calculator(model)
    f0 = water.get_forces().copy()
    water.positions[0] += [0.1, 0.0, 0.0]
    f1 = water.get_forces()
    assert not np.allclose(f0, f1)
    np.testing.assert_array_equal(f1, model.forces(water))


@pytest.mark.parametrize("getter", ["get_potential_energy", "get_total_energy", "get_stress"])
def test_energy_and_stress_explain_direct_forces(model, water, getter):
    water.calc = Calculator(model)
    with pytest.raises(PropertyNotImplementedError, match="not the gradient of an energy"):
        getattr(water, getter)()


def test_calculate_with_energy_request_raises(model, water):
    calc = Calculator(model)
    with pytest.raises(PropertyNotImplementedError, match="direct"):
        calc.calculate(water, ["energy", "forces"])


@pytest.mark.parametrize("shared_model", [True, False])
def test_two_calculators_in_two_threads(model_path, shared_model):
    frames = [random_water_box(seed=1), random_water_box(n_molecules=6, box=6.0, seed=2)]
    first = ForceModel.load(model_path)
    models = [first, first] if shared_model else [first, ForceModel.load(model_path)]
    rng = np.random.default_rng(0)
    # a sequence of displaced structures per thread, and their single-thread forces
    sequences = []
    for atoms in frames:
        seq = []
        for _ in range(20):
            a = atoms.copy()
            a.positions += rng.uniform(-0.05, 0.05, a.positions.shape)
            seq.append(a)
        sequences.append(seq)
    expected = [[ForceModel.load(model_path).forces(a) for a in seq] for seq in sequences]
    got = [[None] * 20, [None] * 20]
    errors = []
    barrier = threading.Barrier(2)

    def work(t):
        try:
            calc = Calculator(models[t])
            barrier.wait()
            for k, a in enumerate(sequences[t]):
                a = a.copy()
                a.calc = calc
                got[t][k] = a.get_forces().copy()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for t in range(2):
        for k in range(20):
            np.testing.assert_array_equal(got[t][k], expected[t][k], err_msg=f"thread {t}, structure {k}")


def test_threads_under_numba_workqueue_layer(model_path, water_file):
    """Numba's workqueue layer aborts on concurrent parallel calls: the runtime must serialise them."""
    code = f"""
import threading, numpy as np, ase.io, numba
from fastfeat.runtime import ForceModel
model = ForceModel.load({str(model_path)!r})
atoms = ase.io.read({str(water_file)!r})
ref = ForceModel.load({str(model_path)!r}).forces(atoms)
assert numba.threading_layer() == "workqueue", numba.threading_layer()
bad = []
def work():
    for _ in range(30):
        if not np.array_equal(model.forces(atoms), ref):
            bad.append(1)
ts = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
assert not bad
print("ok")
"""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_calculator_options_reach_the_model_or_are_refused(model_path, model, water):
    """skin, intra_op_threads and misspelt keywords were stored as unused ASE parameters; device was not checked."""
    calc = Calculator(model_path, skin=0.3, intra_op_threads=2)
    assert calc.model.skin == 0.3 and calc.model._intra_op_threads == 2
    water.calc = calc
    np.testing.assert_allclose(water.get_forces(), model.forces(water), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['devise'\]"):
        Calculator(model_path, devise="cuda")
    with pytest.raises(ValueError, match="`device` must be 'cpu' or 'cuda', got 'gpu'"):
        Calculator(model, device="gpu")
    with pytest.raises(ValueError, match="`skin`=0.3, but the ForceModel given was loaded with 1.0"):
        Calculator(model, skin=0.3)
    assert Calculator(model, device="cpu", skin=1.0).model is model
    assert Calculator(model, directory=".", label="x").model is model  # ASE's own arguments pass


def test_calculator_messages(model, water):
    calc = Calculator(model)
    with pytest.raises(ValueError, match="no structure to compute: attach the calculator"):
        calc.get_forces()
    calc.calculate(water, "forces")  # a name for a list of names, as ASE's calculate takes it
    np.testing.assert_array_equal(calc.results["forces"], model.forces(water))


def test_non_force_model_is_refused(dipole_model_path):
    with pytest.raises(ValueError, match="predicts 'dipole', not forces"):
        Calculator(dipole_model_path)
    with pytest.raises(ValueError, match="predicts 'dipole', not forces"):
        Calculator(ForceModel.load(dipole_model_path))


def test_energy_message_matches_what_ase_can_do(model, water):
    """ASE 3.29 optimizers log the energy even with logfile=None: the message must not recommend them."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import FIRE

    water.calc = Calculator(model)
    with pytest.raises(PropertyNotImplementedError) as info:
        FIRE(water, logfile=None).run(fmax=0.5, steps=3)
    msg = str(info.value)
    assert "ASE optimizers (FIRE, BFGS, ...) and MDLogger call get_potential_energy() and need an energy" in msg
    assert "run_md" in msg and "VelocityVerlet" in msg and "dyn.attach" in msg
    assert "such as FIRE" not in msg
    # what the message says works: an ASE integrator without a logfile, observers via attach
    dyn = VelocityVerlet(water, timestep=0.5 * units.fs)
    seen = []
    dyn.attach(lambda: seen.append(water.get_forces().copy()))
    dyn.run(3)
    assert len(seen) == 4 and np.isfinite(seen[-1]).all()
