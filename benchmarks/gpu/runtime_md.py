import os, sys, time
sys.path.insert(0, "tests/runtime")  # test-model builder (onnx.helper, no torch)
import numpy as np
import onnxruntime as ort
print("ort", ort.__version__, ort.get_available_providers(), flush=True)
import fastfeat
from ase import Atoms
from _models import make_basis_model
from fastfeat.runtime import ForceModel, run_md
from fastfeat.runtime.model import _check_cuda_runtime
from fastfeat.train import datasets

# 1. no onnxruntime needed: the bundled peo model's features (G4 and the angular covariant vectors W inside
#    3.5 Å) on the GPU against the CPU, the CUDA W kernels' first run on real hardware
frame = datasets.load("peo", split="test")[0]
frame.calc = None
peo_spec = ForceModel.pretrained("peo").spec
for rep in (1, 4, 9):  # 112, 7 168 and 81 648 atoms
    big = frame.repeat((rep, rep, rep))
    for dtype in (np.float64, np.float32):
        c = fastfeat.featurize(big, peo_spec, dtype=dtype)
        g = fastfeat.featurize(big, peo_spec, device="cuda", dtype=dtype)
        gi, gv = (a.get() if hasattr(a, "get") else a.copy_to_host() for a in (g.invariant, g.covariant))
        dg = np.abs(gi - c.invariant).max() / np.abs(c.invariant).max()
        dv = np.abs(gv - c.covariant).max() / np.abs(c.covariant).max()
        print(f"peo features {len(big)} atoms {np.dtype(dtype).name}: max rel |G_gpu - G_cpu| {dg:.2e}, "
              f"|V,W_gpu - V,W_cpu| {dv:.2e}", flush=True)

# 2. onnxruntime on the GPU (needs onnxruntime-gpu: benchmarks/gpu/setup.sh)
try:
    _check_cuda_runtime()
except RuntimeError as exc:
    print(f"SKIPPED the onnxruntime CUDA steps: {exc}", flush=True)
    sys.exit(1)

spec = fastfeat.FeatureSpec.default(("C", "H", "O"))
make_basis_model("/tmp/t64.onnx", spec, hidden=64, scale=0.05)
make_basis_model("/tmp/t64d.onnx", spec, hidden=64, scale=0.05, dtype="float64")
rng = np.random.default_rng(0)
L = 10.0; pos = []
while len(pos) < 100:
    p = rng.uniform(0, L, 3)
    if all(np.linalg.norm((p - q + L / 2) % L - L / 2) > 1.3 for q in pos):
        pos.append(p)
atoms = Atoms(numbers=rng.choice([6, 1, 8], 100), positions=pos, cell=[L] * 3, pbc=True)
for path in ["/tmp/t64.onnx", "/tmp/t64d.onnx"]:
    cpu = ForceModel.load(path)
    t = time.perf_counter(); gpu = ForceModel.load(path, device="cuda"); print("load cuda s", time.perf_counter() - t)
    print(gpu, gpu.providers)
    fc, fg = cpu.forces(atoms), gpu.forces(atoms)
    print(path, "max |F_cpu - F_gpu|", np.abs(fc - fg).max(), "max |F|", np.abs(fc).max(), flush=True)
    frames = [atoms, atoms.repeat((2, 1, 1))]
    bc, bg = cpu.forces_batch(frames), gpu.forces_batch(frames)
    print("batch diff", max(np.abs(a - b).max() for a, b in zip(bc, bg)), flush=True)
gpu = ForceModel.load("/tmp/t64.onnx", device="cuda")
cpu = ForceModel.load("/tmp/t64.onnx")
for name, m in (("cpu", cpu), ("cuda", gpu)):
    for ens in ("langevin", "nve"):
        r = run_md(m, atoms, 2000, dt=0.5, temperature=300, ensemble=ens, every=500, seed=1)
        print(f"{name} 100 atoms {ens}: {r.steps_per_s:.0f} steps/s {r.atom_steps_per_s:.3g} atom-steps/s rebuilds {r.n_rebuilds}", flush=True)
for rep in (3, 10, 22):
    big = atoms.repeat((rep, rep, rep))
    steps = 300 if len(big) < 50000 else 200
    r = run_md(gpu, big, steps, dt=0.5, temperature=300, every=100, seed=1)
    print(f"cuda {len(big)} atoms: {r.steps_per_s:.1f} steps/s {r.atom_steps_per_s:.3g} atom-steps/s rebuilds {r.n_rebuilds}", flush=True)
    if len(big) <= 3000:
        r = run_md(cpu, big, 20, dt=0.5, temperature=300, every=10, seed=1)
        print(f"cpu {len(big)} atoms: {r.steps_per_s:.1f} steps/s {r.atom_steps_per_s:.3g} atom-steps/s", flush=True)
ev = gpu.evaluator(big.numbers, big.cell.array, big.pbc)
import cupy as cp
x = cp.asarray(big.positions)
ev(x); cp.cuda.Device().synchronize()
t = time.perf_counter()
for _ in range(20): ev(x)
cp.cuda.Device().synchronize()
te = (time.perf_counter() - t) / 20
t = time.perf_counter()
for _ in range(20): ev._fz(x, ev._numbers_arg, ev.cell, ev.pbc)
cp.cuda.Device().synchronize()
tf = (time.perf_counter() - t) / 20
print(f"{len(big)} atoms: evaluator {te*1e3:.2f} ms, featurizer {tf*1e3:.2f} ms", flush=True)

# the bundled peo model end to end: forces through the W kernels and onnxruntime, then MD
cpu_p, gpu_p = ForceModel.pretrained("peo"), ForceModel.pretrained("peo", device="cuda")
fc, fg = cpu_p.forces(frame), gpu_p.forces(frame)
print("bundled peo: max |F_cpu - F_gpu|", np.abs(fc - fg).max(), "max |F|", np.abs(fc).max(), flush=True)
for rep in (1, 4, 9):  # 112, 7 168 and 81 648 atoms
    big = frame.repeat((rep, rep, rep))
    r = run_md(gpu_p, big, 2000 if rep == 1 else 200, dt=0.5, temperature=300, every=100, seed=1)
    print(f"cuda bundled peo {len(big)} atoms: {r.steps_per_s:.1f} steps/s {r.atom_steps_per_s:.3g} atom-steps/s",
          flush=True)
