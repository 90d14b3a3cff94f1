"""GPU benchmark: fastfeat's CUDA neighbour list and features on a liquid-water box.

Run on a machine with an NVIDIA GPU (fastfeat[gpu]: numba-cuda, ideally CuPy)::

    python benchmarks/gpu/bench_features.py --atoms 1000000 --out results.json

What it does
------------
1. Builds liquid water at 1 g/cm³ (``benchmarks.common.water_system``): a periodic
   base box of about 3 k atoms replicated r×r×r to about ``--atoms`` atoms.
2. Puts positions and atomic numbers on the GPU (CuPy arrays when CuPy is
   installed, else Numba device arrays) and times, each after warm-up calls
   (the first call's wall time, which includes the Numba JIT compile or the
   on-disk cache load, is reported separately as ``first_call_s``):

   - ``neighbor_list``: the full list (i, j, shifts, vectors, distances) at
     the spec cutoff (5.2 Å): pairs/s;
   - ``featurize``: one-shot features (neighbour list + G2, G4, V): atoms/s;
   - ``featurizer_reuse``: ``Featurizer(skin=1.0)`` called again on the same
     positions, so the list is reused: the feature kernels alone (plus the
     finiteness/displacement check): atoms/s -- the MD steady state;
   - ``featurizer_rebuild``: ``Featurizer(skin=0)``: list rebuilt every call.

   Times are wall-clock medians between device synchronisations, over
   ``--repeats`` calls.
3. Checks results against the CPU path: the ~3 k-atom base box on the CPU and
   on the GPU (neighbour pairs as sets, features column by column), and the
   full GPU box against the CPU base features tiled over the replicas (every
   replica of a periodic base box has the base's features).
4. Prints a summary and writes everything as JSON (``--out``).

The target (issue 2): >= 50 M atoms/s for the features of the ANI-1x-sized
spec (``FeatureSpec.default(("H", "C", "N", "O"), preset="ani1x")``: 384
invariants, 64 covariant vectors) at 1 M atoms on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_M_ATOMS_PER_S = 50.0


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atoms", type=int, default=1_000_000, help="about how many atoms (default 1000000)")
    p.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32",
                   help="compute precision (default float32)")
    p.add_argument("--preset", choices=["ani1x", "default"], default="ani1x", help="FeatureSpec preset (default ani1x)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-check", action="store_true", help="skip the comparison with the CPU path")
    p.add_argument("--warps-per-block", type=int, default=None,
                   help="tuning: centre atoms (warps) per block of the feature kernel (default: fastfeat's, 4)")
    p.add_argument("--exact-math", action="store_true",
                   help="float32 with IEEE-accurate exp/cos/pow (default: the GPU's fast approximate math)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


class _Device:
    """CuPy when available, else Numba device arrays; synchronisation and memory facts."""

    def __init__(self):
        from numba import cuda

        self.cuda = cuda
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            self.cupy = cupy
        except Exception:
            self.cupy = None

    def to_device(self, host):
        return self.cupy.asarray(host) if self.cupy is not None else self.cuda.to_device(np.ascontiguousarray(host))

    @staticmethod
    def to_host(x):
        if hasattr(x, "get"):
            return x.get()
        return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)

    def sync(self):
        if self.cupy is not None:
            self.cupy.cuda.get_current_stream().synchronize()
        self.cuda.synchronize()

    def name(self):
        try:
            dev = self.cuda.get_current_device()
            name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
            return {"name": name, "compute_capability": list(dev.compute_capability)}
        except Exception as exc:  # the Numba simulator
            return {"name": f"unknown ({type(exc).__name__})", "compute_capability": None}

    def free_total(self):
        try:
            free, total = self.cuda.current_context().get_memory_info()
            return int(free), int(total)
        except Exception:
            return None, None

    def pool_peak(self):
        if self.cupy is None:
            return None
        pool = self.cupy.get_default_memory_pool()
        return int(pool.total_bytes())


def _time(dev, fn, repeats, warmup):
    """(first-call seconds, median seconds, all timed seconds, last result)."""
    dev.sync()
    t0 = time.perf_counter()
    out = fn()
    dev.sync()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        out = fn()
    dev.sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        dev.sync()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times, out


def _pair_set(i, j, s):
    return set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))


def _diff(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if want.size == 0:
        return {"max_abs": 0.0, "max_rel_to_column_max": 0.0}
    ad = np.abs(got - want)
    col = np.abs(want).reshape(want.shape[0], -1).max(axis=0)
    rel = ad.reshape(want.shape[0], -1) / np.maximum(col, 1e-30)
    return {"max_abs": float(ad.max()), "max_rel_to_column_max": float(rel.max()),
            "max_value": float(np.abs(want).max())}


def _check(fastfeat, dev, spec, base, big, n_rep, dtype, g_big, v_big):
    """GPU vs CPU on the base box; the whole GPU box vs the CPU base features tiled."""
    tol = 1e-9 if dtype == np.float64 else 2e-4
    out = {"tolerance_rel_to_column_max": tol}
    pos, z, cell = base.positions, base.numbers, np.asarray(base.cell)
    t = time.perf_counter()
    cpu = fastfeat.featurize(positions=pos, numbers=z, cell=cell, pbc=True, spec=spec, dtype=dtype)
    out["cpu_base_featurize_s_incl_compile"] = time.perf_counter() - t
    gpu = fastfeat.featurize(positions=dev.to_device(pos), numbers=dev.to_device(z), cell=cell, pbc=True,
                             spec=spec, device="cuda", dtype=dtype)
    out["base_atoms"] = len(base)
    out["base_invariant"] = _diff(dev.to_host(gpu.invariant), cpu.invariant)
    out["base_covariant"] = _diff(dev.to_host(gpu.covariant), cpu.covariant)
    nl_cpu = fastfeat.neighbor_list(pos.astype(dtype), cell, True, spec.cutoff, sorted=True)
    nl_gpu = fastfeat.neighbor_list(dev.to_device(pos.astype(dtype)), cell, True, spec.cutoff, sorted=True,
                                    device="cuda")
    i, j, s = (dev.to_host(a) for a in nl_gpu[:3])
    a, b = _pair_set(i, j, s), _pair_set(nl_cpu.i, nl_cpu.j, nl_cpu.shifts)
    d_cpu = np.linalg.norm(nl_cpu.vectors.astype(np.float64), axis=1)
    border = int(np.sum(np.abs(d_cpu - spec.cutoff) < 1e-5))
    out["base_pairs_cpu"] = len(b)
    out["base_pairs_gpu"] = len(a)
    out["base_pairs_only_cpu"] = len(b - a)
    out["base_pairs_only_gpu"] = len(a - b)
    out["base_pairs_within_1e-5_of_cutoff"] = border
    same_order = len(a) == len(b) and np.array_equal(i, nl_cpu.i) and np.array_equal(j, nl_cpu.j)
    if same_order:
        out["base_distances"] = _diff(dev.to_host(nl_gpu.distances), nl_cpu.distances)
    # the full box: replica r of the base holds atoms r*n_base ... (ase's repeat order)
    g = dev.to_host(g_big).reshape(n_rep, len(base), -1)
    v = dev.to_host(v_big).reshape(n_rep, len(base), -1)
    full_g = {"max_abs": 0.0, "max_rel_to_column_max": 0.0}
    full_v = {"max_abs": 0.0, "max_rel_to_column_max": 0.0}
    for r in range(n_rep):
        dg = _diff(g[r], cpu.invariant)
        dv = _diff(v[r], cpu.covariant.reshape(len(base), -1))
        for acc, d in ((full_g, dg), (full_v, dv)):
            acc["max_abs"] = max(acc["max_abs"], d["max_abs"])
            acc["max_rel_to_column_max"] = max(acc["max_rel_to_column_max"], d["max_rel_to_column_max"])
    out["full_box_invariant_vs_cpu_base_tiled"] = full_g
    out["full_box_covariant_vs_cpu_base_tiled"] = full_v
    # float32 positions of a large box carry ~1e-5 Å of rounding: the tiled comparison gets a looser bound
    full_tol = tol if dtype == np.float64 else 5e-3
    pairs_ok = len(a ^ b) <= border  # only pairs at the cutoff within rounding may differ
    base_ok = (out["base_invariant"]["max_rel_to_column_max"] <= tol
               and out["base_covariant"]["max_rel_to_column_max"] <= tol)
    full_ok = full_g["max_rel_to_column_max"] <= full_tol and full_v["max_rel_to_column_max"] <= full_tol
    out["passed"] = bool(pairs_ok and base_ok and full_ok)
    return out


def run(args):
    import fastfeat
    from fastfeat import _device

    from fastfeat import _features_cuda

    _features_cuda.FAST_MATH_FLOAT32 = not args.exact_math
    if args.warps_per_block:
        _features_cuda.WARPS_PER_BLOCK = int(args.warps_per_block)
    ok, reason = _device.cuda_available()
    if not ok:
        raise SystemExit(f"bench_features.py needs a CUDA GPU: {reason}")
    from benchmarks.common import machine_info, water_box

    dev = _Device()
    t = time.perf_counter()
    # the construction of benchmarks.common.water_system, keeping the base box for the CPU check
    n_mol = max(1, int(round(args.atoms / 3)))
    r = 1 if n_mol <= 1000 else int(np.ceil((n_mol / 1000) ** (1.0 / 3.0) - 1e-9))
    base = water_box(int(round(n_mol / r**3)), seed=args.seed)
    big = base.repeat((r, r, r))
    n = len(big)
    n_rep = r**3
    build_s = time.perf_counter() - t
    species = ("H", "C", "N", "O")
    spec = fastfeat.FeatureSpec.default(species, preset=args.preset)
    cell = np.asarray(big.cell)
    result = {
        "benchmark": "fastfeat CUDA neighbour list + features, liquid water 1 g/cm3",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "device": dev.name(),
        "array_library": "cupy" if dev.cupy is not None else "numba",
        "n_atoms": n,
        "base_atoms": len(base),
        "replicas": n_rep,
        "cell_A": np.diag(cell).tolist(),
        "structure_build_s": build_s,
        "spec": {"preset": args.preset, "species": list(species), "n_invariant": spec.n_invariant,
                 "n_covariant": spec.n_covariant, "cutoff": spec.cutoff, "angular_cutoff": spec.angular_cutoff},
        "float32_math": "accurate" if args.exact_math else "fast (approximate exp/cos/pow/sqrt/div)",
        "max_registers_env": os.environ.get("FASTFEAT_CUDA_MAXREG"),
        "warps_per_block": _features_cuda.WARPS_PER_BLOCK,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "target_features_M_atoms_per_s": TARGET_M_ATOMS_PER_S,
        "runs": {},
        "machine": machine_info(packages=("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "fastfeat")),
    }
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    for name in dtypes:
        dtype = np.dtype(name)
        pos_d = dev.to_device(big.positions.astype(dtype))
        z_d = dev.to_device(big.numbers.astype(np.int64))
        run_ = {}
        free0, total = dev.free_total()

        first, med, times, nl = _time(dev, lambda: fastfeat.neighbor_list(pos_d, cell, True, spec.cutoff, device="cuda"),
                                      args.repeats, args.warmup)
        n_pairs = int(nl.i.shape[0])
        del nl
        run_["neighbor_list"] = {"first_call_s": first, "median_s": med, "times_s": times, "pairs": n_pairs,
                                 "M_pairs_per_s": n_pairs / med / 1e6, "M_atoms_per_s": n / med / 1e6}

        first, med, times, f = _time(dev, lambda: fastfeat.featurize(positions=pos_d, numbers=z_d, cell=cell,
                                                                      pbc=True, spec=spec, device="cuda",
                                                                      dtype=dtype), args.repeats, args.warmup)
        g_one, v_one = f.invariant, f.covariant
        run_["featurize"] = {"first_call_s": first, "median_s": med, "times_s": times,
                             "M_atoms_per_s": n / med / 1e6}

        fz = fastfeat.Featurizer(spec, device="cuda", dtype=dtype, skin=1.0)
        first, med, times, _ = _time(dev, lambda: fz(pos_d, z_d, cell, True), args.repeats, args.warmup)
        run_["featurizer_reuse"] = {"first_call_s": first, "median_s": med, "times_s": times,
                                    "M_atoms_per_s": n / med / 1e6, "n_rebuilds": fz.n_rebuilds,
                                    "note": "neighbour list (cutoff + 1 Å skin) built on the first call only"}
        del fz
        fz0 = fastfeat.Featurizer(spec, device="cuda", dtype=dtype, skin=0.0)
        first, med, times, _ = _time(dev, lambda: fz0(pos_d, z_d, cell, True), args.repeats, args.warmup)
        run_["featurizer_rebuild"] = {"first_call_s": first, "median_s": med, "times_s": times,
                                      "M_atoms_per_s": n / med / 1e6, "n_rebuilds": fz0.n_rebuilds}
        del fz0
        free1, _ = dev.free_total()
        run_["gpu_memory"] = {"total_bytes": total, "free_before_bytes": free0, "free_after_bytes": free1,
                              "cupy_pool_bytes": dev.pool_peak(),
                              "features_output_bytes": int(n * (spec.n_invariant + 3 * spec.n_covariant)
                                                           * dtype.itemsize)}
        best = max(run_["featurizer_reuse"]["M_atoms_per_s"], run_["featurize"]["M_atoms_per_s"])
        run_["features_M_atoms_per_s_best"] = best
        run_["meets_target"] = bool(run_["featurizer_reuse"]["M_atoms_per_s"] >= TARGET_M_ATOMS_PER_S)
        if not args.skip_check:
            run_["check"] = _check(fastfeat, dev, spec, base, big, n_rep, dtype, g_one, v_one)
        del g_one, v_one, f
        result["runs"][name] = run_
    return result


def _summary(res):
    lines = [f"{res['benchmark']}: {res['n_atoms']} atoms ({res['replicas']} x {res['base_atoms']}), "
             f"{res['device']['name']}, arrays: {res['array_library']}",
             f"spec {res['spec']['preset']}: {res['spec']['n_invariant']} invariants, "
             f"{res['spec']['n_covariant']} covariant vectors, cutoff {res['spec']['cutoff']} Å; "
             f"float32 math: {res['float32_math']}"]
    for name, r in res["runs"].items():
        lines.append(f"[{name}]")
        nl = r["neighbor_list"]
        lines.append(f"  neighbor_list       {nl['median_s'] * 1e3:9.2f} ms  {nl['M_pairs_per_s']:9.1f} M pairs/s "
                     f"({nl['pairs']} pairs; first call {nl['first_call_s']:.2f} s)")
        for key in ("featurize", "featurizer_reuse", "featurizer_rebuild"):
            x = r[key]
            lines.append(f"  {key:19s} {x['median_s'] * 1e3:9.2f} ms  {x['M_atoms_per_s']:9.1f} M atoms/s "
                         f"(first call {x['first_call_s']:.2f} s)")
        lines.append(f"  target {res['target_features_M_atoms_per_s']} M atoms/s (features, list reused): "
                     f"{'met' if r['meets_target'] else 'NOT met'}")
        if "check" in r:
            c = r["check"]
            lines.append(f"  check vs CPU: {'passed' if c['passed'] else 'FAILED'}; base invariant max rel "
                         f"{c['base_invariant']['max_rel_to_column_max']:.2e}, covariant "
                         f"{c['base_covariant']['max_rel_to_column_max']:.2e}; pairs only CPU/GPU "
                         f"{c['base_pairs_only_cpu']}/{c['base_pairs_only_gpu']}; full box vs tiled base "
                         f"{c['full_box_invariant_vs_cpu_base_tiled']['max_rel_to_column_max']:.2e}")
    return "\n".join(lines)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    res = run(args)
    print(_summary(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    failed = any(not r.get("check", {"passed": True})["passed"] for r in res["runs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
