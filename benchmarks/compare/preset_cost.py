"""Feature cost of the FeatureSpec presets per MD step (why the bundled peo model uses "angular-short").

A Featurizer (float32, skin 0.5 Å, the list reused as in MD) on the first peo test frame (112
atoms, H C O), timed for the "dense", "angular-short" and "angular" presets (the angular ones add 8
angular covariant vectors W per species pair and per unlike pair, inside 3.5 Å and 4.5 Å; G4 uses the
same angular cutoff), interleaved in one process. Then the MD step they end up in: Langevin MD
(0.5 fs, 300 K, ``run_md``) on the same frame with a random-weight model of the bundled
architecture (basis head, hidden 64-64-64; timing only, the weights do not change the work) per
preset, interleaved.
"""


from __future__ import annotations

import sys

from benchmarks.compare._harness import main_for, row

PRESETS = ("dense", "angular-short", "angular")


def run(quick=False, threads=1):
    import numpy as np

    import fastfeat
    from benchmarks.common import interleaved_medians
    from fastfeat.train import datasets

    atoms = datasets.load("peo", split="test")[0]
    args = (atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    calls = 20 if quick else 200
    fns = {}
    for preset in PRESETS:
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
    md = _md_steps_per_s(atoms, 100 if quick else 1500, 1 if quick else 3)
    rows += [row("fastfeat", f"Langevin MD step, random-weight basis model 64-64-64, preset {k!r}", label, n,
                 md[k], throughput=md[k]["steps_per_s"], unit="steps/s") for k in PRESETS]
    notes = ["per call: " + ", ".join(f"{k} {per_call[k] * 1e3:.3f} ms ({per_call[k] / per_call['dense']:.2f} x dense)"
                                      for k in PRESETS),
             "MD: " + ", ".join(f"{k} {md[k]['steps_per_s']:.0f} steps/s" for k in PRESETS)]
    return {"name": "preset_cost", "title": "Featurizer cost per call by preset (PEO, 112 atoms)", "rows": rows,
            "ratios": [], "per_call_s": per_call, "notes": notes}


def _md_steps_per_s(atoms, steps, repeats):
    """Median wall time per MD step and steps/s of run_md per preset, one call per preset per round."""
    import statistics

    from benchmarks.common import benchmark_model_path
    from fastfeat.runtime import ForceModel, run_md

    # onnxruntime on one thread (ForceModel's default; a second one slows graphs this small), Numba on `threads`
    models = {k: ForceModel.load(benchmark_model_path(("H", "C", "O"), hidden=(64, 64, 64), preset=k, head="basis"))
              for k in PRESETS}
    for m in models.values():
        run_md(m, atoms.copy(), 20, dt=0.5, temperature=300.0)  # JIT cache, ONNX session
    times = {k: [] for k in PRESETS}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(run_md(m, atoms.copy(), steps, dt=0.5, temperature=300.0).wall_s / steps)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "repeats": len(v),
                "steps_per_s": 1.0 / statistics.median(v)} for k, v in times.items()}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
