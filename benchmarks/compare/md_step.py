"""The CPU MD step of a bundled model: fused host path against the array path, interleaved.

Langevin MD (0.5 fs, 300 K) of the bundled ``peo`` model on its first test frame (112 atoms, the
100-atom case of the issue's 1000 steps/s) through ``MolecularDynamics`` and the model's
``ForceEvaluator``, two ways in one process, alternating:

- ``fused`` (what ``run_md`` does): the integrator's array work in three Numba kernels
  (``runtime/_integrator.py``) and the featurizer's same-system path (positions checked and the
  list-reuse test done in one pass);
- ``array``: the same step through the engine's array path (which CuPy runs on a GPU; forced here
  by an array-module stand-in for NumPy) and the featurizer's general call (numbers, cell and pbc
  compared with the last call's, positions validated, then the reuse test).

Both compute the same forces with the same kernels and onnxruntime session settings; the difference
is Python and NumPy overhead per step. Reported: steps/s of each (median over rounds of
``steps`` steps) and their ratio. Threads: Numba's count as set by ``--threads``; onnxruntime 1.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.compare._harness import main_for, row


class _ArrayModule:
    """NumPy under another name: the engine takes its array path (``xp is not numpy``)."""

    def __getattr__(self, name):
        return getattr(np, name)


class _ArrayPathForces:
    """The evaluator with the featurizer's general call and the engine's array path."""

    xp = _ArrayModule()

    def __init__(self, evaluator):
        self.ev = evaluator
        fz = evaluator._fz
        fz._call_same_system = lambda p, n, c, b: fz(p, n, c, b)

    @property
    def n_rebuilds(self):
        return self.ev.n_rebuilds

    def __call__(self, x):
        return self.ev(x)


def run(quick=False, threads=1):
    from fastfeat.runtime import ForceModel
    from fastfeat.runtime.md import MolecularDynamics
    from fastfeat.train import datasets

    atoms = datasets.load("peo", split="test")[0]
    model = ForceModel.pretrained("peo")
    steps, rounds = (200, 3) if quick else (1000, 10)

    def engine(fused):
        ev = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
        fn = ev if fused else _ArrayPathForces(ev)
        md = MolecularDynamics(fn, atoms.positions, atoms.get_masses(), dt=0.5, temperature=300.0, seed=1)
        md.run(50)  # compile, build the list
        return md

    mds = {"fused": engine(True), "array": engine(False)}
    rates = {k: [] for k in mds}
    for _ in range(rounds):
        for k, md in mds.items():
            rates[k].append(md.run(steps, every=steps).steps_per_s)
    n = len(atoms)
    rows, notes = [], []
    for k, r in rates.items():
        s_per_step = 1.0 / np.asarray(r)
        timing = {"median_s": float(np.median(s_per_step)), "min_s": float(s_per_step.min()), "repeats": rounds}
        rows.append(row("fastfeat", f"Langevin MD step, {k} path", "peo test frame 0", n, timing,
                        float(np.median(r)), "steps/s"))
    per_round = [f / a for f, a in zip(rates["fused"], rates["array"])]
    notes.append(f"fused / array steps/s: median of rounds {np.median(per_round):.3f} (rounds: "
                 + ", ".join(f"{x:.3f}" for x in per_round) + f"); {steps} steps per round, {rounds} rounds")
    return {"name": "md_step", "title": "CPU MD step: fused host path vs array path", "rows": rows,
            "ratios": [], "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
