"""MD throughput: fastfeat's MD loop vs ASE MD driven by a TorchANI-style conservative model.

Both sides run NVE MD (velocity Verlet, dt 0.5 fs, velocities at 300 K) of the same periodic
water box (``water_system``: 3000 atoms, 300 with --quick) for the same number of steps, with
the same thread count, alternately round by round (medians, one untimed warm-up round).

The target row times both sides the same way: an integrator is set up once (outside the timings)
and every timed call advances it by ``steps`` steps, continuing where the previous call stopped:
ASE's ``VelocityVerlet.run(steps)``, and fastfeat's ``MolecularDynamics.run(steps)`` on
``ForceModel.evaluator`` (what ``run_md`` builds). Neither pays its set-up or its initial forces
in a timed call. A second ratio, without target, times fastfeat's one-call ``run_md`` end to end
(evaluator, neighbour list, velocities and the initial forces included in every call) against
the same ASE calls: what a script that calls ``run_md`` for every short segment gets.

fastfeat: a random-weight H/O model (the exact graph ``fastfeat train`` exports for
``FeatureSpec.default(("H", "O"))``, hidden 64-64; timing does not depend on the weights).

Peer: ASE's ``VelocityVerlet`` driving an ASE calculator written here: TorchANI's
``AEVComputer.like_1x(num_species=2, neighborlist="cell_list")`` (pure-PyTorch "pyaev", periodic
cell list, radial / angular cutoffs 5.2 / 3.5 Å like the fastfeat spec), per-element MLPs of the
same width (AEV -> 64 -> 64 -> 1, SiLU), atomic energies summed, forces ``-dE/dr`` by one
``torch.autograd.grad`` per step (no double backward); random weights, float32.

The two models do not see the same number of features: fastfeat's ``FeatureSpec.default(("H", "O"))``
has 72 invariants (12 G2 per species, 16 G4 per species pair) + 16 covariant vectors, the peer's
``like_1x(num_species=2)`` AEV has 128 (16 radial per species, 32 angular per species pair); the
row is defined this way (each side with its own default-sized features), and the note says so.

The ratios are atom-steps/s of fastfeat / atom-steps/s of ASE + TorchANI (issue #5: target 30).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from benchmarks.compare._harness import interleaved_medians, main_for, ratio, row

TARGET = 30.0
DT_FS = 0.5
TEMPERATURE_K = 300.0
HIDDEN = (64, 64)
SPECIES = ("H", "O")


# ------------------------------------------------------------------------ peer: ASE + TorchANI
def make_torchani_calculator(symbols=SPECIES, hidden=HIDDEN, seed=0):
    """An ASE calculator: TorchANI AEV + per-element MLPs (random weights), autograd forces."""
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    import torch
    from ase.calculators.calculator import Calculator, all_changes
    from ase.data import atomic_numbers
    from torchani.aev import AEVComputer

    class TorchaniStyleCalculator(Calculator):
        """Energy = sum of per-element MLP(AEV) atomic energies; forces = -dE/dr (autograd)."""

        implemented_properties = ["energy", "forces"]

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            torch.manual_seed(seed)
            self.z_to_index = {atomic_numbers[s]: k for k, s in enumerate(symbols)}
            self.aev = AEVComputer.like_1x(num_species=len(symbols), neighborlist="cell_list")
            nets = []
            for _ in symbols:
                layers, width = [], self.aev.out_dim
                for h in hidden:
                    layers += [torch.nn.Linear(width, h), torch.nn.SiLU()]
                    width = h
                last = torch.nn.Linear(width, 1)
                with torch.no_grad():  # small forces (as the fastfeat benchmark model): MD without blow-up
                    last.weight.mul_(1e-3)
                    last.bias.zero_()
                nets.append(torch.nn.Sequential(*layers, last))
            self.nets = torch.nn.ModuleList(nets).requires_grad_(False)
            self.n_force_calls = 0
            self._numbers = None

        def _species(self, numbers):
            if self._numbers is None or not np.array_equal(numbers, self._numbers):
                index = np.array([self.z_to_index[int(z)] for z in numbers])
                self._species_t = torch.tensor(index[None], dtype=torch.long)
                self._rows = [torch.from_numpy(np.flatnonzero(index == s)) for s in range(len(symbols))]
                self._numbers = numbers.copy()
            return self._species_t, self._rows

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            species, rows = self._species(self.atoms.numbers)
            coords = torch.tensor(self.atoms.positions[None], dtype=torch.float32).requires_grad_(True)
            cell = torch.tensor(self.atoms.cell.array, dtype=torch.float32)
            pbc = torch.tensor(np.asarray(self.atoms.pbc, dtype=bool))
            aev = self.aev(species, coords, cell=cell, pbc=pbc)[0]
            energy = sum(net(aev.index_select(0, idx)).sum() for net, idx in zip(self.nets, rows))
            (grad,) = torch.autograd.grad(energy, coords)
            self.n_force_calls += 1
            self.results = {"energy": float(energy.detach()), "forces": -grad[0].double().numpy()}

    return TorchaniStyleCalculator()


class AseTorchaniMD:
    """ASE VelocityVerlet (NVE) with the TorchANI-style calculator, ready to `run(steps)`."""

    def __init__(self, atoms):
        from ase import units
        from ase.md import velocitydistribution
        from ase.md.verlet import VelocityVerlet

        self.atoms = atoms.copy()
        self.calc = make_torchani_calculator()
        self.atoms.calc = self.calc
        # thermalize_momenta: ASE >= 3.29 (MaxwellBoltzmannDistribution before; same distribution)
        thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or \
            velocitydistribution.MaxwellBoltzmannDistribution
        thermalize(self.atoms, temperature_K=TEMPERATURE_K, rng=np.random.default_rng(0))
        self.dyn = VelocityVerlet(self.atoms, timestep=DT_FS * units.fs)

    def run(self, steps):
        self.dyn.run(steps)


# -------------------------------------------------------------------------------------- run
def _per_step(timing, steps):
    return {k: (v / steps if k.endswith("_s") else v) for k, v in timing.items() if k != "times_s"}


def run(quick=False, threads=1):
    import torch

    from fastfeat.runtime import ForceModel, MolecularDynamics, run_md

    from benchmarks.common import benchmark_model_path, water_system

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    n_target, steps, repeats = (300, 5, 2) if quick else (3000, 20, 5)
    atoms = water_system(n_target)
    n = len(atoms)
    label = f"water {n}"

    model = ForceModel.load(benchmark_model_path(SPECIES, hidden=HIDDEN), intra_op_threads=threads)
    # the integrator set up once, as ASE's below; each call continues it
    evaluator = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
    md = MolecularDynamics(evaluator, atoms.positions, atoms.get_masses(), dt=DT_FS, temperature=TEMPERATURE_K,
                           ensemble="nve", max_force=1e6, cell=atoms.cell.array, pbc=atoms.pbc)
    md_rebuilds, ff_rebuilds = [], []

    def fastfeat_md():
        res = md.run(steps)
        md_rebuilds.append(res.n_rebuilds)

    def fastfeat_run_md():
        res = run_md(model, atoms, steps, dt=DT_FS, temperature=TEMPERATURE_K, ensemble="nve", max_force=1e6)
        ff_rebuilds.append(res.n_rebuilds)

    peer = AseTorchaniMD(atoms)
    t = interleaved_medians({"fastfeat": fastfeat_md, "fastfeat run_md": fastfeat_run_md,
                             "ase+torchani": lambda: peer.run(steps)}, repeats, warmup=1)
    calls_per_step = (peer.calc.n_force_calls - 1) / ((repeats + 1) * steps)  # minus the initial forces
    if md.step != (repeats + 1) * steps:
        raise RuntimeError(f"fastfeat's MD advanced {md.step} steps, expected {(repeats + 1) * steps}")

    rows, ratios = [], []
    for tool, key, task in (
        ("fastfeat", "fastfeat", "MolecularDynamics.run NVE, continued (random-weight H/O model, hidden 64-64)"),
        ("fastfeat", "fastfeat run_md", "run_md NVE end to end (set-up and initial forces in every call)"),
        ("ase+torchani", "ase+torchani", "VelocityVerlet.run NVE, continued + AEV/MLP 64-64, autograd forces"),
    ):
        med = t[key]["median_s"]
        rows.append(row(tool, task, label, n, _per_step(t[key], steps), n * steps / med, "atom-steps/s",
                        steps=steps, time_unit="s per MD step"))
    ratios.append(ratio("MD atom-steps/s: fastfeat MD / ASE + TorchANI-style conservative model "
                        "(both integrators set up once)", label, n,
                        t["fastfeat"]["median_s"], t["ase+torchani"]["median_s"], TARGET))
    ratios.append(ratio("MD atom-steps/s: fastfeat run_md end to end (set-up in every call) / ASE + TorchANI-style",
                        label, n, t["fastfeat run_md"]["median_s"], t["ase+torchani"]["median_s"]))
    spec = model.spec
    aev = peer.calc.aev
    n_pairs = len(SPECIES) * (len(SPECIES) + 1) // 2
    setup_ms = (t["fastfeat run_md"]["median_s"] - t["fastfeat"]["median_s"]) * 1e3
    notes = [
        f"feature sizes differ: fastfeat FeatureSpec.default({SPECIES}) {spec.n_invariant} invariants "
        f"({len(spec.radial)} G2 per species, {len(spec.angular)} G4 per species pair) + {spec.n_covariant} covariant "
        f"vectors; TorchANI like_1x(num_species={len(SPECIES)}) AEV {aev.out_dim} "
        f"({aev.radial_len // len(SPECIES)} radial per species, {aev.angular_len // n_pairs} angular per species pair); "
        "both with hidden 64-64",
        f"{threads} thread(s) for both (torch.set_num_threads, onnxruntime intra-op threads, NUMBA_NUM_THREADS); "
        f"{repeats}×{steps} timed steps each after one untimed round; the time column is seconds per MD step",
        "target row: each side's integrator is set up once outside the timings (fastfeat MolecularDynamics on "
        "ForceModel.evaluator, ASE VelocityVerlet on its calculator) and every call continues it by "
        f"{steps} steps; neighbour-list builds per fastfeat call {md_rebuilds[1:]}",
        f"run_md end to end: evaluator, first neighbour list, velocities and initial forces in every call "
        f"(median {setup_ms:.3g} ms more per {steps}-step call than the continued integrator); "
        f"neighbour-list builds per call {ff_rebuilds[1:]}",
        f"ASE + TorchANI: AEV dim {peer.calc.aev.out_dim}, float32, 'pyaev' strategy with the cell_list neighbour "
        f"list (no compiled extensions), {calls_per_step:.3g} force evaluation(s) per step",
    ]
    return {"name": "ase_torchani_md", "title": "MD throughput vs ASE + TorchANI-style conservative model",
            "rows": rows, "ratios": ratios, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
