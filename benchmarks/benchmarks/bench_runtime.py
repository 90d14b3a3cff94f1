"""Runtime: ONNX inference on precomputed features, one force evaluation, one MD step, 100 MD steps.

The model is a random-weight H/O model (``benchmarks/common.py: benchmark_model_path``): the exact
graph ``fastfeat train`` exports for FeatureSpec.default(("H", "O")) with hidden widths 64-64,
untrained weights (timings do not depend on the weights); building it needs torch
(fastfeat[train]) once, then it is cached under ~/.cache/fastfeat-bench/models. When
fastfeat.runtime or torch is missing, these benchmarks are skipped (NotImplementedError in setup).
"""

import numpy as np

import fastfeat

from ._shared import ATOM_COUNTS, common, devices


def _model(device):
    try:
        from fastfeat.runtime import ForceModel  # noqa: F401
    except Exception as exc:
        raise NotImplementedError(f"fastfeat.runtime is not available: {exc}") from None
    try:
        model, structure, _ = common.force_model("random", device=device)
    except ImportError as exc:  # torch missing: cannot build the benchmark model
        raise NotImplementedError(f"cannot build the benchmark model: {exc}") from None
    return model, structure


class OnnxInference:
    """ForceModel.forces_from_features: the network + head alone, on precomputed features."""

    params = (ATOM_COUNTS, devices())
    param_names = ["n_atoms", "device"]
    timeout = 600

    def setup(self, n_atoms, device):
        self.model, structure = _model(device)
        atoms = structure(n_atoms)
        f = fastfeat.featurize(atoms, self.model.spec, device="cpu", dtype=np.float32)
        self.g, self.v = f.invariant, f.covariant
        self.s = self.model.species_index(atoms.numbers)
        self.model.forces_from_features(self.g, self.v, self.s)  # session warm-up

    def time_onnx_forces_from_features(self, n_atoms, device):
        self.model.forces_from_features(self.g, self.v, self.s)


class ForceEvaluation:
    """ForceModel.forces(atoms): features + network (neighbour list reused after the first call)."""

    params = (ATOM_COUNTS, devices())
    param_names = ["n_atoms", "device"]
    timeout = 600

    def setup(self, n_atoms, device):
        self.model, structure = _model(device)
        self.atoms = structure(n_atoms)
        self.model.forces(self.atoms)

    def time_forces(self, n_atoms, device):
        self.model.forces(self.atoms)

    def peakmem_forces(self, n_atoms, device):
        self.model.forces(self.atoms)


class MDStep:
    """One velocity-Verlet step of fastfeat.runtime.MolecularDynamics (features + network + update)."""

    params = (ATOM_COUNTS, devices())
    param_names = ["n_atoms", "device"]
    timeout = 600

    def setup(self, n_atoms, device):
        from fastfeat.runtime import MolecularDynamics

        model, structure = _model(device)
        atoms = structure(n_atoms)
        fn = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
        self.md = MolecularDynamics(fn, atoms.positions, atoms.get_masses(), dt=0.5, temperature=300.0,
                                    ensemble="nve", max_force=1e6)
        self.md.run(2)  # first forces, JIT, session warm-up

    def time_md_step(self, n_atoms, device):
        self.md.run(1)


class MD100Steps:
    """fastfeat.runtime.run_md: 100 NVE steps (dt 0.5 fs) from a fresh start, neighbour-list rebuilds included."""

    params = ([100, 1000, 10000], devices())
    param_names = ["n_atoms", "device"]
    timeout = 900
    number = 1
    repeat = (1, 3, 120.0)

    def setup(self, n_atoms, device):
        from fastfeat.runtime import run_md

        self.run_md = run_md
        self.model, structure = _model(device)
        self.atoms = structure(n_atoms)
        self.run_md(self.model, self.atoms, 2, dt=0.5, ensemble="nve", max_force=1e6)

    def time_md_100_steps(self, n_atoms, device):
        self.run_md(self.model, self.atoms, 100, dt=0.5, ensemble="nve", max_force=1e6)
