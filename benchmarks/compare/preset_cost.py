"""Feature cost of the FeatureSpec presets per MD step (the reason the bundled peo model keeps "dense").

A Featurizer (float32, skin 0.5 Å, the list reused as in MD) on the first peo test frame (112
atoms, H C O), timed for the "dense" and "angular" presets (the latter adds 8 angular covariant
vectors W per species pair and per unlike pair, angular cutoff 4.5 Å), interleaved in one process.
"""

from __future__ import annotations

import sys

from benchmarks.compare._harness import main_for, row


def run(quick=False, threads=1):
    import numpy as np

    import fastfeat
    from benchmarks.common import interleaved_medians
    from fastfeat.train import datasets

    atoms = datasets.load("peo", split="test")[0]
    args = (atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    calls = 20 if quick else 200
    fns = {}
    for preset in ("dense", "angular"):
        fz = fastfeat.Featurizer(fastfeat.FeatureSpec.default(("H", "C", "O"), preset=preset), dtype=np.float32,
                                 skin=0.5)
        fz(*args)  # list built once, then reused as in MD

        def fn(fz=fz):
            for _ in range(calls):
                fz(*args)

        fns[preset] = fn
    t = interleaved_medians(fns, 3 if quick else 9)
    n = len(atoms)
    label = f"peo test frame {n}"
    per_call = {k: t[k]["median_s"] / calls for k in fns}
    rows = [row("fastfeat", f"Featurizer call, preset {k!r} ({calls} calls per timing)", label, n, t[k]) for k in fns]
    notes = [f"per call: dense {per_call['dense'] * 1e3:.3f} ms, angular {per_call['angular'] * 1e3:.3f} ms "
             f"(angular / dense {per_call['angular'] / per_call['dense']:.2f})"]
    return {"name": "preset_cost", "title": "Featurizer cost per call by preset (PEO, 112 atoms)", "rows": rows,
            "ratios": [], "per_call_s": per_call, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
