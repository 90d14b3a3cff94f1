"""fastfeat alone: linear scaling (time per atom at 100 k vs 3 k atoms) and peak memory vs outputs.

- Scaling: featurize (ANI-1x-sized spec, neighbour list included) and neighbor_list of the 3 k
  and the 100 k water boxes, interleaved in this one process; one sample of the 3 k box is 33
  back-to-back calls whose outputs are held until the sample ends, so both sizes do the same work
  and write the same volume of fresh output memory per sample under the same background load;
  the ratio is (time per atom at 100 k) / (time per atom at 3 k), target <= 1.3. The two
  neighbour lists are also timed interleaved by themselves. A list of 100 k atoms returns ~300 MB
  of output whose first touch costs ~20-300 ms from one sample to the next on this VM
  (``python -m benchmarks.compare.list_memory``), so the lists' ratio moves between runs. Until
  2026-12-01 each small call's output was freed at once and the next call got it back from
  the allocator, already touched: the ratio then timed first touch at 100 k only (0.945-1.51 in
  runs of the same code).
- Memory: each size in a fresh subprocess; after a warm-up on a small box (JIT cache loaded),
  the peak resident-set growth during one featurize call (Linux VmHWM after resetting it with
  /proc/self/clear_refs) and the tracemalloc peak (NumPy allocations only; Numba's internal
  allocations are not traced), both divided by the bytes of the outputs (invariant + covariant).
  Target <= 2.
- Sparse boxes: two water clusters (non-periodic, 30 000 atoms each; 3 000 with --quick) 80 Å
  and 1e4 Å apart along the diagonal, and one cluster alone without periodicity and in a 1000 Å
  periodic box, interleaved; the ratios of their times (featurize and neighbor_list) show the bin
  grid adapting to where the atoms are (gap compression, periodic axes cut at the empty stretch).
  Before (commit 4132112, benchmarks/results/sparse_boxes.md), 1e4 Å apart took 47x (neighbour
  list) / 5.8x (featurize) longer and the 1000 Å box 10x / 1.9x: the capped grid's bins spanned
  whole clusters. The cluster with 3 % more atoms as water molecules scattered over the 1000 Å box
  (with and without periodicity) exercises the density-equalised grid (before commit "Bin grid:
  density-equalised axes", 38x / 10x the cluster alone for the neighbour list).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np

from benchmarks.compare._harness import interleaved_medians, main_for, ratio, row

TARGET_SCALING = 1.3
TARGET_MEMORY = 2.0


def _status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(n_target):
    """Run in a fresh process: peak memory of one featurize call (bytes), printed as JSON."""
    import fastfeat
    from benchmarks.common import ani1x_spec, water_box, water_system

    spec = ani1x_spec()
    fastfeat.featurize(water_box(33), spec)  # JIT cache load, allocator warm-up
    atoms = water_system(n_target)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss_ok = True
    except OSError:
        rss_ok = False
    base_kib = _status_kib("VmRSS")
    tracemalloc.start()
    f = fastfeat.featurize(atoms, spec, dtype=np.float32)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm_kib = _status_kib("VmHWM")
    out = {
        "n_atoms": len(atoms),
        "output_bytes": int(f.invariant.nbytes + f.covariant.nbytes),
        "all_output_bytes": int(f.invariant.nbytes + f.covariant.nbytes + f.species.nbytes + f.offsets.nbytes),
        "tracemalloc_peak_bytes": int(traced_peak),
        "rss_peak_growth_bytes": int((hwm_kib - base_kib) * 1024) if rss_ok else None,
    }
    print(json.dumps(out))


def _memory(n_target, threads):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in (os.getcwd(), env.get("PYTHONPATH")) if p])
    code = f"from benchmarks.compare.scaling import memory_child; memory_child({int(n_target)})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _huge_pages():
    """The host's transparent huge page mode (the bracketed word of /sys/kernel/mm/transparent_hugepage/
    enabled), or None: whether fresh output memory comes in 2 MiB pages decides how much first touch costs."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def _sparse_boxes(n_cluster, spec, reps):
    """Water clusters in mostly empty space: two 80 Å / 1e4 Å apart (non-periodic), one alone without
    periodicity / in a 1000 Å periodic box; featurize and neighbor_list times and their ratios."""
    import fastfeat
    from ase import Atoms

    from benchmarks.common import water_system

    w = water_system(n_cluster)
    systems = {}
    for sep in (80.0, 1e4):
        a = Atoms(w.numbers, w.positions, pbc=False)
        a += Atoms(w.numbers, w.positions + sep)
        systems[f"two clusters {sep:g} Å apart"] = a
    systems["one cluster, no periodicity"] = Atoms(w.numbers, w.positions, pbc=False)
    systems["one cluster, 1000 Å periodic box"] = Atoms(w.numbers, w.positions, cell=np.eye(3) * 1000.0, pbc=True)
    # evaporated molecules: 3 % more atoms as water molecules scattered over the 1000 Å box (no empty stretch
    # to cut or compress, too many outliers to trim: the grid equalises each axis's density)
    rng = np.random.default_rng(0)
    vapour = Atoms(np.tile(w.numbers[:3], n_cluster // 100),
                   (w.positions[:3] - w.positions[0] + rng.uniform(0.0, 1000.0, (n_cluster // 100, 1, 3))).reshape(-1, 3))
    shifted = w.positions - w.positions.mean(axis=0) + 500.0
    systems["cluster + 3 % scattered molecules, no periodicity"] = Atoms(w.numbers, shifted, pbc=False) + vapour
    a = Atoms(w.numbers, shifted, cell=np.eye(3) * 1000.0, pbc=True) + vapour
    systems["cluster + 3 % scattered molecules, 1000 Å periodic box"] = a
    fns = {}
    for name, a in systems.items():
        fns[f"featurize {name}"] = lambda a=a: fastfeat.featurize(a, spec)
        fns[f"neighbor_list {name}"] = lambda a=a: fastfeat.neighbor_list(a.positions, a.cell.array, a.pbc,
                                                                            spec.cutoff)
    t = interleaved_medians(fns, reps)
    rows, ratios = [], []
    for what, task in (("featurize", "invariant+covariant"), ("neighbor_list", "neighbour list")):
        for name, a in systems.items():
            rows.append(row("fastfeat", f"{task} ({name})", f"water {len(w)} x {len(a) // len(w)}", len(a),
                            t[f"{what} {name}"]))
        for slow, fast, label in (("two clusters 10000 Å apart", "two clusters 80 Å apart", "clusters 1e4 Å / 80 Å apart"),
                                  ("one cluster, 1000 Å periodic box", "one cluster, no periodicity",
                                   "cluster in a 1000 Å periodic box / without periodicity"),
                                  ("cluster + 3 % scattered molecules, no periodicity", "one cluster, no periodicity",
                                   "cluster + 3 % scattered molecules / cluster alone (no periodicity)"),
                                  ("cluster + 3 % scattered molecules, 1000 Å periodic box",
                                   "one cluster, 1000 Å periodic box",
                                   "cluster + 3 % scattered molecules / cluster alone (1000 Å periodic box)")):
            ratios.append(ratio(f"{task}: time with {label}", f"water {len(w)} x {len(systems[slow]) // len(w)}",
                                len(systems[slow]), t[f"{what} {fast}"]["median_s"], t[f"{what} {slow}"]["median_s"],
                                higher_is_better=False))
    return rows, ratios


def run(quick=False, threads=1):
    import fastfeat
    from benchmarks.common import ani1x_spec, water_system

    spec = ani1x_spec()
    small, large = (1000, 3000) if quick else (3000, 100000)
    reps = 3 if quick else 5
    a_s, a_l = water_system(small), water_system(large)
    rows, ratios, notes = [], [], []
    # A sample of the small box is k back-to-back calls (k = n_large / n_small) so that both sizes
    # do the same work per sample and see the same background load of a shared machine. The k outputs
    # are held until the sample ends, as a large call's output is: both sizes then write the same
    # volume of fresh memory per sample (a small call's output, freed at once, would come back from
    # the allocator to the next call already touched, and the ratio would time first touch at 100 k only).
    k = max(1, round(len(a_l) / len(a_s)))

    def repeat(fn):
        def run_k():
            held = [fn() for _ in range(k)]
            del held
        return run_k

    fns = {
        "featurize small": repeat(lambda: fastfeat.featurize(a_s, spec)),
        "featurize large": lambda: fastfeat.featurize(a_l, spec),
        "neighbor_list small": repeat(lambda: fastfeat.neighbor_list(a_s.positions, a_s.cell.array, True, spec.cutoff)),
        "neighbor_list large": lambda: fastfeat.neighbor_list(a_l.positions, a_l.cell.array, True, spec.cutoff),
    }
    t = interleaved_medians(fns, reps)
    # the two lists again, interleaved by themselves: no featurize call between them
    alone = interleaved_medians({k: fns[k] for k in ("neighbor_list small", "neighbor_list large")}, reps)
    t.update({f"{k} alone": v for k, v in alone.items()})
    for key in ("featurize small", "neighbor_list small", "neighbor_list small alone"):  # per call
        v = t[key]
        t[key] = {"median_s": v["median_s"] / k, "min_s": v["min_s"] / k, "repeats": v["repeats"],
                  "times_s": [x / k for x in v["times_s"]]}
    for what, atoms, task in (("featurize small", a_s, "invariant+covariant (scaling)"),
                              ("featurize large", a_l, "invariant+covariant (scaling)"),
                              ("neighbor_list small", a_s, "neighbour list (scaling)"),
                              ("neighbor_list large", a_l, "neighbour list (scaling)")):
        rows.append(row("fastfeat", task, f"water {len(atoms)}", len(atoms), t[what], len(atoms) / t[what]["median_s"], "atoms/s"))
    per_s = t["featurize small"]["median_s"] / len(a_s)
    per_l = t["featurize large"]["median_s"] / len(a_l)
    ratios.append(ratio(f"features: time per atom at {len(a_l)} / at {len(a_s)}", f"water {len(a_l)}", len(a_l), per_s, per_l,
                        TARGET_SCALING, higher_is_better=False))
    nl_s = t["neighbor_list small"]["median_s"] / len(a_s)
    nl_l = t["neighbor_list large"]["median_s"] / len(a_l)
    ratios.append(ratio(f"neighbour list: time per atom at {len(a_l)} / at {len(a_s)}", f"water {len(a_l)}", len(a_l), nl_s, nl_l,
                        TARGET_SCALING, higher_is_better=False))
    for size, atoms in (("small", a_s), ("large", a_l)):
        rows.append(row("fastfeat", "neighbour list (scaling, the two lists interleaved alone)", f"water {len(atoms)}",
                        len(atoms), t[f"neighbor_list {size} alone"], len(atoms) / t[f"neighbor_list {size} alone"]["median_s"],
                        "atoms/s"))
    ratios.append(ratio(f"neighbour list, the two sizes interleaved alone: time per atom at {len(a_l)} / at {len(a_s)}",
                        f"water {len(a_l)}", len(a_l), t["neighbor_list small alone"]["median_s"] / len(a_s),
                        t["neighbor_list large alone"]["median_s"] / len(a_l), higher_is_better=False))
    notes.append(f"a small-box sample is {k} back-to-back calls (same work per sample as one large call), their "
                 "outputs held until the sample ends (the same volume of fresh output memory as one large call); "
                 "reported per call")
    notes.append(
        "a sample of either size writes ~300 MB of list output into fresh memory, in 2 MiB pages where NumPy asks "
        f"for them (transparent huge pages here: {_huge_pages()}); on this VM its first touch costs from ~20 ms to "
        "~300 ms from one sample to the next (python -m benchmarks.compare.list_memory), so the lists' ratio moves "
        "between runs (the two lists timed alone are a second sample)")
    rows_far, ratios_far = _sparse_boxes(30000 if not quick else 3000, spec, reps)
    rows += rows_far
    ratios += ratios_far
    memory = []
    for n_target in (small, large):
        m = _memory(n_target, threads)
        memory.append(m)
        label = f"water {m['n_atoms']}"
        if m["rss_peak_growth_bytes"] is not None:
            ratios.append(ratio("peak memory (RSS growth) / output arrays", label, m["n_atoms"], m["output_bytes"],
                                m["rss_peak_growth_bytes"], TARGET_MEMORY, higher_is_better=False))
        ratios.append(ratio("peak memory (tracemalloc, NumPy only) / output arrays", label, m["n_atoms"], m["output_bytes"],
                            m["tracemalloc_peak_bytes"], TARGET_MEMORY, higher_is_better=False))
    notes.append("outputs = invariant (N, 384) + covariant (N, 64, 3), float32 = 2304 bytes per atom")
    return {"name": "scaling", "title": "fastfeat scaling and peak memory", "rows": rows, "ratios": ratios,
            "memory": memory, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
