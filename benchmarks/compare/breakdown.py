"""Where fastfeat's feature time goes (ANI-1x-sized spec, water), from the public API only.

featurize is timed with four specs that differ only in what they compute, interleaved in one
process; differences attribute the time:

- ``minimal``: 1 G2 + 1 V per species (neighbour traversal, cutoff function, output writes);
- ``radial``: the 16 G2 + 16 V per species of the ANI-1x-sized spec, no G4;
- ``full``: the ANI-1x-sized spec (adds 32 G4 per species pair, angular cutoff 3.5 Å);
- ``one G4``: ``minimal`` plus a single G4 (eta 0.01, zeta 1, lambda 1): the cost of enumerating
  the neighbour pairs inside the angular cutoff, the floor of any spec with G4;
- the neighbour list alone (fastfeat.neighbor_list, cutoff 5.2 Å) for reference.

Then the same split for the MD path of the bundled ``peo`` model (its spec, ``angular-short`` with
angular covariant vectors W, through a ``Featurizer`` with a 1 Å skin, list reused) on the 112-atom
PEO test frame: the step cost of README command 1's demo.
"""

from __future__ import annotations

import sys

from benchmarks.compare._harness import interleaved_medians, main_for, row


def run(quick=False, threads=1):
    import fastfeat
    from benchmarks.common import ani1x_spec, water_system

    full = ani1x_spec()
    radial = fastfeat.FeatureSpec(full.species, full.cutoff, full.angular_cutoff, full.radial, (), full.covariant)
    minimal = fastfeat.FeatureSpec(full.species, full.cutoff, full.angular_cutoff, full.radial[:1], (), full.covariant[:1])
    one_g4 = fastfeat.FeatureSpec(full.species, full.cutoff, full.angular_cutoff, full.radial[:1],
                                  [(0.01, 1.0, 1.0)], full.covariant[:1])
    atoms = water_system(3000)
    n = len(atoms)
    fns = {
        "full": lambda: fastfeat.featurize(atoms, full),
        "radial": lambda: fastfeat.featurize(atoms, radial),
        "minimal": lambda: fastfeat.featurize(atoms, minimal),
        "one_g4": lambda: fastfeat.featurize(atoms, one_g4),
        "neighbor_list": lambda: fastfeat.neighbor_list(atoms.positions, atoms.cell.array, True, full.cutoff),
    }
    t = interleaved_medians(fns, 5 if quick else 15)
    label = f"water {n}"
    rows = [
        row("fastfeat", "featurize, full ANI-1x-sized spec", label, n, t["full"]),
        row("fastfeat", "featurize, G2 + V only (16 + 16 per species)", label, n, t["radial"]),
        row("fastfeat", "featurize, 1 G2 + 1 V per species", label, n, t["minimal"]),
        row("fastfeat", "featurize, 1 G2 + 1 V per species + one G4", label, n, t["one_g4"]),
        row("fastfeat", "neighbour list (reference)", label, n, t["neighbor_list"]),
    ]
    tf, tr, tm = (t[k]["median_s"] for k in ("full", "radial", "minimal"))
    parts = {
        "G4 (angular)": tf - tr,
        "16 G2 + 16 V terms per neighbour": tr - tm,
        "traversal, cutoff, writes": tm,
    }
    t1 = t["one_g4"]["median_s"]
    notes = [f"share of full featurize time ({tf * 1e3:.1f} ms): " +
             ", ".join(f"{k} {v / tf:.0%} ({v * 1e3:.1f} ms)" for k, v in parts.items()),
             f"one G4 adds {(t1 - tm) * 1e3:.1f} ms to the minimal spec (the angular pairs enumerated, one factor "
             f"each): a spec with any G4 costs at least {t1 * 1e3:.1f} ms here, {t1 / tf:.0%} of the full spec"]
    model_rows, model_parts, model_note = _bundled_model_split(quick)
    rows += model_rows
    notes.append(model_note)
    return {"name": "breakdown", "title": "Where the feature time goes (3000-atom water; the peo model's MD path)",
            "rows": rows, "ratios": [], "parts_s": parts, "floor_one_g4_s": t1, "peo_parts_s": model_parts,
            "notes": notes}


def _bundled_model_split(quick):
    """Per-call feature time of the bundled peo model's MD path (Featurizer, skin 1 Å) on its 112-atom test
    frame, split by removing parts of its spec: (rows, parts in s, note)."""
    import dataclasses

    import fastfeat
    from fastfeat.runtime import ForceModel
    from fastfeat.train import datasets

    atoms = datasets.load("peo", split="test")[0]
    spec = ForceModel.pretrained("peo").spec
    specs = {
        "full": spec,
        "no W": dataclasses.replace(spec, covariant_angular=()),
        "one G4, no W": dataclasses.replace(spec, angular=spec.angular[:1], covariant_angular=()),
        "G2 + V": dataclasses.replace(spec, angular=(), covariant_angular=()),
    }
    args = (atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    fns = {}
    for name, sp in specs.items():
        fz = fastfeat.Featurizer(sp, skin=1.0)
        fz(*args)  # list built once, reused by every timed call (as in MD between rebuilds)
        fns[name] = lambda fz=fz: fz(*args)
    t = interleaved_medians(fns, 50 if quick else 400)
    n = len(atoms)
    label = f"peo {n}"
    rows = [row("fastfeat", f"Featurizer (list reused), bundled peo model's spec: {name}", label, n, t[name])
            for name in specs]
    tf, tnw, t1, tr = (t[k]["median_s"] for k in specs)
    parts = {
        f"{spec.n_species * len(spec.radial)} G2 + {spec.n_species * len(spec.covariant)} V": tr,
        "angular pairs enumerated (with one G4)": t1 - tr,
        f"the other {spec.n_pairs * len(spec.angular) - spec.n_pairs} G4": tnw - t1,
        f"{spec.n_covariant - spec.n_species * len(spec.covariant)} W (angular covariant vectors)": tf - tnw,
    }
    note = (f"bundled peo model's MD path, {n}-atom PEO frame, per call ({tf * 1e3:.3f} ms, "
            f"{tf / n * 1e6:.2f} µs/atom): " + ", ".join(f"{k} {v / tf:.0%}" for k, v in parts.items()))
    return rows, parts, note


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
