"""GPU check: the CUDA neighbour list and features on sparse boxes (fastfeat._box adapts the grid).

Two water clusters (``--atoms`` atoms each, default 30 000) 80 Å and 1e4 Å apart without periodicity,
one cluster without periodicity and in a 1000 Å periodic box, and the cluster with 3 % more atoms as
water molecules scattered over the box (density-equalised grid), with and without periodicity. For each: CUDA and CPU neighbour
lists equal (pair counts, and pairs as sets when ``--atoms`` <= 5000), CUDA and CPU features equal
(float64), and the CUDA times (median of ``--repeats`` calls after a warm-up, between device
synchronisations). A sparse structure costs the CUDA path one positions download per list build;
the ratios (1e4 Å / 80 Å apart, 1000 Å box / no periodicity) show what that and the adapted grid cost.

    python benchmarks/gpu/sparse_boxes.py [--atoms 30000] [--repeats 5] [--out sparse_boxes.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--atoms", type=int, default=30000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from numba import cuda

    import fastfeat
    from benchmarks.common import ani1x_spec, water_system

    spec = ani1x_spec()
    w = water_system(args.atoms)
    systems = {
        "two clusters 80 A apart": (np.vstack([w.positions, w.positions + 80.0]), np.zeros((3, 3)), [False] * 3, 2),
        "two clusters 1e4 A apart": (np.vstack([w.positions, w.positions + 1e4]), np.zeros((3, 3)), [False] * 3, 2),
        "one cluster, no periodicity": (w.positions, np.zeros((3, 3)), [False] * 3, 1),
        "one cluster, 1000 A periodic box": (w.positions, np.eye(3) * 1000.0, [True] * 3, 1),
    }
    # 3 % more atoms as water molecules scattered over the 1000 A box (the density-equalised grid), as in
    # benchmarks/compare/scaling.py
    rng = np.random.default_rng(0)
    m = max(1, args.atoms // 100)
    vapour = (w.positions[:3] - w.positions[0] + rng.uniform(0.0, 1000.0, (m, 1, 3))).reshape(-1, 3)
    shifted = np.vstack([w.positions - w.positions.mean(axis=0) + 500.0, vapour])
    z_vapour = np.concatenate([w.numbers, np.tile(w.numbers[:3], m)])
    systems["cluster + 3 % scattered molecules, no periodicity"] = (shifted, np.zeros((3, 3)), [False] * 3, z_vapour)
    systems["cluster + 3 % scattered molecules, 1000 A box"] = (shifted, np.eye(3) * 1000.0, [True] * 3, z_vapour)

    def timed(fn):
        fn()
        cuda.synchronize()
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    def host(x):
        return x.get() if hasattr(x, "get") else (x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x))

    out, ok = {}, True
    for name, (pos, cell, pbc, copies) in systems.items():
        z = copies if isinstance(copies, np.ndarray) else np.tile(w.numbers, copies)
        d_pos = cuda.to_device(np.ascontiguousarray(pos))
        nl_g = fastfeat.neighbor_list(d_pos, cell, pbc, spec.cutoff, device="cuda")
        nl_c = fastfeat.neighbor_list(pos, cell, pbc, spec.cutoff)
        same_nl = len(nl_g.i) == len(nl_c.i)
        if same_nl and len(pos) <= 10000:
            gi, gj, gs = host(nl_g.i), host(nl_g.j), host(nl_g.shifts)
            same_nl = set(zip(gi.tolist(), gj.tolist(), map(tuple, gs.tolist()))) == set(
                zip(nl_c.i.tolist(), nl_c.j.tolist(), map(tuple, nl_c.shifts.tolist())))
        f_g = fastfeat.featurize(positions=pos, numbers=z, cell=cell, pbc=pbc, spec=spec, device="cuda",
                                 dtype=np.float64)
        f_c = fastfeat.featurize(positions=pos, numbers=z, cell=cell, pbc=pbc, spec=spec, dtype=np.float64)
        err = float(np.abs(host(f_g.invariant) - f_c.invariant).max() / max(np.abs(f_c.invariant).max(), 1e-300))
        t_nl = timed(lambda: fastfeat.neighbor_list(d_pos, cell, pbc, spec.cutoff, device="cuda"))
        d_z = cuda.to_device(z)
        t_f = timed(lambda: fastfeat.featurize(positions=d_pos, numbers=d_z, cell=cell, pbc=pbc, spec=spec,
                                               device="cuda", dtype=np.float32))
        ok &= same_nl and err < 1e-9
        out[name] = {"atoms": len(pos), "pairs": int(len(nl_c.i)), "nl_equal_cpu": bool(same_nl),
                     "features_max_rel_err_float64": err, "cuda_neighbor_list_s": t_nl, "cuda_featurize_float32_s": t_f}
        print(f"{name:52s} N={len(pos):7d} NL equal CPU: {same_nl}  features rel err {err:.1e}  "
              f"CUDA NL {t_nl * 1e3:8.2f} ms  featurize {t_f * 1e3:8.2f} ms", flush=True)
    for what in ("cuda_neighbor_list_s", "cuda_featurize_float32_s"):
        a = out["two clusters 1e4 A apart"][what] / out["two clusters 80 A apart"][what]
        b = out["one cluster, 1000 A periodic box"][what] / out["one cluster, no periodicity"][what]
        c = out["cluster + 3 % scattered molecules, 1000 A box"][what] / out["one cluster, 1000 A periodic box"][what]
        print(f"{what}: 1e4 A / 80 A apart {a:.2f}, 1000 A box / no periodicity {b:.2f}, "
              f"+ 3 % scattered molecules / cluster alone (1000 A box) {c:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"results": out, "ok": ok}, indent=1))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
