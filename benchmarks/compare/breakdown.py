"""Where fastfeat's feature time goes (ANI-1x-sized spec, water), from the public API only.

featurize is timed with four specs that differ only in what they compute, interleaved in one
process; differences attribute the time:

- ``minimal``: 1 G2 + 1 V per species (neighbour traversal, cutoff function, output writes);
- ``radial``: the 16 G2 + 16 V per species of the ANI-1x-sized spec, no G4;
- ``full``: the ANI-1x-sized spec (adds 32 G4 per species pair, angular cutoff 3.5 Å);
- ``one G4``: ``minimal`` plus a single G4 (eta 0.01, zeta 1, lambda 1): the cost of enumerating
  the neighbour pairs inside the angular cutoff, the floor of any spec with G4;
- the neighbour list alone (fastfeat.neighbor_list, cutoff 5.2 Å) for reference.
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
    return {"name": "breakdown", "title": "Where the feature time goes (3000-atom water)", "rows": rows,
            "ratios": [], "parts_s": parts, "floor_one_g4_s": t1, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
