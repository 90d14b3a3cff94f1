"""The CPU MD step's two parts, alone and alternating: the featurizer and onnxruntime.

The bundled ``peo`` model's ``ForceEvaluator`` on its first test frame (112 atoms, the issue's 100-atom
MD case). Timed in one process, ``calls`` calls per round:

- ``featurizer alone``: the evaluator's same-system featurizer call (the MD step's features, list reused);
- ``onnxruntime alone``: ``run_with_iobinding`` on the bound features (the MD step's network);
- ``both in turn``: the evaluator call (features, then network);
- ``featurizer, alternating`` / ``onnxruntime, alternating``: each part timed on its own while the two
  alternate, as in MD. The difference from "alone" is what each part pays for the other's leaving the
  caches and predictors in another state.

Reported: the median per call over rounds (µs) of each. Threads: Numba's count as set by ``--threads``;
onnxruntime 1 (the runtime's default).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks.compare._harness import main_for, row


def run(quick=False, threads=1):
    from fastfeat.runtime import ForceModel
    from fastfeat.train import datasets

    atoms = datasets.load("peo", split="test")[0]
    model = ForceModel.pretrained("peo")
    ev = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
    x = atoms.positions.copy()
    for _ in range(50):
        ev(x)  # compile, build the list, bind
    fz, (_, cell, pbc) = ev._fz, ev._system
    session, io, numbers = ev._session, ev._io, ev._numbers_arg
    calls, rounds = (200, 3) if quick else (2000, 5)

    def featurize():
        fz._call_same_system(x, numbers, cell, pbc)

    def network():
        session.run_with_iobinding(io)

    def alone(fn):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    def alternating():
        a = b = 0.0
        for _ in range(calls):
            t0 = time.perf_counter()
            featurize()
            t1 = time.perf_counter()
            network()
            a += t1 - t0
            b += time.perf_counter() - t1
        return a / calls, b / calls

    times = {k: [] for k in ("featurizer alone", "onnxruntime alone", "both in turn", "featurizer, alternating",
                             "onnxruntime, alternating")}
    for _ in range(rounds):
        times["featurizer alone"].append(alone(featurize))
        times["onnxruntime alone"].append(alone(network))
        times["both in turn"].append(alone(lambda: ev(x)))
        a, b = alternating()
        times["featurizer, alternating"].append(a)
        times["onnxruntime, alternating"].append(b)
    rows = []
    for k, t in times.items():
        t = np.asarray(t)
        timing = {"median_s": float(np.median(t)), "min_s": float(t.min()), "repeats": rounds}
        rows.append(row("fastfeat", k, "peo test frame 0", len(atoms), timing, float(np.median(t)) * 1e6,
                        "µs per call"))
    med = {k: float(np.median(t)) for k, t in times.items()}
    notes = [f"onnxruntime alternating / alone: {med['onnxruntime, alternating'] / med['onnxruntime alone']:.2f}; "
             f"featurizer alternating / alone: {med['featurizer, alternating'] / med['featurizer alone']:.2f}; "
             f"{calls} calls per round, {rounds} rounds"]
    return {"name": "md_step_parts", "title": "CPU MD step: featurizer and onnxruntime, alone and alternating",
            "rows": rows, "ratios": [], "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
