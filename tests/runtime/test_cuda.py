"""CUDA runtime path (features on the GPU bound to onnxruntime's CUDA EP by pointer).

Runs only where onnxruntime-gpu, CuPy and a GPU are usable; skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastfeat.runtime import ForceModel, run_md

from conftest import random_water_box


def _cuda_reason():
    from fastfeat.runtime.model import _check_cuda_runtime

    try:
        _check_cuda_runtime()
    except RuntimeError as exc:
        return str(exc)
    return ""


_REASON = _cuda_reason()
pytestmark = pytest.mark.skipif(bool(_REASON), reason=f"CUDA runtime not usable here: {_REASON}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_forces_match_cpu(model_path, model64_path, dtype):
    path = model_path if dtype == "float32" else model64_path
    cpu, gpu = ForceModel.load(path), ForceModel.load(path, device="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    atoms = random_water_box(seed=7)
    tol = 1e-4 if dtype == "float32" else 1e-10
    f_cpu, f_gpu = cpu.forces(atoms), gpu.forces(atoms)
    assert isinstance(f_gpu, np.ndarray) and f_gpu.dtype == np.float64
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=tol, atol=tol * np.abs(f_cpu).max())
    frames = [atoms, random_water_box(n_molecules=5, box=5.5, seed=8)]
    for a, b in zip(cpu.forces_batch(frames), gpu.forces_batch(frames)):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())


def test_cuda_forces_from_features_validates_inputs(model_path):
    import cupy as cp

    import fastfeat

    cpu, gpu = ForceModel.load(model_path), ForceModel.load(model_path, device="cuda")
    atoms = random_water_box(seed=7)
    feats = fastfeat.featurize(atoms, cpu.spec, dtype=cpu.dtype)
    g, v, s = np.asarray(feats.invariant), np.asarray(feats.covariant), np.asarray(feats.species)
    f_cpu = cpu.forces_from_features(g, v, s)
    for xp in (np, cp):  # host or device arrays
        np.testing.assert_allclose(gpu.forces_from_features(xp.asarray(g), xp.asarray(v), xp.asarray(s)), f_cpu,
                                   rtol=1e-4, atol=1e-5 * np.abs(f_cpu).max())
        with pytest.raises(ValueError, match="`species` holds 7 at atom 0, which is not an index"):
            gpu.forces_from_features(xp.asarray(g), xp.asarray(v), xp.asarray(s + 6))
        with pytest.raises(ValueError, match="`species` holds -1 at atom 3"):
            gpu.forces_from_features(xp.asarray(g), xp.asarray(v), xp.asarray(np.where(np.arange(len(s)) == 3, -1, s)))
        with pytest.raises(ValueError, match="`covariant` must have shape"):
            gpu.forces_from_features(xp.asarray(g), xp.asarray(v[:-1]), xp.asarray(s))
        with pytest.raises(TypeError, match="`species` must be an integer array"):
            gpu.forces_from_features(xp.asarray(g), xp.asarray(v), xp.asarray(s, dtype=np.float32))


def test_cuda_evaluator_keeps_arrays_on_device(model_path):
    import cupy as cp

    gpu = ForceModel.load(model_path, device="cuda")
    atoms = random_water_box(seed=9)
    ev = gpu.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
    assert ev.xp is cp
    f = ev(cp.asarray(atoms.positions))
    assert isinstance(f, cp.ndarray) and f.shape == (len(atoms), 3)
    np.testing.assert_allclose(f.get(), ForceModel.load(model_path).forces(atoms), rtol=1e-4, atol=1e-5)


def test_cuda_md_matches_cpu_nve_for_a_few_steps(model64_path):
    atoms = random_water_box(seed=10)
    cpu = run_md(ForceModel.load(model64_path), atoms, 20, dt=0.5, ensemble="nve", temperature=200.0, every=10)
    gpu = run_md(ForceModel.load(model64_path, device="cuda"), atoms, 20, dt=0.5, ensemble="nve",
                 temperature=200.0, every=10)
    np.testing.assert_allclose(gpu.positions, cpu.positions, atol=1e-8)
    np.testing.assert_allclose(gpu.velocities, cpu.velocities, atol=1e-9)


def test_cuda_langevin_runs(model_path, tmp_path):
    atoms = random_water_box(seed=11)
    result = run_md(ForceModel.load(model_path, device="cuda"), atoms, 50, dt=0.5, temperature=300.0,
                    out=tmp_path / "t.extxyz", every=10)
    assert result.steps_done == 50 and np.isfinite(result.positions).all()
